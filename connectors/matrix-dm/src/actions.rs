//! The helpdesk's own actions: a request's thread root and posts into its thread, relays
//! between the customer's chat and the thread (with edits, reactions and redactions), and
//! the direct chat `start` opens. Each runs with the action's stable transaction IDs.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_connector::{
    Action, ActionContext, Failure, Feed, FeedFile, Queued, RoomSpec, now_ms,
};
use tracing::warn;

use crate::desk::{Helpdesk, PENDING_DM};
use crate::relay;

/// A message for the sender of an event that could not be relayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Apology {
    pub room: String,
    pub content: Value,
}

/// The helpdesk's actions, as stored in the outbox (their shape is that of the releases
/// before: actions queued then run after an upgrade).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HelpdeskAction {
    /// Post a request's thread root (`content`) into `room`, unless the request has its
    /// root already.
    ThreadOpen {
        request: i64,
        room: String,
        content: Value,
    },
    /// Post `content` into a request's thread in `room`.
    ThreadPost {
        request: i64,
        room: String,
        content: Value,
    },
    /// Relay an event (`origin`, sent at `origin_ts`, Unix ms) to the other side of its
    /// request as an event of `event_type` into `room`: the backoffice room if
    /// `to_operators` (a message goes into the request's thread), else the customer's chat.
    /// With `about` (the event it reacts to, edits or redacts), it is about that event's
    /// counterpart, and skipped if there is none. The copy is recorded, so reactions, edits
    /// and redactions can follow it.
    Relay {
        request: i64,
        room: String,
        to_operators: bool,
        event_type: String,
        content: Value,
        origin: String,
        origin_ts: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        about: Option<String>,
        /// Sent instead if the relay fails for good: a message into the origin's room.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        apology: Option<Apology>,
    },
    /// Create the direct chat with `user` for a request an operator started, unless the
    /// request has its chat already.
    StartChat {
        request: i64,
        user: String,
        encrypted: bool,
    },
    /// Post a file a follower told of (fetched through it, or from Matrix) into `room`: into
    /// the request's thread when `in_thread`.
    FilePost {
        request: i64,
        room: String,
        in_thread: bool,
        file: FeedFile,
    },
    /// Tell the sources that follow the helpdesk about a request (keyed `key`): with its
    /// title, its thread's link and its customer as they are when this runs.
    Publish {
        request: i64,
        key: String,
        feed: Feed,
    },
}

/// The `type`s of `HelpdeskAction`.
pub const KINDS: &[&str] = &[
    "thread_open",
    "thread_post",
    "relay",
    "start_chat",
    "file_post",
    "publish",
];

/// One step a delivery plans: one of the service's actions or one of the helpdesk's.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Core(Action),
    Own(HelpdeskAction),
}

impl From<Action> for Step {
    fn from(a: Action) -> Step {
        Step::Core(a)
    }
}

impl From<HelpdeskAction> for Step {
    fn from(a: HelpdeskAction) -> Step {
        Step::Own(a)
    }
}

impl Step {
    /// Queued in `lane`.
    pub fn queued(&self, lane: String) -> serde_json::Result<Queued> {
        match self {
            Step::Core(a) => Ok(Queued::core(lane, a)),
            Step::Own(a) => Queued::own(lane, a),
        }
    }
}

const REDACTION: &str = "m.room.redaction";

/// A link to a request's thread that opens in any Matrix client.
pub fn thread_link(backoffice: &str, root: &str) -> String {
    format!("https://matrix.to/#/{backoffice}/{root}")
}

