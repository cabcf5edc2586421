//! Matrix as the connectors use it while their actions run (`switchboard_connector::Matrix`):
//! the sink's operations, each refusing to act as anyone but the bot.

use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::api::error::ErrorKind;
use matrix_sdk::ruma::{EventId, OwnedTransactionId, RoomId, UserId};
use switchboard_connector::{ActAs, Matrix, RoomSpec};

use super::{Failure, MatrixSink, http_failure, sdk_failure};

/// Matrix as connectors use it (`switchboard_connector::Matrix`).
#[async_trait::async_trait]
impl Matrix for MatrixSink {
    fn bot(&self) -> &str {
        self.user_id.as_str()
    }

    async fn send(
        &self,
        who: ActAs<'_>,
        room: &str,
        event_type: &str,
        content: serde_json::Value,
        txn: &str,
    ) -> Result<String, Failure> {
        self.acting(who)?;
        let room = self.encryption_aware(room).await?;
        let txn = OwnedTransactionId::from(txn);
        if event_type == "m.room.message"
            && let Some(cut) = crate::fit::fit(&content, crate::fit::CONTENT_BUDGET)
        {
            return self.send_cut(&room, cut, txn).await;
        }
        self.send_json(&room, event_type, content, &txn).await
    }

    async fn redact(
        &self,
        who: ActAs<'_>,
        room: &str,
        event: &str,
        txn: &str,
    ) -> Result<String, Failure> {
        self.acting(who)?;
        let room = self.encryption_aware(room).await?;
        let id = EventId::parse(event)
            .map_err(|e| Failure::Permanent(format!("event ID {event}: {e}")))?;
        let resp = room
            .redact(&id, None, Some(OwnedTransactionId::from(txn)))
            .await
            .map_err(|e| http_failure(&e))?;
        Ok(resp.event_id.to_string())
    }

    async fn create_room(
        &self,
        who: ActAs<'_>,
        spec: &RoomSpec,
        alias_key: &str,
        direct: bool,
    ) -> Result<(String, bool), Failure> {
        self.acting(who)?;
        let alias = super::keyed_alias(&self.instance, alias_key);
        let (room, whole) = self.create_room_once(&alias, spec, direct).await?;
        Ok((room.to_string(), whole))
    }

    async fn invite(&self, who: ActAs<'_>, room: &str, user: &str) -> Result<String, Failure> {
        self.acting(who)?;
        MatrixSink::invite(self, room, user, false).await
    }

    async fn kick(
        &self,
        who: ActAs<'_>,
        room: &str,
        user: &str,
        reason: &str,
    ) -> Result<String, Failure> {
        self.acting(who)?;
        MatrixSink::kick(self, room, user, reason).await
    }

    async fn leave(&self, who: ActAs<'_>, room: &str) -> Result<String, Failure> {
        self.acting(who)?;
        MatrixSink::leave(self, room).await
    }

    async fn membership(&self, room: &str, user: &str) -> Result<Option<String>, Failure> {
        let uid =
            UserId::parse(user).map_err(|e| Failure::Permanent(format!("user ID {user}: {e}")))?;
        let room = self.room(room).await?;
        MatrixSink::membership(self, &room, &uid).await
    }

    async fn members(&self, room: &str) -> Result<Vec<String>, Failure> {
        let room = self.room(room).await?;
        let members = room
            .members(matrix_sdk::RoomMemberships::JOIN)
            .await
            .map_err(|e| sdk_failure(&e))?;
        Ok(members.iter().map(|m| m.user_id().to_string()).collect())
    }

