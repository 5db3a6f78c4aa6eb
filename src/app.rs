//! The wiring: builds the process's shared parts once ([`Shared`]), starts the listeners, the
//! delivery workers and the background loops (lease keeping, purging, WeChat's IP lists), reloads
//! the routing table on SIGHUP, and drains on shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::{self, Admin};
use crate::attempt::{Attempts, Shared};
use crate::cidr::Cidr;
use crate::clock::now_ms;
use crate::config::{Backend, Config};
use crate::delivery::Delivery;
use crate::events::{self, EventFeed, LocalFeed, RedisFeed};
use crate::ingress::shadow::ShadowLog;
use crate::ingress::sources::{self, Sources};
use crate::ingress::{self, Ingress};
use crate::metrics::Metrics;
use crate::metrics::minutes::{MinuteCount, OLDEST_SECONDS, PENDING, minute_now};
use crate::outbound::Outbound;
use crate::outbound::wechat_api::{ApiAccount, WechatApi};
use crate::routing::{self, Routes};
use crate::shutdown::InFlight;
use crate::store::leases::Leases;
use crate::store::{RedisOptions, Store};
use crate::telemetry::traces::Traces;

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
    let routes = routing::build(&config)?;
    let listeners = Listeners {
        wechat: listener,
        admin: None,
    };
    run_with(config, routes, store, listeners, None, shutdown).await
}

