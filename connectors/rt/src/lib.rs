//! Request Tracker source: a Matrix room per ticket, both ways. RT's scrip (shipped in
//! `scrip/`) names each changed ticket in a webhook; the ticket's history, read through
//! REST2, is what the room shows. What members write in the room goes back to the ticket.

mod api;
mod hook;
mod kind;
mod source;
mod ticket;

pub use kind::RequestTracker;
use schemars::JsonSchema;
use serde::Deserialize;
use switchboard_connector::SourceInfo;
use switchboard_ticket_rooms::{Comments, PeopleConfig, RoomConfig, Select};

/// Configuration of a Request Tracker source (`kind = "request_tracker"`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RtConfig {
    /// RT's address, as in its web interface (`https://rt.example.org`); REST2 is at
    /// `<url>/REST/2.0`.
    pub url: String,
    /// A REST2 auth token of the RT user Switchboard reads and writes as.
    pub token: Option<String>,
    /// A file holding the token instead.
    pub token_file: Option<std::path::PathBuf>,
    /// That user's name. What it writes in RT never comes back into the room. Default: the
    /// token's owner, asked of RT at start.
    pub user: Option<String>,
    /// Queues whose tickets get a room. Empty: every queue the user can see.
    #[serde(default)]
    pub queues: Vec<String>,
    /// Which of those tickets get a room: by `priority`, `status`, `owner` or a custom field
    /// (`"fields.<name>"`), or only on demand through the "open chat" link. Default: all.
    #[serde(default)]
    pub select: Select,
    /// The ticket's room. Its templates see `system` (`RT`), `ticket.id` (also
    /// `ticket.number`), `ticket.subject` (also `ticket.title`), `ticket.queue`,
    /// `ticket.status`, `ticket.owner`, `ticket.priority`, `ticket.fields` (custom fields by
    /// name) and `ticket.url`.
    #[serde(default)]
    pub room: RoomConfig,
    /// How RT's people (by RT user name) become Matrix users; `invite` takes any of
    /// `owner`, `admin_cc`, `requestors`, `cc` (default: all).
    #[serde(default)]
    pub people: PeopleConfig<Role>,
    /// Internal comments in the room: `mark` posts them marked as internal, `hide` leaves
    /// them out.
    #[serde(default)]
    pub comments: Comments,
    /// What members write in the room becomes in the ticket: an internal `comment`, or a
    /// `reply` to its requestors.
    #[serde(default)]
    pub write_back: WriteBack,
    /// Whether closing the ticket writes the room's conversation (since the last time)
    /// into the ticket, as one comment.
    #[serde(default = "default_true")]
    pub transcript: bool,
    /// Statuses that close the ticket's room (compared case-insensitively).
    #[serde(default = "default_closed")]
    pub closed_statuses: Vec<String>,
    /// How often tickets changed since the last look are read, in minutes, so that a webhook
    /// RT could not deliver is not lost (RT never retries one). 0: only at start.
    #[serde(default = "default_catch_up")]
    pub catch_up_minutes: f64,
}

/// One of a ticket's roles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Owner,
    AdminCc,
    Requestors,
    Cc,
}

/// What a room message becomes in the ticket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WriteBack {
    #[default]
    Comment,
    Reply,
}

/// The ticket fields `select.fields` takes, besides custom fields.
const SELECTABLE: &[&str] = &["priority", "status", "owner", "subject", "title"];

fn default_closed() -> Vec<String> {
    ["resolved", "rejected", "deleted"]
        .map(String::from)
        .to_vec()
}

fn default_true() -> bool {
    true
}

fn default_catch_up() -> f64 {
    5.0
}

impl RtConfig {
    /// Problems a schema cannot express, each with its key.
    pub fn problems(&self, source: &SourceInfo) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => problems.push(("url".into(), "must be an http(s) URL".into())),
        }
        problems.extend(self.room.problems());
        problems.extend(self.people.problems());
        problems.extend(self.select.problems(SELECTABLE, true, source.link_create));
        if !self.catch_up_minutes.is_finite() || self.catch_up_minutes < 0.0 {
            problems.push(("catch_up_minutes".into(), "must be 0 or more".into()));
        }
        problems
    }

    /// REST2's address.
    pub fn rest2(&self) -> String {
        format!("{}/REST/2.0", self.url.trim_end_matches('/'))
    }
}
