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

/// Size of one Get Page Ranges sub-range (`x-ms-range`) when listing a diff. Microsoft
/// recommends listing heavily fragmented blobs in segments so that no single request hits the
/// server's processing timeout; 64 GiB keeps a 8 TiB disk at 128 listings at most.
pub const DIFF_SEGMENT_BYTES: u64 = 64 * 1024 * 1024 * 1024;

/// Largest gap of unchanged bytes a coalesced read spans: one GET that also reads up to this
/// much unneeded data is cheaper than a second GET (a request costs ~ a round trip; 64 KiB is
/// well under one at any useful bandwidth). Gap bytes are read, never written.
pub const MAX_READ_GAP: u64 = 64 * 1024;

/// Largest single ranged GET: bounds memory to (in-flight requests × this).
pub const MAX_READ_BYTES: u64 = MAX_PUT_BYTES;

/// Splits `window` into consecutive segments that end on multiples of `segment` (absolute
/// offsets, so a resumed apply lists the same segment boundaries). Empty window: no segment.
pub fn segments(window: ByteRange, segment: u64) -> impl Iterator<Item = ByteRange> {
    assert!(segment > 0);
    let mut at = window.start;
    std::iter::from_fn(move || {
        if at >= window.end {
            return None;
        }
        let end = ((at / segment) + 1).saturating_mul(segment).min(window.end);
        let r = ByteRange::new(at, end);
        at = end;
        Some(r)
    })
}

/// One unit of apply work, in offset order: either one Clear Page, or one ranged GET of the
/// source snapshot that feeds one or more Put Pages (the puts lie inside the read, in order,
/// and never overlap; the bytes between them are read but not written).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Batch {
    Clear(ByteRange),
    Copy {
        read: ByteRange,
        puts: Vec<ByteRange>,
    },
}

impl Batch {
    /// Where the work of this batch ends: the apply checkpoint may move here once it (and
    /// every batch before it) is done.
    pub fn end(&self) -> u64 {
        match self {
            Batch::Clear(r) => r.end,
            Batch::Copy { puts, read } => puts.last().map_or(read.end, |p| p.end),
        }
    }
}

/// Groups the ops of a [`Coalescer`] into [`Batch`]es: consecutive puts whose gaps are at most
/// `max_gap` bytes share one read of at most `max_read` bytes. A clear ends the open group, so
/// batches stay in offset order and never overlap (the checkpoint relies on it). Every batch
/// holds at least one put, so reads ≤ puts.
#[derive(Debug)]
pub struct ReadPlanner {
    max_read: u64,
    max_gap: u64,
    open: Option<(ByteRange, Vec<ByteRange>)>,
}

impl ReadPlanner {
    pub fn new(max_read: u64, max_gap: u64) -> Self {
        ReadPlanner {
            max_read,
            max_gap,
            open: None,
        }
    }

    pub fn push(&mut self, op: PageOp, out: &mut Vec<Batch>) {
        match op {
            PageOp::Clear(r) => {
                self.flush(out);
                out.push(Batch::Clear(r));
            }
            PageOp::Put(r) => {
                if let Some((read, puts)) = &mut self.open {
                    if r.start >= read.end
                        && r.start - read.end <= self.max_gap
                        && r.end - read.start <= self.max_read
                    {
                        read.end = r.end;
                        puts.push(r);
                        return;
                    }
                }
                self.flush(out);
                self.open = Some((r, vec![r]));
            }
        }
    }

    pub fn finish(&mut self, out: &mut Vec<Batch>) {
        self.flush(out);
    }

    fn flush(&mut self, out: &mut Vec<Batch>) {
        if let Some((read, puts)) = self.open.take() {
            out.push(Batch::Copy { read, puts });
        }
    }
}

