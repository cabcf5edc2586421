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
#[derive(Debug, Clone)]
pub struct SourceInfo {
    /// The source's ID: the `<id>` of `[sources.<id>]` and `/hooks/<id>`.
    pub id: String,
    /// Whether intake authenticates its webhooks (a signature, a URL secret or basic
    /// authentication).
    pub authenticated: bool,
    /// The bot's user ID or localpart, as configured.
    pub bot: String,
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
    /// problem reported with its key.
    fn check_together(
        &self,
        _sources: &[(&SourceInfo, &Checked)],
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
    /// The running connector of one source.
    fn build(
        &self,
        source: &SourceInfo,
        checked: &Checked,
        host: Arc<dyn Host>,
    ) -> Result<Arc<dyn Connector>, String>;
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
    /// What it does with the Matrix events the sync hears.
    fn listener(&self) -> Option<&dyn Listener> {
        None
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
    /// The events a sync response brought in a joined room, oldest first, decrypted where
    /// they could be, the bot's own left out. Called before the sync's position is stored:
    /// what is delivered to the inbox here (`Host::deliver`) is never lost, and an error
    /// makes the same response come again.
    async fn heard(&self, room: &str, events: &[Value]) -> Result<(), DbError>;
}

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
    /// The path's segments: `["oauth", "pretix", "<id>", "callback"]`.
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
