//! What a ticket's new history does to its room: the room opened with its people, each
//! reply and comment posted with its author, status and owner changes told, the room closed
//! and opened again. Pure: the ticket, its new transactions and what the room already has
//! in; actions and what the room has then out.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use switchboard_connector::{Action, Queued, RoomSpec};

use crate::api::{Message, Person, Ticket, Transaction};
use crate::{Comments, Role, RtConfig};

/// What the room of a ticket has, as kept between reads of its history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The last transaction read.
    pub last: u64,
    /// Whether the room was opened.
    pub roomed: bool,
    pub status: String,
    pub owner: String,
    /// The ticket's people (RT user names) invited or named in the room.
    pub people: BTreeSet<String>,
}

/// A person of the ticket: who they are in RT and in Matrix (`None`: no means maps them).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Member {
    pub person: Person,
    pub matrix: Option<String>,
}

impl Member {
    /// How the room calls them: their real name, else their RT name or address.
    pub fn display(&self) -> String {
        if !self.person.real_name.is_empty() {
            self.person.real_name.clone()
        } else {
            self.person.name.clone()
        }
    }

    fn named(&self) -> String {
        match (&self.person.email, self.person.real_name.is_empty()) {
            (email, false) if !email.is_empty() => {
                format!("{} <{email}>", self.person.real_name)
            }
            _ => self.display(),
        }
    }
}

/// A transaction with its message (for creations, replies and comments).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub transaction: Transaction,
    pub message: Option<Message>,
}

/// The template environment: `{{ ticket.id }}` and friends, no escaping (room names and
/// topics are plain text).
fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
    env
}

