//! Request Tracker source: a Matrix room per ticket, both ways. RT's scrip (shipped in
//! `scrip/`) names each changed ticket in a webhook; the ticket's history, read through
//! REST2, is what the room shows. What members write in the room goes back to the ticket.

mod api;
mod hook;
mod kind;
mod source;
mod tables;
mod ticket;

use std::collections::BTreeMap;

pub use kind::RequestTracker;
use schemars::JsonSchema;
use serde::Deserialize;

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
    /// The ticket's room.
    #[serde(default)]
    pub room: RoomConfig,
    /// How RT's people become Matrix users.
    #[serde(default)]
    pub people: PeopleConfig,
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

/// The room of a ticket. Templates see `ticket.id`, `ticket.subject`, `ticket.queue`,
/// `ticket.status`, `ticket.owner` and `ticket.url`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RoomConfig {
    pub name: String,
    pub topic: String,
    /// Whether the room is end-to-end encrypted.
    pub encrypted: bool,
    /// The room's name once the ticket is closed.
    pub closed_name: String,
    /// The power level a former owner is left with when the ticket's owner changes (the
    /// new owner gets 100).
    pub former_owner_power: i64,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            name: "RT #{{ ticket.id }}: {{ ticket.subject }}".into(),
            topic: "{{ ticket.subject }} · queue {{ ticket.queue }} · {{ ticket.url }}".into(),
            encrypted: true,
            closed_name: "[{{ ticket.status }}] RT #{{ ticket.id }}: {{ ticket.subject }}".into(),
            former_owner_power: 0,
        }
    }
}

/// How an RT user (the owner, an AdminCc, a requestor, a Cc) becomes a Matrix user: the
/// first means that gives a Matrix ID wins; someone none maps is named in the room.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PeopleConfig {
    /// RT user names or e-mail addresses, and their Matrix IDs.
    pub users: BTreeMap<String, String>,
    /// A Matrix ID made from the RT user, e.g. `@{{ name }}:example.org`; it sees `name`,
    /// `email`, `email_local` (before the `@`), `email_domain` and `real_name`. A result
    /// that is not a Matrix ID counts as no answer.
    pub template: Option<String>,
    /// Which of the ticket's people are invited: any of `owner`, `admin_cc`,
    /// `requestors`, `cc`. Default: all.
    pub invite: Option<Vec<Role>>,
}

/// One of a ticket's roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    AdminCc,
    Requestors,
    Cc,
}

/// What happens to internal comments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Comments {
    #[default]
    Mark,
    Hide,
}

/// What a room message becomes in the ticket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WriteBack {
    #[default]
    Comment,
    Reply,
}

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
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => problems.push(("url".into(), "must be an http(s) URL".into())),
        }
        for (key, template) in [
            ("room.name", &self.room.name),
            ("room.topic", &self.room.topic),
            ("room.closed_name", &self.room.closed_name),
        ] {
            if let Err(e) = ticket::check_template(template) {
                problems.push((key.into(), e));
            }
        }
        if let Some(t) = &self.people.template
            && let Err(e) = ticket::check_template(t)
        {
            problems.push(("people.template".into(), e));
        }
        for (who, id) in &self.people.users {
            if !switchboard_connector::is_matrix_user_id(id) {
                problems.push((
                    format!("people.users.{who}"),
                    format!("`{id}` is not a Matrix user ID"),
                ));
            }
        }
        if !self.catch_up_minutes.is_finite() || self.catch_up_minutes < 0.0 {
            problems.push(("catch_up_minutes".into(), "must be 0 or more".into()));
        }
        problems
    }

    /// REST2's address.
    pub fn rest2(&self) -> String {
        format!("{}/REST/2.0", self.url.trim_end_matches('/'))
    }

    fn invites(&self, role: Role) -> bool {
        self.people
            .invite
            .as_ref()
            .is_none_or(|r| r.contains(&role))
    }

    fn closes(&self, status: &str) -> bool {
        self.closed_statuses
            .iter()
            .any(|s| s.eq_ignore_ascii_case(status))
    }
}
