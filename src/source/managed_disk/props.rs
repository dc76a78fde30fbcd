//! What kind of managed disk a source is, whether snapback can back it up, and the disk's
//! properties each restore point records so that `restore --to-managed-disk` makes a disk a
//! VM can take (docs/managed-disks.md, "Disk types" and "Restore to a managed disk").
//!
//! - [`admit`]: the disk types whose pages Azure documents a way to read are backed up; the
//!   others are refused at `check` and at cycle start, naming the type and the reason.
//!   Snapshots of disks with 4096-byte logical sectors are stored as VHDX, and Azure
//!   documents neither where a disk byte sits in that export nor what a page-range diff of
//!   it means, so no backup of one is ever made in a format snapback cannot vouch for.
//! - [`RecordedDisk`]: `osType`, `hyperVGeneration`, capabilities, security type, sector
//!   size, sku, zone, location, encryption and tier at backup time, kept in the restore
//!   point's metadata (one key, base64 JSON, well under Azure's 8 KiB for all metadata), so
//!   a restore works after the source disk is gone.
//! - [`plan_upload`]: the Upload disk's properties from the record and the CLI's overrides.

use crate::arm::{Disk, DiskRecipe, Encryption, SecurityProfile, SupportedCapabilities};
use crate::storage::Metadata;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The restore point's metadata key holding the [`RecordedDisk`].
pub const META_KEY: &str = "snapback_disk_props";
/// The most the record may take in metadata. Azure allows 8 KiB for all of a blob's
/// metadata (names and values); snapback's other tags take a few hundred bytes.
pub const MAX_META_BYTES: usize = 2048;

/// Azure's managed disk types, by sku name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskType {
    StandardHdd,
    StandardSsd,
    PremiumSsd,
    PremiumSsdV2,
    Ultra,
    /// A sku snapback does not know (a newer type): treated as Premium SSD is, since ARM
    /// reports no sector size or background copy for it.
    Other(String),
}

impl DiskType {
    pub fn of_sku(sku: Option<&str>) -> DiskType {
        match sku.unwrap_or("Standard_LRS") {
            "Standard_LRS" => DiskType::StandardHdd,
            "StandardSSD_LRS" | "StandardSSD_ZRS" => DiskType::StandardSsd,
            "Premium_LRS" | "Premium_ZRS" => DiskType::PremiumSsd,
            "PremiumV2_LRS" => DiskType::PremiumSsdV2,
            "UltraSSD_LRS" => DiskType::Ultra,
            other => DiskType::Other(other.to_string()),
        }
    }

    pub fn of(disk: &Disk) -> DiskType {
        DiskType::of_sku(disk.sku.as_ref().map(|s| s.name.as_str()))
    }

    pub fn label(&self) -> String {
        match self {
            DiskType::StandardHdd => "Standard HDD".into(),
            DiskType::StandardSsd => "Standard SSD".into(),
            DiskType::PremiumSsd => "Premium SSD".into(),
            DiskType::PremiumSsdV2 => "Premium SSD v2".into(),
            DiskType::Ultra => "Ultra Disk".into(),
            DiskType::Other(s) => format!("disk type {s}"),
        }
    }

    /// Snapshots copied in the background (`completionPercent`), at most 3 pending per disk.
    pub fn copies_in_background(&self) -> bool {
        matches!(self, DiskType::PremiumSsdV2 | DiskType::Ultra)
    }

    /// Premium SSD v2 and Ultra disks "can't be used as an OS disk" (disks-types).
    pub fn can_boot(&self) -> bool {
        !self.copies_in_background()
    }
}

/// The disk's logical sector size: as reported, else Azure's default for its type (4096 for
/// Premium SSD v2 and Ultra: "4096 is the default"; 512 for every other type).
pub fn sector_size(disk: &Disk) -> u32 {
    disk.properties.creation_data.logical_sector_size.unwrap_or(
        if DiskType::of(disk).copies_in_background() {
            4096
        } else {
            512
        },
    )
}

