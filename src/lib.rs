//! wechat-fanout: one WeChat callback URL, many downstream services.
//!
//! # Layout
//! Data flows one way: accept → verify → buffer → dedupe → persist → reply → deliver.
//!
//! - [`config`]: defaults → file → environment, validated; names the bad key.
//! - [`wechat`]: the protocol as pure functions (signatures, AES, envelopes, dedupe keys).
//! - [`targets`]: the routing table built from the config: accounts, targets, filters.
//! - [`store`]: the durable queue and dedupe (SQLite by default), one trait per backend.
//! - [`retry`]: which answers are retried, and when; [`downstream`]: the byte-identical replay.
//! - [`ingress`]: the WeChat-facing server: verify, buffer, persist, answer in time.
//! - [`delivery`]: one worker per target: lease due jobs, send, record.
//! - [`error`], [`shutdown`], [`telemetry`], [`cli`]: rejection mapping, signals, logging, commands.
//!
//! `ingress` and `delivery` never import each other: the stored job is their shared vocabulary.
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod delivery;
pub mod downstream;
pub mod error;
pub mod ingress;
pub mod metrics;
pub mod retry;
pub mod shutdown;
pub mod simulate;
pub mod store;
pub mod targets;
pub mod telemetry;
pub mod wechat;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::delivery::Delivery;
use crate::downstream::{Downstream, now_ms};
use crate::ingress::Ingress;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::targets::Routes;

/// How often delivered callbacks older than the retention are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Runs the proxy on an already-bound `listener` with an opened `store` until `shutdown` fires,
/// then drains: connections and attempts in flight get `server.shutdown_grace_ms`, the store
/// commits what it has, and whatever is undelivered resumes on the next start.
pub async fn run(
    config: Config,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let routes = Arc::new(ArcSwap::from_pointee(Routes::from_config(&config)?));
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let downstream = Downstream::new(metrics.clone())?;
    let tasks = TaskTracker::new();
    let grace = config.server.shutdown_grace_ms.duration();

    let delivery = Delivery {
        store: store.clone(),
        downstream: downstream.clone(),
        poll_interval: config.delivery.poll_interval_ms.duration(),
        tasks: tasks.clone(),
    };
    let workers_stop = shutdown.child_token();
    let workers: Vec<_> = routes
        .load()
        .targets()
        .map(|target| delivery.spawn_worker(target.clone(), workers_stop.clone()))
        .collect();

    let purge = tokio::spawn(purge_loop(
        store.clone(),
        Duration::from_secs(config.store.delivered_retention_secs),
        shutdown.clone(),
    ));

    let ingress = Arc::new(Ingress::new(
        routes,
        store.clone(),
        downstream,
        config.server.clone(),
        tasks.clone(),
        metrics,
    ));
    info!(address = %listener.local_addr()?, "listening for WeChat callbacks");
    ingress::serve(listener, ingress, shutdown, grace).await;

    for worker in workers {
        let _ = worker.await;
    }
    let _ = purge.await;
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        warn!("deliveries still in flight after the grace period; they resume on the next start");
    }
    store.flush().await?;
    info!("stopped");
    Ok(())
}

async fn purge_loop(store: Arc<dyn Store>, retention: Duration, shutdown: CancellationToken) {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            () = tokio::time::sleep(PURGE_EVERY) => {}
            () = shutdown.cancelled() => return,
        }
        match store
            .purge_delivered(now_ms().saturating_sub(retention_ms))
            .await
        {
            Ok(0) => {}
            Ok(n) => info!(callbacks = n, "purged delivered callbacks past retention"),
            Err(e) => warn!(error = %e, "purging delivered callbacks failed"),
        }
    }
}
