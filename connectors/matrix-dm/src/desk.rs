//! The helpdesk's planning: a message heard in a customer's chat or the backoffice room
//! becomes a request and its actions (thread roots, relays both ways), or a command's.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use switchboard_connector::{
    Action, DbError, EventKind, Feed, FeedFile, Host, Side, TicketEvent, now_ms,
};
use tracing::{info, warn};

use crate::access::server_of;
use crate::actions::{Apology, HelpdeskAction, Step};
use crate::command::{self, Command, CommandError, ConfigCommand};
use crate::metrics::DeskMetrics;
use crate::relay::{self, Profile, Related};
use crate::requests::{Request, Requests};
use crate::settings::{self, request_title};
use crate::{MatrixDmConfig, Settings};

type Result<T, E = DbError> = std::result::Result<T, E>;
type Store = Requests;

/// What a request's `dm_room` holds until the direct chat that `start` creates exists.
pub const PENDING_DM: &str = "pending:";

/// One helpdesk: its source ID, its config and the options set from the chat.
pub struct Helpdesk {
    pub source_id: String,
    pub config: MatrixDmConfig,
    /// Loaded at start (`load_settings`), changed by `config`.
    settings: RwLock<Settings>,
    /// The bot's homeserver: customers from elsewhere get the greeting with their
    /// homeserver's count. From the config's user ID, or once logged in (`know_bot`).
    own_server: OnceLock<String>,
    /// The bot's user ID as logged in.
    bot: OnceLock<String>,
    pub(crate) metrics: DeskMetrics,
    pub(crate) store: Requests,
}

/// Who wrote a message the sync heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// In a direct chat with the bot.
    Customer,
    /// In the backoffice room.
    Operator,
    /// Nobody: the request has been idle for too long (`request` and `idle_since` set).
    Idle,
    /// Somebody wrote in a room with more than one other member that is no request's chat:
    /// the bot says why it leaves, and leaves.
    Group,
}

/// A message as the sync heard it, stored in the inbox as the event's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heard {
    pub role: Role,
    pub room: String,
    pub sender: String,
    pub event_id: String,
    /// `m.room.message`, `m.reaction` or `m.room.redaction`.
    #[serde(default = "message_type")]
    pub event_type: String,
    /// When it was sent (the homeserver's `origin_server_ts`, Unix ms).
    #[serde(default)]
    pub ts: i64,
    pub content: Map<String, Value>,
    /// The thread the message is in (operators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub displayname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
    /// The request an idle close is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<i64>,
    /// The request's last activity when it was found idle: a message since then keeps it open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<i64>,
}

impl Heard {
    /// Nobody's message: `role` in `room`, keyed `key`.
    pub fn bare(role: Role, room: &str, key: &str) -> Heard {
        Heard {
            role,
            room: room.to_string(),
            sender: String::new(),
            event_id: key.to_string(),
            event_type: message_type(),
            ts: 0,
            content: Map::new(),
            thread: None,
            displayname: None,
            avatar_url: None,
            request: None,
            idle_since: None,
        }
    }
}

impl Helpdesk {
    pub fn new(
        source_id: &str,
        config: MatrixDmConfig,
        bot_user: &str,
        host: Arc<dyn Host>,
    ) -> Helpdesk {
        Helpdesk {
            metrics: DeskMetrics::new(host.registry()),
            store: Requests::new(host),
            source_id: source_id.to_string(),
            config,
            settings: RwLock::new(Settings::default()),
            own_server: server_of(bot_user)
                .map(|s| OnceLock::from(s.to_string()))
                .unwrap_or_default(),
            bot: OnceLock::new(),
        }
    }

    /// The bot's user ID as logged in (the config may name only its localpart).
    pub fn know_bot(&self, user_id: &str) {
        if let Some(server) = server_of(user_id) {
            let _ = self.own_server.set(server.to_string());
        }
        let _ = self.bot.set(user_id.to_string());
    }

    /// The bot's user ID, once logged in.
    pub fn bot(&self) -> Option<&str> {
        self.bot.get().map(String::as_str)
    }

    /// Where the options set from the chat are stored (one JSON object per helpdesk).
    fn settings_key(&self) -> String {
        format!("helpdesk.{}.settings", self.source_id)
    }

