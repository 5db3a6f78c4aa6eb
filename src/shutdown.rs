//! The one shutdown story: SIGINT or SIGTERM cancels a token that every part watches; work in
//! flight then gets the grace period, and is abandoned (never lost: it stays in the store) after.

use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
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

/// Work that outlives the request or the worker that started it (connections, delivery attempts,
/// primary relays, saving an answer): tracked so shutdown can let it finish, and abandoned when the
/// grace period ends, so nothing holds the store once `run` has returned. An abandoned attempt
/// leaves its job in flight, which the next start turns back into a due job (at-least-once).
#[derive(Clone, Debug, Default)]
pub struct InFlight {
    tracker: TaskTracker,
    abandon: CancellationToken,
}

impl InFlight {
    /// Runs `work` in the background until it ends or shutdown abandons it.
    pub fn spawn<F>(&self, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let abandon = self.abandon.clone();
        // Boxed once here: an attempt's future is several KiB (hyper's client is inside), and
        // each wrapper below and tokio's task would otherwise copy all of it, also when it ends.
        let work = Box::pin(work);
        self.tracker.spawn(async move {
            tokio::select! {
                () = work => {}
                () = abandon.cancelled() => {}
            }
        });
    }

    /// Waits until `deadline` for the tracked work, then abandons what is left and waits for it
    /// to be dropped. Returns whether everything finished in time.
    pub async fn drain(&self, deadline: Instant) -> bool {
        self.tracker.close();
        let finished = tokio::time::timeout_at(deadline.into(), self.tracker.wait())
            .await
            .is_ok();
        if !finished {
            self.abandon.cancel();
            self.tracker.wait().await;
        }
        finished
    }
}
