//! The `otobo` kind: its config section checked (the password read), its table, its actions,
//! and the running source it builds.

use std::sync::Arc;

use switchboard_connector::{Checked, Checker, Connector, Dialect, Host, Kind, Secret, SourceInfo};
use switchboard_ticket_rooms::kind::{SecretKey, check_section};

use crate::OtoboConfig;
use crate::source::Source;

/// The kind `otobo`.
pub struct Otobo;

/// A checked config with its password read.
struct Config {
    config: OtoboConfig,
    password: Secret,
}

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl Kind for Otobo {
    fn name(&self) -> &'static str {
        "otobo"
    }

    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        generator.subschema_for::<OtoboConfig>()
    }

    fn check(
        &self,
        source: &SourceInfo,
        section: Option<&serde_json::Value>,
        check: &mut Checker<'_>,
    ) -> Option<Checked> {
        let secret = SecretKey {
            key: "password",
            given: |c: &OtoboConfig| (c.password.as_deref(), c.password_file.as_deref()),
            missing: "the agent's password (`password` or `password_file`) is required",
        };
        let (config, password) = check_section(
            self.name(),
            source,
            section,
            check,
            OtoboConfig::problems,
            secret,
            Some(
                "the invoker's webhooks must be authenticated (they are not signed): give \
                     `basic_auth` (the transport's BasicAuth) or `path_secret`",
            ),
        )?;
        Some(Box::new(Config { config, password }))
    }

    fn action_kinds(&self) -> &'static [&'static str] {
        &[
            "otobo_ticket",
            "otobo_owner",
            "otobo_transcript",
            "otobo_write",
            "otobo_mode",
            "otobo_age",
            "otobo_invite",
            "otobo_file",
        ]
    }

    fn migrations(&self, dialect: Dialect) -> Option<&'static sqlx::migrate::Migrator> {
        Some(match dialect {
            Dialect::Sqlite => &SQLITE,
            Dialect::Postgres => &POSTGRES,
        })
    }

    fn listens(&self, _checked: &Checked) -> bool {
        true
    }

    fn build(
        &self,
        source: &SourceInfo,
        checked: &Checked,
        host: Arc<dyn Host>,
    ) -> Result<Arc<dyn Connector>, String> {
        let config = checked
            .downcast_ref::<Config>()
            .ok_or("not a checked otobo config")?;
        Ok(Arc::new(Source::new(
            &source.id,
            config.config.clone(),
            config.password.clone(),
            host,
            &source.bot,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(section: serde_json::Value, authenticated: bool) -> Result<Checked, Vec<String>> {
        let info = SourceInfo {
            id: "znuny".into(),
            authenticated,
            bot: "@bot:example.org".into(),
            ..Default::default()
        };
        let mut problems = Vec::new();
        let mut report = |k: &str, _: String| problems.push(k.to_string());
        let checked = Otobo.check(
            &info,
            Some(&section),
            &mut Checker::new("znuny", "otobo", &mut report),
        );
        checked.ok_or(problems)
    }

    #[test]
    fn sections_are_checked_with_their_keys() {
        let ok = json!({"url": "https://znuny.example.org/znuny/nph-genericinterface.pl/Webservice/GenericTicketConnectorREST",
                        "user": "switchboard", "password": "secret"});
        assert!(check(ok.clone(), true).is_ok());
        assert_eq!(
            check(ok, false).err().unwrap_or_default(),
            ["sources.znuny.signature"]
        );
        let bad = json!({"url": "znuny", "user": "", "room": {"name": "{{"},
                         "link": {"field": "Matrix Room", "base": "switchboard"},
                         "people": {"users": {"jdoe": "jdoe"}},
                         "select": {"on_demand": true, "fields": {"colour": ["red"]}}});
        let problems = check(bad, true).expect_err("invalid");
        for key in [
            "url",
            "user",
            "room.name",
            "link.field",
            "link.base",
            "people.users.jdoe",
            "select.on_demand",
            "select.fields.colour",
            "password",
        ] {
            let key = format!("sources.znuny.otobo.{key}");
            assert!(problems.contains(&key), "{key} in {problems:?}");
        }
    }
}
