//! How to reach Redis: the options `[store.redis]` gives (one URL, or a Cluster's seed nodes;
//! `rediss://` for TLS by rustls; a password from the environment), and the one connection
//! the store uses, standalone (reconnecting) or Cluster.
//!
//! Every wait is bounded ([`CONNECT_TIMEOUT`], [`RESPONSE_TIMEOUT`]): an unreachable Redis is an
//! error in time for ingress to answer 503, never a hang.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, Value};

use crate::config::{RedisConfig, redact_url};
use crate::store::StoreError;

/// answers 503 anyway, so an unreachable Redis is an error in time, not a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// How to reach Redis; made from `[store.redis]`.
#[derive(Clone)]
pub struct RedisOptions {
    /// One URL (standalone), or the seed nodes of a Cluster.
    pub urls: Vec<String>,
    pub cluster: bool,
    pub key_prefix: String,
    pub lease_ms: u64,
    /// Not ready at or above this fraction of `maxmemory` in use.
    pub max_memory_used_ratio: f64,
    /// Overrides a password in the URLs.
    pub password: Option<String>,
}

impl RedisOptions {
    /// The options `[store.redis]` names, with the password from `password_env`.
    pub fn from_config(config: &RedisConfig) -> Result<RedisOptions, StoreError> {
        Ok(RedisOptions {
            urls: config.urls.clone(),
            cluster: config.cluster,
            key_prefix: config.key_prefix.clone(),
            lease_ms: config.lease_ms.0,
            max_memory_used_ratio: f64::from(config.max_memory_used_percent) / 100.0,
            password: config
                .password()
                .map_err(|e| StoreError::Refused(e.to_string()))?,
        })
    }

    /// Where to connect: one entry per URL, with the password of `password_env` if set.
    pub fn connection_infos(&self) -> Result<Vec<ConnectionInfo>, StoreError> {
        let mut infos = Vec::with_capacity(self.urls.len());
        for url in &self.urls {
            let mut info = url
                .as_str()
                .into_connection_info()
                .map_err(|e| StoreError::Refused(format!("redis URL {}: {e}", redact_url(url))))?;
            if let Some(password) = &self.password {
                let settings = info.redis_settings().clone().set_password(password);
                info = info.set_redis_settings(settings);
            }
            infos.push(info);
        }
        Ok(infos)
    }
}

impl RedisOptions {
    /// Connects: to the Cluster the URLs seed, or to the one standalone server (reconnecting).
    pub(super) async fn connect(&self) -> Result<Conn, StoreError> {
        let infos = self.connection_infos()?;
        Ok(if self.cluster {
            let mut builder = redis::cluster::ClusterClient::builder(infos)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT);
            if let Some(password) = &self.password {
                builder = builder.password(password.clone());
            }
            Conn::Cluster(builder.build()?.get_async_connection().await?)
        } else {
            let [info] = <[_; 1]>::try_from(infos).map_err(|_| {
                StoreError::Refused("standalone redis takes exactly one URL".into())
            })?;
            let client = redis::Client::open(info)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            Conn::Single(ConnectionManager::new_with_config(client, config).await?)
        })
    }
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field(
                "urls",
                &self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .field("cluster", &self.cluster)
            .field("key_prefix", &self.key_prefix)
            .field("lease_ms", &self.lease_ms)
            .finish_non_exhaustive()
    }
}

/// One connection to standalone Redis (reconnecting) or to a Cluster; cheap to clone.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
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
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}
