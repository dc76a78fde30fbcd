//! The config contract's tests: one per rule of the file (every field's type, range and
//! spelling hints, every cross-field check, every error's file:line), which is why this file
//! is longer than 700 lines — a test table, not code to split.

use super::reader::{closest, edit_distance};
use super::*;

const ACCOUNTS: &str = r#"
[accounts.premium]
endpoint = "https://mypremiumaccount.blob.core.windows.net"
shared_key_env = "PREMIUM_KEY"

[accounts.backup]
endpoint = "https://mybackupstdaccount.blob.core.windows.net"
shared_key_env = "BACKUP_KEY"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("snapback.toml"))
}

/// `extra` after one account `a` (for the tests of one table: `[cluster]`, throttles).
pub(super) fn with_one_account(extra: &str) -> Result<Config, ConfigError> {
    parse(&format!(
        "[accounts.a]\nendpoint = \"https://acct.blob.core.windows.net\"\nshared_key_env = \"K\"\n{extra}"
    ))
}

/// For each `(extra, want)`: [`with_one_account`]`(extra)` fails with a problem containing
/// `want`.
pub(super) fn assert_problems_with_one_account(cases: &[(&str, &str)]) {
    for (extra, want) in cases {
        match with_one_account(extra) {
            Err(ConfigError::Invalid { problems, .. }) => assert!(
                problems.iter().any(|p| p.contains(want)),
                "{extra}: {problems:?}"
            ),
            other => panic!("{extra}: expected an error, got {other:?}"),
        }
    }
}

/// Parses `text` expecting failure; returns the problems.
fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(c) => panic!("expected an error, got {c:#?}"),
        Err(ConfigError::Invalid { problems, path }) => {
            assert_eq!(path, Path::new("snapback.toml"));
            problems
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn assert_one(text: &str, needle: &str) {
    let p = problems(text);
    assert!(
        p.iter().any(|m| m.contains(needle)),
        "no problem contains {needle:?}; got:\n{}",
        p.join("\n")
    );
}

fn with_disk(disk: &str) -> String {
    format!("{ACCOUNTS}\n[[disk]]\n{disk}")
}

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
}

#[test]
fn full_example_values() {
    let c = Config::load(&example_dir().join("snapback.example.toml")).unwrap();
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/snapback"));
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.max_concurrent_cycles, 4);
    assert_eq!(c.max_inflight_requests, 32);
    assert_eq!(c.max_buffer_mib, 32);
    assert_eq!(c.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.copy_stall_timeout, Duration::from_secs(30 * 60));
    assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(
        c.control_socket,
        PathBuf::from("/run/snapback/control.sock")
    );

    let p = &c.accounts["premium"];
    assert_eq!(p.key, "premium");
    assert_eq!(p.account_name, "mypremiumaccount");
    assert!(!p.path_style);
    assert_eq!(
        p.endpoint.as_str(),
        "https://mypremiumaccount.blob.core.windows.net/"
    );
    assert_eq!(p.auth, AuthConfig::SharedKeyEnv("PREMIUM_KEY".into()));
    assert_eq!(c.accounts["backup"].account_name, "mybackupstdaccount");
    assert_eq!(
        c.accounts["backup_mi"].auth,
        AuthConfig::ManagedIdentity {
            client_id: Some("00000000-0000-0000-0000-000000000000".into())
        }
    );

    assert_eq!(c.disks.len(), 3);
    let d = c.disk("mypremiumdisk").unwrap();
    assert_eq!(
        d.source,
        DiskSource::Blob(BlobRef {
            account: "premium".into(),
            container: "vhds".into(),
            blob: "mypremiumdisk.vhd".into()
        })
    );
    assert_eq!(d.backup.to_string(), "backup/backups/mybackupstdpageblob");
    assert_eq!(d.schedule.as_ref().map(|s| s.expr()), Some("0 */12 * * *"));
    assert_eq!(d.tz, chrono_tz::Tz::Europe__Paris);
    assert_eq!(d.jitter, Some(Duration::from_secs(300)));
    assert_eq!(
        d.window,
        Some(Window {
            start_minute: 22 * 60,
            end_minute: 6 * 60
        })
    );
    assert_eq!(d.concurrency, 8);
    assert_eq!(d.copy_mode, CopyMode::Client);
    assert_eq!(d.verify, VerifyMode::Never);
    assert_eq!(
        d.retention,
        Retention {
            keep_last: Some(3),
            hourly: Some(24),
            daily: Some(7),
            weekly: Some(4),
            monthly: Some(12)
        }
    );
    let text = std::fs::read_to_string(example_dir().join("snapback.example.toml")).unwrap();
    assert_eq!(text.lines().nth(d.line - 1), Some("[[disk]]"));

    // The minimal disk gets every default.
    let d2 = c.disk("data-disk-1").unwrap();
    assert_eq!(
        d2.backup.blob,
        "backups/data/disk1".split_once('/').unwrap().1
    );
    assert_eq!(d2.blob_source().unwrap().blob, "data/disk1.vhd");
    assert_eq!(d2.schedule, None);
    assert_eq!(d2.tz, chrono_tz::Tz::UTC);
    assert_eq!(d2.jitter, None);
    assert_eq!(d2.window, None);
    assert_eq!(d2.concurrency, 8);
    assert_eq!(d2.copy_mode, CopyMode::Client);
    assert_eq!(d2.verify, VerifyMode::Never);
    assert_eq!(d2.retention, Retention::default());
    assert!(c.disk("nope").is_none());
}

