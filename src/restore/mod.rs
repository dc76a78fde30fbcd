//! What is done with restore points once they exist: this file restores one to a page blob
//! (below); [`managed_disk`] restores one to a new managed disk (with [`vhd`], the footer an
//! upload needs); [`verify`] proves one equal to its source snapshot; [`retention`] decides
//! which to keep and prunes the rest.
//!
//! Restore: a restore point becomes a disk again.
//!
//! 1. **Promote**: Copy Blob from the restore point (a backup snapshot) to a new writable blob
//!    next to the backup, `<backup blob>.restore-<UTC time>`.
//! 2. **Copy** that blob to the target (asynchronous Copy Blob; cross-account reads are
//!    authorised by the blob layer, with a short-lived read SAS for Shared Key accounts).
//! 3. With `rebase`: the restored disk starts a new backup chain whose backup blob is the
//!    promoted blob. Its first source snapshot `S(0)` is taken at once and a restore point
//!    `B(0)` of the promoted blob records it, so the chain's next cycle is incremental.
//!    Without `rebase` the promoted blob is deleted at the end.
//!
//! Never a half-copied blob that looks valid: every blob a restore writes carries
//! `snapback_restore = in-progress` from the moment its copy starts (Copy Blob sets the
//! metadata atomically with the copy); only after the copy reports `success` is it re-tagged
//! (`promoted` / `complete`). A failed, aborted or interrupted copy is aborted and its blob
//! deleted. An existing target is never overwritten without `force`, and the check happens
//! before anything is written.

pub mod managed_disk;
pub mod retention;
pub mod verify;
pub mod vhd;

use crate::config::DiskConfig;
use crate::cycle::handover::publish_record;
use crate::model::progress::Progress;
use crate::model::record::CycleRecord;
use crate::model::tags::{self, RestoreState};
use crate::model::{format_timestamp, parse_timestamp, SnapshotId, Timestamp};
use crate::ownership::{DiskLease, Owner, OwnershipError};
use crate::source::{PageBlobSource, Source};
use crate::state::{StateError, StateStore};
use crate::storage::copy::{self, CopyEnd, CopyWait};
use crate::storage::lease::LeaseBlobs;
use crate::storage::{
    BlobError, BlobRef, CopyStatus, ErrorKind, IfBlob, Metadata, PageBlobs, Resource,
};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Which restore point to restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PointSelector {
    /// Exactly this backup snapshot.
    Snapshot(String),
    /// The newest restore point whose source snapshot was taken at or before this time.
    At(Timestamp),
}

/// A new backup chain for the restored disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rebase {
    /// Name of the new disk (its `[[disk]]` entry).
    pub name: String,
}

#[derive(Clone, Debug)]
pub struct RestoreRequest {
    pub point: PointSelector,
    pub target: BlobRef,
    pub rebase: Option<Rebase>,
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("disk {disk} has no restore point {snapshot}")]
    UnknownRestorePoint { disk: String, snapshot: String },
    #[error("disk {disk} has no restore point at or before {at}")]
    NoRestorePointBefore { disk: String, at: String },
    #[error(
        "target {target} already exists{detail}; pass --force to overwrite it (nothing was written)"
    )]
    TargetExists { target: String, detail: String },
    #[error("target {target} is {what}; restoring over it would destroy that backup chain")]
    TargetIsBackup { target: String, what: String },
    #[error("invalid name \"{name}\" for the rebased disk: {reason}")]
    BadName { name: String, reason: String },
    #[error("{what}: {source}")]
    Blob {
        what: String,
        #[source]
        source: BlobError,
    },
    #[error("copy {copy_id} of {source_blob} to {dest} {status}; {then}")]
    CopyFailed {
        source_blob: String,
        dest: String,
        copy_id: String,
        status: String,
        /// What was done about the destination.
        then: String,
    },
    #[error("restore interrupted; the partial copy {dest} was aborted and removed")]
    Interrupted { dest: String },
    /// A Trusted Launch disk's restore point whose VM guest state copy is missing, altered or
    /// unreadable (nothing was written).
    #[error("restore point {snapshot}: {reason} (nothing was written)")]
    UnreadableGuestState { snapshot: String, reason: String },
    /// `--to-managed-disk` cannot be done as asked (the reason says why).
    #[error("restore to managed disk {target}: {reason}")]
    ManagedTarget { target: String, reason: String },
    /// The disk's lease is held (a cycle runs there now), or was lost during the rebase.
    #[error(transparent)]
    Ownership(Box<OwnershipError>),
    #[error(transparent)]
    State(#[from] StateError),
}

impl From<OwnershipError> for RestoreError {
    fn from(e: OwnershipError) -> Self {
        RestoreError::Ownership(Box::new(e))
    }
}

impl RestoreError {
    /// Errors the caller can fix by changing the command line (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            RestoreError::UnknownRestorePoint { .. }
                | RestoreError::NoRestorePointBefore { .. }
                | RestoreError::TargetExists { .. }
                | RestoreError::TargetIsBackup { .. }
                | RestoreError::BadName { .. }
                | RestoreError::ManagedTarget { .. }
        )
    }
}

pub(crate) fn blob_err(what: impl Into<String>) -> impl FnOnce(BlobError) -> RestoreError {
    let what = what.into();
    move |source| RestoreError::Blob { what, source }
}

/// The new chain started by `--rebase`.
#[derive(Clone, Debug)]
pub struct RebasedChain {
    pub name: String,
    pub source: BlobRef,
    pub backup: BlobRef,
    /// `S(0)` on the restored disk.
    pub source_snapshot: String,
    /// `B(0)` on the promoted blob.
    pub restore_point: String,
}

#[derive(Clone, Debug)]
pub struct RestoreReport {
    pub disk: String,
    pub restore_point: String,
    pub source_snapshot: String,
    pub size: u64,
    pub promoted: BlobRef,
    pub target: BlobRef,
    pub promote_seconds: f64,
    pub copy_seconds: f64,
    /// The promoted blob is kept (it is the rebased chain's backup blob).
    pub promoted_kept: bool,
    pub rebased: Option<RebasedChain>,
    /// A Trusted Launch disk's restore point: where its VM guest state copy was put, beside
    /// the target ([`guest_state_target`]).
    pub guest_state: Option<BlobRef>,
}

