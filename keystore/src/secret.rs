//! Secret values (API keys, client tokens, egress credentials) and the ids that stand for them.
//!
//! A [`Secret`] never prints itself: `Debug` and `Display` show a placeholder, and it does not
//! implement `Serialize`, so it cannot leak into a log line, a metric label, a status or a panic
//! message by accident. Code that must send the value calls [`Secret::expose`].

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A secret string. Cheap to clone; redacted in `Debug`/`Display`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// The clear value, for the one place that must send it upstream.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The id of this value when it is an API key.
    pub fn key_id(&self) -> KeyId {
        KeyId::of(self.expose())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The public name of an API key: `k-` and the first 12 hex digits of its SHA-256.
///
/// 48 bits of a cryptographic hash identify a key among thousands without revealing it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    pub fn of(key: &str) -> Self {
        let digest = Sha256::digest(key.as_bytes());
        let mut id = String::with_capacity(14);
        id.push_str("k-");
        push_hex(&mut id, &digest[..6]);
        Self(id)
    }

    /// Takes an id that was computed elsewhere (read back from a store or a status).
    pub fn from_raw(id: impl Into<String>) -> Self {
        Self(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// SHA-256 of a client token, in hex. Stores and configs hold only this, never the token.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenDigest(String);

impl TokenDigest {
    pub fn of(token: &str) -> Self {
        Self(hex(&Sha256::digest(token.as_bytes())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A short form for logs: enough to tell clients apart, useless to an attacker.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(12)]
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest({})", self.short())
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints_itself() {
        let s = Secret::new("AIzaFAKE-not-a-real-key-0000000000000");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{s}"), "<redacted>");
        assert!(!format!("{:?}", Some(&s)).contains("FAKE"));
    }

    #[test]
    fn key_id_is_short_stable_fingerprint() {
        let a = KeyId::of("fake-key-one");
        assert_eq!(a, KeyId::of("fake-key-one"));
        assert_ne!(a, KeyId::of("fake-key-two"));
        assert_eq!(a.as_str().len(), 14);
        assert!(a.as_str().starts_with("k-"));
        // sha256("fake-key-one") starts with these 12 hex digits.
        let full = hex(&Sha256::digest(b"fake-key-one"));
        assert_eq!(&a.as_str()[2..], &full[..12]);
    }

    #[test]
    fn token_digest_is_hex_sha256() {
        let d = TokenDigest::of("abc");
        assert_eq!(
            d.as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.short(), "ba7816bf8f01");
    }
}
