//! A diff turned into the fewest Put Page / Clear Page requests: adjacent changed ranges
//! merged up to the largest Put Page, adjacent cleared ranges merged without limit. Apart
//! because it is the rule the "Put requests = the minimum" figure rests on, proven by
//! property tests.

use super::{ByteRange, PageItem, PageOp, PAGE_SIZE};

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
