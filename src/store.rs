//! Durable state: inbox, outbox, links, cursors and settings, on SQLite or PostgreSQL.
//! The same queries serve both databases; only migrations and row locking differ.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use switchboard_connector::DbError;
use tokio::sync::mpsc;

mod intake;
mod outbox;
mod problems;
mod prune;
mod rooms;
mod settings;
mod undecrypted;

use intake::{INTAKE_BATCH, IntakeRequest, intake_writer};
pub use outbox::{InboxRow, NewAction, OutboxCounts, OutboxRow, queue_after};
pub use problems::{Backlog, Problem, ProblemCounts, Retry};
pub use rooms::Link;
pub use undecrypted::Undecrypted;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database answered with an error or could not be reached.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration failed at start.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored JSON value does not parse (a bug or a hand-edited row).
    #[error("stored JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The URL names no supported database.
    #[error("unsupported database URL (use sqlite: or postgres:)")]
    Url,
    /// The batch a delivery was written in failed (the message is the database's).
    #[error("intake: {0}")]
    Intake(String),
    /// The registered connectors clash (two migrations with one number).
    #[error("connectors: {0}")]
    Connectors(String),
    /// An operator named an item that is not `action:<id>` or `delivery:<id>`.
    #[error("`{0}` is no item ID (action:<id> or delivery:<id>)")]
    ItemId(String),
}

impl StoreError {
    /// Whether the database refused this statement for what it holds (a value it cannot
    /// store, a broken constraint, a stored JSON value that does not parse), so trying the
    /// same again fails the same. Lost connections, timeouts, lock waits, deadlocks,
    /// serialization failures and a server shutting down are not refusals: they pass.
    pub fn is_refusal(&self) -> bool {
        match self {
            StoreError::Json(_) => true,
            StoreError::Db(e) => switchboard_connector::db::refuses(e),
            _ => false,
        }
    }
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> StoreError {
        match e {
            DbError::Db(e) => StoreError::Db(e),
            DbError::Json(e) => StoreError::Json(e),
            // Non-exhaustive: a kind added later is a database problem too.
            #[allow(unreachable_patterns)]
            other => StoreError::Intake(other.to_string()),
        }
    }
}

