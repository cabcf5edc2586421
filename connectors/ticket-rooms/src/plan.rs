//! What a ticket's changes do to its room: the room opened with its people, each message
//! posted with its author, status and owner changes told, the room closed and opened
//! again. Pure: the ticket, its new changes and what the room already has in; the steps
//! and what the room has then out.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use switchboard_connector::{Action, Queued, RoomSpec};

use crate::text::render;
use crate::{Comments, Member, RoomConfig};

/// What the room of a ticket has, as kept between reads of the ticket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// How far the ticket's history was read (a transaction or an article number).
    pub last: u64,
    /// Whether the room was opened.
    pub roomed: bool,
    pub status: String,
    /// The owner's name (empty: none).
    pub owner: String,
    /// The ticket's people (by name) invited or named in the room.
    pub people: BTreeSet<String>,
    /// Whether the room is closed (its ticket closed or merged).
    pub closed: bool,
    /// What was done to the closed room since (`Age`): 0 nothing, 1 made read-only, 2
    /// emptied.
    pub aged: u8,
}

/// A ticket as its room needs it.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// The ticket's number in its system; its lane in the outbox is this number as text.
    pub id: u64,
    /// What templates see: `system` and `ticket.*`.
    pub context: Value,
    pub status: String,
    /// The owner's name; empty when it has none.
    pub owner: String,
    /// Everyone of the ticket by name, in the order the room names them, with whether
    /// their role is invited.
    pub people: Vec<(String, bool)>,
    /// Whether the owner's role is invited (and the owner made the room's admin).
    pub owner_invited: bool,
}

/// A file attached to a message of the ticket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct File {
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    pub content_type: String,
    /// What the source fetches it by (`TicketSystem::attachment`), when it can: it is then
    /// posted into the room.
    pub id: Option<String>,
}

/// The largest file posted into a room; larger ones are named only.
pub const MAX_FILE: u64 = 50 * 1024 * 1024;

/// How a message came into the ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Said {
    /// The ticket's first message.
    Opened,
    /// A reply, or a note everyone of the ticket sees.
    Replied,
    /// An internal comment or note.
    Internal,
}

/// One change of the ticket, in the ticket's order; `by` is a name in `people`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Said {
        by: String,
        said: Said,
        text: String,
        files: Vec<File>,
    },
    Status {
        by: String,
        old: String,
        new: String,
    },
    /// The owner changed (the ticket names the new one).
    Owner {
        by: String,
    },
    Renamed {
        by: String,
        title: String,
    },
    /// The ticket was merged into another (`into`, its number), whose room is `room` if it
    /// has one: the conversation goes on there. The room keeps its name.
    Merged {
        into: String,
        room: Option<String>,
    },
}

/// The status a merged ticket's room keeps (the ticket system shows the surviving one).
pub const MERGED: &str = "merged";

/// How a source's rooms behave.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub room: &'a RoomConfig,
    pub comments: Comments,
    /// Whether closing the ticket writes the room's conversation into it.
    pub transcript: bool,
    /// Statuses that close the room (compared case-insensitively).
    pub closed: &'a [String],
}

impl Policy<'_> {
    fn closes(&self, status: &str) -> bool {
        self.closed.iter().any(|s| s.eq_ignore_ascii_case(status))
    }
}

/// One step that brings the room in line; the source queues each in the ticket's lane.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// One of the service's own actions.
    Core(Action),
    /// The owner changed: the new owner's power up to 100, the former owner's down to
    /// `former_power`.
    Owner {
        promote: Option<String>,
        demote: Option<String>,
        former_power: i64,
    },
    /// Write the room's conversation into the ticket (it was closed).
    Transcript,
    /// Some time after the close: make the room read-only for all but its admins (1) or
    /// remove everyone but the bot (2); a reopened room is writable again (0).
    Age(u8),
    /// Invite someone into the room again (they were removed when it was emptied).
    Invite(String),
    /// Post a file of the ticket into the room.
    File(File),
}

impl Step {
    /// The step as an action in the ticket's lane: the service's own, or the source's
    /// `<prefix>_owner` (`promote`, `demote`, `former_power`), `<prefix>_transcript`
    /// (`ticket`), `<prefix>_age` (`ticket`, `stage`), `<prefix>_invite` (`ticket`,
    /// `user`) or `<prefix>_file` (`ticket`, `attachment`, `name`, `content_type`, `size`),
    /// the shapes the source's own action kinds read.
    pub fn queued(self, prefix: &str, ticket: u64) -> Option<Queued> {
        let lane = ticket.to_string();
        let own = match self {
            Step::Core(action) => return Some(Queued::core(lane, &action)),
            Step::Owner {
                promote,
                demote,
                former_power,
            } => json!({"type": format!("{prefix}_owner"), "promote": promote,
                        "demote": demote, "former_power": former_power}),
            Step::Transcript => {
                json!({"type": format!("{prefix}_transcript"), "ticket": ticket})
            }
            Step::Age(stage) => {
                json!({"type": format!("{prefix}_age"), "ticket": ticket, "stage": stage})
            }
            Step::Invite(user) => {
                json!({"type": format!("{prefix}_invite"), "ticket": ticket, "user": user})
            }
            Step::File(file) => json!({"type": format!("{prefix}_file"), "ticket": ticket,
                "attachment": file.id, "name": file.name, "content_type": file.content_type,
                "size": file.size}),
        };
        Queued::own(lane, &own).ok()
    }
}