#[test]
fn defaults_for_empty_file() {
    let c = parse("").unwrap();
    assert_eq!(c.path, PathBuf::from("snapback.toml"));
    assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
    assert_eq!(
        c.control_socket,
        PathBuf::from("/var/lib/snapback/control.sock")
    );
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.max_concurrent_cycles, 4);
    assert_eq!(c.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.copy_stall_timeout, Duration::from_secs(30 * 60));
    assert_eq!(c.metrics_listen, None);
    assert!(c.accounts.is_empty() && c.disks.is_empty());
}

#[test]
fn accounts_only_is_valid_and_control_socket_follows_state_dir() {
    let c = parse(&format!(
        "state_dir = \"/srv/sb\"\nlog_format = \"json\"\n{ACCOUNTS}"
    ))
    .unwrap();
    assert_eq!(c.accounts.len(), 2);
    assert!(c.disks.is_empty());
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.control_socket, PathBuf::from("/srv/sb/control.sock"));
}

#[test]
fn azurite_example() {
    let c = Config::load(&example_dir().join("azurite-local.toml")).unwrap();
    assert_eq!(c.state_dir, PathBuf::from("./.snapback-state"));
    for (key, var) in [("premium", "PREMIUM_KEY"), ("backup", "BACKUP_KEY")] {
        let a = &c.accounts[key];
        assert!(a.path_style);
        assert_eq!(a.account_name, key);
        assert_eq!(a.endpoint.as_str(), format!("http://127.0.0.1:10000/{key}"));
        assert_eq!(a.auth, AuthConfig::SharedKeyEnv(var.into()));
    }
    assert_eq!(c.disks.len(), 1);
    let d = &c.disks[0];
    assert_eq!(d.name, "demo");
    assert_eq!(d.source.to_string(), "premium/vhds/demo.vhd");
    assert_eq!(d.backup.to_string(), "backup/backups/demo");
    assert_eq!(
        d.schedule.as_ref().map(|s| s.expr()),
        Some("*/30 * * * * *")
    );
}

fn account(endpoint: &str, extra: &str) -> AccountConfig {
    let text = format!("[accounts.a]\nendpoint = \"{endpoint}\"\nshared_key_env = \"K\"\n{extra}");
    match parse(&text) {
        Ok(c) => c.accounts["a"].clone(),
        Err(e) => panic!("{endpoint}: {e}"),
    }
}

#[test]
fn host_and_path_style_account_names() {
    let a = account("https://MyAcct.blob.core.windows.net", "");
    assert_eq!((a.account_name.as_str(), a.path_style), ("myacct", false));
    assert_eq!(a.endpoint.as_str(), "https://myacct.blob.core.windows.net/");

    let a = account("https://acct.blob.core.windows.net/", "");
    assert_eq!((a.account_name.as_str(), a.path_style), ("acct", false));

    let a = account("http://127.0.0.1:10000/devstoreaccount1", "");
    assert_eq!(
        (a.account_name.as_str(), a.path_style),
        ("devstoreaccount1", true)
    );
    assert_eq!(
        a.endpoint.as_str(),
        "http://127.0.0.1:10000/devstoreaccount1"
    );

    let a = account("http://localhost:10000/premium/", "");
    assert_eq!((a.account_name.as_str(), a.path_style), ("premium", true));
    assert_eq!(a.endpoint.as_str(), "http://localhost:10000/premium");

    let a = account("http://[::1]:10000/premium", "");
    assert!(a.path_style);
    assert_eq!(a.account_name, "premium");

    // A DNS name with a path (e.g. an Azurite container in compose) is
    // path-style too.
    // (Plain http to it only when allowed: it is not loopback.)
    let a = account("http://azurite:10000/backup", "allow_insecure_http = true");
    assert_eq!((a.account_name.as_str(), a.path_style), ("backup", true));

    // account_name overrides the derived one, for both styles.
    let a = account(
        "http://127.0.0.1:10000/premium",
        "account_name = \"devstoreaccount1\"",
    );
    assert_eq!(a.account_name, "devstoreaccount1");
    assert_eq!(a.endpoint.as_str(), "http://127.0.0.1:10000/premium");
    let a = account("https://cname.example.com", "account_name = \"realacct\"");
    assert_eq!(a.account_name, "realacct");
    assert!(!a.path_style);
}

