//! The helpdesk's metrics, in the service's registry (names as before it was a connector).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Requests opened and closed, events relayed and how long relaying took.
#[derive(Clone)]
pub struct DeskMetrics {
    /// Requests opened, by source.
    pub requests_opened: IntCounterVec,
    /// Requests closed, by source and how (command, idle).
    pub requests_closed: IntCounterVec,
    /// Events relayed, by source, direction (to_operators, to_customer) and kind (message,
    /// edit, reaction, redaction).
    pub relayed: IntCounterVec,
    /// Seconds from an event's sending to its copy's sending on the other side, by direction.
    pub relay_seconds: HistogramVec,
}

impl DeskMetrics {
    /// The metrics, registered in `registry` (one helpdesk per bot: a second registration
    /// of the same names keeps the first's, which the second then counts in too).
    pub fn new(registry: &Registry) -> DeskMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        let m = DeskMetrics {
            requests_opened: counter(
                "helpdesk_requests_opened_total",
                "Helpdesk requests opened by source",
                &["source"],
            ),
            requests_closed: counter(
                "helpdesk_requests_closed_total",
                "Helpdesk requests closed by source and how (command, idle)",
                &["source", "how"],
            ),
            relayed: counter(
                "helpdesk_relayed_total",
                "Helpdesk events relayed by source, direction and kind",
                &["source", "direction", "kind"],
            ),
            relay_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "helpdesk_relay_seconds",
                    "Time from an event's sending to its copy's sending on the other side",
                )
                .buckets(vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                ]),
                &["direction"],
            )
            .expect("valid metric"),
        };
        for c in [&m.requests_opened, &m.requests_closed, &m.relayed] {
            let _ = registry.register(Box::new(c.clone()));
        }
        let _ = registry.register(Box::new(m.relay_seconds.clone()));
        m
    }
}
