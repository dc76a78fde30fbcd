//! A [`PageBlobs`] decorator that counts what a cycle costs: storage requests (each
//! operation once; the SDK's retries are not billed twice by us) and diff ranges received.

use crate::model::pages::ByteRange;
use crate::storage::{
    BlobProps, BlobRef, BlobResult, Fence, IfBlob, Metadata, NewPageBlob, PageBlobs, PageList,
    PageListQuery, SnapshotInfo,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub struct Metered<'a> {
    inner: &'a dyn PageBlobs,
    requests: AtomicU64,
    ranges: AtomicU64,
    detail: Detail,
}

/// Per-kind request and byte counters, cumulative over the meter's life (never reset): what
/// the performance tests and the benchmark compare with the minimum for a diff.
#[derive(Default)]
struct Detail {
    page_lists: AtomicU64,
    reads: AtomicU64,
    bytes_read: AtomicU64,
    puts: AtomicU64,
    bytes_put: AtomicU64,
    puts_from_url: AtomicU64,
    bytes_from_url: AtomicU64,
    clears: AtomicU64,
    bytes_cleared: AtomicU64,
}

/// A snapshot of [`Metered`]'s per-kind counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeterCounts {
    pub page_lists: u64,
    pub reads: u64,
    pub bytes_read: u64,
    pub puts: u64,
    pub bytes_put: u64,
    pub puts_from_url: u64,
    pub bytes_from_url: u64,
    pub clears: u64,
    pub bytes_cleared: u64,
}

impl<'a> Metered<'a> {
    pub fn new(inner: &'a dyn PageBlobs) -> Self {
        Metered {
            inner,
            requests: AtomicU64::new(0),
            ranges: AtomicU64::new(0),
            detail: Detail::default(),
        }
    }

    /// Per-kind counts since the meter was made.
    pub fn detail(&self) -> MeterCounts {
        let d = &self.detail;
        MeterCounts {
            page_lists: d.page_lists.load(Relaxed),
            reads: d.reads.load(Relaxed),
            bytes_read: d.bytes_read.load(Relaxed),
            puts: d.puts.load(Relaxed),
            bytes_put: d.bytes_put.load(Relaxed),
            puts_from_url: d.puts_from_url.load(Relaxed),
            bytes_from_url: d.bytes_from_url.load(Relaxed),
            clears: d.clears.load(Relaxed),
            bytes_cleared: d.bytes_cleared.load(Relaxed),
        }
    }

    /// Requests and ranges counted since the last call.
    pub fn take_counts(&self) -> (u64, u64) {
        (self.requests.swap(0, Relaxed), self.ranges.swap(0, Relaxed))
    }

    fn count(&self) {
        self.requests.fetch_add(1, Relaxed);
    }
}

