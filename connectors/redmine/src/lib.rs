//! Redmine source: the requests of a Matrix DM helpdesk kept as Redmine issues, both ways,
//! and a Matrix room for each issue chosen, both ways. The helpdesk tells its followers
//! about each message and close (`feed`); this source writes them into the issue as notes,
//! with a status. Redmine has no webhooks: one query per poll finds the issues changed
//! since the last, and only their journals are read; notes and closes written there by
//! anyone but Switchboard's own Redmine user go back to the helpdesk, or into the issue's
//! room (`rooms`, the ticket systems' rooms).

mod api;
mod issues;
mod kind;
mod rooms;
mod source;

pub use kind::Redmine;

use schemars::JsonSchema;
use serde::Deserialize;
use switchboard_connector::SourceInfo;
use switchboard_ticket_rooms::text::check_template;
use switchboard_ticket_rooms::{Comments, PeopleConfig, RoomConfig, Select};

/// Configuration of a Redmine source (`kind = "redmine"`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedmineConfig {
    /// Redmine's address (`https://redmine.example.org`).
    pub url: String,
    /// The API key of the Redmine user Switchboard writes as (*My account*, *API access
    /// key*; REST must be enabled in *Administration*, *Settings*, *API*). What that user
    /// writes never comes back into Matrix: give Switchboard a user of its own.
    pub api_key: Option<String>,
    /// A file holding the API key instead.
    pub api_key_file: Option<std::path::PathBuf>,
    /// The project the issues are in: its identifier (`helpdesk`) or number.
    pub project: String,
    /// The tracker of new issues (its number). Default: the project's first.
    pub tracker_id: Option<u64>,
    /// The `matrix_dm` source whose requests become issues.
    pub helpdesk: Option<String>,
    /// The statuses (their numbers) that requests give their issues.
    #[serde(default)]
    pub statuses: Statuses,
    /// How often Redmine is asked for what changed, in seconds (fractions allowed).
    #[serde(default = "default_poll_seconds")]
    pub poll_seconds: f64,
    /// How the issues and notes read.
    #[serde(default)]
    pub templates: Templates,
    /// A Matrix room for each issue of the project chosen (not the helpdesk's), with notes
    /// both ways. Off unless given.
    pub rooms: Option<Rooms>,
}

/// Rooms per issue, as the ticket systems' rooms.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rooms {
    /// Which of the project's issues get a room: by `tracker`, `status`, `priority`,
    /// `category`, `owner` (the assignee), `author` or a custom field (`"fields.<name>"`),
    /// or only on demand through the "open chat" link. Default: all.
    #[serde(default)]
    pub select: Select,
    /// The issue's room. Its templates see `system` (`Redmine`), `ticket.id` (also
    /// `ticket.number`), `ticket.subject` (also `ticket.title`), `ticket.project` (also
    /// `ticket.queue`), `ticket.tracker`, `ticket.status`, `ticket.priority`,
    /// `ticket.category`, `ticket.owner` (the assignee), `ticket.author`, `ticket.fields`
    /// (custom fields by name) and `ticket.url`.
    #[serde(default)]
    pub room: RoomConfig,
    /// How Redmine's users (by login) become Matrix users (`field`: a user custom field);
    /// `invite` takes any of `assignee`, `author`, `watchers` (default: all).
    #[serde(default)]
    pub people: PeopleConfig<Role>,
    /// Private notes in the room: `mark` posts them marked as internal, `hide` leaves them
    /// out.
    #[serde(default)]
    pub comments: Comments,
    /// What members write in the room becomes in the issue: a `note`, or a `private_note`.
    #[serde(default)]
    pub write_back: WriteBack,
    /// Whether closing the issue writes the room's conversation (since the last time) into
    /// it, as one private note.
    #[serde(default = "default_true")]
    pub transcript: bool,
}

/// One of an issue's people.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Assignee,
    Author,
    Watchers,
}

/// What a room message becomes in the issue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WriteBack {
    #[default]
    Note,
    PrivateNote,
}

fn default_true() -> bool {
    true
}

/// The issue fields `rooms.select.fields` takes, besides custom fields.
const SELECTABLE: &[&str] = &[
    "tracker", "status", "priority", "category", "owner", "author", "subject", "title",
];

