//! What waits for an operator: failed and set-aside actions and set-aside deliveries,
//! listed, counted and put back in line.

use std::collections::HashMap;

use sqlx::Row;

use switchboard_connector::Action;

use super::{Dialect, Result, Store, StoreError, now_ms};

/// Something that did not go through and waits for an operator: an action that failed or
/// was set aside, or a delivery that was set aside (`Store::problems`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `action:<id>` or `delivery:<id>`, as `switchboard retry` takes it.
    pub id: String,
    pub source_id: String,
    /// The ticket, for an action; a delivery's tickets are in its events.
    pub ticket_key: Option<String>,
    /// The action's kind (`open_room`, `post`, ...) or `delivery`.
    pub kind: String,
    /// `failed` (a permanent error) or `set_aside` (kept failing).
    pub state: String,
    pub tries: i64,
    pub error: String,
    /// When it last changed (Unix ms).
    pub updated_at: i64,
}

/// What `Store::retry_problems` puts back in line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// One item by its `Problem::id`.
    One(String),
    /// Every failed or set-aside item, of one source or of all.
    All { source: Option<String> },
}

/// What waits to be done, by source (`Store::backlog`): deliveries not turned into actions
/// yet and actions not run yet, each as (how many, when the oldest came in, Unix ms).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backlog {
    pub deliveries: HashMap<String, (i64, i64)>,
    pub actions: HashMap<String, (i64, i64)>,
}

impl Backlog {
    /// When the oldest item of a source came in (Unix ms), if it has any.
    pub fn oldest(&self, source: &str) -> Option<i64> {
        [self.deliveries.get(source), self.actions.get(source)]
            .into_iter()
            .flatten()
            .map(|(_, at)| *at)
            .min()
    }
}

/// Counts of items waiting for an operator, by source (`Store::problem_counts`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProblemCounts {
    /// (source, the action's kind, state) -> actions failed or set aside.
    pub actions: HashMap<(String, String, String), i64>,
    /// source -> deliveries set aside.
    pub deliveries: HashMap<String, i64>,
}

impl Store {
    /// The last error of failed actions, newest first (for operators and tests).
    pub async fn failures(&self, limit: i64) -> Result<Vec<(i64, String)>> {
        let rows = sqlx::query(
            "SELECT id, COALESCE(last_error, '') FROM outbox WHERE state = 'failed' \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Counts a failed try of a delivery the engine could not turn into actions; at `max`
    /// tries it is set aside. Returns whether it was.
    pub async fn delivery_failed(&self, id: i64, error: &str, max: i64) -> Result<bool> {
        let now = now_ms();
        let row = sqlx::query(
            "UPDATE inbox SET attempts = attempts + 1, last_error = $1, updated_at = $2, \
             set_aside_at = CASE WHEN attempts + 1 >= $3 THEN $2 ELSE NULL END \
             WHERE id = $4 AND processed_at IS NULL RETURNING set_aside_at",
        )
        .bind(error)
        .bind(now)
        .bind(max)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => r.try_get::<Option<i64>, _>(0)?.is_some(),
            None => false,
        })
    }

