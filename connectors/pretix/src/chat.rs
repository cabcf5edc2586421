//! Organisers' commands in Matrix rooms: map rooms to events, ask for their state, invite
//! earlier buyers, authorize Switchboard with pretix OAuth.

use switchboard_connector::Failure;
use tracing::info;

use crate::source::Source;
use crate::tables;
use crate::{Command, HELP};

impl Source {
    /// Runs an organiser's command; the answer to post in the room.
    pub(crate) async fn command(
        &self,
        room: &str,
        sender: &str,
        body: &str,
    ) -> Result<String, Failure> {
        if !self.cfg.organisers.iter().any(|o| o == sender) {
            return Ok("Only the organisers named in the configuration may do that.".into());
        }
        let Some(command) = crate::command(body) else {
            return Ok(HELP.into());
        };
        let event_api = |o: &str, e: &str| {
            format!(
                "{}/api/v1/organizers/{o}/events/{e}/",
                self.cfg.url.trim_end_matches('/')
            )
        };
        let host = &*self.host;
        Ok(match command {
            Command::Help => HELP.into(),
            Command::Authorize(None) => match self.authorize_link(room, sender).await? {
                Some(link) => format!(
                    "To let Switchboard read the orders with your pretix account, open:\n{link}\n\
                     If the page pretix then sends you to cannot be opened, copy its address \
                     and send: !authorize <address>"
                ),
                None => "pretix OAuth is not configured (`oauth` in the config file); \
                         Switchboard reads pretix with the API token."
                    .into(),
            },
            Command::Authorize(Some(address)) => {
                let Some((code, state)) = crate::code_of(&address) else {
                    return Ok("That address has no authorization code: send !authorize \
                               for a new link."
                        .into());
                };
                match self.complete(&code, &state).await {
                    Ok(_) => format!(
                        "pretix is authorized: Switchboard reads the orders with {sender}'s \
                         permission."
                    ),
                    Err(reason) => format!("Not authorized: {reason}"),
                }
            }
            Command::Usage(usage) => format!("Usage: {usage}"),
            Command::SetRoom(o, e) => {
                let what = format!("event {o}/{e}");
                let event = match self.get(&event_api(&o, &e), &what).await {
                    Ok(event) => event,
                    Err(Failure::Permanent(message)) => return Ok(format!("Not set: {message}.")),
                    Err(transient) => return Err(transient),
                };
                tables::set_room(host, &self.id, &o, &e, room, sender).await?;
                info!(source = %self.id, organizer = %o, event = %e, room, by = sender, "room mapped to a pretix event");
                format!(
                    "This room now gets the paid attendees of {} ({o}/{e}) who give their \
                     Matrix ID. For orders paid before now: !batchinvite {o}/{e}",
                    event_name(&event).unwrap_or(&e)
                )
            }
            Command::UnsetRoom => match tables::unset_room(host, &self.id, room).await? {
                0 => "This room was not mapped to an event from the chat.".into(),
                _ => "This room gets no more attendees (those invited stay).".into(),
            },
            Command::Status => {
                let mapped = tables::rooms(host, &self.id).await?;
                let here: Vec<(String, String, &str)> = self
                    .cfg
                    .events
                    .iter()
                    .filter(|e| {
                        e.rooms
                            .iter()
                            .chain(e.items.values().flatten())
                            .any(|r| r == room)
                    })
                    .map(|e| (e.organizer.clone(), e.event.clone(), "the config file"))
                    .chain(
                        mapped
                            .into_iter()
                            .filter(|(_, _, r)| r == room)
                            .map(|(o, e, _)| (o, e, "!setroom")),
                    )
                    .collect();
                let mut lines = Vec::new();
                for (o, e, how) in here {
                    let what = format!("event {o}/{e}");
                    let state = match self.get(&event_api(&o, &e), &what).await {
                        Ok(_) => "pretix answers".to_string(),
                        Err(failure) => failure.into_message(),
                    };
                    lines.push(format!("{o}/{e} (from {how}): {state}"));
                }
                if lines.is_empty() {
                    "This room gets the attendees of no event; !setroom <event URL> maps it.".into()
                } else {
                    format!(
                        "This room gets the paid attendees of:\n{}",
                        lines.join("\n")
                    )
                }
            }
            Command::BatchInvite(o, e) => {
                if self.rooms_for(&o, &e).await?.is_none() {
                    return Ok(format!(
                        "No room gets the attendees of {o}/{e}: map one first with !setroom."
                    ));
                }
                let queued = self.batch(&o, &e).await?;
                format!(
                    "{queued} paid orders of {o}/{e} are read again: their attendees who are \
                     not in the rooms yet are being invited."
                )
            }
        })
    }
}

/// An event's name (the first of its languages).
fn event_name(event: &serde_json::Value) -> Option<&str> {
    event["name"].as_object()?.values().find_map(|v| v.as_str())
}
