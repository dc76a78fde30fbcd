//! `cargo bench --bench throttle` — staying at a storage account's limits, measured, not
//! asserted (figures in docs/scaling.md).
//!
//! 1. **throttled** (`--only=throttled`): page writes to backup blobs on a private Azurite
//!    through the fault proxy of the tests (tests/common/faultproxy.rs) in its rate-limit
//!    mode, which answers 503 ServerBusy above a per-blob and per-account limit. The same
//!    writes, same concurrency, twice: with the request budget + AIMD of `snapback::throttle`
//!    set to the limits, and with it off (the SDK's retries only). Two shapes: many small
//!    writes (the account's requests/s binds) and big writes to two blobs (the blob's MiB/s
//!    binds). Reports achieved rate vs the limit, the share of requests throttled, failed
//!    writes; and checks every written byte afterwards.
//! 2. **unknown** (`--only=unknown`): the limit the config does not know. Small writes to 8
//!    blobs through the same proxy limiting each blob to 20 requests/s (503 ServerBusy past
//!    it), while every client keeps the default budget (500 requests/s per blob). Three
//!    modes side by side, same writes, same run: the SDK's retries alone
//!    (`enabled = false`), the budget + AIMD without learning (`learn = false`) and the
//!    learning throttle (the defaults). Reports the fraction of the floor (the fastest the
//!    limit allows: writes ÷ (8 × 20/s), over the wall time), the share of requests
//!    throttled, requests sent and failed writes; checks every written byte afterwards.
//! 3. **thousand** (`--only=thousand`): 1,000 configured disks on one replica, synthetic small
//!    diffs (no network: the synthetic store of benches/common waits for each account's
//!    default budget, 20,000 requests/s), `BENCH_ROUNDS` rounds of a cycle of every disk, at
//!    `BENCH_PARALLEL` cycles at once (default: the config default, 4): peak RSS, CPU,
//!    cycles per minute, requests/s.

mod common;
#[path = "../tests/common/faultproxy.rs"]
mod faultproxy;

use bytes::Bytes;
use common::azurite::{Azurite, BACKUP_KEY};
use common::env_u64;
use common::meter::Meter;
use common::synthetic::{synthetic_config, Synthetic, KIB, MIB};
use faultproxy::{FaultProxy, RateLimit};
use futures::StreamExt;
use snapback::azure::AzureBlobs;
use snapback::config::{Config, ThrottleConfig};
use snapback::model::pages::ByteRange;
use snapback::service::{disk_spec, App};
use snapback::storage::fake::MemBlobs;
use snapback::storage::{BlobRef, PageBlobs};
use snapback::throttle::budget::Budget;
use snapback::throttle::Limits;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

fn main() {
    common::main(
        "throttle",
        &["throttled", "unknown", "thousand"],
        |part, rt| match part {
            "throttled" => rt.block_on(throttled()),
            "unknown" => rt.block_on(unknown_limit()),
            "thousand" => rt.block_on(thousand_disks(
                1000,
                env_u64("BENCH_ROUNDS", 3),
                env_u64("BENCH_PARALLEL", 4) as usize,
            )),
            _ => unreachable!("common::main runs listed parts only"),
        },
    );
}

// ------------------------------------------------ 1. through a rate limiter --

struct Shape {
    name: &'static str,
    blobs: u64,
    write_bytes: u64,
    writes_per_blob: u64,
    limit: RateLimit,
}

impl Shape {
    /// Requests/s the limits allow for this work: the account's, or every blob at its own.
    fn limit_rps(&self) -> f64 {
        let blob_by_bytes = self
            .limit
            .blob_mib_per_s
            .map_or(f64::INFINITY, |m| m * MIB as f64 / self.write_bytes as f64);
        let blob = self
            .limit
            .blob_requests_per_s
            .map_or(f64::INFINITY, f64::from)
            .min(blob_by_bytes);
        self.limit
            .account_requests_per_s
            .map_or(f64::INFINITY, f64::from)
            .min(blob * self.blobs as f64)
    }

