//! The [`Arm`] operations of [`MemArm`], with Azure's rules (see the module above).

use super::{
    copies_in_background, internal, is_pending, key, not_found, refused, Data, MemArm, SnapEntry,
    LIMIT_CODE, MAX_ACTIVE_SAS, MAX_PENDING, MAX_PER_WINDOW, MAX_SNAPSHOTS, MIB, WINDOW_MS,
};
use crate::arm::api::Arm;
use crate::arm::error::ArmError;
use crate::arm::id::{ResourceGroup, ResourceId, ResourceKind};
use crate::arm::models::{
    Access, AccessGrant, CreationData, Disk, DiskRecipe, SecurityProfile, Sku, Snapshot,
    SnapshotProperties, Tags, UploadDiskSpec,
};
use crate::storage::PageBlobs;
use async_trait::async_trait;
use std::time::Duration;

#[async_trait]
impl Arm for MemArm {
    async fn get_disk(&self, id: &ResourceId) -> Result<Disk, ArmError> {
        let s = self.enter("get disk", id).await?;
        s.disks
            .get(&key(id))
            .map(|d| d.disk.clone())
            .ok_or_else(|| not_found("get disk", id))
    }

    async fn get_snapshot(&self, id: &ResourceId) -> Result<Snapshot, ArmError> {
        let mut s = self.enter("get snapshot", id).await?;
        let e = s
            .snapshots
            .get_mut(&key(id))
            .ok_or_else(|| not_found("get snapshot", id))?;
        // The background copy moves on between reads.
        if let Some(p) = e.snap.properties.completion_percent.as_mut() {
            *p = (*p + self.copy_step).min(100.0);
        }
        Ok(e.snap.clone())
    }

    async fn create_incremental_snapshot(
        &self,
        id: &ResourceId,
        source: &Disk,
        tags: &Tags,
    ) -> Result<Snapshot, ArmError> {
        const OP: &str = "create snapshot";
        let mut s = self.enter(OP, id).await?;
        if let Some(e) = s.snapshots.get(&key(id)) {
            let same = e
                .snap
                .properties
                .creation_data
                .source_resource_id
                .as_deref()
                .is_some_and(|src| src.eq_ignore_ascii_case(&source.id));
            return match same {
                true => Ok(e.snap.clone()),
                false => Err(refused(
                    OP,
                    id,
                    409,
                    "PropertyChangeNotAllowed",
                    "another source",
                )),
            };
        }
        let disk_key = source.id.to_ascii_lowercase();
        let (disk, data) = match s.disks.get(&disk_key) {
            Some(d) if d.upload.is_none() => (d.disk.clone(), d.data.clone()),
            Some(_) => {
                return Err(refused(
                    OP,
                    id,
                    409,
                    LIMIT_CODE,
                    "the disk awaits an upload",
                ))
            }
            None => {
                return Err(refused(
                    OP,
                    id,
                    404,
                    "ResourceNotFound",
                    "no such source disk",
                ))
            }
        };
        let now = s.now_ms;
        let of_disk: Vec<&SnapEntry> = s
            .snapshots
            .values()
            .filter(|e| e.disk == disk_key)
            .collect();
        let recent = s
            .created
            .get(&disk_key)
            .map_or(0, |t| t.iter().filter(|t| now - **t < WINDOW_MS).count());
        let background = copies_in_background(&disk);
        if of_disk.len() >= MAX_SNAPSHOTS
            || recent >= MAX_PER_WINDOW
            || (background && of_disk.iter().filter(|e| is_pending(&e.snap)).count() >= MAX_PENDING)
        {
            return Err(refused(
                OP,
                id,
                409,
                LIMIT_CODE,
                "a snapshot limit of the disk",
            ));
        }
        let tag = tags.clone();
        let taken = self
            .data
            .create_snapshot(&data.blob, &Default::default())
            .await
            .map_err(internal(OP, id))?;
        let vmgs = match &data.vmgs {
            Some((g, _)) => Some((
                g.clone(),
                Some(
                    self.data
                        .create_snapshot(g, &Default::default())
                        .await
                        .map_err(internal(OP, id))?,
                ),
            )),
            None => None,
        };
        s.now_ms += 1;
        let at = s.now_ms;
        s.created.entry(disk_key.clone()).or_default().push(at);
        let time = chrono::DateTime::from_timestamp_millis(at)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let snap = Snapshot {
            id: id.to_string(),
            name: id.name.clone(),
            location: disk.location.clone(),
            tags: tag,
            properties: SnapshotProperties {
                creation_data: CreationData {
                    create_option: "Copy".into(),
                    source_resource_id: Some(disk.id.clone()),
                    source_unique_id: disk.properties.unique_id.clone(),
                    logical_sector_size: disk.properties.creation_data.logical_sector_size,
                    ..Default::default()
                },
                incremental: Some(true),
                disk_size_bytes: disk.properties.disk_size_bytes,
                provisioning_state: Some("Succeeded".into()),
                completion_percent: Some(if background { 0.0 } else { 100.0 }),
                disk_state: Some("Unattached".into()),
                time_created: Some(time),
                // As the client sends it: never more exportable than the disk.
                export: source.properties.export.restrictive(),
                security_profile: disk.properties.security_profile.clone(),
                snapshot_access_state: None,
            },
        };
        s.snapshots.insert(
            key(id),
            SnapEntry {
                snap: snap.clone(),
                data: Data {
                    blob: data.blob.clone(),
                    snapshot: Some(taken),
                    vmgs,
                },
                disk: disk_key,
                access: false,
            },
        );
        Ok(snap)
    }

