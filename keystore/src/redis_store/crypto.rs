//! Key material at rest: AES-256-GCM with a random 96-bit nonce per value (ring), the context
//! (group and key id) bound in as associated data so a sealed value cannot be moved elsewhere.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

use crate::secret::Secret;
use crate::store::StoreError;

const SEALED: &str = "v1.aes256gcm.";
const PLAIN: &str = "plain.";

/// The state encryption key: 32 bytes, given as base64.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptionKey([u8; 32]);

impl EncryptionKey {
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| "the state encryption key is not valid base64".to_owned())?;
        let key: [u8; 32] = bytes.try_into().map_err(|v: Vec<u8>| {
            format!(
                "the state encryption key must be 32 bytes (base64 of 32 random bytes), not {}",
                v.len()
            )
        })?;
        Ok(Self(key))
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
        f.write_str("EncryptionKey(<redacted>)")
    }
}

/// Seals and opens values; `None` key means plaintext was explicitly allowed.
pub struct Sealer {
    key: Option<LessSafeKey>,
    rng: SystemRandom,
}

impl Sealer {
    pub fn new(key: Option<&EncryptionKey>) -> Self {
        Self {
            key: key.and_then(|k| {
                UnboundKey::new(&AES_256_GCM, &k.0)
                    .ok()
                    .map(LessSafeKey::new)
            }),
            rng: SystemRandom::new(),
        }
    }

    pub fn encrypts(&self) -> bool {
        self.key.is_some()
    }

    pub fn seal(&self, secret: &Secret, context: &str) -> Result<String, StoreError> {
        let Some(key) = &self.key else {
            return Ok(format!("{PLAIN}{}", secret.expose()));
        };
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| StoreError::Corrupt("no randomness for a nonce".into()))?;
        let mut data = secret.expose().as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context.as_bytes()),
            &mut data,
        )
        .map_err(|_| StoreError::Corrupt("encryption failed".into()))?;
        let mut out = Vec::with_capacity(NONCE_LEN + data.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(format!("{SEALED}{}", B64.encode(out)))
    }

    pub fn open(&self, sealed: &str, context: &str) -> Result<Secret, StoreError> {
        if let Some(plain) = sealed.strip_prefix(PLAIN) {
            return Ok(Secret::new(plain));
        }
        let Some(b64) = sealed.strip_prefix(SEALED) else {
            return Err(StoreError::Corrupt(format!(
                "{context}: unknown secret format"
            )));
        };
        let Some(key) = &self.key else {
            return Err(StoreError::Corrupt(format!(
                "{context}: the store holds encrypted keys and no encryption key is configured"
            )));
        };
        let mut data = B64
            .decode(b64)
            .map_err(|_| StoreError::Corrupt(format!("{context}: bad base64")))?;
        if data.len() < NONCE_LEN {
            return Err(StoreError::Corrupt(format!("{context}: too short")));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&data[..NONCE_LEN]);
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data[NONCE_LEN..],
            )
            .map_err(|_| {
                StoreError::Corrupt(format!(
                    "{context}: cannot decrypt (another encryption key, or tampered data)"
                ))
            })?;
        let text = std::str::from_utf8(plain)
            .map_err(|_| StoreError::Corrupt(format!("{context}: not UTF-8")))?;
        Ok(Secret::new(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_with_fresh_nonces() {
        let key = EncryptionKey::from_base64(&EncryptionKey::generate_base64()).unwrap();
        let s = Sealer::new(Some(&key));
        let secret = Secret::new("fake-api-key-123");
        let a = s.seal(&secret, "g|k-1").unwrap();
        let b = s.seal(&secret, "g|k-1").unwrap();
        assert_ne!(a, b, "nonces must differ");
        assert!(!a.contains("fake-api-key"));
        assert_eq!(s.open(&a, "g|k-1").unwrap().expose(), "fake-api-key-123");
        // Another context (a value moved to another group or key) does not open.
        assert!(s.open(&a, "h|k-1").is_err());
        // Another key does not open it either.
        let other = EncryptionKey::from_base64(&EncryptionKey::generate_base64()).unwrap();
        assert!(Sealer::new(Some(&other)).open(&a, "g|k-1").is_err());
        // Without a key: refuses to open sealed values.
        assert!(Sealer::new(None).open(&a, "g|k-1").is_err());
    }

    #[test]
    fn plaintext_only_when_allowed() {
        let s = Sealer::new(None);
        let v = s.seal(&Secret::new("k"), "c").unwrap();
        assert_eq!(v, "plain.k");
        assert_eq!(s.open(&v, "c").unwrap().expose(), "k");
    }

    #[test]
    fn key_must_be_32_bytes_of_base64() {
        assert!(EncryptionKey::from_base64("not base64!").is_err());
        let e = EncryptionKey::from_base64("AAAA").unwrap_err();
        assert!(e.contains("32 bytes"), "{e}");
        assert!(!format!("{:?}", EncryptionKey([7; 32])).contains('7'));
    }
}
