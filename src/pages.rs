//! Page geometry: byte ranges of a page blob, the diff items Azure returns, and how a diff is
//! turned into the fewest Put Page / Clear Page requests.
//!
//! Everything here is pure so it can be tested exhaustively without a network.

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

/// Turns a stream of diff items (in offset order, possibly unmerged and split across result
/// pages) into the fewest requests: adjacent changed ranges are merged up to `max_put` bytes,
/// adjacent cleared ranges are merged without limit.
///
/// Feed items with [`Coalescer::push`], then call [`Coalescer::finish`]. Ops come out in offset
/// order, which the apply checkpoint relies on.
#[derive(Debug)]
pub struct Coalescer {
    max_put: u64,
    pending: Option<PageOp>,
}

impl Coalescer {
    pub fn new(max_put: u64) -> Self {
        assert!(max_put >= PAGE_SIZE && max_put.is_multiple_of(PAGE_SIZE));
        Coalescer {
            max_put,
            pending: None,
        }
    }

    /// Adds one diff item; returns the ops that became complete.
    pub fn push(&mut self, item: PageItem, out: &mut Vec<PageOp>) {
        let r = item.range();
        if r.is_empty() {
            return;
        }
        match (self.pending.take(), item) {
            (Some(PageOp::Clear(p)), PageItem::Cleared(_)) if p.end == r.start => {
                self.pending = Some(PageOp::Clear(ByteRange::new(p.start, r.end)));
            }
            (Some(PageOp::Put(p)), PageItem::Changed(_)) if p.end == r.start => {
                self.open_put(p.start, r.end, out);
            }
            (prev, item) => {
                out.extend(prev);
                match item {
                    PageItem::Cleared(r) => self.pending = Some(PageOp::Clear(r)),
                    PageItem::Changed(r) => self.open_put(r.start, r.end, out),
                }
            }
        }
    }

    /// Starts (or extends) the open Put over `start..end`, emitting full `max_put` pieces.
    fn open_put(&mut self, mut start: u64, end: u64, out: &mut Vec<PageOp>) {
        while end - start > self.max_put {
            out.push(PageOp::Put(ByteRange::new(start, start + self.max_put)));
            start += self.max_put;
        }
        self.pending = Some(PageOp::Put(ByteRange::new(start, end)));
    }

    /// Flushes the last open op.
    pub fn finish(&mut self, out: &mut Vec<PageOp>) {
        out.extend(self.pending.take());
    }
}

/// Convenience for tests and small diffs: coalesce a whole list at once.
pub fn coalesce(items: &[PageItem], max_put: u64) -> Vec<PageOp> {
    let mut c = Coalescer::new(max_put);
    let mut out = Vec::new();
    for item in items {
        c.push(*item, &mut out);
    }
    c.finish(&mut out);
    out
}

/// Rounds `n` up to the next page boundary (a resize target must be page aligned).
pub fn round_up_to_page(n: u64) -> u64 {
    n.div_ceil(PAGE_SIZE) * PAGE_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn ch(s: u64, e: u64) -> PageItem {
        PageItem::Changed(ByteRange::new(s, e))
    }
    fn cl(s: u64, e: u64) -> PageItem {
        PageItem::Cleared(ByteRange::new(s, e))
    }

    #[test]
    fn adjacent_changed_ranges_merge() {
        let ops = coalesce(&[ch(0, 512), ch(512, 1024), ch(2048, 4096)], MAX_PUT_BYTES);
        assert_eq!(
            ops,
            vec![
                PageOp::Put(ByteRange::new(0, 1024)),
                PageOp::Put(ByteRange::new(2048, 4096))
            ]
        );
    }

    #[test]
    fn puts_split_at_four_mib_and_clears_do_not() {
        let ops = coalesce(
            &[ch(0, 5 * MIB), ch(5 * MIB, 9 * MIB), cl(9 * MIB, 100 * MIB)],
            4 * MIB,
        );
        assert_eq!(
            ops,
            vec![
                PageOp::Put(ByteRange::new(0, 4 * MIB)),
                PageOp::Put(ByteRange::new(4 * MIB, 8 * MIB)),
                PageOp::Put(ByteRange::new(8 * MIB, 9 * MIB)),
                PageOp::Clear(ByteRange::new(9 * MIB, 100 * MIB)),
            ]
        );
    }

    #[test]
    fn interleaved_kinds_never_merge() {
        let ops = coalesce(
            &[
                ch(0, 512),
                cl(512, 1024),
                ch(1024, 1536),
                cl(1536, 2048),
                cl(2048, 2560),
            ],
            MAX_PUT_BYTES,
        );
        assert_eq!(
            ops,
            vec![
                PageOp::Put(ByteRange::new(0, 512)),
                PageOp::Clear(ByteRange::new(512, 1024)),
                PageOp::Put(ByteRange::new(1024, 1536)),
                PageOp::Clear(ByteRange::new(1536, 2560)),
            ]
        );
    }

    #[test]
    fn put_count_is_the_minimum_for_contiguous_runs() {
        // A contiguous changed run of L bytes needs ceil(L / 4 MiB) puts, whatever its pieces.
        let items: Vec<_> = (0..1000u64)
            .map(|i| ch(i * 64 * 1024, (i + 1) * 64 * 1024))
            .collect();
        let ops = coalesce(&items, MAX_PUT_BYTES);
        let total = 1000 * 64 * 1024u64;
        assert_eq!(ops.len() as u64, total.div_ceil(MAX_PUT_BYTES));
        let covered: u64 = ops.iter().map(|o| o.range().len()).sum();
        assert_eq!(covered, total);
        assert!(ops
            .iter()
            .all(|o| o.range().len() <= MAX_PUT_BYTES && o.range().is_page_aligned()));
    }

    #[test]
    fn intersect_and_header() {
        let r = ByteRange::new(512, 2048);
        assert_eq!(
            r.intersect(&ByteRange::new(1024, 4096)),
            Some(ByteRange::new(1024, 2048))
        );
        assert_eq!(r.intersect(&ByteRange::new(2048, 4096)), None);
        assert_eq!(r.http_header(), "bytes=512-2047");
        assert_eq!(round_up_to_page(513), 1024);
    }
}
