//! What is done with restore points once they exist: this file restores one to a page blob
//! (below); [`managed_disk`] restores one to a new managed disk (with [`vhd`], the footer an
//! upload needs); [`verify`] proves one equal to its source snapshot; [`retention`] decides
//! which to keep and prunes the rest. Beside this file: [`chain`], the first cycle of a rebased
//! chain and the lease it is finished under (both rebases end there); [`time`], `--at` read in
//! the disk's time zone; [`commands`], what a restore prints for the operator.
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

pub mod chain;
pub mod commands;
pub mod managed_disk;
pub mod retention;
pub mod time;
pub mod verify;
pub mod vhd;

pub use chain::Leasing;
pub use commands::{attach_commands, config_stanza};
pub use time::{compact_time, parse_time};

use crate::config::DiskConfig;
use crate::model::progress::Progress;
use crate::model::tags::{self, RestoreState};
use crate::model::{format_timestamp, parse_timestamp, SnapshotId, Timestamp};
use crate::ownership::{DiskLease, OwnershipError};
use crate::source::{PageBlobSource, Source};
use crate::state::{StateError, StateStore};
use crate::storage::copy::{self, CopyEnd, CopyWait};
use crate::storage::{BlobError, BlobRef, CopyStatus, IfBlob, Metadata, PageBlobs};
use chain::{finish_first_cycle, FirstCycle};
use chrono::Utc;
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

#[cfg(test)]
mod tests;
