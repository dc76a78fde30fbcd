//! Issue 11 item 5: three `snapback run` daemons on one config (each its own state
//! directory: three hosts) against Azurite, four disks on a 2-second schedule while the test
//! keeps writing to the sources; one daemon is killed with SIGKILL mid-cycle. Every disk keeps
//! getting restore points, each equal to a state its source really passed through; no two
//! cycles of one disk ever overlap; the takeover time of the dead daemon's disk is measured.

mod common;

use common::daemon::DaemonProc;
use common::fixture::{create_disk, Fixture, Rng};
use snapback::blobs::{BlobRef, PageBlobs, SnapshotInfo};
use snapback::lease::LeaseBlobs;
use snapback::model::tags;
use snapback::pages::ByteRange;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DISKS: [&str; 4] = ["d1", "d2", "d3", "d4"];
/// Each write is one Put Page of a whole slot, so every state of the source is "the last
/// write to each slot", and a restore point names the state it equals by the write index
/// each slot carries.
const SLOT: u64 = 64 * 1024;
const SLOTS: u64 = 16;
const SIZE: u64 = SLOT * SLOTS;

/// The bytes write `j` (1-based) of disk `d` puts into its slot: `j` and `d` in front, then
/// bytes derived from both.
fn chunk(d: usize, j: u64) -> Vec<u8> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((d as u64) << 48) ^ j);
    let mut b = rng.bytes(SLOT as usize);
    b[..8].copy_from_slice(&j.to_le_bytes());
    b[8..16].copy_from_slice(&(d as u64).to_le_bytes());
    b
}

/// Checks that `image` equals a state disk `d` passed through, given the slot of every write
/// (`slots[j - 1]`); returns that state's write count.
fn state_of(d: usize, image: &[u8], slots: &[u64]) -> Result<u64, String> {
    let mut seen = Vec::new();
    for s in 0..SLOTS {
        let part = &image[(s * SLOT) as usize..((s + 1) * SLOT) as usize];
        let j = u64::from_le_bytes(part[..8].try_into().unwrap());
        if j == 0 {
            if part.iter().any(|&b| b != 0) {
                return Err(format!("slot {s} is neither blank nor a write"));
            }
        } else if part != chunk(d, j).as_slice() {
            return Err(format!("slot {s} does not hold write {j}'s bytes"));
        }
        seen.push(j);
    }
    let k = seen.iter().copied().max().unwrap_or(0);
    // State k: each slot holds the last write to it among writes 1..=k.
    for (s, &j) in seen.iter().enumerate() {
        let last = (1..=k).rev().find(|&w| slots[(w - 1) as usize] == s as u64);
        if last.unwrap_or(0) != j {
            return Err(format!(
                "slot {s} holds write {j}, state {k} has {}",
                last.unwrap_or(0)
            ));
        }
    }
    Ok(k)
}

fn pid_of(holder: &str) -> Option<u32> {
    holder
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
}

async fn holder(blobs: &dyn PageBlobs, disk: &BlobRef) -> Option<u32> {
    let lock = snapback::ownership::lock_blob(disk);
    let props = blobs.properties(&lock, None).await.ok().flatten()?;
    tags::holder(&props.metadata).and_then(pid_of)
}

async fn points(blobs: &dyn PageBlobs, backup: &BlobRef, disk: &str) -> Vec<SnapshotInfo> {
    let mut p: Vec<_> = blobs
        .list_snapshots(backup)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|s| tags::is_restore_point(&s.metadata, disk))
        .collect();
    p.sort_by(|a, b| a.snapshot.cmp(&b.snapshot));
    p
}

