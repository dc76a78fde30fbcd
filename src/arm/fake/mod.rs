//! [`MemArm`]: an in-memory ARM ([`crate::arm::Arm`]) and the data plane behind its SAS URLs
//! ([`crate::storage::ExportBlobs`]), over [`MemBlobs`], with Azure's rules where a cycle, a restore or a
//! rebase depends on them. For fast simulation tests of managed disks
//! (`tests/managed_simulation.rs`); the HTTP client is tested against the emulator and
//! Azure's recorded answers.
//!
//! The rules, and where they come from (docs/managed-disks.md):
//! - A disk is a page blob of the fake's own storage; an incremental snapshot is a snapshot
//!   of that blob taken when the PUT is accepted: a point-in-time copy, and the diff between
//!   two is the pages *written* since the older (`MemBlobs`' diff). A PUT of an existing name
//!   returns it (idempotent); with another source it is refused (409).
//! - Snapshots of Premium SSD v2 / Ultra disks copy in the background: `completionPercent`
//!   starts at 0 and moves on by [`MemArm::copy_step`] at every GET of the snapshot; at most
//!   3 may be pending per disk.
//! - A resource is read only through a grant: each `beginGetAccess` answers a URL of its own
//!   (`https://md-….blob.storage.azure.net/<container>/abcd?…sr=b…`, Azure's shape), and
//!   `securityDataAccessSAS` (`…/<guid>_vmgs`) when the guest state is asked for and the
//!   resource is Trusted Launch. `endGetAccess` revokes them: a read through a revoked URL is
//!   403. A diff names its base by the base's own URL (`x-ms-previous-snapshot-url`); bases
//!   of another disk are refused (400: Azure's answer is not documented; the fake's choice).
//! - Limits, refused with 409 `OperationNotAllowed` (Azure documents the limits, not the
//!   code; the emulator's choice, kept so the limits code is exercised): 7 snapshots per disk
//!   in 5 minutes of [`MemArm::advance`]'s clock, 500 per disk, 3 pending, a SAS on at most 5
//!   snapshots of one disk. Upload disks: 20 MiB + 512 bytes to 32 TiB + 512, a whole number
//!   of MiB + 512 (400).
//! - Deleting a snapshot or disk whose access is not ended: 409 (an assumption: Azure's
//!   answer is not recorded; see "Round trips of an incremental cycle"). A write grant only
//!   on a disk awaiting upload (409).
//! - Upload disks (`Upload`, or `UploadPreparedSecure` with a blank VM guest state) take
//!   pages through their write SAS and become ordinary disks of `uploadSizeBytes` − 512 bytes
//!   at `endGetAccess` (the footer is not part of the disk).
//!
//! [`MemArm::fail_after`] makes every ARM and data-plane call fail (503) after a number of
//! calls, as `MemBlobs::fail_after` does for storage.
//!
//! - `arm`: the ARM operations and their rules.
//! - `export`: the granted URLs and the data plane behind them.

mod arm;
mod export;

use super::error::ArmError;
use super::id::{ResourceId, ResourceKind};
use super::models::{
    Access, CreationData, Disk, DiskProperties, SecurityProfile, Sku, Snapshot, Tags,
};
use crate::storage::fake::MemBlobs;
use crate::storage::{BlobError, BlobRef, NewPageBlob, PageBlobs};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, MutexGuard};

const MIB: u64 = 1 << 20;
/// The VM guest state blob of a Trusted Launch disk (the emulator's size, Azure's order).
pub const VMGS_BYTES: u64 = 4 * MIB;
const MAX_PER_WINDOW: usize = 7;
const WINDOW_MS: i64 = 5 * 60 * 1000;
const MAX_SNAPSHOTS: usize = 500;
const MAX_PENDING: usize = 3;
const MAX_ACTIVE_SAS: usize = 5;
const LIMIT_CODE: &str = "OperationNotAllowed";

