//! End-to-end tests: Switchboard as a user runs it, against a real Synapse, on SQLite and on
//! PostgreSQL. Each test has its own bot, users and rooms.

mod harness;

/// Runs each named test on SQLite and on PostgreSQL (`NAME::sqlite`, `NAME::postgres`).
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test]
            async fn sqlite() -> Result<()> {
                super::$name(Db::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() -> Result<()> {
                super::$name(Db::Postgres).await
            }
        }
    )*};
}

mod browser;
mod common;
mod helpdesk;
mod identity;
mod one_bot;
mod operations;
mod otobo;
mod pretix;
mod redmine;
mod rt;
mod upgrade;
mod webhook;
mod zammad;
