//! The Honoroit drop-in: with no config file, the `HONOROIT_*` environment variables that
//! Honoroit reads make the config: one Matrix DM helpdesk with Honoroit's defaults. The
//! variables become a config text that goes through the same checks as a file; a problem is
//! reported under the variable's name.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::config::{self, ConfigError, ConfigErrors, Loaded};

const PREFIX: &str = "HONOROIT_";

/// The source ID the helpdesk gets (in metrics labels and stored options).
pub const SOURCE_ID: &str = "honoroit";

/// Honoroit's database when `HONOROIT_DB_DSN` is not set.
const DEFAULT_SQLITE: &str = "/tmp/honoroit.db";

/// A config made from the variables, and what to tell the operator about them.
#[derive(Debug)]
pub struct DropIn {
    pub loaded: Loaded,
    /// Variables that are set but change nothing, or that Switchboard does not support: each
    /// is named in a warning at start.
    pub warnings: Vec<String>,
}

/// Whether any `HONOROIT_*` variable is set.
pub fn present(vars: &BTreeMap<String, String>) -> bool {
    vars.keys().any(|k| k.starts_with(PREFIX))
}

/// The config the variables describe.
pub fn load(vars: &BTreeMap<String, String>) -> Result<DropIn, ConfigErrors> {
    let fail = |errors: Vec<ConfigError>| ConfigErrors {
        path: PathBuf::from("HONOROIT_* variables"),
        errors,
    };
    let (text, origin, warnings) = config_text(vars).map_err(fail)?;
    let loaded = config::parse(&text).map_err(|errors| {
        fail(
            errors
                .into_iter()
                .map(|e| ConfigError {
                    key: variable_of(&origin, &e.key),
                    line: None,
                    message: e.message,
                })
                .collect(),
        )
    })?;
    Ok(DropIn { loaded, warnings })
}

/// The variable a config key came from (or the key itself when none did).
fn variable_of(origin: &BTreeMap<&'static str, &'static str>, key: &str) -> String {
    origin
        .iter()
        .filter(|(k, _)| {
            key == **k || key.starts_with(&format!("{k}.")) || key.starts_with(&format!("{k}["))
        })
        .max_by_key(|(k, _)| k.len())
        .map_or_else(|| key.to_string(), |(_, v)| format!("{PREFIX}{v}"))
}

type Origin = BTreeMap<&'static str, &'static str>;

