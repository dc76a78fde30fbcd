//! Who may read a disk's or snapshot's export, and from where (DiskRP `2024-03-02`):
//! `dataAccessAuthMode`, `networkAccessPolicy`, `publicNetworkAccess`, `diskAccessId`.
//!
//! - `dataAccessAuthMode = AzureActiveDirectory`: every request through the export (SAS) URL
//!   also needs an Entra ID bearer token for the managed-disk audience
//!   ([`DISK_DATA_SCOPE`](crate::azure::sas_blob::DISK_DATA_SCOPE)) of a principal holding the *Data Operator for Managed Disks* role
//!   (or `Microsoft.Compute/{disks,snapshots}/download/action`)
//!   (<https://learn.microsoft.com/azure/virtual-machines/disks-secure-upload-download>).
//! - `networkAccessPolicy`: `AllowAll` (any network), `AllowPrivate` (only through the
//!   private endpoints of the DiskAccess resource `diskAccessId`), `DenyAll` (not exported).
//! - `publicNetworkAccess = Disabled`: no export from the internet even with `AllowAll`.
//!
//! Pure data and decisions; the requests live in `client` and `azure::sas_blob`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The export settings of a disk or snapshot; `None` where ARM did not say (older disks,
/// recordings): Azure's defaults then apply (no token, `AllowAll`, `Enabled`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ExportPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_access_auth_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_access_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_network_access: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_access_id: Option<String>,
}

/// Which property stops an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportProperty {
    NetworkAccessPolicy,
    PublicNetworkAccess,
}

impl ExportProperty {
    pub fn name(self) -> &'static str {
        match self {
            ExportProperty::NetworkAccessPolicy => "networkAccessPolicy",
            ExportProperty::PublicNetworkAccess => "publicNetworkAccess",
        }
    }
}

fn is(v: &Option<String>, want: &str) -> bool {
    v.as_deref().is_some_and(|v| v.eq_ignore_ascii_case(want))
}

impl ExportPolicy {
    /// Requests through the export URL need a bearer token ([`DISK_DATA_SCOPE`](crate::azure::sas_blob::DISK_DATA_SCOPE)).
    pub fn needs_bearer(&self) -> bool {
        is(&self.data_access_auth_mode, "AzureActiveDirectory")
    }

    /// Exported only through a DiskAccess private endpoint: readable only from inside the
    /// virtual network that holds one, which ARM cannot tell us about this host.
    pub fn private_only(&self) -> bool {
        is(&self.network_access_policy, "AllowPrivate")
    }

    /// What makes an export impossible from anywhere, as ARM describes the resource:
    /// `DenyAll`, or public access disabled without a private path (`AllowAll`/unset).
    /// `AllowPrivate` is not here: from inside the right network it works.
    pub fn blocked(&self, resource: &str) -> Option<ExportBlocked> {
        if is(&self.network_access_policy, "DenyAll") {
            return Some(self.blocked_by(resource, ExportProperty::NetworkAccessPolicy));
        }
        if is(&self.public_network_access, "Disabled") && !self.private_only() {
            return Some(self.blocked_by(resource, ExportProperty::PublicNetworkAccess));
        }
        None
    }

    /// The typed error for `property` of this resource.
    pub fn blocked_by(&self, resource: &str, property: ExportProperty) -> ExportBlocked {
        let value = match property {
            ExportProperty::NetworkAccessPolicy => self.network_access_policy.clone(),
            ExportProperty::PublicNetworkAccess => self.public_network_access.clone(),
        };
        ExportBlocked {
            resource: resource.to_string(),
            property,
            value: value.unwrap_or_default(),
            disk_access: self.disk_access_id.clone(),
        }
    }

    /// The settings a snapshot of this disk is created with: only the restrictive ones, so
    /// a snapshot is never more exportable than its disk (a snapshot PUT without them would
    /// get Azure's defaults — public, no token — whatever the disk says; whether Azure
    /// copies them itself is not documented), and an ordinary disk's PUT body is unchanged.
    pub fn restrictive(&self) -> ExportPolicy {
        let mut out = ExportPolicy::default();
        if self.needs_bearer() {
            out.data_access_auth_mode = self.data_access_auth_mode.clone();
        }
        let network = self.network_access_policy.as_deref();
        if network.is_some_and(|n| !n.eq_ignore_ascii_case("AllowAll")) {
            out.network_access_policy = self.network_access_policy.clone();
            // AllowPrivate is invalid without its DiskAccess.
            out.disk_access_id = self.disk_access_id.clone();
        }
        if is(&self.public_network_access, "Disabled") {
            out.public_network_access = self.public_network_access.clone();
        }
        out
    }
}

/// A disk or snapshot whose export its network settings stop. Names the resource, the
/// property and its value, and what to change.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ExportBlocked {
    /// The ARM resource id of the disk or snapshot.
    pub resource: String,
    pub property: ExportProperty,
    pub value: String,
    /// `diskAccessId`, for `AllowPrivate`.
    pub disk_access: Option<String>,
}

