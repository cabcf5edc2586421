//! What a Zammad ticket's new articles and its state are in the terms of a ticket room.
//! The room's own logic is `switchboard_ticket_rooms::plan`.

use std::collections::BTreeMap;

use serde_json::json;
use switchboard_connector::Queued;
use switchboard_ticket_rooms::plan::Policy;
use switchboard_ticket_rooms::{Article, Change, MERGED, Member, Seen, changes_now, plan_queued};

use crate::api::Ticket;
use crate::{ZammadConfig, ZammadRole};

/// A ticket as read: its people by login (empty: none), and its new articles by their
/// authors' logins, Switchboard's own writes left out.
#[derive(Debug, Clone, Default)]
pub(crate) struct Read {
    pub ticket: Ticket,
    pub owner: String,
    pub customer: String,
    pub updated_by: String,
    pub articles: Vec<Article>,
    /// The addresses the new e-mail articles were copied to.
    pub cc: Vec<String>,
    /// The ticket it was merged into (its number) and that ticket's room, once merged.
    pub merged_into: Option<(String, Option<String>)>,
    /// The last article read, Switchboard's own included.
    pub last: u64,
}

/// The agents invited into a ticket's room: those configured for its group.
pub(crate) fn agents<'a>(config: &'a ZammadConfig, read: &Read) -> &'a [String] {
    config
        .agents
        .get(&read.ticket.group)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// What templates see of a ticket.
pub(crate) fn context(config: &ZammadConfig, read: &Read) -> serde_json::Value {
    let t = &read.ticket;
    json!({"system": "Zammad", "ticket": {
        "id": t.id,
        "number": t.number,
        "title": t.title,
        "queue": t.group,
        "group": t.group,
        "status": t.state,
        "state": t.state,
        "priority": t.priority,
        "owner": read.owner,
        "customer": read.customer,
        "tags": t.tags,
        "fields": t.fields,
        "url": format!("{}/#ticket/zoom/{}", config.url.trim_end_matches('/'), t.id),
    }})
}

