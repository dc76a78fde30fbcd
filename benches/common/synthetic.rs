//! A synthetic [`PageBlobs`] for the benches: big or many diffs without storing them.

use async_trait::async_trait;
use bytes::Bytes;
use snapback::config::Config;
use snapback::model::pages::{ByteRange, PageItem};
use snapback::storage::fake::MemBlobs;
use snapback::storage::{
    BlobProps, BlobRef, BlobResult, Fence, IfBlob, Metadata, NewPageBlob, PageBlobs, PageList,
    PageListQuery, SnapshotInfo,
};
use snapback::throttle::budget::Budget;
use snapback::throttle::Outcome;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// MemBlobs for everything but the data path: the diff of any blob against any snapshot is
/// `ranges` items generated on demand, reads return fresh non-zero buffers and writes are
/// dropped. Nothing is kept per range. Layout: blocks of 100 small items (4–16 KiB every
/// 96 KiB, every tenth one cleared) followed by one 6 MiB changed run (a 4 MiB read and put,
/// then 2 MiB), so reads of the full 4 MiB are in flight too.
///
/// With `budgets` (per account), every operation first waits for its account's request
/// budget, as through the Azure pipeline's throttle policy.
pub struct Synthetic {
    pub mem: MemBlobs,
    pub ranges: u64,
    pub budgets: HashMap<String, Arc<Budget>>,
}

const SPACING: u64 = 96 * KIB;
const SMALL_PER_BLOCK: u64 = 100;
const BIG_RUN: u64 = 6 * MIB;
const BLOCK: u64 = SMALL_PER_BLOCK * SPACING + 8 * MIB;

impl Synthetic {
    fn item(&self, i: u64) -> PageItem {
        let (block, j) = (i / (SMALL_PER_BLOCK + 1), i % (SMALL_PER_BLOCK + 1));
        let start = block * BLOCK + j * SPACING;
        if j == SMALL_PER_BLOCK {
            return PageItem::Changed(ByteRange::new(start, start + BIG_RUN));
        }
        let r = ByteRange::new(start, start + 4 * KIB * (1 + i % 4));
        if i % 10 == 9 {
            PageItem::Cleared(r)
        } else {
            PageItem::Changed(r)
        }
    }
    pub fn size(&self) -> u64 {
        self.ranges.div_ceil(SMALL_PER_BLOCK + 1) * BLOCK
    }
    /// Waits for `blob`'s account budget (if any) for one request moving `bytes`.
    async fn pass(&self, blob: &BlobRef, bytes: u64) {
        if let Some(budget) = self.budgets.get(&blob.account) {
            let key = format!("{}/{}", blob.container, blob.blob);
            budget.acquire(&key, bytes).await.finish(Outcome::Done);
        }
    }

    /// First item that may intersect bytes at or after `offset`.
    fn first_at(&self, offset: u64) -> u64 {
        let j = ((offset % BLOCK) / SPACING).min(SMALL_PER_BLOCK);
        (offset / BLOCK) * (SMALL_PER_BLOCK + 1) + j
    }
}

