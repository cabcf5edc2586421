//! The configuration file: its types (which are also its JSON Schema) and loading with errors
//! that name the key and the line, so a typo never surfaces as a runtime surprise.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;
use switchboard_connector::{Checked, EventKind, SourceInfo};
use toml::de::DeTable;

mod schema;
mod validate;

pub use schema::json_schema;
use schema::{KeyLines, line_of, schema_errors};
use validate::validate;

/// The whole configuration file.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory for the SQLite database, the Matrix session and the crypto store.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Encrypts what Switchboard keeps of the bot's login (the access token in the database,
    /// the crypto store under `data_dir`). Set it before the first start.
    pub data_secret: Option<Secret>,
    /// Read the data secret from this file instead.
    pub data_secret_file: Option<PathBuf>,
    /// The HTTP listener (webhooks, links, metrics, health).
    #[serde(default)]
    pub http: HttpConfig,
    /// Where Switchboard keeps its state.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// The homeserver and the bot account.
    pub matrix: MatrixConfig,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The operator's page `/status`.
    #[serde(default)]
    pub status_page: StatusPageConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Ticket sources, keyed by source ID (the `{source}` in `/hooks/{source}`).
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Rules that turn ticket events into actions, tried in order. Without any rule, every
    /// source gets the default rules (see the configuration reference).
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}

/// The HTTP listener.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address and port to listen on.
    #[schemars(with = "String")]
    pub listen: SocketAddr,
    /// Largest accepted webhook body, in bytes. Larger bodies get 413.
    #[schemars(range(min = 1))]
    pub body_limit: u64,
    /// Prefix of the links `/link/...` redirects to; the room ID is appended.
    pub link_base: String,
    /// How long `/link` waits for a room being created before answering 504, in seconds.
    pub link_wait_seconds: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit: 1024 * 1024,
            link_base: "https://matrix.to/#/".into(),
            link_wait_seconds: 20,
        }
    }
}

/// Where state is kept.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://...`. Default: `switchboard.db` in the data directory.
    pub url: Option<Secret>,
    /// Read the URL from this file instead.
    pub url_file: Option<PathBuf>,
    /// Largest number of pooled connections (default 8 for PostgreSQL, 1 for SQLite).
    pub max_connections: Option<u32>,
    /// Days to keep finished records: deliveries turned into actions (and so their dedupe
    /// keys) and actions done or failed. 0 keeps them forever.
    pub retention_days: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            url_file: None,
            max_connections: None,
            retention_days: 30,
        }
    }
}

/// The homeserver and the bot account. Give exactly one of `password`, `access_token`
/// or `shared_secret` (each also as `*_file`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatrixConfig {
    /// Base URL of the homeserver's client API, e.g. `https://matrix.example.org`.
    #[schemars(with = "String")]
    pub homeserver: url::Url,
    /// The bot's user ID (`@bot:example.org`) or localpart.
    pub user: String,
    /// Password for `m.login.password`.
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    /// An existing access token (the device ID is then asked from the homeserver).
    pub access_token: Option<Secret>,
    pub access_token_file: Option<PathBuf>,
    /// Shared secret of the homeserver's shared-secret authenticator module.
    pub shared_secret: Option<Secret>,
    pub shared_secret_file: Option<PathBuf>,
    /// End-to-end encryption for the rooms Switchboard creates and in rooms that use it.
    #[serde(default = "yes")]
    pub encryption: bool,
    /// Display name of the bot's device.
    #[serde(default = "default_device_name")]
    pub device_name: String,
    /// How many Matrix actions run at once (different tickets; one ticket is always in order).
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1))]
    pub concurrency: usize,
    /// Timeout of one homeserver request, in seconds.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_seconds: u64,
}

fn yes() -> bool {
    true
}
fn default_device_name() -> String {
    "Switchboard".into()
}
fn default_concurrency() -> usize {
    16
}
fn default_request_timeout() -> u64 {
    30
}

