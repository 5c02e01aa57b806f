//! Upstream error bodies are scrubbed before a client sees them: Google names keys in some of
//! its errors (`Consumer 'api_key:AIza...' has been suspended`, the consumer again in the
//! ErrorInfo metadata), and a key must never leave the proxy.
//!
//! Verdicts about a key never pass Google's body on at all (the proxy answers with its own
//! error); this is for the rest (client errors, server errors passed on): every key of the
//! group, anything shaped like a Google API key, whatever follows `api_key:`, and every
//! `consumer` entry of error metadata are taken out.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};

use bytes::Bytes;

const REDACTED: &str = "[redacted]";

/// Digests of a group's key values, to recognise them in a body without keeping copies.
#[derive(Default)]
pub struct KeyDigests(HashSet<u64>);

fn digest(b: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

impl KeyDigests {
    pub fn of<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        Self(keys.into_iter().map(|k| digest(k.as_bytes())).collect())
    }

    fn holds(&self, token: &[u8]) -> bool {
        self.0.contains(&digest(token))
    }
}

fn key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Whether a token must go: a key of the group, a Google API key's shape, or the name after
/// `api_key:`.
fn secret(token: &[u8], after_api_key: bool, keys: &KeyDigests) -> bool {
    after_api_key
        || (token.len() >= 39 && token.starts_with(b"AIza"))
        || (token.len() >= 4 && keys.holds(token))
}

/// The body without keys and consumers; the same bytes (no copy) when there is nothing to take.
pub fn scrub(body: &Bytes, keys: &KeyDigests) -> Bytes {
    let text = body.as_ref();
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < text.len() {
        if !key_char(text[i]) {
            if let Some(o) = out.as_mut() {
                o.push(text[i]);
            }
            i += 1;
            continue;
        }
        let start = i;
        while i < text.len() && key_char(text[i]) {
            i += 1;
        }
        let token = &text[start..i];
        let after_api_key = text[..start].ends_with(b"api_key:");
        if secret(token, after_api_key, keys) {
            let o = out.get_or_insert_with(|| text[..start].to_vec());
            o.extend_from_slice(REDACTED.as_bytes());
        } else if let Some(o) = out.as_mut() {
            o.extend_from_slice(token);
        }
    }
    let scrubbed = out.map(Bytes::from).unwrap_or_else(|| body.clone());
    drop_consumers(&scrubbed).unwrap_or(scrubbed)
}

/// The body without `consumer` entries in error metadata (it names a key or a project), when
/// it has any; pretty-printed JSON like Google's.
fn drop_consumers(body: &Bytes) -> Option<Bytes> {
    if !body.windows(10).any(|w| w == b"\"consumer\"") {
        return None;
    }
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    fn walk(v: &mut serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => {
                let mut changed = false;
                if let Some(serde_json::Value::Object(meta)) = m.get_mut("metadata") {
                    changed |= meta.remove("consumer").is_some();
                }
                for (_, x) in m.iter_mut() {
                    changed |= walk(x);
                }
                changed
            }
            serde_json::Value::Array(a) => a.iter_mut().fold(false, |c, x| walk(x) | c),
            _ => false,
        }
    }
    if !walk(&mut v) {
        return None;
    }
    let mut out = serde_json::to_vec_pretty(&v).ok()?;
    out.push(b'\n');
    Some(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_key_shapes_and_consumers_are_taken_out() {
        let keys = KeyDigests::of(["fake-group-key-123"]);
        let body = Bytes::from_static(
            br#"{"error": {"message": "key fake-group-key-123, consumer 'api_key:other-thing', AIzaFAKEnotArealKEYtooLONGforGOOGLE0000000000", "details": [{"metadata": {"consumer": "projects/42", "service": "x"}}]}}"#,
        );
        let out = String::from_utf8(scrub(&body, &keys).to_vec()).unwrap();
        for gone in [
            "fake-group-key-123",
            "other-thing",
            "AIzaFAKEnot",
            "projects/42",
            "consumer\"",
        ] {
            assert!(!out.contains(gone), "{gone} left in {out}");
        }
        assert!(out.contains("\"service\": \"x\""), "{out}");
        assert!(out.contains("[redacted]"));
    }

    #[test]
    fn a_body_without_secrets_is_the_same_bytes() {
        let keys = KeyDigests::of(["fake-group-key-123"]);
        let body = Bytes::from_static(b"{\n  \"error\": {\n    \"code\": 400,\n    \"message\": \"token count exceeds the limit\"\n  }\n}\n");
        let out = scrub(&body, &keys);
        assert_eq!(out, body);
        assert_eq!(out.as_ptr(), body.as_ptr(), "no copy");
    }
}
