//! The webhook of RT's scrip: it names a ticket and the transaction that changed it, nothing
//! more is trusted or needed (the ticket is read back through REST2).

use serde_json::{Value, json};
use switchboard_connector::{Delivery, EventKind, RejectReason, TicketEvent, WebhookSource};

/// Intake of the scrip's webhooks.
pub(crate) struct ScripHook;

/// A positive number, as JSON number or string.
fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|n| *n > 0)
}

impl WebhookSource for ScripHook {
    fn accept(&self, _headers: &http::HeaderMap, body: &[u8]) -> Result<Delivery, RejectReason> {
        let payload: Value =
            serde_json::from_slice(body).map_err(|e| RejectReason::Malformed(e.to_string()))?;
        let ticket = number(&payload["ticket_id"])
            .ok_or_else(|| RejectReason::Unmapped("`ticket_id` must be a ticket number".into()))?;
        let transaction = number(&payload["transaction_id"]).ok_or_else(|| {
            RejectReason::Unmapped("`transaction_id` must be a transaction number".into())
        })?;
        let mut event = TicketEvent::new(ticket.to_string(), EventKind::Updated);
        event.payload = json!({"transaction": transaction});
        Ok(Delivery {
            dedupe_key: format!("transaction:{transaction}"),
            events: vec![event],
            answer: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(body: &str) -> Result<Delivery, String> {
        ScripHook
            .accept(&http::HeaderMap::new(), body.as_bytes())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_webhook_names_a_ticket_and_a_transaction() {
        let d = accept(r#"{"ticket_id": 7, "transaction_id": "46", "type": "Create"}"#)
            .expect("accepted");
        assert_eq!(d.dedupe_key, "transaction:46");
        assert_eq!(d.events[0].ticket, "7");
        for (body, why) in [
            ("not json", "malformed JSON"),
            (r#"{"transaction_id": 46}"#, "`ticket_id`"),
            (r#"{"ticket_id": 0, "transaction_id": 46}"#, "`ticket_id`"),
            (
                r#"{"ticket_id": 7, "transaction_id": -1}"#,
                "`transaction_id`",
            ),
            ("[]", "`ticket_id`"),
        ] {
            let e = accept(body).expect_err(body);
            assert!(e.contains(why), "{body}: {e}");
        }
    }
}
