//! The command line. Every command reads the same configuration (`--config` or
//! `WECHAT_FANOUT_CONFIG`); commands other than `serve` talk to a running proxy through its admin
//! API or, for `simulate`, through its WeChat port, exactly as WeChat would.

pub mod admin_client;
pub mod probe;
pub mod simulate;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;
use admin_client::{DeadLettersCommand, HealthcheckArgs};
use probe::ProbeArgs;
use simulate::SimulateArgs;

#[derive(Debug, Parser)]
#[command(
    name = "wechat-fanout",
    version,
    about = "One WeChat callback URL, many downstream services."
)]
pub struct Cli {
    /// The TOML configuration file (layered over the compiled-in defaults).
    #[arg(long, global = true, env = "WECHAT_FANOUT_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The admin API's base URL, for `healthcheck` and `dead-letters`; default: from
    /// `admin.listen`.
    #[arg(long, global = true, value_name = "URL")]
    pub admin_url: Option<String>,
    /// The admin token, for `dead-letters` against a proxy with `admin.token` set; default: the
    /// configuration's `admin.token` (or `admin.token_env`).
    #[arg(
        long,
        global = true,
        env = "WECHAT_FANOUT_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Log format; overrides `log.format`.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (SIGINT/SIGTERM stop it gracefully, SIGHUP reloads the config).
    Serve,
    /// Validate the configuration and print it, secrets redacted.
    CheckConfig,
    /// Exit 0 if the running proxy's admin API answers /healthz (or /readyz), else 1.
    Healthcheck(HealthcheckArgs),
    /// List, show, replay or purge dead letters through the running proxy's admin API.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
    /// Send a realistic, signed (and encrypted) callback for an account, as WeChat would.
    Simulate(SimulateArgs),
    /// Check that every target answers WeChat's URL-verification GET (signed, fresh echostr)
    /// before pointing the console at the proxy; exit 0 only if all echo it exactly.
    Probe(ProbeArgs),
}
