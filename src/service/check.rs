//! `snapback check`: proves, per disk and against the real service, that every operation a
//! cycle and a restore need is permitted, before the first scheduled cycle finds out.
//!
//! Only scratch objects are used, and all of them are removed whatever happens:
//! - on the source, two snapshots tagged `snapback_check=<id>` (never `snapback_disk`, so no
//!   cycle ever mistakes or prunes them), deleted at the end; the source blob itself is only
//!   read;
//! - in the backup container, a page blob `<backup>.snapback-check-<id>` and one snapshot of
//!   it; the container is created (and deleted afterwards) when it does not exist yet.
//!
//! A failure names its cause and what is missing in terms an operator can act on: the role to
//! assign to a managed identity, the letter a SAS lacks, or the key that is refused.

use crate::azure::AzureBlobs;
use crate::config::Schedule;
use crate::config::{AccountConfig, AuthConfig, Config, CopyMode, DiskConfig};
use crate::model::pages::{ByteRange, PAGE_SIZE};
use crate::storage::{
    BlobError, BlobRef, ErrorKind, Fence, IfBlob, Metadata, NewPageBlob, PageBlobs, PageListQuery,
    Resource, ServiceCode,
};
use bytes::Bytes;
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

/// Metadata tag on every scratch snapshot `check` creates.
pub const TAG_CHECK: &str = "snapback_check";
/// Size of the scratch page blob.
const SCRATCH_SIZE: u64 = 8 * PAGE_SIZE;
/// The fencing token of the scratch blob: in the range cycles use (`ownership::FENCE_FLOOR`).
const CHECK_FENCE: u64 = crate::ownership::FENCE_FLOOR;

/// One operation of a disk's check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    /// Get Blob Properties on the source.
    SourceRead,
    /// Snapshot Blob on the source.
    SourceSnapshot,
    /// List Blobs with snapshots and metadata on the source.
    SourceList,
    /// Get Page Ranges with `prevsnapshot` between two source snapshots.
    SourceDiff,
    /// Get Blob (a range) of a source snapshot.
    SourceReadSnapshot,
    /// Get Account Information of the source account: a premium account takes one snapshot
    /// per blob every 10 minutes, which a more frequent schedule cannot keep (a warning).
    SourceAccountSku,
    /// Delete Blob of snapback's own source snapshots.
    SourceDeleteSnapshot,
    /// GET of a managed disk: its type (sku, logical sector size, security type) is one
    /// snapback backs up (docs/managed-disks.md, "Disk types").
    ManagedDiskType,
    /// Create Container (if missing) and Put Blob (page blob) in the backup container.
    BackupCreate,
    /// Put Page, Clear Page and resize on the backup blob.
    BackupWrite,
    /// Lease Blob (acquire, release) on the backup blob.
    BackupLease,
    /// Snapshot Blob on the backup blob (a restore point).
    BackupSnapshot,
    /// List the backup blob's snapshots.
    BackupList,
    /// Get Blob of a backup snapshot (verify, restore).
    BackupRead,
    /// Copy Blob from a source snapshot (seed, restore), and Put Page From URL when
    /// `copy_mode` is `server` or `auto`.
    Copy,
    /// Delete Blob of the backup's snapshots (retention) and of a blob (restore clean-up).
    BackupDelete,
    /// Removing the scratch objects.
    Cleanup,
    /// A managed disk's export settings (`networkAccessPolicy`, `publicNetworkAccess`,
    /// `dataAccessAuthMode`), read with `GET` of the disk: whether snapback can read its
    /// snapshots' exports at all.
    ManagedExport,
    /// A managed disk's schedule against Azure's 7 snapshots per disk per 5 minutes, and its
    /// listed snapshots against 500 per disk (`crate::source::managed_disk::limits`): warnings only.
    ManagedLimits,
}

