//! The `redmine` kind: its config section checked (the API key read), the helpdesk it
//! follows, its table, its actions, and the running source it builds.

use std::sync::Arc;

use switchboard_connector::{Checked, Checker, Connector, Dialect, Host, Kind, Secret, SourceInfo};

use switchboard_ticket_rooms::kind::{SecretKey, check_section};

use crate::RedmineConfig;
use crate::source::{KINDS, Source};

/// The kind `redmine`.
pub struct Redmine;

/// A checked config with its API key read.
struct Config {
    config: RedmineConfig,
    key: Secret,
}

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl Kind for Redmine {
    fn name(&self) -> &'static str {
        "redmine"
    }

    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        generator.subschema_for::<RedmineConfig>()
    }

    fn check(
        &self,
        source: &SourceInfo,
        section: Option<&serde_json::Value>,
        check: &mut Checker<'_>,
    ) -> Option<Checked> {
        let secret = SecretKey {
            key: "api_key",
            given: |c: &RedmineConfig| (c.api_key.as_deref(), c.api_key_file.as_deref()),
            missing: "an API key (`api_key` or `api_key_file`) is required",
        };
        // No webhooks: Redmine is polled.
        let (config, key) = check_section(
            self.name(),
            source,
            section,
            check,
            RedmineConfig::problems,
            secret,
            None,
        )?;
        Some(Box::new(Config { config, key }))
    }

    fn follows(&self, checked: &Checked) -> Vec<(String, String)> {
        checked
            .downcast_ref::<Config>()
            .and_then(|c| c.config.helpdesk.clone())
            .map(|h| vec![("helpdesk".to_string(), h)])
            .unwrap_or_default()
    }

    fn action_kinds(&self) -> &'static [&'static str] {
        KINDS
    }

    fn migrations(&self, dialect: Dialect) -> Option<&'static sqlx::migrate::Migrator> {
        Some(match dialect {
            Dialect::Sqlite => &SQLITE,
            Dialect::Postgres => &POSTGRES,
        })
    }

    /// Its issues' rooms, and at the first sync what Honoroit kept in the account data.
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
            .ok_or("not a checked redmine config")?;
        Ok(Arc::new(Source::new(
            &source.id,
            config.config.clone(),
            config.key.clone(),
            host,
            &source.bot,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(section: serde_json::Value) -> Result<Checked, Vec<String>> {
        let info = SourceInfo {
            id: "redmine".into(),
            bot: "@bot:example.org".into(),
            ..Default::default()
        };
        let mut problems = Vec::new();
        let mut report = |k: &str, _: String| problems.push(k.to_string());
        let checked = Redmine.check(
            &info,
            Some(&section),
            &mut Checker::new("redmine", "redmine", &mut report),
        );
        checked.ok_or(problems)
    }

    #[test]
    fn sections_are_checked_with_their_keys() {
        let ok = json!({"url": "https://redmine.example.org", "api_key": "abc",
                        "project": "helpdesk", "helpdesk": "support"});
        let checked = check(ok).expect("valid");
        assert_eq!(
            Redmine.follows(&checked),
            [("helpdesk".to_string(), "support".to_string())]
        );
        let problems = check(json!({"url": "x", "project": "p"})).expect_err("invalid");
        for key in ["url", "helpdesk", "api_key"] {
            let key = format!("sources.redmine.redmine.{key}");
            assert!(problems.contains(&key), "{key} in {problems:?}");
        }
    }
}
