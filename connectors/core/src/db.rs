//! The database as a connector sees it: the service's pool (SQLite or PostgreSQL, through
//! sqlx's `Any` driver) for the connector's own tables, and how its errors are told apart.

/// Which database the pool speaks. Queries with `$1` parameters work on both; a connector
/// that needs dialect-specific SQL asks this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A database error as a connector meets it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// The database answered with an error or could not be reached.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A stored JSON value does not parse (a bug or a hand-edited row).
    #[error("stored JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl DbError {
    /// Whether the database refused this statement for what it holds, so trying the same
    /// again fails the same (see `refuses`).
    pub fn is_refusal(&self) -> bool {
        match self {
            DbError::Json(_) => true,
            DbError::Db(e) => refuses(e),
        }
    }
}

/// Whether the database refused a statement for what it holds (a value it cannot store, a
/// broken constraint, a column that does not decode). Lost connections, timeouts, lock
/// waits, deadlocks, serialization failures and a server shutting down are not refusals:
/// they pass.
pub fn refuses(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(e) => {
            let code = e.code().unwrap_or_default();
            // SQLite: 5 busy, 6 locked, 10 I/O, 13 full. PostgreSQL: 40 transaction
            // rollback, 53 insufficient resources, 57 operator intervention, 08
            // connection, 58 system error.
            let passing = ["5", "6", "10", "13", "517", "261", "262"].contains(&code.as_ref())
                || ["40", "53", "57", "08", "58"]
                    .iter()
                    .any(|class| code.len() == 5 && code.starts_with(class));
            !passing
        }
        sqlx::Error::Encode(_)
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::TypeNotFound { .. } => true,
        _ => false,
    }
}

/// What the inbox did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The delivery's ID (the first one's, for a duplicate).
    pub id: i64,
    /// The same dedupe key was accepted before; nothing new was stored.
    pub duplicate: bool,
}

/// The outbox entry an action runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRow {
    pub id: i64,
    pub source_id: String,
    /// The lane (ticket key) whose actions run in order.
    pub lane: String,
    /// Stable across re-queueing: the delivery's ID and the action's position in it. Every
    /// Matrix send of the action derives its transaction ID from it (`txn_id`).
    pub txn_key: String,
    /// Claims so far, this one included: more than 1 means an earlier try may have done
    /// part of the work.
    pub attempts: i64,
}

impl ActionRow {
    /// The transaction ID of the action's send number `part` (`""` for its first): the
    /// homeserver answers a repeated send with the first event instead of posting again.
    pub fn txn_id(&self, part: &str) -> String {
        format!("switchboard.{}{part}", self.txn_key)
    }
}

/// Milliseconds since the Unix epoch: what every table's times are in.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// A Unix time in milliseconds as UTC calendar fields: year, month, day, hour, minute,
/// second.
pub fn utc_fields(ms: i64) -> [i64; 6] {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    [year, month, day, rest / 3600, rest / 60 % 60, rest % 60]
}

#[cfg(test)]
mod tests {
    use super::utc_fields;

    #[test]
    fn utc_fields_of_known_times() {
        assert_eq!(utc_fields(0), [1970, 1, 1, 0, 0, 0]);
        assert_eq!(utc_fields(951_782_400_000), [2000, 2, 29, 0, 0, 0]);
        assert_eq!(utc_fields(1_796_303_733_999), [2026, 12, 3, 13, 15, 33]);
        assert_eq!(utc_fields(-1_000), [1969, 12, 31, 23, 59, 59]);
    }
}
