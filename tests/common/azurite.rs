//! Azurite test harness: starts a private, pinned Azurite blob service (with
//! `tests/azurite/snapback-azurite-ext.js`, which makes it behave like real
//! Azure for page-range diffs, pagination, Put Page limits, async copy and
//! fault injection) and stops it on drop.
//!
//! std + `tempfile`, and its siblings `process.rs` and `http.rs` (a crate that takes this
//! file by `#[path]` takes them too, as `super::process` and `super::http`). Usage from an
//! integration test:
//!
//! ```ignore
//! mod common;
//! use common::azurite::Azurite;
//! let az = Azurite::start();
//! let url = az.endpoint("premium"); // http://127.0.0.1:PORT/premium
//! let key = az.key("premium");
//! az.inject_fault("503", 2, "/disks/vm1");
//! ```
#![allow(dead_code)]

use super::http;
use super::process::{tests_path, NodeProcess};
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// Premium (source) storage account name.
pub const PREMIUM_ACCOUNT: &str = "premium";
/// Backup (destination) storage account name.
pub const BACKUP_ACCOUNT: &str = "backup";
/// The managed-disk account: the ARM emulator keeps disks and snapshots there,
/// and only it accepts `x-ms-previous-snapshot-url` (as Azure's md-* accounts).
pub const MD_ACCOUNT: &str = "md";
/// Fixed test-only Shared Key of [`MD_ACCOUNT`] (base64).
pub const MD_KEY: &str =
    "c25hcGJhY2staGFybmVzcy1tYW5hZ2VkLWRpc2stYWNjb3VudC1rZXktbm90LWEtc2VjcmV0LTAxMjM0NTY3ODk=";
/// Fixed test-only Shared Key of [`PREMIUM_ACCOUNT`] (base64).
pub const PREMIUM_KEY: &str =
    "c25hcGJhY2staGFybmVzcy1wcmVtaXVtLWFjY291bnQta2V5LW5vdC1hLXNlY3JldC0wMTIzNDU2Nzg5YWI=";
/// Fixed test-only Shared Key of [`BACKUP_ACCOUNT`] (base64).
pub const BACKUP_KEY: &str =
    "c25hcGJhY2staGFybmVzcy1iYWNrdXAtYWNjb3VudC1rZXktbm90LWEtc2VjcmV0LTAxMjM0NTY3ODlhYmNk";

const START_TIMEOUT: Duration = Duration::from_secs(30);
const NPM_LOCK_TIMEOUT: Duration = Duration::from_secs(600);
const NPM_LOCK_STALE: Duration = Duration::from_secs(900);
const LISTEN_MARKER: &str = "successfully listens on http://127.0.0.1:";

/// A running Azurite blob service, killed (and its data dir removed) on drop.
pub struct Azurite {
    // Declared before `dir`: fields drop in order, so node is gone before its data dir is
    // removed.
    node: NodeProcess,
    dir: tempfile::TempDir,
    port: u16,
}

impl Azurite {
    /// Starts a fresh Azurite on 127.0.0.1 with the accounts `premium`,
    /// `backup` and `md`, a fresh data dir, and the snapback extension. Panics (with
    /// Azurite's stderr) if it is not listening within 30 s.
    pub fn start() -> Azurite {
        Self::start_with_env(&[])
    }

    /// Like [`Azurite::start`], with extra environment variables for the node
    /// process, e.g. `[("SNAPBACK_AZURITE_COPY_POLLS", "5")]`.
    pub fn start_with_env(env: &[(&str, &str)]) -> Azurite {
        ensure_npm_installed();
        let dir = tempfile::Builder::new()
            .prefix("snapback-azurite-")
            .tempdir()
            .expect("create Azurite temp dir");
        let harness = harness_dir();
        let (node, listening) = NodeProcess::start(
            "Azurite",
            LISTEN_MARKER,
            START_TIMEOUT,
            |cmd| {
                cmd.arg("--require")
                .arg(harness.join("snapback-azurite-ext.js"))
                .arg(harness.join("node_modules/azurite/dist/src/blob/main.js"))
                // Port 0: the kernel picks a free port and Azurite prints it, so
                // parallel tests never race for a port.
                .args(["--blobHost", "127.0.0.1", "--blobPort", "0", "--location"])
                .arg(dir.path())
                .args(["--disableTelemetry", "--skipApiVersionCheck"])
                .env(
                    "AZURITE_ACCOUNTS",
                    format!(
                        "{PREMIUM_ACCOUNT}:{PREMIUM_KEY};{BACKUP_ACCOUNT}:{BACKUP_KEY};{MD_ACCOUNT}:{MD_KEY}"
                    ),
                )
                .envs(env.iter().copied());
            },
        );
        let digits: String = listening
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        let port = digits.parse().unwrap_or_else(|_| {
            panic!(
                "Azurite printed no port after {LISTEN_MARKER:?}: {listening:?}.\nstderr:\n{}",
                node.stderr()
            )
        });
        let az = Azurite { node, dir, port };
        az.wait_until_answers();
        az
    }