    async fn list_snapshots(
        &self,
        group: &ResourceGroup,
        source: &ResourceId,
    ) -> Result<Vec<Snapshot>, ArmError> {
        let s = self.enter("list snapshots", source).await?;
        let prefix = format!(
            "/subscriptions/{}/resourcegroups/{}/",
            group.subscription, group.name
        )
        .to_ascii_lowercase();
        Ok(s.snapshots
            .iter()
            .filter(|(k, e)| k.starts_with(&prefix) && e.disk == key(source))
            .map(|(_, e)| e.snap.clone())
            .collect())
    }

    async fn delete_snapshot(&self, id: &ResourceId) -> Result<(), ArmError> {
        const OP: &str = "delete snapshot";
        let mut s = self.enter(OP, id).await?;
        match s.snapshots.get(&key(id)) {
            None => return Ok(()),
            Some(e) if e.access => {
                return Err(refused(OP, id, 409, LIMIT_CODE, "its access is not ended"))
            }
            Some(_) => {}
        }
        if let Some(e) = s.snapshots.remove(&key(id)) {
            for (blob, at) in [Some((e.data.blob, e.data.snapshot)), e.data.vmgs]
                .into_iter()
                .flatten()
            {
                if let Some(at) = at {
                    self.data
                        .delete_snapshot(&blob, &at)
                        .await
                        .map_err(internal(OP, id))?;
                }
            }
        }
        Ok(())
    }

    async fn delete_disk(&self, id: &ResourceId) -> Result<(), ArmError> {
        const OP: &str = "delete disk";
        let mut s = self.enter(OP, id).await?;
        if s.disks.get(&key(id)).is_some_and(|d| d.access.is_some()) {
            return Err(refused(OP, id, 409, LIMIT_CODE, "its access is not ended"));
        }
        // Its snapshots stay, as on Azure; its blobs stay behind them.
        s.disks.remove(&key(id));
        Ok(())
    }

