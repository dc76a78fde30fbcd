//! Unix signals for the daemon: SIGTERM/SIGINT stop it, SIGHUP reloads the config.

use super::DaemonHandle;
use futures::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

/// Installs the handlers. Call it before start-up work, so that a signal sent meanwhile is
/// queued rather than killing the process.
pub fn install() -> std::io::Result<Signals> {
    Signals::new([SIGTERM, SIGINT, SIGHUP])
}

/// Forwards signals to the daemon from a background task.
pub fn forward(mut signals: Signals, handle: DaemonHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(sig) = signals.next().await {
            if sig == SIGHUP {
                tracing::info!("SIGHUP: reloading the config");
                handle.reload();
            } else {
                tracing::info!(
                    signal = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" },
                    "stopping: no new cycles, running cycles stop at their next checkpoint"
                );
                handle.shutdown();
            }
        }
    })
}
