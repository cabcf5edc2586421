//! The connector SDK: the vocabulary every Switchboard connector shares (ticket events,
//! actions, failures), the traits a connector implements (`Kind`, `Connector`, `Listener`)
//! and what the service lends it (`Host`, `Matrix`). Connectors depend on this crate,
//! never on the service. `docs/connectors/writing.md` walks through writing one.

pub mod action;
pub mod config;
pub mod connector;
pub mod db;
pub mod event;
pub mod failure;
pub mod feed;
pub mod host;
#[cfg(feature = "testing")]
pub mod testing;

pub use action::{Action, Queued, RoomSpec};
pub use config::{Checker, Secret};
pub use connector::{
    ActionContext, Checked, Connector, EnvConfig, FirstSync, Kind, Listener, Route, RouteReply,
    RouteRequest, SourceInfo, SyncRoom,
};
pub use db::{Accepted, ActionRow, DbError, Dialect, now_ms, utc_fields};
pub use event::{
    Delivery, EventKind, MAX_DEDUPE_KEY, MAX_TICKET_KEY, RejectReason, TicketEvent, WebhookSource,
    check_delivery, is_matrix_user_id, lookup,
};
pub use failure::Failure;
pub use feed::{Feed, FeedFile, Side};
pub use host::{ActAs, Host, Matrix};
