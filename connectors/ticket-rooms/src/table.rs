//! A source's table of ticket rooms: how far each ticket was read and what its room has.
//! Each source has its own (`<kind>_tickets`), all of this shape: `source_id`, `ticket`,
//! `last_transaction`, `status`, `owner`, `people` (JSON), `roomed`, `updated_at`,
//! `closed_at` (NULL while open) and `aged`.

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
        "SELECT last_transaction, status, owner, people, roomed, closed_at, aged FROM {table} \
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
        closed: row.try_get::<Option<i64>, _>(5)?.is_some(),
        aged: u8::try_from(row.try_get::<i64, _>(6)?).unwrap_or(2),
    })
}

/// Records what the room has now and queues the actions that bring it there, in one
/// transaction: both happen, or neither. A room closed now is noted with the time; one
/// open again starts over.
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
         roomed, updated_at, closed_at, aged) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0) \
         ON CONFLICT (source_id, ticket) DO UPDATE SET last_transaction = $3, status = $4, \
         owner = $5, people = $6, roomed = $7, updated_at = $8, \
         closed_at = CASE WHEN $9 IS NULL THEN NULL ELSE COALESCE({table}.closed_at, $9) END, \
         aged = CASE WHEN $9 IS NULL THEN 0 ELSE {table}.aged END"
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
        .bind(seen.closed.then(now_ms))
        .execute(&mut *tx)
        .await?;
    host.queue_after(&mut tx, row, actions).await?;
    tx.commit().await?;
    Ok(())
}

/// The source's closed rooms not emptied yet: ticket, when closed, what was done since.
pub async fn closed(
    host: &dyn Host,
    table: &'static str,
    source: &str,
) -> Result<Vec<(String, i64, u8)>, DbError> {
    let sql = format!(
        "SELECT ticket, closed_at, aged FROM {table} \
         WHERE source_id = $1 AND closed_at IS NOT NULL AND aged < 2"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(source)
        .fetch_all(host.pool())
        .await?;
    rows.iter()
        .map(|r| {
            let aged = u8::try_from(r.try_get::<i64, _>(2)?).unwrap_or(2);
            Ok((r.try_get(0)?, r.try_get(1)?, aged))
        })
        .collect()
}

/// Notes what was done to a closed room; false when the room is open (again).
pub async fn aged(
    host: &dyn Host,
    table: &'static str,
    source: &str,
    ticket: &str,
    stage: u8,
) -> Result<bool, DbError> {
    let sql = format!(
        "UPDATE {table} SET aged = $1 WHERE source_id = $2 AND ticket = $3 \
         AND closed_at IS NOT NULL AND aged < $1"
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(i64::from(stage))
        .bind(source)
        .bind(ticket)
        .execute(host.pool())
        .await?;
    Ok(done.rows_affected() > 0)
}
