//! The Matrix sink: the only part of Switchboard that talks to the homeserver. It logs in,
//! executes outbox actions with stable transaction IDs, and keeps a sync running once
//! something needs one (end-to-end encryption does; posting into plain rooms does not).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::RequestConfig;
use matrix_sdk::ruma::api::client::message::send_message_event;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset};
use matrix_sdk::ruma::api::error::{ErrorKind, LimitExceededErrorData, RetryAfter};
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{
    OwnedRoomId, OwnedTransactionId, OwnedUserId, RoomAliasId, RoomId, TransactionId, UserId,
};
use matrix_sdk::{Client, Room, SessionMeta, SessionTokens};
use serde_json::json;
use sha2::{Digest, Sha256, Sha512};
use switchboard_connector::{ActAs, Action, Connector, RoomSpec};
use tracing::{info, warn};

use crate::config::{MatrixConfig, MatrixLogin};
use crate::seal::Sealer;
use crate::store::{Link, OutboxRow, Store};

const SESSION_KEY: &str = "matrix.session";
/// What the crypto store's passphrase is derived for.
const CRYPTO_STORE_KEY: &str = "matrix.crypto-store";
const INSTANCE_KEY: &str = "instance.id";
/// Least time between two syncs.
const SYNC_PAUSE: Duration = Duration::from_millis(500);
/// How often the homeserver is asked whether it is there while no sync runs.
const PROBE_INTERVAL: Duration = Duration::from_secs(3);

