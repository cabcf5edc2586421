//! The one sync loop: started once something needs the event stream (encryption, or a
//! connector that listens). What it hears goes to the listening connectors before the
//! sync's position is stored: invites they take are accepted (others declined), each joined
//! room's events (a gap a limited sync left read back first) are handed to them, and an
//! event that cannot be decrypted yet is kept until its room key comes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{EventId, RoomId, UserId};
use matrix_sdk::{Client, Room};
use serde_json::{Value, json};
use switchboard_connector::connector::UNDECRYPTABLE;
use switchboard_connector::{Connector, FirstSync, Listener, SyncRoom};
use tracing::{debug, info, warn};

use super::{MatrixSink, PROBE_INTERVAL, SYNC_CURSOR, SYNC_PAUSE, json_of};
use crate::metrics::Metrics;
use crate::store::now_ms;

/// Most events read back into one gap of a room's timeline.
const BACKFILL_MAX: usize = 1000;
/// How many events kept undecrypted are tried again at once.
const UNDECRYPTED_BATCH: i64 = 100;
/// How often events kept undecrypted are tried again, besides whenever keys arrive.
const UNDECRYPTED_RETRY: Duration = Duration::from_secs(10);

/// The listening connectors, with their source IDs.
type Listeners = [(String, Arc<dyn Connector>)];

impl MatrixSink {
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
    pub(super) fn want_sync(&self) {
        if !self.sync_wanted.swap(true, Ordering::AcqRel) {
            self.sync_start.notify_one();
        }
    }

    /// Syncs: for encryption keys and room state, and for the listening connectors.
    async fn sync_forever(self: Arc<Self>, metrics: Metrics) {
        let mut settings = SyncSettings::default().timeout(Duration::from_secs(30));
        let mut backoff = Duration::from_millis(500);
        // With listeners, the sync goes on from the last response whose events reached
        // them; without a stored position it starts now and hands them nothing older.
        let listeners = self.listeners.get().cloned().unwrap_or_default();
        let mut resumed = false;
        let mut last_retry = std::time::Instant::now();
        if !listeners.is_empty() {
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
                    if !listeners.is_empty() {
                        let taken = match self.hear(&listeners, &resp, resumed).await {
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
                        if !resumed {
                            let first = FirstSyncView {
                                client: &self.client,
                                resp: &resp,
                            };
                            for listener in listeners.iter().filter_map(|(_, c)| c.listener()) {
                                listener.first_sync(&first).await;
                            }
                        }
                        // Room keys come as to-device events, maybe after their messages.
                        if resumed
                            && (!resp.to_device.is_empty()
                                || last_retry.elapsed() >= UNDECRYPTED_RETRY)
                        {
                            last_retry = std::time::Instant::now();
                            if let Err(error) = self.retry_undecrypted(&listeners).await {
                                warn!(%error, "cannot try undecrypted events again");
                            }
                        }
                        resumed = true;
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

    /// What one sync response brought, for the listening connectors: an invite is accepted
    /// when one of them takes it (and declined otherwise); each joined room's events, the
    /// bot's own left out, are handed to those that do not ignore the room (`deliver`
    /// false: only the invites, on a first sync whose events are history).
    async fn hear(
        &self,
        listeners: &Listeners,
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
            // The first source (by ID) that takes the invite gets the room.
            let taker = listeners.iter().find(|(_, c)| {
                c.listener()
                    .is_some_and(|l| l.takes_invite(&room_id, inviter.as_deref()))
            });
            let outcome = match taker {
                Some((source, _)) => {
                    if listeners.len() > 1 {
                        let owner = self.store.claim_room(&room_id, source).await?;
                        self.remember_owner(&room_id, &owner);
                    }
                    room.join().await
                }
                None => room.leave().await,
            };
            if let Err(error) = outcome {
                warn!(room = %room_id, %error, "cannot answer an invite; trying again later");
            }
        }
        if !deliver {
            return Ok(());
        }
        for (id, update) in &resp.rooms.joined {
            let Some(room) = self.client.get_room(id) else {
                continue;
            };
            let wanting = self.owner(listeners, &room).await?;
            if wanting.is_empty() {
                continue;
            }
            // A limited timeline left events out (many at once, or a long outage): read
            // them back first, so that nothing is lost and the order is kept.
            let mut events = match (&update.timeline.prev_batch, update.timeline.limited) {
                (Some(from), true) => self.skipped(listeners, &room, from).await?,
                _ => Vec::new(),
            };
            events.extend(update.timeline.events.iter().filter_map(json_of));
            let mut heard = Vec::with_capacity(events.len());
            for raw in events {
                if raw["sender"] == self.user_id.as_str() {
                    continue;
                }
                if raw["type"] == "m.room.encrypted" {
                    // Its room key has not arrived (yet): kept, and tried again as keys come.
                    if let Some(event) = raw["event_id"].as_str() {
                        info!(room = %id, event, "cannot decrypt an event yet; it waits for its room key");
                        self.store
                            .keep_undecrypted(id.as_str(), event, &raw.to_string())
                            .await?;
                    }
                    continue;
                }
                heard.push(raw);
            }
            if !heard.is_empty() {
                hand(&wanting, &room, &heard).await?;
            }
        }
        Ok(())
    }

    /// The events kept undecrypted, tried again: one whose room key has come is heard now.
    /// One that waited the listeners' `key_wait` in vain is heard as a notice with the
    /// `UNDECRYPTABLE` mark in its place, so they can tell that something was said.
    async fn retry_undecrypted(&self, listeners: &Listeners) -> crate::store::Result<()> {
        let wait = listeners
            .iter()
            .filter_map(|(_, c)| c.listener())
            .map(|l| l.key_wait())
            .min()
            .unwrap_or_default();
        let waited_enough = now_ms() - wait.as_millis() as i64;
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
                    serde_json::from_str(&kept.event)
                        .ok()
                        .map(|encrypted| undecryptable(&encrypted))
                }
            };
            if let (Some(room), Some(event)) = (&room, event) {
                let wanting = self.owner(listeners, room).await?;
                hand(&wanting, room, &[event]).await?;
            }
            self.store.forget_undecrypted(&kept.event_id).await?;
        }
        Ok(())
    }

