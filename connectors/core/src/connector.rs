//! The traits a connector implements. A `Kind` is registered once in the service (one line
//! in its registration list); it checks each source's config section and builds that
//! source's `Connector`, which the service then asks for its intake, routes, plans, actions,
//! what it hears in Matrix and its background work. Every part is optional.

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::action::Queued;
use crate::config::Checker;
use crate::db::{ActionRow, DbError, Dialect};
use crate::event::{TicketEvent, WebhookSource};
use crate::failure::Failure;
use crate::host::{Host, Matrix};

/// A connector's checked config, as its `Kind::check` made it; `Kind::build` takes it back.
pub type Checked = Box<dyn Any + Send + Sync>;

/// One source, as its connector is told about it.
#[derive(Debug, Clone, Default)]
pub struct SourceInfo {
    /// The source's ID: the `<id>` of `[sources.<id>]` and `/hooks/<id>`.
    pub id: String,
    /// Whether intake authenticates its webhooks (a signature, a URL secret or basic
    /// authentication).
    pub authenticated: bool,
    /// The bot's user ID or localpart, as configured.
    pub bot: String,
    /// Whether `GET /link/<id>/<key>` may ask for the room of a ticket that has none.
    pub link_create: bool,
}

/// A kind of source: what the service registers.
pub trait Kind: Send + Sync {
    /// The `kind` of a source in the config file, which is also the name of its section
    /// (`[sources.<id>.<kind>]`): lowercase snake case after the external service.
    fn name(&self) -> &'static str;
    /// The section's JSON Schema, made with the service's generator (so shared definitions
    /// are shared): usually `generator.subschema_for::<MyConfig>()`.
    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema;
    /// Whether a source of this kind must have a section.
    fn section_required(&self) -> bool {
        true
    }
    /// Checks a source's section (`None`: not given) and everything that depends on it,
    /// reporting each problem with its key; the checked config, or `None` after problems.
    fn check(
        &self,
        source: &SourceInfo,
        section: Option<&Value>,
        check: &mut Checker<'_>,
    ) -> Option<Checked>;
    /// Checks the sources of this kind together (at most one of something per bot), each
    /// problem reported with its key; a source whose own check failed comes with `None`.
    fn check_together(
        &self,
        _sources: &[(&SourceInfo, Option<&Checked>)],
        _report: &mut dyn FnMut(&str, String),
    ) {
    }
    /// The `type`s of the actions its connectors queue and run; no two kinds may share one,
    /// nor share one with the service's (`Action`).
    fn action_kinds(&self) -> &'static [&'static str] {
        &[]
    }
    /// Its tables: migrations whose versions no other kind's (and not the service's) use,
    /// run with the service's at start, in version order.
    fn migrations(&self, _dialect: Dialect) -> Option<&'static sqlx::migrate::Migrator> {
        None
    }
    /// Whether a source with this config hears Matrix events (`Connector::listener`).
    fn listens(&self, _checked: &Checked) -> bool {
        false
    }
    /// The rooms a source with this config names as its own, each with its key (relative to
    /// the section): no two sources may name one room.
    fn rooms(&self, _checked: &Checked) -> Vec<(String, String)> {
        Vec::new()
    }
    /// The sources a source with this config follows, each with its key (relative to the
    /// section): each must exist and be of a kind that `publishes`.
    fn follows(&self, _checked: &Checked) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Whether its sources tell followers about their tickets (`feed`).
    fn publishes(&self) -> bool {
        false
    }
    /// A whole config made from environment variables when there is no config file (a
    /// drop-in for another program): `None` when none of its variables is set.
    fn env_config(
        &self,
        _vars: &std::collections::BTreeMap<String, String>,
    ) -> Option<Result<EnvConfig, Vec<(String, String)>>> {
        None
    }
    /// The running connector of one source.
    fn build(
        &self,
        source: &SourceInfo,
        checked: &Checked,
        host: Arc<dyn Host>,
    ) -> Result<Arc<dyn Connector>, String>;
}

/// A config made from environment variables (`Kind::env_config`).
#[derive(Debug, Clone, Default)]
pub struct EnvConfig {
    /// What it is called in messages: `<PROGRAM>_* variables`.
    pub name: String,
    /// The config, as a config file's text; it goes through the same checks as a file.
    pub text: String,
    /// Which config key came from which variable: a problem with a key (or below it) is
    /// named by its variable.
    pub origin: std::collections::BTreeMap<String, String>,
    /// Variables that are set but change nothing: each is named in a warning at start.
    pub warnings: Vec<String>,
}

/// What an action of a connector runs with.
pub struct ActionContext<'a> {
    pub row: &'a ActionRow,
    pub host: &'a dyn Host,
    pub matrix: &'a dyn Matrix,
}

impl ActionContext<'_> {
    /// The transaction ID of the action's send number `part`.
    pub fn txn(&self, part: &str) -> String {
        self.row.txn_id(part)
    }
}

