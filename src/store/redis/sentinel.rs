//! Redis behind Sentinels (`store.redis.sentinel_master`): where the primary is, and a
//! connection to it that follows a failover by itself.
//!
//! The `redis` crate's connection manager reconnects to the address it was given; after a
//! failover that address is a dead machine, a replica that answers writes with READONLY, or
//! worse, the old primary restarted: a primary again, by its own account, until the Sentinel
//! makes it a replica some seconds later and its data is dropped for the new primary's. Writes
//! it accepted meanwhile would be answered 200 and lost. So no connection here reconnects by
//! itself: [`Followed`] holds one multiplexed connection to the primary the Sentinels named,
//! behind an [`ArcSwap`], and a task that asks the Sentinels again: at once when a request
//! failed in a way a moved primary explains (a broken, refused or timed-out connection,
//! READONLY, MASTERDOWN), every [`POLL`] regardless, and at most once per [`MIN_GAP`]. When
//! they name another address, or the connection failed, it connects to the address they name,
//! checks with `ROLE` that the server is a primary, and swaps: the next request goes there. A
//! request that failed meanwhile is the caller's error (ingress answers 503 and WeChat resends;
//! an accept sent twice is recognised by its callback id), never a hang: every wait is bounded.
//!
//! Why not the crate's `sentinel` feature: its lookup (`SENTINEL MASTERS`, then a new
//! connection to the named primary for `ROLE`, without timeouts) opens connections on every
//! ask, and its clients do not follow a failover either. Asking `SENTINEL
//! get-master-addr-by-name` over one kept connection per Sentinel is the little this needs.
//!
//! This file imports nothing of its siblings: `options` builds the two types from
//! `[store.redis]`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::aio::{ConnectionLike as _, MultiplexedConnection};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, Pipeline, RedisError,
    RedisFuture, RedisResult, Role, ServerErrorKind, Value,
};
use tokio::sync::{Mutex, Notify};
use tracing::{debug, info, warn};

/// How often the Sentinels are asked when nothing failed: a failover that no request of this
/// instance ran into (an idle instance) is followed within this.
const POLL: Duration = Duration::from_secs(2);
/// At most one ask per this, however many requests fail while the primary is away.
const MIN_GAP: Duration = Duration::from_millis(250);
/// A Sentinel that does not answer within this is skipped for the next one.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(1);

/// The Sentinels of one primary, asked in the order of `store.redis.urls`.
pub(super) struct Sentinels {
    /// Where each Sentinel is, with its password (`sentinel_password_env`) and TLS.
    nodes: Vec<ConnectionInfo>,
    /// The primary's name in the Sentinels' configuration (`sentinel_master`).
    master: String,
    /// How to reach a data node: TLS as for the Sentinels, the database of the URL and the
    /// password of `password_env`. Its address is replaced by the Sentinels' answer.
    data: ConnectionInfo,
    /// One connection per Sentinel, opened when first needed, dropped when it fails.
    open: Mutex<Vec<Option<MultiplexedConnection>>>,
}

impl Sentinels {
    pub(super) fn new(nodes: Vec<ConnectionInfo>, master: String, data: ConnectionInfo) -> Self {
        let open = Mutex::new(nodes.iter().map(|_| None).collect());
        Sentinels {
            nodes,
            master,
            data,
            open,
        }
    }

    /// The primary's name in the Sentinels' configuration.
    pub(super) fn master(&self) -> &str {
        &self.master
    }

    /// Where the Sentinels are.
    #[cfg(test)]
    pub(super) fn nodes(&self) -> &[ConnectionInfo] {
        &self.nodes
    }

    /// Where the primary is now, by the first Sentinel that answers; one that does not is
    /// skipped (and connected to again next time).
    pub(super) async fn primary(&self) -> RedisResult<ConnectionInfo> {
        let mut open = self.open.lock().await;
        let mut last = None;
        for (node, connection) in self.nodes.iter().zip(open.iter_mut()) {
            match self.ask(node, connection).await {
                Ok(Some((host, port))) => return Ok(self.data_node(host, port)),
                Ok(None) => {
                    last = Some(RedisError::from((
                        ErrorKind::MasterNameNotFoundBySentinel,
                        "a Sentinel does not know store.redis.sentinel_master",
                        format!("{} at {}", self.master, node.addr()),
                    )));
                }
                Err(e) => {
                    debug!(sentinel = %node.addr(), error = %e, "a Sentinel did not answer");
                    *connection = None;
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            RedisError::from((ErrorKind::EmptySentinelList, "no Sentinel is configured"))
        }))
    }

    /// One Sentinel's answer: the primary's host and port, or `None` if it does not know the
    /// name.
    async fn ask(
        &self,
        node: &ConnectionInfo,
        connection: &mut Option<MultiplexedConnection>,
    ) -> RedisResult<Option<(String, u16)>> {
        let mut open = match connection.take() {
            Some(open) => open,
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(SENTINEL_TIMEOUT))
                    .set_response_timeout(Some(SENTINEL_TIMEOUT));
                redis::Client::open(node.clone())?
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?
            }
        };
        let answer: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query_async(&mut open)
            .await?;
        *connection = Some(open);
        Ok(answer)
    }

    /// The data node at `host:port`, reached as [`Sentinels::data`] says.
    pub(super) fn data_node(&self, host: String, port: u16) -> ConnectionInfo {
        let addr = match self.data.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        self.data.clone().set_addr(addr)
    }
}

/// The primary a [`Followed`] sends to now.
struct Primary {
    addr: ConnectionAddr,
    connection: MultiplexedConnection,
    /// A request on it failed as a moved primary would make it fail: replace it.
    failed: AtomicBool,
}