/// Plans what a ticket's new articles and state do to its room: the state and owner
/// changes told as the last change's author's. `people` has the owner, the customer,
/// `updated_by`, the former owner and every article's author, by login.
pub(crate) fn plan(
    config: &ZammadConfig,
    read: &Read,
    people: &BTreeMap<String, Member>,
    seen: &Seen,
) -> (Vec<Queued>, Seen) {
    let mut roles = Vec::new();
    let named = [
        (&read.owner, ZammadRole::Owner),
        (&read.customer, ZammadRole::Customer),
    ];
    let agents = agents(config, read).iter().map(|a| (a, ZammadRole::Agents));
    let cc = read.cc.iter().map(|a| (a, ZammadRole::Cc));
    for (name, role) in named.into_iter().chain(agents).chain(cc) {
        if !name.is_empty() {
            roles.push((name.clone(), config.people.invites(&role, true)));
        }
    }
    let view = switchboard_ticket_rooms::Ticket {
        id: read.ticket.id,
        context: context(config, read),
        status: read.ticket.state.clone(),
        owner: read.owner.clone(),
        people: roles,
        owner_invited: config.people.invites(&ZammadRole::Owner, true),
    };
    let policy = Policy {
        room: &config.room,
        comments: config.comments,
        transcript: config.transcript,
        closed: &config.closed_states,
    };
    let mut changes = changes_now(seen, &read.articles, &view, &read.updated_by);
    if let Some((into, room)) = &read.merged_into {
        for change in &mut changes {
            if matches!(change, Change::Status { new, .. } if new == MERGED) {
                let (into, room) = (into.clone(), room.clone());
                *change = Change::Merged { into, room };
            }
        }
    }
    plan_queued(policy, &view, &changes, people, seen, read.last, "zammad")
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_ticket_rooms::Person;

    fn config() -> ZammadConfig {
        serde_json::from_value(json!({
            "url": "https://zammad.example.org", "token": "t",
            "people": {"users": {"emily@example.com": "@emily:example.org"},
                       "template": "@{{ email_local }}:example.org"},
        }))
        .expect("config")
    }

    fn people(config: &ZammadConfig) -> BTreeMap<String, Member> {
        [
            ("emma@chrispresso.com", "Emma Taylor"),
            ("chris@chrispresso.com", "Christopher Miller"),
            ("emily@example.com", "Emily Adams"),
        ]
        .into_iter()
        .map(|(login, real)| {
            let person = Person {
                name: login.into(),
                email: login.into(),
                real_name: real.into(),
                ..Person::default()
            };
            (login.to_string(), config.people.member(person))
        })
        .collect()
    }

    fn read(state: &str, owner: &str, articles: &[(u64, bool, &str, &str)]) -> Read {
        Read {
            ticket: Ticket {
                id: 81,
                number: "10081".into(),
                title: "Webhook-Test".into(),
                group: "Service Desk".into(),
                state: state.into(),
                priority: "2 normal".into(),
                owner_id: 5,
                customer_id: 8,
                updated_by_id: 3,
                ..Ticket::default()
            },
            owner: owner.into(),
            customer: "emily@example.com".into(),
            updated_by: "chris@chrispresso.com".into(),
            articles: articles
                .iter()
                .map(|(id, internal, by, text)| Article {
                    id: *id,
                    by: by.to_string(),
                    internal: *internal,
                    text: (*text).into(),
                    files: Vec::new(),
                })
                .collect(),
            cc: Vec::new(),
            merged_into: None,
            last: articles.last().map_or(0, |a| a.0),
        }
    }

    fn kinds(actions: &[Queued]) -> Vec<String> {
        actions.iter().map(|q| q.kind().to_string()).collect()
    }

    #[test]
    fn a_new_ticket_opens_its_room_with_owner_and_customer() {
        let config = config();
        let people = people(&config);
        let first = read(
            "new",
            "emma@chrispresso.com",
            &[(104, false, "emily@example.com", "Printer on fire")],
        );
        let (actions, seen) = plan(&config, &first, &people, &Seen::default());
        assert_eq!(
            kinds(&actions),
            ["open_room", "participant", "participant", "post"]
        );
        assert_eq!(actions[0].action["name"], "Zammad #10081: Webhook-Test");
        assert_eq!(
            actions[0].action["topic"],
            "Webhook-Test · Service Desk · https://zammad.example.org/#ticket/zoom/81"
        );
        assert_eq!(actions[0].action["admins"], json!(["@emma:example.org"]));
        assert_eq!(
            actions[3].action["body"],
            "Emily Adams opened the ticket:\nPrinter on fire"
        );
        assert_eq!(actions[2].action["user"], "@emily:example.org");
        assert_eq!((seen.last, seen.status.as_str()), (104, "new"));

        // An internal note, a new owner and the ticket closed, in one read.
        let later = read(
            "closed",
            "chris@chrispresso.com",
            &[(105, true, "emma@chrispresso.com", "Toner ordered")],
        );
        let (actions, seen) = plan(&config, &later, &people, &seen);
        assert_eq!(
            kinds(&actions),
            [
                "participant",
                "post",
                "close",
                "zammad_transcript",
                "post",
                "zammad_owner"
            ]
        );
        assert_eq!(
            actions[1].action["body"],
            "Emma Taylor commented (internal):\nToner ordered"
        );
        assert_eq!(
            actions[2].action["rename"],
            "[closed] Zammad #10081: Webhook-Test"
        );
        assert_eq!(
            actions[4].action["body"],
            "Christopher Miller made Christopher Miller the ticket's owner."
        );
        assert_eq!(
            actions[5].action,
            json!({"type": "zammad_owner", "promote": "@chris:example.org",
                   "demote": "@emma:example.org", "former_power": 0})
        );
        assert_eq!(
            (seen.last, seen.owner.as_str()),
            (105, "chris@chrispresso.com")
        );
        // Nothing new: nothing to do.
        let (none, same) = plan(
            &config,
            &read("closed", "chris@chrispresso.com", &[]),
            &people,
            &seen,
        );
        assert!(none.is_empty(), "{none:?}");
        assert_eq!(same.last, 105);
    }
}
