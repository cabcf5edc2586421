//! Actions: what the engine and connectors ask of the Matrix side, stored in the outbox as
//! JSON until a worker has carried them out.

use serde::{Deserialize, Serialize};

/// What the engine asks the Matrix sink to do for one ticket. Stored in the outbox as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// Create the ticket's room if it has none; otherwise invite users not yet invited.
    OpenRoom(RoomSpec),
    /// Post a message into the ticket's room.
    Post { body: String, notice: bool },
    /// Post a closing notice and rename the room.
    Close {
        notice: Option<String>,
        rename: Option<String>,
    },
    /// Send a message with this content into `room` as it is.
    Send {
        room: String,
        content: serde_json::Value,
    },
    /// Invite `user` into `room`.
    Invite { room: String, user: String },
    /// Invite `user` into the ticket's room (a participant); an invite that fails for good
    /// is told in the room ("Could not invite @x: reason").
    Participant { user: String },
    /// Leave `room`.
    Leave { room: String },
    /// Remove `user` from `room` (a pending invite is withdrawn), unless they are not in it.
    Kick {
        room: String,
        user: String,
        reason: String,
    },
}

impl Action {
    /// A short name for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::OpenRoom(_) => "open_room",
            Action::Post { .. } => "post",
            Action::Close { .. } => "close",
            Action::Send { .. } => "send",
            Action::Invite { .. } | Action::Participant { .. } => "invite",
            Action::Leave { .. } => "leave",
            Action::Kick { .. } => "kick",
        }
    }

    /// The kind of a stored action by its `type`: a core action's `kind()` (a participant's
    /// invite is an `invite`), a connector's own action's type as it is.
    pub fn kind_of(type_: &str) -> &str {
        match type_ {
            "participant" => "invite",
            other => other,
        }
    }
}

/// Everything needed to create a ticket's room in one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomSpec {
    pub name: String,
    pub topic: String,
    /// `private_chat`, `trusted_private_chat` or `public_chat`.
    pub preset: String,
    pub encrypted: bool,
    /// Users to invite.
    pub invite: Vec<String>,
    /// Users to give power level 100.
    pub admins: Vec<String>,
    /// Posted when the ticket's room was closed and is opened again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reopen_notice: Option<String>,
}

/// An action to queue in a lane (the ticket key its actions run in order under), as it
/// is stored: a JSON object whose `type` names its kind. The service runs the core's kinds
/// (`Action`); a connector runs those it declares (`Kind::action_kinds`).
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub lane: String,
    pub action: serde_json::Value,
}

impl Queued {
    /// One of the core's actions.
    pub fn core(lane: impl Into<String>, action: &Action) -> Queued {
        Queued {
            lane: lane.into(),
            // An enum of strings and JSON values always serializes.
            action: serde_json::to_value(action).unwrap_or_default(),
        }
    }

    /// One of a connector's own actions: a value that serializes to an object with `type`.
    pub fn own<T: Serialize>(lane: impl Into<String>, action: &T) -> serde_json::Result<Queued> {
        Ok(Queued {
            lane: lane.into(),
            action: serde_json::to_value(action)?,
        })
    }

    /// The action's kind (its `type`), for logs and metrics labels.
    pub fn kind(&self) -> &str {
        self.action["type"].as_str().unwrap_or("unknown")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored action's kind, read by its `type` alone, is the kind of the action itself.
    #[test]
    fn a_stored_actions_kind_is_its_actions_kind() {
        let room = || "!r:hs".to_string();
        let user = || "@u:hs".to_string();
        let all = [
            Action::OpenRoom(RoomSpec {
                name: "n".into(),
                topic: "t".into(),
                preset: "private_chat".into(),
                encrypted: false,
                invite: Vec::new(),
                admins: Vec::new(),
                reopen_notice: None,
            }),
            Action::Post {
                body: "b".into(),
                notice: false,
            },
            Action::Close {
                notice: None,
                rename: None,
            },
            Action::Send {
                room: room(),
                content: serde_json::json!({}),
            },
            Action::Invite {
                room: room(),
                user: user(),
            },
            Action::Participant { user: user() },
            Action::Leave { room: room() },
            Action::Kick {
                room: room(),
                user: user(),
                reason: String::new(),
            },
        ];
        for action in all {
            let stored = serde_json::to_value(&action).expect("serializes");
            let type_ = stored["type"].as_str().expect("a type");
            assert_eq!(Action::kind_of(type_), action.kind(), "{stored}");
        }
        assert_eq!(Action::kind_of("own_command"), "own_command");
    }
}
