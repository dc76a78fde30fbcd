//! Executes a cycle's actions against a [`PageBlobs`] and persists the record after each.
//!
//! The runner owns no decisions: `machine` says what to do next, the runner does it,
//! reconciling with what storage holds first (tagged snapshots) so that repeating an action
//! after a crash never duplicates its effect.

use super::machine::{self, Action, CycleKind, CycleRecord, CycleStats, Outcome, Phase};
use super::metered::Metered;
use super::progress::Progress;
use crate::blobs::{BlobError, BlobRef, CopyStatus, Metadata, PageBlobs, PageListQuery};
use crate::config::CopyMode;
use crate::pages::{
    round_up_to_page, segments, Batch, ByteRange, Coalescer, ReadPlanner, DIFF_SEGMENT_BYTES,
    MAX_PUT_BYTES, MAX_READ_BYTES, MAX_READ_GAP,
};
use crate::state::{StateError, StateStore};
use futures::{stream, StreamExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Metadata names on the snapshots snapback creates (see docs/design.md, "Metadata tags").
pub const TAG_DISK: &str = "snapback_disk";
pub const TAG_CYCLE: &str = "snapback_cycle";
pub const TAG_SOURCE_SNAPSHOT: &str = "snapback_source_snapshot";
/// On the backup base blob (not a snapshot): the disk it backs up.
pub const TAG_BACKUP_OF: &str = "snapback_backup_of";

/// How often the apply checkpoint is written at most. A crash re-applies at most this much
/// work; each write is one small SQLite transaction.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// A disk as the runner needs it.
#[derive(Clone, Debug)]
pub struct DiskSpec {
    pub name: String,
    pub source: BlobRef,
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

    async fn request(&self) -> Result<tokio::sync::SemaphorePermit<'_>, BlobError> {
        self.requests.acquire().await.map_err(closed)
    }

    /// Permits for `bytes` of buffer (a request larger than the whole budget takes all of it).
    async fn buffer(&self, bytes: u64) -> Result<tokio::sync::SemaphorePermit<'_>, BlobError> {
        let units = bytes
            .div_ceil(BUFFER_UNIT)
            .clamp(1, self.buffer_units as u64) as u32;
        self.buffer.acquire_many(units).await.map_err(closed)
    }
}

