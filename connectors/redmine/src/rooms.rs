//! What an issue's new journals are in the terms of a ticket room: notes as what was said,
//! status, assignee and subject changes, its people with their roles, the templates'
//! context. The room's own logic is `switchboard_ticket_rooms::plan`.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};
use switchboard_connector::Queued;
use switchboard_ticket_rooms::plan::Policy;
use switchboard_ticket_rooms::{Change, File, Member, Said, Seen, plan_queued};

use crate::api::Issue;
use crate::{Role, Rooms};

/// What templates see of an issue, from Redmine's JSON of it (a list's or its own).
pub(crate) fn context(url: &str, issue: &Value) -> Value {
    let name = |key: &str| issue[key]["name"].as_str().unwrap_or_default();
    let fields: serde_json::Map<String, Value> = issue["custom_fields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| Some((f["name"].as_str()?.to_string(), f["value"].clone())))
        .collect();
    let id = issue["id"].as_u64().unwrap_or_default();
    json!({"system": "Redmine", "ticket": {
        "id": id,
        "number": id,
        "subject": issue["subject"],
        "title": issue["subject"],
        "project": name("project"),
        "queue": name("project"),
        "tracker": name("tracker"),
        "status": name("status"),
        "priority": name("priority"),
        "category": name("category"),
        "owner": name("assigned_to"),
        "author": name("author"),
        "fields": fields,
        "url": format!("{}/issues/{id}", url.trim_end_matches('/')),
    }})
}

/// A user's key in the room's people: their Redmine ID, as text.
fn key(user: &Value) -> Option<String> {
    user["id"].as_i64().map(|id| id.to_string())
}

/// The issue's people by user ID with their roles, in the order the room names them;
/// never `me`, Switchboard's own user (Redmine makes it a watcher of what it writes on).
pub(crate) fn roles(issue: &Value, me: i64) -> Vec<(String, Role)> {
    let mut out = Vec::new();
    out.extend(key(&issue["assigned_to"]).map(|k| (k, Role::Assignee)));
    out.extend(key(&issue["author"]).map(|k| (k, Role::Author)));
    let watchers = issue["watchers"].as_array().into_iter().flatten();
    out.extend(watchers.filter_map(|w| key(w).map(|k| (k, Role::Watchers))));
    out.retain(|(k, _)| *k != me.to_string());
    out
}

/// Everyone an issue and its journals name, by user ID, with the name Redmine shows.
pub(crate) fn names(issue: &Issue) -> BTreeMap<i64, String> {
    let raw = &issue.raw;
    let watchers = raw["watchers"].as_array().into_iter().flatten();
    let named = [&raw["assigned_to"], &raw["author"]]
        .into_iter()
        .chain(watchers)
        .filter_map(|u| Some((u["id"].as_i64()?, u["name"].as_str()?.to_string())));
    let writers = issue.journals.iter().map(|j| (j.user_id, j.user.clone()));
    named.chain(writers).collect()
}

/// The issue's new journals (after `seen.last`) as the changes a room shows, and the
/// newest journal read; a room not opened yet starts with the issue's description. Notes
/// and files of `me` (Switchboard's own writes) are left out; `status` names a status.
pub(crate) fn changes(
    issue: &Issue,
    seen: &Seen,
    me: i64,
    status: &HashMap<i64, String>,
) -> (Vec<Change>, u64) {
    let raw = &issue.raw;
    let files: BTreeMap<i64, File> = raw["attachments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let id = a["id"].as_i64()?;
            Some((
                id,
                File {
                    name: a["filename"].as_str().unwrap_or("file").to_string(),
                    size: a["filesize"].as_u64().unwrap_or_default(),
                    content_type: a["content_type"].as_str().unwrap_or_default().to_string(),
                    id: Some(id.to_string()),
                },
            ))
        })
        .collect();
    let file = |id: &i64, name: &str| {
        files.get(id).cloned().unwrap_or_else(|| File {
            name: name.to_string(),
            ..File::default()
        })
    };
    let name = |id: Option<i64>| match id {
        Some(id) => status.get(&id).cloned().unwrap_or_else(|| id.to_string()),
        None => String::new(),
    };
    let mut out = Vec::new();
    if !seen.roomed {
        // The files no journal added came with the issue.
        let later: Vec<i64> = issue
            .journals
            .iter()
            .flat_map(|j| j.files.iter().map(|(id, _)| *id))
            .collect();
        out.push(Change::Said {
            by: key(&raw["author"]).unwrap_or_default(),
            said: Said::Opened,
            text: raw["description"].as_str().unwrap_or_default().to_string(),
            files: files
                .iter()
                .filter(|(id, _)| !later.contains(id))
                .map(|(_, f)| f.clone())
                .collect(),
        });
    }
    let mut last = seen.last;
    for journal in issue.journals.iter().filter(|j| j.id as u64 > seen.last) {
        last = last.max(journal.id as u64);
        let by = journal.user_id.to_string();
        let said = !journal.notes.trim().is_empty() || !journal.files.is_empty();
        if said && journal.user_id != me {
            out.push(Change::Said {
                by: by.clone(),
                said: match journal.private {
                    true => Said::Internal,
                    false => Said::Replied,
                },
                text: journal.notes.clone(),
                files: journal.files.iter().map(|(id, n)| file(id, n)).collect(),
            });
        }
        if journal.status.is_some() {
            out.push(Change::Status {
                by: by.clone(),
                old: name(journal.old_status),
                new: name(journal.status),
            });
        }
        if journal.assigned {
            out.push(Change::Owner { by: by.clone() });
        }
        if let Some(title) = &journal.subject {
            out.push(Change::Renamed {
                by,
                title: title.clone(),
            });
        }
    }
    (out, last)
}

