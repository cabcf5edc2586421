//! Doubles for connectors' unit tests, without a homeserver: a host whose settings, cursors,
//! inbox and outbox are in memory and whose database is a real SQLite (or PostgreSQL) one
//! with the connector's migrations, and a Matrix that remembers what was done to it and answers a
//! repeated transaction ID with the first event, as a homeserver does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::Value;

use crate::action::{Queued, RoomSpec};
use crate::db::{Accepted, ActionRow, DbError, Dialect};
use crate::event::TicketEvent;
use crate::failure::Failure;
use crate::host::{ActAs, Host, Matrix};

/// A host in memory, over a fresh SQLite database.
pub struct TestHost {
    pool: sqlx::AnyPool,
    dialect: Dialect,
    http: reqwest::Client,
    registry: prometheus::Registry,
    pub settings: Mutex<BTreeMap<String, String>>,
    pub cursors: Mutex<BTreeMap<String, String>>,
    /// Deliveries, in order: (source, dedupe key, events).
    pub inbox: Mutex<Vec<(String, String, Vec<TicketEvent>)>>,
    /// Actions queued with `queue_after`, in order (whether or not their transaction
    /// committed: tests look at what was asked).
    pub queued: Mutex<Vec<Queued>>,
    /// Ticket rooms: room -> (source, ticket).
    pub links: Mutex<BTreeMap<String, (String, String)>>,
    /// Followers by followed source.
    pub followers: Mutex<BTreeMap<String, Vec<String>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TestHost {
    /// A host whose database has the tables of `migrations` (a connector's, for SQLite).
    pub async fn new(
        migrations: Option<&'static sqlx::migrate::Migrator>,
    ) -> Result<TestHost, DbError> {
        sqlx::any::install_default_drivers();
        // One connection: every connection to `sqlite::memory:` is a database of its own.
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await?;
        TestHost::over(pool, Dialect::Sqlite, migrations).await
    }

    /// A host over a fresh PostgreSQL database (made on the server
    /// `SWITCHBOARD_TEST_POSTGRES` names, the local one by default) with the tables of
    /// `migrations` (a connector's, for PostgreSQL).
    pub async fn postgres(
        migrations: Option<&'static sqlx::migrate::Migrator>,
    ) -> Result<TestHost, DbError> {
        use sqlx::Connection;
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        sqlx::any::install_default_drivers();
        let base = std::env::var("SWITCHBOARD_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!(
            "switchboard_unit_{}_{}_{n}",
            std::process::id(),
            crate::db::now_ms()
        );
        let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres")).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await?;
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(4)
            .connect(&format!("{base}/{name}"))
            .await?;
        TestHost::over(pool, Dialect::Postgres, migrations).await
    }

    async fn over(
        pool: sqlx::AnyPool,
        dialect: Dialect,
        migrations: Option<&'static sqlx::migrate::Migrator>,
    ) -> Result<TestHost, DbError> {
        if let Some(m) = migrations {
            m.run(&pool)
                .await
                .map_err(|e| DbError::Db(sqlx::Error::Migrate(Box::new(e))))?;
        }
        Ok(TestHost {
            pool,
            dialect,
            http: reqwest::Client::new(),
            registry: prometheus::Registry::new(),
            settings: Mutex::default(),
            cursors: Mutex::default(),
            inbox: Mutex::default(),
            queued: Mutex::default(),
            links: Mutex::default(),
            followers: Mutex::default(),
        })
    }

    /// The actions queued so far, taken.
    pub fn take_queued(&self) -> Vec<Queued> {
        std::mem::take(&mut *lock(&self.queued))
    }

    /// Records that `room` is the room of `source`'s `ticket` (as the service's
    /// `open_room` would).
    pub fn link(&self, source: &str, ticket: &str, room: &str) {
        lock(&self.links).insert(room.into(), (source.into(), ticket.into()));
    }

    /// The deliveries so far, taken.
    pub fn take_inbox(&self) -> Vec<(String, String, Vec<TicketEvent>)> {
        std::mem::take(&mut *lock(&self.inbox))
    }
}

#[async_trait]
impl Host for TestHost {
    fn pool(&self) -> &sqlx::AnyPool {
        &self.pool
    }
    fn dialect(&self) -> Dialect {
        self.dialect
    }
    async fn setting(&self, key: &str) -> Result<Option<String>, DbError> {
        Ok(lock(&self.settings).get(key).cloned())
    }
    async fn set_setting(&self, key: &str, value: &str) -> Result<(), DbError> {
        lock(&self.settings).insert(key.into(), value.into());
        Ok(())
    }
    async fn delete_setting(&self, key: &str) -> Result<bool, DbError> {
        Ok(lock(&self.settings).remove(key).is_some())
    }
    async fn cursor(&self, name: &str) -> Result<Option<String>, DbError> {
        Ok(lock(&self.cursors).get(name).cloned())
    }
    async fn set_cursor(&self, name: &str, value: &str) -> Result<(), DbError> {
        lock(&self.cursors).insert(name.into(), value.into());
        Ok(())
    }
    async fn deliver(
        &self,
        source_id: &str,
        dedupe_key: &str,
        events: &[TicketEvent],
    ) -> Result<Accepted, DbError> {
        let mut inbox = lock(&self.inbox);
        if let Some(i) = inbox
            .iter()
            .position(|(s, k, _)| s == source_id && k == dedupe_key)
        {
            return Ok(Accepted {
                id: i as i64 + 1,
                duplicate: true,
            });
        }
        inbox.push((source_id.into(), dedupe_key.into(), events.to_vec()));
        Ok(Accepted {
            id: inbox.len() as i64,
            duplicate: false,
        })
    }
    async fn queue_after(
        &self,
        _tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        _row: &ActionRow,
        actions: &[Queued],
    ) -> Result<(), DbError> {
        lock(&self.queued).extend(actions.iter().cloned());
        Ok(())
    }
    fn followers(&self, source: &str) -> Vec<String> {
        lock(&self.followers)
            .get(source)
            .cloned()
            .unwrap_or_default()
    }
    async fn ticket_of_room(&self, room: &str) -> Result<Option<(String, String)>, DbError> {
        Ok(lock(&self.links).get(room).cloned())
    }
    async fn room_of_ticket(&self, source: &str, ticket: &str) -> Result<Option<String>, DbError> {
        Ok(lock(&self.links)
            .iter()
            .find(|(_, (s, t))| s == source && t == ticket)
            .map(|(room, _)| room.clone()))
    }
    fn seal(&self, purpose: &str, plain: &str) -> String {
        format!("sealed:{purpose}:{plain}")
    }
    fn open(&self, purpose: &str, stored: &str) -> Result<String, String> {
        let prefix = format!("sealed:{purpose}:");
        Ok(stored.strip_prefix(&prefix).unwrap_or(stored).to_string())
    }
    fn data_secret(&self) -> Option<&str> {
        None
    }
    fn http(&self) -> &reqwest::Client {
        &self.http
    }
    fn registry(&self) -> &prometheus::Registry {
        &self.registry
    }
}

/// One event the double was asked to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    pub room: String,
    pub event_type: String,
    pub content: Value,
    pub txn: String,
}