/// Where a page-blob restore of a Trusted Launch disk's restore point puts its VM guest
/// state: `<target>.vmgs` beside the target. The disk's bytes are what a page-blob restore
/// is for (mount it, read files, import it); the guest state goes with them, so nothing of
/// the restore point is lost, and `az disk create --upload-type UploadWithSecurityData`
/// with `--security-type TrustedLaunch` can take both.
pub fn guest_state_target(target: &BlobRef) -> BlobRef {
    BlobRef {
        blob: format!("{}.vmgs", target.blob),
        ..target.clone()
    }
}

/// Executes restores for one disk.
pub struct Restorer<'a> {
    pub blobs: &'a dyn PageBlobs,
    pub store: &'a StateStore,
    pub disk: &'a DiskConfig,
    /// Cancelled on Ctrl-C: the copy under way is aborted and its blob removed.
    pub stop: CancellationToken,
    /// First and longest wait between copy status polls.
    pub poll: (Duration, Duration),
    /// How long a copy may report the same progress before it is aborted as failed
    /// (`copy_stall_timeout`).
    pub copy_stall: Duration,
    /// Unix seconds, for names and records.
    pub now: i64,
    /// Where the copies report their progress (a terminal's progress bar).
    pub progress: Option<Arc<Progress>>,
    /// Disk leases, and who takes the rebased disk's (None: in-memory storage, no leases).
    pub leasing: Option<Leasing>,
}

/// What a rebase needs to take the lease of the disk whose chain it restarts, as a cycle
/// would: the lease store and the owner (see `ownership`).
#[derive(Clone)]
pub struct Leasing {
    pub leases: Arc<dyn LeaseBlobs>,
    pub owner: Owner,
}

impl Leasing {
    /// Takes `disk`'s lease (its backup is `backup`), naming the holder if it is held (a
    /// cycle running there now): nothing is written then.
    pub(crate) async fn acquire(
        &self,
        blobs: &dyn PageBlobs,
        disk: &str,
        backup: &BlobRef,
    ) -> Result<DiskLease, RestoreError> {
        Ok(DiskLease::acquire(
            self.leases.clone(),
            blobs,
            disk,
            backup,
            &self.owner,
            CancellationToken::new(),
        )
        .await?)
    }
}

/// The ETag to write `backup` (as `props` shows it) `If-Match` on under `lease`, once it
/// carries the lease's token (see `ownership::token_etag`); an error if a later owner's does.
pub(crate) async fn leased_etag(
    blobs: &dyn PageBlobs,
    lease: &DiskLease,
    disk: &str,
    backup: &BlobRef,
    props: &crate::storage::BlobProps,
) -> Result<String, RestoreError> {
    let etag = crate::ownership::token_etag(blobs, backup, props, lease.token())
        .await
        .map_err(blob_err(format!("fencing token of {backup}")))?;
    Ok(etag.ok_or_else(|| OwnershipError::Unfenced {
        disk: disk.to_string(),
        backup: backup.clone(),
        token: lease.token(),
        reason: "another owner took the disk over during the rebase".into(),
    })?)
}

/// The first restore point `B(0)` of a rebased chain on `backup`, whose bytes are those of
/// `S(0)`: under the disk's lease (when there is one) the backup must carry its token (it is
/// raised again after the copy that made it), and the snapshot is taken `If-Match` the ETag
/// read with it and records the token, as a cycle's restore point does. Returns `B(0)` and
/// the ETag it was taken on (the next cycle's base).
async fn first_restore_point(
    blobs: &dyn PageBlobs,
    lease: Option<&DiskLease>,
    disk: &str,
    backup: &BlobRef,
    (tag, s0): (&str, &SnapshotId),
    guest_state: Option<&tags::GuestStateCopy>,
) -> Result<(SnapshotId, String), RestoreError> {
    let what = |w: &str| format!("{w} of {backup}");
    let props = blobs
        .properties(backup, None)
        .await
        .and_then(|p| {
            p.ok_or_else(|| {
                BlobError::local(
                    ErrorKind::NotFound,
                    Resource::blob(backup),
                    "the backup blob vanished right after the restore point was copied to it",
                )
            })
        })
        .map_err(blob_err(what("properties")))?;
    let etag = match lease {
        None => props.etag.clone(),
        Some(lease) => leased_etag(blobs, lease, disk, backup, &props).await?,
    };
    let meta = tags::with_fence(
        tags::in_chain(
            tags::restore_point_on(disk, tag, s0, &etag),
            lease.map(DiskLease::chain),
        ),
        lease.map(DiskLease::token),
    );
    // A Trusted Launch disk's B(0) names the guest state copy of the point it was restored
    // from: the new disk was uploaded with exactly that guest state (retention keeps the
    // copy while either names it).
    let meta = match guest_state {
        Some(g) => tags::with_guest_state(meta, g),
        None => meta,
    };
    let b0 = blobs
        .create_snapshot_if_match(backup, &meta, &etag)
        .await
        .map_err(blob_err(what("first restore point")))?;
    Ok((SnapshotId::new(b0), etag))
}

/// The first cycle of a rebased chain: `S(0)` taken of the restored disk, `backup` holding
/// the same bytes (both are copies of one restore point).
pub(crate) struct FirstCycle<'a> {
    pub(crate) disk: &'a str,
    /// The new chain's source, as the state binds it (a blob path or a resource id).
    pub(crate) source: String,
    pub(crate) backup: &'a BlobRef,
    pub(crate) tag: &'a str,
    pub(crate) s0: &'a SnapshotId,
    /// The guest state copy `B(0)` names (a Trusted Launch disk's).
    pub(crate) guest_state: Option<&'a tags::GuestStateCopy>,
    /// Why the chain started, for `status` and the record.
    pub(crate) note: String,
    pub(crate) now: i64,
}

