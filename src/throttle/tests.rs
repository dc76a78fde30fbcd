//! The controller's rules on simulated time.

use super::*;

const MS: Duration = Duration::from_millis(1);

fn limits(account_rps: f64, blob_rps: f64, blob_mibps: f64) -> Limits {
    Limits {
        account_requests_per_s: account_rps,
        account_bytes_per_s: 1e12,
        blob_requests_per_s: blob_rps,
        blob_bytes_per_s: blob_mibps * MIB,
    }
}

/// A controller whose buckets never bind, to look at the window alone.
fn unlimited() -> Controller {
    Controller::new(limits(1e9, 1e9, 1e9), Duration::ZERO)
}

#[derive(Clone, Copy, Debug)]
enum Step {
    /// Start a request and finish it with this outcome before the next step.
    Request(Outcome),
    /// Start `n` requests (one generation), then finish them all throttled.
    ThrottledBurst(u32),
    /// Let this much time pass.
    Wait(Duration),
}

#[test]
fn aimd_window_table() {
    use Outcome::*;
    use Step::*;
    // (steps, window after, rate scale after)
    let hold = Wait(DECREASE_HOLD);
    let cases: Vec<(Vec<Step>, u32, f64)> = vec![
        (vec![], INITIAL_WINDOW, 1.0),
        (vec![Request(Throttled)], INITIAL_WINDOW / 2, RATE_DECREASE),
        (
            vec![Request(Throttled), hold, Request(Throttled)],
            INITIAL_WINDOW / 4,
            RATE_DECREASE * RATE_DECREASE,
        ),
        // A second throttle within the hold (a new generation) does not decrease again.
        (
            vec![Request(Throttled), Request(Throttled)],
            INITIAL_WINDOW / 2,
            RATE_DECREASE,
        ),
        // A streak of `window` successes: +1 (and the scale back up, capped at 1).
        (vec![Request(Done); 16], INITIAL_WINDOW + 1, 1.0),
        (vec![Request(Done); 15], INITIAL_WINDOW, 1.0),
        // 16 then 17 successes: +2.
        (vec![Request(Done); 33], INITIAL_WINDOW + 2, 1.0),
        // Errors without a throttle and lost answers change nothing.
        (vec![Request(NoAnswer); 40], INITIAL_WINDOW, 1.0),
        // Throttles of requests already in flight count once.
        (vec![ThrottledBurst(10)], INITIAL_WINDOW / 2, RATE_DECREASE),
        // Halving stops at one request in flight.
        (
            [Request(Throttled), hold].repeat(10),
            MIN_WINDOW,
            RATE_DECREASE.powi(10),
        ),
        // After a halving, a streak of the new window's size adds one.
        (
            [vec![Request(Throttled)], vec![Request(Done); 8]].concat(),
            INITIAL_WINDOW / 2 + 1,
            RATE_DECREASE + RATE_INCREASE,
        ),
    ];
    for (steps, window, scale) in cases {
        let mut c = unlimited();
        let mut now = Duration::ZERO;
        for step in &steps {
            now += MS;
            match *step {
                Request(outcome) => {
                    let t = c.acquire(now, "c/b", 0).expect("admitted");
                    c.finish(t, outcome, now);
                }
                Wait(d) => now += d,
                ThrottledBurst(n) => {
                    let tickets: Vec<_> = (0..n)
                        .map(|_| c.acquire(now, "c/b", 0).expect("admitted"))
                        .collect();
                    for t in tickets {
                        c.finish(t, Throttled, now);
                    }
                }
            }
        }
        assert_eq!(c.window(), window, "{steps:?}");
        assert!(
            (c.rate_scale() - scale).abs() < 1e-9,
            "{steps:?}: {}",
            c.rate_scale()
        );
    }
}

#[test]
fn a_full_window_waits_for_a_slot() {
    let mut c = unlimited();
    let tickets: Vec<_> = (0..INITIAL_WINDOW)
        .map(|_| c.acquire(Duration::ZERO, "c/b", 0).unwrap())
        .collect();
    assert_eq!(c.acquire(Duration::ZERO, "c/b", 0).unwrap_err(), Wait::Slot);
    let mut tickets = tickets.into_iter();
    c.finish(tickets.next().unwrap(), Outcome::Done, Duration::ZERO);
    let t = c
        .acquire(Duration::ZERO, "c/b", 0)
        .expect("a slot was freed");
    c.finish(t, Outcome::Done, Duration::ZERO);
}

#[test]
fn the_rate_scale_never_reaches_zero() {
    let mut c = unlimited();
    for i in 0..200 {
        let now = DECREASE_HOLD * i;
        let t = c.acquire(now, "c/b", 0).unwrap();
        c.finish(t, Outcome::Throttled, now);
    }
    assert_eq!(c.rate_scale(), MIN_RATE_SCALE);
    assert_eq!(c.throttles(), 200);
}

