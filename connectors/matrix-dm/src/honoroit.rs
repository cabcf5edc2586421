//! The Honoroit drop-in: with no config file, the `HONOROIT_*` environment variables that
//! Honoroit reads make the config: one Matrix DM helpdesk with Honoroit's defaults. The
//! variables become a config text that the service checks like a file; `EnvConfig::origin`
//! says which variable each key came from, so that a problem is reported under the
//! variable's name.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use switchboard_connector::EnvConfig;

const PREFIX: &str = "HONOROIT_";

/// The source ID the helpdesk gets (in metrics labels and stored options).
pub const SOURCE_ID: &str = "honoroit";

/// Honoroit's database when `HONOROIT_DB_DSN` is not set.
/// The Redmine source the `HONOROIT_REDMINE_*` variables make.
pub const REDMINE_SOURCE_ID: &str = "redmine";

/// Honoroit's notes: who wrote, and on which side.
const REDMINE_NOTE: &str = "_{{ author }} ({% if side == 'customer' %}🧑‍🦱customer\
                            {% else %}👩‍💼 operator{% endif %})_\n\n{{ text }}";

const DEFAULT_SQLITE: &str = "/tmp/honoroit.db";

/// What `EnvConfig::name` says in messages.
const NAME: &str = "HONOROIT_* variables";

/// The config the `HONOROIT_*` variables describe; `None` when none is set.
///
/// `Err` lists the problems found before the text is made, each as (variable, message);
/// the service names a problem it finds in the text by its variable (`EnvConfig::origin`).
pub fn env_config(
    vars: &BTreeMap<String, String>,
) -> Option<Result<EnvConfig, Vec<(String, String)>>> {
    present(vars).then(|| config_text(vars))
}

/// Whether any `HONOROIT_*` variable is set.
fn present(vars: &BTreeMap<String, String>) -> bool {
    vars.keys().any(|k| k.starts_with(PREFIX))
}

/// The config text, which key came from which variable, and warnings; or the problems, each
/// named by its variable.
fn config_text(vars: &BTreeMap<String, String>) -> Result<EnvConfig, Vec<(String, String)>> {
    let get = |name: &str| {
        vars.get(&format!("{PREFIX}{name}"))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let mut errors = Vec::new();
    fn problem(errors: &mut Vec<(String, String)>, name: &str, message: &str) {
        errors.push((format!("{PREFIX}{name}"), message.into()))
    }
    // Config key -> the full name of the variable it came from.
    let mut origin = BTreeMap::new();
    let mut from = |key: &str, name: &str| {
        origin.insert(key.to_string(), format!("{PREFIX}{name}"));
    };
    let mut warnings = Vec::new();
    let mut top = Vec::new();
    let mut matrix = Vec::new();
    let mut helpdesk = Vec::new();

    if get("DATA_SECRET").is_some() {
        top.push(format!("data_secret = {}", secret(get("DATA_SECRET"))));
        from("data_secret", "DATA_SECRET");
    }

    // Honoroit listens on every interface, on 8080 unless told otherwise.
    let port = get("PORT").unwrap_or("8080");
    let http = format!("listen = {}", quote(&format!("0.0.0.0:{port}")));
    from("http", "PORT");

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
    from("database", "DB_DSN");

    match get("HOMESERVER") {
        Some(hs) => matrix.push(format!("homeserver = {}", quote(hs))),
        None => problem(&mut errors, "HOMESERVER", "must be set"),
    }
    from("matrix.homeserver", "HOMESERVER");
    match get("LOGIN") {
        Some(login) => matrix.push(format!("user = {}", quote(login))),
        None => problem(&mut errors, "LOGIN", "must be set"),
    }
    from("matrix.user", "LOGIN");
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
            from(&format!("matrix.{key}"), var);
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
    from("sources.honoroit.matrix_dm.backoffice_room", "ROOMID");
    helpdesk.push(format!(
        "prefix = {}",
        quote(get("PREFIX").unwrap_or("!ho"))
    ));
    from("sources.honoroit.matrix_dm.prefix", "PREFIX");

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
    from("metrics", "METRICS_LOGIN");
    from("metrics.password", "METRICS_PASSWORD");
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
        from("metrics.allow_ips", "METRICS_IPS");
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

    let redmine = redmine_section(vars, &mut from, &mut errors, &mut warnings);

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
         [sources.{SOURCE_ID}.matrix_dm]\n{helpdesk}\n{redmine}",
        top = top.join("\n"),
        matrix = matrix.join("\n"),
        metrics = metrics.join("\n"),
        level = quote(&level),
        helpdesk = helpdesk.join("\n"),
    );
    Ok(EnvConfig {
        name: NAME.into(),
        text,
        origin,
        warnings,
    })
}

