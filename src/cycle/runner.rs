//! Executes a cycle's actions against a [`PageBlobs`] and persists the record after each.
//!
//! The runner owns no decisions: `machine` says what to do next, the runner does it,
//! reconciling with what storage holds first (tagged snapshots) so that repeating an action
//! after a crash never duplicates its effect.

use super::find_or_make::find_or_make;
use super::machine::{self, Action, CycleRecord, CycleStats, DiffBase, Outcome, PhaseName};
use super::metered::Metered;
use super::progress::Progress;
use crate::blobs::{BlobError, BlobRef, ErrorKind, PageBlobs, Resource};
use crate::config::{CopyMode, DiskSource};
use crate::copy::{self, CopyWait};
use crate::model::{tags, Clock, SnapshotId};
use crate::pages::{
    round_up_to_page, segments, Batch, ByteRange, Coalescer, ListingCheck, ReadPlanner,
    DIFF_SEGMENT_BYTES, MAX_PUT_BYTES, MAX_READ_BYTES, MAX_READ_GAP,
};
use crate::source::{CopySource, DiffQuery, PageBlobSource, Source};
use crate::state::{StateError, StateStore};
use futures::{stream, StreamExt};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How often the apply checkpoint is written at most. A crash re-applies at most this much
/// work; each write is one small SQLite transaction.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

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

/// Items asked per Get Page Ranges result page. Azure returns at most 10,000; 2,000 keeps a
/// listing page (its parsed items, ~24 bytes each) near 50 KB per disk, so 100 disks applying
/// at once hold ~5 MB of listings, at the cost of one small request per 2,000 ranges (0.1 %
/// of the puts they lead to, at most).
pub const DIFF_PAGE_RESULTS: u32 = 2_000;

/// Process-wide limits of the apply phase, shared by the runners of all disks: page requests
/// in flight (each batch holds one permit while its requests run), and bytes of page data held
/// in memory (a client-copy batch holds its read's size, in 64 KiB units, from before the read
/// until its last put). Requests bound the load on the accounts; the buffer budget bounds
/// memory whatever the write sizes, so many small requests can be in flight at once while at
/// most `budget / 4 MiB` full-size reads are.
#[derive(Debug)]
pub struct Limits {
    requests: Semaphore,
    buffer: Semaphore,
    buffer_units: u32,
}

/// Granularity of the buffer budget.
const BUFFER_UNIT: u64 = 64 * 1024;

impl Limits {
    pub fn new(max_requests: usize, buffer_bytes: u64) -> Self {
        let units = (buffer_bytes / BUFFER_UNIT).clamp(1, u32::MAX as u64) as u32;
        Limits {
            requests: Semaphore::new(max_requests.max(1)),
            buffer: Semaphore::new(units as usize),
            buffer_units: units,
        }
    }

    /// A request permit. `Limits` never closes its semaphores, so acquiring only waits.
    async fn request(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.requests.acquire().await.ok()
    }

    /// Permits for `bytes` of buffer (a request larger than the whole budget takes all of it).
    async fn buffer(&self, bytes: u64) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let units = bytes
            .div_ceil(BUFFER_UNIT)
            .clamp(1, self.buffer_units as u64) as u32;
        self.buffer.acquire_many(units).await.ok()
    }
}

/// How the apply phase lists and groups the diff (tunable for tests and the benchmark).
#[derive(Clone, Copy, Debug)]
pub struct ApplyTuning {
    /// Size of one `x-ms-range` listing segment.
    pub segment: u64,
    /// `maxresults` per listing page.
    pub page_results: u32,
    /// Largest coalesced read.
    pub max_read: u64,
    /// Largest unchanged gap a read spans.
    pub max_gap: u64,
}

impl Default for ApplyTuning {
    fn default() -> Self {
        ApplyTuning {
            segment: DIFF_SEGMENT_BYTES,
            page_results: DIFF_PAGE_RESULTS,
            max_read: MAX_READ_BYTES,
            max_gap: MAX_READ_GAP,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error("disk {disk}: {source}")]
    Blob {
        disk: String,
        #[source]
        source: BlobError,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Machine(#[from] machine::InvalidTransition),
    /// Stopped on request (shutdown, end of the backup window) at a checkpoint.
    #[error("disk {disk}: stopped at a checkpoint (phase {phase}); the next run resumes it")]
    Interrupted { disk: String, phase: PhaseName },
    /// Another snapback process holds the disk's lock.
    #[error("disk {disk} is being backed up by another snapback process (lock {path} is held)")]
    Busy {
        disk: String,
        path: std::path::PathBuf,
    },
    /// The seed copy failed every time it was started in this run; the next run (after the
    /// daemon's backoff) starts it again.
    #[error(
        "disk {disk}: the copy of the source snapshot to {backup} failed {starts} times in a \
         row (last: {reason}); giving up until the next run"
    )]
    CopyKeepsFailing {
        disk: String,
        backup: BlobRef,
        starts: u32,
        reason: String,
    },
    /// A premium page-blob account refused a snapshot of the source: one per blob per 10
    /// minutes, or 100 per blob.
    #[error("disk {disk}: {of}: {limit}")]
    SnapshotLimit {
        disk: String,
        of: Box<crate::config::DiskSource>,
        limit: SnapshotLimit,
    },
    /// The source account refused a read of the source snapshot (400 `InvalidOperation` on
    /// Get Blob or Get Page Ranges): older premium page-blob accounts do not allow reading
    /// snapshots; only the backup service can copy from them.
    #[error(
        "disk {disk}: {source}: the premium account refuses reads of snapshots (400 \
         InvalidOperation); use copy_mode = \"server\" so the backup service copies from the \
         snapshot, or a source account that allows snapshot reads"
    )]
    SnapshotReadRefused {
        disk: String,
        #[source]
        source: BlobError,
    },
    /// The backup blob exists and snapback did not create it.
    #[error(
        "disk {disk}: backup blob {backup} exists and was not created by snapback for this \
         disk (no snapback_backup_of tag); refusing to overwrite it. Set \
         adopt_existing_backup = true on the disk to use it anyway"
    )]
    ForeignBackup { disk: String, backup: BlobRef },
    /// Another process (on this host or another) holds the disk's lease, or the lease could
    /// not be taken or was lost mid-cycle.
    #[error(transparent)]
    Ownership(Box<crate::ownership::OwnershipError>),
    /// The disk's lease was lost mid-cycle: the cycle stopped before its restore point.
    #[error("disk {disk}: lease on {blob} lost in phase {phase}; the cycle stopped (the next owner resumes it)")]
    LeaseLost {
        disk: String,
        blob: crate::model::BlobRef,
        phase: PhaseName,
    },
    /// The disk's lock file cannot be used.
    #[error("disk {disk}: lock file {path}: {source}")]
    Lock {
        disk: String,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Snapshot limits of premium page-blob accounts
/// (<https://learn.microsoft.com/rest/api/storageservices/using-blob-service-operations-with-azure-premium-storage>).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotLimit {
    /// 409 `SnaphotOperationRateExceeded` (Azure's spelling): one snapshot per blob per 10
    /// minutes.
    Rate,
    /// 409 `SnapshotCountExceeded`: 100 snapshots per blob.
    Count,
}

