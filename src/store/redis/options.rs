//! How to reach Redis: the options `[store.redis]` gives (one URL, a Cluster's seed nodes, or
//! the Sentinels of a primary; `rediss://` for TLS by rustls; passwords from the environment),
//! and the one connection the store uses: standalone (reconnecting), Cluster, or the primary
//! the Sentinels name (following a failover, [`super::sentinel`]).
//!
//! Every wait is bounded ([`CONNECT_TIMEOUT`], [`RESPONSE_TIMEOUT`]): an unreachable Redis is an
//! error in time for ingress to answer 503, never a hang.

use std::time::Duration;

use std::sync::Arc;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisConnectionInfo,
    RedisError, RedisFuture, ServerErrorKind, Value,
};

use super::sentinel::{Followed, Pinned, Sentinels};
use crate::config::{RedisConfig, redact_url};
use crate::store::StoreError;

/// answers 503 anyway, so an unreachable Redis is an error in time, not a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// How to reach Redis; made from `[store.redis]`.
#[derive(Clone)]
pub struct RedisOptions {
    /// One URL (standalone), the seed nodes of a Cluster, or the Sentinels (with
    /// `sentinel_master`).
    pub urls: Vec<String>,
    pub cluster: bool,
    /// The primary's name in the Sentinels' configuration: `urls` are the Sentinels.
    pub sentinel_master: Option<String>,
    pub key_prefix: String,
    pub lease_ms: u64,
    /// Not ready at or above this fraction of `maxmemory` in use.
    pub max_memory_used_ratio: f64,
    /// Replicas that must acknowledge an accept before it is answered (0: none).
    pub min_replicas: u32,
    /// How long an accept waits for them.
    pub min_replicas_timeout_ms: u64,
    /// The most an accept waits for company ([`super::batch::Linger::Paced`]).
    pub accept_linger_ms: u64,
    /// The data nodes' password; overrides a password in the URLs (with Sentinels: the data
    /// nodes have only this one).
    pub password: Option<String>,
    /// The Sentinels' password; overrides a password in their URLs.
    pub sentinel_password: Option<String>,
}

impl RedisOptions {
    /// The options `[store.redis]` names, with the password from `password_env`.
    pub fn from_config(config: &RedisConfig) -> Result<RedisOptions, StoreError> {
        Ok(RedisOptions {
            urls: config.urls.clone(),
            cluster: config.cluster,
            sentinel_master: config.sentinel_master.clone(),
            key_prefix: config.key_prefix.clone(),
            lease_ms: config.lease_ms.0,
            max_memory_used_ratio: f64::from(config.max_memory_used_percent) / 100.0,
            min_replicas: u32::from(config.min_replicas),
            min_replicas_timeout_ms: config.min_replicas_timeout_ms.0,
            accept_linger_ms: config.accept_linger_ms.0,
            password: config
                .password()
                .map_err(|e| StoreError::Refused(e.to_string()))?,
            sentinel_password: config
                .sentinel_password()
                .map_err(|e| StoreError::Refused(e.to_string()))?,
        })
    }

    /// Where to connect: one entry per URL, with the password of `password_env` if set.
    pub fn connection_infos(&self) -> Result<Vec<ConnectionInfo>, StoreError> {
        self.infos_with(self.password.as_deref())
    }

    /// One entry per URL, with `password` (if set) instead of the URL's.
    fn infos_with(&self, password: Option<&str>) -> Result<Vec<ConnectionInfo>, StoreError> {
        let mut infos = Vec::with_capacity(self.urls.len());
        for url in &self.urls {
            let mut info = url
                .as_str()
                .into_connection_info()
                .map_err(|e| StoreError::Refused(format!("redis URL {}: {e}", redact_url(url))))?;
            if let Some(password) = password {
                let settings = info.redis_settings().clone().set_password(password);
                info = info.set_redis_settings(settings);
            }
            infos.push(info);
        }
        Ok(infos)
    }

    /// The Sentinels `urls` name, if `sentinel_master` is set: asked with their URL's password
    /// (or `sentinel_password`) and no database; the data nodes are reached with TLS as the
    /// first URL says, its database, and `password` alone.
    pub(super) fn sentinels(&self) -> Result<Option<Sentinels>, StoreError> {
        let Some(master) = &self.sentinel_master else {
            return Ok(None);
        };
        let nodes: Vec<ConnectionInfo> = self
            .infos_with(self.sentinel_password.as_deref())?
            .into_iter()
            .map(|info| {
                // A Sentinel has no databases: a SELECT would be refused.
                let settings = info.redis_settings().clone().set_db(0);
                info.set_redis_settings(settings)
            })
            .collect();
        let first = nodes
            .first()
            .ok_or_else(|| StoreError::Refused("store.redis.urls names no Sentinel".into()))?;
        let db = self.connection_infos()?[0].redis_settings().db();
        let mut settings = RedisConnectionInfo::default().set_db(db);
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        let data = first.clone().set_redis_settings(settings);
        Ok(Some(Sentinels::new(nodes, master.clone(), data)))
    }

    /// The nodes the console's feed talks to, asked anew at each reconnect: the URLs, or the
    /// primary the Sentinels name then.
    pub fn nodes(&self) -> Result<RedisNodes, StoreError> {
        Ok(RedisNodes(match self.sentinels()? {
            Some(sentinels) => Nodes::Sentinels(Arc::new(sentinels)),
            None => Nodes::Fixed(Arc::new(self.connection_infos()?)),
        }))
    }
}

