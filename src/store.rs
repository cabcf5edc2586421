//! Durable state: inbox, outbox, links, cursors and settings, on SQLite or PostgreSQL.
//! The same queries serve both databases; only migrations and row locking differ.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Row};
use switchboard_connector::{ActionRow, DbError};
use tokio::sync::{mpsc, oneshot};

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

/// A delivery waiting for the intake writer.
#[derive(Debug)]
struct IntakeRequest {
    source_id: String,
    dedupe_key: String,
    events: String,
    reply: oneshot::Sender<Result<Accepted>>,
}

/// Most deliveries written in one statement.
const INTAKE_BATCH: usize = 512;

/// How long a caller waits for a free connection before it gets an error.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// An accepted delivery the engine has not turned into actions yet.
#[derive(Debug, Clone)]
pub struct InboxRow {
    pub id: i64,
    pub source_id: String,
    pub events: String,
}

/// An action for the outbox, before it has an ID.
#[derive(Debug, Clone)]
pub struct NewAction {
    pub source_id: String,
    pub ticket_key: String,
    pub action: String,
}

/// A claimed outbox entry.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: i64,
    pub source_id: String,
    pub ticket_key: String,
    pub action: String,
    /// Claims so far, this one included: more than 1 means an earlier try may have done
    /// part of the work.
    pub attempts: i64,
    /// Stable across re-queueing: the delivery's ID and the action's position in it.
    pub txn_key: String,
    /// Errors so far that the far end answered (`Failure::Refused`): at
    /// `worker::MAX_REFUSED` the action is set aside.
    pub errors: i64,
}

/// A ticket's room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub source_id: String,
    pub ticket_key: String,
    pub room_id: String,
    pub thread_id: Option<String>,
    /// Users invited so far (JSON list).
    pub invited: Vec<String>,
    pub closed: bool,
}

/// An event heard but not decrypted yet (`keep_undecrypted`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecrypted {
    pub event_id: String,
    pub room_id: String,
    /// The encrypted event as heard (JSON).
    pub event: String,
    /// When it was first heard (milliseconds since the epoch).
    pub heard_at: i64,
}

/// Counts of outbox entries by state, for readiness, metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    pub pending: i64,
    pub done: i64,
    pub failed: i64,
    pub set_aside: i64,
}

/// Something that did not go through and waits for an operator: an action that failed or
/// was set aside, or a delivery that was set aside (`Store::problems`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `action:<id>` or `delivery:<id>`, as `switchboard retry` takes it.
    pub id: String,
    pub source_id: String,
    /// The ticket, for an action; a delivery's tickets are in its events.
    pub ticket_key: Option<String>,
    /// The action's kind (`open_room`, `post`, ...) or `delivery`.
    pub kind: String,
    /// `failed` (a permanent error) or `set_aside` (kept failing).
    pub state: String,
    pub tries: i64,
    pub error: String,
    /// When it last changed (Unix ms).
    pub updated_at: i64,
}

/// What `Store::retry_problems` puts back in line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// One item by its `Problem::id`.
    One(String),
    /// Every failed or set-aside item, of one source or of all.
    All { source: Option<String> },
}

/// Counts of items waiting for an operator, by source (`Store::problem_counts`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProblemCounts {
    /// (source, state) -> actions failed or set aside.
    pub actions: HashMap<(String, String), i64>,
    /// source -> deliveries set aside.
    pub deliveries: HashMap<String, i64>,
}