/// A disk as a test makes it (standing for one a VM uses).
#[derive(Clone, Debug)]
pub struct NewDisk {
    pub size: u64,
    pub location: String,
    /// e.g. `Premium_LRS`, `PremiumV2_LRS`.
    pub sku: Option<String>,
    /// `creationData.logicalSectorSize` (Premium SSD v2 / Ultra).
    pub logical_sector_size: Option<u32>,
    /// e.g. `TrustedLaunch`: the disk then has a blank VM guest state.
    pub security_type: Option<String>,
    pub os_type: Option<String>,
    pub hyper_v_generation: Option<String>,
}

impl Default for NewDisk {
    fn default() -> Self {
        NewDisk {
            size: 4 * MIB,
            location: "westeurope".into(),
            sku: Some("Premium_LRS".into()),
            logical_sector_size: None,
            security_type: None,
            os_type: None,
            hyper_v_generation: None,
        }
    }
}

/// Where a resource's bytes are in the fake's storage: its blob (a snapshot of it for a
/// snapshot resource), and the VM guest state blob's.
#[derive(Clone, Debug)]
struct Data {
    blob: BlobRef,
    snapshot: Option<String>,
    vmgs: Option<(BlobRef, Option<String>)>,
}

struct DiskEntry {
    disk: Disk,
    data: Data,
    /// `uploadSizeBytes` while the disk awaits (or takes) its upload.
    upload: Option<u64>,
    access: Option<Access>,
}

struct SnapEntry {
    snap: Snapshot,
    data: Data,
    /// The lower-cased id of the disk it was taken of (its family, for the SAS limit).
    disk: String,
    access: bool,
}

/// What a granted URL opens.
struct Export {
    /// The lower-cased id of the resource it was granted on.
    resource: String,
    blob: BlobRef,
    snapshot: Option<String>,
    write: bool,
}

#[derive(Default)]
struct State {
    disks: BTreeMap<String, DiskEntry>,
    snapshots: BTreeMap<String, SnapEntry>,
    /// By the URL's path.
    exports: HashMap<String, Export>,
    /// Snapshot creation times (ms) by lower-cased disk id, deleted ones too (the rate limit).
    created: HashMap<String, Vec<i64>>,
    now_ms: i64,
    next: u64,
    fail_after: Option<u64>,
}

/// The in-memory ARM. Cloning shares it.
#[derive(Clone)]
pub struct MemArm {
    state: Arc<Mutex<State>>,
    data: MemBlobs,
    /// Percentage points a background copy moves on at each GET of its snapshot.
    pub copy_step: f64,
}

impl Default for MemArm {
    fn default() -> Self {
        Self::new()
    }
}

fn key(id: &ResourceId) -> String {
    id.to_string().to_ascii_lowercase()
}

fn refused(op: &'static str, id: &ResourceId, status: u16, code: &str, why: &str) -> ArmError {
    ArmError::Service {
        operation: op,
        resource: id.to_string(),
        status,
        code: code.to_string(),
        message: why.to_string(),
    }
}

fn not_found(op: &'static str, id: &ResourceId) -> ArmError {
    refused(op, id, 404, "ResourceNotFound", "not found")
}

/// A storage failure of the fake's own blobs: a bug of the fake, reported as a server error.
fn internal<'a>(op: &'static str, id: &'a ResourceId) -> impl Fn(BlobError) -> ArmError + 'a {
    move |e| refused(op, id, 500, "InternalError", &e.to_string())
}

fn copies_in_background(disk: &Disk) -> bool {
    disk.sku
        .as_ref()
        .is_some_and(|s| matches!(s.name.as_str(), "PremiumV2_LRS" | "UltraSSD_LRS"))
}

fn is_pending(s: &Snapshot) -> bool {
    s.properties.completion_percent.is_some_and(|p| p < 100.0)
}