/// Drives a controller as a greedy client would for `seconds` of simulated time: always
/// another request of `bytes` to one of `blobs`, in turn, each finishing after `latency`.
/// Returns the start times per blob.
fn simulate(
    c: &mut Controller,
    blobs: &[&str],
    bytes: u64,
    latency: Duration,
    seconds: u64,
) -> HashMap<String, Vec<Duration>> {
    let mut starts: HashMap<String, Vec<Duration>> = HashMap::new();
    let mut in_flight: Vec<(Duration, Ticket)> = Vec::new();
    let end = Duration::from_secs(seconds);
    let mut now = Duration::ZERO;
    let mut next = 0;
    while now < end {
        let (done, rest): (Vec<_>, Vec<_>) = in_flight.drain(..).partition(|(at, _)| *at <= now);
        in_flight = rest;
        for (_, t) in done {
            c.finish(t, Outcome::Done, now);
        }
        let blob = blobs[next % blobs.len()];
        match c.acquire(now, blob, bytes) {
            Ok(t) => {
                starts.entry(blob.to_string()).or_default().push(now);
                in_flight.push((now + latency, t));
                next += 1;
            }
            Err(Wait::For(d)) => now += d.max(Duration::from_micros(10)),
            Err(Wait::Slot) => {
                now = in_flight.iter().map(|(at, _)| *at).min().unwrap_or(now);
            }
        }
    }
    starts
}

/// The most requests in any window of `width` (sliding over the start times).
fn max_in_window(times: &[Duration], width: Duration) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= width {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

#[test]
fn budget_is_respected_over_simulated_time() {
    // (what binds, limits, blobs, bytes per request, expected requests/s overall)
    let cases = [
        (
            "account requests/s",
            limits(200.0, 500.0, 60.0),
            4,
            4096,
            200.0,
        ),
        (
            "blob requests/s",
            limits(20_000.0, 50.0, 60.0),
            3,
            4096,
            150.0,
        ),
        // 60 MiB/s of 1 MiB writes: 60 requests/s per blob.
        (
            "blob MiB/s",
            limits(20_000.0, 500.0, 60.0),
            2,
            1 << 20,
            120.0,
        ),
    ];
    for (what, l, nblobs, bytes, rate) in cases {
        let names: Vec<String> = (0..nblobs).map(|i| format!("c/b{i}")).collect();
        let blobs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut c = Controller::new(l, Duration::ZERO);
        let seconds = 10;
        let starts = simulate(&mut c, &blobs, bytes, 2 * MS, seconds);
        let total: usize = starts.values().map(Vec::len).sum();
        let achieved = total as f64 / seconds as f64;
        // Whatever binds, at least 97 % of it is used and never more than the burst over it.
        assert!(
            achieved >= 0.97 * rate && achieved <= rate * 1.01 + 10.0,
            "{what}: {achieved} requests/s for a limit of {rate}"
        );
        // No one-second window of one blob goes over the blob's limits by more than a burst.
        let per_blob_rps = l.blob_requests_per_s.min(l.blob_bytes_per_s / bytes as f64);
        for (blob, times) in &starts {
            let peak = max_in_window(times, Duration::from_secs(1)) as f64;
            let allowed = per_blob_rps * (1.0 + BURST.as_secs_f64()) + 1.0;
            assert!(
                peak <= allowed,
                "{what}: {blob} peaked at {peak}/s > {allowed}"
            );
        }
        assert_eq!(c.throttles(), 0);
    }
}

#[test]
fn a_big_request_waits_for_a_full_bucket_then_leaves_it_in_debt() {
    // 1 MiB/s per blob: the bucket holds 0.1 MiB. A 4 MiB write goes when it is full and
    // leaves 3.9 MiB of debt: the next one waits 3.9 s of debt + 0.1 s of refill.
    let mut c = Controller::new(limits(1e9, 1e9, 1.0), Duration::ZERO);
    let t = c.acquire(Duration::ZERO, "c/b", 4 << 20).unwrap();
    c.finish(t, Outcome::Done, Duration::ZERO);
    match c.acquire(Duration::ZERO, "c/b", 4 << 20) {
        Err(Wait::For(d)) => assert!((d.as_secs_f64() - 4.0).abs() < 1e-6, "{d:?}"),
        other => panic!("expected a wait, got {other:?}"),
    }
    assert!(c
        .acquire(Duration::from_millis(3999), "c/b", 4 << 20)
        .is_err());
    assert!(c.acquire(Duration::from_secs(4), "c/b", 4 << 20).is_ok());
}