/// Matrix in memory.
#[derive(Default)]
pub struct TestMatrix {
    /// Events sent, in order; a repeated transaction ID sends nothing.
    pub sent: Mutex<Vec<Sent>>,
    /// Memberships by (room, user).
    pub members: Mutex<HashMap<(String, String), String>>,
    /// State by (room, type, state key).
    pub state: Mutex<HashMap<(String, String, String), Value>>,
    /// Rooms created, by alias key.
    pub rooms: Mutex<BTreeMap<String, (String, RoomSpec)>>,
}

impl TestMatrix {
    pub const BOT: &'static str = "@bot:test";

    /// The bodies of the messages sent into `room`, in order.
    pub fn bodies(&self, room: &str) -> Vec<String> {
        lock(&self.sent)
            .iter()
            .filter(|s| s.room == room)
            .filter_map(|s| s.content["body"].as_str().map(String::from))
            .collect()
    }

    fn refuse_others(who: ActAs<'_>) -> Result<(), Failure> {
        match who {
            Some(u) if u != Self::BOT => Err(Failure::Permanent(format!("cannot act as {u}"))),
            _ => Ok(()),
        }
    }

    fn set_member(&self, room: &str, user: &str, membership: &str) {
        lock(&self.members).insert((room.into(), user.into()), membership.into());
    }
}

