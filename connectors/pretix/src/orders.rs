//! Orders: an order's action reads it from pretix and brings the event's rooms in line with
//! its current state; the invites, removals and reports that takes are queued as actions of
//! their own, each in its own lane (`member:<room>:<user>`), so one that fails is retried
//! without holding up the others. A poll finds orders whose webhooks were lost.

use serde_json::json;
use switchboard_connector::{Action, ActionRow, DbError, EventKind, Failure, Queued, TicketEvent};
use tracing::{info, warn};

use crate::source::Source;
use crate::tables::{self, Changes};
use crate::{EventRooms, OrderRef, membership};

/// What `queue_orders` found.
#[derive(Default)]
pub(crate) struct Listed {
    /// Orders listed.
    pub all: usize,
    /// Of those, new to the inbox.
    pub new: usize,
    /// The last one's change time.
    pub newest: Option<String>,
}

impl Source {
    /// Reads the order and queues what its state asks for.
    pub(crate) async fn order(&self, row: &ActionRow, order: &OrderRef) -> Result<String, Failure> {
        let rooms = self.rooms_for(&order.organizer, &order.event).await?;
        let Some(rooms) = rooms.as_ref() else {
            warn!(source = %self.id, order = %order.key(), "an order of an event with no rooms configured; ignored");
            return Ok(format!(
                "skipped: no rooms for {}/{}",
                order.organizer, order.event
            ));
        };
        let current = self.get(&self.cfg.order_url(order), &order.key()).await?;
        let m = membership(&current, rooms, &self.cfg.question);
        let plan = |changes: &Changes| self.plan_changes(order, rooms, changes);
        let changes = tables::apply(
            &*self.host,
            row,
            &m.grants,
            m.revoke && self.cfg.kick,
            &m.invalid,
            &plan,
        )
        .await?;
        for (position, answer) in &changes.reports {
            warn!(source = %self.id, order = %order.key(), position, answer = %answer, "an answer is not a Matrix ID");
        }
        if !(changes.invites.is_empty() && changes.removals.is_empty()) {
            info!(
                source = %self.id,
                order = %order.key(),
                status = %m.status,
                invites = changes.invites.len(),
                removals = changes.removals.len(),
                "pretix order applied"
            );
        }
        Ok(format!(
            "order {} ({}): {} invites, {} removals, {} reports",
            order.code,
            m.status,
            changes.invites.len(),
            changes.removals.len(),
            changes.reports.len()
        ))
    }

    /// The actions an order's changes take.
    fn plan_changes(&self, order: &OrderRef, rooms: &EventRooms, changes: &Changes) -> Vec<Queued> {
        let mut out = Vec::new();
        for (room, user) in &changes.invites {
            let (room, user) = (room.clone(), user.clone());
            let lane = format!("member:{room}:{user}");
            out.push(Queued::core(lane, &Action::Invite { room, user }));
        }
        for (room, user) in &changes.removals {
            let (room, user) = (room.clone(), user.clone());
            let lane = format!("member:{room}:{user}");
            let reason = self.cfg.kick_reason.clone();
            out.push(Queued::core(lane, &Action::Kick { room, user, reason }));
        }
        if let Some(management) = &rooms.management_room {
            for (position, answer) in &changes.reports {
                let what = if answer.is_empty() {
                    "gave no Matrix ID".to_string()
                } else {
                    format!("\"{answer}\" is not a Matrix ID (like @name:example.org)")
                };
                let body = format!(
                    "Order {} (position {position}): {what}, so this attendee was not \
                     invited. Correct the answer in pretix and they will be.",
                    order.code
                );
                let send = Action::Send {
                    room: management.clone(),
                    content: json!({"msgtype": "m.notice", "body": body}),
                };
                out.push(Queued::core(format!("report:{}", order.key()), &send));
            }
        }
        out
    }

    /// Asks pretix for each event's orders changed since the last look, and puts each into
    /// the inbox as its webhook would (deduplicated by order and change time), so an order
    /// whose webhooks pretix gave up on is not missed. The first look at an event only notes
    /// where pretix stands: orders from before Switchboard watched the event are not swept
    /// up.
    pub(crate) async fn poll(&self) {
        let events = match self.events().await {
            Ok(events) => events,
            Err(error) => {
                warn!(source = %self.id, %error, "cannot read the events to poll; trying again later");
                return;
            }
        };
        for rooms in &events {
            match self.poll_event(rooms).await {
                Ok(0) => {}
                Ok(queued) => {
                    info!(source = %self.id, organizer = %rooms.organizer, event = %rooms.event, orders = queued, "changed orders found by polling pretix");
                }
                Err(error) => {
                    warn!(source = %self.id, organizer = %rooms.organizer, event = %rooms.event, %error, "cannot poll pretix; trying again later");
                }
            }
        }
    }