impl Operation {
    pub fn label(self) -> &'static str {
        match self {
            Operation::SourceRead => "source: read properties",
            Operation::SourceSnapshot => "source: snapshot",
            Operation::SourceList => "source: list snapshots",
            Operation::SourceDiff => "source: diff (prevsnapshot)",
            Operation::SourceReadSnapshot => "source: read snapshot",
            Operation::SourceAccountSku => "source: account SKU (premium limits)",
            Operation::SourceDeleteSnapshot => "source: delete own snapshot",
            Operation::ManagedDiskType => "source: managed disk type",
            Operation::BackupCreate => "backup: create blob",
            Operation::BackupWrite => "backup: write (put/clear/resize)",
            Operation::BackupLease => "backup: lease",
            Operation::BackupSnapshot => "backup: snapshot",
            Operation::BackupList => "backup: list snapshots",
            Operation::BackupRead => "backup: read snapshot",
            Operation::Copy => "copy source -> backup",
            Operation::BackupDelete => "backup: delete snapshot/blob",
            Operation::Cleanup => "clean up scratch objects",
            Operation::ManagedExport => "source: managed disk export settings",
            Operation::ManagedLimits => "source: managed snapshot limits",
        }
    }

    /// Whether the operation changes data (which RBAC role it needs).
    fn writes(self) -> bool {
        !matches!(
            self,
            Operation::SourceRead
                | Operation::SourceList
                | Operation::SourceDiff
                | Operation::SourceReadSnapshot
                | Operation::SourceAccountSku
                | Operation::ManagedDiskType
                | Operation::BackupList
                | Operation::BackupRead
                | Operation::ManagedExport
                | Operation::ManagedLimits
        )
    }

    /// The SAS permission letters the operation needs.
    fn sas_permission(self) -> &'static str {
        match self {
            Operation::SourceRead
            | Operation::SourceDiff
            | Operation::SourceReadSnapshot
            | Operation::SourceAccountSku
            | Operation::BackupRead
            | Operation::ManagedExport
            | Operation::ManagedLimits
            | Operation::ManagedDiskType => "r",
            Operation::SourceList | Operation::BackupList => "l",
            Operation::SourceSnapshot | Operation::BackupSnapshot | Operation::BackupCreate => {
                "c' or 'w"
            }
            Operation::BackupWrite | Operation::BackupLease | Operation::Copy => "w",
            Operation::SourceDeleteSnapshot | Operation::BackupDelete | Operation::Cleanup => "d",
        }
    }
}

/// Outcome of one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    /// Not attempted: an operation it depends on failed.
    Skipped,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct CheckRow {
    pub disk: String,
    pub operation: Operation,
    /// The blob (or container) the operation was tried on.
    pub target: String,
    pub outcome: Outcome,
    /// Why it failed (or a note on a pass), empty otherwise.
    pub cause: String,
    /// What to grant or fix: a role, a SAS permission, a key.
    pub missing: String,
}

/// Checks each disk in turn (one at a time: a check is a handful of small requests).
pub async fn check(config: &Config, disks: &[DiskConfig]) -> Vec<CheckRow> {
    let blobs = AzureBlobs::new(config.accounts.values());
    let mut rows = Vec::new();
    for disk in disks {
        rows.extend(managed_disk_type(config, disk).await);
        rows.extend(check_disk(&blobs, config, disk).await);
    }
    rows
}

/// A managed disk's type, read from ARM: a type snapback refuses fails here, naming it and
/// why, before any cycle tries (nothing is written). None for a page blob.
async fn managed_disk_type(config: &Config, disk: &DiskConfig) -> Option<CheckRow> {
    let crate::config::DiskSource::Managed { disk: id, .. } = &disk.source else {
        return None;
    };
    let row = |outcome, cause: String, missing: &str| CheckRow {
        disk: disk.name.clone(),
        operation: Operation::ManagedDiskType,
        target: id.to_string(),
        outcome,
        cause,
        missing: missing.to_string(),
    };
    let Some(azure) = &config.azure else {
        return Some(row(
            Outcome::Fail,
            "a managed disk needs an [azure] table".into(),
            "[azure]",
        ));
    };
    let arm = match crate::arm::ArmClient::from_config(azure, crate::arm::ArmOptions::default()) {
        Ok(a) => a,
        Err(e) => return Some(row(Outcome::Fail, e.to_string(), "[azure] credential")),
    };
    Some(match arm.get_disk(id).await {
        Ok(d) => match crate::source::managed_disk::props::admit(&d) {
            Ok(kind) => row(Outcome::Pass, kind, ""),
            Err(e) => row(Outcome::Fail, e.to_string(), ""),
        },
        Err(e) => row(
            Outcome::Fail,
            e.to_string(),
            "Microsoft.Compute/disks/read on the disk",
        ),
    })
}

/// Whether every row passed.
pub fn all_passed(rows: &[CheckRow]) -> bool {
    rows.iter().all(|r| r.outcome == Outcome::Pass)
}

/// A disk's check: its rows, in the order the operations ran.
struct DiskCheck<'a> {
    config: &'a Config,
    disk: &'a DiskConfig,
    rows: Vec<CheckRow>,
}