/// How long a premium account refuses a second snapshot of a blob.
pub const PREMIUM_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(600);

impl SnapshotLimit {
    /// The limit a refused Snapshot Blob hit, from its error code.
    pub fn of(e: &BlobError) -> Option<SnapshotLimit> {
        match (e.kind, e.code.as_deref()) {
            (ErrorKind::Conflict, Some("SnaphotOperationRateExceeded")) => {
                Some(SnapshotLimit::Rate)
            }
            (ErrorKind::Conflict, Some("SnapshotCountExceeded")) => Some(SnapshotLimit::Count),
            _ => None,
        }
    }
}

impl std::fmt::Display for SnapshotLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotLimit::Rate => f.write_str(
                "the premium account allows one snapshot per blob every 10 minutes \
                 (409 SnaphotOperationRateExceeded); the next attempt waits at least 10 minutes \
                 (a schedule more frequent than that cannot be kept on a premium account)",
            ),
            SnapshotLimit::Count => f.write_str(
                "the premium account allows 100 snapshots per blob (409 SnapshotCountExceeded); \
                 snapback keeps one of its own on the source, so delete snapshots others made",
            ),
        }
    }
}

impl From<crate::ownership::OwnershipError> for CycleError {
    fn from(e: crate::ownership::OwnershipError) -> Self {
        CycleError::Ownership(Box::new(e))
    }
}

impl CycleError {
    /// When the next attempt may succeed at the earliest, if the error says so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CycleError::SnapshotLimit {
                limit: SnapshotLimit::Rate,
                ..
            } => Some(PREMIUM_SNAPSHOT_INTERVAL),
            _ => None,
        }
    }

    /// The disk is in another process's hands (its lease is held): a skip, not a failure.
    pub fn is_owned_elsewhere(&self) -> bool {
        matches!(self, CycleError::Ownership(e) if matches!(**e, crate::ownership::OwnershipError::Held { .. }))
    }
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
    /// Where the phase and apply offset are published for watchers (the daemon).
    pub progress: Option<Arc<Progress>>,
    /// Process-wide limits shared by every disk's runner (`max_inflight_requests`,
    /// `max_buffer_mib`); `None`: only the disk's own `concurrency` applies.
    pub limits: Option<Arc<Limits>>,
    pub tuning: ApplyTuning,
    /// Seed copies that ended failed in this run: at [`MAX_COPY_STARTS`] the run gives up.
    copy_failures: AtomicU32,
    /// The operator allows writing to an existing backup blob snapback did not create
    /// (`adopt_existing_backup = true`).
    pub adopt_backup: bool,
    /// The disk's source when it is not the page blob `disk.source` (a managed disk).
    pub other_source: Option<&'a dyn Source>,
    /// The disk's chain id (from its lock blob, see `ownership`): tagged on every snapshot
    /// and backup base this runner makes; prune sweeps only this chain's source snapshots.
    pub chain: Option<String>,
}

/// The source a runner reads: the page blob of its [`DiskSpec`], or the one it was given.
enum SourceRef<'a> {
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