/// Whether a template compiles; why not.
pub(crate) fn check_template(template: &str) -> Result<(), String> {
    environment()
        .template_from_str(template)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A template rendered with `context`; a template that fails renders empty (it compiled
/// at start: only a runtime error like a bad filter argument gets here).
pub(crate) fn render(template: &str, context: &serde_json::Value) -> String {
    environment()
        .render_str(
            template,
            minijinja::Value::from(minijinja::value::Serde(context)),
        )
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// What templates see of a ticket.
pub(crate) fn context(config: &RtConfig, ticket: &Ticket) -> serde_json::Value {
    json!({"ticket": {
        "id": ticket.id,
        "subject": ticket.subject,
        "queue": ticket.queue,
        "status": ticket.status,
        "owner": ticket.owner,
        "url": format!("{}/Ticket/Display.html?id={}", config.url.trim_end_matches('/'), ticket.id),
    }})
}

/// The Matrix ID of an RT user by the configured means, in order: the table, then the
/// template; `None` when neither gives a Matrix ID.
pub(crate) fn matrix_id(config: &RtConfig, person: &Person) -> Option<String> {
    let people = &config.people;
    for key in [&person.name, &person.email] {
        if key.is_empty() {
            continue;
        }
        let found = people
            .users
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.clone());
        if found.is_some() {
            return found;
        }
    }
    let template = people.template.as_ref()?;
    let (local, domain) = person.email.split_once('@').unwrap_or(("", ""));
    let id = render(
        template,
        &json!({"name": person.name, "email": person.email, "email_local": local,
                "email_domain": domain, "real_name": person.real_name}),
    );
    switchboard_connector::is_matrix_user_id(&id).then_some(id)
}

/// The roles each of a ticket's people has, by RT name, in the order the room names them.
pub(crate) fn roles(ticket: &Ticket) -> Vec<(String, Role)> {
    let mut out = Vec::new();
    if ticket.owner != "Nobody" && !ticket.owner.is_empty() {
        out.push((ticket.owner.clone(), Role::Owner));
    }
    for (names, role) in [
        (&ticket.admin_cc, Role::AdminCc),
        (&ticket.requestors, Role::Requestors),
        (&ticket.cc, Role::Cc),
    ] {
        out.extend(names.iter().map(|n| (n.clone(), role)));
    }
    out
}

/// Plans what a ticket's new history does to its room. `people` has every name of
/// `roles(ticket)` and every creator of `entries`; `api_user` is Switchboard's own RT
/// user, whose transactions are its own writes and are not shown again.
pub(crate) fn plan(
    config: &RtConfig,
    ticket: &Ticket,
    entries: &[Entry],
    people: &BTreeMap<String, Member>,
    api_user: &str,
    seen: &Seen,
) -> (Vec<Queued>, Seen) {
    let lane = ticket.id.to_string();
    let mut out = Vec::new();
    let mut now = seen.clone();
    let cx = context(config, ticket);
    let core = |a: &Action| Queued::core(lane.clone(), a);
    let member = |name: &str| people.get(name);
    let display = |name: &str| match name {
        // RT's own changes (a reply opening a new ticket, say).
        "RT_System" => "RT".to_string(),
        _ => member(name).map_or(name.to_string(), Member::display),
    };
    let spec = |reopen: Option<String>| RoomSpec {
        name: render(&config.room.name, &cx),
        topic: render(&config.room.topic, &cx),
        preset: "private_chat".into(),
        encrypted: config.room.encrypted,
        invite: Vec::new(),
        admins: member(&ticket.owner)
            .and_then(|m| m.matrix.clone())
            .filter(|_| config.invites(Role::Owner))
            .into_iter()
            .collect(),
        reopen_notice: reopen,
    };
    if !now.roomed {
        out.push(core(&Action::OpenRoom(spec(None))));
        now.roomed = true;
        now.status = ticket.status.clone();
        now.owner = ticket.owner.clone();
    }
    for entry in entries {
        let t = &entry.transaction;
        now.last = now.last.max(t.id);
        if t.creator == api_user && matches!(t.kind.as_str(), "Comment" | "Correspond") {
            continue;
        }
        match t.kind.as_str() {
            "Create" | "Correspond" | "Comment" => {
                if t.kind == "Comment" && config.comments == Comments::Hide {
                    continue;
                }
                let Some(message) = &entry.message else {
                    continue;
                };
                let what = match t.kind.as_str() {
                    "Create" => "opened the ticket",
                    "Correspond" => "replied",
                    _ => "commented (internal)",
                };
                let mut body = format!("{} {what}", display(&t.creator));
                if !message.text.trim().is_empty() {
                    body.push_str(":\n");
                    body.push_str(message.text.trim_end());
                }
                for (file, size) in &message.files {
                    body.push_str(&format!("\n📎 {file} ({size} bytes, in the ticket)"));
                }
                out.push(core(&Action::Post {
                    body,
                    notice: false,
                }));
            }
            "Status" => {
                let (old, new) = (&t.old, &t.new);
                now.status = new.clone();
                let by = display(&t.creator);
                if config.closes(new) && !config.closes(old) {
                    out.push(core(&Action::Close {
                        notice: Some(format!(
                            "{by} set the ticket to {new}: it is closed. This room stays for \
                             reference."
                        )),
                        rename: Some(render(&config.room.closed_name, &status_cx(&cx, new))),
                    }));
                    if config.transcript {
                        let write = crate::source::RtAction::Transcript { ticket: ticket.id };
                        if let Ok(q) = Queued::own(lane.clone(), &write) {
                            out.push(q);
                        }
                    }
                } else if config.closes(old) && !config.closes(new) {
                    let mut open = spec(Some(format!("{by} opened the ticket again ({new}).")));
                    open.name = render(&config.room.name, &status_cx(&cx, new));
                    out.push(core(&Action::OpenRoom(open)));
                } else {
                    out.push(core(&Action::Post {
                        body: format!("{by} changed the status from {old} to {new}."),
                        notice: true,
                    }));
                }
            }
            "Set" | "Give" | "Take" | "Steal" | "Untake" | "Force"
                if t.kind != "Set" || t.field == "Owner" =>
            {
                // Old and new are user IDs here; the ticket names the owner it has now.
                now.owner = ticket.owner.clone();
                out.push(core(&Action::Post {
                    body: format!(
                        "{} made {} the ticket's owner.",
                        display(&t.creator),
                        display(&ticket.owner)
                    ),
                    notice: true,
                }));
            }
            "Set" if t.field == "Subject" => out.push(core(&Action::Post {
                body: format!("{} renamed the ticket: {}", display(&t.creator), t.new),
                notice: true,
            })),
            _ => {}
        }
    }
    // People the room has not had yet: invited, or named when nothing maps them.
    let mut unmapped = Vec::new();
    let mut invited = BTreeSet::new();
    for (name, role) in roles(ticket) {
        if now.people.contains(&name) || !config.invites(role) {
            continue;
        }
        now.people.insert(name.clone());
        match member(&name) {
            Some(Member {
                matrix: Some(id), ..
            }) => {
                if invited.insert(id.clone()) {
                    out.push(core(&Action::Participant { user: id.clone() }));
                }
            }
            Some(m) => unmapped.push(m.named()),
            None => unmapped.push(name),
        }
    }
    if !unmapped.is_empty() {
        out.push(core(&Action::Post {
            body: format!("Not in Matrix: {}", unmapped.join(", ")),
            notice: true,
        }));
    }
    // A new owner: their power up, the former owner's down.
    if seen.roomed && now.owner != seen.owner && config.invites(Role::Owner) {
        let matrix = |name: &str| member(name).and_then(|m| m.matrix.clone());
        let (promote, demote) = (matrix(&now.owner), matrix(&seen.owner));
        if promote.is_some() || demote.is_some() {
            let owner = crate::source::RtAction::Owner {
                promote,
                demote,
                former_power: config.room.former_owner_power,
            };
            if let Ok(q) = Queued::own(lane.clone(), &owner) {
                out.push(q);
            }
        }
    }
    (out, now)
}

/// The room's conversation after `since` (milliseconds since the epoch) as a transcript:
/// one line per message with its time (UTC) and author, files named; and the time of the
/// last message in it.
pub(crate) fn transcript(events: &[serde_json::Value], since: i64, bot: &str) -> (String, i64) {
    let mut lines = Vec::new();
    let mut last = since;
    for e in events {
        let ts = e["origin_server_ts"].as_i64().unwrap_or(0);
        let content = &e["content"];
        if e["type"] != "m.room.message" || ts <= since || content["body"].is_null() {
            continue;
        }
        last = last.max(ts);
        let sender = e["sender"].as_str().unwrap_or("someone");
        let who = if sender == bot { "Switchboard" } else { sender };
        let body = content["body"].as_str().unwrap_or_default();
        let said = match content["msgtype"].as_str() {
            Some("m.file" | "m.image" | "m.video" | "m.audio") => format!("sent the file {body}"),
            _ => body.to_string(),
        };
        lines.push(format!("[{}] {who}: {said}", utc(ts)));
    }
    if lines.is_empty() {
        return (String::new(), since);
    }
    let head = format!(
        "Transcript of the ticket's Matrix room ({} messages):\n",
        lines.len()
    );
    (format!("{head}\n{}", lines.join("\n")), last)
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM UTC`.
fn utc(ms: i64) -> String {
    let [year, month, day, hour, minute, _] = switchboard_connector::utc_fields(ms);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02} UTC")
}

/// The template context with the ticket's status as it is after a change.
fn status_cx(cx: &serde_json::Value, status: &str) -> serde_json::Value {
    let mut cx = cx.clone();
    cx["ticket"]["status"] = json!(status);
    cx
}

/// An HTML message as text: tags out, line breaks kept, entities decoded.
pub(crate) fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('>') else {
            rest = &rest[start..];
            break;
        };
        let tag = rest[start + 1..start + end].to_ascii_lowercase();
        let closing = tag.starts_with('/');
        let name = tag
            .trim_start_matches('/')
            .split([' ', '/'])
            .next()
            .unwrap_or("");
        if name == "br" || closing && matches!(name, "p" | "div" | "li" | "tr" | "h1" | "h2" | "h3")
        {
            out.push('\n');
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    let decoded = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    decoded
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RtConfig {
        serde_json::from_value(json!({
            "url": "https://rt.example.org/", "token": "1-2-x",
            "people": {"users": {"carl@example.org": "@carl:example.org"},
                       "template": "@{{ name }}:example.org"},
        }))
        .expect("config")
    }

    fn person(name: &str, email: &str, real: &str) -> Person {
        Person {
            name: name.into(),
            email: email.into(),
            real_name: real.into(),
        }
    }

    fn ticket() -> Ticket {
        Ticket {
            id: 7,
            subject: "VPN down".into(),
            status: "new".into(),
            queue: "Support".into(),
            owner: "alice".into(),
            requestors: vec!["carl@example.org".into(), "eve@else.example".into()],
            cc: vec![],
            admin_cc: vec!["bob".into()],
        }
    }

    fn people(config: &RtConfig) -> BTreeMap<String, Member> {
        [
            person("alice", "alice@example.org", "Alice Agent"),
            person("bob", "bob@example.org", ""),
            person("carl@example.org", "carl@example.org", "Carl Customer"),
            person("eve@else.example", "eve@else.example", "Eve"),
            person("switchboard", "", "Switchboard"),
        ]
        .into_iter()
        .map(|p| {
            let matrix = matrix_id(config, &p);
            (p.name.clone(), Member { person: p, matrix })
        })
        .collect()
    }

    fn entry(id: u64, kind: &str, creator: &str, text: Option<&str>) -> Entry {
        Entry {
            transaction: Transaction {
                id,
                kind: kind.into(),
                field: String::new(),
                old: String::new(),
                new: String::new(),
                creator: creator.into(),
            },
            message: text.map(|t| Message {
                text: t.into(),
                files: Vec::new(),
            }),
        }
    }

    fn kinds(actions: &[Queued]) -> Vec<String> {
        actions.iter().map(|q| q.kind().to_string()).collect()
    }

    #[test]
    fn people_map_by_table_then_template_and_the_rest_are_named() {
        let config = config();
        let people = people(&config);
        assert_eq!(
            people["carl@example.org"].matrix.as_deref(),
            Some("@carl:example.org")
        );
        assert_eq!(
            people["alice"].matrix.as_deref(),
            Some("@alice:example.org")
        );
        // The template makes `@eve@else.example:example.org`: not a Matrix ID.
        assert_eq!(people["eve@else.example"].matrix, None);
        let entries = [entry(10, "Create", "carl@example.org", Some("It is down."))];
        let (actions, seen) = plan(
            &config,
            &ticket(),
            &entries,
            &people,
            "switchboard",
            &Seen::default(),
        );
        assert_eq!(
            kinds(&actions),
            [
                "open_room",
                "post",
                "participant",
                "participant",
                "participant",
                "post"
            ]
        );
        let open = &actions[0].action;
        assert_eq!(open["name"], "RT #7: VPN down");
        assert_eq!(open["admins"], json!(["@alice:example.org"]));
        assert_eq!(
            open["topic"],
            "VPN down · queue Support · https://rt.example.org/Ticket/Display.html?id=7"
        );
        assert_eq!(
            actions[1].action["body"],
            "Carl Customer opened the ticket:\nIt is down."
        );
        let invited: Vec<&str> = actions[2..5]
            .iter()
            .map(|q| q.action["user"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(
            invited,
            [
                "@alice:example.org",
                "@bob:example.org",
                "@carl:example.org"
            ]
        );
        assert_eq!(
            actions[5].action["body"],
            "Not in Matrix: Eve <eve@else.example>"
        );
        assert_eq!(seen.last, 10);
        // Read again with nothing new: nothing to do, nobody invited twice.
        let (again, same) = plan(&config, &ticket(), &[], &people, "switchboard", &seen);
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(same, seen);
    }

    #[test]
    fn replies_comments_status_and_own_writes() {
        let mut config = config();
        let people = people(&config);
        let start = plan(
            &config,
            &ticket(),
            &[],
            &people,
            "switchboard",
            &Seen::default(),
        )
        .1;
        let mut resolved = entry(14, "Status", "alice", None);
        resolved.transaction.old = "open".into();
        resolved.transaction.new = "resolved".into();
        let mut reopened = entry(15, "Status", "carl@example.org", None);
        reopened.transaction.old = "resolved".into();
        reopened.transaction.new = "open".into();
        let entries = [
            entry(11, "Correspond", "alice", Some("Restarted it.")),
            entry(12, "Comment", "bob", Some("gateway OOM")),
            entry(13, "Comment", "switchboard", Some("from the room")),
            resolved,
            reopened,
        ];
        let (actions, seen) = plan(&config, &ticket(), &entries, &people, "switchboard", &start);
        assert_eq!(
            kinds(&actions),
            ["post", "post", "close", "rt_transcript", "open_room"]
        );
        assert_eq!(
            actions[0].action["body"],
            "Alice Agent replied:\nRestarted it."
        );
        assert_eq!(
            actions[1].action["body"],
            "bob commented (internal):\ngateway OOM"
        );
        assert_eq!(actions[2].action["rename"], "[resolved] RT #7: VPN down");
        assert_eq!(actions[4].action["name"], "RT #7: VPN down");
        assert_eq!(
            actions[4].action["reopen_notice"],
            "Carl Customer opened the ticket again (open)."
        );
        assert_eq!((seen.last, seen.status.as_str()), (15, "open"));
        config.comments = Comments::Hide;
        let (hidden, _) = plan(
            &config,
            &ticket(),
            &entries[..2],
            &people,
            "switchboard",
            &start,
        );
        assert_eq!(kinds(&hidden), ["post"]);
    }

    #[test]
    fn a_new_owner_is_announced_promoted_and_the_former_lowered() {
        let config = config();
        let people = people(&config);
        let start = plan(
            &config,
            &ticket(),
            &[],
            &people,
            "switchboard",
            &Seen::default(),
        )
        .1;
        let mut moved = ticket();
        moved.owner = "bob".into();
        let mut set = entry(20, "Set", "alice", None);
        set.transaction.field = "Owner".into();
        let (actions, seen) = plan(&config, &moved, &[set], &people, "switchboard", &start);
        assert_eq!(kinds(&actions), ["post", "rt_owner"]);
        assert_eq!(
            actions[0].action["body"],
            "Alice Agent made bob the ticket's owner."
        );
        assert_eq!(
            actions[1].action,
            json!({"type": "rt_owner", "promote": "@bob:example.org",
                   "demote": "@alice:example.org", "former_power": 0})
        );
        assert_eq!(seen.owner, "bob");
    }

    #[test]
    fn a_transcript_has_each_message_since_the_last_with_time_and_author() {
        let said = |ts: i64, sender: &str, content: serde_json::Value| {
            json!({"type": "m.room.message", "origin_server_ts": ts, "sender": sender,
                   "content": content})
        };
        let events = [
            said(
                1_000,
                "@carl:x",
                json!({"msgtype": "m.text", "body": "before"}),
            ),
            json!({"type": "m.room.member", "origin_server_ts": 2_000, "sender": "@carl:x",
                   "content": {"membership": "join"}}),
            said(
                1_796_303_733_000,
                "@carl:x",
                json!({"msgtype": "m.text", "body": "It works"}),
            ),
            said(
                1_796_303_800_000,
                "@bot:x",
                json!({"msgtype": "m.notice", "body": "Closed."}),
            ),
            said(
                1_796_303_860_000,
                "@carl:x",
                json!({"msgtype": "m.file", "body": "log.txt"}),
            ),
        ];
        let (text, last) = transcript(&events, 1_000, "@bot:x");
        assert_eq!(
            text,
            "Transcript of the ticket's Matrix room (3 messages):\n\n\
             [2026-12-03 13:15 UTC] @carl:x: It works\n\
             [2026-12-03 13:16 UTC] Switchboard: Closed.\n\
             [2026-12-03 13:17 UTC] @carl:x: sent the file log.txt"
        );
        assert_eq!(last, 1_796_303_860_000);
        assert_eq!(transcript(&events, last, "@bot:x"), (String::new(), last));
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00 UTC");
    }

    #[test]
    fn html_becomes_text() {
        assert_eq!(
            html_to_text("<p>Hello <b>there</b></p><p>a &amp; b&nbsp;&lt;c&gt;<br/>d</p>"),
            "Hello there\na & b <c>\nd"
        );
    }
}
