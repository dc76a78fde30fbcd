//! Typed storage errors: what went wrong ([`ErrorKind`]), to which resource ([`Resource`]),
//! with the service's HTTP status and `x-ms-error-code` when it answered.
//!
//! Decisions (re-seed, take a new snapshot, fall back to client copy, treat as done) match
//! on the kind and the resource, never on message text: a 404 during Put Page From URL names
//! either the backup blob or the source snapshot, and only the second means "S(n) vanished".

use crate::model::secrets::redact;
use crate::model::{BlobRef, SnapshotId};
use std::fmt;

/// What went wrong, as callers decide on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The resource does not exist (404, or `PreviousSnapshotNotFound` for a diff base).
    NotFound,
    /// It exists already (409 `…AlreadyExists`).
    AlreadyExists,
    /// A condition of the request did not hold (412, `ConditionNotMet`).
    PreconditionFailed,
    /// The page blob's sequence number is no longer the writer's fencing token (412
    /// `SequenceNumberConditionNotMet` on a write carrying `x-ms-if-sequence-number-eq`):
    /// another owner took the disk over and raised it. The write did not land; the writer
    /// has lost the disk (see docs/design.md, "Fencing").
    Fenced,
    /// The resource is in a state that conflicts with the request (other 409s; the code says
    /// which, e.g. `SnapshotsPresent`, `NoPendingCopyOperation`).
    Conflict,
    /// Authentication or authorisation failed (401, 403).
    Auth,
    /// The service asked us to slow down (429, 503 `ServerBusy`), after the SDK's retries.
    Throttled,
    /// The network or the service failed in a way that may pass (5xx, connection errors),
    /// after the SDK's retries.
    Transient,
    /// The service refuses this kind of request: not implemented (501, 405), not supported
    /// (`FeatureNotSupported`), or a copy source it cannot read (`CannotVerifyCopySource`).
    Refused,
    /// The service found the request itself wrong (400, 416 and other 4xx): our bug, or a
    /// limit of the service; never a reason to change course silently.
    BadRequest,
    /// The service answered, but not as the protocol says (missing header, malformed body,
    /// short read).
    BadResponse,
    /// A diff against this snapshot is impossible: the blob was recreated (Put Blob or Copy
    /// Blob over it) since the snapshot was taken (409 `PreviousSnapshotOperationNotSupported`,
    /// `BlobOverwritten`, `BlobGenerationMismatch`). Every later diff against it fails the
    /// same way: only a full copy starts the chain again.
    Overwritten,
    /// The storage service cannot be given read access to a copy source (a managed-identity
    /// account cannot mint a SAS); the caller copies through itself instead.
    NoReadAccess,
    /// No request could be made: the account is not configured, or its secret could not be
    /// loaded, or a URL could not be built from the names given.
    Unusable,
}

/// The resource an error concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resource {
    /// An account, by its config key.
    Account(String),
    Container {
        account: String,
        container: String,
    },
    /// A base blob.
    Blob(BlobRef),
    /// One snapshot of a blob.
    Snapshot(BlobRef, SnapshotId),
    /// A managed disk or one of its snapshot resources, by its ARM resource id (its data is
    /// reached through a SAS URL, which errors never show).
    Managed(String),
}

