//! The running side every ticket-system source shares: hearing what members say in the
//! ticket rooms, the owner's power, the transcript, and writing into the ticket once.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{Value, json};
use switchboard_connector::{
    ActionContext, ActionRow, DbError, EventKind, Failure, Host, Listener, Queued, SyncRoom,
    TicketEvent,
};

/// What a member said in a ticket's room, as the inbox carries it to the source's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chat {
    pub sender: String,
    /// Their display name in the room (their Matrix ID when they have none).
    pub name: String,
    pub body: String,
    /// The file they sent, when they sent one (fetched when the chat is written).
    pub file: Option<Upload>,
}

/// A file sent in a room, to attach in the ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub name: String,
    pub content_type: String,
    pub data: Vec<u8>,
}

impl Chat {
    /// The chat an event carries, if it is one.
    pub fn of(event: &TicketEvent) -> Option<Chat> {
        let chat = &event.payload["chat"];
        let sender = chat["sender"].as_str()?;
        Some(Chat {
            sender: sender.into(),
            name: chat["name"].as_str().unwrap_or(sender).into(),
            body: chat["body"].as_str()?.into(),
            file: None,
        })
    }

    /// How it reads in the ticket: who said it, from where.
    pub fn text(&self) -> String {
        format!("{} ({}) in Matrix:\n{}", self.name, self.sender, self.body)
    }
}

/// The largest file of a room written into a ticket; a larger one is named only.
const MAX_UPLOAD: u64 = 50 * 1024 * 1024;

/// The file an `m.file` (`m.image`, ...) event's content points to, fetched (decrypted in
/// an encrypted room); `None` when it is too large to attach (it is named only).
async fn upload(cx: &ActionContext<'_>, content: &Value) -> Result<Option<Upload>, Failure> {
    let size = content["info"]["size"].as_u64().unwrap_or(0);
    if size > MAX_UPLOAD {
        return Ok(None);
    }
    let data = cx.matrix.download(content).await?;
    let content_type = content["info"]["mimetype"]
        .as_str()
        .unwrap_or("application/octet-stream");
    Ok(Some(Upload {
        name: content["filename"]
            .as_str()
            .or_else(|| content["body"].as_str())
            .unwrap_or("file")
            .to_string(),
        content_type: content_type.to_string(),
        data,
    }))
}

/// Posts a notice into `room` for the running action, `part` telling its sends apart.
async fn notice(
    cx: &ActionContext<'_>,
    room: &str,
    part: &str,
    body: &str,
) -> Result<String, Failure> {
    let content = json!({"msgtype": "m.notice", "body": body});
    let txn = cx.row.txn_id(part);
    cx.matrix
        .send(None, room, "m.room.message", content, &txn)
        .await
}

/// Changes `room`'s power levels with `edit`, as the room has them now.
async fn change_power(
    cx: &ActionContext<'_>,
    room: &str,
    edit: impl FnOnce(&mut Value),
) -> Result<String, Failure> {
    let mut levels = cx
        .matrix
        .state(room, "m.room.power_levels", "")
        .await?
        .unwrap_or_else(|| json!({}));
    edit(&mut levels);
    cx.matrix
        .set_state(None, room, "m.room.power_levels", "", levels)
        .await
}

/// A member's `!ticket ...` command in a ticket's room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub sender: String,
    pub name: String,
    /// What follows `!ticket`, trimmed.
    pub args: String,
}

impl Command {
    /// The command a message is, if it is one.
    pub fn parse(sender: &str, name: &str, body: &str) -> Option<Command> {
        let rest = body.trim().strip_prefix(COMMAND)?;
        if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
            return None;
        }
        Some(Command {
            sender: sender.into(),
            name: name.into(),
            args: rest.trim().into(),
        })
    }
}

/// What a member writes to talk to Switchboard rather than to the ticket.
const COMMAND: &str = "!ticket";

/// The power a member needs to switch where the room's messages go (a moderator's).
const SWITCH_POWER: i64 = 50;

/// The most room events a transcript reads.
const TRANSCRIPT_MAX: usize = 5000;

