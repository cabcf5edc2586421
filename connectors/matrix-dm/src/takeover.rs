//! Taking over from Honoroit on the first start: the open requests it mapped in the bot's
//! account data, and its options, so a customer's next message lands in its old thread.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use base64::Engine as _;
use switchboard_connector::FirstSync;
use tracing::{info, warn};

use crate::access::server_of;
use crate::desk::Helpdesk;

/// Honoroit's account data type for a chat's thread (followed by the chat's room ID).
const HONOROIT_MAPPING: &str = "cc.etke.honoroit.mapping.";
const HONOROIT_CONFIG: &str = "cc.etke.honoroit.config";

type Aes192Gcm = aes_gcm::AesGcm<aes_gcm::aes::Aes192, aes_gcm::aead::consts::U12>;

/// A value as Honoroit sealed its account data with the data secret: AES-GCM keyed with the
/// secret's bytes themselves (16, 24 or 32 of them), the nonce before the ciphertext, stored
/// as `ENCv1[<unpadded base64url>]` (its releases since mid-2026) or as padded base64 (those
/// before). `None` when it does not open so (Honoroit kept values from before its secret
/// was set in plain text).
pub fn open_sealed(secret: Option<&str>, stored: &str) -> Option<String> {
    let key = secret?.as_bytes();
    let raw = match stored
        .strip_prefix("ENCv1[")
        .and_then(|s| s.strip_suffix(']'))
    {
        Some(v1) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v1)
            .ok()?,
        None => base64::engine::general_purpose::STANDARD
            .decode(stored)
            .ok()?,
    };
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

/// The content of one of Honoroit's account data events, keys and values opened with the
/// data secret (those it kept in plain text as they are).
pub fn open_content(secret: Option<&str>, content: &serde_json::Value) -> BTreeMap<String, String> {
    let open = |s: &str| open_sealed(secret, s).unwrap_or_else(|| s.to_string());
    content
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((open(k), open(v.as_str()?))))
        .collect()
}

impl Helpdesk {
    /// What a Honoroit of this account left in its account data. Its open requests
    /// (`cc.etke.honoroit.mapping.<chat>` -> `{"id": <thread root>}`) become requests, so
    /// their customers' next messages land in their threads; its options
    /// (`cc.etke.honoroit.config`) become the helpdesk's, unless some were set here already.
    /// With `HONOROIT_DATA_SECRET`, Honoroit sealed the keys and values of both; they are
    /// opened with the same data secret.
    pub async fn take_over_honoroit(&self, sync: &dyn FirstSync) {
        let mut taken = 0;
        for (kind, content) in sync.account_data() {
            let content = self.open_honoroit(&content);
            if kind == HONOROIT_CONFIG {
                if let Err(error) = self.adopt_options(&self.store, &content).await {
                    warn!(%error, "cannot take over Honoroit's options");
                }
                continue;
            }
            let Some(chat) = kind
                .strip_prefix(HONOROIT_MAPPING)
                .filter(|c| c.starts_with('!'))
            else {
                continue;
            };
            let Some(root) = content.get("id").filter(|r| r.starts_with('$')) else {
                continue;
            };
            match self.honoroit_request(sync, chat, root).await {
                Ok(true) => taken += 1,
                Ok(false) => {}
                Err(error) => warn!(chat, %error, "cannot take over a Honoroit request"),
            }
        }
        if taken > 0 {
            info!(requests = taken, "took over Honoroit's open requests");
        }
    }

    /// Honoroit's account data (string keys and values), each opened with the data secret
    /// when it was sealed with it.
    fn open_honoroit(&self, content: &serde_json::Value) -> BTreeMap<String, String> {
        open_content(self.store.host().data_secret(), content)
    }

    /// One Honoroit request: its customer (the chat's other member) and its title (the
    /// thread root's, unless the root says it is done).
    async fn honoroit_request(
        &self,
        sync: &dyn FirstSync,
        chat: &str,
        root: &str,
    ) -> Result<bool, String> {
        let Some(members) = sync.joined(chat).await else {
            return Ok(false);
        };
        let Some(customer) = members.iter().find(|m| Some(m.as_str()) != self.bot()) else {
            return Ok(false);
        };
        let event = sync
            .event(self.backoffice(), root)
            .await
            .ok_or("the thread root cannot be read in the backoffice room")?;
        let body = event["content"]["body"].as_str().unwrap_or_default();
        if body.starts_with("[DONE]") {
            return Ok(false);
        }
        let title = body.strip_prefix("[OPEN] ").unwrap_or(body);
        self.store
            .import_request(
                &self.source_id,
                customer,
                server_of(customer).unwrap_or_default(),
                chat,
                root,
                title,
            )
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seals as Honoroit does: base64 of a nonce and the AES-GCM ciphertext.
    fn honoroit_sealed(key: &str, plain: &str) -> String {
        let nonce = [7u8; 12];
        let n = aes_gcm::Nonce::from_slice(&nonce);
        let sealed = match key.len() {
            16 => Aes128Gcm::new_from_slice(key.as_bytes())
                .expect("key")
                .encrypt(n, plain.as_bytes()),
            24 => Aes192Gcm::new_from_slice(key.as_bytes())
                .expect("key")
                .encrypt(n, plain.as_bytes()),
            _ => Aes256Gcm::new_from_slice(key.as_bytes())
                .expect("key")
                .encrypt(n, plain.as_bytes()),
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
            assert_eq!(
                open_sealed(Some(key), &sealed).as_deref(),
                Some("!chat:example.org"),
                "a {}-byte key",
                key.len()
            );
        }
        let sealed = honoroit_sealed("0123456789abcdef", "id");
        assert_eq!(
            open_sealed(Some("fedcba9876543210"), &sealed),
            None,
            "another secret"
        );
        assert_eq!(open_sealed(None, &sealed), None);
        assert_eq!(
            open_sealed(Some("not a key of a valid length"), &sealed),
            None
        );
        assert_eq!(
            open_sealed(Some("0123456789abcdef"), "$root:example.org"),
            None,
            "a plain value is no sealed one"
        );
        // The format of Honoroit's later releases: unpadded base64url in `ENCv1[...]`.
        let key = "0123456789abcdef0123456789abcdef";
        let padded = honoroit_sealed(key, "$thread:example.org");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&padded)
            .expect("base64");
        let v1 = format!(
            "ENCv1[{}]",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
        );
        assert_eq!(
            open_sealed(Some(key), &v1).as_deref(),
            Some("$thread:example.org")
        );
    }
}
