//! What a ticket's new history is in the terms of a ticket room: RT's transactions as
//! changes, its people with their roles, the templates' context. The room's own logic is
//! `switchboard_ticket_rooms::plan`.

use std::collections::BTreeMap;

use serde_json::json;
use switchboard_connector::Queued;
use switchboard_ticket_rooms::plan::Policy;
use switchboard_ticket_rooms::{Change, Member, Said, Seen, plan_queued};

use crate::api::{Message, Ticket, Transaction};
use crate::{Role, RtConfig};

/// A transaction with its message (for creations, replies and comments).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub transaction: Transaction,
    pub message: Option<Message>,
}

/// What templates see of a ticket.
pub(crate) fn context(config: &RtConfig, ticket: &Ticket) -> serde_json::Value {
    json!({"system": "RT", "ticket": {
        "id": ticket.id,
        "number": ticket.id,
        "subject": ticket.subject,
        "title": ticket.subject,
        "queue": ticket.queue,
        "priority": ticket.priority,
        "fields": ticket.fields,
        "status": ticket.status,
        "owner": ticket.owner,
        "url": format!("{}/Ticket/Display.html?id={}", config.url.trim_end_matches('/'), ticket.id),
    }})
}

/// The ticket's owner by RT name; empty for `Nobody`.
pub(crate) fn owner(ticket: &Ticket) -> &str {
    match ticket.owner.as_str() {
        "Nobody" => "",
        name => name,
    }
}

