//! Issue 9 item 7: secrets never leave. Driven through the `snapback` binary against Azurite
//! (through the fault proxy, which also records what a copy request lets the service read):
//! a SAS-token source account and a shared-key backup account, a failing and succeeding
//! cycles at `SNAPBACK_LOG=trace`, then every place a secret could surface is searched for
//! it — the commands' output, `status` (text and JSON), `list`, `verify`, the daemon's log
//! and `/metrics`, the hooks' environment and webhook bodies, and every byte of the state
//! directory (the SQLite files). The closed-port case is `trust::sas_signature_never_leaves_with_an_unreachable_endpoint`.

mod common;

use common::azurite::{BACKUP_KEY, PREMIUM_KEY};
use common::daemon::{eventually, http_get, prepend_config, DaemonProc};
use common::faultproxy::{Fault, FaultProxy, Op, Rule};
use common::fixture::{account_sas, content, create_disk, run_bounded, write, Fixture, Rng, MIB};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

const LIMIT: Duration = Duration::from_secs(150);

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    )
}

/// A fixture whose `premium` account (the source) authenticates with an account SAS from
/// `$SB_TEST_PREMIUM_SAS`, routed through a fault proxy; `backup` keeps its Shared Key.
fn sas_source_fixture(extra: &str) -> (Fixture, FaultProxy, String) {
    let fx = Fixture::with_extra(&format!(
        "[[disk]]\nname = \"d1\"\nsource = \"premium/vhds/d1.vhd\"\nbackup = \"backup/backups/d1\"\n{extra}\n"
    ));
    let proxy = FaultProxy::start(fx.azurite.port());
    fx.route_through(proxy.port());
    let cfg = std::fs::read_to_string(&fx.config_path).unwrap();
    std::fs::write(
        &fx.config_path,
        cfg.replacen(
            "shared_key_env = \"SB_TEST_PREMIUM_KEY\"",
            "sas_token_env = \"SB_TEST_PREMIUM_SAS\"",
            1,
        ),
    )
    .unwrap();
    (fx, proxy, account_sas("premium", PREMIUM_KEY, "rwdlac"))
}

/// `snapback ARGS` at trace level with the SAS in its environment and the premium key *not*
/// in it (the account no longer uses it: it must not be able to leak what it never had).
fn command(fx: &Fixture, sas: &str, args: &[&str]) -> Command {
    let mut cmd = fx.command(args);
    cmd.env("SB_TEST_PREMIUM_SAS", sas)
        .env_remove("SB_TEST_PREMIUM_KEY")
        .env("SNAPBACK_LOG", "trace");
    cmd
}

fn run(fx: &Fixture, sas: &str, args: &[&str]) -> Output {
    run_bounded(command(fx, sas, args), LIMIT).unwrap_or_else(|o| {
        panic!(
            "snapback {args:?} still running after {LIMIT:?}: {}",
            text(&o)
        )
    })
}

/// Where in `haystack` a secret shows: one of `secrets` verbatim, or a `sig=` / `SharedKey ` /
/// `Bearer ` whose value is not `REDACTED`.
fn leaks(haystack: &str, secrets: &[String]) -> Vec<String> {
    let mut found: Vec<String> = secrets
        .iter()
        .filter(|s| haystack.contains(s.as_str()))
        .map(|s| format!("the secret {}…", &s[..6]))
        .collect();
    let lower = haystack.to_ascii_lowercase();
    for (pat, hay) in [
        ("sig=", lower.as_str()),
        ("SharedKey ", haystack),
        ("Bearer ", haystack),
    ] {
        for (i, _) in hay.match_indices(pat) {
            let after = &haystack[i + pat.len()..];
            let before_ok = i == 0
                || !haystack[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            if before_ok && !after.starts_with("REDACTED") {
                found.push(format!(
                    "{:?}",
                    haystack[i..].chars().take(60).collect::<String>()
                ));
            }
        }
    }
    found
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// An HTTP server on 127.0.0.1 that answers every POST 200 and keeps the bodies; it lives
/// as long as the test process. Returns its URL.
fn webhook_sink() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(stream);
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok() {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
            }
            let _ = reader
                .into_inner()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, bodies)
}