/// Finishes a rebased chain's first cycle as a cycle finishes one: `B(0)` taken
/// ([`first_restore_point`]), the finished cycle recorded in the state and, under the new
/// disk's lease, in its lock blob, so the next cycle is incremental against `S(0)`. Both
/// rebases (onto a page blob, onto a managed disk) end here. Returns `B(0)`.
pub(crate) async fn finish_first_cycle(
    blobs: &dyn PageBlobs,
    store: &StateStore,
    lease: Option<&DiskLease>,
    first: FirstCycle<'_>,
) -> Result<SnapshotId, RestoreError> {
    let (b0, etag) = first_restore_point(
        blobs,
        lease,
        first.disk,
        first.backup,
        (first.tag, first.s0),
        first.guest_state,
    )
    .await?;
    let rec = CycleRecord::rebased(
        first.disk,
        first.tag.to_string(),
        first.s0.clone(),
        b0.clone(),
        etag,
        first.note,
        first.now,
    );
    let backup = first.backup.to_string();
    store.start_chain(&rec, &first.source, &backup, first.now)?;
    if let Some(lease) = lease {
        publish_record(lease, &first.source, &backup, &rec).await?;
    }
    Ok(b0)
}

/// A restore point of the disk, with the source snapshot it recorded.
#[derive(Clone, Debug)]
pub(crate) struct Chosen {
    pub(crate) snapshot: String,
    pub(crate) source_snapshot: String,
    pub(crate) size: u64,
    /// The copy of the VM guest state it names (a Trusted Launch disk's).
    pub(crate) guest_state: Option<Result<tags::GuestStateCopy, String>>,
}

/// Checks a disk name by the config's rule ([`crate::model::valid_simple_name`]).
pub fn check_disk_name(name: &str) -> Result<(), RestoreError> {
    if crate::model::valid_simple_name(name) {
        Ok(())
    } else {
        Err(RestoreError::BadName {
            name: name.to_string(),
            reason: crate::model::SIMPLE_NAME_RULE.into(),
        })
    }
}

/// The time a restore point captured: its source snapshot's time, else its own.
fn captured_at(snapshot: &str, source_snapshot: &str) -> Option<Timestamp> {
    parse_timestamp(source_snapshot).or_else(|| parse_timestamp(snapshot))
}

impl<'a> Restorer<'a> {
    pub fn new(blobs: &'a dyn PageBlobs, store: &'a StateStore, disk: &'a DiskConfig) -> Self {
        Restorer {
            blobs,
            store,
            disk,
            stop: CancellationToken::new(),
            poll: (Duration::from_millis(200), Duration::from_secs(10)),
            copy_stall: crate::config::DEFAULT_COPY_STALL_TIMEOUT,
            now: Utc::now().timestamp(),
            progress: None,
            leasing: None,
        }
    }

    fn backup(&self) -> BlobRef {
        self.disk.backup.clone()
    }

    pub(crate) async fn choose(&self, sel: &PointSelector) -> Result<Chosen, RestoreError> {
        let points: Vec<Chosen> = crate::restore::retention::restore_points(self.blobs, self.disk)
            .await
            .map_err(blob_err(format!(
                "restore points of disk {}",
                self.disk.name
            )))?
            .into_iter()
            .map(|s| Chosen {
                source_snapshot: s.source.to_string(),
                snapshot: s.snapshot,
                size: s.size,
                guest_state: s.guest_state,
            })
            .collect();
        match sel {
            PointSelector::Snapshot(want) => points
                .into_iter()
                .find(|p| &p.snapshot == want)
                .ok_or_else(|| RestoreError::UnknownRestorePoint {
                    disk: self.disk.name.clone(),
                    snapshot: want.clone(),
                }),
            PointSelector::At(at) => points
                .into_iter()
                .filter(|p| captured_at(&p.snapshot, &p.source_snapshot).is_some_and(|t| t <= *at))
                .max_by_key(|p| captured_at(&p.snapshot, &p.source_snapshot))
                .ok_or_else(|| RestoreError::NoRestorePointBefore {
                    disk: self.disk.name.clone(),
                    at: format_timestamp(*at),
                }),
        }
    }

    /// Checks everything that can be checked before writing: the restore point, the target
    /// (absent, or `force`), the rebased disk's name.
    async fn preflight(&self, req: &RestoreRequest) -> Result<Chosen, RestoreError> {
        let backup = self.backup();
        if req.target == backup {
            return Err(RestoreError::TargetIsBackup {
                target: req.target.to_string(),
                what: format!("the backup blob of disk {}", self.disk.name),
            });
        }
        if let Some(rb) = &req.rebase {
            check_disk_name(&rb.name)?;
            if self.store.disk(&rb.name)?.is_some() {
                return Err(RestoreError::BadName {
                    name: rb.name.clone(),
                    reason: "the state database already has a disk of that name".into(),
                });
            }
        }
        let chosen = self.choose(&req.point).await?;
        let mut targets = vec![req.target.clone()];
        match &chosen.guest_state {
            Some(Err(why)) => {
                return Err(RestoreError::UnreadableGuestState {
                    snapshot: chosen.snapshot.clone(),
                    reason: why.clone(),
                })
            }
            // Checked before anything is written: a restore never puts a wrong guest state.
            Some(Ok(g)) => {
                let checked =
                    crate::restore::verify::read_guest_state(self.blobs, &self.backup(), g)
                        .await
                        .map_err(blob_err(format!("read the VM guest state copy {}", g.blob)))?;
                if let Err(reason) = checked {
                    return Err(RestoreError::UnreadableGuestState {
                        snapshot: chosen.snapshot.clone(),
                        reason,
                    });
                }
                targets.push(guest_state_target(&req.target));
            }
            None => {}
        }
        for target in targets {
            self.target_free(&target, req.force).await?;
        }
        Ok(chosen)
    }

    /// Refuses an existing `target` unless `force`.
    async fn target_free(&self, target: &BlobRef, force: bool) -> Result<(), RestoreError> {
        let req_target = target;
        let existing = self
            .blobs
            .properties(req_target, None)
            .await
            .map_err(blob_err(format!("check target {req_target}")))?;
        if let Some(p) = existing {
            if !force {
                let detail = match tags::restore_state(&p.metadata) {
                    Some(RestoreState::InProgress) => {
                        " (an unfinished restore left by an interrupted run)".to_string()
                    }
                    _ => format!(" ({} bytes)", p.size),
                };
                return Err(RestoreError::TargetExists {
                    target: req_target.to_string(),
                    detail,
                });
            }
        }
        Ok(())
    }

