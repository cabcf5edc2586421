//! The Matrix DM helpdesk (`kind = "matrix_dm"`): messages the sync hears become inbox
//! deliveries, and deliveries become requests and actions (thread roots, relays).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use switchboard_connector::{Action, EventKind, TicketEvent};
use switchboard_matrix_dm::access::server_of;
use switchboard_matrix_dm::command::{self, Command, CommandError};
use switchboard_matrix_dm::relay::{self, Profile};
use switchboard_matrix_dm::settings::request_title;
use switchboard_matrix_dm::{MatrixDmConfig, Settings};
use tracing::warn;

use crate::store::{Request, Result, Store};

/// One helpdesk: its source ID, its config and the options set from the chat.
#[derive(Debug)]
pub struct Helpdesk {
    pub source_id: String,
    pub config: MatrixDmConfig,
    pub settings: Settings,
    /// The bot's homeserver: customers from elsewhere get the greeting with their
    /// homeserver's count.
    pub own_server: String,
}

/// Who wrote a message the sync heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// In a direct chat with the bot.
    Customer,
    /// In the backoffice room.
    Operator,
}

/// A message as the sync heard it, stored in the inbox as the event's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heard {
    pub role: Role,
    pub room: String,
    pub sender: String,
    pub event_id: String,
    pub content: Map<String, Value>,
    /// The thread the message is in (operators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub displayname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar_url: Option<String>,
}

impl Helpdesk {
    pub fn new(source_id: &str, config: MatrixDmConfig, bot_user: &str) -> Helpdesk {
        Helpdesk {
            source_id: source_id.to_string(),
            config,
            settings: Settings::default(),
            own_server: server_of(bot_user).unwrap_or_default().to_string(),
        }
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
        Value::Object(self.message(self.settings.get(key).unwrap_or_default()))
    }

    /// A message of the bot's own, of the configured message type.
    fn message(&self, body: &str) -> Map<String, Value> {
        let mut content = Map::new();
        content.insert("msgtype".into(), json!(self.msgtype()));
        content.insert("body".into(), json!(body));
        content
    }

    fn msgtype(&self) -> &str {
        self.settings.get("msgtype").unwrap_or("m.notice")
    }

    /// A request's thread root: its title behind the open or done prefix.
    fn root(&self, title: &str, done: bool) -> Map<String, Value> {
        let key = if done {
            "text.prefix.done"
        } else {
            "text.prefix.open"
        };
        let prefix = self.settings.get(key).unwrap_or_default();
        relay::thread_root(prefix, title, self.msgtype())
    }

    /// The inbox delivery for a message: its dedupe key (the event ID) and its event.
    pub fn delivery(&self, heard: &Heard) -> Option<(String, TicketEvent)> {
        let ticket = match heard.role {
            Role::Customer => heard.room.clone(),
            Role::Operator => heard.thread.clone()?,
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
    pub async fn plan(&self, store: &Store, event: &TicketEvent) -> Result<Vec<(String, Action)>> {
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
        }
    }

    async fn customer_wrote(&self, store: &Store, heard: Heard) -> Result<Vec<(String, Action)>> {
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
        if !created {
            store.touch_request(request.id).await?;
        }
        let lane = lane(request.id);
        let backoffice = self.backoffice().to_string();
        let mut out = Vec::new();
        // Until the root is posted: the action skips itself if an earlier one posted it.
        if request.thread_root.is_none() {
            out.push((
                lane.clone(),
                Action::ThreadOpen {
                    request: request.id,
                    room: backoffice.clone(),
                    content: Value::Object(self.root(&request.title, false)),
                },
            ));
        }
        if created && !self.settings.flag("silent") {
            let mut greeting = if server == self.own_server {
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
                },
            ));
        }
        let profile = Profile {
            displayname: heard
                .displayname
                .clone()
                .unwrap_or_else(|| heard.sender.clone()),
            user_id: heard.sender,
            avatar_url: heard.avatar_url,
        };
        let content = relay::with_profile(relay::relayed_content(&heard.content), &profile);
        out.push((
            lane,
            Action::ThreadPost {
                request: request.id,
                room: backoffice,
                content: Value::Object(content),
            },
        ));
        Ok(out)
    }

    async fn operator_wrote(&self, store: &Store, heard: Heard) -> Result<Vec<(String, Action)>> {
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
        Ok(vec![(
            lane(request.id),
            Action::Send {
                room: request.dm_room,
                content: Value::Object(relay::relayed_content(&heard.content)),
            },
        )])
    }

    /// Runs an operator's command; the answers go into the command's thread.
    async fn command(
        &self,
        store: &Store,
        heard: &Heard,
        parsed: std::result::Result<Command, CommandError>,
    ) -> Result<Vec<(String, Action)>> {
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
        if !ops.is_empty() && !ops.contains(&heard.sender) {
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
                store.close_request(request.id, &heard.event_id).await?;
                let mut out = Vec::new();
                if !self.settings.flag("silent") {
                    out.push((
                        lane.clone(),
                        Action::Send {
                            room: request.dm_room.clone(),
                            content: self.notice("text.done"),
                        },
                    ));
                }
                if let Some(edit) = self.retitle(&request, &request.title, true) {
                    out.push((lane.clone(), edit));
                }
                out.push((
                    lane,
                    Action::Leave {
                        room: request.dm_room,
                    },
                ));
                Ok(out)
            }
            Command::Rename(title) => {
                let Some(request) = request else {
                    return Ok(Vec::new());
                };
                store.rename_request(request.id, &title).await?;
                Ok(self
                    .retitle(&request, &title, request.closed)
                    .map(|edit| vec![(lane, edit)])
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
                    },
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
            Command::Start(_) | Command::Config(_) => say(&format!(
                "`{} {}` is not available yet.",
                self.config.prefix,
                command.name()
            )),
        }
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
    fn reply(&self, heard: &Heard, lane: &str, text: &str) -> (String, Action) {
        let thread = heard.thread.as_deref().unwrap_or(&heard.event_id);
        (
            lane.to_string(),
            Action::Send {
                room: self.backoffice().to_string(),
                content: Value::Object(relay::in_thread(self.message(text), thread)),
            },
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

/// The outbox lane of a request: its actions run in order.
fn lane(request: i64) -> String {
    format!("request:{request}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heard(role: Role, room: &str, event_id: &str, body: &str, thread: Option<&str>) -> Heard {
        let mut content = Map::new();
        content.insert("msgtype".into(), json!("m.text"));
        content.insert("body".into(), json!(body));
        Heard {
            role,
            room: room.into(),
            sender: "@someone:x.org".into(),
            event_id: event_id.into(),
            content,
            thread: thread.map(String::from),
            displayname: None,
            avatar_url: None,
        }
    }

    #[tokio::test]
    async fn a_done_processed_again_after_a_crash_queues_its_actions_again() {
        for store in crate::store::tests::stores().await {
            let cfg: MatrixDmConfig =
                serde_json::from_value(json!({"backoffice_room": "!ops"})).expect("config");
            let desk = Helpdesk::new("help", cfg, "@bot:hs.org");
            let plan = |h: Heard| {
                let (desk, store) = (&desk, &store);
                async move {
                    let (_, event) = desk.delivery(&h).expect("a delivery");
                    desk.plan(store, &event).await.expect("plan")
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
                    .any(|(_, a)| matches!(a, Action::Leave { room } if room == "!dm")),
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
            let [(_, Action::Send { content, .. })] = another.as_slice() else {
                panic!("one notice expected: {another:?}");
            };
            assert_eq!(content["body"], json!("This request is closed already."));
        }
    }
}
