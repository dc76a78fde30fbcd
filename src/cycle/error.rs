//! How a cycle fails: typed, with the disk and the storage error (its kind, resource and
//! service code), so callers decide on variants, never on message text.

use super::machine;
use crate::model::record::PhaseName;
use crate::state::StateError;
use crate::storage::{BlobError, BlobRef, ErrorKind, ServiceCode};
use std::time::Duration;

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
    /// A premium page-blob account refused a snapshot of the source (one per blob per 10
    /// minutes, or 100 per blob), or ARM refused a managed disk's snapshot or its access for
    /// one of Azure's incremental-snapshot limits (`crate::source::snapshot_limits`).
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
    /// A later owner took the disk over: the backup's sequence number is no longer this
    /// process's fencing token, so the service refused its write (412
    /// `SequenceNumberConditionNotMet`) or the token was found raised before a write that
    /// takes no sequence-number condition. Nothing more is written and nothing is recorded:
    /// the cycle is the new owner's now (docs/design.md, "Fencing").
    #[error(
        "disk {disk}: fenced in phase {phase}: another owner took the disk over (backup {backup} \
         no longer carries this process's token {token}); nothing more is written, the new \
         owner carries the cycle on"
    )]
    Fenced {
        disk: String,
        backup: BlobRef,
        phase: PhaseName,
        token: u64,
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
/// (<https://learn.microsoft.com/rest/api/storageservices/using-blob-service-operations-with-azure-premium-storage>),
/// and of managed disks' incremental snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotLimit {
    /// 409 `SnaphotOperationRateExceeded` (Azure's spelling): one snapshot per blob per 10
    /// minutes.
    Rate,
    /// 409 `SnapshotCountExceeded`: 100 snapshots per blob.
    Count,
    /// A managed disk's: creation rate, snapshots per disk, pending snapshots or SAS per
    /// disk family, with the resource, ARM's status and code and the wait.
    Managed(Box<crate::source::snapshot_limits::ManagedLimit>),
}

/// How long a premium account refuses a second snapshot of a blob.
pub const PREMIUM_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(600);

impl SnapshotLimit {
    /// The limit a refused Snapshot Blob hit, from its error code.
    pub fn of(e: &BlobError) -> Option<SnapshotLimit> {
        match (e.kind, e.service_code()) {
            (ErrorKind::Conflict, Some(ServiceCode::SnaphotOperationRateExceeded)) => {
                Some(SnapshotLimit::Rate)
            }
            (ErrorKind::Conflict, Some(ServiceCode::SnapshotCountExceeded)) => {
                Some(SnapshotLimit::Count)
            }
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
            SnapshotLimit::Managed(m) => m.fmt(f),
        }
    }
}

impl From<crate::ownership::OwnershipError> for CycleError {
    fn from(e: crate::ownership::OwnershipError) -> Self {
        CycleError::Ownership(Box::new(e))
    }
}

impl CycleError {
    /// The cycle stopped because a later owner took the disk over (see [`CycleError::Fenced`]).
    pub fn is_fenced(&self) -> bool {
        matches!(self, CycleError::Fenced { .. })
    }

    /// The disk is in another process's hands (its lease is held, or a later owner fenced
    /// this cycle off): a skip, not a failure.
    pub fn is_owned_elsewhere(&self) -> bool {
        self.is_fenced()
            || matches!(self, CycleError::Ownership(e) if matches!(**e, crate::ownership::OwnershipError::Held { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::snapshot_limits::{LimitKind, ManagedLimit, RECHECK};

    fn refused(kind: LimitKind, wait: Option<Duration>) -> CycleError {
        let disk = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Compute/disks/d1";
        let (id, group) = crate::config::DiskSource::parse_managed(disk).expect("a disk id");
        CycleError::SnapshotLimit {
            disk: "d1".into(),
            of: Box::new(crate::config::DiskSource::Managed {
                disk: id,
                snapshot_group: group,
            }),
            limit: SnapshotLimit::Managed(Box::new(ManagedLimit {
                kind,
                resource: format!("{disk}-sb-1"),
                status: 409,
                code: "OperationNotAllowed".into(),
                wait,
            })),
        }
    }

    #[test]
    fn a_managed_limit_retries_after_its_own_wait() {
        use crate::cycle::policy::ErrorClass;
        let e = refused(
            LimitKind::Rate { listed_recent: 7 },
            Some(Duration::from_secs(42)),
        );
        assert_eq!(e.class(), ErrorClass::RetryAfter(Duration::from_secs(42)));
        let text = e.to_string();
        assert!(text.starts_with("disk d1: /subscriptions/"), "{text}");
        assert!(
            text.contains("HTTP 409 OperationNotAllowed") && text.contains("42 s"),
            "{text}"
        );
        let e = refused(LimitKind::ActiveSas { active: 5 }, Some(RECHECK));
        assert_eq!(e.class(), ErrorClass::RetryAfter(RECHECK));
        // 500 per disk: waiting does not help; someone must delete snapshots.
        let e = refused(LimitKind::Count { listed: 500 }, None);
        assert_eq!(e.class(), ErrorClass::NeedsOperator);
    }
}
