//! A ticket's people, and how each becomes a Matrix user.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

/// Someone in the ticket system.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Person {
    /// Their login or user name.
    pub name: String,
    pub email: String,
    pub real_name: String,
    /// The Matrix ID their record in the ticket system gives (`people.field`); empty when
    /// it gives none.
    pub given: String,
}

/// A person of the ticket: who they are in the ticket system and in Matrix (`None`: no
/// means maps them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub person: Person,
    pub matrix: Option<String>,
}

impl Member {
    /// How the room calls them: their real name, else their name or address.
    pub fn display(&self) -> String {
        if !self.person.real_name.is_empty() {
            self.person.real_name.clone()
        } else {
            self.person.name.clone()
        }
    }

    /// How the room names someone it cannot invite: with their address when it has one.
    pub fn named(&self) -> String {
        match (&self.person.email, self.person.real_name.is_empty()) {
            (email, false) if !email.is_empty() => {
                format!("{} <{email}>", self.person.real_name)
            }
            _ => self.display(),
        }
    }
}

/// A means of finding someone's Matrix ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Means {
    /// Their record in the ticket system (`field`).
    Field,
    /// The `users` table.
    Users,
    /// The homeserver, by e-mail address (`homeserver`).
    Homeserver,
    /// An identity server, by e-mail address (`identity_server`).
    IdentityServer,
    /// The `template`.
    Template,
}

/// The order means are tried in unless `order` says otherwise.
const ORDER: [Means; 5] = [
    Means::Field,
    Means::Users,
    Means::Homeserver,
    Means::IdentityServer,
    Means::Template,
];

/// How the ticket system's people (owner, agents, customers, ...) become Matrix users:
/// the first means that gives a Matrix ID wins; someone none maps is named in the room.
/// `R` is the source's roles.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeopleConfig<R> {
    /// A field of the ticket system's user records that holds their Matrix ID (a user
    /// custom field, a user attribute).
    #[serde(default)]
    pub field: Option<String>,
    /// Logins, user names or e-mail addresses, and their Matrix IDs.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// A Matrix ID made from the person, e.g. `@{{ name }}:example.org`; it sees `name`,
    /// `email`, `email_local` (before the `@`), `email_domain` and `real_name`. A result
    /// that is not a Matrix ID counts as no answer.
    #[serde(default)]
    pub template: Option<String>,
    /// Whether the homeserver is asked for the user with the person's e-mail address
    /// (Synapse's admin API: the bot must be a server admin).
    #[serde(default)]
    pub homeserver: bool,
    /// An identity server asked for the Matrix ID bound to the person's e-mail address
    /// (`https://matrix.org`, say), with the hashed lookup of its v2 API.
    #[serde(default)]
    pub identity_server: Option<String>,
    /// The order the means are tried in, the first answer winning; means not configured
    /// are passed over. Default: `field`, `users`, `homeserver`, `identity_server`,
    /// `template`.
    #[serde(default)]
    pub order: Option<Vec<Means>>,
    /// Which of the ticket's people are invited, by role. Default: the source's.
    #[serde(default)]
    pub invite: Option<Vec<R>>,
}

impl<R> Default for PeopleConfig<R> {
    fn default() -> Self {
        PeopleConfig {
            field: None,
            users: BTreeMap::new(),
            template: None,
            homeserver: false,
            identity_server: None,
            order: None,
            invite: None,
        }
    }
}

impl<R: PartialEq> PeopleConfig<R> {
    /// Problems a schema cannot express, each with its key.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if let Some(t) = &self.template
            && let Err(e) = crate::text::check_template(t)
        {
            problems.push(("people.template".into(), e));
        }
        if let Some(server) = &self.identity_server
            && !url::Url::parse(server).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            problems.push((
                "people.identity_server".into(),
                "must be an http(s) URL".into(),
            ));
        }
        for (who, id) in &self.users {
            if !switchboard_connector::is_matrix_user_id(id) {
                problems.push((
                    format!("people.users.{who}"),
                    format!("`{id}` is not a Matrix user ID"),
                ));
            }
        }
        problems
    }

    /// Whether people of `role` are invited; `default` when `invite` is not given.
    pub fn invites(&self, role: &R, default: bool) -> bool {
        self.invite.as_ref().map_or(default, |r| r.contains(role))
    }

    /// The means in the order they are tried.
    pub fn order(&self) -> Vec<Means> {
        self.order.clone().unwrap_or_else(|| ORDER.to_vec())
    }

    /// The Matrix ID of a person by the configured means that need not ask anyone (the
    /// field, the table, the template), in order; `None` when none gives a Matrix ID.
    /// [`crate::lookup::Lookup`] asks the others too.
    pub fn matrix_id(&self, person: &Person) -> Option<String> {
        self.order()
            .into_iter()
            .find_map(|means| self.matrix_id_by(means, person))
    }

    /// The Matrix ID one means that need not ask anyone gives a person.
    pub fn matrix_id_by(&self, means: Means, person: &Person) -> Option<String> {
        match means {
            Means::Field => {
                let given = person.given.trim();
                (self.field.is_some() && switchboard_connector::is_matrix_user_id(given))
                    .then(|| given.to_string())
            }
            Means::Users => self.by_table(person),
            Means::Template => self.by_template(person),
            Means::Homeserver | Means::IdentityServer => None,
        }
    }

    /// The table's Matrix ID for a person, by name, then address.
    fn by_table(&self, person: &Person) -> Option<String> {
        [&person.name, &person.email]
            .into_iter()
            .filter(|key| !key.is_empty())
            .find_map(|key| {
                self.users
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(_, v)| v.clone())
            })
    }

    /// The template's Matrix ID for a person, if it makes a valid one.
    fn by_template(&self, person: &Person) -> Option<String> {
        let template = self.template.as_ref()?;
        let (local, domain) = person.email.split_once('@').unwrap_or(("", ""));
        let id = crate::text::render(
            template,
            &json!({"name": person.name, "email": person.email, "email_local": local,
                    "email_domain": domain, "real_name": person.real_name}),
        );
        switchboard_connector::is_matrix_user_id(&id).then_some(id)
    }

    /// The name or address the table gives a Matrix user, for writing as them.
    pub fn name_of(&self, matrix: &str) -> Option<&str> {
        self.users
            .iter()
            .find(|(_, v)| v.as_str() == matrix)
            .map(|(k, _)| k.as_str())
    }

    /// A person with their Matrix ID.
    pub fn member(&self, person: Person) -> Member {
        let matrix = self.matrix_id(&person);
        Member { person, matrix }
    }
}