/// What plans a source's issue rooms: its `rooms` config, Redmine's address, the
/// statuses Redmine counts as closed, and Switchboard's own Redmine user.
pub(crate) struct Setup<'a> {
    pub rooms: &'a Rooms,
    pub url: &'a str,
    pub closed: &'a [String],
    pub me: i64,
}

/// Plans what an issue's new journals (`changes`, up to `last`) do to its room. `people`
/// has every user of `roles` and `names`.
pub(crate) fn plan(
    setup: &Setup<'_>,
    issue: &Issue,
    changes: &[Change],
    people: &BTreeMap<String, Member>,
    seen: &Seen,
    last: u64,
) -> (Vec<Queued>, Seen) {
    let (rooms, url, closed) = (setup.rooms, setup.url, setup.closed);
    let raw = &issue.raw;
    let view = switchboard_ticket_rooms::Ticket {
        id: raw["id"].as_u64().unwrap_or_default(),
        context: context(url, raw),
        status: raw["status"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        owner: key(&raw["assigned_to"]).unwrap_or_default(),
        people: roles(raw, setup.me)
            .into_iter()
            .map(|(name, role)| (name, rooms.people.invites(&role, true)))
            .collect(),
        owner_invited: rooms.people.invites(&Role::Assignee, true),
    };
    let policy = Policy {
        room: &rooms.room,
        comments: rooms.comments,
        transcript: rooms.transcript,
        closed,
    };
    plan_queued(policy, &view, changes, people, seen, last, "redmine")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Journal;
    use switchboard_ticket_rooms::Person;

    fn issue() -> Issue {
        let raw = json!({
            "id": 12, "subject": "Printer on fire", "description": "Since 9:00.",
            "project": {"id": 1, "name": "Support"}, "tracker": {"id": 1, "name": "Support"},
            "status": {"id": 2, "name": "In Progress"}, "priority": {"id": 2, "name": "Normal"},
            "author": {"id": 5, "name": "Carl Customer"},
            "assigned_to": {"id": 6, "name": "Alice Agent"},
            "watchers": [{"id": 7, "name": "Group Ops"}, {"id": 9, "name": "Switchboard"}],
            "custom_fields": [{"id": 1, "name": "Chat", "value": "yes"}],
            "attachments": [
                {"id": 30, "filename": "photo.jpg", "filesize": 900, "content_type": "image/jpeg"},
                {"id": 31, "filename": "log.txt", "filesize": 20, "content_type": "text/plain"},
            ],
        });
        let journal = |id: i64, user: (i64, &str), notes: &str| Journal {
            id,
            user_id: user.0,
            user: user.1.into(),
            notes: notes.into(),
            private: false,
            status: None,
            old_status: None,
            assigned: false,
            subject: None,
            files: Vec::new(),
        };
        let alice = (6, "Alice Agent");
        let mut private = journal(41, alice, "It was the toner");
        private.private = true;
        let mut status = journal(42, alice, "");
        (status.old_status, status.status) = (Some(1), Some(2));
        let mut own = journal(43, (9, "Switchboard"), "Carl (@carl:x) in Matrix:\nthanks");
        own.files = vec![(32, "mine.txt".into())];
        let mut file = journal(44, alice, "");
        file.files = vec![(31, "log.txt".into())];
        Issue {
            raw,
            journals: vec![journal(40, alice, "On it"), private, status, own, file],
        }
    }

    #[test]
    fn journals_are_changes_and_own_notes_stay_out() {
        let issue = issue();
        let statuses = HashMap::from([(1, "New".to_string()), (2, "In Progress".to_string())]);
        let (changes, last) = changes(&issue, &Seen::default(), 9, &statuses);
        assert_eq!(last, 44);
        let said = |by: &str, said, text: &str, files: Vec<File>| Change::Said {
            by: by.into(),
            said,
            text: text.into(),
            files,
        };
        let photo = File {
            name: "photo.jpg".into(),
            size: 900,
            content_type: "image/jpeg".into(),
            id: Some("30".into()),
        };
        let log = File {
            name: "log.txt".into(),
            size: 20,
            content_type: "text/plain".into(),
            id: Some("31".into()),
        };
        assert_eq!(
            changes,
            [
                said("5", Said::Opened, "Since 9:00.", vec![photo]),
                said("6", Said::Replied, "On it", vec![]),
                said("6", Said::Internal, "It was the toner", vec![]),
                Change::Status {
                    by: "6".into(),
                    old: "New".into(),
                    new: "In Progress".into()
                },
                said("6", Said::Replied, "", vec![log]),
            ]
        );
        // Read again from the last journal: nothing new.
        let seen = Seen {
            last: 44,
            roomed: true,
            ..Seen::default()
        };
        assert_eq!(super::changes(&issue, &seen, 9, &statuses), (vec![], 44));
    }

    #[test]
    fn the_room_has_the_issues_people_and_templates() {
        let issue = issue();
        let rooms: Rooms = serde_json::from_value(json!({
            "people": {"users": {"alice": "@alice:example.org", "carl": "@carl:example.org"}},
            "room": {"encrypted": false},
        }))
        .expect("rooms");
        let cx = context("https://redmine.example.org/", &issue.raw);
        assert_eq!(cx["ticket"]["url"], "https://redmine.example.org/issues/12");
        assert_eq!(cx["ticket"]["fields"]["Chat"], "yes");
        assert_eq!(cx["ticket"]["owner"], "Alice Agent");
        let member = |login: &str, name: &str| {
            rooms.people.member(Person {
                name: login.into(),
                real_name: name.into(),
                ..Person::default()
            })
        };
        let people: BTreeMap<String, Member> = [
            ("5", member("carl", "Carl Customer")),
            ("6", member("alice", "Alice Agent")),
            ("7", member("Group Ops", "Group Ops")),
        ]
        .into_iter()
        .map(|(k, m)| (k.to_string(), m))
        .collect();
        assert_eq!(names(&issue).get(&7).map(String::as_str), Some("Group Ops"));
        let (changes, last) = changes(&issue, &Seen::default(), 9, &HashMap::new());
        let closed = ["Closed".to_string()];
        let setup = Setup {
            rooms: &rooms,
            url: "https://redmine.example.org",
            closed: &closed,
            me: 9,
        };
        let (actions, seen) = plan(&setup, &issue, &changes, &people, &Seen::default(), last);
        let kinds: Vec<&str> = actions.iter().map(Queued::kind).collect();
        assert_eq!(
            kinds[..4],
            ["open_room", "participant", "participant", "post"],
            "{kinds:?}"
        );
        let open = &actions[0].action;
        assert_eq!(open["name"], "Redmine #12: Printer on fire");
        assert_eq!(open["admins"], json!(["@alice:example.org"]));
        assert_eq!(
            actions[3].action["body"],
            "Carl Customer opened the ticket:\nSince 9:00.\n📎 photo.jpg (900 bytes, below)"
        );
        assert!(kinds.contains(&"redmine_file"), "{kinds:?}");
        let bodies: Vec<&str> = actions
            .iter()
            .filter_map(|q| q.action["body"].as_str())
            .collect();
        assert!(bodies.contains(&"Not in Matrix: Group Ops"), "{bodies:?}");
        assert!(
            !bodies.iter().any(|b| b.contains("Switchboard")),
            "{bodies:?}"
        );
        assert_eq!((seen.last, seen.owner.as_str()), (44, "6"));
    }
}
