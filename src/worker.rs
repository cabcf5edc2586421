//! The outbox worker: runs queued actions against the Matrix sink, in order per ticket and in
//! parallel across tickets, retrying transient failures with backoff.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rand::Rng;
use serde::Deserialize;
use std::panic::AssertUnwindSafe;
use switchboard_connector::{Action, ActionContext, ActionRow, Connector, Host};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::matrix::{Failure, MatrixSink};
use crate::metrics::Metrics;
use crate::store::{OutboxRow, Store, now_ms};

/// How long a claimed action is reserved for this worker. Longer than any one request.
const LEASE: Duration = Duration::from_secs(90);
/// How many of one ticket's queued actions a worker leases at a time.
const RUN: i64 = 32;
/// Errors the far end answered (`Failure::Refused`) after which an action is set aside:
/// with the backoff below, about 45 s of trying.
pub const MAX_REFUSED: i64 = 10;

pub struct Worker {
    pub store: Store,
    pub sink: Arc<MatrixSink>,
    /// Each source's connector, which runs the actions of its kind's own types.
    pub connectors: HashMap<String, Arc<dyn Connector>>,
    /// The action types connectors run (the rest are the service's own).
    pub owners: BTreeMap<&'static str, &'static str>,
    pub host: Arc<dyn Host>,
    pub metrics: Metrics,
    pub concurrency: usize,
    /// Woken when new actions are queued.
    pub wake: Arc<Notify>,
}

