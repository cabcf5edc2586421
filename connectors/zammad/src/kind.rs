//! The `zammad` kind: its config section checked (the token read), its table, its actions,
//! and the running source it builds.

use std::sync::Arc;

use switchboard_connector::{Checked, Checker, Connector, Dialect, Host, Kind, Secret, SourceInfo};
use switchboard_ticket_rooms::kind::{SecretKey, check_section};

use crate::ZammadConfig;
use crate::source::Source;

/// The kind `zammad`.
pub struct Zammad;

/// A checked config with its token read.
struct Config {
    config: ZammadConfig,
    token: Secret,
}

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl Kind for Zammad {
    fn name(&self) -> &'static str {
        "zammad"
    }

    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        generator.subschema_for::<ZammadConfig>()
    }

    fn check(
        &self,
        source: &SourceInfo,
        section: Option<&serde_json::Value>,
        check: &mut Checker<'_>,
    ) -> Option<Checked> {
        let secret = SecretKey {
            key: "token",
            given: |c: &ZammadConfig| (c.token.as_deref(), c.token_file.as_deref()),
            missing: "an access token (`token` or `token_file`) is required",
        };
        let (config, token) = check_section(
            self.name(),
            source,
            section,
            check,
            ZammadConfig::problems,
            secret,
            Some(
                "Zammad's webhooks must be authenticated: give `signature` (the webhook's \
                     HMAC-SHA1 token: header = \"X-Hub-Signature\", prefix = \"sha1=\", \
                     algorithm = \"sha1\"), `path_secret` or `basic_auth`",
            ),
        )?;
        Some(Box::new(Config { config, token }))
    }

    fn action_kinds(&self) -> &'static [&'static str] {
        &[
            "zammad_ticket",
            "zammad_owner",
            "zammad_transcript",
            "zammad_write",
            "zammad_mode",
            "zammad_age",
            "zammad_invite",
            "zammad_file",
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
            .ok_or("not a checked zammad config")?;
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
            id: "zammad".into(),
            authenticated,
            bot: "@bot:example.org".into(),
            ..Default::default()
        };
        let mut problems = Vec::new();
        let mut report = |k: &str, _: String| problems.push(k.to_string());
        let checked = Zammad.check(
            &info,
            Some(&section),
            &mut Checker::new("zammad", "zammad", &mut report),
        );
        checked.ok_or(problems)
    }

    #[test]
    fn sections_are_checked_with_their_keys() {
        let ok = json!({"url": "https://zammad.example.org", "token": "abc"});
        assert!(check(ok.clone(), true).is_ok());
        assert_eq!(
            check(ok, false).err().unwrap_or_default(),
            ["sources.zammad.signature"]
        );
        let bad = json!({"url": "zammad.example.org", "room": {"topic": "{% if %}"},
                         "people": {"users": {"emma": "emma"}, "invite": ["customer"]}});
        let problems = check(bad, true).expect_err("invalid");
        for key in ["url", "room.topic", "people.users.emma", "token"] {
            let key = format!("sources.zammad.zammad.{key}");
            assert!(problems.contains(&key), "{key} in {problems:?}");
        }
        let unknown = json!({"url": "https://z", "token": "t", "people": {"invite": ["admin_cc"]}});
        assert_eq!(
            check(unknown, true).err().unwrap_or_default(),
            ["sources.zammad.zammad.people.invite.0"],
            "a role Zammad does not have"
        );
    }
}
