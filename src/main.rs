//! The binary: parse the command line, load the config (exit 64 if it is bad, before any port is
//! bound), open the store, bind, and hand over to [`wechat_fanout::run`].
#![forbid(unsafe_code)]
// The binary decides exit codes and prints the one-line reason a person reads first.
#![allow(clippy::print_stderr)]

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use tokio_util::sync::CancellationToken;
use wechat_fanout::cli::{Cli, Command};
use wechat_fanout::config::Config;
use wechat_fanout::store::SqliteStore;

/// EX_USAGE from sysexits.h: every configuration error exits with it, before any port is bound.
const EXIT_BAD_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    wechat_fanout::telemetry::init();
    let (Command::Serve(arg) | Command::CheckConfig(arg)) = &cli.command;
    let config = match Config::load(Some(&arg.config)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("wechat-fanout: invalid configuration: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    match cli.command {
        Command::CheckConfig(_) => {
            print!("{}", config.redacted_toml());
            ExitCode::SUCCESS
        }
        Command::Serve(_) => match serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wechat-fanout: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = SqliteStore::open(&config.store.path, config.store.synchronous)
            .with_context(|| format!("opening the store at {}", config.store.path.display()))?;
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("binding {}", config.server.listen))?;
        let shutdown = CancellationToken::new();
        tokio::spawn(wechat_fanout::shutdown::on_signal(shutdown.clone()));
        wechat_fanout::run(config, Arc::new(store), listener, shutdown).await
    })
}
