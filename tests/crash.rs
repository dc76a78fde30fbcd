//! Crash safety of the real binary against Azurite: SIGKILL after every step of a cycle, and
//! at random instants inside `apply`. The next run finishes the same cycle: exactly one new
//! restore point, equal to its source snapshot; exactly one snapback snapshot on the source.

mod common;

use common::fixture::{content, create_disk, tagged_snapshots, write, Fixture, Rng, MIB};
use common::process::kill_at_failpoint;
use snapback::model::pages::PAGE_SIZE;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Seeds the disk, then writes `fragments` random 64 KiB pieces for the next cycle.
async fn prepared(fx: &Fixture, size: u64, fragments: u64, seed: u64) {
    let blobs = fx.blobs();
    let source = fx.source("disk1");
    let mut rng = Rng(seed);
    create_disk(blobs.as_ref(), &source, size).await;
    write(blobs.as_ref(), &source, 0, &rng.bytes(MIB as usize)).await;
    let out = fx.snapback(&["backup", "disk1"]);
    assert!(
        out.status.success(),
        "seed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for _ in 0..fragments {
        let at = rng.below((size - 64 * 1024) / PAGE_SIZE) * PAGE_SIZE;
        write(blobs.as_ref(), &source, at, &rng.bytes(64 * 1024)).await;
    }
}

/// The invariants after the interrupted cycle completed.
async fn assert_one_new_consistent_point(fx: &Fixture, ctx: &str) {
    let blobs = fx.blobs();
    let (source, backup) = (fx.source("disk1"), fx.backup("disk1"));
    let points = tagged_snapshots(blobs.as_ref(), &backup).await;
    let cycles: Vec<_> = snapback::storage::PageBlobs::list_snapshots(blobs.as_ref(), &backup)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.snapshot, s.metadata.get("snapback_cycle").cloned()))
        .collect();
    assert_eq!(
        points.len(),
        2,
        "{ctx}: exactly one new restore point after the seed (backup snapshots and their cycles: {cycles:?})"
    );
    let on_source = tagged_snapshots(blobs.as_ref(), &source).await;
    assert_eq!(
        on_source.len(),
        1,
        "{ctx}: exactly one snapback snapshot on the source"
    );
    let listed = fx.snapback(&["list", "disk1", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("list --json");
    let newest = &listed[1];
    assert_eq!(newest["snapshot"], points[1].as_str(), "{ctx}");
    assert_eq!(
        newest["source_snapshot"],
        on_source[0].as_str(),
        "{ctx}: B(n) records S(n)"
    );
    let got = content(blobs.as_ref(), &backup, Some(&points[1])).await;
    let want = content(blobs.as_ref(), &source, Some(&on_source[0])).await;
    assert!(
        got == want,
        "{ctx}: restore point differs from its source snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_every_step_resumes_the_same_cycle() {
    // Steps of an incremental cycle: snapshot, diff, apply, backup-snapshot, prune.
    for step in 1..=5 {
        let fx = Fixture::new(&["disk1"]);
        prepared(&fx, 8 * MIB, 20, 0xc0ffee + step).await;
        let mut cmd = fx.command(&["backup", "disk1"]);
        cmd.env("SNAPBACK_FAILPOINT_PAUSE_AFTER_STEPS", step.to_string());
        kill_at_failpoint(cmd, &format!("step {step}"));
        // After the last step the cycle is complete: a new run would start the next cycle.
        if step < 5 {
            let out = fx.snapback(&["backup", "disk1"]);
            assert!(
                out.status.success(),
                "step {step}: resume: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_one_new_consistent_point(&fx, &format!("SIGKILL after step {step}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_instants_inside_apply() {
    let fx = Fixture::new(&["disk1"]);
    prepared(&fx, 64 * MIB, 400, 0xdead_beef).await;
    let mut rng = Rng(0x5151_5151);
    let (mut kills, mut kills_in_apply) = (0, 0);
    let started = Instant::now();
    let status = || -> serde_json::Value {
        serde_json::from_slice(&fx.snapback(&["status", "--json"]).stdout).unwrap()
    };
    let seed_point = status()[0]["last_cycle"]["backup_snapshot"].clone();
    loop {
        let mut child = fx
            .command(&["backup", "disk1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(150 + rng.below(600)));
        if child.try_wait().unwrap().is_some() {
            break; // finished before the kill
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        let now = status();
        if now[0]["phase"] == "apply" {
            kills_in_apply += 1;
        }
        // The kill landed after the cycle finished (while the process released its lease or
        // ran retention): running `backup` again would start the next cycle.
        if now[0]["phase"] == "idle" && now[0]["last_cycle"]["backup_snapshot"] != seed_point {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the cycle never finished ({kills} kills)"
        );
    }
    eprintln!("{kills} SIGKILLs, {kills_in_apply} inside apply");
    assert!(
        kills_in_apply >= 2,
        "at least two kills landed inside apply ({kills} kills in all)"
    );
    assert_one_new_consistent_point(&fx, &format!("{kills} random SIGKILLs")).await;
}