impl DiskCheck<'_> {
    /// Records the result of `op` on `target`; returns the value on success.
    fn record<T>(
        &mut self,
        op: Operation,
        target: &BlobRef,
        result: Result<T, BlobError>,
    ) -> Option<T> {
        let (outcome, cause, missing, value) = match result {
            Ok(v) => (Outcome::Pass, String::new(), String::new(), Some(v)),
            Err(e) => {
                let missing = missing_for(op, self.account(target), &e);
                (Outcome::Fail, e.to_string(), missing, None)
            }
        };
        self.push(op, target, outcome, cause, missing);
        value
    }

    /// A row that says nothing to grant.
    fn note(&mut self, op: Operation, target: &BlobRef, outcome: Outcome, cause: String) {
        self.push(op, target, outcome, cause, String::new());
    }

    fn push(
        &mut self,
        op: Operation,
        target: &BlobRef,
        outcome: Outcome,
        cause: String,
        missing: String,
    ) {
        self.rows.push(CheckRow {
            disk: self.disk.name.clone(),
            operation: op,
            target: target.to_string(),
            outcome,
            cause,
            missing,
        });
    }

    fn skip(&mut self, ops: &[Operation], target: &BlobRef, because: Operation) {
        for op in ops {
            self.note(
                *op,
                target,
                Outcome::Skipped,
                format!("not tried: \"{}\" failed", because.label()),
            );
        }
    }

    fn account(&self, blob: &BlobRef) -> Option<&AccountConfig> {
        self.config.accounts.get(&blob.account)
    }
}

/// What to grant or fix for `op` failing with `e` on an account authorised as `account` says.
fn missing_for(op: Operation, account: Option<&AccountConfig>, e: &BlobError) -> String {
    let Some(account) = account else {
        return String::new();
    };
    let name = &account.account_name;
    let code = e.code.as_deref().unwrap_or("");
    match e.kind {
        ErrorKind::Auth => match &account.auth {
            AuthConfig::SharedKeyEnv(_) | AuthConfig::SharedKeyFile(_) => format!(
                "use a valid key of storage account '{name}' in {} (the service refused the signature: {code})",
                secret_source(&account.auth)
            ),
            AuthConfig::SasTokenEnv(_) | AuthConfig::SasTokenFile(_) => {
                if matches!(
                    e.service_code(),
                    Some(
                        ServiceCode::AuthorizationPermissionMismatch
                            | ServiceCode::AuthorizationResourceTypeMismatch
                            | ServiceCode::AuthorizationFailure
                    )
                ) {
                    format!(
                        "the SAS in {} lacks '{}' (or does not cover this container) for account '{name}': issue one with it",
                        secret_source(&account.auth),
                        op.sas_permission()
                    )
                } else {
                    format!(
                        "use a valid, unexpired SAS for account '{name}' in {}",
                        secret_source(&account.auth)
                    )
                }
            }
            AuthConfig::ManagedIdentity { .. } => format!(
                "assign role \"{}\" on storage account '{name}' to the identity",
                if op.writes() {
                    "Storage Blob Data Contributor"
                } else {
                    "Storage Blob Data Reader"
                }
            ),
        },
        ErrorKind::Unusable => format!("provide the secret of account '{}'", account.key),
        ErrorKind::NotFound if op == Operation::SourceRead => {
            "check the disk's source path: the blob does not exist".into()
        }
        _ => String::new(),
    }
}

fn secret_source(auth: &AuthConfig) -> String {
    match auth {
        AuthConfig::SharedKeyEnv(v) | AuthConfig::SasTokenEnv(v) => format!("${v}"),
        AuthConfig::SharedKeyFile(p) | AuthConfig::SasTokenFile(p) => p.display().to_string(),
        AuthConfig::ManagedIdentity { .. } => "managed identity".into(),
    }
}

/// What the check created, removed at the end in reverse order of creation.
#[derive(Default)]
struct Scratch {
    source_snapshots: Vec<String>,
    created_container: bool,
    backup_blob: bool,
    backup_snapshots: Vec<String>,
}

async fn check_disk(blobs: &AzureBlobs, config: &Config, disk: &DiskConfig) -> Vec<CheckRow> {
    let Some(source) = disk.blob_source().cloned() else {
        return check_managed(config, disk).await;
    };
    let backup = disk.backup.clone();
    let id = format!("{:08x}", rand::random::<u32>());
    let scratch = BlobRef::new(
        &backup.account,
        &backup.container,
        &format!("{}.snapback-check-{id}", backup.blob),
    );
    let mut cx = DiskCheck {
        config,
        disk,
        rows: Vec::new(),
    };
    let mut made = Scratch::default();
    run_source(blobs, &mut cx, &source, &id, &mut made).await;
    run_account_sku(blobs, &mut cx, &source).await;
    run_backup(blobs, &mut cx, &source, &scratch, &backup, &mut made).await;
    cleanup(blobs, &mut cx, &source, &scratch, made).await;
    cx.rows
}

