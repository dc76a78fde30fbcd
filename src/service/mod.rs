//! The operations behind the CLI commands, on a loaded config: run cycles, list restore
//! points, report status. The binary only parses arguments and prints. Beside them: the
//! preflight ([`check`]), the hooks run after a cycle ([`hooks`]), progress bars on a
//! terminal ([`terminal`]) and log output ([`logging`]).

pub mod check;
pub mod clients;
pub mod hooks;
pub mod logging;
pub mod terminal;

use crate::arm::Arm;
use crate::config::VerifyMode;
use crate::config::{Config, DiskConfig, DiskSource};
use crate::cycle::error::CycleError;
use crate::cycle::runner::{DiskSpec, Runner};
use crate::cycle::tuning::Limits;
use crate::model::progress::Progress;
use crate::model::record::{CycleRecord, CycleStats};
use crate::model::{Clock, SnapshotId, SystemClock};
use crate::ownership::lock::LockError;
use crate::ownership::DiskLease;
use crate::restore::retention::{PruneReport, RetentionError};
use crate::restore::verify::{VerifyError, VerifyReport};
use crate::restore::{RestoreError, RestoreReport, RestoreRequest, Restorer};
use crate::source::managed_disk::ManagedDiskSource;
use crate::source::{PageBlobSource, Source};
use crate::state::{StateError, StateStore};
use crate::storage::lease::LeaseBlobs;
use crate::storage::ExportBlobs;
use crate::storage::{BlobError, BlobRef, PageBlobs};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("unknown disk '{name}' (configured disks: {known})")]
    UnknownDisk { name: String, known: String },
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("disk {disk} is being backed up by another snapback process (lock {path} is held)")]
    Busy { disk: String, path: PathBuf },
    #[error("cannot use lock file {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("target {target}: no account '{account}' is configured (configured: {known})")]
    UnknownAccount {
        target: String,
        account: String,
        known: String,
    },
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Retention(#[from] RetentionError),
}

impl AppError {
    /// The command line named something that does not exist or is refused (exit code 2).
    pub fn is_usage(&self) -> bool {
        match self {
            AppError::UnknownDisk { .. } | AppError::UnknownAccount { .. } => true,
            AppError::Restore(e) => e.is_usage(),
            AppError::Verify(e) => e.is_usage(),
            _ => false,
        }
    }
}

pub fn disk_spec(d: &DiskConfig) -> DiskSpec {
    DiskSpec {
        name: d.name.clone(),
        source: d.source.clone(),
        backup: d.backup.clone(),
        concurrency: d.concurrency,
        copy_mode: d.copy_mode,
    }
}

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

/// One restore point, as `list` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestorePoint {
    /// The backup snapshot's timestamp, as Azure returns it.
    pub snapshot: String,
    /// The source snapshot it captured.
    pub source_snapshot: String,
    pub size: u64,
    /// The retention rules that keep it (`newest`, `last`, `hourly`, `daily`, `weekly`,
    /// `monthly`, `no-rules`, ...); empty: the next prune deletes it.
    pub kept_by: Vec<String>,
}

/// Per-disk status, as `status` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskStatus {
    pub disk: String,
    pub source: String,
    pub backup: String,
    /// Phase of the unfinished cycle, or "idle".
    pub phase: String,
    pub last_success: Option<String>,
    pub last_error: Option<String>,
    pub last_cycle: Option<LastCycle>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastCycle {
    pub kind: String,
    pub backup_snapshot: Option<String>,
    pub source_snapshot: Option<String>,
    pub bytes_written: u64,
    pub bytes_cleared: u64,
    pub ranges: u64,
    pub requests: u64,
    pub seconds: i64,
}

/// One line for `status`, standalone or from the daemon.
impl std::fmt::Display for LastCycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} -> {} ({} bytes written, {} cleared, {} ranges, {} requests, {}s)",
            self.kind,
            self.backup_snapshot.as_deref().unwrap_or("-"),
            self.bytes_written,
            self.bytes_cleared,
            self.ranges,
            self.requests,
            self.seconds
        )
    }
}

