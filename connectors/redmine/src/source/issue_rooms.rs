//! The source's issue rooms: which changed issues are read into a room, an issue's read
//! (its new journals planned as the room's steps), its people, and members' messages
//! written back as notes once.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use async_trait::async_trait;
use serde_json::Value;
use switchboard_connector::{ActionContext, ActionRow, Failure};
use switchboard_ticket_rooms::room::Upload as RoomFile;
use switchboard_ticket_rooms::{Chat, Person, TicketSystem, table};

use super::{MAX_FILE, ROOMS, Source, USER_TTL};
use crate::api::Changed;
use crate::{WriteBack, rooms};

impl Source {
    /// Whether a changed issue that is no request's is read into its room: it has one, or
    /// the source's rooms choose it (not on demand only, not made by Switchboard).
    pub(super) async fn wants_room(&self, changed: &Changed, me: i64) -> Result<bool, Failure> {
        let Some(rooms) = &self.config.rooms else {
            return Ok(false);
        };
        let lane = changed.id.to_string();
        if table::seen(&*self.host, ROOMS, &self.id, &lane)
            .await?
            .roomed
        {
            return Ok(true);
        }
        Ok(self.skipped(rooms, &changed.raw, me, false).is_none())
    }

    /// Why an issue without a room does not get one (`None`: it does); `asked`: its room was
    /// asked for through the link.
    fn skipped(&self, rooms: &crate::Rooms, issue: &Value, me: i64, asked: bool) -> Option<String> {
        if issue["author"]["id"].as_i64() == Some(me) && !asked {
            return Some("Switchboard made it (a helpdesk request's)".into());
        }
        let cx = rooms::context(&self.config.url, issue);
        rooms.select.picks(&cx["ticket"], asked).err()
    }

    /// Reads an issue's journals since the last read and queues what its room needs.
    async fn read_issue(
        &self,
        cx: &ActionContext<'_>,
        id: u64,
        asked: bool,
    ) -> Result<String, Failure> {
        let (Some(config), Some(ticket_rooms)) = (&self.config.rooms, &self.rooms) else {
            return Ok("skipped: this source has no rooms".into());
        };
        let row = cx.row;
        let seen = table::seen(&*self.host, ROOMS, &self.id, &row.lane).await?;
        if !seen.roomed && config.select.on_demand && !asked {
            return Ok("skipped: its room is made on demand only".into());
        }
        let id = i64::try_from(id).unwrap_or_default();
        if self.issues.of_issue(&*self.host, id).await?.is_some() {
            return Ok("skipped: the issue is a helpdesk request's".into());
        }
        let me = self.me().await?;
        let issue = self.api.issue(id).await?;
        if let Some(why) = self
            .skipped(config, &issue.raw, me, asked)
            .filter(|_| !seen.roomed)
        {
            return Ok(format!("skipped: {why}"));
        }
        let needed: Vec<i64> = issue
            .journals
            .iter()
            .flat_map(|j| [j.status, j.old_status])
            .flatten()
            .collect();
        let statuses = self.statuses(&needed).await?;
        let names: HashMap<i64, String> = statuses.iter().map(|s| (s.id, s.name.clone())).collect();
        let (changes, last) = rooms::changes(&issue, &seen, me, &names);
        if seen.roomed && last == seen.last {
            return Ok("skipped: nothing new".into());
        }
        let shown = rooms::names(&issue);
        let keys = rooms::roles(&issue.raw, me)
            .into_iter()
            .map(|(key, _)| key)
            .chain([seen.owner.clone()].into_iter().filter(|o| !o.is_empty()))
            .chain(shown.keys().map(i64::to_string));
        let mut people = BTreeMap::new();
        for key in keys {
            let Ok(user) = key.parse::<i64>() else {
                continue;
            };
            if people.contains_key(&key) {
                continue;
            }
            let name = shown.get(&user).cloned().unwrap_or_else(|| key.clone());
            let person = self
                .person(user, &name, config.people.field.as_deref())
                .await?;
            let lookup = &ticket_rooms.lookup;
            people.insert(key, lookup.member(&config.people, cx.matrix, person).await?);
        }
        let closed: Vec<String> = statuses
            .iter()
            .filter(|s| s.closed)
            .map(|s| s.name.clone())
            .collect();
        let setup = rooms::Setup {
            rooms: config,
            url: &self.config.url,
            closed: &closed,
            me,
        };
        let (actions, now) = rooms::plan(&setup, &issue, &changes, &people, &seen, last);
        table::advance(&*self.host, ROOMS, row, &now, &actions).await?;
        Ok(format!(
            "read #{id} up to journal {}; {} actions",
            now.last,
            actions.len()
        ))
    }

