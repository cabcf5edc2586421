//! What an OTOBO or Znuny ticket's new articles and its state are in the terms of a ticket
//! room. The room's own logic is `switchboard_ticket_rooms::plan`.

use std::collections::BTreeMap;

use serde_json::json;
use switchboard_connector::Queued;
use switchboard_ticket_rooms::plan::Policy;
use switchboard_ticket_rooms::{Change, Member, Said, Seen};

use crate::api::Ticket;
use crate::{OtoboConfig, OtoboRole};

/// What templates see of a ticket.
pub(crate) fn context(config: &OtoboConfig, t: &Ticket) -> serde_json::Value {
    json!({"system": config.system, "ticket": {
        "id": t.id,
        "number": t.number,
        "title": t.title,
        "queue": t.queue,
        "status": t.state,
        "state": t.state,
        "priority": t.priority,
        "owner": t.owner,
        "responsible": t.responsible,
        "customer": t.customer,
        "url": config.ticket_url(t.id),
    }})
}

/// The changes a room shows: the ticket's new articles (Switchboard's own already left
/// out) in order, then the state and the owner when they differ from what the room has.
/// Those two are told as the system's (the web service does not say who made them).
fn changes(config: &OtoboConfig, t: &Ticket, seen: &Seen) -> Vec<Change> {
    let first = t.articles.first().map(|a| a.id);
    let mut out: Vec<Change> = t
        .articles
        .iter()
        .map(|a| Change::Said {
            by: a.author.clone(),
            said: if a.internal {
                Said::Internal
            } else if seen.last == 0 && Some(a.id) == first {
                Said::Opened
            } else {
                Said::Replied
            },
            text: a.text.clone(),
            files: Vec::new(),
        })
        .collect();
    if seen.roomed && !t.state.eq_ignore_ascii_case(&seen.status) {
        out.push(Change::Status {
            by: config.system.clone(),
            old: seen.status.clone(),
            new: t.state.clone(),
        });
    }
    if seen.roomed && t.owner != seen.owner {
        out.push(Change::Owner {
            by: config.system.clone(),
        });
    }
    out
}

/// Plans what a ticket's new articles and state do to its room. `people` has the owner,
/// the responsible agent, the customer and the former owner, by login; `last` is the last
/// article read, Switchboard's own included.
pub(crate) fn plan(
    config: &OtoboConfig,
    t: &Ticket,
    last: u64,
    people: &BTreeMap<String, Member>,
    seen: &Seen,
) -> (Vec<Queued>, Seen) {
    let lane = t.id.to_string();
    let roles = [
        (&t.owner, OtoboRole::Owner),
        (&t.responsible, OtoboRole::Responsible),
        (&t.customer, OtoboRole::Customer),
    ]
    .into_iter()
    .filter(|(name, _)| !name.is_empty())
    .map(|(name, role)| (name.clone(), config.people.invites(&role, true)))
    .collect();
    let view = switchboard_ticket_rooms::Ticket {
        lane: lane.clone(),
        context: context(config, t),
        status: t.state.clone(),
        owner: t.owner.clone(),
        people: roles,
        owner_invited: config.people.invites(&OtoboRole::Owner, true),
    };
    let policy = Policy {
        room: &config.room,
        comments: config.comments,
        transcript: config.transcript,
        closed: &config.closed_states,
    };
    let (steps, mut now) =
        switchboard_ticket_rooms::plan(policy, &view, &changes(config, t, seen), people, seen);
    now.last = now.last.max(last);
    let queued = steps
        .into_iter()
        .filter_map(|step| step.queued(&lane, "otobo", t.id))
        .collect();
    (queued, now)
}