/// What a ticket system does for its rooms: the rest is the same for all
/// ([`TicketRooms::execute`]).
#[async_trait]
pub trait TicketSystem: Send + Sync {
    /// Reads the ticket (what changed since the last read) and queues what its room needs;
    /// `asked`: its room was asked for through the "open chat" link.
    async fn read(
        &self,
        cx: &ActionContext<'_>,
        ticket: u64,
        asked: bool,
    ) -> Result<String, Failure>;
    /// Whether what members say goes to the ticket as a reply the customer sees rather
    /// than an internal comment, for rooms that did not choose (`!ticket reply|comment`).
    fn public_by_default(&self) -> bool;
    /// Writes what a member said in the room into the ticket: `public`, as a reply the
    /// customer sees; else as an internal comment.
    async fn write(
        &self,
        row: &ActionRow,
        ticket: u64,
        chat: &Chat,
        public: bool,
    ) -> Result<String, Failure>;
    /// Writes the room's transcript into the ticket once; false: an earlier try had.
    async fn transcribe(&self, row: &ActionRow, ticket: u64, text: &str) -> Result<bool, Failure>;
    /// The content of a file of the ticket (`File::id`), for posting it into the room.
    async fn attachment(&self, ticket: u64, id: &str) -> Result<Vec<u8>, Failure> {
        let _ = (ticket, id);
        Err(Failure::Permanent(
            "this source does not fetch files".into(),
        ))
    }
}

/// The rooms of one source's tickets: which rooms it claims, what it hears there, and
/// the actions it runs in them. Its actions are `<actions>_ticket` (read the ticket),
/// `<actions>_write`, `<actions>_mode` (a `!ticket` command), `<actions>_owner`,
/// `<actions>_transcript`, `<actions>_age` (a closed room made read-only or emptied) and
/// `<actions>_invite` (someone invited back into a room emptied and opened again);
/// its settings are named `<kind>.<source id>.*`; its table of rooms is `table`.
pub struct TicketRooms {
    pub source: String,
    table: &'static str,
    pub host: Arc<dyn Host>,
    /// Finds people's Matrix IDs by the means that ask someone.
    pub lookup: crate::Lookup,
    actions: String,
    prefix: String,
    bot: Mutex<String>,
}

impl TicketRooms {
    pub fn new(
        kind: &str,
        actions: &str,
        table: &'static str,
        source: &str,
        host: Arc<dyn Host>,
        bot: &str,
    ) -> TicketRooms {
        TicketRooms {
            source: source.to_string(),
            table,
            lookup: crate::Lookup::new(host.http().clone()),
            host,
            actions: actions.to_string(),
            prefix: format!("{kind}.{source}"),
            bot: Mutex::new(bot.to_string()),
        }
    }

    /// An event's action: what a member said becomes `<actions>_write`, a command
    /// `<actions>_mode`, anything else a read of the ticket (`<actions>_ticket`, with
    /// `asked` when the "open chat" link asked for its room), in the ticket's lane: a
    /// command applies to what was said after it.
    pub fn plan(&self, ev: &TicketEvent) -> Result<Option<Vec<Queued>>, DbError> {
        let Ok(ticket) = ev.ticket.parse::<u64>() else {
            return Ok(Some(Vec::new()));
        };
        let p = &self.actions;
        let command = &ev.payload["command"];
        let action = match Chat::of(ev) {
            Some(chat) => {
                let mut write = json!({"type": format!("{p}_write"), "ticket": ticket,
                    "sender": chat.sender, "name": chat.name, "body": chat.body});
                if ev.payload["chat"]["file"].is_object() {
                    write["file"] = ev.payload["chat"]["file"].clone();
                }
                write
            }
            None if command.is_object() => json!({"type": format!("{p}_mode"), "ticket": ticket,
                "sender": command["sender"], "name": command["name"], "args": command["args"]}),
            None if ev.payload["age"].is_u64() => {
                json!({"type": format!("{p}_age"), "ticket": ticket, "stage": ev.payload["age"]})
            }
            None if ev.payload["via"] == "link" => {
                json!({"type": format!("{p}_ticket"), "ticket": ticket, "asked": true})
            }
            None => json!({"type": format!("{p}_ticket"), "ticket": ticket}),
        };
        Ok(Some(vec![Queued::own(ev.ticket.clone(), &action)?]))
    }

