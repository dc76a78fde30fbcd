//! The blob operations behind disk ownership: a small block blob beside each backup blob,
//! leased by the one process that runs the disk's cycles (see `ownership`). Kept apart from
//! [`crate::storage::PageBlobs`] because only the Azure implementation needs it: in-memory
//! simulations have a single process and no one to exclude.

use crate::storage::{BlobProps, BlobRef, BlobResult, Metadata};
use async_trait::async_trait;
use bytes::Bytes;

#[async_trait]
pub trait LeaseBlobs: Send + Sync {
    /// Creates an empty block blob unless one exists (If-None-Match: *); an existing blob is
    /// left as it is (it may be leased by someone else).
    async fn create_lock_blob(&self, blob: &BlobRef) -> BlobResult<()>;

    /// Acquires a lease of `seconds` (15–60) with our own id. Taking a lease we already hold
    /// with the same id succeeds (so a retried acquire is harmless). Held by someone else:
    /// `Conflict` (409 `LeaseAlreadyPresent`).
    async fn acquire_lease(&self, blob: &BlobRef, lease_id: &str, seconds: u32) -> BlobResult<()>;

    /// Renews our lease; fails (409/412) when it expired and someone else took it.
    async fn renew_lease(&self, blob: &BlobRef, lease_id: &str) -> BlobResult<()>;

    /// Releases our lease so the next owner need not wait for it to expire.
    async fn release_lease(&self, blob: &BlobRef, lease_id: &str) -> BlobResult<()>;

    /// Set Blob Metadata under our lease (a write without the lease id is refused by the
    /// service, so only the holder can say who holds it). Returns the blob's new ETag.
    async fn set_leased_metadata(
        &self,
        blob: &BlobRef,
        lease_id: &str,
        metadata: &Metadata,
    ) -> BlobResult<String>;

    /// The lock blob's properties (ETag, metadata) and body (empty when it has none); `None`
    /// if it does not exist.
    async fn read_lock_blob(&self, blob: &BlobRef) -> BlobResult<Option<(BlobProps, Bytes)>>;

    /// Put Blob under our lease, `If-Match: if_match`: replaces the body and the metadata
    /// (Put Blob keeps none of the old metadata, so `metadata` is all of it). Returns the new
    /// ETag. Someone else's lease, no lease, or another ETag: `PreconditionFailed` (412).
    async fn put_leased_body(
        &self,
        blob: &BlobRef,
        lease_id: &str,
        if_match: &str,
        body: Bytes,
        metadata: &Metadata,
    ) -> BlobResult<String>;
}

/// One blob of a listing and whether it is leased now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeasedBlob {
    pub name: String,
    /// The lease is held (not available, expired, broken or breaking).
    pub leased: bool,
    pub metadata: Metadata,
}

/// List Blobs with lease state: how cluster replicas see which of them are alive (each holds
/// a lease on its heartbeat blob; see `daemon::cluster`). One request per 5,000 blobs, where a
/// Get Blob Properties per replica would be one per replica.
#[async_trait]
pub trait LeaseListing: Send + Sync {
    /// The blobs of `dir`'s account and container whose names start with `dir.blob`.
    async fn list_leases(&self, dir: &BlobRef) -> BlobResult<Vec<LeasedBlob>>;
}
