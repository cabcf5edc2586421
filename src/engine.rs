//! Rules: turn accepted ticket events into actions, and move deliveries from the inbox to the
//! outbox in one transaction each.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use minijinja::Environment;
use serde_json::{Value, json};
use switchboard_connector::{Action, Connector, EventKind, Queued, RoomSpec, TicketEvent, lookup};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::config::{self, ActionConfig, Config, RuleConfig};
use crate::metrics::Metrics;
use crate::store::{InboxRow, Link, NewAction, Store};

/// The compiled rules.
pub struct Engine {
    rules: Vec<RuleConfig>,
    env: Environment<'static>,
    encryption: bool,
    /// Each source's connector, which may plan its events itself (`Connector::plan`).
    connectors: HashMap<String, Arc<dyn Connector>>,
}

/// The rules used when the config has none: a room per ticket, messages posted into it,
/// and a notice plus a rename on close.
pub fn default_rules() -> Vec<RuleConfig> {
    vec![
        RuleConfig {
            source: None,
            on: vec![EventKind::Opened, EventKind::Updated],
            when: Default::default(),
            actions: vec![
                ActionConfig::OpenRoom {
                    name: config::default_room_name(),
                    topic: config::default_room_topic(),
                    preset: Default::default(),
                    encrypted: None,
                    invite: Vec::new(),
                    reopen_notice: config::default_reopen_notice(),
                },
                ActionConfig::Post {
                    message: "{{ ticket.body }}".into(),
                    notice: false,
                },
            ],
            stop: false,
        },
        RuleConfig {
            source: None,
            on: vec![EventKind::Closed],
            when: Default::default(),
            actions: vec![
                ActionConfig::Post {
                    message: "{{ ticket.body }}".into(),
                    notice: false,
                },
                ActionConfig::Close {
                    notice: config::default_close_notice(),
                    rename: config::default_close_name(),
                },
            ],
            stop: false,
        },
    ]
}

impl Engine {
    pub fn new(config: &Config, connectors: HashMap<String, Arc<dyn Connector>>) -> Engine {
        let rules = if config.rules.is_empty() {
            default_rules()
        } else {
            config.rules.clone()
        };
        // Templates are named by their own text, so each is compiled once however often
        // it appears.
        let mut env = Environment::new();
        // Messages are plain text: no escaping, whatever the template's text ends with.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        for t in rules
            .iter()
            .flat_map(|r| &r.actions)
            .flat_map(|a| a.templates())
        {
            if env.get_template(t.1).is_err()
                && let Err(error) = env.add_template_owned(t.1.to_string(), t.1.to_string())
            {
                warn!(%error, template = t.1, "template does not compile");
            }
        }
        Engine {
            rules,
            env,
            encryption: config.matrix.encryption,
            connectors,
        }
    }

    /// The actions for one event, in order.
    pub fn actions(&self, source_id: &str, event: &TicketEvent) -> Vec<Action> {
        let ctx = context(source_id, event);
        // Converted once per event, not once per template.
        let tctx = minijinja::Value::from(minijinja::value::Serde(&ctx));
        let mut out = Vec::new();
        for rule in &self.rules {
            if !matches(rule, source_id, event, &ctx) {
                continue;
            }
            for a in &rule.actions {
                match self.action(a, event, &tctx) {
                    Ok(Some(action)) => out.push(action),
                    Ok(None) => {}
                    Err(error) => {
                        warn!(source = source_id, ticket = %event.ticket, %error, "template failed; action skipped")
                    }
                }
            }
            if rule.stop {
                break;
            }
        }
        out
    }

    fn render(&self, tpl: &str, ctx: &minijinja::Value) -> Result<String, minijinja::Error> {
        Ok(self.env.get_template(tpl)?.render(ctx)?.trim().to_string())
    }