/// The values of the SAS parameters in a copy source URL.
fn sas_params(url: &str) -> std::collections::HashMap<String, String> {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// A SAS-token source and a shared-key backup: a cycle that fails (every read of the source
/// cut mid-answer), two that succeed (a seed, an incremental), `status`, `list`, `verify`, a
/// daemon serving `/metrics`, hooks dumping their environment, a webhook — and no secret
/// anywhere.
/// The seed from the SAS-token source is copied through snapback: the configured token is
/// never handed to the backup service (no Copy Blob, no Put Page From URL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_leaves_after_failing_and_succeeding_runs() {
    let (fx, proxy, sas) = sas_source_fixture("");
    let hook_env = fx.dir.path().join("hook-env");
    let dump = format!("env >> {}", hook_env.display());
    let (webhook, posted) = webhook_sink();
    let cfg = std::fs::read_to_string(&fx.config_path).unwrap();
    std::fs::write(
        &fx.config_path,
        format!(
            "{cfg}\n[hooks]\non_success = [\"sh\", \"-c\", \"{dump}\"]\non_failure = [\"sh\", \"-c\", \"{dump}\"]\nwebhook = \"{webhook}\"\n"
        ),
    )
    .unwrap();
    let blobs = fx.blobs();
    let source = fx.source("d1");
    let mut rng = Rng(0x5ec7e7);
    create_disk(blobs.as_ref(), &source, 4 * MIB).await;
    write(blobs.as_ref(), &source, 0, &rng.bytes(MIB as usize)).await;

    let mut outputs: Vec<(String, String)> = Vec::new();
    // Fails: every read of the source is cut mid-answer (the transport error quotes the URL).
    let cut = proxy.add(
        Rule::new(Fault::ResetResponseBody)
            .op(Op::GetBlob)
            .account("premium"),
    );
    let failed = run(&fx, &sas, &["backup", "d1"]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    assert!(proxy.stats(cut).injected > 0, "the fault was injected");
    outputs.push(("failing backup".into(), text(&failed)));
    proxy.clear_rules();

    let seed = run(&fx, &sas, &["backup", "d1"]);
    assert!(seed.status.success(), "seed: {}", text(&seed));
    outputs.push(("seed".into(), text(&seed)));
    write(blobs.as_ref(), &source, 2 * MIB, &rng.bytes(64 * 1024)).await;
    let incr = run(&fx, &sas, &["backup", "d1"]);
    assert!(incr.status.success(), "incremental: {}", text(&incr));
    outputs.push(("incremental".into(), text(&incr)));
    assert!(
        text(&incr).contains("TRACE"),
        "trace level is on: {}",
        text(&incr)
    );

    // The configured SAS never left as a copy source: the seed went through snapback.
    let copies: Vec<_> = proxy
        .seen()
        .into_iter()
        .filter(|s| matches!(s.op, Op::CopyBlob | Op::PutPageFromUrl))
        .collect();
    assert!(copies.is_empty(), "copy requests sent: {copies:?}");
    for args in [
        &["status"][..],
        &["status", "--json"][..],
        &["list", "d1", "--json"][..],
        &["verify", "d1"][..],
    ] {
        let out = run(&fx, &sas, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        outputs.push((args.join(" "), text(&out)));
    }
    // The backup base is the source as it is now (verify checked the restore point).
    assert_eq!(
        content(blobs.as_ref(), &fx.backup("d1"), None).await,
        content(blobs.as_ref(), &source, None).await
    );

    // The daemon: its log and /metrics (which carry the last error and the counters).
    prepend_config(&fx, "metrics_listen = \"127.0.0.1:0\"");
    let daemon = DaemonProc::spawn_command(command(&fx, &sas, &["run"]));
    let mut port = None;
    eventually(Duration::from_secs(15), || {
        port = daemon.stderr().lines().find_map(|l| {
            l.split("serving /metrics")
                .nth(1)?
                .split("127.0.0.1:")
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u16>()
                .ok()
        });
        std::future::ready(port.is_some())
    })
    .await;
    let port = port.unwrap_or_else(|| panic!("no metrics address logged:\n{}", daemon.stderr()));
    let (code, metrics) = http_get(port, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("snapback_"), "{metrics}");
    outputs.push(("/metrics".into(), metrics));
    outputs.push(("daemon log".into(), daemon.stderr()));
    drop(daemon);

    let hooks = std::fs::read_to_string(&hook_env).expect("the hooks ran");
    assert!(hooks.contains("SNAPBACK_EVENT="), "{hooks}");
    outputs.push(("hook environments".into(), hooks));
    let posted = posted.lock().unwrap().clone();
    assert_eq!(posted.len(), 3, "one webhook call per cycle: {posted:?}");
    assert!(
        posted
            .iter()
            .any(|b| b.contains("\"error\"") && b.contains("d1")),
        "{posted:?}"
    );
    outputs.push(("webhook bodies".into(), posted.join("\n")));
    let mut files = Vec::new();
    files_under(&fx.dir.path().join("state"), &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("snapback.db")),
        "{files:?}"
    );
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        outputs.push((
            f.display().to_string(),
            String::from_utf8_lossy(&bytes).into_owned(),
        ));
    }

    let params = sas_params(&format!("?{sas}"));
    let sig = params["sig"].clone();
    let encoded: String = url::form_urlencoded::byte_serialize(sig.as_bytes()).collect();
    let secrets = vec![
        sig,
        encoded,
        PREMIUM_KEY.to_string(),
        BACKUP_KEY.to_string(),
    ];
    let found: Vec<String> = outputs
        .iter()
        .flat_map(|(name, t)| {
            leaks(t, &secrets)
                .into_iter()
                .map(move |l| format!("{name}: {l}"))
        })
        .collect();
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));
}

