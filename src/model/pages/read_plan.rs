//! How the apply reads the source: a diff listed in segments on absolute boundaries, and
//! coalesced puts grouped under ranged GETs that span small gaps ([`Batch`]). Apart from the
//! write plan because its limits (gap, read size, segment) are tuning, not Azure's rules.

use super::{ByteRange, PageOp, MAX_PUT_BYTES};

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

/// Groups the ops of a [`Coalescer`](super::Coalescer) into [`Batch`]es: consecutive puts whose gaps are at most
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
