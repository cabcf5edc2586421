//! Prometheus metrics. Labels are bounded sets (source IDs from the config, action kinds,
//! outcomes); never user IDs, room IDs or ticket keys.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
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
    /// Items that wait for an operator now, by source, item (`action`, `delivery`) and
    /// state (`failed`, `set_aside`); refreshed every 15 s.
    pub waiting: IntGaugeVec,
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
        let _ = registry.register(Box::new(waiting.clone()));
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
        }
    }

    /// Sets the `waiting_for_operator` gauges from the store's counts; a source whose items
    /// were all retried goes back to 0.
    pub fn set_waiting(&self, counts: &crate::store::ProblemCounts) {
        self.waiting.reset();
        for ((source, state), n) in &counts.actions {
            self.waiting
                .with_label_values(&[source, "action", state])
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
