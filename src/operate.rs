//! What an operator sees of an instance, running or stopped: each source's queues and what
//! waits for an operator. `switchboard status` prints it; the `/status` page shows it.

use serde::Serialize;

use crate::store::{Result, Store, now_ms};

/// One source's queues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceStatus {
    pub id: String,
    pub kind: String,
    /// Deliveries not turned into actions yet.
    pub deliveries: i64,
    /// Actions not done yet.
    pub actions: i64,
    /// Actions that failed for good.
    pub failed: i64,
    /// Actions and deliveries set aside because they kept failing.
    pub set_aside: i64,
    /// How long the oldest waiting item has waited (`age`), if any waits.
    pub oldest: Option<String>,
}

impl SourceStatus {
    /// Whether something of this source waits for an operator.
    pub fn needs_operator(&self) -> bool {
        self.failed + self.set_aside > 0
    }
}

/// The queues of each source in `sources` (ID, kind), in that order.
pub async fn sources<'a>(
    store: &Store,
    sources: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<SourceStatus>> {
    let backlog = store.backlog().await?;
    let problems = store.problem_counts().await?;
    let now = now_ms();
    Ok(sources
        .into_iter()
        .map(|(id, kind)| {
            let count = |map: &std::collections::HashMap<String, (i64, i64)>| {
                map.get(id).map_or(0, |(n, _)| *n)
            };
            let state = |s: &str| {
                problems
                    .actions
                    .iter()
                    .filter(|((source, _, state), _)| source == id && state == s)
                    .map(|(_, n)| n)
                    .sum::<i64>()
            };
            SourceStatus {
                id: id.to_string(),
                kind: kind.to_string(),
                deliveries: count(&backlog.deliveries),
                actions: count(&backlog.actions),
                failed: state("failed"),
                set_aside: state("set_aside") + problems.deliveries.get(id).copied().unwrap_or(0),
                oldest: backlog.oldest(id).map(|at| age((now - at).max(0) / 1000)),
            }
        })
        .collect())
}

/// Seconds as the largest unit that fits: `42s`, `7m`, `3h`, `2d`.
pub fn age(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7_200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

/// A Unix time in milliseconds as UTC, to the second.
pub fn utc(ms: i64) -> String {
    let [y, m, d, hour, min, sec] = switchboard_connector::utc_fields(ms);
    format!("{y:04}-{m:02}-{d:02}T{hour:02}:{min:02}:{sec:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_times_read_as_people_write_them() {
        assert_eq!(age(0), "0s");
        assert_eq!(age(119), "119s");
        assert_eq!(age(120), "2m");
        assert_eq!(age(7_199), "119m");
        assert_eq!(age(7_200), "2h");
        assert_eq!(age(172_800), "2d");
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_796_428_800_999), "2026-12-05T00:00:00Z");
    }
}
