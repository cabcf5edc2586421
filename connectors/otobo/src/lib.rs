//! OTOBO and Znuny source: a Matrix room per ticket, both ways. The GenericInterface's
//! invoker names a changed ticket in a webhook; the ticket and its articles, read through
//! the GenericTicketConnector REST web service, are what the room shows. What members write
//! in the room becomes an article of the ticket.

mod api;
mod hook;
mod kind;
mod source;
mod ticket;

pub use kind::Otobo;
use schemars::JsonSchema;
use serde::Deserialize;
use switchboard_connector::SourceInfo;
use switchboard_ticket_rooms::{Comments, PeopleConfig, RoomConfig, Select};

/// Configuration of an OTOBO or Znuny source (`kind = "otobo"`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtoboConfig {
    /// The GenericTicketConnectorREST web service's address, e.g.
    /// `https://otobo.example.org/otobo/nph-genericinterface.pl/Webservice/GenericTicketConnectorREST`.
    pub url: String,
    /// The agent Switchboard reads and writes as (its login).
    pub user: String,
    /// That agent's password.
    pub password: Option<String>,
    /// A file holding the password instead.
    pub password_file: Option<std::path::PathBuf>,
    /// The system's name in rooms and templates (`system`): `OTOBO`, `Znuny`, ...
    #[serde(default = "default_system")]
    pub system: String,
    /// The agent interface's address, for links to a ticket (`.../index.pl`). Default:
    /// `url` with `nph-genericinterface.pl/...` replaced by `index.pl`.
    pub web_url: Option<String>,
    /// Queues whose tickets get a room. Empty: every queue the agent can see.
    #[serde(default)]
    pub queues: Vec<String>,
    /// Which of those tickets get a room: by `priority`, `state`, `type`, `service`,
    /// `owner`, `responsible`, `customer` or a dynamic field (`"fields.<name>"`), or only on
    /// demand through the "open chat" link. Default: all.
    #[serde(default)]
    pub select: Select,
    /// The ticket's room. Its templates see `system`, `ticket.id`, `ticket.number`,
    /// `ticket.title`, `ticket.queue`, `ticket.status` (the state), `ticket.priority`,
    /// `ticket.owner`, `ticket.customer`, `ticket.type`, `ticket.service`, `ticket.fields`
    /// (dynamic fields) and `ticket.url`.
    #[serde(default)]
    pub room: RoomConfig,
    /// How agents and customer users (by login) become Matrix users; `invite` takes any of
    /// `owner`, `responsible`, `customer` (default: all).
    #[serde(default)]
    pub people: PeopleConfig<OtoboRole>,
    /// Articles not visible for the customer in the room: `mark` posts them marked as
    /// internal, `hide` leaves them out.
    #[serde(default)]
    pub comments: Comments,
    /// Whether the articles written from the room are visible for the customer.
    #[serde(default)]
    pub visible_for_customer: bool,
    /// Whether closing the ticket writes the room's conversation (since the last time)
    /// into the ticket, as one article.
    #[serde(default = "default_true")]
    pub transcript: bool,
    /// States that close the ticket's room (compared case-insensitively).
    #[serde(default = "default_closed")]
    pub closed_states: Vec<String>,
    /// The link to the ticket's room, answered to Znuny's `Ticket::Generic` invoker so that
    /// it lands in a dynamic field of the ticket.
    pub link: Option<LinkConfig>,
}

/// The room's link in a dynamic field: `<base>/link/<source id>/<ticket id>`, answered as
/// `OTRS_TicketDynamicFieldSet_<field>`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// The dynamic field's name.
    pub field: String,
    /// Switchboard's address as agents' browsers reach it.
    pub base: String,
}

/// One of a ticket's roles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OtoboRole {
    #[default]
    Owner,
    Responsible,
    Customer,
}

/// The ticket fields `select.fields` takes, besides dynamic fields.
const SELECTABLE: &[&str] = &[
    "priority",
    "state",
    "status",
    "type",
    "service",
    "owner",
    "responsible",
    "customer",
    "title",
];

fn default_system() -> String {
    "OTOBO".into()
}

fn default_closed() -> Vec<String> {
    [
        "closed successful",
        "closed unsuccessful",
        "merged",
        "removed",
    ]
    .map(String::from)
    .to_vec()
}

fn default_true() -> bool {
    true
}

impl OtoboConfig {
    /// Problems a schema cannot express, each with its key.
    pub fn problems(&self, source: &SourceInfo) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let http =
            |u: &str| url::Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
        if !http(&self.url) {
            problems.push(("url".into(), "must be an http(s) URL".into()));
        }
        if self.web_url.as_deref().is_some_and(|u| !http(u)) {
            problems.push(("web_url".into(), "must be an http(s) URL".into()));
        }
        if let Some(link) = &self.link {
            if !http(&link.base) {
                problems.push(("link.base".into(), "must be an http(s) URL".into()));
            }
            if link.field.is_empty() || !link.field.chars().all(|c| c.is_ascii_alphanumeric()) {
                problems.push((
                    "link.field".into(),
                    "must be a dynamic field's name (letters and digits)".into(),
                ));
            }
        }
        if self.user.is_empty() {
            problems.push(("user".into(), "must name the agent".into()));
        }
        problems.extend(self.room.problems());
        problems.extend(self.people.problems());
        problems.extend(self.select.problems(SELECTABLE, true, source.link_create));
        problems
    }

    /// The address of a ticket in the agent interface.
    pub fn ticket_url(&self, id: u64) -> String {
        let web = match &self.web_url {
            Some(web) => web.trim_end_matches('/').to_string(),
            None => match self.url.find("nph-genericinterface.pl") {
                Some(at) => format!("{}index.pl", &self.url[..at]),
                None => self.url.trim_end_matches('/').to_string(),
            },
        };
        format!("{web}?Action=AgentTicketZoom;TicketID={id}")
    }
}
