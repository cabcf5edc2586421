//! pretix source: an order's attendees become members of the event's Matrix rooms while the
//! order is paid, and leave them when it is canceled.
//!
//! pretix's webhook (`{notification_id, organizer, event, code, action}`) is only a trigger:
//! the service stores it, then reads the order from pretix's REST API and acts on its current
//! state. This crate is the whole connector: the configuration (`kind`), the trigger, who
//! belongs in which room by an order (here), reading pretix (`api`, `orders`), organisers'
//! commands (`chat`) and its tables (`tables`).

mod api;
mod chat;
mod kind;
mod orders;
mod source;
mod tables;

pub use kind::Pretix;

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::Deserialize;
use switchboard_connector::{Delivery, EventKind, RejectReason, TicketEvent, WebhookSource};

/// Configuration of a pretix source (`kind = "pretix"`).
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PretixConfig {
    /// pretix's base URL, e.g. `https://pretix.eu` (the API is under `/api/v1/`).
    pub url: String,
    /// An API token of a team with access to the events' orders (pretix: Organizer, Teams,
    /// API tokens). Or `api_token_file`.
    pub api_token: Option<String>,
    pub api_token_file: Option<std::path::PathBuf>,
    /// The identifier of the question whose answer is an attendee's Matrix ID.
    #[serde(default = "default_question")]
    pub question: String,
    /// Remove attendees from the rooms when their order is canceled or expires, or their
    /// position is canceled.
    #[serde(default = "default_true")]
    pub kick: bool,
    /// The reason given with a removal.
    #[serde(default = "default_kick_reason")]
    pub kick_reason: String,
    /// Which rooms an event's attendees belong in.
    #[serde(default)]
    pub events: Vec<EventRooms>,
    /// How often pretix is asked for orders changed since the last look, in minutes
    /// (fractions allowed); 0 never. Catches what webhooks missed: pretix gives up on a
    /// webhook after a few attempts.
    #[serde(default = "default_poll_minutes")]
    pub poll_minutes: f64,
    /// Who may run the chat commands (`!setroom`, `!batchinvite`, ...), by Matrix user ID.
    /// Empty: no commands. Their invites into rooms are accepted.
    #[serde(default)]
    pub organisers: Vec<String>,
    /// An OAuth application in pretix, for `!authorize` instead of (or before) an API token.
    pub oauth: Option<OAuthConfig>,
}

/// A pretix OAuth application (pretix: Your account, Authorized applications, Own
/// applications), its redirect URI `<public_url>/oauth/pretix/<source id>/callback`.
#[derive(Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    pub client_id: String,
    /// Or `client_secret_file`.
    pub client_secret: Option<String>,
    pub client_secret_file: Option<std::path::PathBuf>,
    /// Where pretix sends the organiser's browser back: Switchboard's address as the
    /// organiser's browser reaches it, e.g. `https://switchboard.example.org`.
    pub public_url: String,
}

impl std::fmt::Debug for OAuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthConfig")
            .field("client_id", &self.client_id)
            .field("public_url", &self.public_url)
            .finish()
    }
}

impl OAuthConfig {
    /// The redirect URI of `source`'s callback.
    pub fn redirect_uri(&self, source: &str) -> String {
        format!(
            "{}/oauth/pretix/{source}/callback",
            self.public_url.trim_end_matches('/')
        )
    }
}

impl std::fmt::Debug for PretixConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PretixConfig")
            .field("url", &self.url)
            .field("api_token", &self.api_token.as_ref().map(|_| "***"))
            .field("question", &self.question)
            .field("kick", &self.kick)
            .field("events", &self.events)
            .finish()
    }
}

/// The rooms of one pretix event.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventRooms {
    /// The organizer's short form (slug), as in the event's URL.
    pub organizer: String,
    /// The event's short form (slug).
    pub event: String,
    /// Rooms (IDs, `!...`) every paid attendee is invited to.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// More rooms for attendees of particular products: product (item) ID, or
    /// `<item ID>/<variation ID>` for one variation of it -> room IDs.
    #[serde(default)]
    pub items: BTreeMap<String, Vec<String>>,
    /// Where problems with an order's answers are reported (a room ID); none: only logged.
    pub management_room: Option<String>,
}

fn default_question() -> String {
    "matrix".into()
}
fn default_true() -> bool {
    true
}
fn default_poll_minutes() -> f64 {
    5.0
}
fn default_kick_reason() -> String {
    "Your ticket for this event is no longer valid.".into()
}

