//! The command line. Every command reads the same configuration (`--config` or
//! `WECHAT_FANOUT_CONFIG`); commands other than `serve` talk to a running proxy through its admin
//! API or, for `simulate`, through its WeChat port, exactly as WeChat would.

pub mod admin_client;
mod letter;
pub mod listen;
pub mod probe;
pub mod simulate;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;
use admin_client::{BackfillArgs, DeadLettersCommand, HealthcheckArgs};
use probe::ProbeArgs;
use simulate::SimulateArgs;

/// `--version`: the crate's version, and the commit the build was told it was made from
/// (`WECHAT_FANOUT_COMMIT` at build time: the Dockerfile's `COMMIT` argument), where it was.
pub fn version() -> String {
    describe_version(
        env!("CARGO_PKG_VERSION"),
        option_env!("WECHAT_FANOUT_COMMIT"),
    )
}

fn describe_version(version: &str, commit: Option<&str>) -> String {
    match commit.map(str::trim).filter(|c| !c.is_empty()) {
        Some(commit) => format!("{version} (commit {commit})"),
        None => version.to_owned(),
    }
}

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
    /// The admin API's base URL (`http://host:9090`), for `healthcheck` and `dead-letters`;
    /// default: from `admin.listen`. With it, no configuration file is needed.
    #[arg(long, global = true, value_name = "URL")]
    pub admin_url: Option<String>,
    /// The admin token, for `dead-letters` against a proxy with `admin.token` set; default: the
    /// configuration's `admin.token`, `admin.token_env`, or the variable
    /// `WECHAT_FANOUT_ADMIN__TOKEN` (the one name `serve` reads it by too).
    #[arg(long, global = true, value_name = "TOKEN")]
    pub admin_token: Option<String>,
    /// Log format; overrides `log.format`.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 25: `--help` says what every flag and argument of every command is for.
    #[test]
    fn every_argument_of_every_command_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (the command)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(
            &<Cli as clap::CommandFactory>::command(),
            "wechat-fanout",
            &mut missing,
        );
        assert!(missing.is_empty(), "without help: {missing:?}");
    }

    #[test]
    fn the_version_names_the_commit_the_build_was_told() {
        assert_eq!(describe_version("0.1.0", None), "0.1.0");
        assert_eq!(describe_version("0.1.0", Some("")), "0.1.0");
        assert_eq!(
            describe_version("0.1.0", Some("abc1234\n")),
            "0.1.0 (commit abc1234)"
        );
    }
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
    /// Queue for one target, through the running proxy's admin API, the stored callbacks of a
    /// past window that its filters take and it never had (a target added today); prints how
    /// many. Nothing is sent to any other target, and a second run queues nothing twice.
    Backfill(BackfillArgs),
    /// Send a realistic, signed (and encrypted) callback for an account, as WeChat would.
    Simulate(Box<SimulateArgs>),
    /// Receive a listen target's callbacks here (a laptop, an agent) over a WebSocket to the
    /// proxy, forward them to a local service and send its answers back.
    Listen(listen::ListenArgs),
    /// Check that every target answers WeChat's URL-verification GET (signed, fresh echostr)
    /// before pointing the console at the proxy; exit 0 only if all echo it exactly.
    Probe(ProbeArgs),
}
