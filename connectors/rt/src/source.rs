//! One running RT source: a webhook (or the catch-up) names a changed ticket, and the
//! ticket's action (`rt_ticket`) reads its new history and brings the room in line; what
//! members write in the room becomes `rt_write`, a comment or reply in the ticket.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use switchboard_connector::{
    ActionContext, ActionRow, Connector, DbError, EventKind, Failure, Host, Listener, Queued,
    TicketEvent, WebhookSource,
};
use switchboard_ticket_rooms::room::Upload;
use switchboard_ticket_rooms::{Chat, MERGED, Seen, TicketRooms, TicketSystem, table};
use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::api::Rt;
use crate::hook::ScripHook;
use crate::ticket::Entry;
use crate::{RtConfig, WriteBack, ticket};

/// The source's table of ticket rooms.
const TABLE: &str = "rt_tickets";

/// One RT source.
pub struct Source {
    id: String,
    cfg: RtConfig,
    rt: Rt,
    host: Arc<dyn Host>,
    /// The RT user Switchboard writes as (configured, or asked of RT once).
    user: OnceCell<String>,
    rooms: TicketRooms,
}

impl Source {
    pub(crate) fn new(
        id: &str,
        cfg: RtConfig,
        token: switchboard_connector::Secret,
        host: Arc<dyn Host>,
        bot: &str,
    ) -> Source {
        let user = OnceCell::new_with(cfg.user.clone());
        Source {
            id: id.to_string(),
            rt: Rt::new(
                cfg.rest2(),
                token,
                host.http().clone(),
                cfg.people.field.clone(),
            ),
            cfg,
            rooms: TicketRooms::new("request_tracker", "rt", TABLE, id, host.clone(), bot),
            host,
            user,
        }
    }

    async fn user(&self) -> Result<&str, Failure> {
        self.user
            .get_or_try_init(|| self.rt.token_owner())
            .await
            .map(String::as_str)
    }

    /// Reads a ticket's history since last time and queues what its room needs.
    async fn read_ticket(
        &self,
        cx: &ActionContext<'_>,
        id: u64,
        asked: bool,
    ) -> Result<String, Failure> {
        let row = cx.row;
        let user = self.user().await?.to_string();
        let seen = table::seen(&*self.host, TABLE, &self.id, &row.lane).await?;
        if !seen.roomed && self.cfg.select.on_demand && !asked {
            return Ok("skipped: its room is made on demand only".into());
        }
        let ticket = self.rt.ticket(id).await?;
        if ticket.effective != id {
            return self.merged(row, id, ticket.effective, &seen).await;
        }
        let shown = ticket::context(&self.cfg, &ticket);
        let select = &self.cfg.select;
        let skipped = select.skipped("queue", &self.cfg.queues, &shown["ticket"], asked);
        if let Some(why) = skipped.filter(|_| !seen.roomed) {
            return Ok(format!("skipped: {why}"));
        }
        let history = self.rt.history(id, seen.last).await?;
        if seen.roomed && history.is_empty() {
            return Ok("skipped: nothing new".into());
        }
        let mut entries = Vec::with_capacity(history.len());
        for transaction in history {
            let shown = matches!(
                transaction.kind.as_str(),
                "Create" | "Correspond" | "Comment"
            ) && transaction.creator != user;
            let message = match shown {
                true => Some(self.rt.message(transaction.id).await?),
                false => None,
            };
            entries.push(Entry {
                transaction,
                message,
            });
        }
        let mut people = BTreeMap::new();
        let names = ticket::roles(&ticket)
            .into_iter()
            .map(|(name, _)| name)
            .chain([seen.owner.clone()].into_iter().filter(|o| !o.is_empty()))
            .chain(entries.iter().map(|e| e.transaction.creator.clone()));
        for name in names {
            if people.contains_key(&name) {
                continue;
            }
            let person = self.rt.person(&name).await?;
            let people_config = &self.cfg.people;
            let member = self.rooms.lookup.member(people_config, cx.matrix, person);
            people.insert(name, member.await?);
        }
        let (actions, now) = ticket::plan(&self.cfg, &ticket, &entries, &people, &user, &seen);
        table::advance(&*self.host, TABLE, row, &now, &actions).await?;
        Ok(format!(
            "read {} transactions up to {}; {} actions",
            entries.len(),
            now.last,
            actions.len()
        ))
    }