/// An article of a ticket (a reply, a note), for systems that give the ticket as it is
/// now rather than a history of its changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Article {
    pub id: u64,
    /// Who wrote it: a name in `people`, or as the room shows them.
    pub by: String,
    /// Not for the customer.
    pub internal: bool,
    pub text: String,
    pub files: Vec<File>,
}

/// The changes of a ticket given as it is now: its new `articles` in order (the first of a
/// ticket never read opens it), then its status and owner where they differ from what the
/// room has, both told as `by`'s.
pub fn changes_now(seen: &Seen, articles: &[Article], ticket: &Ticket, by: &str) -> Vec<Change> {
    let first = articles.first().map(|a| a.id);
    let mut out: Vec<Change> = articles
        .iter()
        .map(|a| Change::Said {
            by: a.by.clone(),
            said: if a.internal {
                Said::Internal
            } else if seen.last == 0 && Some(a.id) == first {
                Said::Opened
            } else {
                Said::Replied
            },
            text: a.text.clone(),
            files: a.files.clone(),
        })
        .collect();
    if seen.roomed && !ticket.status.eq_ignore_ascii_case(&seen.status) {
        out.push(Change::Status {
            by: by.to_string(),
            old: seen.status.clone(),
            new: ticket.status.clone(),
        });
    }
    if seen.roomed && ticket.owner != seen.owner {
        out.push(Change::Owner { by: by.to_string() });
    }
    out
}

/// `plan`, each step queued in the ticket's lane (the source's own as `<prefix>_*`), and
/// how far the ticket was read moved on to `last`.
pub fn plan_queued(
    policy: Policy<'_>,
    ticket: &Ticket,
    changes: &[Change],
    people: &BTreeMap<String, Member>,
    seen: &Seen,
    last: u64,
    prefix: &str,
) -> (Vec<Queued>, Seen) {
    let (steps, mut now) = plan(policy, ticket, changes, people, seen);
    now.last = now.last.max(last);
    let queued = steps
        .into_iter()
        .filter_map(|step| step.queued(prefix, ticket.id))
        .collect();
    (queued, now)
}