    /// Runs one of the source's actions, with `system` for what is the ticket system's.
    pub async fn execute(
        &self,
        system: &dyn TicketSystem,
        cx: &ActionContext<'_>,
        action: &Value,
    ) -> Result<String, Failure> {
        let kind = action["type"].as_str().unwrap_or_default();
        let ticket = action["ticket"].as_u64().unwrap_or(0);
        let text = |key: &str| action[key].as_str().map(String::from);
        match kind.strip_prefix(self.actions.as_str()) {
            Some("_ticket") if ticket > 0 => system.read(cx, ticket, action["asked"] == true).await,
            Some("_write") if ticket > 0 => {
                let (Some(sender), Some(body)) = (text("sender"), text("body")) else {
                    return Err(Failure::Permanent(format!("{kind} without sender or body")));
                };
                let name = text("name").unwrap_or_else(|| sender.clone());
                let file = match action["file"].is_object() {
                    true => upload(cx, &action["file"]).await?,
                    false => None,
                };
                let chat = Chat {
                    sender,
                    name,
                    body,
                    file,
                };
                let public = self.public(ticket, system).await?;
                system.write(cx.row, ticket, &chat, public).await
            }
            Some("_file") if ticket > 0 => {
                let Some(room) = self.room(cx).await? else {
                    return Ok("skipped: the ticket has no room".into());
                };
                let (Some(id), Some(name)) = (text("attachment"), text("name")) else {
                    return Err(Failure::Permanent(format!("{kind} without attachment")));
                };
                let content_type = text("content_type").unwrap_or_default();
                let data = system.attachment(ticket, &id).await?;
                let size = data.len();
                let msgtype = match content_type.split('/').next() {
                    Some("image") => "m.image",
                    Some("video") => "m.video",
                    Some("audio") => "m.audio",
                    _ => "m.file",
                };
                let at = cx.matrix.upload(&room, data, &content_type).await?;
                let mut content = json!({"msgtype": msgtype, "body": name, "filename": name,
                                         "info": {"mimetype": content_type, "size": size}});
                if let (Some(content), Some(at)) = (content.as_object_mut(), at.as_object()) {
                    content.extend(at.clone());
                }
                let txn = cx.row.txn_id("file");
                cx.matrix
                    .send(None, &room, "m.room.message", content, &txn)
                    .await
            }
            Some("_mode") if ticket > 0 => {
                let command = Command {
                    sender: text("sender").unwrap_or_default(),
                    name: text("name").unwrap_or_default(),
                    args: text("args").unwrap_or_default(),
                };
                self.mode(cx, system, ticket, &command).await
            }
            Some("_transcript") if ticket > 0 => {
                self.transcript(cx, async |text| {
                    system.transcribe(cx.row, ticket, &text).await
                })
                .await
            }
            Some("_invite") if ticket > 0 => {
                let Some(user) = text("user") else {
                    return Err(Failure::Permanent(format!("{kind} without user")));
                };
                match self.room(cx).await? {
                    Some(room) => cx.matrix.invite(None, &room, &user).await,
                    None => Ok("skipped: the ticket has no room".into()),
                }
            }
            Some("_age") if ticket > 0 => {
                let stage = action["stage"].as_u64().unwrap_or(0);
                self.age(cx, u8::try_from(stage).unwrap_or(2)).await
            }
            Some("_owner") => {
                let power = action["former_power"].as_i64().unwrap_or(0);
                let (promote, demote) = (text("promote"), text("demote"));
                self.owner(cx, promote.as_deref(), demote.as_deref(), power)
                    .await
            }
            _ => Err(Failure::Permanent(format!(
                "stored action does not parse: {action}"
            ))),
        }
    }

    /// Looks at the source's closed rooms: each whose time has come is made read-only or
    /// emptied (`room`'s delays), through an event in its ticket's lane. The number of
    /// rooms told.
    pub async fn age_rooms(&self, room: &crate::RoomConfig) -> Result<usize, DbError> {
        let now = switchboard_connector::now_ms();
        let mut told = 0;
        for (ticket, closed_at, aged) in
            crate::table::closed(&*self.host, self.table, &self.source).await?
        {
            let stage = room.stage(closed_at, now);
            if stage <= aged {
                continue;
            }
            let mut event = TicketEvent::new(ticket.clone(), EventKind::Updated);
            event.payload = json!({ "age": stage });
            let key = format!("age:{ticket}:{closed_at}:{stage}");
            self.host.deliver(&self.source, &key, &[event]).await?;
            told += 1;
        }
        Ok(told)
    }

