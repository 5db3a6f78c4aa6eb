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
    let mut command = Command::new(EXE);
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
        let file = std::fs::File::create(log).expect("create the log file");
        let child = command(&["serve", "--config", &config.to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn the binary");
        let mut binary = Binary {
            child,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = binary.child.try_wait().expect("poll the child") {
                panic!(
                    "the binary exited with {status} before listening:\n{}",
                    binary.log()
                );
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return binary;
            }
            assert!(
                Instant::now() < deadline,
                "the binary did not listen on {addr} within {WAIT:?}:\n{}",
                binary.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
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

    /// SIGTERM, as `docker stop` or systemd send.
    pub(crate) fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
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