impl ExportBlocked {
    /// The error code snapback reports for it: `property=value`.
    pub fn code(&self) -> String {
        format!("{}={}", self.property.name(), self.value)
    }

    /// What the operator can do about it.
    pub fn fix(&self) -> String {
        // A snapshot carries its disk's settings from when it was taken (see
        // `ExportPolicy::restrictive`): after the disk is changed, the open cycle's
        // snapshot needs the same change.
        let az = if self.resource.to_ascii_lowercase().contains("/snapshots/") {
            "az snapshot update"
        } else {
            "az disk update"
        };
        self.fix_with(az)
    }

    fn fix_with(&self, az: &str) -> String {
        match (self.property, self.value.as_str()) {
            (ExportProperty::NetworkAccessPolicy, v) if v.eq_ignore_ascii_case("AllowPrivate") => {
                format!(
                    "run snapback inside a virtual network with a private endpoint of disk access {} \
                     (its export is reachable only there), or allow public export: \
                     {az} --ids {} --network-access-policy AllowAll --public-network-access Enabled",
                    self.disk_access.as_deref().unwrap_or("(none set)"),
                    self.resource
                )
            }
            (ExportProperty::NetworkAccessPolicy, _) => format!(
                "it cannot be exported at all; allow export: {az} --ids {} \
                 --network-access-policy AllowAll (or AllowPrivate --disk-access <id>, with snapback \
                 inside that network)",
                self.resource
            ),
            (ExportProperty::PublicNetworkAccess, _) => format!(
                "public export is disabled and no private path is set; enable it: {az} \
                 --ids {} --public-network-access Enabled (or --network-access-policy AllowPrivate \
                 --disk-access <id>, with snapback inside that network)",
                self.resource
            ),
        }
    }
}

impl fmt::Display for ExportBlocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} = {} stops snapback reading its export; fix: {}",
            self.resource,
            self.property.name(),
            self.value,
            self.fix()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DISK: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Compute/disks/d";

    fn policy(json: &str) -> ExportPolicy {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_and_recorded_values_do_not_block() {
        assert_eq!(ExportPolicy::default().blocked(DISK), None);
        let recorded =
            policy(r#"{"networkAccessPolicy":"AllowAll","publicNetworkAccess":"Enabled"}"#);
        assert_eq!(recorded.blocked(DISK), None);
        assert!(!recorded.needs_bearer());
        assert_eq!(recorded.restrictive(), ExportPolicy::default());
    }

    #[test]
    fn deny_all_and_public_disabled_block_naming_the_property() {
        let deny = policy(r#"{"networkAccessPolicy":"DenyAll"}"#)
            .blocked(DISK)
            .unwrap();
        assert_eq!(deny.property, ExportProperty::NetworkAccessPolicy);
        assert_eq!(deny.code(), "networkAccessPolicy=DenyAll");
        assert!(deny.to_string().contains(DISK));
        assert!(deny
            .to_string()
            .contains("--network-access-policy AllowAll"));
        let public =
            policy(r#"{"networkAccessPolicy":"AllowAll","publicNetworkAccess":"Disabled"}"#)
                .blocked(DISK)
                .unwrap();
        assert_eq!(public.code(), "publicNetworkAccess=Disabled");
        assert!(public.fix().contains("--public-network-access Enabled"));
    }

    #[test]
    fn allow_private_is_not_blocked_here_but_is_named_when_refused() {
        let p = policy(
            r#"{"networkAccessPolicy":"AllowPrivate","publicNetworkAccess":"Disabled","diskAccessId":"/x/diskAccesses/da"}"#,
        );
        assert_eq!(p.blocked(DISK), None);
        assert!(p.private_only());
        let e = p.blocked_by(DISK, ExportProperty::NetworkAccessPolicy);
        assert_eq!(e.code(), "networkAccessPolicy=AllowPrivate");
        assert!(e.fix().contains("/x/diskAccesses/da"));
    }

    #[test]
    fn a_snapshot_keeps_only_the_restrictive_settings() {
        let p = policy(
            r#"{"dataAccessAuthMode":"AzureActiveDirectory","networkAccessPolicy":"AllowPrivate","publicNetworkAccess":"Enabled","diskAccessId":"/x/da"}"#,
        );
        assert!(p.needs_bearer());
        let r = p.restrictive();
        assert_eq!(
            r.data_access_auth_mode.as_deref(),
            Some("AzureActiveDirectory")
        );
        assert_eq!(r.network_access_policy.as_deref(), Some("AllowPrivate"));
        assert_eq!(r.disk_access_id.as_deref(), Some("/x/da"));
        assert_eq!(r.public_network_access, None);
        let none = policy(r#"{"dataAccessAuthMode":"None"}"#);
        assert!(!none.needs_bearer());
        assert_eq!(serde_json::to_string(&none.restrictive()).unwrap(), "{}");
    }
}
