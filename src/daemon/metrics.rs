//! Prometheus metrics and the small HTTP server that exposes them (`/metrics`, `/healthz`,
//! `/readyz`).
//!
//! `/metrics` negotiates its format: OpenMetrics for a scraper that asks for it (Prometheus
//! does), else the Prometheus text format 0.0.4, which is what `promtool check metrics` and
//! most other tools read. The alert rules and the dashboard in `deploy/` use these names.

use super::readiness::Readiness;
use crate::model::progress::Activity;
use crate::model::record::CycleStats;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

type Labels = Vec<(&'static str, String)>;

fn histogram() -> Histogram {
    // 1 s .. ~3 days, x4 per bucket.
    Histogram::new(exponential_buckets(1.0, 4.0, 10))
}

pub struct Metrics {
    registry: Registry,
    cycles: Family<Labels, Counter>,
    last_success: Family<Labels, Gauge>,
    bytes_written: Family<Labels, Counter>,
    bytes_cleared: Family<Labels, Counter>,
    ranges: Family<Labels, Counter>,
    requests: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
    phase: Family<Labels, Gauge>,
    apply_done: Family<Labels, Gauge>,
    apply_size: Family<Labels, Gauge>,
    restore_points: Family<Labels, Gauge>,
    newest_restore_point: Family<Labels, Gauge>,
    interval: Family<Labels, Gauge>,
    disks: Gauge,
    start_time: Gauge,
    reloads: Family<Labels, Counter>,
    cluster_replicas: Gauge,
    cluster_connected: Gauge,
    disk_assigned: Family<Labels, Gauge>,
    needs_operator: Family<Labels, Gauge>,
}

/// The build's version, and its git commit when the build was given one in
/// `SNAPBACK_GIT_COMMIT` (the Dockerfile's `GIT_COMMIT` argument); no build script runs git.
fn build_labels() -> Labels {
    vec![
        ("version", env!("CARGO_PKG_VERSION").to_string()),
        (
            "commit",
            option_env!("SNAPBACK_GIT_COMMIT")
                .filter(|c| !c.is_empty())
                .unwrap_or("unknown")
                .to_string(),
        ),
    ]
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("snapback");
        let m = Metrics {
            cycles: Family::default(),
            last_success: Family::default(),
            bytes_written: Family::default(),
            bytes_cleared: Family::default(),
            ranges: Family::default(),
            requests: Family::default(),
            duration: Family::new_with_constructor(histogram),
            phase: Family::default(),
            apply_done: Family::default(),
            apply_size: Family::default(),
            restore_points: Family::default(),
            newest_restore_point: Family::default(),
            interval: Family::default(),
            disks: Gauge::default(),
            start_time: Gauge::default(),
            reloads: Family::default(),
            cluster_replicas: Gauge::default(),
            cluster_connected: Gauge::default(),
            disk_assigned: Family::default(),
            needs_operator: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "cycles",
            "Cycles ended, by disk and result (ok, error, interrupted)",
            m.cycles.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the disk's last successful cycle",
            m.last_success.clone(),
        );
        registry.register(
            "bytes_written",
            "Bytes written to backups by completed cycles",
            m.bytes_written.clone(),
        );
        registry.register(
            "bytes_cleared",
            "Bytes cleared in backups by completed cycles",
            m.bytes_cleared.clone(),
        );
        registry.register(
            "ranges",
            "Diff ranges received by completed cycles",
            m.ranges.clone(),
        );
        registry.register(
            "requests",
            "Storage requests made by completed cycles",
            m.requests.clone(),
        );
        registry.register(
            "cycle_duration_seconds",
            "Duration of cycles in this process (each run of a resumed cycle counts apart)",
            m.duration.clone(),
        );
        registry.register(
            "cycle_phase",
            "1 for the disk's current phase (idle when no cycle runs)",
            m.phase.clone(),
        );
        registry.register(
            "apply_done_bytes",
            "Apply checkpoint offset of the running cycle",
            m.apply_done.clone(),
        );
        registry.register(
            "apply_size_bytes",
            "Size of the disk being applied by the running cycle",
            m.apply_size.clone(),
        );
        registry.register(
            "restore_points",
            "Restore points of the disk (tagged snapshots of its backup blob)",
            m.restore_points.clone(),
        );
        registry.register(
            "newest_restore_point_timestamp_seconds",
            "Unix time of the disk's newest restore point (its snapshot time)",
            m.newest_restore_point.clone(),
        );
        registry.register(
            "schedule_interval_seconds",
            "Longest gap between the disk's next scheduled cycles, jitter included",
            m.interval.clone(),
        );
        registry.register(
            "build",
            "Version and git commit of the running snapback",
            Info::new(build_labels()),
        );
        registry.register("disks", "Configured disks", m.disks.clone());
        // The overdue alert's clock for a disk that never succeeded.
        m.start_time.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or_default(),
        );
        registry.register(
            "start_time_seconds",
            "Unix time the daemon started",
            m.start_time.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads, by result (ok, error)",
            m.reloads.clone(),
        );
        registry.register(
            "cluster_replicas",
            "Alive cluster replicas as this replica sees them ([cluster] only)",
            m.cluster_replicas.clone(),
        );
        registry.register(
            "cluster_connected",
            "1 if this replica's last heartbeat round reached the coordination container",
            m.cluster_connected.clone(),
        );
        registry.register(
            "disk_assigned",
            "1 if this replica runs the disk's scheduled cycles ([cluster] only)",
            m.disk_assigned.clone(),
        );
        registry.register(
            "needs_operator",
            "1 while the disk's last cycle failed in a way that needs an operator \
             (a refused credential, a missing blob; its cause is in status and the log)",
            m.needs_operator.clone(),
        );
        Metrics { registry, ..m }
    }

    fn disk(disk: &str) -> Labels {
        vec![("disk", disk.to_string())]
    }

    pub fn set_disks(&self, n: usize) {
        self.disks.set(n as i64);
    }

    /// This replica's view of the cluster: alive replicas, reachability and, per configured
    /// disk, whether it is this replica's.
    pub fn set_cluster<'a>(
        &self,
        alive: usize,
        connected: bool,
        disks: impl Iterator<Item = (&'a str, bool)>,
    ) {
        self.cluster_replicas.set(alive as i64);
        self.cluster_connected.set(i64::from(connected));
        for (disk, mine) in disks {
            self.disk_assigned
                .get_or_create(&Self::disk(disk))
                .set(i64::from(mine));
        }
    }

    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&vec![("result", if ok { "ok" } else { "error" }.into())])
            .inc();
    }

    /// `snapback_needs_operator`: 1 from a failure that needs an operator until a cycle
    /// ends otherwise.
    pub fn set_needs_operator(&self, disk: &str, needs: bool) {
        self.needs_operator
            .get_or_create(&Self::disk(disk))
            .set(i64::from(needs));
    }

    pub fn set_last_success(&self, disk: &str, unix: i64) {
        self.last_success.get_or_create(&Self::disk(disk)).set(unix);
    }

    /// `snapback_cycle_phase`: 1 for the disk's current activity, 0 for every other one.
    pub fn set_phase(&self, disk: &str, phase: Activity) {
        for p in Activity::ALL {
            let v = i64::from(p == phase);
            self.phase
                .get_or_create(&vec![
                    ("disk", disk.to_string()),
                    ("phase", p.as_str().to_string()),
                ])
                .set(v);
        }
    }

    pub fn set_apply(&self, disk: &str, done: u64, total: u64) {
        let l = Self::disk(disk);
        self.apply_done.get_or_create(&l).set(done as i64);
        self.apply_size.get_or_create(&l).set(total as i64);
    }

    /// `newest`: Unix time of the newest restore point (absent when there is none).
    pub fn set_restore_points(&self, disk: &str, count: usize, newest: Option<i64>) {
        let l = Self::disk(disk);
        self.restore_points.get_or_create(&l).set(count as i64);
        match newest {
            Some(t) => {
                self.newest_restore_point.get_or_create(&l).set(t);
            }
            None => {
                self.newest_restore_point.remove(&l);
            }
        }
    }

    /// `None` for a disk without a schedule (only manual backups): no series, so no alert.
    pub fn set_schedule_interval(&self, disk: &str, interval: Option<std::time::Duration>) {
        let l = Self::disk(disk);
        match interval {
            Some(d) => {
                self.interval
                    .get_or_create(&l)
                    .set(i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            }
            None => {
                self.interval.remove(&l);
            }
        }
    }

    /// Records a cycle's end. `stats` only for a completed cycle.
    pub fn cycle_ended(&self, disk: &str, result: &str, seconds: f64, stats: Option<&CycleStats>) {
        self.cycles
            .get_or_create(&vec![("disk", disk.to_string()), ("result", result.into())])
            .inc();
        let l = Self::disk(disk);
        self.duration.get_or_create(&l).observe(seconds);
        if let Some(s) = stats {
            self.bytes_written.get_or_create(&l).inc_by(s.bytes_written);
            self.bytes_cleared.get_or_create(&l).inc_by(s.bytes_cleared);
            self.ranges.get_or_create(&l).inc_by(s.ranges);
            self.requests.get_or_create(&l).inc_by(s.requests);
        }
    }

    /// Forgets a removed disk's per-disk series.
    pub fn remove_disk(&self, disk: &str) {
        let l = Self::disk(disk);
        for f in [
            &self.last_success,
            &self.apply_done,
            &self.apply_size,
            &self.restore_points,
            &self.newest_restore_point,
            &self.interval,
            &self.disk_assigned,
            &self.needs_operator,
        ] {
            f.remove(&l);
        }
        for p in Activity::ALL {
            self.phase.remove(&vec![
                ("disk", disk.to_string()),
                ("phase", p.as_str().to_string()),
            ]);
        }
    }

    /// The OpenMetrics exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The Prometheus text format 0.0.4 exposition.
    pub fn render_text(&self) -> String {
        openmetrics_to_text(&self.render())
    }
}

