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
    /// Days after the close when only the room's admins can still write in it (none:
    /// never).
    pub read_only_after_days: Option<f64>,
    /// Days after the close when everyone but the bot is removed from the room (none:
    /// never). Reopening the ticket invites its people again.
    pub empty_after_days: Option<f64>,
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
            read_only_after_days: None,
            empty_after_days: None,
        }
    }
}

impl RoomConfig {
    /// Templates that do not compile and durations that are not, each with its key under
    /// the room's table.
    pub fn problems(&self) -> Vec<(String, String)> {
        let days = [
            ("room.read_only_after_days", self.read_only_after_days),
            ("room.empty_after_days", self.empty_after_days),
        ]
        .into_iter()
        .filter(|(_, d)| d.is_some_and(|d| !d.is_finite() || d < 0.0))
        .map(|(key, _)| (key.to_string(), "must be 0 or more".to_string()));
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
        .chain(days)
        .collect()
    }

    /// The stage a room closed at `closed_at` has reached at `now` (both Unix ms): 0
    /// nothing due, 1 read-only, 2 emptied.
    pub fn stage(&self, closed_at: i64, now: i64) -> u8 {
        let due = |days: Option<f64>| {
            days.is_some_and(|d| closed_at.saturating_add((d * 86_400_000.0) as i64) <= now)
        };
        if due(self.empty_after_days) {
            2
        } else if due(self.read_only_after_days) {
            1
        } else {
            0
        }
    }

    /// How often closed rooms are looked at: often enough for the shortest of the two
    /// delays, at most every minute. None: nothing to do.
    pub fn age_every(&self) -> Option<std::time::Duration> {
        let shortest = [self.read_only_after_days, self.empty_after_days]
            .into_iter()
            .flatten()
            .fold(f64::INFINITY, f64::min);
        shortest.is_finite().then(|| {
            std::time::Duration::from_secs_f64((shortest * 86_400.0 / 10.0).clamp(1.0, 60.0))
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_rooms_age_by_the_configured_days() {
        let day = 86_400_000;
        let mut room = RoomConfig::default();
        assert_eq!(room.age_every(), None);
        assert_eq!(room.stage(0, 100 * day), 0);
        room.read_only_after_days = Some(1.0);
        room.empty_after_days = Some(7.5);
        assert_eq!(room.stage(day, day + day - 1), 0);
        assert_eq!(room.stage(day, day + day), 1);
        assert_eq!(room.stage(day, day + 7 * day + day / 2), 2);
        assert_eq!(room.age_every(), Some(std::time::Duration::from_secs(60)));
        room.read_only_after_days = Some(0.0001);
        assert_eq!(room.age_every(), Some(std::time::Duration::from_secs(1)));
        room.empty_after_days = Some(-1.0);
        assert_eq!(
            room.problems(),
            [(
                "room.empty_after_days".to_string(),
                "must be 0 or more".to_string()
            )]
        );
    }
}