    fn action(
        &self,
        a: &ActionConfig,
        event: &TicketEvent,
        ctx: &minijinja::Value,
    ) -> Result<Option<Action>, minijinja::Error> {
        Ok(match a {
            ActionConfig::OpenRoom {
                name,
                topic,
                preset,
                encrypted,
                invite,
                reopen_notice,
            } => {
                let mut users: Vec<String> = event.participants.clone();
                for t in invite {
                    let u = self.render(t, ctx)?;
                    if switchboard_connector::is_matrix_user_id(&u) {
                        users.push(u);
                    } else if !u.is_empty() {
                        warn!(user = %u, "invite template did not render a Matrix user ID");
                    }
                }
                users.extend(event.owner.iter().cloned());
                let mut seen = std::collections::HashSet::new();
                users.retain(|u| seen.insert(u.clone()));
                Some(Action::OpenRoom(RoomSpec {
                    name: self.render(name, ctx)?,
                    topic: self.render(topic, ctx)?,
                    preset: serde_json::to_value(preset)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_else(|| "private_chat".into()),
                    encrypted: encrypted.unwrap_or(self.encryption),
                    invite: users,
                    admins: event.owner.iter().cloned().collect(),
                    reopen_notice: Some(self.render(reopen_notice, ctx)?).filter(|n| !n.is_empty()),
                }))
            }
            ActionConfig::Post { message, notice } => {
                let body = self.render(message, ctx)?;
                (!body.is_empty()).then_some(Action::Post {
                    body,
                    notice: *notice,
                })
            }
            ActionConfig::Close { notice, rename } => {
                let notice = self.render(notice, ctx)?;
                let rename = self.render(rename, ctx)?;
                Some(Action::Close {
                    notice: (!notice.is_empty()).then_some(notice),
                    rename: (!rename.is_empty()).then_some(rename),
                })
            }
        })
    }
}

/// The template context: `ticket`, `event`, `source` and the raw `payload`. Absent ticket
/// fields are left out (undefined renders empty; `null` would render as "none").
fn context(source_id: &str, e: &TicketEvent) -> Value {
    let mut ticket = json!({
        "key": e.ticket,
        "title": e.title,
        "url": e.url,
        "status": e.status,
        "owner": e.owner,
        "participants": e.participants,
        "body": e.body,
    });
    if let Value::Object(map) = &mut ticket {
        map.retain(|_, v| !v.is_null());
    }
    json!({
        "ticket": ticket,
        "event": { "kind": e.kind.as_str() },
        "source": { "id": source_id },
        "payload": e.payload,
    })
}

