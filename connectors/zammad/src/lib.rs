//! Zammad source: a Matrix room per ticket, both ways. A Zammad trigger's webhook names a
//! changed ticket; the ticket and its articles, read through Zammad's REST API, are what
//! the room shows. What members write in the room becomes a note in the ticket.

mod api;
mod hook;
mod kind;
mod source;
mod ticket;

pub use kind::Zammad;
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use switchboard_connector::SourceInfo;
use switchboard_ticket_rooms::{Comments, PeopleConfig, RoomConfig, Select};

/// Configuration of a Zammad source (`kind = "zammad"`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ZammadConfig {
    /// Zammad's address (`https://zammad.example.org`); the REST API is at
    /// `<url>/api/v1`.
    pub url: String,
    /// An access token of the Zammad user Switchboard reads and writes as (Profile, Token
    /// Access; permission `ticket.agent`, and `admin.user` to write as other agents).
    pub token: Option<String>,
    /// A file holding the token instead.
    pub token_file: Option<std::path::PathBuf>,
    /// Groups whose tickets get a room. Empty: every group the user can see.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Which of those tickets get a room: by `priority`, `state`, `tags`, `owner`,
    /// `customer` or any attribute of the ticket, custom ones included
    /// (`"fields.<attribute>"`), or only on demand through the "open chat" link. Default:
    /// all.
    #[serde(default)]
    pub select: Select,
    /// The ticket's room. Its templates see `system` (`Zammad`), `ticket.id`,
    /// `ticket.number`, `ticket.title`, `ticket.queue` (the group), `ticket.status` (the
    /// state), `ticket.priority`, `ticket.owner`, `ticket.customer`, `ticket.fields` (its
    /// attributes) and `ticket.url`.
    #[serde(default)]
    pub room: RoomConfig,
    /// How Zammad's users (by login) become Matrix users; `invite` takes any of `owner`,
    /// `customer`, `agents` and `cc` (default: all).
    #[serde(default)]
    pub people: PeopleConfig<ZammadRole>,
    /// The agents invited into the rooms of a group's tickets, by group name: their Zammad
    /// logins or e-mail addresses.
    #[serde(default)]
    pub agents: BTreeMap<String, Vec<String>>,
    /// Internal articles in the room: `mark` posts them marked as internal, `hide` leaves
    /// them out.
    #[serde(default)]
    pub comments: Comments,
    /// Whether the notes written from the room are internal (seen by agents only).
    #[serde(default = "default_true")]
    pub internal: bool,
    /// Whether a note is written as the room member who said it (Zammad's `From` header)
    /// when `people.users` names their Zammad login and Zammad lets Switchboard's user
    /// write for them; otherwise it is Switchboard's user's, naming them.
    #[serde(default = "default_true")]
    pub as_member: bool,
    /// Whether closing the ticket writes the room's conversation (since the last time)
    /// into the ticket, as one note.
    #[serde(default = "default_true")]
    pub transcript: bool,
    /// States that close the ticket's room (compared case-insensitively).
    #[serde(default = "default_closed")]
    pub closed_states: Vec<String>,
}

/// One of a Zammad ticket's roles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ZammadRole {
    #[default]
    Owner,
    Customer,
    /// The group's agents (`agents`).
    Agents,
    /// Addresses e-mail articles were copied to.
    Cc,
}

/// The ticket fields `select.fields` takes, besides the ticket's own attributes.
const SELECTABLE: &[&str] = &[
    "priority", "state", "status", "tags", "owner", "customer", "title",
];

fn default_closed() -> Vec<String> {
    ["closed", "merged", "removed"].map(String::from).to_vec()
}

fn default_true() -> bool {
    true
}

impl ZammadConfig {
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
        problems
    }

    /// The REST API's address.
    pub fn api(&self) -> String {
        format!("{}/api/v1", self.url.trim_end_matches('/'))
    }
}
