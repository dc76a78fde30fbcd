//! One disk's backup as `backup` and the daemon run it: its lock file and lease, the cycle
//! under them, verify and retention after it, the logged and recorded result, the hooks.
//! Apart from the other operations because it is the one that owns a disk for a while and
//! reports on it; they only read, or hold the lock file for one request.

use super::{disk_spec, App, AppError};
use crate::config::{DiskConfig, VerifyMode};
use crate::cycle::error::CycleError;
use crate::cycle::runner::Runner;
use crate::model::progress::Progress;
use crate::model::record::CycleRecord;
use crate::ownership::lock::LockError;
use crate::ownership::DiskLease;
use crate::restore::retention::PruneReport;
use crate::restore::verify::VerifyReport;
use crate::source::Source;
use crate::storage::BlobError;
use futures::StreamExt;
use std::fs::File;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// The result of one disk's cycle, as reported by `backup` and logged.
#[derive(Debug)]
pub struct CycleReport {
    pub disk: String,
    pub seconds: f64,
    pub result: Result<CycleRecord, CycleError>,
    /// `verify = "after-cycle"`: the new restore point checked against its source snapshot.
    pub verify: Option<Result<VerifyReport, AppError>>,
    /// Retention applied after the cycle (when the disk has retention rules).
    pub prune: Option<Result<PruneReport, AppError>>,
}

/// A cycle stopped because its lease was lost says so (not "interrupted").
fn fenced(
    result: Result<CycleRecord, CycleError>,
    lease: Option<&DiskLease>,
) -> Result<CycleRecord, CycleError> {
    match (result, lease) {
        (Err(CycleError::Interrupted { disk, phase }), Some(l)) if l.lost() => {
            Err(CycleError::LeaseLost {
                disk,
                blob: l.blob().clone(),
                phase,
            })
        }
        (r, _) => r,
    }
}

impl App {
    /// [`App::backup_disk_with_progress`] with no one watching its progress (tests, one-off
    /// runs).
    pub async fn backup_disk(&self, disk: &DiskConfig, stop: CancellationToken) -> CycleReport {
        self.backup_disk_with_progress(disk, stop, None).await
    }

    /// One disk's backup, publishing the cycle's phase and apply offset to `progress`: takes
    /// the disk's lock file and lease (`own`), runs (or resumes) its cycle under them
    /// (`cycle_under_lease`), verifies and prunes after a success
    /// (`after_cycle`), releases the lease, then logs and records the result
    /// (`log_result`) and runs the hooks (`run_hooks`).
    pub async fn backup_disk_with_progress(
        &self,
        disk: &DiskConfig,
        stop: CancellationToken,
        progress: Option<Arc<Progress>>,
    ) -> CycleReport {
        let started = Instant::now();
        // The lock file and the lease are held over the cycle and the retention after it: both
        // write. The lock file comes first: this installation's processes share one lease id.
        let fence = stop.child_token();
        let (result, lease, _lock) = match self.own(disk, fence.clone()).await {
            Ok((lock, lease)) => {
                let result = self
                    .cycle_under_lease(disk, fence, progress, lease.as_ref())
                    .await;
                (fenced(result, lease.as_ref()), lease, Some(lock))
            }
            Err(e) => (Err(e), None, None),
        };
        let seconds = started.elapsed().as_secs_f64();
        let (verify, prune) = match &result {
            Ok(rec) => self.after_cycle(disk, rec).await,
            Err(_) => (None, None),
        };
        if let Some(lease) = lease {
            lease.release().await;
        }
        self.log_result(disk, seconds, &result);
        self.run_hooks(disk, seconds, &result).await;
        CycleReport {
            disk: disk.name.clone(),
            seconds,
            result,
            verify,
            prune,
        }
    }