/// The Prometheus endpoint `/metrics`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` at all.
    pub enabled: bool,
    /// Require HTTP basic auth with this user name (and `password`).
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    /// Only these client networks may read metrics (e.g. `127.0.0.1/32`); empty = all.
    #[schemars(with = "Vec<String>")]
    pub allow_ips: Vec<ipnet::IpNet>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            username: None,
            password: None,
            password_file: None,
            allow_ips: Vec::new(),
        }
    }
}

/// The operator's page `/status`: each source's queues, what failed or was set aside and
/// why, with a button that tries it again; the homeserver's state. It can put items back in
/// line, so it is off unless enabled, and needs `username` and `password`, `allow_ips`, or
/// both.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StatusPageConfig {
    /// Serve `/status`.
    pub enabled: bool,
    /// Require HTTP basic auth with this user name (and `password`).
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    /// Only these client networks may use the page (e.g. `127.0.0.1/32`); empty = all.
    #[schemars(with = "Vec<String>")]
    pub allow_ips: Vec<ipnet::IpNet>,
}

/// Logging.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `switchboard=debug`. `RUST_LOG` wins when set.
    pub level: String,
}

/// What the Matrix client logs that is no operator's business: an `ERROR` for each answer
/// it gets that is not a success (a 404 for account data never set, say; Switchboard
/// reports the failures that matter itself), push rules it cannot compute, key backups
/// that are not set up.
const QUIET_MATRIX_CLIENT: &str = "matrix_sdk=error,matrix_sdk_base=error,\
    matrix_sdk_crypto=error,matrix_sdk::http_client=off,matrix_sdk::room=off";

impl LogConfig {
    /// The tracing filter: `RUST_LOG` when it is set (`env`), else `level`, with the
    /// Matrix client's expected noise left out unless the filter names the client
    /// (`matrix_sdk...`) itself.
    pub fn filter(&self, env: Option<&str>) -> String {
        let chosen = env
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .unwrap_or(&self.level);
        match chosen.contains("matrix_sdk") {
            true => chosen.to_string(),
            false => format!("{chosen},{QUIET_MATRIX_CLIENT}"),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// One ticket source.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SourceConfig {
    /// Which connector reads this source; its options go in the section of the same name
    /// (`[sources.<id>.<kind>]`).
    pub kind: String,
    /// Verify an HMAC signature on every webhook before reading its body.
    pub signature: Option<SignatureConfig>,
    /// Whether `/link/{source}/{key}` may create the room of a ticket that has none yet.
    #[serde(default)]
    pub link_create: bool,
    /// A secret the webhook's URL carries as its last segment: `/hooks/<source>/<secret>`.
    /// For senders that cannot sign their webhooks. Or `path_secret_file`.
    pub path_secret: Option<Secret>,
    pub path_secret_file: Option<PathBuf>,
    /// HTTP basic authentication the webhook's sender must give.
    pub basic_auth: Option<BasicAuthConfig>,
    /// The connector's section (`[sources.<id>.<kind>]`): its schema is the connector's.
    #[serde(flatten)]
    #[schemars(skip)]
    pub sections: BTreeMap<String, serde_json::Value>,
}

/// HTTP basic authentication of webhooks.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    pub username: String,
    /// Or `password_file`.
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
}

/// HMAC signature of webhook bodies.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignatureConfig {
    /// The shared secret.
    pub secret: Option<Secret>,
    pub secret_file: Option<PathBuf>,
    /// Header that carries the signature.
    #[serde(default = "default_signature_header")]
    pub header: String,
    /// Text before the hex digest in the header, e.g. `sha256=`.
    #[serde(default = "default_signature_prefix")]
    pub prefix: String,
    /// The hash: `sha256` (default) or `sha1`.
    #[serde(default)]
    pub algorithm: SignatureAlgorithm,
}

impl Default for SignatureConfig {
    /// HMAC-SHA256 in `X-Signature-256: sha256=<hex>`, the secret still to be given.
    fn default() -> Self {
        SignatureConfig {
            secret: None,
            secret_file: None,
            header: default_signature_header(),
            prefix: default_signature_prefix(),
            algorithm: SignatureAlgorithm::Sha256,
        }
    }
}

