//! `cargo bench --bench apply` — the apply phase measured, not asserted (docs/performance.md).
//!
//! 1. **Azurite**: a private Azurite (started and stopped here, the test harness's), a disk of
//!    `BENCH_DISK_MIB` MiB with `BENCH_CHANGED_PCT` % of it rewritten at random offsets in writes
//!    drawn from `BENCH_SIZES` (size:weight, e.g. `4K:50,64K:30,1M:20`), then one incremental
//!    cycle. Reports changed MiB/s of the apply phase, requests issued vs the minimum for the
//!    diff, bytes read and written, peak RSS and CPU time; and the **raw limit**: the same GETs
//!    and PUTs issued by a minimal client (the SDK calls of `AzureBlobs`, same concurrency, no
//!    diff, no planning, no checkpoints), before and after, so the ratio is meaningful.
//! 2. **1,000,000 ranges**: one disk whose diff is generated lazily by a synthetic
//!    [`PageBlobs`] (Azurite cannot hold it fast), through the whole `App` cycle: peak RSS.
//! 3. **100 disks** (synthetic, 10,000 ranges each), 4 cycles at once (the default
//!    `max_concurrent_cycles`) and all 100 at once: peak RSS.
//! 4. **200 configured disks**: CPU time to load the config and answer `status`.
//!
//! `--only=azurite|million|hundred|hundred-all|idle` runs one part; `BENCH_COPY_MODE=server` runs part 1
//! with Put Page From URL (the raw client still does GET + PUT).

mod common;

use bytes::Bytes;
use common::azurite::{Azurite, BACKUP_KEY, PREMIUM_KEY};
use common::env_u64;
use common::meter::Meter;
use common::synthetic::{synthetic_config, Synthetic, KIB, MIB};
use futures::{StreamExt, TryStreamExt};
use snapback::azure::AzureBlobs;
use snapback::config::Config;
use snapback::cycle::runner::Runner;
use snapback::cycle::tuning::Limits;
use snapback::model::pages::{
    coalesce, plan_reads, Batch, ByteRange, PageItem, MAX_PUT_BYTES, MAX_READ_BYTES, MAX_READ_GAP,
    PAGE_SIZE,
};
use snapback::model::record::PhaseName;
use snapback::model::SystemClock;
use snapback::service::{disk_spec, App};
use snapback::state::StateStore;
use snapback::storage::fake::MemBlobs;
use snapback::storage::{BlobRef, Metadata, PageBlobs};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

// ------------------------------------------------------------------- main --

fn main() {
    common::main(
        "apply",
        &["azurite", "million", "hundred", "hundred-all", "idle"],
        |part, rt| match part {
            "azurite" => rt.block_on(azurite_scenario()),
            "million" => rt.block_on(synthetic_disks(1, 1_000_000, 1)),
            // A 100-disk config as configured (4 cycles at once by default), and the worst
            // case: all 100 cycles at once.
            "hundred" => rt.block_on(synthetic_disks(100, 10_000, 4)),
            "hundred-all" => rt.block_on(synthetic_disks(100, 10_000, 100)),
            "idle" => rt.block_on(idle_disks(200)),
            _ => unreachable!("common::main runs listed parts only"),
        },
    );
}

// --------------------------------------------------------- 1. on Azurite ----