    /// Failed and set-aside actions and set-aside deliveries, newest first, at most
    /// `limit`, of one source and (for actions) one ticket if given.
    pub async fn problems(
        &self,
        source: Option<&str>,
        ticket: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Problem>> {
        let actions = sqlx::query(
            "SELECT id, source_id, ticket_key, action, state, attempts, \
             COALESCE(last_error, ''), updated_at FROM outbox \
             WHERE state IN ('failed', 'set_aside') AND ($1 IS NULL OR source_id = $1) \
             AND ($2 IS NULL OR ticket_key = $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(source)
        .bind(ticket)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(actions.len());
        for r in &actions {
            let action: String = r.try_get(3)?;
            // A connector's own actions are not core `Action`s: their `type` is their kind.
            let stored = serde_json::from_str::<serde_json::Value>(&action).unwrap_or_default();
            let kind = Action::kind_of(stored["type"].as_str().unwrap_or("unknown")).to_string();
            out.push(Problem {
                id: format!("action:{}", r.try_get::<i64, _>(0)?),
                source_id: r.try_get(1)?,
                ticket_key: Some(r.try_get(2)?),
                kind,
                state: r.try_get(4)?,
                tries: r.try_get(5)?,
                error: r.try_get(6)?,
                updated_at: r.try_get(7)?,
            });
        }
        if ticket.is_none() {
            let deliveries = sqlx::query(
                "SELECT id, source_id, attempts, COALESCE(last_error, ''), updated_at FROM inbox \
                 WHERE set_aside_at IS NOT NULL AND ($1 IS NULL OR source_id = $1) \
                 ORDER BY id DESC LIMIT $2",
            )
            .bind(source)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            for r in &deliveries {
                out.push(Problem {
                    id: format!("delivery:{}", r.try_get::<i64, _>(0)?),
                    source_id: r.try_get(1)?,
                    ticket_key: None,
                    kind: "delivery".into(),
                    state: "set_aside".into(),
                    tries: r.try_get(2)?,
                    error: r.try_get(3)?,
                    updated_at: r.try_get(4)?,
                });
            }
            out.sort_by_key(|p| std::cmp::Reverse(p.updated_at));
            out.truncate(limit.max(0) as usize);
        }
        Ok(out)
    }

    /// Puts failed or set-aside items back in line, to be tried again as if new; returns
    /// how many. An action goes back before its ticket's later actions; a delivery is
    /// processed again by the engine.
    pub async fn retry_problems(&self, which: &Retry) -> Result<u64> {
        let now = now_ms();
        let (action, delivery, source) = match which {
            Retry::One(id) => {
                let (what, n) = id
                    .split_once(':')
                    .and_then(|(w, n)| Some((w, n.parse::<i64>().ok()?)))
                    .or_else(|| Some(("action", id.parse::<i64>().ok()?)))
                    .ok_or_else(|| StoreError::ItemId(id.clone()))?;
                match what {
                    "action" => (Some(n), None, None),
                    "delivery" => (None, Some(n), None),
                    _ => return Err(StoreError::ItemId(id.clone())),
                }
            }
            Retry::All { source } => (None, None, source.as_deref()),
        };
        let all = matches!(which, Retry::All { .. });
        let mut n = 0;
        if all || action.is_some() {
            n += sqlx::query(
                "UPDATE outbox SET state = 'pending', errors = 0, next_attempt_at = $1, \
                 locked_until = NULL, updated_at = $1 WHERE state IN ('failed', 'set_aside') \
                 AND ($2 IS NULL OR id = $2) AND ($3 IS NULL OR source_id = $3)",
            )
            .bind(now)
            .bind(action)
            .bind(source)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        if all || delivery.is_some() {
            n += sqlx::query(
                "UPDATE inbox SET set_aside_at = NULL, attempts = 0, updated_at = $1 \
                 WHERE set_aside_at IS NOT NULL AND ($2 IS NULL OR id = $2) \
                 AND ($3 IS NULL OR source_id = $3)",
            )
            .bind(now)
            .bind(delivery)
            .bind(source)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        Ok(n)
    }

    /// What waits to be done, by source (on the partial indexes of pending items).
    pub async fn backlog(&self) -> Result<Backlog> {
        let mut backlog = Backlog::default();
        for (sql, into) in [
            (
                "SELECT source_id, COUNT(*), MIN(created_at) FROM inbox \
                 WHERE processed_at IS NULL AND set_aside_at IS NULL GROUP BY source_id",
                &mut backlog.deliveries,
            ),
            (
                "SELECT source_id, COUNT(*), MIN(created_at) FROM outbox \
                 WHERE state = 'pending' GROUP BY source_id",
                &mut backlog.actions,
            ),
        ] {
            for r in sqlx::query(sql).fetch_all(&self.pool).await? {
                into.insert(r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?));
            }
        }
        Ok(backlog)
    }

    /// How many items wait for an operator, by source (and, for actions, kind: the stored
    /// action's `type`). Reads only the rows that wait, by their partial indexes.
    pub async fn problem_counts(&self) -> Result<ProblemCounts> {
        let mut c = ProblemCounts::default();
        let sql = match self.dialect() {
            Dialect::Postgres => {
                "SELECT source_id, COALESCE(CAST(action AS JSON) ->> 'type', 'unknown'), state, \
                 COUNT(*) FROM outbox WHERE state IN ('failed', 'set_aside') GROUP BY 1, 2, 3"
            }
            Dialect::Sqlite => {
                "SELECT source_id, COALESCE(json_extract(action, '$.type'), 'unknown'), state, \
                 COUNT(*) FROM outbox WHERE state IN ('failed', 'set_aside') GROUP BY 1, 2, 3"
            }
        };
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        for r in rows {
            let type_: String = r.try_get(1)?;
            *c.actions
                .entry((
                    r.try_get(0)?,
                    Action::kind_of(&type_).to_string(),
                    r.try_get(2)?,
                ))
                .or_default() += r.try_get::<i64, _>(3)?;
        }
        let rows = sqlx::query(
            "SELECT source_id, COUNT(*) FROM inbox WHERE set_aside_at IS NOT NULL \
             GROUP BY source_id",
        )
        .fetch_all(&self.pool)
        .await?;
        for r in rows {
            c.deliveries.insert(r.try_get(0)?, r.try_get(1)?);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::store::NewAction;
    use crate::store::tests::stores;

    /// What waits for an operator is counted by source, kind and state, a participant's
    /// invite as an `invite` and a connector's own action by its type, on both databases;
    /// the list names the same kinds.
    #[tokio::test]
    async fn waiting_items_are_counted_by_kind() {
        for store in stores().await {
            let id = store.accept("s", "d", "[]").await.expect("accept").id;
            let new = |ticket: &str, action: &str| NewAction {
                source_id: "s".into(),
                ticket_key: ticket.into(),
                action: action.into(),
            };
            let acts = vec![
                new("A", r#"{"type":"participant","user":"@u:hs"}"#),
                new("B", r#"{"type":"invite","room":"!r:hs","user":"@u:hs"}"#),
                new("C", r#"{"type":"pretend_write","note":"x"}"#),
            ];
            store.commit_actions(&[(id, acts)]).await.expect("commit");
            for row in store
                .claim(10, Duration::from_secs(60))
                .await
                .expect("claim")
            {
                store.fail(row.id, "403").await.expect("fail");
            }
            let counts = store.problem_counts().await.expect("counts");
            let get = |kind: &str| {
                counts
                    .actions
                    .get(&("s".into(), kind.into(), "failed".into()))
                    .copied()
            };
            assert_eq!(get("invite"), Some(2), "{counts:?}");
            assert_eq!(get("pretend_write"), Some(1), "{counts:?}");
            assert_eq!(counts.actions.len(), 2, "{counts:?}");
            let mut kinds: Vec<String> = store
                .problems(Some("s"), None, 10)
                .await
                .expect("problems")
                .into_iter()
                .map(|p| p.kind)
                .collect();
            kinds.sort();
            assert_eq!(kinds, ["invite", "invite", "pretend_write"]);
        }
    }
}
