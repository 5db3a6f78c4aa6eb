//! Waiting for writes to last: on `store.redis.min_replicas` replicas (`WAIT`, or `WAITAOF 1 N`
//! where the server has it), or fsynced (`WAITAOF 1 0`), before an accept is answered.
//!
//! Both commands wait for the writes *of the connection that sends them*: Redis remembers each
//! connection's replication offset after its last write, which covers every write before it, on
//! that server, by anyone. So they go over the connection that wrote, and a write that wrote
//! nothing (a resend answered from a first copy another instance stored, an accept script run a
//! second time) makes a small write of its own first ([`mark`]). Every `WAIT` goes in one
//! pipeline behind a read of a key in the slot it waits for: on a Cluster the pipeline is routed
//! by that key, so it reaches the slot's primary or fails (MOVED), where the client, unable to
//! reach that primary, would send a keyless command to any node, whose replicas a bare `WAIT`
//! would count instead (the Cluster test caught that). A read, not a write: a write would cost
//! an fsync of its own per `WAIT` with `appendfsync always` (on the load bench, 0.8× the
//! throughput).
//!
//! A `WAIT` also blocks its connection until it returns: the batches' scripts sent meanwhile
//! queue behind it on the server. Each sending a `WAIT` of its own once its script ran would make
//! the connection alternate script, `WAIT`, script, `WAIT`. So one `WAIT` at a time per
//! connection, shared ([`Waits`]): the batches whose writes finish while one is on its way (or
//! queued behind it) wait for the next one, sent once the first is answered, which covers them
//! all. Under load one `WAIT` answers every batch that queued up meanwhile; an idle store sends
//! each at once. A write waits for at most two `WAIT`s: with replicas that do not acknowledge,
//! 503 after twice `min_replicas_timeout_ms` at worst.
//!
//! What is left open. Behind Sentinels the accepts' connection is pinned to the primary that took
//! the write, and never reconnects by itself: a `WAIT` fails rather than land elsewhere. A
//! standalone server's connection manager, and a Cluster node's connection, can reconnect between
//! a write and its `WAIT` if the connection breaks in that instant: the `WAIT` then covers
//! nothing of the broken connection's writes. And on a Cluster, a failover that completed between
//! a write and its `WAIT` (at most one other `WAIT`, `min_replicas_timeout_ms`, apart) sends the
//! `WAIT` to the new primary, which may lack the write: `min_replicas_timeout_ms` is kept well
//! below `cluster-node-timeout`, the least a failover takes.

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
/// How long the mark lives (it only orders the replication stream).
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
        .arg(mark_key(base))
        .arg(rand::random::<u64>())
        .arg("PX")
        .arg(MARK_TTL_MS)
        .query_async(&mut conn.clone())
        .await?;
    Ok(())
}

/// The mark's key for `key`: in its slot (its hash tag, or `key` itself as the tag).
fn mark_key(key: &str) -> String {
    let tagged = format!("{key}:replicated");
    if Slot::for_key(&tagged) == Slot::for_key(key) {
        tagged
    } else {
        format!("{{{key}}}:replicated")
    }
}

/// `WAIT` (or `WAITAOF 1 N` with `waitaof`: the server has it and its AOF is on, which also
/// waits for the local fsync and the replicas' own), behind a read in `key`'s slot in one
/// pipeline to the node that serves it: until the writes so far on `conn` are on
/// `replicas.count` replicas.
async fn wait_replicas(
    mut conn: Conn,
    key: &str,
    replicas: Replicas,
    waitaof: bool,
) -> Result<(), StoreError> {
    let Replicas { count, timeout_ms } = replicas;
    let mut pipe = redis::pipe();
    pipe.cmd("EXISTS").arg(mark_key(key)).ignore();
    if waitaof {
        pipe.cmd("WAITAOF").arg(1).arg(count).arg(timeout_ms);
    } else {
        pipe.cmd("WAIT").arg(count).arg(timeout_ms);
    }
    let (reply,): (Value,) = pipe.query_async(&mut conn).await?;
    let (local, acknowledged) = if waitaof {
        let counts: Vec<i64> = parse(reply)?;
        (
            counts.first().copied().unwrap_or(0),
            counts.get(1).copied().unwrap_or(0),
        )
    } else {
        (1, parse(reply)?)
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
