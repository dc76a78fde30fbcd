//! Staying inside a storage account's scale targets: a request budget shared by every disk
//! of a replica, and concurrency that adapts to the service's "busy" answers.
//!
//! This module is the pure part: a [`Controller`] per storage account, with the time passed
//! in, so its rules are tested without a network or a clock. [`budget`] puts it behind an
//! async gate on the real clock; [`policy`] puts that gate on the Azure SDK's pipeline.
//!
//! The rules (why: `docs/scaling.md`):
//! - **Budget**: token buckets for requests/s and bytes/s, one pair for the account and one
//!   per blob (a blob's snapshots count as the blob). A request waits until every bucket it
//!   draws on has its cost. Buckets hold only [`BURST`] of their rate, so a replica never
//!   sends a second's worth at once: Azure measures its targets over short intervals.
//! - **AIMD**: a window of requests in flight per account. A throttled answer (503
//!   ServerBusy, 500 OperationTimedOut) halves it and scales the budget's rates down by
//!   [`RATE_DECREASE`]; a streak of `window` successes adds one to the window and
//!   [`RATE_INCREASE`] to the rate scale. Only the first throttle of a *generation* (the
//!   requests sent since the last decrease) decreases, and at most once per
//!   [`DECREASE_HOLD`]: answers to requests already in flight say nothing new, and the
//!   service judges rates over about a second, so throttles just after a decrease still
//!   reflect the rate before it.
//! - **Learned limits** ([`learn`], `learn = true`, the default): limits the config does not
//!   know. A throttled answer at the configured budget ([`AT_BUDGET`] of a blob's or the
//!   account's requests/s) is the AIMD's alone, as above; one below it is blamed on the
//!   request's blob (or, when that blob was using
//!   less than [`ACCOUNT_SUSPECT`] of the rate it was refused at before, on the account),
//!   and that scope is held below the rate it was refused at, then probes upward slowly.
//!   A request waits for the configured buckets *and* the learned limits of its blob and
//!   its account. With learning on, the AIMD above reacts only to throttles blamed on the
//!   account: one blob at its limit is no reason to send less to every other blob.
//! - **Memory**: a blob's state (buckets, learned limit) is dropped after [`IDLE_EVICT`]
//!   without a request, and the map never holds more than [`MAX_BLOBS`].

pub mod budget;
pub mod learn;
pub mod options;
pub mod policy;

use crate::throttle::options::ThrottleConfig;
use learn::{Learned, Refusal};
use std::collections::HashMap;
use std::time::Duration;

/// How much of its rate a bucket holds when full.
pub const BURST: Duration = Duration::from_millis(20);
/// The shortest time between two decreases.
pub const DECREASE_HOLD: Duration = Duration::from_secs(1);
/// The window's bounds: at least one request in flight; at most this many per account.
pub const MIN_WINDOW: u32 = 1;
pub const MAX_WINDOW: u32 = 256;
/// The window a controller starts with.
pub const INITIAL_WINDOW: u32 = 16;
/// Rate scale after a throttle = scale × this (not halved like the window: the budget is
/// usually right and the throttle a brief overshoot; halving it would give up a quarter of
/// the throughput on average).
pub const RATE_DECREASE: f64 = 0.9;
/// Added to the rate scale per success streak, up to 1.
pub const RATE_INCREASE: f64 = 0.02;
/// The rate scale never drops below this: a persistently throttled account still advances.
pub const MIN_RATE_SCALE: f64 = 0.05;
/// A throttle is blamed on the account, not the blob, when the blob's last second held less
/// than this share of the rate it was refused at before (its learned ceiling): a blob
/// refused well below a rate it was refused at is not what the service is refusing.
pub const ACCOUNT_SUSPECT: f64 = 0.5;
/// A throttle is the configured budget's when the blob's or the account's last second
/// held at least this share of its configured rate (× the AIMD's scale).
pub const AT_BUDGET: f64 = 0.8;
/// A blob without a request for this long is forgotten (buckets and learned limit): a
/// cycle's requests to a blob come seconds apart, its next cycle hours later.
pub const IDLE_EVICT: Duration = Duration::from_secs(300);
/// How often idle blobs are looked for.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// At most this many blobs are tracked; past it the least recently used half is dropped
/// (≈ 300 bytes each: under 20 MiB whatever the traffic).
pub const MAX_BLOBS: usize = 65_536;

const MIB: f64 = 1024.0 * 1024.0;

/// Rates a controller enforces.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub account_requests_per_s: f64,
    pub account_bytes_per_s: f64,
    pub blob_requests_per_s: f64,
    pub blob_bytes_per_s: f64,
    /// Learn lower limits from throttled answers ([`learn`]).
    pub learn: bool,
}

