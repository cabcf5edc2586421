//! The outbox: deliveries turned into actions, and actions claimed, leased, finished or put
//! back by workers, with the counts and the next wake-up time the worker needs.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::Row;
use sqlx::any::AnyRow;
use switchboard_connector::ActionRow;

use super::{Dialect, Params, Result, Store, now_ms};

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

/// Counts of outbox entries by state, for readiness, metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    pub pending: i64,
    pub done: i64,
    pub failed: i64,
    pub set_aside: i64,
}

/// A query on the Any driver, as `sqlx::query` builds it.
type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

impl Store {
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
mod tests {
    use super::*;
    use crate::store::tests::{action, stores};

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
}
