//! Group snapshots at rest: the whole snapshot is sealed with AES-256-GCM (ring) under a key
//! derived for the group's namespace, the group name bound in as associated data, so that
//! nobody without the state key can read it, change it (an upstream URL, a client token
//! digest, a limit) or move it to another name.
//!
//! # Keys
//! The state key (32 random bytes) is the *master*. Each namespace gets its own key,
//! HKDF-SHA256(master, salt [`HKDF_SALT`], info `namespace:NS`), where `NS` is the part of the
//! group name before `/` (the operator names groups `NAMESPACE/NAME`; groups from a config file
//! have no namespace, `NS` is empty). A proxy given only a namespace's derived key
//! ([`EncryptionKey::scoped_to`]) reads that namespace's groups and nothing else: the sidecar
//! case, where one tenant must not decrypt another's keys.
//!
//! Without a state key (plaintext explicitly allowed) snapshots are JSON with key values as
//! `plain.VALUE`. With one, anything but a sealed snapshot is refused.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

use crate::store::StoreError;

/// The prefix of a sealed snapshot (version 2 of the stored format).
pub const SEALED_SNAPSHOT: &str = "v2.aes256gcm.";
/// The salt of the per-namespace key derivation.
pub const HKDF_SALT: &[u8] = b"gemini-proxy state key v2";
const AAD_PREFIX: &str = "gemini-proxy group snapshot v2\n";

/// Which groups a key opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyScope {
    /// The master key: every group (each namespace's key is derived from it).
    Master,
    /// A key derived for one namespace: only groups named `NAMESPACE/...`.
    Namespace(String),
}

/// The state encryption key: 32 bytes, given as base64, and what it may open.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptionKey {
    bytes: [u8; 32],
    scope: KeyScope,
}

impl EncryptionKey {
    /// A master key from its base64 text.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let decoded = B64
            .decode(text.trim())
            .map_err(|_| "the state encryption key is not valid base64".to_owned())?;
        let bytes: [u8; 32] = decoded.try_into().map_err(|v: Vec<u8>| {
            format!(
                "the state encryption key must be 32 bytes (base64 of 32 random bytes), not {}",
                v.len()
            )
        })?;
        Ok(Self {
            bytes,
            scope: KeyScope::Master,
        })
    }

    /// Declares this key to be the derived key of `namespace` (what `gemini-proxy
    /// derive-state-key` printed), not a master.
    pub fn scoped_to(mut self, namespace: &str) -> Result<Self, String> {
        check_namespace(namespace)?;
        self.scope = KeyScope::Namespace(namespace.to_owned());
        Ok(self)
    }

    pub fn scope(&self) -> &KeyScope {
        &self.scope
    }

    /// The derived key of `namespace`, as base64 (only a master can derive).
    pub fn derive_base64(&self, namespace: &str) -> Result<String, String> {
        check_namespace(namespace)?;
        match &self.scope {
            KeyScope::Master => Ok(B64.encode(derive(&self.bytes, namespace))),
            KeyScope::Namespace(_) => {
                Err("a namespace's key cannot derive others: give the master key".into())
            }
        }
    }

    /// Whether this key opens the group `group`.
    pub fn opens(&self, group: &str) -> bool {
        match &self.scope {
            KeyScope::Master => true,
            KeyScope::Namespace(ns) => namespace_of(group) == ns,
        }
    }

    /// The 32 bytes that seal `group`: derived from the master, or this key itself when it
    /// is that group's namespace key.
    fn group_key(&self, group: &str) -> Result<[u8; 32], StoreError> {
        match &self.scope {
            KeyScope::Master => Ok(derive(&self.bytes, namespace_of(group))),
            KeyScope::Namespace(ns) if namespace_of(group) == ns => Ok(self.bytes),
            KeyScope::Namespace(ns) => Err(StoreError::Corrupt(format!(
                "group {group}: outside namespace {ns}, the only one this state key opens"
            ))),
        }
    }

    /// A random key, base64 (for `gemini-proxy` users who need one, and tests).
    pub fn generate_base64() -> String {
        let mut key = [0u8; 32];
        let _ = SystemRandom::new().fill(&mut key);
        B64.encode(key)
    }
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncryptionKey(<redacted>, {:?})", self.scope)
    }
}

