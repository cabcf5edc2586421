//! The `request_tracker` kind: its config section checked (the token read), its table, its
//! actions, and the running source it builds.

use std::sync::Arc;

use switchboard_connector::{Checked, Checker, Connector, Dialect, Host, Kind, Secret, SourceInfo};
use switchboard_ticket_rooms::kind::{SecretKey, check_section};

use crate::RtConfig;
use crate::source::Source;

/// The kind `request_tracker`.
pub struct RequestTracker;

/// A checked config with its token read.
struct Config {
    config: RtConfig,
    token: Secret,
}

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl Kind for RequestTracker {
    fn name(&self) -> &'static str {
        "request_tracker"
    }

    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        generator.subschema_for::<RtConfig>()
    }

    fn check(
        &self,
        source: &SourceInfo,
        section: Option<&serde_json::Value>,
        check: &mut Checker<'_>,
    ) -> Option<Checked> {
        let secret = SecretKey {
            key: "token",
            given: |c: &RtConfig| (c.token.as_deref(), c.token_file.as_deref()),
            missing: "a REST2 token (`token` or `token_file`) is required",
        };
        let (config, token) = check_section(
            self.name(),
            source,
            section,
            check,
            RtConfig::problems,
            secret,
            Some(
                "RT's webhooks must be authenticated: give `signature` (the scrip's secret), \
                     `path_secret` or `basic_auth`",
            ),
        )?;
        Some(Box::new(Config { config, token }))
    }

    fn action_kinds(&self) -> &'static [&'static str] {
        &[
            "rt_ticket",
            "rt_owner",
            "rt_transcript",
            "rt_write",
            "rt_mode",
            "rt_age",
            "rt_invite",
            "rt_file",
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
            .ok_or("not a checked request_tracker config")?;
        Ok(Arc::new(Source::new(
            &source.id,
            config.config.clone(),
            config.token.clone(),
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
            id: "rt".into(),
            authenticated,
            bot: "@bot:example.org".into(),
            ..Default::default()
        };
        let mut problems = Vec::new();
        let mut report = |k: &str, _: String| problems.push(k.to_string());
        let checked = RequestTracker.check(
            &info,
            Some(&section),
            &mut Checker::new("rt", "request_tracker", &mut report),
        );
        checked.ok_or(problems)
    }

    #[test]
    fn sections_are_checked_with_their_keys() {
        let ok = json!({"url": "https://rt.example.org", "token": "1-2-abc"});
        assert!(check(ok.clone(), true).is_ok());
        assert_eq!(
            check(ok, false).err().unwrap_or_default(),
            ["sources.rt.signature"]
        );
        let bad = json!({"url": "rt.example.org", "room": {"name": "{{ ticket.id"},
                         "people": {"users": {"carl": "carl"}}, "catch_up_minutes": -1});
        let problems = check(bad, true).expect_err("invalid");
        for key in [
            "url",
            "room.name",
            "people.users.carl",
            "catch_up_minutes",
            "token",
        ] {
            let key = format!("sources.rt.request_tracker.{key}");
            assert!(problems.contains(&key), "{key} in {problems:?}");
        }
    }
}