const REDMINE_USED: &[&str] = &[
    "REDMINE_HOST",
    "REDMINE_APIKEY",
    "REDMINE_PROJECT",
    "REDMINE_TRACKERID",
    "REDMINE_NEWSTATUSID",
    "REDMINE_INPROGRESSSTATUSID",
    "REDMINE_DONESTATUSID",
];

/// The Redmine source, as Honoroit has it: on when the host, the API key, the project and a
/// tracker are given (Honoroit's own rule); its statuses where given (0 or unset: the
/// issue's status is left as it is, as Honoroit's 0 does).
fn redmine_section(
    vars: &BTreeMap<String, String>,
    from: &mut dyn FnMut(&str, &str),
    errors: &mut Vec<(String, String)>,
    warnings: &mut Vec<String>,
) -> String {
    let get = |name: &str| {
        vars.get(&format!("{PREFIX}{name}"))
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };
    let mut number = |name: &str| match get(name).map(str::parse::<u64>) {
        None | Some(Ok(0)) => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            errors.push((format!("{PREFIX}{name}"), "must be a number".into()));
            None
        }
    };
    let tracker = number("REDMINE_TRACKERID");
    let statuses = [
        ("new", "REDMINE_NEWSTATUSID"),
        ("customer_wrote", "REDMINE_NEWSTATUSID"),
        ("operator_wrote", "REDMINE_INPROGRESSSTATUSID"),
        ("done", "REDMINE_DONESTATUSID"),
    ]
    .map(|(key, var)| (key, var, number(var)));
    let (Some(host), Some(key), Some(project), Some(tracker)) = (
        get("REDMINE_HOST"),
        get("REDMINE_APIKEY"),
        get("REDMINE_PROJECT"),
        tracker,
    ) else {
        if REDMINE_USED.iter().any(|v| get(v).is_some()) {
            warnings.push(format!(
                "{PREFIX}REDMINE_*: Redmine sync needs {PREFIX}REDMINE_HOST, _APIKEY,                  _PROJECT and _TRACKERID; off"
            ));
        }
        return String::new();
    };
    let section = format!("sources.{REDMINE_SOURCE_ID}.redmine");
    for (key, var) in [
        ("url", "REDMINE_HOST"),
        ("api_key", "REDMINE_APIKEY"),
        ("project", "REDMINE_PROJECT"),
        ("tracker_id", "REDMINE_TRACKERID"),
    ] {
        from(&format!("{section}.{key}"), var);
    }
    let mut lines = vec![
        format!("url = {}", quote(host)),
        format!("api_key = {}", secret(Some(key))),
        format!("project = {}", quote(project)),
        format!("tracker_id = {tracker}"),
        format!("helpdesk = {}", quote(SOURCE_ID)),
        format!("\n[{section}.statuses]"),
    ];
    for (key, var, id) in statuses {
        if let Some(id) = id {
            lines.push(format!("{key} = {id}"));
            from(&format!("{section}.statuses.{key}"), var);
        }
    }
    lines.push(format!(
        "\n[{section}.templates]\nnote = {}",
        quote(REDMINE_NOTE)
    ));
    format!(
        "\n[sources.{REDMINE_SOURCE_ID}]\nkind = \"redmine\"\n\n[{section}]\n{}\n",
        lines.join("\n")
    )
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
        (!REDMINE_USED.contains(&name)).then_some("not a variable Switchboard knows; ignored")
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

