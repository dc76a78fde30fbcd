//! The request and response bodies of the few ARM operations snapback uses
//! (Microsoft.Compute disks and snapshots, api-version [`super::API_VERSION`]).
//!
//! Only the fields snapback reads or writes; unknown fields in answers are ignored.

use super::export::ExportPolicy;
use crate::model::secrets::SasUrl;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Resource tags (ARM keeps them as a string map).
pub type Tags = BTreeMap<String, String>;

/// How a disk or snapshot was made.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CreationData {
    pub create_option: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_resource_id: Option<String>,
    /// Changes when a disk is deleted and recreated under the same name: tells an old
    /// disk's snapshots from the new one's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_unique_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_size_bytes: Option<u64>,
    /// 512 or 4096; reported for Premium SSD v2 and Ultra disks (4096 is their default when
    /// a disk is created without it) and inherited by their snapshots. A snapshot of a 4096
    /// disk is stored as VHDX (docs/managed-disks.md, "Disk types").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical_sector_size: Option<u32>,
}

/// A snapshot resource as ARM returns it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Snapshot {
    pub id: String,
    pub name: String,
    pub location: String,
    #[serde(default)]
    pub tags: Tags,
    pub properties: SnapshotProperties,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotProperties {
    pub creation_data: CreationData,
    #[serde(default)]
    pub incremental: Option<bool>,
    #[serde(default)]
    pub disk_size_bytes: Option<u64>,
    #[serde(default)]
    pub provisioning_state: Option<String>,
    /// Background copy progress; Premium SSD v2 / Ultra snapshots are usable only at 100.
    #[serde(default)]
    pub completion_percent: Option<f64>,
    #[serde(default)]
    pub disk_state: Option<String>,
    #[serde(default)]
    pub time_created: Option<String>,
    /// Who may read the snapshot's export, from where (`dataAccessAuthMode`, …).
    #[serde(flatten)]
    pub export: ExportPolicy,
    /// A snapshot of a Trusted Launch disk is one too (its guest state is exported with it).
    #[serde(default)]
    pub security_profile: Option<SecurityProfile>,
    /// `Pending`, `Available`, `InstantAccess`, `AvailableWithInstantAccess` (DiskRP
    /// `SnapshotAccessState`, api-versions after 2024-03-02; absent in older answers).
    #[serde(default)]
    pub snapshot_access_state: Option<String>,
}

impl Snapshot {
    /// Usable as a diff base and readable: provisioned, and its data downloadable. Where
    /// ARM reports `snapshotAccessState`, only `Available` and `AvailableWithInstantAccess`
    /// may be "copied and downloaded" (`InstantAccess` may only make disks, `Pending`
    /// nothing); otherwise a `completionPercent` must have reached 100 ("must be 100 before
    /// you can ... generate a SAS URI", disks-incremental-snapshots, "Check snapshot status").
    pub fn is_ready(&self) -> bool {
        let p = &self.properties;
        p.provisioning_state.as_deref() == Some("Succeeded")
            && match p.snapshot_access_state.as_deref() {
                Some(state) => matches!(state, "Available" | "AvailableWithInstantAccess"),
                None => p.completion_percent.is_none_or(|p| p >= 100.0),
            }
    }
}

/// A managed disk as ARM returns it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Disk {
    pub id: String,
    pub name: String,
    pub location: String,
    #[serde(default)]
    pub sku: Option<Sku>,
    #[serde(default)]
    pub zones: Vec<String>,
    #[serde(default)]
    pub tags: Tags,
    pub properties: DiskProperties,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DiskProperties {
    pub creation_data: CreationData,
    #[serde(default)]
    pub disk_size_bytes: Option<u64>,
    #[serde(default)]
    pub unique_id: Option<String>,
    #[serde(default)]
    pub provisioning_state: Option<String>,
    /// `Unattached`, `Attached`, `ReadyToUpload`, `ActiveUpload`, `ActiveSAS`, ...
    #[serde(default)]
    pub disk_state: Option<String>,
    /// Who may read the disk's export, from where (`dataAccessAuthMode`, …).
    #[serde(flatten)]
    pub export: ExportPolicy,
    /// `Windows` or `Linux` on an OS disk; absent on a data disk.
    #[serde(default)]
    pub os_type: Option<String>,
    /// `V1` or `V2` (a Gen2 VM boots only from a V2 disk).
    #[serde(default)]
    pub hyper_v_generation: Option<String>,
    #[serde(default)]
    pub supported_capabilities: Option<SupportedCapabilities>,
    #[serde(default)]
    pub security_profile: Option<SecurityProfile>,
    #[serde(default)]
    pub encryption: Option<Encryption>,
    /// Performance tier (e.g. `P30`) of a Premium SSD, when set apart from its size.
    #[serde(default)]
    pub tier: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Sku {
    pub name: String,
    /// `Standard`, `Premium`, `Ultra`: reported by ARM, never sent.
    #[serde(default, skip_serializing)]
    pub tier: Option<String>,
}

/// What the OS on a disk supports (DiskRP `SupportedCapabilities`); only the fields a VM
/// checks when it takes the disk.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SupportedCapabilities {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerated_network: Option<bool>,
    /// `x64` or `Arm64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// e.g. `SCSI, NVMe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_controller_types: Option<String>,
}

