//! [`ExportBlobs`]: the data plane behind the SAS URLs ARM hands out — a managed disk's or
//! snapshot's export (`accessSAS`, `securityDataAccessSAS`), and a disk awaiting its upload.
//! The URL carries its own authorisation; errors name the ARM resource (`resource`), never
//! the URL, whose query is a credential.
//!
//! `azure::sas_blob::SasBlobs` implements it over HTTP; `arm::fake::MemArm` serves the URLs
//! its grants made from its in-memory disks. It is a trait of its own, beside [`super::PageBlobs`],
//! because the URLs are not blobs of a configured account: only ARM knows what they point at.

use crate::model::pages::ByteRange;
use crate::model::secrets::SasUrl;
use crate::storage::{BlobResult, PageList, PageListQuery};
use async_trait::async_trait;
use bytes::Bytes;

#[async_trait]
pub trait ExportBlobs: Send + Sync {
    /// One page of Get Page Ranges of `blob` within `query.range`: every written range, or,
    /// with `previous` (`x-ms-previous-snapshot-url`), the diff against that older export of
    /// the same disk.
    async fn page_ranges(
        &self,
        resource: &str,
        blob: &SasUrl,
        previous: Option<&SasUrl>,
        query: &PageListQuery<'_>,
    ) -> BlobResult<PageList>;

    /// Reads `range` of `blob`.
    async fn read(&self, resource: &str, blob: &SasUrl, range: ByteRange) -> BlobResult<Bytes>;

    /// The length of `blob` (how big a VM guest state blob is).
    async fn size(&self, resource: &str, blob: &SasUrl) -> BlobResult<u64>;

    /// Put Page of `data` (page aligned, at most 4 MiB) at `offset` of `blob`, a disk awaiting
    /// its upload reached through its write SAS.
    async fn put_pages(
        &self,
        resource: &str,
        blob: &SasUrl,
        offset: u64,
        data: Bytes,
    ) -> BlobResult<()>;
}
