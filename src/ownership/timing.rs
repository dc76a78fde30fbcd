//! The lease's clock: renewals, the write timeout and the fence all follow from the lease's
//! duration. Apart because it is pure arithmetic that the daemon, the storage client's write
//! deadline and the lease all read.

use std::time::Duration;

/// The lease's clock: everything follows from its duration `L` (`lease_duration`, 15–60 s).
///
/// - renewals every `L/6`, counted from when the previous one was *sent* (the lease runs
///   from when the service processed the request, which is after it was sent: a schedule
///   counted from the answer drifts later by every answer's delay);
/// - every write to storage has a timeout of `L/3` per try
///   ([`LeaseTiming::request_timeout`], `azure::write_deadline`);
/// - the fence falls `L/3 + L/12` before the lease can expire (35 s after the last renewal
///   sent, for 60 s leases): a request sent just before the fence has ended (answered or
///   timed out) before anyone else can take the lease. A renewal has `5L/12` (25 s of 60,
///   6.25 s of 15) to be answered, retried meanwhile if it fails for a passing reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    duration: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming::new(crate::config::DEFAULT_LEASE_DURATION)
    }
}

impl LeaseTiming {
    /// A lease of `duration` (clamped to Azure's 15–60 s).
    pub fn new(duration: Duration) -> Self {
        let range = crate::config::LEASE_DURATION_RANGE;
        let secs = duration.as_secs().clamp(*range.start(), *range.end());
        LeaseTiming {
            duration: Duration::from_secs(secs),
        }
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The lease duration Azure is asked for.
    pub fn seconds(&self) -> u32 {
        self.duration.as_secs() as u32
    }

    /// The wait from one renewal's send to the next one's.
    pub fn renew_every(&self) -> Duration {
        self.duration / 6
    }

    /// The longest a write (or a renewal) may take.
    pub fn request_timeout(&self) -> Duration {
        self.duration / 3
    }

    /// How long after the last successful renewal was sent the cycle is fenced if no other
    /// renewal has succeeded since: one request timeout plus a margin of `L/12` before expiry.
    pub fn fence_after(&self) -> Duration {
        self.duration - self.request_timeout() - self.duration / 12
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_clock_follows_its_duration() {
        let t = LeaseTiming::default();
        assert_eq!(t.seconds(), 60);
        assert_eq!(t.renew_every(), Duration::from_secs(10));
        assert_eq!(t.request_timeout(), Duration::from_secs(20));
        assert_eq!(t.fence_after(), Duration::from_secs(35));
        let short = LeaseTiming::new(Duration::from_secs(15));
        assert_eq!(short.renew_every(), Duration::from_millis(2500));
        assert_eq!(short.fence_after(), Duration::from_millis(8750));
        // The fence falls a request timeout and a margin before expiry, after the renewal.
        for t in [t, short] {
            assert!(t.fence_after() + t.request_timeout() < t.duration());
            assert!(t.fence_after() > t.renew_every());
        }
        assert_eq!(LeaseTiming::new(Duration::from_secs(300)).seconds(), 60);
        assert_eq!(LeaseTiming::new(Duration::from_secs(1)).seconds(), 15);
    }
}