#[async_trait]
impl PageBlobs for Synthetic {
    async fn properties(&self, b: &BlobRef, s: Option<&str>) -> BlobResult<Option<BlobProps>> {
        self.pass(b, 0).await;
        self.mem.properties(b, s).await
    }
    async fn create_snapshot(&self, b: &BlobRef, m: &Metadata) -> BlobResult<String> {
        self.pass(b, 0).await;
        self.mem.create_snapshot(b, m).await
    }
    async fn create_snapshot_if_match(
        &self,
        b: &BlobRef,
        m: &Metadata,
        etag: &str,
    ) -> BlobResult<String> {
        self.pass(b, 0).await;
        self.mem.create_snapshot_if_match(b, m, etag).await
    }
    async fn list_snapshots(&self, b: &BlobRef) -> BlobResult<Vec<SnapshotInfo>> {
        self.pass(b, 0).await;
        self.mem.list_snapshots(b).await
    }
    async fn delete_snapshot(&self, b: &BlobRef, s: &str) -> BlobResult<()> {
        self.pass(b, 0).await;
        self.mem.delete_snapshot(b, s).await
    }
    async fn page_ranges(&self, b: &BlobRef, q: &PageListQuery<'_>) -> BlobResult<PageList> {
        self.pass(b, 0).await;
        if q.prev_snapshot.is_none() {
            return self.mem.page_ranges(b, q).await;
        }
        let w = q.range.unwrap_or(ByteRange::new(0, self.size()));
        let first = q
            .marker
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| self.first_at(w.start));
        let end = (self.first_at(w.end) + 1).min(self.ranges);
        let take = q.max_results.unwrap_or(10_000) as u64;
        let last = (first + take).min(end);
        Ok(PageList {
            items: (first..last).map(|i| self.item(i)).collect(),
            next_marker: (last < end).then(|| last.to_string()),
        })
    }
    async fn read(&self, _b: &BlobRef, _s: Option<&str>, r: ByteRange) -> BlobResult<Bytes> {
        self.pass(_b, r.len()).await;
        let data = Bytes::from(vec![0x5a; r.len() as usize]);
        network_time(data.len()).await;
        Ok(data)
    }
    async fn put_pages(
        &self,
        _b: &BlobRef,
        _o: u64,
        data: Bytes,
        _f: Option<Fence>,
    ) -> BlobResult<String> {
        self.pass(_b, data.len() as u64).await;
        network_time(data.len()).await;
        Ok("\"synthetic\"".into())
    }
    async fn put_pages_from_url(
        &self,
        _d: &BlobRef,
        _r: ByteRange,
        _s: &BlobRef,
        _snap: Option<&str>,
        _at: u64,
        _f: Option<Fence>,
    ) -> BlobResult<String> {
        self.pass(_d, _r.len()).await;
        Ok("\"synthetic\"".into())
    }
    async fn clear_pages(
        &self,
        _b: &BlobRef,
        _r: ByteRange,
        _f: Option<Fence>,
    ) -> BlobResult<String> {
        self.pass(_b, 0).await;
        Ok("\"synthetic\"".into())
    }
    async fn ensure_container(&self, b: &BlobRef) -> BlobResult<()> {
        self.pass(b, 0).await;
        self.mem.ensure_container(b).await
    }
    async fn create_page_blob(
        &self,
        b: &BlobRef,
        size: u64,
        n: &NewPageBlob,
    ) -> BlobResult<String> {
        self.pass(b, 0).await;
        self.mem.create_page_blob(b, size, n).await
    }
    async fn resize(&self, b: &BlobRef, size: u64, c: &IfBlob) -> BlobResult<String> {
        self.pass(b, 0).await;
        self.mem.resize(b, size, c).await
    }
    async fn set_sequence_number(&self, b: &BlobRef, v: u64, c: &IfBlob) -> BlobResult<String> {
        self.pass(b, 0).await;
        self.mem.set_sequence_number(b, v, c).await
    }
    async fn start_copy(
        &self,
        d: &BlobRef,
        s: &BlobRef,
        snap: Option<&str>,
        m: &Metadata,
        c: &IfBlob,
    ) -> BlobResult<String> {
        self.pass(d, 0).await;
        self.mem.start_copy(d, s, snap, m, c).await
    }
    async fn set_metadata(&self, b: &BlobRef, m: &Metadata) -> BlobResult<()> {
        self.pass(b, 0).await;
        self.mem.set_metadata(b, m).await
    }
    async fn delete_blob(&self, b: &BlobRef) -> BlobResult<()> {
        self.pass(b, 0).await;
        self.mem.delete_blob(b).await
    }
    async fn abort_copy(&self, d: &BlobRef, id: &str) -> BlobResult<()> {
        self.pass(d, 0).await;
        self.mem.abort_copy(d, id).await
    }
}

/// Big transfers take a while, as over a network, so the pipeline really holds
/// `max_inflight_requests` big buffers at once (small ones stay instantaneous to keep the
/// run short).
pub async fn network_time(len: usize) {
    if len as u64 >= MIB {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn synthetic_config(dir: &Path, disks: usize, parallel: usize) -> Config {
    let mut text = format!(
        "state_dir = \"{}\"\nmax_concurrent_cycles = {parallel}\n\n[accounts.premium]\nendpoint = \"https://premium.blob.core.windows.net\"\nshared_key_env = \"UNUSED\"\n\n[accounts.backup]\nendpoint = \"https://backup.blob.core.windows.net\"\nshared_key_env = \"UNUSED\"\n\n",
        dir.join("state").display()
    );
    for i in 0..disks {
        text.push_str(&format!(
            "[[disk]]\nname = \"disk{i}\"\nsource = \"premium/vhds/disk{i}.vhd\"\nbackup = \"backup/backups/disk{i}\"\nschedule = \"0 */12 * * *\"\n\n"
        ));
    }
    let path = dir.join("snapback.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}
