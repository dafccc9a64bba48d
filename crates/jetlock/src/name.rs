//! Lock names and their KV keys.
//!
//! A lock name is any UTF-8 string of 1 to [`MAX_NAME_BYTES`] bytes without
//! control characters. It maps reversibly onto a NATS KV key, so no name can
//! ever inject a wildcard (`*`, `>`), an extra subject token (`.`) or
//! whitespace into a subject:
//!
//! - `:` separates segments and becomes `.`, so `account:42` is stored under
//!   the key `account.42` and a prefix such as `account` is one subject
//!   filter (`account.>`) for operators and per-prefix policies;
//! - inside a segment, ASCII letters, digits, `_` and `-` stay as they are;
//!   every other byte (`.`, `=`, `*`, `>`, space, `/`, non-ASCII…) becomes
//!   `=XX` with two upper-case hex digits of the UTF-8 byte;
//! - an empty segment (as in `a::b` or a trailing `:`) becomes a lone `=`,
//!   which no escape sequence can produce, so keys never hold an empty token.
//!
//! The resulting key only uses `[A-Za-z0-9_=.-]`, never starts or ends with
//! `.` and never contains `..`: it is a valid KV key and a literal subject.

use std::fmt;
use std::sync::Arc;

/// Longest lock name accepted, in UTF-8 bytes. An escaped key is at most
/// three times as long, well inside NATS' subject limits.
pub const MAX_NAME_BYTES: usize = 256;

/// Why a lock name or a KV key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is the empty string.
    #[error("lock name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_BYTES`].
    #[error("lock name is {len} bytes long; the limit is {max} bytes")]
    TooLong { len: usize, max: usize },
    /// The name holds a control character (CR, LF, NUL, …) at a byte offset.
    #[error(
        "lock name holds control character {ch:?} at byte {at}; control characters are not allowed"
    )]
    ControlChar { ch: char, at: usize },
    /// A KV key that jetlock did not write (not a valid escaped name).
    #[error("KV key {key:?} is not a jetlock lock key: {reason}")]
    MalformedKey { key: String, reason: &'static str },
}

/// A validated lock name together with its KV key.
///
/// Both live in one shared allocation (the key, then the name), so a clone
/// costs no allocation: every acquisition hands its name to the attempt,
/// the hold and the client's tables.
#[derive(Clone)]
pub struct LockName {
    /// The key followed by the name.
    text: Arc<str>,
    /// Length of the key in `text`.
    key_len: usize,
}

impl LockName {
    /// Validates `name` and computes its key.
    pub fn new(name: &str) -> Result<Self, NameError> {
        validate(name)?;
        // Built on the stack and copied once into the shared allocation.
        let mut text = TextBuf {
            bytes: [0; MAX_TEXT_BYTES],
            len: 0,
        };
        encode_into(name, &mut text);
        let key_len = text.len;
        name.bytes().for_each(|b| text.push(b));
        let text = std::str::from_utf8(&text.bytes[..text.len])
            .expect("a key is ASCII and a name is UTF-8");
        Ok(LockName {
            text: text.into(),
            key_len,
        })
    }

    /// Recovers the lock name from a KV key (as listed from the bucket).
    pub fn from_key(key: &str) -> Result<Self, NameError> {
        let name = decode(key)?;
        validate(&name).map_err(|_| NameError::MalformedKey {
            key: key.to_owned(),
            reason: "decodes to an invalid lock name",
        })?;
        Ok(LockName {
            text: [key, &name].concat().into(),
            key_len: key.len(),
        })
    }

    /// The name as the user wrote it.
    pub fn as_str(&self) -> &str {
        &self.text[self.key_len..]
    }

    /// The KV key this lock is stored under.
    pub fn key(&self) -> &str {
        &self.text[..self.key_len]
    }
}

// Ordered by key first: multi-key acquisition sorts by this order, and the
// key is what every process agrees on. The key determines the name, so the
// name only breaks ties that never occur, and the hash is the key's.
impl PartialEq for LockName {
    fn eq(&self, other: &Self) -> bool {
        self.key_len == other.key_len && self.text == other.text
    }
}

impl Eq for LockName {}

impl std::hash::Hash for LockName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state);
    }
}

impl PartialOrd for LockName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for LockName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.key(), self.as_str()).cmp(&(other.key(), other.as_str()))
    }
}

impl fmt::Display for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for LockName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LockName({:?})", self.as_str())
    }
}

impl std::str::FromStr for LockName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LockName::new(s)
    }
}

fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(NameError::TooLong {
            len: name.len(),
            max: MAX_NAME_BYTES,
        });
    }
    if let Some((at, ch)) = name.char_indices().find(|(_, c)| c.is_control()) {
        return Err(NameError::ControlChar { ch, at });
    }
    Ok(())
}

fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Encodes a segment prefix (the part of a name before `:`) into a KV-key
/// prefix, for listing locks under a prefix. Same rules as full names.
pub fn encode(name: &str) -> String {
    let mut key = String::with_capacity(name.len() + 8);
    encode_into(name, &mut key);
    key
}