fn check_namespace(namespace: &str) -> Result<(), String> {
    if namespace.is_empty() || namespace.len() > 253 || namespace.contains(['/', '{', '}']) {
        return Err(format!(
            "namespace {namespace:?}: must be a Kubernetes namespace name"
        ));
    }
    Ok(())
}

/// The namespace of a group name: the part before `/`, empty without one.
pub fn namespace_of(group: &str) -> &str {
    group.split_once('/').map_or("", |(ns, _)| ns)
}

struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn derive(master: &[u8; 32], namespace: &str) -> [u8; 32] {
    let info = format!("namespace:{namespace}");
    let info = [info.as_bytes()];
    let mut out = [0u8; 32];
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(master);
    // Expanding 32 bytes from SHA-256 cannot fail (the limit is 255 blocks).
    if let Ok(okm) = prk.expand(&info, Len32) {
        let _ = okm.fill(&mut out);
    }
    out
}

fn aad(group: &str) -> String {
    format!("{AAD_PREFIX}{group}")
}

/// Seals and opens snapshots; without a key, plaintext was explicitly allowed.
pub struct Sealer {
    key: Option<EncryptionKey>,
    rng: SystemRandom,
}

impl Sealer {
    pub fn new(key: Option<&EncryptionKey>) -> Self {
        Self {
            key: key.cloned(),
            rng: SystemRandom::new(),
        }
    }

    /// Whether this sealer reads `group` at all (a namespace key skips other namespaces).
    pub fn reads(&self, group: &str) -> bool {
        self.key.as_ref().is_none_or(|k| k.opens(group))
    }

    /// The stored form of the snapshot `json` of `group`.
    pub fn seal(&self, group: &str, json: String) -> Result<String, StoreError> {
        let Some(key) = &self.key else {
            return Ok(json);
        };
        let aead = aead_key(&key.group_key(group)?)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| StoreError::Corrupt("no randomness for a nonce".into()))?;
        let mut data = json.into_bytes();
        aead.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(group).as_bytes()),
            &mut data,
        )
        .map_err(|_| StoreError::Corrupt("encryption failed".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + data.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(format!("{SEALED_SNAPSHOT}{}", B64.encode(out)))
    }

    /// The snapshot JSON of `group` from its stored form. With a key, only a value sealed
    /// under this group's key and name opens; without one, a sealed value is refused.
    pub fn open(&self, group: &str, stored: &str) -> Result<String, StoreError> {
        let refuse = |why: &str| StoreError::Corrupt(format!("group {group}: {why}"));
        let Some(key) = &self.key else {
            if stored.starts_with(SEALED_SNAPSHOT) {
                return Err(refuse(
                    "the snapshot is encrypted and no state key is configured",
                ));
            }
            return Ok(stored.to_owned());
        };
        let Some(b64) = stored.strip_prefix(SEALED_SNAPSHOT) else {
            return Err(refuse(
                "refused: the snapshot is not sealed with the state key (written in clear, by \
                 someone without the key, or by a version before 0.2; the operator rewrites it)",
            ));
        };
        let mut data = B64.decode(b64).map_err(|_| refuse("bad base64"))?;
        if data.len() < NONCE_LEN {
            return Err(refuse("too short"));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&data[..NONCE_LEN]);
        let aead = aead_key(&key.group_key(group)?)?;
        let plain = aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(group).as_bytes()),
                &mut data[NONCE_LEN..],
            )
            .map_err(|_| {
                refuse("refused: the snapshot does not authenticate (another state key, another group's snapshot, or tampered data)")
            })?;
        String::from_utf8(plain.to_vec()).map_err(|_| refuse("not UTF-8"))
    }
}

