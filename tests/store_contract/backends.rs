//! The stores under test: a SQLite file, a standalone Redis and a Redis Cluster (started once
//! per test binary, a key prefix per test), and two instances sharing one Redis.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wechat_fanout::config::Synchronous;
use wechat_fanout::store::{RedisOptions, RedisStore, SqliteStore, Store};

use crate::redis_server::{RedisCluster, RedisServer};

pub(crate) fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("store.db"), Synchronous::Full).unwrap();
    (Arc::new(store), dir)
}

static STANDALONE: OnceLock<RedisServer> = OnceLock::new();
static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();

/// A key prefix no other test of this run uses.
pub(crate) fn prefix() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "contract-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The options of a store on the test's Redis, as `[store.redis]`'s defaults would make them.
pub(crate) fn redis_options(
    urls: Vec<String>,
    cluster: bool,
    prefix: &str,
    lease_ms: u64,
) -> RedisOptions {
    RedisOptions {
        urls,
        cluster,
        key_prefix: prefix.to_owned(),
        lease_ms,
        max_memory_used_ratio: 0.95,
        min_replicas: 0,
        min_replicas_timeout_ms: 1000,
        accept_linger_ms: 1,
        password: None,
        sentinel_master: None,
        sentinel_password: None,
    }
}

pub(crate) async fn open_redis(
    urls: Vec<String>,
    cluster: bool,
    prefix: &str,
    lease_ms: u64,
) -> RedisStore {
    RedisStore::open(&redis_options(urls, cluster, prefix, lease_ms))
        .await
        .expect("the store opens on the test's redis")
}

pub(crate) fn standalone_urls() -> Vec<String> {
    vec![STANDALONE.get_or_init(|| RedisServer::start(&[])).url()]
}

pub(crate) fn cluster_urls() -> Vec<String> {
    CLUSTER.get_or_init(|| RedisCluster::start(3)).urls()
}

pub(crate) async fn redis_standalone() -> (Arc<dyn Store>, ()) {
    let store = open_redis(standalone_urls(), false, &prefix(), 30_000).await;
    (Arc::new(store), ())
}

pub(crate) async fn redis_cluster() -> (Arc<dyn Store>, ()) {
    let store = open_redis(cluster_urls(), true, &prefix(), 30_000).await;
    (Arc::new(store), ())
}

/// How long a lease lasts in the tests of several instances.
pub(crate) const SHORT_LEASE: Duration = Duration::from_millis(400);

/// Two instances (two stores, one server and prefix) with [`SHORT_LEASE`].
pub(crate) async fn two_instances(
    urls: Vec<String>,
    cluster: bool,
) -> (Arc<dyn Store>, Arc<dyn Store>) {
    let prefix = prefix();
    let lease_ms = SHORT_LEASE.as_millis() as u64;
    let a = open_redis(urls.clone(), cluster, &prefix, lease_ms).await;
    let b = open_redis(urls, cluster, &prefix, lease_ms).await;
    (Arc::new(a), Arc::new(b))
}

/// Opens the SQLite store at `path` once the previous store's writer thread has let go of it
/// (it holds the file until its channel closes, a moment after the store is dropped).
pub(crate) async fn open_when_released(path: &std::path::Path) -> SqliteStore {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match SqliteStore::open(path, Synchronous::Full) {
            Ok(store) => return store,
            Err(e) if std::time::Instant::now() > until => {
                panic!("{} does not open: {e}", path.display())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}
