//! Generic JSON webhook source: maps any JSON body to ticket events by configurable field
//! paths, so a system that can POST JSON needs no code of its own to reach Matrix.

mod kind;

pub use kind::Webhook;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use switchboard_connector::{
    Delivery, EventKind, RejectReason, TicketEvent, WebhookSource, is_matrix_user_id, lookup,
};

/// Configuration of a generic webhook source (`kind = "webhook"`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where each ticket field is found in the JSON body (dot-separated paths; a number
    /// indexes an array, e.g. `ticket.articles.0.body`).
    #[serde(default)]
    pub fields: FieldPaths,
    /// Status values (compared case-insensitively) that mean the ticket is closed.
    #[serde(default = "default_closed")]
    pub closed_statuses: Vec<String>,
    /// Status values that mean the ticket was just created. Anything else is an update.
    #[serde(default = "default_opened")]
    pub opened_statuses: Vec<String>,
    /// HTTP header carrying a unique delivery ID. A redelivery with the same ID is ignored.
    /// Without the header (and without `fields.delivery_id`) the body's SHA-256 is the key.
    #[serde(default = "default_delivery_header")]
    pub delivery_header: String,
}

/// Field paths into the JSON body. The defaults describe the documented default shape.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct FieldPaths {
    /// The ticket's key (string or number). Required in every payload.
    pub ticket: String,
    /// The ticket's title.
    pub title: String,
    /// A link to the ticket in its own system.
    pub url: String,
    /// The ticket's status; see `closed_statuses` and `opened_statuses`.
    pub status: String,
    /// Matrix user IDs to invite: an array of strings, or one string.
    pub participants: String,
    /// The owner's Matrix user ID; made room admin.
    pub owner: String,
    /// A message to post into the ticket's room.
    pub body: String,
    /// A unique ID of this delivery, used for deduplication when no header carries one.
    pub delivery_id: String,
}

impl Default for FieldPaths {
    fn default() -> Self {
        FieldPaths {
            ticket: "ticket.id".into(),
            title: "ticket.title".into(),
            url: "ticket.url".into(),
            status: "ticket.status".into(),
            participants: "ticket.participants".into(),
            owner: "ticket.owner".into(),
            body: "message.body".into(),
            delivery_id: "delivery_id".into(),
        }
    }
}

fn default_closed() -> Vec<String> {
    ["closed", "resolved", "done"].map(String::from).to_vec()
}

fn default_opened() -> Vec<String> {
    ["new", "opened", "created"].map(String::from).to_vec()
}

fn default_delivery_header() -> String {
    "X-Delivery-Id".into()
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            fields: FieldPaths::default(),
            closed_statuses: default_closed(),
            opened_statuses: default_opened(),
            delivery_header: default_delivery_header(),
        }
    }
}

/// A scalar at `path` as text; objects, arrays, null and empty strings count as absent.
fn text(value: &Value, path: &str) -> Option<String> {
    match lookup(value, path)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl WebhookConfig {
    /// Maps one JSON payload to a ticket event.
    pub fn map(&self, payload: Value) -> Result<TicketEvent, RejectReason> {
        let f = &self.fields;
        if !payload.is_object() {
            return Err(RejectReason::Unmapped(
                "the body must be a JSON object".into(),
            ));
        }
        let ticket = text(&payload, &f.ticket)
            .ok_or_else(|| RejectReason::Unmapped(format!("no ticket key at `{}`", f.ticket)))?;
        if ticket.len() > 255 {
            return Err(RejectReason::Unmapped(format!(
                "the ticket key at `{}` is longer than 255 bytes",
                f.ticket
            )));
        }
        let status = text(&payload, &f.status);
        let kind = match &status {
            Some(s) if contains_ci(&self.closed_statuses, s) => EventKind::Closed,
            Some(s) if contains_ci(&self.opened_statuses, s) => EventKind::Opened,
            _ => EventKind::Updated,
        };
        let participants = match lookup(&payload, &f.participants) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) if s.trim().is_empty() => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(RejectReason::Unmapped(format!(
                        "`{}` must hold Matrix user IDs, found {other}",
                        f.participants
                    ))),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(RejectReason::Unmapped(format!(
                    "`{}` must be a list of Matrix user IDs, found {other}",
                    f.participants
                )));
            }
        };
        let owner = text(&payload, &f.owner);
        for id in participants.iter().chain(owner.iter()) {
            if !is_matrix_user_id(id) {
                return Err(RejectReason::Unmapped(format!(
                    "`{id}` is not a Matrix user ID (expected @name:server)"
                )));
            }
        }
        Ok(TicketEvent {
            ticket,
            kind,
            title: text(&payload, &f.title),
            url: text(&payload, &f.url),
            status,
            participants,
            owner,
            body: text(&payload, &f.body),
            payload,
        })
    }
}

fn contains_ci(list: &[String], s: &str) -> bool {
    list.iter().any(|x| x.eq_ignore_ascii_case(s))
}