fn default_signature_header() -> String {
    "X-Signature-256".into()
}
fn default_signature_prefix() -> String {
    "sha256=".into()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SignatureAlgorithm {
    #[default]
    Sha256,
    Sha1,
}

/// A rule: when an event matches, its actions are queued in order.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Only events of this source (default: every source).
    pub source: Option<String>,
    /// Only these event kinds (default: all).
    #[serde(default)]
    pub on: Vec<EventKind>,
    /// Field conditions: a path into the event (`ticket.status`, `payload.x.y`) and the value
    /// it must equal (as text, case-insensitive); `*` only asks the field to be present.
    #[serde(default)]
    pub when: BTreeMap<String, String>,
    /// What to do, in order.
    pub actions: Vec<ActionConfig>,
    /// Do not try later rules once this one matched.
    #[serde(default)]
    pub stop: bool,
}

/// An action template. Text fields are templates (`{{ ticket.title }}`; see the reference).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionConfig {
    /// Make sure the ticket has a room: create it (one request) if missing, otherwise
    /// invite participants who are new. A closed ticket's room is reopened: renamed back
    /// and told so.
    OpenRoom {
        /// Room name template.
        #[serde(default = "default_room_name")]
        name: String,
        /// Room topic template.
        #[serde(default = "default_room_topic")]
        topic: String,
        /// `private_chat` (default), `trusted_private_chat` or `public_chat`.
        #[serde(default)]
        preset: RoomPreset,
        /// Encrypt the room (default: `matrix.encryption`).
        encrypted: Option<bool>,
        /// More users to invite (templates), besides the ticket's participants and owner.
        #[serde(default)]
        invite: Vec<String>,
        /// Notice posted when a closed ticket's room is reopened; empty posts none.
        #[serde(default = "default_reopen_notice")]
        reopen_notice: String,
    },
    /// Post a message into the ticket's room. Nothing is posted when it renders empty.
    Post {
        /// Message template (plain text).
        message: String,
        /// Send as `m.notice` (what bots usually send) instead of `m.text`.
        #[serde(default)]
        notice: bool,
    },
    /// Close: post a notice and rename the room.
    Close {
        /// Notice template.
        #[serde(default = "default_close_notice")]
        notice: String,
        /// New room name template; empty keeps the name.
        #[serde(default = "default_close_name")]
        rename: String,
    },
}

pub fn default_room_name() -> String {
    "{{ ticket.title or ('Ticket ' ~ ticket.key) }}".into()
}
pub fn default_room_topic() -> String {
    "{{ ticket.title or ticket.key }}{% if ticket.url %} · {{ ticket.url }}{% endif %}".into()
}
pub fn default_close_notice() -> String {
    "Ticket {{ ticket.key }} was closed{% if ticket.status %} ({{ ticket.status }}){% endif %}."
        .into()
}
pub fn default_reopen_notice() -> String {
    "Ticket {{ ticket.key }} was reopened{% if ticket.status %} ({{ ticket.status }}){% endif %}."
        .into()
}
pub fn default_close_name() -> String {
    "[closed] {{ ticket.title or ('Ticket ' ~ ticket.key) }}".into()
}

#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomPreset {
    #[default]
    PrivateChat,
    TrustedPrivateChat,
    PublicChat,
}