#[test]
fn plain_http_only_to_loopback_unless_allowed() {
    let cfg = |endpoint: &str, extra: &str| {
        format!("[accounts.remote]\nendpoint = \"{endpoint}\"\nshared_key_env = \"K\"\n{extra}\n")
    };
    for local in [
        "http://127.0.0.1:10000/acct1",
        "http://127.1.2.3:10000/acct1",
        "http://[::1]:10000/acct1",
        "http://localhost:10000/acct1",
        "https://remoteaccount.blob.core.windows.net",
    ] {
        assert!(parse(&cfg(local, "")).is_ok(), "{local}");
    }
    for remote in [
        "http://remoteaccount.blob.core.windows.net",
        "http://10.0.0.4:10000/acct1",
        "http://[fd00::1]:10000/acct1",
        "http://azurite:10000/acct1",
    ] {
        let p = problems(&cfg(remote, ""));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("account \"remote\": field \"endpoint\"")
                && p[0].contains("plain http")
                && p[0].contains("allow_insecure_http = true in [accounts.remote]"),
            "{}",
            p[0]
        );
        assert!(
            parse(&cfg(remote, "allow_insecure_http = true")).is_ok(),
            "{remote}"
        );
    }
    assert_one(
        &cfg(
            "https://remoteaccount.blob.core.windows.net",
            "allow_insecure_http = \"yes\"",
        ),
        "allow_insecure_http",
    );
}

#[test]
fn every_auth_method() {
    let cases = [
        (
            "shared_key_env = \"K\"",
            AuthConfig::SharedKeyEnv("K".into()),
        ),
        (
            "shared_key_file = \"/k\"",
            AuthConfig::SharedKeyFile("/k".into()),
        ),
        ("sas_token_env = \"S\"", AuthConfig::SasTokenEnv("S".into())),
        (
            "sas_token_file = \"/s\"",
            AuthConfig::SasTokenFile("/s".into()),
        ),
        (
            "managed_identity = true",
            AuthConfig::ManagedIdentity { client_id: None },
        ),
        (
            "managed_identity = true\nclient_id = \"abc\"",
            AuthConfig::ManagedIdentity {
                client_id: Some("abc".into()),
            },
        ),
    ];
    for (line, want) in cases {
        let text =
            format!("[accounts.a]\nendpoint = \"https://acct.blob.core.windows.net\"\n{line}\n");
        assert_eq!(parse(&text).unwrap().accounts["a"].auth, want, "{line}");
    }
}

#[test]
fn every_example_config_parses() {
    let mut n = 0;
    for entry in std::fs::read_dir(example_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = Config::load(&path) {
                panic!("{} should be valid:\n{e}", path.display());
            }
            n += 1;
        }
    }
    assert!(n >= 2, "expected at least the two shipped examples");
}