impl PretixConfig {
    /// Every room the config names, with its key: the events' rooms, their products' and
    /// their management rooms.
    pub fn rooms(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, e) in self.events.iter().enumerate() {
            for (j, room) in e.rooms.iter().enumerate() {
                out.push((format!("events.{i}.rooms.{j}"), room.clone()));
            }
            for (item, rooms) in &e.items {
                for (j, room) in rooms.iter().enumerate() {
                    out.push((format!("events.{i}.items.{item}.{j}"), room.clone()));
                }
            }
            if let Some(room) = &e.management_room {
                out.push((format!("events.{i}.management_room"), room.clone()));
            }
        }
        out
    }

    /// Problems a config check reports, as (key below this source, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        match url_base(&self.url) {
            Some(_) => {}
            None => out.push((
                "url".into(),
                format!("`{}` is not an http(s) URL", self.url),
            )),
        }
        if !(self.poll_minutes >= 0.0 && self.poll_minutes.is_finite()) {
            out.push(("poll_minutes".into(), "must be 0 (never) or more".into()));
        }
        if let Some(oauth) = &self.oauth {
            if url_base(&oauth.public_url).is_none() {
                out.push((
                    "oauth.public_url".into(),
                    format!("`{}` is not an http(s) URL", oauth.public_url),
                ));
            }
            if oauth.client_id.trim().is_empty() {
                out.push(("oauth.client_id".into(), "must not be empty".into()));
            }
        }
        for id in &self.organisers {
            if !switchboard_connector::is_matrix_user_id(id) {
                out.push((
                    "organisers".into(),
                    format!("`{id}` is not a Matrix user ID"),
                ));
            }
        }
        if self.question.trim().is_empty() {
            out.push(("question".into(), "must not be empty".into()));
        }
        for (i, ev) in self.events.iter().enumerate() {
            for (key, value) in [("organizer", &ev.organizer), ("event", &ev.event)] {
                if !is_slug(value) {
                    out.push((
                        format!("events.{i}.{key}"),
                        format!("`{value}` is not a pretix short form"),
                    ));
                }
            }
            let rooms =
                ev.rooms
                    .iter()
                    .map(|r| ("rooms".to_string(), r))
                    .chain(ev.items.iter().flat_map(|(item, rs)| {
                        rs.iter().map(move |r| (format!("items.{item}"), r))
                    }))
                    .chain(
                        ev.management_room
                            .iter()
                            .map(|r| ("management_room".to_string(), r)),
                    );
            for (key, room) in rooms {
                if !is_room_id(room) {
                    out.push((
                        format!("events.{i}.{key}"),
                        format!("`{room}` is not a room ID (!...)"),
                    ));
                }
            }
            if ev.rooms.is_empty() && ev.items.is_empty() {
                out.push((
                    format!("events.{i}.rooms"),
                    "name at least one room (or `items`)".into(),
                ));
            }
        }
        out
    }

    /// The rooms configured for an event, if it is one of this source's.
    pub fn event(&self, organizer: &str, event: &str) -> Option<&EventRooms> {
        self.events
            .iter()
            .find(|e| e.organizer == organizer && e.event == event)
    }

    /// The API URL of an event's orders, oldest change first, changed since `since` (all
    /// when empty).
    pub fn orders_url(&self, rooms: &EventRooms, since: &str) -> String {
        let mut url = format!(
            "{}/api/v1/organizers/{}/events/{}/orders/?ordering=last_modified",
            url_base(&self.url).unwrap_or_default(),
            rooms.organizer,
            rooms.event
        );
        if !since.is_empty() {
            url.push_str("&modified_since=");
            url.extend(since.chars().flat_map(|c| match c {
                '+' => "%2B".chars().collect::<Vec<_>>(),
                ':' => "%3A".chars().collect(),
                c => vec![c],
            }));
        }
        url
    }

    /// Where an organiser's browser goes to let Switchboard read pretix (`state` ties the
    /// answer to the request).
    pub fn authorize_url(&self, source: &str, state: &str) -> Option<String> {
        let oauth = self.oauth.as_ref()?;
        let query: String = [
            ("client_id", oauth.client_id.as_str()),
            ("response_type", "code"),
            ("scope", "read"),
            ("state", state),
            ("approval_prompt", "force"),
            ("redirect_uri", &oauth.redirect_uri(source)),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&");
        Some(format!(
            "{}/api/v1/oauth/authorize?{query}",
            url_base(&self.url)?
        ))
    }

    /// pretix's token endpoint.
    pub fn token_url(&self) -> String {
        format!(
            "{}/api/v1/oauth/token",
            url_base(&self.url).unwrap_or_default()
        )
    }

    /// The API URL of one order.
    pub fn order_url(&self, order: &OrderRef) -> String {
        format!(
            "{}/api/v1/organizers/{}/events/{}/orders/{}/",
            url_base(&self.url).unwrap_or_default(),
            order.organizer,
            order.event,
            order.code
        )
    }
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `code` and `state` of the address pretix sent the browser back to.
pub fn code_of(redirect: &str) -> Option<(String, String)> {
    let query = redirect.split_once('?')?.1.split('#').next()?;
    let mut code = None;
    let mut state = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode(v);
        match k {
            "code" => code = Some(v),
            "state" => state = Some(v),
            _ => {}
        }
    }
    Some((
        code.filter(|c| !c.is_empty())?,
        state.filter(|s| !s.is_empty())?,
    ))
}

