//! The Matrix sink: the only part of Switchboard that talks to the homeserver. It logs in,
//! executes outbox actions with stable transaction IDs, and keeps a sync running once
//! something needs one (end-to-end encryption does; posting into plain rooms does not).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::ruma::api::client::message::send_message_event;
use matrix_sdk::ruma::api::error::{ErrorKind, LimitExceededErrorData, RetryAfter};
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::{OwnedTransactionId, OwnedUserId, RoomId, TransactionId, UserId};
use matrix_sdk::{Client, Room};
use serde_json::json;
use sha2::{Digest, Sha256};
use switchboard_connector::{ActAs, Action, Connector};
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
mod rooms;
mod session;
mod sync;

use rooms::keyed_alias;
use session::{build, login_fresh, same_user};

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
    /// For what the homeserver offers beside the client API (Synapse's admin API).
    http: reqwest::Client,
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
            http: reqwest::Client::new(),
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
        let at = self
            .upload_into(room, data, &mime::TEXT_PLAIN_UTF_8)
            .await?;
        if let (Some(file), Some(at)) = (file.as_object_mut(), at.as_object()) {
            file.extend(at.clone());
        }
        if let Some(thread) = thread {
            file["m.relates_to"] = thread;
        }
        let file_txn = OwnedTransactionId::from(format!("{txn}f"));
        self.send_json(room, "m.room.message", file, &file_txn)
            .await?;
        Ok(event)
    }

    /// Uploads a file for `room`: the content keys that point to it (`url`, or `file`
    /// with its key when the room is encrypted).
    pub(crate) async fn upload_into(
        &self,
        room: &Room,
        data: Vec<u8>,
        content_type: &mime::Mime,
    ) -> Result<serde_json::Value, Failure> {
        if room.encryption_state().is_encrypted() {
            let mut reader = std::io::Cursor::new(data);
            let encrypted = self
                .client
                .upload_encrypted_file(&mut reader)
                .await
                .map_err(|e| sdk_failure(&e))?;
            let file = serde_json::to_value(&encrypted)
                .map_err(|e| Failure::Permanent(format!("file does not serialize: {e}")))?;
            Ok(json!({ "file": file }))
        } else {
            let uploaded = self
                .client
                .media()
                .upload(content_type, data, None)
                .await
                .map_err(|e| sdk_failure(&e))?;
            Ok(json!({ "url": uploaded.content_uri }))
        }
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
pub(crate) fn json_of(
    event: &matrix_sdk::deserialized_responses::TimelineEvent,
) -> Option<serde_json::Value> {
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
