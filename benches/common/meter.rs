//! Process meters of the benches: peak RSS, CPU time (Linux /proc).

use std::time::Instant;

/// Peak resident set since the last [`reset_peak_rss`] (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    proc_status_kib("VmHWM:") as f64 / 1024.0
}

pub fn rss_mib() -> f64 {
    proc_status_kib("VmRSS:") as f64 / 1024.0
}

fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Resets VmHWM to the current RSS (Linux: write 5 to /proc/self/clear_refs).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// User + system CPU seconds of this process (all threads), from /proc/self/stat.
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_comm = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after "pid (comm)". Ticks of 1/100 s.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

pub struct Meter {
    started: Instant,
    cpu: f64,
}

impl Meter {
    pub fn start() -> Meter {
        reset_peak_rss();
        Meter {
            started: Instant::now(),
            cpu: cpu_seconds(),
        }
    }
    /// (wall seconds, CPU seconds, peak RSS MiB)
    pub fn stop(&self) -> (f64, f64, f64) {
        (
            self.started.elapsed().as_secs_f64(),
            cpu_seconds() - self.cpu,
            peak_rss_mib(),
        )
    }
}