fn count(log: &str, what: &str, disk: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(what) && l.contains(&format!("disk={disk}")))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_share_four_disks_and_take_over_a_killed_one() {
    let sections: String = DISKS
        .iter()
        .map(|n| {
            format!(
                "[[disk]]\nname = \"{n}\"\nsource = \"premium/vhds/{n}.vhd\"\nbackup = \"backup/backups/{n}\"\nconcurrency = 1\nschedule = \"*/2 * * * * *\"\n\n"
            )
        })
        .collect();
    let fx = Fixture::with_extra(&sections);
    let blobs = fx.blobs();
    for d in DISKS {
        create_disk(blobs.as_ref(), &fx.source(d), SIZE).await;
    }
    // The slot of every write, per disk, appended before the write is sent (so a restore
    // point can only show writes that are recorded).
    let written: Arc<Mutex<Vec<Vec<u64>>>> = Arc::new(Mutex::new(vec![Vec::new(); DISKS.len()]));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (blobs, written, stop) = (blobs.clone(), written.clone(), stop.clone());
        let sources: Vec<_> = DISKS.iter().map(|d| fx.source(d)).collect();
        tokio::spawn(async move {
            let mut rng = Rng(0xC1A5);
            while !stop.load(Ordering::Relaxed) {
                for (d, src) in sources.iter().enumerate() {
                    let slot = rng.below(SLOTS);
                    let j = {
                        let mut w = written.lock().unwrap();
                        w[d].push(slot);
                        w[d].len() as u64
                    };
                    blobs
                        .put_pages(src, slot * SLOT, chunk(d, j).into())
                        .await
                        .expect("write to the source");
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };

    let cfg = std::fs::read_to_string(&fx.config_path).unwrap();
    let state_line = format!("state_dir = \"{}\"", fx.dir.path().join("state").display());
    let mut daemons: Vec<DaemonProc> = (0..3)
        .map(|i| {
            let path = fx.dir.path().join(format!("host{i}.toml"));
            let state = fx.dir.path().join(format!("state-host{i}"));
            let text = cfg.replacen(
                &state_line,
                &format!("state_dir = \"{}\"", state.display()),
                1,
            );
            std::fs::write(&path, text).unwrap();
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_snapback"));
            cmd.arg("--config")
                .arg(&path)
                .arg("run")
                .env("SB_TEST_PREMIUM_KEY", common::azurite::PREMIUM_KEY)
                .env("SB_TEST_BACKUP_KEY", common::azurite::BACKUP_KEY)
                .env("SNAPBACK_LOG", "info");
            DaemonProc::spawn_command(cmd)
        })
        .collect();

    // Warm-up: every disk has two restore points.
    let warm = Instant::now();
    loop {
        let mut ready = true;
        for d in DISKS {
            ready &= points(blobs.as_ref(), &fx.backup(d), d).await.len() >= 2;
        }
        if ready {
            break;
        }
        assert!(
            warm.elapsed() < Duration::from_secs(90),
            "no two restore points per disk within 90 s; daemon 0:\n{}",
            daemons[0].stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Kill a daemon while one of its cycles is under way: a "starting cycle" that is not yet
    // followed by its end, the disk's lock blob naming it, and its lease held (the test's own
    // acquire is refused; one that succeeds is released at once).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (k, held) = 'found: loop {
        assert!(Instant::now() < deadline, "no daemon caught mid-cycle");
        for (k, daemon) in daemons.iter().enumerate() {
            let log = daemon.stderr();
            for d in DISKS {
                let ends = count(&log, "cycle finished", d)
                    + count(&log, "cycle failed", d)
                    + count(&log, "skipped", d);
                if count(&log, "starting cycle", d) > ends
                    && holder(blobs.as_ref(), &fx.backup(d)).await == Some(daemon.pid())
                {
                    let lock = snapback::ownership::lock_blob(&fx.backup(d));
                    let probe = "00000000-0000-0000-0000-00000000beef";
                    match blobs.acquire_lease(&lock, probe, 15).await {
                        Err(e) if e.kind == snapback::blobs::ErrorKind::Conflict => {
                            break 'found (k, d)
                        }
                        Ok(()) => blobs.release_lease(&lock, probe).await.unwrap(),
                        Err(e) => panic!("probing the lease of {d}: {e}"),
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let victim = daemons[k].pid();
    daemons[k].signal("KILL");
    let killed_at = Instant::now();
    let before_kill = points(blobs.as_ref(), &fx.backup(held), held).await.len();
    eprintln!("SIGKILLed daemon {k} (pid {victim}) mid-cycle of {held}");

    // Takeover: another daemon holds the disk and makes a restore point.
    let takeover = loop {
        let now = points(blobs.as_ref(), &fx.backup(held), held).await.len();
        let by = holder(blobs.as_ref(), &fx.backup(held)).await;
        if now > before_kill && by.is_some() && by != Some(victim) {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(90),
            "{held} not taken over within 90 s; daemon {}:\n{}",
            (k + 1) % 3,
            daemons[(k + 1) % 3].stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "takeover of {held}: first restore point by another daemon {:.1} s after the SIGKILL",
        takeover.as_secs_f64()
    );
    assert!(
        takeover <= Duration::from_secs(60 + 2 + 10),
        "taken over within the lease (60 s) plus a tick (and slack): {takeover:?}"
    );
    // Every disk keeps going afterwards.
    let counts: Vec<usize> = {
        let mut v = Vec::new();
        for d in DISKS {
            v.push(points(blobs.as_ref(), &fx.backup(d), d).await.len());
        }
        v
    };
    let after = Instant::now();
    loop {
        let mut ok = true;
        for (i, d) in DISKS.iter().enumerate() {
            ok &= points(blobs.as_ref(), &fx.backup(d), d).await.len() >= counts[i] + 2;
        }
        if ok {
            break;
        }
        // Generous: with three daemons racing for every disk on a busy 2-core machine, a disk
        // waits out the killed daemon's leases and then the races of the two others.
        assert!(
            after.elapsed() < Duration::from_secs(150),
            "some disk made no two more restore points within 150 s after the takeover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "every disk made two more restore points {:.1} s after the takeover",
        after.elapsed().as_secs_f64()
    );
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let logs: Vec<String> = daemons.iter().map(|d| d.stderr()).collect();
    for (i, d) in daemons.iter_mut().enumerate() {
        if i != k {
            d.signal("TERM");
            d.wait_exit(Duration::from_secs(30));
        }
    }

    // Every restore point equals a state its source passed through; none records a source
    // snapshot another records; each cycle's source snapshot comes after the previous
    // cycle's restore point (cycles of one disk never overlap).
    let written = written.lock().unwrap().clone();
    let mut total = 0;
    for (i, d) in DISKS.iter().enumerate() {
        let backup = fx.backup(d);
        let mut pts = points(blobs.as_ref(), &backup, d).await;
        let mut sources = Vec::new();
        for p in &pts {
            let image = blobs
                .read(&backup, Some(&p.snapshot), ByteRange::new(0, SIZE))
                .await
                .expect("read restore point");
            if let Err(e) = state_of(i, &image, &written[i]) {
                panic!(
                    "{d}: restore point {} is no state of its source: {e}",
                    p.snapshot
                );
            }
            sources.push(tags::source_of(&p.metadata).unwrap().as_str().to_string());
        }
        let mut distinct = sources.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            sources.len(),
            "{d}: a source snapshot recorded twice"
        );
        pts.sort_by_key(|p| tags::source_of(&p.metadata).unwrap().as_str().to_string());
        for w in pts.windows(2) {
            let next_source = tags::source_of(&w[1].metadata).unwrap();
            assert!(
                w[0].snapshot.as_str() < next_source.as_str(),
                "{d}: a cycle (source snapshot {next_source}) started before the previous restore point {}",
                w[0].snapshot
            );
        }
        total += pts.len();
        let per_daemon: Vec<usize> = logs.iter().map(|l| count(l, "cycle finished", d)).collect();
        let failed: usize = logs.iter().map(|l| count(l, "cycle failed", d)).sum();
        let skipped: usize = logs.iter().map(|l| count(l, "skipped", d)).sum();
        eprintln!(
            "{d}: {} restore points, all verified; cycles finished per daemon {per_daemon:?}, {skipped} starts skipped (owned elsewhere), {failed} failed",
            pts.len()
        );
        if let Some(l) = logs
            .iter()
            .flat_map(|l| l.lines())
            .find(|l| l.contains("cycle failed") && l.contains(&format!("disk={d}")))
        {
            eprintln!("  e.g. {l}");
        }
    }
    let writes: usize = written.iter().map(Vec::len).sum();
    eprintln!("{total} restore points checked against {writes} recorded source writes");
}

/// A host stopped mid-cycle must not resume that cycle after another host moved the disk on:
/// host 0 stops (SIGKILL) right after its apply, before its backup snapshot; host 1 takes the
/// disk over once the lease expired and backs it up (seeding its own chain and pruning host
/// 0's source snapshot); then host 0 runs again. Resuming its cycle would snapshot host 1's
/// base and label it with host 0's source snapshot; instead the cycle is abandoned (the lock
/// blob names the disk's current cycle) and the new restore point verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_never_resumes_a_cycle_another_host_moved_past() {
    let fx = Fixture::new(&["d1"]);
    let blobs = fx.blobs();
    let src = fx.source("d1");
    let mut rng = Rng(0xAB);
    let size = 4 * 1024 * 1024;
    create_disk(blobs.as_ref(), &src, size).await;
    let scribble = |rng: &mut Rng| {
        (0..16)
            .map(|_| (rng.below(size / SLOT) * SLOT, rng.bytes(SLOT as usize)))
            .collect::<Vec<_>>()
    };
    for (at, data) in scribble(&mut rng) {
        blobs.put_pages(&src, at, data.into()).await.unwrap();
    }
    let cfg = std::fs::read_to_string(&fx.config_path).unwrap();
    let state_line = format!("state_dir = \"{}\"", fx.dir.path().join("state").display());
    let host = |i: usize| {
        let path = fx.dir.path().join(format!("host{i}.toml"));
        let state = fx.dir.path().join(format!("state-host{i}"));
        std::fs::write(
            &path,
            cfg.replacen(
                &state_line,
                &format!("state_dir = \"{}\"", state.display()),
                1,
            ),
        )
        .unwrap();
        move |args: &[&str]| {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_snapback"));
            cmd.arg("--config")
                .arg(&path)
                .args(args)
                .env("SB_TEST_PREMIUM_KEY", common::azurite::PREMIUM_KEY)
                .env("SB_TEST_BACKUP_KEY", common::azurite::BACKUP_KEY)
                .env("SNAPBACK_LOG", "info");
            cmd
        }
    };
    let (host0, host1) = (host(0), host(1));
    let run = |mut cmd: std::process::Command| {
        let out = cmd.output().expect("run snapback");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        (out.status.success(), text)
    };
    let ok = |cmd: std::process::Command, what: &str| {
        let (success, text) = run(cmd);
        assert!(success, "{what}: {text}");
        text
    };
    ok(host0(&["backup", "d1"]), "host 0 seeds");
    for (at, data) in scribble(&mut rng) {
        blobs.put_pages(&src, at, data.into()).await.unwrap();
    }
    // Snapshot, Diff, Apply: then the process stops before its backup snapshot.
    let mut child = host0(&["backup", "d1"])
        .env("SNAPBACK_FAILPOINT_PAUSE_AFTER_STEPS", "3")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let paused = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut log = String::new();
        let mut buf = [0u8; 1024];
        while !log.contains("failpoint: paused after step 3") {
            match err.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => log.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        log
    });
    let log = tokio::time::timeout(Duration::from_secs(60), paused)
        .await
        .expect("host 0 reaches the failpoint")
        .unwrap();
    assert!(log.contains("failpoint: paused after step 3"), "{log}");
    child.kill().unwrap();
    child.wait().unwrap();

    // Host 1 is told who holds the disk until the dead host's lease expires.
    let started = Instant::now();
    let text = loop {
        let (success, text) = run(host1(&["backup", "d1"]));
        if success {
            break text;
        }
        assert!(
            text.contains("is owned by host="),
            "host 1 names the holder: {text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(75),
            "lease never expired"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    eprintln!(
        "host 1 took the disk over {:.1} s after host 0 died",
        started.elapsed().as_secs_f64()
    );
    assert!(text.contains("cycle finished"), "{text}");
    for (at, data) in scribble(&mut rng) {
        blobs.put_pages(&src, at, data.into()).await.unwrap();
    }
    let log = ok(host0(&["backup", "d1"]), "host 0 runs again");
    assert!(
        log.contains("abandoning it"),
        "host 0 gives up its stale cycle: {log}"
    );
    ok(
        host0(&["verify", "d1"]),
        "the newest restore point verifies",
    );
    let pts = points(blobs.as_ref(), &fx.backup("d1"), "d1").await;
    let mut sources: Vec<_> = pts
        .iter()
        .map(|p| tags::source_of(&p.metadata).unwrap().as_str().to_string())
        .collect();
    let n = sources.len();
    sources.sort();
    sources.dedup();
    assert_eq!(
        (n, sources.len()),
        (3, 3),
        "three finished cycles, three restore points, three source snapshots"
    );
}

/// Two installations (each its own config, state and backup blob) back up the same source
/// under the same disk name. Each prunes only its own chain's source snapshots, so neither
/// deletes the other's diff base: both keep making incremental cycles, and the source keeps
/// exactly one snapback snapshot per installation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installations_with_one_disk_name_keep_each_others_snapshots() {
    let fx = Fixture::new(&["d1"]);
    let blobs = fx.blobs();
    let src = fx.source("d1");
    let mut rng = Rng(0x2F);
    create_disk(blobs.as_ref(), &src, SIZE).await;
    let cfg = std::fs::read_to_string(&fx.config_path).unwrap();
    let state_line = format!("state_dir = \"{}\"", fx.dir.path().join("state").display());
    let other = fx.dir.path().join("other.toml");
    std::fs::write(
        &other,
        cfg.replacen(
            &state_line,
            &format!(
                "state_dir = \"{}\"",
                fx.dir.path().join("state-other").display()
            ),
            1,
        )
        .replace("backup/backups/d1", "backup/other/d1"),
    )
    .unwrap();
    let backup = |config: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_snapback"))
            .arg("--config")
            .arg(config)
            .args(["backup", "d1"])
            .env("SB_TEST_PREMIUM_KEY", common::azurite::PREMIUM_KEY)
            .env("SB_TEST_BACKUP_KEY", common::azurite::BACKUP_KEY)
            .env("SNAPBACK_LOG", "info")
            .output()
            .expect("run snapback");
        let text = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{}: {text}", config.display());
        text
    };
    for round in 0..3 {
        for config in [&fx.config_path, &other] {
            blobs
                .put_pages(
                    &src,
                    rng.below(SLOTS) * SLOT,
                    rng.bytes(SLOT as usize).into(),
                )
                .await
                .unwrap();
            let log = backup(config);
            if round > 0 {
                assert!(
                    log.contains("kind=\"incremental\"") && !log.contains("re-seeding"),
                    "round {round}, {}: an incremental cycle on an intact chain: {log}",
                    config.display()
                );
            }
        }
        let on_source = blobs
            .list_snapshots(&src)
            .await
            .unwrap()
            .into_iter()
            .filter(|s| tags::disk(&s.metadata) == Some("d1"))
            .count();
        assert_eq!(on_source, 2, "round {round}: one snapshot per installation");
    }
}

/// The owner's lease renewal is refused (as when the lease expired and another process took
/// it): the cycle stops at its next checkpoint with an error naming the lost lease, before its
/// backup snapshot, so no restore point is made; the next run finishes the cycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_stops_the_cycle_before_its_restore_point() {
    use common::faultproxy::{Fault, FaultProxy, Op, Rule};
    let fx = Fixture::new(&["d1"]);
    let proxy = FaultProxy::start(fx.azurite.port());
    fx.route_through(proxy.port());
    let blobs = fx.blobs();
    let src = fx.source("d1");
    let mut rng = Rng(0x1EA5E);
    let size = 8 * 1024 * 1024;
    create_disk(blobs.as_ref(), &src, size).await;
    let backup = || {
        let out = fx
            .command(&["backup", "d1"])
            .output()
            .expect("run snapback");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, log) = backup();
    assert!(ok, "seed: {log}");
    for i in 0..(size / SLOT) {
        if i % 2 == 0 {
            blobs
                .put_pages(&src, i * SLOT, rng.bytes(SLOT as usize).into())
                .await
                .unwrap();
        }
    }
    // Apply slowed past the first renewal (20 s), which is refused (the rule's first Lease
    // request is the acquire; the third, the release, passes, so the next run need not wait
    // for the lease to expire).
    proxy.add(Rule::new(Fault::Delay(Duration::from_millis(1500))).op(Op::PutPage));
    proxy.add(
        Rule::new(Fault::Status {
            status: 409,
            code: "LeaseIdMismatchWithLeaseOperation",
        })
        .op(Op::Lease)
        .nth(2, 2),
    );
    let snapshots = proxy
        .seen()
        .iter()
        .filter(|s| s.op == Op::SnapshotBlob && s.account == "backup")
        .count();
    let started = Instant::now();
    let (ok, log) = backup();
    eprintln!("fenced run: {:.1} s", started.elapsed().as_secs_f64());
    assert!(!ok, "the fenced cycle fails: {log}");
    assert!(
        log.contains("lease on backup/backups/d1.snapback-state lost in phase apply"),
        "the error names the lost lease and the phase: {log}"
    );
    assert_eq!(
        proxy
            .seen()
            .iter()
            .filter(|s| s.op == Op::SnapshotBlob && s.account == "backup")
            .count(),
        snapshots,
        "no backup snapshot after the lease was lost"
    );
    proxy.clear_rules();
    let (ok, log) = backup();
    assert!(ok, "the next run finishes the cycle: {log}");
    assert_eq!(
        points(blobs.as_ref(), &fx.backup("d1"), "d1").await.len(),
        2
    );
    let out = fx.command(&["verify", "d1"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
