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

/// How the ticket system's people (owner, agents, customers, ...) become Matrix users:
/// the first means that gives a Matrix ID wins; someone none maps is named in the room.
/// `R` is the source's roles.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PeopleConfig<R> {
    /// Logins, user names or e-mail addresses, and their Matrix IDs.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// A Matrix ID made from the person, e.g. `@{{ name }}:example.org`; it sees `name`,
    /// `email`, `email_local` (before the `@`), `email_domain` and `real_name`. A result
    /// that is not a Matrix ID counts as no answer.
    #[serde(default)]
    pub template: Option<String>,
    /// Which of the ticket's people are invited, by role. Default: the source's.
    #[serde(default)]
    pub invite: Option<Vec<R>>,
}

impl<R> Default for PeopleConfig<R> {
    fn default() -> Self {
        PeopleConfig {
            users: BTreeMap::new(),
            template: None,
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

    /// The Matrix ID of a person by the configured means, in order: the table (by name,
    /// then address), then the template; `None` when neither gives a Matrix ID.
    pub fn matrix_id(&self, person: &Person) -> Option<String> {
        for key in [&person.name, &person.email] {
            if key.is_empty() {
                continue;
            }
            let found = self
                .users
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.clone());
            if found.is_some() {
                return found;
            }
        }
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
