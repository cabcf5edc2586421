//! The Matrix sink: the only part of Switchboard that talks to the homeserver. It logs in,
//! executes outbox actions with stable transaction IDs, and keeps a sync running once
//! something needs one (end-to-end encryption does; posting into plain rooms does not).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use matrix_sdk::authentication::matrix::MatrixSession;
use matrix_sdk::config::{RequestConfig, SyncSettings};
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::api::client::message::send_message_event;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset};
use matrix_sdk::ruma::api::error::{ErrorKind, LimitExceededErrorData, RetryAfter};
use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{
    EventId, OwnedRoomId, OwnedTransactionId, OwnedUserId, RoomAliasId, RoomId, TransactionId,
    UserId,
};
use matrix_sdk::{Client, Room, SessionMeta, SessionTokens};
use serde_json::json;
use sha2::{Digest, Sha256, Sha512};
use switchboard_connector::{ActAs, Action, Apology, Connector, Listener, Matrix, RoomSpec};
use tracing::{debug, info, warn};

use crate::config::{MatrixConfig, MatrixLogin};
use crate::helpdesk::{Heard, Helpdesk, PENDING_DM, Role};
use crate::metrics::Metrics;
use crate::seal::Sealer;
use crate::store::{Link, OutboxRow, Store, now_ms};
use switchboard_matrix_dm::access::server_of;

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
    /// The helpdesk the sync feeds, and the engine's wake-up, once `serve_helpdesk` ran.
    helpdesk: std::sync::OnceLock<(Arc<Helpdesk>, Arc<tokio::sync::Notify>)>,
    /// Opens what a Honoroit of this account sealed with the same data secret.
    sealer: Sealer,
    /// The connectors that hear Matrix, once `serve_listeners` ran.
    listeners: std::sync::OnceLock<Vec<Arc<dyn Connector>>>,
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
            sealer: sealer.clone(),
            rooms: Mutex::new(HashMap::new()),
            helpdesk: std::sync::OnceLock::new(),
            listeners: std::sync::OnceLock::new(),
        })
    }

    /// Feeds the helpdesk what the sync hears from now on (the sync starts if it was not
    /// running); `wake` tells the engine that the inbox has something.
    pub fn serve_helpdesk(&self, helpdesk: Arc<Helpdesk>, wake: Arc<tokio::sync::Notify>) {
        helpdesk.know_bot(self.user_id.as_str());
        if self.helpdesk.set((helpdesk, wake)).is_ok() {
            self.want_sync();
        }
    }

    /// Hands what the sync hears to the connectors that listen (`Connector::listener`)
    /// from now on (the sync starts if it was not running).
    pub fn serve_listeners(&self, connectors: Vec<Arc<dyn Connector>>) {
        if connectors.is_empty() {
            return;
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

    /// Keeps in touch with the homeserver for as long as Switchboard runs and keeps
    /// `homeserver_up` current. Until something needs the event stream it only asks the
    /// homeserver now and then whether it is there: a sync makes the homeserver build a
    /// response for every event in the bot's rooms, work that posting alone never needs.
    pub async fn stay_connected(self: Arc<Self>, metrics: Metrics) {
        while !self.sync_wanted.load(Ordering::Acquire) {
            let up = self.client.whoami().await.is_ok();
            metrics.homeserver_up.set(i64::from(up));
            tokio::select! {
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
                _ = self.sync_start.notified() => {}
            }
        }
        info!("starting to sync");
        self.sync_forever(metrics).await
    }

    /// Starts the sync, if it is not running yet. End-to-end encryption needs it: device
    /// lists, room keys and to-device messages arrive there.
    fn want_sync(&self) {
        if !self.sync_wanted.swap(true, Ordering::AcqRel) {
            self.sync_start.notify_one();
        }
    }

    /// Syncs (for encryption keys, room state and later for incoming messages).
    async fn sync_forever(self: Arc<Self>, metrics: Metrics) {
        let mut settings = SyncSettings::default().timeout(Duration::from_secs(30));
        let mut backoff = Duration::from_millis(500);
        // With a helpdesk, the sync goes on from the last response whose messages reached
        // the inbox; without a stored position it starts now and relays nothing older.
        let helpdesk = self.helpdesk.get().cloned();
        let listeners = self.listeners.get().cloned().unwrap_or_default();
        let mut resumed = false;
        let mut last_retry = std::time::Instant::now();
        if helpdesk.is_some() || !listeners.is_empty() {
            loop {
                match self.store.cursor(SYNC_CURSOR).await {
                    Ok(token) => {
                        if let Some(token) = token {
                            settings = settings.token(token);
                            resumed = true;
                        }
                        break;
                    }
                    Err(error) => {
                        warn!(%error, "cannot read the sync position; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
        loop {
            match self.client.sync_once(settings.clone()).await {
                Ok(resp) => {
                    metrics.homeserver_up.set(1);
                    let heard = match &helpdesk {
                        Some((helpdesk, _)) => Some(self.hear(helpdesk, &resp, resumed).await),
                        None if !listeners.is_empty() => {
                            Some(self.hear_listeners(&listeners, &resp, resumed).await)
                        }
                        None => None,
                    };
                    if let Some(heard) = heard {
                        let taken = match heard {
                            Ok(()) => self.store.set_cursor(SYNC_CURSOR, &resp.next_batch).await,
                            Err(error) => Err(error),
                        };
                        if let Err(error) = taken {
                            // The same response comes again from the old position.
                            warn!(%error, "cannot store what the sync heard; retrying");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(15));
                            continue;
                        }
                        if let Some((helpdesk, _)) = &helpdesk {
                            if !resumed {
                                self.take_over_honoroit(helpdesk, &resp).await;
                            }
                            // Room keys come as to-device events, maybe after their messages.
                            if resumed
                                && (!resp.to_device.is_empty()
                                    || last_retry.elapsed() >= UNDECRYPTED_RETRY)
                            {
                                last_retry = std::time::Instant::now();
                                if let Err(error) = self.retry_undecrypted(helpdesk).await {
                                    warn!(%error, "cannot try undecrypted events again");
                                }
                            }
                        }
                        resumed = true;
                        if let Some((_, wake)) = &helpdesk {
                            wake.notify_one();
                        }
                    }
                    let echoes = self.brings_own_events(&resp);
                    settings = settings.token(resp.next_batch);
                    backoff = Duration::from_millis(500);
                    // Every event in a joined room wakes a waiting sync, and the homeserver
                    // builds a response for each wake-up: that doubled its work per message
                    // Switchboard sent. While it sends, pausing between syncs lets one
                    // response carry many; a response with only others' events comes
                    // straight back, so a customer's next message is not kept waiting.
                    if echoes {
                        tokio::time::sleep(SYNC_PAUSE).await;
                    }
                }
                Err(error) => {
                    metrics.homeserver_up.set(0);
                    warn!(%error, "sync failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(15));
                }
            }
        }
    }

    /// On the first sync: what a Honoroit of this account left in its account data. Its
    /// open requests (`cc.etke.honoroit.mapping.<chat>` -> `{"id": <thread root>}`) become
    /// requests, so their customers' next messages land in their threads; its options
    /// (`cc.etke.honoroit.config`) become the helpdesk's, unless some were set here already.
    /// With `HONOROIT_DATA_SECRET`, Honoroit sealed the keys and values of both; they are
    /// opened with the same data secret.
    async fn take_over_honoroit(&self, helpdesk: &Helpdesk, resp: &matrix_sdk::sync::SyncResponse) {
        let mut taken = 0;
        for raw in &resp.account_data {
            let Ok(Some(kind)) = raw.get_field::<String>("type") else {
                continue;
            };
            let Ok(Some(content)) = raw.get_field::<serde_json::Value>("content") else {
                continue;
            };
            let content = self.open_honoroit(&content);
            if kind == HONOROIT_CONFIG {
                if let Err(error) = helpdesk.adopt_options(&self.store, &content).await {
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
            match self.honoroit_request(helpdesk, chat, root).await {
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
        let open = |s: &str| {
            self.sealer
                .open_honoroit(s)
                .unwrap_or_else(|| s.to_string())
        };
        content
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((open(k), open(v.as_str()?))))
            .collect()
    }

    /// One Honoroit request: its customer (the chat's other member) and its title (the
    /// thread root's, unless the root says it is done).
    async fn honoroit_request(
        &self,
        helpdesk: &Helpdesk,
        chat: &str,
        root: &str,
    ) -> Result<bool, String> {
        let room = RoomId::parse(chat).map_err(|e| e.to_string())?;
        let Some(room) = self.client.get_room(&room) else {
            return Ok(false);
        };
        let members = room
            .members_no_sync(matrix_sdk::RoomMemberships::JOIN)
            .await
            .map_err(|e| e.to_string())?;
        let Some(customer) = members.iter().find(|m| m.user_id() != self.user_id) else {
            return Ok(false);
        };
        let backoffice = RoomId::parse(helpdesk.backoffice()).map_err(|e| e.to_string())?;
        let backoffice = self
            .client
            .get_room(&backoffice)
            .ok_or("not in the backoffice room")?;
        let root_id = EventId::parse(root).map_err(|e| e.to_string())?;
        let event = backoffice
            .event(&root_id, None)
            .await
            .map_err(|e| e.to_string())?;
        let body = json_of(&event)
            .and_then(|e| e["content"]["body"].as_str().map(String::from))
            .unwrap_or_default();
        if body.starts_with("[DONE]") {
            return Ok(false);
        }
        let title = body.strip_prefix("[OPEN] ").unwrap_or(&body);
        let customer = customer.user_id().as_str();
        self.store
            .import_request(
                &helpdesk.source_id,
                customer,
                server_of(customer).unwrap_or_default(),
                chat,
                root,
                title,
            )
            .await
            .map_err(|e| e.to_string())
    }

    /// Whether a sync response carries events the bot sent itself (it is sending).
    fn brings_own_events(&self, resp: &matrix_sdk::sync::SyncResponse) -> bool {
        resp.rooms.joined.values().any(|update| {
            update.timeline.events.iter().any(|e| {
                e.raw()
                    .get_field::<String>("sender")
                    .ok()
                    .flatten()
                    .as_deref()
                    == Some(self.user_id.as_str())
            })
        })
    }

    /// What one sync response brought for the listening connectors: an invite is accepted
    /// when one of them takes it (and declined otherwise), and the events of each joined
    /// room, the bot's own left out, are handed to each (`deliver` false: only the invites,
    /// on a first sync whose events are history).
    async fn hear_listeners(
        &self,
        connectors: &[Arc<dyn Connector>],
        resp: &matrix_sdk::sync::SyncResponse,
        deliver: bool,
    ) -> crate::store::Result<()> {
        let listeners: Vec<&dyn Listener> =
            connectors.iter().filter_map(|c| c.listener()).collect();
        for room in self.client.invited_rooms() {
            let room_id = room.room_id().to_string();
            let inviter = match room.invite_details().await {
                Ok(details) => details.inviter.map(|m| m.user_id().to_string()),
                Err(_) => None,
            };
            let outcome = if listeners
                .iter()
                .any(|l| l.takes_invite(&room_id, inviter.as_deref()))
            {
                room.join().await
            } else {
                room.leave().await
            };
            if let Err(error) = outcome {
                warn!(room = %room_id, %error, "cannot answer an invite; trying again later");
            }
        }
        if !deliver {
            return Ok(());
        }
        for (id, update) in &resp.rooms.joined {
            let events: Vec<serde_json::Value> = update
                .timeline
                .events
                .iter()
                .filter_map(json_of)
                .filter(|e| e["sender"] != self.user_id.as_str())
                .collect();
            if events.is_empty() {
                continue;
            }
            for listener in &listeners {
                listener.heard(id.as_str(), &events).await?;
            }
        }
        Ok(())
    }

    /// Hands the helpdesk what one sync response brought: accepts or declines invites, and
    /// stores each message from someone else in the inbox (`deliver` false: only the
    /// invites, on a first sync whose messages are history).
    async fn hear(
        &self,
        helpdesk: &Helpdesk,
        resp: &matrix_sdk::sync::SyncResponse,
        deliver: bool,
    ) -> crate::store::Result<()> {
        // Pending invites are in the client's state, also those a crash left unanswered.
        for room in self.client.invited_rooms() {
            let room_id = room.room_id().to_string();
            let inviter = match room.invite_details().await {
                Ok(details) => details.inviter.map(|m| m.user_id().to_string()),
                Err(_) => None,
            };
            let outcome = if helpdesk.accepts_invite(&room_id, inviter.as_deref()) {
                room.join().await
            } else {
                room.leave().await
            };
            if let Err(error) = outcome {
                warn!(room = %room_id, %error, "cannot answer an invite; trying again later");
            }
        }
        if !deliver {
            return Ok(());
        }
        for (id, update) in &resp.rooms.joined {
            let room_id = id.as_str();
            if helpdesk.ignores(room_id) {
                continue;
            }
            let Some(room) = self.client.get_room(id) else {
                continue;
            };
            // A limited timeline left events out (many at once, or a long outage): read
            // them back first, so that nothing is lost and the order is kept.
            let mut events = match (&update.timeline.prev_batch, update.timeline.limited) {
                (Some(from), true) => self.skipped(helpdesk, &room, from).await?,
                _ => Vec::new(),
            };
            events.extend(update.timeline.events.iter().filter_map(json_of));
            let mut one_to_one = None;
            for raw in events {
                if !self
                    .hear_event(helpdesk, &room, raw, &mut one_to_one)
                    .await?
                {
                    break;
                }
            }
        }
        Ok(())
    }

    /// One event heard in a customer's chat or the backoffice room: into the inbox if the
    /// helpdesk wants it, or kept until its room key comes if it cannot be decrypted yet.
    /// `one_to_one` caches the room's check across its events. False when the bot left the
    /// room (a group), so the room's other events are not heard.
    async fn hear_event(
        &self,
        helpdesk: &Helpdesk,
        room: &Room,
        raw: serde_json::Value,
        one_to_one: &mut Option<bool>,
    ) -> crate::store::Result<bool> {
        let room_id = room.room_id().as_str();
        let backoffice = room_id == helpdesk.backoffice();
        let sender = raw["sender"].as_str().unwrap_or_default();
        let event_type = raw["type"].as_str().unwrap_or_default();
        if sender == self.user_id.as_str() {
            return Ok(true);
        }
        if event_type == "m.room.encrypted" {
            // Its room key has not arrived (yet): kept, and tried again as keys come.
            if let Some(event) = raw["event_id"].as_str() {
                info!(room = %room_id, event, "cannot decrypt an event yet; it waits for its room key");
                self.store
                    .keep_undecrypted(room_id, event, &raw.to_string())
                    .await?;
            }
            return Ok(true);
        }
        if !RELAYED_TYPES.contains(&event_type) {
            return Ok(true);
        }
        let (Some(event_id), Some(content)) =
            (raw["event_id"].as_str(), raw["content"].as_object())
        else {
            return Ok(true);
        };
        let mut content = content.clone();
        // Before room version 11 a redaction names its event outside the content.
        if let Some(redacts) = raw.get("redacts").filter(|_| event_type == REDACTION) {
            content.entry("redacts").or_insert_with(|| redacts.clone());
        }
        if !backoffice && one_to_one.is_none() {
            // A chat with an open request stays, also once an operator has joined it
            // (`invite`); only a new conversation must be one to one. The member count is
            // local; the database is asked only when it is over two.
            let pair = self.one_to_one(room).await
                || self
                    .store
                    .open_request_of(&helpdesk.source_id, room_id)
                    .await?
                    .is_some();
            *one_to_one = Some(pair);
        }
        if *one_to_one == Some(false) {
            // Not a one-to-one chat: say why, then leave.
            if let Err(error) = room
                .send_raw("m.room.message", helpdesk.group_notice())
                .await
            {
                warn!(room = %room_id, %error, "cannot tell a group room why the bot leaves");
            }
            if let Err(error) = room.leave().await {
                warn!(room = %room_id, %error, "cannot leave a group room");
            }
            return Ok(false);
        }
        let member = match UserId::parse(sender) {
            Ok(user) if !backoffice => room.get_member_no_sync(&user).await.ok().flatten(),
            _ => None,
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
            displayname: member
                .as_ref()
                .and_then(|m| m.display_name().map(String::from)),
            avatar_url: member
                .as_ref()
                .and_then(|m| m.avatar_url().map(|u| u.to_string())),
            request: None,
            idle_since: None,
        };
        if let Some((dedupe, ev)) = helpdesk.delivery(&heard) {
            let events = serde_json::to_string(&[ev])?;
            self.store
                .accept(&helpdesk.source_id, &dedupe, &events)
                .await?;
        }
        Ok(true)
    }

    /// The events kept undecrypted, tried again: one whose room key has come is heard now.
    /// One that waited `key_wait_minutes` in vain is given up: from a customer, the
    /// operators get a notice in its place, so they know something was said; from an
    /// operator, it is logged.
    async fn retry_undecrypted(&self, helpdesk: &Helpdesk) -> crate::store::Result<()> {
        let waited_enough = now_ms() - helpdesk.key_wait().as_millis() as i64;
        for kept in self.store.undecrypted(UNDECRYPTED_BATCH).await? {
            let room = RoomId::parse(&kept.room_id)
                .ok()
                .and_then(|id| self.client.get_room(&id));
            let raw = Raw::<OriginalSyncRoomEncryptedEvent>::from_json_string(kept.event.clone());
            let decrypted = match (&room, raw) {
                (Some(room), Ok(raw)) => match room.decrypt_event(&raw, None).await {
                    Ok(event) => json_of(&event).filter(|e| e["type"] != "m.room.encrypted"),
                    // Without encryption there is nothing to decrypt with: the wait runs out.
                    Err(error) => {
                        debug!(event = %kept.event_id, %error, "cannot try to decrypt an event");
                        None
                    }
                },
                _ => None,
            };
            let event = match decrypted {
                Some(event) => {
                    info!(room = %kept.room_id, event = %kept.event_id, "decrypted an event whose room key came late");
                    Some(event)
                }
                None if kept.heard_at > waited_enough => continue,
                None => {
                    warn!(room = %kept.room_id, event = %kept.event_id, "gave up waiting for an event's room key");
                    let from_customer = kept.room_id != helpdesk.backoffice();
                    serde_json::from_str(&kept.event)
                        .ok()
                        .filter(|_| from_customer)
                        .map(|encrypted| undecryptable(&encrypted))
                }
            };
            if let (Some(room), Some(event)) = (&room, event) {
                self.hear_event(helpdesk, room, event, &mut None).await?;
            }
            self.store.forget_undecrypted(&kept.event_id).await?;
        }
        Ok(())
    }

    /// The events a limited sync left out of a room before `from`, oldest first: read back
    /// until one that reached the inbox already, the room's start, or `BACKFILL_MAX`.
    async fn skipped(
        &self,
        helpdesk: &Helpdesk,
        room: &Room,
        from: &str,
    ) -> crate::store::Result<Vec<serde_json::Value>> {
        let mut out = Vec::new();
        let mut token = Some(from.to_string());
        'pages: while let Some(from) = token.take() {
            let mut options = MessagesOptions::backward().from(from.as_str());
            options.limit = 100u32.into();
            let page = match room.messages(options).await {
                Ok(page) => page,
                Err(error) => {
                    warn!(room = %room.room_id(), %error, "cannot read what the sync left out of a room");
                    break;
                }
            };
            for raw in page.chunk.iter().filter_map(json_of) {
                let ours = raw["sender"] == self.user_id.as_str();
                let heard = RELAYED_TYPES.contains(&raw["type"].as_str().unwrap_or_default());
                if let (Some(id), true, false) = (raw["event_id"].as_str(), heard, ours)
                    && self.store.accepted(&helpdesk.source_id, id).await?
                {
                    break 'pages;
                }
                if out.len() >= BACKFILL_MAX {
                    warn!(room = %room.room_id(), max = BACKFILL_MAX, "the sync left out more events than are read back");
                    break 'pages;
                }
                out.push(raw);
            }
            if page.chunk.is_empty() {
                break;
            }
            token = page.end;
        }
        if !out.is_empty() {
            info!(room = %room.room_id(), events = out.len(), "read back events the sync left out");
        }
        out.reverse();
        Ok(out)
    }

    /// Whether at most one other user has joined the room, by its state as synced (the
    /// summary's member count comes only with lazy-loaded members).
    async fn one_to_one(&self, room: &Room) -> bool {
        room.members_no_sync(matrix_sdk::RoomMemberships::JOIN)
            .await
            .map(|members| members.len() <= 2)
            .unwrap_or(true)
    }

    /// Executes one outbox action. Returns a short result to record (an event or room ID).
    pub async fn execute(&self, row: &OutboxRow, action: &Action) -> Result<String, Failure> {
        match action {
            Action::ThreadOpen {
                request,
                room,
                content,
            } => {
                match self
                    .store
                    .request_by_id(*request)
                    .await
                    .map_err(db_failure)?
                {
                    None => return Ok("skipped: no such request".into()),
                    Some(r) if r.thread_root.is_some() => {
                        return Ok("skipped: the thread exists".into());
                    }
                    Some(_) => {}
                }
                let room = self.encryption_aware(room).await?;
                let root = self.send_raw(&room, content.clone(), row, "").await?;
                self.store
                    .set_request_thread(*request, &root)
                    .await
                    .map_err(db_failure)?;
                Ok(root)
            }
            Action::ThreadPost {
                request,
                room,
                content,
            } => {
                let root = self.thread_of(*request).await?;
                let content = switchboard_matrix_dm::relay::in_thread(
                    content.as_object().cloned().unwrap_or_default(),
                    &root,
                );
                let room = self.encryption_aware(room).await?;
                self.send_raw(&room, serde_json::Value::Object(content), row, "")
                    .await
            }
            Action::Relay { apology, .. } => match self.relay(row, action).await {
                Err(Failure::Permanent(message)) if apology.is_some() => {
                    if let Some(apology) = apology
                        && let Err(error) = self.apologise(row, apology).await
                    {
                        warn!(
                            ?error,
                            "cannot tell the sender that a message was not relayed"
                        );
                    }
                    Err(Failure::Permanent(message))
                }
                outcome => outcome,
            },
            Action::Send { room, content } => {
                let room = self.encryption_aware(room).await?;
                self.send_raw(&room, content.clone(), row, "").await
            }
            Action::StartChat {
                request,
                user,
                encrypted,
            } => {
                let Some(r) = self
                    .store
                    .request_by_id(*request)
                    .await
                    .map_err(db_failure)?
                else {
                    return Ok("skipped: no such request".into());
                };
                if !r.dm_room.starts_with(PENDING_DM) {
                    return Ok(format!("skipped: the chat is {}", r.dm_room));
                }
                let spec = RoomSpec {
                    name: String::new(),
                    topic: String::new(),
                    preset: "trusted_private_chat".into(),
                    encrypted: *encrypted,
                    invite: vec![user.clone()],
                    admins: Vec::new(),
                    reopen_notice: None,
                };
                let key = alias_localpart(&self.instance, row, true);
                let (room, whole) = self.create_room_once(&key, &spec, true).await?;
                self.store
                    .set_request_dm(*request, room.as_str())
                    .await
                    .map_err(db_failure)?;
                if !whole {
                    // Created by a try that failed after it (e.g. at the invite): the chat
                    // is the request's now, and the customer is invited here.
                    self.invite(room.as_str(), user, false).await?;
                }
                Ok(room.to_string())
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

    /// Relays an event to the other side of its request (`Action::Relay`).
    async fn relay(&self, row: &OutboxRow, action: &Action) -> Result<String, Failure> {
        let Action::Relay {
            request,
            room,
            to_operators,
            event_type,
            content,
            origin,
            about,
            ..
        } = action
        else {
            return Err(Failure::Permanent("not a relay".into()));
        };
        let mut content = content.as_object().cloned().unwrap_or_default();
        let room = self.encryption_aware(room).await?;
        if let Some(about) = about {
            let found = self
                .store
                .counterpart(&row.source_id, about)
                .await
                .map_err(db_failure)?;
            let Some((other, _)) = found else {
                return Ok("skipped: what it is about was not relayed".into());
            };
            if event_type == REDACTION {
                let id = EventId::parse(other.as_str())
                    .map_err(|e| Failure::Permanent(format!("event ID {other}: {e}")))?;
                let resp = room
                    .redact(&id, None, Some(txn_id(row, "")))
                    .await
                    .map_err(|e| http_failure(&e))?;
                return Ok(resp.event_id.to_string());
            }
            if let Some(serde_json::Value::Object(rel)) = content.get_mut("m.relates_to") {
                rel.insert("event_id".into(), json!(other));
            }
        }
        if *to_operators && about.is_none() {
            let root = self.thread_of(*request).await?;
            content = switchboard_matrix_dm::relay::in_thread(content, &root);
        }
        let copy = self
            .send_typed(
                &room,
                event_type,
                serde_json::Value::Object(content),
                row,
                "",
            )
            .await?;
        self.store
            .record_relay(&row.source_id, origin, &copy, *request)
            .await
            .map_err(db_failure)?;
        Ok(copy)
    }

    /// The root of a request's thread.
    async fn thread_of(&self, request: i64) -> Result<String, Failure> {
        self.store
            .request_by_id(request)
            .await
            .map_err(db_failure)?
            .and_then(|r| r.thread_root)
            .ok_or_else(|| Failure::Permanent("the request has no thread".into()))
    }

    /// Tells the sender of an event that could not be relayed.
    async fn apologise(&self, row: &OutboxRow, apology: &Apology) -> Result<String, Failure> {
        let room = self.encryption_aware(&apology.room).await?;
        self.send_raw(&room, apology.content.clone(), row, "e")
            .await
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
                let key = alias_localpart(&self.instance, row, false);
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
        let (room, whole) = self.create_room_once(alias_key, spec, direct).await?;
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

/// In place of an event whose room key never came: a notice from its sender, so the
/// operators know that something was said.
fn undecryptable(encrypted: &serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "type": "m.room.message",
        "event_id": encrypted["event_id"],
        "sender": encrypted["sender"],
        "origin_server_ts": encrypted["origin_server_ts"],
        "content": {
            "msgtype": "m.notice",
            "body": UNDECRYPTABLE,
        },
    })
}

/// What the operators read in place of a message that could not be decrypted.
const UNDECRYPTABLE: &str =
    "(a message that could not be decrypted: its key never reached the helpdesk)";

/// How many events kept undecrypted are tried again at once.
const UNDECRYPTED_BATCH: i64 = 100;

/// How often events kept undecrypted are tried again, besides whenever keys arrive.
const UNDECRYPTED_RETRY: Duration = Duration::from_secs(10);

/// Honoroit's account data type for a chat's thread (followed by the chat's room ID).
const HONOROIT_MAPPING: &str = "cc.etke.honoroit.mapping.";
const HONOROIT_CONFIG: &str = "cc.etke.honoroit.config";

/// Most events read back into one gap of a room's timeline.
const BACKFILL_MAX: usize = 1000;

/// What the helpdesk relays: messages (and their edits), reactions and redactions.
const RELAYED_TYPES: [&str; 3] = ["m.room.message", "m.reaction", REDACTION];
const REDACTION: &str = "m.room.redaction";

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

/// The alias that makes a room's creation idempotent: per ticket for a ticket's room (one
/// room per ticket, whichever of its actions creates it), per action with `per_action`
/// (a helpdesk's started chat).
fn alias_localpart(instance: &str, row: &OutboxRow, per_action: bool) -> String {
    let mut h = Sha256::new();
    h.update(instance.as_bytes());
    h.update([0]);
    h.update(row.source_id.as_bytes());
    h.update([0]);
    h.update(row.ticket_key.as_bytes());
    h.update([0]);
    if per_action {
        h.update(row.txn_key.as_bytes());
    } else {
        h.update(b"ticket");
    }
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
