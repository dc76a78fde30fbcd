//! The soak (on demand: `scripts/soak`, or `cargo test --test soak -- --ignored --nocapture`):
//! many cycles over many disks through the fault proxy, with random writes and clears to the
//! sources between rounds, random SIGKILLs of snapback mid-run and random injected faults.
//! It records the state (a CRC-64 of the whole disk) each source was in during each round and
//! ends by checking every restore point, byte for byte through its hash, against the state of
//! its source when its source snapshot was taken; it counts cycles, faults by kind, kills,
//! restore points checked, wrong ones, duplicates and orphans.
//!
//! Two installations (own state directories, one config otherwise, 15 s leases) share the
//! disks: every run is one or the other's. A pause-and-resume actor freezes a run (SIGSTOP)
//! mid-cycle past its leases, lets the other installation take every disk over and run the
//! round, then wakes the frozen one: its writes must all be refused by the fencing token
//! (counted: 412 `SequenceNumberConditionNotMet`), and no restore point may be wrong.
//!
//! Scale: `SOAK_ROUNDS` (default 20) × `SOAK_DISKS` (default 10) cycles, `SOAK_DISK_MIB`
//! (default 2), `SOAK_SEED`. Figures of runs are in docs/reliability.md.

mod common;

use chrono::{DateTime, Utc};
use common::faultproxy::{Fault, FaultKind, FaultProxy, Op, Rule};
use common::fixture::{
    content, create_disk, run_bounded, snapback_command, tagged_snapshots, write, Fixture, Rng, MIB,
};
use snapback::model::pages::{ByteRange, PAGE_SIZE};
use snapback::storage::PageBlobs;
use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::time::{Duration, Instant};

const CRC: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);

/// A `backup` run still going after this long counts as failed (and is killed): a cycle that
/// loops forever must not hang the soak.
const RUN_LIMIT: Duration = Duration::from_secs(240);