impl Helpdesk {
    /// Runs one of the helpdesk's actions.
    pub async fn run_action(
        &self,
        cx: &ActionContext<'_>,
        action: HelpdeskAction,
    ) -> Result<String, Failure> {
        match action {
            HelpdeskAction::ThreadOpen {
                request,
                room,
                content,
            } => {
                match self.store.request_by_id(request).await? {
                    None => return Ok("skipped: no such request".into()),
                    Some(r) if r.thread_root.is_some() => {
                        return Ok("skipped: the thread exists".into());
                    }
                    Some(_) => {}
                }
                let root = cx
                    .matrix
                    .send(None, &room, "m.room.message", content, &cx.txn(""))
                    .await?;
                self.store.set_request_thread(request, &root).await?;
                Ok(root)
            }
            HelpdeskAction::ThreadPost {
                request,
                room,
                content,
            } => {
                let root = self.thread_of(request).await?;
                let content =
                    relay::in_thread(content.as_object().cloned().unwrap_or_default(), &root);
                cx.matrix
                    .send(
                        None,
                        &room,
                        "m.room.message",
                        Value::Object(content),
                        &cx.txn(""),
                    )
                    .await
            }
            HelpdeskAction::Relay {
                request,
                room,
                to_operators,
                event_type,
                content,
                origin,
                origin_ts,
                about,
                apology,
            } => {
                let outcome = self
                    .relay(
                        cx,
                        request,
                        &room,
                        to_operators,
                        &event_type,
                        content,
                        &origin,
                        about.as_deref(),
                    )
                    .await;
                match outcome {
                    Ok(copy) => {
                        self.relayed(to_operators, &event_type, about.is_some(), origin_ts);
                        Ok(copy)
                    }
                    Err(Failure::Permanent(message)) => {
                        if let Some(apology) = apology
                            && let Err(error) = cx
                                .matrix
                                .send(
                                    None,
                                    &apology.room,
                                    "m.room.message",
                                    apology.content,
                                    &cx.txn("e"),
                                )
                                .await
                        {
                            warn!(
                                ?error,
                                "cannot tell the sender that a message was not relayed"
                            );
                        }
                        Err(Failure::Permanent(message))
                    }
                    Err(other) => Err(other),
                }
            }
            HelpdeskAction::StartChat {
                request,
                user,
                encrypted,
            } => {
                let Some(r) = self.store.request_by_id(request).await? else {
                    return Ok("skipped: no such request".into());
                };
                if !r.dm_room.starts_with(PENDING_DM) {
                    return Ok(format!("skipped: the chat is {}", r.dm_room));
                }
                let spec = RoomSpec {
                    name: String::new(),
                    topic: String::new(),
                    preset: "trusted_private_chat".into(),
                    encrypted,
                    invite: vec![user.clone()],
                    admins: Vec::new(),
                    reopen_notice: None,
                };
                // One chat per action, whatever became of an earlier try.
                let key = format!("{}\0{}\0{}", cx.row.source_id, cx.row.lane, cx.row.txn_key);
                let (room, whole) = cx.matrix.create_room(None, &spec, &key, true).await?;
                self.store.set_request_dm(request, &room).await?;
                if !whole {
                    // Created by a try that failed after it (e.g. at the invite): the chat
                    // is the request's now, and the customer is invited here.
                    cx.matrix.invite(None, &room, &user).await?;
                }
                Ok(room)
            }
            HelpdeskAction::FilePost {
                request,
                room,
                in_thread,
                file,
            } => {
                let (data, content_type) = match &file.source {
                    Some(source) => cx.host.fetch(source, &file.content).await?,
                    None => (
                        cx.matrix.download(&file.content).await?,
                        file.content_type.clone(),
                    ),
                };
                let size = data.len();
                let keys = cx.matrix.upload(&room, data, &content_type).await?;
                let msgtype = if content_type.starts_with("image/") {
                    "m.image"
                } else {
                    "m.file"
                };
                let mut content = json!({
                    "msgtype": msgtype, "body": file.name, "filename": file.name,
                    "info": {"mimetype": content_type, "size": size},
                })
                .as_object()
                .cloned()
                .unwrap_or_default();
                content.extend(keys.as_object().cloned().unwrap_or_default());
                if in_thread {
                    content = relay::in_thread(content, &self.thread_of(request).await?);
                }
                cx.matrix
                    .send(
                        None,
                        &room,
                        "m.room.message",
                        Value::Object(content),
                        &cx.txn(""),
                    )
                    .await
            }
            HelpdeskAction::Publish { request, key, feed } => {
                let Some(r) = self.store.request_by_id(request).await? else {
                    return Ok("skipped: no such request".into());
                };
                let mut event = feed.event(&r.id.to_string());
                event.title = Some(r.title);
                event.url = r
                    .thread_root
                    .map(|root| thread_link(self.backoffice(), &root));
                event.participants = vec![r.customer];
                cx.host.publish(&self.source_id, &key, &[event]).await?;
                Ok("published".into())
            }
        }
    }

    /// Relays an event to the other side of its request.
    #[allow(clippy::too_many_arguments)]
    async fn relay(
        &self,
        cx: &ActionContext<'_>,
        request: i64,
        room: &str,
        to_operators: bool,
        event_type: &str,
        content: Value,
        origin: &str,
        about: Option<&str>,
    ) -> Result<String, Failure> {
        let mut content = content.as_object().cloned().unwrap_or_default();
        if let Some(about) = about {
            let found = self.store.counterpart(&self.source_id, about).await?;
            let Some((other, _)) = found else {
                return Ok("skipped: what it is about was not relayed".into());
            };
            if event_type == REDACTION {
                return cx.matrix.redact(None, room, &other, &cx.txn("")).await;
            }
            if let Some(Value::Object(rel)) = content.get_mut("m.relates_to") {
                rel.insert("event_id".into(), json!(other));
            }
        }
        if to_operators && about.is_none() {
            let root = self.thread_of(request).await?;
            content = relay::in_thread(content, &root);
        }
        let copy = cx
            .matrix
            .send(None, room, event_type, Value::Object(content), &cx.txn(""))
            .await?;
        self.store
            .record_relay(&self.source_id, origin, &copy, request)
            .await?;
        Ok(copy)
    }