#[test]
fn every_invalid_example_fails_as_expected() {
    let dir = example_dir().join("invalid");
    let mut n = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        n += 1;
        let expected_path = path.with_extension("expected");
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
        let expected = expected.trim_end_matches(['\n', '\r']);
        assert!(!expected.is_empty(), "{} is empty", expected_path.display());
        match Config::load(&path) {
            Ok(_) => failures.push(format!("{} should be rejected", path.display())),
            Err(e @ ConfigError::Invalid { .. }) => {
                let msg = e.to_string();
                if !msg.contains(expected) {
                    failures.push(format!(
                        "{}: message does not contain {expected:?}:\n{msg}",
                        path.display()
                    ));
                }
                // Every problem line names the file.
                for line in msg.lines() {
                    assert!(line.starts_with(&path.display().to_string()), "{line}");
                }
            }
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(n >= 10, "only {n} invalid examples found");
}

#[test]
fn read_error() {
    let err = Config::load(Path::new("/nonexistent/snapback.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/snapback.toml"));
}

#[test]
fn malformed_toml_names_the_line() {
    let p = problems("state_dir = \"/x\"\nlog_format = \n[accounts.a]\n");
    assert!(p[0].starts_with("snapback.toml:2:"), "{p:?}");
    assert!(p[0].contains("invalid TOML"), "{p:?}");

    let p = problems("a = 1\n[x]\nb = 1\n[x]\n");
    assert!(
        p[0].starts_with("snapback.toml:4:2: invalid TOML: duplicate key \"x\""),
        "{p:?}"
    );
}

#[test]
fn all_problems_reported_with_their_own_lines() {
    let text = r#"max_concurrent_cycles = 0
shutdown_grace = "soon"

[accounts.premium]
endpoint = "https://mypremiumaccount.blob.core.windows.net"

[[disk]]
name = "a"
source = "premium/vhds/a.vhd"
backup = "nowhere/backups/a"
shedule = "0 * * * *"
window = "nope"

[[disk]]
name = "b"
source = "premium/vhds/b.vhd"
backup = "premium/backups/b"
concurrency = 0
"#;
    let p = problems(text);
    let want = [
        "snapback.toml:1:25: field \"max_concurrent_cycles\" must be at least 1, got 0",
        "snapback.toml:2:18: field \"shutdown_grace\": invalid duration \"soon\"",
        "snapback.toml:4:1: account \"premium\": no authentication method",
        "snapback.toml:10:10: disk \"a\": backup refers to unknown account \"nowhere\"",
        "snapback.toml:11:1: disk \"a\": unknown field \"shedule\" (did you mean \"schedule\"?)",
        "snapback.toml:12:10: disk \"a\": field \"window\": invalid window \"nope\"",
        "snapback.toml:18:15: disk \"b\": field \"concurrency\" must be between 1 and 64, got 0",
    ];
    assert_eq!(p.len(), want.len(), "{}", p.join("\n"));
    for (got, want) in p.iter().zip(want) {
        assert!(got.starts_with(want), "got {got:?}, want prefix {want:?}");
    }
    // The Display form is all of them, one per line.
    let msg = parse(text).unwrap_err().to_string();
    assert_eq!(msg.lines().count(), want.len());
}

#[test]
fn unknown_field_suggestions() {
    assert_one(
        &with_disk("name = \"x\"\nsource = \"premium/vhds/x\"\nbackup = \"backup/bak/x\"\ncopymode = \"auto\"\n"),
        "disk \"x\": unknown field \"copymode\" (did you mean \"copy_mode\"?)",
    );
    assert_one(
        "stat_dir = \"/x\"\n",
        "snapback.toml:1:1: unknown field \"stat_dir\" (did you mean \"state_dir\"?)",
    );
    assert_one(
        "[accounts.a]\nendpoint = \"https://a.blob.core.windows.net\"\nshared_key_evn = \"K\"\n",
        "account \"a\": unknown field \"shared_key_evn\" (did you mean \"shared_key_env\"?)",
    );
    // Far from anything: list what is allowed instead.
    assert_one(
        "frobnicate = 1\n",
        "unknown field \"frobnicate\" (expected one of: state_dir,",
    );
}

#[test]
fn unknown_account_reference() {
    let p = problems(&with_disk(
        "name = \"x\"\nsource = \"elsewhere/vhds/x\"\nbackup = \"backup/bak/x\"\n",
    ));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].contains("disk \"x\": source refers to unknown account \"elsewhere\" (defined accounts: backup, premium)"),
        "{p:?}"
    );
    // With no accounts at all.
    assert_one(
        "[[disk]]\nname = \"x\"\nsource = \"a/vhds/x\"\nbackup = \"b/vhds/x\"\n",
        "no [accounts.NAME] sections are defined",
    );
}

#[test]
fn broken_account_does_not_cascade_into_unknown_account() {
    let text = "[accounts.premium]\nendpoint = \"https://pacct.blob.core.windows.net\"\n\
                [accounts.backup]\nendpoint = \"https://bkacct.blob.core.windows.net\"\nshared_key_env = \"B\"\n\
                [[disk]]\nname = \"x\"\nsource = \"premium/vhds/x\"\nbackup = \"backup/bak/x\"\n";
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("no authentication method"));
}

#[test]
fn duplicate_disk_name() {
    let text = format!(
        "{ACCOUNTS}\n[[disk]]\nname = \"x\"\nsource = \"premium/vhds/a\"\nbackup = \"backup/bak/a\"\n\
         [[disk]]\nname = \"x\"\nsource = \"premium/vhds/b\"\nbackup = \"backup/bak/b\"\n"
    );
    let p = problems(&text);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].contains(":15:8: disk \"x\": duplicate disk name (first defined at line 10)"),
        "{p:?}"
    );
}

#[test]
fn invalid_disk_names() {
    for bad in ["", "has space", "a/b", &"x".repeat(64)] {
        assert_one(
            &with_disk(&format!(
                "name = \"{bad}\"\nsource = \"premium/vhds/a\"\nbackup = \"backup/bak/a\"\n"
            )),
            "invalid name",
        );
    }
    let ok = with_disk(&format!(
        "name = \"{}\"\nsource = \"premium/vhds/a\"\nbackup = \"backup/bak/a\"\n",
        "A.b_c-9".repeat(9)
    ));
    assert!(parse(&ok).is_ok());
}

#[test]
fn cron_validation() {
    for good in [
        "0 */12 * * *",
        "*/30 * * * * *",
        "0 0 3 * * MON-FRI",
        "15 2 1 * *",
    ] {
        let t = with_disk(&format!("name = \"x\"\nsource = \"premium/vhds/a\"\nbackup = \"backup/bak/a\"\nschedule = \"{good}\"\n"));
        assert!(parse(&t).is_ok(), "{good}: {:?}", parse(&t).err());
    }
    for (bad, needle) in [
        ("61 * * * *", "invalid cron expression"),
        ("* * 32 * *", "invalid cron expression"),
        ("every hour", "cron expression \"every hour\" has 2 fields"),
        (
            "0 0 0 * * * 2030",
            "cron expression \"0 0 0 * * * 2030\" has 7 fields",
        ),
        ("@daily", "cron expression \"@daily\" has 1 fields"),
        ("", "cron expression \"\" has 0 fields"),
    ] {
        let t = with_disk(&format!("name = \"x\"\nsource = \"premium/vhds/a\"\nbackup = \"backup/bak/a\"\nschedule = \"{bad}\"\n"));
        assert_one(&t, &format!("disk \"x\": field \"schedule\": {needle}"));
    }
}