/// Convenience for tests: the batches for a list of ops.
pub fn plan_reads(ops: &[PageOp], max_read: u64, max_gap: u64) -> Vec<Batch> {
    let mut p = ReadPlanner::new(max_read, max_gap);
    let mut out = Vec::new();
    for op in ops {
        p.push(*op, &mut out);
    }
    p.finish(&mut out);
    out
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

/// Why a diff listing cannot be used. A listing is applied only after it passed the checks
/// Get Page Ranges documents (ranges in ascending offset order, not overlapping, on page
/// boundaries, inside the blob), because the apply plans requests and moves its checkpoint by
/// offset: a listing out of order would let the checkpoint pass ranges not yet written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListingViolation {
    /// A range starts before the end of the range listed before it (across result pages).
    OutOfOrder {
        previous_end: u64,
        range: ByteRange,
    },
    NotPageAligned {
        range: ByteRange,
    },
    /// A range ends past the size of the listed snapshot.
    OutsideBlob {
        range: ByteRange,
        size: u64,
    },
}

impl fmt::Display for ListingViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListingViolation::OutOfOrder {
                previous_end,
                range,
            } => write!(
                f,
                "range {}..{} starts before the end of the range listed before it ({previous_end}): \
                 the listing is not in ascending, non-overlapping offset order",
                range.start, range.end
            ),
            ListingViolation::NotPageAligned { range } => write!(
                f,
                "range {}..{} is not on {PAGE_SIZE}-byte page boundaries",
                range.start, range.end
            ),
            ListingViolation::OutsideBlob { range, size } => write!(
                f,
                "range {}..{} ends past the blob's size {size}",
                range.start, range.end
            ),
        }
    }
}

/// Checks the result pages of one listing, in the order they arrive, keeping the end of the
/// last range across pages (`NextMarker`) and `x-ms-range` segments.
#[derive(Clone, Debug)]
pub struct ListingCheck {
    last_end: u64,
    size: u64,
}

impl ListingCheck {
    /// A listing of a blob of `size` bytes from offset `from` on (the apply's window).
    pub fn new(from: u64, size: u64) -> Self {
        ListingCheck {
            last_end: from,
            size,
        }
    }

    /// Checks every item of one result page, listed for `segment`, before any is used; the
    /// position moves on only when the whole page passes. Items are compared as clipped to
    /// the segment: Azure returns a range that crosses a segment's edge in both segments.
    pub fn page(&mut self, items: &[PageItem], segment: ByteRange) -> Result<(), ListingViolation> {
        let mut last_end = self.last_end;
        for item in items {
            let range = item.range();
            if !range.is_page_aligned() {
                return Err(ListingViolation::NotPageAligned { range });
            }
            if range.end > round_up_to_page(self.size) {
                return Err(ListingViolation::OutsideBlob {
                    range,
                    size: self.size,
                });
            }
            let Some(clipped) = range.intersect(&segment) else {
                continue;
            };
            if clipped.start < last_end {
                return Err(ListingViolation::OutOfOrder {
                    previous_end: last_end,
                    range,
                });
            }
            last_end = clipped.end;
        }
        self.last_end = last_end;
        Ok(())
    }
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

    #[test]
    fn segments_split_on_absolute_boundaries() {
        let segs: Vec<_> = segments(ByteRange::new(3 * MIB, 21 * MIB), 8 * MIB).collect();
        assert_eq!(
            segs,
            vec![
                ByteRange::new(3 * MIB, 8 * MIB),
                ByteRange::new(8 * MIB, 16 * MIB),
                ByteRange::new(16 * MIB, 21 * MIB)
            ]
        );
        assert_eq!(segments(ByteRange::new(5, 5), 8).count(), 0);
    }

