//! What the service lends a connector: the database for its own tables, settings and
//! cursors, the inbox, the outbox, sealing with the data secret, an HTTP client, metrics,
//! and Matrix. A connector reaches the rest of Switchboard only through these.

use async_trait::async_trait;
use serde_json::Value;

use crate::action::{Queued, RoomSpec};
use crate::db::{Accepted, ActionRow, DbError, Dialect};
use crate::event::TicketEvent;
use crate::failure::Failure;

/// The service's capabilities, shared by all connectors. Keys of settings and cursors are
/// one namespace: a connector's start with `<kind>.<source id>.`.
#[async_trait]
pub trait Host: Send + Sync {
    /// The database, for the connector's own tables (created by its migrations).
    fn pool(&self) -> &sqlx::AnyPool;
    fn dialect(&self) -> Dialect;
    /// A stored setting (small state kept across restarts).
    async fn setting(&self, key: &str) -> Result<Option<String>, DbError>;
    async fn set_setting(&self, key: &str, value: &str) -> Result<(), DbError>;
    /// Deletes a setting; whether it existed.
    async fn delete_setting(&self, key: &str) -> Result<bool, DbError>;
    /// Where a poll or a feed stands.
    async fn cursor(&self, name: &str) -> Result<Option<String>, DbError>;
    async fn set_cursor(&self, name: &str, value: &str) -> Result<(), DbError>;
    /// Stores a delivery in the inbox, as intake does for a webhook (a dedupe key accepted
    /// before stores nothing), and wakes the engine. Durable once this returns.
    async fn deliver(
        &self,
        source_id: &str,
        dedupe_key: &str,
        events: &[TicketEvent],
    ) -> Result<Accepted, DbError>;
    /// The sources that follow `source` (`Kind::follows`), as configured.
    fn followers(&self, source: &str) -> Vec<String>;
    /// Delivers `events` (each with a `feed::Feed` payload) into the inbox of every source
    /// that follows `source`, each keyed `<source>:<key>`: durable once this returns, and
    /// the same key again delivers nothing twice.
    async fn publish(
        &self,
        source: &str,
        key: &str,
        events: &[TicketEvent],
    ) -> Result<(), DbError> {
        for follower in self.followers(source) {
            self.deliver(&follower, &format!("{source}:{key}"), events)
                .await?;
        }
        Ok(())
    }
    /// A file that source `source` lends (`Connector::file`), by its reference.
    async fn fetch(&self, source: &str, reference: &Value) -> Result<(Vec<u8>, String), Failure> {
        let _ = reference;
        Err(Failure::Permanent(format!(
            "source `{source}` lends no files here"
        )))
    }
    /// Queues actions that running `row` asked for, inside the caller's transaction, so
    /// they exist exactly when the connector's own changes made with them do. Each gets a
    /// transaction key derived from `row`'s: running `row` again queues the same sends.
    async fn queue_after(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        row: &ActionRow,
        actions: &[Queued],
    ) -> Result<(), DbError>;
    /// The ticket whose room `room` is (made by the service's `open_room`): its source and
    /// ticket key.
    async fn ticket_of_room(&self, room: &str) -> Result<Option<(String, String)>, DbError>;
    /// The room of a source's ticket, if `open_room` made one.
    async fn room_of_ticket(&self, source: &str, ticket: &str) -> Result<Option<String>, DbError>;
    /// Seals a value with a key derived from the data secret for `purpose` (as it is
    /// without a data secret).
    fn seal(&self, purpose: &str, plain: &str) -> String;
    /// Opens what `seal` sealed for the same purpose (an unsealed value as it is).
    fn open(&self, purpose: &str, stored: &str) -> Result<String, String>;
    /// The data secret itself, for opening what another program sealed with it by a scheme
    /// of its own (taking over from a program the connector stands in for). Everything else uses `seal` and `open`.
    fn data_secret(&self) -> Option<&str>;
    /// An HTTP client with a timeout on every request and Switchboard's user agent.
    fn http(&self) -> &reqwest::Client;
    /// Where a connector registers its metrics (served on `/metrics` with the service's).
    fn registry(&self) -> &prometheus::Registry;
}