    /// The limits as a table cell.
    fn limits(&self) -> String {
        let l = &self.limit;
        [
            l.account_requests_per_s
                .map(|r| format!("account {r} req/s")),
            l.account_mib_per_s.map(|m| format!("account {m} MiB/s")),
            l.blob_requests_per_s.map(|r| format!("blob {r} req/s")),
            l.blob_mib_per_s.map(|m| format!("blob {m} MiB/s")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ")
    }

    /// The client's budget set to the proxy's limits (unlimited ones at Azure's defaults).
    fn throttle(&self, enabled: bool) -> ThrottleConfig {
        let d = ThrottleConfig::default();
        ThrottleConfig {
            enabled,
            max_requests_per_second: self
                .limit
                .account_requests_per_s
                .unwrap_or(d.max_requests_per_second),
            max_mib_per_second: self
                .limit
                .account_mib_per_s
                .map_or(d.max_mib_per_second, |m| m as u32),
            blob_max_requests_per_second: self
                .limit
                .blob_requests_per_s
                .unwrap_or(d.blob_max_requests_per_second),
            blob_max_mib_per_second: self
                .limit
                .blob_mib_per_s
                .map_or(d.blob_max_mib_per_second, |m| m as u32),
            learn: enabled,
        }
    }
}

/// A config with one account, `backup`, at `endpoint`.
fn backup_config(dir: &std::path::Path, endpoint: &str, t: &ThrottleConfig) -> Config {
    let text = format!(
        "state_dir = \"{}\"\n\n[accounts.backup]\nendpoint = \"{endpoint}\"\nshared_key_env = \"BENCH_BACKUP_KEY\"\n\n[accounts.backup.throttle]\nenabled = {}\nmax_requests_per_second = {}\nmax_mib_per_second = {}\nblob_max_requests_per_second = {}\nblob_max_mib_per_second = {}\nlearn = {}\n",
        dir.join("state").display(),
        t.enabled,
        t.max_requests_per_second,
        t.max_mib_per_second,
        t.blob_max_requests_per_second,
        t.blob_max_mib_per_second,
        t.learn
    );
    Config::parse(&text, &dir.join("snapback.toml")).expect("bench config")
}

/// The bytes of write `j` to blob `i`: 8-byte words naming both, so a misplaced write shows.
fn payload(i: u64, j: u64, len: u64) -> Bytes {
    let word = ((i << 32) | j).to_le_bytes();
    Bytes::from(word.repeat((len / 8) as usize))
}

struct Row {
    wall: f64,
    sent: u64,
    throttled: u64,
    failed: u64,
}

/// The shape's writes through the proxy; `limited`: with its rate limit, else its capacity.
async fn run_shape(
    az: &Azurite,
    proxy: &FaultProxy,
    shape: &Shape,
    limited: bool,
    throttle: &ThrottleConfig,
    mode: &str,
) -> Row {
    let dir = tempfile::tempdir().expect("tempdir");
    let direct = AzureBlobs::new(
        backup_config(dir.path(), &az.endpoint("backup"), &shape.throttle(false))
            .accounts
            .values(),
    );
    let config = backup_config(dir.path(), &proxy.endpoint("backup"), throttle);
    let client = AzureBlobs::new(config.accounts.values());
    let blobs: Vec<BlobRef> = (0..shape.blobs)
        .map(|i| BlobRef::new("backup", "bench", &format!("{}-{mode}-{i}", shape.name)))
        .collect();
    let size = shape.write_bytes * shape.writes_per_blob;
    for b in &blobs {
        direct.ensure_container(b).await.expect("container");
        direct
            .create_page_blob(b, size, &Default::default())
            .await
            .expect("blob");
    }
    // A fresh limiter (no requests of an earlier run in its window); for the capacity run,
    // one with no limits, which only counts.
    proxy.rate_limit(Some(if limited {
        shape.limit
    } else {
        RateLimit::default()
    }));
    let writes: Vec<(u64, u64)> = (0..shape.writes_per_blob)
        .flat_map(|j| (0..shape.blobs).map(move |i| (i, j)))
        .collect();
    let started = Instant::now();
    let failed = futures::stream::iter(writes)
        .map(|(i, j)| {
            let (client, blob) = (&client, &blobs[i as usize]);
            async move {
                let data = payload(i, j, shape.write_bytes);
                client
                    .put_pages(blob, j * shape.write_bytes, data, None)
                    .await
                    .is_err()
            }
        })
        .buffer_unordered(WORKERS)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await as u64;
    let wall = started.elapsed().as_secs_f64();
    let stats = proxy.rate_stats();
    proxy.rate_limit(None);
    // Every write that succeeded is on its blob, byte for byte.
    if failed == 0 {
        for (i, b) in blobs.iter().enumerate() {
            for j in 0..shape.writes_per_blob {
                let at = j * shape.write_bytes;
                let got = direct
                    .read(b, None, ByteRange::new(at, at + shape.write_bytes))
                    .await
                    .expect("read back");
                assert_eq!(
                    got,
                    payload(i as u64, j, shape.write_bytes),
                    "{b} write {j}"
                );
            }
        }
    }
    Row {
        wall,
        sent: stats.served + stats.throttled,
        throttled: stats.throttled,
        failed,
    }
}

/// Writes in flight at once, both modes (as many disks' apply pipelines would have).
const WORKERS: usize = 32;

async fn throttled() {
    let shapes = [
        Shape {
            name: "small",
            blobs: 8,
            write_bytes: 16 * KIB,
            writes_per_blob: 250,
            limit: RateLimit {
                account_requests_per_s: Some(200),
                blob_requests_per_s: Some(30),
                account_mib_per_s: None,
                blob_mib_per_s: Some(60.0),
            },
        },
        Shape {
            name: "big",
            blobs: 2,
            write_bytes: MIB,
            writes_per_blob: 64,
            limit: RateLimit {
                account_requests_per_s: Some(200),
                blob_requests_per_s: Some(500),
                account_mib_per_s: None,
                blob_mib_per_s: Some(8.0),
            },
        },
    ];
    println!(
        "\n== 1. through a rate-limiting proxy (503 ServerBusy above the limits), {WORKERS} writes in flight"
    );
    std::env::set_var("BENCH_BACKUP_KEY", BACKUP_KEY);
    let az = Azurite::start();
    let proxy = FaultProxy::start(az.port());
    println!("| work | limits | mode | wall s | achieved | of limit | requests sent | throttled | failed writes |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for shape in &shapes {
        let n = shape.blobs * shape.writes_per_blob;
        for (limited, budget_on) in [(false, false), (true, true), (true, false)] {
            let mode = match (limited, budget_on) {
                (false, _) => "capacity",
                (true, true) => "budget",
                (true, false) => "plain",
            };
            let row = run_shape(
                &az,
                &proxy,
                shape,
                limited,
                &shape.throttle(budget_on),
                mode,
            )
            .await;
            let rps = n as f64 / row.wall;
            let (achieved, limit) = if shape.write_bytes >= MIB {
                let per_mib = MIB as f64 / shape.write_bytes as f64;
                (
                    format!("{:.1} MiB/s", rps / per_mib),
                    shape.limit_rps() / per_mib,
                )
            } else {
                (format!("{rps:.0} req/s"), shape.limit_rps())
            };
            let of_limit = if shape.write_bytes >= MIB {
                rps * shape.write_bytes as f64 / MIB as f64 / limit
            } else {
                rps / limit
            };
            println!(
                "| {}: {} writes of {} KiB to {} blobs | {} | {} | {:.1} | {achieved} | {:.0} % | {} | {:.1} % | {} |",
                shape.name,
                n,
                shape.write_bytes / KIB,
                shape.blobs,
                shape.limits(),
                match (limited, budget_on) {
                    (false, _) => "no limit: Azurite's capacity",
                    (true, true) => "budget + AIMD",
                    (true, false) => "SDK retries only",
                },
                row.wall,
                of_limit * 100.0,
                row.sent,
                row.throttled as f64 * 100.0 / row.sent.max(1) as f64,
                row.failed
            );
        }
    }
    drop(proxy);
    drop(az);
}

// ------------------------------------- 2. a limit the config does not know --

/// Per-blob requests/s of the proxy in part 2; the clients' config keeps its default (500).
const UNKNOWN_BLOB_RPS: u32 = 20;

async fn unknown_limit() {
    let shape = Shape {
        name: "unknown",
        blobs: env_u64("BENCH_BLOBS", 8),
        write_bytes: 16 * KIB,
        writes_per_blob: env_u64("BENCH_WRITES_PER_BLOB", 300),
        limit: RateLimit {
            blob_requests_per_s: Some(UNKNOWN_BLOB_RPS),
            ..Default::default()
        },
    };
    let n = shape.blobs * shape.writes_per_blob;
    let floor = n as f64 / shape.limit_rps();
    let defaults = ThrottleConfig::default();
    println!(
        "\n== 2. a per-blob limit the config does not know: {n} writes of {} KiB to {} blobs, {WORKERS} in flight, proxy limit {UNKNOWN_BLOB_RPS} req/s per blob (503 ServerBusy past it); every client's config at the defaults ({} req/s per blob); floor {floor:.1} s",
        shape.write_bytes / KIB,
        shape.blobs,
        defaults.blob_max_requests_per_second
    );
    std::env::set_var("BENCH_BACKUP_KEY", BACKUP_KEY);
    let az = Azurite::start();
    let proxy = FaultProxy::start(az.port());
    let modes = [
        (
            "SDK retries only (enabled = false)",
            "plain",
            ThrottleConfig {
                enabled: false,
                learn: false,
                ..defaults
            },
        ),
        (
            "budget + AIMD, learn = false",
            "blind",
            ThrottleConfig {
                learn: false,
                ..defaults
            },
        ),
        ("learning throttle (defaults)", "learn", defaults),
    ];
    println!("| mode | wall s | achieved | fraction of floor | requests sent | throttled | failed writes |");
    println!("|---|---|---|---|---|---|---|");
    for (label, mode, throttle) in &modes {
        let row = run_shape(&az, &proxy, &shape, true, throttle, mode).await;
        println!(
            "| {label} | {:.1} | {:.0} req/s | {:.2} | {} | {:.1} % ({}) | {} |",
            row.wall,
            n as f64 / row.wall,
            floor / row.wall,
            row.sent,
            row.throttled as f64 * 100.0 / row.sent.max(1) as f64,
            row.throttled,
            row.failed
        );
    }
    drop(proxy);
    drop(az);
}

// ------------------------------------------------------ 3. 1,000 disks ----

async fn thousand_disks(disks: usize, rounds: u64, parallel: usize) {
    let budget = ThrottleConfig::default();
    println!(
        "\n== 3. {disks} disks on one replica, synthetic small diffs (20 ranges of 4-16 KiB), {rounds} round(s) after the seed, {parallel} cycle(s) at once, each account at the default budget ({} req/s, {} MiB/s; per blob {} req/s, {} MiB/s)",
        budget.max_requests_per_second,
        budget.max_mib_per_second,
        budget.blob_max_requests_per_second,
        budget.blob_max_mib_per_second
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = synthetic_config(dir.path(), disks, parallel);
    let mut mem = MemBlobs::new();
    mem.copy_polls = 0;
    let budgets: HashMap<String, Arc<Budget>> = config
        .accounts
        .keys()
        .map(|k| (k.clone(), Budget::new(Limits::from(&budget))))
        .collect();
    let synth = Arc::new(Synthetic {
        mem,
        ranges: 20,
        budgets,
    });
    for d in &config.disks {
        let spec = disk_spec(d);
        let source = spec.source.blob().expect("a page-blob source");
        synth.ensure_container(source).await.expect("container");
        synth
            .create_page_blob(source, synth.size(), &Default::default())
            .await
            .expect("source");
    }
    let app = App::with_blobs(config, synth.clone()).expect("app");
    let all = app.config.disks.clone();
    let m = Meter::start();
    for r in app.backup(&all, CancellationToken::new()).await {
        r.result.expect("seed");
    }
    let (seed_wall, seed_cpu, _) = m.stop();
    println!("seed of {disks} disks: {seed_wall:.1} s (CPU {seed_cpu:.1} s)");
    let admitted = || -> HashMap<String, u64> {
        synth
            .budgets
            .iter()
            .map(|(k, b)| (k.clone(), b.snapshot().admitted()))
            .collect()
    };
    let before = admitted();
    let m = Meter::start();
    for _ in 0..rounds {
        for r in app.backup(&all, CancellationToken::new()).await {
            r.result.expect("incremental cycle");
        }
    }
    let (wall, cpu, peak) = m.stop();
    let cycles = disks as u64 * rounds;
    let mut requests = 0;
    for (account, n) in admitted() {
        let n = n - before[&account];
        requests += n;
        println!(
            "account {account}: {n} requests, {:.0}/s = {:.0} % of its budget",
            n as f64 / wall,
            n as f64 / wall * 100.0 / f64::from(budget.max_requests_per_second)
        );
    }
    println!(
        "{cycles} incremental cycles in {wall:.1} s: {:.0} cycles/min, CPU {cpu:.1} s ({:.0} % of one core), peak RSS {peak:.1} MiB",
        cycles as f64 * 60.0 / wall,
        cpu * 100.0 / wall
    );
    println!(
        "requests (both accounts, all kinds): {requests} = {:.1} per cycle, {:.0}/s; at {} req/s per account the budgets alone would allow {:.0} such cycles/min",
        requests as f64 / cycles as f64,
        requests as f64 / wall,
        budget.max_requests_per_second,
        2.0 * f64::from(budget.max_requests_per_second) * 60.0 / (requests as f64 / cycles as f64)
    );
}
