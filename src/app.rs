//! Wires the parts together: store, engine, HTTP intake, Matrix sink and outbox worker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{error, info, warn};

use switchboard_connector::{Connector, Host};

use crate::config::Loaded;
use crate::engine::{self, Engine};
use crate::host::ServiceHost;
use crate::http::{self, HttpState, Source, StatusPage};
use crate::matrix::MatrixSink;
use crate::metrics::Metrics;
use crate::seal::Sealer;
use crate::store::{Dialect, Store};
use crate::worker::Worker;

/// Errors that stop Switchboard from starting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A connector cannot be built, or the connectors clash.
    #[error("source `{source_id}`: {reason}")]
    Connector { source_id: String, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running Switchboard.
pub struct Running {
    /// Where the HTTP listener is bound (useful with port 0).
    pub addr: SocketAddr,
    pub store: Store,
    pub server: tokio::task::JoinHandle<()>,
}

/// Builds each connector source's running connector.
fn build_connectors(
    loaded: &Loaded,
    host: &Arc<dyn Host>,
) -> Result<HashMap<String, Arc<dyn Connector>>, AppError> {
    let kinds = crate::registry::kinds();
    let mut built = HashMap::new();
    for (id, (info, checked)) in &loaded.connectors.0 {
        let kind = &loaded.config.sources[id].kind;
        let Some(k) = kinds.get(kind.as_str()) else {
            continue;
        };
        let connector =
            k.build(info, checked, host.clone())
                .map_err(|reason| AppError::Connector {
                    source_id: id.clone(),
                    reason,
                })?;
        built.insert(id.clone(), connector);
    }
    Ok(built)
}

/// The HTTP side's view of the sources: their webhooks, and `/link` to their tickets' rooms
/// (polled sources have rooms too).
fn sources(
    loaded: &Loaded,
    connectors: &HashMap<String, Arc<dyn Connector>>,
) -> HashMap<String, Source> {
    connectors
        .iter()
        .map(|(id, connector)| {
            let cfg = &loaded.config.sources[id];
            let signature = cfg.signature.clone().and_then(|s| {
                loaded
                    .secrets
                    .signatures
                    .get(id)
                    .map(|secret| (s, secret.clone()))
            });
            let source = Source {
                id: id.clone(),
                connector: connector.clone(),
                signature,
                path_secret: loaded.secrets.path_secrets.get(id).cloned(),
                basic_auth: loaded.secrets.basic_auth.get(id).cloned(),
                link_create: cfg.link_create,
            };
            (id.clone(), source)
        })
        .collect()
}

/// Starts everything. The HTTP listener and the engine start at once, so webhooks are
/// accepted even while the homeserver is unreachable; the Matrix side connects in the
/// background and catches up.
pub async fn start(loaded: Loaded) -> Result<Running, AppError> {
    let cfg = &loaded.config;
    let url = match &loaded.secrets.database_url {
        Some(u) => u.expose().to_string(),
        None => Store::sqlite_url(&cfg.data_dir),
    };
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| AppError::Store(crate::store::StoreError::Db(e.into())))?;
    let store = Store::connect(&url, cfg.database.max_connections).await?;
    if store.dialect() == Dialect::Sqlite {
        // SQLite is never shared between processes, so any lease is left from a crash.
        let freed = store.release_leases().await?;
        if freed > 0 {
            info!(actions = freed, "resuming actions claimed before a restart");
        }
    }
    let metrics = Metrics::new();
    let engine_wake = Arc::new(Notify::new());
    let outbox_wake = Arc::new(Notify::new());

    let sealer = Sealer::new(loaded.secrets.data_secret.as_ref().map(|s| s.expose()));
    let owners = crate::registry::action_owners().map_err(|reason| AppError::Connector {
        source_id: String::new(),
        reason,
    })?;
    let service_host = Arc::new(ServiceHost::new(
        store.clone(),
        engine_wake.clone(),
        loaded
            .secrets
            .data_secret
            .as_ref()
            .map(|s| s.expose().to_string()),
        metrics.clone(),
        loaded.connectors.followers(&loaded.config),
    ));
    let host: Arc<dyn Host> = service_host.clone();
    let connectors = build_connectors(&loaded, &host)?;
    service_host.know_connectors(&connectors);
    for (id, connector) in &connectors {
        connector.prepare().await.map_err(|e| AppError::Connector {
            source_id: id.clone(),
            reason: e.to_string(),
        })?;
    }
    let mut routes = HashMap::new();
    for connector in connectors.values() {
        for route in connector.clone().routes() {
            routes.insert(route.path.clone(), route);
        }
    }
    let state = Arc::new(HttpState {
        routes,
        store: store.clone(),
        sources: sources(&loaded, &connectors),
        metrics: metrics.clone(),
        engine_wake: engine_wake.clone(),
        body_limit: cfg.http.body_limit,
        link_base: cfg.http.link_base.clone(),
        link_wait: Duration::from_secs(cfg.http.link_wait_seconds),
        metrics_guard: cfg.metrics.enabled.then(|| http::Guard {
            auth: cfg
                .metrics
                .username
                .clone()
                .zip(loaded.secrets.metrics_password.clone()),
            allow: cfg.metrics.allow_ips.clone(),
            realm: "metrics",
        }),
        status_page: cfg.status_page.enabled.then(|| {
            let guard = http::Guard {
                auth: cfg
                    .status_page
                    .username
                    .clone()
                    .zip(loaded.secrets.status_page_password.clone()),
                allow: cfg.status_page.allow_ips.clone(),
                realm: "Switchboard status",
            };
            let kinds = cfg
                .sources
                .iter()
                .map(|(id, s)| (id.clone(), s.kind.clone()));
            StatusPage::new(
                guard,
                kinds.collect(),
                cfg.matrix.homeserver.to_string(),
                outbox_wake.clone(),
            )
        }),
    });
    let (addr, server) = http::serve(state, cfg.http.listen)
        .await
        .map_err(|source| AppError::Listen {
            addr: cfg.http.listen,
            source,
        })?;
    info!(%addr, "listening");
    let server = tokio::spawn(server);

    let engine = Arc::new(Engine::new(cfg, connectors.clone()));
    tokio::spawn(engine::run(
        engine,
        store.clone(),
        engine_wake,
        outbox_wake.clone(),
        metrics.clone(),
    ));

    let ids = cfg.sources.keys().cloned().collect();
    tokio::spawn(watch_queues(store.clone(), metrics.clone(), ids));
    if cfg.database.retention_days > 0 {
        let retention = Duration::from_secs(u64::from(cfg.database.retention_days) * 86_400);
        tokio::spawn(prune(store.clone(), retention));
    }

    let matrix_cfg = cfg.matrix.clone();
    let login = loaded.secrets.matrix_login.clone();
    let data_dir = cfg.data_dir.clone();
    let concurrency = cfg.matrix.concurrency;
    let store2 = store.clone();
    for connector in connectors.values() {
        tokio::spawn(connector.clone().run());
    }
    // In the order of their IDs: the first that takes an invite gets the room.
    let mut listeners: Vec<(String, Arc<dyn Connector>)> = connectors
        .iter()
        .filter(|(_, c)| c.listener().is_some())
        .map(|(id, c)| (id.clone(), c.clone()))
        .collect();
    listeners.sort_by(|a, b| a.0.cmp(&b.0));
    tokio::spawn(async move {
        let Some(login) = login else { return };
        let mut backoff = Duration::from_secs(1);
        let sink = loop {
            match MatrixSink::connect(&matrix_cfg, &login, &data_dir, store2.clone(), &sealer).await
            {
                Ok(s) => break Arc::new(s),
                Err(error) => {
                    // Webhooks are still accepted meanwhile; /ready says 503 until this works.
                    error!(%error, "cannot connect to the homeserver; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        };
        info!(user = %sink.user_id(), "connected to the homeserver");
        sink.serve_listeners(listeners);
        tokio::spawn(sink.clone().stay_connected(metrics.clone()));
        let worker = Arc::new(Worker {
            store: store2,
            sink,
            connectors,
            owners,
            host,
            metrics,
            concurrency,
            wake: outbox_wake,
        });
        worker.run().await;
    });

    Ok(Running {
        addr,
        store,
        server,
    })
}

/// Keeps the `waiting_for_operator`, `pending` and `oldest_pending_seconds` gauges of
/// `sources` current: at start, then every 15 s.
async fn watch_queues(store: Store, metrics: Metrics, sources: Vec<String>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(15));
    loop {
        ticks.tick().await;
        match store.problem_counts().await {
            Ok(counts) => metrics.set_waiting(&counts),
            Err(error) => warn!(%error, "cannot count failed and set-aside items"),
        }
        match store.backlog().await {
            Ok(backlog) => metrics.set_backlog(&sources, &backlog, crate::store::now_ms()),
            Err(error) => warn!(%error, "cannot count pending items"),
        }
    }
}

/// Deletes finished records older than `retention`: a minute after start, then hourly.
async fn prune(store: Store, retention: Duration) {
    let first = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut ticks = tokio::time::interval_at(first, Duration::from_secs(3600));
    loop {
        ticks.tick().await;
        let cutoff = crate::store::now_ms().saturating_sub(retention.as_millis() as i64);
        match store.prune(cutoff).await {
            Ok((0, 0)) => {}
            Ok((deliveries, actions)) => {
                info!(
                    deliveries,
                    actions, "deleted finished records past the retention time"
                )
            }
            Err(error) => warn!(%error, "cannot delete old records; trying again in an hour"),
        }
    }
}
