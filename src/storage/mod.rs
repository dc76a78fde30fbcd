//! The narrow page-blob interface a backup cycle needs.
//!
//! The cycle runner only sees this trait. `azure::AzureBlobs` implements it over HTTP and
//! `fake::MemBlobs` in memory, so the same cycle logic is tested fast in simulation and for
//! real against Azurite.

pub mod copy;
pub mod error;
pub mod export;
pub mod fake;
pub mod lease;

use crate::model::pages::{ByteRange, PageItem};
use async_trait::async_trait;
use bytes::Bytes;

pub use crate::model::{BlobRef, Metadata};
pub use crate::storage::error::{BlobError, BlobResult, ErrorKind, Resource, ServiceCode};
pub use crate::storage::export::ExportBlobs;

/// State of an asynchronous Copy Blob, as reported on the destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CopyStatus {
    Pending { copied: u64, total: u64 },
    Success,
    Failed(String),
    Aborted(String),
}

/// What Get Blob Properties tells us about a blob or snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobProps {
    pub size: u64,
    pub etag: String,
    pub metadata: Metadata,
    /// Present when the blob is or was the destination of a Copy Blob.
    pub copy: Option<(String, CopyStatus)>,
    /// A page blob's sequence number (`x-ms-blob-sequence-number`): snapback's fencing token
    /// on a backup blob (see [`Fence`]). None for other blob types.
    pub sequence_number: Option<u64>,
}

/// The fencing token a disk's owner writes its backup blob under: every Put Page, Clear Page
/// and Put Page From URL carries it as `x-ms-if-sequence-number-eq`, so the service refuses
/// the write ([`ErrorKind::Fenced`]) once a later owner has raised the blob's sequence
/// number. A write delayed in the network, or sent by a process frozen past its lease, can
/// then never land on a blob another owner is writing (docs/design.md, "Fencing").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence(pub u64);

/// A precondition on the blob a request creates or changes (Azure's conditional headers):
/// the only conditions Snapshot Blob, Copy Blob, Put Blob and Set Blob Properties accept
/// (sequence-number conditions exist only on the page writes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum IfBlob {
    /// No condition.
    #[default]
    Any,
    /// `If-None-Match: *`: only if the blob does not exist.
    Absent,
    /// `If-Match`: only if the blob is at this ETag.
    Is(String),
}

/// How Put Blob creates a page blob: with its metadata (in the creating request, so the blob
/// never exists untagged), an initial sequence number, and a precondition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewPageBlob {
    pub metadata: Metadata,
    pub sequence_number: Option<u64>,
    pub condition: IfBlob,
}

/// One snapshot of a blob, as listed with its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The snapshot's timestamp exactly as Azure returns it (it is also its identifier).
    pub snapshot: String,
    pub metadata: Metadata,
    pub size: u64,
}

/// One result page of Get Page Ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageList {
    /// Items in document (offset) order: page and clear ranges interleaved.
    pub items: Vec<PageItem>,
    /// Opaque continuation; `None` when the listing is complete.
    pub next_marker: Option<String>,
}

/// Empty result pages in a row after which a listing is taken as going round in circles.
/// Azure may answer an empty page with a marker when it runs out of time, a few in a row on a
/// busy or fragmented blob, never hundreds.
pub const MAX_EMPTY_PAGES_IN_A_ROW: u32 = 1000;

/// Follows one listing's continuation (`NextMarker`, for Get Page Ranges and List Blobs alike)
/// and refuses a listing that goes round in circles: a marker the service already gave, or
/// [`MAX_EMPTY_PAGES_IN_A_ROW`] empty pages in a row. Without it, a broken or hostile answer
/// would keep a cycle listing forever.
#[derive(Debug, Default)]
pub struct Continuation {
    seen: std::collections::HashSet<String>,
    empty_in_a_row: u32,
}

impl Continuation {
    /// Takes the marker a page of `items` items ended with and returns the one to ask for
    /// next: `None` when the listing is complete.
    pub fn follow(
        &mut self,
        next: Option<String>,
        items: usize,
    ) -> Result<Option<String>, CircularListing> {
        let Some(marker) = next.filter(|m| !m.is_empty()) else {
            return Ok(None);
        };
        self.empty_in_a_row = if items == 0 {
            self.empty_in_a_row + 1
        } else {
            0
        };
        if self.empty_in_a_row >= MAX_EMPTY_PAGES_IN_A_ROW {
            return Err(CircularListing::EmptyPages(self.empty_in_a_row));
        }
        if !self.seen.insert(marker.clone()) {
            return Err(CircularListing::RepeatedMarker(marker));
        }
        Ok(Some(marker))
    }
}

