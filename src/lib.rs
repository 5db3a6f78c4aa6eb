//! wechat-fanout: one WeChat callback URL, many downstream services.
//!
//! # Layout
//! Data flows one way: accept → verify → buffer → dedupe → persist → reply → deliver.
//!
//! - [`config`]: defaults → file → environment, validated; names the bad key.
//! - [`wechat`]: the protocol as pure functions (signatures, AES, envelopes, dedupe keys).
//! - [`targets`]: the routing table built from the config: accounts, targets, filters; the
//!   reply owner of each route ([`replies`]); [`authorizer`]: which account an open platform
//!   callback concerns, carried to targets.
//! - [`store`]: the durable queue and dedupe, one trait: SQLite (default, one instance) or Redis
//!   (shared by several instances; leases with tokens, the store's clock).
//! - [`retry`]: which answers are retried, and when; [`downstream`]: the byte-identical replay,
//!   or, for a target with its own credentials, the re-signed one ([`resign`]).
//! - [`leases`]: keeps alive the leases this process holds (on a store where they expire).
//! - [`ingress`]: the WeChat-facing server: verify, buffer, persist, answer in time; only from
//!   allowed sources ([`sources`], with WeChat's callback IPs from [`wechat_api`]).
//! - [`delivery`]: one worker per target: lease due jobs, send, record.
//! - [`rescue`]: a reply owner's late answer sent through the customer-service API, as a job of
//!   the account's internal late-replies target ([`wechat_api`] sends it).
//! - [`shadow`]: candidate targets' answers compared with the owner's, never sent to WeChat.
//! - [`events`]: what happened, for the live console: ingress and delivery publish, never wait.
//! - [`admin`]: health, readiness, metrics, dead letters, shadow differences, on a separate
//!   port; [`metrics`]; [`console`]: the live console in the browser, its login and its event
//!   stream.
//! - [`error`], [`shutdown`], [`telemetry`]: rejection mapping, signals, logging; [`escape`]:
//!   caller text made safe for a log line or an error message; [`privacy`]: users named in logs
//!   only by a keyed hash.
//! - [`cli`], [`admin_client`], [`simulate`], [`probe`]: the commands besides `serve`.
//!
//! `ingress` and `delivery` never import each other: the stored job is their shared vocabulary.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cidr;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod delivery;
pub mod error;
pub mod escape;
pub mod events;
pub mod http;
pub mod ingress;
pub mod metrics;
pub mod outbound;
pub mod privacy;
pub mod routing;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod wechat;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::Admin;
use crate::config::{Backend, Config};
use crate::delivery::Delivery;
use crate::events::{EventFeed, LocalFeed, RedisFeed};
use crate::ingress::Ingress;
use crate::ingress::shadow::ShadowLog;
use crate::ingress::sources::Sources;
use crate::metrics::Metrics;
use crate::outbound::wechat_api::WechatApi;
use crate::outbound::{Downstream, now_ms};
use crate::routing::Routes;
use crate::shutdown::InFlight;
use crate::store::leases::Leases;
use crate::store::{RedisOptions, Store};

/// How often delivered callbacks older than the retention are purged.
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// The last error of a job whose target was removed from the configuration.
const UNROUTED_REASON: &str = "target is no longer configured";

/// The sockets the proxy serves, bound by the caller (tests bind `127.0.0.1:0`).
#[derive(Debug)]
pub struct Listeners {
    /// Where WeChat's callbacks arrive.
    pub wechat: TcpListener,
    /// Health, metrics and dead letters; `None` runs without them.
    pub admin: Option<TcpListener>,
}

/// Runs the proxy on an already-bound `listener` without the admin API and without reload.
pub async fn run(
    config: Config,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listeners = Listeners {
        wechat: listener,
        admin: None,
    };
    run_with(config, store, listeners, None, shutdown).await
}

