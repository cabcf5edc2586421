//! One running Zammad source: a trigger's webhook names a changed ticket, and the ticket's
//! action (`zammad_ticket`) reads its new articles and state and brings the room in line;
//! what members write in the room becomes `zammad_write`, a note in the ticket.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use switchboard_connector::{
    ActionContext, ActionRow, Connector, DbError, Failure, Host, Listener, Matrix, Queued,
    TicketEvent, WebhookSource,
};
use switchboard_ticket_rooms::room::Upload;
use switchboard_ticket_rooms::{
    Article, Chat, MERGED, Member, Person, TicketRooms, TicketSystem, table,
};
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
            api: Api::new(
                cfg.api(),
                token,
                host.http().clone(),
                cfg.people.field.clone(),
            ),
            rooms: TicketRooms::new("zammad", "zammad", TABLE, id, host.clone(), bot),
            cfg,
            host,
        }
    }

    /// Why a ticket without a room does not get one (`None`: it does); `asked`: the link
    /// asked for it. Its tags are read when the selection needs them.
    async fn skipped(&self, read: &mut Read, asked: bool) -> Result<Option<String>, Failure> {
        let group = &read.ticket.group;
        if !self.cfg.groups.is_empty() && !self.cfg.groups.contains(group) {
            return Ok(Some(format!("group {group} is not this source's")));
        }
        if !asked && self.cfg.select.fields.contains_key("tags") {
            read.ticket.tags = Some(self.api.tags(read.ticket.id).await?);
        }
        let cx = ticket::context(&self.cfg, read);
        Ok(self.cfg.select.picks(&cx["ticket"], asked).err())
    }

    /// A user's login, their person added to `people`; empty for none (0, or 1: Zammad's
    /// "-").
    async fn login(
        &self,
        matrix: &dyn Matrix,
        id: u64,
        people: &mut BTreeMap<String, Member>,
    ) -> Result<String, Failure> {
        if id <= 1 {
            return Ok(String::new());
        }
        let person = self.api.person(id).await?;
        let login = person.name.clone();
        if !people.contains_key(&login) {
            let people_config = &self.cfg.people;
            let member = self.rooms.lookup.member(people_config, matrix, person);
            people.insert(login.clone(), member.await?);
        }
        Ok(login)
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
        let ticket = self.api.ticket(id).await?;
        let mut people = BTreeMap::new();
        let mut read = Read {
            owner: self.login(cx.matrix, ticket.owner_id, &mut people).await?,
            customer: self
                .login(cx.matrix, ticket.customer_id, &mut people)
                .await?,
            updated_by: self
                .login(cx.matrix, ticket.updated_by_id, &mut people)
                .await?,
            ticket,
            ..Read::default()
        };
        if !seen.roomed
            && let Some(why) = self.skipped(&mut read, asked).await?
        {
            return Ok(format!("skipped: {why}"));
        }
        let articles = self.api.articles(id, seen.last).await?;
        let me = self.api.me().await?;
        let mut ours = self.rooms.ours(id).await?;
        read.last = articles.last().map_or(0, |a| a.id);
        for article in articles {
            read.cc.extend(article.cc.iter().cloned());
            if article.created_by_id == me || ours.remove(&article.id) {
                continue;
            }
            read.articles.push(Article {
                id: article.id,
                by: self
                    .login(cx.matrix, article.created_by_id, &mut people)
                    .await?,
                internal: article.internal,
                text: article.text,
                files: article.files,
            });
        }
        // Merged: the room points to the surviving ticket's.
        if seen.roomed
            && read.ticket.state == MERGED
            && seen.status != MERGED
            && let Some((into, number)) = self.api.merged_into(id).await?
        {
            let room = self
                .host
                .room_of_ticket(&self.id, &into.to_string())
                .await?;
            read.merged_into = Some((number, room));
        }
        // The group's agents and the addresses copied: known by login or address only.
        let others: Vec<String> = ticket::agents(&self.cfg, &read)
            .iter()
            .chain(&read.cc)
            .cloned()
            .collect();
        for name in others {
            if people.contains_key(&name) {
                continue;
            }
            let email = if name.contains('@') {
                name.clone()
            } else {
                String::new()
            };
            let person = Person {
                name: name.clone(),
                email,
                ..Person::default()
            };
            let member = self
                .rooms
                .lookup
                .member(&self.cfg.people, cx.matrix, person);
            people.insert(name, member.await?);
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
        internal: bool,
        from: Option<&str>,
        file: Option<&Upload>,
    ) -> Result<bool, Failure> {
        self.rooms
            .write_noted_once(
                row.id,
                ticket,
                async || self.api.last_article(ticket).await,
                async |before| self.api.wrote(ticket, before, body).await,
                async || self.api.write(ticket, body, internal, from, file).await,
            )
            .await
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
        !self.cfg.internal
    }

    async fn attachment(&self, ticket: u64, id: &str) -> Result<Vec<u8>, Failure> {
        self.api.attachment(ticket, id).await
    }

    /// Writes a room message into the ticket as a note, internal unless `public`: as the
    /// member who said it when the table names their login (and Zammad lets
    /// Switchboard's user write for them), else as Switchboard's user.
    async fn write(
        &self,
        row: &ActionRow,
        ticket: u64,
        chat: &Chat,
        public: bool,
    ) -> Result<String, Failure> {
        let member = self
            .cfg
            .as_member
            .then(|| self.cfg.people.name_of(&chat.sender))
            .flatten();
        if let Some(login) = member {
            match self
                .write_once(
                    row,
                    ticket,
                    &chat.body,
                    !public,
                    Some(login),
                    chat.file.as_ref(),
                )
                .await
            {
                Ok(_) => return Ok(format!("noted as {login}")),
                // Not allowed to write as them: written as Switchboard's user, named.
                Err(Failure::Permanent(why)) => {
                    info!(source = %self.id, %login, %why, "Zammad: cannot write as the room member");
                }
                Err(e) => return Err(e),
            }
        }
        self.write_once(row, ticket, &chat.text(), !public, None, chat.file.as_ref())
            .await?;
        Ok("noted".into())
    }

    async fn transcribe(&self, row: &ActionRow, ticket: u64, text: &str) -> Result<bool, Failure> {
        self.write_once(row, ticket, text, self.cfg.internal, None, None)
            .await
    }
}