/// The SAS snapback mints for a shared-key source (here the seed's Copy Blob) is read-only,
/// for the one source snapshot, and short-lived (≤ 15 min + 5 min clock-skew allowance); its
/// signature is not in the trace-level log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_copy_source_sas_is_read_only_for_one_snapshot_and_short_lived() {
    let fx = Fixture::with_extra(
        "[[disk]]\nname = \"d1\"\nsource = \"premium/vhds/d1.vhd\"\nbackup = \"backup/backups/d1\"\n",
    );
    let proxy = FaultProxy::start(fx.azurite.port());
    fx.route_through(proxy.port());
    let blobs = fx.blobs();
    create_disk(blobs.as_ref(), &fx.source("d1"), MIB).await;
    write(
        blobs.as_ref(),
        &fx.source("d1"),
        0,
        &Rng(7).bytes(64 * 1024),
    )
    .await;
    let started = SystemTime::now();
    let mut cmd = fx.command(&["backup", "d1"]);
    cmd.env("SNAPBACK_LOG", "trace");
    let out = run_bounded(cmd, LIMIT).expect("bounded");
    assert!(out.status.success(), "{}", text(&out));
    let copy = proxy
        .seen()
        .into_iter()
        .find(|s| s.op == Op::CopyBlob)
        .expect("the seed used Copy Blob");
    let url = copy.copy_source.expect("x-ms-copy-source");
    let p = sas_params(&url);
    assert_eq!(p["sp"], "r", "{url}");
    assert_eq!(p["sr"], "bs", "{url}");
    assert!(p.contains_key("snapshot"), "{url}");
    assert!(
        !p.contains_key("spr"),
        "http endpoint: no https-only flag: {url}"
    );
    let parse = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{t}: {e}"))
    };
    let now = time::OffsetDateTime::from(started);
    let (st, se) = (parse(&p["st"]), parse(&p["se"]));
    assert!(se - st <= time::Duration::minutes(20), "{url}");
    assert!(se <= now + time::Duration::minutes(16), "{url}");
    assert!(st <= now, "{url}");
    // The minted signature is a secret too: not in the trace-level log.
    let sig = p["sig"].clone();
    let encoded: String = url::form_urlencoded::byte_serialize(sig.as_bytes()).collect();
    let found = leaks(&text(&out), &[sig, encoded]);
    assert!(found.is_empty(), "{found:?}");
}