#[test]
fn window_parsing_and_contains() {
    let w: Window = "22:00-06:00".parse().unwrap();
    assert_eq!((w.start_minute, w.end_minute), (1320, 360));
    assert!(w.contains(1320) && w.contains(1439) && w.contains(0) && w.contains(359));
    assert!(!w.contains(360) && !w.contains(720) && !w.contains(1319));
    let w: Window = "01:30-2:45".parse().unwrap();
    assert_eq!((w.start_minute, w.end_minute), (90, 165));
    assert!(w.contains(90) && w.contains(164) && !w.contains(165) && !w.contains(89));
    let w: Window = "00:00-23:59".parse().unwrap();
    assert!(w.contains(0) && !w.contains(1439));
    let whole = Window {
        start_minute: 5,
        end_minute: 5,
    };
    assert!(whole.contains(0) && whole.contains(1439));
    for bad in [
        "",
        "22:00",
        "24:00-01:00",
        "22:60-01:00",
        "2200-0600",
        "22:0-06:00",
        "ab:cd-ef:gh",
        "10:00-10:00",
    ] {
        assert!(bad.parse::<Window>().is_err(), "{bad}");
    }
    assert_one(
        &with_disk("name = \"x\"\nsource = \"premium/vhds/a\"\nbackup = \"backup/bak/a\"\nwindow = \"22-6\"\n"),
        "disk \"x\": field \"window\": invalid window \"22-6\": expected \"HH:MM-HH:MM\"",
    );
}

#[test]
fn two_auth_methods() {
    let p = problems(
        "[accounts.a]\nendpoint = \"https://acct1.blob.core.windows.net\"\nsas_token_env = \"S\"\nmanaged_identity = true\n",
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].contains("account \"a\": only one authentication method may be set, found sas_token_env and managed_identity"),
        "{p:?}"
    );
}

#[test]
fn no_auth_method() {
    assert_one(
        "[accounts.a]\nendpoint = \"https://acct1.blob.core.windows.net\"\n",
        "snapback.toml:1:1: account \"a\": no authentication method",
    );
    // managed_identity = false is not a method either.
    assert_one(
        "[accounts.a]\nendpoint = \"https://acct1.blob.core.windows.net\"\nmanaged_identity = false\n",
        "no authentication method",
    );
    // A badly typed method is reported as such, not as "missing".
    let p = problems(
        "[accounts.a]\nendpoint = \"https://acct1.blob.core.windows.net\"\nshared_key_env = 3\n",
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].contains("field \"shared_key_env\" must be a string, found integer"),
        "{p:?}"
    );
}

#[test]
fn inline_secrets_rejected_with_hint() {
    let p = problems(
        "[accounts.a]\nendpoint = \"https://acct1.blob.core.windows.net\"\nshared_key = \"c2VjcmV0\"\nshared_key_env = \"K\"\n",
    );
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("snapback.toml:3:1: account \"a\": unknown field \"shared_key\""),
        "{p:?}"
    );
    assert!(
        p[0].contains("use shared_key_env or shared_key_file"),
        "{p:?}"
    );
    assert_one(
        "[accounts.a]\nendpoint = \"https://acct1.blob.core.windows.net\"\nsas_token = \"sv=...\"\n",
        "use sas_token_env or sas_token_file",
    );
}

#[test]
fn env_var_names_checked() {
    assert_one(
        "[accounts.a]\nendpoint = \"https://acct1.blob.core.windows.net\"\nshared_key_env = \"c2VjcmV0Zm9vYmFy==\"\n",
        "must be the *name* of an environment variable",
    );
}

#[test]
fn endpoint_validation() {
    for (ep, needle) in [
        ("not a url", "invalid URL"),
        (
            "ftp://a.blob.core.windows.net",
            "scheme must be http or https",
        ),
        (
            "https://u:p@a.blob.core.windows.net",
            "credentials must not be embedded",
        ),
        ("https://a.blob.core.windows.net?sig=x", "query string"),
        ("http://127.0.0.1:10000", "first path segment"),
        (
            "http://127.0.0.1:10000/acct/container",
            "must be the service root",
        ),
        (
            "https://A_B.blob.core.windows.net",
            "not a valid storage account name",
        ),
    ] {
        assert_one(
            &format!("[accounts.a]\nendpoint = \"{ep}\"\nshared_key_env = \"K\"\n"),
            "snapback.toml:2:12: account \"a\": ",
        );
        assert_one(
            &format!("[accounts.a]\nendpoint = \"{ep}\"\nshared_key_env = \"K\"\n"),
            needle,
        );
    }
    assert_one(
        "[accounts.a]\nendpoint = \"http://127.0.0.1:10000/x\"\naccount_name = \"NO\"\nshared_key_env = \"K\"\n",
        "snapback.toml:3:16: account \"a\": \"NO\" is not a valid storage account name: use 3-24",
    );
}