#[async_trait]
impl Matrix for TestMatrix {
    fn bot(&self) -> &str {
        Self::BOT
    }
    async fn send(
        &self,
        who: ActAs<'_>,
        room: &str,
        event_type: &str,
        content: Value,
        txn: &str,
    ) -> Result<String, Failure> {
        Self::refuse_others(who)?;
        let mut sent = lock(&self.sent);
        if let Some(i) = sent.iter().position(|s| s.txn == txn) {
            return Ok(format!("$event{i}"));
        }
        sent.push(Sent {
            room: room.into(),
            event_type: event_type.into(),
            content,
            txn: txn.into(),
        });
        Ok(format!("$event{}", sent.len() - 1))
    }
    async fn redact(
        &self,
        who: ActAs<'_>,
        room: &str,
        event: &str,
        txn: &str,
    ) -> Result<String, Failure> {
        self.send(
            who,
            room,
            "m.room.redaction",
            serde_json::json!({ "redacts": event }),
            txn,
        )
        .await
    }
    async fn create_room(
        &self,
        who: ActAs<'_>,
        spec: &RoomSpec,
        alias_key: &str,
        _direct: bool,
    ) -> Result<(String, bool), Failure> {
        Self::refuse_others(who)?;
        let mut rooms = lock(&self.rooms);
        if let Some((id, _)) = rooms.get(alias_key) {
            return Ok((id.clone(), false));
        }
        let id = format!("!room{}:test", rooms.len());
        rooms.insert(alias_key.into(), (id.clone(), spec.clone()));
        drop(rooms);
        self.set_member(&id, Self::BOT, "join");
        for user in &spec.invite {
            self.set_member(&id, user, "invite");
        }
        Ok((id, true))
    }
    async fn invite(&self, who: ActAs<'_>, room: &str, user: &str) -> Result<String, Failure> {
        Self::refuse_others(who)?;
        match self.membership(room, user).await?.as_deref() {
            Some("join" | "invite") => Ok(format!("skipped: {user} is in the room or invited")),
            Some("ban") => Err(Failure::Permanent(format!("{user} is banned"))),
            _ => {
                self.set_member(room, user, "invite");
                Ok(format!("invited {user}"))
            }
        }
    }
    async fn kick(
        &self,
        who: ActAs<'_>,
        room: &str,
        user: &str,
        _reason: &str,
    ) -> Result<String, Failure> {
        Self::refuse_others(who)?;
        match self.membership(room, user).await?.as_deref() {
            Some("join" | "invite" | "knock") => {
                self.set_member(room, user, "leave");
                Ok(format!("removed {user}"))
            }
            _ => Ok(format!("skipped: {user} is not in the room")),
        }
    }
    async fn leave(&self, who: ActAs<'_>, room: &str) -> Result<String, Failure> {
        Self::refuse_others(who)?;
        self.set_member(room, Self::BOT, "leave");
        Ok(format!("left {room}"))
    }
    async fn membership(&self, room: &str, user: &str) -> Result<Option<String>, Failure> {
        Ok(lock(&self.members)
            .get(&(room.to_string(), user.to_string()))
            .cloned())
    }
    async fn members(&self, room: &str) -> Result<Vec<String>, Failure> {
        let mut joined: Vec<String> = lock(&self.members)
            .iter()
            .filter(|((r, _), m)| r == room && *m == "join")
            .map(|((_, u), _)| u.clone())
            .collect();
        joined.sort();
        Ok(joined)
    }
    async fn history(&self, room: &str, max: usize) -> Result<Vec<Value>, Failure> {
        let sent = lock(&self.sent);
        let mut events: Vec<Value> = sent
            .iter()
            .enumerate()
            .filter(|(_, s)| s.room == room)
            .map(|(i, s)| {
                serde_json::json!({"type": s.event_type, "sender": Self::BOT,
                    "event_id": format!("$event{i}"), "origin_server_ts": i,
                    "content": s.content})
            })
            .collect();
        let skip = events.len().saturating_sub(max);
        events.drain(..skip);
        Ok(events)
    }
    async fn state(
        &self,
        room: &str,
        event_type: &str,
        state_key: &str,
    ) -> Result<Option<Value>, Failure> {
        Ok(lock(&self.state)
            .get(&(room.into(), event_type.into(), state_key.into()))
            .cloned())
    }
    async fn set_state(
        &self,
        who: ActAs<'_>,
        room: &str,
        event_type: &str,
        state_key: &str,
        content: Value,
    ) -> Result<String, Failure> {
        Self::refuse_others(who)?;
        lock(&self.state).insert((room.into(), event_type.into(), state_key.into()), content);
        Ok(format!("$state:{event_type}"))
    }
}

/// A joined room for a listener's tests: its members and their profiles.
#[derive(Default)]
pub struct TestRoom {
    pub id: String,
    pub joined: Vec<String>,
    pub profiles: HashMap<String, (Option<String>, Option<String>)>,
}

impl TestRoom {
    pub fn new(id: &str) -> TestRoom {
        TestRoom {
            id: id.into(),
            ..TestRoom::default()
        }
    }
}

#[async_trait]
impl crate::connector::SyncRoom for TestRoom {
    fn id(&self) -> &str {
        &self.id
    }
    async fn joined(&self) -> Vec<String> {
        self.joined.clone()
    }
    async fn profile(&self, user: &str) -> (Option<String>, Option<String>) {
        self.profiles.get(user).cloned().unwrap_or_default()
    }
}
