//! pretix: an order's action reads the order from pretix's REST API and brings the event's
//! rooms in line with its current state. The invites, removals and reports that takes are
//! queued as actions of their own, each in its own lane (`member:<room>:<user>`), so one
//! that fails is retried without holding up the others.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use switchboard_connector::{Action, EventKind, TicketEvent};
use switchboard_pretix::{Command, EventRooms, HELP, OrderRef, PretixConfig, membership};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::config::{Loaded, Secret, SourceKind};
use crate::matrix::Failure;
use crate::metrics::Metrics;
use crate::seal::Sealer;
use crate::store::{NewAction, OutboxRow, PretixChanges, Store, now_ms};

/// How long a call to pretix may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The pretix sources, and what reads from them.
pub struct Pretix {
    /// Each source's config and API token (none: OAuth only).
    sources: HashMap<String, (PretixConfig, Option<Secret>)>,
    http: reqwest::Client,
    store: Store,
    metrics: Metrics,
    /// Tells the engine that the inbox has something (polling, `!batchinvite`).
    wake: Arc<Notify>,
    /// Each source's OAuth client secret.
    client_secrets: BTreeMap<String, Secret>,
    /// Seals OAuth tokens at rest.
    sealer: Sealer,
    /// One refresh of an OAuth token at a time.
    oauth_lock: tokio::sync::Mutex<()>,
}

