//! The shared store: Redis (standalone or Cluster), so several instances act as one proxy.
//!
//! **Keys.** Every key of an account shares one hash tag, `<prefix>:{<account>}:…`, so each
//! operation on an account touches one Cluster slot and runs as one Lua script, or, for an accept,
//! one transaction (`MULTI`: each callback's hash by a plain `HSET`, then the script, which decides
//! the dedupe insert-if-absent, deletes a resend's hash, and writes the jobs and indexes): an
//! accept is atomic across its targets. Per account: `dedupe` (hash: dedupe key → callback id),
//! `cb:<id>` (hash: the request, the answer, `open` jobs, and the lease tokens of jobs leased at
//! accept, `l:<t>`, held there until their first outcome), `inline` (zset: callbacks holding such
//! jobs, by lease expiry; see `lua/prelude_inline.lua`), `job:<id>` (hash, for every other job:
//! state `p`ending, in `f`light or `d`ead, lease token, attempts…), `att:<id>` (hash: attempt →
//! `at|status|E<error>`), per target `due:<t>` (zset by due time), `lease:<t>` (zset by lease
//! expiry), `dead:<t>` (zset by time of death), `targets` (set), `done` (zset: callbacks with no
//! job left, by arrival, for the retention purge); for lane-ordered targets only, `lane:<lane>:<t>`
//! (zset: a lane's open jobs in order) and `held:<t>` (zset: jobs waiting behind their lane's
//! first; see `lua/prelude_lanes.lua`). One key outside any account, `<prefix>:accounts`, lists the
//! accounts for the deployment-wide reads (admin, metrics, dead letters by id); it is written
//! before an account's first accept, idempotently. Kept values (WeChat's callback IP lists) are
//! `<prefix>:kept:<name>`.
//!
//! **Clocks.** Due times and lease expiries are Redis's `TIME`, read inside the scripts: the
//! instances' clocks never meet. Ids are made by the caller, from blocks each instance
//! reserves with `INCRBY <prefix>:ids` ([`super::IdBlocks`]); they stay strings inside the
//! scripts.
//!
//! **Twice is once.** Every script can run twice with the same arguments (a resend after a
//! reconnect): accept recognises its own callback id (its hash is written again as it was), a
//! lease is taken with a new token that an outcome must match, and an outcome whose token no
//! longer holds writes nothing.
//!
//! **Durability** is Redis's: with `appendfsync always` an accepted callback is on disk when the
//! script returns; where the server has `WAITAOF` (Redis ≥ 7.2, Valkey) and AOF is on, a new
//! accept also waits for its fsync. `WAITAOF` covers the writes of the connection that sends it,
//! so a duplicate (which wrote nothing) is not covered by it: with `everysec`, a resend answered
//! from a first copy that another instance stored a moment ago may be answered before that copy
//! is on disk. At open, one WARN line says what a crash of Redis can lose with its settings.
//! Replication is asynchronous: with `store.redis.min_replicas` an accept is answered only once
//! that many replicas acknowledged it (`WAIT`; `WAITAOF 1 N` where the server has it), else it
//! is [`StoreError::NotReplicated`] (503: WeChat resends); so are a resend answered from another
//! copy's write and an id block, which a failover must not lose either (see `batch`).
//!
//! **Batches.** Accepts, and attempt outcomes, that arrive while earlier ones are on their way
//! to Redis go together: one script call per account carries all of them (each applied as it
//! would be alone, in arrival order), so under load Redis runs one script and one reply for many
//! callbacks instead of one each. An idle store sends each at once: nothing waits for a batch
//! to fill. (Load bench: one script per accept and per outcome left Redis and the client's
//! round trips at ~0.4–0.7× the SQLite store's throughput on the bench machine.)
//!
//! **Why the `redis` crate**: it is actively released, and has what this needs in one crate: a
//! reconnecting connection manager, the async Cluster client, scripts with EVALSHA and a NOSCRIPT
//! fallback, and TLS by rustls. `fred` is as capable but had no release since early 2025.
//!
//! Here: the public type, opening, and its [`Store`] impl. `options` says how to reach Redis,
//! `batch` sends accepts and outcomes in batches, `scripts` loads the Lua of `lua/*.lua`,
//! `wait` waits for replicas (or the fsync), `dead_letters` lists,
//! shows, replays and purges them, `callbacks` shows stored callbacks to
//! the admin, `settings` reads the server's settings at open, `sentinel` follows the primary
//! Sentinels name.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, RedisError, Value};
use tracing::info;

