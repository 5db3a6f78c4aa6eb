//! Logging: tracing to stderr, filtered by `RUST_LOG` (default `info`).
//!
//! What is logged is decided where it happens; the rule everywhere is that tokens, AES keys and
//! decrypted message content never appear at info level or above.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