pub struct App {
    pub config: Config,
    pub blobs: Arc<dyn PageBlobs>,
    pub store: StateStore,
    pub clock: Arc<dyn Clock>,
    /// Page requests and page data in flight across all disks (`max_inflight_requests`,
    /// `max_buffer_mib`).
    pub limits: Arc<Limits>,
    /// The ARM client of the `[azure]` table (managed disks), or why it could not be made
    /// (reported by the managed disks only); None without an `[azure]` table.
    /// Behind its trait, so a test can give the in-memory fake (`arm::fake::MemArm`).
    pub arm: Option<Result<Arc<dyn Arm>, BlobError>>,
    /// Reads through the SAS URLs of managed disks' snapshots (and uploads through them).
    pub sas: Arc<dyn ExportBlobs>,
    /// Disk leases in Azure (one owner per disk across hosts); `None` for in-memory storage
    /// (a simulation has one process and no one to exclude).
    pub leases: Option<Arc<dyn LeaseBlobs>>,
    /// Who this process is, as written into the lock blobs it leases.
    pub holder: String,
    /// This installation's owner key (`<state_dir>/owner-id`): its lease ids derive from it.
    pub owner_key: u128,
    /// This replica's id in a cluster (`[cluster] replica_id`, else `$SNAPBACK_REPLICA_ID`,
    /// else `ownership::default_replica_id`); empty for in-memory storage.
    pub replica_id: String,
}

impl App {
    /// Opens the state database on the clients of the composition root
    /// ([`clients::Clients::open`], which reads the secrets).
    pub fn open(config: Config) -> Result<App, AppError> {
        let clients = clients::Clients::open(&config);
        let storage = clients.storage;
        let mut app = Self::with_cloud(config, storage.clone(), clients.cloud)?;
        app.owner_key = crate::ownership::owner_key(&app.config.state_dir).map_err(|source| {
            AppError::Lock {
                path: app.config.state_dir.join(crate::ownership::OWNER_KEY_FILE),
                source,
            }
        })?;
        app.replica_id = app
            .config
            .cluster
            .as_ref()
            .and_then(|c| c.replica_id.clone())
            .or_else(crate::config::cluster::replica_id_from_env)
            .unwrap_or_else(|| crate::ownership::default_replica_id(app.owner_key));
        // Lock blobs name the replica by the id its heartbeat and status use.
        app.holder = crate::ownership::holder_identity(Some(&app.replica_id));
        app.leases = Some(storage);
        Ok(app)
    }

    /// Storage given (tests: in memory); the `[azure]` clients from the composition root.
    pub fn with_blobs(config: Config, blobs: Arc<dyn PageBlobs>) -> Result<App, AppError> {
        let cloud = clients::Cloud::open(&config);
        Self::with_cloud(config, blobs, cloud)
    }

    fn with_cloud(
        config: Config,
        blobs: Arc<dyn PageBlobs>,
        cloud: clients::Cloud,
    ) -> Result<App, AppError> {
        let store = StateStore::open(&config.state_dir)?;
        let limits = Arc::new(Limits::new(
            config.max_inflight_requests,
            config.max_buffer_mib * 1024 * 1024,
        ));
        let arm = cloud.arm.map(|a| {
            a.map(|a| a as Arc<dyn Arm>).map_err(|e| {
                BlobError::local(
                    crate::storage::ErrorKind::Unusable,
                    crate::storage::Resource::Account("[azure]".into()),
                    e,
                )
            })
        });
        Ok(App {
            limits,
            config,
            blobs,
            store,
            clock: Arc::new(SystemClock),
            arm,
            sas: cloud.exports,
            leases: None,
            holder: crate::ownership::holder_identity(None),
            owner_key: 0,
            replica_id: String::new(),
        })
    }

