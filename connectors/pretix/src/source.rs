//! One running pretix source: its webhook is a trigger to read the order (`pretix_order`),
//! organisers' commands heard in Matrix become `pretix_command`s, a poll catches what
//! webhooks missed, and the OAuth callback page completes `!authorize`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_connector::connector::html_page;
use switchboard_connector::{
    Action, ActionContext, Connector, DbError, EventKind, Failure, Host, Listener, Queued, Route,
    RouteRequest, Secret, SyncRoom, TicketEvent, WebhookSource,
};

use crate::kind::Config;
use crate::{OrderRef, PretixConfig, PretixHook};

/// pretix's own actions, as stored in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum PretixAction {
    /// Read the order from pretix's API and bring the rooms in line with it (invites,
    /// removals and reports, queued as actions of their own).
    PretixOrder {
        organizer: String,
        event: String,
        code: String,
    },
    /// An organiser's command in `room`, answered there.
    PretixCommand {
        room: String,
        sender: String,
        body: String,
    },
}

/// One pretix source.
pub struct Source {
    pub(crate) id: String,
    pub(crate) cfg: PretixConfig,
    /// The API token (none: OAuth only).
    pub(crate) token: Option<Secret>,
    /// The OAuth client secret.
    pub(crate) client_secret: Option<Secret>,
    pub(crate) host: Arc<dyn Host>,
    /// One refresh of an OAuth token at a time.
    pub(crate) oauth_lock: tokio::sync::Mutex<()>,
}

impl Source {
    pub(crate) fn new(id: &str, config: &Config, host: Arc<dyn Host>) -> Source {
        Source {
            id: id.to_string(),
            cfg: config.config.clone(),
            token: config.token.clone(),
            client_secret: config.client_secret.clone(),
            host,
            oauth_lock: tokio::sync::Mutex::new(()),
        }
    }
}

#[async_trait]
impl Connector for Source {
    fn webhook(&self) -> Option<&dyn WebhookSource> {
        Some(&PretixHook)
    }

    fn routes(self: Arc<Self>) -> Vec<Route> {
        // Registered pretix applications point at this address: it must not change.
        let id = self.id.clone();
        let path = ["oauth", "pretix", id.as_str(), "callback"];
        vec![Route::get(&path, move |req: RouteRequest| {
            let me = self.clone();
            async move {
                let (ok, text) = me.callback(&req.query).await;
                html_page(if ok { 200 } else { 400 }, &text)
            }
        })]
    }

    async fn plan(&self, ev: &TicketEvent) -> Result<Option<Vec<Queued>>, DbError> {
        let lane = ev.ticket.clone();
        let p = &ev.payload;
        // A notice for a room (the OAuth callback's).
        if let (Some(room), Some(notice)) = (p["room"].as_str(), p["notice"].as_str()) {
            let send = Action::Send {
                room: room.into(),
                content: json!({"msgtype": "m.notice", "body": notice}),
            };
            return Ok(Some(vec![Queued::core(lane, &send)]));
        }
        if let (Some(room), Some(sender), Some(body)) = (
            p["room"].as_str(),
            p["sender"].as_str(),
            p["command"].as_str(),
        ) {
            let command = PretixAction::PretixCommand {
                room: room.into(),
                sender: sender.into(),
                body: body.into(),
            };
            return Ok(Some(vec![Queued::own(lane, &command)?]));
        }
        // The webhook only says that an order changed: its action reads the order.
        let Some(order) = OrderRef::from_key(&ev.ticket) else {
            return Ok(Some(Vec::new()));
        };
        let read = PretixAction::PretixOrder {
            organizer: order.organizer,
            event: order.event,
            code: order.code,
        };
        Ok(Some(vec![Queued::own(lane, &read)?]))
    }