    /// The listener a room's events go to: the one source's, when one listens; otherwise
    /// the room's owner (the source that took the bot's invite into it, or that first
    /// claimed it as its own, or that takes rooms nobody claims). None when it ignores the
    /// room or nobody owns it.
    async fn owner<'a>(
        &self,
        listeners: &'a Listeners,
        room: &Room,
    ) -> crate::store::Result<Vec<&'a dyn Listener>> {
        let id = room.room_id().as_str();
        let listening = |source: &str| {
            listeners
                .iter()
                .find(|(s, _)| s == source)
                .and_then(|(_, c)| c.listener())
                .filter(|l| !l.ignores(id))
        };
        if let [(source, _)] = listeners {
            return Ok(listening(source).into_iter().collect());
        }
        let known = self.owners().get(id).cloned();
        let known = match known {
            Some(owner) => Some(owner),
            None => self.store.room_owner(id).await?,
        };
        if let Some(owner) = known {
            self.remember_owner(id, &owner);
            return Ok(listening(&owner).into_iter().collect());
        }
        let view = RoomView { room };
        let mut claimant = None;
        for (source, connector) in listeners {
            if let Some(listener) = connector.listener()
                && listener.claims(&view).await?
            {
                claimant = Some(source);
                break;
            }
        }
        let claimant = claimant.or_else(|| {
            listeners
                .iter()
                .find(|(_, c)| c.listener().is_some_and(|l| l.takes_unclaimed()))
                .map(|(source, _)| source)
        });
        let Some(source) = claimant else {
            return Ok(Vec::new());
        };
        let owner = self.store.claim_room(id, source).await?;
        self.remember_owner(id, &owner);
        Ok(listening(&owner).into_iter().collect())
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, String>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.owners.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember_owner(&self, room: &str, source: &str) {
        let mut owners = self.owners();
        if owners.len() >= super::ROOM_CACHE {
            owners.clear();
        }
        owners.insert(room.to_string(), source.to_string());
    }

    /// The events a limited sync left out of a room before `from`, oldest first: read back
    /// until one that a listening source has in its inbox already, the room's start, or
    /// `BACKFILL_MAX`.
    async fn skipped(
        &self,
        listeners: &Listeners,
        room: &Room,
        from: &str,
    ) -> crate::store::Result<Vec<Value>> {
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
                let message = raw.get("state_key").is_none();
                if let (Some(id), true, false) = (raw["event_id"].as_str(), message, ours) {
                    for (source, _) in listeners {
                        if self.store.accepted(source, id).await? {
                            break 'pages;
                        }
                    }
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
}

/// Hands a room's events to each listener, until one leaves the room.
async fn hand(
    listeners: &[&dyn Listener],
    room: &Room,
    events: &[Value],
) -> crate::store::Result<()> {
    let view = RoomView { room };
    for listener in listeners {
        if !listener.heard(&view, events).await? {
            break;
        }
    }
    Ok(())
}

/// In place of an event whose room key never came: a notice from its sender, marked.
fn undecryptable(encrypted: &Value) -> Value {
    json!({
        "type": "m.room.message",
        "event_id": encrypted["event_id"],
        "sender": encrypted["sender"],
        "origin_server_ts": encrypted["origin_server_ts"],
        "content": {
            "msgtype": "m.notice",
            "body": "(a message that could not be decrypted: its key never arrived)",
        },
        "unsigned": { UNDECRYPTABLE: true },
    })
}

/// A joined room as the sync has it.
struct RoomView<'a> {
    room: &'a Room,
}