    /// One look at one event's changed orders; how many were new to the inbox.
    async fn poll_event(&self, rooms: &EventRooms) -> Result<usize, String> {
        let what = format!("event {}/{}", rooms.organizer, rooms.event);
        let cursor = format!(
            "pretix.{}.{}/{}.since",
            self.id, rooms.organizer, rooms.event
        );
        let db = |e: DbError| e.to_string();
        let Some(since) = self.host.cursor(&cursor).await.map_err(db)? else {
            // The newest change pretix has now (by its clock), or none yet.
            let url = self.cfg.orders_url(rooms, "").replace(
                "ordering=last_modified",
                "ordering=-last_modified&page_size=1",
            );
            let page = self.get(&url, &what).await.map_err(Failure::into_message)?;
            let newest = page["results"][0]["last_modified"].as_str().unwrap_or("");
            self.host.set_cursor(&cursor, newest).await.map_err(db)?;
            info!(source = %self.id, organizer = %rooms.organizer, event = %rooms.event, "watching the event's orders for changes from now on");
            return Ok(0);
        };
        let listed = self
            .queue_orders(rooms, &self.cfg.orders_url(rooms, &since), "poll")
            .await
            .map_err(Failure::into_message)?;
        if let Some(newest) = listed.newest.filter(|n| *n != since) {
            self.host.set_cursor(&cursor, &newest).await.map_err(db)?;
        }
        Ok(listed.new)
    }

    /// Every order of a list (`first`: its first page), page after page, into the inbox as
    /// a trigger to read it (`action` says why), deduplicated by order and change time.
    pub(crate) async fn queue_orders(
        &self,
        rooms: &EventRooms,
        first: &str,
        action: &str,
    ) -> Result<Listed, Failure> {
        let what = format!("event {}/{}", rooms.organizer, rooms.event);
        let mut listed = Listed::default();
        let mut next = Some(first.to_string());
        while let Some(url) = next.take() {
            let page = self.get(&url, &what).await?;
            for order in page["results"].as_array().into_iter().flatten() {
                let (Some(code), Some(modified)) =
                    (order["code"].as_str(), order["last_modified"].as_str())
                else {
                    continue;
                };
                let order = OrderRef {
                    organizer: rooms.organizer.clone(),
                    event: rooms.event.clone(),
                    code: code.to_string(),
                };
                let mut trigger = TicketEvent::new(order.key(), EventKind::Updated);
                trigger.status = Some(action.into());
                trigger.payload = json!({"organizer": order.organizer, "event": order.event,
                                         "code": order.code, "action": action});
                let accepted = self
                    .host
                    .deliver(
                        &self.id,
                        &format!("{}/changed/{modified}", order.key()),
                        &[trigger],
                    )
                    .await?;
                listed.all += 1;
                listed.new += usize::from(!accepted.duplicate);
                // Oldest first: the last one is the newest change.
                listed.newest = Some(modified.to_string());
            }
            next = next_page(&page, first);
        }
        Ok(listed)
    }

    /// An event's rooms: those of the config file and those mapped from the chat.
    pub(crate) async fn rooms_for(
        &self,
        organizer: &str,
        event: &str,
    ) -> Result<Option<EventRooms>, DbError> {
        Ok(self
            .events()
            .await?
            .into_iter()
            .find(|e| e.organizer == organizer && e.event == event))
    }

    /// Every event with rooms: the config file's, with the rooms mapped from the chat
    /// added (one query).
    pub(crate) async fn events(&self) -> Result<Vec<EventRooms>, DbError> {
        let mut events = self.cfg.events.clone();
        for (organizer, event, room) in tables::rooms(&*self.host, &self.id).await? {
            let known = events
                .iter_mut()
                .find(|e| e.organizer == organizer && e.event == event);
            match known {
                Some(e) if e.rooms.contains(&room) => {}
                Some(e) => e.rooms.push(room),
                None => {
                    let mut e = bare_event(&organizer, &event);
                    e.rooms.push(room);
                    events.push(e);
                }
            }
        }
        Ok(events)
    }

    /// Every paid order of an event read again; how many.
    pub(crate) async fn batch(&self, organizer: &str, event: &str) -> Result<usize, Failure> {
        let rooms = bare_event(organizer, event);
        let first = format!("{}&status=p", self.cfg.orders_url(&rooms, ""));
        Ok(self.queue_orders(&rooms, &first, "batchinvite").await?.all)
    }
}

/// The next page of a list: the query of pretix's `next` link, on the configured URL
/// (pretix may know itself by another name; the token goes nowhere else).
fn next_page(page: &serde_json::Value, first: &str) -> Option<String> {
    let next = url::Url::parse(page["next"].as_str()?).ok()?;
    let base = first.split('?').next().unwrap_or_default();
    Some(format!("{base}?{}", next.query()?))
}

/// An event with no rooms of the config file.
pub(crate) fn bare_event(organizer: &str, event: &str) -> EventRooms {
    EventRooms {
        organizer: organizer.into(),
        event: event.into(),
        rooms: Vec::new(),
        items: Default::default(),
        management_room: None,
    }
}
