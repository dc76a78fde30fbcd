//! A diff listing checked before it is applied: ranges in ascending, non-overlapping offset
//! order across result pages and segments, on page boundaries, inside the blob. Apart
//! because it guards the apply's checkpoint, which moves by offset.

use super::{round_up_to_page, ByteRange, PageItem, PAGE_SIZE};
use std::fmt;

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
