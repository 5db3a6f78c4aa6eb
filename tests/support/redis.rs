//! Real Redis servers for tests: `redis-server` from PATH on loopback ports picked at random, a
//! temporary folder each, AOF on with `appendfsync always`. A server that cannot start panics,
//! so the test fails; it is never skipped.
//!
//! Each server runs under a small `sh` that holds the test process's pipe: when the test binary
//! exits (even servers kept in a `static` for the whole binary), the pipe closes and the shell
//! kills its server, so no server outlives its tests. Drop kills it too.
//!
//! Shared by `tests/store_contract.rs` and `tests/it` (`#[path]`); not every user needs every
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
    extra: Vec<String>,
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

    /// Starts the server again on the same port and folder (after [`RedisServer::signal`]).
    pub(crate) fn restart(&mut self) {
        let _ = self.shell.kill();
        let _ = self.shell.wait();
        let mut again = Self::spawn(self.port, &self.dir, &self.extra);
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
            extra: extra.to_vec(),
            shell,
            pid,
            _stdin: stdin,
        };
        let deadline = Instant::now() + START_WITHIN;
        while !server.answers_ping() {
            let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
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

    fn answers_ping(&self) -> bool {
        // A server with `--requirepass` answers NOAUTH: it is up all the same.
        command_at(self.port, "PING")
            .is_some_and(|r| r.starts_with("+PONG") || r.starts_with("-NOAUTH"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(self.pid.to_string())
            .status();
        let _ = self.shell.kill();
        let _ = self.shell.wait();
    }
}

/// A Redis Cluster of `masters` nodes without replicas, ready (`cluster_state:ok` on every node).
#[derive(Debug)]
pub(crate) struct RedisCluster {
    pub(crate) nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub(crate) fn start(masters: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..masters)
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
                    "5000",
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
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must run to create the cluster");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let deadline = Instant::now() + START_WITHIN;
        while !nodes
            .iter()
            .all(|n| n.command("CLUSTER INFO").contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisCluster { nodes }
    }

    /// The seed URLs, one per node.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
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
    let Some(end) = reply.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    match reply.first() {
        Some(b'$') => {
            let length: i64 = std::str::from_utf8(&reply[1..end])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(-1);
            length < 0 || reply.len() >= end + 2 + usize::try_from(length).unwrap_or(0) + 2
        }
        _ => true,
    }
}
