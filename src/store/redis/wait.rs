//! Waiting for writes to last: on `store.redis.min_replicas` replicas (`WAIT`, or `WAITAOF 1 N`
//! where the server has it), or fsynced (`WAITAOF 1 0`), before an accept is answered.
//!
//! Both commands wait for the writes *of the connection that sends them* (Redis remembers each
//! connection's replication offset after its last write, which covers every write before it, by
//! anyone), so they go over the connection that wrote. A `WAIT` also blocks its connection until
//! it returns: the batches' scripts sent meanwhile queue behind it on the server. Each sending a
//! `WAIT` of its own once its script ran would make the connection alternate script, `WAIT`,
//! script, `WAIT`. So one `WAIT` at a time per connection, shared ([`Waits`]): the batches whose
//! writes finish while one is on its way (or queued behind it) wait for the next one, sent once
//! the first is answered, which covers them all. Under load one `WAIT` answers every batch that
//! queued up meanwhile; an idle store sends each at once. A write waits for at most two `WAIT`s:
//! with replicas that do not acknowledge, 503 after twice `min_replicas_timeout_ms` at worst.
//!
//! Where a connection is one: behind Sentinels, the primary a request was pinned to (a
//! failover gives a new one); on a Cluster, the connection to the node that serves a slot (a
//! group per slot); standalone, the one connection. Standalone and Cluster connections can
//! reconnect between a write and its `WAIT` (see `batch`): the group is the same, the `WAIT`
//! covers nothing of the broken connection's writes. A narrow window, left open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Cmd, RedisError, Value};

use super::batch::parse;
use super::options::Conn;
use super::sentinel::Pinned;
use crate::store::StoreError;

/// How long a new accept waits for `WAITAOF` (its fsync).
const WAITAOF_TIMEOUT_MS: u64 = 2000;
/// How long the small write before a `WAIT` lives (it only orders the replication stream).
const MARK_TTL_MS: u64 = 60_000;
/// Groups of primaries left behind by failovers are dropped beyond this many groups.
const GROUPS_KEPT: usize = 64;

/// How many replicas must acknowledge a write before it is answered
/// (`store.redis.min_replicas`), and how long to wait for them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Replicas {
    pub(super) count: u32,
    pub(super) timeout_ms: u64,
}

/// The `WAIT`s of a store: one at a time per connection, shared by the writes that finished
/// while one was on its way (see the module doc).
pub(super) struct Waits {
    replicas: Replicas,
    /// The server has `WAITAOF` and AOF is on: `WAITAOF 1 N` instead of `WAIT N`.
    waitaof: bool,
    groups: Mutex<HashMap<Group, Arc<Shared>>>,
}

/// What one connection is, for sharing its `WAIT`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Group {
    Single,
    Slot(Slot),
    Primary(u64),
}

/// One connection's shared `WAIT`.
struct Shared {
    /// Writes finished on the connection and waiting for replicas, counted since the start.
    written: AtomicU64,
    /// The last `WAIT`: how many writes it covered (the count of `written` when it was sent),
    /// and its answer. Held while one is on its way, so that the next waits for it.
    last: tokio::sync::Mutex<(u64, Result<(), StoreError>)>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            written: AtomicU64::new(0),
            last: tokio::sync::Mutex::new((0, Ok(()))),
        }
    }
}

impl Waits {
    pub(super) fn new(replicas: Replicas, waitaof: bool) -> Waits {
        Waits {
            replicas,
            waitaof,
            groups: Mutex::new(HashMap::new()),
        }
    }

    /// Waits until a write that `conn` (pinned) just finished, on the node that serves `key`, is
    /// on the replicas: a `WAIT` sent after it on the same connection, its own or a shared one.
    pub(super) async fn replicated(&self, conn: &Conn, key: &str) -> Result<(), StoreError> {
        // Not pinned (behind Sentinels): the current primary, to which the `WAIT` is held too.
        let conn = match conn {
            Conn::Sentinel(_, None) => conn.pinned(),
            other => other.clone(),
        };
        let group = match &conn {
            Conn::Single(_) => Group::Single,
            Conn::Cluster(_) => Group::Slot(Slot::for_key(key)),
            Conn::Sentinel(_, pinned) => Group::Primary(pinned.as_ref().map_or(0, Pinned::serial)),
        };
        let shared = self.shared(group);
        let mine = shared.written.fetch_add(1, Ordering::SeqCst) + 1;
        let mut last = shared.last.lock().await;
        if last.0 >= mine {
            // A `WAIT` sent after this write finished answered for it.
            return last.1.clone();
        }
        // The scripts answered with this one (queued behind the last `WAIT`) have their tasks
        // woken: one turn lets them count themselves in.
        tokio::task::yield_now().await;
        // Every write counted so far finished before this `WAIT` is sent on their connection.
        let covered = shared.written.load(Ordering::SeqCst);
        let result = wait_replicas(conn, key, self.replicas, self.waitaof).await;
        *last = (covered, result.clone());
        result
    }

