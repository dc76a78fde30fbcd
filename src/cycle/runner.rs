//! Executes a cycle's actions against a [`PageBlobs`] and persists the record after each.
//!
//! The runner owns no decisions: `machine` says what to do next, the runner does it,
//! reconciling with what storage holds first (tagged snapshots) so that repeating an action
//! after a crash never duplicates its effect.

use super::error::{CycleError, SnapshotLimit};
use super::find_or_make::find_or_make;
use super::machine::{self, Action, Outcome};
use super::metered::Metered;
use super::tuning::{ApplyTuning, Limits};
use crate::config::{CopyMode, DiskSource};
use crate::model::progress::Progress;
use crate::model::record::{CycleRecord, CycleStats, DiffBase, Phase, PhaseName};
use crate::model::{tags, Clock, SnapshotId};
use crate::ownership::DiskLease;
use crate::source::{PageBlobSource, Source};
use crate::state::StateStore;
use crate::storage::{
    BlobError, BlobProps, BlobRef, ErrorKind, Fence, IfBlob, NewPageBlob, PageBlobs, Resource,
    ServiceCode,
};
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

    /// Whether the source account refused a read of one of its snapshots (400
    /// `InvalidOperation`: older premium page-blob accounts allow only the service to copy
    /// from snapshots).
    pub(super) fn refuses_snapshot_reads(&self, e: &BlobError) -> bool {
        let of_source_snapshot = matches!(&*e.resource,
            Resource::Snapshot(b, _) if Some(b) == self.disk.source.blob());
        of_source_snapshot
            && e.kind == ErrorKind::BadRequest
            && e.service_code() == Some(ServiceCode::InvalidOperation)
    }

    pub(super) fn blob_err(&self, source: BlobError) -> CycleError {
        // A managed disk's snapshot or access refused for one of Azure's limits (named by the
        // source when the refusal came): typed, with its wait, wherever in the cycle it was.
        // Only a given source can tell (a page blob's limits are `SnapshotLimit::of`'s), and
        // `source()` must not be built here: it panics for a managed disk given none.
        if let Some(limit) = self.other_source.and_then(|s| s.limit_of(&source)) {
            return CycleError::SnapshotLimit {
                disk: self.disk.name.clone(),
                of: Box::new(self.disk.source.clone()),
                limit: SnapshotLimit::Managed(Box::new(limit)),
            };
        }
        if self.refuses_snapshot_reads(&source) {
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

    /// The error of a cycle a later owner fenced off in `phase`.
    pub(super) fn fenced_off(&self, phase: PhaseName) -> CycleError {
        CycleError::Fenced {
            disk: self.disk.name.clone(),
            backup: self.disk.backup.clone(),
            phase,
            token: self.fence.map_or(0, |Fence(t)| t),
        }
    }

    /// A storage error of a cycle in `phase`: a write the fence refused stops it as fenced.
    pub(super) fn write_err(&self, phase: PhaseName, e: BlobError) -> CycleError {
        if e.kind == ErrorKind::Fenced {
            return self.fenced_off(phase);
        }
        self.blob_err(e)
    }

    /// Before a write that takes no sequence-number condition onto the backup as `props`
    /// shows it: the ETag to send it `If-Match` on (see [`crate::ownership::token_etag`]).
    pub(super) async fn fenced_etag(
        &self,
        props: &BlobProps,
        phase: PhaseName,
    ) -> Result<String, CycleError> {
        let Some(Fence(token)) = self.fence else {
            return Ok(props.etag.clone());
        };
        match crate::ownership::token_etag(&self.blobs, &self.disk.backup, props, token).await {
            Ok(Some(etag)) => Ok(etag),
            Ok(None) => Err(self.fenced_off(phase)),
            Err(e) => Err(self.unmatched(phase, e).await),
        }
    }

    /// The error of a write to the backup sent `If-Match` an ETag that carried this owner's
    /// token ([`Runner::fenced_etag`]): refused because the backup changed since, it is
    /// fenced if the token is no longer the backup's.
    pub(super) async fn unmatched(&self, phase: PhaseName, e: BlobError) -> CycleError {
        if let (ErrorKind::PreconditionFailed, Some(Fence(token))) = (e.kind, self.fence) {
            let now = self.blobs.properties(&self.disk.backup, None).await;
            if let Ok(Some(p)) = now {
                if p.sequence_number != Some(token) {
                    return self.fenced_off(phase);
                }
            }
        }
        self.write_err(phase, e)
    }

    /// Makes the backup base blank, tagged as this disk's and carrying this owner's token, in
    /// one Put Blob, so it never exists untagged (a kill between a create and a separate tag
    /// would leave a blob the next owner refuses as foreign). An existing backup is replaced
    /// only `If-Match` the ETag read with this owner's token: never a later owner's blob.
    pub(super) async fn create_backup(
        &self,
        rec: &mut CycleRecord,
        size: u64,
    ) -> Result<(), CycleError> {
        let backup = &self.disk.backup;
        let metadata = tags::in_chain(tags::backup_base(&rec.disk), self.chain.as_deref());
        let mut refused = None;
        // Twice: a create whose answer was lost and that is retried meets its own blob.
        for _ in 0..2 {
            let props = self
                .blobs
                .properties(backup, None)
                .await
                .map_err(|e| self.blob_err(e))?;
            let condition = match &props {
                None => IfBlob::Absent,
                Some(p) => IfBlob::Is(self.fenced_etag(p, PhaseName::Apply).await?),
            };
            let new = NewPageBlob {
                metadata: metadata.clone(),
                sequence_number: self.fence.map(|Fence(t)| t),
                condition,
            };
            let size = crate::model::pages::round_up_to_page(size);
            match self.blobs.create_page_blob(backup, size, &new).await {
                Ok(_) => {
                    rec.backup_touched = true;
                    return Ok(());
                }
                // The blob changed between the read and the create; `If-None-Match: *` over
                // a blob that exists answers 409 BlobAlreadyExists.
                Err(e)
                    if matches!(
                        e.kind,
                        ErrorKind::PreconditionFailed | ErrorKind::AlreadyExists
                    ) =>
                {
                    refused = Some(e)
                }
                Err(e) => return Err(self.blob_err(e)),
            }
        }
        match refused {
            Some(e) => Err(self.unmatched(PhaseName::Apply, e).await),
            None => Ok(()),
        }
    }

    /// Whether the backup carries a token above this owner's (a later owner took the disk).
    async fn fenced_now(&self) -> Result<bool, BlobError> {
        let Some(Fence(token)) = self.fence else {
            return Ok(false);
        };
        let props = self.blobs.properties(&self.disk.backup, None).await?;
        Ok(props
            .and_then(|p| p.sequence_number)
            .is_some_and(|n| n > token))
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

    /// The disk's unfinished cycle, or a new one (invariant 1: never two at once). A cycle is
    /// bound to the source and backup it started with: when the config names others, it is
    /// abandoned first (see `Runner::rebind`).
    ///
    /// Under a lease, the record in the disk's lock blob is reconciled first (Azure's open
    /// cycle is resumed here; a local one the disk moved past is abandoned: see
    /// `Runner::take_over`), and the cycle opened or resumed is recorded there before its
    /// first step.
    pub async fn open_or_resume(&self) -> Result<CycleRecord, CycleError> {
        let d = self.disk;
        self.rebind().await?;
        self.store
            .register_disk(&d.name, &d.source.to_string(), &d.backup.to_string())?;
        self.take_over().await?;
        let mut rec = match self.store.open_cycle(&d.name)? {
            Some(rec) => rec,
            None => {
                // Read after the takeover, which may have moved the chain on.
                let state = self.store.disk(&d.name)?.unwrap_or_default();
                let local = state.base_snapshot.map(|s| DiffBase {
                    snapshot: SnapshotId::new(s),
                    backup_etag: state.backup_etag,
                });
                let base = self.chain_from_azure(local).await?;
                let rec = CycleRecord::new(&d.name, random_tag(), base, self.now());
                self.store.insert_cycle(rec)?
            }
        };
        // This owner raised the backup's sequence number when it took the lease: the base a
        // record expects is the same after that raise, under its new ETag (the raise was
        // If-Match the old one, so nothing else can have happened in between).
        if let Some((before, after)) = self.lease.and_then(DiskLease::raised) {
            if rec.replace_etag(before, after) {
                self.store.save_cycle(&rec, self.now())?;
            }
        }
        self.publish(&rec).await?;
        Ok(rec)
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
        if d.source.is_recorded_as(&prev.source) && prev.backup == backup {
            return Ok(());
        }
        tracing::warn!(disk = %d.name, old_source = %prev.source, old_backup = %prev.backup, %source, %backup, "disk re-pointed: its open cycle is abandoned and a new chain starts");
        // The old chain's snapshots carry its id, kept in the lock blob beside the old
        // backup (the same blob as now when only the source moved).
        let old_chain = if prev.backup == backup {
            self.chain.clone()
        } else {
            self.chain_beside(&prev.backup).await
        };
        self.sweep_recorded(&prev.source, old_chain.as_deref())
            .await?;
        if let Some(open) = self.store.open_cycle(&d.name)? {
            self.store.abandon_cycle(open.id)?;
        }
        Ok(())
    }

    /// The chain id the lock blob beside `backup` (a display form) names, if any.
    async fn chain_beside(&self, backup: &str) -> Option<String> {
        let backup = backup.parse::<BlobRef>().ok()?;
        let lock = crate::ownership::lock_blob(&backup);
        let props = self.blobs.properties(&lock, None).await.ok()??;
        tags::chain(&props.metadata).map(str::to_string)
    }

    /// Deletes this chain's snapback snapshots of the source `recorded` names (a page blob,
    /// or a managed disk with its snapshot resource group): one the disk no longer backs up.
    /// (`chain` None: storage without leases, where every snapshot of the disk is its one
    /// chain's.)
    pub(super) async fn sweep_recorded(
        &self,
        recorded: &str,
        chain: Option<&str>,
    ) -> Result<(), CycleError> {
        let d = self.disk;
        if let Ok(old) = recorded.parse::<BlobRef>() {
            let old_source = PageBlobSource::new(&self.blobs, &old).in_chain(chain);
            return self.sweep(&old_source).await;
        }
        match self.source().sibling(recorded, chain) {
            Some(old_source) => self.sweep(old_source.as_ref()).await,
            None => {
                tracing::warn!(disk = %d.name, old_source = %recorded, "old source not recognised; its snapshots are not swept");
                Ok(())
            }
        }
    }

    /// Deletes the disk's snapback snapshots of a source it no longer backs up.
    pub(super) async fn sweep(&self, old_source: &dyn Source) -> Result<(), CycleError> {
        let d = self.disk;
        let sweep = async {
            for s in old_source.own_snapshots(&d.name).await? {
                old_source.delete_snapshot(&s).await?;
            }
            Ok::<_, BlobError>(())
        };
        match sweep.await {
            Ok(()) => Ok(()),
            // The old source is gone, or its account is no longer configured: there is
            // nothing snapback can delete.
            Err(e) if e.is_not_found() || e.kind == ErrorKind::Unusable => {
                tracing::warn!(disk = %d.name, error = %e, "cannot sweep the old source's snapshots");
                Ok(())
            }
            Err(e) => Err(self.blob_err(e)),
        }
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
    pub(super) async fn check_backup_is_ours(&self) -> Result<(), CycleError> {
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
        phase: &Phase,
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
        let Phase::Diff { source, size, .. } = phase else {
            // `CheckDiffBase` is the action of the Diff phase only (`machine::next_action`).
            return Ok(Outcome::DiffBaseOk);
        };
        let src = self.source();
        let state = src.diff_base(base, source).await?;
        let verdict = machine::base_verdict(
            base,
            &state,
            *size,
            src.diff_boundary(),
            &self.disk.source.to_string(),
        );
        Ok(match verdict {
            Some(reason) => Outcome::Repair { reason },
            None => Outcome::DiffBaseOk,
        })
    }

    /// The backup base's ETag now.
    pub(super) async fn backup_etag(&self) -> Result<String, CycleError> {
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
            |s: &crate::storage::SnapshotInfo| tags::cycle(&s.metadata) == Some(rec.tag.as_str());
        let now = self.blobs.properties(backup, None).await?;
        // Snapshot Blob takes no sequence-number condition: the token is checked on the
        // properties read here, and the snapshot is sent `If-Match` the ETag read with it
        // (a later owner's raise changes the ETag, so it fails once that has happened).
        if let (Some(Fence(token)), Some(n)) = (self.fence, now.as_ref().map(|p| p.sequence_number))
        {
            if n.is_some_and(|n| n > token) {
                return Err(BlobError::local(
                    ErrorKind::Fenced,
                    Resource::blob(backup),
                    format!(
                        "the backup's sequence number is {n:?}, above this owner's token {token}"
                    ),
                ));
            }
        }
        // The base this cycle's writes left (a record from before this field: the base now).
        let written = match (&rec.written_etag, &now) {
            (Some(e), _) => e.clone(),
            (None, Some(p)) => p.etag.clone(),
            (None, None) => String::new(),
        };
        // The source's own record first, so that snapback's tags always win a clash.
        let mut meta = self.source().point_metadata(source).await?;
        meta.extend(tags::with_fence(
            tags::in_chain(
                tags::restore_point_on(&rec.disk, &rec.tag, source, &written),
                self.chain.as_deref(),
            ),
            self.fence.map(|Fence(t)| t),
        ));
        let src = self.source();
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
            // A Trusted Launch disk's VM guest state is copied first, every time B(n) is
            // still to be made: the restore point names a complete copy or is not taken.
            || async {
                let guest = self
                    .copy_guest_state(&*src, &rec.disk, &rec.tag, source)
                    .await?;
                let meta = match &guest {
                    Some(g) => tags::with_guest_state(meta.clone(), g),
                    None => meta.clone(),
                };
                self.blobs
                    .create_snapshot_if_match(backup, &meta, &written)
                    .await
            },
        )
        .await;
        let snapshot = match made {
            Ok(s) => s,
            // S(n) vanished before its guest state was copied: no restore point can name
            // it; a new S(n) is taken (as for a backup written by someone else).
            Err(e)
                if e.is_not_found()
                    && *e.resource == src.snapshot_resource(source)
                    && src.snapshot_size(source).await?.is_none() =>
            {
                return Ok(Outcome::Repair {
                    reason: format!(
                        "source snapshot {source} vanished before its VM guest state was copied"
                    ),
                })
            }
            Err(e) if e.kind == ErrorKind::PreconditionFailed && self.fenced_now().await? => {
                return Err(BlobError {
                    kind: ErrorKind::Fenced,
                    ..e
                })
            }
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
        if self.fenced_now().await? {
            return Err(BlobError::local(
                ErrorKind::Fenced,
                Resource::blob(&self.disk.backup),
                "a later owner raised the backup's sequence number before the prune",
            ));
        }
        // Only the snapshots older than `keep`: a prune of an owner that lost the disk (and
        // woke late) must not delete `S(n+1)` of the owner that took it over. Their deletes
        // and the end of access to `S(n)` go together (`Source::retire`).
        let older: Vec<SnapshotId> = source
            .own_snapshots(&rec.disk)
            .await?
            .into_iter()
            .take_while(|s| s != keep)
            .collect();
        source.retire(&rec.disk, &older).await?;
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
        Ok(Outcome::Pruned)
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

/// 16 random hex digits: the tag of one cycle's snapshots.
fn random_tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}
