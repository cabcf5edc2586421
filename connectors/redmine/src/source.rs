//! One Redmine source: the helpdesk's messages and closes planned as notes on the request's
//! issue (created with the first), those actions run, and the poll that brings notes,
//! status changes and closes written in Redmine back to the helpdesk; other issues of the
//! project chosen for rooms are read into their rooms (the ticket systems' rooms), and what
//! members say there is written as notes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use switchboard_connector::{
    ActionContext, Connector, DbError, EventKind, Failure, Feed, FeedFile, FirstSync, Host,
    Listener, Queued, Secret, Side, SyncRoom, TicketEvent, now_ms,
};
use switchboard_matrix_dm::takeover::open_content;
use switchboard_ticket_rooms::TicketRooms;
use switchboard_ticket_rooms::text::render;
use tracing::{info, warn};

use crate::RedmineConfig;
use crate::api::{Api, Status, Upload, User, redmine_time};
use crate::issues::{Issues, TAKEN};

mod issue_rooms;

/// The source's actions, as stored in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
enum RedmineAction {
    /// Make the request's issue, unless it has one.
    #[serde(rename = "redmine_issue")]
    Issue {
        request: String,
        subject: String,
        description: String,
    },
    /// Write a note (with a status and a file) on the request's issue.
    #[serde(rename = "redmine_note")]
    Note {
        request: String,
        notes: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<FeedFile>,
    },
    /// Close the request's issue with a note, unless it is closed.
    #[serde(rename = "redmine_close")]
    Close { request: String, notes: String },
}

/// The source's action kinds: `RedmineAction`'s, then its issue rooms'
/// (`TicketRooms::execute`).
pub(crate) const KINDS: &[&str] = &[
    "redmine_issue",
    "redmine_note",
    "redmine_close",
    "redmine_ticket",
    "redmine_write",
    "redmine_mode",
    "redmine_owner",
    "redmine_transcript",
    "redmine_age",
    "redmine_invite",
    "redmine_file",
];

/// How many of `KINDS` are `RedmineAction`'s.
const REQUEST_KINDS: usize = 3;

/// The table of issues with rooms.
const ROOMS: &str = "redmine_rooms";

/// How long what Redmine said of a user is used before asking again.
const USER_TTL: Duration = Duration::from_secs(600);

/// The largest attachment passed on into Matrix.
const MAX_FILE: u64 = 50 * 1024 * 1024;

/// How long before a poll a change must have been made to be sure to be in its list.
const SETTLE_MS: i64 = 10_000;

/// How far back the first poll looks.
const FIRST_LOOK_BACK_MS: i64 = 3_600_000;

/// Where the next poll starts: a Redmine time, `SETTLE_MS` before the last poll.
fn cursor_key(source: &str) -> String {
    format!("redmine.{source}.updated_on")
}

pub(crate) struct Source {
    id: String,
    config: RedmineConfig,
    helpdesk: String,
    host: Arc<dyn Host>,
    api: Api,
    issues: Issues,
    /// The API key's user, once asked.
    me: OnceLock<i64>,
    /// Redmine's statuses, as last asked.
    statuses: RwLock<Vec<Status>>,
    /// How long each poll took.
    polls: HistogramVec,
    /// The issues' rooms, when the source has them.
    rooms: Option<TicketRooms>,
    /// Redmine's users as last asked, and when.
    users: Mutex<HashMap<i64, (Instant, Option<User>)>>,
}

