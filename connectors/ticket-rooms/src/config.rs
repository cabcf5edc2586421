//! Config parts every ticket-system source has: its rooms, and its internal notes.

use schemars::JsonSchema;
use serde::Deserialize;

/// The room of a ticket. Templates see `system` (the ticket system's short name) and
/// `ticket.id`, `ticket.number`, `ticket.title`, `ticket.queue`, `ticket.status`,
/// `ticket.owner` and `ticket.url`, and what each source adds.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RoomConfig {
    pub name: String,
    pub topic: String,
    /// Whether the room is end-to-end encrypted.
    pub encrypted: bool,
    /// The room's name once the ticket is closed.
    pub closed_name: String,
    /// The power level a former owner is left with when the ticket's owner changes (the
    /// new owner gets 100).
    pub former_owner_power: i64,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            name: "{{ system }} #{{ ticket.number }}: {{ ticket.title }}".into(),
            topic: "{{ ticket.title }} · {{ ticket.queue }} · {{ ticket.url }}".into(),
            encrypted: true,
            closed_name: "[{{ ticket.status }}] {{ system }} #{{ ticket.number }}: \
                          {{ ticket.title }}"
                .into(),
            former_owner_power: 0,
        }
    }
}

impl RoomConfig {
    /// Templates that do not compile, each with its key under the room's table.
    pub fn problems(&self) -> Vec<(String, String)> {
        [
            ("room.name", &self.name),
            ("room.topic", &self.topic),
            ("room.closed_name", &self.closed_name),
        ]
        .into_iter()
        .filter_map(|(key, t)| {
            crate::text::check_template(t)
                .err()
                .map(|e| (key.to_string(), e))
        })
        .collect()
    }
}

/// What happens to internal notes and comments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Comments {
    /// Posted, marked as internal.
    #[default]
    Mark,
    /// Left out of the room.
    Hide,
}
