//! Real Redis servers for tests: `redis-server` from PATH on loopback ports picked at random, a
//! temporary folder each, AOF on with `appendfsync always`. A server that cannot start panics,
//! so the test fails; it is never skipped.
//!
//! Each server runs under a small `sh` that holds the test process's pipe: when the test binary
//! exits (even servers kept in a `static` for the whole binary), the pipe closes and the shell
//! kills its server, so no server outlives its tests. Drop kills it too.
//!
//! Shared by `tests/store_contract/` and `tests/it` (`#[path]`); not every user needs every
//! function.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer PING, and a cluster to agree.
const START_WITHIN: Duration = Duration::from_secs(20);

/// One `redis-server`.
#[derive(Debug)]
pub(crate) struct RedisServer {
    pub(crate) port: u16,
    dir: PathBuf,
    /// Keeps the folder (AOF, nodes.conf) alive; `None` once handed to a restarted server.
    _temp: Option<tempfile::TempDir>,
    /// `redis-server`'s whole argument list, for a restart.
    args: Vec<String>,
    shell: Child,
    /// The server's pid (the shell's child), for signals.
    pub(crate) pid: u32,
    /// While this is open the shell waits; closing it (or the test process ending) kills.
    _stdin: ChildStdin,
}

impl RedisServer {
    /// A standalone server with AOF `always`, plus `extra` arguments (e.g. `--appendfsync
    /// everysec`).
    pub(crate) fn start(extra: &[&str]) -> RedisServer {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let mut server = Self::spawn(free_port(u16::MAX), &dir, &extra);
        server._temp = Some(temp);
        server
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `127.0.0.1:<port>`.
    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The folder with the AOF and the cluster's nodes.conf.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sends `signal` (e.g. "TERM", "KILL") to the server and waits until it has exited.
    pub(crate) fn signal(&mut self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status();
        let deadline = Instant::now() + START_WITHIN;
        while Path::new(&format!("/proc/{}", self.pid)).exists() && Instant::now() < deadline {
            if self.shell.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to the server without waiting for anything.
    pub(crate) fn send_signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status();
    }

    /// Starts the server again on the same port, folder and arguments (after
    /// [`RedisServer::signal`]).
    pub(crate) fn restart(&mut self) {
        let _ = self.shell.kill();
        let _ = self.shell.wait();
        let mut again = Self::launch(self.port, &self.dir, self.args.clone());
        again._temp = self._temp.take();
        // Dropping the old value kills nothing that runs: its server has exited.
        *self = again;
    }

    fn spawn(port: u16, dir: &Path, extra: &[String]) -> RedisServer {
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir.to_string_lossy(),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--protected-mode",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            "redis.log",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().cloned());
        Self::launch(port, dir, args)
    }

    /// Runs `redis-server args…` (logging to `dir`/redis.log, or where the arguments say) and
    /// waits until it answers PING on `port`.
    fn launch(port: u16, dir: &Path, args: Vec<String>) -> RedisServer {
        // The shell starts the server, prints its pid, and kills it when stdin closes.
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(r#"redis-server "$@" & pid=$!; echo "$pid"; cat >/dev/null; kill -9 "$pid" 2>/dev/null"#)
            .arg("sh")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sh must run to start redis-server");
        let stdin = shell.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(shell.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pid: u32 = line
            .trim()
            .parse()
            .expect("the shell prints redis-server's pid");
        let server = RedisServer {
            port,
            dir: dir.to_path_buf(),
            _temp: None,
            args,
            shell,
            pid,
            _stdin: stdin,
        };
        let deadline = Instant::now() + START_WITHIN;
        while !server.answers_ping() {
            let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default()
                + &std::fs::read_to_string(dir.join("sentinel.log")).unwrap_or_default();
            assert!(
                Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline,
                "redis-server on port {port} did not start (is redis-server on PATH?): {log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Sends a command (inline) and returns the raw reply.
    pub(crate) fn command(&self, command: &str) -> String {
        command_at(self.port, command).unwrap_or_default()
    }

    /// Sends a command (inline) and returns its reply flattened: every string and number in it,
    /// in order (nothing if no complete reply came).
    pub(crate) fn values(&self, command: &str) -> Vec<String> {
        parse_reply(self.command(command).as_bytes())
            .map(|(values, _)| values)
            .unwrap_or_default()
    }

    /// The value of `field` in `INFO`'s text (e.g. `role`, `master_link_status`).
    pub(crate) fn info_field(&self, field: &str) -> Option<String> {
        self.command("INFO").lines().find_map(|line| {
            Some(
                line.strip_prefix(field)?
                    .strip_prefix(':')?
                    .trim()
                    .to_owned(),
            )
        })
    }

    fn answers_ping(&self) -> bool {
        // A server with `--requirepass` answers NOAUTH: it is up all the same.
        command_at(self.port, "PING")
            .is_some_and(|r| r.starts_with("+PONG") || r.starts_with("-NOAUTH"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Quietly: after a restart the old pid is gone.
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(self.pid.to_string())
            .stderr(Stdio::null())
            .status();
        let _ = self.shell.kill();
        let _ = self.shell.wait();
    }
}

/// A Redis Cluster, ready (`cluster_state:ok` on every node, every replica in sync).
#[derive(Debug)]
pub(crate) struct RedisCluster {
    pub(crate) nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `masters` nodes without replicas.
    pub(crate) fn start(masters: usize) -> RedisCluster {
        Self::create(masters, 0, 5000)
    }

    /// `masters` primaries with one replica each (`redis-cli --cluster create --cluster-replicas
    /// 1`), and `cluster-node-timeout` `node_timeout_ms`: a dead primary's replica is promoted a
    /// second or two after that.
    pub(crate) fn start_with_replicas(masters: usize, node_timeout_ms: u64) -> RedisCluster {
        Self::create(masters, 1, node_timeout_ms)
    }

    fn create(masters: usize, replicas: usize, node_timeout_ms: u64) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| {
                let temp = tempfile::tempdir().unwrap();
                let dir = temp.path().to_path_buf();
                // The cluster bus listens on port + 10000.
                let port = free_port(55_535);
                let extra: Vec<String> = [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    &node_timeout_ms.to_string(),
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
                let mut node = RedisServer::spawn(port, &dir, &extra);
                node._temp = Some(temp);
                node
            })
            .collect();
        let output = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(RedisServer::addr))
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must run to create the cluster");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let cluster = RedisCluster { nodes };
        let deadline = Instant::now() + START_WITHIN;
        while !cluster.nodes.iter().all(|n| {
            n.command("CLUSTER INFO").contains("cluster_state:ok")
                && (n.info_field("role").as_deref() == Some("master")
                    || n.info_field("master_link_status").as_deref() == Some("up"))
        }) {
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ok, or a replica did not sync"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// The seed URLs, one per node.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The node (its index in `nodes`) that serves `key` as a primary now, and its replica's,
    /// by `CLUSTER NODES` as the first answering node sees it.
    pub(crate) fn shard_of(&self, key: &str) -> (usize, Option<usize>) {
        let asked = self
            .nodes
            .iter()
            .find(|n| !n.values("CLUSTER KEYSLOT x").is_empty())
            .expect("a node answers");
        let slot: u16 = asked.values(&format!("CLUSTER KEYSLOT {key}"))[0]
            .parse()
            .unwrap();
        let text = asked.values("CLUSTER NODES").concat();
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let index = |addr: &str| {
            let port: u16 = addr.split(['@', ':']).nth(1)?.parse().ok()?;
            self.nodes.iter().position(|n| n.port == port)
        };
        let serves = |fields: &Vec<&str>| {
            fields.iter().skip(8).any(|range| {
                let mut ends = range.split('-').map(|n| n.parse::<u16>().ok());
                match (ends.next().flatten(), ends.next()) {
                    (Some(first), None) => first == slot,
                    (Some(first), Some(Some(last))) => (first..=last).contains(&slot),
                    _ => false,
                }
            })
        };
        let primary = lines
            .iter()
            .find(|f| f.len() > 8 && f[2].contains("master") && serves(f))
            .unwrap_or_else(|| panic!("no primary serves slot {slot}: {text}"));
        let replica = lines
            .iter()
            .find(|f| f.len() > 3 && f[2].contains("slave") && f[3] == primary[0])
            .and_then(|f| index(f[1]));
        (index(primary[1]).expect("a node of this cluster"), replica)
    }
}

/// The name the Sentinel knows the primary by.
pub(crate) const MASTER_NAME: &str = "mymaster";

/// A primary, one replica of it (`--replicaof`) and one Sentinel watching them as
/// [`MASTER_NAME`] (quorum 1, `down-after-milliseconds` 1000): a failover within seconds.
/// `primary` and `replica` are the roles they started in; after a failover
/// [`RedisSentinelSet::primary_port`] says which one the Sentinel names.
#[derive(Debug)]
pub(crate) struct RedisSentinelSet {
    pub(crate) primary: RedisServer,
    pub(crate) replica: RedisServer,
    pub(crate) sentinel: RedisServer,
}

impl RedisSentinelSet {
    /// Starts the three and waits until the replica is in sync and the Sentinel knows it (so
    /// that it can promote it).
    pub(crate) fn start() -> RedisSentinelSet {
        let primary = RedisServer::start(&[]);
        let primary_port = primary.port.to_string();
        let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &primary_port]);
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        let port = free_port(u16::MAX);
        // The Sentinel rewrites its file (what it learns, its epoch): it must be writable.
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {dir}/sentinel.log\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 3000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        let args = vec![conf.to_string_lossy().into_owned(), "--sentinel".to_owned()];
        let mut sentinel = RedisServer::launch(port, &dir, args);
        sentinel._temp = Some(temp);
        let set = RedisSentinelSet {
            primary,
            replica,
            sentinel,
        };
        let deadline = Instant::now() + START_WITHIN;
        while !(set.replica.info_field("master_link_status").as_deref() == Some("up")
            && set.sentinel_field("num-slaves").as_deref() == Some("1"))
        {
            assert!(
                Instant::now() < deadline,
                "the replica did not sync, or the Sentinel did not find it"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        set
    }

    /// The Sentinel's URL, `redis://127.0.0.1:<port>`.
    pub(crate) fn sentinel_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.sentinel.port)
    }

    /// The port of the primary the Sentinel names now (`SENTINEL get-master-addr-by-name`).
    pub(crate) fn primary_port(&self) -> Option<u16> {
        let reply = self
            .sentinel
            .values(&format!("SENTINEL get-master-addr-by-name {MASTER_NAME}"));
        reply.get(1)?.parse().ok()
    }

    /// Waits until the Sentinel names the server on `port` as the primary and that server says
    /// it is one; how long that took. Panics after `within`.
    pub(crate) fn await_primary(&self, port: u16, within: Duration) -> Duration {
        let start = Instant::now();
        while !(self.primary_port() == Some(port)
            && command_at(port, "ROLE")
                .and_then(|r| parse_reply(r.as_bytes()))
                .is_some_and(|(role, _)| role.first().is_some_and(|r| r == "master")))
        {
            assert!(
                start.elapsed() < within,
                "the Sentinel did not promote 127.0.0.1:{port} within {within:?}; it names {:?}",
                self.primary_port()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    }

    /// Closes the primary's links to its replicas (`CLIENT KILL TYPE replica` on `server`).
    pub(crate) fn cut_replica_links(server: &RedisServer) {
        let reply = server.command("CLIENT KILL TYPE replica");
        assert!(reply.starts_with(':'), "CLIENT KILL answered {reply:?}");
    }

    /// A field of `SENTINEL master <name>` (e.g. `num-slaves`, `flags`).
    fn sentinel_field(&self, field: &str) -> Option<String> {
        let reply = self
            .sentinel
            .values(&format!("SENTINEL master {MASTER_NAME}"));
        let at = reply.iter().position(|v| v == field)?;
        reply.get(at + 1).cloned()
    }
}

/// A loopback port that was free a moment ago, at most `max`.
pub(crate) fn free_port(max: u16) -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        if port <= max
            && (max == u16::MAX || TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok())
        {
            return port;
        }
    }
}

/// One inline command over a fresh connection; the raw reply, or `None` if nothing answered.
fn command_at(port: u16, command: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut reply = Vec::new();
    let mut buffer = [0u8; 4096];
    // Read until a complete reply: a line for simple replies, the announced length for bulk.
    loop {
        let n = stream.read(&mut buffer).ok()?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buffer[..n]);
        if complete(&reply) {
            break;
        }
    }
    Some(String::from_utf8_lossy(&reply).into_owned())
}

fn complete(reply: &[u8]) -> bool {
    parse_reply(reply).is_some()
}

/// The reply at the start of `bytes`, flattened (the text of each simple string, error,
/// integer and bulk string, in order through arrays and maps), and its length in bytes; `None`
/// while it is incomplete.
fn parse_reply(bytes: &[u8]) -> Option<(Vec<String>, usize)> {
    let end = bytes.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&bytes[1..end]).ok()?;
    let rest = end + 2;
    match bytes.first()? {
        b'$' => {
            let Ok(length) = usize::try_from(line.parse::<i64>().ok()?) else {
                return Some((Vec::new(), rest)); // nil
            };
            let text = bytes.get(rest..rest + length)?;
            bytes.get(rest + length + 1)?;
            Some((
                vec![String::from_utf8_lossy(text).into_owned()],
                rest + length + 2,
            ))
        }
        kind @ (b'*' | b'%') => {
            let count = usize::try_from(line.parse::<i64>().ok()?).unwrap_or(0);
            let count = if *kind == b'%' { count * 2 } else { count };
            let (mut leaves, mut at) = (Vec::new(), rest);
            for _ in 0..count {
                let (more, length) = parse_reply(&bytes[at..])?;
                leaves.extend(more);
                at += length;
            }
            Some((leaves, at))
        }
        _ => Some((vec![line.to_owned()], rest)),
    }
}