use self::args::Arg;
use self::batch::{BatchContext, BatchItem, Batcher, Linger, Row};
use self::fields::{memory_usage, number, shape, text, value_text};
use self::options::Conn;
use self::scripts::Scripts;
use self::wait::Replicas;
use super::{
    Accepted, Answer, Arrival, AttemptReport, CallbackDetail, CallbackId, DeadLetter,
    DeadLetterDetail, DeadLetterFilter, Disposition, HistoryPage, HistoryQuery, IdBlocks, Job,
    JobId, Leased, NewCallback, NewJob, QueueDepth, Recorded, Replayed, Store, StoreError,
    TargetKey, new_lease_token,
};
use crate::config::redact_url;
use crate::metrics::minutes::MinuteCount;

// The ids are decimal integers in keys, fields and script arguments.
macro_rules! id_value {
    ($($id:ty),*) => {$(
        impl redis::ToRedisArgs for $id {
            fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
                self.0.write_redis_args(out);
            }
        }

        impl redis::FromRedisValue for $id {
            fn from_redis_value(value: Value) -> Result<Self, redis::ParsingError> {
                i64::from_redis_value(value).map(Self)
            }
        }
    )*};
}
id_value!(CallbackId, JobId);

/// How long an attempt's outcome waits for others to share its script call: off WeChat's way,
/// and long enough for the outcomes of one callback's targets, which answer about together.
const OUTCOME_LINGER: Duration = Duration::from_millis(2);
/// Batches of outcomes on their way at once.
const OUTCOMES_IN_FLIGHT: usize = 4;

mod args;
mod batch;
mod callbacks;
mod dead_letters;
mod fields;
mod history;
mod minutes;
mod options;
mod scripts;
mod sentinel;
mod settings;
mod wait;

pub use self::options::{RedisNodes, RedisOptions};

/// With `min_replicas`, the accepts' connections: a batch's `WAIT` blocks only its own, while
/// the next batch writes on another (as many as batches of accepts on their way at once).
const ACCEPT_CONNECTIONS: usize = 4;
/// How many ids an instance reserves at once: one `INCRBY` per this many callbacks and jobs.
const ID_BLOCK: u64 = 1024;
/// Callbacks purged per account per call (one script; bounds how long Redis is busy).
const PURGE_BATCH: usize = 1000;

