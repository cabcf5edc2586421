//! Operator commands: `!ho done`, `!ho rename TEXT`, ... Parsing only; who may run what and
//! what each does is decided by the caller.

use switchboard_connector::is_matrix_user_id;

/// A command an operator typed, arguments checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Close the thread's request (aliases `complete`, `close`).
    Done,
    /// Give the thread's request a new title.
    Rename(String),
    /// A note that stays in the thread and is never relayed.
    Note(String),
    /// Invite the operator into the customer's DM.
    Invite,
    /// Open a request with a user who has not written yet.
    Start(String),
    /// How many requests a user and their homeserver have made.
    Count(String),
    /// Show all settings, show one, or change one.
    Config(ConfigCommand),
    /// The list of commands.
    Help,
}

/// The three forms of `config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigCommand {
    Show,
    Get(String),
    Set(String, String),
}

/// Why a message that starts with the prefix is not a command the bot can run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// No such command; the caller answers with help.
    #[error("unknown command `{0}`")]
    Unknown(String),
    /// A known command with a missing or invalid argument.
    #[error("usage: {0}")]
    Usage(&'static str),
}

impl Command {
    /// The command's name as typed (the canonical one for aliases).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Done => "done",
            Command::Rename(_) => "rename",
            Command::Note(_) => "note",
            Command::Invite => "invite",
            Command::Start(_) => "start",
            Command::Count(_) => "count",
            Command::Config(_) => "config",
            Command::Help => "help",
        }
    }

    /// Whether the command acts on the request of the thread it was sent in.
    pub fn needs_thread(&self) -> bool {
        matches!(
            self,
            Command::Done | Command::Rename(_) | Command::Note(_) | Command::Invite
        )
    }
}

/// One line per command, for the help answer.
pub const HELP: &[(&str, &str)] = &[
    ("done", "close the thread's request (also: complete, close)"),
    ("rename TEXT", "change the thread's title"),
    (
        "note TEXT",
        "a note for operators; never sent to the customer",
    ),
    ("invite", "invite yourself into the customer's chat"),
    ("start @user:server", "open a request with a user"),
    (
        "count @user:server",
        "how many requests a user and their server have made",
    ),
    ("config [KEY [VALUE]]", "show or change a setting (admins)"),
    ("help", "this list"),
];

/// Parses `body` if it starts with `prefix` as a word of its own (`!ho done`, not `!hodone`).
/// `None`: not addressed to the bot, an ordinary message.
pub fn parse(prefix: &str, body: &str) -> Option<Result<Command, CommandError>> {
    let rest = body.trim_start().strip_prefix(prefix)?;
    if !(rest.is_empty() || rest.starts_with(char::is_whitespace)) {
        return None;
    }
    let rest = rest.trim();
    let (word, arg) = match rest.split_once(char::is_whitespace) {
        Some((word, arg)) => (word, arg.trim()),
        None => (rest, ""),
    };
    let text = |usage| {
        if arg.is_empty() {
            Err(CommandError::Usage(usage))
        } else {
            Ok(arg.to_string())
        }
    };
    let user = |usage| {
        if is_matrix_user_id(arg) {
            Ok(arg.to_string())
        } else {
            Err(CommandError::Usage(usage))
        }
    };
    Some(match word.to_lowercase().as_str() {
        "done" | "complete" | "close" => Ok(Command::Done),
        "rename" => text("rename TEXT").map(Command::Rename),
        "note" => text("note TEXT").map(Command::Note),
        "invite" => Ok(Command::Invite),
        "start" => user("start @user:server").map(Command::Start),
        "count" => user("count @user:server").map(Command::Count),
        "config" => Ok(Command::Config(match arg.split_once(char::is_whitespace) {
            _ if arg.is_empty() => ConfigCommand::Show,
            None => ConfigCommand::Get(arg.to_string()),
            Some((key, value)) => ConfigCommand::Set(key.to_string(), value.trim().to_string()),
        })),
        "help" | "" => Ok(Command::Help),
        other => Err(CommandError::Unknown(other.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(body: &str) -> Option<Result<Command, CommandError>> {
        parse("!ho", body)
    }

    #[test]
    fn only_the_prefix_as_a_word_addresses_the_bot() {
        assert_eq!(p("hello"), None);
        assert_eq!(p("!hodone"), None);
        assert_eq!(p("say !ho done"), None);
        assert_eq!(p("!ho"), Some(Ok(Command::Help)));
        assert_eq!(p("  !ho   done  "), Some(Ok(Command::Done)));
    }

    #[test]
    fn aliases_and_case() {
        for body in ["!ho done", "!ho complete", "!ho close", "!ho DONE"] {
            assert_eq!(p(body), Some(Ok(Command::Done)), "{body}");
        }
    }

    #[test]
    fn arguments_are_checked() {
        assert_eq!(
            p("!ho rename  Printer on fire "),
            Some(Ok(Command::Rename("Printer on fire".into())))
        );
        assert_eq!(
            p("!ho rename"),
            Some(Err(CommandError::Usage("rename TEXT")))
        );
        assert_eq!(p("!ho note"), Some(Err(CommandError::Usage("note TEXT"))));
        assert_eq!(
            p("!ho start @alice:example.org"),
            Some(Ok(Command::Start("@alice:example.org".into())))
        );
        assert_eq!(
            p("!ho start alice"),
            Some(Err(CommandError::Usage("start @user:server")))
        );
        assert_eq!(
            p("!ho count @Alice:example.org"),
            Some(Err(CommandError::Usage("count @user:server")))
        );
        assert_eq!(
            p("!ho frobnicate x"),
            Some(Err(CommandError::Unknown("frobnicate".into())))
        );
    }

    #[test]
    fn config_forms() {
        assert_eq!(
            p("!ho config"),
            Some(Ok(Command::Config(ConfigCommand::Show)))
        );
        assert_eq!(
            p("!ho config greeting"),
            Some(Ok(Command::Config(ConfigCommand::Get("greeting".into()))))
        );
        assert_eq!(
            p("!ho config greeting Hello there, how can we help?"),
            Some(Ok(Command::Config(ConfigCommand::Set(
                "greeting".into(),
                "Hello there, how can we help?".into()
            ))))
        );
    }

    #[test]
    fn another_prefix() {
        assert_eq!(parse("!support", "!support done"), Some(Ok(Command::Done)));
        assert_eq!(parse("!support", "!ho done"), None);
    }

    proptest::proptest! {
        /// Any message, with any prefix: a command, an error or nothing, never a panic.
        #[test]
        fn any_message_parses_or_not(prefix in "(?s).{0,5}", body in "(?s).{0,80}") {
            let _ = parse(&prefix, &body);
            let _ = parse("!ho", &format!("!ho {body}"));
        }
    }
}
