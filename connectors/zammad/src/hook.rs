//! Intake of Zammad's trigger webhooks: the ticket they name is what counts (it is read
//! back through the REST API); the delivery's ID makes a redelivery a duplicate.

use serde_json::{Value, json};
use switchboard_connector::{Delivery, EventKind, RejectReason, TicketEvent, WebhookSource};

/// Intake of a trigger's webhooks.
pub(crate) struct TriggerHook;

/// A positive number, as JSON number or string.
fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|n| *n > 0)
}

impl WebhookSource for TriggerHook {
    fn accept(&self, headers: &http::HeaderMap, body: &[u8]) -> Result<Delivery, RejectReason> {
        let payload: Value =
            serde_json::from_slice(body).map_err(|e| RejectReason::Malformed(e.to_string()))?;
        let ticket = number(&payload["ticket"]["id"])
            .ok_or_else(|| RejectReason::Unmapped("`ticket.id` must be a ticket ID".into()))?;
        let article = number(&payload["article"]["id"]);
        // Each delivery has its own ID; without one (a webhook made by hand), the ticket's
        // change is the key.
        let dedupe_key = match headers
            .get("x-zammad-delivery")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.trim().is_empty())
        {
            Some(id) => format!("delivery:{}", id.trim()),
            None => format!(
                "ticket:{ticket}:{}:{}",
                article.unwrap_or(0),
                payload["ticket"]["updated_at"].as_str().unwrap_or_default()
            ),
        };
        let mut event = TicketEvent::new(ticket.to_string(), EventKind::Updated);
        event.payload = json!({"article": article});
        Ok(Delivery {
            dedupe_key,
            events: vec![event],
            answer: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(delivery: Option<&str>, body: &str) -> Result<Delivery, String> {
        let mut headers = http::HeaderMap::new();
        if let Some(id) = delivery {
            headers.insert("X-Zammad-Delivery", id.parse().expect("header"));
        }
        TriggerHook
            .accept(&headers, body.as_bytes())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_webhook_names_a_ticket_and_its_delivery_is_the_key() {
        let body = r#"{"ticket": {"id": 81, "updated_at": "2020-11-13T14:34:35.333Z"},
                       "article": {"id": 104}}"#;
        let d = accept(Some("c0ffee"), body).expect("accepted");
        assert_eq!(d.dedupe_key, "delivery:c0ffee");
        assert_eq!(d.events[0].ticket, "81");
        let d = accept(None, body).expect("accepted");
        assert_eq!(d.dedupe_key, "ticket:81:104:2020-11-13T14:34:35.333Z");
        for (body, why) in [
            ("not json", "malformed JSON"),
            (r#"{"article": {"id": 1}}"#, "`ticket.id`"),
            (r#"{"ticket": {"id": "x"}}"#, "`ticket.id`"),
            ("[]", "`ticket.id`"),
        ] {
            let e = accept(Some("1"), body).expect_err(body);
            assert!(e.contains(why), "{body}: {e}");
        }
    }
}
