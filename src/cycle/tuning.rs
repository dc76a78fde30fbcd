//! The apply phase's limits and tuning: what the process shares across the runners of all
//! disks ([`Limits`]) and how one diff is listed and grouped ([`ApplyTuning`]). Kept apart from
//! `apply` so the runner, which holds both, and the apply phase, which runs on the runner,
//! each import this file and neither imports the other.

use crate::model::pages::{DIFF_SEGMENT_BYTES, MAX_READ_BYTES, MAX_READ_GAP};
use tokio::sync::Semaphore;

/// Items asked per Get Page Ranges result page. Azure returns at most 10,000; 2,000 keeps a
/// listing page (its parsed items, ~24 bytes each) near 50 KB per disk, so 100 disks applying
/// at once hold ~5 MB of listings, at the cost of one small request per 2,000 ranges (0.1 %
/// of the puts they lead to, at most).
pub const DIFF_PAGE_RESULTS: u32 = 2_000;

/// Process-wide limits of the apply phase, shared by the runners of all disks: page requests
/// in flight (each batch holds one permit while its requests run), and bytes of page data held
/// in memory (a client-copy batch holds its read's size, in 64 KiB units, from before the read
/// until its last put). Requests bound the load on the accounts; the buffer budget bounds
/// memory whatever the write sizes, so many small requests can be in flight at once while at
/// most `budget / 4 MiB` full-size reads are.
#[derive(Debug)]
pub struct Limits {
    requests: Semaphore,
    buffer: Semaphore,
    buffer_units: u32,
}

/// Granularity of the buffer budget.
const BUFFER_UNIT: u64 = 64 * 1024;

impl Limits {
    pub fn new(max_requests: usize, buffer_bytes: u64) -> Self {
        let units = (buffer_bytes / BUFFER_UNIT).clamp(1, u32::MAX as u64) as u32;
        Limits {
            requests: Semaphore::new(max_requests.max(1)),
            buffer: Semaphore::new(units as usize),
            buffer_units: units,
        }
    }

    /// A request permit. `Limits` never closes its semaphores, so acquiring only waits.
    pub(super) async fn request(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.requests.acquire().await.ok()
    }

    /// Permits for `bytes` of buffer (a request larger than the whole budget takes all of it).
    pub(super) async fn buffer(&self, bytes: u64) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let units = bytes
            .div_ceil(BUFFER_UNIT)
            .clamp(1, self.buffer_units as u64) as u32;
        self.buffer.acquire_many(units).await.ok()
    }
}

/// How the apply phase lists and groups the diff (tunable for tests and the benchmark).
#[derive(Clone, Copy, Debug)]
pub struct ApplyTuning {
    /// Size of one `x-ms-range` listing segment.
    pub segment: u64,
    /// `maxresults` per listing page.
    pub page_results: u32,
    /// Largest coalesced read.
    pub max_read: u64,
    /// Largest unchanged gap a read spans.
    pub max_gap: u64,
}

impl Default for ApplyTuning {
    fn default() -> Self {
        ApplyTuning {
            segment: DIFF_SEGMENT_BYTES,
            page_results: DIFF_PAGE_RESULTS,
            max_read: MAX_READ_BYTES,
            max_gap: MAX_READ_GAP,
        }
    }
}
