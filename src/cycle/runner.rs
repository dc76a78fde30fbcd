//! Executes a cycle's actions against a [`PageBlobs`] and persists the record after each.
//!
//! The runner owns no decisions: `machine` says what to do next, the runner does it,
//! reconciling with what storage holds first (tagged snapshots) so that repeating an action
//! after a crash never duplicates its effect.
//!
//! This file holds the runner and its loop (`run_cycle`, `step`, `execute`, `commit`); the
//! rest of its work lives by concept beside it: `open` (opening or resuming a cycle),
//! `snapshot_actions`, `apply`, `seed`, `guest_state`, `handover` (the record in the lock
//! blob) and `fenced_writes` (the guards around the backup and the errors they raise).

use super::error::{CycleError, SnapshotLimit};
use super::machine::{self, Action, Outcome};
use super::metered::Metered;
use super::tuning::{ApplyTuning, Limits};
use crate::config::{CopyMode, DiskSource};
use crate::model::progress::Progress;
use crate::model::record::{CycleRecord, CycleStats};
use crate::model::Clock;
use crate::ownership::DiskLease;
use crate::source::{PageBlobSource, Source};
use crate::state::StateStore;
use crate::storage::{BlobRef, Fence, PageBlobs};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A disk as the runner needs it.
#[derive(Clone, Debug)]
pub struct DiskSpec {
    pub name: String,
    /// A page blob (read through the runner's storage), or a managed disk (read through the
    /// source the runner is given: [`Runner::other_source`]).
    pub source: DiskSource,
    pub backup: BlobRef,
    /// Parallel page requests during apply.
    pub concurrency: usize,
    /// Client copy (read + Put Page), server copy (Put Page From URL), or server with a
    /// fallback to client where the service refuses.
    pub copy_mode: CopyMode,
}

pub struct Runner<'a> {
    /// Storage, behind a meter that counts requests and diff ranges for the cycle's stats.
    pub blobs: Metered<'a>,
    pub store: &'a StateStore,
    pub clock: &'a dyn Clock,
    pub disk: &'a DiskSpec,
    /// Cancelled on shutdown: the runner stops at the next checkpoint.
    pub stop: CancellationToken,
    /// First and longest wait between copy status polls.
    pub copy_poll: (Duration, Duration),
    /// How long the seed copy may report the same progress before it is aborted as a failed
    /// start (`copy_stall_timeout`).
    pub copy_stall: Duration,
    /// Where the phase and apply offset are published for watchers (the daemon).
    pub progress: Option<Arc<Progress>>,
    /// Process-wide limits shared by every disk's runner (`max_inflight_requests`,
    /// `max_buffer_mib`); `None`: only the disk's own `concurrency` applies.
    pub limits: Option<Arc<Limits>>,
    pub tuning: ApplyTuning,
    /// Seed copies that ended failed in this run: at [`MAX_COPY_STARTS`] the run gives up.
    pub(super) copy_failures: AtomicU32,
    /// The operator allows writing to an existing backup blob snapback did not create
    /// (`adopt_existing_backup = true`).
    pub adopt_backup: bool,
    /// The disk's source when it is not the page blob `disk.source` (a managed disk).
    pub other_source: Option<&'a dyn Source>,
    /// The disk's chain id (from its lock blob, see `ownership`): tagged on every snapshot
    /// and backup base this runner makes; prune sweeps only this chain's source snapshots.
    pub chain: Option<String>,
    /// The disk's lease, when storage has leases: the open cycle's record is kept in its lock
    /// blob (see `handover`), read before a cycle is opened and written as it moves on.
    pub lease: Option<&'a DiskLease>,
    /// The fencing token every write to the backup carries (the lease's, see `ownership`);
    /// None: writes are unconditional (in-memory storage without leases).
    pub fence: Option<Fence>,
    /// The newest apply checkpoint saved locally and not yet written to the lock blob.
    unpublished: Mutex<Option<CycleRecord>>,
}