    /// Runs a restore end to end.
    pub async fn restore(&self, req: &RestoreRequest) -> Result<RestoreReport, RestoreError> {
        let chosen = self.preflight(req).await?;
        let backup = self.backup();
        let promoted = BlobRef {
            blob: format!("{}.restore-{}", backup.blob, compact_time(self.now)),
            ..backup.clone()
        };
        if self
            .blobs
            .properties(&promoted, None)
            .await
            .map_err(blob_err(format!("check {promoted}")))?
            .is_some()
        {
            return Err(RestoreError::TargetExists {
                target: promoted.to_string(),
                detail: " (a promoted blob of the same second)".into(),
            });
        }
        tracing::info!(disk = %self.disk.name, restore_point = %chosen.snapshot, promoted = %promoted, "promoting the restore point");

        // 1. Promote.
        let started = Instant::now();
        let point = SnapshotId::new(chosen.snapshot.clone());
        let meta = |state| tags::restored(state, &self.disk.name, &point, None);
        self.copy(
            "promote",
            &promoted,
            &backup,
            Some(&chosen.snapshot),
            &meta(RestoreState::InProgress),
        )
        .await?;
        let promoted_meta = tags::restored(
            RestoreState::Promoted,
            &self.disk.name,
            &point,
            Some(&SnapshotId::new(chosen.source_snapshot.clone())),
        );
        if let Err(e) = self.blobs.set_metadata(&promoted, &promoted_meta).await {
            self.remove(&promoted, None).await;
            return Err(blob_err(format!("tag {promoted}"))(e));
        }
        let promote_seconds = started.elapsed().as_secs_f64();

        // 2. Copy to the target.
        let started = Instant::now();
        tracing::info!(disk = %self.disk.name, target = %req.target, "copying the promoted blob to the target");
        let copied = async {
            self.blobs
                .ensure_container(&req.target)
                .await
                .map_err(blob_err(format!("container of {}", req.target)))?;
            // With --force over a blob that is itself the destination of a pending copy,
            // ours would be refused: abort that one first.
            if let Some(p) = self
                .blobs
                .properties(&req.target, None)
                .await
                .map_err(blob_err(format!("check target {}", req.target)))?
            {
                if let Some((id, CopyStatus::Pending { .. })) = p.copy {
                    self.blobs
                        .abort_copy(&req.target, &id)
                        .await
                        .map_err(blob_err(format!("abort copy to {}", req.target)))?;
                }
            }
            self.copy(
                "restore copy",
                &req.target,
                &promoted,
                None,
                &meta(RestoreState::InProgress),
            )
            .await?;
            if let Err(e) = self
                .blobs
                .set_metadata(&req.target, &meta(RestoreState::Complete))
                .await
            {
                // The copy ended, so the target holds the restored bytes but not the tag that
                // says so: it is no longer the operator's old blob, and not a finished restore.
                self.remove(&req.target, None).await;
                return Err(blob_err(format!("tag {}", req.target))(e));
            }
            Ok(())
        }
        .await;
        if let Err(e) = copied {
            // `copy` removes the target itself once its copy has started; a failure before that
            // (container, pending copy, Copy Blob refused) must leave an existing target that
            // --force would have replaced exactly as it was. The promoted blob is always ours.
            self.remove(&promoted, None).await;
            return Err(e);
        }
        // The VM guest state of a Trusted Launch disk goes beside the target, copied by the
        // service from the backup's copy (checked against its record by the preflight).
        let guest_state = match &chosen.guest_state {
            Some(Ok(g)) => {
                let dest = guest_state_target(&req.target);
                let copy = BlobRef {
                    blob: g.blob.clone(),
                    ..backup.clone()
                };
                let copied = self
                    .copy(
                        "guest state copy",
                        &dest,
                        &copy,
                        None,
                        &meta(RestoreState::Complete),
                    )
                    .await;
                if let Err(e) = copied {
                    self.remove(&promoted, None).await;
                    return Err(e);
                }
                Some(dest)
            }
            _ => None,
        };
        let copy_seconds = started.elapsed().as_secs_f64();

        // 3. Rebase, or clean up.
        let rebased = match &req.rebase {
            Some(rb) => Some(self.rebase(rb, &req.target, &promoted).await?),
            None => {
                self.blobs
                    .delete_blob(&promoted)
                    .await
                    .map_err(blob_err(format!("delete the promoted blob {promoted}")))?;
                None
            }
        };
        Ok(RestoreReport {
            disk: self.disk.name.clone(),
            restore_point: chosen.snapshot,
            source_snapshot: chosen.source_snapshot,
            size: chosen.size,
            promoted,
            target: req.target.clone(),
            promote_seconds,
            copy_seconds,
            promoted_kept: rebased.is_some(),
            rebased,
            guest_state,
        })
    }

