//! Intake of the GenericInterface's webhooks: Znuny's `Ticket::Generic` invoker sends
//! `{Ticket, Event}`, OTOBO's `Generic::PassThrough` only the event's data
//! (`{Event, TicketID, ...}`). Only the ticket's ID counts: the ticket is read back. The
//! answer can carry the room's link for a dynamic field.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};
use switchboard_connector::{
    Delivery, EventKind, RejectReason, TicketEvent, WebhookSource, now_ms,
};

use crate::LinkConfig;

/// Intake of the invoker's webhooks for one source.
pub(crate) struct InvokerHook {
    pub source: String,
    pub link: Option<LinkConfig>,
}

/// A positive number, as JSON number or string (both systems send IDs as strings).
fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|n| *n > 0)
}

/// Told apart deliveries that carry nothing to tell them apart by.
static COUNT: AtomicU64 = AtomicU64::new(0);

impl WebhookSource for InvokerHook {
    fn accept(&self, _headers: &http::HeaderMap, body: &[u8]) -> Result<Delivery, RejectReason> {
        let payload: Value =
            serde_json::from_slice(body).map_err(|e| RejectReason::Malformed(e.to_string()))?;
        let ticket = [
            &payload["Ticket"]["TicketID"],
            &payload["TicketID"],
            &payload["Event"]["TicketID"],
        ]
        .into_iter()
        .find_map(number)
        .ok_or_else(|| {
            RejectReason::Unmapped("`Ticket.TicketID` or `TicketID` must be a ticket ID".into())
        })?;
        let event = payload["Event"]["Event"]
            .as_str()
            .or_else(|| payload["Event"].as_str())
            .unwrap_or("event");
        // Znuny's payload has the ticket's change time and the event's article: a retried
        // call repeats them. OTOBO's may name only the ticket: each is read again (which
        // finds nothing new when it repeats one).
        let changed = payload["Ticket"]["Changed"].as_str();
        let article = number(&payload["Event"]["ArticleID"])
            .or_else(|| number(&payload["ArticleID"]))
            .unwrap_or(0);
        let dedupe_key = match changed {
            Some(changed) => format!("{event}:{ticket}:{article}:{changed}"),
            None => format!(
                "{event}:{ticket}:{article}:at:{}.{}",
                now_ms(),
                COUNT.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let mut answer = Map::new();
        if let Some(link) = &self.link {
            answer.insert(
                format!("OTRS_TicketDynamicFieldSet_{}", link.field),
                json!(format!(
                    "{}/link/{}/{ticket}",
                    link.base.trim_end_matches('/'),
                    self.source
                )),
            );
        }
        Ok(Delivery {
            dedupe_key,
            events: vec![TicketEvent::new(ticket.to_string(), EventKind::Updated)],
            answer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(link: bool) -> InvokerHook {
        InvokerHook {
            source: "znuny".into(),
            link: link.then(|| LinkConfig {
                field: "MatrixRoom".into(),
                base: "https://sb.example.org/".into(),
            }),
        }
    }

    fn accept(link: bool, body: &str) -> Result<Delivery, String> {
        hook(link)
            .accept(&http::HeaderMap::new(), body.as_bytes())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn both_systems_payloads_name_the_ticket() {
        let znuny = r#"{"Ticket": {"TicketID": "4711", "Changed": "2024-06-18 11:04:37"},
                        "Event": {"Event": "ArticleCreate", "TicketID": "4711", "ArticleID": "9877"}}"#;
        let d = accept(true, znuny).expect("accepted");
        assert_eq!(d.events[0].ticket, "4711");
        assert_eq!(d.dedupe_key, "ArticleCreate:4711:9877:2024-06-18 11:04:37");
        assert_eq!(
            d.answer["OTRS_TicketDynamicFieldSet_MatrixRoom"],
            "https://sb.example.org/link/znuny/4711"
        );
        let otobo = r#"{"Event": "TicketCreate", "TicketID": "4711"}"#;
        let (one, two) = (
            accept(false, otobo).expect("accepted"),
            accept(false, otobo).expect("accepted"),
        );
        assert_eq!(one.events[0].ticket, "4711");
        assert!(one.answer.is_empty());
        assert_ne!(one.dedupe_key, two.dedupe_key, "each is read");
        for (body, why) in [
            ("not json", "malformed JSON"),
            (r#"{"Event": "TicketCreate"}"#, "`TicketID`"),
            (r#"{"TicketID": "abc"}"#, "`TicketID`"),
        ] {
            let e = accept(false, body).expect_err(body);
            assert!(e.contains(why), "{body}: {e}");
        }
    }
}