#[test]
fn same_source_and_backup() {
    assert_one(
        &with_disk("name = \"x\"\nsource = \"premium/vhds/a\"\nbackup = \"premium/vhds/a\"\n"),
        "disk \"x\": backup must be a different blob than source (premium/vhds/a)",
    );
    // Same container and blob on different accounts is fine.
    assert!(parse(&with_disk(
        "name = \"x\"\nsource = \"premium/vhds/a\"\nbackup = \"backup/vhds/a\"\n"
    ))
    .is_ok());
}

#[test]
fn backup_overlaps_between_disks() {
    let text = format!(
        "{ACCOUNTS}\n[[disk]]\nname = \"x\"\nsource = \"premium/vhds/a\"\nbackup = \"backup/bak/a\"\n\
         [[disk]]\nname = \"y\"\nsource = \"backup/bak/a\"\nbackup = \"premium/vhds/a\"\n"
    );
    let p = problems(&text);
    assert!(
        p.iter()
            .any(|m| m.contains("disk \"x\": backup backup/bak/a is the source of disk \"y\"")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|m| m.contains("disk \"y\": backup premium/vhds/a is the source of disk \"x\"")),
        "{p:?}"
    );
}

#[test]
fn global_apply_limits_are_bounded() {
    let disk = "name = \"x\"\nsource = \"premium/vhds/a\"\nbackup = \"backup/bak/a\"\n";
    for (line, needle) in [
        (
            "max_inflight_requests = 0",
            "field \"max_inflight_requests\" must be between 1 and 1024, got 0",
        ),
        (
            "max_inflight_requests = 1025",
            "field \"max_inflight_requests\" must be between 1 and 1024, got 1025",
        ),
        (
            "max_inflight_requests = \"8\"",
            "field \"max_inflight_requests\" must be an integer, found string",
        ),
        (
            "max_buffer_mib = 3",
            "field \"max_buffer_mib\" must be between 4 and 65536, got 3",
        ),
        (
            "max_buffer_mib = 1.5",
            "field \"max_buffer_mib\" must be an integer",
        ),
    ] {
        let p = problems(&format!("{line}\n{}", with_disk(disk)));
        assert!(p.iter().any(|m| m.contains(needle)), "{line}: {p:?}");
    }
    let c = parse(&format!(
        "max_inflight_requests = 7\nmax_buffer_mib = 8\n{}",
        with_disk(disk)
    ))
    .unwrap();
    assert_eq!(c.max_inflight_requests, 7);
    assert_eq!(c.max_buffer_mib, 8);
}

#[test]
fn disk_field_types_and_ranges() {
    let d = "name = \"x\"\nsource = \"premium/vhds/a\"\nbackup = \"backup/bak/a\"\n";
    for (extra, needle) in [
        (
            "concurrency = 65",
            "field \"concurrency\" must be between 1 and 64, got 65",
        ),
        (
            "concurrency = \"8\"",
            "field \"concurrency\" must be an integer, found string",
        ),
        ("jitter = 300", "field \"jitter\" must be a duration string"),
        ("jitter = \"5min\"", "unknown unit \"min\""),
        (
            "verify = \"always\"",
            "field \"verify\" must be one of \"never\", \"after-cycle\", got \"always\"",
        ),
        ("tz = \"Europe Paris\"", "is not a time zone name"),
        ("tz = \"\"", "is not a time zone name"),
        ("retention = 3", "field \"retention\" must be a table"),
        (
            "retention = { daily = -1 }",
            "retention: field \"daily\" must be at least 0, got -1",
        ),
        (
            "retention = { daily = 4294967296 }",
            "retention: field \"daily\" must be at least 0, got 4294967296",
        ),
    ] {
        assert_one(&with_disk(&format!("{d}{extra}\n")), needle);
    }
    let c = parse(&with_disk(&format!(
        "{d}concurrency = 64\ncopy_mode = \"auto\"\nverify = \"after-cycle\"\njitter = \"1h30m\"\n\
         [disk.retention]\nkeep_last = 0\nmonthly = 4294967295\n"
    )))
    .unwrap();
    let disk = &c.disks[0];
    assert_eq!(disk.concurrency, 64);
    assert_eq!(disk.copy_mode, CopyMode::Auto);
    assert_eq!(disk.verify, VerifyMode::AfterCycle);
    assert_eq!(disk.jitter, Some(Duration::from_secs(5400)));
    assert_eq!(disk.retention.keep_last, Some(0));
    assert_eq!(disk.retention.monthly, Some(u32::MAX));
    assert_eq!(disk.retention.daily, None);
}

#[test]
fn missing_required_disk_fields() {
    let p = problems(&format!("{ACCOUNTS}\n[[disk]]\nconcurrency = 2\n"));
    let all = p.join("\n");
    for f in ["name", "source", "backup"] {
        assert!(
            all.contains(&format!(":10:1: disk #1: missing required field \"{f}\"")),
            "{all}"
        );
    }
}

