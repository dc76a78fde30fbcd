//! The check's report: the operations a row can name (with the RBAC role and SAS letter each
//! needs), a row's outcome, and the table `snapback check` prints. Apart because it is what
//! the command line and the JSON output see; the checks only fill it in.

use serde::Serialize;

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
    pub(super) fn writes(self) -> bool {
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
    pub(super) fn sas_permission(self) -> &'static str {
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

/// Whether every row passed.
pub fn all_passed(rows: &[CheckRow]) -> bool {
    rows.iter().all(|r| r.outcome == Outcome::Pass)
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
