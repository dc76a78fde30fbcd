//! Child processes of the tests: stderr kept for assertion messages, and the Node.js helpers
//! (Azurite, the ARM emulator) started, awaited until they print where they listen, and
//! killed on drop. One place for this, so every helper gets the same guarantees: no shell in
//! between (killing the child kills the helper), `SNAPBACK_HARNESS_PARENT_PID` (it exits by
//! itself if the test process dies) and a start-up failure that shows the helper's stderr.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// A file or folder below `tests/`.
pub fn tests_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(rel)
}

fn node_binary() -> String {
    std::env::var("SNAPBACK_NODE").unwrap_or_else(|_| "node".to_string())
}

/// Collects the child's stderr in the background (also keeps the pipe drained, so a chatty
/// child never blocks on a full pipe).
pub fn collect_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let mut pipe = child.stderr.take().expect("stderr is piped");
    let sink = Arc::clone(&buf);
    thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    buf
}

/// A running Node.js helper; killed on drop.
pub struct NodeProcess {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl NodeProcess {
    /// Starts `node` with the arguments and environment `configure` adds, and waits up to
    /// `timeout` for a stdout line containing `marker`; returns the process and the text
    /// after the marker on that line (the address it listens on). Panics naming `what`, with
    /// the helper's stderr, if node cannot start, exits first or does not print it in time.
    pub fn start(
        what: &str,
        marker: &str,
        timeout: Duration,
        configure: impl FnOnce(&mut Command),
    ) -> (NodeProcess, String) {
        let mut cmd = Command::new(node_binary());
        cmd.env(
            "SNAPBACK_HARNESS_PARENT_PID",
            std::process::id().to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        configure(&mut cmd);
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start node ({}) for {what}: {e}; is Node.js installed?",
                node_binary()
            )
        });
        let stderr = collect_stderr(&mut child);
        let listening = watch_stdout(&mut child, marker.to_string());
        match listening.recv_timeout(timeout) {
            Ok(rest) => (NodeProcess { child, stderr }, rest),
            Err(why) => {
                let _ = child.kill();
                let status = child.wait().ok();
                thread::sleep(Duration::from_millis(100)); // let stderr drain
                panic!(
                    "{what} did not start ({}; exit status {status:?}).\nstderr:\n{}",
                    match why {
                        mpsc::RecvTimeoutError::Timeout =>
                            format!("no {marker:?} line after {timeout:?}"),
                        mpsc::RecvTimeoutError::Disconnected => "it exited".to_string(),
                    },
                    stderr.lock().unwrap()
                );
            }
        }
    }

    /// Everything the helper wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // `child` is node itself (spawned without a shell), so this kills the helper.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads stdout lines until one contains `marker`; sends the text after it, then keeps
/// draining. The channel disconnects if node exits first.
fn watch_stdout(child: &mut Child, marker: String) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let pipe = child.stdout.take().expect("stdout is piped");
    thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some((_, rest)) = line.split_once(&marker) {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(rest.to_string());
                }
            }
        }
    });
    rx
}

/// Runs `cmd` (a `snapback` command with one of its failpoint variables set) until it prints
/// `failpoint: paused…`, then SIGKILLs it: a crash at a known point of the cycle. Returns its
/// stderr up to the pause; panics, naming `what` and that stderr, if it ended without pausing.
pub fn kill_at_failpoint(mut cmd: Command, what: &str) -> String {
    let mut child = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start snapback");
    let stderr = BufReader::new(child.stderr.take().expect("stderr is piped"));
    let mut log = String::new();
    let mut paused = false;
    for line in stderr.lines() {
        let line = line.expect("read snapback's stderr");
        log.push_str(&line);
        log.push('\n');
        if line.contains("failpoint: paused") {
            paused = true;
            break;
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap snapback");
    assert!(paused, "{what}: the process reached the failpoint:\n{log}");
    log
}

/// Sends the signal named `sig` ("TERM", "HUP", "INT", "KILL", "STOP", "CONT") to `pid`, without needing
/// kill(1) on the machine.
pub fn send_signal(pid: u32, sig: &str) {
    let signal = match sig {
        "TERM" => libc::SIGTERM,
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "KILL" => libc::SIGKILL,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        other => panic!("no such signal in the tests: {other}"),
    };
    let pid = libc::pid_t::try_from(pid).expect("a pid");
    // SAFETY: kill(2) with a valid signal number; it touches no memory of ours.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        rc,
        0,
        "kill -{sig} {pid}: {}",
        std::io::Error::last_os_error()
    );
}
