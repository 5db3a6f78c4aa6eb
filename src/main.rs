//! The binary: parse the command line, load the config (exit 64 if it is bad, before any port is
//! bound), set up logging, and run the command; `serve` builds the routing table (exit 64 if it
//! cannot), opens the store, binds both listeners and hands over to [`wechat_fanout::run_with`].
#![forbid(unsafe_code)]
// The binary decides exit codes and prints the one-line reason a person reads first.
#![allow(clippy::print_stderr)]

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _};
use tokio_util::sync::CancellationToken;
use wechat_fanout::cmd::{Cli, Command};
use wechat_fanout::cmd::{admin_client, listen, probe, simulate};
use wechat_fanout::config::Config;
use wechat_fanout::routing::Routes;
use wechat_fanout::store::Readiness;
use wechat_fanout::{Listeners, Reload};

// glibc's allocator spent ~10% of the proxy's CPU on the load bench (many small, short-lived
// allocations per callback across threads); mimalloc does the same work in a fraction of it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// EX_USAGE from sysexits.h: every configuration error exits with it, before any port is bound.
const EXIT_BAD_CONFIG: u8 = 64;

/// The admin token's variable before it had one name with the configuration's.
const OLD_TOKEN_VARIABLE: &str = "WECHAT_FANOUT_ADMIN_TOKEN";

fn main() -> ExitCode {
    let matches = Cli::command()
        .version(wechat_fanout::cmd::version())
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("wechat-fanout: invalid configuration: {e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    // The admin token had a second name once, one underscore away from the configuration's;
    // a variable that is silently not read would turn into a 401 far from its cause.
    if std::env::var_os(OLD_TOKEN_VARIABLE).is_some()
        && config.admin.token_env.as_deref() != Some(OLD_TOKEN_VARIABLE)
    {
        eprintln!(
            "wechat-fanout: {OLD_TOKEN_VARIABLE} is not read: the admin token's variable is \
             WECHAT_FANOUT_ADMIN__TOKEN (two underscores, like every setting), or pass --admin-token"
        );
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    // `serve` and `check-config` build what `serve` runs on, which checks every rule; the
    // client commands need only what they use.
    let routes = match cli.command {
        Command::Serve | Command::CheckConfig => match wechat_fanout::routing::build(&config) {
            Ok(routes) => Some(routes),
            Err(e) => {
                eprintln!("wechat-fanout: invalid configuration: {e}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
        },
        _ => None,
    };
    if let (Command::CheckConfig, Some(routes)) = (&cli.command, &routes) {
        print!("{}", config.redacted_toml());
        print!("{}", retry_windows(routes));
        return ExitCode::SUCCESS;
    }
    wechat_fanout::telemetry::init(
        cli.log_format.unwrap_or(config.log.format),
        &config.log.filter,
        &config.server.instance_name(),
    );
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(execute(cli, config, routes)));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("wechat-fanout: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Each target's retry window, as TOML comments after `check-config`'s TOML: how long a
/// delivery that keeps failing is retried before it becomes a dead letter.
fn retry_windows(routes: &Routes) -> String {
    let mut text = String::from(
        "\n# Retry windows: how long a failing delivery is retried before it is a dead letter.\n",
    );
    for target in routes.targets() {
        text.push_str(&format!(
            "# {}/{}: {}\n",
            target.key.account,
            target.key.target,
            wechat_fanout::routing::retry::window(&target.settings)
        ));
    }
    text
}

/// Runs a command; `Ok(false)` means it ran but the answer was a failure (exit 1).
async fn execute(cli: Cli, config: Config, routes: Option<Routes>) -> anyhow::Result<bool> {
    let mut out = std::io::stdout();
    match (cli.command, routes) {
        (Command::Serve, Some(routes)) => {
            serve(config, routes, cli.config).await?;
            Ok(true)
        }
        (Command::CheckConfig | Command::Serve, _) => Ok(true),
        (Command::Healthcheck(args), _) => {
            let base = admin_client::base_url(&config, cli.admin_url.as_deref());
            admin_client::healthcheck(&base, args.ready, &mut out).await
        }
        (Command::DeadLetters(command), _) => {
            let base = admin_client::base_url(&config, cli.admin_url.as_deref());
            let token = admin_token(cli.admin_token, &config)?;
            admin_client::dead_letters(&base, token.as_deref(), &command, &config, &mut out).await
        }
        (Command::Backfill(args), _) => {
            let base = admin_client::base_url(&config, cli.admin_url.as_deref());
            let token = admin_token(cli.admin_token, &config)?;
            admin_client::backfill(&base, token.as_deref(), &args, &mut out).await
        }
        (Command::Simulate(args), _) => simulate::run(&config, &args, &mut out).await,
        (Command::Probe(args), _) => probe::run(&config, &args, &mut out).await,
        (Command::Listen(args), _) => listen::run(&args, &mut out).await,
    }
}

/// The admin token a client command presents: `--admin-token` (or its variable), else the
/// configuration's `admin.token`.
fn admin_token(given: Option<String>, config: &Config) -> anyhow::Result<Option<String>> {
    Ok(match given {
        Some(token) => Some(token),
        None => config.admin.token()?,
    })
}

async fn serve(
    config: Config,
    routes: Routes,
    config_path: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    // Before any port is bound: from then on a SIGHUP must reload, not end the process.
    let reload = match config_path.map(Reload::on_hangup).transpose() {
        Ok(reload) => reload,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: configuration reload is off");
            None
        }
    };
    let readiness = Readiness {
        min_free_bytes: config.store.min_free_bytes,
        // As large as the largest callback the server accepts.
        probe_bytes: config.server.max_body_bytes + config.server.max_query_bytes,
    };
    let store = wechat_fanout::store::open(&config.store, readiness)
        .await
        .with_context(|| format!("opening the store {}", config.store.location()))?;
    let wechat = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("binding server.listen {}", config.server.listen))?;
    let admin = tokio::net::TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("binding admin.listen {}", config.admin.listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(wechat_fanout::shutdown::on_signal(shutdown.clone()));
    let listeners = Listeners {
        wechat,
        admin: Some(admin),
    };
    wechat_fanout::run_with(config, routes, store, listeners, reload, shutdown).await
}
