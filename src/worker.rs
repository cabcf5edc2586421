//! The outbox worker: runs queued actions against the Matrix sink, in order per ticket and in
//! parallel across tickets, retrying transient failures with backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use switchboard_connector::Action;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::matrix::{Failure, MatrixSink};
use crate::metrics::Metrics;
use crate::store::{OutboxRow, Store, now_ms};

/// How long a claimed action is reserved for this worker. Longer than any one request.
const LEASE: Duration = Duration::from_secs(90);

pub struct Worker {
    pub store: Store,
    pub sink: Arc<MatrixSink>,
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

    /// Runs one action, then keeps going with the same ticket's next one while it is due,
    /// so one ticket's messages follow each other without a round through the dispatcher.
    async fn lane(&self, mut row: OutboxRow) {
        loop {
            let next = match self.run_one(&row).await {
                Outcome::Done(result) => {
                    self.store
                        .complete_and_claim_next(&row, Some(&result), LEASE)
                        .await
                }
                Outcome::Failed(message) => match self.store.fail(row.id, &message).await {
                    // The ticket's later actions still run: one failure does not block it.
                    Ok(()) => {
                        self.store
                            .claim_lane(&row.source_id, &row.ticket_key, LEASE)
                            .await
                    }
                    Err(e) => Err(e),
                },
                Outcome::Retry(delay, message) => {
                    if let Err(error) = self.store.retry(row.id, delay, &message).await {
                        warn!(id = row.id, %error, "cannot record a retry");
                    }
                    return;
                }
            };
            match next {
                Ok(Some(n)) => row = n,
                Ok(None) => return,
                Err(error) => {
                    // The lease runs out and the action is claimed again; its transaction ID
                    // keeps that from posting twice.
                    warn!(id = row.id, %error, "cannot record an action's outcome");
                    return;
                }
            }
        }
    }

    /// Runs one action and classifies the outcome.
    async fn run_one(&self, row: &OutboxRow) -> Outcome {
        let action: Action = match serde_json::from_str(&row.action) {
            Ok(a) => a,
            Err(e) => return Outcome::Failed(format!("stored action does not parse: {e}")),
        };
        let kind = action.kind();
        let started = Instant::now();
        let outcome = self.sink.execute(row, &action).await;
        self.metrics
            .action_seconds
            .with_label_values(&[kind])
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Ok(result) => {
                debug!(id = row.id, kind, "action done");
                self.metrics
                    .actions
                    .with_label_values(&[kind, "done"])
                    .inc();
                Outcome::Done(result)
            }
            Err(Failure::Permanent(message)) => {
                warn!(id = row.id, kind, error = %message, "action failed permanently");
                self.metrics
                    .actions
                    .with_label_values(&[kind, "failed"])
                    .inc();
                Outcome::Failed(message)
            }
            Err(Failure::Transient {
                message,
                retry_after,
            }) => {
                let delay = retry_after.unwrap_or_else(|| backoff(row.attempts));
                debug!(id = row.id, kind, error = %message, ?delay, "action will be retried");
                self.metrics
                    .actions
                    .with_label_values(&[kind, "retry"])
                    .inc();
                Outcome::Retry(delay, message)
            }
        }
    }
}

enum Outcome {
    Done(String),
    Failed(String),
    Retry(Duration, String),
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

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff(1) < Duration::from_millis(400));
        assert!(backoff(3) >= Duration::from_millis(1000));
        assert!(backoff(50) <= Duration::from_millis(12_500));
    }
}