fn aead_key(bytes: &[u8; 32]) -> Result<LessSafeKey, StoreError> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| StoreError::Corrupt("cannot make an AES key".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master() -> EncryptionKey {
        EncryptionKey::from_base64(&EncryptionKey::generate_base64()).unwrap()
    }

    #[test]
    fn seal_open_roundtrip_with_fresh_nonces() {
        let key = master();
        let s = Sealer::new(Some(&key));
        let json = r#"{"name":"ns/g","secret":"plain.fake-api-key-123"}"#.to_owned();
        let a = s.seal("ns/g", json.clone()).unwrap();
        let b = s.seal("ns/g", json.clone()).unwrap();
        assert_ne!(a, b, "nonces must differ");
        assert!(!a.contains("fake-api-key"));
        assert_eq!(s.open("ns/g", &a).unwrap(), json);
        // Moved to another name, in the same or another namespace: refused.
        assert!(s.open("ns/h", &a).is_err());
        assert!(s.open("other/g", &a).is_err());
        // Another master: refused. No key: refused.
        assert!(Sealer::new(Some(&master())).open("ns/g", &a).is_err());
        assert!(Sealer::new(None).open("ns/g", &a).is_err());
    }

    #[test]
    fn with_a_key_unsealed_values_are_refused() {
        let s = Sealer::new(Some(&master()));
        let e = s
            .open(
                "g",
                r#"{"name":"g","upstream":{"url":"https://evil.example"}}"#,
            )
            .unwrap_err();
        assert!(e.to_string().contains("not sealed"), "{e}");
        // One flipped byte of a sealed value: refused.
        let mut sealed = s.seal("g", "{}".into()).unwrap().into_bytes();
        let at = sealed.len() - 3;
        sealed[at] = if sealed[at] == b'A' { b'B' } else { b'A' };
        let e = s
            .open("g", std::str::from_utf8(&sealed).unwrap())
            .unwrap_err();
        assert!(e.to_string().contains("does not authenticate"), "{e}");
    }

    #[test]
    fn plaintext_only_when_allowed() {
        let s = Sealer::new(None);
        assert_eq!(s.seal("g", "{}".into()).unwrap(), "{}");
        assert_eq!(s.open("g", "{}").unwrap(), "{}");
    }

    #[test]
    fn a_namespace_key_opens_its_namespace_only() {
        let m = master();
        let writer = Sealer::new(Some(&m));
        let research = writer.seal("research/g", "{\"a\":1}".into()).unwrap();
        let billing = writer.seal("billing/g", "{\"b\":1}".into()).unwrap();
        let derived = EncryptionKey::from_base64(&m.derive_base64("research").unwrap())
            .unwrap()
            .scoped_to("research")
            .unwrap();
        let sidecar = Sealer::new(Some(&derived));
        assert!(sidecar.reads("research/g") && !sidecar.reads("billing/g"));
        assert_eq!(sidecar.open("research/g", &research).unwrap(), "{\"a\":1}");
        assert!(sidecar.open("billing/g", &billing).is_err());
        // Even claimed as billing's key, research's derived key does not open billing.
        let forged = EncryptionKey::from_base64(&m.derive_base64("research").unwrap())
            .unwrap()
            .scoped_to("billing")
            .unwrap();
        assert!(
            Sealer::new(Some(&forged))
                .open("billing/g", &billing)
                .is_err()
        );
        // What a namespace key seals, the master opens.
        let from_sidecar = sidecar.seal("research/g", "{}".into()).unwrap();
        assert_eq!(writer.open("research/g", &from_sidecar).unwrap(), "{}");
        // A derived key cannot derive.
        assert!(derived.derive_base64("billing").is_err());
        // Groups without a namespace use the key of the empty namespace.
        assert_ne!(derive(&[1; 32], ""), derive(&[1; 32], "research"));
    }

    #[test]
    fn key_must_be_32_bytes_of_base64() {
        assert!(EncryptionKey::from_base64("not base64!").is_err());
        let e = EncryptionKey::from_base64("AAAA").unwrap_err();
        assert!(e.contains("32 bytes"), "{e}");
        let k = EncryptionKey {
            bytes: [7; 32],
            scope: KeyScope::Master,
        };
        assert!(!format!("{k:?}").contains('7'));
        assert!(k.clone().scoped_to("a/b").is_err());
        assert!(k.scoped_to("").is_err());
    }
}