    /// `restore --to-managed-disk`: restore point into a new managed disk (holds the disk's
    /// lock, as a restore to a blob does).
    pub async fn restore_to_managed_disk(
        &self,
        disk: &DiskConfig,
        req: &crate::restore::managed_disk::ManagedRestoreRequest,
    ) -> Result<crate::restore::managed_disk::ManagedRestoreReport, AppError> {
        let _lock = self.lock_disk(&disk.name)?;
        let arm = match &self.arm {
            Some(Ok(arm)) => arm,
            Some(Err(e)) => {
                return Err(AppError::Restore(RestoreError::Blob {
                    what: "the [azure] credential".into(),
                    source: e.clone(),
                }))
            }
            None => {
                return Err(AppError::Restore(RestoreError::ManagedTarget {
                    target: req.target.to_string(),
                    reason: "the config has no [azure] table".into(),
                }))
            }
        };
        Ok(crate::restore::managed_disk::restore(
            self.blobs.as_ref(),
            &self.store,
            disk,
            (arm, &self.sas),
            req,
            self.config.copy_stall_timeout,
            self.leasing(&disk.name).as_ref(),
        )
        .await?)
    }

    /// The source of a managed disk (None for a page-blob disk, which the runner reads
    /// through `blobs`).
    pub fn managed_source(
        &self,
        disk: &DiskConfig,
    ) -> Result<Option<ManagedDiskSource>, BlobError> {
        let DiskSource::Managed {
            disk: id,
            snapshot_group,
        } = &disk.source
        else {
            return Ok(None);
        };
        let arm = match &self.arm {
            Some(Ok(arm)) => arm.clone(),
            Some(Err(e)) => return Err(e.clone()),
            // check-config refuses a managed disk without [azure]; a hand-built config may not.
            None => {
                return Err(BlobError::local(
                    crate::storage::ErrorKind::Unusable,
                    crate::storage::Resource::Managed(id.to_string()),
                    "a managed disk needs an [azure] table",
                ))
            }
        };
        Ok(Some(ManagedDiskSource::new(
            arm,
            self.sas.clone(),
            id.clone(),
            snapshot_group.clone(),
        )))
    }

    /// The named disks (all when `names` is empty); an unknown name is an error naming it.
    pub fn select_disks(&self, names: &[String]) -> Result<Vec<DiskConfig>, AppError> {
        if names.is_empty() {
            return Ok(self.config.disks.clone());
        }
        names
            .iter()
            .map(|n| {
                self.config
                    .disk(n)
                    .cloned()
                    .ok_or_else(|| AppError::UnknownDisk {
                        name: n.clone(),
                        known: self.known_disks(),
                    })
            })
            .collect()
    }