/// A managed disk: its export settings, read with one `GET` of the disk (issue 17, item 4).
/// Its other ARM permissions are not exercised (docs/managed-disks.md, "Permissions"), so
/// the last row stays skipped and `check` of a managed disk exits 1.
async fn check_managed(config: &Config, disk: &DiskConfig) -> Vec<CheckRow> {
    let row = |operation, outcome, cause: String, missing: String| CheckRow {
        disk: disk.name.clone(),
        operation,
        target: disk.source.to_string(),
        outcome,
        cause,
        missing,
    };
    let not_checked = || {
        row(
            Operation::SourceRead,
            Outcome::Skipped,
            "a managed disk: its ARM permissions (snapshots, access) are not checked by `snapback check`"
                .into(),
            String::new(),
        )
    };
    let crate::config::DiskSource::Managed {
        disk: id,
        snapshot_group,
    } = &disk.source
    else {
        return vec![not_checked()];
    };
    let Some(azure) = &config.azure else {
        return vec![row(
            Operation::ManagedExport,
            Outcome::Fail,
            "a managed disk needs an [azure] table".into(),
            "add [azure] with a credential (docs/managed-disks.md)".into(),
        )];
    };
    let arm = crate::arm::ArmClient::from_config(azure, Default::default());
    let disk_read = match &arm {
        Ok(arm) => arm.get_disk(id).await,
        Err(e) => Err(crate::arm::ArmError::Credential {
            reason: e.to_string(),
        }),
    };
    let mut rows = Vec::new();
    match disk_read {
        Err(e) => rows.push(row(
            Operation::ManagedExport,
            Outcome::Fail,
            format!("cannot read the disk: {e}"),
            "Microsoft.Compute/disks/read on the disk for the [azure] identity (e.g. Disk Backup Reader)"
                .into(),
        )),
        Ok(d) => {
            let policy = &d.properties.export;
            let subject = id.to_string();
            let (outcome, cause, missing) = if let Some(b) = policy.blocked(&subject) {
                (
                    Outcome::Fail,
                    format!("{} = {}: its snapshots cannot be exported", b.property.name(), b.value),
                    b.fix(),
                )
            } else if policy.private_only() {
                let b = policy.blocked_by(&subject, crate::arm::ExportProperty::NetworkAccessPolicy);
                (
                    Outcome::Skipped,
                    "networkAccessPolicy = AllowPrivate: exported only through a private endpoint of its disk access; not provable from here".into(),
                    b.fix(),
                )
            } else if policy.needs_bearer() {
                (
                    Outcome::Pass,
                    format!(
                        "dataAccessAuthMode = AzureActiveDirectory: exports are read with the [azure] identity's token, which needs the '{}' role on the snapshot resource group (not proven here)",
                        crate::azure::sas_blob::DATA_OPERATOR_ROLE
                    ),
                    String::new(),
                )
            } else {
                (Outcome::Pass, String::new(), String::new())
            };
            rows.push(row(Operation::ManagedExport, outcome, cause, missing));
            // Azure's snapshot limits: warnings on a pass (the exit status is unchanged).
            let listed = match &arm {
                Ok(arm) => arm
                    .list_snapshots(snapshot_group, id, None)
                    .await
                    .map(|l| l.len())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let note = managed_limits_note(&disk.name, disk.schedule.as_ref(), listed, Utc::now());
            rows.push(row(Operation::ManagedLimits, Outcome::Pass, note, String::new()));
        }
    }
    rows.push(not_checked());
    rows
}

/// Source side: properties, two scratch snapshots, list, diff, read.
async fn run_source(
    blobs: &AzureBlobs,
    cx: &mut DiskCheck<'_>,
    source: &BlobRef,
    id: &str,
    made: &mut Scratch,
) {
    use Operation::*;
    let props = blobs.properties(source, None).await.and_then(|p| {
        p.ok_or_else(|| {
            BlobError::local(
                ErrorKind::NotFound,
                Resource::blob(source),
                "get properties",
            )
        })
    });
    let Some(props) = cx.record(SourceRead, source, props) else {
        cx.skip(
            &[SourceSnapshot, SourceList, SourceDiff, SourceReadSnapshot],
            source,
            SourceRead,
        );
        return;
    };
    let tags: Metadata = [(TAG_CHECK.to_string(), id.to_string())].into();
    let first = blobs.create_snapshot(source, &tags).await;
    let first = cx.record(SourceSnapshot, source, first);
    let Some(first) = first else {
        cx.skip(
            &[SourceList, SourceDiff, SourceReadSnapshot],
            source,
            SourceSnapshot,
        );
        return;
    };
    made.source_snapshots.push(first.clone());
    // The diff needs a newer snapshot to compare with the first.
    let second = match blobs.create_snapshot(source, &tags).await {
        Ok(s) => {
            made.source_snapshots.push(s.clone());
            Some(s)
        }
        Err(e) => {
            cx.record::<()>(SourceDiff, source, Err(e));
            None
        }
    };
    let listed = blobs.list_snapshots(source).await.and_then(|list| {
        if list.iter().any(|s| s.snapshot == first) {
            Ok(())
        } else {
            Err(BlobError::bad_response(
                Resource::blob(source),
                200,
                "SnapshotNotListed",
                format!("list snapshots: the new snapshot {first} is not in the list"),
            ))
        }
    });
    cx.record(SourceList, source, listed);
    let Some(second) = second else {
        cx.skip(&[SourceReadSnapshot], source, SourceSnapshot);
        return;
    };
    let query = PageListQuery {
        snapshot: Some(&second),
        prev_snapshot: Some(&first),
        max_results: Some(100),
        ..Default::default()
    };
    let diff = blobs.page_ranges(source, &query).await.map(|_| ());
    cx.record(SourceDiff, source, diff);
    if props.size == 0 {
        let why = "the source blob is empty: nothing to read".to_string();
        cx.note(SourceReadSnapshot, source, Outcome::Pass, why);
        return;
    }
    let range = ByteRange::new(0, props.size.min(PAGE_SIZE));
    let read = blobs.read(source, Some(&second), range).await.map(|_| ());
    cx.record(SourceReadSnapshot, source, read);
}

/// The source account's SKU against the disk's schedule: a warning (a note on a pass, so the
/// check's exit status is unchanged) when a premium account cannot keep the schedule.
async fn run_account_sku(blobs: &AzureBlobs, cx: &mut DiskCheck<'_>, source: &BlobRef) {
    let note = match blobs.account_sku(source).await {
        Ok(sku) => {
            let sku = sku.unwrap_or_default();
            let schedule = cx.disk.schedule.as_ref();
            premium_schedule_warning(&cx.disk.name, &source.account, &sku, schedule, Utc::now())
                .unwrap_or_else(|| format!("account '{}' is {sku}", source.account))
        }
        // Not a permission a cycle needs: say what was not checked, without failing.
        Err(e) => format!("{e}; the premium 10-minute snapshot limit was not checked"),
    };
    cx.note(Operation::SourceAccountSku, source, Outcome::Pass, note);
}

/// Premium page-blob accounts take one snapshot per blob every 10 minutes
/// (409 `SnaphotOperationRateExceeded`).
const PREMIUM_SNAPSHOT_INTERVAL: TimeDelta = TimeDelta::minutes(10);
/// Firings of a schedule scanned for its shortest gap (a day of minutes and more).
const SCHEDULE_SCAN: usize = 2000;

/// The warning for a disk whose schedule fires more often than every 10 minutes on a premium
/// account (SKU `Premium_*`), naming the disk, the account and the limit; None otherwise.
pub fn premium_schedule_warning(
    disk: &str,
    account: &str,
    sku: &str,
    schedule: Option<&Schedule>,
    from: DateTime<Utc>,
) -> Option<String> {
    if !sku.starts_with("Premium") {
        return None;
    }
    let schedule = schedule?;
    let gap = shortest_gap(schedule, from)?;
    (gap < PREMIUM_SNAPSHOT_INTERVAL).then(|| {
        format!(
            "warning: disk {disk}: schedule \"{}\" fires {} s apart at times, but account \
             '{account}' is {sku}, which allows one snapshot per blob every 10 minutes: \
             cycles closer than that fail with SnaphotOperationRateExceeded and wait 10 minutes",
            schedule.expr(),
            gap.num_seconds(),
        )
    })
}

/// The note on a managed disk's limits row: a warning when its schedule fires more than 7
/// times in some 5 minutes, or when its snapshot resource group lists 450 or more of its
/// snapshots (`listed`: the count, or why it is unknown).
pub fn managed_limits_note(
    disk: &str,
    schedule: Option<&Schedule>,
    listed: Result<usize, String>,
    from: DateTime<Utc>,
) -> String {
    use crate::source::managed_disk::limits::count_warning;
    use crate::source::snapshot_limits::{RATE_MAX, RATE_WINDOW};
    let mut notes = Vec::new();
    if let Some(schedule) = schedule {
        let most = most_firings_within(schedule, from, RATE_WINDOW);
        if most > RATE_MAX {
            notes.push(format!(
                "warning: disk {disk}: schedule \"{}\" fires {most} times within 5 minutes at \
                 times, but Azure allows {RATE_MAX} incremental snapshots per disk every 5 \
                 minutes: the cycles past the 7th are refused and wait for the window to pass",
                schedule.expr()
            ));
        }
    }
    match listed {
        Ok(n) => notes.extend(count_warning(disk, n)),
        Err(e) => notes.push(format!(
            "the disk's snapshots could not be listed ({e}): the 500-snapshot limit was not checked"
        )),
    }
    // Only this entry's schedule is known here.
    notes.push(
        "the 7-per-5-minutes limit counts every snapshot of the disk: other installations, \
         replicas' configs and other tools (Azure Backup, scripts) count too, and their \
         schedules cannot be seen from here"
            .into(),
    );
    notes.join("; ")
}

/// The most firings of `schedule` after `from` within any span shorter than `window`.
fn most_firings_within(
    schedule: &Schedule,
    from: DateTime<Utc>,
    window: std::time::Duration,
) -> usize {
    let window = TimeDelta::from_std(window).unwrap_or(TimeDelta::MAX);
    let times: Vec<DateTime<Utc>> = schedule
        .cron()
        .iter_after(from)
        .take(SCHEDULE_SCAN)
        .collect();
    let mut most = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= window {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

/// The shortest time between two consecutive firings of `schedule` after `from`.
fn shortest_gap(schedule: &Schedule, from: DateTime<Utc>) -> Option<TimeDelta> {
    let times: Vec<DateTime<Utc>> = schedule
        .cron()
        .iter_after(from)
        .take(SCHEDULE_SCAN)
        .collect();
    times.windows(2).map(|w| w[1] - w[0]).min()
}

/// Backup side, on the scratch blob: create, write, lease, snapshot, list, read, delete a
/// snapshot, copy from the source.
async fn run_backup(
    blobs: &AzureBlobs,
    cx: &mut DiskCheck<'_>,
    source: &BlobRef,
    scratch: &BlobRef,
    backup: &BlobRef,
    made: &mut Scratch,
) {
    use Operation::*;
    let rest = [
        BackupWrite,
        BackupLease,
        BackupSnapshot,
        BackupList,
        BackupRead,
        BackupDelete,
        Copy,
    ];
    let created = async {
        // Create Container as a cycle does; remove it afterwards only when it surely did not
        // exist before (a SAS without read leaves that unknown: then it stays).
        let existed = blobs.container_exists(backup).await.unwrap_or(true);
        blobs.ensure_container(backup).await?;
        made.created_container = !existed;
        // Created as a seed creates the backup blob: tagged and with a fencing token.
        let new = NewPageBlob {
            metadata: [(TAG_CHECK.to_string(), "backup".to_string())].into(),
            sequence_number: Some(CHECK_FENCE),
            condition: IfBlob::Absent,
        };
        blobs.create_page_blob(scratch, SCRATCH_SIZE, &new).await
    }
    .await;
    if cx.record(BackupCreate, scratch, created).is_none() {
        cx.skip(&rest, scratch, BackupCreate);
        return;
    }
    made.backup_blob = true;
    // The writes of an apply, each fenced as a cycle fences them (the token raised first, as
    // an owner raises it when it takes a disk over), and a resize If-Match.
    let write = async {
        blobs
            .set_sequence_number(scratch, CHECK_FENCE + 1, &IfBlob::Any)
            .await?;
        let fence = Some(Fence(CHECK_FENCE + 1));
        blobs
            .put_pages(
                scratch,
                0,
                Bytes::from(vec![0x5a; PAGE_SIZE as usize]),
                fence,
            )
            .await?;
        let etag = blobs
            .clear_pages(scratch, ByteRange::new(0, PAGE_SIZE), fence)
            .await?;
        blobs
            .resize(scratch, SCRATCH_SIZE + PAGE_SIZE, &IfBlob::Is(etag))
            .await
    }
    .await;
    cx.record(BackupWrite, scratch, write);
    let lease = blobs.lease_and_release(scratch).await;
    cx.record(BackupLease, scratch, lease);
    let tags: Metadata = [(TAG_CHECK.to_string(), "backup".to_string())].into();
    let snap = blobs.create_snapshot(scratch, &tags).await;
    match cx.record(BackupSnapshot, scratch, snap) {
        Some(snap) => {
            made.backup_snapshots.push(snap.clone());
            let listed = blobs.list_snapshots(scratch).await.map(|_| ());
            cx.record(BackupList, scratch, listed);
            let read = blobs
                .read(scratch, Some(&snap), ByteRange::new(0, PAGE_SIZE))
                .await
                .map(|_| ());
            cx.record(BackupRead, scratch, read);
            let deleted = blobs.delete_snapshot(scratch, &snap).await;
            if cx.record(BackupDelete, scratch, deleted).is_some() {
                made.backup_snapshots.clear();
            }
        }
        None => cx.skip(
            &[BackupList, BackupRead, BackupDelete],
            scratch,
            BackupSnapshot,
        ),
    }
    match made.source_snapshots.last().cloned() {
        Some(snap) => copy(blobs, cx, source, &snap, scratch).await,
        None => cx.skip(&[Copy], scratch, SourceSnapshot),
    }
}

/// Copy Blob from a source snapshot onto the scratch blob (aborted at once: a check does not
/// copy a whole disk), then Put Page From URL when the disk may use server copy.
async fn copy(
    blobs: &AzureBlobs,
    cx: &mut DiskCheck<'_>,
    source: &BlobRef,
    snapshot: &str,
    scratch: &BlobRef,
) {
    let tags: Metadata = [(TAG_CHECK.to_string(), "copy".to_string())].into();
    let started = async {
        let id = blobs
            .start_copy(scratch, source, Some(snapshot), &tags, &IfBlob::Any)
            .await?;
        blobs.abort_copy(scratch, &id).await
    }
    .await;
    if let Err(e) = started {
        // A source the backup service cannot be given read access to (a SAS-token account,
        // whose token is never forwarded; a managed identity) is seeded, and with
        // copy_mode = "auto"/"client" applied, through snapback: not a failure of the setup.
        if e.kind == ErrorKind::NoReadAccess && cx.disk.copy_mode != CopyMode::Server {
            cx.note(
                Operation::Copy,
                scratch,
                Outcome::Pass,
                format!("no server-side copy, cycles copy through snapback: {e}"),
            );
        } else {
            cx.record::<()>(Operation::Copy, scratch, Err(e));
        }
        return;
    }
    if cx.disk.copy_mode == CopyMode::Client {
        cx.record(Operation::Copy, scratch, Ok(()));
        return;
    }
    // Copy Blob may have left the scratch blob pending or resized: start from a fresh one.
    let server = async {
        blobs
            .create_page_blob(scratch, SCRATCH_SIZE, &NewPageBlob::default())
            .await?;
        blobs
            .put_pages_from_url(
                scratch,
                ByteRange::new(0, PAGE_SIZE),
                source,
                Some(snapshot),
                0,
                None,
            )
            .await
    }
    .await;
    match server {
        Ok(_) => cx.record(Operation::Copy, scratch, Ok(())),
        Err(e) if cx.disk.copy_mode == CopyMode::Auto && e.refuses_server_copy() => {
            cx.note(
                Operation::Copy,
                scratch,
                Outcome::Pass,
                format!("Copy Blob ok; Put Page From URL refused, cycles copy through snapback (copy_mode = \"auto\"): {e}"),
            );
            None
        }
        Err(e) => cx.record::<()>(Operation::Copy, scratch, Err(e)),
    };
}

/// Removes every scratch object; anything left is a failed row naming it.
async fn cleanup(
    blobs: &AzureBlobs,
    cx: &mut DiskCheck<'_>,
    source: &BlobRef,
    scratch: &BlobRef,
    made: Scratch,
) {
    let mut left = Vec::new();
    for snap in &made.backup_snapshots {
        if let Err(e) = blobs.delete_snapshot(scratch, snap).await {
            left.push(format!("{scratch} snapshot {snap}: {e}"));
        }
    }
    if made.backup_blob {
        if let Err(e) = blobs.delete_blob(scratch).await {
            left.push(format!("{scratch}: {e}"));
        }
    }
    if made.created_container {
        if let Err(e) = blobs.delete_container(scratch).await {
            left.push(format!(
                "container {}/{}: {e}",
                scratch.account, scratch.container
            ));
        }
    }
    let mut source_failed = false;
    for snap in &made.source_snapshots {
        let r = blobs.delete_snapshot(source, snap).await;
        if let Err(e) = &r {
            left.push(format!(
                "{source} snapshot {snap} (tagged {TAG_CHECK}): {e}"
            ));
        }
        source_failed |= r.is_err();
    }
    if !made.source_snapshots.is_empty() {
        let r = if source_failed {
            Err(BlobError::local(
                ErrorKind::Conflict,
                Resource::blob(source),
                "delete snapshots: not all were deleted, see the clean-up row",
            ))
        } else {
            Ok(())
        };
        cx.record(Operation::SourceDeleteSnapshot, source, r);
    }
    if left.is_empty() {
        cx.note(Operation::Cleanup, scratch, Outcome::Pass, String::new());
    } else {
        cx.note(
            Operation::Cleanup,
            scratch,
            Outcome::Fail,
            format!("left behind, delete by hand: {}", left.join("; ")),
        );
    }
}

/// The report as a table, one row per disk and operation.
pub fn render(rows: &[CheckRow]) -> String {
    use std::fmt::Write;
    let w_disk = rows.iter().map(|r| r.disk.len()).max().unwrap_or(4).max(4);
    let w_op = rows
        .iter()
        .map(|r| r.operation.label().len())
        .max()
        .unwrap_or(9)
        .max(9);
    let mut out = format!(
        "{:w_disk$}  {:w_op$}  RESULT  CAUSE / MISSING\n",
        "DISK", "OPERATION"
    );
    for r in rows {
        let result = match r.outcome {
            Outcome::Pass => "pass",
            Outcome::Fail => "FAIL",
            Outcome::Skipped => "skip",
        };
        let mut detail = r.cause.clone();
        if !r.missing.is_empty() {
            detail += &format!("; fix: {}", r.missing);
        }
        let line = format!(
            "{:w_disk$}  {:w_op$}  {result:6}  {detail}",
            r.disk,
            r.operation.label()
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let failed = rows.iter().filter(|r| r.outcome != Outcome::Pass).count();
    let _ = writeln!(
        out,
        "{} operation(s) checked, {} not permitted or not tried",
        rows.len(),
        failed
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn account(auth: &str) -> AccountConfig {
        let text = format!(
            "[accounts.bk]\nendpoint = \"https://mybackup.blob.core.windows.net\"\n{auth}\n"
        );
        Config::parse(&text, Path::new("t.toml"))
            .unwrap()
            .accounts
            .remove("bk")
            .unwrap()
    }

    fn denied(code: &str) -> BlobError {
        BlobError::service(
            Resource::Account("bk".into()),
            403,
            Some(code.into()),
            "put page".into(),
        )
    }

    #[test]
    fn a_schedule_more_frequent_than_10_minutes_on_premium_is_a_warning() {
        let from = DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let warn = |sku: &str, cron: &str| {
            let schedule = Schedule::parse(cron).unwrap();
            premium_schedule_warning("d1", "prem", sku, Some(&schedule), from)
        };
        let w = warn("Premium_LRS", "*/5 * * * *").expect("every 5 minutes on premium");
        assert!(
            w.contains("disk d1")
                && w.contains("'prem'")
                && w.contains("Premium_LRS")
                && w.contains("every 10 minutes")
                && w.contains("300 s"),
            "{w}"
        );
        // Only at times: every 5 minutes within one hour of the day still warns.
        assert!(warn("Premium_ZRS", "0,5 3 * * *").is_some());
        assert!(
            warn("Premium_LRS", "*/10 * * * *").is_none(),
            "10 minutes is kept"
        );
        assert!(warn("Premium_LRS", "0 */6 * * *").is_none());
        assert!(
            warn("Standard_RAGRS", "* * * * *").is_none(),
            "standard: no limit"
        );
        assert!(premium_schedule_warning("d1", "prem", "Premium_LRS", None, from).is_none());
    }

    #[test]
    fn a_managed_schedule_over_seven_per_five_minutes_is_a_warning() {
        let from = DateTime::parse_from_rfc3339("2026-12-07T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let note = |cron: &str, listed: Result<usize, String>| {
            let schedule = Schedule::parse(cron).unwrap();
            managed_limits_note("d1", Some(&schedule), listed, from)
        };
        // Every minute: 5 in 5 minutes, kept.
        let n = note("* * * * *", Ok(2));
        assert!(!n.contains("warning"), "{n}");
        assert!(n.contains("cannot be seen from here"), "{n}");
        // 8 firings within 5 minutes once a day: refused past the 7th.
        let n = note("0,1,2,3,4 3 * * *", Ok(2));
        assert!(!n.contains("warning"), "5 firings: {n}");
        let n = note("0,0,1,1,2,2,3,3 3 * * *", Ok(2));
        assert!(!n.contains("warning"), "cron minutes are a set: {n}");
        assert_eq!(
            most_firings_within(
                &Schedule::parse("*/30 * * * * *").unwrap(),
                from,
                std::time::Duration::from_secs(300)
            ),
            10
        );
        let n = note("*/30 * * * * *", Ok(2));
        assert!(
            n.contains("warning: disk d1") && n.contains("fires 10 times within 5 minutes"),
            "{n}"
        );
        // Near 500 snapshots.
        let n = note("0 * * * *", Ok(480));
        assert!(n.contains("480 snapshots") && n.contains("500"), "{n}");
        let n = note("0 * * * *", Err("HTTP 403".into()));
        assert!(n.contains("HTTP 403") && n.contains("not checked"), "{n}");
    }

    #[test]
    fn a_refusal_names_the_role_the_sas_letter_or_the_key() {
        let mi = account("managed_identity = true");
        let e = denied("AuthorizationPermissionMismatch");
        assert_eq!(
            missing_for(Operation::BackupWrite, Some(&mi), &e),
            "assign role \"Storage Blob Data Contributor\" on storage account 'mybackup' to the identity"
        );
        assert!(missing_for(Operation::SourceDiff, Some(&mi), &e)
            .contains("\"Storage Blob Data Reader\""));
        let sas = account("sas_token_file = \"/run/secrets/bk-sas\"");
        assert!(missing_for(Operation::SourceList, Some(&sas), &e)
            .starts_with("the SAS in /run/secrets/bk-sas lacks 'l'"));
        assert!(missing_for(Operation::BackupDelete, Some(&sas), &e).contains("lacks 'd'"));
        assert!(missing_for(
            Operation::BackupRead,
            Some(&sas),
            &denied("AuthenticationFailed")
        )
        .starts_with("use a valid, unexpired SAS"));
        let key = account("shared_key_env = \"BK_KEY\"");
        assert!(missing_for(
            Operation::SourceRead,
            Some(&key),
            &denied("AuthenticationFailed")
        )
        .starts_with("use a valid key of storage account 'mybackup' in $BK_KEY"));
    }
}
