//! Prometheus metrics and the small HTTP server that exposes them (`/metrics`, `/healthz`).

use crate::cycle::machine::CycleStats;
use crate::cycle::progress::Activity;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
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
    apply_total: Family<Labels, Gauge>,
    disks: Gauge,
    reloads: Family<Labels, Counter>,
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
            apply_total: Family::default(),
            disks: Gauge::default(),
            reloads: Family::default(),
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
            "apply_bytes_done",
            "Apply checkpoint offset of the running cycle",
            m.apply_done.clone(),
        );
        registry.register(
            "apply_bytes_total",
            "Size of the disk being applied by the running cycle",
            m.apply_total.clone(),
        );
        registry.register("disks", "Configured disks", m.disks.clone());
        registry.register(
            "config_reloads",
            "Config reloads, by result (ok, error)",
            m.reloads.clone(),
        );
        Metrics { registry, ..m }
    }

    fn disk(disk: &str) -> Labels {
        vec![("disk", disk.to_string())]
    }

    pub fn set_disks(&self, n: usize) {
        self.disks.set(n as i64);
    }

    pub fn reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&vec![("result", if ok { "ok" } else { "error" }.into())])
            .inc();
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
        self.apply_total.get_or_create(&l).set(total as i64);
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
        for f in [&self.last_success, &self.apply_done, &self.apply_total] {
            f.remove(&l);
        }
        for p in Activity::ALL {
            self.phase.remove(&vec![
                ("disk", disk.to_string()),
                ("phase", p.as_str().to_string()),
            ]);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `stop` is cancelled.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
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
        let metrics = Arc::clone(&metrics);
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = Arc::clone(&metrics);
                async move { Ok::<_, Infallible>(route(&req, &metrics)) }
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

fn route<B>(req: &Request<B>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.render(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
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
    use crate::cycle::machine::PhaseName;

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
}