impl From<&ThrottleConfig> for Limits {
    fn from(c: &ThrottleConfig) -> Self {
        Limits {
            account_requests_per_s: f64::from(c.max_requests_per_second),
            account_bytes_per_s: f64::from(c.max_mib_per_second) * MIB,
            blob_requests_per_s: f64::from(c.blob_max_requests_per_second),
            blob_bytes_per_s: f64::from(c.blob_max_mib_per_second) * MIB,
            learn: c.learn,
        }
    }
}

/// A token bucket. Its configured `rate` is what it holds when full ([`BURST`] of it); each
/// call passes the rate in force now (scaled by the AIMD, lowered by a learned limit), and
/// the capacity follows it, so a lowered rate also means a smaller burst.
#[derive(Clone, Debug)]
struct Bucket {
    min_capacity: f64,
    tokens: f64,
    at: Duration,
}

impl Bucket {
    /// A full bucket. `min_capacity`: at least this fits when full (one request), whatever
    /// the rate. Bytes need no minimum: a request costing more than the capacity waits for
    /// a full bucket and leaves it in debt, which keeps bursts to one request.
    fn new(rate: f64, min_capacity: f64, now: Duration) -> Bucket {
        let mut b = Bucket {
            min_capacity,
            tokens: 0.0,
            at: now,
        };
        b.tokens = b.capacity(rate);
        b
    }

    fn capacity(&self, rate: f64) -> f64 {
        (rate * BURST.as_secs_f64()).max(self.min_capacity)
    }

    fn refill(&mut self, now: Duration, rate: f64) {
        let dt = now.saturating_sub(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(self.capacity(rate));
        self.at = self.at.max(now);
    }

    /// How long until `cost` may be taken. A cost above the capacity needs a full bucket
    /// and leaves it in debt, so big requests are paced as their bytes demand.
    fn wait(&self, cost: f64, rate: f64) -> Duration {
        let need = cost.min(self.capacity(rate));
        if self.tokens >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.tokens) / rate)
        }
    }

    fn take(&mut self, cost: f64) {
        self.tokens -= cost;
    }
}

/// Rates in force for one scope: requests/s and bytes/s.
#[derive(Clone, Copy, Debug)]
struct Rates {
    requests: f64,
    bytes: f64,
}

/// Requests-per-second and bytes-per-second buckets of one scope (account or blob).
#[derive(Clone, Debug)]
struct Pair {
    requests: Bucket,
    bytes: Bucket,
}

impl Pair {
    fn new(rates: Rates, now: Duration) -> Pair {
        Pair {
            requests: Bucket::new(rates.requests, 1.0, now),
            bytes: Bucket::new(rates.bytes, 0.0, now),
        }
    }
    fn refill(&mut self, now: Duration, rates: Rates) {
        self.requests.refill(now, rates.requests);
        self.bytes.refill(now, rates.bytes);
    }
    fn wait(&self, bytes: f64, rates: Rates) -> Duration {
        self.requests
            .wait(1.0, rates.requests)
            .max(self.bytes.wait(bytes, rates.bytes))
    }
    fn take(&mut self, bytes: f64) {
        self.requests.take(1.0);
        self.bytes.take(bytes);
    }
}

/// Rates in force for a scope: its configured rates × the AIMD's scale, requests/s below
/// the scope's learned ceiling.
fn scoped(requests: f64, bytes: f64, scale: f64, learned: &Learned) -> Rates {
    let requests = requests * scale;
    Rates {
        requests: learned.ceiling().map_or(requests, |c| requests.min(c)),
        bytes: bytes * scale,
    }
}

/// One blob's buckets and learned limit.
#[derive(Clone, Debug)]
struct BlobState {
    pair: Pair,
    learned: Learned,
    last_used: Duration,
}

/// Why a request may not start yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The window is full: wait for a request to finish.
    Slot,
    /// A bucket is short: try again after this long.
    For(Duration),
}

/// Admission of one request; hand it back to [`Controller::finish`].
#[derive(Debug)]
#[must_use = "a ticket holds a window slot until finished"]
pub struct Ticket {
    generation: u64,
    blob: String,
    blob_generation: u64,
    account_generation: u64,
}

/// How a request ended, as far as the budget cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Any answer that is not a throttle (errors included: they say nothing about load).
    Done,
    /// 503 ServerBusy or 500 OperationTimedOut.
    Throttled,
    /// No answer (connection error, cancelled): frees the slot, changes nothing else.
    NoAnswer,
}

/// Which scope a throttle was blamed on, and what it did there.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Blame {
    /// Refused at (≥ [`AT_BUDGET`] of) the configured budget of the blob or the account:
    /// the limit is known; the AIMD's rate scale answers the overshoot, nothing is learned.
    Budget,
    Blob(Refusal),
    Account(Refusal),
}