    /// Every while (`room.age_every`), the closed rooms whose time has come are made
    /// read-only or emptied. Returns at once when the source does neither.
    pub async fn age_loop(&self, room: &crate::RoomConfig) {
        let Some(every) = room.age_every() else {
            return;
        };
        loop {
            match self.age_rooms(room).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(source = %self.source, rooms = n, "closed rooms aged"),
                Err(error) => {
                    tracing::warn!(source = %self.source, %error, "cannot age closed rooms")
                }
            }
            tokio::time::sleep(every).await;
        }
    }

    /// A closed room's next stage: read-only for all but its admins (1), everyone but the
    /// bot removed (2); or a reopened room writable again (0). Each with a notice; nothing
    /// when the room's ticket was opened or closed again meanwhile.
    async fn age(&self, cx: &ActionContext<'_>, stage: u8) -> Result<String, Failure> {
        let lane = &cx.row.lane;
        let seen = crate::table::seen(&*self.host, self.table, &self.source, lane).await?;
        if (stage > 0 && (!seen.closed || seen.aged >= stage)) || (stage == 0 && seen.closed) {
            return Ok("skipped: the room's ticket changed meanwhile".into());
        }
        let Some(room) = self.room(cx).await? else {
            return Ok("skipped: the ticket has no room".into());
        };
        let room = room.as_str();
        let writers =
            |power: i64| move |levels: &mut Value| levels["events_default"] = json!(power);
        let result = match stage {
            0 => {
                change_power(cx, room, writers(0)).await?;
                "writable again"
            }
            1 => {
                let body = "The ticket was closed a while ago: only the room's admins can \
                            write here now.";
                notice(cx, room, "age", body).await?;
                change_power(cx, room, writers(100)).await?;
                "made read-only"
            }
            _ => {
                let body = "The ticket was closed a while ago: everyone leaves this room now. \
                            If the ticket is opened again, its people are invited back.";
                notice(cx, room, "age", body).await?;
                // Nobody keeps power they could stop the bot with (rooms before version 12
                // give the bot 100, as the owner has).
                let bot = cx.matrix.bot().to_string();
                change_power(cx, room, |levels| {
                    levels["users"] = match levels["users"][&bot].clone() {
                        Value::Null => json!({}),
                        power => json!({ &bot: power }),
                    };
                })
                .await?;
                for member in cx.matrix.members(room).await? {
                    if member != bot {
                        cx.matrix
                            .kick(None, room, &member, "The ticket is closed.")
                            .await?;
                    }
                }
                "emptied"
            }
        };
        if stage > 0 {
            crate::table::aged(&*self.host, self.table, &self.source, lane, stage).await?;
        }
        Ok(result.into())
    }

    /// Where a room's choice between replies and comments is kept.
    fn public_key(&self, ticket: u64) -> String {
        format!("{}.public.{ticket}", self.prefix)
    }

    /// Whether members' messages go to the ticket as replies: as the room chose, else as
    /// the source is configured.
    async fn public(&self, ticket: u64, system: &dyn TicketSystem) -> Result<bool, Failure> {
        Ok(match self.host.setting(&self.public_key(ticket)).await? {
            Some(v) => v == "true",
            None => system.public_by_default(),
        })
    }

    /// A `!ticket` command: `reply` or `comment` switches where the room's messages go
    /// (for the ticket's owner and moderators); anything else says where they go. The
    /// answer is a notice in the room.
    async fn mode(
        &self,
        cx: &ActionContext<'_>,
        system: &dyn TicketSystem,
        ticket: u64,
        command: &Command,
    ) -> Result<String, Failure> {
        let Some(room) = self.room(cx).await? else {
            return Ok("skipped: the ticket has no room".into());
        };
        let now = self.public(ticket, system).await?;
        let goes = |public: bool| match public {
            true => "replies the customer sees",
            false => "internal comments",
        };
        let wanted = match command.args.to_ascii_lowercase().as_str() {
            "reply" | "public" => Some(true),
            "comment" | "internal" => Some(false),
            _ => None,
        };
        let (notice, result) = match wanted {
            None => (
                format!(
                    "Messages here go to the ticket as {}. `!ticket reply`: as replies the \
                     customer sees; `!ticket comment`: as internal comments (for the ticket's \
                     owner and moderators).",
                    goes(now)
                ),
                "told where messages go".to_string(),
            ),
            Some(public) => {
                let levels = cx.matrix.state(&room, "m.room.power_levels", "").await?;
                let levels = levels.unwrap_or_default();
                let power = levels["users"][&command.sender]
                    .as_i64()
                    .or_else(|| levels["users_default"].as_i64())
                    .unwrap_or(0);
                if power < SWITCH_POWER {
                    let notice = format!(
                        "Only the ticket's owner and moderators can switch this; messages \
                         here go to the ticket as {}.",
                        goes(now)
                    );
                    (
                        notice,
                        format!("refused: {} may not switch", command.sender),
                    )
                } else {
                    let key = self.public_key(ticket);
                    self.host.set_setting(&key, &public.to_string()).await?;
                    let notice = format!(
                        "{} switched: messages here now go to the ticket as {}.",
                        command.name,
                        goes(public)
                    );
                    (notice, format!("switched to {}", goes(public)))
                }
            }
        };
        self::notice(cx, &room, "mode", &notice).await?;
        Ok(result)
    }

    /// Where the IDs of what Switchboard wrote into a ticket are kept until the ticket is
    /// read past them (for systems that do not tell Switchboard's own writes apart).
    fn ours_key(&self, ticket: u64) -> String {
        format!("{}.ours.{ticket}", self.prefix)
    }

    /// The IDs of what Switchboard wrote into a ticket and the ticket was not read past.
    pub async fn ours(&self, ticket: u64) -> Result<BTreeSet<u64>, Failure> {
        Ok(match self.host.setting(&self.ours_key(ticket)).await? {
            Some(list) => serde_json::from_str(&list).unwrap_or_default(),
            None => BTreeSet::new(),
        })
    }

    /// Keeps those IDs (none: forgets them).
    pub async fn keep_ours(&self, ticket: u64, ours: &BTreeSet<u64>) -> Result<(), Failure> {
        let key = self.ours_key(ticket);
        if ours.is_empty() {
            self.host.delete_setting(&key).await?;
        } else {
            let list = serde_json::to_string(ours).unwrap_or_else(|_| "[]".into());
            self.host.set_setting(&key, &list).await?;
        }
        Ok(())
    }

    /// `write_once` for a system whose writes Switchboard tells apart by their IDs: `find`
    /// the article an earlier try left after a position, `write` a new one; either's ID is
    /// noted as Switchboard's (`ours`), so it is not shown in the room.
    pub async fn write_noted_once(
        &self,
        row_id: i64,
        ticket: u64,
        position: impl AsyncFnOnce() -> Result<u64, Failure>,
        find: impl AsyncFnOnce(u64) -> Result<Option<u64>, Failure>,
        write: impl AsyncFnOnce() -> Result<u64, Failure>,
    ) -> Result<bool, Failure> {
        self.write_once(
            row_id,
            position,
            async |before| match find(before).await? {
                Some(id) => self.wrote(ticket, id).await.map(|()| true),
                None => Ok(false),
            },
            async || {
                let id = write().await?;
                self.wrote(ticket, id).await
            },
        )
        .await
    }

    /// Notes that Switchboard wrote `id` into a ticket.
    async fn wrote(&self, ticket: u64, id: u64) -> Result<(), Failure> {
        let mut ours = self.ours(ticket).await?;
        ours.insert(id);
        self.keep_ours(ticket, &ours).await
    }

    fn bot(&self) -> String {
        // A panic while holding the lock cannot leave a name half written.
        self.bot.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The new owner's power in the ticket's room up to 100, the former owner's down.
    pub async fn owner(
        &self,
        cx: &ActionContext<'_>,
        promote: Option<&str>,
        demote: Option<&str>,
        former_power: i64,
    ) -> Result<String, Failure> {
        let Some(room) = self.room(cx).await? else {
            return Ok("skipped: the ticket has no room".into());
        };
        change_power(cx, &room, |levels| {
            let mut users = levels["users"].as_object().cloned().unwrap_or_default();
            if let Some(former) = demote.filter(|d| Some(*d) != promote) {
                users.insert(former.to_string(), json!(former_power));
            }
            if let Some(owner) = promote {
                users.insert(owner.to_string(), json!(100));
            }
            levels["users"] = Value::Object(users);
        })
        .await
    }

    async fn room(&self, cx: &ActionContext<'_>) -> Result<Option<String>, Failure> {
        Ok(self
            .host
            .room_of_ticket(&cx.row.source_id, &cx.row.lane)
            .await?)
    }

    /// Writes the room's conversation since the last transcript into the ticket with
    /// `write` (which answers false when an earlier try had written it already).
    pub async fn transcript(
        &self,
        cx: &ActionContext<'_>,
        write: impl AsyncFnOnce(String) -> Result<bool, Failure>,
    ) -> Result<String, Failure> {
        let Some(room) = self.room(cx).await? else {
            return Ok("skipped: the ticket has no room".into());
        };
        let key = format!("{}.transcribed.{}", self.prefix, cx.row.lane);
        let since: i64 = match self.host.setting(&key).await? {
            Some(ts) => ts.parse().unwrap_or(0),
            None => 0,
        };
        let events = cx.matrix.history(&room, TRANSCRIPT_MAX).await?;
        let (text, last) = crate::text::transcript(&events, since, cx.matrix.bot());
        if text.is_empty() {
            return Ok("skipped: nothing said since the last transcript".into());
        }
        let written = write(text).await?;
        self.host.set_setting(&key, &last.to_string()).await?;
        Ok(if written {
            "transcript written"
        } else {
            "transcript written before"
        }
        .into())
    }

    /// Writes into a ticket once for the outbox action `row_id`: `position` says where the
    /// ticket's history stands, `wrote` whether the ticket has the write after a position,
    /// `write` writes. A retry first looks whether the write it repeats reached the ticket
    /// system (the answer may have been lost on the way back). False: it had.
    pub async fn write_once(
        &self,
        row_id: i64,
        position: impl AsyncFnOnce() -> Result<u64, Failure>,
        wrote: impl AsyncFnOnce(u64) -> Result<bool, Failure>,
        write: impl AsyncFnOnce() -> Result<(), Failure>,
    ) -> Result<bool, Failure> {
        let key = format!("{}.writing.{row_id}", self.prefix);
        match self.host.setting(&key).await? {
            Some(before) => {
                if wrote(before.parse().unwrap_or(0)).await? {
                    self.host.delete_setting(&key).await?;
                    return Ok(false);
                }
            }
            None => {
                let last = position().await?;
                self.host.set_setting(&key, &last.to_string()).await?;
            }
        }
        write().await?;
        self.host.delete_setting(&key).await?;
        Ok(true)
    }
}

