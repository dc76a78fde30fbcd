//! Typed ARM errors: every one names the operation and the resource; callers decide on
//! [`ArmError::kind`], the HTTP status and ARM's error code, never on message text.

use crate::model::secrets::redact;

/// What went wrong, for decisions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArmErrorKind {
    /// 404: the resource (or its group) does not exist.
    NotFound,
    /// 409: a conflicting operation or state (e.g. the 5-SAS limit, a disk that exists).
    Conflict,
    /// 401/403: the token was refused or the principal lacks a role.
    Unauthorized,
    /// 429 after every retry.
    Throttled,
    /// 5xx after every retry.
    Server,
    /// Any other 4xx: snapback sent something ARM refuses.
    BadRequest,
    /// A long-running operation ended Failed or Canceled.
    OperationFailed,
    /// A long-running operation did not finish in time.
    Timeout,
    /// No answer (connection refused, reset, TLS) after every retry.
    Transport,
    /// An answer snapback cannot use (bad JSON, missing field, foreign polling URL).
    InvalidResponse,
    /// The credential could not be built (missing secret, bad settings).
    Credential,
}

/// An ARM failure. Messages from the service are redacted of SAS signatures.
#[derive(Debug, thiserror::Error)]
pub enum ArmError {
    #[error("{operation} {resource}: HTTP {status} {code}: {message}")]
    Service {
        operation: &'static str,
        resource: String,
        status: u16,
        /// ARM's `error.code`, e.g. `ResourceNotFound`, `OperationNotAllowed`.
        code: String,
        message: String,
    },
    #[error("{operation} {resource}: the operation ended {status}: {code}: {message}")]
    OperationFailed {
        operation: &'static str,
        resource: String,
        /// `Failed` or `Canceled`.
        status: String,
        code: String,
        message: String,
    },
    #[error("{operation} {resource}: not finished after {seconds} s")]
    Timeout {
        operation: &'static str,
        resource: String,
        seconds: u64,
    },
    #[error("{operation} {resource}: no answer from ARM: {reason}")]
    Transport {
        operation: &'static str,
        resource: String,
        reason: String,
    },
    #[error("{operation} {resource}: unusable answer: {reason}")]
    InvalidResponse {
        operation: &'static str,
        resource: String,
        reason: String,
    },
    #[error("ARM credential: {reason}")]
    Credential { reason: String },
    #[error("{operation} {resource}: not a resource of that type")]
    WrongKind {
        operation: &'static str,
        resource: String,
    },
}

impl ArmError {
    pub fn kind(&self) -> ArmErrorKind {
        match self {
            ArmError::Service { status, .. } => match status {
                404 => ArmErrorKind::NotFound,
                409 => ArmErrorKind::Conflict,
                401 | 403 => ArmErrorKind::Unauthorized,
                429 => ArmErrorKind::Throttled,
                500..=599 => ArmErrorKind::Server,
                _ => ArmErrorKind::BadRequest,
            },
            ArmError::OperationFailed { .. } => ArmErrorKind::OperationFailed,
            ArmError::Timeout { .. } => ArmErrorKind::Timeout,
            ArmError::Transport { .. } => ArmErrorKind::Transport,
            ArmError::InvalidResponse { .. } => ArmErrorKind::InvalidResponse,
            ArmError::Credential { .. } => ArmErrorKind::Credential,
            ArmError::WrongKind { .. } => ArmErrorKind::BadRequest,
        }
    }

    /// HTTP status of a service error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ArmError::Service { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// ARM's error code (`error.code`), if ARM gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ArmError::Service { code, .. } | ArmError::OperationFailed { code, .. } => Some(code),
            _ => None,
        }
    }

    pub(crate) fn transport(operation: &'static str, resource: &str, reason: &str) -> Self {
        ArmError::Transport {
            operation,
            resource: resource.to_string(),
            reason: redact(reason),
        }
    }

    pub(crate) fn invalid(
        operation: &'static str,
        resource: &str,
        reason: impl AsRef<str>,
    ) -> Self {
        ArmError::InvalidResponse {
            operation,
            resource: resource.to_string(),
            reason: redact(reason.as_ref()),
        }
    }
}