    async fn grant_access(
        &self,
        id: &ResourceId,
        access: Access,
        _duration: Duration,
        guest_state: bool,
    ) -> Result<AccessGrant, ArmError> {
        const OP: &str = "begin get access";
        let mut s = self.enter(OP, id).await?;
        let resource = key(id);
        match id.kind {
            ResourceKind::Snapshot => {
                let e = s
                    .snapshots
                    .get(&resource)
                    .ok_or_else(|| not_found(OP, id))?;
                let family = e.disk.clone();
                if access == Access::Write
                    || is_pending(&e.snap)
                    || e.snap.properties.export.blocked(&e.snap.id).is_some()
                {
                    return Err(refused(OP, id, 409, LIMIT_CODE, "not exportable now"));
                }
                let others = s
                    .snapshots
                    .iter()
                    .filter(|(k, o)| o.disk == family && o.access && **k != resource)
                    .count();
                if others >= MAX_ACTIVE_SAS {
                    return Err(refused(OP, id, 409, LIMIT_CODE, "5 SAS of the disk family"));
                }
                let data = e.data.clone();
                let trusted =
                    SecurityProfile::is_trusted_launch(e.snap.properties.security_profile.as_ref());
                let grant =
                    Self::grant_urls(&mut s, &resource, &data, false, guest_state && trusted);
                if let Some(e) = s.snapshots.get_mut(&resource) {
                    e.access = true;
                    e.snap.properties.disk_state = Some("ActiveSAS".into());
                }
                Ok(grant)
            }
            ResourceKind::Disk => {
                let d = s.disks.get(&resource).ok_or_else(|| not_found(OP, id))?;
                let state = match (access, d.upload.is_some()) {
                    (Access::Write, true) => "ActiveUpload",
                    (Access::Read, false) => "ActiveSAS",
                    _ => {
                        return Err(refused(
                            OP,
                            id,
                            409,
                            LIMIT_CODE,
                            "not in a state for that access",
                        ))
                    }
                };
                let data = d.data.clone();
                let trusted =
                    SecurityProfile::is_trusted_launch(d.disk.properties.security_profile.as_ref());
                let grant = Self::grant_urls(
                    &mut s,
                    &resource,
                    &data,
                    access == Access::Write,
                    guest_state && trusted,
                );
                if let Some(d) = s.disks.get_mut(&resource) {
                    d.access = Some(access);
                    d.disk.properties.disk_state = Some(state.into());
                }
                Ok(grant)
            }
        }
    }

    async fn end_get_access(&self, id: &ResourceId) -> Result<(), ArmError> {
        const OP: &str = "end get access";
        let mut s = self.enter(OP, id).await?;
        let resource = key(id);
        s.exports.retain(|_, e| e.resource != resource);
        if let Some(e) = s.snapshots.get_mut(&resource) {
            e.access = false;
            e.snap.properties.disk_state = Some("Unattached".into());
            return Ok(());
        }
        let d = s
            .disks
            .get_mut(&resource)
            .ok_or_else(|| not_found(OP, id))?;
        d.access = None;
        d.disk.properties.disk_state = Some("Unattached".into());
        // The end of an upload: the disk is what was written, without the VHD footer.
        if let Some(upload) = d.upload.take() {
            let size = upload.saturating_sub(512);
            d.disk.properties.disk_size_bytes = Some(size);
            let blob = d.data.blob.clone();
            self.data
                .resize(&blob, size, &Default::default())
                .await
                .map_err(internal(OP, id))?;
        }
        Ok(())
    }

    async fn create_upload_disk(
        &self,
        id: &ResourceId,
        spec: &UploadDiskSpec,
        recipe: &DiskRecipe,
    ) -> Result<Disk, ArmError> {
        let size = spec.upload_size_bytes;
        let disk_part = size.saturating_sub(512);
        // Azure's documented sizes, written here rather than taken from the restore's own
        // constants: the fake must be able to disagree with the client.
        if !(20 * MIB + 512..=(32 << 40) + 512).contains(&size) || !disk_part.is_multiple_of(MIB) {
            let why = "uploadSizeBytes out of Azure's sizes";
            return Err(refused("create disk", id, 400, "BadRequest", why));
        }
        let secure = SecurityProfile::is_trusted_launch(recipe.security_profile.as_ref());
        self.add_disk("create disk", id, size, Some(size), |d| {
            d.location = spec.location.clone();
            d.sku = spec.sku.clone().map(|name| Sku { name, tier: None });
            d.zones = spec.zone.iter().cloned().collect();
            d.tags = spec.tags.clone();
            let p = &mut d.properties;
            p.creation_data.create_option = if secure {
                "UploadPreparedSecure"
            } else {
                "Upload"
            }
            .into();
            p.creation_data.upload_size_bytes = Some(size);
            p.creation_data.logical_sector_size = recipe.logical_sector_size;
            p.disk_state = Some("ReadyToUpload".into());
            p.os_type = recipe.os_type.clone();
            p.hyper_v_generation = recipe.hyper_v_generation.clone();
            p.supported_capabilities = recipe.supported_capabilities.clone();
            p.security_profile = recipe.security_profile.clone();
            p.encryption = recipe.encryption.clone();
            p.tier = recipe.tier.clone();
        })
        .await
    }
}