/// Seed copies started per run before it gives up on a copy the service keeps failing (a
/// source it cannot read, an account limit): the error goes to `status` and the daemon's
/// backoff decides when to try again, instead of restarting the copy forever.
pub const MAX_COPY_STARTS: u32 = 3;

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
            progress: None,
            limits: None,
            tuning: ApplyTuning::default(),
            copy_failures: AtomicU32::new(0),
            adopt_backup: false,
            other_source: None,
            chain: None,
        }
    }

    fn blob_err(&self, source: BlobError) -> CycleError {
        let of_source_snapshot = matches!(&*source.resource,
            Resource::Snapshot(b, _) if Some(b) == self.disk.source.blob());
        if of_source_snapshot
            && source.kind == ErrorKind::BadRequest
            && source.code.as_deref() == Some("InvalidOperation")
        {
            return CycleError::SnapshotReadRefused {
                disk: self.disk.name.clone(),
                source,
            };
        }
        CycleError::Blob {
            disk: self.disk.name.clone(),
            source,
        }
    }

    /// The disk's source: a page blob seen through the meter, or the source given.
    fn source(&self) -> SourceRef<'_> {
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

    fn now(&self) -> i64 {
        self.clock.now().timestamp()
    }

    /// The disk's unfinished cycle, or a new one (invariant 1: never two at once). A cycle is
    /// bound to the source and backup it started with: when the config names others, it is
    /// abandoned first (see [`Runner::rebind`]).
    pub async fn open_or_resume(&self) -> Result<CycleRecord, CycleError> {
        let d = self.disk;
        self.rebind().await?;
        let state =
            self.store
                .register_disk(&d.name, &d.source.to_string(), &d.backup.to_string())?;
        if let Some(rec) = self.store.open_cycle(&d.name)? {
            return Ok(rec);
        }
        let local = state.base_snapshot.map(|s| DiffBase {
            snapshot: SnapshotId::new(s),
            backup_etag: state.backup_etag,
        });
        let base = self.chain_from_azure(local).await?;
        let rec = CycleRecord::new(&d.name, random_tag(), base, self.now());
        Ok(self.store.insert_cycle(rec)?)
    }

    /// The disk was re-pointed (config `source` or `backup` differs from what the state
    /// recorded): the open cycle, if any, is abandoned without a restore point, and the old
    /// source's snapback snapshots (`S(n)`, `S(n-1)`) are deleted, since they belong to a chain
    /// that ends here; `register_disk` then forgets the diff base, so the next cycle seeds.
    /// Runs before the state is updated, so a failed sweep is tried again by the next run.
    async fn rebind(&self) -> Result<(), CycleError> {
        let d = self.disk;
        let Some(prev) = self.store.disk(&d.name)? else {
            return Ok(());
        };
        let (source, backup) = (d.source.to_string(), d.backup.to_string());
        if prev.source == source && prev.backup == backup {
            return Ok(());
        }
        tracing::warn!(disk = %d.name, old_source = %prev.source, old_backup = %prev.backup, %source, %backup, "disk re-pointed: its open cycle is abandoned and a new chain starts");
        match prev.source.parse::<BlobRef>() {
            Ok(old) => {
                // Only this chain's snapshots: another installation may back up the old
                // source under the same disk name.
                let old_source =
                    PageBlobSource::new(&self.blobs, &old).in_chain(self.chain.as_deref());
                let sweep = async {
                    for s in old_source.own_snapshots(&d.name).await? {
                        old_source.delete_snapshot(&s).await?;
                    }
                    Ok::<_, BlobError>(())
                };
                match sweep.await {
                    Ok(()) => {}
                    // The old source is gone, or its account is no longer configured: there
                    // is nothing snapback can delete.
                    Err(e) if e.is_not_found() || e.kind == ErrorKind::Unusable => {
                        tracing::warn!(disk = %d.name, error = %e, "cannot sweep the old source's snapshots")
                    }
                    Err(e) => return Err(self.blob_err(e)),
                }
            }
            Err(e) => {
                tracing::warn!(disk = %d.name, old_source = %prev.source, error = %e, "old source not recognised; its snapshots are not swept")
            }
        }
        if let Some(open) = self.store.open_cycle(&d.name)? {
            self.store.abandon_cycle(open.id)?;
        }
        Ok(())
    }

    /// The diff base of a new cycle, from Azure's tags rather than the state alone: the
    /// newest restore point records `S(n-1)` and the backup ETag it was taken on. The state
    /// directory may be lost (no base: without this, a full re-seed) or rolled back (an older
    /// base: a diff onto the wrong base), so when the two disagree Azure wins. The ETag is
    /// checked against the backup before the first write as usual (invariant 7).
    async fn chain_from_azure(
        &self,
        local: Option<DiffBase>,
    ) -> Result<Option<DiffBase>, CycleError> {
        let d = self.disk;
        let snapshots = match self.blobs.list_snapshots(&d.backup).await {
            Ok(s) => s,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(self.blob_err(e)),
        };
        let newest = snapshots
            .into_iter()
            .rfind(|s| tags::is_restore_point(&s.metadata, &d.name));
        let Some(newest) = newest else {
            // No restore point in Azure: nothing to diff onto, whatever the state says.
            return Ok(None);
        };
        let Some(source) = tags::source_of(&newest.metadata) else {
            return Ok(None);
        };
        if local.as_ref().is_some_and(|l| l.snapshot == source) {
            return Ok(local);
        }
        let Some(etag) = tags::base_etag(&newest.metadata) else {
            // A restore point that does not record its base: the base is unknown; seed.
            tracing::warn!(disk = %d.name, restore_point = %newest.snapshot, "the state does not match the newest restore point, which records no base ETag; seeding");
            return Ok(None);
        };
        tracing::warn!(disk = %d.name, state = ?local.as_ref().map(|l| l.snapshot.as_str()), azure = %source, "the state's diff base is not the newest restore point's source snapshot; using Azure's");
        Ok(Some(DiffBase {
            snapshot: source,
            backup_etag: Some(etag.to_string()),
        }))
    }

    /// Before the first write of a seed: the backup blob must be absent (snapback creates
    /// it) or carry snapback's tag for this disk, unless the operator adopts it. snapback
    /// never overwrites a blob it did not create by mistake (a typo in `backup`).
    async fn check_backup_is_ours(&self) -> Result<(), CycleError> {
        let backup = &self.disk.backup;
        let props = self
            .blobs
            .properties(backup, None)
            .await
            .map_err(|e| self.blob_err(e))?;
        let Some(props) = props else { return Ok(()) };
        if tags::backup_of(&props.metadata) == Some(self.disk.name.as_str()) {
            return Ok(());
        }
        if self.adopt_backup {
            tracing::warn!(disk = %self.disk.name, %backup, "adopting an existing backup blob snapback did not create (adopt_existing_backup = true)");
            return Ok(());
        }
        Err(CycleError::ForeignBackup {
            disk: self.disk.name.clone(),
            backup: backup.clone(),
        })
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
        // its own, after saving its checkpoint.
        let outcome = if matches!(action, Action::ApplyDiff { .. }) {
            self.execute(action, rec).await?
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
        failpoint_after_step().await;
        Ok(!rec.is_done())
    }

    fn commit(&self, rec: &mut CycleRecord, outcome: Outcome) -> Result<(), CycleError> {
        if let Outcome::Repair { reason } = &outcome {
            tracing::warn!(disk = %rec.disk, reason = %reason, "cannot apply a diff onto this backup; re-seeding (earlier restore points are kept)");
        }
        machine::advance(rec, outcome, self.now())?;
        let (requests, ranges) = self.blobs.take_counts();
        let (source_requests, source_ranges) = self.source().take_counts();
        rec.stats.requests += requests + source_requests;
        rec.stats.ranges += ranges + source_ranges;
        self.store.save_cycle(rec, self.now())?;
        Ok(())
    }

    /// Persists apply progress: everything below `upto` is in the backup.
    fn checkpoint(
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
            } => self.check_diff_base(&base, expected_backup_etag).await,
            Action::ApplyDiff {
                source,
                base,
                size,
                from,
            } => return self.apply(rec, &source, base.as_ref(), size, from).await,
            Action::StartCopy { source } => {
                if !rec.backup_touched {
                    self.check_backup_is_ours().await?;
                }
                self.start_copy(rec, &source).await
            }
            Action::AwaitCopy { source, copy_id } => {
                return self.await_copy(rec, &source, &copy_id).await
            }
            Action::TakeBackupSnapshot { source } => self.take_backup_snapshot(rec, &source).await,
            Action::PruneSource { keep } => self.prune_source(rec, &keep).await,
        };
        r.map_err(|e| self.blob_err(e))
    }

    async fn take_source_snapshot(&self, rec: &CycleRecord) -> Result<Outcome, BlobError> {
        let source = self.source();
        // Invariant 9: this is the first request of a cycle; a missing source or a bad key
        // fails here, before anything is written anywhere.
        let s = find_or_make(
            || source.find_snapshot(&rec.disk, &rec.tag),
            || source.take_snapshot(&rec.disk, &rec.tag),
        )
        .await?;
        Ok(Outcome::SourceSnapshot {
            snapshot: s.id,
            size: s.size,
        })
    }

    async fn check_diff_base(
        &self,
        base: &SnapshotId,
        expected_backup_etag: Option<String>,
    ) -> Result<Outcome, BlobError> {
        let backup = &self.disk.backup;
        let Some(props) = self.blobs.properties(backup, None).await? else {
            return Ok(Outcome::Repair {
                reason: format!("backup blob {backup} does not exist"),
            });
        };
        if let Some(expected) = expected_backup_etag {
            if props.etag != expected {
                return Ok(Outcome::Repair {
                    reason: format!(
                        "backup blob {backup} was modified since the last restore point \
                         (ETag {} instead of {expected})",
                        props.etag
                    ),
                });
            }
        }
        if self.source().snapshot_size(base).await?.is_none() {
            return Ok(Outcome::Repair {
                reason: format!(
                    "diff base snapshot {base} was deleted or is not a snapshot of {}",
                    self.disk.source
                ),
            });
        }
        Ok(Outcome::DiffBaseOk)
    }

    /// Applies the diff `base..snapshot` (every page of `snapshot` without a base) from `from`
    /// on, persisting progress as it goes.
    async fn apply(
        &self,
        rec: &mut CycleRecord,
        snapshot: &SnapshotId,
        base: Option<&SnapshotId>,
        size: u64,
        from: u64,
    ) -> Result<Outcome, CycleError> {
        let backup = &self.disk.backup;
        let source = self.source();
        // No diff base: a seed by client copy. Every page of S(n) is listed and copied onto a
        // backup base made blank first (only before the first checkpoint: later, resume).
        if base.is_none() && from == 0 {
            // Checked once per cycle, and recorded before the blob is made: a failure between
            // making it and tagging it must not make the next attempt refuse our own blob.
            if !rec.backup_touched {
                self.check_backup_is_ours().await?;
                rec.backup_touched = true;
                self.store.save_cycle(rec, self.now())?;
            }
            self.blobs
                .create_page_blob(backup, round_up_to_page(size))
                .await
                .map_err(|e| self.blob_err(e))?;
            rec.backup_touched = true;
            // The tag that tells a later seed (a repair) this blob is ours.
            self.blobs
                .set_metadata(backup, &tags::backup_base(&rec.disk))
                .await
                .map_err(|e| self.blob_err(e))?;
        }
        // A source that grew (or shrank) is matched first, so every put lands inside the blob.
        let props = self
            .blobs
            .properties(backup, None)
            .await
            .map_err(|e| self.blob_err(e))?;
        let stats = CycleStats::default();
        match props {
            Some(p) if p.size == size => {}
            Some(_) => {
                self.blobs
                    .resize(backup, round_up_to_page(size))
                    .await
                    .map_err(|e| self.blob_err(e))?;
                rec.backup_touched = true;
            }
            None => {
                return Ok(Outcome::Repair {
                    reason: format!("backup blob {backup} disappeared"),
                })
            }
        }

        // Server copy reads S(n) through access granted for this apply (revoked at its end).
        let server_wanted = self.disk.copy_mode != CopyMode::Client;
        let grant = if server_wanted {
            match source.grant_read(snapshot).await {
                Ok(g) => Some(g),
                Err(e) if self.disk.copy_mode == CopyMode::Auto && e.refuses_server_copy() => {
                    tracing::warn!(disk = %self.disk.name, error = %e, "server-side copy unavailable; copying through snapback");
                    None
                }
                Err(e) => return Err(self.blob_err(e)),
            }
        } else {
            None
        };
        let result = self
            .apply_window(
                rec,
                &*source,
                snapshot,
                base,
                size,
                from,
                grant.as_ref(),
                stats,
            )
            .await;
        if grant.is_some() {
            if let Err(e) = source.revoke_read(snapshot).await {
                tracing::warn!(disk = %self.disk.name, error = %e, "could not revoke the backup service's read access");
            }
        }
        result
    }

    /// The pipelined part of [`Runner::apply`]: list, plan and run batches over
    /// `from..size`, checkpointing the contiguous prefix of finished ones.
    #[allow(clippy::too_many_arguments)]
    async fn apply_window(
        &self,
        rec: &mut CycleRecord,
        source: &dyn Source,
        snapshot: &SnapshotId,
        base: Option<&SnapshotId>,
        size: u64,
        from: u64,
        grant: Option<&CopySource>,
        mut stats: CycleStats,
    ) -> Result<Outcome, CycleError> {
        let window = ByteRange::new(from, size);
        let batches = diff_batches(source, snapshot, base, window, self.tuning);
        let mut batches = std::pin::pin!(batches);
        let concurrency = self.disk.concurrency.max(1);
        // Batches run and finish in any order (a slow request does not hold back the ones
        // behind it); the checkpoint only moves over the contiguous prefix of finished ones.
        // At most `max_ahead` batches may be admitted past the oldest unfinished one, which
        // bounds `finished` (and the work a crash can repeat).
        let max_ahead = (concurrency * 64) as u64;
        let server = AtomicBool::new(grant.is_some());
        let server = &server;
        let mut running = futures::stream::FuturesUnordered::new();
        let (mut admitted, mut head) = (0u64, 0u64);
        let mut finished = std::collections::BTreeMap::<u64, u64>::new();
        let mut listed_all = false;

        let mut last_save = Instant::now();
        let mut upto = from;
        if let Some(p) = &self.progress {
            p.start("apply", upto, size);
        }
        enum Event<B, D> {
            Stop,
            Batch(Option<Result<B, BlobError>>),
            Done(D),
        }
        loop {
            if listed_all && running.is_empty() {
                break;
            }
            let can_admit =
                !listed_all && running.len() < concurrency && admitted - head < max_ahead;
            let event = tokio::select! {
                biased;
                _ = self.stop.cancelled() => Event::Stop,
                d = running.next(), if !running.is_empty() => Event::Done(d),
                b = batches.next(), if can_admit => Event::Batch(b),
            };
            let failure = match event {
                // Stopped: keep what is checkpointed; in-flight requests are idempotent.
                Event::Stop => {
                    self.checkpoint(rec, upto, stats)?;
                    return Err(CycleError::Interrupted {
                        disk: rec.disk.clone(),
                        phase: PhaseName::Apply,
                    });
                }
                Event::Batch(None) => {
                    listed_all = true;
                    None
                }
                Event::Batch(Some(Ok(batch))) => {
                    let seq = admitted;
                    admitted += 1;
                    running.push(async move {
                        let mut s = CycleStats::default();
                        let end = batch.end();
                        self.run_batch(source, batch, snapshot, grant, server, &mut s)
                            .await?;
                        Ok::<_, BlobError>((seq, end, s))
                    });
                    None
                }
                Event::Batch(Some(Err(e))) | Event::Done(Some(Err(e))) => Some(e),
                Event::Done(Some(Ok((seq, end, s)))) => {
                    stats.add(&s);
                    finished.insert(seq, end);
                    while let Some(end) = finished.remove(&head) {
                        upto = end;
                        head += 1;
                    }
                    if let Some(p) = &self.progress {
                        p.set_done(upto);
                    }
                    None
                }
                Event::Done(None) => None,
            };
            if let Some(e) = failure {
                self.checkpoint(rec, upto, stats)?;
                // Only a NotFound about the snapshots themselves changes course; a 404 about
                // the backup blob (e.g. during Put Page From URL) fails the apply.
                if e.is_not_found() {
                    if let Some(base) = base.filter(|b| e.concerns(&source.snapshot_resource(b))) {
                        return Ok(Outcome::Repair {
                            reason: format!("diff base snapshot {base} was deleted during apply"),
                        });
                    }
                    if e.concerns(&source.snapshot_resource(snapshot)) {
                        return Ok(Outcome::SourceSnapshotGone);
                    }
                }
                return Err(self.blob_err(e));
            }
            if last_save.elapsed() >= CHECKPOINT_INTERVAL {
                self.checkpoint(rec, upto, std::mem::take(&mut stats))?;
                last_save = Instant::now();
            }
        }
        rec.written_etag = Some(self.backup_etag().await?);
        Ok(Outcome::Applied {
            upto: size,
            done: true,
            stats,
        })
    }

    /// One batch: a clear, or the puts of one coalesced read. Holds one process-wide request
    /// permit (`max_inflight_requests`) while its requests run and, for a client copy, its
    /// read's size of the buffer budget (`max_buffer_mib`), so memory stays bounded whatever
    /// the number of disks.
    async fn run_batch(
        &self,
        source: &dyn Source,
        batch: Batch,
        snapshot: &SnapshotId,
        grant: Option<&CopySource>,
        server: &AtomicBool,
        stats: &mut CycleStats,
    ) -> Result<(), BlobError> {
        // Requests first, then buffer (in copy_client_side): every task takes them in this
        // order and a buffer holder never waits for a request permit, so no deadlock.
        let _permit = match &self.limits {
            Some(l) => l.request().await,
            None => None,
        };
        let backup = &self.disk.backup;
        let (read, puts) = match batch {
            Batch::Clear(r) => {
                self.blobs.clear_pages(backup, r).await?;
                stats.bytes_cleared += r.len();
                return Ok(());
            }
            Batch::Copy { read, puts } => (read, puts),
        };
        if let Some(grant) = grant.filter(|_| server.load(Ordering::Relaxed)) {
            match self.copy_server_side(&puts, grant, stats).await {
                Ok(()) => return Ok(()),
                Err(e) if self.disk.copy_mode == CopyMode::Auto && e.refuses_server_copy() => {
                    if server.swap(false, Ordering::Relaxed) {
                        tracing::warn!(disk = %self.disk.name, error = %e, "server-side copy refused; copying through snapback for the rest of this apply");
                    }
                }
                Err(e) => return Err(e),
            }
        }
        self.copy_client_side(source, read, &puts, snapshot, stats)
            .await
    }

    /// Put Page From URL for each put: the service reads `S(n)` itself.
    async fn copy_server_side(
        &self,
        puts: &[ByteRange],
        grant: &CopySource,
        stats: &mut CycleStats,
    ) -> Result<(), BlobError> {
        let (blob, snapshot) = match grant {
            CopySource::Blob { blob, snapshot } => (blob, snapshot),
            CopySource::Url { url, resource } => {
                for p in puts {
                    self.blobs
                        .put_pages_from_sas(&self.disk.backup, *p, url.expose(), resource, p.start)
                        .await?;
                    stats.bytes_written += p.len();
                }
                return Ok(());
            }
        };
        for p in puts {
            self.blobs
                .put_pages_from_url(
                    &self.disk.backup,
                    *p,
                    blob,
                    Some(snapshot.as_str()),
                    p.start,
                )
                .await?;
            stats.bytes_written += p.len();
        }
        Ok(())
    }

    /// One ranged read of `S(n)` feeding the puts inside it. A put whose bytes are all zero
    /// is a Clear Page instead: same content, no stored pages, no body sent.
    async fn copy_client_side(
        &self,
        source: &dyn Source,
        read: ByteRange,
        puts: &[ByteRange],
        snapshot: &SnapshotId,
        stats: &mut CycleStats,
    ) -> Result<(), BlobError> {
        let backup = &self.disk.backup;
        let _buffer = match &self.limits {
            Some(l) => l.buffer(read.len()).await,
            None => None,
        };
        let data = source.read(snapshot, read).await?;
        for p in puts {
            let piece = data.slice((p.start - read.start) as usize..(p.end - read.start) as usize);
            if piece.iter().all(|b| *b == 0) {
                self.blobs.clear_pages(backup, *p).await?;
                stats.bytes_cleared += p.len();
            } else {
                self.blobs.put_pages(backup, p.start, piece).await?;
                stats.bytes_written += p.len();
            }
        }
        Ok(())
    }

    async fn start_copy(
        &self,
        rec: &CycleRecord,
        snapshot: &SnapshotId,
    ) -> Result<Outcome, BlobError> {
        let backup = &self.disk.backup;
        let source = self.source();
        self.blobs.ensure_container(backup).await?;
        // A copy left pending by a crash before its id was recorded would make ours fail.
        let before = self
            .blobs
            .properties(backup, None)
            .await?
            .and_then(|p| p.copy);
        if let Some((id, crate::blobs::CopyStatus::Pending { .. })) = &before {
            self.blobs.abort_copy(backup, id).await?;
        }
        let before = before.map(|(id, _)| id);
        let unavailable = |e: BlobError| {
            tracing::info!(disk = %rec.disk, error = %e, "seeding by copying every page through snapback");
            Ok(Outcome::CopyUnavailable {
                reason: e.to_string(),
            })
        };
        let (blob, s) = match source.grant_read(snapshot).await {
            Ok(CopySource::Blob { blob, snapshot }) => (blob, snapshot),
            // A managed disk is seeded by copying its pages through snapback (its SAS is
            // not handed to a Copy Blob that could outlive the cycle).
            Ok(CopySource::Url { resource, .. }) => {
                return unavailable(BlobError::local(
                    ErrorKind::NoReadAccess,
                    Resource::Managed(resource),
                    "a managed disk is seeded by client copy",
                ))
            }
            Err(e) if e.kind == ErrorKind::NoReadAccess => return unavailable(e),
            Err(e) => return Err(e),
        };
        // Explicit metadata: without it Copy Blob copies the source snapshot's snapback tags
        // onto the backup base, and Snapshot Blob without metadata (someone else's snapshot
        // of the backup) would inherit them and pass for one of our restore points.
        let meta = tags::in_chain(tags::backup_base(&rec.disk), self.chain.as_deref());
        // A copy id on the backup other than the one it had before is the copy a lost answer
        // started: found, not started a second time (Azure refuses a second one onto a blob
        // with a pending copy, `409 PendingCopyOperation`).
        let started = find_or_make(
            || async {
                let now = self.blobs.properties(backup, None).await?;
                Ok(now
                    .and_then(|p| p.copy)
                    .map(|(id, _)| id)
                    .filter(|id| Some(id) != before.as_ref()))
            },
            || {
                self.blobs
                    .start_copy(backup, &blob, Some(s.as_str()), &meta)
            },
        )
        .await;
        if started.is_err() {
            // No copy reads S(n): end the access granted for it.
            if let Err(e) = source.revoke_read(snapshot).await {
                tracing::warn!(disk = %rec.disk, error = %e, "could not revoke the backup service's read access");
            }
        }
        match started {
            Ok(copy_id) => Ok(Outcome::CopyStarted { copy_id }),
            // 404 CannotVerifyCopySource also comes from a service that cannot reach a source
            // that is there (a firewall, a private endpoint): only a snapshot that is really
            // gone is taken again, else every retry would take a new one, forever.
            Err(e) if e.is_not_found() && e.concerns(&source.snapshot_resource(snapshot)) => {
                match source.snapshot_size(snapshot).await? {
                    None => Ok(Outcome::SourceSnapshotGone),
                    Some(_) => self.seed_without_server_copy(e, unavailable),
                }
            }
            Err(e) if e.refuses_server_copy() => self.seed_without_server_copy(e, unavailable),
            Err(e) => Err(e),
        }
    }

    /// The backup service cannot read `S(n)`: seed through snapback's own copy path, unless
    /// the disk asks for server copy only (`copy_mode = "server"`), where the error names
    /// the cause.
    fn seed_without_server_copy(
        &self,
        e: BlobError,
        unavailable: impl FnOnce(BlobError) -> Result<Outcome, BlobError>,
    ) -> Result<Outcome, BlobError> {
        if self.disk.copy_mode == CopyMode::Server {
            return Err(BlobError {
                detail: format!(
                    "{}; the backup service cannot read the source snapshot and copy_mode = \
                     \"server\" forbids copying it through snapback",
                    e.detail
                ),
                ..e
            });
        }
        unavailable(e)
    }

    async fn await_copy(
        &self,
        rec: &mut CycleRecord,
        snapshot: &SnapshotId,
        copy_id: &str,
    ) -> Result<Outcome, CycleError> {
        let backup = &self.disk.backup;
        let progress = |copied, total| {
            tracing::info!(disk = %rec.disk, copied, total, "seed copy in progress");
            if let Some(p) = &self.progress {
                p.report("seed copy", copied, total);
            }
        };
        let end = copy::wait(
            &self.blobs,
            backup,
            copy_id,
            self.copy_poll,
            &self.stop,
            progress,
        )
        .await
        .map_err(|e| self.blob_err(e))?;
        let end = match end {
            CopyWait::Stopped => {
                return Err(CycleError::Interrupted {
                    disk: rec.disk.clone(),
                    phase: PhaseName::Copy,
                })
            }
            CopyWait::Ended(end) => end,
        };
        // The copy no longer reads S(n): end the access `start_copy` granted (a retry grants
        // it again).
        if let Err(e) = self.source().revoke_read(snapshot).await {
            tracing::warn!(disk = %rec.disk, error = %e, "could not revoke the backup service's read access");
        }
        let reason = match end {
            copy::CopyEnd::Success => {
                if let Some(p) = &self.progress {
                    p.complete();
                }
                rec.written_etag = Some(self.backup_etag().await?);
                return Ok(Outcome::CopyDone);
            }
            copy::CopyEnd::Gone => format!("copy {copy_id} to {backup} is no longer there"),
            copy::CopyEnd::Failed(r) | copy::CopyEnd::Aborted(r) => r,
        };
        let starts = self.copy_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if starts >= MAX_COPY_STARTS {
            return Err(CycleError::CopyKeepsFailing {
                disk: rec.disk.clone(),
                backup: backup.clone(),
                starts,
                reason,
            });
        }
        tracing::warn!(disk = %rec.disk, %reason, "copy to the backup failed; starting it again");
        Ok(Outcome::CopyFailed { reason })
    }

    /// The backup base's ETag now.
    async fn backup_etag(&self) -> Result<String, CycleError> {
        let backup = &self.disk.backup;
        match self.blobs.properties(backup, None).await {
            Ok(Some(p)) => Ok(p.etag),
            Ok(None) => Err(self.blob_err(BlobError::local(
                ErrorKind::NotFound,
                Resource::blob(backup),
                "the backup blob vanished right after it was written",
            ))),
            Err(e) => Err(self.blob_err(e)),
        }
    }

    async fn take_backup_snapshot(
        &self,
        rec: &CycleRecord,
        source: &SnapshotId,
    ) -> Result<Outcome, BlobError> {
        let backup = &self.disk.backup;
        let found =
            |s: &crate::blobs::SnapshotInfo| tags::cycle(&s.metadata) == Some(rec.tag.as_str());
        // The base this cycle's writes left (a record from before this field: the base now).
        let written = match &rec.written_etag {
            Some(e) => e.clone(),
            None => match self.blobs.properties(backup, None).await? {
                Some(p) => p.etag,
                None => String::new(),
            },
        };
        let meta = tags::in_chain(
            tags::restore_point_on(&rec.disk, &rec.tag, source, &written),
            self.chain.as_deref(),
        );
        let made = find_or_make(
            || async {
                Ok(self
                    .blobs
                    .list_snapshots(backup)
                    .await?
                    .into_iter()
                    .find(found)
                    .map(|s| s.snapshot))
            },
            || self.blobs.create_snapshot_if_match(backup, &meta, &written),
        )
        .await;
        let snapshot = match made {
            Ok(s) => s,
            Err(e) if e.kind == ErrorKind::PreconditionFailed => {
                return Ok(Outcome::Repair {
                    reason: format!(
                        "backup blob {backup} was written by someone else after this cycle's \
                         last write (ETag no longer {written}); no restore point is taken of it"
                    ),
                })
            }
            Err(e) => return Err(e),
        };
        let Some(props) = self.blobs.properties(backup, None).await? else {
            return Err(BlobError::local(
                ErrorKind::NotFound,
                Resource::blob(backup),
                "the backup blob vanished right after its snapshot was taken",
            ));
        };
        Ok(Outcome::BackupSnapshot {
            snapshot: SnapshotId::new(snapshot),
            etag: props.etag,
        })
    }

    async fn prune_source(
        &self,
        rec: &CycleRecord,
        keep: &SnapshotId,
    ) -> Result<Outcome, BlobError> {
        let source = self.source();
        for s in source.own_snapshots(&rec.disk).await? {
            if &s != keep {
                source.delete_snapshot(&s).await?;
            }
        }
        // A Snapshot Blob still in flight when a previous run of this cycle was killed can
        // land after the resumed run looked for it and made its own: two snapshots carry this
        // cycle's tag. Both were taken of the same, unwritten base; only the recorded `B(n)`
        // stays a restore point (invariant 2: exactly one per cycle).
        if let Some((recorded, _)) = rec.phase.restore_point() {
            let backup = &self.disk.backup;
            for s in self.blobs.list_snapshots(backup).await? {
                let ours = tags::cycle(&s.metadata) == Some(rec.tag.as_str())
                    && tags::disk(&s.metadata) == Some(rec.disk.as_str());
                if ours && s.snapshot != recorded.as_str() {
                    tracing::warn!(disk = %rec.disk, snapshot = %s.snapshot, "deleting a second snapshot of this cycle (a request of a killed run landed late)");
                    self.blobs.delete_snapshot(backup, &s.snapshot).await?;
                }
            }
        }
        // S(n) is not read again until the next cycle: no access stays granted.
        source.release(&rec.disk).await?;
        Ok(Outcome::Pruned)
    }
}

