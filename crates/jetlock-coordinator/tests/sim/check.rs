//! The properties, judged after every step on true simulated time.

use jetlock::protocol::Answer;
use std::collections::{BTreeMap, HashMap};

/// A client session: (client index, session generation).
pub type Who = (usize, u32);

#[derive(Default)]
pub struct Checker {
    /// Who believes they hold each key now, with the token.
    believers: BTreeMap<String, Vec<(Who, u64)>>,
    /// Per key: the highest token believed, and by whom.
    highest: HashMap<String, (u64, Who)>,
    /// Final answers sent, by (session, request id).
    answers: HashMap<(String, String), Outcome>,
    /// Broken safety or liveness: the run stops.
    pub violations: Vec<String>,
    /// Requests answered twice with different outcomes (the run goes on;
    /// a strict run counts them as violations).
    pub double_answers: Vec<String>,
    pub strict: bool,
    pub beliefs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Granted(u64),
    Error(String),
    Other(&'static str),
}

fn outcome(a: &Answer) -> Outcome {
    match a {
        Answer::Granted { token, .. } => Outcome::Granted(*token),
        Answer::Error { code, .. } => Outcome::Error(code.as_str().to_owned()),
        Answer::Released { .. } => Outcome::Other("released"),
        Answer::Renewed { .. } => Outcome::Other("renewed"),
        Answer::Cancelled { .. } => Outcome::Other("cancelled"),
        Answer::Revoking { .. } => Outcome::Other("revoking"),
        _ => Outcome::Other("notice"),
    }
}

impl Checker {
    /// `who` starts believing it holds `key` under `token`.
    pub fn believe(&mut self, now: u64, who: Who, key: &str, token: u64) {
        self.beliefs += 1;
        let list = self.believers.entry(key.to_owned()).or_default();
        for (other, t) in list.iter() {
            if other.0 != who.0 || other.1 != who.1 {
                self.violations.push(format!(
                    "t={now}us: s{}g{} believes it holds {key} (token {token}) while s{}g{} does (token {t})",
                    who.0, who.1, other.0, other.1
                ));
            }
        }
        list.retain(|(w, _)| *w != who);
        list.push((who, token));
        match self.highest.get(key) {
            Some(&(high, by)) if token < high || (token == high && by != who) => {
                self.violations.push(format!(
                    "t={now}us: s{}g{} believes token {token} of {key}, not above token {high} believed by s{}g{}",
                    who.0, who.1, by.0, by.1
                ));
            }
            _ => {}
        }
        self.highest.insert(key.to_owned(), (token, who));
    }

    /// `who` stops believing it holds `key` (lost, or its release starts).
    pub fn unbelieve(&mut self, who: Who, key: &str) {
        if let Some(list) = self.believers.get_mut(key) {
            list.retain(|(w, _)| *w != who);
        }
    }

    /// A coordinator sent `answer` to `session`.
    pub fn answer(&mut self, now: u64, coordinator: &str, session: &str, answer: &Answer) {
        let (Some(re), true) = (answer.re(), answer.is_final()) else {
            return;
        };
        let o = outcome(answer);
        let rid = (session.to_owned(), re.to_owned());
        match self.answers.get(&rid) {
            Some(first) if *first != o => {
                let v = format!(
                    "t={now}us: request {re} of {session} answered {first:?}, then {o:?} by {coordinator}"
                );
                if self.strict {
                    self.violations.push(v.clone());
                }
                self.double_answers.push(v);
            }
            Some(_) => {}
            None => {
                self.answers.insert(rid, o);
            }
        }
    }

    pub fn holders(&self, key: &str) -> usize {
        self.believers.get(key).map_or(0, Vec::len)
    }
}