/// A disk snapback refuses to back up, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    pub disk: String,
    /// e.g. "Premium SSD v2 with 4096-byte logical sectors".
    pub disk_type: String,
    pub reason: String,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "managed disk {} ({}) is not backed up: {}",
            self.disk, self.disk_type, self.reason
        )
    }
}

impl std::error::Error for Unsupported {}

/// Whether snapback backs `disk` up; Ok names its type as `check` reports it.
pub fn admit(disk: &Disk) -> Result<String, Unsupported> {
    let kind = DiskType::of(disk);
    let sectors = sector_size(disk);
    let mut label = format!("{}, {sectors}-byte sectors", kind.label());
    let refuse = |disk_type: String, reason: &str| Unsupported {
        disk: disk.id.clone(),
        disk_type,
        reason: reason.to_string(),
    };
    if sectors != 512 {
        return Err(refuse(
            format!("{} with {sectors}-byte logical sectors", kind.label()),
            "Azure stores snapshots of 4096-byte-sector disks as VHDX and documents neither \
             where a disk byte lies in their export nor what a page-range diff of it returns, \
             so snapback cannot read the disk's raw pages; back up a disk created with \
             logicalSectorSize 512, or use Azure Backup for this disk",
        ));
    }
    let security = disk
        .properties
        .security_profile
        .as_ref()
        .and_then(|p| p.security_type.as_deref());
    match security {
        Some(t) if t.starts_with("ConfidentialVM") => {
            return Err(refuse(
                format!("{label}, confidential VM ({t})"),
                "a confidential VM's OS disk is bound to its VM guest state blob and, \
                 with confidential OS disk encryption, to a key in the VM's vTPM; snapback \
                 copies neither, so its restore could not boot",
            ))
        }
        // Backed up with its VM guest state (`crate::cycle::guest_state`).
        Some(crate::arm::TRUSTED_LAUNCH) => label.push_str(", Trusted Launch"),
        _ => {}
    }
    match disk.properties.disk_state.as_deref() {
        Some(s @ ("ReadyToUpload" | "ActiveUpload")) => Err(refuse(
            label,
            &format!("the disk is awaiting an upload (diskState {s}): nothing to back up yet"),
        )),
        _ => Ok(label),
    }
}

/// The source disk's properties at backup time (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedDisk {
    /// Format version of this record.
    pub v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hyper_v_generation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<SupportedCapabilities>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_type: Option<String>,
    pub logical_sector_size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

impl RecordedDisk {
    pub fn of(disk: &Disk) -> RecordedDisk {
        let p = &disk.properties;
        RecordedDisk {
            v: 1,
            location: Some(disk.location.clone()),
            sku: disk.sku.as_ref().map(|s| s.name.clone()),
            tier: p.tier.clone(),
            zone: disk.zones.first().cloned(),
            os_type: p.os_type.clone(),
            hyper_v_generation: p.hyper_v_generation.clone(),
            capabilities: p.supported_capabilities.clone(),
            security_type: p
                .security_profile
                .as_ref()
                .and_then(|s| s.security_type.clone()),
            logical_sector_size: sector_size(disk),
            encryption: p.encryption.clone(),
            size: p.disk_size_bytes,
        }
    }

    /// The metadata entry, or None if it would take more than [`MAX_META_BYTES`] (the
    /// restore point is still taken; its restore then needs the CLI's flags).
    pub fn to_metadata(&self) -> Option<(String, String)> {
        let json = serde_json::to_vec(self).ok()?;
        let value = base64::engine::general_purpose::STANDARD.encode(json);
        (META_KEY.len() + value.len() <= MAX_META_BYTES).then(|| (META_KEY.to_string(), value))
    }