    /// Ticket `id` was merged into `into`: its room, if it has one, is closed pointing to
    /// the surviving ticket's, once.
    async fn merged(
        &self,
        row: &ActionRow,
        id: u64,
        into: u64,
        seen: &Seen,
    ) -> Result<String, Failure> {
        if !seen.roomed || seen.status == MERGED {
            return Ok(format!("skipped: merged into #{into}"));
        }
        let room = self
            .host
            .room_of_ticket(&self.id, &into.to_string())
            .await?;
        let (actions, now) = ticket::merged(&self.cfg, id, into, room, seen);
        table::advance(&*self.host, TABLE, row, &now, &actions).await?;
        Ok(format!("merged into #{into}; {} actions", actions.len()))
    }

    /// Writes `content` into the ticket once (a retry first looks in its history).
    /// False: an earlier try had.
    async fn write_once(
        &self,
        row: &ActionRow,
        id: u64,
        reply: bool,
        content: &str,
        file: Option<&Upload>,
    ) -> Result<bool, Failure> {
        let user = self.user().await?.to_string();
        self.rooms
            .write_once(
                row.id,
                async || self.rt.last_transaction(id).await,
                async |before| self.rt.wrote(id, &user, before, content).await,
                async || self.rt.write(id, reply, content, file).await,
            )
            .await
    }

    /// Names the tickets changed since the last look, so that a change whose webhook was
    /// lost is read too. The first look only notes where RT stands.
    async fn catch_up(&self) -> Result<usize, Failure> {
        let key = format!("request_tracker.{}.changed", self.id);
        let since = match self.host.cursor(&key).await? {
            Some(since) => since,
            None => {
                let newest = self.rt.newest_change().await?;
                self.host.set_cursor(&key, &newest).await?;
                info!(source = %self.id, since = %newest, "RT: reading tickets changed from now on");
                return Ok(0);
            }
        };
        let changed = self.rt.changed_since(&since, &self.cfg.queues).await?;
        let mut newest = since.clone();
        for (id, updated) in &changed {
            let event = TicketEvent::new(id.to_string(), EventKind::Updated);
            self.host
                .deliver(&self.id, &format!("changed:{id}:{updated}"), &[event])
                .await?;
            let updated = crate::api::rt_time(updated);
            if updated > newest {
                newest = updated;
            }
        }
        if newest != since {
            self.host.set_cursor(&key, &newest).await?;
        }
        Ok(changed.len())
    }
}

#[async_trait]
impl Connector for Source {
    fn webhook(&self) -> Option<&dyn WebhookSource> {
        Some(&ScripHook)
    }

    async fn plan(&self, ev: &TicketEvent) -> Result<Option<Vec<Queued>>, DbError> {
        self.rooms.plan(ev)
    }

    async fn execute(&self, cx: &ActionContext<'_>, action: &Value) -> Result<String, Failure> {
        self.rooms.execute(self, cx, action).await
    }

    fn listener(&self) -> Option<&dyn Listener> {
        Some(&self.rooms)
    }

    async fn run(self: Arc<Self>) {
        let every = Duration::from_secs_f64(self.cfg.catch_up_minutes * 60.0);
        let catch_up = async {
            loop {
                match self.catch_up().await {
                    Ok(0) => {}
                    Ok(n) => info!(source = %self.id, tickets = n, "RT: changed tickets read"),
                    Err(e) => warn!(source = %self.id, error = %e.into_message(), "RT catch-up"),
                }
                if every.is_zero() {
                    return;
                }
                tokio::time::sleep(every.max(Duration::from_secs(1))).await;
            }
        };
        tokio::join!(catch_up, self.rooms.age_loop(&self.cfg.room));
    }
}

#[async_trait]
impl TicketSystem for Source {
    async fn read(
        &self,
        cx: &ActionContext<'_>,
        ticket: u64,
        asked: bool,
    ) -> Result<String, Failure> {
        self.read_ticket(cx, ticket, asked).await
    }

    fn public_by_default(&self) -> bool {
        self.cfg.write_back == WriteBack::Reply
    }

    /// Writes a room message into the ticket: `public`, as a reply; else a comment.
    async fn write(
        &self,
        row: &ActionRow,
        ticket: u64,
        chat: &Chat,
        public: bool,
    ) -> Result<String, Failure> {
        let file = chat.file.as_ref();
        self.write_once(row, ticket, public, &chat.text(), file)
            .await?;
        Ok(if public { "replied" } else { "commented" }.into())
    }