    /// A Redmine user as a person of a room (`shown`: the name Redmine shows; all there is
    /// of a group, or of a user Switchboard's may not see); `field`: the user custom field
    /// with their Matrix ID.
    async fn person(&self, id: i64, shown: &str, field: Option<&str>) -> Result<Person, Failure> {
        let cached = self
            .users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .filter(|(at, _)| at.elapsed() < USER_TTL)
            .map(|(_, user)| user.clone());
        let user = match cached {
            Some(user) => user,
            None => {
                let user = self.api.user(id).await?;
                let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
                users.insert(id, (Instant::now(), user.clone()));
                user
            }
        };
        let Some(user) = user else {
            return Ok(Person {
                name: shown.to_string(),
                real_name: shown.to_string(),
                ..Person::default()
            });
        };
        let or_shown = |s: String| if s.is_empty() { shown.to_string() } else { s };
        let given = field
            .and_then(|f| user.fields.iter().find(|(name, _)| name == f))
            .map(|(_, value)| value.clone())
            .unwrap_or_default();
        Ok(Person {
            name: or_shown(user.login),
            email: user.mail,
            real_name: or_shown(user.name),
            given,
        })
    }

    /// Writes a note into an issue with a room once (a retry first looks whether it is
    /// there); false: an earlier try had.
    async fn write_note(
        &self,
        row: &ActionRow,
        issue: u64,
        text: &str,
        file: Option<&RoomFile>,
        private: bool,
    ) -> Result<bool, Failure> {
        let Some(rooms) = &self.rooms else {
            return Err(Failure::Permanent("this source has no rooms".into()));
        };
        let issue = i64::try_from(issue).unwrap_or_default();
        let me = self.me().await?;
        rooms
            .write_once(
                row.id,
                async || Ok(self.api.last_journal(issue).await?.max(0) as u64),
                async |before| {
                    let before = i64::try_from(before).unwrap_or_default();
                    self.api.wrote(issue, me, text, before).await
                },
                async || {
                    let mut notes = text.to_string();
                    let files = match file {
                        Some(f) => {
                            let (name, data) = (&f.name, f.data.clone());
                            self.uploaded(name, &f.content_type, data, &mut notes)
                                .await?
                        }
                        None => Vec::new(),
                    };
                    self.api.note(issue, &notes, None, &files, private).await
                },
            )
            .await
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
        self.read_issue(cx, ticket, asked).await
    }

    fn public_by_default(&self) -> bool {
        self.config
            .rooms
            .as_ref()
            .is_some_and(|r| r.write_back == WriteBack::Note)
    }

    /// Writes a room message into the issue: `public`, as a note; else a private note.
    async fn write(
        &self,
        row: &ActionRow,
        ticket: u64,
        chat: &Chat,
        public: bool,
    ) -> Result<String, Failure> {
        let file = chat.file.as_ref();
        self.write_note(row, ticket, &chat.text(), file, !public)
            .await?;
        Ok(if public { "noted" } else { "noted privately" }.into())
    }

    async fn transcribe(&self, row: &ActionRow, ticket: u64, text: &str) -> Result<bool, Failure> {
        self.write_note(row, ticket, text, None, true).await
    }

    async fn attachment(&self, _ticket: u64, id: &str) -> Result<Vec<u8>, Failure> {
        let id = id
            .parse()
            .map_err(|_| Failure::Permanent(format!("not an attachment: {id}")))?;
        Ok(self.api.attachment(id, MAX_FILE).await?.0)
    }
}