/// The sync loop's side: ticket rooms are made by the bot, which takes no invites; it
/// claims the rooms of its source's tickets and hears members' messages there.
#[async_trait]
impl Listener for TicketRooms {
    fn takes_invite(&self, _room: &str, _inviter: Option<&str>) -> bool {
        false
    }

    /// The bot's user ID, once the sync loop knows it.
    fn know_bot(&self, user_id: &str) {
        *self.bot.lock().unwrap_or_else(|e| e.into_inner()) = user_id.to_string();
    }

    /// Whether a room is one of this source's tickets'.
    async fn claims(&self, room: &dyn SyncRoom) -> Result<bool, DbError> {
        Ok(self
            .host
            .ticket_of_room(room.id())
            .await?
            .is_some_and(|(source, _)| source == self.source))
    }

    /// Members' messages go into the inbox, keyed by event ID, for their ticket: only
    /// what people say (not notices, edits or the bot's own); a file is named; a
    /// `!ticket` command is not said to the ticket.
    async fn heard(&self, room: &dyn SyncRoom, events: &[Value]) -> Result<bool, DbError> {
        let Some((_, ticket)) = self.host.ticket_of_room(room.id()).await? else {
            return Ok(true);
        };
        let bot = self.bot();
        for raw in events {
            let content = &raw["content"];
            let (Some(event_id), Some(sender), Some(body)) = (
                raw["event_id"].as_str(),
                raw["sender"].as_str(),
                content["body"].as_str(),
            ) else {
                continue;
            };
            if raw["type"] != "m.room.message"
                || sender == bot
                || content["msgtype"] == "m.notice"
                || content["m.relates_to"]["rel_type"] == "m.replace"
                || raw["unsigned"][switchboard_connector::connector::UNDECRYPTABLE] == true
            {
                continue;
            }
            let name = room
                .profile(sender)
                .await
                .0
                .unwrap_or_else(|| sender.into());
            let mut event = TicketEvent::new(ticket.clone(), EventKind::Updated);
            if let Some(command) =
                Command::parse(sender, &name, body).filter(|_| content["msgtype"] == "m.text")
            {
                event.payload = json!({"command": {"event_id": event_id,
                    "sender": command.sender, "name": command.name, "args": command.args}});
                self.host.deliver(&self.source, event_id, &[event]).await?;
                continue;
            }
            let file = matches!(
                content["msgtype"].as_str(),
                Some("m.file" | "m.image" | "m.video" | "m.audio")
            );
            let body = match file {
                true => format!("(sent a file in the room: {body})"),
                false => body.to_string(),
            };
            event.payload = json!({"chat": {"event_id": event_id, "sender": sender,
                                            "name": name, "body": body}});
            if file {
                event.payload["chat"]["file"] = content.clone();
            }
            self.host.deliver(&self.source, event_id, &[event]).await?;
        }
        Ok(true)
    }
}