/// Write sizes and weights, e.g. "4K:50,64K:30,1M:20".
fn size_mix() -> Vec<(u64, u64)> {
    let spec = std::env::var("BENCH_SIZES").unwrap_or_else(|_| "4K:50,64K:30,1M:20".into());
    spec.split(',')
        .map(|p| {
            let (s, w) = p.split_once(':').expect("size:weight");
            let n: u64 = s[..s.len() - 1].parse().expect("size");
            let size = match &s[s.len() - 1..] {
                "K" => n * KIB,
                "M" => n * MIB,
                _ => panic!("size unit K or M: {s}"),
            };
            (size, w.parse().expect("weight"))
        })
        .collect()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Random writes until `target` bytes were written; returns the written ranges.
fn scenario(disk: u64, target: u64, mix: &[(u64, u64)], rng: &mut Rng) -> Vec<ByteRange> {
    let total_w: u64 = mix.iter().map(|m| m.1).sum();
    let mut out = Vec::new();
    let mut written = 0;
    while written < target {
        let mut pick = rng.next() % total_w;
        let size = mix
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .unwrap()
            .0;
        let at = (rng.next() % ((disk - size) / PAGE_SIZE)) * PAGE_SIZE;
        out.push(ByteRange::new(at, at + size));
        written += size;
    }
    out
}

/// The union of ranges as sorted disjoint runs (adjacent ones merged).
fn union(mut rs: Vec<ByteRange>) -> Vec<ByteRange> {
    rs.sort();
    let mut out: Vec<ByteRange> = Vec::new();
    for r in rs {
        match out.last_mut() {
            Some(l) if r.start <= l.end => l.end = l.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    (0..len).map(|_| r.next() as u8 | 1).collect()
}

async fn azurite_scenario() {
    let disk_mib = env_u64("BENCH_DISK_MIB", 2048);
    let pct = env_u64("BENCH_CHANGED_PCT", 10);
    let concurrency = env_u64("BENCH_CONCURRENCY", 8) as usize;
    let mix = size_mix();
    println!("\n== 1. Azurite: {disk_mib} MiB disk, {pct} % rewritten, writes {mix:?} (bytes:weight), concurrency {concurrency}");
    let az = Azurite::start();
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("BENCH_PREMIUM_KEY", PREMIUM_KEY);
    std::env::set_var("BENCH_BACKUP_KEY", BACKUP_KEY);
    let config_path = dir.path().join("snapback.toml");
    std::fs::write(
        &config_path,
        format!(
            "state_dir = \"{}\"\nmax_inflight_requests = {}\n\n[accounts.premium]\nendpoint = \"{}\"\nshared_key_env = \"BENCH_PREMIUM_KEY\"\n\n[accounts.backup]\nendpoint = \"{}\"\nshared_key_env = \"BENCH_BACKUP_KEY\"\n\n[[disk]]\nname = \"d\"\nsource = \"premium/vhds/d.vhd\"\nbackup = \"backup/backups/d\"\nconcurrency = {concurrency}\n",
            dir.path().join("state").display(),
            concurrency * 4,
            az.endpoint("premium"),
            az.endpoint("backup")
        ),
    )
    .unwrap();
    let config = Config::load(&config_path).unwrap();
    let blobs = Arc::new(AzureBlobs::new(config.accounts.values()));
    let mut spec = disk_spec(&config.disks[0]);
    spec.copy_mode = match std::env::var("BENCH_COPY_MODE").as_deref() {
        Ok("server") => snapback::config::CopyMode::Server,
        _ => snapback::config::CopyMode::Client,
    };
    let size = disk_mib * MIB;
    blobs
        .ensure_container(spec.source.blob().unwrap())
        .await
        .unwrap();
    blobs
        .create_page_blob(spec.source.blob().unwrap(), size, &Default::default())
        .await
        .unwrap();
    let store = StateStore::open(&config.state_dir).unwrap();
    let mut seed_runner = Runner::new(blobs.as_ref(), &store, &SystemClock, &spec);
    seed_runner.copy_poll = (Duration::from_millis(10), Duration::from_millis(50));
    seed_runner.run_cycle().await.unwrap();

    // The VM writes.
    let mut rng = Rng(0x5eed_be4c);
    let writes = scenario(size, size * pct / 100, &mix, &mut rng);
    let t = Instant::now();
    futures::stream::iter(writes.iter().enumerate())
        .map(|(i, r)| {
            let blobs = blobs.clone();
            let src = spec.source.blob().unwrap().clone();
            async move {
                for (j, c) in pattern(i as u64, r.len() as usize)
                    .chunks(MAX_PUT_BYTES as usize)
                    .enumerate()
                {
                    blobs
                        .put_pages(
                            &src,
                            r.start + j as u64 * MAX_PUT_BYTES,
                            Bytes::copy_from_slice(c),
                            None,
                        )
                        .await
                        .unwrap();
                }
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let runs = union(writes.clone());
    let changed: u64 = runs.iter().map(|r| r.len()).sum();
    let min_puts: u64 = runs.iter().map(|r| r.len().div_ceil(MAX_PUT_BYTES)).sum();
    println!(
        "scenario: {} writes, {} changed runs, {:.1} MiB changed, written in {:.1} s",
        writes.len(),
        runs.len(),
        changed as f64 / MIB as f64,
        t.elapsed().as_secs_f64()
    );

    // The plan a minimal client would also have to follow: same reads, same puts.
    let items: Vec<PageItem> = runs.iter().map(|r| PageItem::Changed(*r)).collect();
    let batches = plan_reads(
        &coalesce(&items, MAX_PUT_BYTES),
        MAX_READ_BYTES,
        MAX_READ_GAP,
    );
    let raw_snapshot = blobs
        .create_snapshot(spec.source.blob().unwrap(), &Metadata::new())
        .await
        .unwrap();
    let scratch = BlobRef::new("backup", "backups", "raw-scratch");
    blobs
        .create_page_blob(&scratch, size, &Default::default())
        .await
        .unwrap();

    // Run before and after snapback's apply, so a drift of Azurite's speed shows.
    let raw_run = || {
        raw_client(
            &blobs,
            spec.source.blob().unwrap(),
            &raw_snapshot,
            &scratch,
            &batches,
            concurrency,
        )
    };
    let raw1 = raw_run().await;

    // snapback: one incremental cycle; the apply phase is timed on its own.
    let mut runner = Runner::new(blobs.as_ref(), &store, &SystemClock, &spec);
    runner.limits = Some(Arc::new(Limits::new(
        config.max_inflight_requests,
        config.max_buffer_mib * MIB,
    )));
    let mut rec = runner.open_or_resume().await.unwrap();
    let mut apply = (0.0, 0.0, 0.0);
    loop {
        let in_apply = rec.phase.name() == PhaseName::Apply;
        let m = Meter::start();
        let more = runner.step(&mut rec).await.unwrap();
        if in_apply {
            apply = m.stop();
        }
        if !more {
            break;
        }
    }
    let d = runner.blobs.detail();
    let raw2 = raw_run().await;

    let raw_wall = (raw1.0 + raw2.0) / 2.0;
    let mibs = |secs: f64| changed as f64 / MIB as f64 / secs;
    println!(
        "snapback apply: {:.2} s, {:.1} changed MiB/s, CPU {:.2} s, peak RSS {:.1} MiB",
        apply.0,
        mibs(apply.0),
        apply.1,
        apply.2
    );
    println!(
        "  requests: {} Put Page (minimum {min_puts}), {} ranged GET, {} Clear Page, {} Get Page Ranges",
        d.puts, d.reads, d.clears, d.page_lists
    );
    if d.puts_from_url > 0 {
        println!(
            "  server copy: {} Put Page From URL, {:.1} MiB copied by the service",
            d.puts_from_url,
            d.bytes_from_url as f64 / MIB as f64
        );
    }
    println!(
        "  bytes: read {:.1} MiB (gap bytes {:.2} MiB), written {:.1} MiB (changed {:.1} MiB)",
        d.bytes_read as f64 / MIB as f64,
        (d.bytes_read - changed.min(d.bytes_read)) as f64 / MIB as f64,
        d.bytes_put as f64 / MIB as f64,
        changed as f64 / MIB as f64
    );
    for (i, r) in [raw1, raw2].iter().enumerate() {
        println!(
            "raw client run {}: {:.2} s, {:.1} MiB/s, CPU {:.2} s, peak RSS {:.1} MiB",
            i + 1,
            r.0,
            mibs(r.0),
            r.1,
            r.2
        );
    }
    println!(
        "RATIO apply / raw = {:.3}   puts/minimum = {}/{}   reads/puts = {}/{}",
        raw_wall / apply.0,
        d.puts,
        min_puts,
        d.reads,
        d.puts
    );
    drop(az);
}

/// The same reads and puts, straight through the SDK calls, `concurrency` at a time.
async fn raw_client(
    blobs: &AzureBlobs,
    source: &BlobRef,
    snapshot: &str,
    dest: &BlobRef,
    batches: &[Batch],
    concurrency: usize,
) -> (f64, f64, f64) {
    let m = Meter::start();
    futures::stream::iter(batches)
        .map(|b| async move {
            if let Batch::Copy { read, puts } = b {
                let data = blobs.read(source, Some(snapshot), *read).await?;
                for p in puts {
                    let s = (p.start - read.start) as usize..(p.end - read.start) as usize;
                    blobs.put_pages(dest, p.start, data.slice(s), None).await?;
                }
            }
            Ok::<_, snapback::storage::BlobError>(())
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    m.stop()
}

async fn synthetic_disks(disks: usize, ranges: u64, parallel: usize) {
    println!(
        "\n== {}. synthetic: {disks} disk(s) x {ranges} diff ranges, {parallel} cycle(s) at once, default max_inflight_requests and max_buffer_mib",
        if disks == 1 { 2 } else { 3 }
    );
    let dir = tempfile::tempdir().unwrap();
    let config = synthetic_config(dir.path(), disks, parallel);
    let mut mem = MemBlobs::new();
    mem.copy_polls = 0;
    mem.page_size = 10_000;
    let synth = Arc::new(Synthetic {
        mem,
        ranges,
        budgets: Default::default(),
    });
    for d in &config.disks {
        let spec = disk_spec(d);
        synth
            .ensure_container(spec.source.blob().unwrap())
            .await
            .unwrap();
        synth
            .create_page_blob(
                spec.source.blob().unwrap(),
                synth.size(),
                &Default::default(),
            )
            .await
            .unwrap();
    }
    let app = App::with_blobs(config, synth.clone()).unwrap();
    let all = app.config.disks.clone();
    for r in app.backup(&all, CancellationToken::new()).await {
        r.result.unwrap(); // seeds
    }
    let m = Meter::start();
    let reports = app.backup(&all, CancellationToken::new()).await;
    let (wall, cpu, peak) = m.stop();
    let mut requests = 0;
    for r in reports {
        requests += r.result.unwrap().stats.requests;
    }
    println!(
        "{} cycles, {} diff ranges, {requests} requests in {wall:.2} s (CPU {cpu:.2} s): peak RSS {peak:.1} MiB",
        disks,
        disks as u64 * ranges
    );
}

// ------------------------------------------------------ 4. 200 idle disks ----

async fn idle_disks(disks: usize) {
    println!("\n== 4. {disks} configured disks, idle: config load + status");
    let dir = tempfile::tempdir().unwrap();
    synthetic_config(dir.path(), disks, 4);
    let m = Meter::start();
    let config = Config::load(&dir.path().join("snapback.toml")).unwrap();
    let (load_wall, load_cpu, _) = m.stop();
    let app = App::with_blobs(config, Arc::new(MemBlobs::new())).unwrap();
    let m = Meter::start();
    let status = app.status().unwrap();
    let (st_wall, st_cpu, peak) = m.stop();
    println!(
        "config load: {load_wall:.3} s (CPU {load_cpu:.2} s); status of {} disks: {st_wall:.3} s (CPU {st_cpu:.2} s); peak RSS {peak:.1} MiB",
        status.len()
    );
}