/// The Redis store. Cheap to share behind an `Arc`.
pub struct RedisStore {
    conn: Conn,
    /// The accepts' connections: [`ACCEPT_CONNECTIONS`] of their own with `replicas` (a `WAIT`
    /// blocks its connection, and must not hold up lease renewals and outcomes, nor the other
    /// batches); else `conn`. Ids are reserved, and readiness checked, on the first.
    accept_conns: Vec<Conn>,
    /// `store.redis.min_replicas`, if not 0.
    replicas: Option<Replicas>,
    prefix: String,
    lease_ms: u64,
    /// `/readyz` fails at or above this fraction of `maxmemory` in use.
    max_memory_used_ratio: f64,
    /// Ids reserved from `<prefix>:ids`, [`ID_BLOCK`] at a time.
    ids: IdBlocks,
    /// The server has `WAITAOF` and AOF is on: new accepts wait for their fsync.
    waitaof: bool,
    scripts: Scripts,
    /// Accounts this process has listed in `<prefix>:accounts` already.
    listed: Mutex<HashSet<Arc<str>>>,
    /// Targets it has listed in their account's `targets` set: an accept lists only those not
    /// listed yet (the sets only grow). Keyed by the callback's own `Arc`s: no allocation on
    /// an accept's way.
    listed_targets: Mutex<HashSet<(Arc<str>, Arc<str>)>>,
    /// Accepts and outcomes on their way to Redis, in batches (set at the end of `open`).
    accepts: Option<Batcher<BatchItem, Row>>,
    outcomes: Option<Batcher<BatchItem, i64>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("lease_ms", &self.lease_ms)
            .field("waitaof", &self.waitaof)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects and reads the server's persistence settings (one
    /// WARN line if a crash of Redis can lose accepted callbacks).
    pub async fn open(options: &RedisOptions) -> Result<RedisStore, StoreError> {
        let conn = options.connect().await?;
        let replicas = (options.min_replicas > 0).then_some(Replicas {
            count: options.min_replicas,
            timeout_ms: options.min_replicas_timeout_ms,
        });
        let mut accept_conns = vec![conn.clone()];
        if replicas.is_some() {
            accept_conns.clear();
            for _ in 0..ACCEPT_CONNECTIONS {
                accept_conns.push(options.connect_for_waits().await?);
            }
        }
        let prefix = options.key_prefix.clone();
        let mut store = RedisStore {
            conn,
            accept_conns,
            replicas,
            lease_ms: options.lease_ms,
            max_memory_used_ratio: options.max_memory_used_ratio,
            ids: IdBlocks::empty(),
            waitaof: false,
            scripts: Scripts::new(),
            listed: Mutex::new(HashSet::new()),
            listed_targets: Mutex::new(HashSet::new()),
            accepts: None,
            outcomes: None,
            prefix,
        };
        store.waitaof = store.check_persistence().await;
        store.check_replicas().await;
        let context = Arc::new(BatchContext {
            accept_conns: store.accept_conns.clone(),
            sent: AtomicUsize::new(0),
            record_conn: store.conn(),
            lease_ms: store.lease_ms,
            waitaof: store.waitaof,
            replicas: store.replicas,
            accept: store.scripts.accept.clone(),
            record: store.scripts.record.clone(),
        });
        let accepts = context.clone();
        // Accepts: one batch on its way, or one per connection of their own with replicas
        // (each waits for them), waiting for company only while callbacks come often
        // (`accept_linger_ms`, [`Linger::Paced`]): at a steady 2,000/s a script call and a round
        // trip serve two or three callbacks instead of one each, and what Redis spends per
        // call, not per callback, is most of its work at such rates. Outcomes: gathered for
        // OUTCOME_LINGER (a callback's targets answer together).
        let in_flight = if store.replicas.is_some() {
            ACCEPT_CONNECTIONS
        } else {
            1
        };
        store.accepts = Some(Batcher::spawn(
            in_flight,
            Linger::Paced(Duration::from_millis(options.accept_linger_ms)),
            move |items| accepts.clone().accept(items),
        ));
        store.outcomes = Some(Batcher::spawn(
            OUTCOMES_IN_FLIGHT,
            Linger::Fixed(OUTCOME_LINGER),
            move |items| context.clone().record(items),
        ));
        info!(
            cluster = options.cluster,
            sentinel_master = options.sentinel_master.as_deref(),
            urls = ?options.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            key_prefix = %store.prefix,
            lease_ms = store.lease_ms,
            waitaof = store.waitaof,
            min_replicas = options.min_replicas,
            "store: redis"
        );
        Ok(store)
    }

    fn conn(&self) -> Conn {
        self.conn.clone()
    }

    /// The first of the accepts' connections (there is always one).
    fn accept_conn(&self) -> &Conn {
        self.accept_conns.first().unwrap_or(&self.conn)
    }

    /// The key every key of `account` starts with: `<prefix>:{<account>}`.
    fn base(&self, account: &str) -> String {
        format!("{}:{{{}}}", self.prefix, account)
    }

    fn accounts_key(&self) -> String {
        format!("{}:accounts", self.prefix)
    }

