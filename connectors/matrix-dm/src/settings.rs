//! Options operators change from the chat (`!ho config KEY VALUE`): texts the bot sends and
//! how it sends them. Keys and defaults follow Honoroit's, so its users find theirs.

use std::collections::BTreeMap;

/// What kind of value an option takes; decides how a new value is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Bool,
    /// `m.notice` or `m.text`.
    MsgType,
}

/// One option: its key, default and description.
#[derive(Debug)]
pub struct Opt {
    pub key: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    pub description: &'static str,
}

/// Every option, in the order `config` lists them.
pub const OPTIONS: &[Opt] = &[
    Opt {
        key: "silent",
        kind: Kind::Bool,
        default: "false",
        description: "send customers no automatic messages (greetings, closing texts)",
    },
    Opt {
        key: "msgtype",
        kind: Kind::MsgType,
        default: "m.notice",
        description: "message type of the bot's own messages: m.notice or m.text",
    },
    Opt {
        key: "text.prefix.open",
        kind: Kind::Text,
        default: "[OPEN]",
        description: "title prefix of an open request",
    },
    Opt {
        key: "text.prefix.done",
        kind: Kind::Text,
        default: "[DONE]",
        description: "title prefix of a closed request",
    },
    Opt {
        key: "text.greetings",
        kind: Kind::Text,
        default: "Thank you for contacting us!",
        description: "first answer to a customer of the bot's own homeserver",
    },
    Opt {
        key: "text.greetings.customer",
        kind: Kind::Text,
        default: "Thank you for contacting us! This is your {nth} request.",
        description: "first answer to a customer of another homeserver; {nth} is their homeserver's count",
    },
    Opt {
        key: "text.done",
        kind: Kind::Text,
        default: "The operator marked your request as completed. If you think that it's not done \
                  yet, please start another 1:1 chat with me to open a new request.",
        description: "sent to the customer when an operator closes the request",
    },
    Opt {
        key: "text.done.auto",
        kind: Kind::Text,
        default: "There was no activity for a while. I've marked this request as completed. If you \
                  think that it's not done yet, please start another 1:1 chat with me to open a new \
                  request.",
        description: "sent to the customer when an idle request is closed",
    },
    Opt {
        key: "text.start",
        kind: Kind::Text,
        default: "The customer was invited to the new room. Send messages into that thread and \
                  they will be automatically forwarded.",
        description: "posted in the thread that `start` opens",
    },
    Opt {
        key: "text.count",
        kind: Kind::Text,
        default: "Request has been counted.",
        description: "answer to `count`",
    },
    Opt {
        key: "text.error",
        kind: Kind::Text,
        default: "Something is wrong. I've notified the developers and they are fixing the issue. \
                  Please, try again later or use any other contact method.",
        description: "sent to the customer when their message cannot be passed on",
    },
    Opt {
        key: "text.group",
        kind: Kind::Text,
        default: "I only answer in one-to-one chats. Please start a direct chat with me.",
        description: "posted before the bot leaves a room with more than one other member",
    },
];

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error("no such option `{0}`")]
    Unknown(String),
    #[error("`{key}` takes {expected}")]
    Invalid {
        key: &'static str,
        expected: &'static str,
    },
}

/// The options in force: the defaults, overridden by what was set from the chat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    set: BTreeMap<&'static str, String>,
}

