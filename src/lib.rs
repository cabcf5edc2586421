//! Switchboard connects tickets to chat: sources turn what they hear into ticket events,
//! rules turn events into actions, and the Matrix sink carries them out, durably.

pub mod app;
pub mod config;
pub mod connectors;
pub mod engine;
pub mod env_config;
pub mod fit;
pub mod host;
pub mod http;
pub mod matrix;
pub mod metrics;
pub mod operate;
pub mod registry;
pub mod seal;
pub mod store;
pub mod worker;
