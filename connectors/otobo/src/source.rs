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
            rooms: TicketRooms::new("otobo", "otobo", id, host.clone(), bot),
            cfg,
            host,
        }
    }

    fn selected(&self, queue: &str) -> bool {
        self.cfg.queues.is_empty() || self.cfg.queues.iter().any(|q| q == queue)
    }

    /// Reads a ticket's state and its articles since last time and queues what its room
    /// needs.
    async fn read_ticket(&self, row: &ActionRow, id: u64) -> Result<String, Failure> {
        let seen = table::seen(&*self.host, TABLE, &self.id, &row.lane).await?;
        let mut t = self.api.ticket(id, seen.last).await?;
        if !seen.roomed && !self.selected(&t.queue) {
            return Ok(format!("skipped: queue {} is not this source's", t.queue));
        }
        let last = t.articles.last().map_or(0, |a| a.id);
        let mut ours = self.rooms.ours(id).await?;
        t.articles.retain(|a| !ours.contains(&a.id));
        // The web service names people by login only.
        let people: BTreeMap<_, _> = [&t.owner, &t.responsible, &t.customer, &seen.owner]
            .into_iter()
            .filter(|login| !login.is_empty())
            .map(|login| {
                let person = Person {
                    name: login.clone(),
                    ..Person::default()
                };
                (login.clone(), self.cfg.people.member(person))
            })
            .collect();
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

    /// Writes `body` into the ticket as an article once (a retry first looks among the
    /// ticket's articles). False: an earlier try had.
    async fn write_once(&self, row: &ActionRow, ticket: u64, body: &str) -> Result<bool, Failure> {
        let visible = self.cfg.visible_for_customer;
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
                async || self.api.write(ticket, body, visible).await,
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
}

#[async_trait]
impl TicketSystem for Source {
    async fn read(&self, row: &ActionRow, ticket: u64) -> Result<String, Failure> {
        self.read_ticket(row, ticket).await
    }

    async fn write(&self, row: &ActionRow, ticket: u64, chat: &Chat) -> Result<String, Failure> {
        self.write_once(row, ticket, &chat.text()).await?;
        Ok("written".into())
    }

    async fn transcribe(&self, row: &ActionRow, ticket: u64, text: &str) -> Result<bool, Failure> {
        self.write_once(row, ticket, text).await
    }
}