/// One source's running connector.
#[async_trait]
pub trait Connector: Send + Sync {
    /// Its webhook intake at `POST /hooks/<id>`: authenticated by the service as the source
    /// is configured, then handed to this.
    fn webhook(&self) -> Option<&dyn WebhookSource> {
        None
    }
    /// Routes of its own (an OAuth callback page).
    fn routes(self: Arc<Self>) -> Vec<Route> {
        Vec::new()
    }
    /// The actions for one event of an accepted delivery, in order, each in its lane.
    /// `None`: the configured rules decide (the default).
    async fn plan(&self, _event: &TicketEvent) -> Result<Option<Vec<Queued>>, DbError> {
        Ok(None)
    }
    /// Runs one of its own actions (a `type` of `Kind::action_kinds`); a short result to
    /// record (an ID, a count, or `skipped: why`).
    async fn execute(&self, cx: &ActionContext<'_>, action: &Value) -> Result<String, Failure> {
        let _ = cx;
        Err(Failure::Permanent(format!(
            "this source runs no `{}` actions",
            action["type"].as_str().unwrap_or_default()
        )))
    }
    /// A file of its far end that another source was told of (`feed::FeedFile::source`):
    /// its bytes and content type, fetched by `reference`.
    async fn file(&self, reference: &Value) -> Result<(Vec<u8>, String), Failure> {
        let _ = reference;
        Err(Failure::Permanent("this source lends no files".into()))
    }
    /// What it does with the Matrix events the sync hears.
    fn listener(&self) -> Option<&dyn Listener> {
        None
    }
    /// Readies it before anything is planned or run (loads what it keeps): once at start,
    /// before the engine and the worker start. An error stops the start.
    async fn prepare(&self) -> Result<(), DbError> {
        Ok(())
    }
    /// Its background work (polling, closing what is idle), started once at start; returns
    /// when there is none.
    async fn run(self: Arc<Self>) {}
}

/// A connector's part of the one sync loop.
#[async_trait]
pub trait Listener: Send + Sync {
    /// Whether the bot accepts an invite into `room` from `inviter` for this connector.
    fn takes_invite(&self, room: &str, inviter: Option<&str>) -> bool;
    /// The bot's user ID as logged in (the config may name only its localpart).
    fn know_bot(&self, _user_id: &str) {}
    /// Whether it wants nothing of a room's events.
    fn ignores(&self, _room: &str) -> bool {
        false
    }
    /// Whether a joined room nobody has claimed yet is one of its own (one its config names,
    /// or its tables know): the room is then its from now on. Rooms the bot joins on an
    /// invite belong to the source that took the invite.
    async fn claims(&self, _room: &dyn SyncRoom) -> Result<bool, DbError> {
        Ok(false)
    }
    /// Whether it takes a joined room that no listening source claims (a connector for
    /// direct chats: a chat joined before invites were recorded is one of them).
    fn takes_unclaimed(&self) -> bool {
        false
    }
    /// The events a sync response brought in a joined room, oldest first (events a
    /// limited sync left out read back first), decrypted where they could be, the bot's own
    /// left out. Called before the sync's position is stored: what is delivered to the
    /// inbox here (`Host::deliver`) is never lost, and an error makes the same response come
    /// again. False: it wants no more of this room's events (it is leaving it).
    async fn heard(&self, room: &dyn SyncRoom, events: &[Value]) -> Result<bool, DbError>;
    /// How long an event that cannot be decrypted yet waits for its room key. Until then it
    /// is kept and heard once it decrypts; after that it is heard as a notice with
    /// `unsigned."org.switchboard.undecryptable": true` in its place.
    fn key_wait(&self) -> std::time::Duration {
        std::time::Duration::from_secs(3600)
    }
    /// The first sync's account data and rooms, on the first start with this database (to
    /// take over what another program kept there).
    async fn first_sync(&self, _sync: &dyn FirstSync) {}
}

/// A joined room, as the sync has it.
#[async_trait]
pub trait SyncRoom: Send + Sync {
    fn id(&self) -> &str;
    /// Its joined members, as the sync has them (no request).
    async fn joined(&self) -> Vec<String>;
    /// A member's display name and avatar URL, as the sync has them.
    async fn profile(&self, user: &str) -> (Option<String>, Option<String>);
}

/// What the first sync brought.
#[async_trait]
pub trait FirstSync: Send + Sync {
    /// The bot's account data: (type, content).
    fn account_data(&self) -> Vec<(String, Value)>;
    /// A room's joined members; `None` when the bot is not in it.
    async fn joined(&self, room: &str) -> Option<Vec<String>>;
    /// One event of a room (decrypted when it could be).
    async fn event(&self, room: &str, event: &str) -> Option<Value>;
}

/// The marker of an event heard in place of one that could not be decrypted.
pub const UNDECRYPTABLE: &str = "org.switchboard.undecryptable";

/// A request to a connector's own route.
#[derive(Debug, Clone, Default)]
pub struct RouteRequest {
    pub query: HashMap<String, String>,
}

/// A connector route's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteReply {
    pub status: u16,
    /// `text/html; charset=utf-8`, `application/json`, ...
    pub content_type: &'static str,
    pub body: String,
}

type Handler =
    dyn Fn(RouteRequest) -> Pin<Box<dyn Future<Output = RouteReply> + Send>> + Send + Sync;

/// A `GET` route of a connector's own, at a fixed path.
#[derive(Clone)]
pub struct Route {
    /// The path's segments: `["oauth", "<kind>", "<id>", "callback"]`.
    pub path: Vec<String>,
    pub handler: Arc<Handler>,
}

impl Route {
    pub fn get<F, Fut>(path: &[&str], handler: F) -> Route
    where
        F: Fn(RouteRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = RouteReply> + Send + 'static,
    {
        Route {
            path: path.iter().map(|s| s.to_string()).collect(),
            handler: Arc::new(move |req| Box::pin(handler(req))),
        }
    }
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Route(/{})", self.path.join("/"))
    }
}

/// A page of text as HTML, escaped.
pub fn html_page(status: u16, text: &str) -> RouteReply {
    let text = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    RouteReply {
        status,
        content_type: "text/html; charset=utf-8",
        body: format!(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Switchboard</title>\
             </head><body><p>{text}</p></body></html>"
        ),
    }
}
