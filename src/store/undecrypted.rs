//! Events heard but not decrypted yet: kept once each, listed oldest first for another
//! try, and forgotten once decrypted or given up on.

use sqlx::Row;

use super::{Result, Store, now_ms};

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

impl Store {
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
}

#[cfg(test)]
mod tests {
    use crate::store::tests::stores;

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
}
