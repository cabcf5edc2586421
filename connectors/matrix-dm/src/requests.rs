//! Helpdesk requests of `matrix_dm` sources: who asked, from which direct chat, and the
//! thread in the backoffice room. Every lookup and count is an indexed query.

use std::sync::Arc;

use sqlx::Row;
use sqlx::any::AnyRow;
use switchboard_connector::{DbError, Host, now_ms};

/// The helpdesk's tables (`requests`, `relays`), for SQLite.
pub(crate) static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
/// The helpdesk's tables (`requests`, `relays`), for PostgreSQL.
pub(crate) static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// One request: a customer's conversation, from the first message until it is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: i64,
    pub source_id: String,
    pub customer: String,
    pub server: String,
    pub dm_room: String,
    /// The thread's root in the backoffice room, once it is posted.
    pub thread_root: Option<String>,
    pub title: String,
    pub last_activity_at: i64,
    pub closed: bool,
    /// What closed it (a command's event ID), if anything said.
    pub closed_by: Option<String>,
}

/// How many requests a customer and their homeserver have made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub customer: u64,
    pub server: u64,
}

const COLUMNS: &str = "id, source_id, customer, server, dm_room, thread_root, title, \
                       last_activity_at, closed_at, closed_by";

fn request(r: &AnyRow) -> Result<Request, DbError> {
    Ok(Request {
        id: r.try_get(0)?,
        source_id: r.try_get(1)?,
        customer: r.try_get(2)?,
        server: r.try_get(3)?,
        dm_room: r.try_get(4)?,
        thread_root: r.try_get(5)?,
        title: r.try_get(6)?,
        last_activity_at: r.try_get(7)?,
        closed: r.try_get::<Option<i64>, _>(8)?.is_some(),
        closed_by: r.try_get(9)?,
    })
}

/// The helpdesk's tables (requests, relays), through the host's database.
#[derive(Clone)]
pub struct Requests {
    host: Arc<dyn Host>,
}

impl Requests {
    pub fn new(host: Arc<dyn Host>) -> Requests {
        Requests { host }
    }

    /// The host whose database holds the tables.
    pub fn host(&self) -> &dyn Host {
        &*self.host
    }

    /// A stored setting (the host's).
    pub async fn setting(&self, key: &str) -> Result<Option<String>, DbError> {
        self.host.setting(key).await
    }

