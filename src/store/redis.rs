//! The shared store: Redis (standalone or Cluster), so several instances act as one proxy.
//!
//! **Keys.** Every key of an account shares one hash tag, `<prefix>:{<account>}:…`, so each
//! operation on an account touches one Cluster slot and runs as one Lua script: an accept (the
//! dedupe insert-if-absent, the callback and all its jobs) is atomic across its targets. Per
//! account: `dedupe` (hash: dedupe key → callback id), `cb:<id>` (hash: the request, the answer,
//! `open` jobs), `job:<id>` (hash: state `p`ending, in `f`light or `d`ead, lease token,
//! attempts…), `att:<id>` (hash: attempt → `at|status|E<error>`), per target `due:<t>` (zset by
//! due time), `lease:<t>` (zset by lease expiry), `dead:<t>` (zset by time of death), `targets`
//! (set), `done` (zset: callbacks with no job left, by arrival, for the retention purge). One
//! key outside any account, `<prefix>:accounts`, lists the accounts for the deployment-wide
//! reads (admin, metrics, dead letters by id); it is written before an account's first accept,
//! idempotently. Kept values (WeChat's callback IP lists) are `<prefix>:kept:<name>`.
//!
//! **Clocks.** Due times and lease expiries are Redis's `TIME`, read inside the scripts: the
//! instances' clocks never meet. Ids are made by the caller, from blocks each instance
//! reserves with `INCRBY <prefix>:ids` ([`super::IdBlocks`]); they stay strings inside the
//! scripts.
//!
//! **Twice is once.** Every script can run twice with the same arguments (a resend after a
//! reconnect): accept recognises its own callback id, a lease is taken with a new token that an
//! outcome must match, and an outcome whose token no longer holds writes nothing.
//!
//! **Durability** is Redis's: with `appendfsync always` an accepted callback is on disk when the
//! script returns; where the server has `WAITAOF` (Redis ≥ 7.2, Valkey) and AOF is on, a new
//! accept also waits for its fsync. `WAITAOF` covers the writes of the connection that sends it,
//! so a duplicate (which wrote nothing) is not covered by it: with `everysec`, a resend answered
//! from a first copy that another instance stored a moment ago may be answered before that copy
//! is on disk. At open, one WARN line says what a crash of Redis can lose with its settings.
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

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, Slot, SlotAddr};
use redis::{
    Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Script, Value,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{info, warn};

use crate::config::{RedisConfig, redact_url};

use super::{
    Accepted, Answer, AttemptRecord, AttemptReport, CallbackId, DeadLetter, DeadLetterDetail,
    DeadLetterFilter, Disposition, IdBlocks, Job, JobId, LEGACY_KEY_WINDOW, Leased, NewCallback,
    QueueDepth, Recorded, Replay, Replayed, Store, StoreError, TargetKey, new_lease_token,
};

/// How long to wait for a connection, and for any answer: below the 4.8 s after which ingress
/// answers 503 anyway, so an unreachable Redis is an error in time, not a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How many ids an instance reserves at once: one `INCRBY` per this many callbacks and jobs.
const ID_BLOCK: u64 = 1024;
/// How long a new accept waits for `WAITAOF` (its fsync).
const WAITAOF_TIMEOUT_MS: u64 = 2000;
/// Callbacks purged per account per call (one script; bounds how long Redis is busy).
const PURGE_BATCH: usize = 1000;
/// At most this many accepts (or outcomes) go in one batch…
const BATCH_MAX: usize = 64;
/// …and at most this many batches of a kind are on their way at once; more wait and grow.
const BATCHES_IN_FLIGHT: usize = 4;

/// How to reach Redis; made from `[store.redis]`.
#[derive(Clone)]
pub struct RedisOptions {
    /// One URL (standalone), or the seed nodes of a Cluster.
    pub urls: Vec<String>,
    pub cluster: bool,
    pub key_prefix: String,
    pub lease_ms: u64,
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
            password: config
                .password()
                .map_err(|e| StoreError::Other(e.to_string()))?,
        })
    }

    /// Where to connect: one entry per URL, with the password of `password_env` if set.
    pub fn connection_infos(&self) -> Result<Vec<ConnectionInfo>, StoreError> {
        let mut infos = Vec::with_capacity(self.urls.len());
        for url in &self.urls {
            let mut info = url
                .as_str()
                .into_connection_info()
                .map_err(|e| StoreError::Other(format!("redis URL {}: {e}", redact_url(url))))?;
            if let Some(password) = &self.password {
                let settings = info.redis_settings().clone().set_password(password);
                info = info.set_redis_settings(settings);
            }
            infos.push(info);
        }
        Ok(infos)
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
enum Conn {
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

/// The scripts, hashed once.
struct Scripts {
    accept: Script,
    save_answer: Script,
    lease: Script,
    next_due: Script,
    record: Script,
    release: Script,
    renew: Script,
    bury: Script,
    replay: Script,
    purge_dead: Script,
    purge_done: Script,
    dead_list: Script,
    dead_detail: Script,
    depths: Script,
}

/// The Redis store. Cheap to share behind an `Arc`.
pub struct RedisStore {
    conn: Conn,
    prefix: String,
    lease_ms: u64,
    /// Ids reserved from `<prefix>:ids`, [`ID_BLOCK`] at a time.
    ids: IdBlocks,
    /// The server has `WAITAOF` and AOF is on: new accepts wait for their fsync.
    waitaof: bool,
    scripts: Scripts,
    /// Accounts this process has listed in `<prefix>:accounts` already.
    listed: Mutex<HashSet<Arc<str>>>,
    /// Accepts and outcomes on their way to Redis, in batches (set at the end of `open`).
    accepts: Option<Batcher<BatchItem, Row>>,
    outcomes: Option<Batcher<BatchItem, i64>>,
}

/// A script's reply row: fields that may be nil.
type Row = Vec<Option<Vec<u8>>>;

/// One item's answer from a batch.
type Reply<O> = oneshot::Sender<Result<O, StoreError>>;

/// Sends items in batches: whatever queued up while earlier batches were on their way goes in
/// the next one (at most [`BATCH_MAX`]; at most [`BATCHES_IN_FLIGHT`] at once).
struct Batcher<I, O> {
    queue: mpsc::UnboundedSender<(I, Reply<O>)>,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// `send` takes a batch and answers each item, in order. The task ends when the batcher is
    /// dropped.
    fn spawn<F, Fut>(send: F) -> Batcher<I, O>
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<O, StoreError>>> + Send + 'static,
    {
        let (queue, mut items) = mpsc::unbounded_channel::<(I, Reply<O>)>();
        let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
        let send = Arc::new(send);
        tokio::spawn(async move {
            while let Some(first) = items.recv().await {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < BATCH_MAX
                    && let Ok(item) = items.try_recv()
                {
                    batch.push(item);
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

    async fn submit(&self, item: I) -> Result<O, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((item, reply))
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| {
            StoreError::Other("a batch of store writes ended without an answer".into())
        })?
    }
}

/// An accept or an attempt's outcome on its way: the account's key base and the script's
/// arguments for it.
struct BatchItem {
    base: String,
    args: Vec<Vec<u8>>,
}

/// What the batches need of the store.
struct BatchContext {
    conn: Conn,
    lease_ms: u64,
    waitaof: bool,
    accept: Script,
    record: Script,
}

/// The same error for every item of a batch.
fn each_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Redis(e) => StoreError::Redis(e.clone()),
        StoreError::Closed => StoreError::Closed,
        other => StoreError::Other(other.to_string()),
    }
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
        Err(StoreError::Other(format!("unexpected reply to {what}")))
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
                answers[i] = Some(Err(each_error(&e)));
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
        .map(|a| a.unwrap_or_else(|| Err(StoreError::Other(format!("{what} not sent")))))
        .collect()
}

impl BatchContext {
    /// One accept script per account for the batch; each callback's reply row.
    async fn accept(self: Arc<Self>, items: Vec<BatchItem>) -> Vec<Result<Row, StoreError>> {
        let mut answers: Vec<Option<Result<Row, StoreError>>> =
            items.iter().map(|_| None).collect();
        for (base, places) in by_base(&items) {
            let mut invocation = self.accept.key(base);
            invocation.arg(self.lease_ms);
            for &i in &places {
                invocation.arg(&items[i].args);
            }
            let rows = self
                .run_accept(&invocation)
                .await
                .and_then(|reply| {
                    let rows: Vec<Value> = parse(reply)?;
                    rows.into_iter()
                        .map(parse::<Row>)
                        .collect::<Result<Vec<_>, _>>()
                })
                .and_then(|rows| one_each(rows, &places, "accept"));
            let rows = match rows {
                Ok(rows) => {
                    let new = rows
                        .iter()
                        .any(|r| r.first().and_then(|v| v.as_deref()) == Some(b"new"));
                    match (self.waitaof && new).then(|| wait_aof(self.conn.clone(), base)) {
                        Some(waited) => waited.await.map(|()| rows),
                        None => Ok(rows),
                    }
                }
                Err(e) => Err(e),
            };
            spread(&mut answers, &places, rows);
        }
        answered(answers, "accept")
    }

    /// Runs the accept script; once more if the connection broke (the script may have run: a
    /// second run recognises its callback ids).
    async fn run_accept(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<Value, StoreError> {
        match invocation.invoke_async(&mut self.conn.clone()).await {
            Ok(value) => Ok(value),
            Err(e) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                Ok(invocation.invoke_async(&mut self.conn.clone()).await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One record script per account for the batch; 1 (applied) or 0 (lease lost) each.
    async fn record(self: Arc<Self>, items: Vec<BatchItem>) -> Vec<Result<i64, StoreError>> {
        let mut answers: Vec<Option<Result<i64, StoreError>>> =
            items.iter().map(|_| None).collect();
        for (base, places) in by_base(&items) {
            let mut invocation = self.record.key(base);
            for &i in &places {
                invocation.arg(&items[i].args);
            }
            let applied = invocation
                .invoke_async::<Vec<i64>>(&mut self.conn.clone())
                .await
                .map_err(StoreError::from)
                .and_then(|applied| one_each(applied, &places, "record"));
            spread(&mut answers, &places, applied);
        }
        answered(answers, "outcome")
    }
}

/// Waits until the writes so far on the connection that serves `base` are fsynced.
async fn wait_aof(conn: Conn, base: &str) -> Result<(), StoreError> {
    let mut cmd = redis::cmd("WAITAOF");
    cmd.arg(1).arg(0).arg(WAITAOF_TIMEOUT_MS);
    let reply = match conn {
        Conn::Single(mut c) => cmd.query_async(&mut c).await?,
        Conn::Cluster(mut c) => {
            let route = Route::with_slot(Slot::for_key(base), SlotAddr::Master);
            c.route_command(
                cmd,
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
            )
            .await?
        }
    };
    let counts: Vec<i64> = parse(reply)?;
    if counts.first().copied().unwrap_or(0) < 1 {
        return Err(StoreError::Other(
            "redis did not write the callback to its append-only file in time".into(),
        ));
    }
    Ok(())
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
        let infos = options.connection_infos()?;
        let conn = if options.cluster {
            let mut builder = redis::cluster::ClusterClient::builder(infos)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT);
            if let Some(password) = &options.password {
                builder = builder.password(password.clone());
            }
            Conn::Cluster(builder.build()?.get_async_connection().await?)
        } else {
            let [info] = <[_; 1]>::try_from(infos)
                .map_err(|_| StoreError::Other("standalone redis takes exactly one URL".into()))?;
            let client = redis::Client::open(info)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            Conn::Single(ConnectionManager::new_with_config(client, config).await?)
        };
        let prefix = options.key_prefix.clone();
        let mut store = RedisStore {
            conn,
            lease_ms: options.lease_ms,
            ids: IdBlocks::empty(),
            waitaof: false,
            scripts: Scripts::new(),
            listed: Mutex::new(HashSet::new()),
            accepts: None,
            outcomes: None,
            prefix,
        };
        store.waitaof = store.check_persistence().await;
        let context = Arc::new(BatchContext {
            conn: store.conn(),
            lease_ms: store.lease_ms,
            waitaof: store.waitaof,
            accept: store.scripts.accept.clone(),
            record: store.scripts.record.clone(),
        });
        let accepts = context.clone();
        store.accepts = Some(Batcher::spawn(move |items| accepts.clone().accept(items)));
        store.outcomes = Some(Batcher::spawn(move |items| context.clone().record(items)));
        info!(
            cluster = options.cluster,
            urls = ?options.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            key_prefix = %store.prefix,
            lease_ms = store.lease_ms,
            waitaof = store.waitaof,
            "store: redis"
        );
        Ok(store)
    }

    fn conn(&self) -> Conn {
        self.conn.clone()
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

    fn listed_already(&self, account: &str) -> bool {
        self.listed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(account)
    }

    /// A command for server settings: on a Cluster, asked of one primary.
    async fn ask_server(&self, cmd: Cmd) -> Result<Value, RedisError> {
        match self.conn() {
            Conn::Single(mut c) => cmd.query_async(&mut c).await,
            Conn::Cluster(mut c) => {
                c.route_command(
                    cmd,
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
                )
                .await
            }
        }
    }

    /// Reads the persistence settings, logs what a crash can lose, and says whether new
    /// accepts should wait with `WAITAOF`.
    async fn check_persistence(&self) -> bool {
        let version = match self
            .ask_server(redis::cmd("INFO").arg("server").clone())
            .await
        {
            Ok(info) => server_version(&value_text(&info)),
            Err(_) => None,
        };
        let has_waitaof = version.is_some_and(|v| v >= (7, 2));
        let mut settings = BTreeMap::new();
        for name in ["appendonly", "appendfsync", "save", "maxmemory-policy"] {
            match self
                .ask_server(redis::cmd("CONFIG").arg("GET").arg(name).clone())
                .await
            {
                Ok(value) => {
                    if let Ok(pairs) = redis::from_redis_value::<Vec<String>>(value)
                        && let [_, value] = &pairs[..]
                    {
                        settings.insert(name, value.clone());
                    }
                }
                Err(e) => {
                    warn!(
                        error = %e,
                        "store: cannot read Redis's persistence settings (CONFIG GET refused?); \
                         make sure it runs with appendonly yes, appendfsync always and \
                         maxmemory-policy noeviction, or accepted callbacks can be lost"
                    );
                    return false;
                }
            }
        }
        let aof = settings.get("appendonly").is_some_and(|v| v == "yes");
        let waitaof = has_waitaof && aof;
        if let Some(risk) = persistence_risk(&settings, waitaof) {
            warn!("store: {risk}");
        }
        waitaof
    }

    /// Groups leased jobs by account, for one script per account.
    fn by_account(jobs: &[Leased]) -> BTreeMap<&str, Vec<&Leased>> {
        let mut groups: BTreeMap<&str, Vec<&Leased>> = BTreeMap::new();
        for job in jobs {
            groups.entry(&job.key.account).or_default().push(job);
        }
        groups
    }

    /// The dead letters of `account` matching `filter` (its targets; died in the range).
    async fn letters_of(
        &self,
        account: &str,
        filter: &DeadLetterFilter,
        limit: Option<usize>,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let targets = match &filter.target {
            Some(target) => vec![target.clone()],
            None => self.targets(account).await?,
        };
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let min = filter
            .since_ms
            .map_or("-inf".to_owned(), |since| since.to_string());
        let max = filter
            .until_ms
            .map_or("+inf".to_owned(), |until| format!("({until}"));
        let rows: Vec<Option<Vec<u8>>> = self
            .scripts
            .dead_list
            .key(self.base(account))
            .arg(min)
            .arg(max)
            // A negative count is no limit.
            .arg(limit.map_or(-1, |l| i64::try_from(l).unwrap_or(-1)))
            .arg(targets)
            .invoke_async(&mut self.conn())
            .await?;
        rows.chunks_exact(LETTER_FIELDS)
            .map(|row| letter(account, row))
            .collect()
    }

    /// The dead letters an operation applies to: the one with `id` (if it also matches
    /// `filter`), or all that match `filter`, deployment-wide.
    async fn selected_letters(
        &self,
        id: Option<JobId>,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let Some(id) = id else {
            let mut all = Vec::new();
            for account in self.accounts_for(&filter.account).await? {
                all.extend(self.letters_of(&account, filter, None).await?);
            }
            return Ok(all);
        };
        let Some((account, row)) = self.find_letter(id).await? else {
            return Ok(Vec::new());
        };
        let letter = letter(&account, &row[..LETTER_FIELDS.min(row.len())])?;
        Ok(matching_filter(&letter, filter)
            .then_some(letter)
            .into_iter()
            .collect())
    }

    /// Which account holds job `id` as a dead letter, and that letter's fields.
    async fn find_letter(
        &self,
        id: JobId,
    ) -> Result<Option<(String, Vec<Option<Vec<u8>>>)>, StoreError> {
        for account in self.accounts().await? {
            let row: Vec<Option<Vec<u8>>> = self
                .scripts
                .dead_detail
                .key(self.base(&account))
                .arg(id)
                .invoke_async(&mut self.conn())
                .await?;
            if !row.is_empty() {
                return Ok(Some((account, row)));
            }
        }
        Ok(None)
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn next_ids(&self, n: usize) -> Result<Vec<i64>, StoreError> {
        // Most calls are served from the reserved block: the key and a connection only for a
        // reservation.
        self.ids
            .next(n, ID_BLOCK, |count| async move {
                let last: i64 = redis::cmd("INCRBY")
                    .arg(format!("{}:ids", self.prefix))
                    .arg(count)
                    .query_async(&mut self.conn())
                    .await?;
                Ok(last)
            })
            .await
    }

    async fn accept(&self, callback: NewCallback) -> Result<Accepted, StoreError> {
        self.list_account(&callback.account).await?;
        let base = self.base(&callback.account);
        let request = &callback.request;
        let present = [
            callback.msg_type.is_some(),
            callback.event.is_some(),
            request.content_type.is_some(),
        ]
        .iter()
        .map(|p| if *p { '1' } else { '0' })
        .collect::<String>();
        let bytes = |s: &str| s.as_bytes().to_vec();
        let mut args = vec![
            callback.id.to_string().into_bytes(),
            bytes(&callback.dedupe_key),
            callback.received_at_ms.to_string().into_bytes(),
            bytes(callback.msg_type.as_deref().unwrap_or("")),
            bytes(callback.event.as_deref().unwrap_or("")),
            bytes(&request.query),
            bytes(request.content_type.as_deref().unwrap_or("")),
            request.body.to_vec(),
            callback
                .answer_pending_ms
                .map_or(Vec::new(), |ms| ms.to_string().into_bytes()),
            present.into_bytes(),
            callback.jobs.len().to_string().into_bytes(),
            bytes(callback.legacy_dedupe_key.as_deref().unwrap_or("")),
        ];
        for job in &callback.jobs {
            args.push(job.id.to_string().into_bytes());
            args.push(bytes(&job.target));
            args.push(job.lease.unwrap_or(0).to_string().into_bytes());
        }
        let reply = self
            .accepts
            .as_ref()
            .ok_or(StoreError::Closed)?
            .submit(BatchItem { base, args })
            .await?;
        match reply.first().and_then(|v| v.as_deref()) {
            Some(b"new") => {
                // Stored (and, where the server has WAITAOF, fsynced) with its batch.
                Ok(Accepted::New {
                    callback: callback.id,
                    jobs: callback.jobs.iter().map(|j| j.id).collect(),
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
            _ => Err(StoreError::Other("unexpected reply to accept".into())),
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
        // Rows of 6 fields for n jobs, then their n bodies; taken apart, not copied.
        let n = rows.len() / 7;
        let mut fields = rows;
        let bodies = fields.split_off(n * 6);
        fields
            .chunks_exact_mut(6)
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
                    request: Arc::new(Replay {
                        query: text(field(4).unwrap_or_default()),
                        content_type: field(5).map(text),
                        body: Bytes::from(body.unwrap_or_default()),
                    }),
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

    async fn record(&self, report: AttemptReport) -> Result<Recorded, StoreError> {
        let (kind, delay) = match report.disposition {
            Disposition::Delivered => ("delivered", 0),
            Disposition::RetryIn(delay) => (
                "retry",
                u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            ),
            Disposition::Dead => ("dead", 0),
        };
        let args = vec![
            report.job.to_string().into_bytes(),
            report.lease.to_string().into_bytes(),
            kind.as_bytes().to_vec(),
            delay.to_string().into_bytes(),
            report.attempt.to_string().into_bytes(),
            report.at_ms.to_string().into_bytes(),
            report
                .status
                .map_or(Vec::new(), |s| s.to_string().into_bytes()),
            report.error.as_deref().unwrap_or("").as_bytes().to_vec(),
            if report.error.is_some() { b"1" } else { b"0" }.to_vec(),
        ];
        let applied = self
            .outcomes
            .as_ref()
            .ok_or(StoreError::Closed)?
            .submit(BatchItem {
                base: self.base(&report.key.account),
                args,
            })
            .await?;
        Ok(if applied == 1 {
            Recorded::Applied
        } else {
            Recorded::LeaseLost
        })
    }

    async fn release(&self, jobs: Vec<Leased>) -> Result<(), StoreError> {
        for (account, jobs) in Self::by_account(&jobs) {
            let mut invocation = self.scripts.release.key(self.base(account));
            for job in jobs {
                invocation.arg(job.job).arg(job.token);
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
                invocation.arg(job.job).arg(job.token);
            }
            let gone: Vec<i64> = invocation.invoke_async(&mut self.conn()).await?;
            lost.extend(gone);
        }
        Ok(lost)
    }

    fn lease_duration(&self) -> Option<Duration> {
        Some(Duration::from_millis(self.lease_ms))
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

    async fn keep_value(&self, name: &str, value: Bytes) -> Result<(), StoreError> {
        let () = redis::cmd("SET")
            .arg(format!("{}:kept:{name}", self.prefix))
            .arg(&value[..])
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        let () = redis::cmd("SET")
            .arg(format!("{}:writable", self.prefix))
            .arg(rand::random::<u64>())
            .arg("PX")
            .arg(60_000)
            .query_async(&mut self.conn())
            .await?;
        Ok(())
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

    async fn queue_depths(&self) -> Result<Vec<QueueDepth>, StoreError> {
        let mut depths = Vec::new();
        for account in self.accounts().await? {
            let targets = self.targets(&account).await?;
            if targets.is_empty() {
                continue;
            }
            let counts: Vec<i64> = self
                .scripts
                .depths
                .key(self.base(&account))
                .arg(&targets)
                .invoke_async(&mut self.conn())
                .await?;
            for (target, n) in targets.into_iter().zip(counts.chunks_exact(3)) {
                if n.iter().any(|n| *n > 0) {
                    depths.push(QueueDepth {
                        account: account.clone(),
                        target,
                        pending: n[0],
                        in_flight: n[1],
                        dead: n[2],
                    });
                }
            }
        }
        Ok(depths)
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, StoreError> {
        let limit = filter.limit.unwrap_or(100);
        let mut letters = Vec::new();
        for account in self.accounts_for(&filter.account).await? {
            letters.extend(self.letters_of(&account, filter, Some(limit)).await?);
        }
        letters.sort_by_key(|l| std::cmp::Reverse((l.died_at_ms, l.id)));
        letters.truncate(limit);
        Ok(letters)
    }

    async fn dead_letter(&self, id: JobId) -> Result<Option<DeadLetterDetail>, StoreError> {
        let Some((account, row)) = self.find_letter(id).await? else {
            return Ok(None);
        };
        let (fields, rest) = row.split_at(LETTER_FIELDS.min(row.len()));
        let letter = letter(&account, fields)?;
        let [query, content_type, body, attempts @ ..] = rest else {
            return Err(StoreError::Other("unexpected reply to dead_letter".into()));
        };
        let mut records = attempts
            .chunks_exact(2)
            .map(|pair| attempt_record(pair[0].clone(), pair[1].clone()))
            .collect::<Result<Vec<_>, _>>()?;
        records.sort_by_key(|r| r.attempt);
        Ok(Some(DeadLetterDetail {
            letter,
            request: Replay {
                query: text(query.clone().unwrap_or_default()),
                content_type: content_type.clone().map(text),
                body: Bytes::from(body.clone().unwrap_or_default()),
            },
            attempts: records,
        }))
    }

    async fn replay_dead(
        &self,
        id: Option<JobId>,
        filter: &DeadLetterFilter,
        routed: Vec<TargetKey>,
    ) -> Result<Replayed, StoreError> {
        let letters = self.selected_letters(id, filter).await?;
        let mut replayed = Replayed::default();
        let mut by_account: BTreeMap<String, Vec<&DeadLetter>> = BTreeMap::new();
        for letter in &letters {
            if routed
                .iter()
                .any(|k| *k.account == *letter.account && *k.target == *letter.target)
            {
                by_account
                    .entry(letter.account.clone())
                    .or_default()
                    .push(letter);
            } else {
                replayed.not_routed += 1;
            }
        }
        for (account, letters) in by_account {
            let mut invocation = self.scripts.replay.key(self.base(&account));
            for letter in &letters {
                invocation.arg(letter.id).arg(&letter.target);
            }
            let done: Vec<i64> = invocation.invoke_async(&mut self.conn()).await?;
            for letter in letters {
                if done.contains(&letter.id)
                    && let Some(key) = routed
                        .iter()
                        .find(|k| *k.account == *letter.account && *k.target == *letter.target)
                {
                    replayed.targets.push(key.clone());
                }
            }
        }
        Ok(replayed)
    }

    async fn purge_dead(
        &self,
        id: Option<JobId>,
        filter: &DeadLetterFilter,
    ) -> Result<u64, StoreError> {
        let letters = self.selected_letters(id, filter).await?;
        let mut by_account: BTreeMap<&str, Vec<&DeadLetter>> = BTreeMap::new();
        for letter in &letters {
            by_account.entry(&letter.account).or_default().push(letter);
        }
        let mut purged = 0;
        for (account, letters) in by_account {
            let mut invocation = self.scripts.purge_dead.key(self.base(account));
            for letter in letters {
                invocation.arg(letter.id).arg(&letter.target);
            }
            let n: i64 = invocation.invoke_async(&mut self.conn()).await?;
            purged += n.unsigned_abs();
        }
        Ok(purged)
    }
}

/// Whether a letter found by id also matches the filter's other conditions.
fn matching_filter(letter: &DeadLetter, filter: &DeadLetterFilter) -> bool {
    filter.account.as_ref().is_none_or(|a| *a == letter.account)
        && filter.target.as_ref().is_none_or(|t| *t == letter.target)
        && filter.since_ms.is_none_or(|s| letter.died_at_ms >= s)
        && filter.until_ms.is_none_or(|u| letter.died_at_ms < u)
}

/// Fields per dead letter in the scripts' replies.
const LETTER_FIELDS: usize = 10;

fn letter(account: &str, row: &[Option<Vec<u8>>]) -> Result<DeadLetter, StoreError> {
    if row.len() < LETTER_FIELDS {
        return Err(StoreError::Other(
            "unexpected reply for a dead letter".into(),
        ));
    }
    Ok(DeadLetter {
        id: number(row[0].clone())?,
        callback: number(row[1].clone())?,
        account: account.to_owned(),
        target: text(row[2].clone().unwrap_or_default()),
        msg_type: row[3].clone().map(text),
        event: row[4].clone().map(text),
        received_at_ms: number(row[5].clone()).unwrap_or(0),
        died_at_ms: number(row[6].clone()).unwrap_or(0),
        attempts: number(row[7].clone()).unwrap_or(0),
        last_status: number(row[8].clone()).ok(),
        last_error: row[9].clone().map(text),
    })
}

/// An attempt stored as `at|status|E<error>` (status empty and `-` for none).
fn attempt_record(
    attempt: Option<Vec<u8>>,
    stored: Option<Vec<u8>>,
) -> Result<AttemptRecord, StoreError> {
    let stored = text(stored.unwrap_or_default());
    let mut parts = stored.splitn(3, '|');
    let at = parts.next().unwrap_or("");
    let status = parts.next().unwrap_or("");
    let error = parts.next().unwrap_or("-");
    Ok(AttemptRecord {
        attempt: number(attempt)?,
        at_ms: at.parse().unwrap_or(0),
        status: status.parse().ok(),
        error: error.strip_prefix('E').map(str::to_owned),
    })
}

fn parse<T: redis::FromRedisValue>(value: Value) -> Result<T, StoreError> {
    redis::from_redis_value(value).map_err(|e| StoreError::Other(format!("unexpected reply: {e}")))
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn number<T: std::str::FromStr>(field: Option<Vec<u8>>) -> Result<T, StoreError> {
    field
        .and_then(|bytes| std::str::from_utf8(&bytes).ok()?.parse().ok())
        .ok_or_else(|| StoreError::Other("unexpected reply: a number is missing".into()))
}

fn value_text(value: &Value) -> String {
    match value {
        Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::SimpleString(s) => s.clone(),
        _ => String::new(),
    }
}

/// `redis_version:7.2.4` in `INFO server` → (7, 2).
fn server_version(info: &str) -> Option<(u32, u32)> {
    let version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))?
        .trim();
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// What a crash (or a full memory) of Redis can lose with these settings, if anything.
fn persistence_risk(settings: &BTreeMap<&str, String>, waitaof: bool) -> Option<String> {
    let get = |name: &str| settings.get(name).map(String::as_str).unwrap_or("");
    let mut risks = Vec::new();
    if get("appendonly") != "yes" {
        if get("save").is_empty() {
            risks.push(
                "appendonly no and no snapshots: a restart of Redis loses every stored callback and job"
                    .to_owned(),
            );
        } else {
            risks.push(format!(
                "appendonly no (snapshots only, save \"{}\"): a crash of Redis loses the callbacks accepted since the last snapshot",
                get("save")
            ));
        }
    } else if !waitaof {
        match get("appendfsync") {
            "always" | "" => {}
            "everysec" => risks.push(
                "appendfsync everysec: a crash of the machine running Redis can lose up to about 1 s of accepted callbacks"
                    .to_owned(),
            ),
            other => risks.push(format!(
                "appendfsync {other}: a crash of the machine running Redis can lose the accepted callbacks the OS had not written yet (typically up to 30 s)"
            )),
        }
    }
    let policy = get("maxmemory-policy");
    if !policy.is_empty() && policy != "noeviction" {
        risks.push(format!(
            "maxmemory-policy {policy}: when Redis is full it can evict stored callbacks and jobs; use noeviction"
        ));
    }
    (!risks.is_empty()).then(|| risks.join("; "))
}

/// Shared by every script: Redis's clock in ms, and closing a job of a callback.
const PRELUDE: &str = r"
local K = KEYS[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- One job of callback `cb` is gone (delivered or purged): with none left, the callback may be
-- purged after the retention.
local function close_job(cb)
  local key = K .. ':cb:' .. cb
  local open = redis.call('HINCRBY', key, 'open', -1)
  if open <= 0 then
    local received = redis.call('HGET', key, 'received')
    if received then redis.call('ZADD', K .. ':done', received, cb) end
  end
end
-- The fields of dead letter `id` (10), or nil if it is not dead.
local function letter(id)
  local j = redis.call('HMGET', K .. ':job:' .. id, 'state', 'cb', 'target', 'died', 'attempts', 'status', 'error')
  if j[1] ~= 'd' then return nil end
  local c = redis.call('HMGET', K .. ':cb:' .. j[2], 'msg_type', 'event', 'received')
  return {id, j[2], j[3], c[1] or false, c[2] or false, c[3] or false, j[4] or false, j[5] or false, j[6] or false, j[7] or false}
end
";

impl Scripts {
    fn new() -> Scripts {
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Scripts {
            // ARGV: lease ms, then per callback: id, dedupe key, received, msg_type, event,
            // query, content type, body, answer pending ms, presence of (msg_type, event, content
            // type), job count, legacy dedupe key or '', then (job id, target, lease token or 0)
            // per job. Each callback as if alone, in order; one reply each: {'new'}, or {'dup',
            // id, answer, answer type, pending ms}.
            //
            // The legacy key (the build before's key for this callback): a callback that build
            // stored under it (its `dedupe` field is that key) within the window is this one's
            // first copy. It is written too, if free, so that an instance of that build finds
            // this callback when a resend reaches it; a callback of this build found under it
            // (its `dedupe` field is another key) says nothing, since this build tells apart
            // callbacks that key merged.
            accept: script(
                &r"
local lease_ms = tonumber(ARGV[1])
local legacy_window_ms = tonumber('LEGACY_WINDOW_MS')
-- One clock reading, one SADD per target and one ZADD per lease set for the whole batch.
local clock
local function now()
  if not clock then clock = now_ms() end
  return clock
end
local targets, leases = {}, {}
-- The callback whose arguments follow ARGV[o], with n jobs.
local function duplicate(existing)
  local a = redis.call('HMGET', K .. ':cb:' .. existing, 'answer', 'answer_type', 'answer_due')
  local pending = false
  if not a[1] and a[3] then
    local left = tonumber(a[3]) - now()
    if left > 0 then pending = tostring(left) end
  end
  return {'dup', existing, a[1] or false, a[2] or false, pending}
end
local function accept(o, n)
  local id, dedupe, received = ARGV[o + 1], ARGV[o + 2], ARGV[o + 3]
  local existing = redis.call('HGET', K .. ':dedupe', dedupe)
  if existing then
    if existing == id then return {'new'} end
    return duplicate(existing)
  end
  local legacy = ARGV[o + 12]
  if legacy ~= '' then
    local first = redis.call('HGET', K .. ':dedupe', legacy)
    if first and first ~= id then
      local c = redis.call('HMGET', K .. ':cb:' .. first, 'dedupe', 'received')
      if c[1] == legacy and tonumber(c[2]) >= tonumber(received) - legacy_window_ms then
        return duplicate(first)
      end
    end
  end
  local present = ARGV[o + 10]
  redis.call('HSET', K .. ':dedupe', dedupe, id)
  local cb = K .. ':cb:' .. id
  local fields = {'dedupe', dedupe, 'received', received, 'query', ARGV[o + 6], 'body', ARGV[o + 8], 'open', n}
  if legacy ~= '' and redis.call('HSETNX', K .. ':dedupe', legacy, id) == 1 then
    table.insert(fields, 'legacy'); table.insert(fields, legacy)
  end
  if string.sub(present, 1, 1) == '1' then table.insert(fields, 'msg_type'); table.insert(fields, ARGV[o + 4]) end
  if string.sub(present, 2, 2) == '1' then table.insert(fields, 'event'); table.insert(fields, ARGV[o + 5]) end
  if string.sub(present, 3, 3) == '1' then table.insert(fields, 'ctype'); table.insert(fields, ARGV[o + 7]) end
  if ARGV[o + 9] ~= '' then table.insert(fields, 'answer_due'); table.insert(fields, now() + tonumber(ARGV[o + 9])) end
  redis.call('HSET', cb, unpack(fields))
  for i = 0, n - 1 do
    local job, target, token = ARGV[o + 13 + 3 * i], ARGV[o + 14 + 3 * i], ARGV[o + 15 + 3 * i]
    local state = 'f'
    if token == '0' then state = 'p' end
    redis.call('HSET', K .. ':job:' .. job, 'cb', id, 'target', target, 'state', state, 'lease', token, 'attempts', 0, 'base', 0)
    targets[target] = true
    if token == '0' then
      redis.call('ZADD', K .. ':due:' .. target, now(), job)
    else
      local set = K .. ':lease:' .. target
      if not leases[set] then leases[set] = {} end
      table.insert(leases[set], now() + lease_ms)
      table.insert(leases[set], job)
    end
  end
  if n == 0 then redis.call('ZADD', K .. ':done', received, id) end
  return {'new'}
end
local replies, o = {}, 1
while o < #ARGV do
  local n = tonumber(ARGV[o + 11])
  table.insert(replies, accept(o, n))
  o = o + 12 + 3 * n
end
for target in pairs(targets) do redis.call('SADD', K .. ':targets', target) end
for set, members in pairs(leases) do redis.call('ZADD', set, unpack(members)) end
return replies
"
                .replace(
                    "LEGACY_WINDOW_MS",
                    &LEGACY_KEY_WINDOW.as_millis().to_string(),
                ),
            ),
            // ARGV: callback id, body, content type, content type present.
            save_answer: script(
                r"
local cb = K .. ':cb:' .. ARGV[1]
if redis.call('EXISTS', cb) == 0 then return end
redis.call('HSET', cb, 'answer', ARGV[2])
if ARGV[4] == '1' then redis.call('HSET', cb, 'answer_type', ARGV[3]) else redis.call('HDEL', cb, 'answer_type') end
",
            ),
            // ARGV: target, limit, token, lease ms. Jobs whose lease expired come first (they
            // waited longest), then due ones. Rows of 6 fields, then the bodies.
            lease: script(
                r"
local target, limit, token = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local due_key, lease_key = K .. ':due:' .. target, K .. ':lease:' .. target
local now = now_ms()
local expiry = now + tonumber(ARGV[4])
local rows, bodies = {}, {}
local function take(job, from)
  redis.call('ZREM', from, job)
  local j = K .. ':job:' .. job
  local f = redis.call('HMGET', j, 'cb', 'attempts', 'base')
  if not f[1] then return end
  local c = redis.call('HMGET', K .. ':cb:' .. f[1], 'query', 'ctype', 'body')
  if not c[3] then return end
  redis.call('HSET', j, 'state', 'f', 'lease', token)
  redis.call('ZADD', lease_key, expiry, job)
  for _, v in ipairs({job, f[1], f[2], f[3] or '0', c[1]}) do table.insert(rows, v) end
  table.insert(rows, c[2] or false)
  table.insert(bodies, c[3])
end
local expired = redis.call('ZRANGEBYSCORE', lease_key, '-inf', now, 'LIMIT', 0, limit)
for _, job in ipairs(expired) do take(job, lease_key) end
if #expired < limit then
  for _, job in ipairs(redis.call('ZRANGEBYSCORE', due_key, '-inf', now, 'LIMIT', 0, limit - #expired)) do
    take(job, due_key)
  end
end
for _, body in ipairs(bodies) do table.insert(rows, body) end
return rows
",
            ),
            // ARGV: target. Milliseconds until the earliest pending job is due.
            next_due: script(
                r"
local first = redis.call('ZRANGE', K .. ':due:' .. ARGV[1], 0, 0, 'WITHSCORES')
if #first == 0 then return false end
return math.max(0, tonumber(first[2]) - now_ms())
",
            ),
            // ARGV, per outcome (9 each): job, token, delivered|retry|dead, delay ms, attempt,
            // at ms, status, error, error present. Each as if alone, in order; one reply each:
            // 1: applied, 0: the lease does not hold.
            record: script(
                r"
-- Leases ended and jobs delivered in this batch: one ZREM per lease set and one DEL at the end.
local ended, gone, delivered = {}, {}, {}
-- The outcome whose arguments follow ARGV[o].
local function record(o)
  local job = ARGV[o + 1]
  local j = K .. ':job:' .. job
  if delivered[job] then return 0 end
  local f = redis.call('HMGET', j, 'state', 'lease', 'target', 'cb', 'attempts')
  if f[1] ~= 'f' or f[2] ~= ARGV[o + 2] then return 0 end
  local target = f[3]
  local set = K .. ':lease:' .. target
  if not ended[set] then ended[set] = {} end
  table.insert(ended[set], job)
  if ARGV[o + 3] == 'delivered' then
    delivered[job] = true
    table.insert(gone, j)
    table.insert(gone, K .. ':att:' .. job)
    close_job(f[4])
    return 1
  end
  local attempt, at, status = ARGV[o + 5], ARGV[o + 6], ARGV[o + 7]
  local err = '-'
  if ARGV[o + 9] == '1' then err = 'E' .. ARGV[o + 8] end
  redis.call('HSET', K .. ':att:' .. job, attempt, at .. '|' .. status .. '|' .. err)
  redis.call('HSET', j, 'attempts', attempt, 'updated', at)
  if status ~= '' then redis.call('HSET', j, 'status', status) else redis.call('HDEL', j, 'status') end
  if ARGV[o + 9] == '1' then redis.call('HSET', j, 'error', ARGV[o + 8]) else redis.call('HDEL', j, 'error') end
  if ARGV[o + 3] == 'retry' then
    redis.call('HSET', j, 'state', 'p')
    redis.call('ZADD', K .. ':due:' .. target, now_ms() + tonumber(ARGV[o + 4]), job)
  else
    redis.call('HSET', j, 'state', 'd', 'died', at)
    redis.call('ZADD', K .. ':dead:' .. target, at, job)
  end
  return 1
end
local replies = {}
for o = 0, #ARGV - 1, 9 do table.insert(replies, record(o)) end
for set, jobs in pairs(ended) do redis.call('ZREM', set, unpack(jobs)) end
if #gone > 0 then redis.call('DEL', unpack(gone)) end
return replies
",
            ),
            // ARGV: (job, token) pairs. Jobs still held under that token are due now.
            release: script(
                r"
local now, n = now_ms(), 0
for i = 1, #ARGV, 2 do
  local job = ARGV[i]
  local j = K .. ':job:' .. job
  local f = redis.call('HMGET', j, 'state', 'lease', 'target')
  if f[1] == 'f' and f[2] == ARGV[i + 1] then
    redis.call('HSET', j, 'state', 'p')
    redis.call('ZREM', K .. ':lease:' .. f[3], job)
    redis.call('ZADD', K .. ':due:' .. f[3], now, job)
    n = n + 1
  end
end
return n
",
            ),
            // ARGV: lease ms, then (job, token) pairs. Returns the jobs whose lease was lost.
            renew: script(
                r"
local expiry = now_ms() + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  local job = ARGV[i]
  local f = redis.call('HMGET', K .. ':job:' .. job, 'state', 'lease', 'target')
  if f[1] == 'f' and f[2] == ARGV[i + 1] then
    redis.call('ZADD', K .. ':lease:' .. f[3], 'XX', expiry, job)
  else
    table.insert(lost, job)
  end
end
return lost
",
            ),
            // ARGV: reason, now ms, targets. Their pending jobs become dead; counts per target.
            bury: script(
                r"
local counts = {}
for i = 3, #ARGV do
  local target = ARGV[i]
  local due_key = K .. ':due:' .. target
  local jobs = redis.call('ZRANGE', due_key, 0, -1)
  for _, job in ipairs(jobs) do
    redis.call('HSET', K .. ':job:' .. job, 'state', 'd', 'died', ARGV[2], 'updated', ARGV[2], 'error', ARGV[1])
    redis.call('ZADD', K .. ':dead:' .. target, ARGV[2], job)
  end
  redis.call('DEL', due_key)
  table.insert(counts, #jobs)
end
return counts
",
            ),
            // ARGV: (job, target) pairs. Dead ones are due now with a fresh allowance.
            replay: script(
                r"
local now, done = now_ms(), {}
for i = 1, #ARGV, 2 do
  local job, target = ARGV[i], ARGV[i + 1]
  local j = K .. ':job:' .. job
  local f = redis.call('HMGET', j, 'state', 'attempts')
  if f[1] == 'd' then
    redis.call('HSET', j, 'state', 'p', 'base', f[2] or '0')
    redis.call('ZREM', K .. ':dead:' .. target, job)
    redis.call('ZADD', K .. ':due:' .. target, now, job)
    table.insert(done, job)
  end
end
return done
",
            ),
            // ARGV: (job, target) pairs. Dead ones are deleted.
            purge_dead: script(
                r"
local n = 0
for i = 1, #ARGV, 2 do
  local job, target = ARGV[i], ARGV[i + 1]
  local j = K .. ':job:' .. job
  local f = redis.call('HMGET', j, 'state', 'cb')
  if f[1] == 'd' then
    redis.call('DEL', j, K .. ':att:' .. job)
    redis.call('ZREM', K .. ':dead:' .. target, job)
    close_job(f[2])
    n = n + 1
  end
end
return n
",
            ),
            // ARGV: received before (ms), batch. Callbacks with no job left are forgotten.
            purge_done: script(
                r"
local ids = redis.call('ZRANGEBYSCORE', K .. ':done', '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, cb in ipairs(ids) do
  local key = K .. ':cb:' .. cb
  local keys = redis.call('HMGET', key, 'dedupe', 'legacy')
  for _, dedupe in ipairs(keys) do
    if dedupe and redis.call('HGET', K .. ':dedupe', dedupe) == cb then
      redis.call('HDEL', K .. ':dedupe', dedupe)
    end
  end
  redis.call('DEL', key)
  redis.call('ZREM', K .. ':done', cb)
end
return #ids
",
            ),
            // ARGV: min, max (died), limit, targets. Rows of 10 fields, newest first per target.
            dead_list: script(
                r"
local rows = {}
for i = 4, #ARGV do
  local ids = redis.call('ZREVRANGEBYSCORE', K .. ':dead:' .. ARGV[i], ARGV[2], ARGV[1], 'LIMIT', 0, ARGV[3])
  for _, job in ipairs(ids) do
    local row = letter(job)
    if row then for _, v in ipairs(row) do table.insert(rows, v) end end
  end
end
return rows
",
            ),
            // ARGV: job. The letter's 10 fields, query, content type, body, then
            // (attempt, record) pairs; empty if it is not a dead letter here.
            dead_detail: script(
                r"
local row = letter(ARGV[1])
if not row then return {} end
local j = redis.call('HGET', K .. ':job:' .. ARGV[1], 'cb')
local c = redis.call('HMGET', K .. ':cb:' .. j, 'query', 'ctype', 'body')
table.insert(row, c[1] or false)
table.insert(row, c[2] or false)
table.insert(row, c[3] or false)
for _, v in ipairs(redis.call('HGETALL', K .. ':att:' .. ARGV[1])) do table.insert(row, v) end
return row
",
            ),
            // ARGV: targets. Pending, in flight and dead per target.
            depths: script(
                r"
local counts = {}
for i = 1, #ARGV do
  table.insert(counts, redis.call('ZCARD', K .. ':due:' .. ARGV[i]))
  table.insert(counts, redis.call('ZCARD', K .. ':lease:' .. ARGV[i]))
  table.insert(counts, redis.call('ZCARD', K .. ':dead:' .. ARGV[i]))
end
return counts
",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persistence_risks_name_what_a_crash_can_lose() {
        let settings = |pairs: &[(&'static str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (*k, (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        let safe = settings(&[
            ("appendonly", "yes"),
            ("appendfsync", "always"),
            ("maxmemory-policy", "noeviction"),
        ]);
        assert_eq!(persistence_risk(&safe, false), None);
        let everysec = settings(&[("appendonly", "yes"), ("appendfsync", "everysec")]);
        assert!(
            persistence_risk(&everysec, false)
                .unwrap()
                .contains("up to about 1 s")
        );
        assert_eq!(persistence_risk(&everysec, true), None, "WAITAOF covers it");
        let lru = settings(&[
            ("appendonly", "yes"),
            ("appendfsync", "always"),
            ("maxmemory-policy", "allkeys-lru"),
        ]);
        assert!(persistence_risk(&lru, false).unwrap().contains("evict"));
        let none = settings(&[("appendonly", "no"), ("save", "")]);
        assert!(
            persistence_risk(&none, false)
                .unwrap()
                .contains("every stored callback")
        );
    }

    /// `rediss://` is TLS (the crate's rustls feature is built in): the URL is accepted as a
    /// TLS address rather than refused.
    #[test]
    fn rediss_urls_are_tls_addresses() {
        let info = "rediss://:pw@redis.example:6380/0"
            .into_connection_info()
            .unwrap();
        assert!(
            matches!(info.addr(), redis::ConnectionAddr::TcpTls { host, port: 6380, .. } if host == "redis.example"),
            "{:?}",
            info.addr()
        );
        assert_eq!(info.redis_settings().password(), Some("pw"));
    }

    #[test]
    fn versions_are_read_from_info() {
        assert_eq!(
            server_version("# Server\r\nredis_version:7.0.15\r\nredis_git_sha1:0\r\n"),
            Some((7, 0))
        );
        assert_eq!(server_version("redis_version:7.2.4\n"), Some((7, 2)));
        assert_eq!(server_version("nothing"), None);
    }
}