#[async_trait]
impl PageBlobs for Metered<'_> {
    fn check_account(&self, account: &str) -> BlobResult<()> {
        self.inner.check_account(account)
    }

    async fn properties(&self, b: &BlobRef, s: Option<&str>) -> BlobResult<Option<BlobProps>> {
        self.count();
        self.inner.properties(b, s).await
    }
    async fn create_snapshot(&self, b: &BlobRef, m: &Metadata) -> BlobResult<String> {
        self.count();
        self.inner.create_snapshot(b, m).await
    }
    async fn create_snapshot_if_match(
        &self,
        b: &BlobRef,
        m: &Metadata,
        etag: &str,
    ) -> BlobResult<String> {
        self.count();
        self.inner.create_snapshot_if_match(b, m, etag).await
    }
    async fn list_snapshots(&self, b: &BlobRef) -> BlobResult<Vec<SnapshotInfo>> {
        self.count();
        self.inner.list_snapshots(b).await
    }
    async fn delete_snapshot(&self, b: &BlobRef, s: &str) -> BlobResult<()> {
        self.count();
        self.inner.delete_snapshot(b, s).await
    }
    async fn page_ranges(&self, b: &BlobRef, q: &PageListQuery<'_>) -> BlobResult<PageList> {
        self.count();
        self.detail.page_lists.fetch_add(1, Relaxed);
        let list = self.inner.page_ranges(b, q).await?;
        self.ranges.fetch_add(list.items.len() as u64, Relaxed);
        Ok(list)
    }
    async fn read(&self, b: &BlobRef, s: Option<&str>, r: ByteRange) -> BlobResult<Bytes> {
        self.count();
        self.detail.reads.fetch_add(1, Relaxed);
        self.detail.bytes_read.fetch_add(r.len(), Relaxed);
        self.inner.read(b, s, r).await
    }
    async fn put_pages(
        &self,
        b: &BlobRef,
        offset: u64,
        data: Bytes,
        f: Option<Fence>,
    ) -> BlobResult<String> {
        self.count();
        self.detail.puts.fetch_add(1, Relaxed);
        self.detail.bytes_put.fetch_add(data.len() as u64, Relaxed);
        self.inner.put_pages(b, offset, data, f).await
    }
    async fn put_pages_from_url(
        &self,
        d: &BlobRef,
        r: ByteRange,
        s: &BlobRef,
        snap: Option<&str>,
        at: u64,
        f: Option<Fence>,
    ) -> BlobResult<String> {
        self.count();
        self.detail.puts_from_url.fetch_add(1, Relaxed);
        self.detail.bytes_from_url.fetch_add(r.len(), Relaxed);
        self.inner.put_pages_from_url(d, r, s, snap, at, f).await
    }
    async fn put_pages_from_sas(
        &self,
        d: &BlobRef,
        r: ByteRange,
        url: &url::Url,
        resource: &str,
        at: u64,
        f: Option<Fence>,
    ) -> BlobResult<String> {
        self.count();
        self.detail.puts_from_url.fetch_add(1, Relaxed);
        self.detail.bytes_from_url.fetch_add(r.len(), Relaxed);
        self.inner
            .put_pages_from_sas(d, r, url, resource, at, f)
            .await
    }
    async fn clear_pages(&self, b: &BlobRef, r: ByteRange, f: Option<Fence>) -> BlobResult<String> {
        self.count();
        self.detail.clears.fetch_add(1, Relaxed);
        self.detail.bytes_cleared.fetch_add(r.len(), Relaxed);
        self.inner.clear_pages(b, r, f).await
    }
    async fn ensure_container(&self, b: &BlobRef) -> BlobResult<()> {
        self.count();
        self.inner.ensure_container(b).await
    }
    async fn create_page_blob(
        &self,
        b: &BlobRef,
        size: u64,
        new: &NewPageBlob,
    ) -> BlobResult<String> {
        self.count();
        self.inner.create_page_blob(b, size, new).await
    }
    async fn resize(&self, b: &BlobRef, size: u64, c: &IfBlob) -> BlobResult<String> {
        self.count();
        self.inner.resize(b, size, c).await
    }
    async fn set_sequence_number(&self, b: &BlobRef, v: u64, c: &IfBlob) -> BlobResult<String> {
        self.count();
        self.inner.set_sequence_number(b, v, c).await
    }
    async fn abort_copy(&self, d: &BlobRef, id: &str) -> BlobResult<()> {
        self.count();
        self.inner.abort_copy(d, id).await
    }
    async fn start_copy(
        &self,
        d: &BlobRef,
        s: &BlobRef,
        snap: Option<&str>,
        m: &Metadata,
        c: &IfBlob,
    ) -> BlobResult<String> {
        self.count();
        self.inner.start_copy(d, s, snap, m, c).await
    }
    async fn set_metadata(&self, b: &BlobRef, m: &Metadata) -> BlobResult<()> {
        self.count();
        self.inner.set_metadata(b, m).await
    }
    async fn delete_blob(&self, b: &BlobRef) -> BlobResult<()> {
        self.count();
        self.inner.delete_blob(b).await
    }
}
