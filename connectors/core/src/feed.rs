//! Sources that follow another: what a source tells its followers about its tickets
//! (`Host::publish`), and what a follower tells it back (`Host::deliver` into its inbox).
//! Both are ticket events whose `ticket` is the followed source's ticket key and whose
//! payload is a `Feed`.
//!
//! A source publishes only when it has followers (`Host::followers`); a kind says which
//! sources its config follows (`Kind::follows`) and whether its own can be followed
//! (`Kind::publishes`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{EventKind, TicketEvent};

/// The payload of a ticket event between a source and its followers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "feed", rename_all = "snake_case")]
pub enum Feed {
    /// Published: a message in the ticket's conversation. The event's `title` is the
    /// ticket's title, `url` where it is discussed, `participants` its customer.
    Message {
        from: Side,
        /// The writer's Matrix user ID.
        author: String,
        /// The writer's display name, where known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<FeedFile>,
    },
    /// Published: the ticket closed. `text` is what the customer was told; `by` what
    /// closed it (a follower's `Close` key when a follower did).
    Closed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    /// From a follower: a note written there, for the people working on the ticket, and
    /// for its customer too when `public`.
    Note {
        /// Who wrote it, as the follower names them.
        author: String,
        /// Where it was written ("issue #12" of the far end), for the heading.
        place: String,
        text: String,
        public: bool,
        /// Files that came with it (each fetched through the follower: `FeedFile::source`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        files: Vec<FeedFile>,
    },
    /// From a follower: something for the people working on the ticket only (a status
    /// change).
    Notice { text: String },
    /// From a follower: the ticket was closed there (by `author`). `key` is unique to this
    /// close: the same close heard again closes nothing twice.
    Close {
        author: String,
        place: String,
        key: String,
    },
}

/// Who wrote a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The person the ticket is for.
    Customer,
    /// Someone working on it.
    Operator,
}

/// A file in a message or a note: the Matrix content that `Matrix::download` takes, or,
/// with `source`, what that source's `Connector::file` takes (`Host::fetch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedFile {
    pub name: String,
    pub content_type: String,
    #[serde(default)]
    pub size: u64,
    pub content: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl Feed {
    /// A ticket event carrying this about `ticket`.
    pub fn event(&self, ticket: &str) -> TicketEvent {
        let kind = match self {
            Feed::Closed { .. } | Feed::Close { .. } => EventKind::Closed,
            _ => EventKind::Updated,
        };
        let mut event = TicketEvent::new(ticket, kind);
        event.payload = serde_json::to_value(self).unwrap_or_default();
        event
    }

    /// The feed an event carries, if it carries one.
    pub fn of(event: &TicketEvent) -> Option<Feed> {
        event.payload.get("feed")?;
        serde_json::from_value(event.payload.clone()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feed_goes_through_an_event_and_back() {
        let note = Feed::Note {
            author: "Alice Agent".into(),
            place: "Tracker issue #3".into(),
            text: "On its way".into(),
            public: true,
            files: Vec::new(),
        };
        let event = note.event("12");
        assert_eq!(event.ticket, "12");
        assert_eq!(event.payload["feed"], "note");
        assert_eq!(Feed::of(&event), Some(note));
        let close = Feed::Close {
            author: "Alice Agent".into(),
            place: "Tracker issue #3".into(),
            key: "tracker:7".into(),
        };
        assert_eq!(close.event("12").kind, EventKind::Closed);
        let plain = TicketEvent::new("12", EventKind::Updated);
        assert_eq!(Feed::of(&plain), None, "no feed in an ordinary event");
    }
}