impl From<StoreError> for DbError {
    fn from(e: StoreError) -> DbError {
        match e {
            StoreError::Db(e) => DbError::Db(e),
            StoreError::Json(e) => DbError::Json(e),
            other => DbError::Db(sqlx::Error::Protocol(other.to_string())),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub use switchboard_connector::{Accepted, Dialect, now_ms};

/// The service's own migrations; each connector's are run with them (`registry::migrator`).
pub static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("schemas/migrations/sqlite");
pub static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator =
    sqlx::migrate!("schemas/migrations/postgres");

/// The store: a pool, the dialect it speaks, and the intake writer.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    intake: mpsc::Sender<IntakeRequest>,
}

/// How long a caller waits for a free connection before it gets an error.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bind parameters for statements built at run time: `$1, $2, ...` on PostgreSQL, `?` on
/// SQLite, which finds a numbered parameter by a scan of all of them, so binding the large
/// statements of intake and the engine was quadratic. Values bind in the order written.
struct Params {
    dialect: Dialect,
    n: usize,
}

impl Params {
    fn new(dialect: Dialect) -> Params {
        Params { dialect, n: 0 }
    }

    /// The next parameter.
    fn next(&mut self) -> String {
        self.list(1)
    }

    /// `count` parameters, comma-separated.
    fn list(&mut self, count: usize) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(count * 4);
        for i in 0..count {
            if i > 0 {
                out.push_str(", ");
            }
            self.n += 1;
            match self.dialect {
                Dialect::Sqlite => out.push('?'),
                Dialect::Postgres => {
                    let _ = write!(out, "${}", self.n);
                }
            }
        }
        out
    }
}

impl Store {
    /// Connects, creating a SQLite file if needed, and runs the migrations.
    pub async fn connect(url: &str, max_connections: Option<u32>) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(StoreError::Url);
        };
        let mut opts = AnyPoolOptions::new().acquire_timeout(ACQUIRE_TIMEOUT);
        let url = match dialect {
            Dialect::Sqlite => {
                // Create the file (and WAL mode, which persists in it) with a plain connection.
                let sopts = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
                if let Some(dir) = sopts.get_filename().parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir).map_err(|e| StoreError::Db(e.into()))?;
                }
                use sqlx::ConnectOptions;
                sopts.connect().await?;
                // One connection by default: SQLite has one writer at a time, and writers that
                // wait on each other's locks sleep in steps; the pool's queue hands the
                // connection over at once instead.
                opts = opts
                    .max_connections(max_connections.unwrap_or(1))
                    // A ping before each use is one more round trip to the connection's
                    // thread, and a file has no far end to hang up.
                    .test_before_acquire(false)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            use sqlx::Executor;
                            // NORMAL (no flush per commit) is safe for everything but intake,
                            // which switches its own connection to FULL: the rest can be
                            // redone from the inbox after a power loss, and actions queued
                            // again keep their transaction IDs.
                            // A checkpoint every 10,000 pages (40 MB of log) rather than
                            // SQLite's 1,000: a page written by several commits in between
                            // (an index leaf, say) is copied into the database once.
                            conn.execute(
                                "PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL; \
                                 PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 10000;",
                            )
                            .await?;
                            Ok(())
                        })
                    });
                url.to_string()
            }
            Dialect::Postgres => {
                opts = opts
                    .max_connections(max_connections.unwrap_or(8))
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // As on SQLite, only intake waits for its commit to be flushed
                            // (it has a connection of its own, with the server's setting):
                            // the rest can be redone from the inbox after a crash of the
                            // server, and actions queued again keep their transaction IDs.
                            // The log is written in order, so intake's flush carries every
                            // earlier commit with it.
                            use sqlx::Executor;
                            conn.execute("SET synchronous_commit = off").await?;
                            Ok(())
                        })
                    });
                url.to_string()
            }
        };
        let pool = opts.connect(&url).await?;
        let core = match dialect {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::Postgres => &POSTGRES_MIGRATIONS,
        };
        crate::registry::migrator(core, dialect)
            .map_err(StoreError::Connectors)?
            .run(&pool)
            .await?;
        let (tx, rx) = mpsc::channel(4 * INTAKE_BATCH);
        // Intake's writer has a thread and a runtime of its own: it waits on the database
        // several times per batch, and on the shared runtime every one of those waits ended
        // behind the HTTP tasks queued meanwhile, while all webhooks of the batch waited on it.
        let writer_pool = match dialect {
            // SQLite: the one connection everything shares (one writer at a time).
            Dialect::Sqlite => pool.clone(),
            // PostgreSQL: one connection of its own, with the server's `synchronous_commit`
            // (see above); the writer's statements follow one another, so one is enough.
            Dialect::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect(&url)
                    .await?
            }
        };
        let cannot_start =
            |e: std::io::Error| StoreError::Intake(format!("cannot start the intake writer: {e}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(cannot_start)?;
        std::thread::Builder::new()
            .name("switchboard-intake".into())
            .spawn(move || runtime.block_on(intake_writer(writer_pool, dialect, rx)))
            .map_err(cannot_start)?;
        Ok(Store {
            pool,
            dialect,
            intake: tx,
        })
    }

    /// The default SQLite URL for a data directory.
    pub fn sqlite_url(data_dir: &Path) -> String {
        format!("sqlite://{}", data_dir.join("switchboard.db").display())
    }

    /// The pool, for the tables of connectors (through `host::ServiceHost`).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh store on each database: SQLite in a temp dir, and a new PostgreSQL database
    /// on the server named by `SWITCHBOARD_TEST_POSTGRES` (the local one by default).
    pub(crate) async fn stores() -> Vec<Store> {
        let dir = std::env::temp_dir().join(format!("switchboard-store-{}", rand::random::<u64>()));
        let sqlite = Store::connect(&Store::sqlite_url(&dir), None)
            .await
            .expect("sqlite");
        let base = std::env::var("SWITCHBOARD_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        let name = format!("switchboard_unit_{:x}", rand::random::<u64>());
        use sqlx::Connection;
        let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
            .await
            .expect("PostgreSQL is reachable");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create database");
        let pg = Store::connect(&format!("{base}/{name}"), None)
            .await
            .expect("postgres");
        vec![sqlite, pg]
    }

    pub(super) fn action(ticket: &str, n: u32) -> NewAction {
        NewAction {
            source_id: "s".into(),
            ticket_key: ticket.into(),
            action: format!("{{\"n\":{n}}}"),
        }
    }

    /// Only intake's commits wait for the disk; the shared connections' do not.
    #[tokio::test]
    async fn shared_connections_do_not_wait_for_the_disk() {
        for store in stores().await {
            let (sql, relaxed) = match store.dialect {
                // 1 is NORMAL: no flush per commit in WAL mode.
                Dialect::Sqlite => (
                    "SELECT CAST(synchronous AS TEXT) FROM pragma_synchronous",
                    "1",
                ),
                Dialect::Postgres => ("SELECT current_setting('synchronous_commit')", "off"),
            };
            let value: String = sqlx::query_scalar(sql)
                .fetch_one(&store.pool)
                .await
                .expect("setting");
            assert_eq!(value, relaxed, "{:?}", store.dialect);
        }
    }
}