/// The config text, which key came from which variable, and warnings.
fn config_text(
    vars: &BTreeMap<String, String>,
) -> Result<(String, Origin, Vec<String>), Vec<ConfigError>> {
    let get = |name: &str| {
        vars.get(&format!("{PREFIX}{name}"))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let mut errors = Vec::new();
    fn problem(errors: &mut Vec<ConfigError>, name: &str, message: &str) {
        errors.push(ConfigError {
            key: format!("{PREFIX}{name}"),
            line: None,
            message: message.into(),
        })
    }
    let mut origin = Origin::new();
    let mut warnings = Vec::new();
    let mut top = Vec::new();
    let mut matrix = Vec::new();
    let mut helpdesk = Vec::new();

    if get("DATA_SECRET").is_some() {
        top.push(format!("data_secret = {}", secret(get("DATA_SECRET"))));
        origin.insert("data_secret", "DATA_SECRET");
    }

    // Honoroit listens on every interface, on 8080 unless told otherwise.
    let port = get("PORT").unwrap_or("8080");
    let http = format!("listen = {}", quote(&format!("0.0.0.0:{port}")));
    origin.insert("http", "PORT");

    let dialect = get("DB_DIALECT").unwrap_or("sqlite3");
    let database = match dialect {
        "sqlite3" | "sqlite" => {
            let dsn = get("DB_DSN").unwrap_or(DEFAULT_SQLITE);
            let path = dsn.strip_prefix("file:").unwrap_or(dsn);
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            format!("url = {}", secret(Some(&format!("sqlite://{path}"))))
        }
        "postgres" | "postgresql" => match get("DB_DSN") {
            Some(dsn) if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") => {
                format!("url = {}", secret(Some(dsn)))
            }
            Some(_) => {
                let why = "with HONOROIT_DB_DIALECT=postgres, give a URL: \
                           postgres://user:password@host/database";
                problem(&mut errors, "DB_DSN", why);
                String::new()
            }
            None => {
                let why = "must be set with HONOROIT_DB_DIALECT=postgres";
                problem(&mut errors, "DB_DSN", why);
                String::new()
            }
        },
        other => {
            let why = format!("`{other}` is neither sqlite3 nor postgres");
            problem(&mut errors, "DB_DIALECT", &why);
            String::new()
        }
    };
    origin.insert("database", "DB_DSN");

    match get("HOMESERVER") {
        Some(hs) => matrix.push(format!("homeserver = {}", quote(hs))),
        None => problem(&mut errors, "HOMESERVER", "must be set"),
    }
    origin.insert("matrix.homeserver", "HOMESERVER");
    match get("LOGIN") {
        Some(login) => matrix.push(format!("user = {}", quote(login))),
        None => problem(&mut errors, "LOGIN", "must be set"),
    }
    origin.insert("matrix.user", "LOGIN");
    // Honoroit prefers the shared secret when both are set.
    let login = [
        ("SHAREDSECRET", "shared_secret"),
        ("PASSWORD", "password"),
        ("TOKEN", "access_token"),
    ]
    .into_iter()
    .find(|(var, _)| get(var).is_some());
    match login {
        Some((var, key)) => {
            matrix.push(format!("{key} = {}", secret(get(var))));
            origin.insert(
                match key {
                    "shared_secret" => "matrix.shared_secret",
                    "password" => "matrix.password",
                    _ => "matrix.access_token",
                },
                var,
            );
        }
        None => problem(
            &mut errors,
            "PASSWORD",
            "set HONOROIT_PASSWORD, HONOROIT_SHAREDSECRET or HONOROIT_TOKEN",
        ),
    }
    if get("NOENCRYPTION").is_some_and(truthy) {
        matrix.push("encryption = false".into());
    }

    match get("ROOMID") {
        Some(room) => helpdesk.push(format!("backoffice_room = {}", quote(room))),
        None => problem(&mut errors, "ROOMID", "must be set"),
    }
    origin.insert("sources.honoroit.matrix_dm.backoffice_room", "ROOMID");
    helpdesk.push(format!(
        "prefix = {}",
        quote(get("PREFIX").unwrap_or("!ho"))
    ));
    origin.insert("sources.honoroit.matrix_dm.prefix", "PREFIX");

    // Honoroit reads HONOROIT_AUTH_METRICS_*; its README says HONOROIT_METRICS_*.
    let metrics_var = |name: &str| {
        [format!("AUTH_METRICS_{name}"), format!("METRICS_{name}")]
            .into_iter()
            .find(|v| get(v).is_some())
    };
    let mut metrics = Vec::new();
    if let Some(var) = metrics_var("LOGIN") {
        metrics.push(format!(
            "username = {}",
            quote(get(&var).unwrap_or_default())
        ));
    }
    if let Some(var) = metrics_var("PASSWORD") {
        metrics.push(format!("password = {}", secret(get(&var))));
    }
    origin.insert("metrics", "METRICS_LOGIN");
    origin.insert("metrics.password", "METRICS_PASSWORD");
    if let Some(var) = metrics_var("IPS") {
        let nets: Vec<String> = get(&var)
            .unwrap_or_default()
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .map(|ip| match (ip.contains('/'), ip.contains(':')) {
                (true, _) => quote(ip),
                (false, true) => quote(&format!("{ip}/128")),
                (false, false) => quote(&format!("{ip}/32")),
            })
            .collect();
        metrics.push(format!("allow_ips = [{}]", nets.join(", ")));
        origin.insert("metrics.allow_ips", "METRICS_IPS");
    }

    let level = match get("LOGLEVEL").map(str::to_ascii_lowercase).as_deref() {
        None => "info".to_string(),
        Some("warning") => "warn".into(),
        Some(l @ ("trace" | "debug" | "info" | "warn" | "error")) => l.into(),
        Some(other) => {
            warnings.push(format!(
                "{PREFIX}LOGLEVEL `{other}` is not a level (trace, debug, info, warn, error); using info"
            ));
            "info".into()
        }
    };

    for name in vars.keys().filter_map(|k| k.strip_prefix(PREFIX)) {
        if let Some(note) = unsupported(name) {
            warnings.push(format!("{PREFIX}{name}: {note}"));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let text = format!(
        "{top}\n[http]\n{http}\n\n[database]\n{database}\n\n[matrix]\n{matrix}\n\n\
         [metrics]\n{metrics}\n\n[log]\nlevel = {level}\n\n\
         [sources.{SOURCE_ID}]\nkind = \"matrix_dm\"\n\n\
         [sources.{SOURCE_ID}.matrix_dm]\n{helpdesk}\n",
        top = top.join("\n"),
        matrix = matrix.join("\n"),
        metrics = metrics.join("\n"),
        level = quote(&level),
        helpdesk = helpdesk.join("\n"),
    );
    Ok((text, origin, warnings))
}

/// Why a variable (without the prefix) is not used, if it is not.
fn unsupported(name: &str) -> Option<&'static str> {
    const USED: &[&str] = &[
        "HOMESERVER",
        "LOGIN",
        "PASSWORD",
        "SHAREDSECRET",
        "TOKEN",
        "ROOMID",
        "PREFIX",
        "PORT",
        "DATA_SECRET",
        "LOGLEVEL",
        "NOENCRYPTION",
        "DB_DSN",
        "DB_DIALECT",
        "METRICS_LOGIN",
        "METRICS_PASSWORD",
        "METRICS_IPS",
        "AUTH_METRICS_LOGIN",
        "AUTH_METRICS_PASSWORD",
        "AUTH_METRICS_IPS",
    ];
    if USED.contains(&name) {
        None
    } else if name == "CACHESIZE" {
        Some("has no effect: Switchboard keeps requests in its database, not in a cache")
    } else if name.starts_with("MONITORING_") {
        Some("not supported (error reporting and health pings); ignored")
    } else if name.starts_with("REDMINE_") {
        Some("Redmine sync is not supported yet; ignored")
    } else {
        Some("not a variable Switchboard knows; ignored")
    }
}

fn truthy(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "y" | "on"
    )
}

