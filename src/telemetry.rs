//! Logging: tracing to stderr, human-readable or JSON, filtered by `RUST_LOG` or `log.filter`.
//!
//! A callback's lines run inside a `callback` span that carries its store id once it is stored,
//! and every delivery line names the same id, so one callback's story can be followed by that id
//! (JSON lines include the span's fields). What is logged is decided where it happens; the rule
//! everywhere is that tokens, AES keys and decrypted message content never appear at info level.

use tracing_subscriber::EnvFilter;

/// Logs one event at a level chosen at run time: tracing's macros take a constant level.
macro_rules! event_at {
    ($level:expr, $($event:tt)+) => {
        match $level {
            tracing::Level::ERROR => tracing::error!($($event)+),
            tracing::Level::WARN => tracing::warn!($($event)+),
            tracing::Level::INFO => tracing::info!($($event)+),
            tracing::Level::DEBUG => tracing::debug!($($event)+),
            _ => tracing::trace!($($event)+),
        }
    };
}
pub(crate) use event_at;

use crate::config::LogFormat;

/// Installs the global subscriber; a second call does nothing.
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
