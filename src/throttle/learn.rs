//! Rates learned from the service's refusals, for limits the config does not know (a hot
//! partition, other clients of the account, a proxy's or a tier's lower limits).
//!
//! One [`Learned`] per scope (each blob, and the account), pure, time passed in:
//! - It counts the requests it admitted over the last second ([`Recent`]: [`SLOTS`] slots of
//!   [`SLOT`], so at least one second whatever the phase), the interval Azure judges its
//!   targets over.
//! - **Refused**: a throttled answer sets the scope's ceiling to [`DECREASE`] × the requests
//!   it admitted in that second: the rate that was refused, not the rate configured. At once
//!   the scope is held to it over the trailing second too (a request goes only while the last
//!   second holds fewer than the ceiling), so the requests already in the service's window
//!   are not followed by a second's worth more. A `Retry-After` hint (capped) pauses the scope.
//!   Like the AIMD window, only the first refusal of a generation decreases, at most once per
//!   [`super::DECREASE_HOLD`].
//! - **Probe**: each success of a scope that uses most of its ceiling adds [`PROBE_GAIN`]
//!   requests/s to it: at the ceiling that is a rise of `PROBE_GAIN` × 100 % per second, so
//!   from a decrease back to the refused rate takes ≈ ln(1 / DECREASE) / PROBE_GAIN ≈ 7 s, and
//!   the rate averages ≈ 0.96 of the limit between refusals. A scope well below its ceiling does not probe:
//!   unused headroom proves nothing.
//! - **Floor**: a ceiling never drops below [`MIN_RATE`]: a refused scope still advances.
//! - Once the ceiling climbs back to the configured rate it is forgotten: the config governs.

use std::time::Duration;

/// One slot of the trailing-second count.
pub const SLOT: Duration = Duration::from_millis(50);
/// Slots counted: 21 × 50 ms, so the count covers at least the last full second.
pub const SLOTS: usize = 21;
/// Ceiling after a refusal = this × the requests admitted in the last second. With
/// [`PROBE_GAIN`], chosen on the paused-time simulation of `throttle::tests` (8 blobs at an
/// unknown 20 requests/s, 32 requests in flight, answers after 4 ms | 40 ms), as fraction
/// of the floor / share refused: 0.9 and 0.02: 0.94 | 0.92, 2.1 | 1.8 %; 0.9 and 0.01:
/// 0.95 | 0.93, 1.5 | 1.3 %; **0.93 and 0.01: 0.96 | 0.96, 1.8 | 1.8 %**; 0.95 and 0.01:
/// 0.96, 2.8 %; 0.95 and 0.02: 0.92, 4.6 %. (The AIMD window's 0.5 would give up a quarter
/// of the throughput.)
pub const DECREASE: f64 = 0.93;
/// Requests/s added to a ceiling per success of a scope that uses it: 1 % per second at
/// the ceiling (see the module docs). Slow on purpose: a refusal costs a throttled try and
/// a pause; a faster probe finds the limit again sooner and is refused more often.
pub const PROBE_GAIN: f64 = 0.01;
/// A scope probes while its last second used at least this share of its ceiling.
pub const PROBE_WHEN_USED: f64 = 0.8;
/// No learned ceiling is lower (requests/s).
pub const MIN_RATE: f64 = 1.0;
/// The longest pause a `Retry-After` hint may impose on a scope.
pub const MAX_HINT: Duration = Duration::from_secs(15);

/// Requests admitted over the trailing [`SLOTS`] × [`SLOT`].
#[derive(Clone, Debug, Default)]
pub struct Recent {
    counts: [u32; SLOTS],
    /// Index (time / SLOT) of the newest slot counted.
    head: u64,
}

impl Recent {
    fn slot_of(now: Duration) -> u64 {
        (now.as_nanos() / SLOT.as_nanos()) as u64
    }

    /// Moves the window to `now`, zeroing the slots that left it.
    fn advance(&mut self, now: Duration) {
        let idx = Self::slot_of(now);
        if idx <= self.head {
            return;
        }
        let gone = (idx - self.head).min(SLOTS as u64);
        for k in 1..=gone {
            self.counts[((self.head + k) % SLOTS as u64) as usize] = 0;
        }
        self.head = idx;
    }