    /// Copies `source` (or a snapshot of it) over `dest` with `metadata`, polling until the
    /// copy ends. On failure or interruption the copy is aborted and `dest` deleted.
    async fn copy(
        &self,
        work: &'static str,
        dest: &BlobRef,
        source: &BlobRef,
        snapshot: Option<&str>,
        metadata: &Metadata,
    ) -> Result<(), RestoreError> {
        let source_label = match snapshot {
            Some(s) => format!("{source} snapshot {s}"),
            None => source.to_string(),
        };
        let copy_id = self
            .blobs
            .start_copy(dest, source, snapshot, metadata, &IfBlob::Any)
            .await
            .map_err(blob_err(format!("copy {source_label} to {dest}")))?;
        let progress = |copied: u64, total: u64| {
            let pct = (copied * 100).checked_div(total).unwrap_or(0);
            tracing::info!(dest = %dest, copied, total, "copy {pct}% done");
            if let Some(p) = &self.progress {
                p.report(work, copied, total);
            }
        };
        let end = match copy::wait(
            self.blobs,
            dest,
            &copy_id,
            self.poll,
            self.copy_stall,
            &self.stop,
            progress,
        )
        .await
        {
            Ok(end) => end,
            Err(e) => {
                self.remove(dest, Some(&copy_id)).await;
                return Err(blob_err(format!("status of the copy to {dest}"))(e));
            }
        };
        let failed = |status: String| RestoreError::CopyFailed {
            source_blob: source_label.clone(),
            dest: dest.to_string(),
            copy_id: copy_id.clone(),
            status,
            then: format!("{dest} was removed"),
        };
        match end {
            CopyWait::Ended(CopyEnd::Success) => {
                if let Some(p) = &self.progress {
                    p.complete();
                }
                Ok(())
            }
            CopyWait::Ended(CopyEnd::Failed(why)) => {
                self.remove(dest, None).await;
                Err(failed(format!("failed: {why}")))
            }
            CopyWait::Ended(CopyEnd::Aborted(why)) => {
                self.remove(dest, None).await;
                Err(failed(format!("was aborted: {why}")))
            }
            CopyWait::Ended(CopyEnd::Gone) => {
                self.remove(dest, Some(&copy_id)).await;
                Err(failed("is no longer reported on the destination".into()))
            }
            CopyWait::Ended(CopyEnd::Stalled(stall)) => {
                self.remove(dest, Some(&copy_id)).await;
                Err(failed(stall.to_string()))
            }
            CopyWait::Stopped => {
                self.remove(dest, Some(&copy_id)).await;
                Err(RestoreError::Interrupted {
                    dest: dest.to_string(),
                })
            }
        }
    }

    /// Best-effort cleanup of a blob this restore wrote: abort its copy, delete it. A failure
    /// is logged; the blob still carries `snapback_restore = in-progress`.
    async fn remove(&self, blob: &BlobRef, copy_id: Option<&str>) {
        if let Some(id) = copy_id {
            if let Err(e) = self.blobs.abort_copy(blob, id).await {
                tracing::warn!(blob = %blob, error = %e, "cannot abort the copy");
            }
        }
        if let Err(e) = self.blobs.delete_blob(blob).await {
            tracing::warn!(blob = %blob, error = %e, "cannot delete the unfinished restore blob; it is tagged snapback_restore=in-progress, delete it by hand");
        }
    }

    /// Starts the new chain: `S(0)` of the restored disk, `B(0)` of the promoted blob (equal
    /// bytes: both are copies of the same restore point), recorded as a finished cycle.
    async fn rebase(
        &self,
        rb: &Rebase,
        target: &BlobRef,
        promoted: &BlobRef,
    ) -> Result<RebasedChain, RestoreError> {
        let tag = format!("rebase{:010x}", rand::random::<u64>() >> 24);
        // The new disk's lease, as its cycles will take it: the chain is recorded in its lock
        // blob before anything of it is made.
        let lease = match &self.leasing {
            Some(l) => Some(l.acquire(self.blobs, &rb.name, promoted).await?),
            None => None,
        };
        let made = self
            .start_rebased_chain(rb, target, promoted, &tag, lease.as_ref())
            .await;
        if let Some(lease) = lease {
            lease.release().await;
        }
        made
    }

    async fn start_rebased_chain(
        &self,
        rb: &Rebase,
        target: &BlobRef,
        promoted: &BlobRef,
        tag: &str,
        lease: Option<&DiskLease>,
    ) -> Result<RebasedChain, RestoreError> {
        // The restored disk is the new chain's source: S(0) is taken as a cycle would.
        let s0 = PageBlobSource::new(self.blobs, target)
            .in_chain(lease.map(DiskLease::chain))
            .take_snapshot(&rb.name, tag)
            .await
            .map_err(blob_err(format!(
                "first snapshot of the restored disk {target}"
            )))?
            .id;
        let b0 = finish_first_cycle(
            self.blobs,
            self.store,
            lease,
            FirstCycle {
                disk: &rb.name,
                source: target.to_string(),
                backup: promoted,
                tag,
                s0: &s0,
                guest_state: None,
                note: format!("started by restore of {}", self.disk.name),
                now: self.now,
            },
        )
        .await?;
        Ok(RebasedChain {
            name: rb.name.clone(),
            source: target.clone(),
            backup: promoted.clone(),
            source_snapshot: s0.as_str().to_string(),
            restore_point: b0.as_str().to_string(),
        })
    }
}

/// The Azure CLI commands that put a restored blob under a VM. Attaching disks is an ARM
/// operation, outside the storage API snapback uses, so it is printed, never run.
pub fn attach_commands(url: &str, account_name: &str, disk_name: &str) -> String {
    format!(
        "# Attach the restored disk (ARM operations; snapback does not run them).\n\
         # Fill in <RG>, <VM>, <SUBSCRIPTION> and, for a data disk, <OLD_DISK>.\n\
         #\n\
         # Managed disks: import the blob as a new managed disk, then swap it in.\n\
         az disk create --resource-group <RG> --name {disk_name} \\\n\
         \x20   --source {url} \\\n\
         \x20   --source-storage-account-id /subscriptions/<SUBSCRIPTION>/resourceGroups/<RG>/providers/Microsoft.Storage/storageAccounts/{account_name}\n\
         az vm deallocate --resource-group <RG> --name <VM>\n\
         az vm update --resource-group <RG> --name <VM> --os-disk {disk_name}        # OS disk\n\
         # or, for a data disk:\n\
         #   az vm disk detach --resource-group <RG> --vm-name <VM> --name <OLD_DISK>\n\
         #   az vm disk attach --resource-group <RG> --vm-name <VM> --name {disk_name}\n\
         az vm start --resource-group <RG> --name <VM>\n\
         #\n\
         # Unmanaged disks (the VM uses the page blob itself; a --rebase chain follows it):\n\
         #   az vm deallocate --resource-group <RG> --name <VM>\n\
         #   az vm update --resource-group <RG> --name <VM> --set storageProfile.osDisk.vhd.uri={url}\n\
         #   az vm unmanaged-disk attach --resource-group <RG> --vm-name <VM> --name {disk_name} --vhd-uri {url}   # data disk\n\
         #   az vm start --resource-group <RG> --name <VM>\n"
    )
}

