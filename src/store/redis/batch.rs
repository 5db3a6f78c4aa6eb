//! Accepts, and attempts' outcomes, on their way to Redis in batches: whatever queued up while
//! earlier batches were on their way goes in the next one, one script call per account (for
//! accepts, in one transaction behind the callbacks' hashes), each item applied as it would be
//! alone, in arrival order. An idle store sends each at once.
//!
//! A batch's error is every one of its items' error; an accept whose connection broke is sent
//! once more (its hashes are written again as they were, and the script recognises its own
//! callback ids). Before a batch of accepts is
//! answered, its writes are made to last: on `store.redis.min_replicas` replicas (`WAIT`, or
//! `WAITAOF 1 N` where the server has it), else fsynced (`WAITAOF 1 0`) where the server has
//! it ([`super::wait`]). Both wait for the writes of the connection that sends them, so that
//! connection is the one that wrote (and, with replicas, the accepts' own: a `WAIT` blocks its
//! connection, and what was sent behind it, and must not hold up lease renewals and outcomes:
//! the accepts have several connections, a batch on each in turn). Where the batch wrote
//! nothing itself (every callback in it was a resend of one stored already, perhaps by another
//! instance, or the script ran a second time after a broken connection), a small write of its
//! own comes first: the replicas acknowledging it acknowledge everything written before it.
//! What is left open is in [`super::wait`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use redis::{Pipeline, Script, ServerErrorKind, Value};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::args::Arg;
use super::options::Conn;
use super::wait::{Replicas, mark, parse, wait_aof, wait_replicas};
use crate::store::StoreError;

/// At most this many accepts (or outcomes) go in one batch.
const BATCH_MAX: usize = 64;

/// A script's reply row: fields that may be nil.
pub(super) type Row = Vec<Option<Vec<u8>>>;

/// One item's answer from a batch.
type Reply<O> = oneshot::Sender<Result<O, StoreError>>;

/// How long a batch not full waits for more items.
#[derive(Debug, Clone, Copy)]
pub(super) enum Linger {
    /// Always this long (outcomes: nothing waits on them).
    Fixed(Duration),
    /// Twice the recent gap between items, if that is under this: while items come often, a
    /// batch waits for the next one or two; after a quiet spell it goes at once. An item
    /// waits at most this long more, and only when others follow it closely.
    Paced(Duration),
}

/// The recent gap between items: a moving average (7/8 the last one), from the time each was
/// submitted. It starts at a second: no waiting until items come often.
#[derive(Debug)]
struct Gap {
    last: Option<Instant>,
    average: Duration,
}

impl Gap {
    fn new() -> Gap {
        Gap {
            last: None,
            average: Duration::from_secs(1),
        }
    }

    fn saw(&mut self, at: Instant) {
        if let Some(last) = self.last.replace(at) {
            let gap = at.saturating_duration_since(last);
            self.average = (self.average * 7 + gap) / 8;
        }
    }

    fn linger(&self, linger: Linger) -> Duration {
        match linger {
            Linger::Fixed(d) => d,
            Linger::Paced(max) if self.average * 2 < max => self.average * 2,
            Linger::Paced(_) => Duration::ZERO,
        }
    }
}

/// Sends items in batches: whatever queued up while earlier batches were on their way goes in
/// the next one (at most [`BATCH_MAX`]).
///
/// Redis's cost is mostly per call (a script's start, a round trip's reads and writes, an AOF
/// write), hardly per item: the fewer batches on their way at once, the larger each one grows
/// under load. One on its way makes batches form by themselves at moderate rates (items wait at
/// most one round trip); several are for round trips that wait on something else (a `WAIT` for
/// replicas). Where no item waits on the answer, `linger` gathers more at low rates too.
pub(super) struct Batcher<I, O> {
    queue: mpsc::UnboundedSender<(I, Reply<O>, Instant)>,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// `send` takes a batch and answers each item, in order; at most `in_flight` batches are on
    /// their way at once, and a batch not full waits as `linger` says for more. The task ends
    /// when the batcher is dropped.
    pub(super) fn spawn<F, Fut>(in_flight: usize, linger: Linger, send: F) -> Batcher<I, O>
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<O, StoreError>>> + Send + 'static,
    {
        let (queue, mut items) = mpsc::unbounded_channel::<(I, Reply<O>, Instant)>();
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        let send = Arc::new(send);
        tokio::spawn(async move {
            let mut gap = Gap::new();
            while let Some((item, reply, at)) = items.recv().await {
                gap.saw(at);
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let mut batch = vec![(item, reply)];
                let wait = gap.linger(linger);
                let until = Instant::now() + wait;
                while batch.len() < BATCH_MAX {
                    let next = match items.try_recv() {
                        Ok(next) => next,
                        Err(_) if wait.is_zero() => break,
                        Err(_) => match tokio::time::timeout_at(until, items.recv()).await {
                            Ok(Some(next)) => next,
                            _ => break,
                        },
                    };
                    gap.saw(next.2);
                    batch.push((next.0, next.1));
                }
                let send = send.clone();
                tokio::spawn(async move {
                    let (batch, replies): (Vec<I>, Vec<Reply<O>>) = batch.into_iter().unzip();
                    let answers = send(batch).await;
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        // The caller may be gone (its request was cancelled): nothing to tell.
                        let _ = reply.send(answer);
                    }
                    drop(slot);
                });
            }
        });
        Batcher { queue }
    }

    pub(super) async fn submit(&self, item: I) -> Result<O, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((item, reply, Instant::now()))
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| {
            StoreError::Unexpected("a batch of store writes ended without an answer".into())
        })?
    }
}