    /// The record in a restore point's metadata: None if there is none (a point from before
    /// records were kept), an error if it cannot be read.
    pub fn from_metadata(m: &Metadata) -> Option<Result<RecordedDisk, String>> {
        let raw = m.get(META_KEY)?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(raw.trim())
            .map_err(|e| format!("metadata {META_KEY} is not base64: {e}"));
        Some(decoded.and_then(|bytes| {
            serde_json::from_slice(&bytes)
                .map_err(|e| format!("metadata {META_KEY} is not a disk record: {e}"))
        }))
    }
}

/// What the operator asked of the new disk on the command line; each overrides the record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub os_type: Option<String>,
    pub hyper_v_generation: Option<String>,
    pub sku: Option<String>,
    pub zone: Option<String>,
    pub disk_encryption_set: Option<String>,
}

/// The skus a disk can be created with (DiskRP `DiskStorageAccountTypes`).
const SKUS: [&str; 7] = [
    "Standard_LRS",
    "Premium_LRS",
    "StandardSSD_LRS",
    "UltraSSD_LRS",
    "Premium_ZRS",
    "StandardSSD_ZRS",
    "PremiumV2_LRS",
];

impl Overrides {
    /// Every problem with the flags, each naming its flag (bad input: exit 2, nothing done).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(v) = &self.os_type {
            if !matches!(v.as_str(), "Windows" | "Linux") {
                out.push(format!("--os-type '{v}': must be Windows or Linux"));
            }
        }
        if let Some(v) = &self.hyper_v_generation {
            if !matches!(v.as_str(), "V1" | "V2") {
                out.push(format!("--hyper-v-generation '{v}': must be V1 or V2"));
            }
        }
        if let Some(v) = &self.sku {
            if !SKUS.contains(&v.as_str()) {
                out.push(format!("--sku '{v}': must be one of {}", SKUS.join(", ")));
            }
        }
        if let Some(v) = &self.zone {
            if !matches!(v.as_str(), "1" | "2" | "3") {
                out.push(format!("--zone '{v}': must be 1, 2 or 3"));
            }
        }
        if let Some(v) = &self.disk_encryption_set {
            if !is_des_id(v) {
                out.push(format!(
                    "--disk-encryption-set '{v}': must be /subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Compute/diskEncryptionSets/NAME"
                ));
            }
        }
        out
    }
}

/// A disk encryption set's resource id (shape only; ARM says whether it exists).
fn is_des_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 9
        && parts[0].is_empty()
        && parts[1].eq_ignore_ascii_case("subscriptions")
        && parts[3].eq_ignore_ascii_case("resourceGroups")
        && parts[5].eq_ignore_ascii_case("providers")
        && parts[6].eq_ignore_ascii_case("Microsoft.Compute")
        && parts[7].eq_ignore_ascii_case("diskEncryptionSets")
        && [2, 4, 8].iter().all(|i| !parts[*i].is_empty())
}

/// The new disk: where, which sku and zone, and the recipe ARM is sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UploadPlan {
    /// The recorded location (None: the source disk's, read from ARM).
    pub location: Option<String>,
    pub sku: Option<String>,
    pub zone: Option<String>,
    pub recipe: DiskRecipe,
}

impl UploadPlan {
    /// An OS disk: swapped in with `az vm update --os-disk`.
    pub fn is_os_disk(&self) -> bool {
        self.recipe.os_type.is_some()
    }

    /// A Trusted Launch disk: uploaded with its VM guest state.
    pub fn is_trusted_launch(&self) -> bool {
        SecurityProfile::is_trusted_launch(self.recipe.security_profile.as_ref())
    }
}

