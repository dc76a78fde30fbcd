//! The operations behind the CLI commands, on a loaded config: restore, verify, prune, the
//! disks' locks and owners. The binary only parses arguments and prints. Beside them: the
//! clients every command uses, built once ([`clients`], the composition root), one disk's
//! backup ([`backup`]), what `status` and `list` report ([`status`]), the preflight
//! ([`check`]), the hooks run after a cycle ([`hooks`]), progress bars on a terminal
//! ([`terminal`]) and log output ([`logging`]).

pub mod backup;
pub mod check;
pub mod clients;
pub mod hooks;
pub mod logging;
pub mod status;
pub mod terminal;

pub use backup::CycleReport;
pub use status::{format_time, DiskStatus, LastCycle, RestorePoint};

use crate::arm::Arm;
use crate::config::{Config, DiskConfig, DiskSource};
use crate::cycle::runner::DiskSpec;
use crate::cycle::tuning::Limits;
use crate::model::progress::Progress;
use crate::model::{Clock, SystemClock};
use crate::ownership::lock::LockError;
use crate::restore::retention::{PruneReport, RetentionError};
use crate::restore::verify::{VerifyError, VerifyReport};
use crate::restore::{RestoreError, RestoreReport, RestoreRequest, Restorer};
use crate::source::managed_disk::ManagedDiskSource;
use crate::source::PageBlobSource;
use crate::state::{StateError, StateStore};
use crate::storage::lease::LeaseBlobs;
use crate::storage::ExportBlobs;
use crate::storage::{BlobError, BlobRef, PageBlobs};
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
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
}