    /// The root of a request's thread.
    async fn thread_of(&self, request: i64) -> Result<String, Failure> {
        self.store
            .request_by_id(request)
            .await?
            .and_then(|r| r.thread_root)
            .ok_or_else(|| Failure::Permanent("the request has no thread".into()))
    }

    /// Counts a relay and how long it took from the original's sending.
    fn relayed(&self, to_operators: bool, event_type: &str, about: bool, origin_ts: i64) {
        let direction = if to_operators {
            "to_operators"
        } else {
            "to_customer"
        };
        let kind = match (event_type, about) {
            (_, false) => "message",
            ("m.reaction", _) => "reaction",
            (REDACTION, _) => "redaction",
            _ => "edit",
        };
        self.metrics
            .relayed
            .with_label_values(&[&self.source_id, direction, kind])
            .inc();
        if origin_ts > 0 {
            let ms = now_ms().saturating_sub(origin_ts).max(0);
            self.metrics
                .relay_seconds
                .with_label_values(&[direction])
                .observe(ms as f64 / 1000.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use switchboard_connector::testing::{TestHost, TestMatrix, TestRoom};
    use switchboard_connector::{ActionContext, ActionRow, Connector, Kind, Queued, SourceInfo};

    use crate::MatrixDm;

    async fn helpdesk() -> (Arc<dyn Connector>, Arc<TestHost>) {
        let host = Arc::new(
            TestHost::new(Some(&crate::requests::SQLITE))
                .await
                .expect("host"),
        );
        let info = SourceInfo {
            id: "help".into(),
            authenticated: false,
            bot: TestMatrix::BOT.into(),
            ..Default::default()
        };
        let mut report = |k: &str, m: String| panic!("{k}: {m}");
        let checked = MatrixDm
            .check(
                &info,
                Some(&json!({"backoffice_room": "!ops:test"})),
                &mut switchboard_connector::Checker::new("help", "matrix_dm", &mut report),
            )
            .expect("valid");
        let desk = MatrixDm
            .build(&info, &checked, host.clone())
            .expect("built");
        desk.prepare().await.expect("prepared");
        (desk, host)
    }

    /// Everything the inbox got so far, planned, in order.
    async fn planned(desk: &Arc<dyn Connector>, host: &TestHost) -> Vec<Queued> {
        let mut out = Vec::new();
        for (_, _, events) in host.take_inbox() {
            for event in &events {
                out.extend(desk.plan(event).await.expect("plan").expect("its own"));
            }
        }
        out
    }

    /// Runs queued actions as the service would: the helpdesk's in the connector, the
    /// service's sends straight into the Matrix double.
    async fn run(desk: &Arc<dyn Connector>, host: &TestHost, matrix: &TestMatrix, q: &[Queued]) {
        run_batch(desk, host, matrix, q, "1").await;
    }

    /// `run`, as the actions of delivery `batch` (their transaction IDs are its).
    async fn run_batch(
        desk: &Arc<dyn Connector>,
        host: &TestHost,
        matrix: &TestMatrix,
        q: &[Queued],
        batch: &str,
    ) {
        for (i, queued) in q.iter().enumerate() {
            let row = ActionRow {
                id: i as i64,
                source_id: "help".into(),
                lane: queued.lane.clone(),
                txn_key: format!("{batch}.{i}"),
                attempts: 1,
            };
            let cx = ActionContext {
                row: &row,
                host,
                matrix,
            };
            if super::KINDS.contains(&queued.kind()) {
                desk.execute(&cx, &queued.action).await.expect("ran");
            } else if queued.kind() == "send" {
                let (room, content) = (&queued.action["room"], &queued.action["content"]);
                let room = room.as_str().unwrap_or_default();
                matrix
                    .send(None, room, "m.room.message", content.clone(), &cx.txn(""))
                    .await
                    .expect("sent");
            }
        }
    }

    use switchboard_connector::Matrix as _;

    #[tokio::test]
    async fn a_customer_message_becomes_a_thread_and_a_relay_without_a_homeserver() {
        let (desk, host) = helpdesk().await;
        let matrix = TestMatrix::default();
        let listener = desk.listener().expect("it listens");
        let mut dm = TestRoom::new("!dm:test");
        dm.joined = vec!["@alice:test".into(), TestMatrix::BOT.into()];
        dm.profiles
            .insert("@alice:test".into(), (Some("Alice".into()), None));
        let hello = json!({"type": "m.room.message", "sender": "@alice:test",
            "event_id": "$hello", "origin_server_ts": 1,
            "content": {"msgtype": "m.text", "body": "My printer is on fire"}});
        assert!(listener.heard(&dm, &[hello]).await.expect("heard"));
        let actions = planned(&desk, &host).await;
        let kinds: Vec<&str> = actions.iter().map(Queued::kind).collect();
        assert_eq!(kinds, ["thread_open", "send", "relay"]);
        // Twice, as after a crash before the outcomes were recorded: nothing twice.
        run(&desk, &host, &matrix, &actions).await;
        run(&desk, &host, &matrix, &actions).await;
        let sent = matrix.sent.lock().expect("sent").clone();
        let root = &sent[0];
        assert_eq!(root.room, "!ops:test");
        assert!(
            root.content["body"]
                .as_str()
                .is_some_and(|b| b.starts_with("[OPEN] ")),
            "{root:?}"
        );
        let copy = sent
            .iter()
            .find(|s| {
                s.room == "!ops:test"
                    && s.content["body"]
                        .as_str()
                        .is_some_and(|b| b.contains("My printer is on fire"))
            })
            .unwrap_or_else(|| panic!("relayed into the thread: {sent:?}"));
        assert_eq!(copy.content["m.relates_to"]["rel_type"], "m.thread");
        assert_eq!(copy.content["m.relates_to"]["event_id"], "$event0");
        assert_eq!(
            sent.len(),
            3,
            "root, greeting and copy, once each: {sent:?}"
        );
        assert_eq!(matrix.bodies("!dm:test").len(), 1, "the greeting");
    }

    #[tokio::test]
    async fn a_group_room_is_told_why_and_left_through_the_outbox() {
        let (desk, host) = helpdesk().await;
        let listener = desk.listener().expect("it listens");
        let mut group = TestRoom::new("!group:test");
        group.joined = vec!["@a:test".into(), "@b:test".into(), TestMatrix::BOT.into()];
        let said = json!({"type": "m.room.message", "sender": "@a:test", "event_id": "$1",
            "content": {"msgtype": "m.text", "body": "hi all"}});
        assert!(
            !listener
                .heard(&group, std::slice::from_ref(&said))
                .await
                .expect("heard")
        );
        // Heard again before the bot has left: one notice, however often.
        assert!(!listener.heard(&group, &[said]).await.expect("heard"));
        let actions = planned(&desk, &host).await;
        let kinds: Vec<&str> = actions.iter().map(Queued::kind).collect();
        assert_eq!(kinds, ["send", "leave"]);
        assert_eq!(actions[1].action["room"], "!group:test");
    }

    #[tokio::test]
    async fn followers_hear_of_messages_and_closes_and_answer_into_the_thread() {
        use switchboard_connector::{Feed, Side};
        let (desk, host) = helpdesk().await;
        host.followers
            .lock()
            .expect("followers")
            .insert("help".into(), vec!["issues".into()]);
        let matrix = TestMatrix::default();
        let listener = desk.listener().expect("it listens");
        let mut dm = TestRoom::new("!dm:test");
        dm.joined = vec!["@alice:test".into(), TestMatrix::BOT.into()];
        dm.profiles
            .insert("@alice:test".into(), (Some("Alice".into()), None));
        let hello = json!({"type": "m.room.message", "sender": "@alice:test",
            "event_id": "$hello", "origin_server_ts": 1,
            "content": {"msgtype": "m.text", "body": "My printer is on fire"}});
        assert!(listener.heard(&dm, &[hello]).await.expect("heard"));
        let actions = planned(&desk, &host).await;
        let kinds: Vec<&str> = actions.iter().map(Queued::kind).collect();
        assert_eq!(kinds, ["thread_open", "send", "publish", "relay"]);
        run(&desk, &host, &matrix, &actions).await;
        let inbox = host.take_inbox();
        let [(to, key, events)] = inbox.as_slice() else {
            panic!("one delivery to the follower: {inbox:?}");
        };
        assert_eq!((to.as_str(), key.as_str()), ("issues", "help:$hello"));
        let event = &events[0];
        assert_eq!(
            event.url.as_deref(),
            Some("https://matrix.to/#/!ops:test/$event0")
        );
        assert_eq!(event.participants, ["@alice:test"]);
        assert!(
            event
                .title
                .as_deref()
                .is_some_and(|t| t.contains("1st request"))
        );
        assert_eq!(
            Feed::of(event),
            Some(Feed::Message {
                from: Side::Customer,
                author: "@alice:test".into(),
                name: Some("Alice".into()),
                text: "My printer is on fire".into(),
                file: None,
            })
        );

        // The follower answers: a public note, a private one, then the close.
        let request = event.ticket.clone();
        let note = |text: &str, public| Feed::Note {
            author: "Alice Agent".into(),
            place: "Redmine issue #3".into(),
            text: text.into(),
            public,
            files: Vec::new(),
        };
        let mut answers = Vec::new();
        for feed in [note("On its way", true), note("The toner", false)] {
            answers.extend(
                desk.plan(&feed.event(&request))
                    .await
                    .expect("plan")
                    .expect("own"),
            );
        }
        let kinds: Vec<&str> = answers.iter().map(Queued::kind).collect();
        assert_eq!(kinds, ["thread_post", "send", "thread_post"]);
        run_batch(&desk, &host, &matrix, &answers, "2").await;
        assert_eq!(
            matrix.bodies("!dm:test").last().map(String::as_str),
            Some("On its way")
        );
        let thread = matrix.bodies("!ops:test");
        assert!(thread.contains(&"Alice Agent in Redmine issue #3:\n\nOn its way".to_string()));
        assert!(
            thread.contains(
                &"Alice Agent in Redmine issue #3 (private note):\n\nThe toner".to_string()
            )
        );
        assert!(
            !matrix
                .bodies("!dm:test")
                .iter()
                .any(|b| b.contains("toner"))
        );

        let close = Feed::Close {
            author: "Alice Agent".into(),
            place: "Redmine issue #3".into(),
            key: "issues:journal:9".into(),
        };
        let closing = desk
            .plan(&close.event(&request))
            .await
            .expect("plan")
            .expect("own");
        let kinds: Vec<&str> = closing.iter().map(Queued::kind).collect();
        assert!(
            kinds.contains(&"publish") && kinds.contains(&"leave"),
            "{kinds:?}"
        );
        run_batch(&desk, &host, &matrix, &closing, "3").await;
        let inbox = host.take_inbox();
        let closed = inbox
            .iter()
            .flat_map(|(_, _, e)| e)
            .find_map(|e| match Feed::of(e) {
                Some(Feed::Closed { by, .. }) => Some(by),
                _ => None,
            });
        assert_eq!(
            closed,
            Some(Some("issues:journal:9".into())),
            "the follower knows it closed it"
        );
        // The same close heard again closes nothing twice; another one nothing at all.
        let again = desk
            .plan(&close.event(&request))
            .await
            .expect("plan")
            .expect("own");
        assert_eq!(
            again.len(),
            closing.len(),
            "the same actions, the same transaction IDs"
        );
        let other = Feed::Close {
            author: "Bob".into(),
            place: "Redmine issue #3".into(),
            key: "issues:journal:10".into(),
        };
        let none = desk
            .plan(&other.event(&request))
            .await
            .expect("plan")
            .expect("own");
        assert!(none.is_empty(), "{none:?}");
    }

    #[test]
    fn every_action_is_declared_as_the_helpdesk_s() {
        use super::HelpdeskAction;
        let file = switchboard_connector::FeedFile {
            name: "f".into(),
            content_type: "text/plain".into(),
            size: 1,
            content: json!({}),
            source: None,
        };
        let all = [
            HelpdeskAction::ThreadOpen {
                request: 1,
                room: "!r".into(),
                content: json!({}),
            },
            HelpdeskAction::ThreadPost {
                request: 1,
                room: "!r".into(),
                content: json!({}),
            },
            HelpdeskAction::Relay {
                request: 1,
                room: "!r".into(),
                to_operators: true,
                event_type: "m.room.message".into(),
                content: json!({}),
                origin: "$e".into(),
                origin_ts: 0,
                about: None,
                apology: None,
            },
            HelpdeskAction::StartChat {
                request: 1,
                user: "@u:x".into(),
                encrypted: false,
            },
            HelpdeskAction::FilePost {
                request: 1,
                room: "!r".into(),
                in_thread: true,
                file,
            },
            HelpdeskAction::Publish {
                request: 1,
                key: "k".into(),
                feed: switchboard_connector::Feed::Notice { text: "t".into() },
            },
        ];
        let kinds: Vec<String> = all
            .iter()
            .map(|a| {
                serde_json::to_value(a).expect("json")["type"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        assert_eq!(kinds, super::KINDS, "each kind is declared, in order");
    }
}
