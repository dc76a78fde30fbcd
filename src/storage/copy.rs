//! Waiting for an asynchronous Copy Blob: the one poll loop, used by the cycle's seed and by
//! restore.

use crate::storage::{BlobRef, BlobResult, CopyStatus, PageBlobs};
use std::fmt;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How a copy ended, as its destination reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyEnd {
    Success,
    Failed(String),
    Aborted(String),
    /// The destination no longer reports this copy (deleted, or replaced by another copy).
    Gone,
    /// Still pending, but its bytes copied did not grow for the stall limit: the copy is
    /// still running on the service, and the caller aborts it.
    Stalled(Stall),
}

/// A pending copy whose progress stood still.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    /// Bytes copied, as last reported.
    pub copied: u64,
    /// Bytes to copy, as last reported.
    pub total: u64,
    /// How long `copied` has not grown.
    pub for_: Duration,
}

impl fmt::Display for Stall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stalled: pending at {} of {} bytes copied, no progress for {:.0?} (copy_stall_timeout)",
            self.copied, self.total, self.for_
        )
    }
}

/// What waiting for a copy came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyWait {
    Ended(CopyEnd),
    /// `stop` was cancelled first; the copy goes on, unobserved.
    Stopped,
}

/// Polls `dest` until copy `copy_id` ends, waiting `poll.0` first and doubling up to
/// `poll.1`; `progress(copied, total)` is told about each pending status. A copy reported
/// pending whose bytes copied have not grown for `stall` ends as [`CopyEnd::Stalled`]: Azure's
/// copies are best-effort and may sit queued for a while, but a service (or an answer) that
/// reports the same progress forever must not hold a cycle or a restore forever.
pub async fn wait(
    blobs: &dyn PageBlobs,
    dest: &BlobRef,
    copy_id: &str,
    poll: (Duration, Duration),
    stall: Duration,
    stop: &CancellationToken,
    mut progress: impl FnMut(u64, u64),
) -> BlobResult<CopyWait> {
    let mut wait = poll.0;
    // The most bytes reported copied so far, and since when.
    let mut best: Option<(u64, Instant)> = None;
    loop {
        let status = match blobs.properties(dest, None).await?.and_then(|p| p.copy) {
            Some((id, status)) if id == copy_id => status,
            _ => return Ok(CopyWait::Ended(CopyEnd::Gone)),
        };
        let (copied, total) = match status {
            CopyStatus::Success => return Ok(CopyWait::Ended(CopyEnd::Success)),
            CopyStatus::Failed(why) => return Ok(CopyWait::Ended(CopyEnd::Failed(why))),
            CopyStatus::Aborted(why) => return Ok(CopyWait::Ended(CopyEnd::Aborted(why))),
            CopyStatus::Pending { copied, total } => (copied, total),
        };
        progress(copied, total);
        let now = Instant::now();
        let since = match best {
            Some((most, since)) if copied <= most => since,
            _ => {
                best = Some((copied, now));
                now
            }
        };
        let still = now - since;
        if still >= stall {
            return Ok(CopyWait::Ended(CopyEnd::Stalled(Stall {
                copied,
                total,
                for_: still,
            })));
        }
        // Polled again at the stall limit at the latest, so that it is not overrun by a
        // whole poll interval.
        tokio::select! {
            _ = stop.cancelled() => return Ok(CopyWait::Stopped),
            _ = tokio::time::sleep(wait.min(stall - still)) => {}
        }
        wait = (wait * 2).min(poll.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Metadata;
    use crate::storage::fake::MemBlobs;

    const POLL: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(10));
    const STALL: Duration = Duration::from_secs(60);
    const SIZE: u64 = 1 << 20;

    /// A copy of a `SIZE` blob started on `blobs`, and its destination.
    async fn started(blobs: &MemBlobs) -> (BlobRef, String) {
        let (src, dest) = (
            BlobRef::new("a", "c", "src"),
            BlobRef::new("b", "c", "dest"),
        );
        blobs.write(&src, 0, &[7; 512]);
        blobs.resize(&src, SIZE, &Default::default()).await.unwrap();
        let id = blobs
            .start_copy(&dest, &src, None, &Metadata::new(), &Default::default())
            .await
            .unwrap();
        (dest, id)
    }

    /// Waits for the copy; returns how it ended, the tokio time it took and every progress
    /// report.
    async fn waited(blobs: &MemBlobs) -> (CopyWait, Duration, Vec<(u64, u64)>) {
        let (dest, id) = started(blobs).await;
        let mut seen = Vec::new();
        let t0 = Instant::now();
        let end = wait(
            blobs,
            &dest,
            &id,
            POLL,
            STALL,
            &CancellationToken::new(),
            |c, t| seen.push((c, t)),
        )
        .await
        .unwrap();
        (end, t0.elapsed(), seen)
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_stuck_at_the_same_progress_ends_as_stalled_at_the_limit() {
        let mut blobs = MemBlobs::new();
        blobs.copy_polls = u32::MAX;
        let (end, took, seen) = waited(&blobs).await;
        assert_eq!(
            end,
            CopyWait::Ended(CopyEnd::Stalled(Stall {
                copied: 0,
                total: SIZE,
                for_: STALL,
            }))
        );
        // Polled once more at the limit itself, not a whole poll interval past it.
        assert_eq!(took, STALL);
        assert!(seen.iter().all(|&p| p == (0, SIZE)), "{seen:?}");
        let why = match end {
            CopyWait::Ended(CopyEnd::Stalled(s)) => s.to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            why,
            "stalled: pending at 0 of 1048576 bytes copied, no progress for 60s (copy_stall_timeout)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_that_advances_slowly_is_never_stalled() {
        let mut blobs = MemBlobs::new();
        blobs.copy_bytes_per_poll = 1;
        blobs.copy_polls = 30;
        let (end, took, seen) = waited(&blobs).await;
        assert_eq!(end, CopyWait::Ended(CopyEnd::Success));
        assert!(took > 3 * STALL, "ran well past the limit: {took:?}");
        let copied: Vec<u64> = seen.iter().map(|&(c, _)| c).collect();
        assert_eq!(copied, (1..=30).collect::<Vec<u64>>());
    }

    #[tokio::test(start_paused = true)]
    async fn success_and_failure_end_as_before() {
        let blobs = MemBlobs::new();
        let (end, _, seen) = waited(&blobs).await;
        assert_eq!(end, CopyWait::Ended(CopyEnd::Success));
        assert_eq!(seen.len(), 2, "pending for the fake's two polls: {seen:?}");

        let blobs = MemBlobs::new();
        blobs.fail_copies(1);
        let (end, _, _) = waited(&blobs).await;
        assert_eq!(end, CopyWait::Ended(CopyEnd::Failed("injected".into())));

        let blobs = MemBlobs::new();
        let (dest, id) = started(&blobs).await;
        blobs.abort_copy(&dest, &id).await.unwrap();
        let end = wait(
            &blobs,
            &dest,
            &id,
            POLL,
            STALL,
            &CancellationToken::new(),
            |_, _| {},
        )
        .await
        .unwrap();
        assert_eq!(end, CopyWait::Ended(CopyEnd::Aborted("aborted".into())));
    }
}
