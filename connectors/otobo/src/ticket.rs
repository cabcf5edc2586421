//! What an OTOBO or Znuny ticket's new articles and its state are in the terms of a ticket
//! room. The room's own logic is `switchboard_ticket_rooms::plan`.

use std::collections::BTreeMap;

use serde_json::json;
use switchboard_connector::Queued;
use switchboard_ticket_rooms::plan::Policy;
use switchboard_ticket_rooms::{Member, Seen, changes_now, plan_queued};

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
        "type": t.kind,
        "service": t.service,
        "fields": t.fields,
        "owner": t.owner,
        "responsible": t.responsible,
        "customer": t.customer,
        "url": config.ticket_url(t.id),
    }})
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
        id: t.id,
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
    // The web service does not say who changed the state or the owner: the system did.
    let changes = changes_now(seen, &t.articles, &view, &config.system);
    plan_queued(policy, &view, &changes, people, seen, last, "otobo")
}
