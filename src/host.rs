//! What the service lends its connectors (`switchboard_connector::Host`): the store's pool,
//! settings, cursors, inbox and outbox, the data secret's sealing, one HTTP client and the
//! metrics registry.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use switchboard_connector::{
    Accepted, ActionRow, Connector, DbError, Dialect, Failure, Host, Queued, TicketEvent,
};
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::seal::Sealer;
use crate::store::{NewAction, Store};

/// How long a connector's call to its far end may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The host every connector of this process shares.
pub struct ServiceHost {
    store: Store,
    /// Tells the engine that the inbox has something.
    engine_wake: Arc<Notify>,
    sealer: Sealer,
    data_secret: Option<String>,
    http: reqwest::Client,
    metrics: Metrics,
    /// The sources that follow each source.
    followers: BTreeMap<String, Vec<String>>,
    /// Every source's connector, once built (for the files one lends another).
    connectors: OnceLock<HashMap<String, Weak<dyn Connector>>>,
}

impl ServiceHost {
    pub fn new(
        store: Store,
        engine_wake: Arc<Notify>,
        data_secret: Option<String>,
        metrics: Metrics,
        followers: BTreeMap<String, Vec<String>>,
    ) -> ServiceHost {
        let sealer = Sealer::new(data_secret.as_deref());
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        ServiceHost {
            store,
            engine_wake,
            sealer,
            data_secret,
            http,
            metrics,
            followers,
            connectors: OnceLock::new(),
        }
    }

    /// The connectors built with this host.
    pub fn know_connectors(&self, built: &HashMap<String, Arc<dyn Connector>>) {
        let weak = built
            .iter()
            .map(|(id, c)| (id.clone(), Arc::downgrade(c)))
            .collect();
        let _ = self.connectors.set(weak);
    }
}

#[async_trait]
impl Host for ServiceHost {
    fn pool(&self) -> &sqlx::AnyPool {
        self.store.pool()
    }
    fn dialect(&self) -> Dialect {
        self.store.dialect()
    }
    async fn setting(&self, key: &str) -> Result<Option<String>, DbError> {
        Ok(self.store.setting(key).await?)
    }
    async fn set_setting(&self, key: &str, value: &str) -> Result<(), DbError> {
        Ok(self.store.set_setting(key, value).await?)
    }
    async fn delete_setting(&self, key: &str) -> Result<bool, DbError> {
        Ok(self.store.delete_setting(key).await?)
    }
    async fn cursor(&self, name: &str) -> Result<Option<String>, DbError> {
        Ok(self.store.cursor(name).await?)
    }
    async fn set_cursor(&self, name: &str, value: &str) -> Result<(), DbError> {
        Ok(self.store.set_cursor(name, value).await?)
    }
    async fn deliver(
        &self,
        source_id: &str,
        dedupe_key: &str,
        events: &[TicketEvent],
    ) -> Result<Accepted, DbError> {
        let events = serde_json::to_string(events)?;
        let accepted = self.store.accept(source_id, dedupe_key, &events).await?;
        if !accepted.duplicate {
            self.engine_wake.notify_one();
        }
        Ok(accepted)
    }
    fn followers(&self, source: &str) -> Vec<String> {
        self.followers.get(source).cloned().unwrap_or_default()
    }
    async fn fetch(&self, source: &str, reference: &Value) -> Result<(Vec<u8>, String), Failure> {
        let connector = self
            .connectors
            .get()
            .and_then(|all| all.get(source))
            .and_then(Weak::upgrade)
            .ok_or_else(|| Failure::Permanent(format!("no source `{source}` is running")))?;
        connector.file(reference).await
    }
    async fn queue_after(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        row: &ActionRow,
        actions: &[Queued],
    ) -> Result<(), DbError> {
        let rows: Vec<NewAction> = actions
            .iter()
            .map(|q| {
                self.metrics
                    .actions_queued
                    .with_label_values(&[q.kind()])
                    .inc();
                NewAction {
                    source_id: row.source_id.clone(),
                    ticket_key: q.lane.clone(),
                    action: q.action.to_string(),
                }
            })
            .collect();
        Ok(crate::store::queue_after(tx, row, &rows).await?)
    }
    async fn ticket_of_room(&self, room: &str) -> Result<Option<(String, String)>, DbError> {
        Ok(self.store.ticket_of_room(room).await?)
    }
    async fn room_of_ticket(&self, source: &str, ticket: &str) -> Result<Option<String>, DbError> {
        Ok(self.store.link(source, ticket).await?.map(|l| l.room_id))
    }
    fn seal(&self, purpose: &str, plain: &str) -> String {
        self.sealer.seal(purpose, plain)
    }
    fn open(&self, purpose: &str, stored: &str) -> Result<String, String> {
        self.sealer.open(purpose, stored).map_err(|e| e.to_string())
    }
    fn data_secret(&self) -> Option<&str> {
        self.data_secret.as_deref()
    }
    fn http(&self) -> &reqwest::Client {
        &self.http
    }
    fn registry(&self) -> &prometheus::Registry {
        self.metrics.registry()
    }
}
