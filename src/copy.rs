//! Waiting for an asynchronous Copy Blob: the one poll loop, used by the cycle's seed and by
//! restore.

use crate::blobs::{BlobRef, BlobResult, CopyStatus, PageBlobs};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How a copy ended, as its destination reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyEnd {
    Success,
    Failed(String),
    Aborted(String),
    /// The destination no longer reports this copy (deleted, or replaced by another copy).
    Gone,
}

/// What waiting for a copy came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyWait {
    Ended(CopyEnd),
    /// `stop` was cancelled first; the copy goes on, unobserved.
    Stopped,
}

/// Polls `dest` until copy `copy_id` ends, waiting `poll.0` first and doubling up to
/// `poll.1`; `progress(copied, total)` is told about each pending status.
pub async fn wait(
    blobs: &dyn PageBlobs,
    dest: &BlobRef,
    copy_id: &str,
    poll: (Duration, Duration),
    stop: &CancellationToken,
    mut progress: impl FnMut(u64, u64),
) -> BlobResult<CopyWait> {
    let mut wait = poll.0;
    loop {
        let status = match blobs.properties(dest, None).await?.and_then(|p| p.copy) {
            Some((id, status)) if id == copy_id => status,
            _ => return Ok(CopyWait::Ended(CopyEnd::Gone)),
        };
        match status {
            CopyStatus::Success => return Ok(CopyWait::Ended(CopyEnd::Success)),
            CopyStatus::Failed(why) => return Ok(CopyWait::Ended(CopyEnd::Failed(why))),
            CopyStatus::Aborted(why) => return Ok(CopyWait::Ended(CopyEnd::Aborted(why))),
            CopyStatus::Pending { copied, total } => progress(copied, total),
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(CopyWait::Stopped),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(poll.1);
    }
}
