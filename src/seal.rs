//! Secrets at rest: values sealed with a key derived from the configured data secret
//! (XChaCha20-Poly1305, a random nonce per value). Unsealed values read back as they are,
//! so a store written before a data secret was set still opens.

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What a sealed value starts with.
const PREFIX: &str = "sealed:v1:";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the value is sealed and no data secret is configured")]
    NoSecret,
    #[error("the value does not open with the configured data secret (was it changed?)")]
    WrongSecret,
}

/// Seals and opens values with keys derived from one data secret.
#[derive(Clone)]
pub struct Sealer {
    secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.secret.is_some() {
            "Sealer(secret)"
        } else {
            "Sealer(none)"
        })
    }
}

impl Sealer {
    pub fn new(secret: Option<&str>) -> Sealer {
        Sealer {
            secret: secret.map(|s| s.as_bytes().to_vec()),
        }
    }

    /// A key for one purpose; different purposes never share a key.
    fn key(&self, purpose: &str) -> Option<[u8; 32]> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.secret.as_ref()?).ok()?;
        mac.update(b"switchboard/");
        mac.update(purpose.as_bytes());
        Some(mac.finalize().into_bytes().into())
    }

    /// A passphrase for a store that encrypts itself (the Matrix crypto store).
    pub fn passphrase(&self, purpose: &str) -> Option<String> {
        self.key(purpose).map(hex::encode)
    }

    /// The value sealed, or as it is without a data secret.
    pub fn seal(&self, purpose: &str, plain: &str) -> String {
        let Some(key) = self.key(purpose) else {
            return plain.to_string();
        };
        let cipher = XChaCha20Poly1305::new(&key.into());
        let nonce: [u8; 24] = rand::random();
        let sealed = cipher
            .encrypt(XNonce::from_slice(&nonce), plain.as_bytes())
            .expect("encryption into memory does not fail");
        let mut out = nonce.to_vec();
        out.extend(sealed);
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(out)
        )
    }

    /// The plain value of what `seal` wrote; a value that was never sealed as it is.
    pub fn open(&self, purpose: &str, stored: &str) -> Result<String, SealError> {
        let Some(body) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let key = self.key(purpose).ok_or(SealError::NoSecret)?;
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(body)
            .map_err(|_| SealError::WrongSecret)?;
        if raw.len() < 24 {
            return Err(SealError::WrongSecret);
        }
        let (nonce, sealed) = raw.split_at(24);
        let plain = XChaCha20Poly1305::new(&key.into())
            .decrypt(XNonce::from_slice(nonce), sealed)
            .map_err(|_| SealError::WrongSecret)?;
        String::from_utf8(plain).map_err(|_| SealError::WrongSecret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_secret_and_purpose() {
        let a = Sealer::new(Some("correct horse"));
        let sealed = a.seal("session", "token-123");
        assert!(
            sealed.starts_with(PREFIX) && !sealed.contains("token-123"),
            "{sealed}"
        );
        assert_ne!(
            sealed,
            a.seal("session", "token-123"),
            "a fresh nonce each time"
        );
        assert_eq!(a.open("session", &sealed).as_deref(), Ok("token-123"));
        assert_eq!(a.open("other", &sealed), Err(SealError::WrongSecret));
        let b = Sealer::new(Some("battery staple"));
        assert_eq!(b.open("session", &sealed), Err(SealError::WrongSecret));
        let none = Sealer::new(None);
        assert_eq!(none.open("session", &sealed), Err(SealError::NoSecret));
        // Without a secret nothing is sealed; unsealed values open as they are.
        assert_eq!(none.seal("session", "plain"), "plain");
        assert_eq!(a.open("session", "plain").as_deref(), Ok("plain"));
        assert_ne!(a.passphrase("crypto"), b.passphrase("crypto"));
        assert_eq!(none.passphrase("crypto"), None);
    }
}