impl WebhookSource for WebhookConfig {
    fn accept(&self, headers: &http::HeaderMap, body: &[u8]) -> Result<Delivery, RejectReason> {
        let payload: Value =
            serde_json::from_slice(body).map_err(|e| RejectReason::Malformed(e.to_string()))?;
        let header_id = headers
            .get(self.delivery_header.as_str())
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(|v| format!("id:{v}"));
        let dedupe_key = header_id
            .or_else(|| text(&payload, &self.fields.delivery_id).map(|v| format!("id:{v}")))
            .unwrap_or_else(|| format!("sha256:{}", hex::encode(Sha256::digest(body))));
        let event = self.map(payload)?;
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
    use serde_json::json;

    fn accept(body: &str) -> Result<Delivery, RejectReason> {
        WebhookConfig::default().accept(&http::HeaderMap::new(), body.as_bytes())
    }

    #[test]
    fn default_shape_maps_every_field() {
        let d = accept(
            r#"{"ticket":{"id":42,"title":"Printer","url":"https://t/42","status":"new",
                "owner":"@o:hs","participants":["@a:hs","@b:hs"]},"message":{"body":"hi"}}"#,
        )
        .expect("maps");
        let e = &d.events[0];
        assert_eq!(e.ticket, "42");
        assert_eq!(e.kind, EventKind::Opened);
        assert_eq!(e.title.as_deref(), Some("Printer"));
        assert_eq!(e.url.as_deref(), Some("https://t/42"));
        assert_eq!(e.owner.as_deref(), Some("@o:hs"));
        assert_eq!(e.participants, vec!["@a:hs", "@b:hs"]);
        assert_eq!(e.body.as_deref(), Some("hi"));
        assert!(d.dedupe_key.starts_with("sha256:"));
    }

    #[test]
    fn status_decides_the_kind() {
        let kind = |s: &str| {
            accept(&json!({"ticket": {"id": "1", "status": s}}).to_string())
                .expect("maps")
                .events[0]
                .kind
        };
        assert_eq!(kind("Closed"), EventKind::Closed);
        assert_eq!(kind("new"), EventKind::Opened);
        assert_eq!(kind("pending reminder"), EventKind::Updated);
    }

    #[test]
    fn delivery_id_from_header_then_field_then_hash() {
        let cfg = WebhookConfig::default();
        let mut headers = http::HeaderMap::new();
        headers.insert("x-delivery-id", http::HeaderValue::from_static("abc"));
        let body = br#"{"delivery_id":"f1","ticket":{"id":1}}"#;
        assert_eq!(cfg.accept(&headers, body).expect("ok").dedupe_key, "id:abc");
        let plain = http::HeaderMap::new();
        assert_eq!(cfg.accept(&plain, body).expect("ok").dedupe_key, "id:f1");
        let a = cfg.accept(&plain, br#"{"ticket":{"id":1}}"#).expect("ok");
        let b = cfg.accept(&plain, br#"{"ticket":{"id":2}}"#).expect("ok");
        assert_ne!(a.dedupe_key, b.dedupe_key);
    }

    #[test]
    fn custom_paths_and_array_index() {
        let cfg = WebhookConfig {
            fields: FieldPaths {
                ticket: "data.number".into(),
                body: "data.articles.1.text".into(),
                ..FieldPaths::default()
            },
            ..WebhookConfig::default()
        };
        let e = cfg
            .map(json!({"data": {"number": "Z-9", "articles": [{"text": "a"}, {"text": "b"}]}}))
            .expect("maps");
        assert_eq!(e.ticket, "Z-9");
        assert_eq!(e.body.as_deref(), Some("b"));
    }

    #[test]
    fn bad_input_is_rejected_with_a_reason() {
        assert!(matches!(
            accept("{not json"),
            Err(RejectReason::Malformed(_))
        ));
        assert!(matches!(accept("[1,2]"), Err(RejectReason::Unmapped(_))));
        assert!(matches!(
            accept(r#"{"ticket":{}}"#),
            Err(RejectReason::Unmapped(_))
        ));
        let bad_id = r#"{"ticket":{"id":1,"participants":["alice"]}}"#;
        assert!(matches!(accept(bad_id), Err(RejectReason::Unmapped(m)) if m.contains("alice")));
        let bad_type = r#"{"ticket":{"id":1,"participants":{"a":1}}}"#;
        assert!(matches!(accept(bad_type), Err(RejectReason::Unmapped(_))));
    }

    proptest::proptest! {
        /// Any bytes at all: an answer, never a panic.
        #[test]
        fn any_body_gets_an_answer(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = WebhookConfig::default().accept(&http::HeaderMap::new(), &body);
        }

        /// Any text in any field: an accepted delivery has a ticket key of at most 255 bytes
        /// and only Matrix IDs to invite.
        #[test]
        fn any_fields_map_or_are_refused(
            id in "(?s).{0,300}", title in "(?s).{0,50}", body in "(?s).{0,200}",
            people in proptest::collection::vec("(?s)@?.{0,20}", 0..3), status in "(?s).{0,10}",
        ) {
            let payload = json!({"ticket": {"id": id, "title": title, "status": status,
                "participants": people}, "message": {"body": body}});
            if let Ok(d) = accept(&payload.to_string()) {
                let e = &d.events[0];
                proptest::prop_assert!(!e.ticket.is_empty() && e.ticket.len() <= 255);
                proptest::prop_assert!(e.participants.iter().all(|p| is_matrix_user_id(p)));
            }
        }
    }
}
