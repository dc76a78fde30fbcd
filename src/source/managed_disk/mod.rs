//! A managed disk as a backup [`Source`]: its snapshots are ARM incremental snapshot
//! resources, read and diffed through the SAS URLs `beginGetAccess` returns
//! (docs/managed-disks.md, "The cycle").
//!
//! - `S(n)` is the snapshot resource `{disk}-sb-{cycle}` in the snapshot resource group,
//!   tagged like a blob snapshot (`snapback_disk`, `snapback_cycle`). The name is derived
//!   from the cycle, so "find before make" is one GET, and the PUT is idempotent too.
//! - A [`SnapshotId`] is the snapshot's resource id.
//! - Reads need a read SAS; it is granted the first time a snapshot is read in this process
//!   and kept in memory (never persisted: it is a credential). [`Source::release`] ends
//!   every access to the disk's tagged snapshots — at the end of each cycle and before one
//!   starts, so access a killed process left is ended too. `S(n-1)`'s access is ended as
//!   soon as the diff is listed, in the background beside the rest of the apply
//!   ([`Source::diff_listed`]). At most two snapshots of a disk (`S(n)` and `S(n-1)`) have
//!   access at once, well under Azure's 5 per disk.
//! - Sizes are the disk's `diskSizeBytes`. The exported blob is a fixed VHD, that size plus a
//!   512-byte footer; snapback reads and backs up only the disk's bytes, so a restore point
//!   is the raw disk image (the footer is written again by a restore to a managed disk).
//!
//! This file holds the source's state and its ARM lookups, reads, guest state, recorded
//! properties and limits; `source_impl` maps the [`Source`] trait onto them, and `grants`
//! keeps the read access it holds and its ends.
//!
//! [`Source`]: crate::source::Source
//! [`Source::release`]: crate::source::Source::release
//! [`Source::diff_listed`]: crate::source::Source::diff_listed

pub mod access;
mod grants;
pub mod props;
mod source_impl;

use crate::arm::{
    Arm, ArmError, ArmErrorKind, Disk, ResourceGroup, ResourceId, SecurityProfile, Snapshot,
};
use crate::model::pages::ByteRange;
use crate::model::secrets::SasUrl;
use crate::model::{tags, SnapshotId};
use crate::source::snapshot_limits::ManagedLimit;
use crate::source::SourceSnapshot;
use crate::storage::{BlobError, BlobResult, ErrorKind, ExportBlobs, Resource};
use bytes::Bytes;
use grants::Ending;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Azure diffs incremental snapshots of a managed disk only on one side of 4 TiB: a disk
/// grown across it needs a new full copy
/// (<https://learn.microsoft.com/azure/virtual-machines/disks-incremental-snapshots>).
pub const MANAGED_DIFF_BOUNDARY: u64 = 4 << 40;

pub mod limits;

/// The shortest read SAS asked for. A cycle reads `S(n)` for as long as its apply runs, and
/// a seed's Copy Blob reads it for the whole copy (longer for a big snapshot:
/// [`crate::storage::copy_source_lifetime`]); access is ended explicitly when the cycle is
/// done, so a long grant does not stay open.
const READ_SAS_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// How long a snapshot may take to become readable (`completionPercent` 100: Premium SSD v2
/// and Ultra disks copy in the background, for hours on large disks).
const READY_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// ARM's longest snapshot name.
const MAX_NAME: usize = 80;

/// See [`ManagedDiskSource::seen`].
#[derive(Default)]
struct Seen {
    /// Whether the chain's snapshots were listed in this cycle: then a snapshot of the
    /// chain that is not in `snapshots` was not there (a cycle's own `S(n)` is found by its
    /// PUT, which is idempotent by name, so a wrong "absent" never makes a second one).
    listed: bool,
    snapshots: HashMap<String, Snapshot>,
    disk: Option<Disk>,
}