    async fn history(&self, room: &str, max: usize) -> Result<Vec<serde_json::Value>, Failure> {
        let room = self.room(room).await?;
        let mut events = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut options = match &token {
                Some(from) => MessagesOptions::backward().from(from.as_str()),
                None => MessagesOptions::backward(),
            };
            options.limit = 100u32.into();
            let page = room.messages(options).await.map_err(|e| sdk_failure(&e))?;
            events.extend(page.chunk.iter().filter_map(super::json_of));
            if page.chunk.is_empty() || events.len() >= max || page.end.is_none() {
                break;
            }
            token = page.end;
        }
        events.truncate(max);
        events.reverse();
        Ok(events)
    }

    async fn state(
        &self,
        room: &str,
        event_type: &str,
        state_key: &str,
    ) -> Result<Option<serde_json::Value>, Failure> {
        use matrix_sdk::ruma::api::client::state::get_state_event_for_key;
        let id =
            RoomId::parse(room).map_err(|e| Failure::Permanent(format!("room ID {room}: {e}")))?;
        let request =
            get_state_event_for_key::v3::Request::new(id, event_type.into(), state_key.to_string());
        match self.client.send(request).await {
            Ok(response) => Ok(serde_json::from_str(response.event_or_content.get()).ok()),
            Err(e) if e.client_api_error_kind() == Some(&ErrorKind::NotFound) => Ok(None),
            Err(e) => Err(http_failure(&e)),
        }
    }

    async fn set_state(
        &self,
        who: ActAs<'_>,
        room: &str,
        event_type: &str,
        state_key: &str,
        content: serde_json::Value,
    ) -> Result<String, Failure> {
        self.acting(who)?;
        let room = self.room(room).await?;
        let resp = room
            .send_state_event_raw(event_type, state_key, content)
            .await
            .map_err(|e| sdk_failure(&e))?;
        Ok(resp.event_id.to_string())
    }

    async fn openid_token(&self) -> Result<serde_json::Value, Failure> {
        use matrix_sdk::ruma::api::client::account::request_openid_token;
        let request = request_openid_token::v3::Request::new(self.user_id.clone());
        let token = self
            .client
            .send(request)
            .await
            .map_err(|e| http_failure(&e))?;
        Ok(serde_json::json!({
            "access_token": token.access_token,
            "token_type": token.token_type.as_str(),
            "matrix_server_name": token.matrix_server_name.as_str(),
            "expires_in": token.expires_in.as_secs(),
        }))
    }

    async fn user_by_email(&self, address: &str) -> Result<Option<String>, Failure> {
        let token = self
            .client
            .access_token()
            .ok_or_else(|| Failure::transient("not logged in yet"))?;
        let path: String =
            percent_encoding::utf8_percent_encode(address, percent_encoding::NON_ALPHANUMERIC)
                .collect();
        let url = self
            .client
            .homeserver()
            .join(&format!("_synapse/admin/v1/threepid/email/users/{path}"))
            .map_err(|e| Failure::Permanent(format!("homeserver URL: {e}")))?;
        let response = self
            .http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| Failure::transient(format!("homeserver: {}", e.without_url())))?;
        let status = response.status();
        let answer: serde_json::Value = response.json().await.unwrap_or_default();
        match status.as_u16() {
            200 => Ok(answer["user_id"].as_str().map(String::from)),
            404 if answer["errcode"] == "M_NOT_FOUND" => Ok(None),
            500..=599 => Err(Failure::transient(format!(
                "homeserver answered {status} to a user lookup"
            ))),
            _ => Err(Failure::Permanent(format!(
                "the homeserver refused a user lookup by e-mail ({status}: {}); the bot must \
                 be a server admin (Synapse's admin API)",
                answer["error"].as_str().unwrap_or("no reason given")
            ))),
        }
    }

    async fn upload(
        &self,
        room: &str,
        data: Vec<u8>,
        content_type: &str,
    ) -> Result<serde_json::Value, Failure> {
        let room = self.encryption_aware(room).await?;
        let mime: mime::Mime = content_type
            .parse()
            .unwrap_or(mime::APPLICATION_OCTET_STREAM);
        self.upload_into(&room, data, &mime).await
    }

    async fn download(&self, content: &serde_json::Value) -> Result<Vec<u8>, Failure> {
        use matrix_sdk::media::{MediaFormat, MediaRequestParameters};
        use matrix_sdk::ruma::events::room::MediaSource;
        let source = if content["file"].is_object() {
            let file = serde_json::from_value(content["file"].clone())
                .map_err(|e| Failure::Permanent(format!("an encrypted file's keys: {e}")))?;
            MediaSource::Encrypted(Box::new(file))
        } else {
            let url = content["url"]
                .as_str()
                .ok_or_else(|| Failure::Permanent("the file has neither url nor file".into()))?;
            MediaSource::Plain(url.into())
        };
        let request = MediaRequestParameters {
            source,
            format: MediaFormat::File,
        };
        self.client
            .media()
            .get_media_content(&request, false)
            .await
            .map_err(|e| sdk_failure(&e))
    }
}
