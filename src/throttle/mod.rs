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

pub mod budget;
pub mod policy;

use crate::config::ThrottleConfig;
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

const MIB: f64 = 1024.0 * 1024.0;

/// Rates a controller enforces.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub account_requests_per_s: f64,
    pub account_bytes_per_s: f64,
    pub blob_requests_per_s: f64,
    pub blob_bytes_per_s: f64,
}

impl From<&ThrottleConfig> for Limits {
    fn from(c: &ThrottleConfig) -> Self {
        Limits {
            account_requests_per_s: f64::from(c.max_requests_per_second),
            account_bytes_per_s: f64::from(c.max_mib_per_second) * MIB,
            blob_requests_per_s: f64::from(c.blob_max_requests_per_second),
            blob_bytes_per_s: f64::from(c.blob_max_mib_per_second) * MIB,
        }
    }
}

/// A token bucket; `rate` is scaled by the controller's rate scale when it refills.
#[derive(Clone, Debug)]
struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    at: Duration,
}

impl Bucket {
    /// A full bucket. `min_capacity`: at least this fits when full (one request), whatever
    /// the rate. Bytes need no minimum: a request costing more than the capacity waits for
    /// a full bucket and leaves it in debt, which keeps bursts to one request.
    fn new(rate: f64, min_capacity: f64, now: Duration) -> Bucket {
        let capacity = (rate * BURST.as_secs_f64()).max(min_capacity);
        Bucket {
            rate,
            capacity,
            tokens: capacity,
            at: now,
        }
    }

    fn refill(&mut self, now: Duration, scale: f64) {
        let dt = now.saturating_sub(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate * scale).min(self.capacity);
        self.at = self.at.max(now);
    }

    /// How long until `cost` may be taken. A cost above the capacity needs a full bucket
    /// and leaves it in debt, so big requests are paced as their bytes demand.
    fn wait(&self, cost: f64, scale: f64) -> Duration {
        let need = cost.min(self.capacity);
        if self.tokens >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.tokens) / (self.rate * scale))
        }
    }

    fn take(&mut self, cost: f64) {
        self.tokens -= cost;
    }
}

/// Requests-per-second and bytes-per-second buckets of one scope (account or blob).
#[derive(Clone, Debug)]
struct Pair {
    requests: Bucket,
    bytes: Bucket,
}

impl Pair {
    fn new(requests_per_s: f64, bytes_per_s: f64, now: Duration) -> Pair {
        Pair {
            requests: Bucket::new(requests_per_s, 1.0, now),
            bytes: Bucket::new(bytes_per_s, 0.0, now),
        }
    }
    fn refill(&mut self, now: Duration, scale: f64) {
        self.requests.refill(now, scale);
        self.bytes.refill(now, scale);
    }
    fn wait(&self, bytes: f64, scale: f64) -> Duration {
        self.requests
            .wait(1.0, scale)
            .max(self.bytes.wait(bytes, scale))
    }
    fn take(&mut self, bytes: f64) {
        self.requests.take(1.0);
        self.bytes.take(bytes);
    }
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

/// The budget and AIMD state of one storage account.
#[derive(Clone, Debug)]
pub struct Controller {
    limits: Limits,
    account: Pair,
    /// Per blob (`container/blob`), created on first use. Not evicted: a replica touches a
    /// fixed set of blobs (each disk's source and backup), a few hundred bytes each.
    blobs: HashMap<String, Pair>,
    window: u32,
    in_flight: u32,
    streak: u32,
    generation: u64,
    scale: f64,
    throttles: u64,
    admitted: u64,
    /// When the last decrease happened (`None`: never).
    decreased_at: Option<Duration>,
}

impl Controller {
    pub fn new(limits: Limits, now: Duration) -> Controller {
        Controller {
            limits,
            account: Pair::new(
                limits.account_requests_per_s,
                limits.account_bytes_per_s,
                now,
            ),
            blobs: HashMap::new(),
            window: INITIAL_WINDOW,
            in_flight: 0,
            streak: 0,
            generation: 0,
            scale: 1.0,
            throttles: 0,
            admitted: 0,
            decreased_at: None,
        }
    }

    /// Admits a request of `bytes` payload to `blob` at `now`, or says how to wait.
    pub fn acquire(&mut self, now: Duration, blob: &str, bytes: u64) -> Result<Ticket, Wait> {
        if self.in_flight >= self.window {
            return Err(Wait::Slot);
        }
        let (scale, limits) = (self.scale, self.limits);
        let blob = self
            .blobs
            .entry(blob.to_string())
            .or_insert_with(|| Pair::new(limits.blob_requests_per_s, limits.blob_bytes_per_s, now));
        blob.refill(now, scale);
        self.account.refill(now, scale);
        let cost = bytes as f64;
        let wait = blob.wait(cost, scale).max(self.account.wait(cost, scale));
        if !wait.is_zero() {
            return Err(Wait::For(wait));
        }
        blob.take(cost);
        self.account.take(cost);
        self.in_flight += 1;
        self.admitted += 1;
        Ok(Ticket {
            generation: self.generation,
        })
    }

    /// Records how an admitted request ended, at `now`.
    pub fn finish(&mut self, ticket: Ticket, outcome: Outcome, now: Duration) {
        self.in_flight = self.in_flight.saturating_sub(1);
        match outcome {
            Outcome::Done => {
                self.streak += 1;
                if self.streak >= self.window {
                    self.streak = 0;
                    self.window = (self.window + 1).min(MAX_WINDOW);
                    self.scale = (self.scale + RATE_INCREASE).min(1.0);
                }
            }
            Outcome::Throttled => {
                self.throttles += 1;
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
            Outcome::NoAnswer => {}
        }
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
}

#[cfg(test)]
mod tests;