/// DiskRP `DiskSecurityProfile`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecurityProfile {
    /// `TrustedLaunch`, `ConfidentialVM_VMGuestStateOnlyEncryptedWithPlatformKey`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_vm_disk_encryption_set_id: Option<String>,
}

/// DiskRP `Encryption`: at-rest encryption with a platform or a customer key.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Encryption {
    /// `EncryptionAtRestWithPlatformKey`, `EncryptionAtRestWithCustomerKey`,
    /// `EncryptionAtRestWithPlatformAndCustomerKeys`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_encryption_set_id: Option<String>,
}

/// PUT body of an incremental snapshot.
#[derive(Debug, Serialize)]
pub(crate) struct SnapshotPut<'a> {
    pub location: &'a str,
    pub tags: &'a Tags,
    pub properties: SnapshotPutProperties,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SnapshotPutProperties {
    pub creation_data: CreationData,
    pub incremental: bool,
    /// The disk's restrictive export settings ([`ExportPolicy::restrictive`]).
    #[serde(flatten)]
    pub export: ExportPolicy,
}

/// What a disk for upload (a restore target) looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadDiskSpec {
    pub location: String,
    /// Disk size + 512 (the fixed VHD footer Azure expects in an upload).
    pub upload_size_bytes: u64,
    /// e.g. `Premium_LRS`; Azure's default (Standard_LRS) if `None`.
    pub sku: Option<String>,
    pub zone: Option<String>,
    pub tags: Tags,
}

/// PUT body of a disk created for upload.
#[derive(Debug, Serialize)]
pub(crate) struct DiskPut<'a> {
    pub location: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sku: Option<Sku>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
    pub tags: &'a Tags,
    pub properties: DiskPutProperties,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DiskPutProperties {
    pub creation_data: CreationData,
    #[serde(flatten)]
    pub recipe: DiskRecipe,
}

/// The properties a new disk takes so that a VM can use it as the source disk was used (an
/// OS disk: `osType`, `hyperVGeneration`, capabilities; the VM's encryption settings).
/// Each is sent only when set; an empty recipe is the plain Upload disk of before.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskRecipe {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hyper_v_generation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supported_capabilities: Option<SupportedCapabilities>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_profile: Option<SecurityProfile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Sent as `creationData.logicalSectorSize` (512: an upload is a VHD).
    #[serde(skip)]
    pub logical_sector_size: Option<u32>,
}

/// DiskRP's security type of a Trusted Launch disk: its VM guest state (UEFI variables,
/// vTPM) is a blob beside the disk, exported and uploaded with `getSecureVMGuestStateSAS`.
pub const TRUSTED_LAUNCH: &str = "TrustedLaunch";

impl SecurityProfile {
    pub fn is_trusted_launch(p: Option<&SecurityProfile>) -> bool {
        p.and_then(|p| p.security_type.as_deref()) == Some(TRUSTED_LAUNCH)
    }
}

/// `beginGetAccess` access level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Access {
    Read,
    Write,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GrantAccess {
    pub access: Access,
    pub duration_in_seconds: u32,
    /// Also export (Read) or open for upload (Write) the Trusted Launch VM guest state blob
    /// (`securityDataAccessSAS` in the answer); sent only when asked, as Azure's SDKs do.
    #[serde(
        rename = "getSecureVMGuestStateSAS",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub get_secure_vm_guest_state_sas: bool,
}

/// The result of `beginGetAccess` (DiskRP `AccessUri`).
#[derive(Clone, Deserialize)]
pub(crate) struct AccessUri {
    #[serde(rename = "accessSAS")]
    pub access_sas: String,
    /// The VM guest state blob's SAS, when `getSecureVMGuestStateSAS` was asked for
    /// (`Disk_BeginGetAccess_WithVMGuestState.json`: a page blob `<guid>_vmgs` on the
    /// same export host).
    #[serde(rename = "securityDataAccessSAS", default)]
    pub security_data_access_sas: Option<String>,
}

impl fmt::Debug for AccessUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match url::Url::parse(&self.access_sas) {
            Ok(u) => write!(f, "AccessUri({})", SasUrl::new(u)),
            Err(_) => f.write_str("AccessUri(<unparsable>)"),
        }
    }
}

/// What `beginGetAccess` granted: the disk's SAS and, when asked for, the VM guest state's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessGrant {
    pub sas: SasUrl,
    /// `securityDataAccessSAS`: None when not asked for or not answered (a disk without
    /// guest state; the caller decides whether that is an error).
    pub guest_state: Option<SasUrl>,
}

/// Body of an `Azure-AsyncOperation` poll.
#[derive(Debug, Deserialize)]
pub(crate) struct AsyncOperation {
    pub status: String,
    #[serde(default)]
    pub error: Option<ErrorBody>,
    /// DiskRP puts the operation's result in the `Succeeded` poll (`properties.output`: the
    /// snapshot of a PUT, `{"accessSAS"}` of a `beginGetAccess`; tests/recordings/arm), so
    /// no further request is needed to read it.
    #[serde(default)]
    pub properties: Option<OperationProperties>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct OperationProperties {
    #[serde(default)]
    pub output: Option<serde_json::Value>,
}

/// ARM's error envelope: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Deserialize)]
pub(crate) struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// One page of a list.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Page<T> {
    pub value: Vec<T>,
    #[serde(default)]
    pub next_link: Option<String>,
}