    /// Every account with data, deployment-wide.
    async fn accounts(&self) -> Result<Vec<String>, StoreError> {
        let mut accounts: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.accounts_key())
            .query_async(&mut self.conn())
            .await?;
        accounts.sort();
        Ok(accounts)
    }

    /// The accounts a filter names (one, or all).
    async fn accounts_for(&self, account: &Option<String>) -> Result<Vec<String>, StoreError> {
        match account {
            Some(account) => Ok(vec![account.clone()]),
            None => self.accounts().await,
        }
    }

    async fn targets(&self, account: &str) -> Result<Vec<String>, StoreError> {
        let mut targets: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}:targets", self.base(account)))
            .query_async(&mut self.conn())
            .await?;
        targets.sort();
        Ok(targets)
    }

    /// Lists `account` in `<prefix>:accounts`, once per process.
    async fn list_account(&self, account: &Arc<str>) -> Result<(), StoreError> {
        if self.listed_already(account) {
            return Ok(());
        }
        let () = redis::cmd("SADD")
            .arg(self.accounts_key())
            .arg(&**account)
            .query_async(&mut self.conn())
            .await?;
        self.listed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(account.clone());
        Ok(())
    }

    /// Whether this process listed every target of `jobs` in `account`'s `targets` set.
    fn targets_listed(&self, account: &Arc<str>, jobs: &[NewJob]) -> bool {
        let listed = (self.listed_targets.lock()).unwrap_or_else(|p| p.into_inner());
        (jobs.iter()).all(|job| listed.contains(&(account.clone(), job.target.clone())))
    }

    fn list_targets(&self, account: &Arc<str>, jobs: &[NewJob]) {
        let mut listed = (self.listed_targets.lock()).unwrap_or_else(|p| p.into_inner());
        listed.extend(jobs.iter().map(|job| (account.clone(), job.target.clone())));
    }

    fn listed_already(&self, account: &str) -> bool {
        self.listed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(account)
    }

    /// A command for server settings: on a Cluster, asked of one primary.
    async fn ask_server(&self, cmd: Cmd) -> Result<Value, RedisError> {
        match self.conn() {
            Conn::Cluster(mut c) => {
                c.route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
                )
                .await
            }
            mut c => cmd.query_async(&mut c).await,
        }
    }

    /// Groups leased jobs by account, for one script per account.
    fn by_account(jobs: &[Leased]) -> BTreeMap<&str, Vec<&Leased>> {
        let mut groups: BTreeMap<&str, Vec<&Leased>> = BTreeMap::new();
        for job in jobs {
            groups.entry(&job.key.account).or_default().push(job);
        }
        groups
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn next_ids(&self, n: usize) -> Result<Vec<i64>, StoreError> {
        // Most calls are served from the reserved block: the key and a connection only for a
        // reservation.
        self.ids
            .next(n, ID_BLOCK, |count| async move {
                let key = format!("{}:ids", self.prefix);
                let conn = self.accept_conn().pinned();
                let last: i64 = redis::cmd("INCRBY")
                    .arg(&key)
                    .arg(count)
                    .query_async(&mut conn.clone())
                    .await?;
                // A block a failover forgot would be handed out again, and callbacks stored
                // under its ids overwritten: it is on the replicas before an id of it is used.
                if let Some(replicas) = self.replicas {
                    wait::wait_replicas(conn, &key, replicas, self.waitaof).await?;
                }
                Ok(last)
            })
            .await
    }

    async fn accept(&self, callback: NewCallback) -> Result<Accepted, StoreError> {
        self.list_account(&callback.account).await?;
        let base = self.base(&callback.account);
        let list = !self.targets_listed(&callback.account, &callback.jobs);
        let item = BatchItem {
            args: args::accept_args(&callback, list),
            hash: args::callback_hash(&base, &callback),
            base,
        };
        let reply = self
            .accepts
            .as_ref()
            .ok_or(StoreError::Closed)?
            .submit(item)
            .await?;
        match reply.first().and_then(|v| v.as_deref()) {
            Some(b"new") => {
                // Stored (and, where the server has WAITAOF, fsynced) with its batch.
                self.list_targets(&callback.account, &callback.jobs);
                Ok(Accepted::New {
                    callback: callback.id,
                    jobs: callback.jobs.iter().map(|j| j.id).collect(),
                    waiting: (reply.iter().skip(1))
                        .map(|id| number(id.clone()))
                        .collect::<Result<_, _>>()?,
                })
            }
            Some(b"dup") => {
                let field = |i: usize| reply.get(i).cloned().flatten();
                let answer = field(2).map(|body| Answer {
                    content_type: field(3).map(text),
                    body: Bytes::from(body),
                });
                let answer_pending = field(4)
                    .and_then(|ms| text(ms).parse::<u64>().ok())
                    .map(Duration::from_millis);
                Ok(Accepted::Duplicate {
                    callback: number(field(1))?,
                    answer,
                    answer_pending,
                })
            }
            _ => Err(StoreError::Unexpected("unexpected reply to accept".into())),
        }
    }

    async fn save_answer(
        &self,
        account: &str,
        callback: CallbackId,
        answer: Answer,
    ) -> Result<(), StoreError> {
        let () = self
            .scripts
            .save_answer
            .key(self.base(account))
            .arg(callback)
            .arg(&answer.body[..])
            .arg(answer.content_type.as_deref().unwrap_or(""))
            .arg(if answer.content_type.is_some() {
                "1"
            } else {
                "0"
            })
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn answer(
        &self,
        account: &str,
        callback: CallbackId,
    ) -> Result<Option<Answer>, StoreError> {
        let (body, content_type): (Option<Vec<u8>>, Option<String>) = redis::cmd("HMGET")
            .arg(format!("{}:cb:{callback}", self.base(account)))
            .arg("answer")
            .arg("answer_type")
            .query_async(&mut self.conn())
            .await?;
        Ok(body.map(|body| Answer {
            content_type,
            body: Bytes::from(body),
        }))
    }

    async fn lease_due(&self, key: &TargetKey, limit: usize) -> Result<Vec<Job>, StoreError> {
        let token = new_lease_token();
        let rows: Vec<Option<Vec<u8>>> = self
            .scripts
            .lease
            .key(self.base(&key.account))
            .arg(&*key.target)
            .arg(limit)
            .arg(token)
            .arg(self.lease_ms)
            .invoke_async(&mut self.conn())
            .await?;
        // Rows of 12 fields for n jobs, then their n bodies; taken apart, not copied.
        let n = rows.len() / 13;
        let mut fields = rows;
        let bodies = fields.split_off(n * 12);
        fields
            .chunks_exact_mut(12)
            .zip(bodies)
            .map(|(row, body)| {
                let mut field = |i: usize| std::mem::take(&mut row[i]);
                Ok(Job {
                    id: number(field(0))?,
                    callback: number(field(1))?,
                    key: key.clone(),
                    lease: token,
                    attempts: number(field(2))?,
                    retry_base: number(field(3)).unwrap_or(0),
                    request: Arc::new(
                        shape(field(4), field(5), body, field(6), field(7))
                            .traced(field(8), field(9))
                            .in_lane(field(10)),
                    ),
                    lane: field(11).map(|lane| Arc::from(text(lane))),
                })
            })
            .collect()
    }

    async fn next_due(&self, key: &TargetKey) -> Result<Option<Duration>, StoreError> {
        let due_in: Option<i64> = self
            .scripts
            .next_due
            .key(self.base(&key.account))
            .arg(&*key.target)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(due_in.map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))))
    }

    async fn pace(&self, key: &TargetKey, interval: Duration) -> Result<Duration, StoreError> {
        let wait_us: i64 = self
            .scripts
            .pace
            .key(self.base(&key.account))
            .arg(&*key.target)
            .arg(u64::try_from(interval.as_micros()).unwrap_or(u64::MAX))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)))
    }

    async fn record(&self, report: AttemptReport) -> Result<Recorded, StoreError> {
        let (kind, delay) = match report.disposition {
            Disposition::Delivered => ("delivered", 0),
            Disposition::RetryIn(delay) => (
                "retry",
                u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            ),
            Disposition::Dead => ("dead", 0),
        };
        // See the top of lua/record.lua: a delivery's attempt is not kept, so it carries only
        // what names its job and lease (each argument costs Redis a Lua string).
        let mut args = vec![
            Arg::Static(kind),
            Arg::number(report.job.0),
            Arg::number(report.lease),
            Arg::number(report.callback.0),
            Arg::text(&report.key.target),
        ];
        if !matches!(report.disposition, Disposition::Delivered) {
            args.extend([
                Arg::number(delay),
                Arg::number(report.attempt),
                Arg::number(report.at_ms),
                report.status.map_or(Arg::Static(""), Arg::number),
                report.error.as_deref().map_or(Arg::Static(""), Arg::text),
                Arg::Static(if report.error.is_some() { "1" } else { "0" }),
            ]);
        }
        let applied = self
            .outcomes
            .as_ref()
            .ok_or(StoreError::Closed)?
            .submit(BatchItem {
                base: self.base(&report.key.account),
                args,
                hash: Vec::new(),
            })
            .await?;
        Ok(match applied {
            1 => Recorded::Applied,
            2 => Recorded::LaneNextDue,
            _ => Recorded::LeaseLost,
        })
    }

    async fn release(&self, jobs: Vec<Leased>) -> Result<(), StoreError> {
        for (account, jobs) in Self::by_account(&jobs) {
            let mut invocation = self.scripts.release.key(self.base(account));
            for job in jobs {
                invocation
                    .arg(job.job)
                    .arg(job.token)
                    .arg(job.callback)
                    .arg(&*job.key.target);
            }
            let _: i64 = invocation.invoke_async(&mut self.conn()).await?;
        }
        Ok(())
    }

    async fn renew(&self, jobs: &[Leased]) -> Result<Vec<JobId>, StoreError> {
        let mut lost = Vec::new();
        for (account, jobs) in Self::by_account(jobs) {
            let mut invocation = self.scripts.renew.key(self.base(account));
            invocation.arg(self.lease_ms);
            for job in jobs {
                invocation
                    .arg(job.job)
                    .arg(job.token)
                    .arg(job.callback)
                    .arg(&*job.key.target);
            }
            let gone: Vec<JobId> = invocation.invoke_async(&mut self.conn()).await?;
            lost.extend(gone);
        }
        Ok(lost)
    }

    fn lease_duration(&self) -> Option<Duration> {
        Some(Duration::from_millis(self.lease_ms))
    }

    async fn tend_lanes(&self, key: &TargetKey) -> Result<(), StoreError> {
        let _: i64 = self
            .scripts
            .lanes
            .key(self.base(&key.account))
            .arg(&*key.target)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn bury_waiting(
        &self,
        key: &TargetKey,
        waited: Duration,
        reason: &str,
    ) -> Result<u64, StoreError> {
        let n: i64 = self
            .scripts
            .bury_waiting
            .key(self.base(&key.account))
            .arg(&*key.target)
            .arg(u64::try_from(waited.as_millis()).unwrap_or(u64::MAX))
            .arg(reason)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(n.unsigned_abs())
    }

    async fn bury_unrouted(
        &self,
        routed: Vec<TargetKey>,
        reason: &str,
        now_ms: i64,
    ) -> Result<Vec<(TargetKey, u64)>, StoreError> {
        let mut buried = Vec::new();
        for account in self.accounts().await? {
            let unrouted: Vec<String> = self
                .targets(&account)
                .await?
                .into_iter()
                .filter(|t| {
                    !routed
                        .iter()
                        .any(|k| *k.account == *account && *k.target == **t)
                })
                .collect();
            if unrouted.is_empty() {
                continue;
            }
            let counts: Vec<i64> = self
                .scripts
                .bury
                .key(self.base(&account))
                .arg(reason)
                .arg(now_ms)
                .arg(&unrouted)
                .invoke_async(&mut self.conn())
                .await?;
            for (target, n) in unrouted.into_iter().zip(counts) {
                if n > 0 {
                    buried.push((
                        TargetKey {
                            account: Arc::from(account.as_str()),
                            target: Arc::from(target),
                        },
                        n.unsigned_abs(),
                    ));
                }
            }
        }
        Ok(buried)
    }

    async fn kept_value(&self, name: &str) -> Result<Option<Bytes>, StoreError> {
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(format!("{}:kept:{name}", self.prefix))
            .query_async(&mut self.conn())
            .await?;
        Ok(value.map(Bytes::from))
    }

    async fn add_minutes(&self, counts: Vec<MinuteCount>) -> Result<(), StoreError> {
        self.add_minute_counts(counts).await
    }

    async fn minutes(&self, since: i64) -> Result<Vec<MinuteCount>, StoreError> {
        self.minute_counts(since).await
    }

    async fn keep_value(&self, name: &str, value: Bytes) -> Result<(), StoreError> {
        let () = redis::cmd("SET")
            .arg(format!("{}:kept:{name}", self.prefix))
            .arg(&value[..])
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        let key = format!("{}:writable", self.prefix);
        let conn = self.accept_conn().pinned();
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(rand::random::<u64>())
            .arg("PX")
            .arg(60_000)
            .query_async(&mut conn.clone())
            .await?;
        // Not ready while callbacks would be answered 503 for want of replicas.
        if let Some(replicas) = self.replicas {
            wait::wait_replicas(conn, &key, replicas, self.waitaof).await?;
        }
        // Not ready well before Redis refuses writes at `maxmemory`: an alert and the load
        // balancer act while callbacks are still stored.
        if let Some(used) = self.usage().await?
            && used >= self.max_memory_used_ratio
        {
            return Err(StoreError::Full(format!(
                "Redis uses {:.0}% of its maxmemory, at or above store.redis.max_memory_used_percent \
                 ({:.0}%)",
                used * 100.0,
                self.max_memory_used_ratio * 100.0
            )));
        }
        Ok(())
    }

    async fn usage(&self) -> Result<Option<f64>, StoreError> {
        let info = match self.conn() {
            Conn::Cluster(mut c) => {
                c.route_command(
                    redis::cmd("INFO").arg("memory").clone(),
                    RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                )
                .await?
            }
            mut c => redis::cmd("INFO").arg("memory").query_async(&mut c).await?,
        };
        Ok(memory_usage(&info))
    }

    async fn purge_delivered(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        let mut purged = 0;
        for account in self.accounts().await? {
            let n: i64 = self
                .scripts
                .purge_done
                .key(self.base(&account))
                .arg(older_than_ms)
                .arg(PURGE_BATCH)
                .invoke_async(&mut self.conn())
                .await?;
            purged += n.unsigned_abs();
        }
        Ok(purged)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every write was acknowledged by Redis when its call returned: nothing is queued here.
        Ok(())
    }

    async fn close(&self) -> Result<(), StoreError> {
        // Only if no instance reserved a block since: the counter is shared.
        self.ids
            .close(|reserved, out| async move {
                let _: i64 = redis::cmd("EVAL")
                    .arg(
                        "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                         redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0",
                    )
                    .arg(1)
                    .arg(format!("{}:ids", self.prefix))
                    .arg(reserved)
                    .arg(out)
                    .query_async(&mut self.conn())
                    .await?;
                Ok(())
            })
            .await
    }

    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError> {
        let mut depths = Vec::new();
        for account in self.accounts().await? {
            let targets = self.targets(&account).await?;
            if targets.is_empty() {
                continue;
            }
            let rows: Vec<Value> = self
                .scripts
                .depths
                .key(self.base(&account))
                .arg(self.lease_ms)
                .arg(&targets)
                .invoke_async(&mut self.conn())
                .await?;
            for (target, row) in targets.into_iter().zip(rows.chunks_exact(4)) {
                let count = |v: &Value| {
                    <i64 as redis::FromRedisValue>::from_redis_value_ref(v).unwrap_or(0)
                };
                let (pending, in_flight, dead) = (count(&row[0]), count(&row[1]), count(&row[2]));
                if pending + in_flight + dead > 0 {
                    depths.push(QueueDepth {
                        account: account.clone(),
                        target,
                        pending,
                        in_flight,
                        dead,
                        oldest_pending_ms: <String as redis::FromRedisValue>::from_redis_value_ref(
                            &row[3],
                        )
                        .ok()
                        .and_then(|at| at.parse().ok()),
                    });
                }
            }
        }
        Ok(depths)
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, StoreError> {
        self.list_letters(filter).await
    }

    async fn callback(&self, id: CallbackId) -> Result<Option<CallbackDetail>, StoreError> {
        self.callback_detail(id).await
    }

    async fn callbacks(
        &self,
        account: Option<&str>,
        limit: usize,
    ) -> Result<Vec<CallbackId>, StoreError> {
        self.latest_callbacks(account, limit).await
    }

    async fn arrivals(
        &self,
        account: &str,
        since_ms: i64,
        until_ms: i64,
        after: Option<CallbackId>,
        limit: usize,
    ) -> Result<Vec<Arrival>, StoreError> {
        self.arrivals_of(account, since_ms, until_ms, after, limit)
            .await
    }

    async fn history(&self, query: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        self.history_page(query).await
    }

    async fn backfill(
        &self,
        key: &TargetKey,
        jobs: Vec<(CallbackId, JobId)>,
    ) -> Result<u64, StoreError> {
        self.backfill_jobs(key, jobs).await
    }

    async fn dead_letter(&self, id: JobId) -> Result<Option<DeadLetterDetail>, StoreError> {
        self.letter_detail(id).await
    }

    async fn replay_dead(
        &self,
        id: Option<JobId>,
        filter: &DeadLetterFilter,
        routed: Vec<TargetKey>,
    ) -> Result<Replayed, StoreError> {
        self.replay_letters(id, filter, routed).await
    }

    async fn purge_dead(
        &self,
        id: Option<JobId>,
        filter: &DeadLetterFilter,
    ) -> Result<u64, StoreError> {
        self.purge_letters(id, filter).await
    }
}

#[cfg(test)]
mod tests;
