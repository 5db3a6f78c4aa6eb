//! The load benchmark's callback source, two commands:
//!
//! * `wrk-data`: writes the file `callbacks.lua` reads, so that wrk sends realistic, distinct
//!   callbacks. Plain: the suffix and the `VARIANTS` (query, body prefix) pairs; Lua appends the
//!   message id. Event: the same for events (`corpus::event`), whose number is their `EventKey`,
//!   and the head up to the sender, whose number Lua computes.
//!   Safe: a pool of whole encrypted callbacks (each with its own query, since
//!   `msg_signature` covers `Encrypt`), cycled through by wrk. One record a line, `query\tbody`,
//!   with `\\`, `\n` and `\t` escaped.
//! * `rate`: a constant-rate (open-loop) generator for the latency scenario. A pacer thread
//!   releases callback `i` at `start + i / rate`; a pool of blocking connections takes them in
//!   order, and each answer's latency is measured from its scheduled time, not from when a
//!   connection got round to sending it, so a stalled server cannot hide its stall by slowing the
//!   client down (coordinated omission). wrk paces nothing, oha cannot vary the body per request,
//!   and wrk2 is not packaged: hence this.
//!
//! Output of `rate`: one line `RATE {json}` with counts and latency percentiles in µs.
#![forbid(unsafe_code)]

#[allow(dead_code)] // shared by every bench binary
#[path = "corpus.rs"]
mod corpus;

use std::io::{BufWriter, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(about = "Load-bench callbacks: data for wrk, or a constant-rate generator")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scheme {
    Plain,
    /// Events without a `MsgId`, keyed by a digest of their message (`corpus::event`).
    Event,
    Safe,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write the data file of callbacks.lua.
    WrkData {
        #[arg(long, value_enum)]
        scheme: Scheme,
        /// Safe mode: how many distinct encrypted callbacks to write.
        #[arg(long, default_value_t = 200_000)]
        pool: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Send callbacks at a constant rate and report answer latencies.
    Rate {
        /// The proxy's address; callbacks go to /wechat/bench.
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, value_enum, default_value_t = Scheme::Plain)]
        scheme: Scheme,
        /// Callbacks per second.
        #[arg(long, default_value_t = 2000)]
        rate: u32,
        /// Seconds of load.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Connections (each carries one request at a time, keep-alive).
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// The first callback number (keep runs against one store apart).
        #[arg(long, default_value_t = 0)]
        first: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::WrkData { scheme, pool, out } => wrk_data(scheme, pool, &out),
        Command::Rate {
            addr,
            scheme,
            rate,
            duration,
            connections,
            first,
        } => {
            if rate == 0 || connections == 0 {
                bail!("--rate and --connections must be positive");
            }
            let report = run_rate(addr, scheme, rate, duration, connections, first)?;
            println!("RATE {report}");
            Ok(())
        }
    }
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\t', "\\t")
}

fn wrk_data(scheme: Scheme, pool: u64, out: &PathBuf) -> anyhow::Result<()> {
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = BufWriter::new(file);
    match scheme {
        Scheme::Plain => {
            writeln!(w, "plain")?;
            writeln!(w, "{}", escape(corpus::BODY_SUFFIX))?;
            for v in corpus::variants() {
                writeln!(w, "{}\t{}", v.query, escape(&v.prefix))?;
            }
        }
        Scheme::Event => {
            writeln!(w, "event")?;
            writeln!(w, "{}", escape(corpus::EVENT_SUFFIX))?;
            writeln!(w, "{}", escape(corpus::EVENT_HEAD))?;
            for v in corpus::event_variants() {
                writeln!(w, "{}\t{}", v.query, escape(&v.prefix))?;
            }
        }
        Scheme::Safe => {
            writeln!(w, "safe")?;
            let sealer = corpus::Sealer::new();
            for k in 0..pool {
                let (query, body) = sealer.safe(k);
                writeln!(w, "{query}\t{}", escape(&body))?;
            }
        }
    }
    w.flush()?;
    Ok(())
}

/// One answered (or failed) callback.
struct Sample {
    latency: Duration,
    ok: bool,
}

