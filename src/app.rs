//! Wires the parts together: store, engine, HTTP intake, Matrix sink and outbox worker.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::config::{Loaded, SourceKind};
use crate::engine::{self, Engine};
use crate::http::{self, HttpState, Source};
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

/// Builds the sources from the config: one registration per connector kind.
fn sources(loaded: &Loaded) -> HashMap<String, Source> {
    loaded
        .config
        .sources
        .iter()
        .filter_map(|(id, cfg)| {
            let hook: Box<dyn switchboard_connector::WebhookSource> = match cfg.kind {
                SourceKind::Webhook => Box::new(cfg.webhook.clone().unwrap_or_default()),
                // Hears Matrix, not HTTP.
                SourceKind::MatrixDm => return None,
                SourceKind::Pretix => Box::new(switchboard_pretix::PretixHook),
            };
            let signature = cfg.signature.clone().and_then(|s| {
                loaded
                    .secrets
                    .signatures
                    .get(id)
                    .map(|secret| (s, secret.clone()))
            });
            Some((
                id.clone(),
                Source {
                    id: id.clone(),
                    hook,
                    signature,
                    path_secret: loaded.secrets.path_secrets.get(id).cloned(),
                    basic_auth: loaded.secrets.basic_auth.get(id).cloned(),
                    link_create: cfg.link_create,
                },
            ))
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

    let pretix_wake = engine_wake.clone();
    let sealer = Sealer::new(loaded.secrets.data_secret.as_ref().map(|s| s.expose()));
    let pretix = crate::pretix::Pretix::new(
        &loaded,
        store.clone(),
        metrics.clone(),
        pretix_wake.clone(),
        sealer.clone(),
    )
    .map(Arc::new);
    let state = Arc::new(HttpState {
        pretix: pretix.clone(),
        store: store.clone(),
        sources: sources(&loaded),
        metrics: metrics.clone(),
        engine_wake: engine_wake.clone(),
        body_limit: cfg.http.body_limit,
        link_base: cfg.http.link_base.clone(),
        link_wait: Duration::from_secs(cfg.http.link_wait_seconds),
        metrics_enabled: cfg.metrics.enabled,
        metrics_auth: cfg
            .metrics
            .username
            .clone()
            .zip(loaded.secrets.metrics_password.clone()),
        metrics_allow: cfg.metrics.allow_ips.clone(),
    });
    let (addr, server) = http::serve(state, cfg.http.listen)
        .await
        .map_err(|source| AppError::Listen {
            addr: cfg.http.listen,
            source,
        })?;
    info!(%addr, "listening");
    let server = tokio::spawn(server);

    let engine = Arc::new(Engine::new(cfg, &metrics));
    let helpdesk = engine.helpdesk();
    let helpdesk_wake = engine_wake.clone();
    if let Some(helpdesk) = &helpdesk {
        helpdesk.load_settings(&store).await?;
        tokio::spawn(crate::helpdesk::close_idle(
            helpdesk.clone(),
            store.clone(),
            engine_wake.clone(),
        ));
    }
    tokio::spawn(engine::run(
        engine,
        store.clone(),
        engine_wake,
        outbox_wake.clone(),
        metrics.clone(),
    ));

    tokio::spawn(watch_problems(store.clone(), metrics.clone()));
    if cfg.database.retention_days > 0 {
        let retention = Duration::from_secs(u64::from(cfg.database.retention_days) * 86_400);
        tokio::spawn(prune(store.clone(), retention));
    }

    let matrix_cfg = cfg.matrix.clone();
    let login = loaded.secrets.matrix_login.clone();
    let data_dir = cfg.data_dir.clone();
    let concurrency = cfg.matrix.concurrency;
    let store2 = store.clone();
    if let Some(pretix) = &pretix {
        tokio::spawn(pretix.clone().poll());
    }
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
        if let Some(helpdesk) = helpdesk {
            sink.serve_helpdesk(helpdesk, helpdesk_wake);
        }
        if let Some((source, organisers)) = pretix.as_ref().and_then(|p| p.organisers()) {
            sink.serve_organisers(source, organisers, pretix_wake);
        }
        tokio::spawn(sink.clone().stay_connected(metrics.clone()));
        let worker = Arc::new(Worker {
            store: store2,
            sink,
            pretix,
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

/// Keeps the `waiting_for_operator` gauges current: at start, then every 15 s.
async fn watch_problems(store: Store, metrics: Metrics) {
    let mut ticks = tokio::time::interval(Duration::from_secs(15));
    loop {
        ticks.tick().await;
        match store.problem_counts().await {
            Ok(counts) => metrics.set_waiting(&counts),
            Err(error) => warn!(%error, "cannot count failed and set-aside items"),
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