/// Where the nodes are now (see [`RedisOptions::nodes`]). Cheap to clone.
#[derive(Clone)]
pub struct RedisNodes(Nodes);

impl std::fmt::Debug for RedisNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The nodes' settings hold passwords.
        f.debug_struct("RedisNodes").finish_non_exhaustive()
    }
}

#[derive(Clone)]
enum Nodes {
    Fixed(Arc<Vec<ConnectionInfo>>),
    Sentinels(Arc<Sentinels>),
}

impl RedisNodes {
    /// The URLs' nodes, or the primary the Sentinels name now (none if no Sentinel answers).
    pub async fn now(&self) -> Vec<ConnectionInfo> {
        match &self.0 {
            Nodes::Fixed(nodes) => nodes.to_vec(),
            Nodes::Sentinels(sentinels) => sentinels.primary().await.into_iter().collect(),
        }
    }
}

impl RedisOptions {
    /// Connects: to the Cluster the URLs seed, to the primary the Sentinels name (following
    /// it), or to the one standalone server (reconnecting).
    pub(super) async fn connect(&self) -> Result<Conn, StoreError> {
        self.connect_with(true).await
    }

    /// The same for writes that a `WAIT` must follow on the node that took them: on a Cluster,
    /// the client does not send a request again by itself (after a broken connection or a
    /// redirect it would send it to the slot's new primary, where a `WAIT` proves nothing of a
    /// write the old one took). Such a request fails instead; the slots are refreshed all the
    /// same, for the next.
    pub(super) async fn connect_for_waits(&self) -> Result<Conn, StoreError> {
        self.connect_with(false).await
    }

    async fn connect_with(&self, resend: bool) -> Result<Conn, StoreError> {
        if let Some(sentinels) = self.sentinels()? {
            if self.cluster {
                return Err(StoreError::Refused(
                    "store.redis.sentinel_master: not with cluster = true".into(),
                ));
            }
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT));
            let followed = Followed::connect(Arc::new(sentinels), config).await?;
            return Ok(Conn::Sentinel(followed, None));
        }
        let infos = self.connection_infos()?;
        Ok(if self.cluster {
            let mut builder = redis::cluster::ClusterClient::builder(infos)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT);
            if !resend {
                builder = builder.retries(0);
            }
            if let Some(password) = &self.password {
                builder = builder.password(password.clone());
            }
            Conn::Cluster(builder.build()?.get_async_connection().await?)
        } else {
            let [info] = <[_; 1]>::try_from(infos).map_err(|_| {
                StoreError::Refused("standalone redis takes exactly one URL".into())
            })?;
            let client = redis::Client::open(info)?;
            Conn::Single(ConnectionManager::new_with_config(client, manager_config()).await?)
        })
    }
}

/// The timeouts and retries of a standalone server's manager.
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1))
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field(
                "urls",
                &self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .field("cluster", &self.cluster)
            .field("sentinel_master", &self.sentinel_master)
            .field("key_prefix", &self.key_prefix)
            .field("lease_ms", &self.lease_ms)
            .field("min_replicas", &self.min_replicas)
            .finish_non_exhaustive()
    }
}

/// One connection to standalone Redis (reconnecting), to a Cluster, or to the primary the
/// Sentinels name (following it); cheap to clone.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    /// The followed primary, and the connection this clone is held to ([`Conn::pinned`]).
    Sentinel(Arc<Followed>, Option<Pinned>),
}

impl Conn {
    /// This connection, held to one server: with Sentinels, the current primary's, so that
    /// a write and what waits for it (`WAITAOF`) go over one connection even if a failover is
    /// followed between them.
    pub(super) fn pinned(&self) -> Conn {
        match self {
            Conn::Sentinel(followed, _) => Conn::Sentinel(followed.clone(), Some(followed.pin())),
            other => other.clone(),
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c, pinned) => c.request(cmd, pinned.clone()),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => Box::pin(async move {
                let replies = c.req_packed_commands(pipeline, offset, count).await;
                if let Err(e) = &replies
                    && redirected(e)
                {
                    follow_the_slots(c, pipeline).await;
                }
                replies
            }),
            Conn::Sentinel(c, pinned) => c.requests(pipeline, offset, count, pinned.clone()),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(c, _) => c.db(),
        }
    }
}

/// A Cluster node answered that another has the slot (`MOVED`, `ASK`), itself or inside an
/// aborted transaction: the slot moved (a failover).
fn redirected(e: &RedisError) -> bool {
    let redirect = |kind: Option<ServerErrorKind>| {
        matches!(kind, Some(ServerErrorKind::Moved | ServerErrorKind::Ask))
    };
    e.redirect_node().is_some()
        || e.clone()
            .into_server_errors()
            .is_some_and(|errors| errors.iter().any(|(_, error)| redirect(error.kind())))
}

/// The Cluster client learns where slots moved from a single command's redirect, not from one
/// inside a transaction (an accept's), and would send every next transaction to the node that
/// lost the slot: a read of the pipeline's first key makes it rebuild its map (the transaction
/// itself fails as unavailable; an accept's is resent by WeChat).
async fn follow_the_slots(conn: &mut ClusterConnection, pipeline: &Pipeline) {
    let Some(redis::Arg::Simple(key)) = pipeline.cmd_iter().find_map(|cmd| cmd.args_iter().nth(1))
    else {
        return;
    };
    let _: redis::RedisResult<Value> = redis::cmd("EXISTS").arg(key).query_async(conn).await;
}
