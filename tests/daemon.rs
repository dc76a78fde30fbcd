//! `snapback run` end to end: a real daemon process against Azurite, driven by real signals
//! and the control socket; the window test runs the daemon in-process on a fake clock.

mod common;

use common::daemon::{
    append_config, disk_section, eventually, free_port, http_get, metric, prepend_config,
    DaemonProc, NotifySocket,
};
use common::fixture::{content, create_disk, tagged_snapshots, write, Fixture, Rng, MIB};
use snapback::daemon::control::{self, Request, Response};
use snapback::model::pages::PAGE_SIZE;
use snapback::state::StateStore;
use snapback::storage::{BlobRef, PageBlobs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn restore_points(blobs: &dyn PageBlobs, backup: &BlobRef) -> usize {
    // The backup blob does not exist before the first cycle.
    match blobs.properties(backup, None).await {
        Ok(Some(_)) => tagged_snapshots(blobs, backup).await.len(),
        _ => 0,
    }
}

/// A source disk with one MiB of data.
async fn small_disk(blobs: &dyn PageBlobs, source: &BlobRef, seed: u64) {
    create_disk(blobs, source, 4 * MIB).await;
    write(blobs, source, 0, &Rng(seed).bytes(MIB as usize)).await;
}

/// `pages` single pages, 8 pages apart, so that the next diff has that many ranges and an
/// apply at concurrency 1 takes a few seconds (two requests per range).
async fn scatter_writes(blobs: &dyn PageBlobs, source: &BlobRef, pages: u64, seed: u64) {
    use futures::StreamExt;
    let data = Rng(seed).bytes(PAGE_SIZE as usize);
    futures::stream::iter(0..pages)
        .for_each_concurrent(16, |i| {
            let data = data.clone();
            async move { write(blobs, source, i * 8 * PAGE_SIZE, &data).await }
        })
        .await;
}

async fn daemon_status(socket: &Path) -> Option<control::DaemonStatus> {
    match control::request(socket, &Request::Status).await {
        Ok(Some(Response::Status(s))) => Some(s),
        _ => None,
    }
}

/// A `snapback run` of the fixture, once it answers on its control socket.
async fn answering_daemon(fx: &Fixture) -> DaemonProc {
    let d = DaemonProc::spawn(fx);
    let socket = fx.config().control_socket;
    let up = eventually(Duration::from_secs(10), || async {
        daemon_status(&socket).await.is_some()
    })
    .await;
    assert!(up, "the daemon never answered:\n{}", d.stderr());
    d
}

/// The metrics port the daemon logged ("serving /metrics, /healthz and /readyz addr=127.0.0.1:PORT").
async fn metrics_port(d: &DaemonProc) -> u16 {
    let mut port = None;
    eventually(Duration::from_secs(10), || {
        port = d.stderr().lines().find_map(|l| {
            let rest = l.split("serving /metrics").nth(1)?;
            rest.split("127.0.0.1:")
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        });
        std::future::ready(port.is_some())
    })
    .await;
    port.unwrap_or_else(|| panic!("no metrics address logged:\n{}", d.stderr()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_reload_metrics_control_and_a_single_daemon() {
    // "broken" has no source blob: its cycles fail, are logged with their cause and counted.
    let fx = Fixture::with_extra(&format!(
        "{}{}",
        disk_section("disk1", "schedule = \"*/2 * * * * *\""),
        disk_section("broken", "schedule = \"*/2 * * * * *\"")
    ));
    // Port 0: the kernel picks a free port and the daemon logs it (no race with other tests).
    prepend_config(
        &fx,
        "metrics_listen = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"",
    );
    let blobs = fx.blobs();
    small_disk(blobs.as_ref(), &fx.source("disk1"), 1).await;
    let socket = fx.config().control_socket;

    // As under systemd: READY/RELOADING/STOPPING and a 1 s watchdog (pinged every 0.5 s).
    let notify = NotifySocket::bind(fx.dir.path());
    let mut d = DaemonProc::spawn_with_env(
        &fx,
        &[
            ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let port = metrics_port(&d).await;
    // Cycles happen on the schedule, one after the other. A cycle is counted when it has ended,
    // a moment after its restore point appears (S(n-1) is deleted in between): wait for the count.
    let ok_cycles = || {
        let body = http_get(port, "/metrics").map(|r| r.1).unwrap_or_default();
        metric(&body, "snapback_cycles_total{disk=\"disk1\",result=\"ok\"}").unwrap_or(0.0)
    };
    assert!(
        eventually(Duration::from_secs(20), || std::future::ready(
            ok_cycles() >= 2.0
        ))
        .await,
        "no two scheduled cycles; daemon log:\n{}",
        d.stderr()
    );
    assert!(restore_points(blobs.as_ref(), &fx.backup("disk1")).await >= 2);

    // A second daemon on the same state dir is refused, clearly.
    let second = fx.snapback(&["run"]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{err}");
    assert!(
        err.contains("another snapback daemon is already running"),
        "{err}"
    );
    assert!(err.contains(&format!("pid {}", d.pid())), "{err}");

    // `status` asks the daemon.
    let out = fx.snapback(&["status", "--json"]);
    assert!(out.status.success());
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(st["pid"], d.pid());
    let disk1 = &st["disks"][0];
    assert_eq!(disk1["disk"], "disk1");
    assert!(disk1["last_success"].is_string(), "{st}");
    assert!(disk1["next_run"].is_string(), "{st}");

    let text = String::from_utf8_lossy(&fx.snapback(&["status"]).stdout).to_string();
    assert!(
        text.starts_with(&format!("daemon: pid {}", d.pid())) && text.contains("  next run:"),
        "{text}"
    );

    // Metrics show the cycles.
    let (code, body) = http_get(port, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200);
    let ok = metric(&body, "snapback_cycles_total{disk=\"disk1\",result=\"ok\"}").unwrap_or(0.0);
    assert!(ok >= 2.0, "{body}");
    let last = metric(
        &body,
        "snapback_last_success_timestamp_seconds{disk=\"disk1\"}",
    )
    .unwrap_or(0.0);
    assert!(last > 1.7e9, "{body}");
    assert!(
        metric(&body, "snapback_requests_total{disk=\"disk1\"}").unwrap_or(0.0) > 0.0,
        "{body}"
    );
    assert!(
        metric(
            &body,
            "snapback_cycle_duration_seconds_count{disk=\"disk1\"}"
        )
        .unwrap_or(0.0)
            >= 2.0
    );
    assert_eq!(http_get(port, "/healthz").expect("healthz").0, 200);
    assert!(
        metric(
            &body,
            "snapback_cycles_total{disk=\"broken\",result=\"error\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{body}"
    );
    let log = d.stderr();
    assert!(
        log.contains("cycle failed") && log.contains("broken.vhd"),
        "failure not logged with its cause:\n{log}"
    );
    assert!(log.contains("it will be retried"), "{log}");
    let broken = &st["disks"][1];
    assert_eq!(broken["disk"], "broken");
    assert!(broken["last_error"].is_string(), "{st}");

    assert_eq!(notify.count("READY=1"), 1);
    assert!(notify.count("WATCHDOG=1") >= 2, "watchdog not pinged");

    // SIGHUP adds a disk without a restart.
    small_disk(blobs.as_ref(), &fx.source("disk2"), 2).await;
    append_config(&fx, &disk_section("disk2", "schedule = \"*/2 * * * * *\""));
    d.signal("HUP");
    assert!(
        eventually(Duration::from_secs(20), || async {
            restore_points(blobs.as_ref(), &fx.backup("disk2")).await >= 1
        })
        .await,
        "disk2 never backed up after SIGHUP; daemon log:\n{}",
        d.stderr()
    );

    // An invalid config is reported and the daemon keeps running on the old one.
    let good = std::fs::read_to_string(&fx.config_path).unwrap();
    std::fs::write(&fx.config_path, format!("{good}\nbogus_key = 1\n")).unwrap();
    d.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || async {
            d.stderr().contains("config reload failed")
        })
        .await
    );
    let before = restore_points(blobs.as_ref(), &fx.backup("disk2")).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            restore_points(blobs.as_ref(), &fx.backup("disk2")).await > before
        })
        .await,
        "cycles stopped after a bad reload:\n{}",
        d.stderr()
    );
    let (_, body) = http_get(port, "/metrics").unwrap();
    assert_eq!(
        metric(&body, "snapback_config_reloads_total{result=\"error\"}"),
        Some(1.0)
    );
    assert_eq!(metric(&body, "snapback_disks"), Some(3.0));
    assert!(daemon_status(&socket).await.is_some());
    std::fs::write(&fx.config_path, good).unwrap();

    // SIGTERM: exit 0, socket removed.
    d.signal("TERM");
    let st = d
        .wait_exit(Duration::from_secs(7))
        .expect("exits within the grace");
    assert!(st.success(), "{st:?}\n{}", d.stderr());
    assert!(!socket.exists());
    assert_eq!(notify.count("RELOADING=1"), 2);
    assert_eq!(
        notify.count("READY=1"),
        3,
        "READY after start and after each reload"
    );
    assert_eq!(notify.count("STOPPING=1"), 1);
    // Without a daemon, `status` works standalone and `--require-daemon` fails.
    assert!(fx.snapback(&["status"]).status.success());
    assert_eq!(
        fx.snapback(&["status", "--require-daemon"]).status.code(),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_apply_exits_zero_and_the_restart_resumes_the_same_cycle() {
    // Yearly: only the control socket and the restart start cycles here.
    let fx = Fixture::with_extra(&disk_section(
        "disk1",
        "schedule = \"0 0 0 1 1 *\"\nconcurrency = 1",
    ));
    prepend_config(&fx, "shutdown_grace = \"30s\"");
    let blobs = fx.blobs();
    let (source, backup) = (fx.source("disk1"), fx.backup("disk1"));
    create_disk(blobs.as_ref(), &source, 32 * MIB).await;
    write(blobs.as_ref(), &source, 0, &Rng(7).bytes(MIB as usize)).await;
    // The seed, standalone (no daemon running): restore point 1.
    let out = fx.snapback(&["backup", "disk1"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(restore_points(blobs.as_ref(), &backup).await, 1);
    scatter_writes(blobs.as_ref(), &source, 1500, 8).await;

    let socket = fx.config().control_socket;
    let mut d = answering_daemon(&fx).await;
    // `backup` through the daemon: "run this disk now".
    let out = fx.snapback(&["backup", "--no-wait", "disk1"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "disk1: cycle started by the daemon"
    );
    // Wait until apply has made progress, then SIGTERM.
    let mid_apply = eventually(Duration::from_secs(20), || async {
        daemon_status(&socket).await.is_some_and(|s| {
            s.disks[0]
                .progress
                .as_ref()
                .is_some_and(|p| p.phase == "apply" && p.bytes_done > 2 * MIB)
        })
    })
    .await;
    assert!(mid_apply, "never saw apply in progress:\n{}", d.stderr());
    // `status --json` from the CLI carries the running cycle's progress.
    let out = fx.snapback(&["status", "--json"]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &json["disks"][0]["progress"];
    assert_eq!(p["work"], "apply", "{json}");
    assert!(p["bytes_total"].as_u64().unwrap() > 0, "{json}");
    assert!(p["bytes_done"].as_u64().unwrap() > 2 * MIB, "{json}");
    let pct = p["percent"].as_f64().unwrap();
    assert!(pct > 0.0 && pct <= 100.0, "{json}");
    assert!(
        p.get("bytes_per_second").is_some() && p.get("eta_seconds").is_some(),
        "{json}"
    );
    // The cycle stops at its next checkpoint (the writes in flight end first), well before
    // the 30 s grace; the bound is loose because a loaded CI machine is slow.
    let t = Instant::now();
    d.signal("TERM");
    let st = d
        .wait_exit(Duration::from_secs(35))
        .expect("exits within the grace");
    assert!(st.success(), "{st:?}\n{}", d.stderr());
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    drop(d);

    let state_dir = fx.config().state_dir;
    let paused = {
        let store = StateStore::open(&state_dir).unwrap();
        store.open_cycle("disk1").unwrap().expect("cycle left open")
    };
    assert_eq!(paused.phase.name().as_str(), "apply");
    let upto = paused.phase.applied_upto().unwrap();
    assert!(upto > 0 && upto < 32 * MIB);
    assert_eq!(restore_points(blobs.as_ref(), &backup).await, 1);

    // The restart resumes that cycle by itself: exactly one more restore point.
    let mut d = DaemonProc::spawn(&fx);
    assert!(
        eventually(Duration::from_secs(30), || async {
            restore_points(blobs.as_ref(), &backup).await >= 2
        })
        .await,
        "not resumed:\n{}",
        d.stderr()
    );
    // The restore point appears a moment before the cycle ends (S(n-1) is deleted in between).
    let store = StateStore::open(&state_dir).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            store.open_cycle("disk1").unwrap().is_none()
        ))
        .await,
        "the resumed cycle never ended:\n{}",
        d.stderr()
    );
    assert_eq!(restore_points(blobs.as_ref(), &backup).await, 2);
    assert!(d.stderr().contains("unfinished cycle found"));
    let done = store.last_finished_cycle("disk1").unwrap().unwrap();
    assert_eq!(done.tag, paused.tag, "a different cycle finished");
    let b = done.phase.restore_point().unwrap().0.to_string();
    let s = done.phase.source().unwrap().to_string();
    assert!(
        content(blobs.as_ref(), &backup, Some(&b)).await
            == content(blobs.as_ref(), &source, Some(&s)).await,
        "resumed restore point differs from its source snapshot"
    );
    d.signal("INT");
    assert!(d
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_closing_mid_apply_pauses_and_the_next_window_completes_it() {
    use chrono::TimeZone;
    use snapback::daemon::{Daemon, Options};
    use snapback::model::ManualClock;
    let at = |h, m, s| chrono::Utc.with_ymd_and_hms(2026, 1, 1, h, m, s).unwrap();
    let fx = Fixture::with_extra(&disk_section(
        "disk1",
        "schedule = \"30 59 5 * * *\"\nwindow = \"22:00-06:00\"\nconcurrency = 1",
    ));
    let blobs = fx.blobs();
    let (source, backup) = (fx.source("disk1"), fx.backup("disk1"));
    create_disk(blobs.as_ref(), &source, 32 * MIB).await;
    write(blobs.as_ref(), &source, 0, &Rng(9).bytes(MIB as usize)).await;
    let app = fx.app();
    let disk = app.config.disks[0].clone();
    app.backup_disk(&disk, Default::default())
        .await
        .result
        .expect("seed");
    drop(app);
    scatter_writes(blobs.as_ref(), &source, 1500, 10).await;

    let clock = Arc::new(ManualClock::new(at(5, 59, 0)));
    let daemon = Daemon::start(
        fx.config(),
        Options {
            clock: clock.clone(),
            notify_systemd: false,
            blobs: None,
        },
    )
    .await
    .expect("daemon starts");
    let h = daemon.handle();
    let status = || async {
        match h.request(Request::Status).await {
            Response::Status(s) => s.disks.into_iter().next().unwrap(),
            other => panic!("{other:?}"),
        }
    };
    // 05:59:30, inside the window: the tick starts a cycle.
    clock.set(at(5, 59, 30));
    assert!(
        eventually(Duration::from_secs(20), || async {
            status()
                .await
                .progress
                .is_some_and(|p| p.phase == "apply" && p.bytes_done > MIB)
        })
        .await
    );
    // 06:00: the window closes; the cycle pauses at a checkpoint.
    clock.set(at(6, 0, 0));
    assert!(
        eventually(Duration::from_secs(10), || async {
            !status().await.running
        })
        .await
    );
    let store = StateStore::open(&fx.config().state_dir).unwrap();
    let paused = store.open_cycle("disk1").unwrap().expect("paused cycle");
    assert_eq!(paused.phase.name().as_str(), "apply");
    assert!(paused.phase.applied_upto().unwrap() < 32 * MIB);
    assert_eq!(restore_points(blobs.as_ref(), &backup).await, 1);
    // Daytime: nothing runs.
    clock.set(at(12, 0, 0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!status().await.running);
    // 22:00: the next window resumes and completes the same cycle.
    clock.set(at(22, 0, 0));
    assert!(
        eventually(Duration::from_secs(30), || async {
            restore_points(blobs.as_ref(), &backup).await >= 2
        })
        .await
    );
    assert!(eventually(Duration::from_secs(5), || async { !status().await.running }).await);
    assert_eq!(restore_points(blobs.as_ref(), &backup).await, 2);
    let done = store.last_finished_cycle("disk1").unwrap().unwrap();
    assert_eq!(done.tag, paused.tag);
    assert!(store.open_cycle("disk1").unwrap().is_none());
    h.shutdown();
    tokio::time::timeout(Duration::from_secs(10), daemon.wait())
        .await
        .expect("daemon stops");
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/snapback.service");
    let text = std::fs::read_to_string(&unit).expect("systemd/snapback.service");
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("note: systemd-analyze not found; skipping the unit check");
        return;
    }
    // Point ExecStart at the binary under test: verify checks that it exists.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("snapback.service");
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/snapback", env!("CARGO_BIN_EXE_snapback")),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{err}"
    );
    assert!(!err.contains("snapback.service:"), "warnings:\n{err}");
}

/// Idle footprint with `SNAPBACK_IDLE_DISKS` disks (default 50; schedules far in the
/// future), for docs/operations.md and docs/performance.md:
/// `SNAPBACK_IDLE_DISKS=200 cargo test --release --test daemon idle_usage -- --ignored --nocapture`.
#[test]
#[ignore = "measurement, takes 60 s"]
fn idle_usage() {
    let n: usize = std::env::var("SNAPBACK_IDLE_DISKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let disks: String = (0..n)
        .map(|i| {
            disk_section(
                &format!("disk{i:03}"),
                "schedule = \"0 0 0 1 1 *\"\njitter = \"1m\"",
            )
        })
        .collect();
    let fx = Fixture::with_extra(&disks);
    prepend_config(
        &fx,
        &format!("metrics_listen = \"127.0.0.1:{}\"", free_port()),
    );
    let mut d = DaemonProc::spawn(&fx);
    std::thread::sleep(Duration::from_secs(60));
    assert!(d.is_running(), "{}", d.stderr());
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("VmRSS: ?")
        .to_string();
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", d.pid())).unwrap();
    // After the ")" that ends the command name come fields 3.. of proc(5): state, ppid, ...;
    // utime and stime are fields 14 and 15.
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    println!(
        "idle with {n} disks after 60 s: {rss}, utime+stime = {ticks} ticks ({} ms at 100 Hz)",
        ticks * 10
    );
}

#[test]
fn check_config_rejects_an_unknown_time_zone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapback.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"{}\"\n[accounts.a]\nendpoint = \"http://127.0.0.1:1/acct\"\nshared_key_env = \"K\"\n{}",
            dir.path().join("state").display(),
            "[[disk]]\nname = \"d\"\nsource = \"a/vhds/d.vhd\"\nbackup = \"a/backups/d\"\nschedule = \"0 1 * * *\"\ntz = \"Europe/Pariss\"\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_snapback"))
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("disk \"d\": field \"tz\": \"Europe/Pariss\" is not a time zone name"),
        "{err}"
    );
}

/// In-memory storage that makes every request take 10 ms and records how many disks had
/// requests in flight at the same time.
struct Tracked {
    inner: snapback::storage::fake::MemBlobs,
    active: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    max_disks: std::sync::atomic::AtomicUsize,
}

impl Tracked {
    async fn track<T>(&self, b: &BlobRef, f: impl std::future::Future<Output = T>) -> T {
        use std::sync::atomic::Ordering::SeqCst;
        let disk = b.blob.trim_end_matches(".vhd").to_string();
        {
            let mut a = self.active.lock().unwrap();
            *a.entry(disk.clone()).or_default() += 1;
            self.max_disks.fetch_max(a.len(), SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let r = f.await;
        let mut a = self.active.lock().unwrap();
        if let Some(n) = a.get_mut(&disk) {
            *n -= 1;
            if *n == 0 {
                a.remove(&disk);
            }
        }
        r
    }
}

#[async_trait::async_trait]
impl PageBlobs for Tracked {
    async fn properties(
        &self,
        b: &BlobRef,
        s: Option<&str>,
    ) -> snapback::storage::BlobResult<Option<snapback::storage::BlobProps>> {
        self.track(b, self.inner.properties(b, s)).await
    }
    async fn create_snapshot(
        &self,
        b: &BlobRef,
        m: &snapback::storage::Metadata,
    ) -> snapback::storage::BlobResult<String> {
        self.track(b, self.inner.create_snapshot(b, m)).await
    }
    async fn create_snapshot_if_match(
        &self,
        b: &BlobRef,
        m: &snapback::storage::Metadata,
        etag: &str,
    ) -> snapback::storage::BlobResult<String> {
        self.track(b, self.inner.create_snapshot_if_match(b, m, etag))
            .await
    }
    async fn list_snapshots(
        &self,
        b: &BlobRef,
    ) -> snapback::storage::BlobResult<Vec<snapback::storage::SnapshotInfo>> {
        self.track(b, self.inner.list_snapshots(b)).await
    }
    async fn delete_snapshot(&self, b: &BlobRef, s: &str) -> snapback::storage::BlobResult<()> {
        self.track(b, self.inner.delete_snapshot(b, s)).await
    }
    async fn page_ranges(
        &self,
        b: &BlobRef,
        q: &snapback::storage::PageListQuery<'_>,
    ) -> snapback::storage::BlobResult<snapback::storage::PageList> {
        self.track(b, self.inner.page_ranges(b, q)).await
    }
    async fn read(
        &self,
        b: &BlobRef,
        s: Option<&str>,
        r: snapback::model::pages::ByteRange,
    ) -> snapback::storage::BlobResult<bytes::Bytes> {
        self.track(b, self.inner.read(b, s, r)).await
    }
    async fn put_pages(
        &self,
        b: &BlobRef,
        o: u64,
        d: bytes::Bytes,
        f: Option<snapback::storage::Fence>,
    ) -> snapback::storage::BlobResult<String> {
        self.track(b, self.inner.put_pages(b, o, d, f)).await
    }
    async fn clear_pages(
        &self,
        b: &BlobRef,
        r: snapback::model::pages::ByteRange,
        f: Option<snapback::storage::Fence>,
    ) -> snapback::storage::BlobResult<String> {
        self.track(b, self.inner.clear_pages(b, r, f)).await
    }
    async fn ensure_container(&self, b: &BlobRef) -> snapback::storage::BlobResult<()> {
        self.track(b, self.inner.ensure_container(b)).await
    }
    async fn create_page_blob(
        &self,
        b: &BlobRef,
        size: u64,
        n: &snapback::storage::NewPageBlob,
    ) -> snapback::storage::BlobResult<String> {
        self.track(b, self.inner.create_page_blob(b, size, n)).await
    }
    async fn resize(
        &self,
        b: &BlobRef,
        size: u64,
        c: &snapback::storage::IfBlob,
    ) -> snapback::storage::BlobResult<String> {
        self.track(b, self.inner.resize(b, size, c)).await
    }
    async fn set_sequence_number(
        &self,
        b: &BlobRef,
        v: u64,
        c: &snapback::storage::IfBlob,
    ) -> snapback::storage::BlobResult<String> {
        self.track(b, self.inner.set_sequence_number(b, v, c)).await
    }
    async fn abort_copy(&self, d: &BlobRef, id: &str) -> snapback::storage::BlobResult<()> {
        self.track(d, self.inner.abort_copy(d, id)).await
    }
    async fn start_copy(
        &self,
        d: &BlobRef,
        s: &BlobRef,
        snap: Option<&str>,
        m: &snapback::storage::Metadata,
        c: &snapback::storage::IfBlob,
    ) -> snapback::storage::BlobResult<String> {
        self.track(d, self.inner.start_copy(d, s, snap, m, c)).await
    }
    async fn set_metadata(
        &self,
        b: &BlobRef,
        m: &snapback::storage::Metadata,
    ) -> snapback::storage::BlobResult<()> {
        self.track(b, self.inner.set_metadata(b, m)).await
    }
    async fn delete_blob(&self, b: &BlobRef) -> snapback::storage::BlobResult<()> {
        self.track(b, self.inner.delete_blob(b)).await
    }
    async fn put_pages_from_url(
        &self,
        d: &BlobRef,
        r: snapback::model::pages::ByteRange,
        s: &BlobRef,
        snap: Option<&str>,
        offset: u64,
        f: Option<snapback::storage::Fence>,
    ) -> snapback::storage::BlobResult<String> {
        self.track(d, self.inner.put_pages_from_url(d, r, s, snap, offset, f))
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_max_concurrent_cycles_run_at_once() {
    use snapback::daemon::{Daemon, Options};
    let dir = tempfile::tempdir().unwrap();
    let names = ["d1", "d2", "d3", "d4", "d5"];
    let text = format!(
        "state_dir = \"{}\"\nmax_concurrent_cycles = 2\n[accounts.premium]\nendpoint = \"http://127.0.0.1:1/premium\"\nshared_key_env = \"UNUSED\"\n[accounts.backup]\nendpoint = \"http://127.0.0.1:1/backup\"\nshared_key_env = \"UNUSED\"\n{}",
        dir.path().join("state").display(),
        names.iter().map(|n| disk_section(n, "")).collect::<String>()
    );
    let path = dir.path().join("snapback.toml");
    std::fs::write(&path, text).unwrap();
    let config = snapback::config::Config::load(&path).unwrap();
    let blobs = Arc::new(Tracked {
        inner: snapback::storage::fake::MemBlobs::new(),
        active: Default::default(),
        max_disks: Default::default(),
    });
    for n in names {
        let src = BlobRef::new("premium", "vhds", &format!("{n}.vhd"));
        blobs.inner.ensure_container(&src).await.unwrap();
        blobs
            .inner
            .create_page_blob(&src, MIB, &Default::default())
            .await
            .unwrap();
        blobs.inner.write(&src, 0, &Rng(3).bytes(64 * 1024));
    }
    let daemon = Daemon::start(
        config,
        Options {
            blobs: Some(blobs.clone()),
            notify_systemd: false,
            ..Options::default()
        },
    )
    .await
    .unwrap();
    let h = daemon.handle();
    for n in names {
        let r = h.request(Request::Backup { disk: n.into() }).await;
        assert!(
            matches!(
                r,
                Response::Backup {
                    outcome: control::BackupOutcome::Started,
                    ..
                }
            ),
            "{r:?}"
        );
    }
    // A second request while the cycle runs (or waits for a slot) is merged into it.
    assert!(matches!(
        h.request(Request::Backup { disk: "d5".into() }).await,
        Response::Backup {
            outcome: control::BackupOutcome::AlreadyRunning,
            ..
        }
    ));
    let all_done = eventually(Duration::from_secs(30), || async {
        match h.request(Request::Status).await {
            Response::Status(s) => s
                .disks
                .iter()
                .all(|d| !d.running && d.status.last_success.is_some()),
            _ => false,
        }
    })
    .await;
    assert!(all_done);
    let max = blobs.max_disks.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(max, 2, "disks with requests in flight at once");
    for n in names {
        let backup = BlobRef::new("backup", "backups", n);
        assert_eq!(blobs.inner.snapshot_ids(&backup).len(), 1, "{n}");
    }
    h.shutdown();
    daemon.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_through_the_daemon_waits_for_the_result() {
    // Manual-only disks (no schedule): only our request runs a cycle.
    let disks = disk_section("disk1", "") + &disk_section("ghost", "");
    let fx = Fixture::with_extra(&disks);
    let blobs = fx.blobs();
    small_disk(blobs.as_ref(), &fx.source("disk1"), 11).await;
    let d = answering_daemon(&fx).await;
    let out = fx.snapback(&["backup", "disk1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", d.stderr());
    assert!(stdout.contains("disk1: ok, restore point"), "{stdout}");
    assert_eq!(restore_points(blobs.as_ref(), &fx.backup("disk1")).await, 1);
    // A failing cycle is reported as such, with its cause, and exits 1.
    let out = fx.snapback(&["backup", "ghost"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("ghost: FAILED") && stdout.contains("ghost.vhd"),
        "{stdout}"
    );
}

/// The error policy (`cycle::policy`) drives the daemon's backoff. Both disks are due every
/// 2 s. `locked`'s source answers 403 AuthorizationFailure (a firewall, a role not yet
/// assigned): the failure needs an operator, so it alerts at once (status, metric, hook) and
/// the ticks are held for the operator backoff (5 min, doubling to an hour). `busy` gets a
/// burst of 503 ServerBusy on its diff (Get Page Ranges: idempotent, so only the storage
/// client retries it) longer than the client's retries: transient, retried at the next tick.
/// SIGHUP and a manual backup start `locked` afresh, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_failure_alerts_and_backs_off_while_a_503_burst_is_retried_soon() {
    use common::faultproxy::{Fault, FaultProxy, Op, Rule};
    let every_2s = "schedule = \"*/2 * * * * *\"";
    let fx = Fixture::with_extra(&format!(
        "{}{}",
        disk_section("locked", every_2s),
        disk_section("busy", every_2s)
    ));
    let events = fx.dir.path().join("hook-events");
    // One line per cycle: disk, event, error class, Unix time.
    let record = format!(
        "echo \"$SNAPBACK_DISK $SNAPBACK_EVENT $SNAPBACK_ERROR_CLASS $(date +%s)\" >> '{}'",
        events.display()
    );
    append_config(
        &fx,
        &format!("[hooks]\non_success = [\"/bin/sh\", \"-c\", {record:?}]\non_failure = [\"/bin/sh\", \"-c\", {record:?}]\n"),
    );
    prepend_config(&fx, "metrics_listen = \"127.0.0.1:0\"");
    let blobs = fx.blobs();
    small_disk(blobs.as_ref(), &fx.source("locked"), 21).await;
    small_disk(blobs.as_ref(), &fx.source("busy"), 22).await;
    let proxy = FaultProxy::start(fx.azurite.port());
    fx.route_through(proxy.port());
    let refuse = || {
        proxy.add(
            Rule::new(Fault::Status {
                status: 403,
                code: "AuthorizationFailure",
            })
            .blob("vhds/locked.vhd"),
        )
    };
    let refused = refuse();
    // 1 try + 8 retries of the storage client (azure::retry_options): one cycle fails.
    proxy.add(
        Rule::new(Fault::server_busy())
            .op(Op::GetPageRanges)
            .blob("vhds/busy.vhd")
            .nth(1, 9),
    );
    let socket = fx.config().control_socket;
    let d = DaemonProc::spawn(&fx);
    let port = metrics_port(&d).await;
    let disk = |st: &control::DaemonStatus, name: &str| {
        st.disks
            .iter()
            .find(|x| x.status.disk == name)
            .cloned()
            .unwrap_or_else(|| panic!("no disk {name} in status"))
    };
    let lines = || std::fs::read_to_string(&events).unwrap_or_default();

    // The refusal alerts at once: status, metric, hook, an error in the log.
    let deadline = Instant::now() + Duration::from_secs(20);
    let locked = loop {
        let st = daemon_status(&socket).await.map(|st| disk(&st, "locked"));
        match st.filter(|l| l.failures >= 1 && lines().contains("locked failure")) {
            Some(l) => break l,
            None if Instant::now() > deadline => panic!("locked never failed:\n{}", d.stderr()),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let failed_at = chrono::Utc::now();
    assert!(locked.needs_operator, "{locked:?}");
    assert!(
        locked
            .status
            .last_error
            .as_deref()
            .unwrap_or_default()
            .contains("AuthorizationFailure"),
        "{locked:?}"
    );
    assert!(
        lines().contains("locked failure needs_operator"),
        "{}",
        lines()
    );
    let (_, body) = http_get(port, "/metrics").expect("GET /metrics");
    assert_eq!(
        metric(&body, "snapback_needs_operator{disk=\"locked\"}"),
        Some(1.0),
        "{body}"
    );
    assert!(d.stderr().contains("needs an operator"), "{}", d.stderr());
    // The next attempt is the operator backoff's first step, not the next tick.
    let next_attempt = |l: &control::DaemonDiskStatus, from: chrono::DateTime<chrono::Utc>| {
        let at = l.next_attempt.as_deref().expect("a next attempt");
        chrono::DateTime::parse_from_rfc3339(at)
            .expect("RFC 3339")
            .with_timezone(&chrono::Utc)
            - from
    };
    let wait = next_attempt(&locked, failed_at);
    assert!(
        wait > chrono::TimeDelta::minutes(4) && wait <= chrono::TimeDelta::minutes(5),
        "{wait} {locked:?}"
    );
    // Three ticks pass without a request to the refused source.
    let tried = proxy.stats(refused).matched;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(proxy.stats(refused).matched, tried, "{}", d.stderr());
    assert!(
        d.stderr().contains("scheduled start skipped"),
        "{}",
        d.stderr()
    );

    // The 503 burst outlasts the client's retries once; the next tick succeeds.
    let times = |what: &str| -> Vec<i64> {
        lines()
            .lines()
            .filter(|l| l.starts_with(what))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect()
    };
    let recovered = || {
        let failed = times("busy failure transient");
        let ok = times("busy success");
        failed
            .first()
            .and_then(|f| ok.iter().find(|t| *t >= f).map(|t| t - f))
    };
    let busy_ok = eventually(Duration::from_secs(150), || {
        std::future::ready(recovered().is_some())
    })
    .await;
    assert!(
        busy_ok,
        "busy never failed and recovered:\n{}\n{}",
        lines(),
        d.stderr()
    );
    assert_eq!(times("busy failure").len(), 1, "{}", lines());
    assert!(
        recovered().is_some_and(|gap| gap <= 15),
        "a transient failure is retried soon: {}",
        lines()
    );
    let st = daemon_status(&socket).await.expect("status");
    assert!(!disk(&st, "busy").needs_operator);
    assert_eq!(times("locked failure").len(), 1, "still held: {}", lines());

    // SIGHUP: the operator acted; `locked` is tried at once and, still refused, backs off
    // from the first step again.
    let hup = chrono::Utc::now();
    d.signal("HUP");
    assert!(
        eventually(Duration::from_secs(15), || async {
            times("locked failure").len() == 2
        })
        .await,
        "no retry on SIGHUP: {}\n{}",
        lines(),
        d.stderr()
    );
    // The hook reports the failure before the supervisor has taken the result in: wait for
    // `status` to show it too.
    let deadline = Instant::now() + Duration::from_secs(15);
    let locked = loop {
        let st = daemon_status(&socket).await.map(|st| disk(&st, "locked"));
        match st {
            Some(l) if l.failures == 2 && !l.running => break l,
            _ if Instant::now() > deadline => {
                panic!("status never showed the retry:\n{}", d.stderr())
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert!(locked.needs_operator, "{locked:?}");
    let wait = next_attempt(&locked, hup);
    assert!(
        wait > chrono::TimeDelta::minutes(4)
            && wait <= chrono::TimeDelta::minutes(5) + chrono::TimeDelta::seconds(15),
        "the first step again: {wait} {locked:?}"
    );

    // Fixed: a manual backup does not wait for the backoff.
    proxy.clear_rules();
    let out = fx.snapback(&["backup", "locked"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", d.stderr());
    assert!(stdout.contains("locked: ok, restore point"), "{stdout}");
    let st = daemon_status(&socket).await.expect("status");
    assert!(!disk(&st, "locked").needs_operator);
    let (_, body) = http_get(port, "/metrics").expect("GET /metrics");
    assert_eq!(
        metric(&body, "snapback_needs_operator{disk=\"locked\"}"),
        Some(0.0)
    );
    assert!(restore_points(blobs.as_ref(), &fx.backup("locked")).await >= 1);
}

/// Two backups handed to the daemon at once: each is its own run, with its own id, and the CLI
/// reports each one's own result — `bad` has no source blob and fails with that cause while
/// `good` succeeds. A run id the daemon does not know (nonsense, or one given before a
/// restart) is answered as unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_backup_handed_to_the_daemon_is_a_run_with_its_own_result() {
    use control::{RunId, RunResult};
    // Manual-only disks (no schedule): only our requests run cycles.
    let fx = Fixture::with_extra(&(disk_section("good", "") + &disk_section("bad", "")));
    let blobs = fx.blobs();
    small_disk(blobs.as_ref(), &fx.source("good"), 31).await;
    let socket = fx.config().control_socket;
    let mut d = answering_daemon(&fx).await;

    // Through the CLI: both handed over in one command, each result under its disk.
    let out = fx.snapback(&["backup", "good", "bad"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", d.stderr());
    assert!(
        stdout.contains("good: cycle started by the daemon"),
        "{stdout}"
    );
    assert!(
        stdout.contains("bad: cycle started by the daemon"),
        "{stdout}"
    );
    let good_line = stdout
        .lines()
        .find(|l| l.starts_with("good: ok, restore point "))
        .unwrap_or_else(|| panic!("no result for good:\n{stdout}"));
    let point = good_line.trim_start_matches("good: ok, restore point ");
    let points = tagged_snapshots(blobs.as_ref(), &fx.backup("good")).await;
    assert_eq!(points, vec![point.to_string()], "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("bad: FAILED: ") && l.contains("bad.vhd")),
        "bad's failure not reported with its cause:\n{stdout}"
    );
    // One hand-over line and one result line per disk.
    for disk in ["good", "bad"] {
        let lines = stdout
            .lines()
            .filter(|l| l.starts_with(&format!("{disk}: ")));
        assert_eq!(lines.count(), 2, "{stdout}");
    }

    // On the socket: two requests, two run ids, each with its own result.
    let hand_over = |disk: &str| {
        let (socket, disk) = (socket.clone(), disk.to_string());
        async move {
            match control::request(&socket, &Request::Backup { disk }).await {
                Ok(Some(Response::Backup { run: Some(run), .. })) => run,
                other => panic!("{other:?}"),
            }
        }
    };
    let (good_run, bad_run) = (hand_over("good").await, hand_over("bad").await);
    assert_ne!(good_run, bad_run);
    let result_of = |run: RunId| {
        let socket = socket.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match control::request(&socket, &Request::Run { run: run.clone() }).await {
                    Ok(Some(Response::Run {
                        result: RunResult::Running,
                        ..
                    })) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Ok(Some(Response::Run { disk, result, .. })) => return (disk, result),
                    other => panic!("run {run}: {other:?}"),
                }
            }
        }
    };
    let (disk, result) = result_of(good_run.clone()).await;
    assert_eq!(disk, "good");
    let RunResult::Ok {
        restore_point: Some(second),
        ..
    } = result
    else {
        panic!("{result:?}\n{}", d.stderr())
    };
    assert!(
        tagged_snapshots(blobs.as_ref(), &fx.backup("good"))
            .await
            .contains(&second),
        "{second}"
    );
    assert_ne!(second, point);
    let (disk, result) = result_of(bad_run).await;
    assert_eq!(disk, "bad");
    assert!(
        matches!(&result, RunResult::Failed { error, .. } if error.contains("bad.vhd")),
        "{result:?}"
    );

    // Unknown ids are refused as unknown: nonsense, and a run of the process before a restart.
    let unknown = |run: RunId| {
        let socket = socket.clone();
        async move {
            let answer = control::request(&socket, &Request::Run { run: run.clone() }).await;
            assert!(
                matches!(&answer, Ok(Some(Response::UnknownRun { run: r })) if *r == run),
                "{answer:?}"
            );
        }
    };
    unknown(RunId("no-such-run".into())).await;
    d.signal("TERM");
    assert!(d
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
    drop(d);
    let _restarted = answering_daemon(&fx).await;
    unknown(good_run).await;
}