impl Resource {
    pub fn blob(b: &BlobRef) -> Self {
        Resource::Blob(b.clone())
    }
    /// A snapshot, or the base blob when `snapshot` is None.
    pub fn of(b: &BlobRef, snapshot: Option<&str>) -> Self {
        match snapshot {
            Some(s) => Resource::Snapshot(b.clone(), SnapshotId::new(s)),
            None => Resource::Blob(b.clone()),
        }
    }
    pub fn container(b: &BlobRef) -> Self {
        Resource::Container {
            account: b.account.clone(),
            container: b.container.clone(),
        }
    }
    /// The account (config key) the resource lives in.
    pub fn account(&self) -> &str {
        match self {
            Resource::Account(a) => a,
            Resource::Container { account, .. } => account,
            Resource::Blob(b) | Resource::Snapshot(b, _) => &b.account,
            Resource::Managed(id) => id,
        }
    }
    /// Whether this is snapshot `id` of `blob`.
    pub fn is_snapshot(&self, blob: &BlobRef, id: &str) -> bool {
        matches!(self, Resource::Snapshot(b, s) if b == blob && s.as_str() == id)
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Account(a) => write!(f, "account '{a}'"),
            Resource::Container { account, container } => {
                write!(f, "container {account}/{container}")
            }
            Resource::Blob(b) => write!(f, "{b}"),
            Resource::Snapshot(b, s) => write!(f, "{b} snapshot {s}"),
            Resource::Managed(id) => f.write_str(id),
        }
    }
}

/// A storage error: kind, resource, and what the service said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobError {
    pub kind: ErrorKind,
    /// Boxed: errors travel in every `Result` of the storage layer; this keeps them small.
    pub resource: Box<Resource>,
    /// The HTTP status, when the service answered.
    pub status: Option<u16>,
    /// `x-ms-error-code`, when the service sent one.
    pub code: Option<String>,
    /// For people only: the operation and the service's message or the local cause, with
    /// every secret redacted (the constructors run it through [`crate::model::secrets::redact`]: an
    /// SDK or transport error quotes the request URL, which carries a SAS).
    pub detail: String,
}

impl std::error::Error for BlobError {}