impl Source {
    pub fn new(
        id: &str,
        config: RedmineConfig,
        key: Secret,
        host: Arc<dyn Host>,
        bot: &str,
    ) -> Source {
        let requests = IntCounterVec::new(
            Opts::new(
                "redmine_requests_total",
                "Requests made to Redmine by source and what for",
            ),
            &["source", "purpose"],
        )
        .expect("valid metric");
        let polls = HistogramVec::new(
            HistogramOpts::new(
                "redmine_poll_seconds",
                "How long each successful look at Redmine's changes took, by source",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["source"],
        )
        .expect("valid metric");
        let _ = host.registry().register(Box::new(requests.clone()));
        let _ = host.registry().register(Box::new(polls.clone()));
        let rooms = config
            .rooms
            .as_ref()
            .map(|_| TicketRooms::new("redmine", "redmine", ROOMS, id, host.clone(), bot));
        Source {
            polls,
            rooms,
            users: Mutex::new(HashMap::new()),
            api: Api::new(&config.url, key, host.http().clone(), requests, id),
            issues: Issues::new(id),
            helpdesk: config.helpdesk.clone().unwrap_or_default(),
            id: id.to_string(),
            config,
            host,
            me: OnceLock::new(),
            statuses: RwLock::new(Vec::new()),
        }
    }

    /// The API key's user, asked once.
    async fn me(&self) -> Result<i64, Failure> {
        if let Some(me) = self.me.get() {
            return Ok(*me);
        }
        let me = self.api.me().await?;
        Ok(*self.me.get_or_init(|| me))
    }

    /// Redmine's statuses, asked again.
    async fn fresh_statuses(&self) -> Result<Vec<Status>, Failure> {
        let fresh = self.api.statuses().await?;
        *self.statuses.write().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
        Ok(fresh)
    }

    /// A status by its number, asking Redmine again for one not known yet.
    async fn status(&self, id: i64) -> Result<Option<Status>, Failure> {
        let list = self.statuses(&[id]).await?;
        Ok(list.into_iter().find(|s| s.id == id))
    }

    /// Redmine's statuses, asked again when one of `needed` is not known.
    async fn statuses(&self, needed: &[i64]) -> Result<Vec<Status>, Failure> {
        let known = self
            .statuses
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if !known.is_empty() && needed.iter().all(|id| known.iter().any(|s| s.id == *id)) {
            return Ok(known);
        }
        self.fresh_statuses().await
    }

    /// The status `done` sets: the configured one, or Redmine's first closed status.
    async fn done(&self) -> Result<Option<u64>, Failure> {
        if let Some(done) = self.config.statuses.done {
            return Ok(Some(done));
        }
        let closed = |list: &[Status]| list.iter().find(|s| s.closed).map(|s| s.id as u64);
        if let Some(id) = closed(&self.statuses.read().unwrap_or_else(|e| e.into_inner())) {
            return Ok(Some(id));
        }
        Ok(closed(&self.fresh_statuses().await?))
    }

    /// The issue of a request, or why there is none.
    async fn issue_of(&self, request: &str) -> Result<i64, Failure> {
        self.issues
            .of_request(&*self.host, request)
            .await?
            .and_then(|i| i.issue_id)
            .ok_or_else(|| {
                Failure::Permanent(format!(
                    "request {request} has no Redmine issue: making it failed (see its \
                     redmine_issue action)"
                ))
            })
    }

    async fn plan_feed(&self, event: &TicketEvent, feed: Feed) -> Result<Vec<Queued>, DbError> {
        let request = event.ticket.as_str();
        let lane = format!("request:{request}");
        let mut out = Vec::new();
        match feed {
            Feed::Message {
                from,
                author,
                name,
                text,
                file,
            } => {
                let mut known = self.issues.of_request(&*self.host, request).await?;
                if known.is_none() && self.adopt(event, request).await? {
                    known = self.issues.of_request(&*self.host, request).await?;
                }
                if known.is_none() {
                    self.issues.expect(&*self.host, request).await?;
                }
                // Queued again while the issue is still being made: the second finds it.
                if known.and_then(|i| i.issue_id).is_none() {
                    let context = json!({"request": {
                        "id": request,
                        "title": event.title,
                        "customer": event.participants.first(),
                        "link": event.url,
                    }});
                    let issue = RedmineAction::Issue {
                        request: request.to_string(),
                        subject: render(&self.config.templates.subject, &context),
                        description: render(&self.config.templates.description, &context),
                    };
                    out.push(Queued::own(&lane, &issue)?);
                }
                let (side, status) = match from {
                    Side::Customer => ("customer", self.config.statuses.customer_wrote),
                    Side::Operator => ("operator", self.config.statuses.operator_wrote),
                };
                let name = match name {
                    Some(n) if n != author => format!("{n} ({author})"),
                    _ => author.clone(),
                };
                let context = json!({"author": author, "name": name, "side": side, "text": text});
                let note = RedmineAction::Note {
                    request: request.to_string(),
                    notes: render(&self.config.templates.note, &context),
                    status,
                    file,
                };
                out.push(Queued::own(&lane, &note)?);
            }
            Feed::Closed { text, by } => {
                if self
                    .issues
                    .of_request(&*self.host, request)
                    .await?
                    .is_none()
                    && !self.adopt(event, request).await?
                {
                    return Ok(out);
                }
                // Closed from here: the issue is closed already.
                if by.is_some_and(|b| b.starts_with(&format!("{}:", self.id))) {
                    self.issues.set_closed(&*self.host, request).await?;
                    return Ok(out);
                }
                let close = RedmineAction::Close {
                    request: request.to_string(),
                    notes: text.unwrap_or_else(|| "The request is done.".into()),
                };
                out.push(Queued::own(&lane, &close)?);
            }
            Feed::Note { .. } | Feed::Notice { .. } | Feed::Close { .. } => {}
        }
        Ok(out)
    }

    /// The issue taken over for the request's thread (named by the end of its link), if
    /// there is one: the request's from now on.
    async fn adopt(&self, event: &TicketEvent, request: &str) -> Result<bool, DbError> {
        let Some(root) = event.url.as_deref().and_then(|u| u.rsplit('/').next()) else {
            return Ok(false);
        };
        let adopted = self.issues.adopt(&*self.host, root, request).await?;
        if adopted {
            info!(source = %self.id, request, "a request goes on in the issue taken over");
        }
        Ok(adopted)
    }

    /// Honoroit's issues (`cc.etke.honoroit.redmine.<thread root>` -> `{"id": <issue>}`,
    /// sealed with the data secret when it had one), each read up to the last journal it
    /// passed on (`cc.etke.honoroit.redmine.note.<root>_<journal>`).
    async fn take_over_honoroit(&self, sync: &dyn FirstSync) {
        const PREFIX: &str = "cc.etke.honoroit.redmine.";
        let secret = self.host.data_secret();
        let mut issues = Vec::new();
        let mut read: std::collections::HashMap<String, i64> = Default::default();
        for (kind, content) in sync.account_data() {
            let Some(rest) = kind.strip_prefix(PREFIX) else {
                continue;
            };
            if let Some(note) = rest.strip_prefix("note.") {
                if let Some((root, journal)) = note.rsplit_once('_')
                    && let Ok(journal) = journal.parse::<i64>()
                {
                    let last = read.entry(root.to_string()).or_default();
                    *last = (*last).max(journal);
                }
                continue;
            }
            let content = open_content(secret, &content);
            if rest.starts_with('$')
                && let Some(id) = content.get("id").and_then(|i| i.parse::<i64>().ok())
            {
                issues.push((rest.to_string(), id));
            }
        }
        let mut taken = 0;
        for (root, id) in issues {
            let last = read.get(&root).copied().unwrap_or_default();
            match self.issues.take(&*self.host, &root, id, last).await {
                Ok(true) => taken += 1,
                Ok(false) => {}
                Err(error) => warn!(%error, issue = id, "cannot take over a Honoroit issue"),
            }
        }
        if taken > 0 {
            info!(source = %self.id, issues = taken, "took over Honoroit's Redmine issues");
        }
    }

    async fn run_action(
        &self,
        cx: &ActionContext<'_>,
        action: RedmineAction,
    ) -> Result<String, Failure> {
        let project = &self.config.project;
        match action {
            RedmineAction::Issue {
                request,
                subject,
                description,
            } => {
                let issues = &self.issues;
                if let Some(id) = issues
                    .of_request(cx.host, &request)
                    .await?
                    .and_then(|i| i.issue_id)
                {
                    return Ok(format!("skipped: issue #{id} exists"));
                }
                // An earlier try may have made it and failed before recording it.
                let before = if cx.row.attempts > 1 {
                    self.api.made_before(project, &subject).await?
                } else {
                    None
                };
                let id = match before {
                    Some(id) => id,
                    None => {
                        let tracker = self.config.tracker_id;
                        let status = self.config.statuses.new;
                        self.api
                            .create(project, tracker, status, &subject, &description)
                            .await?
                    }
                };
                issues.set_issue(cx.host, &request, id).await?;
                Ok(format!("issue #{id}"))
            }
            RedmineAction::Note {
                request,
                notes,
                status,
                file,
            } => {
                let issue = self.issue_of(&request).await?;
                let me = self.me().await?;
                if cx.row.attempts > 1 && self.api.wrote(issue, me, &notes, 0).await? {
                    return Ok(format!("skipped: written on #{issue} before"));
                }
                let mut notes = notes;
                let files = match file {
                    Some(file) => {
                        let data = cx.matrix.download(&file.content).await?;
                        let (name, content_type) = (&file.name, &file.content_type);
                        self.uploaded(name, content_type, data, &mut notes).await?
                    }
                    None => Vec::new(),
                };
                self.api.note(issue, &notes, status, &files, false).await?;
                Ok(format!("note on #{issue}"))
            }
            RedmineAction::Close { request, notes } => {
                let issue = self.issue_of(&request).await?;
                if self.api.is_closed(issue).await? {
                    self.issues.set_closed(cx.host, &request).await?;
                    return Ok(format!("skipped: #{issue} is closed"));
                }
                let done = self.done().await?;
                self.api.note(issue, &notes, done, &[], false).await?;
                self.issues.set_closed(cx.host, &request).await?;
                Ok(format!("closed #{issue}"))
            }
        }
    }

    /// A file uploaded to Redmine, to attach to the note `notes`; one Redmine refuses (over
    /// its size limit, say) is named in the note instead, which is written all the same.
    async fn uploaded(
        &self,
        name: &str,
        content_type: &str,
        data: Vec<u8>,
        notes: &mut String,
    ) -> Result<Vec<Upload>, Failure> {
        match self.api.upload(name, content_type, data).await {
            Ok(upload) => Ok(vec![upload]),
            Err(Failure::Permanent(why)) => {
                notes.push_str(&format!("\n\n(file {name} not attached: {why})"));
                Ok(Vec::new())
            }
            Err(other) => Err(other),
        }
    }

    /// One look at what changed in Redmine since the last: notes, status changes and closes
    /// by others delivered to the helpdesk; how many.
    async fn poll(&self) -> Result<usize, Failure> {
        let me = self.me().await?;
        let key = cursor_key(&self.id);
        let Some(since) = self.host.cursor(&key).await? else {
            // The first look starts an hour back (clocks differ): an issue is read only
            // once a request has it, and then only its journals not read yet.
            let start = redmine_time(now_ms() - FIRST_LOOK_BACK_MS);
            self.host.set_cursor(&key, &start).await?;
            return Ok(0);
        };
        let mut delivered = 0;
        let listed = self.api.changed(&self.config.project, &since).await?;
        // Every change made before this is in the list (Redmine's times have whole seconds,
        // and a change is written a moment after its time): the next poll starts there.
        let settled = redmine_time(self.api.now_ms() - SETTLE_MS);
        for changed in listed {
            let Some(issue) = self.issues.of_issue(&*self.host, changed.id).await? else {
                // Read again at each poll that lists it (the overlap): a second change in
                // the same second as the last read one has the same `updated_on`. A read
                // finds only journals it has not read.
                if self.wants_room(&changed, me).await? {
                    let event = TicketEvent::new(changed.id.to_string(), EventKind::Updated);
                    let key = format!("changed:{}:{}:{since}", changed.id, changed.updated_on);
                    self.host.deliver(&self.id, &key, &[event]).await?;
                    delivered += 1;
                }
                continue;
            };
            // Taken over and not heard of since: read once its request is.
            if issue.closed || issue.request.starts_with(TAKEN) {
                continue;
            }
            let place = format!("Redmine issue #{}", changed.id);
            for journal in self.api.journals(changed.id).await? {
                if journal.id <= issue.last_journal {
                    continue;
                }
                if journal.user_id != me {
                    let key = format!("{}:journal:{}", self.id, journal.id);
                    let mut events = Vec::new();
                    if !journal.notes.trim().is_empty() || !journal.files.is_empty() {
                        let files = journal
                            .files
                            .iter()
                            .map(|(id, name)| FeedFile {
                                name: name.clone(),
                                content_type: String::new(),
                                size: 0,
                                content: json!({ "attachment": id }),
                                source: Some(self.id.clone()),
                            })
                            .collect();
                        let note = Feed::Note {
                            author: journal.user.clone(),
                            place: place.clone(),
                            text: journal.notes.clone(),
                            public: !journal.private,
                            files,
                        };
                        events.push(note.event(&issue.request));
                    }
                    if let Some(id) = journal.status {
                        let status = self.status(id).await?;
                        let feed = match status {
                            Some(s) if s.closed => Feed::Close {
                                author: journal.user.clone(),
                                place: place.clone(),
                                key: key.clone(),
                            },
                            _ => Feed::Notice {
                                text: format!(
                                    "{} set {place} to {}.",
                                    journal.user,
                                    status.map(|s| s.name).unwrap_or_else(|| id.to_string())
                                ),
                            },
                        };
                        events.push(feed.event(&issue.request));
                    }
                    if !events.is_empty() {
                        self.host.deliver(&self.helpdesk, &key, &events).await?;
                        delivered += 1;
                    }
                }
                self.issues
                    .set_read(&*self.host, changed.id, journal.id)
                    .await?;
            }
        }
        if settled > since {
            self.host.set_cursor(&key, &settled).await?;
        }
        Ok(delivered)
    }
}

#[async_trait]
impl Connector for Source {
    /// The helpdesk's messages and closes; anything else is of an issue's room.
    async fn plan(&self, event: &TicketEvent) -> Result<Option<Vec<Queued>>, DbError> {
        match (Feed::of(event), &self.rooms) {
            (Some(feed), _) => self.plan_feed(event, feed).await.map(Some),
            (None, Some(rooms)) => rooms.plan(event),
            (None, None) => Ok(Some(Vec::new())),
        }
    }

