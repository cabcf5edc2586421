//! Tickets' rooms: created once per ticket (a deterministic alias makes a retry find the
//! room an earlier try made), linked before anyone is invited, reopened after a close.

use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset};
use matrix_sdk::ruma::api::error::ErrorKind;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{OwnedRoomId, RoomAliasId, UserId};
use serde_json::json;
use sha2::{Digest, Sha256};
use switchboard_connector::RoomSpec;
use tracing::info;

use super::{Failure, MatrixSink, db_failure, http_failure, sdk_failure, txn_id};
use crate::store::{Link, OutboxRow};

impl MatrixSink {
    /// A ticket's room: created (once per ticket, whatever the homeserver answers) and
    /// linked before anyone is invited: each participant is invited by an action of their
    /// own (`Action::Participant`), so one who cannot be invited leaves no room without a
    /// link behind.
    pub(super) async fn open_room(
        &self,
        row: &OutboxRow,
        spec: &RoomSpec,
    ) -> Result<String, Failure> {
        let link = match self.link(row).await? {
            Some(link) => {
                if link.closed {
                    self.reopen(row, &link, spec).await?;
                }
                link
            }
            None => {
                let bare = RoomSpec {
                    invite: Vec::new(),
                    ..spec.clone()
                };
                let key = alias_localpart(&self.instance, row);
                let (room_id, _) = self.create_room_once(&key, &bare, false).await?;
                let link = Link {
                    source_id: row.source_id.clone(),
                    ticket_key: row.ticket_key.clone(),
                    room_id: room_id.to_string(),
                    thread_id: None,
                    invited: Vec::new(),
                    closed: false,
                };
                self.store.insert_link(&link).await.map_err(db_failure)?
            }
        };
        self.remember(
            (link.source_id.clone(), link.ticket_key.clone()),
            &link.room_id,
        );
        Ok(link.room_id)
    }

    /// A closed ticket's room, open again: its name back, a notice, the link marked open.
    async fn reopen(&self, row: &OutboxRow, link: &Link, spec: &RoomSpec) -> Result<(), Failure> {
        let room = self.encryption_aware(&link.room_id).await?;
        room.set_name(spec.name.clone())
            .await
            .map_err(|e| sdk_failure(&e))?;
        if let Some(text) = &spec.reopen_notice {
            let content = RoomMessageEventContent::notice_plain(text);
            self.send_message(&room, content, txn_id(row, "r")).await?;
        }
        self.store
            .set_link_closed(&row.source_id, &row.ticket_key, false)
            .await
            .map_err(db_failure)
    }

    /// Creates a room once: the alias (`alias_local`) is the idempotency key. If an earlier
    /// try created the room but died before recording it, creating again fails with
    /// M_ROOM_IN_USE and the alias leads to the room; so does a request that created the room
    /// and then failed (an invite the homeserver could not deliver). Returns the room and
    /// whether this call created it whole.
    pub(super) async fn create_room_once(
        &self,
        alias_local: &str,
        spec: &RoomSpec,
        direct: bool,
    ) -> Result<(OwnedRoomId, bool), Failure> {
        if spec.encrypted {
            self.want_sync();
        }
        let failure = match self.create_room(spec, alias_local, direct).await {
            Ok(id) => return Ok((id, true)),
            Err(failure) => failure,
        };
        let alias = format!("#{alias_local}:{}", self.user_id.server_name());
        let alias = RoomAliasId::parse(&alias)
            .map_err(|e| Failure::Permanent(format!("alias {alias}: {e}")))?;
        match self.client.resolve_room_alias(&alias).await {
            Ok(resp) => {
                info!(room = %resp.room_id, "the room exists from an earlier or a failed try");
                Ok((resp.room_id, false))
            }
            Err(e) if e.client_api_error_kind() == Some(&ErrorKind::NotFound) => Err(failure),
            Err(e) => Err(http_failure(&e)),
        }
    }

    async fn create_room(
        &self,
        spec: &RoomSpec,
        alias_local: &str,
        direct: bool,
    ) -> Result<OwnedRoomId, Failure> {
        let mut req = CreateRoom::new();
        req.is_direct = direct;
        req.name = Some(spec.name.clone()).filter(|s| !s.is_empty());
        req.topic = Some(spec.topic.clone()).filter(|s| !s.is_empty());
        req.preset = Some(match spec.preset.as_str() {
            "public_chat" => RoomPreset::PublicChat,
            "trusted_private_chat" => RoomPreset::TrustedPrivateChat,
            _ => RoomPreset::PrivateChat,
        });
        req.room_alias_name = Some(alias_local.to_string());
        req.invite = spec
            .invite
            .iter()
            .filter_map(|u| UserId::parse(u).ok())
            .filter(|u| *u != self.user_id)
            .collect();
        let mut users = serde_json::Map::new();
        if self.creator_in_power_levels {
            users.insert(self.user_id.to_string(), json!(100));
        }
        for admin in &spec.admins {
            if admin != self.user_id.as_str() {
                users.insert(admin.clone(), json!(100));
            }
        }
        if !users.is_empty() {
            req.power_level_content_override = Some(
                Raw::from_json_string(json!({ "users": users }).to_string())
                    .map_err(|e| Failure::Permanent(e.to_string()))?,
            );
        }
        let mut state = vec![json!({
            "type": "org.switchboard.ticket",
            "state_key": "",
            "content": { "alias": alias_local },
        })];
        if spec.encrypted {
            state.push(json!({
                "type": "m.room.encryption",
                "state_key": "",
                "content": { "algorithm": "m.megolm.v1.aes-sha2" },
            }));
        }
        req.initial_state = state
            .into_iter()
            .map(|s| Raw::from_json_string(s.to_string()))
            .collect::<Result<_, _>>()
            .map_err(|e| Failure::Permanent(e.to_string()))?;
        let room = self
            .client
            .create_room(req)
            .await
            .map_err(|e| sdk_failure(&e))?;
        Ok(room.room_id().to_owned())
    }
}

/// The alias that makes a ticket's room's creation idempotent: one room per ticket,
/// whichever of its actions creates it.
fn alias_localpart(instance: &str, row: &OutboxRow) -> String {
    let key = format!("{}\0{}\0ticket", row.source_id, row.ticket_key);
    keyed_alias(instance, &key)
}

/// The alias localpart for a room created once per `key` (`Matrix::create_room`): a hash of
/// the instance and the key, so two installations sharing a bot never share one.
pub(super) fn keyed_alias(instance: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(instance.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    format!("switchboard_{}", &hex::encode(h.finalize())[..24])
}
