//! The command line: `serve`, `check-config`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "wechat-fanout",
    version,
    about = "One WeChat callback URL, many downstream services."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve(ConfigArg),
    /// Validate the configuration and print it, secrets redacted.
    CheckConfig(ConfigArg),
}

#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The TOML configuration file (layered over the compiled-in defaults).
    #[arg(long, env = "WECHAT_FANOUT_CONFIG", value_name = "PATH")]
    pub config: PathBuf,
}