fn decode(v: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| Some(hex(*bytes.get(i + 1)?)? * 16 + hex(*bytes.get(i + 2)?)?))
            .flatten();
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The event an organiser names in a command: its URL in pretix
/// (`https://pretix.eu/<organizer>/<event>/`, anything after the event ignored) or
/// `<organizer>/<event>`.
pub fn event_of(text: &str) -> Option<(String, String)> {
    let path = match text.split_once("://") {
        Some((_, rest)) => rest.split_once('/').map_or("", |(_, path)| path),
        None => text,
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    let (organizer, event) = (parts.next()?, parts.next()?);
    (is_slug(organizer) && is_slug(event)).then(|| (organizer.to_string(), event.to_string()))
}

/// A command an organiser sent in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `!setroom <event>`: this room gets the event's paid attendees.
    SetRoom(String, String),
    /// `!unsetroom`: this room gets no more attendees.
    UnsetRoom,
    /// `!status`: the events mapped to this room, and whether pretix answers for them.
    Status,
    /// `!batchinvite <event>`: every paid order of the event, read again.
    BatchInvite(String, String),
    /// `!authorize`: a link to let Switchboard read pretix; with the address pretix sent
    /// the browser back to, when that page could not be reached.
    Authorize(Option<String>),
    /// `!help`, or anything unknown.
    Help,
    /// A command with a missing or wrong argument: its usage.
    Usage(&'static str),
}

/// The command in a message, if it is one (`!word ...`).
pub fn command(body: &str) -> Option<Command> {
    let mut words = body.split_whitespace();
    let word = words.next()?.strip_prefix('!')?.to_ascii_lowercase();
    let mut event = |usage| match words.next().and_then(event_of) {
        Some((o, e)) => Ok((o, e)),
        None => Err(Command::Usage(usage)),
    };
    Some(match word.as_str() {
        "setroom" => {
            match event("!setroom <event URL>, e.g. !setroom https://pretix.eu/democon/2027/") {
                Ok((o, e)) => Command::SetRoom(o, e),
                Err(usage) => usage,
            }
        }
        "unsetroom" => Command::UnsetRoom,
        "authorize" => Command::Authorize(words.next().map(String::from)),
        "status" => Command::Status,
        "batchinvite" => match event("!batchinvite <event URL>") {
            Ok((o, e)) => Command::BatchInvite(o, e),
            Err(usage) => usage,
        },
        _ => Command::Help,
    })
}

/// What `!help` answers.
pub const HELP: &str = "Commands (organisers only):
!authorize: a link to let Switchboard read the orders with your pretix account
!setroom <event URL>: paid attendees of the event are invited to this room
!unsetroom: this room gets no more attendees
!status: the events this room gets attendees of
!batchinvite <event URL>: invite every paid attendee of the event not invited yet
!help: this list";

/// `url` without a trailing slash, if it is an http(s) URL.
fn url_base(url: &str) -> Option<&str> {
    let base = url.trim_end_matches('/');
    let rest = base
        .strip_prefix("https://")
        .or_else(|| base.strip_prefix("http://"))?;
    (!rest.is_empty() && !rest.contains(char::is_whitespace)).then_some(base)
}

/// pretix's short forms (slugs) and order codes: letters, digits, `-`, `_` and `.`, the
/// first a letter or digit.
fn is_slug(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn is_room_id(s: &str) -> bool {
    s.strip_prefix('!')
        .is_some_and(|id| !id.is_empty() && !id.contains(char::is_whitespace))
}

/// One order, as a webhook names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct OrderRef {
    pub organizer: String,
    pub event: String,
    pub code: String,
}

impl OrderRef {
    /// The order's key in links and logs: `organizer/event/code`.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.organizer, self.event, self.code)
    }

    /// The order a key (`organizer/event/code`) names.
    pub fn from_key(key: &str) -> Option<OrderRef> {
        let mut parts = key.splitn(3, '/');
        let (o, e, c) = (parts.next()?, parts.next()?, parts.next()?);
        [o, e, c].iter().all(|p| is_slug(p)).then(|| OrderRef {
            organizer: o.into(),
            event: e.into(),
            code: c.into(),
        })
    }
}

