//! The monitoring kit against a real daemon and Azurite: `/metrics` passes `promtool check
//! metrics`, the alert rules pass `promtool check rules` and their unit tests, every metric
//! the rules and the Grafana dashboard use is exposed, and `/readyz` follows the storage
//! accounts' answers.
//!
//! promtool is required (Debian: `apt-get install prometheus`; `.ci/run` installs it): a
//! missing promtool fails these tests rather than skipping them.

mod common;

use common::daemon::DaemonProc;
use common::daemon::{disk_section, eventually, free_port, http_get, metric, prepend_config};
use common::fixture::{create_disk, write, Fixture, Rng, MIB};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

/// Runs promtool; (success, stdout + stderr).
fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed: install Debian's `prometheus` package \
             (apt-get install -y prometheus; the server need not run) or put promtool on PATH \
             (.ci/run installs it)"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    let mut input = child.stdin.take().expect("stdin piped");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .expect("write to promtool");
    drop(input);
    let out = child.wait_with_output().expect("wait for promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("$ promtool {}\n{text}", args.join(" "));
    (out.status.success(), text)
}

/// GET with an `Accept` header: (status, content type, body).
fn get_accept(port: u16, path: &str, accept: &str) -> (u16, String, String) {
    let a = common::http::request_with(port, "GET", path, &[("Accept", accept)], "content-type")
        .expect("GET");
    (a.status, a.header, a.body)
}

/// Sample names in a text exposition (`name{...} v` or `name v`).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// `snapback_*` names a rules file or dashboard refers to.
fn referenced_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("snapback_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_rules_and_dashboard_pass_promtool_and_match() {
    let fx = Fixture::with_extra(&disk_section("disk1", "schedule = \"*/2 * * * * *\""));
    let port = free_port();
    prepend_config(&fx, &format!("metrics_listen = \"127.0.0.1:{port}\""));
    let blobs = fx.blobs();
    create_disk(blobs.as_ref(), &fx.source("disk1"), 4 * MIB).await;
    write(
        blobs.as_ref(),
        &fx.source("disk1"),
        0,
        &Rng(1).bytes(MIB as usize),
    )
    .await;

    let d = DaemonProc::spawn(&fx);
    let mut body = String::new();
    let scraped = eventually(Duration::from_secs(30), || {
        body = http_get(port, "/metrics").map(|r| r.1).unwrap_or_default();
        std::future::ready(metric(&body, "snapback_restore_points{disk=\"disk1\"}") >= Some(1.0))
    })
    .await;
    assert!(
        scraped,
        "no restore point in the metrics:\n{body}\n{}",
        d.stderr()
    );
    // One reload, so that the reload counter has a sample for the name check below.
    d.signal("HUP");
    assert!(
        eventually(Duration::from_secs(10), || std::future::ready(
            http_get(port, "/metrics").is_ok_and(|r| r
                .1
                .contains("snapback_config_reloads_total{result=\"ok\"} 1"))
        ))
        .await,
        "{}",
        d.stderr()
    );
    let (code, ctype, text) = get_accept(port, "/metrics", "*/*");
    assert_eq!(
        (code, ctype.as_str()),
        (200, "text/plain; version=0.0.4; charset=utf-8")
    );

    // promtool reads the text format: no problem at all.
    let (ok, out) = promtool(&["check", "metrics"], Some(&text));
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics:\n{out}\n{text}"
    );

    // The new series hold what happened.
    let points = metric(&text, "snapback_restore_points{disk=\"disk1\"}").unwrap();
    let newest = metric(
        &text,
        "snapback_newest_restore_point_timestamp_seconds{disk=\"disk1\"}",
    )
    .unwrap();
    let last = metric(
        &text,
        "snapback_last_success_timestamp_seconds{disk=\"disk1\"}",
    )
    .unwrap();
    assert!(points >= 1.0, "{text}");
    assert!(newest > 1.7e9 && newest <= last + 1.0, "{newest} vs {last}");
    assert_eq!(
        metric(&text, "snapback_schedule_interval_seconds{disk=\"disk1\"}"),
        Some(2.0)
    );
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(
        text.lines()
            .any(|l| l.starts_with("snapback_build_info{") && l.contains(&version)),
        "{text}"
    );
    assert_eq!(http_get(port, "/readyz").unwrap(), (200, "ready\n".into()));

    // Prometheus asks for OpenMetrics and gets it.
    let (_, ctype, om) = get_accept(
        port,
        "/metrics",
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    );
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(om.ends_with("# EOF\n") && om.contains("# TYPE snapback_cycles counter"));

    // Every metric the rules and the dashboard use is exposed.
    let exposed = sample_names(&text);
    for file in ["prometheus/snapback-rules.yml", "grafana/snapback.json"] {
        let src = std::fs::read_to_string(deploy(file)).unwrap();
        let used = referenced_names(&src);
        assert!(used.len() >= 5, "{file}: {used:?}");
        let missing: Vec<_> = used.difference(&exposed).collect();
        assert!(
            missing.is_empty(),
            "{file} uses unexposed {missing:?}; exposed: {exposed:?}"
        );
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/snapback.json")).unwrap())
            .expect("the dashboard is valid JSON");
    assert!(dashboard["panels"]
        .as_array()
        .is_some_and(|p| p.len() >= 10));

    // The rules: valid, and their unit tests pass.
    let rules = deploy("prometheus/snapback-rules.yml");
    let (ok, out) = promtool(&["check", "rules", rules.to_str().unwrap()], None);
    assert!(ok && out.contains("SUCCESS: 6 rules found"), "{out}");
    let tests = deploy("prometheus/snapback-rules.test.yml");
    let (ok, out) = promtool(&["test", "rules", tests.to_str().unwrap()], None);
    assert!(ok && out.contains("SUCCESS"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_with_the_reason_while_credentials_are_refused() {
    let fx = Fixture::with_extra(&disk_section("disk1", "schedule = \"0 0 0 1 1 *\""));
    let port = free_port();
    prepend_config(&fx, &format!("metrics_listen = \"127.0.0.1:{port}\""));
    // A well-formed key that is not the account's.
    let wrong = "d3Jvbmcga2V5IGZvciB0aGUgcHJlbWl1bSBhY2NvdW50IGluIHRoaXMgdGVzdA==";
    let mut d = DaemonProc::spawn_with_env(&fx, &[("SB_TEST_PREMIUM_KEY", wrong)]);
    let mut last = (0, String::new());
    let refused = eventually(Duration::from_secs(20), || {
        last = http_get(port, "/readyz").unwrap_or_default();
        std::future::ready(last.1.contains("authentication failed"))
    })
    .await;
    assert!(refused, "{last:?}\n{}", d.stderr());
    assert_eq!(last.0, 503);
    assert!(
        last.1.starts_with("not ready: account 'premium'"),
        "{}",
        last.1
    );
    // Alive all the same: a restart would not fix a key.
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);
    d.signal("TERM");
    assert!(d.wait_exit(Duration::from_secs(10)).is_some());

    // With the right key (and a source blob that does not exist yet: still an answer).
    let d = DaemonProc::spawn(&fx);
    let ready = eventually(Duration::from_secs(20), || {
        last = http_get(port, "/readyz").unwrap_or_default();
        std::future::ready(last.0 == 200)
    })
    .await;
    assert!(ready, "{last:?}\n{}", d.stderr());
}
