//! The error policy: what a failed cycle asks of whoever runs the next one.
//!
//! On Azure almost nothing is permanent: a new role assignment takes minutes to apply, SAS
//! clocks skew, firewalls and private DNS come and go, a throttled account answers 429 or
//! 503 with `Retry-After`. So no class means "give up". A failure either needs someone to
//! act, and is then reported at once (the daemon's `status`, the `snapback_needs_operator`
//! metric, the `on_failure` hook's `SNAPBACK_ERROR_CLASS`) and retried on a slow capped
//! schedule, because it may also pass by itself; or it may pass soon and is retried soon; or
//! the service said when trying again can succeed, and the retry waits that long. The
//! daemon's backoff follows the class (`daemon::schedule`).
//!
//! The class comes from the error's variant and, for a storage error, its kind (which the
//! status and the parsed service code gave: `blob_error::classify`), never from message
//! text. Every match below names every variant and kind, so a new one must be classed.

use super::error::{CycleError, SnapshotLimit, PREMIUM_SNAPSHOT_INTERVAL};
use crate::ownership::OwnershipError;
use crate::storage::{BlobError, ErrorKind};
use std::time::Duration;

/// What a failed cycle asks of the next attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Someone has to act (a refused credential, a missing blob, a foreign backup, a limit
    /// that waiting does not lift, a local state or lock file that cannot be used): alert
    /// now; retry on a capped schedule, since what broke it may also mend by itself (a role
    /// assignment that was still propagating, a firewall rule); start afresh when the
    /// operator says so (SIGHUP, a manual `backup`).
    NeedsOperator,
    /// May pass by itself (503, throttling beyond the storage client's retries, a cut
    /// connection, a writer that raced this one, a copy that failed in the service): retried
    /// soon.
    Transient,
    /// The service said when trying again can succeed (a premium account's snapshot rate, a
    /// managed disk's limit with its wait): not before this long.
    RetryAfter(Duration),
}

impl ErrorClass {
    /// The class's name in `status`, hooks (`SNAPBACK_ERROR_CLASS`) and the docs.
    pub fn label(self) -> &'static str {
        match self {
            ErrorClass::NeedsOperator => "needs_operator",
            ErrorClass::Transient => "transient",
            ErrorClass::RetryAfter(_) => "retry_after",
        }
    }

    /// Whether someone is to be told now.
    pub fn needs_operator(self) -> bool {
        self == ErrorClass::NeedsOperator
    }
}

/// The class of a storage error that ended a cycle. The cycle has already handled what it
/// can (a vanished diff base, a lost answer, a raced write); what reaches here is what it
/// could not.
pub fn of_blob(e: &BlobError) -> ErrorClass {
    match e.kind {
        // A key, SAS, role or firewall that refuses us; a blob or container the config
        // names that is not there; a request the service refuses or finds wrong (our bug, or
        // a copy mode the account does not allow); no way to give the service read access;
        // an account that cannot be used at all.
        ErrorKind::Auth
        | ErrorKind::NotFound
        | ErrorKind::Refused
        | ErrorKind::BadRequest
        | ErrorKind::NoReadAccess
        | ErrorKind::Unusable => ErrorClass::NeedsOperator,
        // Throttling and outages after the client's own retries (which waited what each
        // `Retry-After` asked, capped: `azure::retry_after`); a garbled or cut answer comes
        // from the path more often than from the service; a conflict, an unmet condition, a
        // blob that appeared or was recreated meanwhile, a fencing token raised under us:
        // the next run looks again and decides afresh.
        ErrorKind::Throttled
        | ErrorKind::Transient
        | ErrorKind::BadResponse
        | ErrorKind::Conflict
        | ErrorKind::PreconditionFailed
        | ErrorKind::AlreadyExists
        | ErrorKind::Overwritten
        | ErrorKind::Fenced => ErrorClass::Transient,
    }
}

