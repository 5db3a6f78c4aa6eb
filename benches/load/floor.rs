//! The floor under any store script: Redis's CPU per callback for the bare commands the stored
//! shape needs, sent without Lua, as pipelines of plain commands.
//!
//! Per callback, as the Redis store writes an account's keys (one hash tag, `{bench:bench}`):
//!
//! * **accept**: `HSETNX dedupe msg:<MsgId> <id>`, one `HSET cb:<id>` of the callback's hash (the
//!   shape's fields, the lease tokens of two jobs held in it, `routed`), and per batch one
//!   `ZADD inline` (lease deadlines) and one `ZADD arrivals` with every callback's pair.
//! * **outcomes**, once the accept's replies are in: `HMGET cb:<id>` of what recording reads and
//!   one `HSET cb:<id>` clearing both tokens per callback, and per batch one `ZREM inline` and one
//!   `ZADD done`.
//!
//! `--batch K` callbacks share each of the two pipelines, so a callback costs `2 / K` round
//! trips (Redis wake-ups) and `4 + 4 / K` commands; `--rate` paces them (default: back to back,
//! saturated). Redis's CPU is read from `/proc/<pid>/stat` (every thread, so AOF's background
//! fsyncs count too) before and after; the pid comes from `INFO server`, so Redis must run on
//! this machine. Output: one line
//! `FLOOR batch=K callbacks=N redis_us_per_callback=X.X …`.
//!
//! Writes new keys only and flushes nothing: it refuses a Redis that already holds its keys, so
//! each run wants a fresh `redis-server` (benches/load/floor.sh starts one per run).
#![forbid(unsafe_code)]

#[allow(dead_code)] // shared by every bench binary
#[path = "corpus.rs"]
mod corpus;

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use wechat_fanout::clock::now_ms;

/// The account's keys, under one hash tag as the store writes them.
const BASE: &str = "{bench:bench}";
/// How long the inline jobs' lease runs from arrival (ms), as `ZADD inline` scores it.
const LEASE_MS: i64 = 30_000;