/// Runs the proxy with the routing table built from `config` (by [`routing::build`], before any
/// port was bound) and an opened `store` until `shutdown` fires, then drains: connections and
/// attempts in flight get `server.shutdown_grace_ms` in all, the store commits what it has, and
/// whatever is undelivered resumes on the next start. When it returns, nothing it started holds
/// the store any more. With `reload`, SIGHUP re-reads its file.
pub async fn run_with(
    config: Config,
    routes: Routes,
    store: Arc<dyn Store>,
    listeners: Listeners,
    reload: Option<Reload>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut registry = prometheus_client::registry::Registry::default();
    let instance_name = config.server.instance_name();
    let metrics = Arc::new(Metrics::register(&mut registry, &instance_name));
    // On Redis, where the instances reach each other: asked once, for the feed and the relay.
    let redis = redis_nodes(&config)?;
    let events = event_feed(&config, redis.clone(), &shutdown);
    // One token cache per process, for every feature that calls WeChat's API.
    let api = Arc::new(WechatApi::new());
    let grace = config.server.shutdown_grace_ms.duration();
    // Renews the leases of jobs in flight until the attempts are done or abandoned.
    let leases = Leases::new(store.lease_duration());
    let keeper_stop = CancellationToken::new();
    let keeper = tokio::spawn(leases.clone().keep(store.clone(), keeper_stop.clone()));
    let traces = match &config.traces.otlp_endpoint {
        Some(endpoint) => {
            let delay = config.traces.export_interval_ms.duration();
            let traces = Traces::start(endpoint.as_str(), delay, &instance_name)?;
            info!(endpoint = %endpoint, "traces: exported over OTLP/HTTP");
            traces
        }
        None => Traces::off(),
    };
    // The listen targets' connections on this process, for ingress (which opens them) and
    // attempts (which deliver over them).
    let hub = Arc::new(crate::outbound::listen::Hub::default());
    if let Some((nodes, prefix)) = redis {
        // A client may be connected to any instance: deliveries made here reach it there. Kept
        // until the attempts in flight are done.
        hub.share(nodes, &prefix, keeper_stop.clone());
    }
    let shared = Arc::new(Shared {
        routes: Arc::new(ArcSwap::from_pointee(routes)),
        attempts: Attempts::new(
            Outbound::new(),
            metrics.clone(),
            events.clone(),
            api.clone(),
            traces.clone(),
            hub.clone(),
        ),
        store: store.clone(),
        in_flight: InFlight::default(),
        leases,
        metrics: metrics.clone(),
        events: events.clone(),
        traces: traces.clone(),
        listeners: hub,
    });
    let (routes, in_flight) = (&shared.routes, &shared.in_flight);

    let mut workers = Workers {
        delivery: Delivery {
            shared: shared.clone(),
            poll_interval: config.delivery.poll_interval_ms.duration(),
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
    // Until the attempts in flight are done: their outcomes are counted too.
    let minutes = tokio::spawn(minutes_loop(
        store.clone(),
        metrics.clone(),
        keeper_stop.clone(),
    ));
    let shadows = Arc::new(ShadowLog::new(metrics.clone()));
    let admin = match listeners.admin {
        Some(listener) => {
            let admin = Arc::new(Admin {
                shared: shared.clone(),
                registry,
                shadows: shadows.clone(),
                console: admin::console::Console::new(
                    &config.admin,
                    events.clone(),
                    metrics.event_streams(),
                    shutdown.clone(),
                    &instance_name,
                )?,
                hosts: admin::Hosts::new(&config.admin.hosts),
                retention: Duration::from_secs(config.store.delivered_retention_secs),
            });
            Some(tokio::spawn(admin::serve(
                listener,
                admin,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let sources = start_sources(&config, &routes.load(), api, &store, &shutdown).await;
    let ingress = Arc::new(Ingress::new(
        shared.clone(),
        config.server.clone(),
        sources,
        shadows,
        shutdown.clone(),
    ));
    info!(
        address = %listeners.wechat.local_addr()?,
        instance_name = %instance_name,
        "listening for WeChat callbacks"
    );
    let server = tokio::spawn(ingress::serve(
        listeners.wechat,
        ingress,
        shutdown.clone(),
        grace,
    ));

    if let Some(reload) = reload {
        reload_on_hangup(reload, config, routes, &mut workers, &shutdown).await;
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
    let _ = minutes.await;
    store.flush().await?;
    // The next start goes on from the last id used (a crash skips the rest of a block).
    if let Err(e) = store.close().await {
        warn!(error = %e, "could not give back the unused ids: the next start skips them");
    }
    // The last spans, sent before the process ends (blocking: off the async threads).
    let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
    info!("stopped");
    Ok(())
}

/// The console's feed: this process's events, and on Redis every instance's.
fn event_feed(
    config: &Config,
    redis: Option<(events::Nodes, String)>,
    shutdown: &CancellationToken,
) -> Arc<dyn EventFeed> {
    let local = LocalFeed::new(events::BUFFER, config.admin.show_content);
    match redis {
        None => Arc::new(local),
        // Every instance's console shows every instance's callbacks.
        Some((nodes, prefix)) => {
            let channel = format!("{prefix}:events");
            Arc::new(RedisFeed::start(nodes, channel, local, shutdown.clone()))
        }
    }
}

/// On Redis, the node the instances talk to each other through (asked anew at each connect,
/// for a failover) and the key prefix their channels start with.
fn redis_nodes(config: &Config) -> anyhow::Result<Option<(events::Nodes, String)>> {
    if config.store.backend != Backend::Redis {
        return Ok(None);
    }
    let options = RedisOptions::from_config(&config.store.redis)?;
    let nodes = options.nodes()?;
    let nodes: events::Nodes = Arc::new(move || {
        let nodes = nodes.clone();
        Box::pin(async move { nodes.now().await })
    });
    Ok(Some((nodes, options.key_prefix)))
}

/// The lists `allowed_sources` are checked against: `server.trusted_proxies`, and WeChat's
/// callback IPs for the accounts that list `"wechat"`: the kept ones at once, then refreshed
/// in the background.
async fn start_sources(
    config: &Config,
    routes: &Routes,
    api: Arc<WechatApi>,
    store: &Arc<dyn Store>,
    shutdown: &CancellationToken,
) -> Arc<Sources> {
    let trusted = config
        .server
        .trusted_proxies
        .iter()
        .filter_map(|proxy| Cidr::parse(proxy))
        .collect();
    let sources = Arc::new(Sources::new(trusted));
    let accounts: Vec<ApiAccount> = routes
        .accounts()
        .filter_map(|account| account.sources_api.clone())
        .collect();
    if !accounts.is_empty() {
        sources::load_kept(&sources, &accounts, &**store).await;
        tokio::spawn(sources::refresh_loop(
            sources.clone(),
            api,
            accounts,
            store.clone(),
            shutdown.clone(),
        ));
    }
    sources
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
            let loaded =
                Config::load(Some(path)).and_then(|config| Ok((routing::build(&config)?, config)));
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
            bury_unrouted(workers.delivery.shared.store.clone(), routes.load_full()).await;
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

/// How often this instance adds what it counted to the store's per-minute counts (the
/// console's charts are that far behind at most); the queue is read for them once a minute.
const MINUTES_EVERY: Duration = Duration::from_secs(10);
/// Counts kept for a later try while the store refuses them, at most (about a day of a busy
/// deployment's); the charts lose the rest, the callbacks nothing.
const MINUTES_HELD: usize = 100_000;

/// Adds this instance's per-minute counts to the store's, and once a minute a reading of the
/// queue (each target's open jobs and the age of its oldest), until `stop`, then once more.
async fn minutes_loop(store: Arc<dyn Store>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut held = Vec::new();
    let mut queue_read = None;
    loop {
        let stopping = tokio::select! {
            () = tokio::time::sleep(MINUTES_EVERY) => false,
            () = stop.cancelled() => true,
        };
        held.extend(metrics.take_minutes());
        let minute = minute_now();
        if !stopping && queue_read != Some(minute) {
            queue_read = Some(minute);
            match store.queue_depths().await {
                Ok(depths) => held.extend(depths.into_iter().flat_map(|d| {
                    let oldest = d
                        .oldest_pending_ms
                        .map_or(0, |ms| (now_ms() - ms).max(0) / 1000);
                    [(PENDING, d.pending + d.in_flight), (OLDEST_SECONDS, oldest)].map(
                        |(name, value)| MinuteCount {
                            minute,
                            account: d.account.clone(),
                            target: d.target.clone(),
                            name: name.to_owned(),
                            value,
                        },
                    )
                })),
                Err(e) => warn!(error = %e, "reading the queue for the console's charts failed"),
            }
        }
        if !held.is_empty() {
            match store.add_minutes(held.clone()).await {
                Ok(()) => held.clear(),
                Err(e) => {
                    warn!(error = %e, "storing the console charts' counts failed; tried again later");
                    let over = held.len().saturating_sub(MINUTES_HELD);
                    held.drain(..over);
                }
            }
        }
        if stopping {
            return;
        }
    }
}