impl fmt::Display for BlobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.resource;
        match self.kind {
            ErrorKind::NotFound => write!(f, "{r} not found")?,
            ErrorKind::AlreadyExists => write!(f, "{r} already exists")?,
            ErrorKind::Auth => write!(
                f,
                "authentication failed for account '{}' on {r}: check its key, SAS token or \
                 identity",
                r.account()
            )?,
            ErrorKind::PreconditionFailed => write!(f, "{r}: precondition failed")?,
            ErrorKind::Fenced => write!(
                f,
                "{r}: fenced: another owner took the disk over (its sequence number is no \
                 longer this writer's token)"
            )?,
            ErrorKind::Conflict => write!(f, "{r}: conflict")?,
            ErrorKind::Throttled => write!(f, "{r}: throttled by the service")?,
            ErrorKind::Transient => write!(f, "{r}: service unavailable")?,
            ErrorKind::Refused => write!(f, "{r}: refused by the service")?,
            ErrorKind::BadRequest => write!(f, "{r}: request rejected")?,
            ErrorKind::BadResponse => write!(f, "{r}: unexpected response")?,
            ErrorKind::NoReadAccess => write!(f, "{r}: the service cannot be given read access")?,
            ErrorKind::Overwritten => write!(
                f,
                "{r}: the blob was recreated (Put Blob or Copy Blob) since this snapshot; no \
                 diff against it is possible"
            )?,
            ErrorKind::Unusable => write!(f, "{r}: cannot make requests")?,
        }
        match (self.status, &self.code) {
            (Some(s), Some(c)) => write!(f, " ({s} {c})")?,
            (Some(s), None) => write!(f, " ({s})")?,
            (None, Some(c)) => write!(f, " ({c})")?,
            (None, None) => {}
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl BlobError {
    /// An error the service answered with: the kind follows from status and code.
    pub fn service(resource: Resource, status: u16, code: Option<String>, detail: String) -> Self {
        BlobError {
            kind: classify(status, code.as_deref()),
            resource: Box::new(resource),
            status: Some(status),
            code,
            detail: redact(&detail),
        }
    }

    /// An error without an HTTP answer (local cause or transport).
    pub fn local(kind: ErrorKind, resource: Resource, detail: impl Into<String>) -> Self {
        BlobError {
            kind,
            resource: Box::new(resource),
            status: None,
            code: None,
            detail: redact(&detail.into()),
        }
    }

    /// A response that does not follow the protocol.
    pub fn bad_response(resource: Resource, status: u16, code: &str, detail: String) -> Self {
        BlobError {
            kind: ErrorKind::BadResponse,
            resource: Box::new(resource),
            status: Some(status),
            code: Some(code.to_string()),
            detail: redact(&detail),
        }
    }

    /// Whether the error is about `resource`.
    pub fn concerns(&self, resource: &Resource) -> bool {
        *self.resource == *resource
    }

    /// The service's code, parsed ([`ServiceCode`]); None for a code no decision needs.
    pub fn service_code(&self) -> Option<ServiceCode> {
        self.code.as_deref().and_then(ServiceCode::parse)
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// Whether trying again later may succeed: throttling, an outage, or a request whose
    /// answer never came (it may have been applied: a non-idempotent request is retried only
    /// after looking for its effect).
    pub fn may_pass(&self) -> bool {
        matches!(self.kind, ErrorKind::Throttled | ErrorKind::Transient)
    }

    /// No complete answer came (the connection dropped, was cut mid-body or timed out): the
    /// storage client's retry policy re-sends a request that got no answer at all, but not
    /// one whose body was cut after its headers arrived, so an idempotent read is tried again
    /// by the caller ([`ErrorKind::Transient`] without an HTTP status).
    pub fn is_unanswered(&self) -> bool {
        self.kind == ErrorKind::Transient && self.status.is_none()
    }

    /// The service (or the account setup) refuses server-side copy: Put Page From URL is not
    /// implemented or not supported, the source is not readable by the destination service
    /// (401/403 on the copy, `CannotVerifyCopySource`), or no read access can be granted.
    /// `copy_mode = "auto"` then falls back to client copy. Throttling, outages, a missing
    /// backup blob or our own bugs are not refusals: they fail the apply (and are retried).
    pub fn refuses_server_copy(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Refused | ErrorKind::Auth | ErrorKind::NoReadAccess
        )
    }
}

/// The storage service's error codes (`x-ms-error-code`) snapback decides on, parsed once
/// from the text by [`ServiceCode::parse`]
/// (<https://learn.microsoft.com/rest/api/storageservices/blob-service-error-codes>). Any
/// other code is kept as text in [`BlobError::code`], for people only: a decision that needs
/// a code adds it here, so no code is compared as a string anywhere else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceCode {
    /// Get Page Ranges with a `prevsnapshot` that no longer exists.
    PreviousSnapshotNotFound,
    /// The destination service could not read a copy source.
    CannotVerifyCopySource,
    FeatureNotSupported,
    NotImplemented,
    /// The blob was recreated since the diff base was taken (also `BlobOverwritten`,
    /// `BlobGenerationMismatch`).
    PreviousSnapshotOperationNotSupported,
    BlobOverwritten,
    BlobGenerationMismatch,
    /// 503: the account is throttled.
    ServerBusy,
    /// 500: the service ran out of time, which the throttle counts as a slow-down signal.
    OperationTimedOut,
    /// Any `…AlreadyExists` (`BlobAlreadyExists`, `ContainerAlreadyExists`, …).
    AlreadyExists,
    /// A page write's `x-ms-if-sequence-number-eq` did not hold: fenced.
    SequenceNumberConditionNotMet,
    ConditionNotMet,
    /// 400 on a read of a snapshot of an older premium page-blob account.
    InvalidOperation,
    /// 409 on Snapshot Blob of a premium account (Azure's spelling): one per 10 minutes.
    SnaphotOperationRateExceeded,
    /// 409 on Snapshot Blob of a premium account: 100 per blob.
    SnapshotCountExceeded,
    /// 403: the signature (key or SAS) does not verify.
    AuthenticationFailed,
    /// 403: the credential verifies but may not do this: a SAS without the permission, a
    /// missing role assignment, or the account's firewall.
    AuthorizationFailure,
    AuthorizationPermissionMismatch,
    AuthorizationResourceTypeMismatch,
}