/// The last error a failed run logged, without colours; or that it timed out.
fn why(stderr: &[u8], timed_out: bool) -> String {
    let text = String::from_utf8_lossy(stderr);
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An ANSI colour sequence: ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let last = (plain.lines().rev().find(|l| l.contains("ERROR")))
        .or_else(|| plain.lines().rev().find(|l| l.contains("error")))
        .unwrap_or("");
    let last = last.split_once("error=").map_or(last, |(_, e)| e);
    let last: String = last.chars().take(400).collect();
    if timed_out {
        format!("timed out after {RUN_LIMIT:?}; {last}")
    } else {
        last
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one round of the soak left behind on a source: its content's hash, and the wall-clock
/// window in which snapback could have snapshotted it (the sources are written only between
/// rounds).
struct State {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    hash: u64,
}

#[derive(Default, Debug)]
struct Tally {
    rounds: u64,
    cycles_expected: u64,
    /// Distinct source snapshots among the restore points: cycles that made one.
    cycles_completed: u64,
    runs: u64,
    runs_failed: u64,
    runs_timed_out: u64,
    kills: u64,
    /// Runs frozen past their leases while the other installation took over, then woken.
    pauses: u64,
    /// Woken runs that stopped as fenced off or on their lost lease.
    fenced_runs: u64,
    points_checked: u64,
    wrong: u64,
    unmatched: u64,
    duplicates: u64,
    orphans_on_source: u64,
    failure_lines: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: on demand (scripts/soak); minutes of run time"]
async fn soak() {
    let rounds = env_u64("SOAK_ROUNDS", 20);
    let disks = env_u64("SOAK_DISKS", 10) as usize;
    let size = env_u64("SOAK_DISK_MIB", 2) * MIB;
    let seed = env_u64("SOAK_SEED", 0x50a4);
    eprintln!(
        "soak: {rounds} rounds × {disks} disks of {} MiB, seed {seed:#x}",
        size / MIB
    );
    let names: Vec<String> = (0..disks).map(|i| format!("d{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let fx = Fixture::new(&refs);
    let proxy = FaultProxy::start(fx.azurite.port());
    fx.route_through(proxy.port());
    // Two installations of one config, each with its own state directory.
    let text = format!(
        "lease_duration = \"15s\"\n{}",
        std::fs::read_to_string(&fx.config_path).unwrap()
    );
    std::fs::write(&fx.config_path, &text).unwrap();
    let state = format!("state_dir = \"{}\"", fx.dir.path().join("state").display());
    let other_state = format!(
        "state_dir = \"{}\"",
        fx.dir.path().join("state-b").display()
    );
    let config_b = fx.dir.path().join("b.toml");
    std::fs::write(&config_b, text.replacen(&state, &other_state, 1)).unwrap();
    let installations = [fx.config_path.clone(), config_b];
    let backup = |i: usize| snapback_command(&installations[i], &["backup"]);
    let blobs = fx.blobs();
    let mut rng = Rng(seed);

    // The sources and an exact model of each one's bytes.
    let mut model: Vec<Vec<u8>> = Vec::new();
    for name in &names {
        create_disk(blobs.as_ref(), &fx.source(name), size).await;
        let data = rng.bytes(MIB as usize / 2);
        write(blobs.as_ref(), &fx.source(name), 0, &data).await;
        let mut m = vec![0u8; size as usize];
        m[..data.len()].copy_from_slice(&data);
        model.push(m);
    }

    // Faults on the wire, each reproducible from the seed.
    let rules = [
        Rule::new(Fault::server_busy()).probability(0.02, seed ^ 1),
        Rule::new(Fault::operation_timeout()).probability(0.01, seed ^ 2),
        Rule::new(Fault::AnswerLost)
            .op(Op::SnapshotBlob)
            .probability(0.05, seed ^ 3),
        Rule::new(Fault::AnswerLost)
            .op(Op::PutPage)
            .op(Op::ClearPage)
            .probability(0.02, seed ^ 4),
        Rule::new(Fault::ResetResponseBody)
            .op(Op::GetBlob)
            .probability(0.02, seed ^ 5),
        Rule::new(Fault::ResetRequestBody)
            .op(Op::PutPage)
            .probability(0.01, seed ^ 6),
    ];
    for r in rules {
        proxy.add(r);
    }

    let mut states: Vec<Vec<State>> = (0..disks).map(|_| Vec::new()).collect();
    let mut tally = Tally::default();
    let started = Instant::now();
    for round in 0..rounds {
        let from = Utc::now();
        // Maybe a SIGKILL mid-run, then runs until one completes every disk.
        if rng.below(10) < 2 {
            // Frozen past its leases while the other installation runs the round; then woken.
            let frozen = rng.below(2) as usize;
            let mut child = backup(frozen)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn backup");
            let log = common::process::collect_stderr(&mut child);
            std::thread::sleep(Duration::from_millis(300 + rng.below(2000)));
            if child.try_wait().unwrap().is_none() {
                common::process::send_signal(child.id(), "STOP");
                std::thread::sleep(Duration::from_secs(17));
                tally.runs += 1;
                let (out, timed_out) = match run_bounded(backup(1 - frozen), RUN_LIMIT) {
                    Ok(out) => (out, false),
                    Err(out) => (out, true),
                };
                if !out.status.success() {
                    tally.runs_failed += 1;
                    tally.runs_timed_out += u64::from(timed_out);
                    tally.failure_lines.push(format!(
                        "round {round}, during a pause: {}",
                        why(&out.stderr, timed_out)
                    ));
                }
                common::process::send_signal(child.id(), "CONT");
                tally.pauses += 1;
            }
            child.wait().unwrap();
            let log = log.lock().unwrap();
            tally.fenced_runs +=
                u64::from(log.contains("fenced in phase") || log.contains("lost in phase"));
            tally.runs += 1;
        } else if rng.below(10) < 4 {
            let mut child = backup(rng.below(2) as usize)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn backup");
            std::thread::sleep(Duration::from_millis(100 + rng.below(2000)));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                tally.kills += 1;
            }
            child.wait().unwrap();
            tally.runs += 1;
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            tally.runs += 1;
            let (out, timed_out) = match run_bounded(backup(rng.below(2) as usize), RUN_LIMIT) {
                Ok(out) => (out, false),
                Err(out) => (out, true),
            };
            if out.status.success() {
                break;
            }
            tally.runs_failed += 1;
            tally.runs_timed_out += u64::from(timed_out);
            let why = why(&out.stderr, timed_out);
            assert!(
                attempts < 5,
                "round {round}: backup failed 5 times in a row: {why}"
            );
            tally.failure_lines.push(format!("round {round}: {why}"));
        }
        let to = Utc::now();
        for (i, m) in model.iter().enumerate() {
            states[i].push(State {
                from,
                to,
                hash: CRC.checksum(m),
            });
        }
        tally.rounds += 1;
        tally.cycles_expected += disks as u64;
        // Random writes and clears between rounds, mirrored in the model.
        for (i, name) in names.iter().enumerate() {
            for _ in 0..1 + rng.below(4) {
                let len = (1 + rng.below(16)) * 4096;
                let at = rng.below((size - len) / PAGE_SIZE) * PAGE_SIZE;
                let data = rng.bytes(len as usize);
                write(blobs.as_ref(), &fx.source(name), at, &data).await;
                model[i][at as usize..(at + len) as usize].copy_from_slice(&data);
            }
            for _ in 0..rng.below(3) {
                let len = (1 + rng.below(16)) * 4096;
                let at = rng.below((size - len) / PAGE_SIZE) * PAGE_SIZE;
                blobs
                    .clear_pages(&fx.source(name), ByteRange::new(at, at + len), None)
                    .await
                    .expect("clear pages");
                model[i][at as usize..(at + len) as usize].fill(0);
            }
        }
        eprintln!(
            "round {round}: {} kills, {} failed runs so far ({:?})",
            tally.kills,
            tally.runs_failed,
            started.elapsed()
        );
    }

    // Every restore point against the state of its source when S(n) was taken.
    for (i, name) in names.iter().enumerate() {
        let out = fx.snapback(&["list", name, "--json"]);
        assert!(out.status.success(), "list {name}");
        let points: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        let mut by_source: HashMap<String, u64> = HashMap::new();
        for p in &points {
            let snap = p["snapshot"].as_str().unwrap_or_default();
            let source_snap = p["source_snapshot"].as_str().unwrap_or_default();
            *by_source.entry(source_snap.to_string()).or_insert(0) += 1;
            let taken: Option<DateTime<Utc>> = source_snap.parse().ok();
            let expected = taken.and_then(|t| {
                states[i]
                    .iter()
                    .find(|s| s.from <= t && t <= s.to)
                    .map(|s| s.hash)
            });
            let got = CRC.checksum(&content(blobs.as_ref(), &fx.backup(name), Some(snap)).await);
            tally.points_checked += 1;
            match expected {
                Some(h) if h == got => {}
                Some(_) => {
                    tally.wrong += 1;
                    tally.failure_lines.push(format!(
                        "{name}: restore point {snap} differs from its source state"
                    ));
                }
                None => {
                    tally.unmatched += 1;
                    tally.failure_lines.push(format!(
                        "{name}: restore point {snap} records {source_snap:?}, taken in no round"
                    ));
                }
            }
        }
        tally.duplicates += by_source.values().map(|n| n - 1).sum::<u64>();
        tally.cycles_completed += by_source.len() as u64;
        let on_source = tagged_snapshots(blobs.as_ref(), &fx.source(name))
            .await
            .len() as u64;
        tally.orphans_on_source += on_source.saturating_sub(1);
    }

    let faults: BTreeMap<String, u64> = proxy
        .injected_by_kind()
        .into_iter()
        .map(|(k, n): (FaultKind, u64)| (format!("{k:?}"), n))
        .collect();
    eprintln!("\n=== soak report ({:?}) ===", started.elapsed());
    eprintln!(
        "rounds {}, cycles: {} needed (a disk per round), {} made a restore point; backup runs {} ({} failed, {} timed out), SIGKILLs {}",
        tally.rounds,
        tally.cycles_expected,
        tally.cycles_completed,
        tally.runs,
        tally.runs_failed,
        tally.runs_timed_out,
        tally.kills
    );
    let refused = proxy
        .answered()
        .iter()
        .filter(|a| a.code.as_deref() == Some("SequenceNumberConditionNotMet"))
        .count();
    eprintln!(
        "requests through the proxy {}, faults injected {faults:?}",
        proxy.seen().len()
    );
    eprintln!(
        "two installations; runs frozen past their leases and woken {}, of which stopped fenced or on the lost lease {}; stale writes refused by the fencing token (412 SequenceNumberConditionNotMet) {refused}",
        tally.pauses, tally.fenced_runs
    );
    eprintln!(
        "restore points checked {}, wrong {}, recording no round's snapshot {}, duplicates {}, orphaned source snapshots {}",
        tally.points_checked, tally.wrong, tally.unmatched, tally.duplicates, tally.orphans_on_source
    );
    for l in tally.failure_lines.iter().take(30) {
        eprintln!("  {l}");
    }
    assert_eq!(
        (
            tally.wrong,
            tally.unmatched,
            tally.duplicates,
            tally.orphans_on_source
        ),
        (0, 0, 0, 0),
        "(wrong, unmatched, duplicate restore points, orphaned source snapshots)"
    );
    assert!(
        tally.cycles_completed >= tally.cycles_expected,
        "a restore point per disk and round: {} of {}",
        tally.cycles_completed,
        tally.cycles_expected
    );
}