impl Worker {
    pub async fn run(self: Arc<Self>) {
        let in_flight = Arc::new(AtomicUsize::new(0));
        loop {
            let free = self
                .concurrency
                .saturating_sub(in_flight.load(Ordering::Acquire));
            let mut claimed = 0;
            if free > 0 {
                match self.store.claim(free as i64, LEASE).await {
                    Ok(rows) => {
                        claimed = rows.len();
                        for row in rows {
                            in_flight.fetch_add(1, Ordering::AcqRel);
                            let me = self.clone();
                            let in_flight = in_flight.clone();
                            tokio::spawn(async move {
                                me.lane(row).await;
                                in_flight.fetch_sub(1, Ordering::AcqRel);
                                me.wake.notify_one();
                            });
                        }
                    }
                    Err(error) => warn!(%error, "cannot claim actions; retrying"),
                }
            }
            if claimed > 0 && claimed == free {
                continue;
            }
            let wait = match self.store.next_due().await {
                Ok(Some(due)) => Duration::from_millis((due - now_ms()).clamp(5, 1000) as u64),
                _ => Duration::from_secs(1),
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Runs one ticket's actions in order, starting with `head`, for as long as it has
    /// any. Recording an action's outcome overlaps with running the next one, so the store
    /// is off the path from one message to the next. A crash before an outcome is recorded
    /// runs that action again, and its transaction ID makes the homeserver answer with the
    /// event it already has.
    async fn lane(&self, head: OutboxRow) {
        let mut last = head.clone();
        let mut run = VecDeque::from([head]);
        let mut unrecorded: Option<(i64, Outcome)> = None;
        loop {
            let Some(row) = run.pop_front() else {
                // All leased actions ran: lease those queued meanwhile, and only then record
                // the last outcome. Recorded first, the last action would no longer hold the
                // ticket, and a claim could take its next action at the same time.
                let more = self.store.lease_following(&last, RUN, LEASE).await;
                let recorded = self.record(unrecorded.take()).await;
                match more {
                    Ok(rows) if recorded && !rows.is_empty() => {
                        run.extend(rows);
                        continue;
                    }
                    Ok(_) => return,
                    Err(error) => {
                        warn!(id = last.id, %error, "cannot lease a ticket's next actions");
                        return;
                    }
                }
            };
            let (recorded, outcome) =
                tokio::join!(self.record(unrecorded.take()), self.run_one(&row));
            if let Outcome::Retry {
                delay,
                message,
                refused,
            } = &outcome
            {
                if let Err(error) = self.store.retry(row.id, *delay, message, *refused).await {
                    warn!(id = row.id, %error, "cannot record a retry");
                }
                // The rest waits behind this one; leave it to whoever runs it later.
                let rest: Vec<i64> = run.iter().map(|r| r.id).collect();
                if let Err(error) = self.store.release(&rest).await {
                    warn!(%error, "cannot release leased actions");
                }
                return;
            }
            if !recorded {
                // The store is failing: stop here; the leases run out and the actions are
                // claimed again.
                return;
            }
            unrecorded = Some((row.id, outcome));
            last = row;
        }
    }

    /// Stores how an action ended. False if the store failed.
    async fn record(&self, outcome: Option<(i64, Outcome)>) -> bool {
        let written = match &outcome {
            None | Some((_, Outcome::Retry { .. })) => return true,
            Some((id, Outcome::Done(result) | Outcome::Skipped(result))) => {
                self.store.complete(*id, Some(result)).await
            }
            // The ticket's later actions still run: one failure does not block it.
            Some((id, Outcome::Failed(message))) => self.store.fail(*id, message).await,
            Some((id, Outcome::SetAside(message))) => self.store.set_aside(*id, message).await,
        };
        match written {
            Ok(()) => true,
            Err(error) => {
                warn!(?outcome, %error, "cannot record an action's outcome");
                false
            }
        }
    }

    /// Runs one action and classifies the outcome.
    async fn run_one(&self, row: &OutboxRow) -> Outcome {
        let stored: serde_json::Value = match serde_json::from_str(&row.action) {
            Ok(a) => a,
            Err(e) => return Outcome::Failed(format!("stored action does not parse: {e}")),
        };
        let type_ = stored["type"].as_str().unwrap_or_default().to_string();
        let core = if self.owners.contains_key(type_.as_str()) {
            None
        } else {
            match Action::deserialize(&stored) {
                Ok(a) => Some(a),
                Err(e) => return Outcome::Failed(format!("stored action does not parse: {e}")),
            }
        };
        let kind = Action::kind_of(&type_).to_string();
        let started = Instant::now();
        // A panic in one action is that action's failure, not the worker's: it is counted
        // like an error the far end answered, so it is set aside in the end.
        let outcome = AssertUnwindSafe(self.dispatch(row, core.as_ref(), &stored))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(Failure::Refused(format!("the action panicked: {what}")))
            });
        self.metrics
            .action_seconds
            .with_label_values(&[&kind])
            .observe(started.elapsed().as_secs_f64());
        classify(&self.metrics, row, &kind, outcome)
    }

    /// Carries out one action: the service's own with the sink, a connector's with the
    /// connector of the row's source.
    async fn dispatch(
        &self,
        row: &OutboxRow,
        core: Option<&Action>,
        stored: &serde_json::Value,
    ) -> Result<String, Failure> {
        if let Some(action) = core {
            return self.sink.execute(row, action).await;
        }
        let Some(connector) = self.connectors.get(&row.source_id) else {
            return Err(Failure::Permanent(format!(
                "no source `{}` is configured to run this action",
                row.source_id
            )));
        };
        let action_row = ActionRow {
            id: row.id,
            source_id: row.source_id.clone(),
            lane: row.ticket_key.clone(),
            txn_key: row.txn_key.clone(),
            attempts: row.attempts,
        };
        let cx = ActionContext {
            row: &action_row,
            host: &*self.host,
            matrix: &*self.sink,
        };
        connector.execute(&cx, stored).await
    }
}

/// What an action's result means for it: done, failed, tried again or set aside.
fn classify(
    metrics: &Metrics,
    row: &OutboxRow,
    kind: &str,
    outcome: Result<String, Failure>,
) -> Outcome {
    match outcome {
        Ok(result) => {
            let (source, ticket) = (&row.source_id, &row.ticket_key);
            debug!(id = row.id, source, ticket, kind, %result, "action done");
            metrics.actions.with_label_values(&[kind, "done"]).inc();
            if result.starts_with("skipped") {
                return Outcome::Skipped(result);
            }
            Outcome::Done(result)
        }
        Err(Failure::Permanent(message)) => {
            let (source, ticket) = (&row.source_id, &row.ticket_key);
            warn!(id = row.id, source, ticket, kind, error = %message, "action failed permanently");
            metrics.actions.with_label_values(&[kind, "failed"]).inc();
            Outcome::Failed(message)
        }
        Err(Failure::Refused(message)) if row.errors + 1 >= MAX_REFUSED => {
            warn!(
                id = row.id,
                source = row.source_id,
                ticket = row.ticket_key,
                kind,
                error = %message,
                tries = row.errors + 1,
                "action set aside: it kept failing (`switchboard failed` lists it, \
                 `switchboard retry` tries it again)"
            );
            metrics
                .actions
                .with_label_values(&[kind, "set_aside"])
                .inc();
            metrics
                .set_aside
                .with_label_values(&[&row.source_id, kind])
                .inc();
            Outcome::SetAside(message)
        }
        Err(failure) => {
            let refused = matches!(failure, Failure::Refused(_));
            let delay = match &failure {
                Failure::Transient {
                    retry_after: Some(after),
                    ..
                } => *after,
                _ => backoff(row.attempts),
            };
            let message = failure.into_message();
            let (source, ticket) = (&row.source_id, &row.ticket_key);
            debug!(id = row.id, source, ticket, kind, error = %message, ?delay, refused, "action will be retried");
            metrics.actions.with_label_values(&[kind, "retry"]).inc();
            Outcome::Retry {
                delay,
                message,
                refused,
            }
        }
    }
}

#[derive(Debug)]
enum Outcome {
    Done(String),
    /// Done, with nothing to do.
    Skipped(String),
    Failed(String),
    /// Tried again after `delay`; `refused` counts it towards setting the action aside.
    Retry {
        delay: Duration,
        message: String,
        refused: bool,
    },
    /// Kept failing: kept with its error for an operator; the ticket's next action runs.
    SetAside(String),
}

/// Exponential backoff with jitter: 250 ms doubling up to 10 s.
fn backoff(attempts: i64) -> Duration {
    let exp = attempts.clamp(1, 16) as u32 - 1;
    let base = 250u64.saturating_mul(1 << exp.min(6)).min(10_000);
    let jitter = rand::rng().random_range(0..=base / 4);
    Duration::from_millis(base + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(errors: i64) -> OutboxRow {
        OutboxRow {
            id: 1,
            source_id: "t".into(),
            ticket_key: "7".into(),
            action: String::new(),
            attempts: errors + 1,
            txn_key: "1.0".into(),
            errors,
        }
    }

    #[test]
    fn refusals_are_retried_then_set_aside_and_outages_never_are() {
        let m = Metrics::new();
        let post = "post";
        let refused = || Err(Failure::Refused("500 M_UNKNOWN".into()));
        assert!(matches!(
            classify(&m, &row(0), post, refused()),
            Outcome::Retry { refused: true, .. }
        ));
        assert!(matches!(
            classify(&m, &row(MAX_REFUSED - 2), post, refused()),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            classify(&m, &row(MAX_REFUSED - 1), post, refused()),
            Outcome::SetAside(e) if e.contains("500")
        ));
        // An outage is tried again however long it lasts, after the time the server asked.
        let outage = Failure::Transient {
            message: "connection refused".into(),
            retry_after: Some(Duration::from_secs(3)),
        };
        assert!(matches!(
            classify(&m, &row(1000), post, Err(outage)),
            Outcome::Retry { refused: false, delay, .. } if delay == Duration::from_secs(3)
        ));
        assert!(matches!(
            classify(&m, &row(0), post, Err(Failure::Permanent("403".into()))),
            Outcome::Failed(_)
        ));
        assert!(matches!(
            classify(&m, &row(0), post, Ok("skipped: no room".into())),
            Outcome::Skipped(_)
        ));
        assert!(
            m.render()
                .contains("switchboard_set_aside_total{item=\"post\",source=\"t\"} 1")
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) < Duration::from_millis(400));
        assert!(backoff(3) >= Duration::from_millis(1000));
        assert!(backoff(50) <= Duration::from_millis(12_500));
    }
}