impl CycleError {
    /// What this failure asks of the next attempt (see [`ErrorClass`]). A cycle that another
    /// owner carries on ([`CycleError::is_owned_elsewhere`]) is not a failure at all: the
    /// daemon neither backs off nor alerts for it, whatever this says.
    pub fn class(&self) -> ErrorClass {
        use ErrorClass::*;
        match self {
            CycleError::Blob { source, .. } => of_blob(source),
            CycleError::SnapshotLimit { limit, .. } => match limit {
                SnapshotLimit::Rate => RetryAfter(PREMIUM_SNAPSHOT_INTERVAL),
                // 100 snapshots per blob: someone else's snapshots must go.
                SnapshotLimit::Count => NeedsOperator,
                // A managed disk's limit names its wait, or none when waiting does not help
                // (500 snapshots per disk).
                SnapshotLimit::Managed(m) => m.wait.map_or(NeedsOperator, RetryAfter),
            },
            CycleError::Ownership(e) => match &**e {
                OwnershipError::Blob { source, .. } => of_blob(source),
                // A record that cannot be read is never guessed at.
                OwnershipError::BadRecord { .. } => NeedsOperator,
                OwnershipError::Held { .. }
                | OwnershipError::Overwritten { .. }
                | OwnershipError::Unfenced { .. } => Transient,
            },
            // The local state database or lock file, a transition the machine refuses (a
            // bug), a premium account that refuses snapshot reads (copy_mode must change), a
            // backup blob snapback did not create.
            CycleError::State(_)
            | CycleError::Lock { .. }
            | CycleError::Machine(_)
            | CycleError::SnapshotReadRefused { .. }
            | CycleError::ForeignBackup { .. } => NeedsOperator,
            // Stopped on request, another process on this host, a copy the service keeps
            // failing, a lease lost or taken over: the next run resumes or starts again.
            CycleError::Interrupted { .. }
            | CycleError::Busy { .. }
            | CycleError::CopyKeepsFailing { .. }
            | CycleError::LeaseLost { .. }
            | CycleError::Fenced { .. } => Transient,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{BlobRef, Resource};

    fn service(status: u16, code: &str) -> BlobError {
        let r = Resource::blob(&BlobRef::new("premium", "vhds", "d1.vhd"));
        BlobError::service(r, status, Some(code.into()), String::new())
    }

    fn cycle(source: BlobError) -> CycleError {
        CycleError::Blob {
            disk: "d1".into(),
            source,
        }
    }

    #[test]
    fn refusals_need_an_operator() {
        for (status, code) in [
            (403, "AuthorizationFailure"),
            (403, "AuthenticationFailed"),
            (403, "AuthorizationPermissionMismatch"),
            (401, "NoAuthenticationInformation"),
            (404, "BlobNotFound"),
            (404, "ContainerNotFound"),
            (409, "FeatureNotSupported"),
            (400, "InvalidHeaderValue"),
        ] {
            let class = cycle(service(status, code)).class();
            assert_eq!(class, ErrorClass::NeedsOperator, "{status} {code}");
            assert!(class.needs_operator());
            assert_eq!(class.label(), "needs_operator");
        }
        let r = Resource::Account("backup".into());
        let unusable = BlobError::local(ErrorKind::Unusable, r, "SB_KEY is not set");
        assert_eq!(cycle(unusable).class(), ErrorClass::NeedsOperator);
        let foreign = CycleError::ForeignBackup {
            disk: "d1".into(),
            backup: BlobRef::new("backup", "backups", "d1"),
        };
        assert_eq!(foreign.class(), ErrorClass::NeedsOperator);
    }

    #[test]
    fn outages_and_throttling_are_transient() {
        for (status, code) in [
            (503, "ServerBusy"),
            (503, "ServiceUnavailable"),
            (500, "InternalError"),
            (500, "OperationTimedOut"),
            (429, "TooManyRequests"),
            (409, "SnapshotsPresent"),
            (412, "ConditionNotMet"),
        ] {
            let class = cycle(service(status, code)).class();
            assert_eq!(class, ErrorClass::Transient, "{status} {code}");
            assert!(!class.needs_operator());
        }
        let r = Resource::Account("backup".into());
        let cut = BlobError::local(ErrorKind::Transient, r, "connection reset");
        assert_eq!(cycle(cut).class(), ErrorClass::Transient);
        let copy = CycleError::CopyKeepsFailing {
            disk: "d1".into(),
            backup: BlobRef::new("backup", "backups", "d1"),
            starts: 3,
            reason: "aborted".into(),
        };
        assert_eq!(copy.class().label(), "transient");
    }

    #[test]
    fn limits_retry_after_their_wait_or_need_an_operator() {
        let limit = |e: BlobError| CycleError::SnapshotLimit {
            disk: "d1".into(),
            of: Box::new(crate::config::DiskSource::Blob(BlobRef::new(
                "premium", "vhds", "d1.vhd",
            ))),
            limit: SnapshotLimit::of(&e).expect("a premium snapshot limit"),
        };
        let rate = limit(service(409, "SnaphotOperationRateExceeded")).class();
        assert_eq!(rate, ErrorClass::RetryAfter(PREMIUM_SNAPSHOT_INTERVAL));
        assert_eq!(rate.label(), "retry_after");
        let count = limit(service(409, "SnapshotCountExceeded")).class();
        assert_eq!(count, ErrorClass::NeedsOperator);
    }
}