    pub fn record(&mut self, now: Duration) {
        self.advance(now);
        self.counts[(self.head % SLOTS as u64) as usize] += 1;
    }

    pub fn count(&mut self, now: Duration) -> u32 {
        self.advance(now);
        self.counts.iter().sum()
    }

    /// How long until the count is at most `max` (zero if it is already).
    fn wait_until_at_most(&mut self, max: u32, now: Duration) -> Duration {
        let mut count = self.count(now);
        if count <= max {
            return Duration::ZERO;
        }
        // Oldest slot first: slot `j` leaves the window when slot `j + SLOTS` begins.
        let oldest = (self.head + 1).saturating_sub(SLOTS as u64);
        for j in oldest..=self.head {
            count -= self.counts[(j % SLOTS as u64) as usize];
            if count <= max {
                let leaves = Duration::from_nanos(SLOT.as_nanos() as u64 * (j + SLOTS as u64));
                return leaves.saturating_sub(now);
            }
        }
        // Unreachable for max ≥ 0 (every slot gone leaves 0), kept total.
        SLOT * SLOTS as u32
    }
}

/// What a refusal did to a scope.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Refusal {
    /// The ceiling was set to this (requests/s).
    Decreased(f64),
    /// Already decreased for this generation or within the hold: only the hint applied.
    Held,
}

/// The learned state of one scope.
#[derive(Clone, Debug, Default)]
pub struct Learned {
    /// Requests/s this scope may send, learned; `None`: none learned (the config governs).
    ceiling: Option<f64>,
    recent: Recent,
    /// Refusals of requests admitted before the last decrease say nothing new.
    generation: u64,
    decreased_at: Option<Duration>,
    /// No request before this (a `Retry-After` hint).
    paused_until: Duration,
}

impl Learned {
    pub fn ceiling(&self) -> Option<f64> {
        self.ceiling
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Requests admitted in the trailing second.
    pub fn recent(&mut self, now: Duration) -> u32 {
        self.recent.count(now)
    }

    /// How long a request must wait for this scope's learned limits (zero: it may go).
    pub fn wait(&mut self, now: Duration) -> Duration {
        let paused = self.paused_until.saturating_sub(now);
        let Some(c) = self.ceiling else {
            return paused;
        };
        // After this request, at most `c` per second in the window (its full length: it
        // spans 1 to 1.05 s, so `c` per second paced evenly always fits it).
        let span = (SLOT * SLOTS as u32).as_secs_f64();
        let max_before = ((c * span).floor() as u32).saturating_sub(1);
        paused.max(self.recent.wait_until_at_most(max_before, now))
    }

    /// Records an admitted request.
    pub fn admit(&mut self, now: Duration) {
        self.recent.record(now);
    }

    /// A request of `generation` of this scope was refused at `now`; `hint`: the answer's
    /// `Retry-After` (capped here at [`MAX_HINT`]).
    pub fn refused(
        &mut self,
        generation: u64,
        hint: Option<Duration>,
        now: Duration,
        hold: Duration,
    ) -> Refusal {
        if let Some(h) = hint {
            self.paused_until = self.paused_until.max(now + h.min(MAX_HINT));
        }
        let held = self
            .decreased_at
            .is_some_and(|at| now.saturating_sub(at) < hold);
        if generation != self.generation || held {
            return Refusal::Held;
        }
        let refused = f64::from(self.recent.count(now)).max(MIN_RATE);
        let c = (refused * DECREASE).max(MIN_RATE);
        self.ceiling = Some(c);
        self.generation += 1;
        self.decreased_at = Some(now);
        Refusal::Decreased(c)
    }

    /// A request of this scope succeeded at `now`; `configured`: the rate the config allows
    /// the scope now (a ceiling that reaches it is forgotten).
    pub fn succeeded(&mut self, now: Duration, configured: f64) {
        let Some(c) = self.ceiling else {
            return;
        };
        if f64::from(self.recent.count(now)) + 1.0 < PROBE_WHEN_USED * c {
            return;
        }
        let c = c + PROBE_GAIN;
        self.ceiling = (c < configured).then_some(c);
    }
}
