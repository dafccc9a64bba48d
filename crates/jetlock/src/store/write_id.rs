//! Write ids: the `Jetlock-Write-Id` header that names the write which
//! stored a message, so a re-send after a lost ack recognises its own
//! landed write (see the `store` module docs).

use std::fmt::Write;

/// Header naming the write that stored a message.
pub const WRITE_ID: &str = "Jetlock-Write-Id";

/// Identifies one CAS write, the same on every send of it.
#[derive(Debug, Clone, Copy)]
pub struct WriteId<'a> {
    /// Unique per (writer, expected revision).
    pub id: &'a str,
    /// True when an earlier send of this write may have landed.
    pub resend: bool,
}

/// A writer's random part of its write ids: a NUID, kept inline so that
/// an acquisition and its hold allocate nothing for it.
#[derive(Clone, Copy)]
pub(crate) struct Nonce([u8; NUID_LEN]);

const NUID_LEN: usize = 22;

impl Nonce {
    pub(crate) fn new() -> Self {
        Nonce(nuid::next().into_bytes())
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("a NUID is ASCII")
    }

    /// `<nonce>.<kind><revision>`: the id of this writer's write of `kind`
    /// (`a` acquire, `w` rewrite, `x` release) expecting `revision`, in one
    /// allocation of the right size.
    pub(crate) fn write_id(&self, kind: char, revision: u64) -> String {
        let mut id = String::with_capacity(NUID_LEN + 2 + 20);
        id.push_str(self.as_str());
        id.push('.');
        id.push(kind);
        write!(id, "{revision}").expect("writing to a String cannot fail");
        id
    }
}

impl std::fmt::Display for Nonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_ids_are_the_nonce_a_kind_and_the_revision() {
        let nonce = Nonce::new();
        let id = nonce.write_id('x', u64::MAX);
        assert_eq!(id, format!("{}.x{}", nonce.as_str(), u64::MAX));
        assert_eq!(id.len(), id.capacity());
        assert_eq!(nonce.write_id('a', 0), format!("{}.a0", nonce.as_str()));
    }
}
