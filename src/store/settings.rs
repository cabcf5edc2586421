//! Named values that outlive a restart: settings (the Matrix session, connectors' state)
//! and cursors (how far a sync or a poll has read).

use sqlx::{AnyPool, Row};

use super::{Result, Store, now_ms};

impl Store {
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
