//! A managed disk's check: its type and export settings, read with `GET` of the disk, and
//! its schedule and snapshot count against Azure's limits. Its other ARM permissions are not
//! exercised (docs/managed-disks.md, "Permissions"). Apart because it speaks ARM, not storage.

use super::report::{CheckRow, Operation, Outcome};
use super::schedule_limits::managed_limits_note;
use crate::config::DiskConfig;
use crate::service::clients::Cloud;
use chrono::Utc;

/// A managed disk's type, read from ARM: a type snapback refuses fails here, naming it and
/// why, before any cycle tries (nothing is written). None for a page blob.
pub(super) async fn managed_disk_type(cloud: &Cloud, disk: &DiskConfig) -> Option<CheckRow> {
    let crate::config::DiskSource::Managed { disk: id, .. } = &disk.source else {
        return None;
    };
    let row = |outcome, cause: String, missing: &str| CheckRow {
        disk: disk.name.clone(),
        operation: Operation::ManagedDiskType,
        target: id.to_string(),
        outcome,
        cause,
        missing: missing.to_string(),
    };
    let Some(arm) = &cloud.arm else {
        return Some(row(
            Outcome::Fail,
            "a managed disk needs an [azure] table".into(),
            "[azure]",
        ));
    };
    let arm = match arm {
        Ok(a) => a,
        Err(e) => return Some(row(Outcome::Fail, e.clone(), "[azure] credential")),
    };
    Some(match arm.get_disk(id).await {
        Ok(d) => match crate::source::managed_disk::props::admit(&d) {
            Ok(kind) => row(Outcome::Pass, kind, ""),
            Err(e) => row(Outcome::Fail, e.to_string(), ""),
        },
        Err(e) => row(
            Outcome::Fail,
            e.to_string(),
            "Microsoft.Compute/disks/read on the disk",
        ),
    })
}

/// A managed disk: its export settings, read with one `GET` of the disk (issue 17, item 4).
/// Its other ARM permissions are not exercised (docs/managed-disks.md, "Permissions"), so
/// the last row stays skipped and `check` of a managed disk exits 1.
pub(super) async fn check_managed(cloud: &Cloud, disk: &DiskConfig) -> Vec<CheckRow> {
    let row = |operation, outcome, cause: String, missing: String| CheckRow {
        disk: disk.name.clone(),
        operation,
        target: disk.source.to_string(),
        outcome,
        cause,
        missing,
    };
    let not_checked = || {
        row(
            Operation::SourceRead,
            Outcome::Skipped,
            "a managed disk: its ARM permissions (snapshots, access) are not checked by `snapback check`"
                .into(),
            String::new(),
        )
    };
    let crate::config::DiskSource::Managed {
        disk: id,
        snapshot_group,
    } = &disk.source
    else {
        return vec![not_checked()];
    };
    let Some(arm) = &cloud.arm else {
        return vec![row(
            Operation::ManagedExport,
            Outcome::Fail,
            "a managed disk needs an [azure] table".into(),
            "add [azure] with a credential (docs/managed-disks.md)".into(),
        )];
    };
    let disk_read = match arm {
        Ok(arm) => arm.get_disk(id).await,
        Err(e) => Err(crate::arm::ArmError::Credential { reason: e.clone() }),
    };
    let mut rows = Vec::new();
    match disk_read {
        Err(e) => rows.push(row(
            Operation::ManagedExport,
            Outcome::Fail,
            format!("cannot read the disk: {e}"),
            "Microsoft.Compute/disks/read on the disk for the [azure] identity (e.g. Disk Backup Reader)"
                .into(),
        )),
        Ok(d) => {
            let policy = &d.properties.export;
            let subject = id.to_string();
            let (outcome, cause, missing) = if let Some(b) = policy.blocked(&subject) {
                (
                    Outcome::Fail,
                    format!("{} = {}: its snapshots cannot be exported", b.property.name(), b.value),
                    b.fix(),
                )
            } else if policy.private_only() {
                let b = policy.blocked_by(&subject, crate::arm::ExportProperty::NetworkAccessPolicy);
                (
                    Outcome::Skipped,
                    "networkAccessPolicy = AllowPrivate: exported only through a private endpoint of its disk access; not provable from here".into(),
                    b.fix(),
                )
            } else if policy.needs_bearer() {
                (
                    Outcome::Pass,
                    format!(
                        "dataAccessAuthMode = AzureActiveDirectory: exports are read with the [azure] identity's token, which needs the '{}' role on the snapshot resource group (not proven here)",
                        crate::azure::sas_blob::DATA_OPERATOR_ROLE
                    ),
                    String::new(),
                )
            } else {
                (Outcome::Pass, String::new(), String::new())
            };
            rows.push(row(Operation::ManagedExport, outcome, cause, missing));
            // Azure's snapshot limits: warnings on a pass (the exit status is unchanged).
            let listed = match &arm {
                Ok(arm) => arm
                    .list_snapshots(snapshot_group, id, None)
                    .await
                    .map(|l| l.len())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let note = managed_limits_note(&disk.name, disk.schedule.as_ref(), listed, Utc::now());
            rows.push(row(Operation::ManagedLimits, Outcome::Pass, note, String::new()));
        }
    }
    rows.push(not_checked());
    rows
}