/// A TOML basic string: `"`, `\` and every control character (tab and newline too) escaped;
/// the value it parses to is `s`.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\u{c}' => out.push_str("\\f"),
            '\r' => out.push_str("\\r"),
            c if c <= '\u{1f}' || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), v.to_string()))
            .collect()
    }

    fn config(pairs: &[(&str, &str)]) -> EnvConfig {
        env_config(&vars(pairs))
            .expect("variables are set")
            .expect("no problem")
    }

    fn problems(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        env_config(&vars(pairs))
            .expect("variables are set")
            .expect_err("problems")
    }

    /// The smallest set that makes a config.
    const MINIMAL: &[(&str, &str)] = &[
        ("HOMESERVER", "https://matrix.example.org"),
        ("LOGIN", "honoroit"),
        ("TOKEN", "t"),
        ("ROOMID", "!backoffice:example.org"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        MINIMAL.iter().chain(extra).copied().collect()
    }

    #[test]
    fn nothing_without_honoroit_variables() {
        assert!(env_config(&BTreeMap::new()).is_none());
        let others: BTreeMap<String, String> = [("HOME", "/root"), ("HONOROIT", "x")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(env_config(&others).is_none());
        // One variable, even an unknown one, makes it a drop-in (with problems here).
        assert!(env_config(&vars(&[("CACHESIZE", "2000")])).is_some_and(|r| r.is_err()));
    }

    #[test]
    fn honoroit_variables_make_a_helpdesk() {
        let env = config(&[
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
        assert_eq!(env.name, "HONOROIT_* variables");
        assert_eq!(
            env.text,
            r#"
[http]
listen = "0.0.0.0:8080"

[database]
url = "sqlite:///tmp/honoroit.db"

[matrix]
homeserver = "https://matrix.example.org"
user = "honoroit"
password = "pa\"ss $${word}"

[metrics]
username = "prom"
password = "scrape"
allow_ips = ["10.0.0.1/32", "192.168.0.0/16", "::1/128"]

[log]
level = "info"

[sources.honoroit]
kind = "matrix_dm"

[sources.honoroit.matrix_dm]
backoffice_room = "!backoffice:example.org"
prefix = "!ho"
"#
        );
        let named: Vec<&str> = env
            .warnings
            .iter()
            .filter_map(|w| w.split(':').next())
            .collect();
        assert_eq!(
            named,
            [
                "HONOROIT_REDMINE_*",
                "HONOROIT_CACHESIZE",
                "HONOROIT_MONITORING_SENTRY_DSN",
            ]
        );
    }

    #[test]
    fn honoroit_redmine_variables_make_a_redmine_source() {
        let env = config(&with(&[
            ("REDMINE_HOST", "https://redmine.example"),
            ("REDMINE_APIKEY", "k${ey}"),
            ("REDMINE_PROJECT", "helpdesk"),
            ("REDMINE_TRACKERID", "3"),
            ("REDMINE_NEWSTATUSID", "1"),
            ("REDMINE_INPROGRESSSTATUSID", "2"),
            ("REDMINE_DONESTATUSID", "0"),
        ]));
        let section = env
            .text
            .split_once("[sources.redmine]")
            .map(|(_, s)| s)
            .unwrap_or_default();
        for line in [
            "kind = \"redmine\"",
            "url = \"https://redmine.example\"",
            "api_key = \"k$${ey}\"",
            "project = \"helpdesk\"",
            "tracker_id = 3",
            "helpdesk = \"honoroit\"",
            "new = 1",
            "customer_wrote = 1",
            "operator_wrote = 2",
        ] {
            assert!(section.lines().any(|l| l == line), "{line} in {section}");
        }
        assert!(
            !section.contains("done ="),
            "0 leaves the status: {section}"
        );
        assert!(env.warnings.is_empty(), "{:?}", env.warnings);
        assert_eq!(
            env.origin
                .get("sources.redmine.redmine.statuses.operator_wrote")
                .map(String::as_str),
            Some("HONOROIT_REDMINE_INPROGRESSSTATUSID")
        );

        // Without a tracker Honoroit keeps Redmine off, and so does this.
        let off = config(&with(&[("REDMINE_HOST", "https://redmine.example")]));
        assert!(!off.text.contains("redmine"), "{}", off.text);
        assert_eq!(off.warnings.len(), 1, "{:?}", off.warnings);
        let bad = problems(&with(&[("REDMINE_TRACKERID", "three")]));
        assert_eq!(
            bad,
            [(
                "HONOROIT_REDMINE_TRACKERID".to_string(),
                "must be a number".to_string()
            )]
        );
    }

    #[test]
    fn origin_names_the_whole_variable() {
        let env = config(&with(&[("DATA_SECRET", "s"), ("METRICS_IPS", "::1")]));
        let origin = |key: &str| env.origin.get(key).map(String::as_str);
        assert_eq!(origin("matrix.homeserver"), Some("HONOROIT_HOMESERVER"));
        assert_eq!(origin("matrix.user"), Some("HONOROIT_LOGIN"));
        assert_eq!(origin("matrix.access_token"), Some("HONOROIT_TOKEN"));
        assert_eq!(origin("data_secret"), Some("HONOROIT_DATA_SECRET"));
        assert_eq!(origin("http"), Some("HONOROIT_PORT"));
        assert_eq!(origin("database"), Some("HONOROIT_DB_DSN"));
        assert_eq!(origin("metrics"), Some("HONOROIT_METRICS_LOGIN"));
        assert_eq!(
            origin("metrics.password"),
            Some("HONOROIT_METRICS_PASSWORD")
        );
        assert_eq!(origin("metrics.allow_ips"), Some("HONOROIT_METRICS_IPS"));
        assert_eq!(
            origin("sources.honoroit.matrix_dm.backoffice_room"),
            Some("HONOROIT_ROOMID")
        );
        assert_eq!(
            origin("sources.honoroit.matrix_dm.prefix"),
            Some("HONOROIT_PREFIX")
        );
        assert!(env.origin.values().all(|v| v.starts_with(PREFIX)));
        // Only the login that is used has a key.
        assert_eq!(origin("matrix.password"), None);
        assert_eq!(origin("matrix.shared_secret"), None);
    }

    #[test]
    fn problems_name_the_variable() {
        let found = problems(&[("LOGIN", "honoroit"), ("DB_DIALECT", "mysql")]);
        let names: Vec<&str> = found.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "HONOROIT_DB_DIALECT",
                "HONOROIT_HOMESERVER",
                "HONOROIT_PASSWORD",
                "HONOROIT_ROOMID"
            ]
        );
        assert!(found[0].1.contains("`mysql`"), "{found:?}");
        let found = problems(&[
            ("HOMESERVER", "not a url"),
            ("LOGIN", "honoroit"),
            ("TOKEN", "t"),
            ("ROOMID", "#alias:example.org"),
            ("DB_DIALECT", "postgres"),
            ("DB_DSN", "host=db user=honoroit"),
        ]);
        assert_eq!(found[0].0, "HONOROIT_DB_DSN");
        assert!(found[0].1.contains("postgres://"), "{found:?}");
        let found = problems(&with(&[("DB_DIALECT", "postgres")]));
        assert_eq!(
            found,
            [(
                "HONOROIT_DB_DSN".to_string(),
                "must be set with HONOROIT_DB_DIALECT=postgres".to_string()
            )]
        );
    }

    #[test]
    fn blank_variables_count_as_unset() {
        let found = problems(&[("HOMESERVER", "  "), ("LOGIN", ""), ("ROOMID", "\t")]);
        let names: Vec<&str> = found.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "HONOROIT_HOMESERVER",
                "HONOROIT_LOGIN",
                "HONOROIT_PASSWORD",
                "HONOROIT_ROOMID"
            ]
        );
        let env = config(&with(&[("PORT", " "), ("PREFIX", "")]));
        assert!(
            env.text.contains("listen = \"0.0.0.0:8080\"\n"),
            "{}",
            env.text
        );
        assert!(env.text.contains("prefix = \"!ho\"\n"), "{}", env.text);
    }

    #[test]
    fn honoroit_defaults_and_choices() {
        // The shared secret wins over the password, which wins over the token.
        let env = config(&with(&[("PASSWORD", "p"), ("SHAREDSECRET", "s")]));
        assert!(
            env.text.contains("\nshared_secret = \"s\"\n"),
            "{}",
            env.text
        );
        assert!(!env.text.contains("password = "), "{}", env.text);
        assert!(!env.text.contains("access_token"), "{}", env.text);
        assert_eq!(
            env.origin.get("matrix.shared_secret").map(String::as_str),
            Some("HONOROIT_SHAREDSECRET")
        );

        let env = config(&with(&[
            ("PORT", "9000"),
            ("PREFIX", "!help"),
            ("NOENCRYPTION", "Yes"),
            ("LOGLEVEL", "WARNING"),
            ("DB_DSN", "file:/var/lib/honoroit.db?_busy_timeout=5000"),
        ]));
        assert!(
            env.text.contains("listen = \"0.0.0.0:9000\"\n"),
            "{}",
            env.text
        );
        assert!(env.text.contains("prefix = \"!help\"\n"), "{}", env.text);
        assert!(env.text.contains("\nencryption = false\n"), "{}", env.text);
        assert!(env.text.contains("level = \"warn\"\n"), "{}", env.text);
        assert!(
            env.text
                .contains("url = \"sqlite:///var/lib/honoroit.db\"\n"),
            "{}",
            env.text
        );
        assert!(env.warnings.is_empty(), "{:?}", env.warnings);

        let env = config(&with(&[("NOENCRYPTION", "0"), ("LOGLEVEL", "loud")]));
        assert!(!env.text.contains("encryption"), "{}", env.text);
        assert!(env.text.contains("level = \"info\"\n"), "{}", env.text);
        assert_eq!(env.warnings.len(), 1, "{:?}", env.warnings);
        assert!(env.warnings[0].starts_with("HONOROIT_LOGLEVEL `loud`"));

        let env = config(&with(&[
            ("DB_DIALECT", "postgresql"),
            ("DB_DSN", "postgres://u:p${x}@db/honoroit"),
        ]));
        assert!(
            env.text
                .contains("url = \"postgres://u:p$${x}@db/honoroit\"\n"),
            "{}",
            env.text
        );
        assert!(!env.text.contains("data_secret"), "{}", env.text);
    }

    #[test]
    fn the_auth_metrics_variables_win() {
        let env = config(&with(&[
            ("AUTH_METRICS_LOGIN", "a"),
            ("METRICS_LOGIN", "m"),
            ("AUTH_METRICS_IPS", "10.0.0.0/8,::1"),
            ("METRICS_IPS", "127.0.0.1"),
        ]));
        assert!(env.text.contains("username = \"a\"\n"), "{}", env.text);
        assert!(
            env.text
                .contains("allow_ips = [\"10.0.0.0/8\", \"::1/128\"]\n"),
            "{}",
            env.text
        );
        assert!(env.warnings.is_empty(), "{:?}", env.warnings);
    }

    #[test]
    fn strings_are_toml_basic_strings() {
        assert_eq!(quote("plain"), r#""plain""#);
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("tab\tnl\ncr\r"), r#""tab\tnl\ncr\r""#);
        assert_eq!(quote("\u{0}\u{1f}\u{7f}é"), r#""\u0000\u001F\u007Fé""#);
        assert_eq!(secret(Some("${A}$B${")), r#""$${A}$B$${""#);
        assert_eq!(secret(None), r#""""#);
    }
}
