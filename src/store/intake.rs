//! Intake: stores each delivery once per dedupe key, many per statement, through one
//! writer task with a thread of its own; and tells whether a delivery was accepted.

use std::collections::{HashMap, HashSet};

use sqlx::{AnyConnection, AnyPool, Row};
use tokio::sync::{mpsc, oneshot};

use super::{Accepted, Dialect, Params, Result, Store, StoreError, now_ms};

/// A delivery waiting for the intake writer.
#[derive(Debug)]
pub(super) struct IntakeRequest {
    source_id: String,
    dedupe_key: String,
    events: String,
    reply: oneshot::Sender<Result<Accepted>>,
}

/// Most deliveries written in one statement.
pub(super) const INTAKE_BATCH: usize = 512;

impl Store {
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

    /// Whether a delivery with this dedupe key was accepted (and not yet pruned).
    pub async fn accepted(&self, source_id: &str, dedupe_key: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM inbox WHERE source_id = $1 AND dedupe_key = $2")
            .bind(source_id)
            .bind(dedupe_key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }
}

/// Writes queued deliveries, many per statement, until every `Store` is dropped.
pub(super) async fn intake_writer(
    pool: AnyPool,
    dialect: Dialect,
    mut rx: mpsc::Receiver<IntakeRequest>,
) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::stores;

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

    /// What intake accepts from any webhook body, both databases store and the engine turns
    /// into actions: keys and text of any kind, within what intake's checks let through.
    #[test]
    fn what_intake_accepts_both_databases_store() {
        use proptest::prelude::*;
        use switchboard_connector::WebhookSource;
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let stores = runtime.block_on(stores());
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
                runtime.block_on(async {
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