    async fn transcribe(&self, row: &ActionRow, ticket: u64, text: &str) -> Result<bool, Failure> {
        self.write_once(row, ticket, false, text, None).await
    }

    async fn attachment(&self, _ticket: u64, id: &str) -> Result<Vec<u8>, Failure> {
        self.rt.attachment(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use switchboard_connector::testing::{TestHost, TestMatrix, TestRoom};
    use switchboard_connector::{Checker, Kind, SourceInfo};

    #[tokio::test]
    async fn members_messages_are_heard_once_and_planned_as_writes() {
        let kind = crate::RequestTracker;
        let host = Arc::new(
            TestHost::new(kind.migrations(switchboard_connector::Dialect::Sqlite))
                .await
                .expect("host"),
        );
        let info = SourceInfo {
            id: "rt".into(),
            authenticated: true,
            bot: TestMatrix::BOT.into(),
            ..Default::default()
        };
        let section = json!({"url": "http://127.0.0.1:9", "token": "1-2-x"});
        let mut report = |k: &str, m: String| panic!("{k}: {m}");
        let checked = kind
            .check(
                &info,
                Some(&section),
                &mut Checker::new("rt", "request_tracker", &mut report),
            )
            .expect("valid");
        let source = kind.build(&info, &checked, host.clone()).expect("built");
        let listener = source.listener().expect("it listens");
        listener.know_bot(TestMatrix::BOT);
        host.link("rt", "7", "!ticket:test");
        let room = TestRoom::new("!ticket:test");
        assert!(listener.claims(&room).await.expect("claims"));
        assert!(
            !listener
                .claims(&TestRoom::new("!other:test"))
                .await
                .expect("claims")
        );
        let said = |sender: &str, content: Value, id: &str| json!({"type": "m.room.message", "sender": sender, "event_id": id, "content": content});
        let events = [
            said(
                "@carl:test",
                json!({"msgtype": "m.text", "body": "It works"}),
                "$1",
            ),
            said(
                "@carl:test",
                json!({"msgtype": "m.notice", "body": "a bot"}),
                "$2",
            ),
            said(
                TestMatrix::BOT,
                json!({"msgtype": "m.text", "body": "posted"}),
                "$3",
            ),
            said(
                "@carl:test",
                json!({"msgtype": "m.text", "body": "* fix",
                "m.relates_to": {"rel_type": "m.replace", "event_id": "$1"}}),
                "$4",
            ),
            said(
                "@carl:test",
                json!({"msgtype": "m.text", "body": " !ticket  reply "}),
                "$5",
            ),
            said(
                "@carl:test",
                json!({"msgtype": "m.text", "body": "!tickets are great"}),
                "$6",
            ),
        ];
        listener.heard(&room, &events).await.expect("heard");
        let inbox = host.take_inbox();
        assert_eq!(inbox.len(), 3, "{inbox:?}");
        assert_eq!(inbox[0].1, "$1");
        // A command is planned as the source's `_mode`, in the ticket's lane; a message
        // that only starts like one is said.
        let command = source
            .plan(&inbox[1].2[0])
            .await
            .expect("plan")
            .expect("own");
        assert_eq!(
            command[0].action,
            json!({"type": "rt_mode", "ticket": 7, "sender": "@carl:test",
                   "name": "@carl:test", "args": "reply"})
        );
        assert_eq!(command[0].lane, "7");
        let said = source
            .plan(&inbox[2].2[0])
            .await
            .expect("plan")
            .expect("own");
        assert_eq!(said[0].action["body"], "!tickets are great");
        let planned = source
            .plan(&inbox[0].2[0])
            .await
            .expect("plan")
            .expect("own");
        assert_eq!(
            planned[0].action,
            json!({"type": "rt_write", "ticket": 7, "sender": "@carl:test",
                   "name": "@carl:test", "body": "It works"})
        );
        // A webhook is planned as a read of the ticket.
        let hook = source.webhook().expect("intake");
        let delivery = hook
            .accept(
                &http::HeaderMap::new(),
                br#"{"ticket_id": 7, "transaction_id": 9}"#,
            )
            .expect("accepted");
        let read = source
            .plan(&delivery.events[0])
            .await
            .expect("plan")
            .expect("own");
        assert_eq!(read[0].action, json!({"type": "rt_ticket", "ticket": 7}));
        assert_eq!(read[0].lane, "7");
    }
}