/// Rewrites prometheus-client's OpenMetrics output as the Prometheus text format 0.0.4.
///
/// Only the metadata differs for the types used here. OpenMetrics names a counter family
/// `x` and its sample `x_total`, and an info family `x` with a sample `x_info`; the text
/// format names family and sample alike, and has no info type (a gauge of 1 is the
/// convention). `# UNIT` and `# EOF` do not exist in the text format. Samples are unchanged.
fn openmetrics_to_text(om: &str) -> String {
    let types: std::collections::HashMap<&str, &str> = om
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("# TYPE ")?.split(' ');
            Some((w.next()?, w.next()?))
        })
        .collect();
    let rename = |name: &str| match types.get(name) {
        Some(&"counter") => format!("{name}_total"),
        Some(&"info") => format!("{name}_info"),
        _ => name.to_string(),
    };
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {help}\n", rename(name)));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let kind = if kind == "info" { "gauge" } else { kind };
            out.push_str(&format!("# TYPE {} {kind}\n", rename(name)));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// What `/metrics` answers with: OpenMetrics only when the client lists it in `Accept`.
fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
    stop: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (metrics, ready) = (Arc::clone(&metrics), Arc::clone(&ready));
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = route(&req, &metrics, &ready);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn route<B>(req: &Request<B>, metrics: &Metrics, ready: &Readiness) -> Response<Full<Bytes>> {
    let accept = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" if wants_openmetrics(accept) => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render_text(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" => match ready.check() {
            Ok(()) => (StatusCode::OK, "text/plain", "ready\n".to_string()),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::record::PhaseName;

    #[test]
    fn renders_counters_and_phase() {
        let m = Metrics::new();
        let stats = CycleStats {
            bytes_written: 4096,
            bytes_cleared: 512,
            ranges: 3,
            requests: 9,
        };
        m.cycle_ended("d1", "ok", 2.5, Some(&stats));
        m.set_last_success("d1", 1_700_000_000);
        m.set_phase("d1", Activity::Phase(PhaseName::Apply));
        let text = m.render();
        for line in [
            "snapback_cycles_total{disk=\"d1\",result=\"ok\"} 1",
            "snapback_bytes_written_total{disk=\"d1\"} 4096",
            "snapback_requests_total{disk=\"d1\"} 9",
            "snapback_last_success_timestamp_seconds{disk=\"d1\"} 1700000000",
            "snapback_cycle_phase{disk=\"d1\",phase=\"apply\"} 1",
            "snapback_cycle_phase{disk=\"d1\",phase=\"idle\"} 0",
            "snapback_cycle_duration_seconds_count{disk=\"d1\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn text_format_names_families_like_their_samples() {
        let m = Metrics::new();
        m.cycle_ended("d1", "ok", 2.5, None);
        m.set_restore_points("d1", 3, Some(1_700_000_000));
        m.set_schedule_interval("d1", Some(std::time::Duration::from_secs(43_200)));
        let text = m.render_text();
        for line in [
            "# HELP snapback_cycles_total Cycles ended, by disk and result (ok, error, interrupted).",
            "# TYPE snapback_cycles_total counter",
            "snapback_cycles_total{disk=\"d1\",result=\"ok\"} 1",
            "# TYPE snapback_build_info gauge",
            "# TYPE snapback_cycle_duration_seconds histogram",
            "snapback_restore_points{disk=\"d1\"} 3",
            "snapback_newest_restore_point_timestamp_seconds{disk=\"d1\"} 1700000000",
            "snapback_schedule_interval_seconds{disk=\"d1\"} 43200",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        let build = text
            .lines()
            .find(|l| l.starts_with("snapback_build_info{"))
            .expect("build info sample");
        assert!(
            build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
                && build.ends_with(" 1"),
            "{build}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        // No restore point: the timestamp series goes away rather than reading 0 (1970).
        m.set_restore_points("d1", 0, None);
        assert!(!m
            .render_text()
            .contains("snapback_newest_restore_point_timestamp_seconds{"));
    }

    #[test]
    fn metrics_format_follows_accept() {
        let (m, r) = (Metrics::new(), Readiness::default());
        let get = |accept: Option<&str>| {
            let mut req = Request::builder().uri("/metrics");
            if let Some(a) = accept {
                req = req.header("accept", a);
            }
            let resp = route(&req.body(()).unwrap(), &m, &r);
            resp.headers()[hyper::header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .to_string()
        };
        // What Prometheus 2.x sends.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(get(Some(prometheus)).starts_with("application/openmetrics-text"));
        assert!(get(Some("*/*")).starts_with("text/plain; version=0.0.4"));
        assert!(get(None).starts_with("text/plain; version=0.0.4"));
    }

    #[test]
    fn readyz_says_why_it_is_not_ready() {
        let (m, r) = (Metrics::new(), Readiness::default());
        let get = |r: &Readiness| {
            let req = Request::builder().uri("/readyz").body(()).unwrap();
            route(&req, &m, r).status()
        };
        assert_eq!(get(&r), StatusCode::SERVICE_UNAVAILABLE);
        r.probed(Ok(()));
        assert_eq!(get(&r), StatusCode::OK);
    }
}
