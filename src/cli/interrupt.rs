//! SIGINT/SIGTERM during foreground work (a manual backup, a restore): stop at the next
//! checkpoint, so that running the command again resumes it. Caught through signal-hook, as
//! the daemon's signals are (`daemon::signals`): one way of catching signals in the program.

use std::future::Future;
use tokio_util::sync::CancellationToken;

/// Runs `work` with a token that a SIGINT or SIGTERM cancels.
pub async fn stoppable<F, Fut, T>(work: F) -> T
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = T>,
{
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(stop_on_signal(stop.clone()));
    let out = work(stop).await;
    watcher.abort();
    out
}

async fn stop_on_signal(stop: CancellationToken) {
    use futures::StreamExt;
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook_tokio::Signals::new([SIGTERM, SIGINT]) else {
        return;
    };
    if signals.next().await.is_none() {
        return;
    }
    tracing::warn!("stopping at the next checkpoint; run backup again to resume");
    stop.cancel();
}
