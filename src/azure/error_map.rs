//! What a failed request means: an SDK error mapped to a [`BlobError`] whose kind comes from
//! the status and `x-ms-error-code` only, naming the resource the service meant (a copy's
//! source or its destination). Shared by the page-blob, lease and SAS-URL clients.

use crate::storage::{BlobError, BlobRef, ErrorKind as Kind, Resource, ServiceCode};
use azure_core::error::ErrorKind;

/// Maps an SDK error on `resource` to a [`BlobError`]; `what` (the operation) is kept for
/// people, the kind comes from the status and `x-ms-error-code` only.
pub(super) fn map_err(
    resource: Resource,
    what: impl Into<String>,
    e: azure_core::Error,
) -> BlobError {
    let what = what.into();
    match e.kind() {
        ErrorKind::HttpResponse {
            status,
            error_code,
            raw_response,
        } => {
            let message = raw_response
                .as_ref()
                .and_then(|r| xml_message(r.body().as_ref()));
            let detail = match message {
                Some(m) => format!("{what}: {m}"),
                None => what,
            };
            BlobError::service(resource, u16::from(*status), error_code.clone(), detail)
        }
        _ => BlobError::local(
            Kind::Transient,
            resource,
            format!("{what}: {}", error_chain(&e)),
        ),
    }
}

/// The resource a failed copy request (Put Page From URL, Copy Blob) concerns: the service
/// reports a source it could not read with `CannotVerifyCopySource`; anything else is about
/// the destination it was writing.
fn copy_error_resource(
    code: Option<ServiceCode>,
    dest: &BlobRef,
    source: &BlobRef,
    snapshot: Option<&str>,
) -> Resource {
    match code {
        Some(ServiceCode::CannotVerifyCopySource) => Resource::of(source, snapshot),
        _ => Resource::blob(dest),
    }
}

/// Maps an SDK error of a copy request, naming the resource it concerns.
pub(super) fn map_copy_err(
    dest: &BlobRef,
    source: &BlobRef,
    snapshot: Option<&str>,
    what: String,
    e: azure_core::Error,
) -> BlobError {
    let mut err = map_err(Resource::blob(dest), what, e);
    err.resource = Box::new(copy_error_resource(
        err.service_code(),
        dest,
        source,
        snapshot,
    ));
    err
}

/// An error and its causes on one line ("retry policy expired: …: connection refused"), so
/// the log names the root cause, not only the last wrapper.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The `<Message>` of an Azure error body, first line only.
fn xml_message(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Message>")? + "<Message>".len();
    let end = text[start..].find("</Message>")? + start;
    text[start..end].lines().next().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_copy_names_the_resource_the_service_meant() {
        let (dest, src) = (
            BlobRef::new("backup", "backups", "d"),
            BlobRef::new("premium", "vhds", "d.vhd"),
        );
        let snap = Some("2026-01-01T00:00:00.0000000Z");
        assert_eq!(
            copy_error_resource(ServiceCode::parse("BlobNotFound"), &dest, &src, snap),
            Resource::blob(&dest)
        );
        assert_eq!(
            copy_error_resource(None, &dest, &src, snap),
            Resource::blob(&dest)
        );
        assert_eq!(
            copy_error_resource(
                ServiceCode::parse("CannotVerifyCopySource"),
                &dest,
                &src,
                snap
            ),
            Resource::of(&src, snap)
        );
    }

    #[test]
    fn error_message_is_extracted() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>X</Code><Message>Server failed.\nRequestId:1</Message></Error>";
        assert_eq!(xml_message(body).as_deref(), Some("Server failed."));
    }
}
