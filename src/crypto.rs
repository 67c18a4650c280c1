//! Secrets at rest: webhook signing secrets and merchants' WhatsApp credentials are stored
//! encrypted, so that a database dump alone can neither sign a webhook nor send a message.
//!
//! * XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`), a random 24-byte nonce per value, and
//!   the text form `enc:v1:<base64(nonce || ciphertext)>`.
//! * The key is `ENCRYPTION_KEY` (base64 of 32 bytes). Several keys may be given, comma-separated:
//!   the first encrypts, every one decrypts, so a key can be rotated without a flag day. Without it,
//!   a key is generated once and kept in `DATA_DIR/encryption_key` (mode 0600), like the JWT
//!   secret. Instances that share a database must share the key (set `ENCRYPTION_KEY`).

use std::path::Path;

use base64::{Engine, engine::general_purpose::STANDARD};
use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, AeadCore, OsRng},
};

use crate::error::{Error, Result};

const PREFIX: &str = "enc:v1:";
const NONCE_LEN: usize = 24;

/// Encrypts and decrypts stored secrets.
#[derive(Clone)]
pub struct Cipher {
    /// The first key encrypts; all of them decrypt.
    keys: Vec<XChaCha20Poly1305>,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cipher({} key(s))", self.keys.len())
    }
}

fn bad_key(msg: impl Into<String>) -> Error {
    Error::validation("ENCRYPTION_KEY", msg)
}

fn parse_key(text: &str) -> Result<XChaCha20Poly1305> {
    let raw = STANDARD
        .decode(text.trim())
        .map_err(|_| bad_key("ENCRYPTION_KEY must be base64 (openssl rand -base64 32)"))?;
    if raw.len() != 32 {
        return Err(bad_key(format!(
            "ENCRYPTION_KEY must decode to 32 bytes, not {}",
            raw.len()
        )));
    }
    XChaCha20Poly1305::new_from_slice(&raw).map_err(|_| bad_key("invalid key"))
}

impl Cipher {
    /// From `ENCRYPTION_KEY`'s text: one or more base64 keys, comma-separated.
    pub fn from_keys(text: &str) -> Result<Self> {
        let keys = text
            .split(',')
            .filter(|k| !k.trim().is_empty())
            .map(parse_key)
            .collect::<Result<Vec<_>>>()?;
        if keys.is_empty() {
            return Err(bad_key("ENCRYPTION_KEY is empty"));
        }
        Ok(Self { keys })
    }

    /// The configured keys, or the one kept in `DATA_DIR/encryption_key` (generated when missing).
    pub fn load_or_create(configured: Option<&str>, data_dir: &Path) -> Result<Self> {
        if let Some(text) = configured {
            return Self::from_keys(text);
        }
        let path = data_dir.join("encryption_key");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                crate::auth::token::check_private(&path, "ENCRYPTION_KEY")?;
                // The file is at fault, not the variable (which is unset): say which.
                return Self::from_keys(&text).map_err(|e| {
                    Error::validation(
                        "ENCRYPTION_KEY",
                        format!(
                            "{} (ENCRYPTION_KEY is unset) holds no usable key: {}",
                            path.display(),
                            e.public_message()
                        ),
                    )
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        std::fs::create_dir_all(data_dir)?;
        let key = STANDARD.encode(XChaCha20Poly1305::generate_key(&mut OsRng));
        crate::auth::token::write_private(&path, key.as_bytes())?;
        Self::from_keys(&key)
    }

    /// A fresh random key, for tests and tools.
    pub fn random() -> Self {
        Self {
            keys: vec![XChaCha20Poly1305::new(&XChaCha20Poly1305::generate_key(
                &mut OsRng,
            ))],
        }
    }

    pub fn encrypt(&self, plaintext: &str) -> Result<String> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = self.keys[0]
            .encrypt(&nonce, plaintext.as_bytes())
            .map_err(|_| Error::internal("encryption failed"))?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(format!("{PREFIX}{}", STANDARD.encode(out)))
    }

    /// Decrypts a value from [`encrypt`](Self::encrypt). A value no key opens is INTERNAL (the
    /// key was changed without keeping the old one), never garbage.
    pub fn decrypt(&self, stored: &str) -> Result<String> {
        let body = stored
            .strip_prefix(PREFIX)
            .ok_or_else(|| Error::internal("stored secret is not in the enc:v1 format"))?;
        let raw = STANDARD
            .decode(body)
            .map_err(|_| Error::internal("stored secret is not valid base64"))?;
        if raw.len() < NONCE_LEN {
            return Err(Error::internal("stored secret is truncated"));
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
        let nonce = XNonce::from(nonce);
        self.keys
            .iter()
            .find_map(|k| k.decrypt(&nonce, ct).ok())
            .and_then(|pt| String::from_utf8(pt).ok())
            .ok_or_else(|| {
                Error::internal("no ENCRYPTION_KEY opens a stored secret (was the key replaced?)")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_uses_a_fresh_nonce() {
        let c = Cipher::random();
        let a = c.encrypt("whsec_abc").unwrap();
        let b = c.encrypt("whsec_abc").unwrap();
        assert_ne!(a, b, "each value gets its own nonce");
        assert!(!a.contains("whsec_abc"));
        assert_eq!(c.decrypt(&a).unwrap(), "whsec_abc");
    }

    #[test]
    fn a_rotated_key_list_still_decrypts_old_values() {
        let old = STANDARD.encode([7u8; 32]);
        let new = STANDARD.encode([9u8; 32]);
        let before = Cipher::from_keys(&old).unwrap().encrypt("s").unwrap();
        let after = Cipher::from_keys(&format!("{new},{old}")).unwrap();
        assert_eq!(after.decrypt(&before).unwrap(), "s");
        let only_new = Cipher::from_keys(&new).unwrap();
        assert!(only_new.decrypt(&before).is_err());
    }

    #[test]
    fn tampering_and_bad_keys_are_errors() {
        let c = Cipher::random();
        let mut v = c.encrypt("s").unwrap();
        v.pop();
        v.push('A');
        assert!(c.decrypt(&v).is_err());
        assert!(c.decrypt("plain").is_err());
        assert!(Cipher::from_keys("not base64!").is_err());
        assert!(Cipher::from_keys(&STANDARD.encode([1u8; 16])).is_err());
    }

    #[test]
    fn the_generated_key_is_kept_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = Cipher::load_or_create(None, dir.path()).unwrap();
        let v = a.encrypt("s").unwrap();
        let b = Cipher::load_or_create(None, dir.path()).unwrap();
        assert_eq!(b.decrypt(&v).unwrap(), "s");
    }
}