#[derive(Debug, Parser)]
#[command(about = "Redis's CPU per callback for the stored shape's bare commands, no Lua")]
struct Args {
    /// Redis's address (host:port); it must run on this machine (its CPU is read from /proc).
    #[arg(long, default_value = "127.0.0.1:6379")]
    redis: String,
    /// Callbacks to write.
    #[arg(long, default_value_t = 20_000)]
    callbacks: u64,
    /// Callbacks per round trip (each of the accept and outcome pipelines holds this many).
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// Callbacks per second, paced (each batch sent at `start + first / rate`); default: back to
    /// back, saturated. Paced, Redis sleeps between round trips, as it does at a moderate load.
    #[arg(long)]
    rate: Option<f64>,
    /// Pad each body to this many bytes (default: the plain corpus body as is, ~470 bytes).
    #[arg(long)]
    body: Option<usize>,
    /// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`; floor.sh passes it).
    /// Without `libc` this binary cannot ask sysconf itself; 100 is Linux's usual value.
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.callbacks == 0 || args.batch == 0 || args.clk_tck == 0 {
        bail!("--callbacks, --batch and --clk-tck must be positive");
    }
    if args.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        bail!("--rate must be positive");
    }
    let client =
        redis::Client::open(format!("redis://{}/", args.redis)).context("Redis address")?;
    let mut con = client.get_connection().context("connecting to Redis")?;

    let dedupe_key = format!("{BASE}:dedupe");
    let taken: bool = redis::cmd("EXISTS")
        .arg(&dedupe_key)
        .query(&mut con)
        .context("EXISTS")?;
    if taken {
        bail!("{dedupe_key} exists: run against a fresh Redis (this bench flushes nothing)");
    }
    let pid = redis_pid(&mut con)?;

    // Every callback's shape is built before the clock starts: only Redis is measured, but a
    // slow client would stretch the wall time.
    let variants = corpus::variants();
    let callbacks: Vec<Callback> = (0..args.callbacks)
        .map(|n| Callback::new(&variants, n, args.body))
        .collect::<anyhow::Result<_>>()?;
    let body_len = callbacks.first().map_or(0, |c| c.body.len());

    let cpu_before = redis_cpu(pid)?;
    let started = Instant::now();
    let batch = usize::try_from(args.batch).unwrap_or(usize::MAX);
    for (k, chunk) in callbacks.chunks(batch).enumerate() {
        if let Some(rate) = args.rate {
            let due = started + Duration::from_secs_f64((k * batch) as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        accept(&mut con, chunk)?;
        outcomes(&mut con, chunk)?;
    }
    let wall = started.elapsed();
    let cpu_after = redis_cpu(pid)?;

    let per_tick_us = 1e6 / args.clk_tck as f64;
    let n = args.callbacks as f64;
    let user_us = (cpu_after.0 - cpu_before.0) as f64 * per_tick_us / n;
    let system_us = (cpu_after.1 - cpu_before.1) as f64 * per_tick_us / n;
    let batches = args.callbacks.div_ceil(args.batch) as f64;
    println!(
        "FLOOR batch={} callbacks={} redis_us_per_callback={:.1} user_us={:.1} system_us={:.1} \
         commands_per_callback={:.3} round_trips_per_callback={:.3} body_bytes={} \
         callbacks_per_s={:.0} paced={} clk_tck={}",
        args.batch,
        args.callbacks,
        user_us + system_us,
        user_us,
        system_us,
        (4.0 * n + 4.0 * batches) / n,
        2.0 * batches / n,
        body_len,
        n / wall.as_secs_f64(),
        args.rate.map_or_else(|| "no".to_owned(), |r| r.to_string()),
        args.clk_tck,
    );
    Ok(())
}

/// One callback's values, as the store would hand them to Redis.
#[derive(Debug)]
struct Callback {
    id: u64,
    msg_id: u64,
    query: String,
    body: String,
    sender: String,
    token_a: String,
    token_b: String,
}

impl Callback {
    fn new(
        variants: &[corpus::Variant],
        n: u64,
        pad_to: Option<usize>,
    ) -> anyhow::Result<Callback> {
        let (query, mut body) = corpus::plain(variants, n);
        if let Some(want) = pad_to {
            if want < body.len() {
                bail!(
                    "--body {want} is shorter than the corpus body ({} bytes)",
                    body.len()
                );
            }
            // Longer text content, so the body stays a well-formed message.
            let at = body
                .find("]]></Content>")
                .context("corpus body has a Content")?;
            body.insert_str(at, &"x".repeat(want - body.len()));
        }
        // Distinct, scattered 16-hex-digit values of the sizes the store writes.
        let mix = |salt: u64| {
            let mut x = n.wrapping_add(salt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            x ^= x >> 31;
            format!("{x:016x}")
        };
        Ok(Callback {
            id: n + 1,
            msg_id: corpus::MSG_ID_BASE + n,
            query: query.to_owned(),
            body,
            sender: mix(1),
            token_a: mix(2),
            token_b: mix(3),
        })
    }
}

/// A command on one of the account's keys (`set`), its members to follow.
fn on_set(name: &str, set: &str) -> redis::Cmd {
    let mut cmd = redis::cmd(name);
    cmd.arg(format!("{BASE}:{set}"));
    cmd
}

/// The accept's commands for a batch, one round trip.
fn accept(con: &mut redis::Connection, batch: &[Callback]) -> anyhow::Result<()> {
    let received = now_ms();
    let mut pipe = redis::pipe();
    let mut inline = on_set("ZADD", "inline");
    let mut arrivals = on_set("ZADD", "arrivals");
    for c in batch {
        let dedupe = format!("msg:{}", c.msg_id);
        pipe.cmd("HSETNX")
            .arg(format!("{BASE}:dedupe"))
            .arg(&dedupe)
            .arg(c.id)
            .ignore();
        pipe.cmd("HSET")
            .arg(format!("{BASE}:cb:{}", c.id))
            .arg("v")
            .arg(7)
            .arg("dedupe")
            .arg(&dedupe)
            .arg("received")
            .arg(received)
            .arg("query")
            .arg(&c.query)
            .arg("body")
            .arg(&c.body)
            .arg("open")
            .arg(2)
            .arg("msg_type")
            .arg("text")
            .arg("ctype")
            .arg(corpus::CONTENT_TYPE)
            .arg("msg_id")
            .arg(c.msg_id)
            .arg("sender")
            .arg(&c.sender)
            .arg("instance")
            .arg("floor-1")
            .arg("l:a")
            .arg(&c.token_a)
            .arg("l:b")
            .arg(&c.token_b)
            .arg("routed")
            .arg("a\nb\n")
            .ignore();
        inline.arg(received + LEASE_MS).arg(c.id);
        arrivals.arg(received).arg(c.id);
    }
    pipe.add_command(inline).ignore();
    pipe.add_command(arrivals).ignore();
    pipe.query::<()>(con).context("accept pipeline")
}

/// The outcomes' commands for a batch (both jobs delivered), one round trip.
fn outcomes(con: &mut redis::Connection, batch: &[Callback]) -> anyhow::Result<()> {
    let received = now_ms();
    let mut pipe = redis::pipe();
    let mut inline = on_set("ZREM", "inline");
    let mut done = on_set("ZADD", "done");
    for c in batch {
        let cb = format!("{BASE}:cb:{}", c.id);
        // Read back, not ignored: recording checks the callback is still open and its tokens.
        pipe.cmd("HMGET")
            .arg(&cb)
            .arg("open")
            .arg("received")
            .arg("l:a")
            .arg("l:b");
        pipe.cmd("HSET")
            .arg(&cb)
            .arg("open")
            .arg(0)
            .arg("l:a")
            .arg(0)
            .arg("l:b")
            .arg(0)
            .ignore();
        inline.arg(c.id);
        done.arg(received).arg(c.id);
    }
    pipe.add_command(inline).ignore();
    pipe.add_command(done).ignore();
    let read: Vec<Vec<Option<String>>> = pipe.query(con).context("outcome pipeline")?;
    // A sanity check that the accept landed: every hash is there, open, with its tokens.
    for (c, fields) in batch.iter().zip(&read) {
        if fields.first().and_then(Option::as_deref) != Some("2")
            || fields.get(2).and_then(Option::as_deref) != Some(c.token_a.as_str())
        {
            bail!("callback {} read back as {fields:?}", c.id);
        }
    }
    Ok(())
}

/// Redis's pid, from `INFO server`.
fn redis_pid(con: &mut redis::Connection) -> anyhow::Result<u32> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(con)
        .context("INFO server")?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .context("INFO server has no process_id")?
        .trim()
        .parse()
        .context("process_id")
}

/// Redis's CPU so far in clock ticks, (user, system), from `/proc/<pid>/stat` (fields 14 and 15,
/// counted after the parenthesised command name, which may hold spaces).
fn redis_cpu(pid: u32) -> anyhow::Result<(u64, u64)> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path)
        .with_context(|| format!("{path} (is Redis on this machine?)"))?;
    let after_name = stat.rsplit_once(')').context("stat has no command name")?.1;
    // after_name starts at field 3 (state): field f is at index f - 3.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let tick = |f: usize| -> anyhow::Result<u64> {
        fields
            .get(f - 3)
            .context("stat too short")?
            .parse()
            .with_context(|| format!("stat field {f}"))
    };
    Ok((tick(14)?, tick(15)?))
}