/// A secret's TOML string: `${` would be read as a variable to expand, so it is escaped.
fn secret(value: Option<&str>) -> String {
    quote(&value.unwrap_or_default().replace("${", "$${"))
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MatrixLogin;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect()
    }

    #[test]
    fn honoroit_variables_make_a_helpdesk() {
        let v = vars(&[
            ("HOMESERVER", "https://matrix.example.org"),
            ("LOGIN", "honoroit"),
            ("PASSWORD", "pa\"ss ${word}"),
            ("ROOMID", "!backoffice:example.org"),
            ("AUTH_METRICS_LOGIN", "prom"),
            ("METRICS_PASSWORD", "scrape"),
            ("METRICS_IPS", "10.0.0.1 192.168.0.0/16 ::1"),
            ("CACHESIZE", "2000"),
            ("MONITORING_SENTRY_DSN", "https://sentry.example/1"),
            ("REDMINE_HOST", "https://redmine.example"),
        ]);
        let drop_in = load(&v).expect("a valid config");
        let cfg = &drop_in.loaded.config;
        assert_eq!(cfg.http.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(cfg.matrix.user, "honoroit");
        assert!(cfg.matrix.encryption);
        let dm = cfg.sources[SOURCE_ID].matrix_dm.as_ref().expect("helpdesk");
        assert_eq!(dm.prefix, "!ho");
        assert_eq!(dm.backoffice_room, "!backoffice:example.org");
        assert!(matches!(
            &drop_in.loaded.secrets.matrix_login,
            Some(MatrixLogin::Password(p)) if p.expose() == "pa\"ss ${word}"
        ));
        assert_eq!(
            drop_in
                .loaded
                .secrets
                .database_url
                .as_ref()
                .map(|s| s.expose().to_string()),
            Some("sqlite:///tmp/honoroit.db".into())
        );
        assert_eq!(cfg.metrics.username.as_deref(), Some("prom"));
        let nets: Vec<String> = cfg
            .metrics
            .allow_ips
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, ["10.0.0.1/32", "192.168.0.0/16", "::1/128"]);
        let named: Vec<&str> = drop_in
            .warnings
            .iter()
            .filter_map(|w| w.split(':').next())
            .collect();
        assert_eq!(
            named,
            [
                "HONOROIT_CACHESIZE",
                "HONOROIT_MONITORING_SENTRY_DSN",
                "HONOROIT_REDMINE_HOST"
            ]
        );
    }

    #[test]
    fn problems_name_the_variable() {
        let err =
            load(&vars(&[("LOGIN", "honoroit"), ("DB_DIALECT", "mysql")])).expect_err("incomplete");
        let keys: Vec<&str> = err.errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "HONOROIT_DB_DIALECT",
                "HONOROIT_HOMESERVER",
                "HONOROIT_PASSWORD",
                "HONOROIT_ROOMID"
            ]
        );
        let err = load(&vars(&[
            ("HOMESERVER", "not a url"),
            ("LOGIN", "honoroit"),
            ("TOKEN", "t"),
            ("ROOMID", "#alias:example.org"),
            ("DB_DIALECT", "postgres"),
            ("DB_DSN", "host=db user=honoroit"),
        ]))
        .expect_err("bad values");
        assert_eq!(err.errors[0].key, "HONOROIT_DB_DSN");
        assert!(err.errors[0].message.contains("postgres://"), "{err}");
    }

    #[test]
    fn config_problems_are_mapped_back() {
        let err = load(&vars(&[
            ("HOMESERVER", "https://matrix.example.org"),
            ("LOGIN", "honoroit"),
            ("TOKEN", "t"),
            ("ROOMID", "#alias:example.org"),
        ]))
        .expect_err("an alias is not a room ID");
        let keys: Vec<&str> = err.errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["HONOROIT_ROOMID"], "{err}");
    }
}