/// Why a listing was given up: its continuation goes round in circles.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CircularListing {
    #[error("the service gave the continuation marker {0:?} a second time")]
    RepeatedMarker(String),
    #[error("the service answered {0} empty result pages in a row, each with a new marker")]
    EmptyPages(u32),
}

impl CircularListing {
    /// As a storage error on `resource` (the service's answer broke the protocol).
    pub fn on(self, resource: Resource, what: &str) -> BlobError {
        BlobError::local(ErrorKind::BadResponse, resource, format!("{what}: {self}"))
    }
}

/// A Get Page Ranges request.
#[derive(Clone, Debug, Default)]
pub struct PageListQuery<'a> {
    /// List this snapshot (None: the base blob).
    pub snapshot: Option<&'a str>,
    /// Diff against this older snapshot (`prevsnapshot`).
    pub prev_snapshot: Option<&'a str>,
    /// Only this part of the blob (`x-ms-range`), for huge blobs.
    pub range: Option<ByteRange>,
    pub marker: Option<&'a str>,
    pub max_results: Option<u32>,
}

/// The page-blob operations a backup cycle needs. Implementations retry transient failures
/// themselves; an error returned here is final for this attempt.
#[async_trait]
pub trait PageBlobs: Send + Sync {
    /// Whether requests to `account` can be made at all (its credentials were loaded).
    /// Checked before a cycle starts so that a missing secret fails it before any request.
    fn check_account(&self, _account: &str) -> BlobResult<()> {
        Ok(())
    }

    /// Properties of a blob, or of one of its snapshots. `Ok(None)` if it does not exist.
    async fn properties(
        &self,
        blob: &BlobRef,
        snapshot: Option<&str>,
    ) -> BlobResult<Option<BlobProps>>;

    /// Snapshot Blob with metadata; returns the new snapshot's timestamp.
    async fn create_snapshot(&self, blob: &BlobRef, metadata: &Metadata) -> BlobResult<String>;

    /// Snapshot Blob with `If-Match: etag`: taken only if the blob is still at `etag`, else
    /// a `PreconditionFailed` error (412 ConditionNotMet).
    async fn create_snapshot_if_match(
        &self,
        blob: &BlobRef,
        metadata: &Metadata,
        etag: &str,
    ) -> BlobResult<String>;

    /// All snapshots of `blob` with their metadata, oldest first.
    async fn list_snapshots(&self, blob: &BlobRef) -> BlobResult<Vec<SnapshotInfo>>;

    /// Deletes one snapshot. Deleting a snapshot that is already gone succeeds.
    async fn delete_snapshot(&self, blob: &BlobRef, snapshot: &str) -> BlobResult<()>;