impl ServiceCode {
    /// The code snapback decides on, or None for any other (or a missing) code.
    pub fn parse(code: &str) -> Option<ServiceCode> {
        use ServiceCode::*;
        Some(match code {
            "PreviousSnapshotNotFound" => PreviousSnapshotNotFound,
            "CannotVerifyCopySource" => CannotVerifyCopySource,
            "FeatureNotSupported" => FeatureNotSupported,
            "NotImplemented" => NotImplemented,
            "PreviousSnapshotOperationNotSupported" => PreviousSnapshotOperationNotSupported,
            "BlobOverwritten" => BlobOverwritten,
            "BlobGenerationMismatch" => BlobGenerationMismatch,
            "ServerBusy" => ServerBusy,
            "OperationTimedOut" => OperationTimedOut,
            "SequenceNumberConditionNotMet" => SequenceNumberConditionNotMet,
            "ConditionNotMet" => ConditionNotMet,
            "InvalidOperation" => InvalidOperation,
            "SnaphotOperationRateExceeded" => SnaphotOperationRateExceeded,
            "SnapshotCountExceeded" => SnapshotCountExceeded,
            "AuthenticationFailed" => AuthenticationFailed,
            "AuthorizationFailure" => AuthorizationFailure,
            "AuthorizationPermissionMismatch" => AuthorizationPermissionMismatch,
            "AuthorizationResourceTypeMismatch" => AuthorizationResourceTypeMismatch,
            c if c.ends_with("AlreadyExists") => AlreadyExists,
            _ => return None,
        })
    }
}

/// The kind of an error the service answered with, from its status and `x-ms-error-code`
/// (<https://learn.microsoft.com/rest/api/storageservices/blob-service-error-codes>).
pub fn classify(status: u16, code: Option<&str>) -> ErrorKind {
    use ServiceCode as C;
    match (status, code.and_then(ServiceCode::parse)) {
        // Get Page Ranges with a `prevsnapshot` that no longer exists answers 409 with this
        // code: the diff base is not found.
        (_, Some(C::PreviousSnapshotNotFound)) => ErrorKind::NotFound,
        // The destination service could not read the copy source: for Put Page From URL and
        // Copy Blob this is how a refused (or missing) source shows; the status tells which.
        (404, Some(C::CannotVerifyCopySource)) => ErrorKind::NotFound,
        (_, Some(C::CannotVerifyCopySource | C::FeatureNotSupported | C::NotImplemented)) => {
            ErrorKind::Refused
        }
        (
            _,
            Some(
                C::PreviousSnapshotOperationNotSupported
                | C::BlobOverwritten
                | C::BlobGenerationMismatch,
            ),
        ) => ErrorKind::Overwritten,
        (_, Some(C::ServerBusy)) | (429, _) => ErrorKind::Throttled,
        (401 | 403, _) => ErrorKind::Auth,
        (404, _) => ErrorKind::NotFound,
        (409, Some(C::AlreadyExists)) => ErrorKind::AlreadyExists,
        (412, Some(C::SequenceNumberConditionNotMet)) => ErrorKind::Fenced,
        (412, _) | (_, Some(C::ConditionNotMet)) => ErrorKind::PreconditionFailed,
        (409, _) => ErrorKind::Conflict,
        (405 | 501, _) => ErrorKind::Refused,
        (408 | 500..=599, _) => ErrorKind::Transient,
        (400..=499, _) => ErrorKind::BadRequest,
        _ => ErrorKind::BadResponse,
    }
}

