//! The controller's rules on simulated time.

use super::*;

const MS: Duration = Duration::from_millis(1);

fn limits(account_rps: f64, blob_rps: f64, blob_mibps: f64) -> Limits {
    Limits {
        account_requests_per_s: account_rps,
        account_bytes_per_s: 1e12,
        blob_requests_per_s: blob_rps,
        blob_bytes_per_s: blob_mibps * MIB,
        learn: true,
    }
}

/// A controller whose buckets never bind and that learns no limit, to look at the window
/// alone.
fn unlimited() -> Controller {
    Controller::new(
        Limits {
            learn: false,
            ..limits(1e9, 1e9, 1e9)
        },
        Duration::ZERO,
    )
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

// ------------------------------------------------------------ learned limits --

use super::learn::{self, Learned, Recent, Refusal};

#[test]
fn recent_counts_at_least_the_trailing_second() {
    let mut r = Recent::default();
    for i in 0..10 {
        r.record(MS * 10 * i); // 10 requests in the first 100 ms
    }
    assert_eq!(r.count(MS * 100), 10);
    // Still counted a full second later, gone once the slot of the last one has left.
    assert_eq!(r.count(MS * 1000), 10);
    assert_eq!(r.count(MS * 1049), 10, "the window is at least 1 s");
    // The first slot (0-49 ms: 5 requests) leaves when 1050 ms begins, the next at 1100.
    assert_eq!(r.count(MS * 1050), 5);
    assert_eq!(r.count(MS * 1100), 0);
    // A count far in the future forgets everything, without looping over the gap.
    r.record(Duration::from_secs(3600));
    assert_eq!(r.count(Duration::from_secs(3600)), 1);
}

/// A scope that admitted `n` requests evenly over the first `over`, then was refused.
fn refused_after(n: u32, over: Duration) -> (Learned, Duration) {
    let mut l = Learned::default();
    for i in 0..n {
        l.admit(over * i / n);
    }
    let now = over;
    assert_eq!(
        l.refused(0, None, now, DECREASE_HOLD),
        Refusal::Decreased(f64::from(n) * learn::DECREASE)
    );
    (l, now)
}

#[test]
fn a_refusal_holds_the_scope_below_the_rate_refused() {
    // 24 requests in 100 ms refused: the ceiling is 0.93 × 24 = 22.3 requests/s, and no
    // request goes until the window (1.05 s) holds at most 22 of them (23 with it): when
    // the first 50 ms slot (12 requests) leaves it, 1.05 s after that slot began.
    let (mut l, now) = refused_after(24, MS * 100);
    assert_eq!(l.ceiling(), Some(24.0 * learn::DECREASE));
    assert_eq!(l.wait(now), MS * 950);
    assert_eq!(l.wait(MS * 1050), Duration::ZERO);
}

#[test]
fn refusals_of_one_generation_or_within_the_hold_decrease_once() {
    let (mut l, now) = refused_after(20, Duration::from_secs(1));
    let c = l.ceiling();
    // In flight before the decrease (generation 0): nothing new.
    assert_eq!(l.refused(0, None, now, DECREASE_HOLD), Refusal::Held);
    // Sent after it but within the hold: still the rate before it.
    assert_eq!(
        l.refused(1, None, now + MS * 500, DECREASE_HOLD),
        Refusal::Held
    );
    assert_eq!(l.ceiling(), c);
    assert!(matches!(
        l.refused(1, None, now + DECREASE_HOLD, DECREASE_HOLD),
        Refusal::Decreased(_)
    ));
}

#[test]
fn probing_climbs_slowly_while_used_and_forgets_at_the_configured_rate() {
    let (mut l, mut now) = refused_after(20, Duration::from_secs(1));
    let start = l.ceiling().unwrap();
    assert_eq!(start, 20.0 * learn::DECREASE);
    // Used at its ceiling: each success adds PROBE_GAIN, ~1 % per second.
    for _ in 0..17 {
        now += MS * 59;
        l.admit(now);
        l.succeeded(now, 500.0);
    }
    let c = l.ceiling().unwrap();
    assert!((c - (start + 17.0 * learn::PROBE_GAIN)).abs() < 1e-9, "{c}");
    // Unused (one request in the last second): no probing.
    now += Duration::from_secs(2);
    l.admit(now);
    l.succeeded(now, 500.0);
    assert_eq!(l.ceiling(), Some(c));
    // Reaching the configured rate forgets the ceiling: the config governs again.
    for _ in 0..20 {
        l.admit(now);
    }
    l.succeeded(now, c + learn::PROBE_GAIN / 2.0);
    assert_eq!(l.ceiling(), None);
}

#[test]
fn a_scope_is_never_starved() {
    let mut l = Learned::default();
    let mut now = Duration::ZERO;
    for g in 0..50 {
        l.admit(now);
        l.refused(g, None, now, DECREASE_HOLD);
        now += DECREASE_HOLD * 2;
    }
    assert_eq!(l.ceiling(), Some(learn::MIN_RATE));
    // At the floor, a request goes at most about a second after the last one.
    assert!(l.wait(now) <= learn::SLOT * learn::SLOTS as u32);
}

#[test]
fn a_retry_after_hint_pauses_the_scope_capped() {
    let mut l = Learned::default();
    l.admit(Duration::ZERO);
    l.refused(0, Some(Duration::from_secs(3)), MS, DECREASE_HOLD);
    assert_eq!(l.wait(MS), Duration::from_secs(3));
    // A held refusal still applies its hint; an absurd one is capped.
    l.refused(0, Some(Duration::from_secs(86_400)), MS * 2, DECREASE_HOLD);
    assert_eq!(l.wait(MS * 2), learn::MAX_HINT);
}

#[test]
fn a_throttle_is_blamed_on_the_blob_unless_it_was_well_below_its_refused_rate() {
    let mut c = Controller::new(limits(20_000.0, 500.0, 60.0), Duration::ZERO);
    // 20 requests to b1 within 100 ms, the last one refused: blamed on b1.
    let mut last = None;
    for i in 0..20 {
        let t = c.acquire(MS * 5 * i, "c/b1", 0).expect("admitted");
        if let Some(t) = last.replace(t) {
            c.finish(t, Outcome::Done, MS * 5 * i);
        }
    }
    let now = MS * 100;
    let blame = c.finish_with(last.take().unwrap(), Outcome::Throttled, None, now);
    let learned = 20.0 * learn::DECREASE;
    assert_eq!(blame, Some(Blame::Blob(Refusal::Decreased(learned))));
    assert_eq!(c.learned_blob_rate("c/b1"), Some(learned));
    assert_eq!(c.learned_account_rate(), None);
    // Two seconds later b1 is refused again after a single request (1 < 0.5 × 18.6): the
    // account is what refuses.
    let now = now + Duration::from_secs(2);
    let t = c.acquire(now, "c/b1", 0).expect("admitted");
    let blame = c.finish_with(t, Outcome::Throttled, None, now);
    assert!(
        matches!(blame, Some(Blame::Account(Refusal::Decreased(_)))),
        "{blame:?}"
    );
    assert_eq!(c.learned_decreases(), (1, 1));
    // Refused at its configured budget (a blob allowed 25/s sent 20 in the last second):
    // the limit is known, nothing is learned, the AIMD answers.
    let mut known = Controller::new(limits(20_000.0, 25.0, 60.0), Duration::ZERO);
    let mut last = None;
    for i in 0..20 {
        let t = known.acquire(MS * 45 * i, "c/b1", 0).expect("admitted");
        if let Some(t) = last.replace(t) {
            known.finish(t, Outcome::Done, MS * 45 * i);
        }
    }
    let t = last.take().unwrap();
    let blame = known.finish_with(t, Outcome::Throttled, None, MS * 900);
    assert_eq!(blame, Some(Blame::Budget));
    assert_eq!(known.learned_blob_rate("c/b1"), None);
    assert_eq!(known.window(), INITIAL_WINDOW / 2);
    // Without learning, nothing is blamed and no limit learned.
    let mut off = Controller::new(
        Limits {
            learn: false,
            ..limits(20_000.0, 500.0, 60.0)
        },
        Duration::ZERO,
    );
    let t = off.acquire(Duration::ZERO, "c/b1", 0).unwrap();
    assert_eq!(off.finish_with(t, Outcome::Throttled, None, MS), None);
    assert_eq!(off.learned_blob_rate("c/b1"), None);
}

#[test]
fn idle_blobs_are_forgotten_and_the_map_is_bounded() {
    let mut c = unlimited();
    for i in 0..10 {
        let t = c.acquire(Duration::ZERO, &format!("c/b{i}"), 0).unwrap();
        c.finish(t, Outcome::Done, Duration::ZERO);
    }
    assert_eq!(c.tracked_blobs(), 10);
    // b0 stays in use; the others are idle past IDLE_EVICT by the next sweep.
    let later = IDLE_EVICT + SWEEP_EVERY;
    let t = c.acquire(IDLE_EVICT - MS, "c/b0", 0).unwrap();
    c.finish(t, Outcome::Done, IDLE_EVICT);
    let t = c.acquire(later, "c/b0", 0).unwrap();
    c.finish(t, Outcome::Done, later);
    assert_eq!(c.tracked_blobs(), 1);
    // Past MAX_BLOBS, the least recently used half goes.
    let mut c = unlimited();
    for i in 0..=MAX_BLOBS as u64 {
        let t = c.acquire(MS * i as u32, &format!("c/{i}"), 0).unwrap();
        c.finish(t, Outcome::Done, MS * i as u32);
    }
    assert!(
        c.tracked_blobs() <= MAX_BLOBS / 2 + 1,
        "{}",
        c.tracked_blobs()
    );
    assert!(c.learned_blob_rate("c/0").is_none());
}

// ------------------------------------- the whole loop on paused tokio time --

use super::budget::Budget;
use std::sync::{Arc, Mutex};

/// The service: answers 503 when a blob already served `per_blob` requests in the last
/// second (a sliding window, as tests/common/faultproxy.rs judges).
struct Service {
    per_blob: usize,
    served: HashMap<String, std::collections::VecDeque<Duration>>,
    accepted: u64,
    refused: u64,
}

impl Service {
    fn admit(&mut self, blob: &str, now: Duration) -> bool {
        let w = self.served.entry(blob.to_string()).or_default();
        while w
            .front()
            .is_some_and(|t| now - *t >= Duration::from_secs(1))
        {
            w.pop_front();
        }
        if w.len() >= self.per_blob {
            self.refused += 1;
            return false;
        }
        w.push_back(now);
        self.accepted += 1;
        true
    }
}

/// `blobs` × `writes` requests, `workers` at once, through `budget` (or none: the SDK's
/// retries alone) to a service limiting each blob to 20 requests/s; each try answered
/// after `latency`, a refused one retried after the SDK's backoff (500 ms doubling, no jitter).
/// Returns (fraction of the floor, share of requests refused).
async fn through_limit(
    budget: Option<Arc<Budget>>,
    blobs: u64,
    writes: u64,
    latency: Duration,
) -> (f64, f64) {
    use futures::StreamExt;
    const LIMIT: u64 = 20;
    let service = Arc::new(Mutex::new(Service {
        per_blob: LIMIT as usize,
        served: HashMap::new(),
        accepted: 0,
        refused: 0,
    }));
    let start = tokio::time::Instant::now();
    let work = (0..writes).flat_map(|j| (0..blobs).map(move |i| (i, j)));
    futures::stream::iter(work)
        .for_each_concurrent(32, |(i, _)| {
            let (budget, service) = (budget.clone(), Arc::clone(&service));
            async move {
                let blob = format!("c/b{i}");
                for attempt in 0.. {
                    let permit = match &budget {
                        Some(b) => Some(b.acquire(&blob, 4096).await),
                        None => None,
                    };
                    tokio::time::sleep(latency / 2).await;
                    let ok = service.lock().unwrap().admit(&blob, start.elapsed());
                    tokio::time::sleep(latency / 2).await;
                    if let Some(p) = permit {
                        p.finish(if ok {
                            Outcome::Done
                        } else {
                            Outcome::Throttled
                        });
                    }
                    if ok {
                        break;
                    }
                    tokio::time::sleep(MS * 500 * (1 << attempt.min(5))).await;
                }
            }
        })
        .await;
    let wall = start.elapsed().as_secs_f64();
    let floor = writes as f64 / LIMIT as f64;
    let s = service.lock().unwrap();
    (
        floor / wall,
        s.refused as f64 / (s.accepted + s.refused) as f64,
    )
}

#[tokio::test(start_paused = true)]
async fn an_unknown_blob_limit_is_learned_on_paused_time() {
    // The config allows 500 requests/s per blob; the service allows 20. 8 blobs × 300
    // writes, 32 at once (the bench's shape), answered after 4 ms (loopback) or 40 ms.
    for latency in [MS * 4, MS * 40] {
        let learning = Budget::new(limits(20_000.0, 500.0, 60.0));
        let (of_floor, refused) = through_limit(Some(Arc::clone(&learning)), 8, 300, latency).await;
        let c = learning.snapshot();
        let (blob_decreases, account_decreases) = c.learned_decreases();
        eprintln!(
            "{latency:?}: learning {of_floor:.3} of the floor, {:.2} % refused, {blob_decreases} blob decreases, window {}",
            refused * 100.0,
            c.window()
        );
        assert!(
            of_floor >= 0.9 && refused < 0.05,
            "{latency:?}: learning reached {of_floor:.3} of the floor, {:.1} % refused",
            refused * 100.0
        );
        assert!(blob_decreases >= 8 && account_decreases == 0);
        // Every blob learned a limit at most the service's, and not starved.
        for i in 0..8 {
            let rate = c.learned_blob_rate(&format!("c/b{i}"));
            assert!(
                rate.is_none_or(|r| (learn::MIN_RATE..=21.0).contains(&r)),
                "{rate:?}"
            );
        }
        // Without learning, the budget at 500/s does not see the limit, nor do the SDK's
        // retries alone: both are refused far more often.
        let blind = Budget::new(Limits {
            learn: false,
            ..limits(20_000.0, 500.0, 60.0)
        });
        let (_, refused_blind) = through_limit(Some(blind), 8, 300, latency).await;
        let (_, refused_plain) = through_limit(None, 8, 300, latency).await;
        eprintln!(
            "{latency:?}: blind budget {:.2} % refused; SDK retries alone {:.2} %",
            refused_blind * 100.0,
            refused_plain * 100.0
        );
        assert!(refused_blind > 4.0 * refused && refused_plain > 4.0 * refused);
    }
}