fn matches(rule: &RuleConfig, source_id: &str, event: &TicketEvent, ctx: &Value) -> bool {
    if rule.source.as_deref().is_some_and(|s| s != source_id) {
        return false;
    }
    if !rule.on.is_empty() && !rule.on.contains(&event.kind) {
        return false;
    }
    rule.when.iter().all(|(path, want)| {
        let got = match lookup(ctx, path) {
            None | Some(Value::Null) => return false,
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        want == "*" || got.eq_ignore_ascii_case(want)
    })
}

/// Failed tries after which a delivery the engine cannot turn into actions is set aside.
pub const MAX_DELIVERY_TRIES: i64 = 3;

/// Moves deliveries from the inbox to the outbox until the process stops.
pub async fn run(
    engine: Arc<Engine>,
    store: Store,
    wake: Arc<Notify>,
    outbox_wake: Arc<Notify>,
    metrics: Metrics,
) {
    loop {
        match drain(&engine, &store, &metrics).await {
            Ok(Drained { troubled: true, .. }) => {
                // A delivery failed and will be tried again: not at once, so a database
                // that refuses it for a moment has that moment.
                outbox_wake.notify_one();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(Drained { deliveries: 0, .. }) => {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            Ok(Drained { deliveries, .. }) => {
                debug!(deliveries, "queued actions");
                outbox_wake.notify_one();
            }
            Err(error) => {
                warn!(%error, "engine cannot reach the database; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// What one `drain` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Deliveries looked at.
    pub deliveries: usize,
    /// Some could not be turned into actions and wait for another try.
    pub troubled: bool,
}

/// Processes one batch of deliveries, in one transaction while the database takes them.
/// A delivery it refuses (one that cannot be planned, or whose actions cannot be stored)
/// does not hold up the others: the batch is then stored one delivery at a time, and the
/// refused one is tried again, then set aside after `MAX_DELIVERY_TRIES`.
pub async fn drain(
    engine: &Engine,
    store: &Store,
    metrics: &Metrics,
) -> crate::store::Result<Drained> {
    let rows = store.unprocessed(200).await?;
    // Rooms known at the start of the batch, for skipping open_room where it would do nothing.
    let mut links: HashMap<(String, String), Option<Link>> = HashMap::new();
    let mut batch = Vec::with_capacity(rows.len());
    let mut refused: Vec<(&InboxRow, String)> = Vec::new();
    for row in &rows {
        match plan(engine, store, metrics, row, &mut links).await {
            Ok(actions) => batch.push((row.id, actions)),
            Err(e) if e.is_refusal() => refused.push((row, e.to_string())),
            Err(e) => return Err(e),
        }
    }
    match store.commit_actions(&batch).await {
        Ok(()) => {}
        Err(e) if e.is_refusal() => {
            for one in &batch {
                match store.commit_actions(std::slice::from_ref(one)).await {
                    Ok(()) => {}
                    Err(e) if e.is_refusal() => {
                        if let Some(row) = rows.iter().find(|r| r.id == one.0) {
                            refused.push((row, e.to_string()));
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Err(e) => return Err(e),
    }
    let troubled = !refused.is_empty();
    for (row, error) in refused {
        if store
            .delivery_failed(row.id, &error, MAX_DELIVERY_TRIES)
            .await?
        {
            warn!(
                inbox_id = row.id,
                source = %row.source_id,
                %error,
                "delivery set aside: its actions cannot be queued (`switchboard failed` \
                 lists it, `switchboard retry` tries it again)"
            );
            metrics
                .set_aside
                .with_label_values(&[&row.source_id, "delivery"])
                .inc();
        } else {
            warn!(inbox_id = row.id, source = %row.source_id, %error, "cannot queue a delivery's actions; trying again");
        }
    }
    Ok(Drained {
        deliveries: rows.len(),
        troubled,
    })
}

/// One delivery's actions, in order.
async fn plan(
    engine: &Engine,
    store: &Store,
    metrics: &Metrics,
    row: &InboxRow,
    links: &mut HashMap<(String, String), Option<Link>>,
) -> crate::store::Result<Vec<NewAction>> {
    // Intake wrote this; a row that does not parse (a bug, or an edited row) is refused
    // and set aside, not skipped.
    let events: Vec<TicketEvent> = serde_json::from_str(&row.events)?;
    let mut actions = Vec::new();
    let connector = engine.connectors.get(&row.source_id);
    for ev in &events {
        // A connector that plans its events itself; otherwise the rules do.
        if let Some(connector) = connector
            && let Some(planned) = connector.plan(ev).await?
        {
            for q in &planned {
                actions.push(queued_own(metrics, &row.source_id, q));
            }
            continue;
        }
        for a in engine.actions(&row.source_id, ev) {
            match &a {
                Action::OpenRoom(spec) => {
                    let link = batch_link(links, store, &row.source_id, &ev.ticket).await?;
                    // Each participant not invited before is invited by an action of their
                    // own, after the room exists and before anything is posted (so that in
                    // an encrypted room they get the messages' keys).
                    let invites: Vec<Action> = spec
                        .invite
                        .iter()
                        .filter(|u| !link.as_ref().is_some_and(|l| l.invited.contains(u)))
                        .map(|u| Action::Participant { user: u.clone() })
                        .collect();
                    let open = link.as_ref().is_some_and(|l| !l.closed);
                    // Later actions in the batch see the room open, with everyone invited.
                    let seen = link.get_or_insert_with(|| Link {
                        source_id: row.source_id.clone(),
                        ticket_key: ev.ticket.clone(),
                        room_id: String::new(),
                        thread_id: None,
                        invited: Vec::new(),
                        closed: false,
                    });
                    seen.closed = false;
                    seen.invited.extend(spec.invite.iter().cloned());
                    if !open {
                        actions.push(queued(metrics, &row.source_id, ev.ticket.clone(), &a)?);
                    }
                    for invite in &invites {
                        actions.push(queued(metrics, &row.source_id, ev.ticket.clone(), invite)?);
                    }
                    continue;
                }
                Action::Close { .. } => {
                    // The room is closed once this action runs: an open_room after it
                    // in the batch must not be skipped.
                    let link = batch_link(links, store, &row.source_id, &ev.ticket).await?;
                    if let Some(l) = link {
                        l.closed = true;
                    }
                }
                Action::Post { .. }
                | Action::Send { .. }
                | Action::Invite { .. }
                | Action::Participant { .. }
                | Action::Leave { .. }
                | Action::Kick { .. } => {}
            }
            actions.push(queued(metrics, &row.source_id, ev.ticket.clone(), &a)?);
        }
    }
    Ok(actions)
}

/// An action to queue in a ticket's lane, counted.
fn queued(
    metrics: &Metrics,
    source_id: &str,
    ticket_key: String,
    action: &Action,
) -> serde_json::Result<NewAction> {
    metrics
        .actions_queued
        .with_label_values(&[action.kind()])
        .inc();
    Ok(NewAction {
        source_id: source_id.to_string(),
        ticket_key,
        action: serde_json::to_string(action)?,
    })
}

/// A connector's action to queue in its lane, counted.
fn queued_own(metrics: &Metrics, source_id: &str, q: &Queued) -> NewAction {
    metrics.actions_queued.with_label_values(&[q.kind()]).inc();
    NewAction {
        source_id: source_id.to_string(),
        ticket_key: q.lane.clone(),
        action: q.action.to_string(),
    }
}

/// A ticket's room as the batch being processed sees it: read from the store the first
/// time, then as the batch's earlier actions left it.
async fn batch_link<'a>(
    links: &'a mut HashMap<(String, String), Option<Link>>,
    store: &Store,
    source_id: &str,
    ticket: &str,
) -> crate::store::Result<&'a mut Option<Link>> {
    let key = (source_id.to_string(), ticket.to_string());
    if !links.contains_key(&key) {
        let link = store.link(source_id, ticket).await?;
        links.insert(key.clone(), link);
    }
    Ok(links.entry(key).or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(rules: &str) -> Engine {
        let text = format!(
            "[matrix]\nhomeserver = \"http://h\"\nuser = \"bot\"\npassword = \"p\"\n\
             [sources.t]\nkind = \"webhook\"\n{rules}"
        );
        let loaded = crate::config::parse(&text).expect("valid config");
        Engine::new(&loaded.config, HashMap::new())
    }

    fn event(kind: EventKind) -> TicketEvent {
        TicketEvent {
            title: Some("Printer on fire".into()),
            url: Some("https://t/7".into()),
            owner: Some("@o:hs".into()),
            participants: vec!["@a:hs".into(), "@o:hs".into()],
            body: Some("It smokes".into()),
            payload: json!({"queue": "IT"}),
            ..TicketEvent::new("7", kind)
        }
    }

    #[test]
    fn default_rules_open_post_and_close() {
        let e = engine("");
        let acts = e.actions("t", &event(EventKind::Opened));
        assert_eq!(acts.len(), 2);
        let Action::OpenRoom(spec) = &acts[0] else {
            panic!("expected open_room, got {acts:?}")
        };
        assert_eq!(spec.name, "Printer on fire");
        assert_eq!(spec.topic, "Printer on fire · https://t/7");
        assert_eq!(spec.invite, vec!["@a:hs", "@o:hs"]);
        assert_eq!(spec.admins, vec!["@o:hs"]);
        assert!(spec.encrypted);
        assert_eq!(
            acts[1],
            Action::Post {
                body: "It smokes".into(),
                notice: false
            }
        );
        let closed = e.actions("t", &event(EventKind::Closed));
        assert!(
            matches!(&closed[1], Action::Close { rename: Some(n), .. } if n == "[closed] Printer on fire")
        );
    }

    #[tokio::test]
    async fn a_room_closed_earlier_in_the_batch_is_reopened() {
        let dir =
            std::env::temp_dir().join(format!("switchboard-engine-{}", rand::random::<u64>()));
        let store = Store::connect(&Store::sqlite_url(&dir), None)
            .await
            .expect("store");
        store
            .insert_link(&Link {
                source_id: "t".into(),
                ticket_key: "7".into(),
                room_id: "!r:hs".into(),
                thread_id: None,
                invited: vec!["@a:hs".into(), "@o:hs".into()],
                closed: false,
            })
            .await
            .expect("link");
        // An update for the open room, the close, and an update after it: one batch.
        for (key, kind) in [
            ("d1", EventKind::Updated),
            ("d2", EventKind::Closed),
            ("d3", EventKind::Updated),
        ] {
            let events = serde_json::to_string(&vec![event(kind)]).expect("json");
            store.accept("t", key, &events).await.expect("accept");
        }
        assert_eq!(
            drain(&engine(""), &store, &Metrics::new())
                .await
                .expect("drain")
                .deliveries,
            3
        );
        let lease = Duration::from_secs(60);
        let head = store.claim(10, lease).await.expect("claim");
        let rest = store
            .lease_following(&head[0], 10, lease)
            .await
            .expect("lease");
        let kinds: Vec<String> = head
            .iter()
            .chain(&rest)
            .map(|r| {
                let a: Action = serde_json::from_str(&r.action).expect("action");
                a.kind().to_string()
            })
            .collect();
        // The first open_room is skipped (the room is open, everyone invited); the one
        // after the close is not: it reopens the room.
        assert_eq!(kinds, ["post", "post", "close", "open_room", "post"]);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A delivery the database refuses (a NUL in the ticket key on PostgreSQL, written past
    /// intake's checks) or that does not parse is tried `MAX_DELIVERY_TRIES` times and set
    /// aside; the deliveries around it are queued at once, and an operator's retry brings it
    /// back.
    #[tokio::test]
    async fn a_refused_delivery_is_set_aside_and_the_others_go_on() {
        for store in crate::store::tests::stores().await {
            let pg = store.dialect() == crate::store::Dialect::Postgres;
            let good = |key: &str| {
                serde_json::to_string(&vec![TicketEvent {
                    body: Some(format!("hello {key}")),
                    ..TicketEvent::new(key, EventKind::Updated)
                }])
                .expect("json")
            };
            store.accept("t", "d1", &good("A")).await.expect("accept");
            let poison = if pg {
                good("P\u{0}1")
            } else {
                "[{\"not\": \"an event\"}]".to_string()
            };
            let bad = store.accept("t", "d2", &poison).await.expect("accept");
            store.accept("t", "d3", &good("B")).await.expect("accept");
            let (engine, metrics) = (engine(""), Metrics::new());
            let first = drain(&engine, &store, &metrics).await.expect("drain");
            assert_eq!((first.deliveries, first.troubled), (3, true));
            // The two good deliveries are queued at once: open_room and post each.
            assert_eq!(store.pending_actions().await.expect("count"), 4);
            for _ in 1..MAX_DELIVERY_TRIES {
                let again = drain(&engine, &store, &metrics).await.expect("drain");
                assert_eq!(again.deliveries, 1);
            }
            // Set aside: no longer tried, listed with its error, counted.
            let idle = drain(&engine, &store, &metrics).await.expect("drain");
            assert_eq!((idle.deliveries, idle.troubled), (0, false));
            let problems = store.problems(Some("t"), None, 10).await.expect("problems");
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].id, format!("delivery:{}", bad.id));
            assert_eq!(problems[0].tries, MAX_DELIVERY_TRIES);
            assert!(!problems[0].error.is_empty());
            let counts = store.problem_counts().await.expect("counts");
            assert_eq!(counts.deliveries.get("t"), Some(&1));
            assert!(
                metrics
                    .render()
                    .contains("switchboard_set_aside_total{item=\"delivery\",source=\"t\"} 1")
            );
            // The operator's retry puts it back; it fails again (nothing was mended).
            let n = store
                .retry_problems(&crate::store::Retry::One(problems[0].id.clone()))
                .await
                .expect("retry");
            assert_eq!(n, 1);
            let back = drain(&engine, &store, &metrics).await.expect("drain");
            assert_eq!((back.deliveries, back.troubled), (1, true));
            assert_eq!(store.pending_actions().await.expect("count"), 4);
        }
    }

    #[test]
    fn empty_messages_are_not_posted() {
        let e = engine("");
        let mut ev = event(EventKind::Updated);
        ev.body = None;
        let acts = e.actions("t", &ev);
        assert_eq!(acts.len(), 1, "{acts:?}");
    }

    #[test]
    fn templates_are_never_escaped() {
        let e = engine(
            "[[rules]]\nactions = [{ type = \"post\", message = \"<{{ ticket.title }}> in a.html\" }]\n",
        );
        let mut ev = event(EventKind::Updated);
        ev.title = Some("Disk <full> & \"hot\"".into());
        let acts = e.actions("t", &ev);
        assert_eq!(
            acts,
            vec![Action::Post {
                body: "<Disk <full> & \"hot\"> in a.html".into(),
                notice: false
            }]
        );
    }

    #[test]
    fn conditions_and_sources_filter_rules() {
        let e = engine(
            "[[rules]]\nsource = \"t\"\nwhen = { \"payload.queue\" = \"it\" }\n\
             actions = [{ type = \"post\", message = \"IT: {{ ticket.title }}\", notice = true }]\n\
             [[rules]]\nwhen = { \"payload.queue\" = \"sales\" }\n\
             actions = [{ type = \"post\", message = \"sales\" }]\n",
        );
        let acts = e.actions("t", &event(EventKind::Updated));
        assert_eq!(
            acts,
            vec![Action::Post {
                body: "IT: Printer on fire".into(),
                notice: true
            }]
        );
        assert!(e.actions("other", &event(EventKind::Updated)).is_empty());
    }
}