/// pretix's webhooks: checked and stored as a trigger to read the order.
pub struct PretixHook;

impl WebhookSource for PretixHook {
    fn accept(&self, _headers: &http::HeaderMap, body: &[u8]) -> Result<Delivery, RejectReason> {
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| RejectReason::Malformed(e.to_string()))?;
        let text = |key: &str| -> Result<String, RejectReason> {
            let s = v
                .get(key)
                .and_then(|s| s.as_str())
                .ok_or_else(|| RejectReason::Unmapped(format!("`{key}` (a string) is missing")))?;
            if key != "action" && !is_slug(s) {
                return Err(RejectReason::Unmapped(format!(
                    "`{key}` is not a pretix short form or code"
                )));
            }
            Ok(s.to_string())
        };
        let order = OrderRef {
            organizer: text("organizer")?,
            event: text("event")?,
            code: text("code")?,
        };
        let action = text("action")?;
        if !action.starts_with("pretix.") {
            return Err(RejectReason::Unmapped(format!(
                "`action` is not a pretix action: `{action}`"
            )));
        }
        let notification = match v.get("notification_id") {
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            _ => {
                return Err(RejectReason::Unmapped(
                    "`notification_id` is missing".into(),
                ));
            }
        };
        let mut event = TicketEvent::new(order.key(), EventKind::Updated);
        event.status = Some(action.clone());
        event.payload = serde_json::json!({
            "organizer": order.organizer,
            "event": order.event,
            "code": order.code,
            "action": action,
        });
        Ok(Delivery {
            // pretix sends a notification again (same ID) when an attempt failed.
            dedupe_key: format!("{}/{notification}", order.key()),
            events: vec![event],
            answer: Default::default(),
        })
    }
}

/// Who belongs in which room by one order's current state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Membership {
    /// (room, user) pairs the order grants: each valid attendee of a paid order in each of
    /// their rooms. Empty for an order that is not paid.
    pub grants: BTreeSet<(String, String)>,
    /// Whether those it granted before and no longer grants should leave: the order (or a
    /// position) was canceled or expired. False while it is pending: nothing was granted.
    pub revoke: bool,
    /// Answers that are not Matrix user IDs: (position ID, answer as given); an empty
    /// answer is a paid position that gave none.
    pub invalid: Vec<(u64, String)>,
    /// The order's status as pretix gives it (`n`, `p`, `e`, `c`).
    pub status: String,
}

