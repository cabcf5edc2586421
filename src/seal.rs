//! Secrets at rest: values sealed with a key derived from the configured data secret
//! (XChaCha20-Poly1305, a random nonce per value). Unsealed values read back as they are,
//! so a store written before a data secret was set still opens. Also opens what Honoroit
//! sealed with the same secret, for the takeover of its account data.

use aes_gcm::{Aes128Gcm, Aes256Gcm};
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

    /// A value as Honoroit sealed its account data with the same secret: AES-GCM keyed
    /// with the secret's bytes themselves (16, 24 or 32 of them), stored as base64 of the
    /// nonce and the ciphertext. `None` when it does not open so (Honoroit kept values from
    /// before its secret was set in plain text).
    pub fn open_honoroit(&self, stored: &str) -> Option<String> {
        let key = self.secret.as_deref()?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(stored)
            .ok()?;
        if raw.len() < 12 {
            return None;
        }
        let (nonce, sealed) = raw.split_at(12);
        let nonce = aes_gcm::Nonce::from_slice(nonce);
        let plain = match key.len() {
            16 => Aes128Gcm::new_from_slice(key).ok()?.decrypt(nonce, sealed),
            24 => Aes192Gcm::new_from_slice(key).ok()?.decrypt(nonce, sealed),
            32 => Aes256Gcm::new_from_slice(key).ok()?.decrypt(nonce, sealed),
            _ => return None,
        };
        String::from_utf8(plain.ok()?).ok()
    }
}

type Aes192Gcm = aes_gcm::AesGcm<aes_gcm::aes::Aes192, aes_gcm::aead::consts::U12>;

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

    /// Seals as Honoroit does: base64 of a nonce and the AES-GCM ciphertext.
    fn honoroit_sealed(key: &str, plain: &str) -> String {
        let nonce = [7u8; 12];
        let sealed = match key.len() {
            16 => Aes128Gcm::new_from_slice(key.as_bytes())
                .expect("key")
                .encrypt(aes_gcm::Nonce::from_slice(&nonce), plain.as_bytes()),
            24 => Aes192Gcm::new_from_slice(key.as_bytes())
                .expect("key")
                .encrypt(aes_gcm::Nonce::from_slice(&nonce), plain.as_bytes()),
            _ => Aes256Gcm::new_from_slice(key.as_bytes())
                .expect("key")
                .encrypt(aes_gcm::Nonce::from_slice(&nonce), plain.as_bytes()),
        }
        .expect("sealed");
        let mut raw = nonce.to_vec();
        raw.extend(sealed);
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    #[test]
    fn honoroit_account_data_opens_with_its_secret() {
        for key in [
            "0123456789abcdef",
            "0123456789abcdef01234567",
            "0123456789abcdef0123456789abcdef",
        ] {
            let sealed = honoroit_sealed(key, "!chat:example.org");
            let sealer = Sealer::new(Some(key));
            assert_eq!(
                sealer.open_honoroit(&sealed).as_deref(),
                Some("!chat:example.org"),
                "a {}-byte key",
                key.len()
            );
        }
        let sealed = honoroit_sealed("0123456789abcdef", "id");
        let other = Sealer::new(Some("fedcba9876543210"));
        assert_eq!(other.open_honoroit(&sealed), None, "another secret");
        assert_eq!(Sealer::new(None).open_honoroit(&sealed), None);
        let odd = Sealer::new(Some("not a key of a valid length"));
        assert_eq!(odd.open_honoroit(&sealed), None);
        assert_eq!(
            Sealer::new(Some("0123456789abcdef")).open_honoroit("$root:example.org"),
            None,
            "a plain value is no sealed one"
        );
    }
}
