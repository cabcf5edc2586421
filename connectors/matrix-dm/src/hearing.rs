//! What the helpdesk hears in Matrix: invites it takes, and each message, reaction, edit
//! and redaction in a customer's chat or the backoffice room, into the inbox before the
//! sync moves on. A room with more than one other member that is no request's chat is told
//! why the bot leaves, and left.

use async_trait::async_trait;
use serde_json::Value;
use switchboard_connector::connector::UNDECRYPTABLE;
use switchboard_connector::{DbError, FirstSync, Listener, SyncRoom};
use tracing::{info, warn};

use crate::desk::{Heard, Helpdesk, Role};

/// What the helpdesk relays: messages (and their edits), reactions and redactions.
const RELAYED_TYPES: [&str; 3] = ["m.room.message", "m.reaction", REDACTION];
const REDACTION: &str = "m.room.redaction";

/// What the operators read in place of a message that could not be decrypted.
const UNDECRYPTABLE_TEXT: &str =
    "(a message that could not be decrypted: its key never reached the helpdesk)";

#[async_trait]
impl Listener for Helpdesk {
    fn takes_invite(&self, room: &str, inviter: Option<&str>) -> bool {
        self.accepts_invite(room, inviter)
    }

    fn know_bot(&self, user_id: &str) {
        Helpdesk::know_bot(self, user_id);
    }

    fn ignores(&self, room: &str) -> bool {
        Helpdesk::ignores(self, room)
    }

    fn key_wait(&self) -> std::time::Duration {
        Helpdesk::key_wait(self)
    }

    /// The backoffice room, and the chat of an open request.
    async fn claims(&self, room: &dyn SyncRoom) -> Result<bool, DbError> {
        let id = room.id();
        Ok(id == self.backoffice()
            || self
                .store
                .open_request_of(&self.source_id, id)
                .await?
                .is_some())
    }

    /// A chat nobody claims is a customer's (as it was before invites were recorded).
    fn takes_unclaimed(&self) -> bool {
        true
    }

    async fn first_sync(&self, sync: &dyn FirstSync) {
        self.take_over_honoroit(sync).await;
    }

    async fn heard(&self, room: &dyn SyncRoom, events: &[Value]) -> Result<bool, DbError> {
        let room_id = room.id();
        let backoffice = room_id == self.backoffice();
        // Whether the room is a chat of one customer with the bot: asked once per room.
        let mut one_to_one: Option<bool> = None;
        for raw in events {
            let mut raw = raw.clone();
            if raw["unsigned"][UNDECRYPTABLE] == true {
                if backoffice {
                    warn!(room = %room_id, event = %raw["event_id"], "an operator's message could not be decrypted");
                    continue;
                }
                // A customer's: the operators learn that something was said.
                raw["content"]["body"] = UNDECRYPTABLE_TEXT.into();
            }
            let sender = raw["sender"].as_str().unwrap_or_default();
            let event_type = raw["type"].as_str().unwrap_or_default();
            if !RELAYED_TYPES.contains(&event_type) {
                continue;
            }
            let (Some(event_id), Some(content)) =
                (raw["event_id"].as_str(), raw["content"].as_object())
            else {
                continue;
            };
            let mut content = content.clone();
            // Before room version 11 a redaction names its event outside the content.
            if let Some(redacts) = raw.get("redacts").filter(|_| event_type == REDACTION) {
                content.entry("redacts").or_insert_with(|| redacts.clone());
            }
            if !backoffice && one_to_one.is_none() {
                // A chat with an open request stays, also once an operator has joined it
                // (`invite`); only a new conversation must be one to one. The member count
                // is local; the database is asked only when it is over two.
                let pair = room.joined().await.len() <= 2
                    || self
                        .store
                        .open_request_of(&self.source_id, room_id)
                        .await?
                        .is_some();
                one_to_one = Some(pair);
            }
            if one_to_one == Some(false) {
                info!(room = %room_id, "not a one-to-one chat: the bot says why and leaves");
                let group = Heard::bare(Role::Group, room_id, &format!("group:{room_id}"));
                if let Some((dedupe, ev)) = self.delivery(&group) {
                    self.store
                        .host()
                        .deliver(&self.source_id, &dedupe, &[ev])
                        .await?;
                }
                return Ok(false);
            }
            let (displayname, avatar_url) = if backoffice {
                (None, None)
            } else {
                room.profile(sender).await
            };
            let heard = Heard {
                role: if backoffice {
                    Role::Operator
                } else {
                    Role::Customer
                },
                room: room_id.to_string(),
                sender: sender.to_string(),
                event_id: event_id.to_string(),
                event_type: event_type.to_string(),
                ts: raw["origin_server_ts"].as_i64().unwrap_or_default(),
                thread: content
                    .get("m.relates_to")
                    .filter(|r| r["rel_type"] == "m.thread")
                    .and_then(|r| r["event_id"].as_str())
                    .map(String::from),
                content,
                displayname,
                avatar_url,
                request: None,
                idle_since: None,
            };
            if let Some((dedupe, ev)) = self.delivery(&heard) {
                self.store
                    .host()
                    .deliver(&self.source_id, &dedupe, &[ev])
                    .await?;
            }
        }
        Ok(true)
    }
}