    /// Logs one line with a cycle's result; a failure is recorded as the disk's last error.
    fn log_result(
        &self,
        disk: &DiskConfig,
        seconds: f64,
        result: &Result<CycleRecord, CycleError>,
    ) {
        match result {
            Err(e) if e.is_fenced() => {
                // The disk was taken over while this process believed it owned it (it was
                // frozen or cut off past its lease): its writes are refused from now on.
                tracing::warn!(disk = %disk.name, result = "fenced", "{e}");
            }
            Err(e) if e.is_owned_elsewhere() => {
                // Not a failure: the disk is in another process's hands.
                tracing::info!(disk = %disk.name, result = "skipped", "{e}");
            }
            Ok(rec) => {
                let s = rec.stats;
                tracing::info!(
                    disk = %disk.name,
                    kind = rec.kind.label(),
                    seconds = format!("{seconds:.2}"),
                    bytes_written = s.bytes_written,
                    bytes_cleared = s.bytes_cleared,
                    ranges = s.ranges,
                    requests = s.requests,
                    restore_point = %rec.phase.restore_point().map(|(b, _)| b.as_str()).unwrap_or(""),
                    result = "ok",
                    "cycle finished"
                );
            }
            Err(e) => {
                if let Err(se) = self.store.record_error(
                    &disk.name,
                    &e.to_string(),
                    self.clock.now().timestamp(),
                ) {
                    tracing::error!(disk = %disk.name, error = %se, "cannot record the error");
                }
                tracing::error!(disk = %disk.name, seconds = format!("{seconds:.2}"), result = "error", error = %e, "cycle failed");
            }
        }
    }

    /// Runs the disk's hooks on a cycle's result, once it is persisted and logged.
    async fn run_hooks(
        &self,
        disk: &DiskConfig,
        seconds: f64,
        result: &Result<CycleRecord, CycleError>,
    ) {
        // After the result is persisted and logged: a hook can only add warnings. A cycle
        // stopped at a checkpoint (shutdown, window end) has no result yet, and a disk another
        // process owns had no cycle here: no hook.
        let hooks = self.config.hooks_for(disk);
        let no_result = match result {
            Err(CycleError::Interrupted { .. }) => true,
            Err(e) => e.is_owned_elsewhere(),
            Ok(_) => false,
        };
        if hooks != crate::config::Hooks::default() && !no_result {
            let event = crate::service::hooks::HookEvent::from_cycle(&disk.name, seconds, result);
            crate::service::hooks::run(&hooks, &event, &self.config.secret_env_vars()).await;
        }
    }

    /// After a successful cycle: verify its restore point (`verify = "after-cycle"`), then
    /// apply retention (when rules are configured), with the disk's lock file and lease still
    /// held. Failures are logged and recorded as the disk's last error; the cycle itself stays
    /// a success.
    #[allow(clippy::type_complexity)]
    async fn after_cycle(
        &self,
        disk: &DiskConfig,
        rec: &CycleRecord,
    ) -> (
        Option<Result<VerifyReport, AppError>>,
        Option<Result<PruneReport, AppError>>,
    ) {
        let record = |msg: String| {
            if let Err(se) = self
                .store
                .record_error(&disk.name, &msg, self.clock.now().timestamp())
            {
                tracing::error!(disk = %disk.name, error = %se, "cannot record the error");
            }
        };
        let verify = match (disk.verify, rec.phase.restore_point()) {
            (VerifyMode::AfterCycle, Some((point, _))) => {
                let r = self.verify(disk, Some(point.as_str())).await;
                match &r {
                    Ok(VerifyReport {
                        mismatch: None,
                        bytes_compared,
                        ..
                    }) => {
                        tracing::info!(disk = %disk.name, restore_point = %point, bytes = bytes_compared, "verify ok")
                    }
                    Ok(
                        v @ VerifyReport {
                            mismatch: Some(m), ..
                        },
                    ) => {
                        let msg = format!("verify: restore point {point} differs from source snapshot {} at offset {} ({})", v.source_snapshot, m.offset, m.detail);
                        tracing::error!(disk = %disk.name, "{msg}");
                        record(msg);
                    }
                    Err(e) => {
                        tracing::error!(disk = %disk.name, error = %e, "verify failed");
                        record(format!("verify: {e}"));
                    }
                }
                Some(r)
            }
            _ => None,
        };
        let prune = if crate::restore::retention::keeps_everything(&disk.retention) {
            None
        } else {
            let r = self.prune_locked(disk, false).await;
            if let Err(e) = &r {
                tracing::error!(disk = %disk.name, error = %e, "retention failed");
                record(format!("retention: {e}"));
            }
            Some(r)
        };
        (verify, prune)
    }