pub struct ManagedDiskSource {
    /// ARM (the HTTP client, or the in-memory fake of the simulation tests).
    arm: Arc<dyn Arm>,
    /// The data plane behind the SAS URLs ARM grants.
    sas: Arc<dyn ExportBlobs>,
    disk: ResourceId,
    snapshot_group: ResourceGroup,
    /// Read SAS granted by this process, by lower-cased snapshot id.
    granted: Mutex<HashMap<String, SasUrl>>,
    /// The VM guest state SAS (`securityDataAccessSAS`) of the same grants, for snapshots
    /// of a Trusted Launch disk; ended with them.
    guest: Mutex<HashMap<String, SasUrl>>,
    /// Ends of access started in the background ([`Source::diff_listed`]), by lower-cased
    /// snapshot id: still running, or `None` once one failed (the access then counts as
    /// granted: prune, or the next cycle's sweep, ends it again). Settled before the
    /// snapshot is granted again, its access ended again or the snapshot deleted.
    ///
    /// [`Source::diff_listed`]: crate::source::Source::diff_listed
    ending: Mutex<HashMap<String, Option<Ending>>>,
    /// What this source saw of ARM in its cycle (a source lives for one cycle), so no
    /// resource is fetched twice: the chain's snapshots as last listed or made, by
    /// lower-cased id, and the disk as read before its snapshot was taken.
    seen: Mutex<Seen>,
    /// Wait between readiness polls of a snapshot still copying.
    ready_poll: Duration,
    /// Storage requests through SAS URLs and diff ranges listed, for the cycle's stats.
    requests: AtomicU64,
    ranges: AtomicU64,
    /// The backup chain (`snapback_chain`) whose snapshots this source takes and sweeps;
    /// None (verify, restore, check: no lease, no chain id) sees every snapshot of the disk.
    chain: Option<String>,
    /// Where the wait for a snapshot's background copy is shown (`status`).
    progress: Option<std::sync::Arc<crate::model::progress::Progress>>,
    /// The limit the last refused snapshot or access hit, as [`limits`] decided it when the
    /// refusal came (the listing is read then); [`Source::limit_of`] hands it to the runner.
    ///
    /// [`Source::limit_of`]: crate::source::Source::limit_of
    limit: Mutex<Option<ManagedLimit>>,
}

impl ManagedDiskSource {
    pub fn new(
        arm: Arc<dyn Arm>,
        sas: Arc<dyn ExportBlobs>,
        disk: ResourceId,
        snapshot_group: ResourceGroup,
    ) -> Self {
        ManagedDiskSource {
            arm,
            sas,
            disk,
            snapshot_group,
            granted: Mutex::new(HashMap::new()),
            guest: Mutex::new(HashMap::new()),
            ending: Mutex::new(HashMap::new()),
            seen: Mutex::new(Seen::default()),
            ready_poll: Duration::from_secs(10),
            requests: AtomicU64::new(0),
            ranges: AtomicU64::new(0),
            chain: None,
            progress: None,
            limit: Mutex::new(None),
        }
    }

    /// Snapshots taken are tagged with `chain`; found, released and pruned ones are only
    /// this chain's (and untagged ones from before chain ids), so two installations backing
    /// up one disk under one name never delete each other's snapshots.
    pub fn in_chain(mut self, chain: Option<&str>) -> Self {
        self.chain = chain.map(str::to_string);
        self
    }

    /// Sets the wait between readiness polls (tests).
    pub fn with_ready_poll(mut self, wait: Duration) -> Self {
        self.ready_poll = wait;
        self
    }

    /// The resource id of the snapshot cycle `cycle` takes.
    fn snapshot_id(&self, cycle: &str) -> BlobResult<ResourceId> {
        let suffix = format!("-sb-{cycle}");
        let keep = MAX_NAME.saturating_sub(suffix.len());
        let stem: String = self.disk.name.chars().take(keep).collect();
        ResourceId::snapshot_in(&self.snapshot_group, &format!("{stem}{suffix}")).map_err(|e| {
            BlobError::local(
                ErrorKind::Unusable,
                Resource::Managed(self.disk.to_string()),
                e.to_string(),
            )
        })
    }

    fn parse_id(&self, snapshot: &SnapshotId) -> BlobResult<ResourceId> {
        snapshot.as_str().parse::<ResourceId>().map_err(|e| {
            BlobError::local(
                ErrorKind::Unusable,
                Resource::Managed(snapshot.as_str().to_string()),
                e.to_string(),
            )
        })
    }

    /// The snapshot, or None if it does not exist: from ARM.
    async fn get(&self, id: &ResourceId) -> BlobResult<Option<Snapshot>> {
        match self.arm.get_snapshot(id).await {
            Ok(s) => {
                self.remember(&s);
                Ok(Some(s))
            }
            Err(e) if e.kind() == ArmErrorKind::NotFound => {
                self.seen().snapshots.remove(&key(id));
                Ok(None)
            }
            Err(e) => Err(arm_err(id, e)),
        }
    }

