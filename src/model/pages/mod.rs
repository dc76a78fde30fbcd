//! Page geometry: byte ranges of a page blob, the diff items Azure returns, and how a diff is
//! turned into the fewest Put Page / Clear Page requests.
//!
//! Everything here is pure so it can be tested exhaustively without a network.
//!
//! This file holds the geometry (pages, byte ranges, diff items, the requests they become,
//! checksums); beside it by concept: a diff coalesced into the fewest writes
//! (`coalesce`), those writes grouped under ranged reads over segments
//! (`read_plan`), and a listing checked before it is used (`listing`).

mod coalesce;
mod listing;
mod read_plan;
#[cfg(test)]
mod tests;

pub use coalesce::{coalesce, Coalescer};
pub use listing::{ListingCheck, ListingViolation};
pub use read_plan::{
    plan_reads, segments, Batch, ReadPlanner, DIFF_SEGMENT_BYTES, MAX_READ_BYTES, MAX_READ_GAP,
};

use std::fmt;

/// Page blobs are addressed in 512-byte pages; every write starts and ends on a page boundary.
pub const PAGE_SIZE: u64 = 512;

/// Azure rejects a Put Page (update) larger than 4 MiB.
pub const MAX_PUT_BYTES: u64 = 4 * 1024 * 1024;

/// A half-open byte range `[start, end)` of a page blob.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn new(start: u64, end: u64) -> Self {
        debug_assert!(start <= end, "range {start}..{end} is reversed");
        ByteRange { start, end }
    }

    /// From Azure's inclusive `<Start>`/`<End>` pair.
    pub fn from_inclusive(start: u64, end_inclusive: u64) -> Self {
        ByteRange::new(start, end_inclusive + 1)
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Both ends on a page boundary, as Put Page and Clear Page require.
    pub fn is_page_aligned(&self) -> bool {
        self.start.is_multiple_of(PAGE_SIZE) && self.end.is_multiple_of(PAGE_SIZE)
    }

    /// The part of `self` inside `other`, if any.
    pub fn intersect(&self, other: &ByteRange) -> Option<ByteRange> {
        let start = self.start.max(other.start);
        let end = self.end.min(other.end);
        (start < end).then(|| ByteRange::new(start, end))
    }

    /// The HTTP `Range` header value (`bytes=start-end`, end inclusive).
    pub fn http_header(&self) -> String {
        format!("bytes={}-{}", self.start, self.end - 1)
    }
}

impl fmt::Debug for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bytes {}..{}", self.start, self.end)
    }
}

/// One item of a Get Page Ranges answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageItem {
    /// Pages that hold data (full listing) or changed since the previous snapshot (diff).
    Changed(ByteRange),
    /// Pages cleared since the previous snapshot (diff only).
    Cleared(ByteRange),
}

impl PageItem {
    pub fn range(&self) -> ByteRange {
        match self {
            PageItem::Changed(r) | PageItem::Cleared(r) => *r,
        }
    }
}

/// One request the apply phase sends to the backup blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageOp {
    /// Read these bytes from the source snapshot and Put Page them (≤ [`MAX_PUT_BYTES`]).
    Put(ByteRange),
    /// Clear Page over this range (any length).
    Clear(ByteRange),
}

impl PageOp {
    pub fn range(&self) -> ByteRange {
        match self {
            PageOp::Put(r) | PageOp::Clear(r) => *r,
        }
    }
}

/// CRC-64/NVME, the checksum Azure uses for `x-ms-content-crc64`; also how `verify` compares
/// chunks.
pub fn crc64(data: &[u8]) -> u64 {
    CRC64.checksum(data)
}

static CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_NVME);

/// [`crc64`] of data given in pieces, in order (a blob read in chunks).
pub fn crc64_digest() -> crc::Digest<'static, u64> {
    CRC64.digest()
}

/// Rounds `n` up to the next page boundary (a resize target must be page aligned).
pub fn round_up_to_page(n: u64) -> u64 {
    n.div_ceil(PAGE_SIZE) * PAGE_SIZE
}
