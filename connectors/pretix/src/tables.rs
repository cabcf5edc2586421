//! pretix's own tables: which order put whom into which room (`pretix_grants`), answers
//! reported as not being Matrix IDs (`pretix_reports`), and rooms mapped from the chat
//! (`pretix_rooms`).

use std::collections::{BTreeSet, HashSet};

use sqlx::Row;
use switchboard_connector::{ActionRow, DbError, Host, Queued, now_ms};

/// What one order's new state changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// (room, user) pairs to invite.
    pub invites: Vec<(String, String)>,
    /// (room, user) pairs to remove.
    pub removals: Vec<(String, String)>,
    /// Answers to report (position ID, answer).
    pub reports: Vec<(u64, String)>,
}

/// Brings an order's grants in line with what it grants now, in one transaction with the
/// actions that takes: a grant not held before is an invite; one held and no longer granted
/// (with `revoke`) is a removal unless another order grants the same; an invalid answer not
/// reported before is a report. `plan` turns the changes into actions, queued after `row`
/// (the order's action). Running it again for the same state changes and queues nothing.
pub async fn apply(
    host: &dyn Host,
    row: &ActionRow,
    grants: &BTreeSet<(String, String)>,
    revoke: bool,
    invalid: &[(u64, String)],
    plan: &(dyn Fn(&Changes) -> Vec<Queued> + Sync),
) -> Result<Changes, DbError> {
    let (source, order) = (&row.source_id, &row.lane);
    let now = now_ms();
    let mut tx = host.pool().begin().await?;
    let held: HashSet<(String, String)> = sqlx::query(
        "SELECT room_id, user_id FROM pretix_grants WHERE source_id = $1 AND order_key = $2",
    )
    .bind(source)
    .bind(order)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
    .collect::<Result<_, sqlx::Error>>()?;
    let mut changes = Changes::default();
    for (room, user) in grants.iter().filter(|g| !held.contains(*g)) {
        sqlx::query(
            "INSERT INTO pretix_grants (source_id, order_key, room_id, user_id, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(source)
        .bind(order)
        .bind(room)
        .bind(user)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        changes.invites.push((room.clone(), user.clone()));
    }
    let mut gone: Vec<&(String, String)> = held.iter().filter(|g| !grants.contains(*g)).collect();
    gone.sort();
    for (room, user) in gone.into_iter().filter(|_| revoke) {
        sqlx::query(
            "DELETE FROM pretix_grants WHERE source_id = $1 AND order_key = $2 \
             AND room_id = $3 AND user_id = $4",
        )
        .bind(source)
        .bind(order)
        .bind(room)
        .bind(user)
        .execute(&mut *tx)
        .await?;
        let elsewhere = sqlx::query(
            "SELECT 1 FROM pretix_grants WHERE source_id = $1 AND room_id = $2 \
             AND user_id = $3 LIMIT 1",
        )
        .bind(source)
        .bind(room)
        .bind(user)
        .fetch_optional(&mut *tx)
        .await?;
        if elsewhere.is_none() {
            changes.removals.push((room.clone(), user.clone()));
        }
    }
    for (position, answer) in invalid {
        let new = sqlx::query(
            "INSERT INTO pretix_reports (source_id, order_key, position_id, answer, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(source)
        .bind(order)
        .bind(*position as i64)
        .bind(answer)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if new > 0 {
            changes.reports.push((*position, answer.clone()));
        }
    }
    host.queue_after(&mut tx, row, &plan(&changes)).await?;
    tx.commit().await?;
    Ok(changes)
}

/// Maps a room to an event (`!setroom`); mapping it again changes nothing.
pub async fn set_room(
    host: &dyn Host,
    source_id: &str,
    organizer: &str,
    event: &str,
    room_id: &str,
    by: &str,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO pretix_rooms (source_id, organizer, event, room_id, added_by, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(source_id)
    .bind(organizer)
    .bind(event)
    .bind(room_id)
    .bind(by)
    .bind(now_ms())
    .execute(host.pool())
    .await?;
    Ok(())
}

/// Removes a room's mappings (`!unsetroom`); how many there were.
pub async fn unset_room(host: &dyn Host, source_id: &str, room_id: &str) -> Result<u64, DbError> {
    Ok(
        sqlx::query("DELETE FROM pretix_rooms WHERE source_id = $1 AND room_id = $2")
            .bind(source_id)
            .bind(room_id)
            .execute(host.pool())
            .await?
            .rows_affected(),
    )
}

/// The events rooms were mapped to from the chat: (organizer, event, room).
pub async fn rooms(
    host: &dyn Host,
    source_id: &str,
) -> Result<Vec<(String, String, String)>, DbError> {
    Ok(sqlx::query(
        "SELECT organizer, event, room_id FROM pretix_rooms WHERE source_id = $1 \
         ORDER BY organizer, event, room_id",
    )
    .bind(source_id)
    .fetch_all(host.pool())
    .await?
    .iter()
    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
    .collect::<Result<_, sqlx::Error>>()?)
}