/// Runs the proxy with an opened `store` until `shutdown` fires, then drains: connections and
/// attempts in flight get `server.shutdown_grace_ms` in all, the store commits what it has, and
/// whatever is undelivered resumes on the next start. When it returns, nothing it started holds
/// the store any more. With `reload`, SIGHUP re-reads its file.
pub async fn run_with(
    config: Config,
    store: Arc<dyn Store>,
    listeners: Listeners,
    reload: Option<Reload>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let routes = Arc::new(ArcSwap::from_pointee(Routes::from_config(&config)?));
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let local = LocalFeed::new(events::BUFFER, config.admin.show_content);
    let events: Arc<dyn EventFeed> = match config.store.backend {
        Backend::Sqlite => Arc::new(local),
        // Every instance's console shows every instance's callbacks.
        Backend::Redis => {
            let options = RedisOptions::from_config(&config.store.redis)?;
            let channel = format!("{}:events", options.key_prefix);
            Arc::new(RedisFeed::start(
                options.connection_infos()?,
                channel,
                local,
                shutdown.clone(),
            ))
        }
    };
    // One token cache per process, for every feature that calls WeChat's API.
    let api = Arc::new(WechatApi::new());
    let downstream = Downstream::new(metrics.clone(), events.clone(), api.clone());
    let in_flight = InFlight::default();
    let grace = config.server.shutdown_grace_ms.duration();
    // Renews the leases of jobs in flight until the attempts are done or abandoned.
    let leases = Leases::new(store.lease_duration());
    let keeper_stop = CancellationToken::new();
    let keeper = tokio::spawn(leases.clone().keep(store.clone(), keeper_stop.clone()));

    let mut workers = Workers {
        delivery: Delivery {
            store: store.clone(),
            downstream: downstream.clone(),
            poll_interval: config.delivery.poll_interval_ms.duration(),
            in_flight: in_flight.clone(),
            leases: leases.clone(),
        },
        parent: shutdown.clone(),
        generation: shutdown.child_token(),
        handles: Vec::new(),
    };
    workers.start(&routes.load());
    // In the background: the WeChat port must not wait for it if the store is slow.
    in_flight.spawn(bury_unrouted(store.clone(), routes.load_full()));

    let purge = tokio::spawn(purge_loop(
        store.clone(),
        Duration::from_secs(config.store.delivered_retention_secs),
        shutdown.clone(),
    ));
    let shadows = Arc::new(ShadowLog::new(metrics.clone()));
    let admin = match listeners.admin {
        Some(listener) => {
            let admin = Arc::new(Admin {
                store: store.clone(),
                routes: routes.clone(),
                registry,
                metrics: metrics.clone(),
                shadows: shadows.clone(),
                console: admin::console::Console::new(
                    &config.admin,
                    events.clone(),
                    metrics.event_streams(),
                    shutdown.clone(),
                )?,
                hosts: admin::Hosts::new(&config.admin.hosts),
            });
            Some(tokio::spawn(admin::serve(
                listener,
                admin,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let sources = start_sources(&config, api, &store, &shutdown).await?;
    let ingress = Arc::new(Ingress::new(
        routes.clone(),
        store.clone(),
        downstream,
        config.server.clone(),
        in_flight.clone(),
        leases,
        metrics,
        events,
        sources,
        shadows,
    ));
    info!(address = %listeners.wechat.local_addr()?, "listening for WeChat callbacks");
    let server = tokio::spawn(ingress::serve(
        listeners.wechat,
        ingress,
        shutdown.clone(),
        grace,
    ));

    if let Some(reload) = reload {
        reload_on_hangup(reload, config, &routes, &mut workers, &shutdown).await;
    } else {
        shutdown.cancelled().await;
    }
    // One grace period bounds the whole shutdown, not each of its steps.
    let deadline = Instant::now() + grace;
    let _ = server.await;
    workers.stop().await;
    let _ = purge.await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    if !in_flight.drain(deadline).await {
        warn!(
            "work still in flight after the grace period was dropped; it resumes on the next start \
             (on a shared store: on another instance once its lease expires)"
        );
    }
    keeper_stop.cancel();
    let _ = keeper.await;
    store.flush().await?;
    info!("stopped");
    Ok(())
}

/// The lists `allowed_sources` are checked against: `server.trusted_proxies`, and WeChat's
/// callback IPs for the accounts that list `"wechat"`: the kept ones at once, then refreshed
/// in the background.
async fn start_sources(
    config: &Config,
    api: Arc<WechatApi>,
    store: &Arc<dyn Store>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<Sources>> {
    let trusted = config
        .server
        .trusted_proxies
        .iter()
        .filter_map(|proxy| cidr::Cidr::parse(proxy))
        .collect();
    let sources = Arc::new(Sources::new(trusted));
    let mut accounts = Vec::new();
    for (i, account) in config.accounts.iter().enumerate() {
        let key = format!("accounts[{i}]");
        if let Some(api) = account.api_account(&key, &config.wechat_api_base)? {
            accounts.push(api);
        }
    }
    if !accounts.is_empty() {
        ingress::sources::load_kept(&sources, &accounts, &**store).await;
        tokio::spawn(ingress::sources::refresh_loop(
            sources.clone(),
            api,
            accounts,
            store.clone(),
            shutdown.clone(),
        ));
    }
    Ok(sources)
}

/// Configuration reload: the file SIGHUP re-reads, and SIGHUP itself, caught from the moment this
/// exists. Create it before binding any port: until a handler is installed, SIGHUP's default
/// action ends the process, so a reload sent just after a start would kill it.
#[derive(Debug)]
pub struct Reload {
    path: PathBuf,
    #[cfg(unix)]
    hangups: tokio::signal::unix::Signal,
}

impl Reload {
    /// Starts catching SIGHUP for a reload of `path`; must be called inside the runtime.
    pub fn on_hangup(path: PathBuf) -> std::io::Result<Reload> {
        Ok(Reload {
            path,
            #[cfg(unix)]
            hangups: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
        })
    }
}

/// The delivery workers of the current routing table; replaced as a whole on reload.
struct Workers {
    delivery: Delivery,
    parent: CancellationToken,
    generation: CancellationToken,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Workers {
    fn start(&mut self, routes: &Routes) {
        self.handles = routes
            .targets()
            .map(|target| {
                self.delivery
                    .spawn_worker(target.clone(), self.generation.clone())
            })
            .collect();
    }

    /// Stops the workers; attempts they started go on (and are recorded) in the task tracker.
    async fn stop(&mut self) {
        self.generation.cancel();
        for handle in self.handles.drain(..) {
            let _ = handle.await;
        }
    }

    async fn restart(&mut self, routes: &Routes) {
        self.stop().await;
        self.generation = self.parent.child_token();
        self.start(routes);
    }
}

/// Until shutdown: on SIGHUP, re-reads the file; a valid config replaces accounts and targets
/// (work in flight finishes under the old ones), an invalid one is refused and the old one stays.
async fn reload_on_hangup(
    reload: Reload,
    mut current: Config,
    routes: &ArcSwap<Routes>,
    workers: &mut Workers,
    shutdown: &CancellationToken,
) {
    let path = reload.path.as_path();
    #[cfg(unix)]
    {
        let mut hangups = reload.hangups;
        loop {
            tokio::select! {
                received = hangups.recv() => if received.is_none() { break },
                () = shutdown.cancelled() => break,
            }
            let loaded = Config::load(Some(path))
                .and_then(|config| Ok((Routes::from_config(&config)?, config)));
            let (new_routes, config) = match loaded {
                Ok(loaded) => loaded,
                Err(e) => {
                    // One line: a TOML error spans several (a snippet and a caret), which a
                    // line-based log (journald, `grep`) would split from its level and path.
                    let message = e.to_string();
                    let reason = message.split_whitespace().collect::<Vec<_>>().join(" ");
                    error!(path = %path.display(), "configuration reload refused, keeping the current one: {reason}");
                    continue;
                }
            };
            if config.server != current.server
                || config.admin != current.admin
                || config.store != current.store
            {
                warn!("changes to [server], [admin] and [store] take effect only after a restart");
            }
            routes.store(Arc::new(new_routes));
            workers.restart(&routes.load()).await;
            bury_unrouted(workers.delivery.store.clone(), routes.load_full()).await;
            info!(path = %path.display(), accounts = config.accounts.len(), "configuration reloaded");
            current = config;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, current, routes, workers);
        shutdown.cancelled().await;
    }
}

/// Pending jobs of targets that are no longer configured become dead letters, with a warning:
/// no worker would ever send them, and they would keep their callbacks from being purged. They
/// can be listed, and replayed once the target is back in the config, or purged.
async fn bury_unrouted(store: Arc<dyn Store>, routes: Arc<Routes>) {
    match store
        .bury_unrouted(routes.keys(), UNROUTED_REASON, now_ms())
        .await
    {
        Ok(buried) => {
            for (key, jobs) in buried {
                warn!(
                    account = &*key.account,
                    target = &*key.target,
                    jobs,
                    "pending jobs of a target that is no longer configured are now dead letters; \
                     add the target back and replay them, or purge them"
                );
            }
        }
        Err(e) => {
            warn!(error = %e, "could not look for jobs of targets that are no longer configured")
        }
    }
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
