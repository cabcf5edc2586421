//! Pruning: deletes finished deliveries and actions older than the retention period, a
//! chunk per statement so other writers do not wait on it.

use sqlx::Row;

use super::{Result, Store};

impl Store {
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::store::tests::{action, stores};
    use crate::store::{OutboxCounts, now_ms};

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
}