/// The budget and AIMD state of one storage account.
#[derive(Clone, Debug)]
pub struct Controller {
    limits: Limits,
    account: Pair,
    account_learned: Learned,
    /// Per blob (`container/blob`), created on first use, dropped when idle ([`IDLE_EVICT`]).
    blobs: HashMap<String, BlobState>,
    swept_at: Duration,
    window: u32,
    in_flight: u32,
    streak: u32,
    generation: u64,
    scale: f64,
    throttles: u64,
    admitted: u64,
    blob_decreases: u64,
    account_decreases: u64,
    /// When the last decrease happened (`None`: never).
    decreased_at: Option<Duration>,
}

impl Controller {
    pub fn new(limits: Limits, now: Duration) -> Controller {
        Controller {
            limits,
            account: Pair::new(
                Rates {
                    requests: limits.account_requests_per_s,
                    bytes: limits.account_bytes_per_s,
                },
                now,
            ),
            account_learned: Learned::default(),
            blobs: HashMap::new(),
            swept_at: now,
            window: INITIAL_WINDOW,
            in_flight: 0,
            streak: 0,
            generation: 0,
            scale: 1.0,
            throttles: 0,
            admitted: 0,
            blob_decreases: 0,
            account_decreases: 0,
            decreased_at: None,
        }
    }

    /// Rates in force for the account: configured × scale, below a learned ceiling.
    fn account_rates(&self) -> Rates {
        let l = &self.limits;
        scoped(
            l.account_requests_per_s,
            l.account_bytes_per_s,
            self.scale,
            &self.account_learned,
        )
    }

    /// Admits a request of `bytes` payload to `blob` at `now`, or says how to wait.
    pub fn acquire(&mut self, now: Duration, blob: &str, bytes: u64) -> Result<Ticket, Wait> {
        if self.in_flight >= self.window {
            return Err(Wait::Slot);
        }
        self.sweep(now);
        let (l, scale) = (self.limits, self.scale);
        let blob_rates =
            |learned: &Learned| scoped(l.blob_requests_per_s, l.blob_bytes_per_s, scale, learned);
        if !self.blobs.contains_key(blob) {
            self.make_room();
            let learned = Learned::default();
            let pair = Pair::new(blob_rates(&learned), now);
            self.blobs.insert(
                blob.to_string(),
                BlobState {
                    pair,
                    learned,
                    last_used: now,
                },
            );
        }
        let account_rates = self.account_rates();
        let state = self.blobs.get_mut(blob).expect("inserted above");
        let rates = blob_rates(&state.learned);
        state.pair.refill(now, rates);
        self.account.refill(now, account_rates);
        let cost = bytes as f64;
        let mut wait = state
            .pair
            .wait(cost, rates)
            .max(self.account.wait(cost, account_rates));
        if l.learn {
            wait = wait
                .max(state.learned.wait(now))
                .max(self.account_learned.wait(now));
        }
        if !wait.is_zero() {
            return Err(Wait::For(wait));
        }
        state.pair.take(cost);
        state.learned.admit(now);
        state.last_used = now;
        self.account.take(cost);
        self.account_learned.admit(now);
        self.in_flight += 1;
        self.admitted += 1;
        Ok(Ticket {
            generation: self.generation,
            blob: blob.to_string(),
            blob_generation: state.learned.generation(),
            account_generation: self.account_learned.generation(),
        })
    }

    /// Records how an admitted request ended, at `now`.
    pub fn finish(&mut self, ticket: Ticket, outcome: Outcome, now: Duration) {
        self.finish_with(ticket, outcome, None, now);
    }

    /// As [`Controller::finish`]; `hint`: the wait a throttled answer asked for
    /// (`Retry-After`), which pauses the scope blamed. Says what a throttle did, if learning.
    pub fn finish_with(
        &mut self,
        ticket: Ticket,
        outcome: Outcome,
        hint: Option<Duration>,
        now: Duration,
    ) -> Option<Blame> {
        self.in_flight = self.in_flight.saturating_sub(1);
        match outcome {
            Outcome::Done => {
                self.streak += 1;
                if self.streak >= self.window {
                    self.streak = 0;
                    self.window = (self.window + 1).min(MAX_WINDOW);
                    self.scale = (self.scale + RATE_INCREASE).min(1.0);
                }
                if self.limits.learn {
                    self.probe(&ticket.blob, now);
                }
                None
            }
            Outcome::Throttled => {
                self.throttles += 1;
                let blame = self.limits.learn.then(|| self.blame(&ticket, hint, now));
                // A blob's refusal below its budget is that blob's learned limit's business:
                // the account's window and rates move only for throttles not blamed on a blob.
                if !matches!(blame, Some(Blame::Blob(_))) {
                    self.decrease(&ticket, now);
                }
                blame
            }
            Outcome::NoAnswer => None,
        }
    }