    #[test]
    fn reads_span_small_gaps_but_not_clears_or_big_gaps() {
        let k = 1024;
        let ops = coalesce(
            &[
                ch(0, 4 * k),
                ch(8 * k, 12 * k),    // 4 KiB gap: same read
                ch(200 * k, 204 * k), // 188 KiB gap: new read
                cl(204 * k, 208 * k), // clear ends the group
                ch(208 * k, 212 * k),
            ],
            MAX_PUT_BYTES,
        );
        let batches = plan_reads(&ops, MAX_READ_BYTES, MAX_READ_GAP);
        assert_eq!(
            batches,
            vec![
                Batch::Copy {
                    read: ByteRange::new(0, 12 * k),
                    puts: vec![ByteRange::new(0, 4 * k), ByteRange::new(8 * k, 12 * k)]
                },
                Batch::Copy {
                    read: ByteRange::new(200 * k, 204 * k),
                    puts: vec![ByteRange::new(200 * k, 204 * k)]
                },
                Batch::Clear(ByteRange::new(204 * k, 208 * k)),
                Batch::Copy {
                    read: ByteRange::new(208 * k, 212 * k),
                    puts: vec![ByteRange::new(208 * k, 212 * k)]
                },
            ]
        );
    }

    mod props {
        use super::super::*;
        use super::MIB;
        use proptest::prelude::*;

        /// A diff as Azure could send it: sorted, disjoint items of either kind, with gaps,
        /// adjacent items possibly unmerged. Lengths and gaps in pages.
        fn diff() -> impl Strategy<Value = Vec<PageItem>> {
            prop::collection::vec((any::<bool>(), 0u64..300, 1u64..12_000), 0..60).prop_map(|v| {
                let mut at = 0;
                v.into_iter()
                    .map(|(changed, gap, len)| {
                        let start = at + gap * PAGE_SIZE;
                        at = start + len * PAGE_SIZE;
                        let r = ByteRange::new(start, at);
                        if changed {
                            PageItem::Changed(r)
                        } else {
                            PageItem::Cleared(r)
                        }
                    })
                    .collect()
            })
        }

        /// Pages (indices) covered by items of one kind.
        fn pages_of(items: &[PageItem], changed: bool) -> Vec<u64> {
            let mut out = Vec::new();
            for i in items {
                if matches!(i, PageItem::Changed(_)) == changed {
                    let r = i.range();
                    out.extend(r.start / PAGE_SIZE..r.end / PAGE_SIZE);
                }
            }
            out
        }

        /// The fewest puts: ceil(len / 4 MiB) per maximal contiguous changed run.
        fn min_puts(items: &[PageItem]) -> u64 {
            let mut runs: Vec<ByteRange> = Vec::new();
            for i in items {
                if let PageItem::Changed(r) = i {
                    match runs.last_mut() {
                        Some(last) if last.end == r.start => last.end = r.end,
                        _ => runs.push(*r),
                    }
                }
            }
            runs.iter().map(|r| r.len().div_ceil(MAX_PUT_BYTES)).sum()
        }

        /// Items split at segment boundaries, as `x-ms-range` listings return them.
        fn segmented(items: &[PageItem], seg: u64) -> Vec<PageItem> {
            let end = items.last().map_or(0, |i| i.range().end);
            let mut out = Vec::new();
            for s in segments(ByteRange::new(0, end), seg) {
                for i in items {
                    if let Some(r) = i.range().intersect(&s) {
                        out.push(match i {
                            PageItem::Changed(_) => PageItem::Changed(r),
                            PageItem::Cleared(_) => PageItem::Cleared(r),
                        });
                    }
                }
            }
            out
        }

