//! The one shutdown story: SIGINT or SIGTERM cancels a token that every part watches.

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Cancels `token` on the first SIGINT or SIGTERM.
pub async fn on_signal(token: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = interrupt.await;
                info!("SIGINT received: shutting down");
                token.cancel();
                return;
            }
        };
        tokio::select! {
            _ = interrupt => info!("SIGINT received: shutting down"),
            _ = terminate.recv() => info!("SIGTERM received: shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
        info!("interrupt received: shutting down");
    }
    token.cancel();
}