    /// The AIMD's decrease: the window halves, the rate scale × [`RATE_DECREASE`].
    fn decrease(&mut self, ticket: &Ticket, now: Duration) {
        let held = self
            .decreased_at
            .is_some_and(|at| now.saturating_sub(at) < DECREASE_HOLD);
        if ticket.generation == self.generation && !held {
            self.decreased_at = Some(now);
            self.generation += 1;
            self.streak = 0;
            self.window = (self.window / 2).max(MIN_WINDOW);
            self.scale = (self.scale * RATE_DECREASE).max(MIN_RATE_SCALE);
        }
    }

    /// A success of a request to `blob`: the scopes it used probe upward.
    fn probe(&mut self, blob: &str, now: Duration) {
        let (l, scale) = (&self.limits, self.scale);
        self.account_learned
            .succeeded(now, l.account_requests_per_s * scale);
        if let Some(state) = self.blobs.get_mut(blob) {
            state.learned.succeeded(now, l.blob_requests_per_s * scale);
        }
    }

    /// Lowers the learned limit of the scope a throttle is blamed on.
    fn blame(&mut self, ticket: &Ticket, hint: Option<Duration>, now: Duration) -> Blame {
        let (l, scale) = (self.limits, self.scale);
        let account_recent = f64::from(self.account_learned.recent(now));
        let Some(state) = self.blobs.get_mut(&ticket.blob) else {
            // Forgotten while in flight: only the account is left to blame.
            return self.blame_account(ticket, hint, now);
        };
        let recent = f64::from(state.learned.recent(now));
        if recent >= AT_BUDGET * l.blob_requests_per_s * scale
            || account_recent >= AT_BUDGET * l.account_requests_per_s * scale
        {
            return Blame::Budget;
        }
        let account = state
            .learned
            .ceiling()
            .is_some_and(|c| recent < ACCOUNT_SUSPECT * c);
        if account {
            return self.blame_account(ticket, hint, now);
        }
        let r = state
            .learned
            .refused(ticket.blob_generation, hint, now, DECREASE_HOLD);
        if matches!(r, Refusal::Decreased(_)) {
            self.blob_decreases += 1;
        }
        Blame::Blob(r)
    }

    fn blame_account(&mut self, ticket: &Ticket, hint: Option<Duration>, now: Duration) -> Blame {
        let r = self
            .account_learned
            .refused(ticket.account_generation, hint, now, DECREASE_HOLD);
        if matches!(r, Refusal::Decreased(_)) {
            self.account_decreases += 1;
        }
        Blame::Account(r)
    }

    /// Drops blobs idle for [`IDLE_EVICT`], at most once per [`SWEEP_EVERY`].
    fn sweep(&mut self, now: Duration) {
        if now.saturating_sub(self.swept_at) < SWEEP_EVERY {
            return;
        }
        self.swept_at = now;
        self.blobs
            .retain(|_, b| now.saturating_sub(b.last_used) < IDLE_EVICT);
    }

    /// Before a new blob: at [`MAX_BLOBS`], drops the least recently used half.
    fn make_room(&mut self) {
        if self.blobs.len() < MAX_BLOBS {
            return;
        }
        let mut used: Vec<Duration> = self.blobs.values().map(|b| b.last_used).collect();
        let (_, median, _) = used.select_nth_unstable(MAX_BLOBS / 2);
        let median = *median;
        self.blobs.retain(|_, b| b.last_used > median);
    }

    /// Requests in flight allowed now.
    pub fn window(&self) -> u32 {
        self.window
    }

    /// The fraction of the configured rates in force now.
    pub fn rate_scale(&self) -> f64 {
        self.scale
    }

    /// Requests admitted so far.
    pub fn admitted(&self) -> u64 {
        self.admitted
    }

    /// Throttled answers seen so far.
    pub fn throttles(&self) -> u64 {
        self.throttles
    }

    /// Decreases of a learned limit so far: (blobs', the account's).
    pub fn learned_decreases(&self) -> (u64, u64) {
        (self.blob_decreases, self.account_decreases)
    }

    /// The requests/s learned for `blob` (`None`: none; the config governs).
    pub fn learned_blob_rate(&self, blob: &str) -> Option<f64> {
        self.blobs.get(blob).and_then(|b| b.learned.ceiling())
    }

    /// The requests/s learned for the account (`None`: none; the config governs).
    pub fn learned_account_rate(&self) -> Option<f64> {
        self.account_learned.ceiling()
    }

    /// Blobs tracked now.
    pub fn tracked_blobs(&self) -> usize {
        self.blobs.len()
    }
}

#[cfg(test)]
mod tests;