/// Statuses by their numbers in Redmine (*Administration*, *Issue statuses*); unset: the
/// issue's status is left as it is (`new`: Redmine's default for the tracker; `done`: the
/// first status Redmine counts as closed).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Statuses {
    /// A new issue's.
    pub new: Option<u64>,
    /// After a customer's message: waiting for an operator.
    pub customer_wrote: Option<u64>,
    /// After an operator's message: waiting for the customer.
    pub operator_wrote: Option<u64>,
    /// When the request is done.
    pub done: Option<u64>,
}

/// Templates (minijinja). `subject` and `description` see `request.title`,
/// `request.customer` (a Matrix ID), `request.link` (the thread's matrix.to link) and
/// `request.id`; `note` sees `author` (a Matrix ID), `name` (a display name, or the ID),
/// `side` (`customer` or `operator`) and `text`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Templates {
    pub subject: String,
    pub description: String,
    pub note: String,
}

impl Default for Templates {
    fn default() -> Self {
        Templates {
            subject: "{{ request.title }}".into(),
            description: "Sender: `{{ request.customer }}` (Matrix)\n\n\
                          {% if request.link %}Matrix thread: [{{ request.link }}]({{ request.link }}){% endif %}"
                .into(),
            note: "_{{ name }} ({{ side }})_\n\n{{ text }}".into(),
        }
    }
}

fn default_poll_seconds() -> f64 {
    60.0
}

impl RedmineConfig {
    /// Problems a schema cannot express, each with its key.
    pub fn problems(&self, source: &SourceInfo) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => problems.push(("url".into(), "must be an http(s) URL".into())),
        }
        if self.project.trim().is_empty() {
            problems.push(("project".into(), "must name a project".into()));
        }
        if self.helpdesk.is_none() && self.rooms.is_none() {
            problems.push((
                "helpdesk".into(),
                "give `helpdesk` (the `matrix_dm` source whose requests become issues), \
                 `rooms` (a room per issue), or both"
                    .into(),
            ));
        }
        if let Some(rooms) = &self.rooms {
            let own = rooms.room.problems().into_iter();
            let people = rooms.people.problems().into_iter();
            let select = rooms.select.problems(SELECTABLE, true, source.link_create);
            problems.extend(
                own.chain(people)
                    .chain(select)
                    .map(|(key, problem)| (format!("rooms.{key}"), problem)),
            );
        }
        if !(self.poll_seconds.is_finite() && self.poll_seconds >= 1.0) {
            problems.push(("poll_seconds".into(), "must be 1 or more".into()));
        }
        for (key, template) in [
            ("subject", &self.templates.subject),
            ("description", &self.templates.description),
            ("note", &self.templates.note),
        ] {
            if let Err(e) = check_template(template) {
                problems.push((format!("templates.{key}"), e));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_problems() {
        let ok: RedmineConfig = serde_json::from_value(serde_json::json!({
            "url": "https://redmine.example.org", "project": "helpdesk", "helpdesk": "support",
        }))
        .expect("a valid config");
        let info = SourceInfo::default();
        assert!(ok.problems(&info).is_empty(), "{:?}", ok.problems(&info));
        assert_eq!(ok.poll_seconds, 60.0);
        assert_eq!(ok.statuses.done, None);
        let bad: RedmineConfig = serde_json::from_value(serde_json::json!({
            "url": "redmine.example.org", "project": " ", "poll_seconds": 0,
            "templates": {"note": "{{ text"},
        }))
        .expect("parses");
        let keys: Vec<String> = bad.problems(&info).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "url",
                "project",
                "helpdesk",
                "poll_seconds",
                "templates.note"
            ]
        );
        // Rooms alone are enough; their tables' problems are named under `rooms`.
        let rooms: RedmineConfig = serde_json::from_value(serde_json::json!({
            "url": "https://redmine.example.org", "project": "support",
            "rooms": {"select": {"fields": {"colour": ["red"], "fields.Chat": ["yes"]},
                                 "on_demand": true},
                      "room": {"name": "{{ ticket.id"}, "people": {"users": {"bob": "bob"}}},
        }))
        .expect("parses");
        let keys: Vec<String> = rooms.problems(&info).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "rooms.room.name",
                "rooms.people.users.bob",
                "rooms.select.on_demand",
                "rooms.select.fields.colour"
            ]
        );
    }
}