    fn shared(&self, group: Group) -> Arc<Shared> {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if groups.len() >= GROUPS_KEPT && !groups.contains_key(&group) {
            // Primaries of failovers past that nothing waits on.
            groups.retain(|g, shared| !matches!(g, Group::Primary(_)) || Arc::strong_count(shared) > 1);
        }
        groups.entry(group).or_default().clone()
    }
}

/// Sends `cmd` (a `WAIT` or `WAITAOF`, which name no key) to the node that serves `key`, over
/// `conn`: on a Cluster, the primary of its slot.
async fn on_node_of(conn: Conn, key: &str, cmd: Cmd) -> Result<Value, RedisError> {
    match conn {
        Conn::Cluster(mut c) => {
            let route = Route::with_slot(Slot::for_key(key), SlotAddr::Master);
            c.route_command(
                cmd,
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
            )
            .await
        }
        mut c => cmd.query_async(&mut c).await,
    }
}

/// A small write of this connection's own on the node that serves `base`, so that a `WAIT`
/// after it covers what was written there before it (by anyone).
pub(super) async fn mark(conn: &Conn, base: &str) -> Result<(), StoreError> {
    let () = redis::cmd("SET")
        .arg(format!("{base}:replicated"))
        .arg(rand::random::<u64>())
        .arg("PX")
        .arg(MARK_TTL_MS)
        .query_async(&mut conn.clone())
        .await?;
    Ok(())
}

/// Waits until the writes so far on `conn`, to the node that serves `key`, are on
/// `replicas.count` replicas: `WAIT`; with `waitaof` (the server has `WAITAOF`, its AOF is on)
/// `WAITAOF 1 N`, which also waits for the local fsync and for the replicas' own AOF fsync.
async fn wait_replicas(
    conn: Conn,
    key: &str,
    replicas: Replicas,
    waitaof: bool,
) -> Result<(), StoreError> {
    let Replicas { count, timeout_ms } = replicas;
    let (local, acknowledged) = if waitaof {
        let mut cmd = redis::cmd("WAITAOF");
        cmd.arg(1).arg(count).arg(timeout_ms);
        let counts: Vec<i64> = parse(on_node_of(conn, key, cmd).await?)?;
        (
            counts.first().copied().unwrap_or(0),
            counts.get(1).copied().unwrap_or(0),
        )
    } else {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(count).arg(timeout_ms);
        (1, parse(on_node_of(conn, key, cmd).await?)?)
    };
    if local < 1 {
        return Err(StoreError::Timeout(
            "redis did not write the callback to its append-only file in time".into(),
        ));
    }
    if acknowledged < i64::from(count) {
        return Err(StoreError::NotReplicated(format!(
            "written, but {acknowledged} of the {count} replicas store.redis.min_replicas asks \
             for acknowledged it within {timeout_ms} ms{}",
            if waitaof {
                " (WAITAOF: in their append-only file, so their appendonly must be yes)"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

/// Waits until the writes so far on the connection that serves `base` are fsynced.
pub(super) async fn wait_aof(conn: Conn, base: &str) -> Result<(), StoreError> {
    let mut cmd = redis::cmd("WAITAOF");
    cmd.arg(1).arg(0).arg(WAITAOF_TIMEOUT_MS);
    let reply = on_node_of(conn, base, cmd).await?;
    let counts: Vec<i64> = parse(reply)?;
    if counts.first().copied().unwrap_or(0) < 1 {
        return Err(StoreError::Timeout(
            "redis did not write the callback to its append-only file in time".into(),
        ));
    }
    Ok(())
}