    /// The TCP port Azurite listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Path-style account endpoint, e.g. `http://127.0.0.1:PORT/premium`.
    pub fn endpoint(&self, account: &str) -> String {
        format!("http://127.0.0.1:{}/{account}", self.port)
    }

    /// Base64 Shared Key of `premium` or `backup`.
    pub fn key(&self, account: &str) -> String {
        match account {
            PREMIUM_ACCOUNT => PREMIUM_KEY.to_string(),
            BACKUP_ACCOUNT => BACKUP_KEY.to_string(),
            MD_ACCOUNT => MD_KEY.to_string(),
            other => panic!("no such Azurite test account: {other}"),
        }
    }

    /// Makes the next `count` requests whose URL contains `url_match` fail with
    /// `status` (e.g. "503" -> ServerBusy, "500" -> OperationTimedOut) and an
    /// Azure-style XML error body, or drop the connection (`"reset"`).
    pub fn inject_fault(&self, status: &str, count: u32, url_match: &str) {
        let path = format!(
            "/__harness/faults?status={}&count={count}&match={}",
            percent_encode(status),
            percent_encode(url_match)
        );
        self.control("POST", &path);
    }

    /// Disarms all injected faults.
    pub fn clear_faults(&self) {
        self.control("DELETE", "/__harness/faults");
    }

    /// Logs every request from now on (method, path, `comp`, User-Agent, start and answer
    /// times in ms since the epoch): see [`Azurite::requests`].
    pub fn record_requests(&self) {
        self.control("POST", "/__harness/requests?record=1");
    }

    /// The requests logged since [`Azurite::record_requests`], as JSON.
    pub fn requests(&self) -> serde_json::Value {
        let body = self.control("GET", "/__harness/requests");
        serde_json::from_str(&body).expect("the request log is JSON")
    }

    /// Everything Azurite wrote to stderr so far (for assertion messages).
    pub fn stderr(&self) -> String {
        self.node.stderr()
    }

    fn wait_until_answers(&self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err() {
            if Instant::now() > deadline {
                panic!(
                    "Azurite port {} does not answer after 30 s.\nstderr:\n{}",
                    self.port,
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a bodiless request to the harness control route; panics unless 200.
    fn control(&self, method: &str, path_and_query: &str) -> String {
        let (status, body) = http::request(self.port, method, path_and_query)
            .unwrap_or_else(|e| panic!("harness control {method} {path_and_query}: {e}"));
        if status != 200 {
            panic!("harness control {method} {path_and_query}: HTTP {status}: {body}");
        }
        body
    }
}

fn harness_dir() -> PathBuf {
    tests_path("azurite")
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ------------------------------------------------------------ npm install --

/// Runs `npm ci` in tests/azurite once if node_modules/azurite is missing.
/// Within a process: `OnceLock`. Across test binaries running in parallel: a
/// lock directory (mkdir is atomic) holding the owner's pid.
fn ensure_npm_installed() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let harness = harness_dir();
        let installed = harness.join("node_modules/azurite/package.json");
        let lock = harness.join(".npm-ci.lock");
        let deadline = Instant::now() + NPM_LOCK_TIMEOUT;
        // Set when a crashed installer left its lock: node_modules may be partial.
        let mut reinstall = false;
        loop {
            if installed.exists() && !lock.exists() && !reinstall {
                return;
            }
            match fs::create_dir(&lock) {
                Ok(()) => {
                    let _ = fs::write(lock.join("pid"), std::process::id().to_string());
                    let result = if installed.exists() && !reinstall {
                        Ok(())
                    } else {
                        run_npm_ci(&harness)
                    };
                    let _ = fs::remove_dir_all(&lock);
                    if let Err(msg) = result {
                        panic!("{msg}");
                    }
                    return;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if lock_is_stale(&lock) {
                        let _ = fs::remove_dir_all(&lock);
                        reinstall = true;
                        continue;
                    }
                    if Instant::now() > deadline {
                        panic!(
                            "waited 10 min for {} (another test's npm ci); remove it if stale",
                            lock.display()
                        );
                    }
                    thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("cannot create {}: {e}", lock.display()),
            }
        }
    });
}

fn run_npm_ci(harness: &Path) -> Result<(), String> {
    let output = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(harness)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!(
                "cannot run npm ci in {}: {e}; is npm installed?",
                harness.display()
            )
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "npm ci in {} failed ({}):\n{}\n{}",
            harness.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// A lock is stale if its owner is gone (Linux /proc) or it is very old.
fn lock_is_stale(lock: &Path) -> bool {
    let owner_gone = fs::read_to_string(lock.join("pid"))
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .map(|pid| Path::new("/proc").is_dir() && !Path::new(&format!("/proc/{pid}")).exists())
        .unwrap_or(false);
    let too_old = fs::metadata(lock)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > NPM_LOCK_STALE);
    owner_gone || too_old
}
