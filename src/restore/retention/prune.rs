//! Retention carried out on a disk's backup blob: its restore points read from the snapshots
//! tagged for this disk (never anyone else's), planned, and the pruned ones deleted with
//! their rows and the VM guest state copies only they named.

use super::plan::{plan, Decision, Point};
use crate::config::DiskConfig;
use crate::model::{from_unix, tags, SnapshotId};
use crate::state::{StateError, StateStore};
use crate::storage::{BlobError, PageBlobs};

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("disk {disk}: {source}")]
    Blob {
        disk: String,
        #[source]
        source: BlobError,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

/// A disk's restore points, oldest first, as its backup blob's snapshots show them (the truth,
/// even if the state directory was lost). A backup container that does not exist yet means
/// the disk was never backed up: no restore points.
pub async fn restore_points(
    blobs: &dyn PageBlobs,
    disk: &DiskConfig,
) -> Result<Vec<StoredPoint>, BlobError> {
    let snapshots = match blobs.list_snapshots(&disk.backup).await {
        Ok(s) => s,
        Err(e) if e.is_not_found() => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(snapshots
        .into_iter()
        .filter(|s| tags::is_restore_point(&s.metadata, &disk.name))
        .filter_map(|s| {
            Some(StoredPoint {
                source: tags::source_of(&s.metadata)?,
                fence: tags::fence(&s.metadata),
                guest_state: tags::guest_state(&s.metadata),
                snapshot: s.snapshot,
                size: s.size,
            })
        })
        .collect())
}

/// A restore point as its backup snapshot shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPoint {
    /// The backup snapshot `B(n)`.
    pub snapshot: String,
    /// The source snapshot `S(n)` it equals (its `snapback_source_snapshot`).
    pub source: SnapshotId,
    pub size: u64,
    /// The fencing token of the owner that took it (`snapback_fence`; None before fencing).
    pub fence: Option<u64>,
    /// The copy of a Trusted Launch disk's VM guest state it names (an unreadable record:
    /// the reason).
    pub guest_state: Option<Result<tags::GuestStateCopy, String>>,
}

/// The plan for a disk's restore points (the backup snapshots tagged for this disk), oldest
/// first.
pub async fn disk_plan(
    blobs: &dyn PageBlobs,
    disk: &DiskConfig,
    now: i64,
) -> Result<Vec<Decision>, RetentionError> {
    let points: Vec<Point> = restore_points(blobs, disk)
        .await
        .map_err(|source| RetentionError::Blob {
            disk: disk.name.clone(),
            source,
        })?
        .into_iter()
        .map(|s| Point::from_snapshot(&s.snapshot))
        .collect();
    Ok(plan(&points, &disk.retention, from_unix(now), &disk.tz))
}

/// What a prune did (or, dry, would do).
#[derive(Clone, Debug)]
pub struct PruneReport {
    pub disk: String,
    pub dry_run: bool,
    /// Every restore point of the disk, oldest first, with its decision.
    pub decisions: Vec<Decision>,
    /// Snapshots deleted (none when dry).
    pub deleted: Vec<String>,
}

impl PruneReport {
    pub fn to_prune(&self) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(|d| !d.is_kept())
    }
}