/// Parses `--at`: an RFC 3339 time with offset (`2026-11-25T06:00:00Z`), or a civil date-time
/// (`2026-11-25T07:00`, `2026-11-25 07:00:00`) or date (`2026-11-25`, midnight) in `tz`.
///
/// A civil time repeated by a DST fall-back means its earlier instant; one skipped by a
/// spring-forward is read with the offset in force before the gap, so it lands as far after
/// the gap as it was into it (02:30 in a 02:00-03:00 gap is 03:30): the "compatible"
/// disambiguation of RFC 5545 and Temporal.
pub fn parse_time(s: &str, tz: &Tz) -> Result<Timestamp, String> {
    if let Some(t) = parse_timestamp(s).or_else(|| {
        // RFC 3339 without seconds (`2026-11-25T07:00+01:00`).
        DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M%#z")
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }) {
        return Ok(t);
    }
    const CIVIL: [&str; 4] = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ];
    let civil = CIVIL
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .or_else(|| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .map(|d| d.and_time(chrono::NaiveTime::MIN))
        });
    match civil {
        Some(dt) => local_to_utc(dt, tz).ok_or_else(|| {
            format!(
                "invalid time \"{s}\": out of range in time zone {}",
                tz.name()
            )
        }),
        None => Err(format!(
            "invalid time \"{s}\": use RFC 3339 (2026-11-25T06:00:00Z) or a local date-time \
             in the disk's time zone (2026-11-25T07:00)"
        )),
    }
}

/// The instant of a civil time in `tz`: the earlier one in a fold, and in a gap the civil
/// time read with the offset before the gap (see [`parse_time`]).
fn local_to_utc(dt: NaiveDateTime, tz: &Tz) -> Option<Timestamp> {
    if let Some(t) = tz.from_local_datetime(&dt).earliest() {
        return Some(t.with_timezone(&Utc));
    }
    // A gap: no offset `o` has `offset_at(dt - o) == o`. Reading `dt` with the offset after
    // the gap gives an instant before the transition (where the offset before is in force),
    // and with the offset before, one after it; the two offsets alternate.
    let offset_at = |o: i64| -> Option<i64> {
        let t = dt.checked_sub_signed(chrono::TimeDelta::seconds(o))?;
        Some(i64::from(
            tz.offset_from_utc_datetime(&t).fix().local_minus_utc(),
        ))
    };
    let a = offset_at(0)?;
    let b = offset_at(a)?;
    let before = a.min(b);
    dt.checked_sub_signed(chrono::TimeDelta::seconds(before))
        .map(|t| t.and_utc())
}

/// `20261125T070044Z` for unix seconds.
pub fn compact_time(unix: i64) -> String {
    DateTime::from_timestamp(unix, 0)
        .filter(|t| (-9999..=9999).contains(&chrono::Datelike::year(t)))
        .map(|t| t.format("%Y%m%dT%H%M%SZ").to_string())
        .unwrap_or_else(|| unix.to_string())
}