/// A query on the Any driver, as `sqlx::query` builds it.
type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

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

    /// Stores a delivery unless its dedupe key was seen before. Durable when this returns.
    ///
    /// Concurrent deliveries share one transaction (group commit): with a synchronous disk
    /// flush per commit, that is what lets intake keep up with many webhooks at once.
    pub async fn accept(
        &self,
        source_id: &str,
        dedupe_key: &str,
        events: &str,
    ) -> Result<Accepted> {
        let (reply, answer) = oneshot::channel();
        let req = IntakeRequest {
            source_id: source_id.to_string(),
            dedupe_key: dedupe_key.to_string(),
            events: events.to_string(),
            reply,
        };
        self.intake
            .send(req)
            .await
            .map_err(|_| StoreError::Intake("the intake writer stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Intake("the intake writer stopped".into()))?
    }

    /// The oldest deliveries not yet turned into actions.
    pub async fn unprocessed(&self, limit: i64) -> Result<Vec<InboxRow>> {
        let rows = sqlx::query(
            "SELECT id, source_id, events FROM inbox WHERE processed_at IS NULL \
             AND set_aside_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(InboxRow {
                    id: r.try_get(0)?,
                    source_id: r.try_get(1)?,
                    events: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// Queues deliveries' actions and marks the deliveries processed, all in one
    /// transaction, so a crash leaves either both or neither. Two statements per batch.
    pub async fn commit_actions(&self, batch: &[(i64, Vec<NewAction>)]) -> Result<()> {
        use std::fmt::Write;
        if batch.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let mut params = Params::new(self.dialect);
        let sql = format!(
            "UPDATE inbox SET processed_at = {}, updated_at = {} \
             WHERE processed_at IS NULL AND id IN ({}) RETURNING id",
            params.next(),
            params.next(),
            params.list(batch.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now).bind(now);
        for (id, _) in batch {
            q = q.bind(*id);
        }
        // Only rows still unprocessed: another engine may have got to some first.
        let mut mine = HashSet::new();
        for row in q.fetch_all(&mut *tx).await? {
            mine.insert(row.try_get::<i64, _>(0)?);
        }
        let rows: Vec<(i64, usize, &NewAction)> = batch
            .iter()
            .filter(|(id, _)| mine.contains(id))
            .flat_map(|(id, actions)| actions.iter().enumerate().map(move |(i, a)| (*id, i, a)))
            .collect();
        // SQLite allows 32766 parameters in one statement; 8 per row here.
        for chunk in rows.chunks(4000) {
            let mut sql = String::from(
                "INSERT INTO outbox (inbox_id, source_id, ticket_key, action, txn_key, \
                 next_attempt_at, created_at, updated_at) VALUES ",
            );
            let mut params = Params::new(self.dialect);
            for i in 0..chunk.len() {
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(sql, "{sep}({})", params.list(8));
            }
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (inbox_id, i, a) in chunk {
                q = q
                    .bind(*inbox_id)
                    .bind(&a.source_id)
                    .bind(&a.ticket_key)
                    .bind(&a.action)
                    .bind(format!("{inbox_id}.{i}"))
                    .bind(now)
                    .bind(now)
                    .bind(now);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Claims up to `limit` due actions that are first in line for their ticket, leasing
    /// them for `lease` so no other worker takes them meanwhile.
    pub async fn claim(&self, limit: i64, lease: Duration) -> Result<Vec<OutboxRow>> {
        let lock = match self.dialect {
            Dialect::Sqlite => "",
            Dialect::Postgres => "FOR UPDATE OF o SKIP LOCKED",
        };
        let pick = format!(
            "SELECT o.id FROM outbox o WHERE o.state = 'pending' \
               AND o.next_attempt_at <= $2 AND (o.locked_until IS NULL OR o.locked_until < $2) \
               AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.state = 'pending' \
                 AND p.source_id = o.source_id AND p.ticket_key = o.ticket_key AND p.id < o.id) \
               ORDER BY o.id LIMIT $3 {lock}"
        );
        self.lease(&pick, lease, |q| q.bind(limit)).await
    }

    /// Leases the actions queued behind `after` for the same ticket, in order, up to
    /// `limit`. Only for the worker holding the lease on `after`: while a ticket has an
    /// earlier action pending nobody else runs its later ones, so they are this worker's.
    pub async fn lease_following(
        &self,
        after: &OutboxRow,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<OutboxRow>> {
        let lock = match self.dialect {
            Dialect::Sqlite => "",
            Dialect::Postgres => "FOR UPDATE",
        };
        let pick = format!(
            "SELECT id FROM outbox WHERE state = 'pending' AND source_id = $3 \
               AND ticket_key = $4 AND id > $5 ORDER BY id LIMIT $6 {lock}"
        );
        self.lease(&pick, lease, |q| {
            q.bind(&after.source_id)
                .bind(&after.ticket_key)
                .bind(after.id)
                .bind(limit)
        })
        .await
    }

    /// Leases the actions `pick` selects (its parameters from `$3` on, bound by `bind`;
    /// `$2` is now) and returns them in ID order. Every lease counts as an attempt.
    async fn lease<'q>(
        &self,
        pick: &str,
        lease: Duration,
        bind: impl FnOnce(AnyQuery<'q>) -> AnyQuery<'q>,
    ) -> Result<Vec<OutboxRow>> {
        let now = now_ms();
        let sql = format!(
            "UPDATE outbox SET locked_until = $1, attempts = attempts + 1, updated_at = $2 \
             WHERE id IN ({pick}) \
             RETURNING id, source_id, ticket_key, action, attempts, COALESCE(txn_key, ''), errors"
        );
        let q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now + lease.as_millis() as i64)
            .bind(now);
        let rows = bind(q).fetch_all(&self.pool).await?;
        let mut out: Vec<OutboxRow> = rows.iter().map(outbox_row).collect::<Result<_>>()?;
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    /// Frees the leases of actions a worker took but will not run now.
    pub async fn release(&self, ids: &[i64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE outbox SET locked_until = NULL WHERE id IN ({})",
            Params::new(self.dialect).list(ids.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in ids {
            q = q.bind(*id);
        }
        q.execute(&self.pool).await?;
        Ok(())
    }

    /// Marks an action done.
    pub async fn complete(&self, id: i64, result: Option<&str>) -> Result<()> {
        self.finish(id, "done", None, result).await
    }

    /// Marks an action failed for good (a permanent error).
    pub async fn fail(&self, id: i64, error: &str) -> Result<()> {
        self.finish(id, "failed", Some(error), None).await
    }

    async fn finish(
        &self,
        id: i64,
        state: &str,
        error: Option<&str>,
        result: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET state = $1, last_error = $2, result = $3, locked_until = NULL, \
             updated_at = $4 WHERE id = $5",
        )
        .bind(state)
        .bind(error)
        .bind(result)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks an action set aside: it kept failing, and waits for an operator.
    pub async fn set_aside(&self, id: i64, error: &str) -> Result<()> {
        self.finish(id, "set_aside", Some(error), None).await
    }

    /// Puts an action back for a later try; `refused` counts the error towards setting it
    /// aside.
    pub async fn retry(&self, id: i64, after: Duration, error: &str, refused: bool) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "UPDATE outbox SET next_attempt_at = $1, last_error = $2, locked_until = NULL, \
             updated_at = $3, errors = errors + $4 WHERE id = $5",
        )
        .bind(now + after.as_millis() as i64)
        .bind(error)
        .bind(now)
        .bind(i64::from(refused))
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Frees every lease. Only for a store no other process shares (SQLite): after a crash
    /// the claimed actions are due at once instead of when their lease runs out.
    pub async fn release_leases(&self) -> Result<u64> {
        let r = sqlx::query("UPDATE outbox SET locked_until = NULL WHERE state = 'pending' AND locked_until IS NOT NULL")
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    /// When the next pending action that is waiting (for a retry, or for a lease to run
    /// out) becomes due (ms), if any. Actions due already are not counted: they are claimed
    /// when a worker is free, or run by the lane that holds their ticket, and both wake the
    /// worker; counting them would have it poll while a busy ticket's queue drains.
    pub async fn next_due(&self) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MIN(CASE WHEN locked_until IS NOT NULL AND locked_until > next_attempt_at \
             THEN locked_until ELSE next_attempt_at END) FROM outbox WHERE state = 'pending' \
             AND (next_attempt_at > $1 OR locked_until > $1)",
        )
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }

    /// Deletes finished records created before `cutoff` (Unix milliseconds): deliveries
    /// already turned into actions, and actions done or failed. Pending work is never
    /// deleted, nor are links, nor anything set aside. A redelivery of a delivery whose record is gone is no longer
    /// recognised as a repeat. Returns how many deliveries and actions were deleted.
    pub async fn prune(&self, cutoff: i64) -> Result<(u64, u64)> {
        let deliveries = self
            .prune_table("inbox", "processed_at IS NOT NULL", cutoff)
            .await?;
        let actions = self
            .prune_table("outbox", "state IN ('done', 'failed')", cutoff)
            .await?;
        Ok((deliveries, actions))
    }

    /// Deletes a table's finished rows created before `cutoff`, a chunk per statement, so no
    /// other writer waits long on one. IDs grow with creation time, so the rows before the
    /// cutoff are those below the first row at or after it, found without a scan of the rest.
    async fn prune_table(&self, table: &str, finished: &str, cutoff: i64) -> Result<u64> {
        const CHUNK: u64 = 2000;
        let bound: Option<i64> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT coalesce((SELECT id FROM {table} WHERE created_at >= $1 ORDER BY id LIMIT 1), \
             (SELECT max(id) + 1 FROM {table}))"
        )))
        .bind(cutoff)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        let Some(bound) = bound else {
            return Ok(0);
        };
        let delete = format!(
            "DELETE FROM {table} WHERE id IN \
             (SELECT id FROM {table} WHERE id < $1 AND {finished} ORDER BY id LIMIT {CHUNK})"
        );
        let mut deleted = 0;
        loop {
            let n = sqlx::query(sqlx::AssertSqlSafe(delete.as_str()))
                .bind(bound)
                .execute(&self.pool)
                .await?
                .rows_affected();
            deleted += n;
            if n < CHUNK {
                return Ok(deleted);
            }
        }
    }

    /// How many actions are still to do (an index-only count, cheap to ask often).
    pub async fn pending_actions(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM outbox WHERE state = 'pending'")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    pub async fn outbox_counts(&self) -> Result<OutboxCounts> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM outbox GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        let mut c = OutboxCounts::default();
        for r in rows {
            let state: String = r.try_get(0)?;
            let n: i64 = r.try_get(1)?;
            match state.as_str() {
                "pending" => c.pending = n,
                "done" => c.done = n,
                "failed" => c.failed = n,
                "set_aside" => c.set_aside = n,
                _ => {}
            }
        }
        Ok(c)
    }

    /// The last error of failed actions, newest first (for operators and tests).
    pub async fn failures(&self, limit: i64) -> Result<Vec<(i64, String)>> {
        let rows = sqlx::query(
            "SELECT id, COALESCE(last_error, '') FROM outbox WHERE state = 'failed' \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Counts a failed try of a delivery the engine could not turn into actions; at `max`
    /// tries it is set aside. Returns whether it was.
    pub async fn delivery_failed(&self, id: i64, error: &str, max: i64) -> Result<bool> {
        let now = now_ms();
        let row = sqlx::query(
            "UPDATE inbox SET attempts = attempts + 1, last_error = $1, updated_at = $2, \
             set_aside_at = CASE WHEN attempts + 1 >= $3 THEN $2 ELSE NULL END \
             WHERE id = $4 AND processed_at IS NULL RETURNING set_aside_at",
        )
        .bind(error)
        .bind(now)
        .bind(max)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => r.try_get::<Option<i64>, _>(0)?.is_some(),
            None => false,
        })
    }

    /// Failed and set-aside actions and set-aside deliveries, newest first, at most
    /// `limit`, of one source and (for actions) one ticket if given.
    pub async fn problems(
        &self,
        source: Option<&str>,
        ticket: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Problem>> {
        let actions = sqlx::query(
            "SELECT id, source_id, ticket_key, action, state, attempts, \
             COALESCE(last_error, ''), updated_at FROM outbox \
             WHERE state IN ('failed', 'set_aside') AND ($1 IS NULL OR source_id = $1) \
             AND ($2 IS NULL OR ticket_key = $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(source)
        .bind(ticket)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(actions.len());
        for r in &actions {
            let action: String = r.try_get(3)?;
            let kind = serde_json::from_str::<switchboard_connector::Action>(&action)
                .map_or("unknown", |a| a.kind())
                .to_string();
            out.push(Problem {
                id: format!("action:{}", r.try_get::<i64, _>(0)?),
                source_id: r.try_get(1)?,
                ticket_key: Some(r.try_get(2)?),
                kind,
                state: r.try_get(4)?,
                tries: r.try_get(5)?,
                error: r.try_get(6)?,
                updated_at: r.try_get(7)?,
            });
        }
        if ticket.is_none() {
            let deliveries = sqlx::query(
                "SELECT id, source_id, attempts, COALESCE(last_error, ''), updated_at FROM inbox \
                 WHERE set_aside_at IS NOT NULL AND ($1 IS NULL OR source_id = $1) \
                 ORDER BY id DESC LIMIT $2",
            )
            .bind(source)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            for r in &deliveries {
                out.push(Problem {
                    id: format!("delivery:{}", r.try_get::<i64, _>(0)?),
                    source_id: r.try_get(1)?,
                    ticket_key: None,
                    kind: "delivery".into(),
                    state: "set_aside".into(),
                    tries: r.try_get(2)?,
                    error: r.try_get(3)?,
                    updated_at: r.try_get(4)?,
                });
            }
            out.sort_by_key(|p| std::cmp::Reverse(p.updated_at));
            out.truncate(limit.max(0) as usize);
        }
        Ok(out)
    }

    /// Puts failed or set-aside items back in line, to be tried again as if new; returns
    /// how many. An action goes back before its ticket's later actions; a delivery is
    /// processed again by the engine.
    pub async fn retry_problems(&self, which: &Retry) -> Result<u64> {
        let now = now_ms();
        let (action, delivery, source) = match which {
            Retry::One(id) => {
                let (what, n) = id
                    .split_once(':')
                    .and_then(|(w, n)| Some((w, n.parse::<i64>().ok()?)))
                    .or_else(|| Some(("action", id.parse::<i64>().ok()?)))
                    .ok_or_else(|| StoreError::ItemId(id.clone()))?;
                match what {
                    "action" => (Some(n), None, None),
                    "delivery" => (None, Some(n), None),
                    _ => return Err(StoreError::ItemId(id.clone())),
                }
            }
            Retry::All { source } => (None, None, source.as_deref()),
        };
        let all = matches!(which, Retry::All { .. });
        let mut n = 0;
        if all || action.is_some() {
            n += sqlx::query(
                "UPDATE outbox SET state = 'pending', errors = 0, next_attempt_at = $1, \
                 locked_until = NULL, updated_at = $1 WHERE state IN ('failed', 'set_aside') \
                 AND ($2 IS NULL OR id = $2) AND ($3 IS NULL OR source_id = $3)",
            )
            .bind(now)
            .bind(action)
            .bind(source)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        if all || delivery.is_some() {
            n += sqlx::query(
                "UPDATE inbox SET set_aside_at = NULL, attempts = 0, updated_at = $1 \
                 WHERE set_aside_at IS NOT NULL AND ($2 IS NULL OR id = $2) \
                 AND ($3 IS NULL OR source_id = $3)",
            )
            .bind(now)
            .bind(delivery)
            .bind(source)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        Ok(n)
    }

    /// How many items wait for an operator, by source (index-only on both databases).
    pub async fn problem_counts(&self) -> Result<ProblemCounts> {
        let mut c = ProblemCounts::default();
        let rows = sqlx::query(
            "SELECT source_id, state, COUNT(*) FROM outbox \
             WHERE state IN ('failed', 'set_aside') GROUP BY source_id, state",
        )
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            c.actions
                .insert((r.try_get(0)?, r.try_get(1)?), r.try_get(2)?);
        }
        let rows = sqlx::query(
            "SELECT source_id, COUNT(*) FROM inbox WHERE set_aside_at IS NOT NULL \
             GROUP BY source_id",
        )
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            c.deliveries.insert(r.try_get(0)?, r.try_get(1)?);
        }
        Ok(c)
    }

    pub async fn link(&self, source_id: &str, ticket_key: &str) -> Result<Option<Link>> {
        let row = sqlx::query(
            "SELECT source_id, ticket_key, room_id, thread_id, invited, closed_at FROM links \
             WHERE source_id = $1 AND ticket_key = $2",
        )
        .bind(source_id)
        .bind(ticket_key)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let invited: String = r.try_get(4)?;
            Ok(Link {
                source_id: r.try_get(0)?,
                ticket_key: r.try_get(1)?,
                room_id: r.try_get(2)?,
                thread_id: r.try_get(3)?,
                invited: serde_json::from_str(&invited)?,
                closed: r.try_get::<Option<i64>, _>(5)?.is_some(),
            })
        })
        .transpose()
    }

    /// Records a ticket's room. An existing link wins (and is returned).
    pub async fn insert_link(&self, link: &Link) -> Result<Link> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO links (source_id, ticket_key, room_id, thread_id, invited, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) \
             ON CONFLICT (source_id, ticket_key) DO NOTHING",
        )
        .bind(&link.source_id)
        .bind(&link.ticket_key)
        .bind(&link.room_id)
        .bind(&link.thread_id)
        .bind(serde_json::to_string(&link.invited)?)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(self
            .link(&link.source_id, &link.ticket_key)
            .await?
            .unwrap_or_else(|| link.clone()))
    }

    pub async fn set_invited(
        &self,
        source_id: &str,
        ticket_key: &str,
        invited: &[String],
    ) -> Result<()> {
        sqlx::query(
            "UPDATE links SET invited = $1, updated_at = $2 WHERE source_id = $3 AND ticket_key = $4",
        )
        .bind(serde_json::to_string(invited)?)
        .bind(now_ms())
        .bind(source_id)
        .bind(ticket_key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a ticket's room closed, or open again.
    pub async fn set_link_closed(
        &self,
        source_id: &str,
        ticket_key: &str,
        closed: bool,
    ) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "UPDATE links SET closed_at = $1, updated_at = $2 WHERE source_id = $3 AND ticket_key = $4",
        )
        .bind(closed.then_some(now))
        .bind(now)
        .bind(source_id)
        .bind(ticket_key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether a delivery with this dedupe key was accepted (and not yet pruned).
    pub async fn accepted(&self, source_id: &str, dedupe_key: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM inbox WHERE source_id = $1 AND dedupe_key = $2")
            .bind(source_id)
            .bind(dedupe_key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// The source a room belongs to, if one claimed it.
    pub async fn room_owner(&self, room_id: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query("SELECT source_id FROM room_claims WHERE room_id = $1")
                .bind(room_id)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?,
        )
    }

    /// Records that a room belongs to `source_id`, unless another claimed it first; the
    /// room's owner, either way.
    pub async fn claim_room(&self, room_id: &str, source_id: &str) -> Result<String> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO room_claims (room_id, source_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $3) ON CONFLICT (room_id) DO NOTHING",
        )
        .bind(room_id)
        .bind(source_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(self
            .room_owner(room_id)
            .await?
            .unwrap_or_else(|| source_id.to_string()))
    }

    /// Keeps an event that could not be decrypted (once; hearing it again changes nothing).
    pub async fn keep_undecrypted(&self, room_id: &str, event_id: &str, event: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO undecrypted (event_id, room_id, event, heard_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(event_id)
        .bind(room_id)
        .bind(event)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The events kept undecrypted, oldest first, at most `limit`.
    pub async fn undecrypted(&self, limit: i64) -> Result<Vec<Undecrypted>> {
        let rows = sqlx::query(
            "SELECT event_id, room_id, event, heard_at FROM undecrypted ORDER BY heard_at, event_id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Undecrypted {
                    event_id: r.try_get(0)?,
                    room_id: r.try_get(1)?,
                    event: r.try_get(2)?,
                    heard_at: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// An event kept undecrypted is done with: decrypted and heard, or given up.
    pub async fn forget_undecrypted(&self, event_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM undecrypted WHERE event_id = $1")
            .bind(event_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn setting(&self, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get(0)).transpose().map_err(Into::into)
    }

    pub async fn delete_setting(&self, key: &str) -> Result<bool> {
        let n = sqlx::query("DELETE FROM settings WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n > 0)
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        upsert(&self.pool, "settings", "key", key, value).await
    }

    pub async fn cursor(&self, name: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM cursors WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get(0)).transpose().map_err(Into::into)
    }

    pub async fn set_cursor(&self, name: &str, value: &str) -> Result<()> {
        upsert(&self.pool, "cursors", "name", name, value).await
    }
}

/// Writes queued deliveries, many per statement, until every `Store` is dropped.
async fn intake_writer(pool: AnyPool, dialect: Dialect, mut rx: mpsc::Receiver<IntakeRequest>) {
    let mut batch = Vec::with_capacity(INTAKE_BATCH);
    while rx.recv_many(&mut batch, INTAKE_BATCH).await > 0 {
        let result = write_batch(&pool, dialect, &batch).await;
        match result {
            Ok(accepted) => {
                for (req, acc) in batch.drain(..).zip(accepted) {
                    let _ = req.reply.send(Ok(acc));
                }
            }
            Err(_) if batch.len() > 1 => {
                // One delivery the database refuses must not fail the others written with
                // it: each is written alone and gets its own answer.
                for req in batch.drain(..) {
                    let one = std::slice::from_ref(&req);
                    let answer = match write_batch(&pool, dialect, one).await {
                        Ok(mut accepted) => accepted.pop().ok_or_else(missing),
                        Err(e) => Err(StoreError::Intake(e.to_string())),
                    };
                    let _ = req.reply.send(answer);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for req in batch.drain(..) {
                    let _ = req.reply.send(Err(StoreError::Intake(msg.clone())));
                }
            }
        }
    }
}

/// Stores a batch with one multi-row INSERT (atomic on its own, so no transaction around
/// it), then finds the ID of each delivery.
///
/// On SQLite only intake needs each commit on disk before it answers (everything after it
/// can be redone from what intake stored), so the connection runs with `synchronous =
/// NORMAL` and the INSERT switches it to FULL around itself, in the same call: every call is
/// a round trip to the connection's thread, and the whole batch waits on each.
async fn write_batch(
    pool: &AnyPool,
    dialect: Dialect,
    batch: &[IntakeRequest],
) -> Result<Vec<Accepted>> {
    use std::fmt::Write;
    let mut sql = String::new();
    if dialect == Dialect::Sqlite {
        sql.push_str("PRAGMA synchronous = FULL; SELECT coalesce(max(id), 0) FROM inbox; ");
    }
    sql.push_str(
        "INSERT INTO inbox (source_id, dedupe_key, events, created_at, updated_at) VALUES ",
    );
    let mut params = Params::new(dialect);
    for i in 0..batch.len() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(sql, "{sep}({})", params.list(5));
    }
    sql.push_str(" ON CONFLICT (source_id, dedupe_key) DO NOTHING");
    match dialect {
        // Two rows back instead of one per delivery: the highest ID before the insert, and
        // the last new ID with the count of new rows. A statement that inserts every row
        // numbers them consecutively (one writer); one that skips repeats leaves gaps, but
        // its new rows are still the ones above the highest ID before it.
        Dialect::Sqlite => {
            sql.push_str("; SELECT last_insert_rowid(), changes(); PRAGMA synchronous = NORMAL")
        }
        Dialect::Postgres => sql.push_str(" RETURNING id, source_id, dedupe_key"),
    }
    let now = now_ms();
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for req in batch {
        q = q
            .bind(&req.source_id)
            .bind(&req.dedupe_key)
            .bind(&req.events)
            .bind(now)
            .bind(now);
    }
    let mut conn = pool.acquire().await?;
    let rows = match q.fetch_all(&mut *conn).await {
        Ok(rows) => rows,
        Err(e) => {
            if dialect == Dialect::Sqlite {
                // The switch back did not run.
                let _ = sqlx::Executor::execute(&mut *conn, "PRAGMA synchronous = NORMAL").await;
            }
            return Err(e.into());
        }
    };
    // The IDs of this statement's new rows, where the database tells them without a lookup.
    let mut new_ids: HashMap<(&str, &str), i64> = HashMap::new();
    match dialect {
        Dialect::Sqlite => {
            let [before, row] = rows.as_slice() else {
                return Err(StoreError::Intake("the insert reported nothing".into()));
            };
            let before: i64 = before.try_get(0)?;
            let (last, inserted): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
            if inserted == batch.len() as i64 {
                let first = last - inserted + 1;
                return Ok((first..=last)
                    .map(|id| Accepted {
                        id,
                        duplicate: false,
                    })
                    .collect());
            }
            // Some were repeats: a new row belongs to the first delivery in the batch with its
            // key.
            let ids = lookup_ids(&mut conn, dialect, batch.iter()).await?;
            let mut seen = HashSet::with_capacity(batch.len());
            return batch
                .iter()
                .map(|req| {
                    let key = (req.source_id.as_str(), req.dedupe_key.as_str());
                    let id = *ids.get(&key).ok_or_else(missing)?;
                    Ok(Accepted {
                        id,
                        duplicate: !(seen.insert(key) && id > before),
                    })
                })
                .collect();
        }
        Dialect::Postgres => {
            new_ids.reserve(rows.len());
            for row in &rows {
                let (source_id, dedupe_key): (&str, &str) = (row.try_get(1)?, row.try_get(2)?);
                new_ids.insert((source_id, dedupe_key), row.try_get(0)?);
            }
        }
    }
    // Repeats: the first delivery's ID, all of them looked up in one statement.
    let repeats: Vec<&IntakeRequest> = batch
        .iter()
        .filter(|req| !new_ids.contains_key(&(req.source_id.as_str(), req.dedupe_key.as_str())))
        .collect();
    let mut seen = HashSet::with_capacity(batch.len());
    let old_ids = if repeats.is_empty() {
        HashMap::new()
    } else {
        lookup_ids(&mut conn, dialect, repeats.into_iter()).await?
    };
    batch
        .iter()
        .map(|req| {
            let key = (req.source_id.as_str(), req.dedupe_key.as_str());
            Ok(match new_ids.get(&key) {
                // The first delivery in the batch with a new key is the one inserted.
                Some(&id) if seen.insert(key) => Accepted {
                    id,
                    duplicate: false,
                },
                Some(&id) => Accepted {
                    id,
                    duplicate: true,
                },
                None => Accepted {
                    id: *old_ids.get(&key).ok_or_else(missing)?,
                    duplicate: true,
                },
            })
        })
        .collect()
}

/// Queues actions that running `row` asked for, as part of its delivery, each with a
/// transaction key of its own derived from `row`'s.
pub async fn queue_after(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    row: &ActionRow,
    actions: &[NewAction],
) -> Result<()> {
    if actions.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let inbox_id: i64 = sqlx::query("SELECT inbox_id FROM outbox WHERE id = $1")
        .bind(row.id)
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?;
    for (i, a) in actions.iter().enumerate() {
        sqlx::query(
            "INSERT INTO outbox (inbox_id, source_id, ticket_key, action, txn_key, \
             next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(inbox_id)
        .bind(&a.source_id)
        .bind(&a.ticket_key)
        .bind(&a.action)
        .bind(format!("{}.{}.{i}", row.txn_key, row.attempts))
        .bind(now)
        .bind(now)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// A key intake could neither insert nor find (only if a row were deleted meanwhile).
fn missing() -> StoreError {
    StoreError::Intake("a delivery's key was neither inserted nor found".into())
}

/// The IDs of the stored deliveries with the requests' keys, in one statement.
async fn lookup_ids<'a>(
    conn: &mut AnyConnection,
    dialect: Dialect,
    requests: impl Iterator<Item = &'a IntakeRequest> + Clone,
) -> Result<HashMap<(&'a str, &'a str), i64>> {
    use std::fmt::Write;
    let mut sql = String::from(
        "SELECT id, source_id, dedupe_key FROM inbox WHERE (source_id, dedupe_key) IN (VALUES ",
    );
    let mut params = Params::new(dialect);
    for (i, _) in requests.clone().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(sql, "{sep}({})", params.list(2));
    }
    sql.push(')');
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for req in requests.clone() {
        q = q.bind(&req.source_id).bind(&req.dedupe_key);
    }
    let found: HashMap<(String, String), i64> = q
        .fetch_all(conn)
        .await?
        .iter()
        .map(|row| Ok(((row.try_get(1)?, row.try_get(2)?), row.try_get(0)?)))
        .collect::<Result<_>>()?;
    Ok(requests
        .filter_map(|req| {
            let id = found.get(&(req.source_id.clone(), req.dedupe_key.clone()))?;
            Some(((req.source_id.as_str(), req.dedupe_key.as_str()), *id))
        })
        .collect())
}

async fn upsert(pool: &AnyPool, table: &str, key_col: &str, key: &str, value: &str) -> Result<()> {
    let now = now_ms();
    let sql = format!(
        "INSERT INTO {table} ({key_col}, value, created_at, updated_at) VALUES ($1, $2, $3, $3) \
         ON CONFLICT ({key_col}) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(key)
        .bind(value)
        .bind(now)
        .execute(pool)
        .await?;
    Ok(())
}

fn outbox_row(r: &AnyRow) -> Result<OutboxRow> {
    let id: i64 = r.try_get(0)?;
    let txn_key: String = r.try_get(5)?;
    Ok(OutboxRow {
        id,
        source_id: r.try_get(1)?,
        ticket_key: r.try_get(2)?,
        action: r.try_get(3)?,
        attempts: r.try_get(4)?,
        txn_key: if txn_key.is_empty() {
            id.to_string()
        } else {
            txn_key
        },
        errors: r.try_get(6)?,
    })
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

    fn action(ticket: &str, n: u32) -> NewAction {
        NewAction {
            source_id: "s".into(),
            ticket_key: ticket.into(),
            action: format!("{{\"n\":{n}}}"),
        }
    }

    /// Accepts a delivery per key, all at once, each with events that name its key.
    async fn accept_all(store: &Store, keys: &[String]) -> Vec<Result<Accepted>> {
        let events: Vec<String> = keys.iter().map(|k| format!("[\"{k}\"]")).collect();
        futures::future::join_all(
            keys.iter()
                .zip(&events)
                .map(|(k, e)| store.accept("s", k, e)),
        )
        .await
    }

    #[tokio::test]
    async fn undecrypted_events_are_kept_once_until_forgotten() {
        for store in stores().await {
            store
                .keep_undecrypted("!a", "$1", "{}")
                .await
                .expect("keep");
            store
                .keep_undecrypted("!a", "$1", "{\"again\":1}")
                .await
                .expect("keep again");
            store
                .keep_undecrypted("!b", "$2", "{}")
                .await
                .expect("keep");
            let kept = store.undecrypted(10).await.expect("list");
            let ids: Vec<&str> = kept.iter().map(|u| u.event_id.as_str()).collect();
            assert_eq!(ids, ["$1", "$2"]);
            assert_eq!(kept[0].event, "{}", "the first hearing stays");
            assert_eq!(store.undecrypted(1).await.expect("list").len(), 1);
            store.forget_undecrypted("$1").await.expect("forget");
            let kept = store.undecrypted(10).await.expect("list");
            assert_eq!(kept.len(), 1);
            assert_eq!(kept[0].room_id, "!b");
        }
    }

    #[tokio::test]
    async fn intake_dedupes_even_within_one_batch() {
        for store in stores().await {
            let a = store.accept("s", "k1", "[]").await.expect("accept");
            assert!(!a.duplicate);
            let b = store.accept("s", "k1", "[]").await.expect("accept");
            assert_eq!(
                b,
                Accepted {
                    id: a.id,
                    duplicate: true
                }
            );
            let other = store.accept("t", "k1", "[]").await.expect("accept");
            assert!(!other.duplicate, "dedupe keys are per source");
            // Many at once, half of them repeats: they share statements. Each delivery's
            // events name its key, so every answered ID can be checked against its row.
            let keys: Vec<String> = (0..200).map(|i| format!("b{}", i % 100)).collect();
            let results = accept_all(&store, &keys).await;
            let fresh = results
                .iter()
                .filter(|r| matches!(r, Ok(a) if !a.duplicate))
                .count();
            assert_eq!(fresh, 100, "{:?}", store.dialect());
            let stored = store.unprocessed(1000).await.expect("list");
            assert_eq!(stored.len(), 102);
            let events_of: HashMap<i64, String> =
                stored.into_iter().map(|r| (r.id, r.events)).collect();
            for (key, result) in keys.iter().zip(&results) {
                let id = result.as_ref().expect("accept").id;
                assert_eq!(
                    events_of[&id],
                    format!("[\"{key}\"]"),
                    "{:?}",
                    store.dialect()
                );
            }
            // A batch of fresh keys only, then one where a repeat sits between fresh ones.
            let fresh_only: Vec<String> = (0..50).map(|i| format!("c{i}")).collect();
            let mixed: Vec<String> = (0..50)
                .map(|i| format!("{}{i}", if i % 7 == 3 { "c" } else { "d" }))
                .collect();
            for keys in [fresh_only, mixed] {
                let results = accept_all(&store, &keys).await;
                let stored = store.unprocessed(1000).await.expect("list");
                let events_of: HashMap<i64, String> =
                    stored.into_iter().map(|r| (r.id, r.events)).collect();
                for (key, result) in keys.iter().zip(&results) {
                    let acc = result.as_ref().expect("accept");
                    assert_eq!(events_of[&acc.id], format!("[\"{key}\"]"));
                    assert_eq!(
                        acc.duplicate,
                        key.starts_with('c') && keys[0] != "c0",
                        "{key} on {:?}",
                        store.dialect()
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn pruning_deletes_only_finished_records() {
        for store in stores().await {
            let id = |k: &str| {
                let store = store.clone();
                let k = k.to_string();
                async move { store.accept("s", &k, "[]").await.expect("accept") }
            };
            let (done, pending, unprocessed) =
                (id("done").await, id("pending").await, id("new").await);
            store
                .commit_actions(&[
                    (done.id, vec![action("A", 1)]),
                    (pending.id, vec![action("B", 2)]),
                ])
                .await
                .expect("commit");
            let heads = store
                .claim(10, Duration::from_secs(60))
                .await
                .expect("claim");
            let a = heads
                .iter()
                .find(|r| r.ticket_key == "A")
                .expect("A claimed");
            store.complete(a.id, None).await.expect("complete");
            store
                .release(&[heads.iter().find(|r| r.ticket_key == "B").expect("B").id])
                .await
                .expect("release");

            // A cutoff before everything deletes nothing.
            assert_eq!(store.prune(0).await.expect("prune"), (0, 0));
            // A cutoff after everything deletes both processed deliveries and the done action.
            assert_eq!(store.prune(now_ms() + 1000).await.expect("prune"), (2, 1));
            let left = store.unprocessed(10).await.expect("list");
            assert_eq!(
                left.iter().map(|r| r.id).collect::<Vec<_>>(),
                [unprocessed.id]
            );
            assert_eq!(
                store.outbox_counts().await.expect("counts"),
                OutboxCounts {
                    pending: 1,
                    done: 0,
                    failed: 0,
                    set_aside: 0,
                }
            );
            // A kept delivery is still a repeat; a pruned one is new again.
            let again = id("new").await;
            assert_eq!((again.id, again.duplicate), (unprocessed.id, true));
            let again = id("done").await;
            assert!(!again.duplicate && again.id > unprocessed.id, "{again:?}");
        }
    }

    #[tokio::test]
    async fn actions_beyond_one_statement_are_all_queued() {
        for store in stores().await {
            let first = store.accept("s", "big", "[]").await.expect("accept").id;
            let second = store.accept("s", "small", "[]").await.expect("accept").id;
            // More rows than one INSERT takes (4000), over 7 tickets.
            let many: Vec<NewAction> = (0..4100)
                .map(|n| action(&format!("T{}", n % 7), n))
                .collect();
            store
                .commit_actions(&[(first, many), (second, vec![action("U", 1)])])
                .await
                .expect("commit");
            assert!(store.unprocessed(10).await.expect("list").is_empty());
            assert_eq!(store.pending_actions().await.expect("count"), 4101);
            let heads = store
                .claim(100, Duration::from_secs(60))
                .await
                .expect("claim");
            assert_eq!(heads.len(), 8, "one head per ticket, {:?}", store.dialect());
        }
    }

    #[tokio::test]
    async fn only_the_head_of_each_ticket_is_claimed() {
        for store in stores().await {
            let id = store.accept("s", "d", "[]").await.expect("accept").id;
            let acts = [action("A", 1), action("A", 2), action("B", 1)];
            store
                .commit_actions(&[(id, acts.to_vec())])
                .await
                .expect("commit");
            // Committing the same delivery again (a second engine) adds nothing.
            store
                .commit_actions(&[(id, acts.to_vec())])
                .await
                .expect("commit");
            assert!(store.unprocessed(10).await.expect("list").is_empty());
            assert_eq!(store.pending_actions().await.expect("pending"), 3);
            let lease = Duration::from_secs(60);
            let claimed = store.claim(10, lease).await.expect("claim");
            let keys: Vec<_> = claimed
                .iter()
                .map(|r| (r.ticket_key.as_str(), r.action.as_str()))
                .collect();
            assert_eq!(keys, vec![("A", "{\"n\":1}"), ("B", "{\"n\":1}")]);
            let txn: Vec<_> = claimed.iter().map(|r| r.txn_key.clone()).collect();
            assert_eq!(txn, vec![format!("{id}.0"), format!("{id}.2")]);
            assert!(
                store.claim(10, lease).await.expect("claim").is_empty(),
                "leased"
            );
            // A's second action waits for the first; its holder may lease it.
            assert!(
                store.claim(10, lease).await.expect("claim").is_empty(),
                "A's second action is not first in line"
            );
            let following = store
                .lease_following(&claimed[0], 10, lease)
                .await
                .expect("following");
            assert_eq!(following.len(), 1);
            store.release(&[following[0].id]).await.expect("release");
            store
                .complete(claimed[0].id, Some("ok"))
                .await
                .expect("complete");
            let next = store.claim(10, lease).await.expect("claim");
            assert_eq!(next.len(), 1, "released and first in line now");
            let next = next.into_iter().next().expect("next");
            assert_eq!(next.action, "{\"n\":2}");
            assert_eq!(next.attempts, 2, "the lease counted as an attempt");
            // A transient failure puts it back, due later, with the attempt counted.
            store
                .retry(next.id, Duration::from_millis(0), "503", false)
                .await
                .expect("retry");
            let again = store.claim(10, lease).await.expect("claim");
            assert_eq!(again.len(), 1);
            assert_eq!(again[0].attempts, 3);
            store.fail(again[0].id, "403").await.expect("fail");
            store.complete(claimed[1].id, None).await.expect("complete");
            let c = store.outbox_counts().await.expect("counts");
            assert_eq!((c.pending, c.done, c.failed), (0, 2, 1));
            assert_eq!(store.pending_actions().await.expect("pending"), 0);
            assert_eq!(store.failures(5).await.expect("failures")[0].1, "403");
        }
    }

    #[tokio::test]
    async fn released_leases_are_claimed_again() {
        for store in stores().await {
            let id = store.accept("s", "d", "[]").await.expect("accept").id;
            store
                .commit_actions(&[(id, vec![action("A", 1)])])
                .await
                .expect("commit");
            let lease = Duration::from_secs(600);
            assert_eq!(store.claim(10, lease).await.expect("claim").len(), 1);
            assert!(store.claim(10, lease).await.expect("claim").is_empty());
            assert_eq!(store.release_leases().await.expect("release"), 1);
            assert_eq!(store.claim(10, lease).await.expect("claim").len(), 1);
        }
    }

    #[tokio::test]
    async fn only_waiting_actions_set_the_next_wake() {
        for store in stores().await {
            let id = store.accept("s", "d", "[]").await.expect("accept").id;
            let acts = vec![action("A", 1), action("A", 2), action("B", 1)];
            store.commit_actions(&[(id, acts)]).await.expect("commit");
            // Due now: nothing to wait for.
            assert_eq!(store.next_due().await.expect("due"), None);
            let lease = Duration::from_secs(600);
            let heads = store.claim(10, lease).await.expect("claim");
            assert_eq!(heads.len(), 2);
            // Leased heads are due again when their leases run out; A's second action is
            // due already (its lane runs it) and does not count.
            let due = store.next_due().await.expect("due").expect("a lease");
            let soon = now_ms() + lease.as_millis() as i64;
            assert!((soon - 5_000..=soon).contains(&due), "{due} vs {soon}");
            // A retry in 2 s comes before the leases.
            store
                .retry(heads[1].id, Duration::from_secs(2), "503", false)
                .await
                .expect("retry");
            let due = store.next_due().await.expect("due").expect("the retry");
            let retry = now_ms() + 2_000;
            assert!((retry - 1_000..=retry).contains(&due), "{due} vs {retry}");
            store.complete(heads[0].id, None).await.expect("complete");
            store.fail(heads[1].id, "403").await.expect("fail");
            assert_eq!(store.next_due().await.expect("due"), None);
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

    #[tokio::test]
    async fn links_settings_and_cursors() {
        for store in stores().await {
            assert!(store.link("s", "T").await.expect("link").is_none());
            let link = Link {
                source_id: "s".into(),
                ticket_key: "T".into(),
                room_id: "!a:hs".into(),
                thread_id: None,
                invited: vec!["@a:hs".into()],
                closed: false,
            };
            assert_eq!(store.insert_link(&link).await.expect("insert"), link);
            let other = Link {
                room_id: "!b:hs".into(),
                ..link.clone()
            };
            assert_eq!(
                store.insert_link(&other).await.expect("insert").room_id,
                "!a:hs",
                "first wins"
            );
            store
                .set_invited("s", "T", &["@a:hs".into(), "@b:hs".into()])
                .await
                .expect("invited");
            store.set_link_closed("s", "T", true).await.expect("close");
            let got = store.link("s", "T").await.expect("link").expect("exists");
            assert!(got.closed);
            assert_eq!(got.invited.len(), 2);
            store
                .set_link_closed("s", "T", false)
                .await
                .expect("reopen");
            let got = store.link("s", "T").await.expect("link").expect("exists");
            assert!(!got.closed);
            store.set_setting("k", "v1").await.expect("set");
            store.set_setting("k", "v2").await.expect("set");
            assert_eq!(
                store.setting("k").await.expect("get").as_deref(),
                Some("v2")
            );
            store.set_cursor("c", "42").await.expect("set");
            assert_eq!(store.cursor("c").await.expect("get").as_deref(), Some("42"));
        }
    }

    /// What intake accepts from any webhook body, both databases store and the engine turns
    /// into actions: keys and text of any kind, within what intake's checks let through.
    #[test]
    fn what_intake_accepts_both_databases_store() {
        use proptest::prelude::*;
        use switchboard_connector::WebhookSource;
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let stores = rt.block_on(stores());
        let engine = crate::engine::Engine::new(
            &crate::config::parse(
                "[matrix]\nhomeserver = \"http://h\"\nuser = \"bot\"\npassword = \"p\"\n\
                 [sources.t]\nkind = \"webhook\"\n",
            )
            .expect("config")
            .config,
            HashMap::new(),
        );
        let text = "(?s)[a-z\\x00-\\x1f\\u{80}-\\u{10ffff}\"'\\\\ ]{0,40}";
        let config = ProptestConfig {
            cases: 48,
            ..ProptestConfig::default()
        };
        proptest!(config, |(id in text, title in text, body in text, delivery in text)| {
            let payload = serde_json::json!({"ticket": {"id": id, "title": title},
                "message": {"body": body}, "delivery_id": delivery});
            let hook = switchboard_webhook::WebhookConfig::default();
            let Ok(d) = hook
                .accept(&http::HeaderMap::new(), payload.to_string().as_bytes())
                .and_then(|d| switchboard_connector::check_delivery(&d).map(|()| d))
            else {
                return Ok(());
            };
            let events = serde_json::to_string(&d.events).expect("json");
            for store in &stores {
                rt.block_on(async {
                    store.accept("t", &d.dedupe_key, &events).await.expect("stored");
                    let metrics = crate::metrics::Metrics::new();
                    let drained = crate::engine::drain(&engine, store, &metrics).await.expect("drained");
                    assert!(!drained.troubled, "{:?} on {:?}", d, store.dialect());
                    assert!(store.link("t", &d.events[0].ticket).await.is_ok());
                });
            }
        });
    }
}