impl Pretix {
    /// The configured pretix sources; `None` if there are none.
    pub fn new(
        loaded: &Loaded,
        store: Store,
        metrics: Metrics,
        wake: Arc<Notify>,
        sealer: Sealer,
    ) -> Option<Pretix> {
        let sources: HashMap<_, _> = loaded
            .config
            .sources
            .iter()
            .filter(|(_, s)| s.kind == SourceKind::Pretix)
            .filter_map(|(id, s)| {
                let token = loaded.secrets.pretix_tokens.get(id).cloned();
                Some((id.clone(), (s.pretix.clone()?, token)))
            })
            .collect();
        if sources.is_empty() {
            return None;
        }
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
            .build()
            .ok()?;
        Some(Pretix {
            sources,
            http,
            store,
            metrics,
            wake,
            client_secrets: loaded.secrets.pretix_oauth_secrets.clone(),
            sealer,
            oauth_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Reads the order and queues what its state asks for.
    pub async fn order(&self, row: &OutboxRow, order: &OrderRef) -> Result<String, Failure> {
        let Some((cfg, _)) = self.sources.get(&row.source_id) else {
            return Err(Failure::Permanent(format!(
                "`{}` is not a pretix source",
                row.source_id
            )));
        };
        let rooms = self
            .rooms_for(&row.source_id, cfg, &order.organizer, &order.event)
            .await
            .map_err(db_failure)?;
        let Some(rooms) = rooms.as_ref() else {
            warn!(source = %row.source_id, order = %order.key(), "an order of an event with no rooms configured; ignored");
            return Ok(format!(
                "skipped: no rooms for {}/{}",
                order.organizer, order.event
            ));
        };
        let current = self.fetch(&row.source_id, cfg, order).await?;
        let m = membership(&current, rooms, &cfg.question);
        let plan = |changes: &PretixChanges| {
            let mut out = Vec::new();
            let mut add = |lane: String, action: Action| {
                self.metrics
                    .actions_queued
                    .with_label_values(&[action.kind()])
                    .inc();
                if let Ok(action) = serde_json::to_string(&action) {
                    out.push(NewAction {
                        source_id: row.source_id.clone(),
                        ticket_key: lane,
                        action,
                    });
                }
            };
            for (room, user) in &changes.invites {
                let (room, user) = (room.clone(), user.clone());
                add(
                    format!("member:{room}:{user}"),
                    Action::Invite { room, user },
                );
            }
            for (room, user) in &changes.removals {
                let (room, user) = (room.clone(), user.clone());
                let reason = cfg.kick_reason.clone();
                add(
                    format!("member:{room}:{user}"),
                    Action::Kick { room, user, reason },
                );
            }
            if let Some(management) = &rooms.management_room {
                for (position, answer) in &changes.reports {
                    let what = if answer.is_empty() {
                        "gave no Matrix ID".to_string()
                    } else {
                        format!("\"{answer}\" is not a Matrix ID (like @name:example.org)")
                    };
                    let body = format!(
                        "Order {} (position {position}): {what}, so this attendee was not \
                         invited. Correct the answer in pretix and they will be.",
                        order.code
                    );
                    add(
                        format!("report:{}", order.key()),
                        Action::Send {
                            room: management.clone(),
                            content: json!({"msgtype": "m.notice", "body": body}),
                        },
                    );
                }
            }
            out
        };
        let changes = self
            .store
            .apply_pretix(row, &m.grants, m.revoke && cfg.kick, &m.invalid, &plan)
            .await
            .map_err(db_failure)?;
        for (position, answer) in &changes.reports {
            warn!(source = %row.source_id, order = %order.key(), position, answer = %answer, "an answer is not a Matrix ID");
        }
        if !(changes.invites.is_empty() && changes.removals.is_empty()) {
            info!(
                source = %row.source_id,
                order = %order.key(),
                status = %m.status,
                invites = changes.invites.len(),
                removals = changes.removals.len(),
                "pretix order applied"
            );
        }
        Ok(format!(
            "order {} ({}): {} invites, {} removals, {} reports",
            order.code,
            m.status,
            changes.invites.len(),
            changes.removals.len(),
            changes.reports.len()
        ))
    }

    /// The order as pretix has it now.
    async fn fetch(
        &self,
        source: &str,
        cfg: &PretixConfig,
        order: &OrderRef,
    ) -> Result<serde_json::Value, Failure> {
        self.get(source, &cfg.order_url(order), &order.key()).await
    }

    /// One GET of pretix's API with the source's authorization, its failures sorted into
    /// those worth another try (network, 5xx, 429, no authorization yet) and those that are
    /// not (401/403: the token; 404; other 4xx). An OAuth token pretix refuses is refreshed
    /// once.
    async fn get(&self, source: &str, url: &str, what: &str) -> Result<serde_json::Value, Failure> {
        let transient = |message: String, retry_after: Option<Duration>| Failure::Transient {
            message,
            retry_after,
        };
        let send = |auth: String| {
            self.http
                .get(url)
                .header("Authorization", auth)
                .header("Accept", "application/json")
                .send()
        };
        let (auth, oauth) = self.authorization(source, false).await?;
        let mut response = send(auth)
            .await
            .map_err(|e| transient(format!("pretix: {}", e.without_url()), None))?;
        if response.status().as_u16() == 401 && oauth {
            let (auth, _) = self.authorization(source, true).await?;
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
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let message = match status.as_u16() {
            401 | 403 => format!(
                "pretix refused the authorization ({status}) for {what}: check the token's \
                 permissions, or !authorize again"
            ),
            404 => format!("pretix has no {what}"),
            _ => format!("pretix answered {status} for {what}"),
        };
        if matches!(status.as_u16(), 429 | 502..=504) {
            Err(transient(message, retry_after))
        } else if status.is_server_error() {
            Err(Failure::Refused(message))
        } else {
            Err(Failure::Permanent(message))
        }
    }

    /// The `Authorization` header for a source: its OAuth token when an organiser
    /// authorized Switchboard (refreshed when it expires, or when `refresh`), otherwise its
    /// API token; and whether it is OAuth's. Neither yet: a failure worth another try, so
    /// that nothing is lost before `!authorize`.
    async fn authorization(&self, source: &str, refresh: bool) -> Result<(String, bool), Failure> {
        let _one_at_a_time = self.oauth_lock.lock().await;
        if let Some(stored) = self
            .store
            .setting(&token_key(source))
            .await
            .map_err(db_failure)?
        {
            let json = self
                .sealer
                .open(OAUTH_PURPOSE, &stored)
                .map_err(|e| Failure::Permanent(format!("the stored pretix authorization: {e}")))?;
            let mut token: OAuthToken = serde_json::from_str(&json)
                .map_err(|e| Failure::Permanent(format!("the stored pretix authorization: {e}")))?;
            if (refresh || now_ms() > token.expires_at - 60_000)
                && let Some(refresh_token) = token.refresh_token.clone()
            {
                token = self
                    .exchange(
                        source,
                        &[
                            ("grant_type", "refresh_token"),
                            ("refresh_token", &refresh_token),
                        ],
                    )
                    .await?;
                self.keep_token(source, &token).await?;
                info!(source, "pretix OAuth token refreshed");
            }
            return Ok((format!("Bearer {}", token.access_token), true));
        }
        match self.sources.get(source).and_then(|(_, t)| t.as_ref()) {
            Some(token) => Ok((format!("Token {}", token.expose()), false)),
            None => Err(Failure::Transient {
                message: "pretix is not authorized yet: an organiser sends !authorize".into(),
                retry_after: Some(Duration::from_secs(10)),
            }),
        }
    }

    /// Asks pretix's token endpoint for a token (`params`: the grant).
    async fn exchange(&self, source: &str, params: &[(&str, &str)]) -> Result<OAuthToken, Failure> {
        let (cfg, _) = self
            .sources
            .get(source)
            .ok_or_else(|| Failure::Permanent(format!("`{source}` is not a pretix source")))?;
        let (Some(oauth), Some(secret)) = (&cfg.oauth, self.client_secrets.get(source)) else {
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
            .http
            .post(cfg.token_url())
            .basic_auth(&oauth.client_id, Some(secret.expose()))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| Failure::Transient {
                message: format!("pretix: {}", e.without_url()),
                retry_after: None,
            })?;
        let status = response.status();
        let answer: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            let message = format!(
                "pretix refused ({status}): {}",
                answer["error"].as_str().unwrap_or("no reason given")
            );
            return Err(if matches!(status.as_u16(), 502..=504) {
                Failure::Transient {
                    message,
                    retry_after: None,
                }
            } else if status.is_server_error() {
                Failure::Refused(message)
            } else {
                Failure::Permanent(message)
            });
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

    /// Stores a source's OAuth token, sealed with the data secret.
    async fn keep_token(&self, source: &str, token: &OAuthToken) -> Result<(), Failure> {
        let json = serde_json::to_string(token).map_err(|e| Failure::Permanent(e.to_string()))?;
        self.store
            .set_setting(&token_key(source), &self.sealer.seal(OAUTH_PURPOSE, &json))
            .await
            .map_err(db_failure)
    }

    /// A new link for an organiser to authorize Switchboard in pretix (`None` without
    /// `oauth`); its state remembers who asked, where.
    async fn authorize_link(
        &self,
        source: &str,
        room: &str,
        sender: &str,
    ) -> Result<Option<String>, Failure> {
        let Some((cfg, _)) = self.sources.get(source) else {
            return Ok(None);
        };
        let state = hex::encode(rand::random::<[u8; 16]>());
        let Some(link) = cfg.authorize_url(source, &state) else {
            return Ok(None);
        };
        let asked = json!({"room": room, "sender": sender, "at": now_ms()});
        self.store
            .set_setting(&state_key(source, &state), &asked.to_string())
            .await
            .map_err(db_failure)?;
        Ok(Some(link))
    }

    /// Completes an authorization: the state must be one of this source's links, unused
    /// and at most an hour old; the code is exchanged for a token, which is kept. Returns
    /// the room and the organiser who asked.
    pub async fn complete(
        &self,
        source: &str,
        code: &str,
        state: &str,
    ) -> Result<(String, String), String> {
        let key = state_key(source, state);
        let asked = self
            .store
            .setting(&key)
            .await
            .map_err(|e| format!("database: {e}"))?
            .and_then(|v| serde_json::from_str::<serde_json::Value>(&v).ok())
            .ok_or("this link is unknown or was used already; send !authorize for a new one")?;
        self.store
            .delete_setting(&key)
            .await
            .map_err(|e| format!("database: {e}"))?;
        if now_ms() - asked["at"].as_i64().unwrap_or_default() > 3_600_000 {
            return Err("this link is more than an hour old; send !authorize for a new one".into());
        }
        let redirect = self
            .sources
            .get(source)
            .and_then(|(cfg, _)| cfg.oauth.as_ref())
            .map(|o| o.redirect_uri(source))
            .ok_or("no `oauth` is configured")?;
        let token = self
            .exchange(
                source,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("redirect_uri", &redirect),
                ],
            )
            .await
            .map_err(Failure::into_message)?;
        self.keep_token(source, &token)
            .await
            .map_err(Failure::into_message)?;
        let (room, sender) = (
            asked["room"].as_str().unwrap_or_default().to_string(),
            asked["sender"].as_str().unwrap_or_default().to_string(),
        );
        info!(source, by = %sender, "pretix authorized with OAuth");
        // Orders that waited for the authorization go on now.
        self.wake.notify_one();
        Ok((room, sender))
    }

    /// The callback page pretix sends the organiser's browser to: completes the
    /// authorization and tells the room. The page's text, and whether it worked.
    pub async fn callback(&self, source: &str, query: &HashMap<String, String>) -> (bool, String) {
        if let Some(error) = query.get("error") {
            return (
                false,
                format!("pretix did not authorize Switchboard: {error}."),
            );
        }
        let (Some(code), Some(state)) = (query.get("code"), query.get("state")) else {
            return (false, "This address has no authorization code.".into());
        };
        match self.complete(source, code, state).await {
            Ok((room, sender)) => {
                let notice = format!(
                    "pretix is authorized: Switchboard reads the orders with {sender}'s permission."
                );
                let mut told = TicketEvent::new(format!("command:{room}"), EventKind::Updated);
                told.payload = json!({"room": room, "notice": notice});
                if let Ok(events) = serde_json::to_string(&[told])
                    && self
                        .store
                        .accept(source, &format!("oauth/{state}"), &events)
                        .await
                        .is_ok()
                {
                    self.wake.notify_one();
                }
                (
                    true,
                    "Switchboard can now read the orders. You can close this page.".into(),
                )
            }
            Err(reason) => (false, format!("Not authorized: {reason}")),
        }
    }

    /// Asks pretix, every `poll_minutes`, for each configured event's orders changed since
    /// the last look, and puts each into the inbox as its webhook would (deduplicated by
    /// order and change time), so an order whose webhooks pretix gave up on is not missed.
    /// The first look at an event only notes where pretix stands: orders from before
    /// Switchboard watched the event are not swept up.
    pub async fn poll(self: Arc<Self>) {
        let mut tasks = Vec::new();
        for (source, (cfg, _)) in &self.sources {
            if cfg.poll_minutes <= 0.0 {
                continue;
            }
            let every =
                Duration::from_secs_f64(cfg.poll_minutes * 60.0).max(Duration::from_secs(1));
            let (me, source) = (self.clone(), source.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    me.poll_source(&source).await;
                    tokio::time::sleep(every).await;
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    async fn poll_source(&self, source: &str) {
        let Some((cfg, _)) = self.sources.get(source) else {
            return;
        };
        let events = match self.events(source, cfg).await {
            Ok(events) => events,
            Err(error) => {
                warn!(source, %error, "cannot read the events to poll; trying again later");
                return;
            }
        };
        for rooms in &events {
            match self.poll_event(source, cfg, rooms).await {
                Ok(0) => {}
                Ok(queued) => {
                    info!(source, organizer = %rooms.organizer, event = %rooms.event, orders = queued, "changed orders found by polling pretix");
                    self.wake.notify_one();
                }
                Err(error) => {
                    warn!(source, organizer = %rooms.organizer, event = %rooms.event, %error, "cannot poll pretix; trying again later");
                }
            }
        }
    }

    /// One look at one event's changed orders; how many were new to the inbox.
    async fn poll_event(
        &self,
        source: &str,
        cfg: &PretixConfig,
        rooms: &EventRooms,
    ) -> Result<usize, String> {
        let what = format!("event {}/{}", rooms.organizer, rooms.event);
        let cursor = format!("pretix.{source}.{}/{}.since", rooms.organizer, rooms.event);
        let db = |e: crate::store::StoreError| format!("database: {e}");
        let Some(since) = self.store.cursor(&cursor).await.map_err(db)? else {
            // The newest change pretix has now (by its clock), or none yet.
            let url = cfg.orders_url(rooms, "").replace(
                "ordering=last_modified",
                "ordering=-last_modified&page_size=1",
            );
            let page = self
                .get(source, &url, &what)
                .await
                .map_err(Failure::into_message)?;
            let newest = page["results"][0]["last_modified"].as_str().unwrap_or("");
            self.store.set_cursor(&cursor, newest).await.map_err(db)?;
            info!(source, organizer = %rooms.organizer, event = %rooms.event, "watching the event's orders for changes from now on");
            return Ok(0);
        };
        let listed = self
            .queue_orders(source, rooms, &cfg.orders_url(rooms, &since), "poll")
            .await
            .map_err(Failure::into_message)?;
        if let Some(newest) = listed.newest.filter(|n| *n != since) {
            self.store.set_cursor(&cursor, &newest).await.map_err(db)?;
        }
        Ok(listed.new)
    }

    /// Every order of a list (`first`: its first page), page after page, into the inbox as
    /// a trigger to read it (`action` says why), deduplicated by order and change time.
    async fn queue_orders(
        &self,
        source: &str,
        rooms: &EventRooms,
        first: &str,
        action: &str,
    ) -> Result<Listed, Failure> {
        let what = format!("event {}/{}", rooms.organizer, rooms.event);
        let mut listed = Listed::default();
        let mut next = Some(first.to_string());
        while let Some(url) = next.take() {
            let page = self.get(source, &url, &what).await?;
            for order in page["results"].as_array().into_iter().flatten() {
                let (Some(code), Some(modified)) =
                    (order["code"].as_str(), order["last_modified"].as_str())
                else {
                    continue;
                };
                let order = OrderRef {
                    organizer: rooms.organizer.clone(),
                    event: rooms.event.clone(),
                    code: code.to_string(),
                };
                let mut trigger = TicketEvent::new(order.key(), EventKind::Updated);
                trigger.status = Some(action.into());
                trigger.payload = json!({"organizer": order.organizer, "event": order.event,
                                         "code": order.code, "action": action});
                let events = serde_json::to_string(&[trigger])
                    .map_err(|e| Failure::Permanent(e.to_string()))?;
                let accepted = self
                    .store
                    .accept(
                        source,
                        &format!("{}/changed/{modified}", order.key()),
                        &events,
                    )
                    .await
                    .map_err(db_failure)?;
                listed.all += 1;
                listed.new += usize::from(!accepted.duplicate);
                // Oldest first: the last one is the newest change.
                listed.newest = Some(modified.to_string());
            }
            next = next_page(&page, first);
        }
        Ok(listed)
    }

    /// An event's rooms: those of the config file and those mapped from the chat.
    async fn rooms_for(
        &self,
        source: &str,
        cfg: &PretixConfig,
        organizer: &str,
        event: &str,
    ) -> crate::store::Result<Option<EventRooms>> {
        Ok(self
            .events(source, cfg)
            .await?
            .into_iter()
            .find(|e| e.organizer == organizer && e.event == event))
    }

    /// Every event with rooms: the config file's, with the rooms mapped from the chat
    /// added (one query).
    async fn events(
        &self,
        source: &str,
        cfg: &PretixConfig,
    ) -> crate::store::Result<Vec<EventRooms>> {
        let mut events = cfg.events.clone();
        for (organizer, event, room) in self.store.pretix_rooms(source).await? {
            let known = events
                .iter_mut()
                .find(|e| e.organizer == organizer && e.event == event);
            match known {
                Some(e) if e.rooms.contains(&room) => {}
                Some(e) => e.rooms.push(room),
                None => {
                    let mut e = bare_event(&organizer, &event);
                    e.rooms.push(room);
                    events.push(e);
                }
            }
        }
        Ok(events)
    }

    /// The source whose commands the bot takes, and who may give them.
    pub fn organisers(&self) -> Option<(String, Vec<String>)> {
        self.sources
            .iter()
            .find(|(_, (cfg, _))| !cfg.organisers.is_empty())
            .map(|(id, (cfg, _))| (id.clone(), cfg.organisers.clone()))
    }

    /// Runs an organiser's command; the answer to post in the room.
    pub async fn command(
        &self,
        row: &OutboxRow,
        room: &str,
        sender: &str,
        body: &str,
    ) -> Result<String, Failure> {
        let Some((cfg, _)) = self.sources.get(&row.source_id) else {
            return Err(Failure::Permanent(format!(
                "`{}` is not a pretix source",
                row.source_id
            )));
        };
        if !cfg.organisers.iter().any(|o| o == sender) {
            return Ok("Only the organisers named in the configuration may do that.".into());
        }
        let Some(command) = switchboard_pretix::command(body) else {
            return Ok(HELP.into());
        };
        let event_api = |o: &str, e: &str| {
            format!(
                "{}/api/v1/organizers/{o}/events/{e}/",
                cfg.url.trim_end_matches('/')
            )
        };
        Ok(match command {
            Command::Help => HELP.into(),
            Command::Authorize(None) => {
                match self.authorize_link(&row.source_id, room, sender).await? {
                    Some(link) => format!(
                        "To let Switchboard read the orders with your pretix account, open:\n{link}\n\
                     If the page pretix then sends you to cannot be opened, copy its address \
                     and send: !authorize <address>"
                    ),
                    None => "pretix OAuth is not configured (`oauth` in the config file); \
                         Switchboard reads pretix with the API token."
                        .into(),
                }
            }
            Command::Authorize(Some(address)) => {
                let Some((code, state)) = switchboard_pretix::code_of(&address) else {
                    return Ok("That address has no authorization code: send !authorize \
                               for a new link."
                        .into());
                };
                match self.complete(&row.source_id, &code, &state).await {
                    Ok(_) => format!(
                        "pretix is authorized: Switchboard reads the orders with {sender}'s \
                         permission."
                    ),
                    Err(reason) => format!("Not authorized: {reason}"),
                }
            }
            Command::Usage(usage) => format!("Usage: {usage}"),
            Command::SetRoom(o, e) => {
                let what = format!("event {o}/{e}");
                let event = match self.get(&row.source_id, &event_api(&o, &e), &what).await {
                    Ok(event) => event,
                    Err(Failure::Permanent(message)) => return Ok(format!("Not set: {message}.")),
                    Err(transient) => return Err(transient),
                };
                self.store
                    .set_pretix_room(&row.source_id, &o, &e, room, sender)
                    .await
                    .map_err(db_failure)?;
                info!(source = %row.source_id, organizer = %o, event = %e, room, by = sender, "room mapped to a pretix event");
                format!(
                    "This room now gets the paid attendees of {} ({o}/{e}) who give their \
                     Matrix ID. For orders paid before now: !batchinvite {o}/{e}",
                    event_name(&event).unwrap_or(&e)
                )
            }
            Command::UnsetRoom => {
                let n = self
                    .store
                    .unset_pretix_room(&row.source_id, room)
                    .await
                    .map_err(db_failure)?;
                match n {
                    0 => "This room was not mapped to an event from the chat.".into(),
                    _ => "This room gets no more attendees (those invited stay).".into(),
                }
            }
            Command::Status => {
                let mapped = self
                    .store
                    .pretix_rooms(&row.source_id)
                    .await
                    .map_err(db_failure)?;
                let here: Vec<(String, String, &str)> = cfg
                    .events
                    .iter()
                    .filter(|e| {
                        e.rooms
                            .iter()
                            .chain(e.items.values().flatten())
                            .any(|r| r == room)
                    })
                    .map(|e| (e.organizer.clone(), e.event.clone(), "the config file"))
                    .chain(
                        mapped
                            .into_iter()
                            .filter(|(_, _, r)| r == room)
                            .map(|(o, e, _)| (o, e, "!setroom")),
                    )
                    .collect();
                let mut lines = Vec::new();
                for (o, e, how) in here {
                    let what = format!("event {o}/{e}");
                    let state = match self.get(&row.source_id, &event_api(&o, &e), &what).await {
                        Ok(_) => "pretix answers".to_string(),
                        Err(failure) => failure.into_message(),
                    };
                    lines.push(format!("{o}/{e} (from {how}): {state}"));
                }
                if lines.is_empty() {
                    "This room gets the attendees of no event; !setroom <event URL> maps it.".into()
                } else {
                    format!(
                        "This room gets the paid attendees of:\n{}",
                        lines.join("\n")
                    )
                }
            }
            Command::BatchInvite(o, e) => {
                let rooms = self
                    .rooms_for(&row.source_id, cfg, &o, &e)
                    .await
                    .map_err(db_failure)?;
                if rooms.is_none() {
                    return Ok(format!(
                        "No room gets the attendees of {o}/{e}: map one first with !setroom."
                    ));
                }
                let queued = self.batch(&row.source_id, cfg, &o, &e).await?;
                self.wake.notify_one();
                format!(
                    "{queued} paid orders of {o}/{e} are read again: their attendees who are \
                     not in the rooms yet are being invited."
                )
            }
        })
    }

    /// Every paid order of an event read again; how many.
    async fn batch(
        &self,
        source: &str,
        cfg: &PretixConfig,
        organizer: &str,
        event: &str,
    ) -> Result<usize, Failure> {
        let rooms = bare_event(organizer, event);
        let first = format!("{}&status=p", cfg.orders_url(&rooms, ""));
        Ok(self
            .queue_orders(source, &rooms, &first, "batchinvite")
            .await?
            .all)
    }
}

/// The next page of a list: the query of pretix's `next` link, on the configured URL
/// (pretix may know itself by another name; the token goes nowhere else).
fn next_page(page: &serde_json::Value, first: &str) -> Option<String> {
    let next = url::Url::parse(page["next"].as_str()?).ok()?;
    let base = first.split('?').next().unwrap_or_default();
    Some(format!("{base}?{}", next.query()?))
}

/// An event's name (the first of its languages).
fn event_name(event: &serde_json::Value) -> Option<&str> {
    event["name"].as_object()?.values().find_map(|v| v.as_str())
}

/// An event with no rooms of the config file.
fn bare_event(organizer: &str, event: &str) -> EventRooms {
    EventRooms {
        organizer: organizer.into(),
        event: event.into(),
        rooms: Vec::new(),
        items: Default::default(),
        management_room: None,
    }
}

fn db_failure(e: crate::store::StoreError) -> Failure {
    crate::matrix::db_failure(e)
}

/// An OAuth token from pretix, as kept (sealed) in `settings`.
#[derive(serde::Serialize, serde::Deserialize)]
struct OAuthToken {
    access_token: String,
    refresh_token: Option<String>,
    /// When it expires (milliseconds since the epoch).
    expires_at: i64,
}

/// What OAuth tokens are sealed for.
const OAUTH_PURPOSE: &str = "pretix.oauth";

fn token_key(source: &str) -> String {
    format!("pretix.{source}.oauth")
}

fn state_key(source: &str, state: &str) -> String {
    format!("pretix.{source}.oauth_state.{state}")
}

/// What `queue_orders` found.
#[derive(Default)]
struct Listed {
    /// Orders listed.
    all: usize,
    /// Of those, new to the inbox.
    new: usize,
    /// The last one's change time.
    newest: Option<String>,
}