    /// The snapshot as this cycle last saw it (listed, made or read), else from ARM.
    async fn known(&self, id: &ResourceId) -> BlobResult<Option<Snapshot>> {
        let cached = self.seen().snapshots.get(&key(id)).cloned();
        match cached {
            Some(s) => Ok(Some(s)),
            None => self.get(id).await,
        }
    }

    fn remember(&self, s: &Snapshot) {
        if let Ok(id) = s.id.parse::<ResourceId>() {
            self.seen().snapshots.insert(key(&id), s.clone());
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        // A panic while holding it leaves it consistent (single inserts/removes).
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The disk: read once per cycle (location, `uniqueId`, size).
    async fn disk(&self) -> BlobResult<Disk> {
        if let Some(d) = self.seen().disk.clone() {
            return Ok(d);
        }
        let d = self
            .arm
            .get_disk(&self.disk)
            .await
            .map_err(|e| arm_err(&self.disk, e))?;
        self.seen().disk = Some(d.clone());
        Ok(d)
    }

    /// Waits until `snap` is readable; returns it with its size.
    async fn ready(&self, id: &ResourceId, mut snap: Snapshot) -> BlobResult<SourceSnapshot> {
        let started = Instant::now();
        while !snap.is_ready() {
            if started.elapsed() > READY_TIMEOUT {
                return Err(BlobError::local(
                    ErrorKind::Transient,
                    Resource::Managed(id.to_string()),
                    format!(
                        "snapshot not ready after {} h (completionPercent {:?})",
                        READY_TIMEOUT.as_secs() / 3600,
                        snap.properties.completion_percent
                    ),
                ));
            }
            self.show_copy(&snap);
            tokio::time::sleep(self.ready_poll).await;
            snap = self.get(id).await?.ok_or_else(|| gone(id))?;
        }
        let size = snap.properties.disk_size_bytes.ok_or_else(|| {
            BlobError::bad_response(
                Resource::Managed(id.to_string()),
                200,
                "MissingDiskSize",
                "the snapshot has no diskSizeBytes".into(),
            )
        })?;
        Ok(SourceSnapshot {
            id: SnapshotId::new(id.to_string()),
            size,
        })
    }

    /// The disk's snapshots tagged for `disk` (in this source's chain), oldest first.
    async fn tagged(&self, disk: &str) -> BlobResult<Vec<Snapshot>> {
        let mut all = self
            .arm
            .list_snapshots(&self.snapshot_group, &self.disk)
            .await
            .map_err(|e| arm_err(&self.disk, e))?;
        all.retain(|s| match self.chain.as_deref() {
            Some(chain) => tags::of_chain(&s.tags, disk, Some(chain)),
            None => tags::disk(&s.tags) == Some(disk),
        });
        {
            let mut seen = self.seen();
            seen.listed = true;
            seen.snapshots.clear();
            for s in &all {
                if let Ok(id) = s.id.parse::<ResourceId>() {
                    seen.snapshots.insert(key(&id), s.clone());
                }
            }
        }
        // ISO 8601 times of one format sort as strings; the name breaks ties.
        all.sort_by(|a, b| {
            (&a.properties.time_created, &a.name).cmp(&(&b.properties.time_created, &b.name))
        });
        Ok(all)
    }
}

fn lock_map<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of the source's maps leaves it consistent (single inserts
    // and removes).
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The key of a resource in [`ManagedDiskSource::granted`] and [`Seen::snapshots`] (ARM
/// ids are case-insensitive).
fn key(id: &ResourceId) -> String {
    id.to_string().to_ascii_lowercase()
}

/// "This snapshot is gone", in the terms [`Source::snapshot_resource`] compares.
///
/// [`Source::snapshot_resource`]: crate::source::Source::snapshot_resource
fn gone(id: &ResourceId) -> BlobError {
    BlobError::local(
        ErrorKind::NotFound,
        Resource::Managed(id.to_string()),
        "snapshot resource not found",
    )
}

/// An ARM failure as a storage error about `id`: the kind follows ARM's.
pub(crate) fn arm_err(id: &ResourceId, e: ArmError) -> BlobError {
    let kind = match e.kind() {
        ArmErrorKind::NotFound => ErrorKind::NotFound,
        ArmErrorKind::Conflict => ErrorKind::Conflict,
        ArmErrorKind::Unauthorized => ErrorKind::Auth,
        ArmErrorKind::Throttled => ErrorKind::Throttled,
        ArmErrorKind::Server
        | ArmErrorKind::Timeout
        | ArmErrorKind::Transport
        | ArmErrorKind::OperationFailed => ErrorKind::Transient,
        ArmErrorKind::BadRequest => ErrorKind::BadRequest,
        ArmErrorKind::InvalidResponse => ErrorKind::BadResponse,
        ArmErrorKind::Credential => ErrorKind::Unusable,
    };
    BlobError {
        kind,
        resource: Box::new(Resource::Managed(id.to_string())),
        status: e.status(),
        code: e.code().map(str::to_string),
        detail: e.to_string(),
    }
}

impl ManagedDiskSource {
    /// Deletes one snapshot. Its access is ended first when it has any (granted here, or
    /// `ActiveSAS` when last seen); an end started in the background is waited for, and the
    /// access ended again only if that failed. One whose SAS was not known is deleted
    /// directly, and on ARM's 409 its access is ended and the delete sent again.
    async fn delete_one(&self, id: &ResourceId) -> BlobResult<()> {
        self.settle_end(id).await;
        let active = self.ending_lock().contains_key(&key(id))
            || self.lock().contains_key(&key(id))
            || self
                .seen()
                .snapshots
                .get(&key(id))
                .is_some_and(|s| s.properties.disk_state.as_deref() == Some("ActiveSAS"));
        if active {
            self.end_access(id).await?;
        }
        let deleted = match self.arm.delete_snapshot(id).await {
            Err(e) if !active && e.kind() == ArmErrorKind::Conflict => {
                self.end_access(id).await?;
                self.arm.delete_snapshot(id).await
            }
            other => other,
        };
        self.seen().snapshots.remove(&key(id));
        match deleted {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ArmErrorKind::NotFound => Ok(()),
            Err(e) => Err(arm_err(id, e)),
        }
    }

    /// Whether `s` is a snapshot of this disk (by resource id).
    fn of_this_disk(&self, s: &Snapshot) -> bool {
        let disk = self.disk.to_string();
        s.properties
            .creation_data
            .source_resource_id
            .as_deref()
            .is_some_and(|src| src.eq_ignore_ascii_case(&disk))
    }
}

// ---- Trusted Launch: the VM guest state (docs/managed-disks.md, "Trusted Launch") ----

impl ManagedDiskSource {
    /// Whether `snap` (a snapshot of this disk) carries a VM guest state: it, or the disk as
    /// this cycle read it, is Trusted Launch. The disk is asked too because the restore
    /// point's record of it ([`Self::recorded_disk`]) is what a restore goes by; a disk gone
    /// since leaves the snapshot's own word.
    async fn has_guest_state(&self, snap: Option<&Snapshot>) -> BlobResult<bool> {
        if snap.is_some_and(|s| {
            SecurityProfile::is_trusted_launch(s.properties.security_profile.as_ref())
        }) {
            return Ok(true);
        }
        if snap.is_some_and(|s| !self.of_this_disk(s)) {
            return Ok(false);
        }
        match self.disk().await {
            Ok(d) => Ok(SecurityProfile::is_trusted_launch(
                d.properties.security_profile.as_ref(),
            )),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The guest state SAS of `id`'s grant (granting it if this process has not). A Trusted
    /// Launch snapshot whose grant answered none fails, named: never a restore point
    /// without its guest state.
    async fn guest_sas(&self, id: &ResourceId) -> BlobResult<SasUrl> {
        self.sas_or_gone(id).await?;
        lock_map(&self.guest).get(&key(id)).cloned().ok_or_else(|| {
            BlobError::bad_response(
                Resource::Managed(id.to_string()),
                200,
                NO_GUEST_STATE_SAS,
                "the snapshot of a Trusted Launch disk was exported without its VM guest state \
                 (beginGetAccess with getSecureVMGuestStateSAS answered no securityDataAccessSAS): \
                 no restore point is taken without the vTPM and UEFI state"
                    .into(),
            )
        })
    }
}

/// The code of a Trusted Launch grant that answered no `securityDataAccessSAS`.
pub const NO_GUEST_STATE_SAS: &str = "NoSecurityDataAccessSAS";

impl ManagedDiskSource {
    /// Reads `range` through `url`, an export of snapshot `id` (its disk's or its guest
    /// state's), counted in the cycle's requests; a refusal is explained by the export's
    /// settings.
    async fn read_through(
        &self,
        id: &ResourceId,
        url: &SasUrl,
        range: ByteRange,
    ) -> BlobResult<Bytes> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match self.sas.read(&id.to_string(), url, range).await {
            Err(e) if e.kind == ErrorKind::Auth => Err(self.explain_refusal(id, e).await),
            r => r,
        }
    }

    /// A 401/403 through a snapshot's export, explained by the snapshot's export settings
    /// (one GET, only on failure): `AllowPrivate` names the property and the fix; otherwise
    /// the error stays as it is (an Entra-only export already names the role).
    async fn explain_refusal(&self, id: &ResourceId, e: BlobError) -> BlobError {
        match self.get(id).await {
            Ok(Some(s)) => {
                crate::source::managed_disk::access::explain_refusal(&s.properties.export, id, e)
            }
            _ => e,
        }
    }
}

// ---- disk types and recorded properties (docs/managed-disks.md, "Disk types") ----

/// Refuses, before anything is made, a disk whose raw pages Azure documents no way to read
/// (or whose restore could not boot): `Unusable`, naming the disk type and the reason.
pub(crate) fn admit(disk: &crate::arm::Disk) -> BlobResult<()> {
    crate::source::managed_disk::props::admit(disk)
        .map(|_| ())
        .map_err(|e| {
            BlobError::local(
                ErrorKind::Unusable,
                Resource::Managed(disk.id.clone()),
                e.to_string(),
            )
        })
}

impl ManagedDiskSource {
    /// Shows the wait for a snapshot's background copy in `status` (`snapshot copy`, bytes
    /// as `completionPercent` of the snapshot's size).
    pub fn with_progress(
        mut self,
        progress: Option<std::sync::Arc<crate::model::progress::Progress>>,
    ) -> Self {
        self.progress = progress;
        self
    }

    fn show_copy(&self, snap: &Snapshot) {
        let (Some(p), Some(size)) = (&self.progress, snap.properties.disk_size_bytes) else {
            return;
        };
        let pct = snap
            .properties
            .completion_percent
            .unwrap_or(0.0)
            .clamp(0.0, 100.0);
        p.report("snapshot copy", (size as f64 * pct / 100.0) as u64, size);
    }

    /// The disk's properties, as restore point metadata. A disk gone by the time it is read
    /// (a resumed cycle reads it again) records nothing: the restore then needs the CLI's
    /// flags, and says so.
    async fn recorded_disk(&self, snapshot: &SnapshotId) -> BlobResult<crate::storage::Metadata> {
        let mut out = crate::storage::Metadata::new();
        // As read when S(n) was taken (once per cycle): the disk the snapshot captured.
        let disk = match self.disk().await {
            Ok(d) => d,
            Err(e) if e.is_not_found() => {
                tracing::warn!(disk = %self.disk, %snapshot, "the disk is gone: its properties are not recorded with the restore point");
                return Ok(out);
            }
            Err(e) => return Err(e),
        };
        match crate::source::managed_disk::props::RecordedDisk::of(&disk).to_metadata() {
            Some((k, v)) => {
                out.insert(k, v);
            }
            None => {
                tracing::warn!(disk = %self.disk, "the disk's properties exceed the metadata budget: not recorded")
            }
        }
        Ok(out)
    }
}

// ---- Azure's snapshot limits (docs/managed-disks.md, "Limits") ----

impl ManagedDiskSource {
    fn limit_lock(&self) -> std::sync::MutexGuard<'_, Option<ManagedLimit>> {
        // A panic while holding it leaves it consistent (a single assignment).
        self.limit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// After a refusal that may be one of Azure's limits (409 with the limits' code): the
    /// disk's snapshots are listed again (one request, only then: the cycle's own listing
    /// is older than the refusal) and `decide` names the limit `resource` was refused for
    /// from them. A failed listing leaves the refusal as ARM gave it.
    async fn note_limit(
        &self,
        e: &BlobError,
        resource: &ResourceId,
        decide: fn(Option<u16>, Option<&str>, &str, &limits::Facts<'_>) -> Option<ManagedLimit>,
        background_copy: bool,
    ) {
        if e.status != Some(409) {
            return;
        }
        let listing = match self
            .arm
            .list_snapshots(&self.snapshot_group, &self.disk)
            .await
        {
            Ok(l) => l,
            Err(err) => {
                tracing::warn!(disk = %self.disk, error = %err, "listing the disk's snapshots after a refusal failed: the limit it hit is not named");
                return;
            }
        };
        let facts = limits::Facts {
            listing: &listing,
            background_copy,
            now: chrono::Utc::now(),
        };
        *self.limit_lock() = decide(e.status, e.code.as_deref(), &resource.to_string(), &facts);
    }
}
