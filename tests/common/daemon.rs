//! Helpers for daemon tests: a `snapback run` child process (killed on drop), signals, a
//! tiny HTTP GET, config edits and polling.
#![allow(dead_code)]

use super::fixture::Fixture;
use super::http;
use super::process::collect_stderr;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `snapback run` process with its stderr collected; killed on drop.
pub struct DaemonProc {
    pub child: Child,
    stderr: Arc<Mutex<String>>,
}

impl DaemonProc {
    pub fn spawn(fx: &Fixture) -> DaemonProc {
        Self::spawn_with_env(fx, &[])
    }

    pub fn spawn_with_env(fx: &Fixture, env: &[(&str, &str)]) -> DaemonProc {
        let mut cmd = fx.command(&["run"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn_command(cmd)
    }

    /// Any `snapback ... run` command (a config without the fixture's Azurite).
    pub fn spawn_command(mut cmd: std::process::Command) -> DaemonProc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn snapback run");
        let stderr = collect_stderr(&mut child);
        DaemonProc { child, stderr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends a signal by name ("TERM", "HUP", ...).
    pub fn signal(&self, sig: &str) {
        super::process::send_signal(self.pid(), sig);
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// GET over HTTP/1.1 on 127.0.0.1: (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http::request(port, "GET", path)
}

/// The value of the sample `name{labels}` in a Prometheus text exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Puts top-level settings at the start of the fixture's config (before any table).
pub fn prepend_config(fx: &Fixture, settings: &str) {
    let text = std::fs::read_to_string(&fx.config_path).expect("read config");
    std::fs::write(&fx.config_path, format!("{settings}\n{text}")).expect("write config");
}

pub fn append_config(fx: &Fixture, section: &str) {
    let text = std::fs::read_to_string(&fx.config_path).expect("read config");
    std::fs::write(&fx.config_path, format!("{text}\n{section}")).expect("write config");
}

/// A `[[disk]]` section for `premium/vhds/<name>.vhd` → `backup/backups/<name>`.
pub fn disk_section(name: &str, extra: &str) -> String {
    format!(
        "[[disk]]\nname = \"{name}\"\nsource = \"premium/vhds/{name}.vhd\"\nbackup = \"backup/backups/{name}\"\n{extra}\n"
    )
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fake systemd notification socket: collects every datagram sent to it.
pub struct NotifySocket {
    pub path: std::path::PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
}

impl NotifySocket {
    pub fn bind(dir: &std::path::Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind notify socket");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&messages);
        // Ends with the test process (the socket file lives in the fixture's temp dir).
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).to_string());
            }
        });
        NotifySocket { path, messages }
    }

    /// How many datagrams contained `line` (e.g. "READY=1").
    pub fn count(&self, line: &str) -> usize {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.lines().any(|l| l == line))
            .count()
    }
}
