//! One running Zammad source: a trigger's webhook names a changed ticket, and the ticket's
//! action (`zammad_ticket`) reads its new articles and state and brings the room in line;
//! what members write in the room becomes `zammad_write`, a note in the ticket.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use switchboard_connector::{
    ActionContext, ActionRow, Connector, DbError, Failure, Host, Listener, Queued, TicketEvent,
    WebhookSource,
};
use switchboard_ticket_rooms::{Article, Chat, Member, Person, TicketRooms, TicketSystem, table};
use tracing::info;

use crate::ZammadConfig;
use crate::api::Api;
use crate::hook::TriggerHook;
use crate::ticket::{self, Read};

/// The source's table of ticket rooms.
const TABLE: &str = "zammad_tickets";

/// One Zammad source.
pub struct Source {
    id: String,
    cfg: ZammadConfig,
    api: Api,
    host: Arc<dyn Host>,
    rooms: TicketRooms,
}

impl Source {
    pub(crate) fn new(
        id: &str,
        cfg: ZammadConfig,
        token: switchboard_connector::Secret,
        host: Arc<dyn Host>,
        bot: &str,
    ) -> Source {
        Source {
            id: id.to_string(),
            api: Api::new(cfg.api(), token, host.http().clone()),
            rooms: TicketRooms::new("zammad", "zammad", id, host.clone(), bot),
            cfg,
            host,
        }
    }

    fn selected(&self, group: &str) -> bool {
        self.cfg.groups.is_empty() || self.cfg.groups.iter().any(|g| g == group)
    }

    /// A user's login, their person added to `people`; empty for none (0, or 1: Zammad's
    /// "-").
    async fn login(
        &self,
        id: u64,
        people: &mut BTreeMap<String, Member>,
    ) -> Result<String, Failure> {
        if id <= 1 {
            return Ok(String::new());
        }
        let person = self.api.person(id).await?;
        let login = person.name.clone();
        people
            .entry(login.clone())
            .or_insert_with(|| self.cfg.people.member(person));
        Ok(login)
    }

    /// Reads a ticket's state and its articles since last time and queues what its room
    /// needs.
    async fn read_ticket(&self, row: &ActionRow, id: u64) -> Result<String, Failure> {
        let seen = table::seen(&*self.host, TABLE, &self.id, &row.lane).await?;
        let ticket = self.api.ticket(id).await?;
        if !seen.roomed && !self.selected(&ticket.group) {
            return Ok(format!(
                "skipped: group {} is not this source's",
                ticket.group
            ));
        }
        let articles = self.api.articles(id, seen.last).await?;
        let me = self.api.me().await?;
        let mut ours = self.rooms.ours(id).await?;
        let mut people = BTreeMap::new();
        let mut read = Read {
            owner: self.login(ticket.owner_id, &mut people).await?,
            customer: self.login(ticket.customer_id, &mut people).await?,
            updated_by: self.login(ticket.updated_by_id, &mut people).await?,
            last: articles.last().map_or(0, |a| a.id),
            ..Read::default()
        };
        for article in articles {
            if article.created_by_id == me || ours.remove(&article.id) {
                continue;
            }
            read.articles.push(Article {
                id: article.id,
                by: self.login(article.created_by_id, &mut people).await?,
                internal: article.internal,
                text: article.text,
                files: article.files,
            });
        }
        // The former owner, for lowering their power: known by login only.
        if !seen.owner.is_empty() {
            people.entry(seen.owner.clone()).or_insert_with(|| {
                self.cfg.people.member(Person {
                    name: seen.owner.clone(),
                    ..Person::default()
                })
            });
        }
        read.ticket = ticket;
        let (actions, now) = ticket::plan(&self.cfg, &read, &people, &seen);
        if seen.roomed && actions.is_empty() && now == seen {
            return Ok("skipped: nothing new".into());
        }
        table::advance(&*self.host, TABLE, row, &now, &actions).await?;
        ours.retain(|a| *a > now.last);
        self.rooms.keep_ours(id, &ours).await?;
        Ok(format!(
            "read {} articles up to {}; {} actions",
            read.articles.len(),
            now.last,
            actions.len()
        ))
    }

    /// Writes `body` into the ticket as a note once (a retry first looks among the
    /// ticket's articles), as `from` when given. False: an earlier try had.
    async fn write_once(
        &self,
        row: &ActionRow,
        ticket: u64,
        body: &str,
        from: Option<&str>,
    ) -> Result<bool, Failure> {
        self.rooms
            .write_noted_once(
                row.id,
                ticket,
                async || self.api.last_article(ticket).await,
                async |before| self.api.wrote(ticket, before, body).await,
                async || self.api.write(ticket, body, self.cfg.internal, from).await,
            )
            .await
    }

    /// Writes a room message into the ticket: as the member who said it when the table
    /// names their login (and Zammad lets Switchboard's user write for them), else as
    /// Switchboard's user.
    async fn write(&self, row: &ActionRow, ticket: u64, chat: &Chat) -> Result<String, Failure> {
        let member = self
            .cfg
            .as_member
            .then(|| self.cfg.people.name_of(&chat.sender))
            .flatten();
        if let Some(login) = member {
            match self.write_once(row, ticket, &chat.body, Some(login)).await {
                Ok(_) => return Ok(format!("noted as {login}")),
                // Not allowed to write as them: written as Switchboard's user, named.
                Err(Failure::Permanent(why)) => {
                    info!(source = %self.id, %login, %why, "Zammad: cannot write as the room member");
                }
                Err(e) => return Err(e),
            }
        }
        self.write_once(row, ticket, &chat.text(), None).await?;
        Ok("noted".into())
    }
}

#[async_trait]
impl Connector for Source {
    fn webhook(&self) -> Option<&dyn WebhookSource> {
        Some(&TriggerHook)
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
        self.write(row, ticket, chat).await
    }

    async fn transcribe(&self, row: &ActionRow, ticket: u64, text: &str) -> Result<bool, Failure> {
        self.write_once(row, ticket, text, None).await
    }
}
