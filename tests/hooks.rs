//! Hooks against Azurite through the CLI: the command gets the cycle in its environment, the
//! webhook gets it as JSON, and a hanging, failing or missing hook never changes the result.

mod common;

use common::fixture::{create_disk, write, Fixture, MIB};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Writes an executable shell script (run as the hook's argv[0], not through a shell).
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// `KEY=VALUE` lines as written by `env`, SNAPBACK_* only.
fn recorded_env(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("hook did not record {}: {e}", path.display()));
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.starts_with("SNAPBACK_"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A one-request HTTP server on 127.0.0.1: returns its URL and the body it will receive.
fn webhook_receiver() -> (String, std::sync::mpsc::Receiver<(String, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut stream = reader.into_inner();
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .unwrap();
        tx.send((head, String::from_utf8(body).unwrap())).unwrap();
    });
    (url, rx)
}

fn toml_argv(argv: &[&Path]) -> String {
    let items: Vec<String> = argv
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    format!("[{}]", items.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_get_the_cycle_in_their_environment_and_as_json() {
    let tmp = tempfile::tempdir().unwrap();
    let record = script(tmp.path(), "record.sh", "env > \"$1\"");
    let ok_env = tmp.path().join("ok.env");
    let fail_env = tmp.path().join("fail.env");
    let (url, bodies) = webhook_receiver();
    // Global hooks; disk `gone` (whose source does not exist) overrides on_failure only.
    let fx = Fixture::with_extra(&format!(
        "[hooks]\non_success = {}\nwebhook = \"{url}\"\ntimeout = \"20s\"\n\n{}hooks = {{ on_failure = {} }}\n",
        toml_argv(&[&record, &ok_env]),
        common::fixture::disks_toml(&["d1", "gone"]),
        toml_argv(&[&record, &fail_env]),
    ));
    let blobs = fx.blobs();
    create_disk(blobs.as_ref(), &fx.source("d1"), MIB).await;
    write(blobs.as_ref(), &fx.source("d1"), 0, &[7u8; 8192]).await;

    let out = fx.snapback(&["backup", "d1"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let points = fx.app().list(&fx.config().disks[0]).await.unwrap();
    assert_eq!(points.len(), 1);
    let env = recorded_env(&ok_env);
    assert_eq!(env["SNAPBACK_EVENT"], "success");
    assert_eq!(env["SNAPBACK_DISK"], "d1");
    assert_eq!(env["SNAPBACK_KIND"], "seed");
    assert_eq!(env["SNAPBACK_RESTORE_POINT"], points[0].snapshot);
    assert_eq!(env["SNAPBACK_SOURCE_SNAPSHOT"], points[0].source_snapshot);
    assert_eq!(env["SNAPBACK_ERROR"], "");
    assert_eq!(env["SNAPBACK_ERROR_CLASS"], "");
    assert!(env["SNAPBACK_DURATION_SECONDS"].parse::<f64>().unwrap() > 0.0);
    assert!(env.contains_key("SNAPBACK_BYTES_WRITTEN"));
    // The account keys snapback reads from its environment are not passed on.
    let raw = std::fs::read_to_string(&ok_env).unwrap();
    assert!(raw.contains("SNAPBACK_DISK=d1"), "{raw}");
    assert!(
        !raw.contains("SB_TEST_PREMIUM_KEY") && !raw.contains("SB_TEST_BACKUP_KEY"),
        "{raw}"
    );

    let (head, body) = bodies.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(head.starts_with("POST /hook "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["event"], "success");
    assert_eq!(json["disk"], "d1");
    assert_eq!(json["restore_point"], points[0].snapshot.as_str());
    assert_eq!(json["kind"], "seed");

    // A second, incremental cycle with 8 KiB changed: the bytes reach the hook.
    write(blobs.as_ref(), &fx.source("d1"), 65536, &[9u8; 8192]).await;
    let out = fx.snapback(&["backup", "d1"]);
    assert_eq!(out.status.code(), Some(0));
    let env = recorded_env(&ok_env);
    assert_eq!(env["SNAPBACK_KIND"], "incremental");
    assert_eq!(env["SNAPBACK_BYTES_WRITTEN"], "8192");

    // A failed cycle: its own on_failure with the error; the exit code is the cycle's.
    let out = fx.snapback(&["backup", "gone"]);
    assert_eq!(out.status.code(), Some(1));
    let env = recorded_env(&fail_env);
    assert_eq!(env["SNAPBACK_EVENT"], "failure");
    assert_eq!(env["SNAPBACK_DISK"], "gone");
    assert!(env["SNAPBACK_ERROR"].contains("gone.vhd"), "{env:?}");
    // A source blob that is not there: someone must act (cycle::policy).
    assert_eq!(env["SNAPBACK_ERROR_CLASS"], "needs_operator", "{env:?}");
    assert_eq!(env["SNAPBACK_RESTORE_POINT"], "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_failing_or_missing_hooks_never_fail_the_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let pid_file = tmp.path().join("sleeper.pid");
    let hang = script(
        tmp.path(),
        "hang.sh",
        &format!("sleep 30 &\necho $! > {}\nwait", pid_file.display()),
    );
    let fail = script(
        tmp.path(),
        "fail.sh",
        "echo 'cannot reach the pager' >&2\nexit 3",
    );
    let missing = tmp.path().join("no-such-hook");
    let disks = common::fixture::disks_toml(&["hang", "fail", "missing"]);
    let mut section = String::new();
    for (block, argv) in disks
        .split("\n\n")
        .filter(|b| !b.is_empty())
        .zip([&hang, &fail, &missing])
    {
        section += &format!(
            "{block}\nhooks = {{ on_success = {}, timeout = \"1s\" }}\n\n",
            toml_argv(&[argv])
        );
    }
    let fx = Fixture::with_extra(&section);
    let blobs = fx.blobs();
    for d in ["hang", "fail", "missing"] {
        create_disk(blobs.as_ref(), &fx.source(d), MIB).await;
    }

    let started = Instant::now();
    let out = fx.snapback(&["backup"]);
    let took = started.elapsed();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "hooks never fail the backup: {log}"
    );
    assert!(
        took < Duration::from_secs(20),
        "did not wait for the sleeper: {took:?}"
    );
    assert!(
        log.contains("hang.sh ran longer than 1.0s and was killed"),
        "{log}"
    );
    assert!(log.contains("fail.sh exited with exit status: 3"), "{log}");
    assert!(
        log.contains("cannot reach the pager"),
        "hook output logged: {log}"
    );
    assert!(
        log.contains("cannot start") && log.contains("no-such-hook"),
        "{log}"
    );
    for d in ["hang", "fail", "missing"] {
        assert_eq!(
            fx.app()
                .list(fx.config().disk(d).unwrap())
                .await
                .unwrap()
                .len(),
            1
        );
    }
    // The hook's whole process group was killed, its background `sleep` too.
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let stat = Path::new("/proc").join(pid.trim()).join("stat");
    let alive = std::fs::read_to_string(&stat)
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false);
    assert!(!alive, "the hook's child {} still runs", pid.trim());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_hooks_and_does_not_wait_past_their_timeout() {
    use common::daemon::{disk_section, eventually, DaemonProc};
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("hook-started");
    let hang = script(
        tmp.path(),
        "hang.sh",
        &format!("echo \"$SNAPBACK_DISK\" > {}\nsleep 30", marker.display()),
    );
    // Manual-only disk: only our request runs a cycle.
    let fx = Fixture::with_extra(&disk_section(
        "d1",
        &format!(
            "hooks = {{ on_success = {}, timeout = \"1s\" }}",
            toml_argv(&[&hang])
        ),
    ));
    create_disk(fx.blobs().as_ref(), &fx.source("d1"), MIB).await;
    let socket = fx.config().control_socket;
    let d = DaemonProc::spawn(&fx);
    assert!(
        eventually(Duration::from_secs(10), || async {
            snapback::daemon::control::request(&socket, &snapback::daemon::control::Request::Status)
                .await
                .ok()
                .flatten()
                .is_some()
        })
        .await
    );
    // `backup` through the daemon waits for the cycle, hook included: 1 s, not 30.
    let started = Instant::now();
    let out = fx.snapback(&["backup", "d1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", d.stderr());
    assert!(stdout.contains("d1: ok, restore point"), "{stdout}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(std::fs::read_to_string(&marker).unwrap().trim(), "d1");
    assert!(
        eventually(Duration::from_secs(5), || async {
            d.stderr()
                .contains("hang.sh ran longer than 1.0s and was killed")
        })
        .await,
        "{}",
        d.stderr()
    );
}
