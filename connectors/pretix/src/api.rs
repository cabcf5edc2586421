//! pretix's REST API with the source's authorization: an API token, or an OAuth token an
//! organiser granted with `!authorize` (kept sealed, refreshed before it expires).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use switchboard_connector::{EventKind, Failure, TicketEvent, now_ms};
use tracing::info;

use crate::source::Source;

/// An OAuth token from pretix, as kept (sealed) in the settings.
#[derive(serde::Serialize, serde::Deserialize)]
struct OAuthToken {
    access_token: String,
    refresh_token: Option<String>,
    /// When it expires (milliseconds since the epoch).
    expires_at: i64,
}

/// What OAuth tokens are sealed for.
const OAUTH_PURPOSE: &str = "pretix.oauth";

fn transient(message: String, retry_after: Option<Duration>) -> Failure {
    Failure::Transient {
        message,
        retry_after,
    }
}

impl Source {
    fn token_key(&self) -> String {
        format!("pretix.{}.oauth", self.id)
    }

    fn state_key(&self, state: &str) -> String {
        format!("pretix.{}.oauth_state.{state}", self.id)
    }

    /// One GET of pretix's API with the source's authorization, its failures sorted into
    /// those worth another try (network, 5xx, 429, no authorization yet) and those that are
    /// not (401/403: the token; 404; other 4xx). An OAuth token pretix refuses is refreshed
    /// once.
    pub(crate) async fn get(&self, url: &str, what: &str) -> Result<serde_json::Value, Failure> {
        let send = |auth: String| {
            self.host
                .http()
                .get(url)
                .header("Authorization", auth)
                .header("Accept", "application/json")
                .send()
        };
        let (auth, oauth) = self.authorization(false).await?;
        let mut response = send(auth)
            .await
            .map_err(|e| transient(format!("pretix: {}", e.without_url()), None))?;
        if response.status().as_u16() == 401 && oauth {
            let (auth, _) = self.authorization(true).await?;
            response = send(auth)
                .await
                .map_err(|e| transient(format!("pretix: {}", e.without_url()), None))?;
        }
        let status = response.status();
        if status.is_success() {
            return response
                .json()
                .await
                .map_err(|e| transient(format!("pretix's answer: {}", e.without_url()), None));
        }
        let message = match status.as_u16() {
            401 | 403 => format!(
                "pretix refused the authorization ({status}) for {what}: check the token's \
                 permissions, or !authorize again"
            ),
            404 => format!("pretix has no {what}"),
            _ => format!("pretix answered {status} for {what}"),
        };
        Err(Failure::from_answer(status, response.headers(), message))
    }

    /// The `Authorization` header: the OAuth token when an organiser authorized
    /// Switchboard (refreshed when it expires, or when `refresh`), otherwise the API token;
    /// and whether it is OAuth's. Neither yet: a failure worth another try, so that nothing
    /// is lost before `!authorize`.
    async fn authorization(&self, refresh: bool) -> Result<(String, bool), Failure> {
        let _one_at_a_time = self.oauth_lock.lock().await;
        if let Some(stored) = self.host.setting(&self.token_key()).await? {
            let json = self
                .host
                .open(OAUTH_PURPOSE, &stored)
                .map_err(|e| Failure::Permanent(format!("the stored pretix authorization: {e}")))?;
            let mut token: OAuthToken = serde_json::from_str(&json)
                .map_err(|e| Failure::Permanent(format!("the stored pretix authorization: {e}")))?;
            if (refresh || now_ms() > token.expires_at - 60_000)
                && let Some(refresh_token) = token.refresh_token.clone()
            {
                token = self
                    .exchange(&[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", &refresh_token),
                    ])
                    .await?;
                self.keep_token(&token).await?;
                info!(source = %self.id, "pretix OAuth token refreshed");
            }
            return Ok((format!("Bearer {}", token.access_token), true));
        }
        match &self.token {
            Some(token) => Ok((format!("Token {}", token.expose()), false)),
            None => Err(transient(
                "pretix is not authorized yet: an organiser sends !authorize".into(),
                Some(Duration::from_secs(10)),
            )),
        }
    }

