//! `jetlock doctor`: checks a deployment and says what to fix.
//!
//! Every check gives one or more [`Finding`]s: `OK`, `WARN` (works, but
//! costs safety or margin in production) or `FAIL` (jetlock cannot work
//! as it is). The process exits 4 when any check fails and 0 otherwise, so
//! a deploy script can gate on it; warnings alone do not fail it.
//!
//! It writes nothing. What it reads, by file:
//!
//! - here: the connection's server INFO (version, cluster, the other
//!   servers' client URLs) and each server's VARZ, for versions and
//!   `sync_interval`;
//! - `varz.rs`: VARZ from a monitoring port or a system-account connection;
//! - `streams.rs`: the stream infos of the locks bucket, the request and
//!   event streams and the config bucket;
//! - `coordinators.rs`: answers to `$SRV.PING.jetlock` and the clocks in
//!   coordinator heartbeats;
//! - `tokens.rs`: whether fencing tokens can go back (the locks bucket's
//!   first sequence, replicas and the servers' fsync).

mod buckets;
mod coordinators;
mod streams;
mod tokens;
mod varz;

use super::{CliError, Connection, Exit};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use varz::Varz;

/// The exit code when a check fails.
pub const FAILED: u8 = 4;

#[derive(Debug, clap::Args)]
#[command(after_help = "Exit status: 0 when no check fails (warnings allowed), \
4 when a check fails, 1 when the doctor itself could not run.")]
pub struct DoctorArgs {
    #[command(flatten)]
    conn: Connection,
    /// A server's HTTP monitoring endpoint (`http://host:8222`, its
    /// `http_port`), to read its VARZ: version and `sync_interval`. Repeat
    /// or comma-separate for every server of a cluster.
    #[arg(long, value_delimiter = ',')]
    monitor: Vec<String>,
    /// A connection as a user of the system account
    /// (`nats://user:pass@host:4222`): reads every server's VARZ at once.
    #[arg(long, env = "JETLOCK_SYSTEM_URL", hide_env_values = true)]
    system_url: Option<String>,
    /// Print a JSON array of `{check, status, detail, fix}` instead of lines.
    #[arg(long)]
    json: bool,
}

/// How a check came out. `--json` writes `ok`, `warn`, `fail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One result, as printed (`--json` field names are a stable contract).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
    /// What to do; `null` for OK.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, detail: impl Into<String>) -> Self {
        Finding {
            check,
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            check,
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(check: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Finding {
            check,
            status: Status::Fail,
            ..Finding::warn(check, detail, fix)
        }
    }
}

/// How long every server gets to send its VARZ.
const VARZ_WAIT: Duration = Duration::from_secs(1);
/// Oldest server with per-message TTL and limit markers.
const TTL_SERVER_VERSION: (u64, u64, u64) = (2, 11, 0);

const SYNC_FIX: &str = "production: set `sync_interval: always` in the jetstream block; \
with the default 2-minute fsync a machine crash can lose acknowledged lock writes, \
nats-server #7564";

pub async fn run(args: DoctorArgs) -> Result<(), CliError> {
    let findings = examine(&args).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        print!("{}", render(&findings));
    }
    match findings.iter().filter(|f| f.status == Status::Fail).count() {
        0 => Ok(()),
        n => Err(Exit {
            code: FAILED,
            message: format!("{n} check(s) failed"),
        }
        .into()),
    }
}

/// Runs every check against the deployment `args` points at.
async fn examine(args: &DoctorArgs) -> Vec<Finding> {
    let nats = match args.conn.nats().await {
        Ok(nats) => nats,
        Err(e) => {
            return vec![Finding::fail(
                "connection",
                e.to_string(),
                "start nats-server, or pass --url (JETLOCK_URL) with a reachable server",
            )]
        }
    };
    let info = nats.server_info();
    let advertised = advertised_servers(&info);
    // The waits overlap: the whole run takes about the longest of them.
    let (varz, seen, beats) = tokio::join!(
        read_varz(args, advertised),
        coordinators::ping(&nats),
        coordinators::listen_to_beats(&nats),
    );
    let (varz, varz_errors) = varz;
    let servers = cluster_size(&info, advertised, varz.len());

    let mut findings = version_findings(&info, &varz);
    findings.extend(sync_findings(args, &varz, &varz_errors, servers));
    let (stream_findings, locks) = streams::findings(&nats, &args.conn.bucket, servers).await;
    findings.extend(stream_findings);
    if let Some(locks) = locks {
        findings.extend(tokens::findings(
            &args.conn.bucket,
            &locks,
            &tokens::Fsync::of(&varz),
        ));
    }
    findings.push(coordinators::finding(&seen, &args.conn.bucket));
    findings.extend(coordinators::skew_finding(&seen, &beats));
    findings
}

