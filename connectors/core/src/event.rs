//! Ticket events: what sources hear, normalized, and the checks every delivery passes at
//! intake.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What happened to a ticket, as far as the rules are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The ticket was created (or seen for the first time).
    Opened,
    /// The ticket changed or got a new message.
    Updated,
    /// The ticket was closed.
    Closed,
}

impl EventKind {
    /// The name used in config files, logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "opened",
            EventKind::Updated => "updated",
            EventKind::Closed => "closed",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A normalized event about one ticket. Sources produce these; the engine turns them into
/// actions by the configured rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TicketEvent {
    /// The ticket's key in the external system (e.g. a ticket number).
    pub ticket: String,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Matrix user IDs to invite.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub participants: Vec<String>,
    /// Matrix user ID of the ticket's owner; made room admin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// A message to post into the ticket's room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The payload the event came from, for templates and rule conditions.
    #[serde(default)]
    pub payload: serde_json::Value,
}

impl TicketEvent {
    /// A bare event for `ticket`, everything else empty.
    pub fn new(ticket: impl Into<String>, kind: EventKind) -> Self {
        TicketEvent {
            ticket: ticket.into(),
            kind,
            title: None,
            url: None,
            status: None,
            participants: Vec::new(),
            owner: None,
            body: None,
            payload: serde_json::Value::Null,
        }
    }
}

/// One accepted delivery: the events it carries and the key that makes a redelivery a no-op.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub dedupe_key: String,
    pub events: Vec<TicketEvent>,
    /// Keys added to the webhook's JSON answer, for a sender that acts on what it is
    /// answered (a ticket system that sets a ticket's fields from it). Empty for most.
    pub answer: serde_json::Map<String, serde_json::Value>,
}

/// Why a webhook was refused. Each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// The signature is missing or wrong (401).
    #[error("signature: {0}")]
    Signature(String),
    /// The body is not valid JSON (400).
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// The JSON is valid but does not map to a ticket event (422).
    #[error("payload does not map: {0}")]
    Unmapped(String),
}

/// A source that turns webhook requests into ticket events. Implementations validate
/// everything here, at the edge, so nothing past intake has to distrust the events.
pub trait WebhookSource: Send + Sync {
    /// Checks authenticity and maps the body. Must not panic on any input.
    fn accept(&self, headers: &http::HeaderMap, body: &[u8]) -> Result<Delivery, RejectReason>;
}

/// Longest ticket key accepted (bytes). Keys are indexed in both databases and become part
/// of room aliases; PostgreSQL refuses index entries much over 2 KB.
pub const MAX_TICKET_KEY: usize = 255;
/// Longest dedupe key accepted (bytes).
pub const MAX_DEDUPE_KEY: usize = 512;

/// Checks what every database and homeserver would refuse later, so a delivery that passes
/// is stored and carried out the same on SQLite and PostgreSQL: keys that are empty, too
/// long or hold control characters, and NUL characters anywhere (PostgreSQL cannot store
/// them in text). Intake calls it for every source, after the source's own `accept`.
pub fn check_delivery(delivery: &Delivery) -> Result<(), RejectReason> {
    check_key("the delivery ID", &delivery.dedupe_key, MAX_DEDUPE_KEY)?;
    for event in &delivery.events {
        check_key("the ticket key", &event.ticket, MAX_TICKET_KEY)?;
        let fields = [
            ("title", event.title.as_deref()),
            ("url", event.url.as_deref()),
            ("status", event.status.as_deref()),
            ("owner", event.owner.as_deref()),
            ("body", event.body.as_deref()),
        ];
        for (name, value) in fields {
            if value.is_some_and(|v| v.contains('\0')) {
                return Err(nul(name));
            }
        }
        if event.participants.iter().any(|p| p.contains('\0')) {
            return Err(nul("participants"));
        }
        if let Some(path) = nul_in(&event.payload, "payload") {
            return Err(nul(&path));
        }
    }
    Ok(())
}

fn check_key(what: &str, key: &str, max: usize) -> Result<(), RejectReason> {
    if key.is_empty() {
        return Err(RejectReason::Unmapped(format!("{what} is empty")));
    }
    if key.len() > max {
        return Err(RejectReason::Unmapped(format!(
            "{what} is longer than {max} bytes"
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(RejectReason::Unmapped(format!(
            "{what} contains a control character"
        )));
    }
    Ok(())
}

fn nul(field: &str) -> RejectReason {
    RejectReason::Unmapped(format!("`{field}` contains a NUL character (\\u0000)"))
}

/// The path of the first string or object key in `value` that holds a NUL character.
fn nul_in(value: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Some(path.to_string()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_in(v, &format!("{path}.{i}"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                Some(format!("{path}.{}", k.replace('\0', "\\u0000")))
            } else {
                nul_in(v, &format!("{path}.{k}"))
            }
        }),
        _ => None,
    }
}

/// Whether `s` looks like a Matrix user ID (`@localpart:server`).
pub fn is_matrix_user_id(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('@') else {
        return false;
    };
    let Some((local, server)) = rest.split_once(':') else {
        return false;
    };
    !local.is_empty()
        && !server.is_empty()
        && s.len() <= 255
        && local
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._=-/+".contains(c))
        && server
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
}

/// Looks up a dot-separated path in JSON; numeric segments index arrays.
pub fn lookup<'a>(value: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    use serde_json::Value;
    if path.is_empty() {
        return None;
    }
    path.split('.').try_fold(value, |v, seg| match v {
        Value::Object(map) => map.get(seg),
        Value::Array(items) => seg.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_with_what_a_database_refuses_are_refused() {
        let ok = |ticket: &str| Delivery {
            dedupe_key: "id:1".into(),
            events: vec![TicketEvent::new(ticket, EventKind::Opened)],
            answer: Default::default(),
        };
        assert!(check_delivery(&ok("T-1")).is_ok());
        let reason = |d: &Delivery| check_delivery(d).err().map(|e| e.to_string());
        assert!(reason(&ok("P\u{0}1")).is_some_and(|r| r.contains("control character")));
        assert!(reason(&ok("")).is_some_and(|r| r.contains("empty")));
        assert!(reason(&ok(&"x".repeat(256))).is_some_and(|r| r.contains("255 bytes")));
        assert!(check_delivery(&ok(&"é".repeat(127))).is_ok());
        let mut d = ok("T-1");
        d.dedupe_key = "a\nb".into();
        assert!(reason(&d).is_some_and(|r| r.contains("delivery ID")));
        let mut d = ok("T-1");
        d.events[0].body = Some("a\u{0}b".into());
        assert_eq!(
            reason(&d).as_deref(),
            Some("payload does not map: `body` contains a NUL character (\\u0000)")
        );
        let mut d = ok("T-1");
        d.events[0].payload = serde_json::json!({"a": [1, {"b": "x\u{0}"}]});
        assert!(reason(&d).is_some_and(|r| r.contains("`payload.a.1.b`")));
        let mut d = ok("T-1");
        d.events[0].payload = serde_json::json!({"k\u{0}": 1});
        assert!(reason(&d).is_some_and(|r| r.contains("`payload.k\\u0000`")));
    }

    #[test]
    fn matrix_ids() {
        assert!(is_matrix_user_id("@alice:example.org"));
        assert!(is_matrix_user_id("@a.b_c=d-e/f+g:localhost:8448"));
        assert!(!is_matrix_user_id("alice:example.org"));
        assert!(!is_matrix_user_id("@Alice:example.org"));
        assert!(!is_matrix_user_id("@alice"));
        assert!(!is_matrix_user_id("@:example.org"));
        assert!(!is_matrix_user_id("@alice:"));
    }
}