/// The roles each of a ticket's people has, by RT name, in the order the room names them.
pub(crate) fn roles(ticket: &Ticket) -> Vec<(String, Role)> {
    let mut out = Vec::new();
    if !owner(ticket).is_empty() {
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

/// RT's transactions as the changes a room shows; what `api_user` wrote (Switchboard's
/// own writes) is left out.
fn changes(entries: &[Entry], api_user: &str) -> Vec<Change> {
    let mut out = Vec::new();
    for entry in entries {
        let t = &entry.transaction;
        let by = t.creator.clone();
        match t.kind.as_str() {
            "Create" | "Correspond" | "Comment" if t.creator != api_user => {
                let Some(message) = &entry.message else {
                    continue;
                };
                out.push(Change::Said {
                    by,
                    said: match t.kind.as_str() {
                        "Create" => Said::Opened,
                        "Correspond" => Said::Replied,
                        _ => Said::Internal,
                    },
                    text: message.text.clone(),
                    files: message.files.clone(),
                });
            }
            "Status" => out.push(Change::Status {
                by,
                old: t.old.clone(),
                new: t.new.clone(),
            }),
            "Set" | "Give" | "Take" | "Steal" | "Untake" | "Force"
                if t.kind != "Set" || t.field == "Owner" =>
            {
                out.push(Change::Owner { by })
            }
            "Set" if t.field == "Subject" => out.push(Change::Renamed {
                by,
                title: t.new.clone(),
            }),
            _ => {}
        }
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
    let mut people = people.clone();
    // RT's own changes (a reply opening a new ticket, say).
    people.entry("RT_System".into()).or_insert_with(|| Member {
        person: switchboard_ticket_rooms::Person {
            name: "RT_System".into(),
            real_name: "RT".into(),
            ..Default::default()
        },
        matrix: None,
    });
    let view = switchboard_ticket_rooms::Ticket {
        id: ticket.id,
        context: context(config, ticket),
        status: ticket.status.clone(),
        owner: owner(ticket).to_string(),
        people: roles(ticket)
            .into_iter()
            .map(|(name, role)| (name, config.people.invites(&role, true)))
            .collect(),
        owner_invited: config.people.invites(&Role::Owner, true),
    };
    let last = entries.iter().map(|e| e.transaction.id).max().unwrap_or(0);
    let changes = changes(entries, api_user);
    plan_queued(policy(config), &view, &changes, &people, seen, last, "rt")
}

fn policy(config: &RtConfig) -> Policy<'_> {
    Policy {
        room: &config.room,
        comments: config.comments,
        transcript: config.transcript,
        closed: &config.closed_statuses,
    }
}

/// Plans what merging ticket `id` into `into` (whose room is `room`, if it has one) does
/// to `id`'s room: a closing notice that points to the surviving ticket, and the
/// transcript. RT shows `into` in `id`'s place from now on: nothing else of it is read.
pub(crate) fn merged(
    config: &RtConfig,
    id: u64,
    into: u64,
    room: Option<String>,
    seen: &Seen,
) -> (Vec<Queued>, Seen) {
    let view = switchboard_ticket_rooms::Ticket {
        id,
        context: json!({"system": "RT", "ticket": {"id": id, "number": id}}),
        status: seen.status.clone(),
        owner: seen.owner.clone(),
        people: Vec::new(),
        owner_invited: false,
    };
    let changes = [Change::Merged {
        into: into.to_string(),
        room,
    }];
    let none = BTreeMap::new();
    plan_queued(
        policy(config),
        &view,
        &changes,
        &none,
        seen,
        seen.last,
        "rt",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use switchboard_ticket_rooms::{Comments, MERGED, Person};

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
            ..Person::default()
        }
    }

    fn ticket() -> Ticket {
        Ticket {
            id: 7,
            effective: 7,
            subject: "VPN down".into(),
            status: "new".into(),
            queue: "Support".into(),
            owner: "alice".into(),
            requestors: vec!["carl@example.org".into(), "eve@else.example".into()],
            cc: vec![],
            admin_cc: vec!["bob".into()],
            ..Ticket::default()
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
            let matrix = config.people.matrix_id(&p);
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
                "participant",
                "participant",
                "participant",
                "post",
                "post"
            ]
        );
        let open = &actions[0].action;
        assert_eq!(open["name"], "RT #7: VPN down");
        assert_eq!(open["admins"], json!(["@alice:example.org"]));
        assert_eq!(
            open["topic"],
            "VPN down · Support · https://rt.example.org/Ticket/Display.html?id=7"
        );
        assert_eq!(
            actions[4].action["body"],
            "Carl Customer opened the ticket:\nIt is down."
        );
        let invited: Vec<&str> = actions[1..4]
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
    fn a_merged_ticket_s_room_closes_pointing_to_the_surviving_one() {
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
        let (actions, seen) = merged(&config, 7, 9, Some("!nine:example.org".into()), &start);
        assert_eq!(kinds(&actions), ["close", "rt_transcript"]);
        assert_eq!(
            actions[0].action["notice"],
            "The ticket was merged into RT #9: the conversation goes on there in its room, \
             https://matrix.to/#/!nine:example.org. This room stays for reference."
        );
        assert_eq!(actions[0].action["rename"], Value::Null);
        assert_eq!(actions[1].action["ticket"], 7);
        assert_eq!((seen.status.as_str(), seen.last), (MERGED, start.last));
        assert_eq!(
            seen.people, start.people,
            "nobody of the other ticket invited"
        );
        // Into a ticket without a room: the notice names it only.
        let (actions, _) = merged(&config, 7, 9, None, &start);
        assert!(
            actions[0].action["notice"]
                .as_str()
                .is_some_and(|n| n.starts_with(
                    "The ticket was merged into RT #9: the \
                                                conversation goes on there. This room"
                )),
            "{actions:?}"
        );
    }

    #[test]
    fn a_room_emptied_after_the_close_is_writable_and_invites_again_on_reopen() {
        let config = config();
        let people = people(&config);
        let mut closed = plan(
            &config,
            &ticket(),
            &[],
            &people,
            "switchboard",
            &Seen::default(),
        )
        .1;
        closed.status = "resolved".into();
        closed.closed = true;
        closed.aged = 2;
        let mut reopened = entry(30, "Status", "alice", None);
        reopened.transaction.old = "resolved".into();
        reopened.transaction.new = "open".into();
        let mut open = ticket();
        open.status = "open".into();
        let (actions, seen) = plan(&config, &open, &[reopened], &people, "switchboard", &closed);
        assert_eq!(
            kinds(&actions),
            [
                "rt_invite",
                "rt_invite",
                "rt_invite",
                "open_room",
                "rt_age",
                "post"
            ]
        );
        assert_eq!(actions[4].action["stage"], 0);
        assert_eq!((seen.closed, seen.aged), (false, 0));
        // Closed again: noted, so that it ages again.
        let mut resolved = entry(31, "Status", "alice", None);
        resolved.transaction.old = "open".into();
        resolved.transaction.new = "resolved".into();
        let (_, seen) = plan(
            &config,
            &ticket(),
            &[resolved],
            &people,
            "switchboard",
            &seen,
        );
        assert!(seen.closed);
    }
}