    /// One page of Get Page Ranges (full listing, or diff with `prev_snapshot`).
    async fn page_ranges(&self, blob: &BlobRef, query: &PageListQuery<'_>) -> BlobResult<PageList>;

    /// Reads `range` of a snapshot (or of the base blob when `snapshot` is None).
    async fn read(
        &self,
        blob: &BlobRef,
        snapshot: Option<&str>,
        range: ByteRange,
    ) -> BlobResult<Bytes>;

    /// Put Page: writes `data` at `offset` (page aligned, at most 4 MiB), with a transactional
    /// checksum, only while the blob's sequence number is `fence` (when given). Returns the
    /// blob's new ETag.
    async fn put_pages(
        &self,
        blob: &BlobRef,
        offset: u64,
        data: Bytes,
        fence: Option<Fence>,
    ) -> BlobResult<String>;

    /// Put Page From URL: the service itself copies `range.len()` bytes (at most 4 MiB, page
    /// aligned) from `source` (one of its snapshots) at `source_offset` into `dest` at `range`;
    /// no page data passes through snapback. Cross-account reads are authorised by the
    /// implementation (a short-lived SAS, or a bearer token). Only while `dest`'s sequence
    /// number is `fence` (when given). Returns the blob's new ETag.
    async fn put_pages_from_url(
        &self,
        dest: &BlobRef,
        range: ByteRange,
        source: &BlobRef,
        source_snapshot: Option<&str>,
        source_offset: u64,
        fence: Option<Fence>,
    ) -> BlobResult<String>;

    /// Put Page From URL from a source that carries its own authorisation (a managed disk's
    /// snapshot exported with a SAS): `range.len()` bytes of `source` at `source_offset` into
    /// `dest` at `range`. `source_resource` names the source in errors (the URL is a
    /// credential and never appears in one). Only while `dest`'s sequence number is `fence`
    /// (when given). Storage that cannot do it refuses (`Refused`).
    async fn put_pages_from_sas(
        &self,
        _dest: &BlobRef,
        range: ByteRange,
        _source: &url::Url,
        source_resource: &str,
        _source_offset: u64,
        _fence: Option<Fence>,
    ) -> BlobResult<String> {
        Err(BlobError::local(
            ErrorKind::Refused,
            Resource::Managed(source_resource.to_string()),
            format!("Put Page From URL {range} from a SAS URL is not supported here"),
        ))
    }

    /// Clear Page over `range`, only while the blob's sequence number is `fence` (when
    /// given). Returns the blob's new ETag.
    async fn clear_pages(
        &self,
        blob: &BlobRef,
        range: ByteRange,
        fence: Option<Fence>,
    ) -> BlobResult<String>;

    /// Creates the container if it does not exist.
    async fn ensure_container(&self, blob: &BlobRef) -> BlobResult<()>;

    /// Creates (or replaces) a page blob of `size` bytes, all zero, as `new` says (metadata,
    /// sequence number, precondition). Returns its ETag.
    async fn create_page_blob(
        &self,
        blob: &BlobRef,
        size: u64,
        new: &NewPageBlob,
    ) -> BlobResult<String>;

    /// Sets the page blob's size (grows with zero pages, or truncates), if `condition`
    /// holds. Returns the blob's new ETag.
    async fn resize(&self, blob: &BlobRef, size: u64, condition: &IfBlob) -> BlobResult<String>;

    /// Sets the page blob's sequence number to `value` (`x-ms-sequence-number-action:
    /// update`), if `condition` holds. Returns the blob's new ETag (the change is a write:
    /// the ETag changes, the pages do not).
    async fn set_sequence_number(
        &self,
        blob: &BlobRef,
        value: u64,
        condition: &IfBlob,
    ) -> BlobResult<String>;

    /// Aborts a pending copy (ignores "no pending copy").
    async fn abort_copy(&self, dest: &BlobRef, copy_id: &str) -> BlobResult<()>;

    /// Starts an asynchronous Copy Blob of `source` (one of its snapshots) over `dest`; returns
    /// the copy id. Cross-account reads are authorised by the implementation. The destination
    /// gets exactly `metadata` from the moment the copy starts (a blob being copied cannot be
    /// tagged afterwards on Azure), so an unfinished copy is recognisable as such; without it
    /// Copy Blob would copy the source's metadata, snapback's snapshot tags included. The copy
    /// starts only if `condition` holds on `dest`. A page blob's copy takes the source's
    /// sequence number.
    async fn start_copy(
        &self,
        dest: &BlobRef,
        source: &BlobRef,
        source_snapshot: Option<&str>,
        metadata: &Metadata,
        condition: &IfBlob,
    ) -> BlobResult<String>;

    /// Set Blob Metadata on the base blob: replaces all of its metadata.
    async fn set_metadata(&self, blob: &BlobRef, metadata: &Metadata) -> BlobResult<()>;

    /// Deletes the base blob (not its snapshots: a blob that has snapshots is refused by the
    /// service). Deleting a blob that is already gone succeeds.
    async fn delete_blob(&self, blob: &BlobRef) -> BlobResult<()>;
}

/// How long the storage service may need to read a copy source of `bytes` (a minted SAS, a
/// managed snapshot's read access): Copy Blob across accounts is asynchronous and reads its
/// source for the whole copy, which on Azure has no guaranteed rate. 15 minutes (what one
/// request needs) plus the size at a conservative 8 MiB/s, at most 7 days (an 8 TiB blob
/// then needs 14 MiB/s; a copy that outlives its SAS fails and is started again, at most 3
/// times a run). The source is one snapshot, read-only, deleted by the chain's next prune,
/// so a longer lifetime exposes nothing more than that snapshot.
pub fn copy_source_lifetime(bytes: u64) -> std::time::Duration {
    const FLOOR: std::time::Duration = std::time::Duration::from_secs(15 * 60);
    const RATE: u64 = 8 * 1024 * 1024;
    const CAP: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
    (FLOOR + std::time::Duration::from_secs(bytes / RATE)).min(CAP)
}

/// Attempts of an idempotent read whose answer is cut (see [`retry_unanswered`]).
const READ_ATTEMPTS: u32 = 3;

/// Wait before the second attempt of a read; quadrupled before the third (0.2 + 0.8 s).
const READ_FIRST_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// An idempotent read (Get Blob of a snapshot, of a lock blob), tried again (at most
/// `READ_ATTEMPTS` times, with backoff) when its answer is cut: a connection dropped
/// mid-body is not retried by the storage client, whose retry policy ends once the headers
/// arrived. Other errors, answered 5xx and throttling included (the client's policy has
/// retried those already), are returned at once.
pub async fn retry_unanswered<T, F, Fut>(what: &str, mut read: F) -> BlobResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BlobResult<T>>,
{
    let mut wait = READ_FIRST_WAIT;
    let mut attempt = 1;
    loop {
        match read().await {
            Err(e) if e.is_unanswered() && attempt < READ_ATTEMPTS => {
                tracing::warn!(error = %e, attempt, "read of {what} cut; reading it again");
                tokio::time::sleep(wait).await;
                wait *= 4;
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{copy_source_lifetime, CircularListing, Continuation, MAX_EMPTY_PAGES_IN_A_ROW};
    use std::time::Duration;

    #[test]
    fn a_copy_source_lives_as_long_as_a_slow_copy_needs_within_a_week() {
        let min = |m: u64| Duration::from_secs(m * 60);
        assert_eq!(copy_source_lifetime(0), min(15));
        assert_eq!(copy_source_lifetime(4 << 20), min(15));
        // 1 TiB at 8 MiB/s: 131,072 s (36.4 h).
        assert_eq!(
            copy_source_lifetime(1 << 40),
            min(15) + Duration::from_secs(131_072)
        );
        assert_eq!(
            copy_source_lifetime(8 << 40),
            Duration::from_secs(7 * 24 * 3600)
        );
        assert_eq!(
            copy_source_lifetime(u64::MAX),
            Duration::from_secs(7 * 24 * 3600)
        );
        let mut last = Duration::ZERO;
        for tib in 0..=32u64 {
            let d = copy_source_lifetime(tib << 40);
            assert!(d >= last, "never shorter for a bigger source");
            last = d;
        }
    }

    #[test]
    fn a_continuation_ends_and_refuses_circles() {
        let m = |s: &str| Some(s.to_string());
        let mut c = Continuation::default();
        assert_eq!(c.follow(m("a"), 5), Ok(m("a")));
        assert_eq!(c.follow(m("b"), 0), Ok(m("b")));
        // An empty marker ends the listing, as an absent one does.
        assert_eq!(c.follow(m(""), 0), Ok(None));
        assert_eq!(c.follow(None, 3), Ok(None));
        assert_eq!(
            c.follow(m("a"), 5),
            Err(CircularListing::RepeatedMarker("a".into()))
        );

        let mut c = Continuation::default();
        for i in 1..MAX_EMPTY_PAGES_IN_A_ROW {
            assert!(c.follow(m(&i.to_string()), 0).is_ok(), "page {i}");
        }
        assert_eq!(
            c.follow(m("last"), 0),
            Err(CircularListing::EmptyPages(MAX_EMPTY_PAGES_IN_A_ROW))
        );
        // A page with items resets the count.
        let mut c = Continuation::default();
        for i in 0..3 * MAX_EMPTY_PAGES_IN_A_ROW {
            let items = usize::from(i % (MAX_EMPTY_PAGES_IN_A_ROW / 2) == 0);
            assert!(c.follow(m(&i.to_string()), items).is_ok(), "page {i}");
        }
    }
}
