//! The real `wechat-fanout` binary, run as an operator would: a config file, a port, signals.
//! Its stderr goes to a file so a failing test can show the log. Dropping it kills the process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::{WAIT, eventually};

/// The binary cargo built for this test run.
pub(crate) const EXE: &str = env!("CARGO_BIN_EXE_wechat-fanout");

/// A command for the binary with no `WECHAT_FANOUT_*` configuration leaking in from outside.
pub(crate) fn command(args: &[&str]) -> Command {
    command_of(Path::new(EXE), args)
}

/// The same for another build of the proxy at `program` (the build before, in a rolling
/// deploy).
pub(crate) fn command_of(program: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args).env("RUST_LOG", "info");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WECHAT_FANOUT_") {
            command.env_remove(name);
        }
    }
    command
}

/// Runs the binary to completion.
pub(crate) fn run(args: &[&str]) -> Output {
    command(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the binary")
}

/// What a command printed and how it ended, as the person who typed it sees it.
#[derive(Debug, Clone)]
pub(crate) struct Ran {
    /// `None` if a signal ended it.
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Ran {
    /// Asserts exit 0 and returns stdout.
    pub(crate) fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "expected exit 0: {self:#?}");
        &self.stdout
    }
}

/// Runs the binary to completion off the async threads (a proxy may be serving on them). A
/// command still running after [`WAIT`] is killed and fails the test.
pub(crate) async fn run_async(args: &[&str]) -> Ran {
    run_async_with_env(args, &[]).await
}

/// [`run_async`] with these environment variables set (secrets named by `*_env` keys).
pub(crate) async fn run_async_with_env(args: &[&str], env: &[(&str, &str)]) -> Ran {
    let child = command(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the binary");
    let pid = child.id();
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    let output = match tokio::time::timeout(WAIT, waiting).await {
        Ok(output) => output
            .expect("the command's thread")
            .expect("the command's output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!(
                "`wechat-fanout {}` still ran after {WAIT:?}",
                args.join(" ")
            );
        }
    };
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `http://{admin.listen}{path}` of the binary started with `config`.
pub(crate) fn admin_url(config: &Path, path: &str) -> String {
    let text = std::fs::read_to_string(config).expect("read the config");
    let parsed: toml::Value = toml::from_str(&text).expect("the config parses");
    let admin = parsed["admin"]["listen"].as_str().expect("admin.listen");
    format!("http://{admin}{path}")
}

/// A running `wechat-fanout serve`.
#[derive(Debug)]
pub(crate) struct Binary {
    child: Child,
    /// Its stderr (the log).
    log: PathBuf,
}

impl Binary {
    /// Starts `serve --config <config>` and waits (bounded) until `addr` accepts connections.
    pub(crate) async fn serve(config: &Path, addr: SocketAddr, log: &Path) -> Binary {
        Binary::serve_with(config, addr, log, &[], &[]).await
    }

    /// The same with more arguments before `serve` (`--log-format json`) and environment
    /// variables (`RUST_LOG`).
    pub(crate) async fn serve_with(
        config: &Path,
        addr: SocketAddr,
        log: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Binary {
        let mut binary = Binary::spawn(config, log, args, env);
        binary.wait_for_port(addr, Duration::from_millis(20)).await;
        binary
    }

    /// Starts `serve` without waiting for anything.
    pub(crate) fn spawn(config: &Path, log: &Path, args: &[&str], env: &[(&str, &str)]) -> Binary {
        Binary::spawn_of(Path::new(EXE), config, log, args, env)
    }

    /// The same with the build of the proxy at `program`.
    pub(crate) fn spawn_of(
        program: &Path,
        config: &Path,
        log: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Binary {
        let file = std::fs::File::create(log).expect("create the log file");
        let config = config.to_string_lossy();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["serve", "--config", &config]);
        let mut command = command_of(program, &all);
        command.envs(env.iter().copied());
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn the binary");
        Binary {
            child,
            log: log.to_path_buf(),
        }
    }

    /// Waits (bounded) until `addr` accepts connections, trying every `every` (zero: as fast as
    /// connections are refused, to catch the first moment the port is open).
    pub(crate) async fn wait_for_port(&mut self, addr: SocketAddr, every: Duration) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                panic!(
                    "the binary exited with {status} before listening:\n{}",
                    self.log()
                );
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the binary did not listen on {addr} within {WAIT:?}:\n{}",
                self.log()
            );
            if every.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(every).await;
            }
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no shutdown code runs.
    pub(crate) fn kill_9(&mut self) -> ExitStatus {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap the child")
    }

    /// Waits (bounded by [`WAIT`]) until the log satisfies `check`; returns the log. Fails at
    /// once, with the log, if the process exits meanwhile.
    pub(crate) async fn wait_log(&mut self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            if check(&log) {
                return log;
            }
            if let Some(status) = self.child.try_wait().expect("poll the child") {
                panic!("waiting for {what}, the binary exited with {status}:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "gave up after {WAIT:?} waiting for the log to show {what}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (bounded) for the log line announcing the WeChat port: the proxy is serving.
    pub(crate) async fn wait_listening(&mut self) {
        self.wait_log("the proxy announcing its WeChat port", |log| {
            log.contains("listening for WeChat callbacks")
        })
        .await;
    }

    /// Is the process still running?
    pub(crate) fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("poll the child").is_none()
    }

    /// SIGTERM, as `docker stop` or systemd send.
    pub(crate) fn terminate(&self) {
        self.signal("-TERM");
    }

    /// SIGHUP, as `systemctl reload` sends: re-read the config.
    pub(crate) fn hangup(&self) {
        self.signal("-HUP");
    }

    fn signal(&self, which: &str) {
        let status = Command::new("kill")
            .args([which, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {which} failed: {status}");
    }

    /// Waits (bounded by [`WAIT`]) for the process to exit: its status and how long it took.
    pub(crate) async fn wait_exit(&mut self) -> (ExitStatus, Duration) {
        let started = Instant::now();
        let status = eventually("the binary to exit", || {
            self.child.try_wait().expect("poll the child")
        })
        .await;
        (status, started.elapsed())
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