/// Longest key and name together: every byte of a name becomes at most
/// three in its key (an escape, or an empty segment's `=` and a `.`).
const MAX_TEXT_BYTES: usize = 4 * MAX_NAME_BYTES;

/// Where [`encode_into`] writes a key.
trait KeySink {
    fn push(&mut self, b: u8);
}

impl KeySink for String {
    fn push(&mut self, b: u8) {
        String::push(self, char::from(b));
    }
}

/// A [`LockName`]'s text, before it is copied into its allocation.
struct TextBuf {
    bytes: [u8; MAX_TEXT_BYTES],
    len: usize,
}

impl KeySink for TextBuf {
    fn push(&mut self, b: u8) {
        self.bytes[self.len] = b;
        self.len += 1;
    }
}

/// Writes `name`'s key; only ASCII bytes.
fn encode_into(name: &str, key: &mut impl KeySink) {
    for (i, segment) in name.split(':').enumerate() {
        if i > 0 {
            key.push(b'.');
        }
        if segment.is_empty() {
            key.push(b'=');
            continue;
        }
        for &b in segment.as_bytes() {
            if is_plain(b) {
                key.push(b);
            } else {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                key.push(b'=');
                key.push(HEX[(b >> 4) as usize]);
                key.push(HEX[(b & 0xF) as usize]);
            }
        }
    }
}

fn decode(key: &str) -> Result<String, NameError> {
    let bad = |reason| NameError::MalformedKey {
        key: key.to_owned(),
        reason,
    };
    let mut bytes = Vec::with_capacity(key.len());
    for (i, segment) in key.split('.').enumerate() {
        if i > 0 {
            bytes.push(b':');
        }
        if segment == "=" {
            continue;
        }
        if segment.is_empty() {
            return Err(bad("empty token"));
        }
        let raw = segment.as_bytes();
        let mut j = 0;
        while j < raw.len() {
            match raw[j] {
                b'=' => {
                    let hex = raw.get(j + 1..j + 3).ok_or(bad("truncated escape"))?;
                    let hex = std::str::from_utf8(hex).map_err(|_| bad("bad escape"))?;
                    let byte = u8::from_str_radix(hex, 16).map_err(|_| bad("bad escape"))?;
                    if is_plain(byte) || hex.bytes().any(|h| h.is_ascii_lowercase()) {
                        // Only one spelling per name keeps keys canonical.
                        return Err(bad("non-canonical escape"));
                    }
                    bytes.push(byte);
                    j += 3;
                }
                b if is_plain(b) => {
                    bytes.push(b);
                    j += 1;
                }
                _ => return Err(bad("character outside [A-Za-z0-9_=.-]")),
            }
        }
    }
    String::from_utf8(bytes).map_err(|_| bad("escapes do not form UTF-8"))
}

/// Most permits a semaphore has: its permits are `N:~sem:permit:0` to
/// `N:~sem:permit:1023`.
pub const MAX_PERMITS: u32 = 1024;

/// A part of a read/write lock or semaphore `N`: an ordinary lock under a
/// reserved name (docs/ARCHITECTURE.md, "Read/write locks and semaphores").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part<'a> {
    /// `N:~rw:read:<session>`: the reads of one session.
    Read { session: &'a str },
    /// `N:~rw:write`: the writer, or a reader passing through.
    Write,
    /// `N:~sem:permit:<index>`, `index` below [`MAX_PERMITS`] in plain
    /// decimal.
    Permit { index: u32 },
    /// `N:~sem:queue`: the semaphore's first waiter.
    Queue,
}

/// The reserved markers; the first one in a name starts its part.
const MARKERS: [&str; 2] = [":~rw:", ":~sem:"];