    /// Asks pretix's token endpoint for a token (`params`: the grant).
    async fn exchange(&self, params: &[(&str, &str)]) -> Result<OAuthToken, Failure> {
        let (Some(oauth), Some(secret)) = (&self.cfg.oauth, &self.client_secret) else {
            return Err(Failure::Permanent("no `oauth` is configured".into()));
        };
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            for (k, v) in params {
                form.append_pair(k, v);
            }
            form.finish()
        };
        let response = self
            .host
            .http()
            .post(self.cfg.token_url())
            .basic_auth(&oauth.client_id, Some(secret.expose()))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| transient(format!("pretix: {}", e.without_url()), None))?;
        let status = response.status();
        let answer: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            let message = format!(
                "pretix refused ({status}): {}",
                answer["error"].as_str().unwrap_or("no reason given")
            );
            // A refused grant is not an overload: only a proxy's 502-504 pass.
            let status = if status.as_u16() == 429 {
                400
            } else {
                status.as_u16()
            };
            return Err(Failure::from_status(status, message, None));
        }
        let access_token = answer["access_token"]
            .as_str()
            .ok_or_else(|| Failure::Permanent("pretix sent no access token".into()))?
            .to_string();
        Ok(OAuthToken {
            access_token,
            refresh_token: answer["refresh_token"].as_str().map(String::from),
            expires_at: now_ms() + answer["expires_in"].as_i64().unwrap_or(3600) * 1000,
        })
    }

    /// Stores the OAuth token, sealed with the data secret.
    async fn keep_token(&self, token: &OAuthToken) -> Result<(), Failure> {
        let json = serde_json::to_string(token).map_err(|e| Failure::Permanent(e.to_string()))?;
        self.host
            .set_setting(&self.token_key(), &self.host.seal(OAUTH_PURPOSE, &json))
            .await?;
        Ok(())
    }

    /// A new link for an organiser to authorize Switchboard in pretix (`None` without
    /// `oauth`); its state remembers who asked, where.
    pub(crate) async fn authorize_link(
        &self,
        room: &str,
        sender: &str,
    ) -> Result<Option<String>, Failure> {
        let state = hex::encode(rand::random::<[u8; 16]>());
        let Some(link) = self.cfg.authorize_url(&self.id, &state) else {
            return Ok(None);
        };
        let asked = json!({"room": room, "sender": sender, "at": now_ms()});
        self.host
            .set_setting(&self.state_key(&state), &asked.to_string())
            .await?;
        Ok(Some(link))
    }

    /// Completes an authorization: the state must be one of this source's links, unused
    /// and at most an hour old; the code is exchanged for a token, which is kept. Returns
    /// the room and the organiser who asked.
    pub(crate) async fn complete(
        &self,
        code: &str,
        state: &str,
    ) -> Result<(String, String), String> {
        let key = self.state_key(state);
        let asked = self
            .host
            .setting(&key)
            .await
            .map_err(|e| e.to_string())?
            .and_then(|v| serde_json::from_str::<serde_json::Value>(&v).ok())
            .ok_or("this link is unknown or was used already; send !authorize for a new one")?;
        self.host
            .delete_setting(&key)
            .await
            .map_err(|e| e.to_string())?;
        if now_ms() - asked["at"].as_i64().unwrap_or_default() > 3_600_000 {
            return Err("this link is more than an hour old; send !authorize for a new one".into());
        }
        let redirect = self
            .cfg
            .oauth
            .as_ref()
            .map(|o| o.redirect_uri(&self.id))
            .ok_or("no `oauth` is configured")?;
        let token = self
            .exchange(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &redirect),
            ])
            .await
            .map_err(Failure::into_message)?;
        self.keep_token(&token)
            .await
            .map_err(Failure::into_message)?;
        let (room, sender) = (
            asked["room"].as_str().unwrap_or_default().to_string(),
            asked["sender"].as_str().unwrap_or_default().to_string(),
        );
        info!(source = %self.id, by = %sender, "pretix authorized with OAuth");
        Ok((room, sender))
    }

    /// The callback page pretix sends the organiser's browser to: completes the
    /// authorization and tells the room. The page's text, and whether it worked.
    pub(crate) async fn callback(&self, query: &HashMap<String, String>) -> (bool, String) {
        if let Some(error) = query.get("error") {
            return (
                false,
                format!("pretix did not authorize Switchboard: {error}."),
            );
        }
        let (Some(code), Some(state)) = (query.get("code"), query.get("state")) else {
            return (false, "This address has no authorization code.".into());
        };
        match self.complete(code, state).await {
            Ok((room, sender)) => {
                let notice = format!(
                    "pretix is authorized: Switchboard reads the orders with {sender}'s permission."
                );
                let mut told = TicketEvent::new(format!("command:{room}"), EventKind::Updated);
                told.payload = json!({"room": room, "notice": notice});
                if let Err(error) = self
                    .host
                    .deliver(&self.id, &format!("oauth/{state}"), &[told])
                    .await
                {
                    tracing::warn!(source = %self.id, %error, "cannot tell the room that pretix is authorized");
                }
                (
                    true,
                    "Switchboard can now read the orders. You can close this page.".into(),
                )
            }
            Err(reason) => (false, format!("Not authorized: {reason}")),
        }
    }
}
