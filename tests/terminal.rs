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