fn run_rate(
    addr: SocketAddr,
    scheme: Scheme,
    rate: u32,
    duration: u64,
    connections: usize,
    first: u64,
) -> anyhow::Result<serde_json::Value> {
    let total = u64::from(rate) * duration;
    let sealer = (scheme == Scheme::Safe).then(corpus::Sealer::new);
    let variants = corpus::variants();
    let event_variants = corpus::event_variants();
    // Build every request before the clock starts: the pacer must not wait for AES.
    let requests: Vec<Vec<u8>> = (first..first + total)
        .map(|n| {
            let (query, body) = match (&sealer, scheme) {
                (Some(sealer), _) => sealer.safe(n),
                (None, Scheme::Event) => {
                    let (query, body) = corpus::event(&event_variants, n);
                    (query.to_owned(), body)
                }
                (None, _) => {
                    let (query, body) = corpus::plain(&variants, n);
                    (query.to_owned(), body)
                }
            };
            format!(
                "POST /wechat/{}?{query} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {}\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                corpus::ACCOUNT,
                corpus::CONTENT_TYPE,
                body.len()
            )
            .into_bytes()
        })
        .collect();
    let requests = Arc::new(requests);
    let (jobs_tx, jobs_rx) = mpsc::channel::<(usize, Instant)>();
    let jobs_rx = Arc::new(Mutex::new(jobs_rx));
    let (samples_tx, samples_rx) = mpsc::channel::<Sample>();
    let mut workers = Vec::with_capacity(connections);
    for _ in 0..connections {
        let jobs = jobs_rx.clone();
        let samples = samples_tx.clone();
        let requests = requests.clone();
        workers.push(std::thread::spawn(move || {
            worker(addr, &jobs, &samples, &requests)
        }));
    }
    drop(samples_tx);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = Instant::now() + Duration::from_millis(100);
    let mut late = 0u64;
    for i in 0..requests.len() {
        let at = start + interval * u32::try_from(i).context("too many requests")?;
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        } else if now - at > Duration::from_millis(1) {
            late += 1;
        }
        if jobs_tx.send((i, at)).is_err() {
            break;
        }
    }
    drop(jobs_tx);
    for worker in workers {
        let _ = worker.join();
    }
    let elapsed = start.elapsed();
    let mut latencies = Vec::with_capacity(requests.len());
    let (mut ok, mut failed) = (0u64, 0u64);
    for sample in samples_rx {
        if sample.ok {
            ok += 1;
            latencies.push(sample.latency);
        } else {
            failed += 1;
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_micros() as u64
    };
    Ok(serde_json::json!({
        "scheme": format!("{scheme:?}").to_lowercase(),
        "target_rps": rate,
        "sent": ok + failed,
        "ok": ok,
        "failed": failed,
        "pacer_late": late,
        "achieved_rps": (ok as f64 / elapsed.as_secs_f64()).round(),
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": latencies.last().map_or(0, |l| l.as_micros() as u64),
    }))
}

/// One keep-alive connection: takes the next due callback, sends it, reads the answer.
fn worker(
    addr: SocketAddr,
    jobs: &Mutex<mpsc::Receiver<(usize, Instant)>>,
    samples: &mpsc::Sender<Sample>,
    requests: &[Vec<u8>],
) {
    let mut conn: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(4096);
    loop {
        let job = jobs
            .lock()
            .map_err(|_| ())
            .and_then(|rx| rx.recv().map_err(|_| ()));
        let Ok((i, at)) = job else { return };
        let ok = exchange(addr, &mut conn, &mut buf, &requests[i]).unwrap_or_else(|_| {
            conn = None;
            false
        });
        let _ = samples.send(Sample {
            latency: at.elapsed(),
            ok,
        });
    }
}

/// Sends one request and reads its answer; `Ok(true)` for a 200.
fn exchange(
    addr: SocketAddr,
    conn: &mut Option<TcpStream>,
    buf: &mut Vec<u8>,
    request: &[u8],
) -> std::io::Result<bool> {
    if conn.is_none() {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        *conn = Some(stream);
    }
    let Some(stream) = conn.as_mut() else {
        return Ok(false);
    };
    stream.write_all(request)?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..read]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head
        .get(9..12)
        .and_then(|s| s.parse::<u16>().ok())
        .unwrap_or(0);
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..read]);
    }
    if head.contains("connection: close") {
        *conn = None;
    }
    Ok(status == 200)
}