/// The source a runner reads: the page blob of its [`DiskSpec`], or the one it was given.
pub(super) enum SourceRef<'a> {
    Blob(PageBlobSource<'a>),
    Other(&'a dyn Source),
}

impl<'a> std::ops::Deref for SourceRef<'a> {
    type Target = dyn Source + 'a;
    fn deref(&self) -> &Self::Target {
        match self {
            SourceRef::Blob(b) => b,
            SourceRef::Other(s) => *s,
        }
    }
}
impl<'a> Runner<'a> {
    pub fn new(
        blobs: &'a dyn PageBlobs,
        store: &'a StateStore,
        clock: &'a dyn Clock,
        disk: &'a DiskSpec,
    ) -> Self {
        Runner {
            blobs: Metered::new(blobs),
            store,
            clock,
            disk,
            stop: CancellationToken::new(),
            copy_poll: (Duration::from_millis(200), Duration::from_secs(15)),
            copy_stall: crate::config::DEFAULT_COPY_STALL_TIMEOUT,
            progress: None,
            limits: None,
            tuning: ApplyTuning::default(),
            copy_failures: AtomicU32::new(0),
            adopt_backup: false,
            other_source: None,
            chain: None,
            lease: None,
            fence: None,
            unpublished: Mutex::new(None),
        }
    }

    /// The disk's source: a page blob seen through the meter, or the source given.
    pub(super) fn source(&self) -> SourceRef<'_> {
        match (self.other_source, &self.disk.source) {
            (Some(s), _) => SourceRef::Other(s),
            (None, DiskSource::Blob(b)) => {
                SourceRef::Blob(PageBlobSource::new(&self.blobs, b).in_chain(self.chain.as_deref()))
            }
            // Our bug, not bad input: whoever builds a runner for a managed disk gives it its
            // source (`service::App::managed_source`).
            (None, DiskSource::Managed { disk, .. }) => {
                panic!("the runner of managed disk {disk} was given no source")
            }
        }
    }

    pub(super) fn now(&self) -> i64 {
        self.clock.now().timestamp()
    }

    /// Runs (or resumes) one cycle to the end. A source or backup account that cannot be
    /// used (a missing secret) fails it before any request.
    pub async fn run_cycle(&self) -> Result<CycleRecord, CycleError> {
        self.source()
            .check()
            .and_then(|()| self.blobs.check_account(&self.disk.backup.account))
            .map_err(|e| self.blob_err(e))?;
        let mut rec = self.open_or_resume().await?;
        // Read access a killed run left granted is ended first (a managed disk allows only
        // a few at once); this cycle grants what it needs again.
        self.source()
            .release(&rec.disk)
            .await
            .map_err(|e| self.blob_err(e))?;
        while self.step(&mut rec).await? {}
        Ok(rec)
    }

    /// Executes the next action and persists its outcome. Returns false once the cycle is done.
    pub async fn step(&self, rec: &mut CycleRecord) -> Result<bool, CycleError> {
        let Some(action) = machine::next_action(rec) else {
            return Ok(false);
        };
        let interrupted = || CycleError::Interrupted {
            disk: rec.disk.clone(),
            phase: rec.phase.name(),
        };
        if let Some(p) = &self.progress {
            p.set_phase(rec.phase.name());
        }
        if self.stop.is_cancelled() {
            return Err(interrupted());
        }
        // Dropping an action midway is as safe as a crash (each is reconciled or idempotent),
        // so a stop request does not wait for a slow request or a long copy. Apply stops on
        // its own, after saving its checkpoint; beside it, its checkpoints go to the lock
        // blob every few seconds (a refused write drops the apply).
        let outcome = if matches!(action, Action::ApplyDiff { .. }) {
            let applied = tokio::select! {
                r = self.execute(action, rec) => r,
                e = self.publish_checkpoints() => Err(e),
            };
            match applied {
                Ok(outcome) => outcome,
                Err(e) => {
                    if !matches!(e, CycleError::Ownership(_) | CycleError::Fenced { .. }) {
                        self.flush_checkpoint().await;
                    }
                    return Err(e);
                }
            }
        } else {
            let mut work = rec.clone();
            let outcome = tokio::select! {
                r = self.execute(action, &mut work) => r?,
                _ = self.stop.cancelled() => return Err(interrupted()),
            };
            rec.written_etag = work.written_etag;
            outcome
        };
        self.commit(rec, outcome)?;
        self.take_unpublished();
        self.publish(rec).await?;
        failpoint_after_step().await;
        Ok(!rec.is_done())
    }

    pub(super) fn commit(&self, rec: &mut CycleRecord, outcome: Outcome) -> Result<(), CycleError> {
        if let Outcome::Repair { reason } = &outcome {
            tracing::warn!(disk = %rec.disk, reason = %reason, "cannot apply a diff onto this backup; re-seeding (earlier restore points are kept)");
        }
        machine::advance(rec, outcome, self.now())?;
        let (requests, ranges) = self.blobs.take_counts();
        let (source_requests, source_ranges) = self.source().take_counts();
        rec.stats.requests += requests + source_requests;
        rec.stats.ranges += ranges + source_ranges;
        self.store.save_cycle(rec, self.now())?;
        *self.unpublished.lock().unwrap_or_else(|p| p.into_inner()) = Some(rec.clone());
        Ok(())
    }

    /// The newest record saved since the last write to the lock blob, if any.
    pub(super) fn take_unpublished(&self) -> Option<CycleRecord> {
        self.unpublished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Persists apply progress: everything below `upto` is in the backup.
    pub(super) fn checkpoint(
        &self,
        rec: &mut CycleRecord,
        upto: u64,
        stats: CycleStats,
    ) -> Result<(), CycleError> {
        self.commit(
            rec,
            Outcome::Applied {
                upto,
                done: false,
                stats,
            },
        )
    }

    /// Performs one action, reconciling with storage first. Public so tests can simulate a
    /// crash between an action's effect and its persistence.
    pub async fn execute(
        &self,
        action: Action,
        rec: &mut CycleRecord,
    ) -> Result<Outcome, CycleError> {
        let action_phase = rec.phase.name();
        let r = match action {
            Action::TakeSourceSnapshot => {
                return match self.take_source_snapshot(rec).await {
                    Err(e) => Err(match SnapshotLimit::of(&e) {
                        Some(limit) => CycleError::SnapshotLimit {
                            disk: rec.disk.clone(),
                            of: Box::new(self.disk.source.clone()),
                            limit,
                        },
                        None => self.blob_err(e),
                    }),
                    Ok(o) => Ok(o),
                }
            }
            Action::CheckDiffBase {
                base,
                expected_backup_etag,
            } => {
                self.check_diff_base(&rec.phase, &base, expected_backup_etag)
                    .await
            }
            Action::ApplyDiff {
                source,
                base,
                size,
                from,
                expected_backup_etag,
            } => {
                let expected = expected_backup_etag.as_deref();
                return self
                    .apply(rec, &source, base.as_ref(), size, from, expected)
                    .await;
            }
            Action::StartCopy { source } => {
                if !rec.backup_touched {
                    self.check_backup_is_ours().await?;
                }
                return self.start_copy(rec, &source).await;
            }
            Action::AwaitCopy { source, copy_id } => {
                return self.await_copy(rec, &source, &copy_id).await
            }
            Action::TakeBackupSnapshot { source } => self.take_backup_snapshot(rec, &source).await,
            Action::PruneSource { keep } => self.prune_source(rec, &keep).await,
        };
        r.map_err(|e| self.write_err(action_phase, e))
    }
}

/// Test failpoint: with `SNAPBACK_FAILPOINT_PAUSE_AFTER_STEPS=N` the process prints
/// `failpoint: paused after step N` to stderr after its N-th committed step and waits
/// forever, so a crash test can SIGKILL it at a known point of the cycle.
async fn failpoint_after_step() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static STEPS: AtomicUsize = AtomicUsize::new(0);
    let Some(n) = std::env::var("SNAPBACK_FAILPOINT_PAUSE_AFTER_STEPS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        return;
    };
    if STEPS.fetch_add(1, Ordering::SeqCst) + 1 == n {
        eprintln!("failpoint: paused after step {n}");
        std::future::pending::<()>().await;
    }
}
