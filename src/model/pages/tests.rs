//! Tests of page geometry, coalescing, read planning (with property tests) and the listing
//! check. One file because they share the diff builders and strategies.

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