#[test]
fn top_level_types() {
    assert_one(
        "metrics_listen = \"localhost:9464\"\n",
        "invalid socket address \"localhost:9464\"",
    );
    assert_one(
        "log_format = \"xml\"\n",
        "field \"log_format\" must be one of \"text\", \"json\", got \"xml\"",
    );
    assert_one(
        "max_concurrent_cycles = \"4\"\n",
        "must be an integer, found string",
    );
    assert_one(
        "state_dir = \"\"\n",
        "field \"state_dir\" must not be empty",
    );
    assert_one("accounts = 3\n", "field \"accounts\" must be a table");
    assert_one(
        "[accounts]\npremium = 3\n",
        "account \"premium\": must be a table",
    );
    assert_one(
        &format!("control_socket = \"/{}\"\n", "x".repeat(120)),
        "the limit for a unix socket",
    );
    assert_one(
        &format!("state_dir = \"/{}\"\n", "x".repeat(100)),
        "set control_socket to a shorter path",
    );
    let c = parse(
        "metrics_listen = \"[::]:9464\"\nshutdown_grace = \"500ms\"\nmax_concurrent_cycles = 1\n",
    )
    .unwrap();
    assert_eq!(c.metrics_listen, Some("[::]:9464".parse().unwrap()));
    assert_eq!(c.shutdown_grace, Duration::from_millis(500));
    assert_eq!(c.max_concurrent_cycles, 1);
}

#[test]
fn copy_stall_timeout_is_a_duration_above_zero() {
    let c = parse("copy_stall_timeout = \"2s\"\n").unwrap();
    assert_eq!(c.copy_stall_timeout, Duration::from_secs(2));
    assert_eq!(
        problems("copy_stall_timeout = \"0s\"\n"),
        ["snapback.toml:1:22: field \"copy_stall_timeout\" must be more than 0s"]
    );
    assert_one(
        "copy_stall_timeout = \"30\"\n",
        "snapback.toml:1:22: field \"copy_stall_timeout\": invalid duration \"30\": missing unit",
    );
    assert_one(
        "copy_stall_timeout = 30\n",
        "field \"copy_stall_timeout\" must be a duration string",
    );
}