/// A SAS token file that group or others may read is refused, naming the file and the fix;
/// nothing is sent to that account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sas_token_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (fx, proxy, sas) = sas_source_fixture("");
    create_disk(fx.blobs().as_ref(), &fx.source("d1"), MIB).await;
    let file = fx.dir.path().join("premium.sas");
    std::fs::write(&file, &sas).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let cfg = std::fs::read_to_string(&fx.config_path).unwrap();
    std::fs::write(
        &fx.config_path,
        cfg.replace(
            "sas_token_env = \"SB_TEST_PREMIUM_SAS\"",
            &format!("sas_token_file = \"{}\"", file.display()),
        ),
    )
    .unwrap();
    let out = run(&fx, "", &["backup", "d1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&file.display().to_string()),
        "names the file: {t}"
    );
    assert!(t.contains("sas_token_file"), "names the field: {t}");
    assert!(
        t.contains("mode 0640") && t.contains("chmod 600"),
        "says the fix: {t}"
    );
    assert!(
        proxy.seen().iter().all(|s| s.account != "premium"),
        "nothing sent to premium"
    );
    // Once only its owner can read it, the same file works.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run(&fx, "", &["backup", "d1"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// A SAS-token *backup* account: its token stays within its own account. A restore inside it
/// (promote, then copy to a blob of the same account) works and its bytes equal the source
/// snapshot; a restore to another account is refused with a message naming the account,
/// and no request carries the token to the other account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sas_token_backup_account_keeps_its_token_to_itself() {
    let fx = Fixture::with_extra(
        "[[disk]]\nname = \"d1\"\nsource = \"premium/vhds/d1.vhd\"\nbackup = \"backup/backups/d1\"\n",
    );
    let proxy = FaultProxy::start(fx.azurite.port());
    fx.route_through(proxy.port());
    let cfg = std::fs::read_to_string(&fx.config_path).unwrap();
    std::fs::write(
        &fx.config_path,
        cfg.replacen(
            "shared_key_env = \"SB_TEST_BACKUP_KEY\"",
            "sas_token_env = \"SB_TEST_BACKUP_SAS\"",
            1,
        ),
    )
    .unwrap();
    let sas = account_sas("backup", BACKUP_KEY, "rwdlac");
    let snapback = |args: &[&str]| {
        let mut cmd = fx.command(args);
        cmd.env("SB_TEST_BACKUP_SAS", &sas)
            .env_remove("SB_TEST_BACKUP_KEY");
        run_bounded(cmd, LIMIT).expect("bounded")
    };
    let blobs = fx.blobs();
    create_disk(blobs.as_ref(), &fx.source("d1"), MIB).await;
    write(
        blobs.as_ref(),
        &fx.source("d1"),
        0,
        &Rng(9).bytes(256 * 1024),
    )
    .await;
    let out = snapback(&["backup", "d1"]);
    assert!(out.status.success(), "{}", text(&out));
    let list = snapback(&["list", "d1", "--json"]);
    let points: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).expect("list");
    let point = points.last().expect("a restore point")["snapshot"]
        .as_str()
        .unwrap()
        .to_string();

    let inside = snapback(&[
        "restore",
        "d1",
        "--snapshot",
        &point,
        "--to",
        "backup/restored/d1",
    ]);
    assert!(inside.status.success(), "{}", text(&inside));
    assert_eq!(
        content(
            blobs.as_ref(),
            &snapback::storage::BlobRef::new("backup", "restored", "d1"),
            None
        )
        .await,
        content(blobs.as_ref(), &fx.source("d1"), None).await,
        "the restore inside the SAS account has the source's bytes"
    );

    let outside = snapback(&[
        "restore",
        "d1",
        "--snapshot",
        &point,
        "--to",
        "premium/restored/d1",
    ]);
    assert_eq!(outside.status.code(), Some(1), "{}", text(&outside));
    assert!(
        text(&outside).contains("account 'backup' authenticates with a SAS token"),
        "{}",
        text(&outside)
    );
    let sig = sas_params(&format!("?{sas}"))["sig"].clone();
    let encoded: String = url::form_urlencoded::byte_serialize(sig.as_bytes()).collect();
    for s in proxy.seen() {
        if s.account == "premium" {
            let source = s.copy_source.unwrap_or_default();
            assert!(
                !source.contains(&sig) && !source.contains(&encoded),
                "the backup account's token was sent to premium: {:?}",
                s.op
            );
        }
    }
}

/// `snapback check` on a SAS-token source: the copy row passes, saying that cycles copy
/// through snapback (the token is never a copy source), and no Copy Blob is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_on_a_sas_token_source_says_cycles_copy_through_snapback() {
    let (fx, proxy, sas) = sas_source_fixture("");
    create_disk(fx.blobs().as_ref(), &fx.source("d1"), MIB).await;
    let mut cmd = command(&fx, &sas, &["check", "--json"]);
    cmd.env("SNAPBACK_LOG", "info");
    let out = run_bounded(cmd, LIMIT).expect("bounded");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let copy = rows
        .iter()
        .find(|r| r["operation"] == "copy")
        .unwrap_or_else(|| panic!("no copy row: {rows:?}"));
    assert_eq!(copy["outcome"], "pass", "{copy}");
    assert!(
        copy["cause"]
            .as_str()
            .is_some_and(|c| c.contains("cycles copy through snapback")),
        "{copy}"
    );
    assert_eq!(proxy.count(Op::CopyBlob), 0);
}