    async fn execute(&self, cx: &ActionContext<'_>, action: &Value) -> Result<String, Failure> {
        let action = PretixAction::deserialize(action)
            .map_err(|e| Failure::Permanent(format!("stored action does not parse: {e}")))?;
        match action {
            PretixAction::PretixOrder {
                organizer,
                event,
                code,
            } => {
                let order = OrderRef {
                    organizer,
                    event,
                    code,
                };
                self.order(cx.row, &order).await
            }
            PretixAction::PretixCommand { room, sender, body } => {
                let answer = self.command(&room, &sender, &body).await?;
                let content = json!({"msgtype": "m.notice", "body": answer});
                cx.matrix
                    .send(None, &room, "m.room.message", content, &cx.txn(""))
                    .await
            }
        }
    }

    fn listener(&self) -> Option<&dyn Listener> {
        (!self.cfg.organisers.is_empty()).then_some(self as &dyn Listener)
    }

    async fn run(self: Arc<Self>) {
        if self.cfg.poll_minutes <= 0.0 {
            return;
        }
        let every =
            Duration::from_secs_f64(self.cfg.poll_minutes * 60.0).max(Duration::from_secs(1));
        loop {
            self.poll().await;
            tokio::time::sleep(every).await;
        }
    }
}

#[async_trait]
impl Listener for Source {
    /// Organisers' invites are accepted.
    fn takes_invite(&self, _room: &str, inviter: Option<&str>) -> bool {
        inviter.is_some_and(|i| self.cfg.organisers.iter().any(|o| o == i))
    }

    /// The rooms the config names, and those mapped from the chat.
    async fn claims(&self, room: &dyn SyncRoom) -> Result<bool, DbError> {
        let id = room.id();
        if self.cfg.rooms().iter().any(|(_, r)| r == id) {
            return Ok(true);
        }
        Ok(crate::tables::rooms(&*self.host, &self.id)
            .await?
            .iter()
            .any(|(_, _, r)| r == id))
    }