        proptest! {
            #[test]
            fn plan_writes_exactly_the_diff(items in diff(), gap in 0u64..256, seg_mib in 1u64..32) {
                let ops = coalesce(&items, MAX_PUT_BYTES);
                // Listing in segments changes nothing.
                prop_assert_eq!(&coalesce(&segmented(&items, seg_mib * MIB), MAX_PUT_BYTES), &ops);
                let batches = plan_reads(&ops, MAX_READ_BYTES, gap * PAGE_SIZE);
                let mut put_pages = Vec::new();
                let mut clear_pages = Vec::new();
                let (mut reads, mut puts, mut last_end) = (0u64, 0u64, 0u64);
                for b in &batches {
                    match b {
                        Batch::Clear(r) => {
                            prop_assert!(r.is_page_aligned() && !r.is_empty());
                            prop_assert!(r.start >= last_end);
                            clear_pages.extend(r.start / PAGE_SIZE..r.end / PAGE_SIZE);
                        }
                        Batch::Copy { read, puts: ps } => {
                            reads += 1;
                            prop_assert!(!ps.is_empty());
                            prop_assert!(read.is_page_aligned() && read.len() <= MAX_READ_BYTES);
                            prop_assert!(read.start >= last_end);
                            prop_assert_eq!(read.start, ps[0].start);
                            prop_assert_eq!(read.end, ps[ps.len() - 1].end);
                            let mut at = read.start;
                            for p in ps {
                                puts += 1;
                                prop_assert!(p.is_page_aligned() && !p.is_empty());
                                prop_assert!(p.len() <= MAX_PUT_BYTES);
                                prop_assert!(p.start >= at && p.start - at <= gap * PAGE_SIZE);
                                at = p.end;
                                put_pages.extend(p.start / PAGE_SIZE..p.end / PAGE_SIZE);
                            }
                        }
                    }
                    prop_assert!(b.end() > last_end);
                    last_end = b.end();
                }
                // Every changed page written once, nothing else written; same for clears.
                prop_assert_eq!(put_pages, pages_of(&items, true));
                prop_assert_eq!(clear_pages, pages_of(&items, false));
                prop_assert_eq!(puts, min_puts(&items));
                prop_assert!(reads <= puts);
            }
        }
    }
    #[test]
    fn listing_check_accepts_azures_order_across_pages_and_segments() {
        let c = |a, b| PageItem::Changed(ByteRange::new(a, b));
        let x = |a, b| PageItem::Cleared(ByteRange::new(a, b));
        let mut check = ListingCheck::new(0, 8192);
        let seg = ByteRange::new(0, 4096);
        check.page(&[x(0, 512), c(1024, 2048)], seg).unwrap();
        // Next page of the same segment, then a range crossing into the next segment,
        // listed again there.
        check.page(&[c(2048, 2560), c(3584, 5120)], seg).unwrap();
        check
            .page(&[c(3584, 5120), x(6144, 8192)], ByteRange::new(4096, 8192))
            .unwrap();
    }

    #[test]
    fn listing_check_names_what_is_wrong_and_keeps_its_position() {
        let c = |a, b| PageItem::Changed(ByteRange::new(a, b));
        let x = |a, b| PageItem::Cleared(ByteRange::new(a, b));
        let seg = ByteRange::new(0, 1 << 20);
        let mut check = ListingCheck::new(0, 1 << 20);
        check.page(&[c(4096, 8192)], seg).unwrap();
        // All pages first, then the clears: a clear below the last page.
        let e = check.page(&[c(65536, 66048), x(0, 512)], seg).unwrap_err();
        assert_eq!(
            e,
            ListingViolation::OutOfOrder {
                previous_end: 66048,
                range: ByteRange::new(0, 512)
            }
        );
        assert!(e.to_string().contains("range 0..512"), "{e}");
        // Across pages: a page starting below the end of the last accepted one.
        let e = check.page(&[c(0, 512)], seg).unwrap_err();
        assert!(matches!(
            e,
            ListingViolation::OutOfOrder {
                previous_end: 8192,
                ..
            }
        ));
        assert_eq!(
            check.page(&[c(8192, 8200)], seg),
            Err(ListingViolation::NotPageAligned {
                range: ByteRange::new(8192, 8200)
            })
        );
        assert_eq!(
            check.page(&[c(8192, (1 << 20) + 512)], seg),
            Err(ListingViolation::OutsideBlob {
                range: ByteRange::new(8192, (1 << 20) + 512),
                size: 1 << 20
            })
        );
        // Overlapping ranges.
        assert!(check.page(&[c(8192, 9216), x(8704, 10240)], seg).is_err());
    }
}