#[async_trait]
impl SyncRoom for RoomView<'_> {
    fn id(&self) -> &str {
        self.room.room_id().as_str()
    }

    async fn joined(&self) -> Vec<String> {
        self.room
            .members_no_sync(matrix_sdk::RoomMemberships::JOIN)
            .await
            .map(|members| members.iter().map(|m| m.user_id().to_string()).collect())
            .unwrap_or_default()
    }

    async fn profile(&self, user: &str) -> (Option<String>, Option<String>) {
        let Ok(user) = UserId::parse(user) else {
            return (None, None);
        };
        match self.room.get_member_no_sync(&user).await {
            Ok(Some(m)) => (
                m.display_name().map(String::from),
                m.avatar_url().map(|u| u.to_string()),
            ),
            _ => (None, None),
        }
    }
}

/// What the first sync brought.
struct FirstSyncView<'a> {
    client: &'a Client,
    resp: &'a matrix_sdk::sync::SyncResponse,
}

#[async_trait]
impl FirstSync for FirstSyncView<'_> {
    fn account_data(&self) -> Vec<(String, Value)> {
        self.resp
            .account_data
            .iter()
            .filter_map(|raw| {
                let kind = raw.get_field::<String>("type").ok()??;
                let content = raw.get_field::<Value>("content").ok()??;
                Some((kind, content))
            })
            .collect()
    }

    async fn joined(&self, room: &str) -> Option<Vec<String>> {
        let room = self.client.get_room(&RoomId::parse(room).ok()?)?;
        let members = room
            .members_no_sync(matrix_sdk::RoomMemberships::JOIN)
            .await
            .ok()?;
        Some(members.iter().map(|m| m.user_id().to_string()).collect())
    }

    async fn event(&self, room: &str, event: &str) -> Option<Value> {
        let room = self.client.get_room(&RoomId::parse(room).ok()?)?;
        let event = room.event(&EventId::parse(event).ok()?, None).await.ok()?;
        json_of(&event)
    }
}