/// Plans and (unless `dry_run`) executes retention for one disk. Only snapshots tagged
/// `snapback_disk = <disk>` are ever considered, so nobody else's snapshot is deleted.
pub async fn prune(
    blobs: &dyn PageBlobs,
    store: &StateStore,
    disk: &DiskConfig,
    now: i64,
    dry_run: bool,
) -> Result<PruneReport, RetentionError> {
    let err = |source| RetentionError::Blob {
        disk: disk.name.clone(),
        source,
    };
    let stored = restore_points(blobs, disk).await.map_err(err)?;
    let points: Vec<Point> = stored
        .iter()
        .map(|s| Point::from_snapshot(&s.snapshot))
        .collect();
    let decisions = plan(&points, &disk.retention, from_unix(now), &disk.tz);
    let backup = disk.backup.clone();
    let mut deleted = Vec::new();
    if !dry_run {
        let pruned: std::collections::HashSet<&str> = decisions
            .iter()
            .filter(|d| !d.is_kept())
            .map(|d| d.point.snapshot.as_str())
            .collect();
        // The guest state copies the kept points name (a rebased chain's first point names
        // the copy of the point it was restored from): never deleted.
        let named: std::collections::HashSet<&str> = stored
            .iter()
            .filter(|s| !pruned.contains(s.snapshot.as_str()))
            .filter_map(|s| Some(s.guest_state.as_ref()?.as_ref().ok()?.blob.as_str()))
            .collect();
        let mut copies = std::collections::BTreeSet::new();
        for s in stored
            .iter()
            .filter(|s| pruned.contains(s.snapshot.as_str()))
        {
            let snapshot = &s.snapshot;
            blobs
                .delete_snapshot(&backup, snapshot)
                .await
                .map_err(err)?;
            store.delete_restore_point(&disk.name, snapshot)?;
            tracing::info!(disk = %disk.name, snapshot = %snapshot, "restore point pruned");
            if let Some(Ok(g)) = &s.guest_state {
                copies.insert(g.blob.as_str());
            }
            deleted.push(snapshot.clone());
        }
        // Their VM guest state copies go after them (a copy is never missing while a point
        // names it), except those a kept point names.
        for blob in copies.into_iter().filter(|b| !named.contains(b)) {
            let copy = crate::storage::BlobRef::new(&backup.account, &backup.container, blob);
            blobs.delete_blob(&copy).await.map_err(err)?;
            tracing::info!(disk = %disk.name, copy = %copy, "VM guest state copy of a pruned restore point deleted");
        }
    }
    Ok(PruneReport {
        disk: disk.name.clone(),
        dry_run,
        decisions,
        deleted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prune_deletes_only_this_disks_snapshots_and_their_rows() {
        use crate::storage::fake::MemBlobs;
        use crate::storage::{BlobRef, Metadata};
        let cfg = crate::config::Config::parse(
            "state_dir = \"/tmp/unused\"\n[accounts.bk]\nendpoint = \"http://127.0.0.1:1/bkacct\"\n\
             shared_key_env = \"X\"\n[[disk]]\nname = \"d\"\nsource = \"bk/src/d\"\n\
             backup = \"bk/bkp/d\"\nretention = { keep_last = 2 }\n",
            std::path::Path::new("test.toml"),
        )
        .unwrap();
        let disk = cfg.disks[0].clone();
        let blobs = MemBlobs::new();
        let store = StateStore::open_in_memory().unwrap();
        let backup = BlobRef::new("bk", "bkp", "d");
        blobs.write(&backup, 0, &[1u8; 512]);
        let tag = |d: &str| tags::restore_point(d, "c", &crate::model::SnapshotId::new("s"));
        let mut ours = Vec::new();
        for i in 0..4 {
            ours.push(blobs.create_snapshot(&backup, &tag("d")).await.unwrap());
            if i == 1 {
                blobs.create_snapshot(&backup, &tag("other")).await.unwrap();
                blobs
                    .create_snapshot(&backup, &Metadata::new())
                    .await
                    .unwrap();
                // Tagged for this disk but naming no source snapshot: inherited, not ours.
                let inherited = tags::source_snapshot("d", "c");
                blobs.create_snapshot(&backup, &inherited).await.unwrap();
            }
        }
        let now = chrono::Utc::now().timestamp();
        let dry = prune(&blobs, &store, &disk, now, true).await.unwrap();
        assert_eq!(dry.to_prune().count(), 2);
        assert_eq!(
            blobs.snapshot_ids(&backup).len(),
            7,
            "dry run deletes nothing"
        );
        let done = prune(&blobs, &store, &disk, now, false).await.unwrap();
        assert_eq!(done.deleted, ours[..2].to_vec());
        let left = blobs.snapshot_ids(&backup);
        assert_eq!(
            left.len(),
            5,
            "two of ours, the other disk's, and two not made by us"
        );
        assert!(left.contains(&ours[2]) && left.contains(&ours[3]));
    }
}