pub type BlobResult<T> = Result<T, BlobError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_code_give_the_kind() {
        use ErrorKind::*;
        let cases = [
            (404, Some("BlobNotFound"), NotFound),
            (404, Some("ContainerNotFound"), NotFound),
            (404, None, NotFound),
            (409, Some("PreviousSnapshotNotFound"), NotFound),
            (
                409,
                Some("PreviousSnapshotOperationNotSupported"),
                Overwritten,
            ),
            (409, Some("BlobOverwritten"), Overwritten),
            (409, Some("BlobGenerationMismatch"), Overwritten),
            (404, Some("CannotVerifyCopySource"), NotFound),
            (403, Some("CannotVerifyCopySource"), Refused),
            (409, Some("FeatureNotSupported"), Refused),
            (501, Some("NotImplemented"), Refused),
            (501, None, Refused),
            (400, Some("InvalidHeaderValue"), BadRequest),
            (416, Some("InvalidPageRange"), BadRequest),
            (405, None, Refused),
            (401, Some("NoAuthenticationInformation"), Auth),
            (403, Some("AuthenticationFailed"), Auth),
            (403, Some("AuthorizationPermissionMismatch"), Auth),
            (409, Some("BlobAlreadyExists"), AlreadyExists),
            (409, Some("ContainerAlreadyExists"), AlreadyExists),
            (409, Some("SnapshotsPresent"), Conflict),
            (409, Some("NoPendingCopyOperation"), Conflict),
            (412, Some("ConditionNotMet"), PreconditionFailed),
            (412, Some("LeaseIdMissing"), PreconditionFailed),
            (412, Some("SequenceNumberConditionNotMet"), Fenced),
            (429, None, Throttled),
            (503, Some("ServerBusy"), Throttled),
            (503, None, Transient),
            (500, Some("InternalError"), Transient),
            (408, None, Transient),
            (200, None, BadResponse),
        ];
        for (status, code, kind) in cases {
            assert_eq!(classify(status, code), kind, "{status} {code:?}");
        }
    }

    #[test]
    fn only_refusals_fall_back_to_client_copy() {
        let r = Resource::blob(&BlobRef::new("a", "c", "b"));
        let e = |s, c: &str| BlobError::service(r.clone(), s, Some(c.into()), String::new());
        assert!(e(501, "NotImplemented").refuses_server_copy());
        assert!(e(403, "CannotVerifyCopySource").refuses_server_copy());
        assert!(e(403, "AuthenticationFailed").refuses_server_copy());
        assert!(BlobError::local(ErrorKind::NoReadAccess, r.clone(), "").refuses_server_copy());
        assert!(!e(404, "BlobNotFound").refuses_server_copy());
        assert!(!e(400, "InvalidHeaderValue").refuses_server_copy());
        assert!(!e(503, "ServerBusy").refuses_server_copy());
        assert!(!e(500, "InternalError").refuses_server_copy());
        assert!(!BlobError::local(ErrorKind::Unusable, r, "").refuses_server_copy());
    }

    #[test]
    fn errors_never_carry_a_signature() {
        let r = Resource::blob(&BlobRef::new("premium", "vhds", "d1.vhd"));
        let cause = "error sending request for url \
                     (http://127.0.0.1:1/premium/vhds/d1.vhd?comp=snapshot&sv=2025&sig=SECRET)";
        for e in [
            BlobError::local(ErrorKind::Transient, r.clone(), cause),
            BlobError::service(r.clone(), 403, None, cause.to_string()),
            BlobError::bad_response(r, 200, "X", cause.to_string()),
        ] {
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains("SECRET"), "{shown}");
            assert!(shown.contains("sig=REDACTED"), "{shown}");
        }
    }

    #[test]
    fn messages_name_the_resource_status_and_code() {
        let b = BlobRef::new("backup", "backups", "d");
        let e = BlobError::service(
            Resource::of(&b, Some("S1")),
            404,
            Some("BlobNotFound".into()),
            "put 0-512".into(),
        );
        assert_eq!(
            e.to_string(),
            "backup/backups/d snapshot S1 not found (404 BlobNotFound): put 0-512"
        );
    }
}