/// The name `N` and the part a lock name is, if it has a reserved marker
/// (`:~rw:` or `:~sem:`): `None` for any other name, `Some((N, Err(why)))`
/// for a marker followed by something that is no part.
pub fn part(name: &str) -> Option<(&str, Result<Part<'_>, &'static str>)> {
    let (at, marker) = MARKERS
        .iter()
        .filter_map(|m| name.find(m).map(|at| (at, *m)))
        .min()?;
    let (of, rest) = (&name[..at], &name[at + marker.len()..]);
    let part = match (marker, rest) {
        (":~rw:", "write") => Ok(Part::Write),
        (":~rw:", r) => match r.strip_prefix("read:") {
            Some(session) if !session.is_empty() => Ok(Part::Read { session }),
            _ => Err("after `:~rw:` comes `write` or `read:<session>`"),
        },
        (_, "queue") => Ok(Part::Queue),
        (_, r) => match r.strip_prefix("permit:") {
            Some(i)
                if i == "0" || (!i.starts_with('0') && i.bytes().all(|b| b.is_ascii_digit())) =>
            {
                match i.parse::<u32>() {
                    Ok(index) if index < MAX_PERMITS => Ok(Part::Permit { index }),
                    _ => Err("a permit's index is below 1024"),
                }
            }
            _ => Err("after `:~sem:` comes `queue` or `permit:<index>` in plain decimal"),
        },
    };
    Some((of, part))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parts_are_read_from_their_reserved_names() {
        assert_eq!(part("account:42"), None);
        assert_eq!(part("a:~rw:write"), Some(("a", Ok(Part::Write))));
        assert_eq!(
            part("a:~rw:read:billing.w1"),
            Some((
                "a",
                Ok(Part::Read {
                    session: "billing.w1"
                })
            ))
        );
        assert_eq!(
            part("a:~sem:permit:0"),
            Some(("a", Ok(Part::Permit { index: 0 })))
        );
        assert_eq!(
            part("a:~sem:permit:1023"),
            Some(("a", Ok(Part::Permit { index: 1023 })))
        );
        assert_eq!(part("a:~sem:queue"), Some(("a", Ok(Part::Queue))));
        // The first marker decides: a name `N` may hold `~` itself.
        assert_eq!(
            part("x:~sem:queue:~rw:write").map(|(n, p)| (n, p.is_ok())),
            Some(("x", false))
        );
        for bad in [
            "a:~rw:",
            "a:~rw:read:",
            "a:~rw:reader",
            "a:~rw:write:x",
            "a:~sem:permit:",
            "a:~sem:permit:01",
            "a:~sem:permit:+1",
            "a:~sem:permit:1024",
            "a:~sem:permit:99999999999",
            "a:~sem:queue:x",
        ] {
            assert!(matches!(part(bad), Some((_, Err(_)))), "{bad}");
        }
    }

    fn valid_key(key: &str) -> bool {
        !key.is_empty()
            && !key.starts_with('.')
            && !key.ends_with('.')
            && !key.contains("..")
            && key.bytes().all(|b| is_plain(b) || b == b'=' || b == b'.')
    }

    #[test]
    fn readable_names_stay_readable() {
        assert_eq!(LockName::new("account:42").unwrap().key(), "account.42");
        assert_eq!(LockName::new("order-7_x").unwrap().key(), "order-7_x");
    }

    #[test]
    fn injection_characters_are_escaped() {
        let cases = [
            ("a.b", "a=2Eb"),
            ("*", "=2A"),
            (">", "=3E"),
            ("a b", "a=20b"),
            ("x=y", "x=3Dy"),
            ("::", "=.=.="),
            ("ü", "=C3=BC"),
        ];
        for (name, key) in cases {
            let n = LockName::new(name).unwrap();
            assert_eq!(n.key(), key, "{name}");
            assert_eq!(LockName::from_key(key).unwrap().as_str(), name);
        }
    }

    #[test]
    fn bad_names_are_refused() {
        assert_eq!(LockName::new(""), Err(NameError::Empty));
        assert!(matches!(
            LockName::new(&"x".repeat(MAX_NAME_BYTES + 1)),
            Err(NameError::TooLong { .. })
        ));
        assert!(LockName::new(&"x".repeat(MAX_NAME_BYTES)).is_ok());
        // The longest keys: every byte escaped, or every segment empty.
        for longest in ["*".repeat(MAX_NAME_BYTES), ":".repeat(MAX_NAME_BYTES)] {
            let n = LockName::new(&longest).unwrap();
            assert_eq!(n.as_str(), longest);
            assert_eq!(LockName::from_key(n.key()).unwrap(), n);
        }
        for name in ["a\nb", "a\rb", "\0", "tab\there", "del\u{7f}"] {
            assert!(
                matches!(LockName::new(name), Err(NameError::ControlChar { .. })),
                "{name:?}"
            );
        }
    }

    #[test]
    fn foreign_keys_are_refused() {
        for key in [
            "", ".a", "a.", "a..b", "a=2", "a=ZZ", "a=41", "a=c3=bc", "a*", "a>", "=FF",
        ] {
            assert!(
                matches!(LockName::from_key(key), Err(NameError::MalformedKey { .. })),
                "{key:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn every_valid_name_round_trips_to_a_valid_key(name in "\\PC{1,80}") {
            let n = LockName::new(&name).unwrap();
            prop_assert!(valid_key(n.key()), "{:?} -> {:?}", name, n.key());
            let back = LockName::from_key(n.key()).unwrap();
            prop_assert_eq!(back.as_str(), name.as_str());
        }

        #[test]
        fn distinct_names_get_distinct_keys(a in "[a-z:.= ]{1,6}", b in "[a-z:.= ]{1,6}") {
            prop_assume!(a != b);
            prop_assert_ne!(encode(&a), encode(&b));
        }

        #[test]
        fn decoding_arbitrary_keys_never_panics(key in "[A-Za-z0-9=._*> -]{0,40}") {
            let _ = LockName::from_key(&key);
        }
    }
}