/// A connection to the primary the Sentinels name, that follows a failover (see the module
/// doc). Shared: every clone of the store's connection is this one.
pub(super) struct Followed {
    sentinels: Arc<Sentinels>,
    /// The timeouts of each primary's connection.
    config: AsyncConnectionConfig,
    current: ArcSwap<Primary>,
    /// Wakes the task that asks the Sentinels (a request failed).
    check: Arc<Notify>,
    /// No Sentinel answered the last ask: said once, not every [`POLL`].
    unanswered: AtomicBool,
}

impl Followed {
    /// Connects to the primary the Sentinels name, and starts following it (until the last
    /// clone is dropped).
    pub(super) async fn connect(
        sentinels: Arc<Sentinels>,
        config: AsyncConnectionConfig,
    ) -> RedisResult<Arc<Followed>> {
        let primary = connect_primary(sentinels.primary().await?, &config).await?;
        info!(
            master = %sentinels.master(),
            primary = %primary.addr,
            "store: the Sentinels name the redis primary"
        );
        let check = Arc::new(Notify::new());
        let followed = Arc::new(Followed {
            sentinels,
            config,
            current: ArcSwap::from_pointee(primary),
            check: check.clone(),
            unanswered: AtomicBool::new(false),
        });
        tokio::spawn(follow(Arc::downgrade(&followed), check));
        Ok(followed)
    }

    /// The current primary's connection: requests that must share one connection (a write
    /// and the `WAITAOF` for it) take it once.
    pub(super) fn pin(&self) -> Pinned {
        Pinned(self.current.load_full())
    }

    /// Sends `cmd` over `pinned`, or the current primary's connection.
    pub(super) fn request<'a>(
        &'a self,
        cmd: &'a Cmd,
        pinned: Option<Pinned>,
    ) -> RedisFuture<'a, Value> {
        let primary = pinned.unwrap_or_else(|| self.pin()).0;
        Box::pin(async move {
            let result = primary.connection.clone().req_packed_command(cmd).await;
            self.after(&primary, &result);
            result
        })
    }

    pub(super) fn requests<'a>(
        &'a self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
        pinned: Option<Pinned>,
    ) -> RedisFuture<'a, Vec<Value>> {
        let primary = pinned.unwrap_or_else(|| self.pin()).0;
        Box::pin(async move {
            let result = primary
                .connection
                .clone()
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.after(&primary, &result);
            result
        })
    }

    pub(super) fn db(&self) -> i64 {
        self.current.load().connection.get_db()
    }

    /// If `result` is an error a moved primary explains: `primary` is to be replaced, and the
    /// Sentinels asked soon.
    fn after<T>(&self, primary: &Primary, result: &RedisResult<T>) {
        if let Err(e) = result
            && may_have_moved(e)
        {
            primary.failed.store(true, Ordering::Relaxed);
            self.check.notify_one();
        }
    }

    /// Asks the Sentinels, and moves to the primary they name if it is another.
    async fn check(&self) {
        let info = match self.sentinels.primary().await {
            Ok(info) => {
                self.unanswered.store(false, Ordering::Relaxed);
                info
            }
            Err(e) => {
                if !self.unanswered.swap(true, Ordering::Relaxed) {
                    warn!(
                        master = %self.sentinels.master(),
                        error = %e,
                        "store: no Sentinel named the redis primary; asking again every 2 s"
                    );
                }
                return;
            }
        };
        let current = self.current.load_full();
        if *info.addr() == current.addr && !current.failed.load(Ordering::Relaxed) {
            return;
        }
        match connect_primary(info, &self.config).await {
            Ok(primary) if primary.addr == current.addr => {
                debug!(primary = %primary.addr, "store: connected to the redis primary again");
                self.current.store(Arc::new(primary));
            }
            Ok(primary) => {
                warn!(
                    master = %self.sentinels.master(),
                    from = %current.addr,
                    to = %primary.addr,
                    "store: the Sentinels name another redis primary (a failover); writes go there now"
                );
                self.current.store(Arc::new(primary));
            }
            // Not yet a primary (the Sentinel is promoting it), or not reachable yet.
            Err(e) => debug!(error = %e, "store: the primary the Sentinels name is not ready"),
        }
    }
}

/// The task that keeps a [`Followed`] on the primary: ends when the connection is dropped.
async fn follow(followed: Weak<Followed>, check: Arc<Notify>) {
    loop {
        tokio::select! {
            () = check.notified() => {}
            () = tokio::time::sleep(POLL) => {}
        }
        let Some(followed) = followed.upgrade() else {
            return;
        };
        followed.check().await;
        drop(followed);
        tokio::time::sleep(MIN_GAP).await;
    }
}

/// The current primary, held by the requests that must share one connection
/// ([`Followed::pin`]).
#[derive(Clone)]
pub(super) struct Pinned(Arc<Primary>);

/// A connection to the server at `info`, if it says it is a primary.
async fn connect_primary(
    info: ConnectionInfo,
    config: &AsyncConnectionConfig,
) -> RedisResult<Primary> {
    let addr = info.addr().clone();
    let mut connection = redis::Client::open(info)?
        .get_multiplexed_async_connection_with_config(config)
        .await?;
    let role: Role = redis::cmd("ROLE").query_async(&mut connection).await?;
    if !matches!(role, Role::Primary { .. }) {
        return Err(RedisError::from((
            ErrorKind::Server(ServerErrorKind::ReadOnly),
            "the server the Sentinels name is not a primary",
            addr.to_string(),
        )));
    }
    Ok(Primary {
        addr,
        connection,
        failed: AtomicBool::new(false),
    })
}

/// Whether `e` may mean the primary moved: the connection broke, was refused or timed out, or
/// the server is a replica now (READONLY) or lost its own primary (MASTERDOWN).
fn may_have_moved(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
            )
        )
}