#[test]
fn durations() {
    let ok = [
        ("30s", 30_000),
        ("5m", 300_000),
        ("1h", 3_600_000),
        ("500ms", 500),
        ("2d", 172_800_000),
        ("1h30m", 5_400_000),
        ("1m 30s", 90_000),
        (" 0s ", 0),
    ];
    for (s, ms) in ok {
        assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
    }
    for bad in [
        "",
        "30",
        "s",
        "1.5h",
        "-1s",
        "5 m",
        "10y",
        "99999999999999999999s",
        "18446744073709551615d",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
    assert!(parse_duration("30").unwrap_err().contains("missing unit"));
}

#[test]
fn blob_paths() {
    let b: BlobRef = "premium/vhds/dir/sub/disk.vhd".parse().unwrap();
    assert_eq!(b.account, "premium");
    assert_eq!(b.container, "vhds");
    assert_eq!(b.blob, "dir/sub/disk.vhd");
    assert_eq!(b.to_string(), "premium/vhds/dir/sub/disk.vhd");
    assert!("a/$root/x".parse::<BlobRef>().is_ok());
    for (bad, needle) in [
        ("premium", "expected \"account/container/blob\""),
        ("premium/vhds", "expected \"account/container/blob\""),
        ("/vhds/x", "empty account"),
        ("a//x", "empty container"),
        ("a/vhds/", "empty blob name"),
        ("a/VHDs/x", "not a valid container name"),
        ("a/ab/x", "not a valid container name"),
        ("a/a--b/x", "not a valid container name"),
        ("a/vhds//x", "must not start or end with '/'"),
    ] {
        let e = bad.parse::<BlobRef>().unwrap_err();
        assert!(e.contains(needle), "{bad}: {e}");
    }
}

#[test]
fn disk_must_be_array_of_tables() {
    assert_one(
        &format!("{ACCOUNTS}\n[disk]\nname = \"x\"\n"),
        "\"disk\" must be an array of tables: write each disk as a [[disk]] section (found table)",
    );
}

#[test]
fn edit_distance_basics() {
    assert_eq!(edit_distance("", ""), 0);
    assert_eq!(edit_distance("shedule", "schedule"), 1);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
    assert_eq!(closest("windo", DISK_FIELDS), Some("window"));
    assert_eq!(closest("zzzzzz", DISK_FIELDS), None);
}

#[test]
fn line_col_is_char_based() {
    let p = problems("# é\nstate_dir = \"\"\n \"é\" = 1\n");
    assert!(p[0].starts_with("snapback.toml:2:13:"), "{p:?}");
    assert!(p[1].starts_with("snapback.toml:3:2:"), "{p:?}");
}

const MD: &str =
    "/subscriptions/00000000-0000-4000-8000-000000000001/resourceGroups/rg-vms/providers/Microsoft.Compute/disks/db01-data";
const AZURE: &str = "\n[azure]\nmanaged_identity = true\n";

#[test]
fn managed_disk_with_azure_table() {
    let text = format!(
        "{}{AZURE}",
        with_disk(&format!(
            "name = \"db01\"\nmanaged_disk = \"{MD}\"\nsnapshot_resource_group = \"rg-snap\"\nbackup = \"backup/backups/db01\"\n"
        ))
    );
    let c = parse(&text).unwrap();
    let d = c.disk("db01").unwrap();
    match &d.source {
        DiskSource::Managed {
            disk,
            snapshot_group,
        } => {
            assert_eq!(disk.to_string(), MD);
            assert_eq!(snapshot_group.name, "rg-snap");
            assert_eq!(snapshot_group.subscription, disk.group.subscription);
        }
        other => panic!("not a managed disk: {other:?}"),
    }
    // Its recorded form names the snapshot group, which is not the disk's own; it reads back,
    // and a record from before groups were named (the bare id) still matches it.
    let recorded = d.source.to_string();
    let DiskSource::Managed { disk, .. } = &d.source else {
        unreachable!("checked above")
    };
    let sub = &disk.group.subscription;
    assert_eq!(
        recorded,
        format!("{MD} snapshots=/subscriptions/{sub}/resourceGroups/rg-snap")
    );
    let (disk, group) = DiskSource::parse_managed(&recorded).unwrap();
    assert_eq!(
        (disk.to_string(), group.name.as_str()),
        (MD.to_string(), "rg-snap")
    );
    assert!(d.source.is_recorded_as(&recorded));
    assert!(d.source.is_recorded_as(MD));
    assert!(!d.source.is_recorded_as(&format!(
        "{MD} snapshots=/subscriptions/x/resourceGroups/rg-other"
    )));
    assert!(c.azure.is_some());
}

#[test]
fn managed_disk_contract_errors_name_the_disk_and_fields() {
    let both = format!(
        "{}{AZURE}",
        with_disk(&format!(
            "name = \"db01\"\nsource = \"premium/vhds/a.vhd\"\nmanaged_disk = \"{MD}\"\nbackup = \"backup/backups/db01\"\n"
        ))
    );
    assert_one(
        &both,
        "disk \"db01\": give either \"source\" (a page blob) or \"managed_disk\"",
    );
    let no_azure = with_disk(&format!(
        "name = \"db01\"\nmanaged_disk = \"{MD}\"\nbackup = \"backup/backups/db01\"\n"
    ));
    assert_one(
        &no_azure,
        "disk \"db01\": managed_disk needs an [azure] table",
    );
    let bad_id = format!(
        "{}{AZURE}",
        with_disk("name = \"db01\"\nmanaged_disk = \"/subscriptions/nope/disks/x\"\nbackup = \"backup/backups/db01\"\n")
    );
    assert_one(
        &bad_id,
        "disk \"db01\": field \"managed_disk\": invalid resource id",
    );
    let snapshot_id = MD.replace("/disks/", "/snapshots/");
    let not_disk = format!(
        "{}{AZURE}",
        with_disk(&format!(
            "name = \"db01\"\nmanaged_disk = \"{snapshot_id}\"\nbackup = \"backup/backups/db01\"\n"
        ))
    );
    assert_one(&not_disk, "is not a disk");
    let stray = with_disk(
        "name = \"db01\"\nsource = \"premium/vhds/a.vhd\"\nsnapshot_resource_group = \"rg\"\nbackup = \"backup/backups/db01\"\n",
    );
    assert_one(
        &stray,
        "snapshot_resource_group applies to a managed_disk only",
    );
    let neither = with_disk("name = \"db01\"\nbackup = \"backup/backups/db01\"\n");
    assert_one(&neither, "missing required field \"source\"");
    let bad_azure = format!(
        "{}\n[azure]\nmanaged_identity = true\nazure_cli = true\n",
        with_disk(&format!(
            "name = \"db01\"\nmanaged_disk = \"{MD}\"\nbackup = \"backup/backups/db01\"\n"
        ))
    );
    assert_one(&bad_azure, "azure: more than one credential");
}

#[test]
fn hooks_are_kept_from_every_secret_variable() {
    let cfg = parse(
        r#"
[azure]
tenant_id = "00000000-0000-0000-0000-000000000001"
client_id = "00000000-0000-0000-0000-000000000002"
client_secret_env = "ARM_SECRET"
[accounts.a]
endpoint = "http://127.0.0.1:10000/acct1"
shared_key_env = "A_KEY"
[accounts.b]
endpoint = "http://127.0.0.1:10000/acct2"
sas_token_env = "B_SAS"
"#,
    )
    .unwrap();
    let mut vars = cfg.secret_env_vars();
    vars.sort();
    assert_eq!(vars, ["ARM_SECRET", "A_KEY", "B_SAS"]);
}