    /// Takes the disk's lock file, then its lease (when storage has leases); `fence` is
    /// cancelled if the lease is lost. The source is checked before the lease: a missing
    /// source creates nothing in the backup account (invariant 9), not even the lock blob.
    async fn own(
        &self,
        disk: &DiskConfig,
        fence: CancellationToken,
    ) -> Result<(File, Option<DiskLease>), CycleError> {
        let lock = self.try_lock_disk(&disk.name).map_err(|e| match e {
            LockError::Held { path, .. } => CycleError::Busy {
                disk: disk.name.clone(),
                path,
            },
            LockError::Io { path, source } => CycleError::Lock {
                disk: disk.name.clone(),
                path,
                source,
            },
        })?;
        let Some(leases) = &self.leases else {
            return Ok((lock, None));
        };
        // Known to the state first, so that a failed check below is recorded as the disk's
        // last error (a known disk's source and backup are left for the runner to compare).
        self.store.ensure_disk(
            &disk.name,
            &disk.source.to_string(),
            &disk.backup.to_string(),
        )?;
        let blob_err = |source| CycleError::Blob {
            disk: disk.name.clone(),
            source,
        };
        self.blobs
            .check_account(&disk.backup.account)
            .map_err(blob_err)?;
        // A page-blob source is checked before anything is created in the backup account (a
        // managed disk's source is checked by its first ARM request, which creates nothing).
        if let Some(source) = disk.source.blob() {
            self.blobs
                .check_account(&source.account)
                .map_err(blob_err)?;
            // A listing first: it answers a refused key with 403 and its error code, where a
            // HEAD of a missing blob may answer 404 whatever the key.
            self.blobs.list_snapshots(source).await.map_err(blob_err)?;
            if self
                .blobs
                .properties(source, None)
                .await
                .map_err(blob_err)?
                .is_none()
            {
                return Err(blob_err(BlobError::local(
                    crate::storage::ErrorKind::NotFound,
                    crate::storage::Resource::blob(source),
                    "the source blob does not exist",
                )));
            }
        }
        // The lease id this installation last proposed for the disk, kept beside its lock
        // file: a process killed while holding the lease left it (see `Owner::previous_id`).
        let id_file = self.lock_path(&disk.name).with_extension("lease");
        let mut owner = self.owner(&disk.name);
        owner.previous_id = std::fs::read_to_string(&id_file)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let lease = DiskLease::acquire(
            leases.clone(),
            self.blobs.as_ref(),
            &disk.name,
            &disk.backup,
            &owner,
            fence,
        )
        .await?;
        if let Err(e) = std::fs::write(&id_file, lease.lease_id()) {
            tracing::warn!(disk = %disk.name, file = %id_file.display(), error = %e, "cannot keep the lease id; a restart after a crash waits for the lease to expire");
        }
        Ok((lock, Some(lease)))
    }

    /// The cycle itself: the disk's source (a managed disk's, in the lease's chain) and a
    /// runner over it, fenced by the lease's token.
    async fn cycle_under_lease(
        &self,
        disk: &DiskConfig,
        stop: CancellationToken,
        progress: Option<Arc<Progress>>,
        lease: Option<&DiskLease>,
    ) -> Result<CycleRecord, CycleError> {
        let spec = disk_spec(disk);
        let managed = self
            .managed_source(disk)
            .map_err(|source| CycleError::Blob {
                disk: disk.name.clone(),
                source,
            })?
            .map(|m| {
                m.in_chain(lease.map(DiskLease::chain))
                    .with_progress(progress.clone())
            });
        let mut runner = Runner::new(self.blobs.as_ref(), &self.store, self.clock.as_ref(), &spec);
        runner.other_source = managed.as_ref().map(|m| m as &dyn Source);
        runner.stop = stop;
        runner.progress = progress;
        runner.limits = Some(self.limits.clone());
        runner.adopt_backup = disk.adopt_existing_backup;
        runner.copy_stall = self.config.copy_stall_timeout;
        if let Some(lease) = lease {
            runner.chain = Some(lease.chain().to_string());
            runner.fence = Some(crate::storage::Fence(lease.token()));
            runner.lease = Some(lease);
        }
        let cycle = runner.run_cycle().await;
        // An end of access the cycle started in the background and did not wait for (it
        // stopped before prune) lands under the lease, not after it.
        if let Some(m) = &managed {
            m.settle_ends().await;
        }
        cycle
    }

    /// Runs one cycle for each disk, at most `max_concurrent_cycles` at a time.
    pub async fn backup(&self, disks: &[DiskConfig], stop: CancellationToken) -> Vec<CycleReport> {
        futures::stream::iter(disks)
            .map(|d| async {
                let progress = Arc::new(Progress::default());
                let bar = crate::service::terminal::watch(&d.name, progress.clone());
                let report = self
                    .backup_disk_with_progress(d, stop.clone(), Some(progress))
                    .await;
                if let Some(bar) = bar {
                    bar.finish().await;
                }
                report
            })
            .buffer_unordered(self.config.max_concurrent_cycles.max(1))
            .collect()
            .await
    }
}
