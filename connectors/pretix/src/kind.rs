//! The pretix kind: its config section checked (secrets read), its tables, its actions, and
//! the running source it builds.

use std::sync::Arc;

use switchboard_connector::{Checked, Checker, Connector, Dialect, Host, Kind, Secret, SourceInfo};

use crate::PretixConfig;
use crate::source::Source;

/// The kind `pretix`.
pub struct Pretix;

/// A pretix source's config with its secrets read.
pub(crate) struct Config {
    pub config: PretixConfig,
    /// The API token (none: OAuth only).
    pub token: Option<Secret>,
    /// The OAuth client secret, with `oauth`.
    pub client_secret: Option<Secret>,
}

static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl Kind for Pretix {
    fn name(&self) -> &'static str {
        "pretix"
    }

    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        generator.subschema_for::<PretixConfig>()
    }

    fn check(
        &self,
        source: &SourceInfo,
        section: Option<&serde_json::Value>,
        check: &mut Checker<'_>,
    ) -> Option<Checked> {
        let Some(section) = section else {
            check.problem("", "required for kind = \"pretix\"");
            return None;
        };
        let config: PretixConfig = check.parse(section)?;
        let mut ok = true;
        for (key, problem) in config.problems() {
            check.problem(&key, problem);
            ok = false;
        }
        let token = match check.secret(
            "api_token",
            config.api_token.as_deref(),
            config.api_token_file.as_deref(),
        ) {
            Ok(Some(t)) => Some(t),
            Ok(None) if config.oauth.is_none() => {
                check.problem(
                    "api_token",
                    "an API token (`api_token` or `api_token_file`), or `oauth`, is required",
                );
                ok = false;
                None
            }
            Ok(None) => None,
            Err(_) => {
                ok = false;
                None
            }
        };
        let mut client_secret = None;
        if let Some(oauth) = &config.oauth {
            match check.secret(
                "oauth.client_secret",
                oauth.client_secret.as_deref(),
                oauth.client_secret_file.as_deref(),
            ) {
                Ok(Some(secret)) => client_secret = Some(secret),
                Ok(None) => {
                    check.problem("oauth.client_secret", "required (or `client_secret_file`)");
                    ok = false;
                }
                Err(_) => ok = false,
            }
            if config.organisers.is_empty() {
                check.problem(
                    "organisers",
                    "`oauth` is authorized with `!authorize`: name the organisers",
                );
                ok = false;
            }
        }
        if !source.authenticated {
            check.source_problem(
                "path_secret",
                "pretix does not sign its webhooks: give `path_secret` or `basic_auth`",
            );
            ok = false;
        }
        ok.then(|| {
            Box::new(Config {
                config,
                token,
                client_secret,
            }) as Checked
        })
    }

    fn check_together(
        &self,
        sources: &[(&SourceInfo, Option<&Checked>)],
        report: &mut dyn FnMut(&str, String),
    ) {
        let mut commanded = sources
            .iter()
            .filter(|(_, c)| c.is_some_and(|c| self.listens(c)));
        if let Some((second, _)) = commanded.nth(1) {
            report(
                &format!("sources.{}.pretix.organisers", second.id),
                "one bot takes the commands of at most one pretix source".into(),
            );
        }
    }

    fn action_kinds(&self) -> &'static [&'static str] {
        &["pretix_order", "pretix_command"]
    }

    fn migrations(&self, dialect: Dialect) -> Option<&'static sqlx::migrate::Migrator> {
        Some(match dialect {
            Dialect::Sqlite => &SQLITE,
            Dialect::Postgres => &POSTGRES,
        })
    }

    fn listens(&self, checked: &Checked) -> bool {
        checked
            .downcast_ref::<Config>()
            .is_some_and(|c| !c.config.organisers.is_empty())
    }

    fn rooms(&self, checked: &Checked) -> Vec<(String, String)> {
        let Some(config) = checked.downcast_ref::<Config>() else {
            return Vec::new();
        };
        config.config.rooms()
    }

    fn build(
        &self,
        source: &SourceInfo,
        checked: &Checked,
        host: Arc<dyn Host>,
    ) -> Result<Arc<dyn Connector>, String> {
        let config = checked
            .downcast_ref::<Config>()
            .ok_or("not a checked pretix config")?;
        Ok(Arc::new(Source::new(&source.id, config, host)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(authenticated: bool) -> SourceInfo {
        SourceInfo {
            id: "px".into(),
            authenticated,
            bot: "@bot:example.org".into(),
            ..Default::default()
        }
    }

    /// The problems' keys, or the checked config.
    fn check(section: serde_json::Value, authenticated: bool) -> Result<Checked, Vec<String>> {
        let mut problems = Vec::new();
        let mut report = |k: &str, _: String| problems.push(k.to_string());
        let checked = Pretix.check(
            &info(authenticated),
            Some(&section),
            &mut Checker::new("px", "pretix", &mut report),
        );
        checked.ok_or(problems)
    }

    #[test]
    fn oauth_replaces_the_token_and_needs_organisers() {
        let oauth = json!({"url": "https://pretix.example", "organisers": ["@org:example.org"],
            "oauth": {"client_id": "cid", "client_secret": "cs", "public_url": "https://sb.example"}});
        let checked = check(oauth.clone(), true).expect("valid without an API token");
        let config = checked.downcast_ref::<Config>().expect("pretix config");
        assert_eq!(
            config.client_secret.as_ref().map(Secret::expose),
            Some("cs")
        );
        assert!(config.token.is_none());
        assert!(Pretix.listens(&checked));
        let mut nobody = oauth.clone();
        nobody["organisers"] = json!([]);
        assert!(
            check(nobody, true).is_err_and(|p| p.contains(&"sources.px.pretix.organisers".into()))
        );
        let mut no_secret = oauth;
        no_secret["oauth"]["client_secret"] = serde_json::Value::Null;
        assert!(
            check(no_secret, true)
                .is_err_and(|p| p.contains(&"sources.px.pretix.oauth.client_secret".into()))
        );
    }

    #[test]
    fn sources_are_checked() {
        let ok = json!({"url": "https://pretix.example", "api_token": "tok",
            "events": [{"organizer": "o", "event": "e", "rooms": ["!r"]}]});
        let checked = check(ok.clone(), true).expect("valid");
        let config = checked.downcast_ref::<Config>().expect("pretix config");
        assert_eq!(config.token.as_ref().map(Secret::expose), Some("tok"));
        assert!(!Pretix.listens(&checked));
        let problems = check(ok, false).expect_err("unauthenticated webhooks");
        assert_eq!(problems, ["sources.px.path_secret"]);
        let bad = json!({"url": "pretix.example",
            "events": [{"organizer": "o", "event": "e", "rooms": ["#r"]}]});
        let problems = check(bad, true).expect_err("invalid");
        for want in [
            "sources.px.pretix.url",
            "sources.px.pretix.events.0.rooms",
            "sources.px.pretix.api_token",
        ] {
            assert!(
                problems.contains(&want.to_string()),
                "{want} in {problems:?}"
            );
        }
        let unknown = json!({"url": "https://pretix.example", "api_token": "t", "evnts": []});
        let problems = check(unknown, true).expect_err("unknown key");
        assert!(
            problems.len() == 1 && problems[0].starts_with("sources.px.pretix"),
            "{problems:?}"
        );
    }

    #[test]
    fn one_source_per_bot_takes_commands() {
        let commanded = json!({"url": "https://p.example", "api_token": "t",
            "organisers": ["@org:example.org"]});
        let a = check(commanded.clone(), true).expect("valid");
        let b = check(commanded, true).expect("valid");
        let (ia, mut ib) = (info(true), info(true));
        ib.id = "second".into();
        let mut problems = Vec::new();
        Pretix.check_together(&[(&ia, Some(&a)), (&ib, Some(&b))], &mut |k, _| {
            problems.push(k.to_string())
        });
        assert_eq!(problems, ["sources.second.pretix.organisers"]);
    }
}
