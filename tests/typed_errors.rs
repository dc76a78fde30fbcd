//! Decisions follow the typed error, not its text: a 404 about the *backup* blob during
//! server-side copy (Put Page From URL) fails the apply naming the backup blob; it is not
//! taken for "the source snapshot vanished" (which would take a new S(n) and start over).
//! Run on the in-memory store and on Azurite (whose error text for that request names the
//! source snapshot, which is what used to mislead the runner).

mod common;

use async_trait::async_trait;
use bytes::Bytes;
use snapback::config::CopyMode;
use snapback::config::DiskSource;
use snapback::cycle::error::CycleError;
use snapback::cycle::runner::{DiskSpec, Runner};
use snapback::model::pages::ByteRange;
use snapback::model::record::{CycleKind, Phase, PhaseName};
use snapback::model::SystemClock;
use snapback::state::StateStore;
use snapback::storage::fake::MemBlobs;
use snapback::storage::{
    BlobProps, BlobRef, BlobResult, ErrorKind, Fence, IfBlob, Metadata, NewPageBlob, PageBlobs,
    PageList, PageListQuery, Resource, SnapshotInfo,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The in-memory store, except that the first Put Page From URL deletes the backup blob (with
/// its snapshots) just before it is sent: someone removed the backup mid-apply.
struct DeleteBackupMidApply {
    inner: Arc<dyn PageBlobs>,
    armed: AtomicBool,
}

#[async_trait]
impl PageBlobs for DeleteBackupMidApply {
    async fn properties(&self, b: &BlobRef, s: Option<&str>) -> BlobResult<Option<BlobProps>> {
        self.inner.properties(b, s).await
    }
    async fn create_snapshot(&self, b: &BlobRef, m: &Metadata) -> BlobResult<String> {
        self.inner.create_snapshot(b, m).await
    }
    async fn create_snapshot_if_match(
        &self,
        b: &BlobRef,
        m: &Metadata,
        etag: &str,
    ) -> BlobResult<String> {
        self.inner.create_snapshot_if_match(b, m, etag).await
    }
    async fn list_snapshots(&self, b: &BlobRef) -> BlobResult<Vec<SnapshotInfo>> {
        self.inner.list_snapshots(b).await
    }
    async fn delete_snapshot(&self, b: &BlobRef, s: &str) -> BlobResult<()> {
        self.inner.delete_snapshot(b, s).await
    }
    async fn page_ranges(&self, b: &BlobRef, q: &PageListQuery<'_>) -> BlobResult<PageList> {
        self.inner.page_ranges(b, q).await
    }
    async fn read(&self, b: &BlobRef, s: Option<&str>, r: ByteRange) -> BlobResult<Bytes> {
        self.inner.read(b, s, r).await
    }
    async fn put_pages(
        &self,
        b: &BlobRef,
        o: u64,
        d: Bytes,
        f: Option<Fence>,
    ) -> BlobResult<String> {
        self.inner.put_pages(b, o, d, f).await
    }
    async fn put_pages_from_url(
        &self,
        dest: &BlobRef,
        range: ByteRange,
        source: &BlobRef,
        snapshot: Option<&str>,
        offset: u64,
        f: Option<Fence>,
    ) -> BlobResult<String> {
        if self.armed.swap(false, Ordering::SeqCst) {
            // As `az storage blob delete --delete-snapshots include` would.
            for s in self.inner.list_snapshots(dest).await? {
                self.inner.delete_snapshot(dest, &s.snapshot).await?;
            }
            self.inner.delete_blob(dest).await?;
        }
        self.inner
            .put_pages_from_url(dest, range, source, snapshot, offset, f)
            .await
    }
    async fn clear_pages(&self, b: &BlobRef, r: ByteRange, f: Option<Fence>) -> BlobResult<String> {
        self.inner.clear_pages(b, r, f).await
    }
    async fn ensure_container(&self, b: &BlobRef) -> BlobResult<()> {
        self.inner.ensure_container(b).await
    }
    async fn create_page_blob(
        &self,
        b: &BlobRef,
        size: u64,
        n: &NewPageBlob,
    ) -> BlobResult<String> {
        self.inner.create_page_blob(b, size, n).await
    }
    async fn resize(&self, b: &BlobRef, size: u64, c: &IfBlob) -> BlobResult<String> {
        self.inner.resize(b, size, c).await
    }
    async fn set_sequence_number(&self, b: &BlobRef, v: u64, c: &IfBlob) -> BlobResult<String> {
        self.inner.set_sequence_number(b, v, c).await
    }
    async fn abort_copy(&self, b: &BlobRef, id: &str) -> BlobResult<()> {
        self.inner.abort_copy(b, id).await
    }
    async fn start_copy(
        &self,
        dest: &BlobRef,
        source: &BlobRef,
        snapshot: Option<&str>,
        m: &Metadata,
        c: &IfBlob,
    ) -> BlobResult<String> {
        self.inner.start_copy(dest, source, snapshot, m, c).await
    }
    async fn set_metadata(&self, b: &BlobRef, m: &Metadata) -> BlobResult<()> {
        self.inner.set_metadata(b, m).await
    }
    async fn delete_blob(&self, b: &BlobRef) -> BlobResult<()> {
        self.inner.delete_blob(b).await
    }
}

/// A seeded disk with a change, its runner stepped into Apply; then the backup is deleted
/// during the first Put Page From URL. The apply fails naming the backup blob, and the cycle
/// stays on the same S(n).
async fn backup_deleted_mid_server_copy(inner: Arc<dyn PageBlobs>, mode: CopyMode) {
    let blobs = DeleteBackupMidApply {
        inner,
        armed: AtomicBool::new(false),
    };
    let store = StateStore::open_in_memory().unwrap();
    let d = disk(mode);
    blobs
        .ensure_container(d.source.blob().unwrap())
        .await
        .unwrap();
    blobs
        .create_page_blob(d.source.blob().unwrap(), 64 * 512, &Default::default())
        .await
        .unwrap();
    let write = |at: u64, byte: u8, len: usize| {
        blobs.put_pages(
            d.source.blob().unwrap(),
            at,
            Bytes::from(vec![byte; len]),
            None,
        )
    };
    write(0, 1, 4096).await.unwrap();
    let mut r = Runner::new(&blobs, &store, &SystemClock, &d);
    r.copy_poll = (
        std::time::Duration::from_millis(1),
        std::time::Duration::from_millis(20),
    );
    r.run_cycle().await.unwrap();
    write(8 * 512, 2, 1024).await.unwrap();

    let mut rec = r.open_or_resume().await.unwrap();
    while rec.phase.name() != PhaseName::Apply {
        r.step(&mut rec).await.unwrap();
    }
    let s_n = rec.phase.source().unwrap().clone();
    let source_snapshots = blobs
        .list_snapshots(d.source.blob().unwrap())
        .await
        .unwrap();
    blobs.armed.store(true, Ordering::SeqCst);

    let err = r.step(&mut rec).await.unwrap_err();
    let CycleError::Blob { disk, source: e } = &err else {
        panic!("{mode:?}: expected a storage error, got {err}");
    };
    assert_eq!(disk, "d");
    assert_eq!(e.kind, ErrorKind::NotFound, "{mode:?}: {e}");
    assert!(
        e.concerns(&Resource::Blob(d.backup.clone())),
        "{mode:?}: the error names the backup blob: {e}"
    );
    assert!(err.to_string().contains("backup/backups/d"), "{err}");
    // Still applying the same S(n): not sent back to take a new source snapshot.
    let saved = store.open_cycle("d").unwrap().unwrap();
    assert!(
        matches!(&saved.phase, Phase::Apply { source, .. } if *source == s_n),
        "{mode:?}: {:?}",
        saved.phase
    );
    assert_eq!(saved.kind, CycleKind::Incremental);
    assert_eq!(
        blobs
            .list_snapshots(d.source.blob().unwrap())
            .await
            .unwrap(),
        source_snapshots,
        "{mode:?}: no new source snapshot"
    );
}

/// Disk `d`: the page blob `premium/vhds/d.vhd` backed up into `backup/backups/d`.
fn disk(copy_mode: CopyMode) -> DiskSpec {
    DiskSpec {
        name: "d".into(),
        source: DiskSource::Blob(BlobRef::new("premium", "vhds", "d.vhd")),
        backup: BlobRef::new("backup", "backups", "d"),
        concurrency: 1,
        copy_mode,
    }
}

#[tokio::test]
async fn a_404_on_the_backup_during_server_copy_is_not_a_vanished_source() {
    for mode in [CopyMode::Server, CopyMode::Auto] {
        backup_deleted_mid_server_copy(Arc::new(MemBlobs::new()), mode).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_azurite_a_404_on_the_backup_during_server_copy_is_not_a_vanished_source() {
    let fx = common::fixture::Fixture::new(&[]);
    backup_deleted_mid_server_copy(fx.blobs(), CopyMode::Server).await;
}

/// The genuine case still works: the source snapshot deleted during apply makes the cycle
/// take a new one (and the restore point equals it).
#[tokio::test]
async fn a_deleted_source_snapshot_during_server_copy_takes_a_new_one() {
    let blobs = MemBlobs::new();
    let store = StateStore::open_in_memory().unwrap();
    let d = disk(CopyMode::Server);
    blobs
        .create_page_blob(d.source.blob().unwrap(), 64 * 512, &Default::default())
        .await
        .unwrap();
    blobs.write(d.source.blob().unwrap(), 0, &[1u8; 4096]);
    let mut r = Runner::new(&blobs, &store, &SystemClock, &d);
    r.copy_poll = (
        std::time::Duration::from_millis(1),
        std::time::Duration::from_millis(1),
    );
    r.run_cycle().await.unwrap();
    blobs.write(d.source.blob().unwrap(), 8 * 512, &[2u8; 1024]);
    let mut rec = r.open_or_resume().await.unwrap();
    while rec.phase.name() != PhaseName::Apply {
        r.step(&mut rec).await.unwrap();
    }
    let s_n = rec.phase.source().unwrap().clone();
    blobs
        .delete_snapshot(d.source.blob().unwrap(), s_n.as_str())
        .await
        .unwrap();
    r.step(&mut rec).await.unwrap();
    assert_eq!(rec.phase.name(), PhaseName::Snapshot);
    while r.step(&mut rec).await.unwrap() {}
    let (b, s) = rec.phase.restore_point().unwrap();
    assert_ne!(*s, s_n);
    assert_eq!(
        blobs.content(&d.backup, Some(b.as_str())),
        blobs.content(d.source.blob().unwrap(), Some(s.as_str()))
    );
}

/// A Snapshot Blob still in flight when a run was killed may land after the resumed run looked
/// for it and took its own: two backup snapshots carry the cycle's tag. Prune leaves only the
/// recorded restore point (one restore point per cycle).
#[tokio::test]
async fn a_late_second_snapshot_of_the_cycle_is_swept_at_prune() {
    let blobs = MemBlobs::new();
    let store = StateStore::open_in_memory().unwrap();
    let d = disk(CopyMode::Client);
    let source = d.source.blob().unwrap();
    blobs
        .create_page_blob(source, 64 * 512, &Default::default())
        .await
        .unwrap();
    blobs.write(source, 0, &[1u8; 4096]);
    let mut r = Runner::new(&blobs, &store, &SystemClock, &d);
    r.copy_poll = (
        std::time::Duration::from_millis(1),
        std::time::Duration::from_millis(1),
    );
    let mut rec = r.open_or_resume().await.unwrap();
    while rec.phase.name() != PhaseName::Prune {
        r.step(&mut rec).await.unwrap();
    }
    let (recorded, _) = rec.phase.restore_point().unwrap();
    let recorded = recorded.to_string();
    let tag = rec.tag.clone();
    let ours = |s: &SnapshotInfo| s.metadata.get("snapback_cycle") == Some(&tag);
    let meta = blobs
        .list_snapshots(&d.backup)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.snapshot == recorded)
        .unwrap()
        .metadata;
    let late = blobs.create_snapshot(&d.backup, &meta).await.unwrap();
    assert_ne!(late, recorded);
    while r.step(&mut rec).await.unwrap() {}
    let left: Vec<String> = blobs
        .list_snapshots(&d.backup)
        .await
        .unwrap()
        .into_iter()
        .filter(ours)
        .map(|s| s.snapshot)
        .collect();
    assert_eq!(left, vec![recorded]);
}
