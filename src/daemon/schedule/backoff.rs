//! How long a disk waits before a failed cycle is tried again: doubling delays, short after
//! a failure that may pass soon, long (capped at an hour) after one that needs an operator.
//! Apart because the two schedules are policy, read by the planner and documented for
//! operators.

use std::time::Duration;

/// First retry delay after a transient failure; each further failure doubles it.
pub const RETRY_BASE: Duration = Duration::from_secs(30);
/// Longest retry delay after transient failures: retried at least twice an hour.
pub const RETRY_MAX: Duration = Duration::from_secs(30 * 60);
/// First retry after a failure that needs an operator: long enough not to hammer a refusing
/// service, short enough to notice a role assignment that was still propagating.
pub const OPERATOR_RETRY_BASE: Duration = Duration::from_secs(5 * 60);
/// Longest retry delay after failures that need an operator: a fix is noticed within the
/// hour even when nobody says so (SIGHUP, a manual backup).
pub const OPERATOR_RETRY_MAX: Duration = Duration::from_secs(60 * 60);

/// Delay before the `failures`-th retry (1-based) after transient failures:
/// `RETRY_BASE * 2^(failures-1)`, capped at `RETRY_MAX`.
pub fn retry_delay(failures: u32) -> Duration {
    doubling(RETRY_BASE, RETRY_MAX, failures)
}

/// Delay before the `failures`-th retry (1-based) after failures that need an operator:
/// `OPERATOR_RETRY_BASE * 2^(failures-1)`, capped at `OPERATOR_RETRY_MAX`.
pub fn operator_retry_delay(failures: u32) -> Duration {
    doubling(OPERATOR_RETRY_BASE, OPERATOR_RETRY_MAX, failures)
}

fn doubling(base: Duration, max: Duration, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    base.saturating_mul(factor).min(max)
}