/// One line per finding, a `fix:` line under each WARN and FAIL.
fn render(findings: &[Finding]) -> String {
    let width = findings.iter().map(|f| f.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    for f in findings {
        let status = match f.status {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        out.push_str(&format!("{status:<4}  {:<width$}  {}\n", f.check, f.detail));
        if let Some(fix) = &f.fix {
            out.push_str(&format!("      {:<width$}  fix: {fix}\n", ""));
        }
    }
    out
}

/// Distinct client URLs the server advertises for its cluster (itself
/// included); 0 when it advertises none (standalone, or `no_advertise`).
fn advertised_servers(info: &async_nats::ServerInfo) -> usize {
    let mut urls = info.connect_urls.clone();
    urls.sort();
    urls.dedup();
    urls.len()
}

/// How many servers the cluster has, when that is known: 1 for a server
/// outside a cluster, the most that any source saw otherwise.
fn cluster_size(
    info: &async_nats::ServerInfo,
    advertised: usize,
    answered: usize,
) -> Option<usize> {
    match &info.cluster {
        None => Some(1),
        Some(_) => Some(advertised.max(answered)).filter(|&n| n > 1),
    }
}

/// VARZ of every server reachable by `--monitor` and `--system-url`,
/// one per server, and why the others could not be read.
async fn read_varz(args: &DoctorArgs, expected: usize) -> (Vec<Varz>, Vec<String>) {
    let monitors = futures::future::join_all(
        args.monitor
            .iter()
            .map(|m| varz::from_monitor(m.trim(), VARZ_WAIT)),
    );
    let system = async {
        match &args.system_url {
            Some(url) => {
                Some(varz::from_system(url, VARZ_WAIT, Some(expected).filter(|&n| n > 0)).await)
            }
            None => None,
        }
    };
    let (monitors, system) = tokio::join!(monitors, system);
    let mut found: Vec<Varz> = Vec::new();
    let mut errors = Vec::new();
    let answers = monitors
        .into_iter()
        .map(|r| r.map(|v| vec![v]))
        .chain(system);
    for answer in answers {
        match answer {
            Ok(list) => {
                for v in list {
                    if !found.iter().any(|f| f.server_id == v.server_id) {
                        found.push(v);
                    }
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    found.sort_by(|a, b| a.name().cmp(b.name()));
    (found, errors)
}

/// A server version as (major, minor, patch); a suffix (`-RC.1`) is
/// ignored.
fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    let mut parts = text
        .trim()
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

fn version_finding(server: &str, version: &str) -> Finding {
    const CHECK: &str = "server-version";
    const UPGRADE: &str = "upgrade nats-server to 2.12.3 or newer (bash nats/install.sh)";
    let (min_major, min_minor, min_patch) = jetlock_testkit::server::MIN_SERVER_VERSION;
    match parse_version(version) {
        None => Finding::warn(
            CHECK,
            format!("{server}: cannot read the version {version:?}"),
            "check the server with `nats-server --version`",
        ),
        Some(v) if v < TTL_SERVER_VERSION => Finding::fail(
            CHECK,
            format!("{server}: nats-server {version} has no per-message TTL (2.11+), so leases cannot expire on the server"),
            UPGRADE,
        ),
        Some(v) if v < jetlock_testkit::server::MIN_SERVER_VERSION => Finding::warn(
            CHECK,
            format!("{server}: nats-server {version} is older than {min_major}.{min_minor}.{min_patch}; earlier versions had KV CAS and stream-loss bugs"),
            UPGRADE,
        ),
        Some(_) => Finding::ok(CHECK, format!("{server}: nats-server {version}")),
    }
}

/// The connected server (from INFO) and every server that sent VARZ.
fn version_findings(info: &async_nats::ServerInfo, varz: &[Varz]) -> Vec<Finding> {
    let mut versions = BTreeMap::new();
    let connected = if info.server_name.is_empty() {
        &info.server_id
    } else {
        &info.server_name
    };
    versions.insert(connected.as_str(), info.version.as_str());
    for v in varz {
        versions.insert(v.name(), v.version.as_str());
    }
    versions
        .into_iter()
        .map(|(server, version)| version_finding(server, version))
        .collect()
}

fn sync_finding(varz: &Varz) -> Finding {
    const CHECK: &str = "sync-interval";
    let server = varz.name();
    match varz.jetstream.as_ref().and_then(|js| js.config.as_ref()) {
        None => Finding::ok(
            CHECK,
            format!("{server}: JetStream is off (it stores no locks)"),
        ),
        Some(c) if c.sync_always => Finding::ok(CHECK, format!("{server}: always")),
        Some(c) => {
            let every = c
                .sync_interval
                .and_then(|ns| u64::try_from(ns).ok())
                .map(|ns| humantime::format_duration(Duration::from_nanos(ns)).to_string())
                .unwrap_or_else(|| "unknown".to_owned());
            Finding::warn(
                CHECK,
                format!("{server}: JetStream fsyncs every {every}, not on every write"),
                SYNC_FIX,
            )
        }
    }
}

fn sync_findings(
    args: &DoctorArgs,
    varz: &[Varz],
    errors: &[String],
    servers: Option<usize>,
) -> Vec<Finding> {
    const CHECK: &str = "sync-interval";
    const HOW: &str = "pass --monitor http://host:8222 (each server's http_port) or \
--system-url nats://user:pass@host:4222 (a system-account user)";
    let mut findings: Vec<Finding> = varz.iter().map(sync_finding).collect();
    for e in errors {
        findings.push(Finding::warn(
            CHECK,
            format!("cannot read VARZ: {e}"),
            "--monitor takes a server's monitoring port (`http_port`, `nats-server -m 8222`); \
--system-url a user of the system account",
        ));
    }
    if varz.is_empty() && errors.is_empty() {
        let detail = match (&args.system_url, args.monitor.is_empty()) {
            (None, true) => "cannot check sync_interval: pass --monitor or --system-url",
            _ => "cannot check sync_interval: no server sent VARZ",
        };
        findings.push(Finding::warn(CHECK, detail, HOW));
    } else if let Some(n) = servers.filter(|&n| n > varz.len() && !varz.is_empty()) {
        findings.push(Finding::warn(
            CHECK,
            format!("checked on {} of {n} servers", varz.len()),
            HOW,
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_fail_below_ttl_and_warn_below_the_fixed_release() {
        assert_eq!(version_finding("n1", "2.10.22").status, Status::Fail);
        assert_eq!(version_finding("n1", "2.11.9").status, Status::Warn);
        assert_eq!(version_finding("n1", "2.12.2").status, Status::Warn);
        assert_eq!(version_finding("n1", "2.12.3").status, Status::Ok);
        assert_eq!(version_finding("n1", "v2.15.1").status, Status::Ok);
        assert_eq!(version_finding("n1", "2.14.0-RC.1").status, Status::Ok);
        // Anything a server sends: a warning, never a panic.
        for junk in ["", "2", "2.x.1", "99999999999999999999.1.1", "é"] {
            assert_eq!(version_finding("n1", junk).status, Status::Warn, "{junk:?}");
        }
    }

    #[test]
    fn sync_always_is_ok_and_the_default_warns_with_the_interval() {
        let varz = |json: &str| serde_json::from_str::<Varz>(json).unwrap();
        let always = varz(
            r#"{"server_name":"n1","jetstream":{"config":{"sync_interval":120000000000,"sync_always":true}}}"#,
        );
        assert_eq!(sync_finding(&always).status, Status::Ok);
        let default = sync_finding(&varz(
            r#"{"server_name":"n1","jetstream":{"config":{"sync_interval":120000000000}}}"#,
        ));
        assert_eq!(default.status, Status::Warn);
        assert!(default.detail.contains("every 2m"), "{}", default.detail);
        assert!(default.fix.unwrap().contains("sync_interval: always"));
        let odd = sync_finding(&varz(r#"{"jetstream":{"config":{"sync_interval":-5}}}"#));
        assert!(odd.detail.contains("unknown"), "{}", odd.detail);
    }

    #[test]
    fn text_has_a_fix_line_under_each_problem() {
        let text = render(&[
            Finding::ok("coordinators", "1 running"),
            Finding::fail("locks-bucket", "missing", "create it"),
        ]);
        assert_eq!(
            text,
            "OK    coordinators  1 running\nFAIL  locks-bucket  missing\n                    fix: create it\n"
        );
    }
}