/// Who a Matrix operation acts as: `None` is the bot itself. An appservice may act as its
/// virtual users; a bot logged in as one user refuses any other.
pub type ActAs<'a> = Option<&'a str>;

/// Matrix, as connectors use it while running their actions. Every send takes a
/// transaction ID (`ActionRow::txn_id`), so a retried action never posts twice.
#[async_trait]
pub trait Matrix: Send + Sync {
    /// The bot's user ID.
    fn bot(&self) -> &str;
    /// Sends an event (a message when `event_type` is `m.room.message`: one too long for an
    /// event is cut and followed by its whole text as a file); its event ID.
    async fn send(
        &self,
        who: ActAs<'_>,
        room: &str,
        event_type: &str,
        content: Value,
        txn: &str,
    ) -> Result<String, Failure>;
    /// Redacts an event; the redaction's event ID.
    async fn redact(
        &self,
        who: ActAs<'_>,
        room: &str,
        event: &str,
        txn: &str,
    ) -> Result<String, Failure>;
    /// Creates a room once per `alias_key` (a localpart: the same key again finds the room
    /// made before, whatever became of the first request); the room and whether this call
    /// created it whole (with its invites).
    async fn create_room(
        &self,
        who: ActAs<'_>,
        spec: &RoomSpec,
        alias_key: &str,
        direct: bool,
    ) -> Result<(String, bool), Failure>;
    /// Invites a user unless they are in the room or invited.
    async fn invite(&self, who: ActAs<'_>, room: &str, user: &str) -> Result<String, Failure>;
    /// Removes a user (a pending invite is withdrawn) unless they are not in the room.
    async fn kick(
        &self,
        who: ActAs<'_>,
        room: &str,
        user: &str,
        reason: &str,
    ) -> Result<String, Failure>;
    async fn leave(&self, who: ActAs<'_>, room: &str) -> Result<String, Failure>;
    /// A user's membership as the homeserver has it now (`join`, `invite`, `leave`, `ban`,
    /// `knock`), or `None` if they never had one.
    async fn membership(&self, room: &str, user: &str) -> Result<Option<String>, Failure>;
    /// The room's joined members.
    async fn members(&self, room: &str) -> Result<Vec<String>, Failure>;
    /// The room's latest events, at most `max`, oldest first, as the bot sees them
    /// (decrypted where it can): for a transcript.
    async fn history(&self, room: &str, max: usize) -> Result<Vec<Value>, Failure>;
    /// A state event's content, if the room has it.
    async fn state(
        &self,
        room: &str,
        event_type: &str,
        state_key: &str,
    ) -> Result<Option<Value>, Failure>;
    /// Sets a state event; its event ID.
    async fn set_state(
        &self,
        who: ActAs<'_>,
        room: &str,
        event_type: &str,
        state_key: &str,
        content: Value,
    ) -> Result<String, Failure>;
    /// Uploads a file for `room`: the content keys of an `m.file` event that point to it
    /// (`url`, or `file` with its key when the room is encrypted).
    async fn upload(
        &self,
        room: &str,
        data: Vec<u8>,
        content_type: &str,
    ) -> Result<Value, Failure> {
        let _ = (room, data, content_type);
        Err(Failure::Permanent("no uploads here".into()))
    }
    /// The file an event's content points to (`url`, or `file`, decrypted).
    async fn download(&self, content: &Value) -> Result<Vec<u8>, Failure> {
        let _ = content;
        Err(Failure::Permanent("no downloads here".into()))
    }
    /// An OpenID token that proves the bot's identity to another server (an identity
    /// server): the homeserver's answer (`access_token`, `token_type`,
    /// `matrix_server_name`, `expires_in`).
    async fn openid_token(&self) -> Result<Value, Failure> {
        Err(Failure::Permanent("no OpenID tokens here".into()))
    }
    /// The homeserver's user with this e-mail address (`None`: nobody has it), asked
    /// through Synapse's admin API; a permanent failure when the bot may not ask.
    async fn user_by_email(&self, address: &str) -> Result<Option<String>, Failure> {
        let _ = address;
        Err(Failure::Permanent(
            "the homeserver does not look users up by e-mail here".into(),
        ))
    }
}
