//! Logging in: a stored session restored (sealed with the data secret), or a fresh login by
//! password, shared secret or access token, with a crypto store of its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hmac::{Hmac, Mac};
use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::RequestConfig;
use matrix_sdk::ruma::{OwnedUserId, UserId};
use matrix_sdk::{Client, SessionMeta, SessionTokens};
use serde_json::json;
use sha2::Sha512;
use tracing::info;

use super::{CRYPTO_STORE_KEY, MatrixError, SESSION_KEY};
use crate::config::{MatrixConfig, MatrixLogin};
use crate::seal::Sealer;
use crate::store::Store;

pub(super) async fn build(
    cfg: &MatrixConfig,
    store_dir: &Path,
    sealer: &Sealer,
) -> Result<Client, MatrixError> {
    std::fs::create_dir_all(store_dir).map_err(|e| MatrixError::Client(e.to_string()))?;
    let passphrase = sealer.passphrase(CRYPTO_STORE_KEY);
    Client::builder()
        .homeserver_url(cfg.homeserver.as_str())
        .sqlite_store(store_dir, passphrase.as_deref())
        // The outbox decides about retries; the SDK must not retry behind its back.
        .request_config(
            RequestConfig::new()
                .disable_retry()
                .timeout(Duration::from_secs(cfg.request_timeout_seconds)),
        )
        .build()
        .await
        .map_err(|e| MatrixError::Client(e.to_string()))
}

pub(super) async fn login_fresh(
    cfg: &MatrixConfig,
    login: &MatrixLogin,
    store_dir: &PathBuf,
    store: &Store,
    sealer: &Sealer,
) -> Result<Client, MatrixError> {
    // A new device needs a new crypto store: the old one belongs to another device.
    if store_dir.exists() {
        std::fs::remove_dir_all(store_dir).map_err(|e| MatrixError::Client(e.to_string()))?;
    }
    let client = build(cfg, store_dir, sealer).await?;
    let auth = client.matrix_auth();
    let err = |e: matrix_sdk::Error| MatrixError::Login(e.to_string());
    match login {
        MatrixLogin::Password(pw) => {
            auth.login_username(&cfg.user, pw.expose())
                .initial_device_display_name(&cfg.device_name)
                .send()
                .await
                .map_err(err)?;
        }
        MatrixLogin::SharedSecret(secret) => {
            // The authenticator's token is HMAC-SHA512(secret, full user ID), so the config
            // must name the full ID (check-config enforces it).
            let user_id = cfg.user.as_str();
            let mut mac = Hmac::<Sha512>::new_from_slice(secret.expose().as_bytes())
                .map_err(|e| MatrixError::Login(e.to_string()))?;
            mac.update(user_id.as_bytes());
            let token = hex::encode(mac.finalize().into_bytes());
            let data = json!({
                "identifier": { "type": "m.id.user", "user": user_id },
                "token": token,
            });
            let serde_json::Value::Object(data) = data else {
                return Err(MatrixError::Login("bad login body".into()));
            };
            auth.login_custom("com.devture.shared_secret_auth", data)
                .map_err(|e| MatrixError::Login(e.to_string()))?
                .initial_device_display_name(&cfg.device_name)
                .send()
                .await
                .map_err(err)?;
        }
        MatrixLogin::AccessToken(token) => {
            let (uid, device_id) = whoami(&cfg.homeserver, token.expose()).await?;
            let session = MatrixSession {
                meta: SessionMeta {
                    user_id: uid,
                    device_id,
                },
                tokens: SessionTokens {
                    access_token: token.expose().to_string(),
                    refresh_token: None,
                },
            };
            client.restore_session(session).await.map_err(err)?;
        }
    }
    let session = auth
        .session()
        .ok_or_else(|| MatrixError::Login("no session after login".into()))?;
    let json = serde_json::to_string(&session).map_err(|e| MatrixError::Login(e.to_string()))?;
    store
        .set_setting(SESSION_KEY, &sealer.seal(SESSION_KEY, &json))
        .await?;
    info!(user = %session.meta.user_id, device = %session.meta.device_id, "logged in to Matrix");
    Ok(client)
}

/// Whether a stored session belongs to the configured user (full ID or localpart).
pub(super) fn same_user(configured: &str, stored: &UserId) -> bool {
    if configured.starts_with('@') {
        stored.as_str() == configured
    } else {
        stored.localpart() == configured
    }
}

async fn whoami(
    homeserver: &url::Url,
    token: &str,
) -> Result<(OwnedUserId, matrix_sdk::ruma::OwnedDeviceId), MatrixError> {
    #[derive(serde::Deserialize)]
    struct WhoAmI {
        user_id: OwnedUserId,
        device_id: Option<matrix_sdk::ruma::OwnedDeviceId>,
    }
    let url = homeserver
        .join("_matrix/client/v3/account/whoami")
        .map_err(|e| MatrixError::Login(e.to_string()))?;
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| MatrixError::Login(format!("whoami: {e}")))?;
    if !resp.status().is_success() {
        return Err(MatrixError::Login(format!(
            "the access token was refused ({})",
            resp.status()
        )));
    }
    let w: WhoAmI = resp
        .json()
        .await
        .map_err(|e| MatrixError::Login(format!("whoami: {e}")))?;
    let device = w
        .device_id
        .ok_or_else(|| MatrixError::Login("the access token has no device".into()))?;
    Ok((w.user_id, device))
}
