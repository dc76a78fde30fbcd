//! Bad input through the CLI: each error names the problem (file and line, field, disk,
//! blob, account), exits non-zero, and leaves nothing half-written.

mod common;

use common::azurite::Azurite;
use common::fixture::{content, create_disk, tagged_snapshots, write, Fixture, Rng, MIB};
use std::process::Output;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn no_panic(o: &Output) {
    let e = stderr(o);
    assert!(
        !e.contains("panicked") && !e.contains("stack backtrace"),
        "a clean error, not a crash: {e}"
    );
}

fn snapback_with(config_text: &str, args: &[&str]) -> (Output, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config_text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_snapback"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    (out, dir)
}

const GOOD: &str = r#"state_dir = "/tmp/snapback-cli-test-unused"
[accounts.premium]
endpoint = "http://127.0.0.1:1/premium"
shared_key_env = "K1"
[accounts.backup]
endpoint = "http://127.0.0.1:1/backup"
shared_key_env = "K2"
[[disk]]
name = "d1"
source = "premium/vhds/d1.vhd"
backup = "backup/backups/d1"
schedule = "0 */12 * * *"
"#;

#[test]
fn check_config_accepts_a_valid_file() {
    let (out, _d) = snapback_with(GOOD, &["check-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn malformed_toml_names_the_file_and_line() {
    let text = GOOD.replace("name = \"d1\"", "name = \"d1");
    let (out, _d) = snapback_with(&text, &["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(e.contains("bad.toml:9:"), "line 9 named: {e}");
    no_panic(&out);
}

#[test]
fn unknown_field_is_named_with_every_other_problem() {
    let text = GOOD
        .replace("schedule =", "shedule =")
        .replace("shared_key_env = \"K2\"", "");
    let (out, _d) = snapback_with(&text, &["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(
        e.contains("shedule") && e.contains("schedule"),
        "field named with a suggestion: {e}"
    );
    assert!(e.contains(":12:"), "line of the unknown field: {e}");
    assert!(
        e.contains("backup"),
        "the account without auth is reported too: {e}"
    );
}

#[test]
fn missing_config_file_is_named() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_snapback"))
        .args(["--config", "/nonexistent/snapback.toml", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/nonexistent/snapback.toml"));
}

#[test]
fn unknown_disk_is_named_and_nothing_runs() {
    let fx = Fixture::new(&["d1"]);
    let out = fx.snapback(&["backup", "nosuchdisk"]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(
        e.contains("unknown disk 'nosuchdisk'") && e.contains("d1"),
        "{e}"
    );
    let out = fx.snapback(&["list", "nosuchdisk"]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_source_blob_is_named_and_nothing_is_created_in_the_backup_account() {
    let fx = Fixture::new(&["ghost"]);
    let out = fx.snapback(&["backup", "ghost"]);
    assert_eq!(out.status.code(), Some(1));
    let all = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(
        all.contains("premium/vhds/ghost.vhd") && all.contains("not found"),
        "{all}"
    );
    no_panic(&out);
    // The backup container was never created.
    let blobs = fx.blobs();
    let err = snapback::storage::PageBlobs::list_snapshots(blobs.as_ref(), &fx.backup("ghost"))
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "backup container absent: {err}");
}

#[test]
fn wrong_key_is_an_authentication_error() {
    let fx = Fixture::new(&["d1"]);
    let out = fx
        .command(&["backup", "d1"])
        .env("SB_TEST_PREMIUM_KEY", "d3JvbmcgYnV0IHZhbGlkIGJhc2U2NA==")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let all = format!("{}{}", stderr(&out), String::from_utf8_lossy(&out.stdout));
    assert!(
        all.contains("authentication failed for account 'premium'"),
        "{all}"
    );
    assert!(
        !all.contains("d3JvbmcgYnV0IHZhbGlkIGJhc2U2NA"),
        "the key never appears in output"
    );
    no_panic(&out);
    // Unset variable: named, and the command fails before touching storage.
    let out = fx
        .command(&["backup", "d1"])
        .env_remove("SB_TEST_BACKUP_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("SB_TEST_BACKUP_KEY"),
        "{}",
        stderr(&out)
    );
}

/// Seeds `disk`, changes the source, and returns (first restore point, its content).
async fn seeded(fx: &Fixture) -> (String, Vec<u8>) {
    let blobs = fx.blobs();
    let source = fx.source("d1");
    let mut rng = Rng(7);
    create_disk(blobs.as_ref(), &source, 4 * MIB).await;
    write(blobs.as_ref(), &source, 0, &rng.bytes(MIB as usize)).await;
    let out = fx.snapback(&["backup", "d1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    write(blobs.as_ref(), &source, 2 * MIB, &rng.bytes(4096)).await;
    let first = tagged_snapshots(blobs.as_ref(), &fx.backup("d1"))
        .await
        .remove(0);
    let c = content(blobs.as_ref(), &fx.backup("d1"), Some(&first)).await;
    (first, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_blob_tampered_between_cycles_is_repaired_by_a_reseed() {
    let fx = Fixture::new(&["d1"]);
    let (first, first_content) = seeded(&fx).await;
    let blobs = fx.blobs();
    // Someone writes to the backup base behind snapback's back.
    write(blobs.as_ref(), &fx.backup("d1"), 0, &[0xAB; 512]).await;
    let out = fx.snapback(&["backup", "d1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("was modified since the last restore point"),
        "warning names the cause: {}",
        stderr(&out)
    );
    let points = tagged_snapshots(blobs.as_ref(), &fx.backup("d1")).await;
    assert_eq!(points.len(), 2);
    assert!(
        content(blobs.as_ref(), &fx.backup("d1"), Some(&first)).await == first_content,
        "old point intact"
    );
    let src = tagged_snapshots(blobs.as_ref(), &fx.source("d1")).await;
    assert!(
        content(blobs.as_ref(), &fx.backup("d1"), Some(&points[1])).await
            == content(blobs.as_ref(), &fx.source("d1"), Some(&src[0])).await,
        "the repaired point equals the source"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_base_deleted_between_cycles_is_repaired_by_a_reseed() {
    let fx = Fixture::new(&["d1"]);
    let (first, first_content) = seeded(&fx).await;
    let blobs = fx.blobs();
    let base = tagged_snapshots(blobs.as_ref(), &fx.source("d1"))
        .await
        .remove(0);
    snapback::storage::PageBlobs::delete_snapshot(blobs.as_ref(), &fx.source("d1"), &base)
        .await
        .unwrap();
    let out = fx.snapback(&["backup", "d1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("was deleted"),
        "warning names the cause: {}",
        stderr(&out)
    );
    let points = tagged_snapshots(blobs.as_ref(), &fx.backup("d1")).await;
    assert_eq!(points.len(), 2);
    assert!(content(blobs.as_ref(), &fx.backup("d1"), Some(&first)).await == first_content);
    let src = tagged_snapshots(blobs.as_ref(), &fx.source("d1")).await;
    assert_eq!(src.len(), 1);
    assert!(
        content(blobs.as_ref(), &fx.backup("d1"), Some(&points[1])).await
            == content(blobs.as_ref(), &fx.source("d1"), Some(&src[0])).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried() {
    let fx = Fixture::start(Azurite::start(), &common::fixture::disks_toml(&["d1"]));
    let (_first, _) = seeded(&fx).await;
    // Two 503 ServerBusy on page writes, a 500 on the diff and a dropped connection on a read.
    fx.azurite.inject_fault("503", 2, "comp=page");
    fx.azurite.inject_fault("500", 1, "prevsnapshot");
    fx.azurite.inject_fault("reset", 1, "snapshot=");
    let out = fx.snapback(&["backup", "d1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        tagged_snapshots(fx.blobs().as_ref(), &fx.backup("d1"))
            .await
            .len(),
        2
    );
}

/// A stand-in daemon on the control socket: answers each request line with the reply that
/// `reply` gives for it, and records the requests. Scripted, so that the CLI meets the
/// answers a real daemon gives only across a restart or an upgrade.
fn stand_in_daemon(
    socket: &std::path::Path,
    reply: fn(&str) -> String,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::{BufRead, Write};
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut line = String::new();
            let _ = std::io::BufReader::new(&stream).read_line(&mut line);
            log.lock().unwrap().push(line.trim().to_string());
            let _ = writeln!(stream, "{}", reply(line.trim()));
        }
    });
    seen
}

/// A run the daemon does not know (it restarted between the hand-over and the wait) is said
/// so, and `backup` exits 1; so is a daemon older than run ids, which gives none.
#[test]
fn backup_handed_to_a_daemon_that_does_not_know_the_run_says_so() {
    // `snapback backup d1` against a stand-in; what it printed, and the requests it sent.
    let backup_against = |reply: fn(&str) -> String| {
        let dir = tempfile::tempdir().unwrap();
        let seen = stand_in_daemon(&dir.path().join("control.sock"), reply);
        // The config's state_dir is the stand-in's folder: the control socket's default place.
        let config = GOOD.replace(
            "/tmp/snapback-cli-test-unused",
            &dir.path().display().to_string(),
        );
        let (out, _config) = snapback_with(&config, &["backup", "d1"]);
        no_panic(&out);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(1), "{stdout}{}", stderr(&out));
        let seen = seen.lock().unwrap().clone();
        (stdout, seen)
    };
    let (stdout, seen) = backup_against(|req| {
        if req.contains(r#""cmd":"backup""#) {
            r#"{"reply":"backup","disk":"d1","outcome":"started","run":"0ld-7"}"#.into()
        } else {
            r#"{"reply":"unknown_run","run":"0ld-7"}"#.into()
        }
    });
    assert!(
        stdout.contains("d1: cycle started by the daemon"),
        "{stdout}"
    );
    assert!(
        stdout.contains("d1: RESULT UNKNOWN: the daemon does not know run 0ld-7"),
        "{stdout}"
    );
    assert_eq!(
        seen,
        [
            r#"{"cmd":"backup","disk":"d1"}"#,
            r#"{"cmd":"run","run":"0ld-7"}"#
        ]
    );

    let (stdout, _) =
        backup_against(|_| r#"{"reply":"backup","disk":"d1","outcome":"already_running"}"#.into());
    assert!(
        stdout.contains("d1: cycle already running by the daemon"),
        "{stdout}"
    );
    assert!(
        stdout.contains("d1: the daemon gives no run id"),
        "{stdout}"
    );
}