/// Errors of the Matrix side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MatrixError {
    /// Logging in or restoring the session failed.
    #[error("login: {0}")]
    Login(String),
    /// Building the client (store, homeserver URL) failed.
    #[error("client: {0}")]
    Client(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

mod lend;
mod sync;

pub use switchboard_connector::Failure;

/// A failed request of the Matrix client, classified.
fn sdk_failure(e: &matrix_sdk::Error) -> Failure {
    // Not in the room (left, or removed): trying again changes nothing.
    if let matrix_sdk::Error::WrongRoomState(_) = e {
        return Failure::Permanent(e.to_string());
    }
    classify(e.as_client_api_error(), e.to_string())
}

/// A failed HTTP request to the homeserver, classified.
fn http_failure(e: &matrix_sdk::HttpError) -> Failure {
    classify(e.as_client_api_error(), e.to_string())
}

/// 429, 502, 503 and 504 (overload, a proxy in front of a homeserver that is down) and
/// anything that is not an HTTP answer (network, timeout) are transient; other 5xx are
/// refusals (retried, but set aside in the end); other HTTP errors are permanent.
fn classify(api: Option<&matrix_sdk::ruma::api::error::Error>, message: String) -> Failure {
    let Some(api) = api else {
        return Failure::Transient {
            message,
            retry_after: None,
        };
    };
    let status = api.status_code;
    if status.as_u16() == 429 {
        let retry_after = match api.error_kind() {
            Some(ErrorKind::LimitExceeded(LimitExceededErrorData {
                retry_after: Some(RetryAfter::Delay(d)),
                ..
            })) => Some(*d),
            Some(ErrorKind::LimitExceeded(LimitExceededErrorData {
                retry_after: Some(RetryAfter::DateTime(t)),
                ..
            })) => Some(
                t.duration_since(std::time::SystemTime::now())
                    .unwrap_or_default(),
            ),
            _ => None,
        };
        return Failure::Transient {
            message,
            retry_after,
        };
    }
    if matches!(status.as_u16(), 502..=504) {
        return Failure::Transient {
            message,
            retry_after: None,
        };
    }
    if status.is_server_error() {
        return Failure::Refused(message);
    }
    let code = api
        .error_kind()
        .map(|k| k.errcode().to_string())
        .unwrap_or_default();
    Failure::Permanent(format!("{message} ({code})"))
}

/// What the worker needs from a sink. The Matrix sink implements it; its tests drive it.
pub struct MatrixSink {
    client: Client,
    store: Store,
    user_id: OwnedUserId,
    /// Rooms of version 12 and later must not list their creator in power levels.
    creator_in_power_levels: bool,
    /// Random per database, so two installations sharing a bot never share aliases.
    instance: String,
    /// Set once something needs the event stream; `sync_start` wakes the connection task.
    sync_wanted: AtomicBool,
    sync_start: tokio::sync::Notify,
    /// Tickets' rooms as read from the store. A ticket's room never changes once linked
    /// (links are never deleted or pointed elsewhere), so this is never stale, also when
    /// another process shares the store.
    rooms: Mutex<HashMap<(String, String), String>>,
    /// The connectors that hear Matrix, once `serve_listeners` ran.
    listeners: std::sync::OnceLock<Vec<(String, Arc<dyn Connector>)>>,
    /// Which source each room belongs to, as read from or written to `room_claims` (a
    /// claim never changes).
    owners: Mutex<HashMap<String, String>>,
}

/// Where the sync stood after the last response whose messages are in the inbox.
const SYNC_CURSOR: &str = "matrix.sync";

/// How many tickets' rooms are kept in memory; beyond that the cache starts over.
const ROOM_CACHE: usize = 100_000;

impl MatrixSink {
    /// Logs in (or restores the stored session) and prepares the client.
    pub async fn connect(
        cfg: &MatrixConfig,
        login: &MatrixLogin,
        data_dir: &Path,
        store: Store,
        sealer: &Sealer,
    ) -> Result<MatrixSink, MatrixError> {
        let store_dir = data_dir.join("matrix");
        let stored: Option<MatrixSession> = match store.setting(SESSION_KEY).await? {
            None => None,
            Some(s) => match sealer.open(SESSION_KEY, &s) {
                Ok(json) => serde_json::from_str(&json).ok(),
                Err(error) => {
                    warn!(%error, "cannot read the stored Matrix session; logging in again");
                    None
                }
            },
        }
        .filter(|s: &MatrixSession| same_user(&cfg.user, &s.meta.user_id));

        let client = match stored {
            Some(session) => {
                // A crypto store made without the data secret (or with another) does not
                // open: log in again, with a new one.
                let restored = match build(cfg, &store_dir, sealer).await {
                    Ok(client) => {
                        let ok = client.restore_session(session).await.is_ok()
                            && client.whoami().await.is_ok();
                        ok.then_some(client)
                    }
                    Err(error) => {
                        warn!(%error, "cannot open the crypto store");
                        None
                    }
                };
                match restored {
                    Some(client) => {
                        info!(user = %cfg.user, "restored Matrix session");
                        client
                    }
                    None => {
                        warn!(user = %cfg.user, "stored Matrix session cannot be used; logging in again");
                        login_fresh(cfg, login, &store_dir, &store, sealer).await?
                    }
                }
            }
            None => login_fresh(cfg, login, &store_dir, &store, sealer).await?,
        };
        let user_id = client
            .user_id()
            .ok_or_else(|| MatrixError::Login("no user ID after login".into()))?
            .to_owned();

        let creator_in_power_levels = match client
            .send(matrix_sdk::ruma::api::client::discovery::get_capabilities::v3::Request::new())
            .await
        {
            Ok(caps) => {
                let v = caps.capabilities.room_versions.default.to_string();
                v.parse::<u32>().map(|n| n < 12).unwrap_or(false)
            }
            Err(_) => false,
        };
        let instance = match store.setting(INSTANCE_KEY).await? {
            Some(id) => id,
            None => {
                let id = format!("{:016x}", rand::random::<u64>());
                store.set_setting(INSTANCE_KEY, &id).await?;
                id
            }
        };
        Ok(MatrixSink {
            client,
            store,
            user_id,
            creator_in_power_levels,
            instance,
            sync_wanted: AtomicBool::new(cfg.encryption),
            sync_start: tokio::sync::Notify::new(),
            rooms: Mutex::new(HashMap::new()),
            listeners: std::sync::OnceLock::new(),
            owners: Mutex::new(HashMap::new()),
        })
    }

    /// Hands what the sync hears to the connectors that listen (`Connector::listener`)
    /// from now on (the sync starts if it was not running).
    pub fn serve_listeners(&self, connectors: Vec<(String, Arc<dyn Connector>)>) {
        if connectors.is_empty() {
            return;
        }
        for listener in connectors.iter().filter_map(|(_, c)| c.listener()) {
            listener.know_bot(self.user_id.as_str());
        }
        if self.listeners.set(connectors).is_ok() {
            self.want_sync();
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    /// Executes one outbox action. Returns a short result to record (an event or room ID).
    pub async fn execute(&self, row: &OutboxRow, action: &Action) -> Result<String, Failure> {
        match action {
            Action::Send { room, content } => {
                let room = self.encryption_aware(room).await?;
                self.send_raw(&room, content.clone(), row, "").await
            }
            Action::Invite { room, user } => self.invite(room, user, false).await,
            Action::Participant { user } => {
                let Some(link) = self.link(row).await? else {
                    return Ok("skipped: the ticket has no room".into());
                };
                // Two events of a new ticket, planned before its first invite ran, ask for
                // the same invite twice; the first try counts. A second lease is a retry
                // (after a crash, or an operator's) and tries again.
                if row.attempts <= 1 && link.invited.contains(user) {
                    return Ok(format!("skipped: {user} was invited or tried before"));
                }
                let outcome = self.invite(&link.room_id, user, true).await;
                // Tried for good (done, or failed and told in the room): later events of the
                // ticket do not ask again; an operator's retry does.
                if !matches!(
                    outcome,
                    Err(Failure::Transient { .. } | Failure::Refused(_))
                ) && !link.invited.contains(user)
                {
                    let mut invited = link.invited.clone();
                    invited.push(user.clone());
                    self.store
                        .set_invited(&row.source_id, &row.ticket_key, &invited)
                        .await
                        .map_err(db_failure)?;
                }
                outcome
            }
            Action::Kick { room, user, reason } => self.kick(room, user, reason).await,
            Action::Leave { room } => self.leave(room).await,
            Action::OpenRoom(spec) => self.open_room(row, spec).await,
            Action::Post { body, notice } => {
                let Some(room_id) = self.room_of(row).await? else {
                    return Ok("skipped: the ticket has no room".into());
                };
                let room = self.encryption_aware(&room_id).await?;
                let content = if *notice {
                    RoomMessageEventContent::notice_plain(body)
                } else {
                    RoomMessageEventContent::text_plain(body)
                };
                self.send_message(&room, content, txn_id(row, "")).await
            }
            Action::Close { notice, rename } => {
                let Some(room_id) = self.room_of(row).await? else {
                    return Ok("skipped: the ticket has no room".into());
                };
                let room = self.encryption_aware(&room_id).await?;
                let mut result = String::new();
                if let Some(text) = notice {
                    let content = RoomMessageEventContent::notice_plain(text);
                    result = self.send_message(&room, content, txn_id(row, "n")).await?;
                }
                if let Some(name) = rename {
                    room.set_name(name.clone())
                        .await
                        .map_err(|e| sdk_failure(&e))?;
                }
                self.store
                    .set_link_closed(&row.source_id, &row.ticket_key, true)
                    .await
                    .map_err(db_failure)?;
                Ok(result)
            }
        }
    }

    /// Removes `user` from `room` (a pending invite is withdrawn) unless they are not in it.
    async fn kick(&self, room: &str, user: &str, reason: &str) -> Result<String, Failure> {
        let uid =
            UserId::parse(user).map_err(|e| Failure::Permanent(format!("user ID {user}: {e}")))?;
        let room = self.room(room).await?;
        match self.membership(&room, &uid).await?.as_deref() {
            Some("join") | Some("invite") | Some("knock") => {}
            _ => return Ok(format!("skipped: {user} is not in the room")),
        }
        room.kick_user(&uid, Some(reason))
            .await
            .map_err(|e| sdk_failure(&e))?;
        Ok(format!("removed {user}"))
    }

    async fn leave(&self, room: &str) -> Result<String, Failure> {
        let id =
            RoomId::parse(room).map_err(|e| Failure::Permanent(format!("room ID {room}: {e}")))?;
        match self.client.get_room(&id) {
            Some(r) => r.leave().await.map_err(|e| sdk_failure(&e))?,
            None => return Ok("skipped: not in the room".into()),
        }
        Ok(format!("left {room}"))
    }

    /// Refuses to act as anyone but the bot: a bot logged in as one user cannot (an
    /// appservice could).
    fn acting(&self, who: ActAs<'_>) -> Result<(), Failure> {
        match who {
            Some(user) if user != self.user_id.as_str() => Err(Failure::Permanent(format!(
                "cannot act as {user}: the bot is logged in as {}",
                self.user_id
            ))),
            _ => Ok(()),
        }
    }

    /// Invites `user` into `room` unless they are in it or invited. With `report`, an
    /// invite that fails for good is told in the room, once however often it is tried (the
    /// notice's transaction ID is the room's and the user's).
    async fn invite(&self, room: &str, user: &str, report: bool) -> Result<String, Failure> {
        let uid =
            UserId::parse(user).map_err(|e| Failure::Permanent(format!("user ID {user}: {e}")))?;
        let room = self.room(room).await?;
        // The failure, and why in words for the room: the homeserver's own, if it gave any.
        let (failure, reason) = match self.membership(&room, &uid).await?.as_deref() {
            Some("join") | Some("invite") => {
                return Ok(format!("skipped: {user} is in the room or invited"));
            }
            Some("ban") => {
                let why = "they are banned from the room".to_string();
                (Failure::Permanent(format!("{user}: {why}")), why)
            }
            _ => match room.invite_user_by_id(&uid).await {
                Ok(()) => return Ok(format!("invited {user}")),
                Err(e) if already_in_room(&e) => return Ok(format!("not invited: {e}")),
                Err(e) => (
                    sdk_failure(&e),
                    server_reason(&e).unwrap_or_else(|| e.to_string()),
                ),
            },
        };
        if let (Failure::Permanent(_), true) = (&failure, report) {
            let text = format!("Could not invite {user}: {reason}");
            let content = RoomMessageEventContent::notice_plain(text);
            let mut h = Sha256::new();
            h.update(room.room_id().as_bytes());
            h.update([0]);
            h.update(user.as_bytes());
            let txn = format!("switchboard.uninvited.{}", &hex::encode(h.finalize())[..24]);
            if let Err(error) = self.send_message(&room, content, txn.into()).await {
                warn!(?error, "cannot tell the room that an invite failed");
            }
        }
        Err(failure)
    }

    /// The ticket's room, from memory when it was looked up before.
    async fn room_of(&self, row: &OutboxRow) -> Result<Option<String>, Failure> {
        let key = (row.source_id.clone(), row.ticket_key.clone());
        if let Some(room_id) = self.rooms().get(&key) {
            return Ok(Some(room_id.clone()));
        }
        let Some(link) = self.link(row).await? else {
            return Ok(None);
        };
        self.remember(key, &link.room_id);
        Ok(Some(link.room_id))
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), String>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember(&self, key: (String, String), room_id: &str) {
        let mut rooms = self.rooms();
        if rooms.len() >= ROOM_CACHE {
            rooms.clear();
        }
        rooms.insert(key, room_id.to_string());
    }

    async fn link(&self, row: &OutboxRow) -> Result<Option<Link>, Failure> {
        self.store
            .link(&row.source_id, &row.ticket_key)
            .await
            .map_err(db_failure)
    }

    /// Sends a message; returns its event ID. In a plain room that is the one request the
    /// client-server API needs; in an encrypted one the SDK encrypts it first.
    async fn send_message(
        &self,
        room: &Room,
        content: RoomMessageEventContent,
        txn: OwnedTransactionId,
    ) -> Result<String, Failure> {
        let json = serde_json::to_value(&content)
            .map_err(|e| Failure::Permanent(format!("message does not serialize: {e}")))?;
        if let Some(cut) = crate::fit::fit(&json, crate::fit::CONTENT_BUDGET) {
            return self.send_cut(room, cut, txn).await;
        }
        if room.encryption_state().is_encrypted() {
            let resp = room
                .send(content)
                .with_transaction_id(txn)
                .await
                .map_err(|e| sdk_failure(&e))?;
            return Ok(resp.response.event_id.to_string());
        }
        let request =
            send_message_event::v3::Request::new(room.room_id().to_owned(), txn, &content)
                .map_err(|e| Failure::Permanent(format!("message does not serialize: {e}")))?;
        let resp = self
            .client
            .send(request)
            .await
            .map_err(|e| http_failure(&e))?;
        Ok(resp.event_id.to_string())
    }

    /// Sends a message with the given content as it is; returns its event ID.
    async fn send_raw(
        &self,
        room: &Room,
        content: serde_json::Value,
        row: &OutboxRow,
        part: &str,
    ) -> Result<String, Failure> {
        self.send_typed(room, "m.room.message", content, row, part)
            .await
    }

    /// Sends an event of `event_type` (not a state event), with the action's transaction ID.
    async fn send_typed(
        &self,
        room: &Room,
        event_type: &str,
        content: serde_json::Value,
        row: &OutboxRow,
        part: &str,
    ) -> Result<String, Failure> {
        let txn = txn_id(row, part);
        if event_type == "m.room.message"
            && let Some(cut) = crate::fit::fit(&content, crate::fit::CONTENT_BUDGET)
        {
            return self.send_cut(room, cut, txn).await;
        }
        self.send_json(room, event_type, content, &txn).await
    }

    async fn send_json(
        &self,
        room: &Room,
        event_type: &str,
        content: serde_json::Value,
        txn: &TransactionId,
    ) -> Result<String, Failure> {
        let resp = room
            .send_raw(event_type, content)
            .with_transaction_id(txn)
            .await
            .map_err(|e| sdk_failure(&e))?;
        Ok(resp.response.event_id.to_string())
    }

    /// Sends a message cut to fit one event, then its whole text as a file (encrypted in an
    /// encrypted room) in the same thread; returns the message's event ID. Each has a
    /// transaction ID of its own, so a retry after either posts neither twice.
    async fn send_cut(
        &self,
        room: &Room,
        cut: crate::fit::Cut,
        txn: OwnedTransactionId,
    ) -> Result<String, Failure> {
        let thread = cut
            .content
            .get("m.relates_to")
            .filter(|r| r["rel_type"] == "m.thread")
            .cloned();
        let event = self
            .send_json(room, "m.room.message", cut.content, &txn)
            .await?;
        let data = cut.full_text.into_bytes();
        let size = data.len();
        let mut file = json!({
            "msgtype": "m.file",
            "body": crate::fit::FULL_TEXT_FILE,
            "filename": crate::fit::FULL_TEXT_FILE,
            "info": { "mimetype": "text/plain; charset=utf-8", "size": size },
        });
        if room.encryption_state().is_encrypted() {
            let mut reader = std::io::Cursor::new(data);
            let encrypted = self
                .client
                .upload_encrypted_file(&mut reader)
                .await
                .map_err(|e| sdk_failure(&e))?;
            file["file"] = serde_json::to_value(&encrypted)
                .map_err(|e| Failure::Permanent(format!("file does not serialize: {e}")))?;
        } else {
            let uploaded = self
                .client
                .media()
                .upload(&mime::TEXT_PLAIN_UTF_8, data, None)
                .await
                .map_err(|e| sdk_failure(&e))?;
            file["url"] = json!(uploaded.content_uri);
        }
        if let Some(thread) = thread {
            file["m.relates_to"] = thread;
        }
        let file_txn = OwnedTransactionId::from(format!("{txn}f"));
        self.send_json(room, "m.room.message", file, &file_txn)
            .await?;
        Ok(event)
    }

    /// The room, with the sync started first if the room is encrypted.
    async fn encryption_aware(&self, room_id: &str) -> Result<Room, Failure> {
        let room = self.room(room_id).await?;
        let state = room
            .latest_encryption_state()
            .await
            .map_err(|e| sdk_failure(&e))?;
        if state.is_encrypted() {
            self.want_sync();
        }
        Ok(room)
    }

    /// A user's membership of a room as the homeserver has it now (`join`, `invite`,
    /// `leave`, `ban`, `knock`), or `None` if they never had one.
    async fn membership(&self, room: &Room, user: &UserId) -> Result<Option<String>, Failure> {
        use matrix_sdk::ruma::api::client::state::get_state_event_for_key;
        use matrix_sdk::ruma::events::StateEventType;
        let request = get_state_event_for_key::v3::Request::new(
            room.room_id().to_owned(),
            StateEventType::RoomMember,
            user.to_string(),
        );
        match self.client.send(request).await {
            Ok(response) => {
                let v: serde_json::Value =
                    serde_json::from_str(response.event_or_content.get()).unwrap_or_default();
                let membership = v["membership"]
                    .as_str()
                    .or_else(|| v["content"]["membership"].as_str());
                Ok(membership.map(String::from))
            }
            Err(e) if e.client_api_error_kind() == Some(&ErrorKind::NotFound) => Ok(None),
            Err(e) => Err(http_failure(&e)),
        }
    }

    async fn room(&self, room_id: &str) -> Result<Room, Failure> {
        let id = RoomId::parse(room_id)
            .map_err(|e| Failure::Permanent(format!("stored room ID {room_id}: {e}")))?;
        match self.client.get_room(&id) {
            Some(room) if room.state() != matrix_sdk::RoomState::Invited => Ok(room),
            // Not synced yet (e.g. right after a restart): joining a room we are in is a no-op
            // that hands us the room. An invite is accepted when the room is first needed.
            _ => self
                .client
                .join_room_by_id(&id)
                .await
                .map_err(|e| sdk_failure(&e)),
        }
    }

    /// A ticket's room: created (once per ticket, whatever the homeserver answers) and
    /// linked before anyone is invited: each participant is invited by an action of their
    /// own (`Action::Participant`), so one who cannot be invited leaves no room without a
    /// link behind.
    async fn open_room(&self, row: &OutboxRow, spec: &RoomSpec) -> Result<String, Failure> {
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
    async fn create_room_once(
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

/// What the homeserver said about a failed request, in its own words, if it said something.
fn server_reason(e: &matrix_sdk::Error) -> Option<String> {
    use matrix_sdk::ruma::api::error::ErrorBody;
    match &e.as_client_api_error()?.body {
        ErrorBody::Standard(body) => Some(body.message.clone()),
        _ => None,
    }
}

/// Whether an invite failed because the user is in the room or invited already: the goal
/// is reached.
fn already_in_room(e: &matrix_sdk::Error) -> bool {
    e.client_api_error_kind() == Some(&ErrorKind::Forbidden) && e.to_string().contains("already")
}

/// An event as JSON (decrypted when it could be).
fn json_of(event: &matrix_sdk::deserialized_responses::TimelineEvent) -> Option<serde_json::Value> {
    serde_json::from_str(event.raw().json().get()).ok()
}

pub(crate) fn db_failure(e: crate::store::StoreError) -> Failure {
    if e.is_refusal() {
        return Failure::Refused(e.to_string());
    }
    Failure::Transient {
        message: e.to_string(),
        retry_after: None,
    }
}

/// One transaction ID per outbox entry (and part): the homeserver answers a repeated send with
/// the first event instead of posting again.
fn txn_id(row: &OutboxRow, part: &str) -> OwnedTransactionId {
    OwnedTransactionId::from(format!("switchboard.{}{part}", row.txn_key))
}

/// The alias that makes a ticket's room's creation idempotent: one room per ticket,
/// whichever of its actions creates it.
fn alias_localpart(instance: &str, row: &OutboxRow) -> String {
    let key = format!("{}\0{}\0ticket", row.source_id, row.ticket_key);
    keyed_alias(instance, &key)
}

/// The alias localpart for a room created once per `key` (`Matrix::create_room`): a hash of
/// the instance and the key, so two installations sharing a bot never share one.
fn keyed_alias(instance: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(instance.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    format!("switchboard_{}", &hex::encode(h.finalize())[..24])
}

async fn build(
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

async fn login_fresh(
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
fn same_user(configured: &str, stored: &UserId) -> bool {
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