/// The diff `base..snapshot` (every page of `snapshot` when there is no base) within `window`, as a stream of [`Batch`]es in offset order.
/// The window is listed in `x-ms-range` segments (Microsoft's advice for heavily fragmented
/// blobs) and each segment page by page (`NextMarker`, `maxresults`); batches are made from
/// the current page's items one at a time, as the apply pulls them. So a diff of millions of
/// ranges is never held in memory: one result page (≤ `page_results` items) and a few batches
/// are. Items are clipped to the window: a resumed apply starts exactly at its checkpoint.
fn diff_batches<'b>(
    source: &'b dyn Source,
    snapshot: &'b SnapshotId,
    base: Option<&'b SnapshotId>,
    window: ByteRange,
    tuning: ApplyTuning,
) -> impl stream::Stream<Item = Result<Batch, BlobError>> + 'b {
    struct State {
        /// Consecutive `x-ms-range` segments of the window (128 for an 8 TiB disk).
        segments: Vec<ByteRange>,
        /// The next listing to fetch: segment index and marker; None once all are fetched.
        next: Option<(usize, Option<String>)>,
        /// Items of the current page, and the segment they are clipped to.
        items: std::vec::IntoIter<crate::pages::PageItem>,
        segment: ByteRange,
        coalescer: Coalescer,
        planner: ReadPlanner,
        ops: Vec<crate::pages::PageOp>,
        made: Vec<Batch>,
        ready: std::collections::VecDeque<Batch>,
        finished: bool,
        check: ListingCheck,
    }
    let segments: Vec<ByteRange> = segments(window, tuning.segment).collect();
    let init = State {
        next: (!segments.is_empty()).then_some((0, None)),
        segments,
        items: Vec::new().into_iter(),
        segment: window,
        coalescer: Coalescer::new(MAX_PUT_BYTES),
        planner: ReadPlanner::new(tuning.max_read, tuning.max_gap),
        ops: Vec::new(),
        made: Vec::new(),
        ready: Default::default(),
        finished: false,
        check: ListingCheck::new(window.start, window.end),
    };
    stream::try_unfold(init, move |mut st| async move {
        loop {
            if let Some(b) = st.ready.pop_front() {
                return Ok(Some((b, st)));
            }
            if st.finished {
                return Ok(None);
            }
            if let Some(item) = st.items.next() {
                if let Some(clipped) = clip(item, &st.segment) {
                    st.coalescer.push(clipped, &mut st.ops);
                }
            } else if let Some((index, marker)) = st.next.take() {
                let segment = st.segments[index];
                let query = DiffQuery {
                    snapshot,
                    base,
                    range: segment,
                    marker: marker.as_deref(),
                    max_results: tuning.page_results,
                };
                let page = source.diff(query).await?;
                // The whole result page is checked before any of its items is planned, so
                // nothing from a listing that breaks the rules is applied.
                st.check.page(&page.items, segment).map_err(|v| {
                    BlobError::local(
                        ErrorKind::BadResponse,
                        source.snapshot_resource(snapshot),
                        format!("diff listing of {segment:?} refused: {v}"),
                    )
                })?;
                st.next = match page.next_marker {
                    Some(m) => Some((index, Some(m))),
                    None if index + 1 < st.segments.len() => Some((index + 1, None)),
                    None => None,
                };
                st.items = page.items.into_iter();
                st.segment = segment;
                continue;
            } else {
                st.coalescer.finish(&mut st.ops);
                st.finished = true;
            }
            for op in st.ops.drain(..) {
                st.planner.push(op, &mut st.made);
            }
            if st.finished {
                st.planner.finish(&mut st.made);
            }
            st.ready.extend(st.made.drain(..));
        }
    })
}

fn clip(item: crate::pages::PageItem, window: &ByteRange) -> Option<crate::pages::PageItem> {
    use crate::pages::PageItem;
    let r = item.range().intersect(window)?;
    Some(match item {
        PageItem::Changed(_) => PageItem::Changed(r),
        PageItem::Cleared(_) => PageItem::Cleared(r),
    })
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

/// 16 random hex digits: the tag of one cycle's snapshots.
fn random_tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}
