//! One running OTOBO or Znuny source: the invoker's webhook names a changed ticket, and the
//! ticket's action (`otobo_ticket`) reads its state and new articles and brings the room in
//! line; what members write in the room becomes `otobo_write`, an article of the ticket.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use switchboard_connector::{
    ActionContext, ActionRow, Connector, DbError, Failure, Host, Listener, Queued, TicketEvent,
    WebhookSource,
};
use switchboard_ticket_rooms::room::Upload;
use switchboard_ticket_rooms::{Chat, Person, TicketRooms, TicketSystem, table};

use crate::OtoboConfig;
use crate::api::Api;
use crate::hook::InvokerHook;
use crate::ticket;

/// The source's table of ticket rooms.
const TABLE: &str = "otobo_tickets";

/// One OTOBO or Znuny source.
pub struct Source {
    id: String,
    cfg: OtoboConfig,
    api: Api,
    host: Arc<dyn Host>,
    hook: InvokerHook,
    rooms: TicketRooms,
}

impl Source {
    pub(crate) fn new(
        id: &str,
        cfg: OtoboConfig,
        password: switchboard_connector::Secret,
        host: Arc<dyn Host>,
        bot: &str,
    ) -> Source {
        Source {
            id: id.to_string(),
            api: Api::new(
                cfg.url.clone(),
                cfg.user.clone(),
                password,
                host.http().clone(),
            ),
            hook: InvokerHook {
                source: id.to_string(),
                link: cfg.link.clone(),
            },
            rooms: TicketRooms::new("otobo", "otobo", TABLE, id, host.clone(), bot),
            cfg,
            host,
        }
    }

    /// Reads a ticket's state and its articles since last time and queues what its room
    /// needs.
    async fn read_ticket(
        &self,
        cx: &ActionContext<'_>,
        id: u64,
        asked: bool,
    ) -> Result<String, Failure> {
        let row = cx.row;
        let seen = table::seen(&*self.host, TABLE, &self.id, &row.lane).await?;
        if !seen.roomed && self.cfg.select.on_demand && !asked {
            return Ok("skipped: its room is made on demand only".into());
        }
        let mut t = self.api.ticket(id, seen.last).await?;
        let shown = ticket::context(&self.cfg, &t);
        let select = &self.cfg.select;
        let skipped = select.skipped("queue", &self.cfg.queues, &shown["ticket"], asked);
        if let Some(why) = skipped.filter(|_| !seen.roomed) {
            return Ok(format!("skipped: {why}"));
        }
        let last = t.articles.last().map_or(0, |a| a.id);
        let mut ours = self.rooms.ours(id).await?;
        t.articles.retain(|a| !ours.contains(&a.id));
        // The web service names people by login only.
        let mut people = BTreeMap::new();
        for login in [&t.owner, &t.responsible, &t.customer, &seen.owner] {
            if login.is_empty() || people.contains_key(login) {
                continue;
            }
            let person = Person {
                name: login.clone(),
                ..Person::default()
            };
            let member = self
                .rooms
                .lookup
                .member(&self.cfg.people, cx.matrix, person);
            people.insert(login.clone(), member.await?);
        }
        let (actions, now) = ticket::plan(&self.cfg, &t, last, &people, &seen);
        if seen.roomed && actions.is_empty() && now == seen {
            return Ok("skipped: nothing new".into());
        }
        table::advance(&*self.host, TABLE, row, &now, &actions).await?;
        ours.retain(|a| *a > now.last);
        self.rooms.keep_ours(id, &ours).await?;
        Ok(format!(
            "read {} articles up to {}; {} actions",
            t.articles.len(),
            now.last,
            actions.len()
        ))
    }

    /// Writes `body` into the ticket as an article, `visible` for the customer or not,
    /// once (a retry first looks among the ticket's articles). False: an earlier try had.
    async fn write_once(
        &self,
        row: &ActionRow,
        ticket: u64,
        body: &str,
        visible: bool,
        file: Option<&Upload>,
    ) -> Result<bool, Failure> {
        self.rooms
            .write_noted_once(
                row.id,
                ticket,
                async || {
                    let t = self.api.ticket(ticket, 0).await?;
                    Ok(t.articles.last().map_or(0, |a| a.id))
                },
                async |before| {
                    let t = self.api.ticket(ticket, before).await?;
                    let found = t.articles.iter().find(|a| a.text.trim() == body.trim());
                    Ok(found.map(|a| a.id))
                },
                async || self.api.write(ticket, body, visible, file).await,
            )
            .await
    }
}

#[async_trait]
impl Connector for Source {
    fn webhook(&self) -> Option<&dyn WebhookSource> {
        Some(&self.hook)
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
        self.rooms.age_loop(&self.cfg.room).await;
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
        self.cfg.visible_for_customer
    }

    async fn write(
        &self,
        row: &ActionRow,
        ticket: u64,
        chat: &Chat,
        public: bool,
    ) -> Result<String, Failure> {
        self.write_once(row, ticket, &chat.text(), public, chat.file.as_ref())
            .await?;
        Ok(if public {
            "written, visible"
        } else {
            "written"
        }
        .into())
    }

    async fn transcribe(&self, row: &ActionRow, ticket: u64, text: &str) -> Result<bool, Failure> {
        let visible = self.cfg.visible_for_customer;
        self.write_once(row, ticket, text, visible, None).await
    }

    async fn attachment(&self, ticket: u64, id: &str) -> Result<Vec<u8>, Failure> {
        self.api.attachment(ticket, id).await
    }
}
