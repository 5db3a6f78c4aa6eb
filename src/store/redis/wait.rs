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
//! would count instead (the Cluster test caught that). A read, not a write: a write would cost an
//! fsync of its own per `WAIT` with `appendfsync always`.
//!
//! Each batch sends its own `WAIT`. Redis shares them by itself: a `WAIT` queued behind another
//! returns at once when the replicas' last acknowledgement already covers its connection's
//! writes, which it does for every batch written before that acknowledgement was asked for.
//! (Sharing them here instead, one `WAIT` at a time and the batches that finished meanwhile
//! waiting for the next, measured 0.86× the throughput on the load bench: a batch then waited for
//! a fresh acknowledgement although the last one covered it.) What costs is that a `WAIT` blocks
//! its connection until the replicas answer, and the scripts sent behind it wait too; so the
//! accepts have connections of their own, several, one batch on each in turn (see `batch`).
//!
//! What is left open. Behind Sentinels the accepts' connections are pinned to the primary that
//! took the write, and never reconnect by themselves: a `WAIT` fails rather than land elsewhere.
//! A standalone server's connection manager, and a Cluster node's connection, can reconnect
//! between a write and its `WAIT` if the connection breaks in that instant: the `WAIT` then covers
//! nothing of the broken connection's writes. And on a Cluster, a failover that completed between
//! a write and its `WAIT` would send the `WAIT` to the new primary, which may lack the write; a
//! failover takes at least `cluster-node-timeout` after the primary stopped answering.

use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{Cmd, RedisError, Value};

use super::options::Conn;
use crate::store::StoreError;

/// How long a new accept waits for `WAITAOF` (its fsync).
const WAITAOF_TIMEOUT_MS: u64 = 2000;
/// How long the mark lives (it only orders the replication stream).
const MARK_TTL_MS: u64 = 60_000;

/// How many replicas must acknowledge a write before it is answered
/// (`store.redis.min_replicas`), and how long to wait for them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Replicas {
    pub(super) count: u32,
    pub(super) timeout_ms: u64,
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
pub(super) async fn wait_replicas(
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

/// A script's reply as `T`; a reply of another shape is the store's unexpected error.
pub(super) fn parse<T: redis::FromRedisValue>(value: Value) -> Result<T, StoreError> {
    redis::from_redis_value(value)
        .map_err(|e| StoreError::Unexpected(format!("unexpected reply: {e}")))
}