    async fn execute(&self, cx: &ActionContext<'_>, action: &Value) -> Result<String, Failure> {
        let kind = action["type"].as_str().unwrap_or_default();
        if let (false, Some(rooms)) = (KINDS[..REQUEST_KINDS].contains(&kind), &self.rooms) {
            return rooms.execute(self, cx, action).await;
        }
        let action = RedmineAction::deserialize(action)
            .map_err(|e| Failure::Permanent(format!("stored action does not parse: {e}")))?;
        self.run_action(cx, action).await
    }

    fn listener(&self) -> Option<&dyn Listener> {
        Some(self)
    }

    /// An attachment of an issue (`{"attachment": <id>}`), for the helpdesk to post.
    async fn file(&self, reference: &Value) -> Result<(Vec<u8>, String), Failure> {
        let id = reference["attachment"]
            .as_i64()
            .ok_or_else(|| Failure::Permanent(format!("not an attachment: {reference}")))?;
        self.api.attachment(id, MAX_FILE).await
    }

    async fn run(self: Arc<Self>) {
        let age = async {
            if let (Some(rooms), Some(config)) = (&self.rooms, &self.config.rooms) {
                rooms.age_loop(&config.room).await;
            }
        };
        tokio::join!(self.poll_loop(), age);
    }
}

impl Source {
    /// Polls Redmine every `poll_seconds`, for good.
    async fn poll_loop(&self) {
        let every = Duration::from_secs_f64(self.config.poll_seconds);
        let mut failing = false;
        loop {
            let began = Instant::now();
            match self.poll().await {
                Ok(n) => {
                    self.polls
                        .with_label_values(&[&self.id])
                        .observe(began.elapsed().as_secs_f64());
                    if failing {
                        info!(source = %self.id, "Redmine answers again");
                    }
                    failing = false;
                    if n > 0 {
                        info!(source = %self.id, changes = n, "Redmine changes passed on");
                    }
                }
                Err(error) => {
                    if !failing {
                        warn!(source = %self.id, error = %error.into_message(), "cannot read Redmine's changes; trying again");
                    }
                    failing = true;
                }
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// It hears what members say in its issues' rooms, and takes over what Honoroit kept in
/// the bot's account data at the first sync.
#[async_trait]
impl Listener for Source {
    fn takes_invite(&self, _room: &str, _inviter: Option<&str>) -> bool {
        false
    }

    fn know_bot(&self, user_id: &str) {
        if let Some(rooms) = &self.rooms {
            rooms.know_bot(user_id);
        }
    }

    async fn claims(&self, room: &dyn SyncRoom) -> Result<bool, DbError> {
        match &self.rooms {
            Some(rooms) => rooms.claims(room).await,
            None => Ok(false),
        }
    }

    async fn heard(&self, room: &dyn SyncRoom, events: &[Value]) -> Result<bool, DbError> {
        match &self.rooms {
            Some(rooms) => rooms.heard(room, events).await,
            None => Ok(true),
        }
    }

    async fn first_sync(&self, sync: &dyn FirstSync) {
        self.take_over_honoroit(sync).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_connector::Kind;
    use switchboard_connector::testing::TestHost;

    async fn source() -> (Arc<dyn Connector>, Arc<TestHost>) {
        let kind = crate::Redmine;
        let host = Arc::new(
            TestHost::new(kind.migrations(switchboard_connector::Dialect::Sqlite))
                .await
                .expect("host"),
        );
        let info = switchboard_connector::SourceInfo {
            id: "issues".into(),
            ..Default::default()
        };
        let mut report = |k: &str, m: String| panic!("{k}: {m}");
        let section = json!({"url": "http://127.0.0.1:9", "api_key": "k", "project": "desk",
                             "helpdesk": "help", "statuses": {"customer_wrote": 1, "operator_wrote": 2}});
        let checked = kind
            .check(
                &info,
                Some(&section),
                &mut switchboard_connector::Checker::new("issues", "redmine", &mut report),
            )
            .expect("valid");
        let built = kind.build(&info, &checked, host.clone()).expect("built");
        (built, host)
    }

    fn message(from: Side, text: &str) -> TicketEvent {
        let feed = Feed::Message {
            from,
            author: "@alice:example.org".into(),
            name: Some("Alice".into()),
            text: text.into(),
            file: None,
        };
        let mut event = feed.event("7");
        event.title = Some("1st request from example.org (1st by Alice)".into());
        event.url = Some("https://matrix.to/#/!ops:example.org/$root".into());
        event.participants = vec!["@alice:example.org".into()];
        event
    }

    #[tokio::test]
    async fn messages_and_closes_are_planned_as_writes_to_the_issue() {
        let (source, host) = source().await;
        let planned = source
            .plan(&message(Side::Customer, "Help"))
            .await
            .expect("plan")
            .expect("own");
        let kinds: Vec<&str> = planned.iter().map(Queued::kind).collect();
        assert_eq!(kinds, ["redmine_issue", "redmine_note"]);
        assert!(planned.iter().all(|q| q.lane == "request:7"));
        let issue = &planned[0].action;
        assert_eq!(
            issue["subject"],
            "1st request from example.org (1st by Alice)"
        );
        assert_eq!(
            issue["description"],
            "Sender: `@alice:example.org` (Matrix)\n\nMatrix thread: \
             [https://matrix.to/#/!ops:example.org/$root](https://matrix.to/#/!ops:example.org/$root)"
        );
        let note = &planned[1].action;
        assert_eq!(
            note["notes"],
            "_Alice (@alice:example.org) (customer)_\n\nHelp"
        );
        assert_eq!(note["status"], 1);

        // Until the issue exists, each message asks for it again (the first makes it).
        let again = source
            .plan(&message(Side::Operator, "On it"))
            .await
            .expect("plan")
            .expect("own");
        let kinds: Vec<&str> = again.iter().map(Queued::kind).collect();
        assert_eq!(kinds, ["redmine_issue", "redmine_note"]);
        assert_eq!(again[1].action["status"], 2);

        let closed = |by: &str| Feed::Closed {
            text: Some("Done.".into()),
            by: Some(by.into()),
        };
        let by_command = source
            .plan(&closed("$command").event("7"))
            .await
            .expect("plan")
            .expect("own");
        assert_eq!(by_command.len(), 1);
        assert_eq!(by_command[0].action["type"], "redmine_close");
        assert_eq!(by_command[0].action["notes"], "Done.");
        let by_redmine = source
            .plan(&closed("issues:journal:4").event("7"))
            .await
            .expect("plan")
            .expect("own");
        assert!(by_redmine.is_empty(), "closed in Redmine already");
        // A request whose issue was taken over, closed before anything else was heard.
        let issues = Issues::new("issues");
        issues.take(&*host, "$old", 40, 0).await.expect("taken");
        let mut close = closed("$command").event("9");
        close.url = Some("https://matrix.to/#/!ops:example.org/$old".into());
        let taken = source.plan(&close).await.expect("plan").expect("own");
        assert_eq!(taken.len(), 1, "{taken:?}");
        assert_eq!(taken[0].action["type"], "redmine_close");
        let unknown = source
            .plan(&closed("$command").event("8"))
            .await
            .expect("plan")
            .expect("own");
        assert!(unknown.is_empty(), "a request without an issue");
    }
}
