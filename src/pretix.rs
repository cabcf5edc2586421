//! pretix: an order's action reads the order from pretix's REST API and brings the event's
//! rooms in line with its current state. The invites, removals and reports that takes are
//! queued as actions of their own, each in its own lane (`member:<room>:<user>`), so one
//! that fails is retried without holding up the others.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use switchboard_connector::Action;
use switchboard_pretix::{OrderRef, PretixConfig, membership};
use tracing::{info, warn};

use crate::config::{Loaded, Secret, SourceKind};
use crate::matrix::Failure;
use crate::metrics::Metrics;
use crate::store::{NewAction, OutboxRow, PretixChanges, Store};

/// How long a call to pretix may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The pretix sources, and what reads from them.
pub struct Pretix {
    sources: HashMap<String, (PretixConfig, Secret)>,
    http: reqwest::Client,
    store: Store,
    metrics: Metrics,
}

impl Pretix {
    /// The configured pretix sources; `None` if there are none.
    pub fn new(loaded: &Loaded, store: Store, metrics: Metrics) -> Option<Pretix> {
        let sources: HashMap<_, _> = loaded
            .config
            .sources
            .iter()
            .filter(|(_, s)| s.kind == SourceKind::Pretix)
            .filter_map(|(id, s)| {
                let token = loaded.secrets.pretix_tokens.get(id)?.clone();
                Some((id.clone(), (s.pretix.clone()?, token)))
            })
            .collect();
        if sources.is_empty() {
            return None;
        }
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
            .build()
            .ok()?;
        Some(Pretix {
            sources,
            http,
            store,
            metrics,
        })
    }

    /// Reads the order and queues what its state asks for.
    pub async fn order(&self, row: &OutboxRow, order: &OrderRef) -> Result<String, Failure> {
        let Some((cfg, token)) = self.sources.get(&row.source_id) else {
            return Err(Failure::Permanent(format!(
                "`{}` is not a pretix source",
                row.source_id
            )));
        };
        let Some(rooms) = cfg.event(&order.organizer, &order.event) else {
            warn!(source = %row.source_id, order = %order.key(), "an order of an event with no rooms configured; ignored");
            return Ok(format!(
                "skipped: no rooms for {}/{}",
                order.organizer, order.event
            ));
        };
        let current = self.fetch(cfg, token, order).await?;
        let m = membership(&current, rooms, &cfg.question);
        let plan = |changes: &PretixChanges| {
            let mut out = Vec::new();
            let mut add = |lane: String, action: Action| {
                self.metrics
                    .actions_queued
                    .with_label_values(&[action.kind()])
                    .inc();
                if let Ok(action) = serde_json::to_string(&action) {
                    out.push(NewAction {
                        source_id: row.source_id.clone(),
                        ticket_key: lane,
                        action,
                    });
                }
            };
            for (room, user) in &changes.invites {
                let (room, user) = (room.clone(), user.clone());
                add(
                    format!("member:{room}:{user}"),
                    Action::Invite { room, user },
                );
            }
            for (room, user) in &changes.removals {
                let (room, user) = (room.clone(), user.clone());
                let reason = cfg.kick_reason.clone();
                add(
                    format!("member:{room}:{user}"),
                    Action::Kick { room, user, reason },
                );
            }
            if let Some(management) = &rooms.management_room {
                for (position, answer) in &changes.reports {
                    let body = format!(
                        "Order {} (position {position}): \"{answer}\" is not a Matrix ID \
                         (like @name:example.org), so this attendee was not invited. Correct \
                         the answer in pretix and they will be.",
                        order.code
                    );
                    add(
                        format!("report:{}", order.key()),
                        Action::Send {
                            room: management.clone(),
                            content: json!({"msgtype": "m.notice", "body": body}),
                        },
                    );
                }
            }
            out
        };
        let changes = self
            .store
            .apply_pretix(row, &m.grants, m.revoke && cfg.kick, &m.invalid, &plan)
            .await
            .map_err(|e| Failure::Transient {
                message: format!("database: {e}"),
                retry_after: None,
            })?;
        for (position, answer) in &changes.reports {
            warn!(source = %row.source_id, order = %order.key(), position, answer = %answer, "an answer is not a Matrix ID");
        }
        if !(changes.invites.is_empty() && changes.removals.is_empty()) {
            info!(
                source = %row.source_id,
                order = %order.key(),
                status = %m.status,
                invites = changes.invites.len(),
                removals = changes.removals.len(),
                "pretix order applied"
            );
        }
        Ok(format!(
            "order {} ({}): {} invites, {} removals, {} reports",
            order.code,
            m.status,
            changes.invites.len(),
            changes.removals.len(),
            changes.reports.len()
        ))
    }

    /// The order as pretix has it now.
    async fn fetch(
        &self,
        cfg: &PretixConfig,
        token: &Secret,
        order: &OrderRef,
    ) -> Result<serde_json::Value, Failure> {
        let url = cfg.order_url(order);
        let transient = |message: String, retry_after: Option<Duration>| Failure::Transient {
            message,
            retry_after,
        };
        let response = self
            .http
            .get(&url)
            .header("Authorization", format!("Token {}", token.expose()))
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| transient(format!("pretix: {}", e.without_url()), None))?;
        let status = response.status();
        if status.is_success() {
            return response
                .json()
                .await
                .map_err(|e| transient(format!("pretix's answer: {}", e.without_url()), None));
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let message = match status.as_u16() {
            401 | 403 => format!(
                "pretix refused the API token ({status}) for {}: check its team's permissions",
                order.key()
            ),
            404 => format!("pretix has no order {}", order.key()),
            _ => format!("pretix answered {status} for {}", order.key()),
        };
        if status.as_u16() == 429 || status.is_server_error() {
            Err(transient(message, retry_after))
        } else {
            Err(Failure::Permanent(message))
        }
    }
}