impl Settings {
    /// Settings from stored pairs; unknown keys (from a newer or older version) are skipped.
    pub fn from_stored<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut settings = Settings::default();
        for (key, value) in pairs {
            let _ = settings.set(key, value);
        }
        settings
    }

    /// The pairs to store: only those that differ from the defaults.
    pub fn stored(&self) -> impl Iterator<Item = (&str, &str)> {
        self.set.iter().map(|(k, v)| (*k, v.as_str()))
    }

    /// An option's value (its default unless set).
    pub fn get(&self, key: &str) -> Result<&str, SettingError> {
        let opt = option(key)?;
        Ok(self.set.get(opt.key).map_or(opt.default, String::as_str))
    }

    /// Changes an option and returns the value as stored (trimmed, normalised).
    pub fn set(&mut self, key: &str, value: &str) -> Result<&str, SettingError> {
        let opt = option(key)?;
        let value = value.trim();
        let value = match opt.kind {
            Kind::Text if value.is_empty() => {
                return Err(SettingError::Invalid {
                    key: opt.key,
                    expected: "a text",
                });
            }
            Kind::Text => value.to_string(),
            Kind::Bool => match value.to_ascii_lowercase().as_str() {
                "true" | "yes" | "y" | "1" | "on" => "true".into(),
                "false" | "no" | "n" | "0" | "off" => "false".into(),
                _ => {
                    return Err(SettingError::Invalid {
                        key: opt.key,
                        expected: "true or false",
                    });
                }
            },
            Kind::MsgType => match value {
                "m.notice" | "m.text" => value.to_string(),
                _ => {
                    return Err(SettingError::Invalid {
                        key: opt.key,
                        expected: "m.notice or m.text",
                    });
                }
            },
        };
        if value == opt.default {
            self.set.remove(opt.key);
        } else {
            self.set.insert(opt.key, value);
        }
        self.get(opt.key)
    }

    /// A boolean option.
    pub fn flag(&self, key: &str) -> bool {
        self.get(key) == Ok("true")
    }
}

/// The option `key` (any case).
pub fn option(key: &str) -> Result<&'static Opt, SettingError> {
    let key = key.trim().to_ascii_lowercase();
    OPTIONS
        .iter()
        .find(|o| o.key == key)
        .ok_or(SettingError::Unknown(key))
}

/// The title of a new request's thread root: "3rd request from example.org (1st by Alice
/// (@alice:example.org))", counting this request. The open/done prefix goes in front of it.
pub fn request_title(server_requests: u64, server: &str, user_requests: u64, name: &str) -> String {
    use crate::relay::ordinal;
    format!(
        "{} request from {server} ({} by {name})",
        ordinal(server_requests),
        ordinal(user_requests)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_overrides() {
        let mut s = Settings::default();
        assert_eq!(s.get("text.prefix.open"), Ok("[OPEN]"));
        assert_eq!(s.set("TEXT.PREFIX.OPEN", "  [NEW] "), Ok("[NEW]"));
        assert_eq!(s.get("text.prefix.open"), Ok("[NEW]"));
        assert_eq!(
            s.stored().collect::<Vec<_>>(),
            [("text.prefix.open", "[NEW]")]
        );
        // Back to the default: nothing left to store.
        assert_eq!(s.set("text.prefix.open", "[OPEN]"), Ok("[OPEN]"));
        assert_eq!(s.stored().count(), 0);
    }

    #[test]
    fn values_are_checked() {
        let mut s = Settings::default();
        assert_eq!(s.set("silent", "Yes"), Ok("true"));
        assert!(s.flag("silent"));
        assert_eq!(
            s.set("silent", "maybe"),
            Err(SettingError::Invalid {
                key: "silent",
                expected: "true or false"
            })
        );
        assert!(s.flag("silent"), "a refused value changes nothing");
        assert!(s.set("msgtype", "m.emote").is_err());
        assert!(s.set("text.done", "   ").is_err());
        assert_eq!(
            s.set("nope", "x"),
            Err(SettingError::Unknown("nope".into()))
        );
    }

    #[test]
    fn stored_pairs_round_trip_and_unknown_keys_are_skipped() {
        let s = Settings::from_stored([
            ("msgtype", "m.text"),
            ("retired.option", "x"),
            ("silent", "bogus"),
        ]);
        assert_eq!(s.get("msgtype"), Ok("m.text"));
        assert!(!s.flag("silent"));
        assert_eq!(Settings::from_stored(s.stored()), s);
    }

    #[test]
    fn titles() {
        assert_eq!(
            request_title(3, "example.org", 1, "Alice (@alice:example.org)"),
            "3rd request from example.org (1st by Alice (@alice:example.org))"
        );
    }
}