fn closed(_: tokio::sync::AcquireError) -> BlobError {
    BlobError::Config("the request limiter was closed (shutting down)".into())
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
    #[error("disk {disk}: stopped at a checkpoint (phase {phase}); the next run resumes it")]
    Interrupted { disk: String, phase: &'static str },
}

/// The clock, injected so tests control time.
pub trait Clock: Send + Sync {
    fn now(&self) -> i64;
}

/// Wall-clock seconds since the Unix epoch.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        time::OffsetDateTime::now_utc().unix_timestamp()
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
            progress: None,
            limits: None,
            tuning: ApplyTuning::default(),
        }
    }

    fn blob_err(&self, source: BlobError) -> CycleError {
        CycleError::Blob {
            disk: self.disk.name.clone(),
            source,
        }
    }

    /// The disk's unfinished cycle, or a new one (invariant 1: never two at once).
    pub fn open_or_resume(&self) -> Result<CycleRecord, CycleError> {
        let d = self.disk;
        let state =
            self.store
                .register_disk(&d.name, &d.source.to_string(), &d.backup.to_string())?;
        if let Some(rec) = self.store.open_cycle(&d.name)? {
            return Ok(rec);
        }
        let rec = CycleRecord::new(
            &d.name,
            random_tag(),
            state.base_snapshot,
            state.backup_etag,
            self.clock.now(),
        );
        Ok(self.store.insert_cycle(rec)?)
    }

    /// Runs (or resumes) one cycle to the end.
    pub async fn run_cycle(&self) -> Result<CycleRecord, CycleError> {
        let mut rec = self.open_or_resume()?;
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
            phase: rec.phase.as_str(),
        };
        if let Some(p) = &self.progress {
            p.set_phase(rec.phase.as_str());
        }
        if self.stop.is_cancelled() {
            return Err(interrupted());
        }
        // Dropping an action midway is as safe as a crash (each is reconciled or idempotent),
        // so a stop request does not wait for a slow request or a long copy. Apply stops on
        // its own, after saving its checkpoint.
        let outcome = if action == Action::ApplyDiff {
            self.execute(action, rec).await?
        } else {
            let mut work = rec.clone();
            tokio::select! {
                r = self.execute(action, &mut work) => r?,
                _ = self.stop.cancelled() => return Err(interrupted()),
            }
        };
        self.commit(rec, outcome)?;
        failpoint_after_step().await;
        Ok(rec.phase != Phase::Done)
    }

    fn commit(&self, rec: &mut CycleRecord, outcome: Outcome) -> Result<(), CycleError> {
        if let Outcome::Repair { reason } = &outcome {
            tracing::warn!(disk = %rec.disk, reason = %reason, "cannot apply a diff onto this backup; re-seeding (earlier restore points are kept)");
        }
        machine::advance(rec, outcome, self.clock.now())?;
        let (requests, ranges) = self.blobs.take_counts();
        rec.stats.requests += requests;
        rec.stats.ranges += ranges;
        self.store.save_cycle(rec, self.clock.now())?;
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
            Action::TakeSourceSnapshot => self.take_source_snapshot(rec).await,
            Action::CheckDiffBase => self.check_diff_base(rec).await,
            Action::ApplyDiff => return self.apply(rec).await,
            Action::StartCopy => self.start_copy(rec).await,
            Action::AwaitCopy => self.await_copy(rec).await,
            Action::TakeBackupSnapshot => self.take_backup_snapshot(rec).await,
            Action::PruneSource => self.prune_source(rec).await,
        };
        r.map_err(|e| self.blob_err(e))
    }

    fn tags(&self, rec: &CycleRecord) -> Metadata {
        Metadata::from([
            (TAG_DISK.to_string(), rec.disk.clone()),
            (TAG_CYCLE.to_string(), rec.tag.clone()),
        ])
    }

    async fn find_tagged(
        &self,
        blob: &BlobRef,
        tag: &str,
    ) -> Result<Option<(String, u64)>, BlobError> {
        Ok(self
            .blobs
            .list_snapshots(blob)
            .await?
            .into_iter()
            .find(|s| s.metadata.get(TAG_CYCLE).map(String::as_str) == Some(tag))
            .map(|s| (s.snapshot, s.size)))
    }

    async fn take_source_snapshot(&self, rec: &CycleRecord) -> Result<Outcome, BlobError> {
        let source = &self.disk.source;
        // Invariant 9: this is the first request of a cycle; a missing source or a bad key
        // fails here, before anything is written anywhere.
        if let Some((snapshot, size)) = self.find_tagged(source, &rec.tag).await? {
            return Ok(Outcome::SourceSnapshot { snapshot, size });
        }
        let snapshot = self.blobs.create_snapshot(source, &self.tags(rec)).await?;
        let props = self
            .blobs
            .properties(source, Some(&snapshot))
            .await?
            .ok_or_else(|| BlobError::NotFound {
                what: format!("{source} snapshot {snapshot}"),
                code: "BlobNotFound".into(),
            })?;
        Ok(Outcome::SourceSnapshot {
            snapshot,
            size: props.size,
        })
    }

    async fn check_diff_base(&self, rec: &CycleRecord) -> Result<Outcome, BlobError> {
        let backup = &self.disk.backup;
        let Some(props) = self.blobs.properties(backup, None).await? else {
            return Ok(Outcome::Repair {
                reason: format!("backup blob {backup} does not exist"),
            });
        };
        if !rec.backup_touched {
            if let Some(expected) = &rec.expected_backup_etag {
                if &props.etag != expected {
                    return Ok(Outcome::Repair {
                        reason: format!(
                            "backup blob {backup} was modified since the last restore point \
                             (ETag {} instead of {expected})",
                            props.etag
                        ),
                    });
                }
            }
        }
        let base = rec.base_snapshot.as_deref().unwrap_or_default();
        if self
            .blobs
            .properties(&self.disk.source, Some(base))
            .await?
            .is_none()
        {
            return Ok(Outcome::Repair {
                reason: format!(
                    "diff base snapshot {base} of {} was deleted",
                    self.disk.source
                ),
            });
        }
        Ok(Outcome::DiffBaseOk)
    }

    /// Applies the diff `S(n-1)..S(n)` from the checkpoint on, persisting progress as it goes.
    async fn apply(&self, rec: &mut CycleRecord) -> Result<Outcome, CycleError> {
        let (source, backup) = (&self.disk.source, &self.disk.backup);
        let Some(snapshot) = rec.source_snapshot.clone() else {
            return Err(self.blob_err(BlobError::Config("apply without a source snapshot".into())));
        };
        // No diff base: a seed by client copy. Every page of S(n) is listed and copied onto a
        // backup base made blank first (only before the first checkpoint: later, resume).
        let base = rec.base_snapshot.clone();
        let size = rec.source_size;
        if base.is_none() && rec.applied_upto == 0 {
            self.blobs
                .create_page_blob(backup, round_up_to_page(size))
                .await
                .map_err(|e| self.blob_err(e))?;
            rec.backup_touched = true;
        }
        // A source that grew (or shrank) is matched first, so every put lands inside the blob.
        let props = self
            .blobs
            .properties(backup, None)
            .await
            .map_err(|e| self.blob_err(e))?;
        let mut stats = CycleStats::default();
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

        let window = ByteRange::new(rec.applied_upto, size);
        let batches = diff_batches(
            &self.blobs,
            source,
            &snapshot,
            base.as_deref(),
            window,
            self.tuning,
        );
        let mut batches = std::pin::pin!(batches);
        let concurrency = self.disk.concurrency.max(1);
        // Batches run and finish in any order (a slow request does not hold back the ones
        // behind it); the checkpoint only moves over the contiguous prefix of finished ones.
        // At most `max_ahead` batches may be admitted past the oldest unfinished one, which
        // bounds `finished` (and the work a crash can repeat).
        let max_ahead = (concurrency * 64) as u64;
        let snap: &str = &snapshot;
        let server = AtomicBool::new(self.disk.copy_mode != CopyMode::Client);
        let server = &server;
        let mut running = futures::stream::FuturesUnordered::new();
        let (mut admitted, mut head) = (0u64, 0u64);
        let mut finished = std::collections::BTreeMap::<u64, u64>::new();
        let mut listed_all = false;

        let mut last_save = Instant::now();
        let mut upto = rec.applied_upto;
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
                        phase: Phase::Apply.as_str(),
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
                        self.run_batch(batch, snap, server, &mut s).await?;
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
                return match e {
                    BlobError::PreviousSnapshotGone { snapshot, .. } => Ok(Outcome::Repair {
                        reason: format!("diff base snapshot {snapshot} was deleted during apply"),
                    }),
                    BlobError::NotFound { what, .. } if what.contains(&snapshot) => {
                        Ok(Outcome::SourceSnapshotGone)
                    }
                    e => Err(self.blob_err(e)),
                };
            }
            if last_save.elapsed() >= CHECKPOINT_INTERVAL {
                self.checkpoint(rec, upto, std::mem::take(&mut stats))?;
                last_save = Instant::now();
            }
        }
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
        batch: Batch,
        snapshot: &str,
        server: &AtomicBool,
        stats: &mut CycleStats,
    ) -> Result<(), BlobError> {
        // Requests first, then buffer (in copy_client_side): every task takes them in this
        // order and a buffer holder never waits for a request permit, so no deadlock.
        let _permit = match &self.limits {
            Some(l) => Some(l.request().await?),
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
        if server.load(Ordering::Relaxed) {
            match self.copy_server_side(&puts, snapshot, stats).await {
                Ok(()) => return Ok(()),
                Err(e) if self.disk.copy_mode == CopyMode::Auto && e.refuses_server_copy() => {
                    if server.swap(false, Ordering::Relaxed) {
                        tracing::warn!(disk = %self.disk.name, error = %e, "server-side copy refused; copying through snapback for the rest of this apply");
                    }
                }
                Err(e) => return Err(e),
            }
        }
        self.copy_client_side(read, &puts, snapshot, stats).await
    }

    /// Put Page From URL for each put: the service reads `S(n)` itself.
    async fn copy_server_side(
        &self,
        puts: &[ByteRange],
        snapshot: &str,
        stats: &mut CycleStats,
    ) -> Result<(), BlobError> {
        for p in puts {
            self.blobs
                .put_pages_from_url(
                    &self.disk.backup,
                    *p,
                    &self.disk.source,
                    Some(snapshot),
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
        read: ByteRange,
        puts: &[ByteRange],
        snapshot: &str,
        stats: &mut CycleStats,
    ) -> Result<(), BlobError> {
        let backup = &self.disk.backup;
        let _buffer = match &self.limits {
            Some(l) => Some(l.buffer(read.len()).await?),
            None => None,
        };
        let data = self
            .blobs
            .read(&self.disk.source, Some(snapshot), read)
            .await?;
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

    async fn start_copy(&self, rec: &CycleRecord) -> Result<Outcome, BlobError> {
        let (source, backup) = (&self.disk.source, &self.disk.backup);
        let snapshot = rec.source_snapshot.as_deref();
        self.blobs.ensure_container(backup).await?;
        // A copy left pending by a crash before its id was recorded would make ours fail.
        if let Some(BlobPropsCopy { id, pending: true }) = self.copy_state(backup).await? {
            self.blobs.abort_copy(backup, &id).await?;
        }
        // Explicit metadata: without it Copy Blob copies the source snapshot's snapback tags
        // onto the backup base, and Snapshot Blob without metadata (someone else's snapshot
        // of the backup) would inherit them and pass for one of our restore points.
        let meta = Metadata::from([(TAG_BACKUP_OF.to_string(), rec.disk.clone())]);
        match self.blobs.start_copy(backup, source, snapshot, &meta).await {
            Ok(copy_id) => Ok(Outcome::CopyStarted { copy_id }),
            Err(BlobError::NotFound { what, .. }) if what.contains(snapshot.unwrap_or("\0")) => {
                Ok(Outcome::SourceSnapshotGone)
            }
            Err(BlobError::CopySourceUnreadable { what, reason }) => {
                tracing::info!(disk = %rec.disk, source = %what, %reason, "seeding by copying every page through snapback");
                Ok(Outcome::CopyUnavailable { reason })
            }
            Err(e) => Err(e),
        }
    }

    async fn copy_state(&self, blob: &BlobRef) -> Result<Option<BlobPropsCopy>, BlobError> {
        Ok(self.blobs.properties(blob, None).await?.and_then(|p| {
            p.copy.map(|(id, status)| BlobPropsCopy {
                id,
                pending: matches!(status, CopyStatus::Pending { .. }),
            })
        }))
    }

    async fn await_copy(&self, rec: &CycleRecord) -> Result<Outcome, BlobError> {
        let backup = &self.disk.backup;
        let copy_id = rec.copy_id.clone().unwrap_or_default();
        let mut wait = self.copy_poll.0;
        loop {
            let props = self.blobs.properties(backup, None).await?;
            let status = match props.and_then(|p| p.copy) {
                Some((id, status)) if id == copy_id => status,
                _ => {
                    return Ok(Outcome::CopyFailed {
                        reason: format!("copy {copy_id} to {backup} is no longer there"),
                    })
                }
            };
            match status {
                CopyStatus::Success => {
                    if let Some(p) = &self.progress {
                        p.complete();
                    }
                    return Ok(Outcome::CopyDone);
                }
                CopyStatus::Failed(reason) | CopyStatus::Aborted(reason) => {
                    tracing::warn!(disk = %rec.disk, %reason, "copy to the backup failed; starting it again");
                    return Ok(Outcome::CopyFailed { reason });
                }
                CopyStatus::Pending { copied, total } => {
                    tracing::info!(disk = %rec.disk, copied, total, "seed copy in progress");
                    if let Some(p) = &self.progress {
                        p.report("seed copy", copied, total);
                    }
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => {
                    return Err(BlobError::Config("interrupted while waiting for the copy".into()))
                }
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(self.copy_poll.1);
        }
    }

    async fn take_backup_snapshot(&self, rec: &CycleRecord) -> Result<Outcome, BlobError> {
        let backup = &self.disk.backup;
        let snapshot = match self.find_tagged(backup, &rec.tag).await? {
            Some((s, _)) => s,
            None => {
                let mut meta = self.tags(rec);
                meta.insert(
                    TAG_SOURCE_SNAPSHOT.to_string(),
                    rec.source_snapshot.clone().unwrap_or_default(),
                );
                self.blobs.create_snapshot(backup, &meta).await?
            }
        };
        let etag = self
            .blobs
            .properties(backup, None)
            .await?
            .map(|p| p.etag)
            .unwrap_or_default();
        Ok(Outcome::BackupSnapshot { snapshot, etag })
    }

    async fn prune_source(&self, rec: &CycleRecord) -> Result<Outcome, BlobError> {
        let source = &self.disk.source;
        let keep = rec.source_snapshot.as_deref().unwrap_or_default();
        for s in self.blobs.list_snapshots(source).await? {
            let ours = s.metadata.get(TAG_DISK) == Some(&rec.disk);
            if ours && s.snapshot != keep {
                self.blobs.delete_snapshot(source, &s.snapshot).await?;
            }
        }
        Ok(Outcome::Pruned)
    }
}

struct BlobPropsCopy {
    id: String,
    pending: bool,
}

/// The diff `base..snapshot` (every page of `snapshot` when there is no base) within `window`, as a stream of [`Batch`]es in offset order.
/// The window is listed in `x-ms-range` segments (Microsoft's advice for heavily fragmented
/// blobs) and each segment page by page (`NextMarker`, `maxresults`); batches are made from
/// the current page's items one at a time, as the apply pulls them. So a diff of millions of
/// ranges is never held in memory: one result page (≤ `page_results` items) and a few batches
/// are. Items are clipped to the window: a resumed apply starts exactly at its checkpoint.
fn diff_batches<'b>(
    blobs: &'b dyn PageBlobs,
    source: &'b BlobRef,
    snapshot: &'b str,
    base: Option<&'b str>,
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
                let query = PageListQuery {
                    snapshot: Some(snapshot),
                    prev_snapshot: base,
                    range: Some(segment),
                    marker: marker.as_deref(),
                    max_results: Some(tuning.page_results),
                };
                let page = blobs.page_ranges(source, &query).await?;
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

/// Seeds count as a full copy; used by `status` to label the kind.
pub fn kind_label(kind: CycleKind) -> &'static str {
    match kind {
        CycleKind::Seed => "seed",
        CycleKind::Incremental => "incremental",
    }
}