/// The Upload disk for a restore point recorded as `recorded` (None: a point from before
/// records), with `o` (validated by [`Overrides::problems`]) taking precedence. An error is a
/// combination Azure documents as unusable, named.
pub fn plan_upload(recorded: Option<&RecordedDisk>, o: &Overrides) -> Result<UploadPlan, String> {
    let r = recorded.cloned().unwrap_or_default();
    if let Some(t) = r
        .security_type
        .as_deref()
        .filter(|t| t.starts_with("ConfidentialVM"))
    {
        return Err(format!(
            "the source disk's security type is {t}: its VM guest state (UEFI, vTPM) was not \
             backed up, so a restore could not boot as that VM's OS disk"
        ));
    }
    // A Trusted Launch disk is made again as one, uploaded with its VM guest state
    // (`UploadPreparedSecure`): Trusted Launch is Gen2 only.
    let trusted_launch = r.security_type.as_deref() == Some(crate::arm::TRUSTED_LAUNCH);
    if trusted_launch && o.hyper_v_generation.as_deref() == Some("V1") {
        return Err(
            "--hyper-v-generation V1: the source disk is Trusted Launch, which is Gen2 (V2) only"
                .to_string(),
        );
    }
    if r.logical_sector_size > 512 {
        return Err(format!(
            "the source disk had {}-byte sectors: an upload is a VHD of 512-byte sectors",
            r.logical_sector_size
        ));
    }
    let sku = o.sku.clone().or(r.sku.clone());
    let os_type = o.os_type.clone().or(r.os_type.clone());
    let hyper_v_generation = o
        .hyper_v_generation
        .clone()
        .or(r.hyper_v_generation.clone());
    if hyper_v_generation.is_some() && os_type.is_none() {
        return Err(
            "--hyper-v-generation applies to an OS disk only: give --os-type too".to_string(),
        );
    }
    let kind = DiskType::of_sku(sku.as_deref());
    if os_type.is_some() && !kind.can_boot() {
        return Err(format!(
            "an OS disk cannot be a {} (Azure: \"can't be used as an OS disk\"); give --sku, e.g. Premium_LRS",
            kind.label()
        ));
    }
    let encryption = match &o.disk_encryption_set {
        Some(des) => Some(Encryption {
            kind: Some("EncryptionAtRestWithCustomerKey".into()),
            disk_encryption_set_id: Some(des.clone()),
        }),
        // A platform key is the default: sent only when a customer key is involved.
        None => r.encryption.clone().filter(|e| {
            e.disk_encryption_set_id.is_some()
                && e.kind.as_deref() != Some("EncryptionAtRestWithPlatformKey")
        }),
    };
    // A tier belongs to its sku (P30 is a Premium SSD tier).
    let tier = r.tier.clone().filter(|_| sku == r.sku);
    Ok(UploadPlan {
        location: r.location.clone(),
        sku,
        zone: o.zone.clone().or(r.zone.clone()),
        recipe: DiskRecipe {
            os_type: os_type.clone(),
            hyper_v_generation,
            supported_capabilities: r.capabilities.clone().filter(|_| os_type.is_some()),
            security_profile: trusted_launch.then(|| SecurityProfile {
                security_type: Some(crate::arm::TRUSTED_LAUNCH.into()),
                ..SecurityProfile::default()
            }),
            encryption,
            tier,
            logical_sector_size: recorded
                .map(|r| r.logical_sector_size)
                .filter(|_| !kind.can_boot()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arm::{Disk, SecurityProfile};

    fn disk(sku: &str, extra: serde_json::Value) -> Disk {
        let mut props = serde_json::json!({"creationData": {"createOption": "Empty"},
            "diskSizeBytes": 1u64 << 30, "diskState": "Unattached"});
        if let (Some(p), Some(e)) = (props.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                p.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(serde_json::json!({
            "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/d",
            "name": "d", "location": "westeurope", "sku": {"name": sku, "tier": "Premium"},
            "zones": ["2"], "properties": props,
        }))
        .expect("disk json")
    }

    #[test]
    fn disk_types_and_sector_sizes_decide_what_is_backed_up() {
        let sector = |n: u32| serde_json::json!({"creationData": {"createOption": "Empty", "logicalSectorSize": n}});
        let cases = [
            (
                "Standard_LRS",
                serde_json::json!({}),
                Ok("Standard HDD, 512-byte sectors"),
            ),
            (
                "StandardSSD_ZRS",
                serde_json::json!({}),
                Ok("Standard SSD, 512-byte sectors"),
            ),
            (
                "Premium_LRS",
                serde_json::json!({}),
                Ok("Premium SSD, 512-byte sectors"),
            ),
            (
                "PremiumV2_LRS",
                sector(512),
                Ok("Premium SSD v2, 512-byte sectors"),
            ),
            (
                "UltraSSD_LRS",
                sector(512),
                Ok("Ultra Disk, 512-byte sectors"),
            ),
            (
                "PremiumV2_LRS",
                serde_json::json!({}),
                Err("Premium SSD v2 with 4096-byte logical sectors"),
            ),
            (
                "UltraSSD_LRS",
                sector(4096),
                Err("Ultra Disk with 4096-byte logical sectors"),
            ),
        ];
        for (sku, extra, want) in cases {
            let got = admit(&disk(sku, extra.clone()));
            match (got, want) {
                (Ok(l), Ok(w)) => assert_eq!(l, w, "{sku} {extra}"),
                (Err(e), Err(w)) => {
                    assert_eq!(e.disk_type, w, "{sku} {extra}");
                    assert!(e.to_string().contains("VHDX"), "{e}");
                }
                (got, want) => panic!("{sku} {extra}: {got:?} vs {want:?}"),
            }
        }
    }

    #[test]
    fn trusted_launch_disks_are_admitted_and_named() {
        let tl = disk(
            "Premium_LRS",
            serde_json::json!({"securityProfile": {"securityType": "TrustedLaunch"}}),
        );
        assert_eq!(
            admit(&tl).as_deref(),
            Ok("Premium SSD, 512-byte sectors, Trusted Launch")
        );
    }

    #[test]
    fn confidential_and_uploading_disks_are_refused_naming_why() {
        for (extra, want) in [
            (
                serde_json::json!({"securityProfile": {"securityType": "ConfidentialVM_DiskEncryptedWithCustomerKey"}}),
                "confidential VM",
            ),
            (
                serde_json::json!({"diskState": "ReadyToUpload"}),
                "awaiting an upload",
            ),
        ] {
            let e = admit(&disk("Premium_LRS", extra)).expect_err("refused");
            assert!(e.to_string().contains(want), "{e}");
        }
    }

    #[test]
    fn the_record_round_trips_through_metadata_within_budget() {
        let long = format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/diskEncryptionSets/{}",
            "0".repeat(36),
            "r".repeat(90),
            "d".repeat(80)
        );
        let d = disk(
            "Premium_LRS",
            serde_json::json!({"osType": "Linux", "hyperVGeneration": "V2", "tier": "P30",
                "supportedCapabilities": {"acceleratedNetwork": true, "architecture": "x64", "diskControllerTypes": "SCSI, NVMe"},
                "encryption": {"type": "EncryptionAtRestWithCustomerKey", "diskEncryptionSetId": long}}),
        );
        let rec = RecordedDisk::of(&d);
        let (k, v) = rec.to_metadata().expect("fits");
        assert!(k.len() + v.len() <= MAX_META_BYTES, "{}", v.len());
        let mut m = Metadata::new();
        m.insert(k, v);
        assert_eq!(RecordedDisk::from_metadata(&m), Some(Ok(rec.clone())));
        m.insert(META_KEY.into(), "%%%".into());
        assert!(matches!(RecordedDisk::from_metadata(&m), Some(Err(_))));
        assert_eq!(RecordedDisk::from_metadata(&Metadata::new()), None);
    }

    #[test]
    fn the_upload_plan_follows_the_record_and_the_flags() {
        let d = disk(
            "Premium_LRS",
            serde_json::json!({"osType": "Windows", "hyperVGeneration": "V2", "tier": "P30",
                "encryption": {"type": "EncryptionAtRestWithCustomerKey", "diskEncryptionSetId": "/des"}}),
        );
        let rec = RecordedDisk::of(&d);
        let plan = plan_upload(Some(&rec), &Overrides::default()).unwrap();
        assert_eq!(plan.sku.as_deref(), Some("Premium_LRS"));
        assert_eq!(plan.zone.as_deref(), Some("2"));
        assert_eq!(plan.location.as_deref(), Some("westeurope"));
        assert_eq!(plan.recipe.os_type.as_deref(), Some("Windows"));
        assert_eq!(plan.recipe.hyper_v_generation.as_deref(), Some("V2"));
        assert_eq!(plan.recipe.tier.as_deref(), Some("P30"));
        assert_eq!(
            plan.recipe
                .encryption
                .as_ref()
                .and_then(|e| e.disk_encryption_set_id.as_deref()),
            Some("/des")
        );
        assert!(plan.is_os_disk());
        let o = Overrides {
            sku: Some("StandardSSD_LRS".into()),
            zone: Some("3".into()),
            hyper_v_generation: Some("V1".into()),
            ..Overrides::default()
        };
        let plan = plan_upload(Some(&rec), &o).unwrap();
        assert_eq!(plan.recipe.tier, None, "P30 is not a Standard SSD tier");
        assert_eq!(plan.zone.as_deref(), Some("3"));
        assert_eq!(plan.recipe.hyper_v_generation.as_deref(), Some("V1"));
        let v2 = Overrides {
            sku: Some("PremiumV2_LRS".into()),
            ..Overrides::default()
        };
        assert!(plan_upload(Some(&rec), &v2)
            .unwrap_err()
            .contains("OS disk"));
        let gen_only = Overrides {
            hyper_v_generation: Some("V2".into()),
            ..Overrides::default()
        };
        assert!(plan_upload(None, &gen_only)
            .unwrap_err()
            .contains("--os-type"));
        let mut tl = rec.clone();
        tl.security_type = Some("TrustedLaunch".into());
        let plan = plan_upload(Some(&tl), &Overrides::default()).unwrap();
        assert!(plan.is_trusted_launch());
        assert_eq!(
            plan.recipe.security_profile,
            Some(SecurityProfile {
                security_type: Some("TrustedLaunch".into()),
                ..SecurityProfile::default()
            })
        );
        let v1 = Overrides {
            hyper_v_generation: Some("V1".into()),
            ..Overrides::default()
        };
        assert!(plan_upload(Some(&tl), &v1).unwrap_err().contains("Gen2"));
        let mut cvm = rec.clone();
        cvm.security_type = Some("ConfidentialVM_DiskEncryptedWithCustomerKey".into());
        assert!(plan_upload(Some(&cvm), &Overrides::default())
            .unwrap_err()
            .contains("guest state"));
        assert_eq!(
            plan_upload(None, &Overrides::default()).unwrap(),
            UploadPlan::default()
        );
    }

    #[test]
    fn bad_flags_are_named() {
        let o = Overrides {
            os_type: Some("linux".into()),
            hyper_v_generation: Some("V3".into()),
            sku: Some("Premium".into()),
            zone: Some("4".into()),
            disk_encryption_set: Some(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/d".into(),
            ),
        };
        let p = o.problems();
        for flag in [
            "--os-type",
            "--hyper-v-generation",
            "--sku",
            "--zone",
            "--disk-encryption-set",
        ] {
            assert!(p.iter().any(|m| m.starts_with(flag)), "{flag}: {p:?}");
        }
        let ok = Overrides {
            disk_encryption_set: Some("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/diskEncryptionSets/des".into()),
            ..Overrides::default()
        };
        assert!(ok.problems().is_empty());
    }
}