    /// Stores a setting (the host's).
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), DbError> {
        self.host.set_setting(key, value).await
    }

    /// The open request of a direct chat, or a new one titled by `title` from the counts
    /// (this request included). Returns the request and whether it was opened now.
    pub async fn open_request(
        &self,
        source_id: &str,
        customer: &str,
        server: &str,
        dm_room: &str,
        title: impl FnOnce(Counts) -> String,
    ) -> Result<(Request, bool), DbError> {
        if let Some(open) = self.open_request_of(source_id, dm_room).await? {
            return Ok((open, false));
        }
        let counts = self.request_counts(source_id, customer, server).await?;
        let title = title(Counts {
            customer: counts.customer + 1,
            server: counts.server + 1,
        });
        let now = now_ms();
        // Another process may open one meanwhile: the unique index on open requests keeps
        // the first, and both callers get that one.
        let inserted = sqlx::query(
            "INSERT INTO requests (source_id, customer, server, dm_room, title, \
             last_activity_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6, $6) \
             ON CONFLICT DO NOTHING",
        )
        .bind(source_id)
        .bind(customer)
        .bind(server)
        .bind(dm_room)
        .bind(&title)
        .bind(now)
        .execute(self.host.pool())
        .await?
        .rows_affected()
            == 1;
        let open = self
            .open_request_of(source_id, dm_room)
            .await?
            // Only a concurrent close between the two statements gets here.
            .ok_or(DbError::Db(sqlx::Error::RowNotFound))?;
        Ok((open, inserted))
    }

    /// Records an open request taken over from elsewhere, thread and all, unless the chat
    /// has an open one already. True if it was recorded.
    pub async fn import_request(
        &self,
        source_id: &str,
        customer: &str,
        server: &str,
        dm_room: &str,
        thread_root: &str,
        title: &str,
    ) -> Result<bool, DbError> {
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO requests (source_id, customer, server, dm_room, thread_root, title, \
             last_activity_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $7) \
             ON CONFLICT DO NOTHING",
        )
        .bind(source_id)
        .bind(customer)
        .bind(server)
        .bind(dm_room)
        .bind(thread_root)
        .bind(title)
        .bind(now)
        .execute(self.host.pool())
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// The open request of a direct chat.
    pub async fn open_request_of(
        &self,
        source_id: &str,
        dm_room: &str,
    ) -> Result<Option<Request>, DbError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM requests WHERE source_id = $1 AND dm_room = $2 \
             AND closed_at IS NULL"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(source_id)
            .bind(dm_room)
            .fetch_optional(self.host.pool())
            .await?;
        row.as_ref().map(request).transpose()
    }

    /// The request whose thread starts at `root`, open or closed.
    pub async fn request_by_thread(
        &self,
        source_id: &str,
        root: &str,
    ) -> Result<Option<Request>, DbError> {
        let sql =
            format!("SELECT {COLUMNS} FROM requests WHERE source_id = $1 AND thread_root = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(source_id)
            .bind(root)
            .fetch_optional(self.host.pool())
            .await?;
        row.as_ref().map(request).transpose()
    }

    pub async fn request_by_id(&self, id: i64) -> Result<Option<Request>, DbError> {
        let sql = format!("SELECT {COLUMNS} FROM requests WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(self.host.pool())
            .await?;
        row.as_ref().map(request).transpose()
    }

    /// Requests made so far by a customer and by everyone on their homeserver.
    pub async fn request_counts(
        &self,
        source_id: &str,
        customer: &str,
        server: &str,
    ) -> Result<Counts, DbError> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM requests WHERE source_id = $1 AND customer = $2), \
                    (SELECT count(*) FROM requests WHERE source_id = $1 AND server = $3)",
        )
        .bind(source_id)
        .bind(customer)
        .bind(server)
        .fetch_one(self.host.pool())
        .await?;
        let (customer, server): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        Ok(Counts {
            customer: customer.unsigned_abs(),
            server: server.unsigned_abs(),
        })
    }

    /// Records the thread's root once it is posted.
    pub async fn set_request_thread(&self, id: i64, root: &str) -> Result<(), DbError> {
        self.update_request(id, "thread_root", root).await
    }

    /// Records the direct chat that `start` created for the request.
    pub async fn set_request_dm(&self, id: i64, dm_room: &str) -> Result<(), DbError> {
        self.update_request(id, "dm_room", dm_room).await
    }

    pub async fn rename_request(&self, id: i64, title: &str) -> Result<(), DbError> {
        self.update_request(id, "title", title).await
    }

    /// Notes a message in the request, for closing idle ones.
    pub async fn touch_request(&self, id: i64) -> Result<(), DbError> {
        let now = now_ms();
        sqlx::query("UPDATE requests SET last_activity_at = $1, updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(self.host.pool())
            .await?;
        Ok(())
    }

    /// Closes a request, noting what closed it; false if it was closed already.
    pub async fn close_request(&self, id: i64, by: &str) -> Result<bool, DbError> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE requests SET closed_at = $1, closed_by = $2, updated_at = $1 WHERE id = $3 \
             AND closed_at IS NULL",
        )
        .bind(now)
        .bind(by)
        .bind(id)
        .execute(self.host.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Open requests with no activity since `before` (Unix ms), oldest first.
    pub async fn idle_requests(
        &self,
        source_id: &str,
        before: i64,
        limit: i64,
    ) -> Result<Vec<Request>, DbError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM requests WHERE source_id = $1 AND closed_at IS NULL \
             AND last_activity_at < $2 ORDER BY last_activity_at LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(source_id)
            .bind(before)
            .bind(limit)
            .fetch_all(self.host.pool())
            .await?;
        rows.iter().map(request).collect()
    }

    /// Records that `copy` is the bot's copy of `origin` (a no-op if recorded already).
    pub async fn record_relay(
        &self,
        source_id: &str,
        origin: &str,
        copy: &str,
        request: i64,
    ) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO relays (source_id, origin, copy, request_id, created_at)              VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(source_id)
        .bind(origin)
        .bind(copy)
        .bind(request)
        .bind(now_ms())
        .execute(self.host.pool())
        .await?;
        Ok(())
    }

    /// The other side of a relayed event: its copy if `event` was relayed, its origin if
    /// `event` is a copy; with the request it belongs to.
    pub async fn counterpart(
        &self,
        source_id: &str,
        event: &str,
    ) -> Result<Option<(String, i64)>, DbError> {
        let row = sqlx::query(
            "SELECT copy, request_id FROM relays WHERE source_id = $1 AND origin = $2 \
             UNION ALL SELECT origin, request_id FROM relays WHERE source_id = $1 AND copy = $2",
        )
        .bind(source_id)
        .bind(event)
        .fetch_optional(self.host.pool())
        .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    /// Sets one text column; `column` is one of this module's constants, never input.
    async fn update_request(
        &self,
        id: i64,
        column: &'static str,
        value: &str,
    ) -> Result<(), DbError> {
        let sql = format!("UPDATE requests SET {column} = $1, updated_at = $2 WHERE id = $3");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(value)
            .bind(now_ms())
            .bind(id)
            .execute(self.host.pool())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use switchboard_connector::Dialect;
    use switchboard_connector::testing::TestHost;

    use super::*;

    /// Fresh tables on each database: SQLite in memory, and a new PostgreSQL database on
    /// the server named by `SWITCHBOARD_TEST_POSTGRES` (the local one by default).
    async fn stores() -> Vec<Requests> {
        let sqlite = TestHost::new(Some(&SQLITE)).await.expect("sqlite");
        let pg = TestHost::postgres(Some(&POSTGRES))
            .await
            .expect("PostgreSQL is reachable");
        vec![Requests::new(Arc::new(sqlite)), Requests::new(Arc::new(pg))]
    }

    fn title(c: Counts) -> String {
        format!(
            "{} from the server, {} by the customer",
            c.server, c.customer
        )
    }

    async fn open(store: &Requests, customer: &str, room: &str) -> (Request, bool) {
        let server = customer.split_once(':').map_or("", |(_, s)| s);
        store
            .open_request("help", customer, server, room, title)
            .await
            .expect("open")
    }

    #[tokio::test]
    async fn settings_pass_through_to_the_host() {
        for store in stores().await {
            assert_eq!(store.setting("matrix_dm.help.x").await.expect("read"), None);
            store
                .set_setting("matrix_dm.help.x", "1")
                .await
                .expect("set");
            assert_eq!(
                store.setting("matrix_dm.help.x").await.expect("read"),
                Some("1".into())
            );
            assert_eq!(
                store
                    .host()
                    .setting("matrix_dm.help.x")
                    .await
                    .expect("read"),
                Some("1".into()),
                "the host's own"
            );
        }
    }

    #[tokio::test]
    async fn relays_are_found_from_either_side() {
        for store in stores().await {
            assert_eq!(store.counterpart("help", "$a").await.expect("read"), None);
            store
                .record_relay("help", "$a", "$a2", 7)
                .await
                .expect("record");
            store
                .record_relay("help", "$a", "$other", 7)
                .await
                .expect("again");
            let found = |e: &'static str| {
                let store = &store;
                async move { store.counterpart("help", e).await.expect("read") }
            };
            assert_eq!(found("$a").await, Some(("$a2".into(), 7)));
            assert_eq!(found("$a2").await, Some(("$a".into(), 7)), "from the copy");
            assert_eq!(found("$other").await, None, "the first record stays");
            assert_eq!(
                store.counterpart("desk2", "$a").await.expect("read"),
                None,
                "per source"
            );
        }
    }

    #[tokio::test]
    async fn one_open_request_per_chat_and_counts_per_customer_and_server() {
        for store in stores().await {
            let (first, created) = open(&store, "@alice:a.org", "!dm1:hs").await;
            assert!(created);
            assert_eq!(first.title, "1 from the server, 1 by the customer");
            let (again, created) = open(&store, "@alice:a.org", "!dm1:hs").await;
            assert!(!created, "the chat's request is still open");
            assert_eq!(again.id, first.id);

            let (bob, _) = open(&store, "@bob:a.org", "!dm2:hs").await;
            assert_eq!(bob.title, "2 from the server, 1 by the customer");

            assert!(
                store
                    .close_request(first.id, "$done1")
                    .await
                    .expect("close")
            );
            assert!(
                !store
                    .close_request(first.id, "$done2")
                    .await
                    .expect("close again")
            );
            let closed = store.request_by_id(first.id).await.expect("by id");
            assert_eq!(
                closed.and_then(|r| r.closed_by).as_deref(),
                Some("$done1"),
                "the first close is the one remembered"
            );
            let (second, created) = open(&store, "@alice:a.org", "!dm1:hs").await;
            assert!(created, "a closed request makes way for a new one");
            assert_ne!(second.id, first.id);
            assert_eq!(second.title, "3 from the server, 2 by the customer");

            let counts = store
                .request_counts("help", "@alice:a.org", "a.org")
                .await
                .expect("count");
            assert_eq!(
                counts,
                Counts {
                    customer: 2,
                    server: 3
                }
            );
            let other = store
                .request_counts("other-source", "@alice:a.org", "a.org")
                .await
                .expect("count");
            assert_eq!(
                other,
                Counts {
                    customer: 0,
                    server: 0
                }
            );
        }
    }

    #[tokio::test]
    async fn lookups_and_counts_never_scan_the_table() {
        let store = stores().await.remove(0);
        assert_eq!(store.host().dialect(), Dialect::Sqlite);
        let queries = [
            "SELECT (SELECT count(*) FROM requests WHERE source_id = 'h' AND customer = 'c'), \
             (SELECT count(*) FROM requests WHERE source_id = 'h' AND server = 's')"
                .to_string(),
            format!(
                "SELECT {COLUMNS} FROM requests WHERE source_id = 'h' AND dm_room = 'r' AND closed_at IS NULL"
            ),
            format!("SELECT {COLUMNS} FROM requests WHERE source_id = 'h' AND thread_root = 't'"),
            format!(
                "SELECT {COLUMNS} FROM requests WHERE source_id = 'h' AND closed_at IS NULL \
                 AND last_activity_at < 5 ORDER BY last_activity_at LIMIT 3"
            ),
            "SELECT copy, request_id FROM relays WHERE source_id = 'h' AND origin = 'e' \
             UNION ALL SELECT origin, request_id FROM relays WHERE source_id = 'h' AND copy = 'e'"
                .to_string(),
        ];
        for q in queries {
            let plan = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {q}")))
                .fetch_all(store.host().pool())
                .await
                .expect("plan");
            let steps: Vec<String> = plan.iter().map(|r| r.try_get(3).expect("detail")).collect();
            assert!(
                steps
                    .iter()
                    .all(|s| !s.starts_with("SCAN requests") && !s.starts_with("SCAN relays"))
                    && steps.iter().any(|s| s.contains("INDEX")),
                "{q}: {steps:?}"
            );
        }
    }

    /// PostgreSQL without table statistics (before its first ANALYZE, or with autovacuum
    /// off) must still find a chat's open request and a thread's request by their indexes.
    #[tokio::test]
    async fn postgres_picks_the_right_index_without_statistics() {
        let mut ran = false;
        for store in stores().await {
            if store.host().dialect() != Dialect::Postgres {
                continue;
            }
            ran = true;
            sqlx::query(
                "INSERT INTO requests (source_id, customer, server, dm_room, thread_root, title, \
                 last_activity_at, created_at, updated_at) SELECT 'h', '@c' || i || ':x', 'x', \
                 '!dm' || i, '$root' || i, 't', i, i, i FROM generate_series(1, 5000) AS i",
            )
            .execute(store.host().pool())
            .await
            .expect("seed");
            for (query, index) in [
                (
                    format!(
                        "SELECT {COLUMNS} FROM requests WHERE source_id = 'h' AND dm_room = '!dm7' \
                         AND closed_at IS NULL"
                    ),
                    "requests_open_dm",
                ),
                (
                    format!(
                        "SELECT {COLUMNS} FROM requests WHERE source_id = 'h' AND thread_root = '$root7'"
                    ),
                    "requests_thread",
                ),
            ] {
                let plan: Vec<String> =
                    sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN {query}")))
                        .fetch_all(store.host().pool())
                        .await
                        .expect("plan")
                        .iter()
                        .map(|r| r.try_get(0).expect("line"))
                        .collect();
                assert!(
                    plan[0].contains(&format!("Index Scan using {index} ")),
                    "{query}: {plan:?}"
                );
            }
        }
        assert!(ran, "PostgreSQL was among the databases");
    }

    #[tokio::test]
    async fn threads_titles_and_idle_requests() {
        for store in stores().await {
            let (req, _) = open(&store, "@c:x.org", "!dm:hs").await;
            let by_thread = store.request_by_thread("help", "$root").await;
            assert_eq!(by_thread.expect("by thread"), None);
            store
                .set_request_thread(req.id, "$root")
                .await
                .expect("thread");
            store
                .rename_request(req.id, "Printer on fire")
                .await
                .expect("rename");
            let found = store
                .request_by_thread("help", "$root")
                .await
                .expect("by thread")
                .expect("found");
            assert_eq!(found.thread_root.as_deref(), Some("$root"));
            assert_eq!(found.title, "Printer on fire");
            let by_id = store.request_by_id(req.id).await.expect("by id");
            assert_eq!(by_id, Some(found.clone()));

            let later = found.last_activity_at + 1;
            let idle = store.idle_requests("help", later, 10).await.expect("idle");
            assert_eq!(idle.iter().map(|r| r.id).collect::<Vec<_>>(), [req.id]);
            let idle = store
                .idle_requests("help", found.last_activity_at, 10)
                .await
                .expect("idle");
            assert!(idle.is_empty(), "nothing is older than its last activity");

            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            store.touch_request(req.id).await.expect("touch");
            let idle = store.idle_requests("help", later, 10).await.expect("idle");
            assert!(idle.is_empty(), "a message makes it active again");

            store.close_request(req.id, "$done").await.expect("close");
            let later = now_ms() + 1;
            let idle = store.idle_requests("help", later, 10).await.expect("idle");
            assert!(idle.is_empty(), "closed requests are not idle");
            let closed = store
                .request_by_thread("help", "$root")
                .await
                .expect("by thread")
                .expect("a closed request is still found by its thread");
            assert!(closed.closed);
            assert_eq!(closed.closed_by.as_deref(), Some("$done"));
        }
    }
}
