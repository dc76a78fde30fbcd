//! A [`PageBlobs`] decorator that counts what a cycle costs: storage requests (each
//! operation once; the SDK's retries are not billed twice by us) and diff ranges received.

use crate::blobs::{
    BlobProps, BlobRef, BlobResult, Metadata, PageBlobs, PageList, PageListQuery, SnapshotInfo,
};
use crate::pages::ByteRange;
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub struct Metered<'a> {
    inner: &'a dyn PageBlobs,
    requests: AtomicU64,
    ranges: AtomicU64,
}

impl<'a> Metered<'a> {
    pub fn new(inner: &'a dyn PageBlobs) -> Self {
        Metered {
            inner,
            requests: AtomicU64::new(0),
            ranges: AtomicU64::new(0),
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
    async fn properties(&self, b: &BlobRef, s: Option<&str>) -> BlobResult<Option<BlobProps>> {
        self.count();
        self.inner.properties(b, s).await
    }
    async fn create_snapshot(&self, b: &BlobRef, m: &Metadata) -> BlobResult<String> {
        self.count();
        self.inner.create_snapshot(b, m).await
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
        let list = self.inner.page_ranges(b, q).await?;
        self.ranges.fetch_add(list.items.len() as u64, Relaxed);
        Ok(list)
    }
    async fn read(&self, b: &BlobRef, s: Option<&str>, r: ByteRange) -> BlobResult<Bytes> {
        self.count();
        self.inner.read(b, s, r).await
    }
    async fn put_pages(&self, b: &BlobRef, offset: u64, data: Bytes) -> BlobResult<String> {
        self.count();
        self.inner.put_pages(b, offset, data).await
    }
    async fn clear_pages(&self, b: &BlobRef, r: ByteRange) -> BlobResult<String> {
        self.count();
        self.inner.clear_pages(b, r).await
    }
    async fn ensure_container(&self, b: &BlobRef) -> BlobResult<()> {
        self.count();
        self.inner.ensure_container(b).await
    }
    async fn create_page_blob(&self, b: &BlobRef, size: u64) -> BlobResult<()> {
        self.count();
        self.inner.create_page_blob(b, size).await
    }
    async fn resize(&self, b: &BlobRef, size: u64) -> BlobResult<()> {
        self.count();
        self.inner.resize(b, size).await
    }
    async fn start_copy(&self, d: &BlobRef, s: &BlobRef, snap: Option<&str>) -> BlobResult<String> {
        self.count();
        self.inner.start_copy(d, s, snap).await
    }
    async fn abort_copy(&self, d: &BlobRef, id: &str) -> BlobResult<()> {
        self.count();
        self.inner.abort_copy(d, id).await
    }
    async fn start_copy_with_metadata(
        &self,
        d: &BlobRef,
        s: &BlobRef,
        snap: Option<&str>,
        m: &Metadata,
    ) -> BlobResult<String> {
        self.count();
        self.inner.start_copy_with_metadata(d, s, snap, m).await
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