/// What an order (pretix's JSON) means for the event's rooms.
pub fn membership(order: &serde_json::Value, rooms: &EventRooms, question: &str) -> Membership {
    let status = order["status"].as_str().unwrap_or_default().to_string();
    let paid = status == "p";
    let mut out = Membership {
        revoke: status == "c" || status == "e" || paid,
        status,
        ..Membership::default()
    };
    let positions = order["positions"].as_array().into_iter().flatten();
    for position in positions.filter(|p| p["canceled"] != true) {
        let id = position["positionid"].as_u64().unwrap_or_default();
        let answer = position["answers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["question_identifier"] == question)
            .and_then(|a| a["answer"].as_str())
            .map(str::trim)
            .filter(|a| !a.is_empty());
        let Some(answer) = answer else {
            // Nobody to invite: the organisers hear of it once the order is paid.
            if paid {
                out.invalid.push((id, String::new()));
            }
            continue;
        };
        if !switchboard_connector::is_matrix_user_id(answer) {
            out.invalid.push((id, answer.to_string()));
            continue;
        }
        if !paid {
            continue;
        }
        let item = position["item"].to_string();
        let variation = format!("{item}/{}", position["variation"]);
        let extra = [&item, &variation]
            .into_iter()
            .filter_map(|k| rooms.items.get(k))
            .flatten();
        for room in rooms.rooms.iter().chain(extra) {
            out.grants.insert((room.clone(), answer.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rooms() -> EventRooms {
        serde_json::from_value(json!({
            "organizer": "switchboard", "event": "conf",
            "rooms": ["!all"], "items": {"2": ["!free"]}, "management_room": "!mgmt",
        }))
        .expect("rooms")
    }

    fn order() -> serde_json::Value {
        serde_json::from_str(include_str!("../fixtures/order-paid.json")).expect("fixture")
    }

    #[test]
    fn a_paid_order_grants_its_valid_attendees_and_names_the_invalid_ones() {
        let m = membership(&order(), &rooms(), "matrix");
        assert_eq!(m.status, "p");
        assert_eq!(
            m.grants,
            BTreeSet::from([("!all".to_string(), "@alice:example.org".to_string())])
        );
        assert_eq!(
            m.invalid,
            [(2, "alice".to_string()), (3, String::new())],
            "an invalid answer, and none"
        );
        assert!(m.revoke);
        assert!(
            membership(&order(), &rooms(), "other").grants.is_empty(),
            "another question"
        );
    }

    #[test]
    fn pending_canceled_and_per_product_rooms() {
        let mut pending = order();
        pending["status"] = json!("n");
        let m = membership(&pending, &rooms(), "matrix");
        assert!(m.grants.is_empty() && !m.revoke, "{m:?}");
        assert_eq!(
            m.invalid,
            [(2, "alice".to_string())],
            "a bad answer is reported before payment, a missing one once paid"
        );

        let mut canceled = order();
        canceled["status"] = json!("c");
        let m = membership(&canceled, &rooms(), "matrix");
        assert!(m.grants.is_empty() && m.revoke);

        let mut free = order();
        free["positions"][0]["item"] = json!(2);
        let m = membership(&free, &rooms(), "matrix");
        let rooms_of_alice: Vec<&str> = m.grants.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(rooms_of_alice, ["!all", "!free"]);

        let mut variant = order();
        variant["positions"][0]["variation"] = json!(7);
        let mut with_variation = rooms();
        with_variation
            .items
            .insert("1/7".into(), vec!["!vip".into()]);
        let m = membership(&variant, &with_variation, "matrix");
        let rooms_of_alice: Vec<&str> = m.grants.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(rooms_of_alice, ["!all", "!vip"]);

        let mut one_canceled = order();
        one_canceled["positions"][0]["canceled"] = json!(true);
        let m = membership(&one_canceled, &rooms(), "matrix");
        assert!(m.grants.is_empty() && m.revoke);
    }

    #[test]
    fn webhooks_are_checked_and_keyed_by_notification() {
        let body = json!({"notification_id": 10, "organizer": "switchboard", "event": "conf",
                          "code": "RDMAK", "action": "pretix.event.order.paid"});
        let d = PretixHook
            .accept(&http::HeaderMap::new(), body.to_string().as_bytes())
            .expect("accepted");
        assert_eq!(d.dedupe_key, "switchboard/conf/RDMAK/10");
        assert_eq!(d.events[0].ticket, "switchboard/conf/RDMAK");
        assert_eq!(
            OrderRef::from_key(&d.events[0].ticket).map(|o| o.code),
            Some("RDMAK".to_string())
        );
        for (bad, why) in [
            (json!({"organizer": "o"}), "missing"),
            (
                json!({"notification_id": 1, "organizer": "../x", "event": "e", "code": "C",
                       "action": "pretix.event.order.paid"}),
                "short form",
            ),
            (
                json!({"notification_id": 1, "organizer": "o", "event": "e", "code": "C",
                       "action": "order.paid"}),
                "not a pretix action",
            ),
            (
                json!({"organizer": "o", "event": "e", "code": "C",
                       "action": "pretix.event.order.paid"}),
                "notification_id",
            ),
        ] {
            match PretixHook.accept(&http::HeaderMap::new(), bad.to_string().as_bytes()) {
                Err(RejectReason::Unmapped(m)) => assert!(m.contains(why), "{m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(matches!(
            PretixHook.accept(&http::HeaderMap::new(), b"{"),
            Err(RejectReason::Malformed(_))
        ));
    }

    #[test]
    fn commands_and_event_urls() {
        assert_eq!(
            command("!setroom https://pretix.eu/democon/2027/"),
            Some(Command::SetRoom("democon".into(), "2027".into()))
        );
        assert_eq!(
            command("!BatchInvite http://127.0.0.1:8000/o/e/order/ABC/?x=1"),
            Some(Command::BatchInvite("o".into(), "e".into()))
        );
        assert_eq!(
            event_of("democon/2027"),
            Some(("democon".into(), "2027".into()))
        );
        assert_eq!(event_of("https://pretix.eu/democon/"), None);
        assert!(matches!(command("!setroom"), Some(Command::Usage(_))));
        assert!(matches!(
            command("!setroom https://pretix.eu/../x/"),
            Some(Command::Usage(_))
        ));
        assert_eq!(command("!unsetroom"), Some(Command::UnsetRoom));
        assert_eq!(command("!status"), Some(Command::Status));
        assert_eq!(command("!whatever"), Some(Command::Help));
        assert_eq!(command("hello !status"), None);
        assert_eq!(command("!authorize"), Some(Command::Authorize(None)));
        assert_eq!(
            code_of("http://sb.example/oauth/pretix/px/callback?code=ab%2Bc&state=s1"),
            Some(("ab+c".into(), "s1".into()))
        );
        assert_eq!(
            code_of("http://sb.example/callback?error=access_denied"),
            None
        );
        let cfg: PretixConfig = serde_json::from_value(json!({
            "url": "https://pretix.eu",
            "oauth": {"client_id": "cid", "client_secret": "x", "public_url": "https://sb.example/"},
        }))
        .expect("config");
        let url = cfg.authorize_url("px", "st").expect("oauth");
        assert_eq!(
            url,
            "https://pretix.eu/api/v1/oauth/authorize?client_id=cid&response_type=code&scope=read\
             &state=st&approval_prompt=force\
             &redirect_uri=https%3A%2F%2Fsb.example%2Foauth%2Fpretix%2Fpx%2Fcallback"
        );
        assert!(!format!("{cfg:?}").contains("\"x\""));
    }

    #[test]
    fn config_problems_name_their_keys() {
        let cfg: PretixConfig = serde_json::from_value(json!({
            "url": "pretix.example.org",
            "events": [{"organizer": "o", "event": "e v", "rooms": ["#alias:x"]},
                       {"organizer": "o", "event": "e"}],
        }))
        .expect("config");
        let keys: Vec<String> = cfg.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            ["url", "events.0.event", "events.0.rooms", "events.1.rooms"]
        );
        let ok: PretixConfig = serde_json::from_value(json!({
            "url": "https://pretix.eu/", "api_token": "t",
            "events": [{"organizer": "o", "event": "e", "rooms": ["!r"]}],
        }))
        .expect("config");
        assert!(ok.problems().is_empty());
        let order = OrderRef {
            organizer: "o".into(),
            event: "e".into(),
            code: "ABC12".into(),
        };
        assert_eq!(
            ok.order_url(&order),
            "https://pretix.eu/api/v1/organizers/o/events/e/orders/ABC12/"
        );
        assert!(!format!("{ok:?}").contains("\"t\""), "no token in Debug");
        assert_eq!(
            ok.orders_url(&ok.events[0], "2026-12-01T00:00:00.5+00:00"),
            "https://pretix.eu/api/v1/organizers/o/events/e/orders/?ordering=last_modified\
             &modified_since=2026-12-01T00%3A00%3A00.5%2B00%3A00"
        );
        assert!(!ok.orders_url(&ok.events[0], "").contains("modified_since"));
    }

    proptest::proptest! {
        /// Any bytes, and any JSON with the fields pretix sends: an answer, never a panic.
        #[test]
        fn any_trigger_gets_an_answer(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
            code in "(?s).{0,20}", organizer in "(?s).{0,20}", event in "(?s).{0,20}",
            action in "(?s).{0,30}", id in proptest::num::i64::ANY,
        ) {
            let _ = PretixHook.accept(&http::HeaderMap::new(), &body);
            let v = serde_json::json!({"notification_id": id, "organizer": organizer,
                "event": event, "code": code, "action": action});
            let _ = PretixHook.accept(&http::HeaderMap::new(), v.to_string().as_bytes());
        }
    }
}