/// Plans what a ticket's new changes do to its room. `people` has every name of
/// `ticket.people`, the owners before and after and every `by` of `changes` (a name it
/// lacks is shown as it is).
pub fn plan(
    policy: Policy<'_>,
    ticket: &Ticket,
    changes: &[Change],
    people: &BTreeMap<String, Member>,
    seen: &Seen,
) -> (Vec<Step>, Seen) {
    let mut out = Vec::new();
    let mut now = seen.clone();
    // The room was emptied and is open again: its people are invited again.
    let mut again = false;
    let cx = &ticket.context;
    let member = |name: &str| people.get(name);
    let display = |name: &str| member(name).map_or(name.to_string(), Member::display);
    let post = |body: String, notice: bool| Step::Core(Action::Post { body, notice });
    let spec = |reopen: Option<String>, status: &str| RoomSpec {
        name: render(&policy.room.name, &status_cx(cx, status)),
        topic: render(&policy.room.topic, cx),
        preset: "private_chat".into(),
        encrypted: policy.room.encrypted,
        invite: Vec::new(),
        admins: member(&ticket.owner)
            .and_then(|m| m.matrix.clone())
            .filter(|_| ticket.owner_invited)
            .into_iter()
            .collect(),
        reopen_notice: reopen,
    };
    if !now.roomed {
        out.push(Step::Core(Action::OpenRoom(spec(None, &ticket.status))));
        now.roomed = true;
        now.status = ticket.status.clone();
        now.owner = ticket.owner.clone();
    }
    // New people are invited before what is posted, so that in an encrypted room they get
    // the keys of what they are to read.
    let invites_at = out.len();
    for change in changes {
        match change {
            Change::Said {
                by,
                said,
                text,
                files,
            } => {
                if *said == Said::Internal && policy.comments == Comments::Hide {
                    continue;
                }
                let what = match said {
                    Said::Opened => "opened the ticket",
                    Said::Replied => "replied",
                    Said::Internal => "commented (internal)",
                };
                let mut body = format!("{} {what}", display(by));
                if !text.trim().is_empty() {
                    body.push_str(":\n");
                    body.push_str(text.trim_end());
                }
                let posted = |f: &File| f.id.is_some() && f.size <= MAX_FILE;
                for file in files {
                    let (name, size) = (&file.name, file.size);
                    let place = if posted(file) {
                        "below"
                    } else {
                        "in the ticket"
                    };
                    body.push_str(&format!("\n📎 {name} ({size} bytes, {place})"));
                }
                out.push(post(body, false));
                let uploads = files.iter().filter(|f| posted(f));
                out.extend(uploads.map(|f| Step::File(f.clone())));
            }
            Change::Status { by, old, new } => {
                now.status = new.clone();
                let by = display(by);
                if policy.closes(new) && !policy.closes(old) {
                    now.closed = true;
                    out.push(Step::Core(Action::Close {
                        notice: Some(format!(
                            "{by} set the ticket to {new}: it is closed. This room stays for \
                             reference."
                        )),
                        rename: Some(render(&policy.room.closed_name, &status_cx(cx, new))),
                    }));
                    if policy.transcript {
                        out.push(Step::Transcript);
                    }
                } else if policy.closes(old) && !policy.closes(new) {
                    now.closed = false;
                    out.push(Step::Core(Action::OpenRoom(spec(
                        Some(format!("{by} opened the ticket again ({new}).")),
                        new,
                    ))));
                    if now.aged >= 1 {
                        out.push(Step::Age(0));
                    }
                    if now.aged >= 2 {
                        // Everyone was removed: invited again below.
                        now.people.clear();
                        again = true;
                    }
                    now.aged = 0;
                } else {
                    out.push(post(
                        format!("{by} changed the status from {old} to {new}."),
                        true,
                    ));
                }
            }
            Change::Owner { by } => {
                now.owner = ticket.owner.clone();
                let owner = match ticket.owner.as_str() {
                    "" => "nobody".to_string(),
                    name => display(name),
                };
                out.push(post(
                    format!("{} made {owner} the ticket's owner.", display(by)),
                    true,
                ));
            }
            Change::Renamed { by, title } => out.push(post(
                format!("{} renamed the ticket: {title}", display(by)),
                true,
            )),
            Change::Merged { into, room } => {
                now.status = MERGED.into();
                now.closed = true;
                let system = cx["system"].as_str().unwrap_or("the ticket system");
                let there = match room {
                    Some(room) => format!(" in its room, https://matrix.to/#/{room}"),
                    None => String::new(),
                };
                out.push(Step::Core(Action::Close {
                    notice: Some(format!(
                        "The ticket was merged into {system} #{into}: the conversation goes on \
                         there{there}. This room stays for reference."
                    )),
                    // The ticket system shows the surviving ticket now: nothing to name
                    // this room after but what it has.
                    rename: None,
                }));
                if policy.transcript {
                    out.push(Step::Transcript);
                }
            }
        }
    }
    // People the room has not had yet: invited, or named when nothing maps them.
    let mut unmapped = Vec::new();
    let mut invited = BTreeSet::new();
    let mut invites = Vec::new();
    for (name, invite) in &ticket.people {
        if now.people.contains(name) || !invite {
            continue;
        }
        now.people.insert(name.clone());
        match member(name) {
            Some(Member {
                matrix: Some(id), ..
            }) => {
                if invited.insert(id.clone()) {
                    invites.push(match again {
                        true => Step::Invite(id.clone()),
                        false => Step::Core(Action::Participant { user: id.clone() }),
                    });
                }
            }
            Some(m) => unmapped.push(m.named()),
            None => unmapped.push(name.clone()),
        }
    }
    out.splice(invites_at..invites_at, invites);
    if !unmapped.is_empty() {
        out.push(post(
            format!("Not in Matrix: {}", unmapped.join(", ")),
            true,
        ));
    }
    // A new owner: their power up, the former owner's down.
    if seen.roomed && now.owner != seen.owner && ticket.owner_invited {
        let matrix = |name: &str| member(name).and_then(|m| m.matrix.clone());
        let (promote, demote) = (matrix(&now.owner), matrix(&seen.owner));
        if promote.is_some() || demote.is_some() {
            out.push(Step::Owner {
                promote,
                demote,
                former_power: policy.room.former_owner_power,
            });
        }
    }
    (out, now)
}

/// The template context with the ticket's status as it is after a change.
fn status_cx(cx: &Value, status: &str) -> Value {
    let mut cx = cx.clone();
    cx["ticket"]["status"] = json!(status);
    cx
}