/// An accept or an attempt's outcome on its way: the account's key base, the script's
/// arguments for it, and for an accept the `HSET` arguments of its callback's hash (its key,
/// then field and value pairs: [`super::args::callback_hash`]), sent ahead of the script in the
/// batch's transaction; none for an outcome.
pub(super) struct BatchItem {
    pub(super) base: String,
    pub(super) args: Vec<Arg>,
    pub(super) hash: Vec<Arg>,
}

/// What the batches need of the store.
pub(super) struct BatchContext {
    /// The accepts' connections: with `replicas`, [`super::ACCEPT_CONNECTIONS`] of their own,
    /// a batch on each in turn (a `WAIT` blocks its connection, and what was sent behind it);
    /// else the store's one.
    pub(super) accept_conns: Vec<Conn>,
    /// The batches sent so far: which connection is next.
    pub(super) sent: AtomicUsize,
    /// The outcomes' connection, the store's.
    pub(super) record_conn: Conn,
    pub(super) lease_ms: u64,
    pub(super) waitaof: bool,
    /// `store.redis.min_replicas`, if not 0.
    pub(super) replicas: Option<Replicas>,
    pub(super) accept: Script,
    pub(super) record: Script,
}

/// Groups the items of a batch by account (key base), keeping each item's place.
fn by_base(items: &[BatchItem]) -> BTreeMap<&str, Vec<usize>> {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        groups.entry(item.base.as_str()).or_default().push(i);
    }
    groups
}

/// A script's replies for one group, if there is one for each item: `what` names the script.
fn one_each<O>(replies: Vec<O>, places: &[usize], what: &str) -> Result<Vec<O>, StoreError> {
    if replies.len() == places.len() {
        Ok(replies)
    } else {
        Err(StoreError::Unexpected(format!(
            "unexpected reply to {what}"
        )))
    }
}

/// Gives each item of a group (its place in the batch) its reply, or the group's error.
fn spread<O>(
    answers: &mut [Option<Result<O, StoreError>>],
    places: &[usize],
    replies: Result<Vec<O>, StoreError>,
) {
    match replies {
        Ok(replies) => {
            for (&i, reply) in places.iter().zip(replies) {
                answers[i] = Some(Ok(reply));
            }
        }
        Err(e) => {
            for &i in places {
                answers[i] = Some(Err(e.clone()));
            }
        }
    }
}

/// The batch's answers, in order; an item no group answered is an error naming `what`.
fn answered<O>(
    answers: Vec<Option<Result<O, StoreError>>>,
    what: &str,
) -> Vec<Result<O, StoreError>> {
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(StoreError::Unexpected(format!("{what} not sent")))))
        .collect()
}

impl BatchContext {
    /// One accept script per account for the batch (sent together, on the batch's connection),
    /// each callback's reply row once its account's writes last.
    pub(super) async fn accept(
        self: Arc<Self>,
        items: Vec<BatchItem>,
    ) -> Vec<Result<Row, StoreError>> {
        let mut answers: Vec<Option<Result<Row, StoreError>>> =
            items.iter().map(|_| None).collect();
        let groups = by_base(&items);
        let turn = self.sent.fetch_add(1, Ordering::Relaxed);
        let conn = &self.accept_conns[turn % self.accept_conns.len()];
        let written = join_all(groups.iter().map(|(base, places)| async {
            let rows = self.write(conn, base, places, &items).await;
            match rows {
                Ok((rows, conn, again)) => self.last(base, &rows, conn, again).await.map(|()| rows),
                Err(e) => Err(e),
            }
        }))
        .await;
        for ((_, places), rows) in groups.iter().zip(written) {
            spread(&mut answers, places, rows);
        }
        answered(answers, "accept")
    }

    /// One account's accepts: the callbacks' hashes and the accept script in one transaction.
    /// Its rows, the connection that wrote them, and whether it ran a second time.
    async fn write(
        &self,
        conn: &Conn,
        base: &str,
        places: &[usize],
        items: &[BatchItem],
    ) -> Result<(Vec<Row>, Conn, bool), StoreError> {
        let mut invocation = self.accept.key(base);
        invocation.arg(self.lease_ms);
        let mut pipe = redis::pipe();
        // Errors come back as values, so that a script missing from the server's cache (after a
        // restart or a failover) is told apart, loaded, and the whole sent again.
        pipe.atomic().ignore_errors();
        for &i in places {
            pipe.cmd("HSET").arg(&items[i].hash);
            invocation.arg(&items[i].args);
        }
        pipe.invoke_script(&invocation);
        let (reply, conn, again) = run_accept(conn, &pipe, &invocation).await?;
        let rows: Vec<Value> = parse(reply)?;
        let rows = rows
            .into_iter()
            .map(parse::<Row>)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((one_each(rows, places, "accept")?, conn, again))
    }