pub use switchboard_connector::Secret;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key path, e.g. `sources.tickets.signature.secret`.
    pub key: String,
    /// 1-based line, when the key (or its nearest parent) is in the file.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.key.is_empty(), self.line) {
            (true, Some(l)) => write!(f, "line {l}: {}", self.message),
            (true, None) => write!(f, "{}", self.message),
            (false, Some(l)) => write!(f, "line {l}: `{}`: {}", self.key, self.message),
            (false, None) => write!(f, "`{}`: {}", self.key, self.message),
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug)]
pub struct ConfigErrors {
    pub path: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.errors {
            writeln!(f, "{}: {e}", self.path.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A config with secrets resolved, validated as a whole.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub secrets: Secrets,
    /// Each connector source's checked config, by source ID.
    pub connectors: Connectors,
}

/// The connectors' checked configs, by source ID.
#[derive(Default)]
pub struct Connectors(pub BTreeMap<String, (SourceInfo, Checked)>);

impl Connectors {
    /// The sources that follow each source (`Kind::follows`).
    pub fn followers(&self, config: &Config) -> BTreeMap<String, Vec<String>> {
        let kinds = crate::registry::kinds();
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, (_, checked)) in &self.0 {
            let Some(kind) = config
                .sources
                .get(id)
                .and_then(|s| kinds.get(s.kind.as_str()))
            else {
                continue;
            };
            for (_, followed) in kind.follows(checked) {
                out.entry(followed).or_default().push(id.clone());
            }
        }
        out
    }
}

impl fmt::Debug for Connectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// Secrets read from values or `*_file` keys.
#[derive(Debug, Default)]
pub struct Secrets {
    pub database_url: Option<Secret>,
    pub matrix_login: Option<MatrixLogin>,
    pub metrics_password: Option<Secret>,
    pub status_page_password: Option<Secret>,
    pub data_secret: Option<Secret>,
    /// Signature secret per source ID.
    pub signatures: BTreeMap<String, Secret>,
    /// Webhook URL secret per source ID.
    pub path_secrets: BTreeMap<String, Secret>,
    /// Webhook basic authentication (username, password) per source ID.
    pub basic_auth: BTreeMap<String, (String, Secret)>,
}

#[derive(Debug, Clone)]
pub enum MatrixLogin {
    Password(Secret),
    AccessToken(Secret),
    SharedSecret(Secret),
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        path: path.to_owned(),
        errors: vec![ConfigError {
            key: String::new(),
            line: None,
            message: format!("cannot read the file: {e}"),
        }],
    })?;
    parse(&text).map_err(|errors| ConfigErrors {
        path: path.to_owned(),
        errors,
    })
}

/// Parses and validates config text, reporting every problem it can find.
pub fn parse(text: &str) -> Result<Loaded, Vec<ConfigError>> {
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        return Err(syntax
            .iter()
            .map(|e| ConfigError {
                key: String::new(),
                line: e.span().map(|s| line_of(text, s.start)),
                message: e.message().trim().to_string(),
            })
            .collect());
    }
    let lines = KeyLines::new(text, &doc);
    // The schema sees every structural problem at once; serde would stop at the first.
    let mut errors = schema_errors(&doc, &lines);
    if !errors.is_empty() {
        return Err(errors);
    }
    let de = toml::Deserializer::from(doc.clone());
    let config: Config = match serde_path_to_error::deserialize(de) {
        Ok(c) => c,
        Err(e) => {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let line = inner
                .span()
                .map(|s| line_of(text, s.start))
                .or_else(|| lines.line(&key));
            return Err(vec![ConfigError {
                key: if key == "." { String::new() } else { key },
                line,
                message: inner.message().trim().to_string(),
            }]);
        }
    };
    let (secrets, connectors) = validate(&config, &mut |key: &str, message: String| {
        errors.push(ConfigError {
            key: key.to_string(),
            line: lines.line(key),
            message,
        })
    });
    if errors.is_empty() {
        Ok(Loaded {
            config,
            secrets,
            connectors,
        })
    } else {
        Err(errors)
    }
}

