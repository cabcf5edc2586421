//! Matrix DM helpdesk: a customer's direct chat with the bot becomes a thread in a backoffice
//! room, where any operator answers; commands (`!ho done`, ...) manage the requests.
//!
//! This crate is the whole connector: its configuration and kind (`kind`), who may open a
//! request (`access`), commands (`command`), the options operators change from the chat
//! (`settings`), how a relayed message looks (`relay`), what it hears in Matrix (`hearing`),
//! planning (`desk`), its actions (`actions`), its tables (`requests`), its metrics, and the
//! Honoroit drop-in (`honoroit`: its variables; `takeover`: its account data).

pub mod access;
pub mod actions;
pub mod command;
pub mod desk;
mod hearing;
pub mod honoroit;
mod kind;
pub mod metrics;
pub mod relay;
pub mod requests;
pub mod settings;
pub mod takeover;

pub use kind::MatrixDm;

use schemars::JsonSchema;
use serde::Deserialize;

pub use access::Access;
pub use command::{Command, CommandError, ConfigCommand};
pub use settings::Settings;

/// Configuration of a Matrix DM helpdesk source (`kind = "matrix_dm"`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatrixDmConfig {
    /// The room where operators work (its room ID, `!...`, not an alias); each request is a
    /// thread in it.
    pub backoffice_room: String,
    /// What commands start with.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Who may run operator commands. Empty: every member of the backoffice room.
    /// Non-empty: only these users, and only while they are members.
    #[serde(default)]
    pub operators: Vec<String>,
    /// Who may run `config` (chat-based configuration). Nobody if empty.
    #[serde(default)]
    pub admins: Vec<String>,
    /// Who may open requests.
    #[serde(default)]
    pub access: Access,
    /// Rooms the bot ignores entirely (room IDs).
    #[serde(default)]
    pub ignored_rooms: Vec<String>,
    /// Close a request after this many hours without a message (fractions allowed); 0 never.
    #[serde(default = "default_idle_close_hours")]
    pub idle_close_hours: f64,
    /// Encrypt the direct chats that `start` opens.
    #[serde(default = "default_true")]
    pub encrypt_started: bool,
    /// How long a message that cannot be decrypted yet waits for its room key, in minutes
    /// (fractions allowed). Keys can arrive after their messages; after the wait, the
    /// operators are told that the customer wrote something that could not be decrypted.
    #[serde(default = "default_key_wait_minutes")]
    pub key_wait_minutes: f64,
}

fn default_prefix() -> String {
    "!ho".into()
}
fn default_idle_close_hours() -> f64 {
    24.0 * 7.0
}
fn default_key_wait_minutes() -> f64 {
    60.0
}
fn default_true() -> bool {
    true
}

impl MatrixDmConfig {
    /// Problems a config check reports, as (key below this source, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        // Room IDs of room version 12 and later have no server part (`!hash`).
        let id = self.backoffice_room.strip_prefix('!').unwrap_or_default();
        if id.is_empty() || id.contains(char::is_whitespace) {
            out.push((
                "backoffice_room",
                format!("`{}` is not a room ID (!...)", self.backoffice_room),
            ));
        }
        if self.prefix.trim().is_empty() || self.prefix.contains(char::is_whitespace) {
            out.push(("prefix", "must be one word".into()));
        }
        if !(self.idle_close_hours >= 0.0 && self.idle_close_hours.is_finite()) {
            out.push(("idle_close_hours", "must be 0 (never) or more".into()));
        }
        if !(self.key_wait_minutes >= 0.0 && self.key_wait_minutes.is_finite()) {
            out.push(("key_wait_minutes", "must be 0 or more".into()));
        }
        for (key, list) in [("operators", &self.operators), ("admins", &self.admins)] {
            for id in list {
                if !switchboard_connector::is_matrix_user_id(id) {
                    out.push((key, format!("`{id}` is not a Matrix user ID")));
                }
            }
        }
        for bad in self.access.invalid_entries() {
            out.push((
                "access",
                format!("`{bad}` is neither a user ID nor a homeserver"),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_problems() {
        let cfg: MatrixDmConfig = serde_json::from_value(serde_json::json!({
            "backoffice_room": "!ops:example.org",
        }))
        .expect("a valid config");
        assert_eq!(cfg.prefix, "!ho");
        assert_eq!(cfg.idle_close_hours, 168.0);
        assert_eq!(cfg.key_wait_minutes, 60.0);
        assert!(cfg.encrypt_started);
        assert!(cfg.problems().is_empty());
        let v12: MatrixDmConfig = serde_json::from_value(serde_json::json!({
            "backoffice_room": "!gi9WZSu46mU0au3EozASmbFCMSl1oGRc9GH4MUj_w00",
        }))
        .expect("a valid config");
        assert!(
            v12.problems().is_empty(),
            "room version 12 IDs have no server"
        );

        let cfg: MatrixDmConfig = serde_json::from_value(serde_json::json!({
            "backoffice_room": "#ops:example.org",
            "prefix": "! ho",
            "admins": ["alice"],
            "access": {"deny": ["bad domain"]},
            "idle_close_hours": -1,
            "key_wait_minutes": -0.5,
        }))
        .expect("a valid config");
        let keys: Vec<&str> = cfg.problems().iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "backoffice_room",
                "prefix",
                "idle_close_hours",
                "key_wait_minutes",
                "admins",
                "access"
            ]
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_json::from_value::<MatrixDmConfig>(serde_json::json!({
            "backoffice_room": "!ops:example.org", "prefx": "!x",
        }))
        .expect_err("a misspelt key");
        assert!(err.to_string().contains("prefx"), "{err}");
    }
}