    /// Makes the accepts of one account's group last before they are answered: on the
    /// replicas `min_replicas` asks for, else fsynced where the server has `WAITAOF`. `again`:
    /// the script ran a second time (and wrote nothing then).
    async fn last(
        &self,
        base: &str,
        rows: &[Row],
        conn: Conn,
        again: bool,
    ) -> Result<(), StoreError> {
        let new = |r: &Row| r.first().and_then(|v| v.as_deref()) == Some(b"new");
        match self.replicas {
            Some(replicas) => {
                if again || !rows.iter().all(new) {
                    mark(&conn, base).await?;
                }
                wait_replicas(conn, base, replicas, self.waitaof).await
            }
            None if self.waitaof && rows.iter().any(new) => wait_aof(conn, base).await,
            None => Ok(()),
        }
    }

    /// One record script per account for the batch; 1 (applied) or 0 (lease lost) each.
    pub(super) async fn record(
        self: Arc<Self>,
        items: Vec<BatchItem>,
    ) -> Vec<Result<i64, StoreError>> {
        let mut answers: Vec<Option<Result<i64, StoreError>>> =
            items.iter().map(|_| None).collect();
        for (base, places) in by_base(&items) {
            let mut invocation = self.record.key(base);
            for &i in &places {
                invocation.arg(&items[i].args);
            }
            let applied = invocation
                .invoke_async::<Vec<i64>>(&mut self.record_conn.clone())
                .await
                .map_err(StoreError::from)
                .and_then(|applied| one_each(applied, &places, "record"));
            spread(&mut answers, &places, applied);
        }
        answered(answers, "outcome")
    }
}

/// Sends an accept transaction (`pipe`: the callbacks' hashes, then `invocation`, the script)
/// on `accept_conn`; once more if the connection broke (it may have run: the hashes are written
/// again as they were, and the script recognises its callback ids and writes nothing), or if
/// the server did not have the script. Its reply, the connection that wrote it (held to one
/// server, [`Conn::pinned`]) for what waits for the write, and whether it ran a second time.
async fn run_accept(
    accept_conn: &Conn,
    pipe: &Pipeline,
    invocation: &redis::ScriptInvocation<'_>,
) -> Result<(Value, Conn, bool), StoreError> {
    let mut conn = accept_conn.pinned();
    let (conn, again, reply) = match transaction(&mut conn, pipe).await {
        Ok(reply) => (conn, false, reply),
        Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
            // Pinned again: after a failover that was followed meanwhile, the new primary.
            let mut conn = accept_conn.pinned();
            let reply = transaction(&mut conn, pipe).await?;
            (conn, true, reply)
        }
        Err(e) => return Err(e.into()),
    };
    let mut conn = conn;
    let reply = match reply {
        Value::ServerError(e) if e.kind() == Some(ServerErrorKind::NoScript) => {
            invocation.load_async(&mut conn).await?;
            transaction(&mut conn, pipe).await?
        }
        reply => reply,
    };
    match reply {
        Value::ServerError(e) => Err(redis::RedisError::from(e).into()),
        reply => Ok((reply, conn, again)),
    }
}

/// Runs an accept transaction: the script's reply (a server error as a value), once every
/// `HSET` before it succeeded.
async fn transaction(conn: &mut Conn, pipe: &Pipeline) -> redis::RedisResult<Value> {
    let mut replies: Vec<Value> = pipe.query_async(conn).await?;
    let script = replies.pop().unwrap_or(Value::Nil);
    if let Some(Value::ServerError(e)) = replies
        .into_iter()
        .find(|r| matches!(r, Value::ServerError(_)))
    {
        return Err(e.into());
    }
    Ok(script)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A paced linger waits twice the recent gap while items come often, and not at all
    /// when they do not, or after a quiet spell; a fixed one always waits.
    #[test]
    fn a_paced_linger_follows_the_gap_between_items() {
        let max = Linger::Paced(Duration::from_millis(1));
        let mut gap = Gap::new();
        let start = Instant::now();
        assert_eq!(
            gap.linger(max),
            Duration::ZERO,
            "no waiting before items come often"
        );
        for i in 0..200 {
            gap.saw(start + Duration::from_micros(300) * i);
        }
        let waits = gap.linger(max);
        assert!(
            waits > Duration::from_micros(500) && waits < Duration::from_micros(700),
            "{waits:?}"
        );
        // A quiet spell: the next item goes at once.
        gap.saw(start + Duration::from_secs(2));
        assert_eq!(gap.linger(max), Duration::ZERO);
        // Items 0.6 ms apart would wait 1.2 ms: more than the most, so not at all.
        let mut slow = Gap::new();
        for i in 0..200 {
            slow.saw(start + Duration::from_micros(600) * i);
        }
        assert_eq!(slow.linger(max), Duration::ZERO);
        assert_eq!(
            slow.linger(Linger::Fixed(Duration::from_millis(2))),
            Duration::from_millis(2)
        );
    }
}
