//! One running OTOBO or Znuny source: the invoker's webhook names a changed ticket, and the
//! ticket's action (`otobo_ticket`) reads its state and new articles and brings the room in
//! line; what members write in the room becomes `otobo_write`, an article of the ticket.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchboard_connector::{
    ActionContext, ActionRow, Connector, DbError, Failure, Host, Listener, Queued, TicketEvent,
    WebhookSource,
};
use switchboard_ticket_rooms::{Chat, Person, TicketRooms, table};

use crate::OtoboConfig;
use crate::api::Api;
use crate::hook::InvokerHook;
use crate::ticket;

/// The source's table of ticket rooms.
const TABLE: &str = "otobo_tickets";

/// The source's own actions, as stored in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub(crate) enum OtoboAction {
    /// Read the ticket and its articles since last time and bring its room in line.
    #[serde(rename = "otobo_ticket")]
    Ticket { ticket: u64 },
    /// The ticket's owner changed: the new owner's power in the room up to 100, the
    /// former owner's down to `former_power`.
    #[serde(rename = "otobo_owner")]
    Owner {
        promote: Option<String>,
        demote: Option<String>,
        former_power: i64,
    },
    /// Write the room's conversation into the ticket (it was closed).
    #[serde(rename = "otobo_transcript")]
    Transcript { ticket: u64 },
    /// Write what a member said in the ticket's room into the ticket.
    #[serde(rename = "otobo_write")]
    Write {
        ticket: u64,
        sender: String,
        name: String,
        body: String,
    },
}

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
            rooms: TicketRooms::new("otobo", id, host.clone(), bot),
            cfg,
            host,
        }
    }

    fn selected(&self, queue: &str) -> bool {
        self.cfg.queues.is_empty() || self.cfg.queues.iter().any(|q| q == queue)
    }

    /// Where the IDs of the articles Switchboard wrote into a ticket are kept until the
    /// ticket is read past them: they are not shown in the room.
    fn ours_key(&self, ticket: u64) -> String {
        format!("otobo.{}.ours.{ticket}", self.id)
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

    /// Reads a ticket's state and its articles since last time and queues what its room
    /// needs.
    async fn read_ticket(&self, row: &ActionRow, id: u64) -> Result<String, Failure> {
        let seen = table::seen(&*self.host, TABLE, &self.id, &row.lane).await?;
        let mut t = self.api.ticket(id, seen.last).await?;
        if !seen.roomed && !self.selected(&t.queue) {
            return Ok(format!("skipped: queue {} is not this source's", t.queue));
        }
        let last = t.articles.last().map_or(0, |a| a.id);
        let mut ours = self.ours(id).await?;
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
        self.keep_ours(id, &ours).await?;
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
            .write_once(
                row.id,
                async || {
                    let t = self.api.ticket(ticket, 0).await?;
                    Ok(t.articles.last().map_or(0, |a| a.id))
                },
                async |before| {
                    let t = self.api.ticket(ticket, before).await?;
                    match t.articles.iter().find(|a| a.text.trim() == body.trim()) {
                        Some(a) => self.wrote_article(ticket, a.id).await.map(|()| true),
                        None => Ok(false),
                    }
                },
                async || {
                    let article = self.api.write(ticket, body, visible).await?;
                    self.wrote_article(ticket, article).await
                },
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
        let Ok(ticket) = ev.ticket.parse::<u64>() else {
            return Ok(Some(Vec::new()));
        };
        let action = match Chat::of(ev) {
            Some(chat) => OtoboAction::Write {
                ticket,
                sender: chat.sender,
                name: chat.name,
                body: chat.body,
            },
            None => OtoboAction::Ticket { ticket },
        };
        Ok(Some(vec![Queued::own(ev.ticket.clone(), &action)?]))
    }

    async fn execute(&self, cx: &ActionContext<'_>, action: &Value) -> Result<String, Failure> {
        let action = OtoboAction::deserialize(action)
            .map_err(|e| Failure::Permanent(format!("stored action does not parse: {e}")))?;
        match action {
            OtoboAction::Ticket { ticket } => self.read_ticket(cx.row, ticket).await,
            OtoboAction::Transcript { ticket } => {
                self.rooms
                    .transcript(cx, async |text| {
                        self.write_once(cx.row, ticket, &text).await
                    })
                    .await
            }
            OtoboAction::Owner {
                promote,
                demote,
                former_power,
            } => {
                self.rooms
                    .owner(cx, promote.as_deref(), demote.as_deref(), former_power)
                    .await
            }
            OtoboAction::Write {
                ticket,
                sender,
                name,
                body,
            } => {
                let chat = Chat { sender, name, body };
                self.write_once(cx.row, ticket, &chat.text()).await?;
                Ok("written".into())
            }
        }
    }

    fn listener(&self) -> Option<&dyn Listener> {
        Some(&self.rooms)
    }
}
