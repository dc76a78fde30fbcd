//! What a person at a terminal sees, and what a log file or the journal gets: colour and
//! progress only on a terminal (run through a pseudo-terminal here), never in a pipe.

mod common;

use common::pty::{has_escape_codes, run_on_pty};
use std::process::Command;

/// A config whose first account's key variable is unset: `backup` fails at once, logging an
/// ERROR line (no network needed).
fn failing_config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("snapback.toml");
    std::fs::write(
        &path,
        format!(
            r#"state_dir = "{}"
[accounts.premium]
endpoint = "http://127.0.0.1:1/premium"
shared_key_env = "SNAPBACK_TEST_UNSET_KEY"
[accounts.backup]
endpoint = "http://127.0.0.1:1/backup"
shared_key_env = "SNAPBACK_TEST_UNSET_KEY"
[[disk]]
name = "d1"
source = "premium/vhds/d1.vhd"
backup = "backup/backups/d1"
"#,
            dir.join("state").display()
        ),
    )
    .unwrap();
    path
}

fn args(config: &std::path::Path, extra: &[&'static str]) -> Vec<String> {
    let mut a = vec!["--config".to_string(), config.display().to_string()];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[test]
fn log_lines_are_coloured_on_a_terminal_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = failing_config(dir.path());
    let a = args(&config, &["backup", "d1"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let bin = env!("CARGO_BIN_EXE_snapback");

    let tty = run_on_pty(bin, &a, &[("NO_COLOR", "")]);
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert_eq!(tty.status.code(), Some(1), "{shown}");
    assert!(shown.contains("cycle failed"), "{shown}");
    assert!(
        has_escape_codes(&shown),
        "a terminal gets colour: {shown:?}"
    );

    let no_color = run_on_pty(bin, &a, &[("NO_COLOR", "1")]);
    let shown = String::from_utf8_lossy(&no_color.stdout);
    assert!(shown.contains("cycle failed"), "{shown}");
    assert!(!has_escape_codes(&shown), "NO_COLOR=1: {shown:?}");

    // A pipe, as under systemd/journald or `2>file`.
    let piped = Command::new(bin)
        .args(&a)
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&piped.stderr);
    assert_eq!(piped.status.code(), Some(1), "{log}");
    assert!(
        log.contains("ERROR") && log.contains("cycle failed"),
        "{log}"
    );
    assert!(!has_escape_codes(&log), "no colour in a pipe: {log:?}");
}

#[test]
fn json_logs_never_carry_colour() {
    let dir = tempfile::tempdir().unwrap();
    let config = failing_config(dir.path());
    let a = args(&config, &["--log-format", "json", "backup", "d1"]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let tty = run_on_pty(env!("CARGO_BIN_EXE_snapback"), &a, &[("NO_COLOR", "")]);
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(!has_escape_codes(&shown), "{shown:?}");
    let line = shown
        .lines()
        .find(|l| l.contains("cycle failed"))
        .unwrap_or_else(|| panic!("no log line: {shown}"));
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["level"], "ERROR");
    assert_eq!(v["fields"]["disk"], "d1");
}

/// Seed (a pending Copy Blob for a few polls), then an incremental apply and a verify, run on
/// a PTY and through pipes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_bars_on_a_terminal_and_nothing_in_a_pipe() {
    use common::azurite::Azurite;
    use common::fixture::{create_disk, disks_toml, write, Fixture, Rng, MIB};
    let fx = Fixture::start(
        Azurite::start_with_env(&[("SNAPBACK_AZURITE_COPY_POLLS", "3")]),
        &disks_toml(&["d1"]),
    );
    let blobs = fx.blobs();
    let source = fx.source("d1");
    create_disk(blobs.as_ref(), &source, 16 * MIB).await;
    write(blobs.as_ref(), &source, 0, &Rng(1).bytes(4 * MIB as usize)).await;
    let bin = env!("CARGO_BIN_EXE_snapback");
    let config = fx.config_path.display().to_string();
    let on_pty = |args: &[&str]| {
        let mut a = vec!["--config", config.as_str()];
        a.extend_from_slice(args);
        let out = run_on_pty(bin, &a, &[]);
        let shown = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(out.status.code(), Some(0), "{shown}");
        shown
    };
    // The final state of each bar stays on screen, e.g.
    // "d1: seed copy [======] 16.00 MiB/16.00 MiB (100%), 9.91 MiB/s, ETA 0 seconds".
    let seed = on_pty(&["backup", "d1"]);
    println!("{seed}"); // shown with --nocapture
    let line = seed
        .split(['\r', '\n'])
        .find(|l| l.contains("d1: seed copy ["))
        .unwrap_or_else(|| panic!("no seed copy bar: {seed:?}"));
    assert!(line.contains("MiB/16.00 MiB"), "{line:?}");

    // The copy takes three polls (over a second): its rate and ETA are shown, and its last
    // state is all of it, with nothing left to wait for.
    assert!(seed.contains("/s, ETA "), "{seed:?}");
    assert!(
        seed.contains("16.00 MiB/16.00 MiB (100%)") && seed.contains("ETA 0 seconds"),
        "{seed:?}"
    );

    write(
        blobs.as_ref(),
        &source,
        8 * MIB,
        &Rng(2).bytes(6 * MIB as usize),
    )
    .await;
    let apply = on_pty(&["backup", "d1"]);
    println!("{apply}");
    assert!(
        apply.contains("d1: apply [") && apply.contains("16.00 MiB/16.00 MiB (100%)"),
        "{apply:?}"
    );
    let verify = on_pty(&["verify", "d1"]);
    assert!(verify.contains("d1: verify ["), "{verify:?}");
    // Restore: the promote and the copy to the target are both pending Copy Blobs here.
    let list = fx.command(&["list", "d1", "--json"]).output().unwrap();
    let points: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let point = points[0]["snapshot"].as_str().unwrap().to_string();
    let restore = on_pty(&[
        "restore",
        "d1",
        "--snapshot",
        &point,
        "--to",
        "premium/vhds/restored.vhd",
    ]);
    assert!(
        restore.contains("d1: promote [") && restore.contains("d1: restore copy ["),
        "{restore:?}"
    );

    // Through pipes: the same work, no bar, no escape codes.
    write(blobs.as_ref(), &source, 0, &Rng(3).bytes(6 * MIB as usize)).await;
    for args in [&["backup", "d1"][..], &["verify", "d1"][..]] {
        let out = fx.command(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(!err.contains("ETA") && !err.contains(" ["), "{err}");
        assert!(!has_escape_codes(&err) && !err.contains('\r'), "{err:?}");
    }
}