/// The `[[disk]]` stanza of a rebased chain, with the original disk's other settings.
pub fn config_stanza(chain: &RebasedChain, original: &DiskConfig) -> String {
    use crate::config::VerifyMode;
    let mut s = format!(
        "[[disk]]\nname = \"{}\"\nsource = \"{}\"\nbackup = \"{}\"\n",
        chain.name, chain.source, chain.backup
    );
    if let Some(sched) = &original.schedule {
        s.push_str(&format!("schedule = \"{sched}\"\n"));
    }
    s.push_str(&format!("tz = \"{}\"\n", original.tz));
    s.push_str(&format!("concurrency = {}\n", original.concurrency));
    if original.verify == VerifyMode::AfterCycle {
        s.push_str("verify = \"after-cycle\"\n");
    }
    let r = &original.retention;
    let rules: Vec<String> = [
        ("keep_last", r.keep_last),
        ("hourly", r.hourly),
        ("daily", r.daily),
        ("weekly", r.weekly),
        ("monthly", r.monthly),
    ]
    .iter()
    .filter_map(|(k, v)| v.map(|v| format!("{k} = {v}")))
    .collect();
    if !rules.is_empty() {
        s.push_str(&format!("retention = {{ {} }}\n", rules.join(", ")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fake::MemBlobs;

    const CONFIG: &str = "state_dir = \"/tmp/unused\"\n\
        [accounts.premium]\nendpoint = \"http://127.0.0.1:1/premium\"\nshared_key_env = \"X\"\n\
        [accounts.backup]\nendpoint = \"http://127.0.0.1:1/backup\"\nshared_key_env = \"X\"\n\
        [[disk]]\nname = \"d1\"\nsource = \"premium/vhds/d1.vhd\"\nbackup = \"backup/backups/d1\"\n\
        retention = { keep_last = 5, daily = 7 }\n";

    struct World {
        blobs: MemBlobs,
        store: StateStore,
        disk: DiskConfig,
        points: Vec<(String, Vec<u8>)>,
    }

    /// Three restore points of d1 whose content differs, made by hand as a cycle would.
    async fn world() -> World {
        let cfg = crate::config::Config::parse(CONFIG, std::path::Path::new("t.toml")).unwrap();
        let disk = cfg.disks[0].clone();
        let blobs = MemBlobs::new();
        let (src, bk) = (disk.blob_source().unwrap().clone(), disk.backup.clone());
        let mut points = Vec::new();
        for i in 0..3u8 {
            blobs.write(&src, u64::from(i) * 4096, &[i + 1; 4096]);
            blobs.write(&bk, u64::from(i) * 4096, &[i + 1; 4096]);
            let s = blobs
                .create_snapshot(&src, &tags::source_snapshot("d1", "c"))
                .await
                .unwrap();
            let b = blobs
                .create_snapshot(
                    &bk,
                    &tags::restore_point("d1", "c", &SnapshotId::new(s.clone())),
                )
                .await
                .unwrap();
            points.push((b.clone(), blobs.content(&bk, Some(&b)).unwrap()));
        }
        World {
            blobs,
            store: StateStore::open_in_memory().unwrap(),
            disk,
            points,
        }
    }

    fn restorer(w: &World) -> Restorer<'_> {
        let mut r = Restorer::new(&w.blobs, &w.store, &w.disk);
        r.poll = (Duration::from_millis(1), Duration::from_millis(2));
        r
    }

    fn req(point: PointSelector, target: &BlobRef) -> RestoreRequest {
        RestoreRequest {
            point,
            target: target.clone(),
            rebase: None,
            force: false,
        }
    }

    /// A restore of the world's third (newest) restore point to `target`.
    fn third_point(w: &World, target: &BlobRef) -> RestoreRequest {
        req(PointSelector::Snapshot(w.points[2].0.clone()), target)
    }

    #[tokio::test]
    async fn restores_a_middle_point_and_cleans_up_the_promoted_blob() {
        let w = world().await;
        let target = BlobRef::new("premium", "vhds", "d1-restored.vhd");
        let (b, want) = &w.points[1];
        let rep = restorer(&w)
            .restore(&req(PointSelector::Snapshot(b.clone()), &target))
            .await
            .unwrap();
        assert_eq!(w.blobs.content(&target, None).unwrap(), *want);
        assert!(!rep.promoted_kept);
        assert!(
            w.blobs.content(&rep.promoted, None).is_none(),
            "promoted blob removed"
        );
        let meta = w
            .blobs
            .properties(&target, None)
            .await
            .unwrap()
            .unwrap()
            .metadata;
        assert_eq!(tags::restore_state(&meta), Some(RestoreState::Complete));
    }

    #[tokio::test]
    async fn refuses_an_existing_target_without_force_and_writes_nothing() {
        let w = world().await;
        let target = BlobRef::new("premium", "vhds", "taken.vhd");
        w.blobs.write(&target, 0, &[9u8; 512]);
        let before = w.blobs.blob_names();
        let e = restorer(&w)
            .restore(&req(
                PointSelector::Snapshot(w.points[0].0.clone()),
                &target,
            ))
            .await
            .unwrap_err();
        assert!(e.is_usage() && e.to_string().contains("taken.vhd"), "{e}");
        assert_eq!(w.blobs.blob_names(), before);
        assert_eq!(w.blobs.content(&target, None).unwrap(), vec![9u8; 512]);
        // With force it is replaced.
        let mut r = req(PointSelector::Snapshot(w.points[0].0.clone()), &target);
        r.force = true;
        restorer(&w).restore(&r).await.unwrap();
        assert_eq!(w.blobs.content(&target, None).unwrap(), w.points[0].1);
    }

    /// `--force` replaces an existing target only once the copy to it has started: every
    /// failure before that leaves its bytes as they were.
    #[tokio::test]
    async fn force_keeps_the_existing_target_when_the_restore_fails_before_copying() {
        let mut w = world().await;
        let target = BlobRef::new("premium", "vhds", "kept.vhd");
        w.blobs.write(&target, 0, &[7u8; 1024]);
        let forced = |point| RestoreRequest {
            force: true,
            ..req(point, &target)
        };
        let before = w.blobs.blob_names();

        // The restore point does not exist.
        let e = restorer(&w)
            .restore(&forced(PointSelector::Snapshot(
                "2001-01-01T00:00:00.0000000Z".into(),
            )))
            .await
            .unwrap_err();
        assert!(matches!(e, RestoreError::UnknownRestorePoint { .. }), "{e}");
        assert_eq!(w.blobs.content(&target, None).unwrap(), vec![7u8; 1024]);

        // The promote copy fails (the backup cannot be read).
        w.blobs.fail_copies(1);
        let e = restorer(&w)
            .restore(&forced(PointSelector::Snapshot(w.points[1].0.clone())))
            .await
            .unwrap_err();
        assert!(matches!(e, RestoreError::CopyFailed { .. }), "{e}");
        assert_eq!(w.blobs.content(&target, None).unwrap(), vec![7u8; 1024]);

        // Copy Blob to the target is refused at its start.
        w.blobs.refuse_copy_to = Some(target.clone());
        let e = restorer(&w)
            .restore(&forced(PointSelector::Snapshot(w.points[1].0.clone())))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("kept.vhd"), "{e}");
        assert_eq!(w.blobs.content(&target, None).unwrap(), vec![7u8; 1024]);
        assert_eq!(w.blobs.blob_names(), before, "promoted blob removed");

        // Once the copy can start, --force replaces it.
        w.blobs.refuse_copy_to = None;
        restorer(&w)
            .restore(&forced(PointSelector::Snapshot(w.points[1].0.clone())))
            .await
            .unwrap();
        assert_eq!(w.blobs.content(&target, None).unwrap(), w.points[1].1);
    }

    #[tokio::test]
    async fn a_failed_copy_leaves_no_blob_behind() {
        let w = world().await;
        let target = BlobRef::new("premium", "vhds", "fails.vhd");
        let before = w.blobs.blob_names();
        w.blobs.fail_copies(1);
        let e = restorer(&w)
            .restore(&third_point(&w, &target))
            .await
            .unwrap_err();
        assert!(matches!(e, RestoreError::CopyFailed { .. }), "{e}");
        assert_eq!(w.blobs.blob_names(), before, "promoted blob removed");
        // Interrupted (Ctrl-C) while the promote copy is pending: aborted and removed.
        let mut r = restorer(&w);
        r.now += 1;
        w.blobs.fail_copies(0);
        let stop = CancellationToken::new();
        stop.cancel();
        r.stop = stop;
        let e = r.restore(&third_point(&w, &target)).await.unwrap_err();
        assert!(matches!(e, RestoreError::Interrupted { .. }), "{e}");
        assert_eq!(w.blobs.blob_names(), before, "interrupted: nothing left");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_copy_fails_naming_the_stall_and_leaves_no_blob_behind() {
        let mut w = world().await;
        w.blobs.copy_polls = u32::MAX;
        let target = BlobRef::new("premium", "vhds", "stalls.vhd");
        let before = w.blobs.blob_names();
        let mut r = restorer(&w);
        r.copy_stall = Duration::from_secs(5);
        let e = r.restore(&third_point(&w, &target)).await.unwrap_err();
        assert!(matches!(e, RestoreError::CopyFailed { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("stalled: pending at 0 of 12288 bytes copied, no progress for 5s"),
            "{msg}"
        );
        assert_eq!(
            w.blobs.blob_names(),
            before,
            "promoted blob aborted and removed"
        );
    }

    #[test]
    fn times_parse_with_offset_or_in_the_disk_time_zone() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        let want = parse_timestamp("2026-07-01T05:00:00Z").unwrap();
        assert_eq!(parse_time("2026-07-01T05:00:00Z", &paris), Ok(want));
        assert_eq!(parse_time("2026-07-01T07:00:00+02:00", &paris), Ok(want));
        assert_eq!(parse_time("2026-07-01T07:00", &paris), Ok(want));
        assert_eq!(parse_time("2026-07-01 07:00:00", &paris), Ok(want));
        assert_eq!(
            parse_time("2026-07-01", &paris),
            Ok(parse_timestamp("2026-06-30T22:00:00Z").unwrap())
        );
        assert!(parse_time("yesterday", &paris)
            .unwrap_err()
            .contains("yesterday"));
    }

    #[test]
    fn dst_folds_take_the_earlier_instant_and_gaps_shift_forward() {
        let paris: Tz = "Europe/Paris".parse().unwrap();
        let at = |s: &str| parse_timestamp(s).unwrap();
        // 25 Oct 2026: 02:30 happens at 00:30Z (CEST) and again at 01:30Z (CET).
        assert_eq!(
            parse_time("2026-10-25T02:30", &paris),
            Ok(at("2026-10-25T00:30:00Z"))
        );
        // 29 Mar 2026: 02:00-03:00 does not exist; 02:30 is read as 03:30 CEST.
        assert_eq!(
            parse_time("2026-03-29 02:30:00", &paris),
            Ok(at("2026-03-29T01:30:00Z"))
        );
        assert_eq!(
            parse_time("2026-03-29T03:00:00", &paris),
            Ok(at("2026-03-29T01:00:00Z"))
        );
        // A whole day skipped (Samoa, 30 Dec 2011, -10:00 to +14:00).
        let apia: Tz = "Pacific/Apia".parse().unwrap();
        assert_eq!(
            parse_time("2011-12-30", &apia),
            Ok(at("2011-12-30T10:00:00Z"))
        );
    }

    #[test]
    fn rfc3339_times_with_fractions_or_without_seconds() {
        let utc: Tz = "UTC".parse().unwrap();
        let t = parse_time("2026-11-25T07:00:09.7120000Z", &utc).unwrap();
        assert_eq!(t.timestamp_subsec_nanos(), 712_000_000);
        assert_eq!(
            parse_time("2026-11-25T08:00+01:00", &utc),
            Ok(parse_timestamp("2026-11-25T07:00:00Z").unwrap())
        );
    }

    #[test]
    fn compact_times() {
        assert_eq!(compact_time(1_795_590_044), "20261125T070044Z");
        assert_eq!(compact_time(0), "19700101T000000Z");
        assert_eq!(compact_time(i64::MAX), i64::MAX.to_string());
    }

    #[tokio::test]
    async fn at_picks_the_newest_point_captured_at_or_before() {
        let w = world().await;
        let r = restorer(&w);
        // Fake snapshot ids are 2026-01-01T00:00:00.<tick>Z; source snapshots precede points.
        let second_source = {
            let bk = w.disk.backup.clone();
            let snaps = w.blobs.list_snapshots(&bk).await.unwrap();
            tags::source_of(&snaps[1].metadata).unwrap().to_string()
        };
        let at = parse_timestamp(&second_source).unwrap();
        let got = r.choose(&PointSelector::At(at)).await.unwrap();
        assert_eq!(got.snapshot, w.points[1].0);
        let e = r
            .choose(&PointSelector::At(
                parse_timestamp("2025-01-01T00:00:00Z").unwrap(),
            ))
            .await
            .unwrap_err();
        assert!(matches!(e, RestoreError::NoRestorePointBefore { .. }));
    }

    #[tokio::test]
    async fn rebase_records_a_chain_whose_next_cycle_is_incremental() {
        let w = world().await;
        let target = BlobRef::new("premium", "vhds", "d1-new.vhd");
        let mut r = third_point(&w, &target);
        r.rebase = Some(Rebase {
            name: "d1-new".into(),
        });
        let rep = restorer(&w).restore(&r).await.unwrap();
        let chain = rep.rebased.unwrap();
        let state = w.store.disk("d1-new").unwrap().unwrap();
        assert_eq!(
            state.base_snapshot.as_deref(),
            Some(chain.source_snapshot.as_str())
        );
        assert_eq!(state.backup, rep.promoted.to_string());
        assert_eq!(w.store.restore_points("d1-new").unwrap().len(), 1);
        // Run a cycle of the new disk: it must be incremental and move one page.
        let spec = crate::cycle::runner::DiskSpec {
            name: "d1-new".into(),
            source: crate::config::DiskSource::Blob(target.clone()),
            backup: rep.promoted.clone(),
            concurrency: 2,
            copy_mode: crate::config::CopyMode::Client,
        };
        w.blobs.write(&target, 8192, &[0xAB; 512]);
        let clock = crate::model::SystemClock;
        let runner = crate::cycle::runner::Runner::new(&w.blobs, &w.store, &clock, &spec);
        let rec = runner.run_cycle().await.unwrap();
        assert_eq!(rec.kind, crate::model::record::CycleKind::Incremental);
        assert_eq!(rec.stats.bytes_written, 512);
        let (b1, _) = rec.phase.restore_point().unwrap();
        assert_eq!(
            w.blobs.content(&rep.promoted, Some(b1.as_str())),
            w.blobs.content(&target, None)
        );
        // A name already in the state database is refused before anything is written.
        let mut again = req(
            PointSelector::Snapshot(w.points[0].0.clone()),
            &BlobRef::new("premium", "vhds", "x.vhd"),
        );
        again.rebase = Some(Rebase {
            name: "d1-new".into(),
        });
        assert!(restorer(&w).restore(&again).await.unwrap_err().is_usage());
    }
}
