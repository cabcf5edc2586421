//! Prometheus metrics. Labels are bounded sets (source IDs from the config, action kinds,
//! outcomes); never user IDs, room IDs or ticket keys.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Webhooks by configured source and outcome (accepted, duplicate, rejected_signature,
    /// rejected_malformed, rejected_unmapped, rejected_size, unavailable). Requests for an
    /// unknown source are not counted: their names would make the label set unbounded.
    pub webhooks: IntCounterVec,
    /// Actions queued by kind.
    pub actions_queued: IntCounterVec,
    /// Actions finished by kind and outcome (done, retry, failed).
    pub actions: IntCounterVec,
    /// Seconds one action took against the homeserver.
    pub action_seconds: HistogramVec,
    /// Whether the homeserver answered the last sync or check.
    pub homeserver_up: IntGauge,
    /// Items set aside because they kept failing, by source and item (`delivery` or an
    /// action's kind).
    pub set_aside: IntCounterVec,
    /// Items that wait for an operator now, by source, item (`delivery` or the action's
    /// kind) and state (`failed`, `set_aside`); refreshed every 15 s.
    pub waiting: IntGaugeVec,
    /// Items waiting to be done, by source and item (`delivery`, `action`); refreshed
    /// every 15 s.
    pub pending: IntGaugeVec,
    /// The age of each source's oldest item waiting to be done (0: none); refreshed every
    /// 15 s.
    pub oldest_pending: GaugeVec,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("switchboard".into()), None)
            .unwrap_or_else(|_| Registry::new());
        let webhooks = IntCounterVec::new(
            Opts::new("webhooks_total", "Webhook requests by source and outcome"),
            &["source", "outcome"],
        )
        .expect("valid metric");
        let actions_queued = IntCounterVec::new(
            Opts::new("actions_queued_total", "Actions queued by kind"),
            &["kind"],
        )
        .expect("valid metric");
        let actions = IntCounterVec::new(
            Opts::new("actions_total", "Actions executed by kind and outcome"),
            &["kind", "outcome"],
        )
        .expect("valid metric");
        let action_seconds = HistogramVec::new(
            HistogramOpts::new("action_seconds", "Time to execute one action").buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["kind"],
        )
        .expect("valid metric");
        let homeserver_up = IntGauge::new(
            "homeserver_up",
            "1 when the homeserver answered the last sync or check",
        )
        .expect("valid metric");
        let set_aside = IntCounterVec::new(
            Opts::new(
                "set_aside_total",
                "Items set aside because they kept failing, by source and item",
            ),
            &["source", "item"],
        )
        .expect("valid metric");
        let waiting = IntGaugeVec::new(
            Opts::new(
                "waiting_for_operator",
                "Items that failed or were set aside and wait for an operator, by source, \
                 item and state",
            ),
            &["source", "item", "state"],
        )
        .expect("valid metric");
        let pending = IntGaugeVec::new(
            Opts::new(
                "pending",
                "Items waiting to be done (deliveries not planned yet, actions not run yet), \
                 by source and item",
            ),
            &["source", "item"],
        )
        .expect("valid metric");
        let oldest_pending = GaugeVec::new(
            Opts::new(
                "oldest_pending_seconds",
                "Age of the source's oldest item waiting to be done (0: none)",
            ),
            &["source"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(waiting.clone()));
        let _ = registry.register(Box::new(pending.clone()));
        let _ = registry.register(Box::new(oldest_pending.clone()));
        for c in [&set_aside, &webhooks, &actions_queued, &actions] {
            let _ = registry.register(Box::new(c.clone()));
        }
        let _ = registry.register(Box::new(action_seconds.clone()));
        let _ = registry.register(Box::new(homeserver_up.clone()));
        Metrics {
            registry,
            webhooks,
            actions_queued,
            actions,
            action_seconds,
            homeserver_up,
            set_aside,
            waiting,
            pending,
            oldest_pending,
        }
    }

    /// Sets the `pending` and `oldest_pending_seconds` gauges of `sources` from the
    /// store's backlog at `now` (Unix ms).
    pub fn set_backlog(&self, sources: &[String], backlog: &crate::store::Backlog, now: i64) {
        for source in sources {
            for (item, counts) in [
                ("delivery", &backlog.deliveries),
                ("action", &backlog.actions),
            ] {
                let n = counts.get(source).map_or(0, |(n, _)| *n);
                self.pending.with_label_values(&[source, item]).set(n);
            }
            let age = backlog
                .oldest(source)
                .map_or(0.0, |at| (now - at).max(0) as f64 / 1000.0);
            self.oldest_pending.with_label_values(&[source]).set(age);
        }
    }

    /// Sets the `waiting_for_operator` gauges from the store's counts; a source whose items
    /// were all retried goes back to 0.
    pub fn set_waiting(&self, counts: &crate::store::ProblemCounts) {
        self.waiting.reset();
        for ((source, kind, state), n) in &counts.actions {
            self.waiting
                .with_label_values(&[source, kind, state])
                .set(*n);
        }
        for (source, n) in &counts.deliveries {
            self.waiting
                .with_label_values(&[source, "delivery", "set_aside"])
                .set(*n);
        }
    }

    /// The text exposition format.
    /// The registry, where connectors add their own metrics (named `switchboard_...`).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_is_counted_by_source_and_aged() {
        let metrics = Metrics::new();
        let mut backlog = crate::store::Backlog::default();
        backlog.actions.insert("a".into(), (3, 10_000));
        backlog.deliveries.insert("a".into(), (1, 4_000));
        let sources = ["a".to_string(), "b".to_string()];
        metrics.set_backlog(&sources, &backlog, 64_000);
        let text = metrics.render();
        for line in [
            "switchboard_pending{item=\"action\",source=\"a\"} 3",
            "switchboard_pending{item=\"delivery\",source=\"a\"} 1",
            "switchboard_pending{item=\"action\",source=\"b\"} 0",
            "switchboard_oldest_pending_seconds{source=\"a\"} 60",
            "switchboard_oldest_pending_seconds{source=\"b\"} 0",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
