//! A source's table of ticket rooms: how far each ticket was read and what its room has.
//! Each source has its own (`<kind>_tickets`), all of this shape: `source_id`, `ticket`,
//! `last_transaction`, `status`, `owner`, `people` (JSON), `roomed`, `updated_at`.

use std::collections::BTreeSet;

use sqlx::Row;
use switchboard_connector::{ActionRow, DbError, Host, Queued, now_ms};

use crate::Seen;

/// What the room of `ticket` has so far (nothing: a ticket not seen yet).
pub async fn seen(
    host: &dyn Host,
    table: &'static str,
    source: &str,
    ticket: &str,
) -> Result<Seen, DbError> {
    let sql = format!(
        "SELECT last_transaction, status, owner, people, roomed FROM {table} \
         WHERE source_id = $1 AND ticket = $2"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(source)
        .bind(ticket)
        .fetch_optional(host.pool())
        .await?;
    let Some(row) = row else {
        return Ok(Seen::default());
    };
    let people: String = row.try_get(3)?;
    Ok(Seen {
        last: u64::try_from(row.try_get::<i64, _>(0)?).unwrap_or(0),
        status: row.try_get(1)?,
        owner: row.try_get(2)?,
        people: serde_json::from_str::<BTreeSet<String>>(&people).unwrap_or_default(),
        roomed: row.try_get::<i64, _>(4)? != 0,
    })
}

/// Records what the room has now and queues the actions that bring it there, in one
/// transaction: both happen, or neither.
pub async fn advance(
    host: &dyn Host,
    table: &'static str,
    row: &ActionRow,
    seen: &Seen,
    actions: &[Queued],
) -> Result<(), DbError> {
    let people = serde_json::to_string(&seen.people).unwrap_or_else(|_| "[]".into());
    let sql = format!(
        "INSERT INTO {table} (source_id, ticket, last_transaction, status, owner, people, \
         roomed, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (source_id, ticket) DO UPDATE SET last_transaction = $3, status = $4, \
         owner = $5, people = $6, roomed = $7, updated_at = $8"
    );
    let mut tx = host.pool().begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&row.source_id)
        .bind(&row.lane)
        .bind(i64::try_from(seen.last).unwrap_or(i64::MAX))
        .bind(&seen.status)
        .bind(&seen.owner)
        .bind(people)
        .bind(i64::from(seen.roomed))
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
    host.queue_after(&mut tx, row, actions).await?;
    tx.commit().await?;
    Ok(())
}