    fn known_disks(&self) -> String {
        let names: Vec<_> = self.config.disks.iter().map(|d| d.name.as_str()).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// What a rebase needs to take `disk`'s lease (None without leases).
    fn leasing(&self, disk: &str) -> Option<crate::restore::Leasing> {
        Some(crate::restore::Leasing {
            leases: self.leases.clone()?,
            owner: self.owner(disk),
        })
    }

    /// Who this process is when it takes `disk`'s lease.
    pub fn owner(&self, disk: &str) -> crate::ownership::Owner {
        crate::ownership::Owner {
            holder: self.holder.clone(),
            writer: crate::ownership::writer_id(self.owner_key, disk),
            timing: crate::ownership::LeaseTiming::new(self.config.lease_duration),
            previous_id: None,
        }
    }

    /// Takes the disk's lock file: two processes never work on one disk. The lock is
    /// released when the returned file is dropped (or the process dies).
    pub fn lock_disk(&self, disk: &str) -> Result<File, AppError> {
        self.try_lock_disk(disk).map_err(|e| match e {
            LockError::Held { path, .. } => AppError::Busy {
                disk: disk.to_string(),
                path,
            },
            LockError::Io { path, source } => AppError::Lock { path, source },
        })
    }

    fn try_lock_disk(&self, disk: &str) -> Result<File, LockError> {
        crate::ownership::lock::try_lock(&self.lock_path(disk))
    }

    fn lock_path(&self, disk: &str) -> std::path::PathBuf {
        self.config
            .state_dir
            .join("locks")
            .join(format!("{disk}.lock"))
    }

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

    /// Restore points of a disk, oldest first, read from the backup account: the snapshots
    /// snapback tagged for this disk (so the list survives the loss of the state directory).
    pub async fn list(&self, disk: &DiskConfig) -> Result<Vec<RestorePoint>, AppError> {
        let snapshots =
            crate::restore::retention::restore_points(self.blobs.as_ref(), disk).await?;
        let points: Vec<_> = snapshots
            .iter()
            .map(|s| crate::restore::retention::Point::from_snapshot(&s.snapshot))
            .collect();
        let plan =
            crate::restore::retention::plan(&points, &disk.retention, self.clock.now(), &disk.tz);
        Ok(snapshots
            .into_iter()
            .zip(plan)
            .map(|(s, d)| RestorePoint {
                source_snapshot: s.source.to_string(),
                snapshot: s.snapshot,
                size: s.size,
                kept_by: d
                    .kept_by
                    .unwrap_or_default()
                    .iter()
                    .map(|r| r.as_str().to_string())
                    .collect(),
            })
            .collect())
    }

    /// Compares a restore point (the newest when `snapshot` is None) with its source snapshot.
    pub async fn verify(
        &self,
        disk: &DiskConfig,
        snapshot: Option<&str>,
    ) -> Result<VerifyReport, AppError> {
        let progress = Arc::new(Progress::default());
        let bar = crate::service::terminal::watch(&disk.name, progress.clone());
        let managed = self.managed_source(disk).map_err(|source| {
            AppError::Verify(VerifyError::Blob {
                disk: disk.name.clone(),
                source,
            })
        })?;
        let report = match (&managed, &disk.source) {
            (Some(m), _) => {
                let r = crate::restore::verify::verify(
                    self.blobs.as_ref(),
                    m,
                    disk,
                    snapshot,
                    Some(&progress),
                )
                .await;
                // The read SAS of S(n) is not needed after the comparison; only what this
                // verify granted is ended (another owner's cycle may be reading its own).
                if let Err(e) = m.end_granted().await {
                    tracing::warn!(disk = %disk.name, error = %e, "could not end read access to the source snapshot");
                }
                r
            }
            (None, DiskSource::Blob(b)) => {
                let source = PageBlobSource::new(self.blobs.as_ref(), b);
                crate::restore::verify::verify(
                    self.blobs.as_ref(),
                    &source,
                    disk,
                    snapshot,
                    Some(&progress),
                )
                .await
            }
            (None, DiskSource::Managed { .. }) => {
                unreachable!("managed_source answers Some for a managed disk")
            }
        };
        if let Some(bar) = bar {
            bar.finish().await;
        }
        Ok(report?)
    }

    /// Applies (or, `dry_run`, only plans) the disk's retention. A real prune holds the
    /// disk's lock, so it never races a cycle.
    pub async fn prune(&self, disk: &DiskConfig, dry_run: bool) -> Result<PruneReport, AppError> {
        let _lock = if dry_run {
            None
        } else {
            Some(self.lock_disk(&disk.name)?)
        };
        self.prune_locked(disk, dry_run).await
    }

    /// [`App::prune`] with the disk's lock already held (after a cycle).
    async fn prune_locked(
        &self,
        disk: &DiskConfig,
        dry_run: bool,
    ) -> Result<PruneReport, AppError> {
        Ok(crate::restore::retention::prune(
            self.blobs.as_ref(),
            &self.store,
            disk,
            self.clock.now().timestamp(),
            dry_run,
        )
        .await?)
    }

    /// Restores a restore point of `disk` (see [`crate::restore`]). Holds the disk's lock, so
    /// no cycle or prune deletes the restore point while it is being copied.
    pub async fn restore(
        &self,
        disk: &DiskConfig,
        req: &RestoreRequest,
        stop: CancellationToken,
    ) -> Result<RestoreReport, AppError> {
        if !self.config.accounts.contains_key(&req.target.account) {
            return Err(AppError::UnknownAccount {
                target: req.target.to_string(),
                account: req.target.account.clone(),
                known: self
                    .config
                    .accounts
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if let Some(other) = self
            .config
            .disks
            .iter()
            .find(|d| d.backup.clone() == req.target)
        {
            return Err(RestoreError::TargetIsBackup {
                target: req.target.to_string(),
                what: format!("the backup blob of disk {}", other.name),
            }
            .into());
        }
        if let Some(rb) = &req.rebase {
            if self.config.disk(&rb.name).is_some() {
                return Err(RestoreError::BadName {
                    name: rb.name.clone(),
                    reason: "a disk of that name is already configured".into(),
                }
                .into());
            }
        }
        let _lock = self.lock_disk(&disk.name)?;
        let mut r = Restorer::new(self.blobs.as_ref(), &self.store, disk);
        r.stop = stop;
        r.copy_stall = self.config.copy_stall_timeout;
        r.now = self.clock.now().timestamp();
        r.leasing = req.rebase.as_ref().and_then(|rb| self.leasing(&rb.name));
        let progress = Arc::new(Progress::default());
        r.progress = Some(progress.clone());
        let bar = crate::service::terminal::watch(&disk.name, progress);
        let report = r.restore(req).await;
        if let Some(bar) = bar {
            bar.finish().await;
        }
        Ok(report?)
    }

    /// The public URL of a blob (for `az disk create --source`), and its storage account's
    /// own name.
    pub fn blob_url(&self, blob: &BlobRef) -> Option<(String, String)> {
        let acct = self.config.accounts.get(&blob.account)?;
        let root = acct.endpoint.as_str().trim_end_matches('/');
        Some((
            format!("{root}/{}/{}", blob.container, blob.blob),
            acct.account_name.clone(),
        ))
    }

    /// Status of every configured disk, from the state database (no network).
    pub fn status(&self) -> Result<Vec<DiskStatus>, AppError> {
        let mut out = Vec::new();
        for d in &self.config.disks {
            let state = self.store.disk(&d.name)?.unwrap_or_default();
            let open = self.store.open_cycle(&d.name)?;
            let last = self.store.last_finished_cycle(&d.name)?;
            out.push(DiskStatus {
                disk: d.name.clone(),
                source: d.source.to_string(),
                backup: d.backup.to_string(),
                phase: open
                    .map(|c| c.phase.name().as_str().to_string())
                    .unwrap_or_else(|| "idle".into()),
                last_success: state.last_success_at.map(format_time),
                last_error: state.last_error,
                last_cycle: last.map(|c| last_cycle(&c)),
            });
        }
        Ok(out)
    }
}

fn last_cycle(c: &CycleRecord) -> LastCycle {
    let CycleStats {
        bytes_written,
        bytes_cleared,
        ranges,
        requests,
    } = c.stats;
    LastCycle {
        kind: c.kind.label().to_string(),
        backup_snapshot: c.phase.restore_point().map(|(b, _)| b.to_string()),
        source_snapshot: c.phase.source().map(SnapshotId::to_string),
        bytes_written,
        bytes_cleared,
        ranges,
        requests,
        seconds: c.finished_at().unwrap_or(c.started_at) - c.started_at,
    }
}

/// Unix seconds as RFC 3339 UTC.
pub fn format_time(t: i64) -> String {
    crate::model::from_unix(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