    /// Commands (`!word ...`) go into the inbox, keyed by event ID; whether the sender may
    /// give them is decided when they run.
    async fn heard(&self, room: &dyn SyncRoom, events: &[Value]) -> Result<bool, DbError> {
        let room = room.id();
        for raw in events {
            let body = raw["content"]["body"].as_str().unwrap_or_default();
            if raw["type"] != "m.room.message" || !body.starts_with('!') {
                continue;
            }
            let (Some(event_id), Some(sender)) = (raw["event_id"].as_str(), raw["sender"].as_str())
            else {
                continue;
            };
            let mut command = TicketEvent::new(format!("command:{room}"), EventKind::Updated);
            command.payload = json!({"room": room, "sender": sender,
                                     "command": body, "event_id": event_id});
            self.host.deliver(&self.id, event_id, &[command]).await?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_connector::testing::{TestHost, TestMatrix};
    use switchboard_connector::{ActionRow, Checker, Kind, SourceInfo};

    async fn source() -> (Arc<dyn Connector>, Arc<TestHost>) {
        let host = Arc::new(
            TestHost::new(crate::Pretix.migrations(switchboard_connector::Dialect::Sqlite))
                .await
                .expect("host"),
        );
        let info = SourceInfo {
            id: "px".into(),
            authenticated: true,
            bot: TestMatrix::BOT.into(),
            ..Default::default()
        };
        let section = json!({"url": "http://127.0.0.1:9", "api_token": "t", "poll_minutes": 0,
            "organisers": ["@org:test"],
            "events": [{"organizer": "o", "event": "e", "rooms": ["!conf:test"]}]});
        let mut report = |k: &str, m: String| panic!("{k}: {m}");
        let checked = crate::Pretix
            .check(
                &info,
                Some(&section),
                &mut Checker::new("px", "pretix", &mut report),
            )
            .expect("valid");
        let connector = crate::Pretix
            .build(&info, &checked, host.clone())
            .expect("built");
        (connector, host)
    }

    fn row(lane: &str) -> ActionRow {
        ActionRow {
            id: 1,
            source_id: "px".into(),
            lane: lane.into(),
            txn_key: "7.0".into(),
            attempts: 1,
        }
    }

    #[tokio::test]
    async fn organisers_commands_are_heard_planned_and_answered() {
        let (connector, host) = source().await;
        let listener = connector.listener().expect("organisers: it listens");
        assert!(listener.takes_invite("!any:test", Some("@org:test")));
        assert!(!listener.takes_invite("!any:test", Some("@stranger:test")));
        let said = |sender: &str, body: &str, id: &str| {
            json!({"type": "m.room.message", "sender": sender, "event_id": id,
                   "content": {"msgtype": "m.text", "body": body}})
        };
        let events = [
            said("@org:test", "!unsetroom", "$1"),
            said("@org:test", "hello", "$2"),
            said("@stranger:test", "!status", "$3"),
        ];
        let room = switchboard_connector::testing::TestRoom::new("!conf:test");
        assert!(listener.heard(&room, &events).await.expect("heard"));
        assert!(listener.heard(&room, &events).await.expect("heard again"));
        let inbox = host.take_inbox();
        // Commands only, each once however often the sync brings it.
        assert_eq!(inbox.len(), 2, "{inbox:?}");
        let matrix = TestMatrix::default();
        let mut answers = Vec::new();
        for (n, (_, _, events)) in inbox.iter().enumerate() {
            let planned = connector
                .plan(&events[0])
                .await
                .expect("plan")
                .expect("own");
            assert_eq!(planned.len(), 1);
            assert_eq!(planned[0].kind(), "pretix_command");
            let mut r = row(&planned[0].lane);
            r.txn_key = format!("{n}.0");
            let cx = ActionContext {
                row: &r,
                host: &*host,
                matrix: &matrix,
            };
            answers.push(
                connector
                    .execute(&cx, &planned[0].action)
                    .await
                    .expect("ran"),
            );
            // Run again (a retry): the same transaction ID posts nothing new.
            connector
                .execute(&cx, &planned[0].action)
                .await
                .expect("ran");
        }
        assert_eq!(answers.len(), 2);
        let bodies = matrix.bodies("!conf:test");
        assert_eq!(
            bodies,
            [
                "This room was not mapped to an event from the chat.",
                "Only the organisers named in the configuration may do that.",
            ]
        );
    }

    #[tokio::test]
    async fn an_order_webhook_is_planned_as_a_read_of_the_order() {
        let (connector, _host) = source().await;
        let hook = connector.webhook().expect("intake");
        let body = br#"{"notification_id": 5, "organizer": "o", "event": "e", "code": "ABC12", "action": "pretix.event.order.paid"}"#;
        let delivery = hook
            .accept(&http::HeaderMap::new(), body)
            .expect("accepted");
        let planned = connector
            .plan(&delivery.events[0])
            .await
            .expect("plan")
            .expect("own");
        assert_eq!(
            planned[0].action,
            json!({"type": "pretix_order", "organizer": "o", "event": "e", "code": "ABC12"})
        );
        assert_eq!(planned[0].lane, "o/e/ABC12");
    }

    #[tokio::test]
    async fn grants_change_once_and_queue_their_invites_and_removals() {
        let (_connector, host) = source().await;
        let grants: std::collections::BTreeSet<(String, String)> =
            [("!conf:test".to_string(), "@a:test".to_string())].into();
        let plan = |c: &crate::tables::Changes| {
            c.invites
                .iter()
                .map(|(room, user)| {
                    Queued::core(
                        "m",
                        &Action::Invite {
                            room: room.clone(),
                            user: user.clone(),
                        },
                    )
                })
                .collect()
        };
        let r = row("o/e/ABC12");
        let first = crate::tables::apply(&*host, &r, &grants, false, &[(1, "bad".into())], &plan)
            .await
            .expect("applied");
        assert_eq!(first.invites.len(), 1);
        assert_eq!(first.reports.len(), 1);
        assert_eq!(host.take_queued().len(), 1);
        // The same state again changes nothing and queues nothing.
        let again = crate::tables::apply(&*host, &r, &grants, false, &[(1, "bad".into())], &plan)
            .await
            .expect("applied");
        assert_eq!(again, crate::tables::Changes::default());
        assert!(host.take_queued().is_empty());
        // Cancelled: the grant goes, a removal.
        let gone = crate::tables::apply(&*host, &r, &Default::default(), true, &[], &plan)
            .await
            .expect("applied");
        assert_eq!(
            gone.removals,
            [("!conf:test".to_string(), "@a:test".to_string())]
        );
    }
}
