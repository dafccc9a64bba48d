//! The series a PromQL expression selects, read well enough to check that
//! alert rules and dashboards name metrics (and label values) a coordinator
//! exports: `rate(jetlock_expiries_total{cause="lease"}[5m])` selects
//! `jetlock_expiries_total` with `cause="lease"`. Functions, aggregations,
//! `by (...)` lists, ranges, numbers and strings are skipped.

/// A metric name and the label values an expression matches with `=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub name: String,
    pub equal: Vec<(String, String)>,
}

/// Aggregations may put a `by (...)` clause between their name and their
/// argument, so they are not always followed by `(`.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
];
/// Keywords; those that take a label list are skipped with it.
const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
];

/// Every selector of `expr`.
pub fn selectors(expr: &str) -> Vec<Selector> {
    let chars: Vec<char> = expr.chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
        } else if c == '[' {
            i = skip_to(&chars, i, ']');
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let followed_by = chars.get(next).copied();
            if KEYWORDS.contains(&word.as_str()) {
                if followed_by == Some('(') {
                    i = skip_to(&chars, next, ')');
                }
            } else if followed_by == Some('(') || AGGREGATIONS.contains(&word.as_str()) {
                // A function or an aggregation.
            } else {
                let mut selector = Selector {
                    name: word,
                    equal: Vec::new(),
                };
                if followed_by == Some('{') {
                    let end = skip_to(&chars, next, '}');
                    let inside: String = chars[next + 1..end - 1].iter().collect();
                    selector.equal = equal_matchers(&inside);
                    i = end;
                }
                found.push(selector);
            }
        } else if c == '$' {
            // A Grafana variable (`$__rate_interval`, `$coordinator`).
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    found
}

/// The index after the string that starts at `i`.
fn skip_string(chars: &[char], i: usize) -> usize {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() && chars[j] != quote {
        j += if chars[j] == '\\' { 2 } else { 1 };
    }
    j + 1
}

/// The index after the `close` that matches the opening bracket at `i`.
fn skip_to(chars: &[char], i: usize, close: char) -> usize {
    let open = chars[i];
    let mut depth = 0;
    let mut j = i;
    while j < chars.len() {
        match chars[j] {
            '"' | '\'' | '`' => {
                j = skip_string(chars, j);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    panic!(
        "unbalanced {open} in {:?}",
        chars.iter().collect::<String>()
    );
}

/// `a="x", b=~"y"` → `[("a", "x")]`: only equality matchers name values
/// that must exist; regex and negative ones are left out, as are values
/// with Grafana variables.
fn equal_matchers(inside: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for part in inside.split(',') {
        let Some((label, value)) = part.split_once('=') else {
            continue;
        };
        let label = label.trim();
        if label.ends_with('!') || value.starts_with('~') {
            continue;
        }
        let value = value.trim().trim_matches('"');
        if !value.contains('$') {
            out.push((label.to_owned(), value.to_owned()));
        }
    }
    out
}

/// The series of a scrape: for each sample line, its name and labels.
pub fn scraped(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let series = l.split_whitespace().next()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, equal_matchers(rest.trim_end_matches('}'))),
                None => (series, Vec::new()),
            };
            Some((name.to_owned(), labels))
        })
        .collect()
}

/// Whether `scrape` has a series that `selector` selects.
pub fn selects(scrape: &[(String, Vec<(String, String)>)], selector: &Selector) -> bool {
    scrape.iter().any(|(name, labels)| {
        *name == selector.name && selector.equal.iter().all(|m| labels.contains(m))
    })
}
