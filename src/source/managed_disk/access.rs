//! What a managed disk's export settings mean for a backup (issue 17, item 4), kept apart
//! from the cycle's requests in `managed` (docs/managed-disks.md, "Access modes"):
//!
//! - an Entra-only export (`dataAccessAuthMode = AzureActiveDirectory`) is read with a
//!   bearer token of the `[azure]` identity ([`mark`]; the token is added by
//!   `azure::sas_blob`), and is never a server-side copy source ([`server_copy_allowed`]);
//! - network settings that stop every export (`DenyAll`; `publicNetworkAccess = Disabled`
//!   without a private path) fail the cycle before anything is made ([`check_export`]);
//! - a refused read of a private-only export (`AllowPrivate`, snapback outside the network
//!   of its private endpoint) is named as such ([`explain_refusal`]).

use crate::arm::export::{ExportBlocked, ExportPolicy, ExportProperty};
use crate::arm::ResourceId;
use crate::model::secrets::SasUrl;
use crate::storage::{BlobError, BlobResult, ErrorKind, Resource};

/// The typed error of a blocked export: `Refused` about the disk or snapshot, code
/// `property=value`, the fix in the detail.
pub fn blocked_error(b: &ExportBlocked) -> BlobError {
    BlobError {
        kind: ErrorKind::Refused,
        resource: Box::new(Resource::Managed(b.resource.clone())),
        status: None,
        code: Some(b.code()),
        detail: format!(
            "{} = {} stops snapback reading the export; fix: {}",
            b.property.name(),
            b.value,
            b.fix()
        ),
    }
}

/// Fails when `policy` stops every export of `resource` (a disk or snapshot id).
pub fn check_export(policy: &ExportPolicy, resource: &str) -> BlobResult<()> {
    match policy.blocked(resource) {
        Some(b) => Err(blocked_error(&b)),
        None => Ok(()),
    }
}

/// The SAS of an export with `policy`, marked for a bearer token when it needs one.
pub fn mark(sas: SasUrl, policy: &ExportPolicy) -> SasUrl {
    if policy.needs_bearer() {
        sas.with_bearer()
    } else {
        sas
    }
}

/// An Entra-only export is read by snapback only: a Put Page From URL would need the backup
/// account's service to present a disk-audience token to the export, which Put Page From
/// URL's `x-ms-copy-source-authorization` is not documented to carry for managed disks.
/// `NoReadAccess` makes `copy_mode = "auto"` copy through snapback (`"server"` fails, naming
/// why), as for a managed-identity source account.
pub fn server_copy_allowed(url: &SasUrl, resource: &str) -> BlobResult<()> {
    if url.needs_bearer() {
        return Err(BlobError::local(
            ErrorKind::NoReadAccess,
            Resource::Managed(resource.to_string()),
            "an Entra-only disk (dataAccessAuthMode = AzureActiveDirectory) is not a server-side \
             copy source: its export needs snapback's own token; use copy_mode = \"auto\" or \
             \"client\"",
        ));
    }
    Ok(())
}

/// A 401/403 through `id`'s export: when the snapshot is exported only through a private
/// endpoint, that is the cause, named with the property and the fix.
pub fn explain_refusal(policy: &ExportPolicy, id: &ResourceId, e: BlobError) -> BlobError {
    let resource = id.to_string();
    let property = if policy.private_only() {
        ExportProperty::NetworkAccessPolicy
    } else if policy.blocked(&resource).is_some() {
        // Settings changed since the SAS was granted.
        return policy
            .blocked(&resource)
            .map(|b| with_status(blocked_error(&b), &e))
            .unwrap_or(e);
    } else {
        return e;
    };
    with_status(blocked_error(&policy.blocked_by(&resource, property)), &e)
}

/// Keeps the service's status (and its code in the detail) on a named refusal.
fn with_status(mut named: BlobError, service: &BlobError) -> BlobError {
    named.status = service.status;
    if let Some(code) = &service.code {
        named.detail = format!("{} (the service answered {code})", named.detail);
    }
    named
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> ResourceId {
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Compute/snapshots/s"
            .parse()
            .unwrap()
    }

    fn policy(json: &str) -> ExportPolicy {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_blocked_export_is_refused_naming_resource_property_and_fix() {
        let e = check_export(
            &policy(r#"{"networkAccessPolicy":"DenyAll"}"#),
            &id().to_string(),
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Refused);
        assert_eq!(e.code.as_deref(), Some("networkAccessPolicy=DenyAll"));
        assert_eq!(*e.resource, Resource::Managed(id().to_string()));
        assert!(e.to_string().contains("az snapshot update"), "{e}");
        assert!(check_export(&ExportPolicy::default(), "x").is_ok());
    }

    #[test]
    fn a_refused_private_export_is_named_and_keeps_the_status() {
        let refused = BlobError::service(
            Resource::Managed(id().to_string()),
            403,
            Some("AuthorizationFailure".into()),
            "read".into(),
        );
        let p = policy(r#"{"networkAccessPolicy":"AllowPrivate","diskAccessId":"/da"}"#);
        let e = explain_refusal(&p, &id(), refused.clone());
        assert_eq!(e.code.as_deref(), Some("networkAccessPolicy=AllowPrivate"));
        assert_eq!(e.status, Some(403));
        assert!(e.detail.contains("AuthorizationFailure") && e.detail.contains("/da"));
        // An ordinary export's refusal stays what the service said.
        assert_eq!(
            explain_refusal(&ExportPolicy::default(), &id(), refused.clone()),
            refused
        );
    }

    #[test]
    fn entra_only_exports_carry_a_token_and_are_no_server_copy_source() {
        let url = SasUrl::new("https://md.example/c/abcd?sig=x".parse().unwrap());
        let aad = policy(r#"{"dataAccessAuthMode":"AzureActiveDirectory"}"#);
        let marked = mark(url.clone(), &aad);
        assert!(marked.needs_bearer());
        assert!(!mark(url.clone(), &ExportPolicy::default()).needs_bearer());
        assert_eq!(
            server_copy_allowed(&marked, "s").unwrap_err().kind,
            ErrorKind::NoReadAccess
        );
        assert!(server_copy_allowed(&url, "s").is_ok());
    }
}
