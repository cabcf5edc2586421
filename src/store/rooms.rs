//! Rooms: each ticket's room (links: who was invited, closed or open) and the source
//! each room belongs to (room claims).

use sqlx::Row;

use super::{Result, Store, now_ms};

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

impl Store {
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

    /// The source and ticket whose room `room_id` is.
    pub async fn ticket_of_room(&self, room_id: &str) -> Result<Option<(String, String)>> {
        let row = sqlx::query(
            "SELECT source_id, ticket_key FROM links WHERE room_id = $1 AND thread_id IS NULL \
             LIMIT 1",
        )
        .bind(room_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row
            .map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?)))
            .transpose()?)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::stores;

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
}