impl ActionConfig {
    /// Every template of the action, with its key.
    pub fn templates(&self) -> Vec<(&'static str, &str)> {
        match self {
            ActionConfig::OpenRoom {
                name,
                topic,
                invite,
                reopen_notice,
                ..
            } => {
                let mut v = vec![
                    ("name", name.as_str()),
                    ("topic", topic.as_str()),
                    ("reopen_notice", reopen_notice.as_str()),
                ];
                v.extend(invite.iter().map(|t| ("invite", t.as_str())));
                v
            }
            ActionConfig::Post { message, .. } => vec![("message", message.as_str())],
            ActionConfig::Close { notice, rename } => {
                vec![("notice", notice.as_str()), ("rename", rename.as_str())]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[matrix]
homeserver = "http://127.0.0.1:8008"
user = "@bot:localhost"
password = "pw"

[sources.tickets]
kind = "webhook"
"#;

    #[test]
    fn minimal_config_loads_with_defaults() {
        let l = parse(MINIMAL).expect("valid");
        assert_eq!(l.config.http.listen.port(), 8080);
        assert!(l.config.matrix.encryption);
        assert!(matches!(
            l.secrets.matrix_login,
            Some(MatrixLogin::Password(_))
        ));
        assert_eq!(l.config.sources["tickets"].kind, "webhook");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = MINIMAL.replace(
            "kind = \"webhook\"",
            "kind = \"webhook\"\npath_secrte = \"x\"",
        );
        let errs = parse(&text).expect_err("invalid");
        assert_eq!(errs.len(), 1, "{errs:?}");
        // The key itself, on its own line, with the near miss and what is allowed.
        assert_eq!(errs[0].key, "sources.tickets.path_secrte");
        assert_eq!(errs[0].line, Some(9));
        let message = &errs[0].message;
        assert!(
            message.starts_with("unknown key; did you mean `path_secret`? Allowed here: "),
            "{message}"
        );
        assert!(
            message.contains("`path_secret`, `path_secret_file`"),
            "{message}"
        );
    }

    #[test]
    fn an_enabled_status_page_needs_a_login_or_an_address_list() {
        let page = |keys: &str| parse(&format!("{MINIMAL}\n[status_page]\n{keys}\n"));
        assert!(!parse(MINIMAL).expect("valid").config.status_page.enabled);
        let errs = page("enabled = true").expect_err("open to all");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, "status_page");
        assert!(errs[0].message.contains("`allow_ips`"), "{errs:?}");
        let errs = page("enabled = true\nusername = \"ops\"").expect_err("no password");
        assert!(
            errs.iter().any(|e| e.message.contains("go together")),
            "{errs:?}"
        );
        let l = page("enabled = true\nallow_ips = [\"127.0.0.1/32\"]").expect("valid");
        assert!(l.config.status_page.enabled);
        let l = page("enabled = true\nusername = \"ops\"\npassword = \"pw\"").expect("valid");
        assert_eq!(
            l.secrets
                .status_page_password
                .map(|p| p.expose().to_string()),
            Some("pw".into())
        );
    }

    #[test]
    fn every_error_is_reported() {
        let text = r#"
[http]
listen = 8080
body_limit = "big"

[matrix]
homeserver = "http://127.0.0.1:8008"
"#;
        let errs = parse(text).expect_err("invalid");
        let keys: Vec<_> = errs.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert!(keys.contains(&("http.listen", Some(3))), "{errs:?}");
        assert!(keys.contains(&("http.body_limit", Some(4))), "{errs:?}");
        assert!(keys.iter().any(|(k, _)| *k == "matrix"), "{errs:?}");
    }

    #[test]
    fn connector_sections_are_checked_by_their_connector_with_lines() {
        let text = format!(
            "{MINIMAL}\n[sources.other]\nkind = \"webhook\"\n[sources.other.webhook.fields]\n\
             ticket = \"\"\n"
        );
        let errs = parse(&text).expect_err("invalid");
        let keys: Vec<_> = errs.iter().map(|e| (e.key.as_str(), e.line)).collect();
        assert!(
            keys.contains(&("sources.other.webhook.fields.ticket", Some(13))),
            "{errs:?}"
        );
        let unknown = format!("{MINIMAL}\n[sources.third]\nkind = \"nosuchkind\"\n");
        let errs = parse(&unknown).expect_err("invalid");
        assert!(
            errs.iter()
                .any(|e| e.key == "sources.third.kind" && e.message.contains("webhook")),
            "{errs:?}"
        );
        // A section no connector has is named with its line.
        let misplaced = format!(
            "{MINIMAL}\n[sources.other]\nkind = \"webhook\"\n[sources.other.nosuch]\nx = 1\n"
        );
        let errs = parse(&misplaced).expect_err("invalid");
        assert!(
            errs.iter()
                .any(|e| e.key == "sources.other.nosuch" && e.message.starts_with("unknown key")),
            "{errs:?}"
        );
        let l = parse(MINIMAL).expect("valid");
        assert!(l.connectors.0.contains_key("tickets"));
    }

    #[test]
    fn the_log_leaves_out_the_matrix_clients_noise_unless_asked() {
        let log = LogConfig::default();
        let quiet = log.filter(None);
        assert!(quiet.starts_with("info,"), "{quiet}");
        assert!(quiet.contains("matrix_sdk::http_client=off"), "{quiet}");
        assert!(log.filter(Some(" ")).starts_with("info,"));
        let asked = "debug,matrix_sdk=debug";
        assert_eq!(log.filter(Some(asked)), asked);
        let env = log.filter(Some("switchboard=debug"));
        assert!(
            env.starts_with("switchboard=debug,matrix_sdk=error"),
            "{env}"
        );
    }

    #[test]
    fn syntax_errors_have_lines() {
        let errs = parse("[matrix]\nuser = \n").expect_err("invalid");
        assert_eq!(errs[0].line, Some(2), "{errs:?}");
    }

    #[test]
    fn semantic_errors_name_key_and_line() {
        let text = format!(
            "{MINIMAL}access_token = \"t\"\n\n[[rules]]\nsource = \"nope\"\nactions = [{{ type = \"post\", message = \"{{{{ x\" }}]\n"
        );
        let text = text.replace(
            "kind = \"webhook\"\naccess_token = \"t\"",
            "kind = \"webhook\"",
        );
        let text = text.replace(
            "password = \"pw\"",
            "password = \"pw\"\naccess_token = \"t\"",
        );
        let errs = parse(&text).expect_err("invalid");
        let find = |k: &str| errs.iter().find(|e| e.key == k).map(|e| e.line);
        assert_eq!(find("matrix.access_token"), Some(Some(6)), "{errs:?}");
        assert_eq!(find("rules.0.source"), Some(Some(12)), "{errs:?}");
        assert!(find("rules.0.actions.0.message").is_some(), "{errs:?}");
    }

    #[test]
    fn env_secrets_expand_and_missing_ones_are_errors() {
        let text = MINIMAL.replace("\"pw\"", "\"${SWITCHBOARD_TEST_UNSET_VAR}\"");
        let errs = parse(&text).expect_err("invalid");
        assert!(
            errs[0].message.contains("SWITCHBOARD_TEST_UNSET_VAR"),
            "{errs:?}"
        );
        assert_eq!(errs[0].key, "matrix.password");
        let path = std::env::var("PATH").expect("PATH is set");
        assert_eq!(
            switchboard_connector::config::expand_env("a${PATH}b").expect("set"),
            format!("a{path}b")
        );
        assert_eq!(
            switchboard_connector::config::expand_env("a$${PATH}b${PATH}").expect("escaped"),
            format!("a${{PATH}}b{path}")
        );
    }

    #[test]
    fn secrets_are_never_printed() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }

    #[test]
    fn committed_schema_is_current() {
        let committed = include_str!("../schemas/config.schema.json");
        let current = serde_json::to_string_pretty(&json_schema()).expect("json") + "\n";
        assert!(
            committed == current,
            "schemas/config.schema.json is stale: run `switchboard schema > schemas/config.schema.json`"
        );
    }

    proptest::proptest! {
        /// Any text, and configs put together from real keys with any values: every problem
        /// is reported (with a line), never a panic.
        #[test]
        fn any_config_text_is_checked(text in "(?s).{0,200}") {
            let _ = parse(&text);
        }

        #[test]
        fn any_values_of_real_keys_are_checked(
            hs in "(?s).{0,30}", user in "(?s).{0,20}", listen in "(?s).{0,25}",
            limit in proptest::num::i64::ANY, kind in "(?s).{0,12}", days in proptest::num::i64::ANY,
        ) {
            let q = |v: &str| toml_edit::Value::from(v).to_string();
            let text = format!(
                "[matrix]\nhomeserver = {}\nuser = {}\npassword = \"p\"\n[http]\nlisten = {}\n\
                 body_limit = {limit}\n[database]\nretention_days = {days}\n[sources.a]\nkind = {}\n",
                q(&hs), q(&user), q(&listen), q(&kind)
            );
            if let Err(errors) = parse(&text) {
                proptest::prop_assert!(!errors.is_empty());
                for e in errors {
                    proptest::prop_assert!(!e.to_string().is_empty());
                }
            }
        }
    }
}