impl MemArm {
    pub fn new() -> Self {
        MemArm {
            state: Arc::new(Mutex::new(State {
                now_ms: chrono::Utc::now().timestamp_millis(),
                ..Default::default()
            })),
            data: MemBlobs::new(),
            copy_step: 50.0,
        }
    }

    /// Every call (ARM and data plane) fails with 503 after `n` more succeed (None: never).
    pub async fn fail_after(&self, n: Option<u64>) {
        self.state.lock().await.fail_after = n;
    }

    /// Moves the fake's clock (snapshot creation times, the rate limit's window) on.
    pub async fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let mut s = self.state.lock().await;
        s.now_ms = s.now_ms.saturating_add(ms);
    }

    /// Locks the state, counting the call against [`Self::fail_after`].
    async fn enter(
        &self,
        op: &'static str,
        id: &ResourceId,
    ) -> Result<MutexGuard<'_, State>, ArmError> {
        let mut s = self.state.lock().await;
        match s.fail_after {
            Some(0) => Err(refused(op, id, 503, "ServerBusy", "injected failure")),
            Some(n) => {
                s.fail_after = Some(n - 1);
                Ok(s)
            }
            None => Ok(s),
        }
    }

    fn id(s: &mut State) -> u64 {
        s.next += 1;
        s.next
    }

    /// Makes a disk (a test standing for `az disk create`); returns it as ARM does.
    pub async fn create_disk(&self, id: &ResourceId, new: &NewDisk) -> Result<Disk, ArmError> {
        self.add_disk("create disk", id, new.size, None, |d| {
            d.location = new.location.clone();
            d.sku = new.sku.clone().map(|name| Sku { name, tier: None });
            let p = &mut d.properties;
            p.creation_data.create_option = "Empty".into();
            p.creation_data.logical_sector_size = new.logical_sector_size;
            p.disk_size_bytes = Some(new.size);
            p.disk_state = Some("Unattached".into());
            p.security_profile = new.security_type.clone().map(|t| SecurityProfile {
                security_type: Some(t),
                secure_vm_disk_encryption_set_id: None,
            });
            p.os_type = new.os_type.clone();
            p.hyper_v_generation = new.hyper_v_generation.clone();
        })
        .await
    }

    /// A new disk `id` on blank blobs of `blob_size` bytes (and a blank guest state when
    /// `shape` makes it Trusted Launch); `upload`: awaiting an upload of that many bytes.
    /// A disk of that name is refused (409).
    async fn add_disk(
        &self,
        op: &'static str,
        id: &ResourceId,
        blob_size: u64,
        upload: Option<u64>,
        shape: impl FnOnce(&mut Disk),
    ) -> Result<Disk, ArmError> {
        let mut s = self.enter(op, id).await?;
        if s.disks.contains_key(&key(id)) {
            return Err(refused(op, id, 409, "Conflict", "the disk exists"));
        }
        let n = Self::id(&mut s);
        let mut disk = disk_resource(id, n);
        shape(&mut disk);
        let guest = SecurityProfile::is_trusted_launch(disk.properties.security_profile.as_ref());
        let data = self.blank(op, id, n, blob_size, guest).await?;
        let entry = DiskEntry {
            disk: disk.clone(),
            data,
            upload,
            access: None,
        };
        s.disks.insert(key(id), entry);
        Ok(disk)
    }

    /// Blank blobs of `size` bytes (and a guest state) for resource number `n`.
    async fn blank(
        &self,
        op: &'static str,
        id: &ResourceId,
        n: u64,
        size: u64,
        guest_state: bool,
    ) -> Result<Data, ArmError> {
        let blob = BlobRef::new("md", &format!("d{n}"), "abcd");
        let new = NewPageBlob::default();
        self.data
            .create_page_blob(&blob, size, &new)
            .await
            .map_err(internal(op, id))?;
        let vmgs = if guest_state {
            let g = BlobRef::new("md", &format!("d{n}"), "vmgs");
            self.data
                .create_page_blob(&g, VMGS_BYTES, &new)
                .await
                .map_err(internal(op, id))?;
            Some((g, None))
        } else {
            None
        };
        Ok(Data {
            blob,
            snapshot: None,
            vmgs,
        })
    }

    async fn disk_data(&self, id: &ResourceId) -> Data {
        let s = self.state.lock().await;
        match s.disks.get(&key(id)) {
            Some(d) => d.data.clone(),
            None => panic!("the test wrote to {id}, which the fake has no disk of"),
        }
    }

    /// Writes `data` at `offset` of the disk (the VM writing); test helper, so a write off
    /// the disk's end is the test's bug and panics.
    pub async fn write(&self, id: &ResourceId, offset: u64, data: &[u8]) {
        let d = self.disk_data(id).await;
        self.data
            .put_pages(&d.blob, offset, Bytes::copy_from_slice(data), None)
            .await
            .unwrap_or_else(|e| panic!("write to {id}: {e}"));
    }

    /// Writes into the disk's VM guest state (the guest changing its vTPM).
    pub async fn write_guest_state(&self, id: &ResourceId, offset: u64, data: &[u8]) {
        let Some((g, _)) = self.disk_data(id).await.vmgs else {
            panic!("{id} has no VM guest state");
        };
        self.data
            .put_pages(&g, offset, Bytes::copy_from_slice(data), None)
            .await
            .unwrap_or_else(|e| panic!("guest state of {id}: {e}"));
    }

    /// The bytes of a disk or snapshot, and of its guest state, as they are now.
    pub async fn content(&self, id: &ResourceId) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let d = {
            let s = self.state.lock().await;
            match id.kind {
                ResourceKind::Disk => s.disks.get(&key(id)).map(|d| d.data.clone()),
                ResourceKind::Snapshot => s.snapshots.get(&key(id)).map(|d| d.data.clone()),
            }
        };
        let Some(d) = d else {
            return (None, None);
        };
        let guest = d
            .vmgs
            .and_then(|(g, at)| self.data.content(&g, at.as_deref()));
        (self.data.content(&d.blob, d.snapshot.as_deref()), guest)
    }

    /// Grows or shrinks a disk (`az disk update --size-gb`).
    pub async fn resize(&self, id: &ResourceId, size: u64) {
        let mut s = self.state.lock().await;
        let Some(d) = s.disks.get_mut(&key(id)) else {
            panic!("no disk {id} to resize");
        };
        d.disk.properties.disk_size_bytes = Some(size);
        let blob = d.data.blob.clone();
        self.data
            .resize(&blob, size, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("resize {id}: {e}"));
    }

    /// Ids of every snapshot resource, and of every resource with access granted.
    pub async fn inventory(&self) -> (Vec<String>, Vec<String>) {
        let s = self.state.lock().await;
        let snaps = s.snapshots.values().map(|e| e.snap.id.clone()).collect();
        let mut access: Vec<String> = s
            .snapshots
            .values()
            .filter(|e| e.access)
            .map(|e| e.snap.id.clone())
            .collect();
        access.extend(
            s.disks
                .values()
                .filter(|e| e.access.is_some())
                .map(|e| e.disk.id.clone()),
        );
        (snaps, access)
    }
}

/// Disk number `n` as ARM reports one with nothing set.
fn disk_resource(id: &ResourceId, n: u64) -> Disk {
    Disk {
        id: id.to_string(),
        name: id.name.clone(),
        location: String::new(),
        sku: None,
        zones: Vec::new(),
        tags: Tags::new(),
        properties: DiskProperties {
            creation_data: CreationData::default(),
            disk_size_bytes: None,
            unique_id: Some(format!("00000000-0000-4000-8000-{n:012x}")),
            provisioning_state: Some("Succeeded".into()),
            disk_state: None,
            export: Default::default(),
            os_type: None,
            hyper_v_generation: None,
            supported_capabilities: None,
            security_profile: None,
            encryption: None,
            tier: None,
        },
    }
}