    /// Loads the options set from the chat earlier.
    pub async fn load_settings(&self, store: &Store) -> Result<()> {
        let Some(stored) = store.setting(&self.settings_key()).await? else {
            return Ok(());
        };
        match serde_json::from_str::<BTreeMap<String, String>>(&stored) {
            Ok(pairs) => {
                let loaded =
                    Settings::from_stored(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                *self.settings.write().unwrap_or_else(|e| e.into_inner()) = loaded;
            }
            Err(error) => {
                warn!(source = %self.source_id, %error, "stored helpdesk options do not parse; using the defaults");
            }
        }
        Ok(())
    }

    /// The options a Honoroit of the same account kept, taken over on the first start unless
    /// options were set here already. Honoroit's keys are this helpdesk's; those it has and
    /// this one does not (its access lists and ignored rooms belong in the config file) are
    /// named in a warning.
    pub async fn adopt_options(
        &self,
        store: &Store,
        kept: &BTreeMap<String, String>,
    ) -> Result<()> {
        if store.setting(&self.settings_key()).await?.is_some() {
            return Ok(());
        }
        let mut adopted = self.settings();
        let mut left = Vec::new();
        for (key, value) in kept {
            // Unset options are empty strings; the migration marker is Honoroit's own.
            if value.trim().is_empty() || key == "mautrix015migration" {
                continue;
            }
            if let Err(error) = adopted.set(key, value) {
                left.push(format!("{key} ({error})"));
            }
        }
        if !left.is_empty() {
            warn!(source = %self.source_id, options = %left.join(", "), "Honoroit options not taken over; access lists and ignored rooms go in the config file");
        }
        let stored: BTreeMap<&str, &str> = adopted.stored().collect();
        if stored.is_empty() {
            return Ok(());
        }
        store
            .set_setting(&self.settings_key(), &serde_json::to_string(&stored)?)
            .await?;
        info!(source = %self.source_id, options = stored.len(), "took over Honoroit's options");
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = adopted;
        Ok(())
    }

    /// The options in force.
    fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// One option's value.
    fn setting(&self, key: &str) -> String {
        let settings = self.settings.read().unwrap_or_else(|e| e.into_inner());
        settings.get(key).unwrap_or_default().to_string()
    }

    fn flag(&self, key: &str) -> bool {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .flag(key)
    }

    /// How long an undecryptable message waits for its room key.
    pub fn key_wait(&self) -> Duration {
        Duration::from_secs_f64(self.config.key_wait_minutes * 60.0)
    }

    pub fn backoffice(&self) -> &str {
        &self.config.backoffice_room
    }

    /// Whether the bot accepts an invite from `inviter` into `room`.
    pub fn accepts_invite(&self, room: &str, inviter: Option<&str>) -> bool {
        room == self.backoffice()
            || (!self.ignores(room) && inviter.is_some_and(|u| self.config.access.allows(u)))
    }

    pub fn ignores(&self, room: &str) -> bool {
        self.config.ignored_rooms.iter().any(|r| r == room)
    }

    /// The text posted before leaving a room with more than one other member.
    pub fn group_notice(&self) -> Value {
        self.notice("text.group")
    }

    /// The text option `key` as the bot's own message.
    fn notice(&self, key: &str) -> Value {
        Value::Object(self.message(&self.setting(key)))
    }

    /// A message of the bot's own, of the configured message type.
    fn message(&self, body: &str) -> Map<String, Value> {
        let mut content = Map::new();
        content.insert("msgtype".into(), json!(self.setting("msgtype")));
        content.insert("body".into(), json!(body));
        content
    }

    /// A request's thread root: its title behind the open or done prefix.
    fn root(&self, title: &str, done: bool) -> Map<String, Value> {
        let key = if done {
            "text.prefix.done"
        } else {
            "text.prefix.open"
        };
        relay::thread_root(&self.setting(key), title, &self.setting("msgtype"))
    }

    /// The inbox delivery for a message: its dedupe key (the event ID) and its event.
    pub fn delivery(&self, heard: &Heard) -> Option<(String, TicketEvent)> {
        let ticket = match heard.role {
            Role::Customer | Role::Idle | Role::Group => heard.room.clone(),
            // Commands are also written outside threads.
            Role::Operator => heard
                .thread
                .clone()
                .unwrap_or_else(|| heard.event_id.clone()),
        };
        let mut event = TicketEvent::new(ticket, EventKind::Updated);
        event.body = heard
            .content
            .get("body")
            .and_then(Value::as_str)
            .map(String::from);
        event.payload = serde_json::to_value(heard).ok()?;
        Some((heard.event_id.clone(), event))
    }

    /// The actions for one delivered message, each with the ticket (lane) it belongs to:
    /// all of a request's actions share one lane, so they run in order.
    pub async fn plan_event(
        &self,
        store: &Store,
        event: &TicketEvent,
    ) -> Result<Vec<(String, Step)>> {
        if let Some(feed) = Feed::of(event) {
            return self.follower_said(store, event, feed).await;
        }
        let heard: Heard = match serde_json::from_value(event.payload.clone()) {
            Ok(h) => h,
            Err(error) => {
                warn!(source = %self.source_id, %error, "stored helpdesk message does not parse; skipped");
                return Ok(Vec::new());
            }
        };
        match heard.role {
            Role::Customer => self.customer_wrote(store, heard).await,
            Role::Operator => self.operator_wrote(store, heard).await,
            Role::Idle => self.idle(store, heard).await,
            Role::Group => {
                let lane = format!("group:{}", heard.room);
                let notice = Action::Send {
                    room: heard.room.clone(),
                    content: self.group_notice(),
                };
                let leave = Action::Leave { room: heard.room };
                Ok(vec![(lane.clone(), notice.into()), (lane, leave.into())])
            }
        }
    }

    /// The inbox delivery that closes an idle request (its key names the request and its
    /// last activity, so a request that becomes idle again later gets a new one).
    pub fn idle_delivery(&self, request: &Request) -> Option<(String, TicketEvent)> {
        let key = format!("idle:{}:{}", request.id, request.last_activity_at);
        let mut idle = Heard::bare(Role::Idle, &request.dm_room, &key);
        idle.request = Some(request.id);
        idle.idle_since = Some(request.last_activity_at);
        self.delivery(&idle)
    }

    async fn idle(&self, store: &Store, heard: Heard) -> Result<Vec<(String, Step)>> {
        let Some(id) = heard.request else {
            return Ok(Vec::new());
        };
        let Some(request) = store.request_by_id(id).await? else {
            return Ok(Vec::new());
        };
        let redone = request.closed_by.as_deref() == Some(heard.event_id.as_str());
        // Closed meanwhile, or a message came in since it was found idle.
        if !redone && (request.closed || Some(request.last_activity_at) != heard.idle_since) {
            return Ok(Vec::new());
        }
        let hours = self.config.idle_close_hours;
        let note = format!("Closed: no message for {hours} hour(s).");
        self.close(
            store,
            request,
            &heard.event_id,
            "text.done.auto",
            Some(&note),
        )
        .await
    }

    /// Closes a request: the closing text to the customer (unless silent), `note` in the
    /// thread, the root retitled done, the bot out of the direct chat. `by` is what closes
    /// it; the same `by` again (its delivery processed again after a crash) queues the same
    /// actions again, with the same transaction IDs.
    async fn close(
        &self,
        store: &Store,
        request: Request,
        by: &str,
        text: &str,
        note: Option<&str>,
    ) -> Result<Vec<(String, Step)>> {
        if store.close_request(request.id, by).await? {
            let how = if by.starts_with("idle:") {
                "idle"
            } else {
                "command"
            };
            self.metrics
                .requests_closed
                .with_label_values(&[&self.source_id, how])
                .inc();
        }
        let lane = lane(request.id);
        let mut out = Vec::new();
        // A started request whose chat was never created has no customer side.
        let chat = !request.dm_room.starts_with(PENDING_DM);
        if chat && !self.flag("silent") {
            out.push((
                lane.clone(),
                Action::Send {
                    room: request.dm_room.clone(),
                    content: self.notice(text),
                }
                .into(),
            ));
        }
        if let (Some(note), Some(root)) = (note, &request.thread_root) {
            out.push((
                lane.clone(),
                Action::Send {
                    room: self.backoffice().to_string(),
                    content: Value::Object(relay::in_thread(self.message(note), root)),
                }
                .into(),
            ));
        }
        if let Some(edit) = self.retitle(&request, &request.title, true) {
            out.push((lane.clone(), edit.into()));
        }
        let told = (chat && !self.flag("silent"))
            .then(|| self.notice(text)["body"].as_str().map(String::from))
            .flatten();
        let closed = Feed::Closed {
            text: told,
            by: Some(by.to_string()),
        };
        out.extend(self.publish(&request, &format!("closed:{by}"), closed));
        if chat {
            out.push((
                lane,
                Action::Leave {
                    room: request.dm_room,
                }
                .into(),
            ));
        }
        Ok(out)
    }

    /// The step that tells the helpdesk's followers about `request`, if it has any.
    fn publish(&self, request: &Request, key: &str, feed: Feed) -> Option<(String, Step)> {
        if self.store.host().followers(&self.source_id).is_empty() {
            return None;
        }
        let step = HelpdeskAction::Publish {
            request: request.id,
            key: key.to_string(),
            feed,
        };
        Some((lane(request.id), step.into()))
    }

    /// A message for the followers: its text without a reply's quote, and its file.
    fn message_feed(&self, heard: &Heard, from: Side) -> Option<Feed> {
        let msgtype = heard.content.get("msgtype").and_then(Value::as_str)?;
        // Notices are the bots' and the helpdesk's own words.
        if msgtype == "m.notice" {
            return None;
        }
        let body = heard.content.get("body").and_then(Value::as_str)?;
        let text = relay::strip_plain_fallback(body).to_string();
        let media = matches!(msgtype, "m.file" | "m.image" | "m.video" | "m.audio");
        let file = if media {
            feed_file(&heard.content, &text)
        } else {
            None
        };
        Some(Feed::Message {
            from,
            author: heard.sender.clone(),
            name: heard.displayname.clone(),
            text,
            file,
        })
    }

    /// What a follower tells about one of the helpdesk's requests: a note for the thread
    /// (and the customer, when public), a notice, or the request closed there.
    async fn follower_said(
        &self,
        store: &Store,
        event: &TicketEvent,
        feed: Feed,
    ) -> Result<Vec<(String, Step)>> {
        let Some(request) = match event.ticket.parse::<i64>() {
            Ok(id) => store.request_by_id(id).await?,
            Err(_) => None,
        }
        .filter(|r| r.source_id == self.source_id) else {
            return Ok(Vec::new());
        };
        let lane = lane(request.id);
        let thread = |body: String| {
            let post = HelpdeskAction::ThreadPost {
                request: request.id,
                room: self.backoffice().to_string(),
                content: json!({"msgtype": "m.notice", "body": body}),
            };
            (lane.clone(), Step::from(post))
        };
        match feed {
            Feed::Note {
                author,
                place,
                text,
                public,
                files,
            } => {
                let to_customer =
                    public && !request.closed && !request.dm_room.starts_with(PENDING_DM);
                let heading = if public {
                    format!("{author} in {place}:")
                } else {
                    format!("{author} in {place} (private note):")
                };
                let body = if text.trim().is_empty() {
                    heading.trim_end_matches(':').to_string()
                } else {
                    format!("{heading}\n\n{text}")
                };
                let mut out = vec![thread(body)];
                let file_post = |room: &str, in_thread: bool, file: &FeedFile| {
                    let post = HelpdeskAction::FilePost {
                        request: request.id,
                        room: room.to_string(),
                        in_thread,
                        file: file.clone(),
                    };
                    (lane.clone(), Step::from(post))
                };
                out.extend(files.iter().map(|f| file_post(self.backoffice(), true, f)));
                if to_customer {
                    if !text.trim().is_empty() {
                        let send = Action::Send {
                            room: request.dm_room.clone(),
                            content: Value::Object(self.message(&text)),
                        };
                        out.push((lane.clone(), send.into()));
                    }
                    out.extend(files.iter().map(|f| file_post(&request.dm_room, false, f)));
                }
                Ok(out)
            }
            Feed::Notice { text } => Ok(vec![thread(text)]),
            Feed::Close { author, place, key } => {
                if request.closed && request.closed_by.as_deref() != Some(key.as_str()) {
                    return Ok(Vec::new());
                }
                let note = format!("Closed in {place} by {author}.");
                self.close(store, request, &key, "text.done", Some(&note))
                    .await
            }
            // What the helpdesk publishes itself.
            Feed::Message { .. } | Feed::Closed { .. } => Ok(Vec::new()),
        }
    }

    async fn customer_wrote(&self, store: &Store, heard: Heard) -> Result<Vec<(String, Step)>> {
        if let Some(related) = Related::of(&heard.event_type, &heard.content) {
            let Some(request) = store.open_request_of(&self.source_id, &heard.room).await? else {
                return Ok(Vec::new());
            };
            let profile = profile(&heard);
            let backoffice = self.backoffice().to_string();
            return Ok(vec![relate(
                &request,
                backoffice,
                true,
                &heard,
                related,
                |c| relay::with_profile(c, &profile),
            )]);
        }
        if heard.event_type != "m.room.message" {
            return Ok(Vec::new());
        }
        let server = server_of(&heard.sender).unwrap_or_default();
        let name = match &heard.displayname {
            Some(n) => format!("{n} ({})", heard.sender),
            None => heard.sender.clone(),
        };
        let mut server_nth = 0;
        let (request, created) = store
            .open_request(&self.source_id, &heard.sender, server, &heard.room, |c| {
                server_nth = c.server;
                request_title(c.server, server, c.customer, &name)
            })
            .await?;
        if created {
            self.opened();
        } else {
            store.touch_request(request.id).await?;
        }
        let lane = lane(request.id);
        let backoffice = self.backoffice().to_string();
        let mut out: Vec<_> = self.thread_open(&request).into_iter().collect();
        if created && !self.flag("silent") {
            let own = self.own_server.get().map(String::as_str);
            let mut greeting = if Some(server) == own {
                self.notice("text.greetings")
            } else {
                self.notice("text.greetings.customer")
            };
            if let Some(Value::String(body)) = greeting.get_mut("body") {
                *body = body.replace("{nth}", &relay::ordinal(server_nth));
            }
            out.push((
                lane.clone(),
                Action::Send {
                    room: heard.room.clone(),
                    content: greeting,
                }
                .into(),
            ));
        }
        if let Some(feed) = self.message_feed(&heard, Side::Customer) {
            out.extend(self.publish(&request, &heard.event_id, feed));
        }
        let content = relay::with_profile(relay::relayed_content(&heard.content), &profile(&heard));
        out.push((
            lane,
            HelpdeskAction::Relay {
                request: request.id,
                room: backoffice,
                to_operators: true,
                event_type: heard.event_type,
                content: Value::Object(content),
                origin: heard.event_id,
                origin_ts: heard.ts,
                about: None,
                // The customer hears if their message cannot reach the operators.
                apology: Some(Apology {
                    room: heard.room,
                    content: self.notice("text.error"),
                }),
            }
            .into(),
        ));
        Ok(out)
    }

    async fn operator_wrote(&self, store: &Store, heard: Heard) -> Result<Vec<(String, Step)>> {
        if let Some(related) = Related::of(&heard.event_type, &heard.content) {
            // Only about what was relayed: the customer's messages here, operators' answers.
            let Some((_, id)) = store.counterpart(&self.source_id, related.target()).await? else {
                return Ok(Vec::new());
            };
            let Some(request) = store.request_by_id(id).await?.filter(|r| !r.closed) else {
                return Ok(Vec::new());
            };
            let dm = request.dm_room.clone();
            return Ok(vec![relate(&request, dm, false, &heard, related, |c| c)]);
        }
        if heard.event_type != "m.room.message" {
            return Ok(Vec::new());
        }
        let body = heard
            .content
            .get("body")
            .and_then(Value::as_str)
            .unwrap_or("");
        if let Some(parsed) = command::parse(&self.config.prefix, body) {
            return self.command(store, &heard, parsed).await;
        }
        let Some(root) = &heard.thread else {
            return Ok(Vec::new());
        };
        let Some(request) = store.request_by_thread(&self.source_id, root).await? else {
            return Ok(Vec::new());
        };
        if request.closed {
            return Ok(vec![self.reply(
                &heard,
                &lane(request.id),
                "This request is closed; nothing was sent. The customer's next message opens a new one.",
            )]);
        }
        store.touch_request(request.id).await?;
        let mut out: Vec<_> = self
            .message_feed(&heard, Side::Operator)
            .and_then(|feed| self.publish(&request, &heard.event_id, feed))
            .into_iter()
            .collect();
        out.push((
            lane(request.id),
            HelpdeskAction::Relay {
                request: request.id,
                room: request.dm_room,
                to_operators: false,
                event_type: heard.event_type,
                content: Value::Object(relay::relayed_content(&heard.content)),
                origin: heard.event_id,
                origin_ts: heard.ts,
                about: None,
                apology: None,
            }
            .into(),
        ));
        Ok(out)
    }

    /// Runs an operator's command; the answers go into the command's thread.
    async fn command(
        &self,
        store: &Store,
        heard: &Heard,
        parsed: std::result::Result<Command, CommandError>,
    ) -> Result<Vec<(String, Step)>> {
        let request = match &heard.thread {
            Some(root) => store.request_by_thread(&self.source_id, root).await?,
            None => None,
        };
        let lane = match &request {
            Some(r) => lane(r.id),
            None => format!("command:{}", heard.event_id),
        };
        let say = |text: &str| Ok(vec![self.reply(heard, &lane, text)]);
        let ops = &self.config.operators;
        let admin = self.config.admins.contains(&heard.sender);
        if !ops.is_empty() && !ops.contains(&heard.sender) && !admin {
            return say("Only operators can run commands.");
        }
        let command = match parsed {
            Ok(c) => c,
            Err(CommandError::Usage(usage)) => {
                return say(&format!("Usage: {} {usage}", self.config.prefix));
            }
            Err(CommandError::Unknown(_)) => return say(&self.help()),
        };
        if command.needs_thread() && request.is_none() {
            return say("Send this in the thread of a request.");
        }
        match command {
            Command::Help => say(&self.help()),
            Command::Note(_) => Ok(Vec::new()),
            Command::Done => {
                // Closed by this very command: its delivery is being processed again after
                // a crash, so its actions are queued again (same transaction IDs).
                let Some(request) = request.filter(|r| {
                    !r.closed || r.closed_by.as_deref() == Some(heard.event_id.as_str())
                }) else {
                    return say("This request is closed already.");
                };
                self.close(store, request, &heard.event_id, "text.done", None)
                    .await
            }
            Command::Rename(title) => {
                let Some(request) = request else {
                    return Ok(Vec::new());
                };
                store.rename_request(request.id, &title).await?;
                Ok(self
                    .retitle(&request, &title, request.closed)
                    .map(|edit| vec![(lane, edit.into())])
                    .unwrap_or_default())
            }
            Command::Invite => {
                let Some(request) = request else {
                    return Ok(Vec::new());
                };
                Ok(vec![(
                    lane,
                    Action::Invite {
                        room: request.dm_room,
                        user: heard.sender.clone(),
                    }
                    .into(),
                )])
            }
            Command::Count(user) => {
                let server = server_of(&user).unwrap_or_default();
                let counts = store.request_counts(&self.source_id, &user, server).await?;
                say(&format!(
                    "{user} has made {} request(s); {server}, {} in all.",
                    counts.customer, counts.server
                ))
            }
            Command::Start(user) => self.start(store, heard, user).await,
            Command::Config(_) if !admin => {
                say("Only admins can see or change the options (`admins` in the config file).")
            }
            Command::Config(ConfigCommand::Show) => say(&self.options_listing()),
            Command::Config(ConfigCommand::Get(key)) => match settings::option(&key) {
                Ok(opt) => say(&format!(
                    "{} = {}\n{}. Default: {}",
                    opt.key,
                    self.setting(opt.key),
                    opt.description,
                    opt.default
                )),
                Err(error) => say(&format!(
                    "{error}. `{} config` lists the options.",
                    self.config.prefix
                )),
            },
            Command::Config(ConfigCommand::Set(key, value)) => {
                let mut changed = self.settings();
                let value = match changed.set(&key, &value) {
                    Ok(v) => v.to_string(),
                    Err(error) => return say(&format!("Not changed: {error}.")),
                };
                let stored: BTreeMap<&str, &str> = changed.stored().collect();
                let json = serde_json::to_string(&stored)?;
                store.set_setting(&self.settings_key(), &json).await?;
                *self.settings.write().unwrap_or_else(|e| e.into_inner()) = changed;
                let key = settings::option(&key).map_or(key.as_str(), |o| o.key);
                info!(source = %self.source_id, option = key, by = %heard.sender, "helpdesk option changed");
                say(&format!("{key} = {value}"))
            }
        }
    }

    /// `start`: a request with `user`, who has not written: a new direct chat with them and
    /// a thread for it. The chat's room ID is recorded when it exists.
    async fn start(
        &self,
        store: &Store,
        heard: &Heard,
        user: String,
    ) -> Result<Vec<(String, Step)>> {
        let server = server_of(&user).unwrap_or_default();
        // Processed again after a crash, the same placeholder finds the same request.
        let pending = format!("{PENDING_DM}{}", heard.event_id);
        let (request, created) = store
            .open_request(&self.source_id, &user, server, &pending, |c| {
                request_title(c.server, server, c.customer, &user)
            })
            .await?;
        if created {
            self.opened();
        }
        let lane = lane(request.id);
        let backoffice = self.backoffice().to_string();
        let mut out = vec![(
            lane.clone(),
            HelpdeskAction::StartChat {
                request: request.id,
                user: user.clone(),
                encrypted: self.config.encrypt_started,
            }
            .into(),
        )];
        out.extend(self.thread_open(&request));
        out.push((
            lane,
            HelpdeskAction::ThreadPost {
                request: request.id,
                room: backoffice,
                content: self.notice("text.start"),
            }
            .into(),
        ));
        Ok(out)
    }

    fn opened(&self) {
        self.metrics
            .requests_opened
            .with_label_values(&[&self.source_id])
            .inc();
    }

    /// Every option and its value, for `config`.
    fn options_listing(&self) -> String {
        let settings = self.settings();
        let mut text = format!(
            "Options (`{0} config KEY` explains one, `{0} config KEY VALUE` changes it):",
            self.config.prefix
        );
        for opt in settings::OPTIONS {
            let value = settings.get(opt.key).unwrap_or_default();
            text.push_str(&format!("\n{} = {value}", opt.key));
        }
        text
    }

    /// Posting the request's thread root, until it is posted (the action skips itself if an
    /// earlier one posted it).
    fn thread_open(&self, request: &Request) -> Option<(String, Step)> {
        request.thread_root.is_none().then(|| {
            (
                lane(request.id),
                HelpdeskAction::ThreadOpen {
                    request: request.id,
                    room: self.backoffice().to_string(),
                    content: Value::Object(self.root(&request.title, false)),
                }
                .into(),
            )
        })
    }

    /// An edit of the request's thread root, to `title` and the open or done prefix.
    fn retitle(&self, request: &Request, title: &str, done: bool) -> Option<Action> {
        let root = request.thread_root.as_deref()?;
        Some(Action::Send {
            room: self.backoffice().to_string(),
            content: Value::Object(relay::replacement(root, self.root(title, done))),
        })
    }

    /// A notice in the thread `heard` was sent in (or a new thread on it).
    fn reply(&self, heard: &Heard, lane: &str, text: &str) -> (String, Step) {
        let thread = heard.thread.as_deref().unwrap_or(&heard.event_id);
        (
            lane.to_string(),
            Action::Send {
                room: self.backoffice().to_string(),
                content: Value::Object(relay::in_thread(self.message(text), thread)),
            }
            .into(),
        )
    }

    fn help(&self) -> String {
        let mut text = String::from("Commands (in a request's thread unless noted):");
        for (usage, what) in command::HELP {
            text.push_str(&format!("\n{} {usage}: {what}", self.config.prefix));
        }
        text
    }
}

fn message_type() -> String {
    "m.room.message".into()
}

/// Closes idle requests: looks for them now and then and puts a close for each into the
/// inbox, where it is processed like a message (once, in the request's order).
pub async fn close_idle(helpdesk: Arc<Helpdesk>) {
    let hours = helpdesk.config.idle_close_hours;
    if hours <= 0.0 {
        return;
    }
    let idle = Duration::from_secs_f64(hours * 3600.0);
    let every = (idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let before = now_ms().saturating_sub(idle.as_millis() as i64);
        let found = match helpdesk
            .store
            .idle_requests(&helpdesk.source_id, before, IDLE_BATCH)
            .await
        {
            Ok(found) => found,
            Err(error) => {
                warn!(%error, "cannot look for idle requests; trying again later");
                continue;
            }
        };
        let mut queued = 0;
        for request in &found {
            let Some((key, event)) = helpdesk.idle_delivery(request) else {
                continue;
            };
            let host = helpdesk.store.host();
            match host.deliver(&helpdesk.source_id, &key, &[event]).await {
                Ok(_) => queued += 1,
                Err(error) => warn!(request = request.id, %error, "cannot queue an idle close"),
            }
        }
        if queued > 0 {
            info!(requests = queued, "closing idle requests");
        }
    }
}

/// The file a media message points to, for the followers; `None` without one.
fn feed_file(content: &Map<String, Value>, body: &str) -> Option<FeedFile> {
    if !content.contains_key("url") && !content.contains_key("file") {
        return None;
    }
    let info = |k: &str| content.get("info").and_then(|i| i.get(k));
    Some(FeedFile {
        name: content
            .get("filename")
            .and_then(Value::as_str)
            .unwrap_or(body)
            .to_string(),
        content_type: info("mimetype")
            .and_then(Value::as_str)
            .unwrap_or("application/octet-stream")
            .to_string(),
        size: info("size").and_then(Value::as_u64).unwrap_or_default(),
        content: Value::Object(content.clone()),
        source: None,
    })
}

/// Idle requests closed per look; the rest wait for the next.
const IDLE_BATCH: i64 = 100;

/// The customer's name and avatar, for the copies of their messages.
fn profile(heard: &Heard) -> Profile {
    Profile {
        displayname: heard
            .displayname
            .clone()
            .unwrap_or_else(|| heard.sender.clone()),
        user_id: heard.sender.clone(),
        avatar_url: heard.avatar_url.clone(),
    }
}

/// Relays an edit, reaction or redaction of `request` into `room`, about the counterpart of
/// the event it is about (found when it runs, after the request's earlier relays).
fn relate(
    request: &Request,
    room: String,
    to_operators: bool,
    heard: &Heard,
    related: Related,
    dress: impl FnOnce(Map<String, Value>) -> Map<String, Value>,
) -> (String, Step) {
    let about = related.target().to_string();
    let (event_type, content) = related.relayed(dress);
    (
        lane(request.id),
        HelpdeskAction::Relay {
            request: request.id,
            room,
            to_operators,
            event_type: event_type.into(),
            content: Value::Object(content),
            origin: heard.event_id.clone(),
            origin_ts: heard.ts,
            about: Some(about),
            apology: None,
        }
        .into(),
    )
}

/// The outbox lane of a request: its actions run in order.
fn lane(request: i64) -> String {
    format!("request:{request}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hosts over fresh databases with the helpdesk's tables: SQLite and PostgreSQL.
    async fn test_hosts() -> Vec<Arc<switchboard_connector::testing::TestHost>> {
        use switchboard_connector::testing::TestHost;
        let sqlite = TestHost::new(Some(&crate::requests::SQLITE)).await;
        let pg = TestHost::postgres(Some(&crate::requests::POSTGRES)).await;
        vec![
            Arc::new(sqlite.expect("SQLite")),
            Arc::new(pg.expect("PostgreSQL is reachable")),
        ]
    }

    fn heard(role: Role, room: &str, event_id: &str, body: &str, thread: Option<&str>) -> Heard {
        let mut content = Map::new();
        content.insert("msgtype".into(), json!("m.text"));
        content.insert("body".into(), json!(body));
        Heard {
            role,
            room: room.into(),
            sender: "@someone:x.org".into(),
            event_id: event_id.into(),
            event_type: message_type(),
            ts: 0,
            content,
            thread: thread.map(String::from),
            displayname: None,
            avatar_url: None,
            request: None,
            idle_since: None,
        }
    }

    #[tokio::test]
    async fn a_done_processed_again_after_a_crash_queues_its_actions_again() {
        for host in test_hosts().await {
            let store = Requests::new(host.clone());
            let cfg: MatrixDmConfig =
                serde_json::from_value(json!({"backoffice_room": "!ops"})).expect("config");
            let desk = Helpdesk::new("help", cfg, "@bot:hs.org", host.clone());
            let plan = |h: Heard| {
                let (desk, store) = (&desk, &store);
                async move {
                    let (_, event) = desk.delivery(&h).expect("a delivery");
                    desk.plan_event(store, &event).await.expect("plan")
                }
            };
            plan(heard(Role::Customer, "!dm", "$hi", "hi", None)).await;
            let request = store
                .open_request_of("help", "!dm")
                .await
                .expect("read")
                .expect("opened");
            store
                .set_request_thread(request.id, "$root")
                .await
                .expect("thread");

            let done = heard(Role::Operator, "!ops", "$done", "!ho done", Some("$root"));
            let first = plan(done.clone()).await;
            assert!(
                first
                    .iter()
                    .any(|(_, a)| matches!(a, Step::Core(Action::Leave { room }) if room == "!dm")),
                "{first:?}"
            );
            assert_eq!(plan(done).await, first, "the same actions, again");

            let another = plan(heard(
                Role::Operator,
                "!ops",
                "$done2",
                "!ho done",
                Some("$root"),
            ))
            .await;
            let [(_, Step::Core(Action::Send { content, .. }))] = another.as_slice() else {
                panic!("one notice expected: {another:?}");
            };
            assert_eq!(content["body"], json!("This request is closed already."));
        }
    }

    fn body(actions: &[(String, Step)]) -> String {
        let [(_, Step::Core(Action::Send { content, .. }))] = actions else {
            panic!("one answer expected: {actions:?}");
        };
        content["body"].as_str().unwrap_or_default().to_string()
    }

    #[tokio::test]
    async fn options_are_for_admins_and_outlive_a_restart() {
        for host in test_hosts().await {
            let store = Requests::new(host.clone());
            let cfg = || -> MatrixDmConfig {
                serde_json::from_value(
                    json!({"backoffice_room": "!ops", "admins": ["@boss:x.org"]}),
                )
                .expect("config")
            };
            let desk = Helpdesk::new("help", cfg(), "@bot:hs.org", host.clone());
            let run = |sender: &str, body: &str| {
                let mut h = heard(Role::Operator, "!ops", &format!("${body}"), body, None);
                h.sender = sender.into();
                let (desk, store) = (&desk, &store);
                async move {
                    let (_, event) = desk.delivery(&h).expect("a delivery");
                    desk.plan_event(store, &event).await.expect("plan")
                }
            };
            let refused = run("@someone:x.org", "!ho config msgtype m.text").await;
            assert!(body(&refused).starts_with("Only admins"), "{refused:?}");
            assert_eq!(desk.setting("msgtype"), "m.notice");

            let set = run("@boss:x.org", "!ho config msgtype m.text").await;
            assert_eq!(body(&set), "msgtype = m.text");
            let [(_, Step::Core(Action::Send { content, .. }))] = set.as_slice() else {
                panic!("{set:?}");
            };
            assert_eq!(content["msgtype"], "m.text", "in force at once");

            let again = Helpdesk::new("help", cfg(), "@bot:hs.org", host.clone());
            assert_eq!(again.setting("msgtype"), "m.notice");
            again.load_settings(&store).await.expect("load");
            assert_eq!(again.setting("msgtype"), "m.text", "stored");
        }
    }

    #[tokio::test]
    async fn honoroit_options_are_taken_over_once() {
        for host in test_hosts().await {
            let store = Requests::new(host.clone());
            let cfg: MatrixDmConfig =
                serde_json::from_value(json!({"backoffice_room": "!ops"})).expect("config");
            let desk = Helpdesk::new("help", cfg, "@bot:hs.org", host.clone());
            let kept: BTreeMap<String, String> = [
                ("text.greetings", "Hello from the old bot"),
                ("msgtype", "m.text"),
                ("text.done", ""),
                ("allow.users", "@*:example.org"),
                ("mautrix015migration", "1700000000"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            desk.adopt_options(&store, &kept).await.expect("adopt");
            assert_eq!(desk.setting("text.greetings"), "Hello from the old bot");
            assert_eq!(desk.setting("msgtype"), "m.text");
            assert_eq!(
                desk.setting("text.done"),
                settings::option("text.done").expect("option").default,
                "an empty value is an unset one"
            );
            let stored = store
                .setting("helpdesk.help.settings")
                .await
                .expect("read")
                .expect("stored");
            assert!(!stored.contains("allow.users"), "{stored}");

            // Options set here win over what Honoroit kept.
            let changed: BTreeMap<String, String> =
                [("msgtype".to_string(), "m.notice".to_string())].into();
            desk.adopt_options(&store, &changed).await.expect("adopt");
            assert_eq!(desk.setting("msgtype"), "m.text");
        }
    }
}
