//! When a disk's next cycle is due: cron ticks in the disk's time zone, the backup window,
//! jitter, retries with backoff and resumption of paused cycles.
//!
//! The backoff follows the failed cycle's error class (`cycle::policy`): a failure that may
//! pass soon is retried soon ([`retry_delay`]); one that needs an operator is retried on a
//! slower schedule capped at an hour ([`operator_retry_delay`]) with the ticks in between
//! skipped; one whose error names a wait is retried after it. A manual backup or a SIGHUP
//! starts the backoff afresh ([`Planner::afresh`]).
//!
//! Everything here is pure: no clock is read and nothing sleeps. The instant `now` is always
//! passed in, so the supervisor runs it on the wall clock and the tests on a fake one.
//!
//! We evaluate cron expressions with `croner` directly rather than through
//! `tokio-cron-scheduler`: that crate owns its timers and reads the system clock itself, so a
//! window or a DST transition could only be tested by waiting for it, and its job model has
//! no room for our per-disk rules (coalescing, windows, retries, pause/resume). `croner`
//! gives us `next occurrence after T in zone Z` as a pure function, with the DST rules of the
//! Open Cron Pattern Specification: a fixed-time job (e.g. `30 2 * * *`) runs once on the
//! fall-back day (at the first 02:30) and once on the spring-forward day (at the first valid
//! minute after the gap), never twice and never zero times.
//!
//! Three parts: the calendar of one disk (cron ticks, the window, DST, jitter:
//! `calendar`), the backoff after a failure (`backoff`), and the per-disk plan that
//! combines them into what is due now (`planner`).

mod backoff;
mod calendar;
mod planner;
#[cfg(test)]
mod tests;

pub use backoff::{
    operator_retry_delay, retry_delay, OPERATOR_RETRY_BASE, OPERATOR_RETRY_MAX, RETRY_BASE,
    RETRY_MAX,
};
pub use calendar::DiskSchedule;
pub use planner::{Finish, Planner, Reason, Wake};
