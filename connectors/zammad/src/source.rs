//! One running Zammad source: a trigger's webhook names a changed ticket, and the ticket's
//! action (`zammad_ticket`) reads its new articles and state and brings the room in line;
//! what members write in the room becomes `zammad_write`, a note in the ticket.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard_connector::{
    ActionContext, ActionRow, Connector, DbError, Failure, Host, Listener, Queued, TicketEvent,
    WebhookSource,
};
use switchboard_ticket_rooms::{Chat, Member, Person, TicketRooms, table};
use tracing::info;

use crate::ZammadConfig;
use crate::api::Api;
use crate::hook::TriggerHook;
use crate::ticket::{self, Read};

/// The source's table of ticket rooms.
const TABLE: &str = "zammad_tickets";

/// The Zammad source's own actions, as stored in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub(crate) enum ZammadAction {
    /// Read the ticket and its articles since last time and bring its room in line.
    #[serde(rename = "zammad_ticket")]
    Ticket { ticket: u64 },
    /// The ticket's owner changed: the new owner's power in the room up to 100, the
    /// former owner's down to `former_power`.
    #[serde(rename = "zammad_owner")]
    Owner {
        promote: Option<String>,
        demote: Option<String>,
        former_power: i64,
    },
    /// Write the room's conversation into the ticket (it was closed).
    #[serde(rename = "zammad_transcript")]
    Transcript { ticket: u64 },
    /// Write what a member said in the ticket's room into the ticket.
    #[serde(rename = "zammad_write")]
    Write {
        ticket: u64,
        sender: String,
        name: String,
        body: String,
    },
}

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
            rooms: TicketRooms::new("zammad", id, host.clone(), bot),
            cfg,
            host,
        }
    }

    fn selected(&self, group: &str) -> bool {
        self.cfg.groups.is_empty() || self.cfg.groups.iter().any(|g| g == group)
    }

    /// Where the IDs of the articles Switchboard wrote into a ticket are kept until the
    /// ticket is read past them (written as an agent, they are not Switchboard's user's).
    fn ours_key(&self, ticket: u64) -> String {
        format!("zammad.{}.ours.{ticket}", self.id)
    }

    async fn ours(&self, ticket: u64) -> Result<BTreeSet<u64>, Failure> {
        Ok(match self.host.setting(&self.ours_key(ticket)).await? {
            Some(list) => serde_json::from_str(&list).unwrap_or_default(),
            None => BTreeSet::new(),
        })
    }

    async fn keep_ours(&self, ticket: u64, ours: &BTreeSet<u64>) -> Result<(), Failure> {
        let key = self.ours_key(ticket);
        if ours.is_empty() {
            self.host.delete_setting(&key).await?;
        } else {
            let list = serde_json::to_string(ours).unwrap_or_else(|_| "[]".into());
            self.host.set_setting(&key, &list).await?;
        }
        Ok(())
    }

    async fn wrote_article(&self, ticket: u64, article: u64) -> Result<(), Failure> {
        let mut ours = self.ours(ticket).await?;
        ours.insert(article);
        self.keep_ours(ticket, &ours).await
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
        let mut ours = self.ours(id).await?;
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
            let by = self.login(article.created_by_id, &mut people).await?;
            read.articles.push((article, by));
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
        self.keep_ours(id, &ours).await?;
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
            .write_once(
                row.id,
                async || self.api.last_article(ticket).await,
                async |before| match self.api.wrote(ticket, before, body).await? {
                    Some(article) => self.wrote_article(ticket, article).await.map(|()| true),
                    None => Ok(false),
                },
                async || {
                    let article = self
                        .api
                        .write(ticket, body, self.cfg.internal, from)
                        .await?;
                    self.wrote_article(ticket, article).await
                },
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
        let Ok(ticket) = ev.ticket.parse::<u64>() else {
            return Ok(Some(Vec::new()));
        };
        let action = match Chat::of(ev) {
            Some(chat) => ZammadAction::Write {
                ticket,
                sender: chat.sender,
                name: chat.name,
                body: chat.body,
            },
            None => ZammadAction::Ticket { ticket },
        };
        Ok(Some(vec![Queued::own(ev.ticket.clone(), &action)?]))
    }

    async fn execute(&self, cx: &ActionContext<'_>, action: &Value) -> Result<String, Failure> {
        let action = ZammadAction::deserialize(action)
            .map_err(|e| Failure::Permanent(format!("stored action does not parse: {e}")))?;
        match action {
            ZammadAction::Ticket { ticket } => self.read_ticket(cx.row, ticket).await,
            ZammadAction::Transcript { ticket } => {
                self.rooms
                    .transcript(cx, async |text| {
                        self.write_once(cx.row, ticket, &text, None).await
                    })
                    .await
            }
            ZammadAction::Owner {
                promote,
                demote,
                former_power,
            } => {
                self.rooms
                    .owner(cx, promote.as_deref(), demote.as_deref(), former_power)
                    .await
            }
            ZammadAction::Write {
                ticket,
                sender,
                name,
                body,
            } => {
                let chat = Chat { sender, name, body };
                self.write(cx.row, ticket, &chat).await
            }
        }
    }

    fn listener(&self) -> Option<&dyn Listener> {
        Some(&self.rooms)
    }
}
