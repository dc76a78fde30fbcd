//! The control socket: one JSON request per line, one JSON response per line, over the Unix
//! socket `config.control_socket`. `snapback status` and `snapback backup` are its clients;
//! when nothing listens there they work standalone.
//!
//! A backup request is answered with the id of the run (the cycle) that will carry it out;
//! `run` asks what became of that run. Fields were only ever added, with defaults, so a CLI
//! older than the daemon still works (it ignores `run` and watches `status`); a CLI newer
//! than the daemon gets no run id and says so.

use crate::service::DiskStatus;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Longest request line accepted.
const MAX_LINE: u64 = 64 * 1024;
/// A client that sends nothing for this long is dropped; a daemon that does not answer for
/// this long is reported.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Run (or resume) a cycle of this disk now.
    Backup {
        disk: String,
    },
    /// What became of a run: `Response::Run`, or `Response::UnknownRun` for an id this daemon
    /// process never gave (another process's, before a restart) or has forgotten.
    Run {
        run: RunId,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Response {
    Status(DaemonStatus),
    Backup {
        disk: String,
        outcome: BackupOutcome,
        /// The run that carries the request out: the one started, or the one already running
        /// that it was merged into. Absent from daemons older than run ids.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<RunId>,
    },
    Run {
        run: RunId,
        disk: String,
        result: RunResult,
    },
    UnknownRun {
        run: RunId,
    },
    Error {
        message: String,
    },
}

/// Names one cycle the daemon ran or runs: `INSTANCE-N`, where INSTANCE is drawn afresh by
/// each daemon process, so that an id from before a restart is unknown rather than the id of
/// some other cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub String);

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a run stands, as `Response::Run` reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunResult {
    /// Started, or waiting for a `max_concurrent_cycles` slot.
    Running,
    /// The cycle made this restore point.
    Ok {
        restore_point: Option<String>,
        seconds: f64,
    },
    /// The cycle failed; `error_class` is the error policy's (`needs_operator`, `transient`,
    /// `retry_after`), which decides when the daemon tries again.
    Failed { error: String, error_class: String },
    /// A later owner of the disk fenced this cycle off.
    Fenced { error: String },
    /// Another process holds the disk's lease: no cycle ran here.
    OwnedElsewhere { error: String },
    /// Stopped at a checkpoint before it ended (the window closed, the daemon is stopping, the
    /// disk left the config); the next run of the disk resumes it.
    Stopped { reason: String },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackupOutcome {
    /// A cycle was started (it may wait for a `max_concurrent_cycles` slot).
    Started,
    /// The disk's cycle was already running; the request is merged into it.
    AlreadyRunning,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub config: String,
    pub uptime_seconds: u64,
    pub disks: Vec<DaemonDiskStatus>,
    /// This replica's view of the `[cluster]` (absent without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

/// What `status` shows of the cluster: who is alive and which disks this replica runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterStatus {
    pub replica_id: String,
    pub alive: Vec<String>,
    pub assigned: Vec<String>,
    /// Whether the last heartbeat round reached the coordination container.
    pub connected: bool,
    /// Seconds since a heartbeat round last succeeded (`None`: never).
    pub view_age_seconds: Option<u64>,
}

impl ClusterStatus {
    pub fn of(v: &super::cluster::View) -> ClusterStatus {
        ClusterStatus {
            replica_id: v.replica_id.clone(),
            alive: v.alive.clone(),
            assigned: v.assigned.iter().cloned().collect(),
            connected: v.connected,
            view_age_seconds: v.seen_at.map(|t| t.elapsed().as_secs()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonDiskStatus {
    #[serde(flatten)]
    pub status: DiskStatus,
    pub running: bool,
    /// Next scheduled tick (RFC 3339), if any.
    pub next_run: Option<String>,
    /// When the daemon next starts a cycle of the disk (a tick, a retry after a failure or a
    /// resume; RFC 3339), if anything is planned.
    #[serde(default)]
    pub next_attempt: Option<String>,
    /// Consecutive failed cycles.
    pub failures: u32,
    /// The last cycle failed in a way that needs an operator (`cycle::policy`): set until a
    /// cycle ends otherwise; its cause is `last_error`.
    #[serde(default)]
    pub needs_operator: bool,
    pub progress: Option<ProgressInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProgressInfo {
    pub phase: String,
    /// What the byte counts are about: `apply`, `seed copy` (empty before either starts).
    #[serde(default)]
    pub work: String,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// `bytes_done` in percent of `bytes_total` (None while the total is unknown).
    #[serde(default)]
    pub percent: Option<f64>,
    pub bytes_per_second: Option<f64>,
    pub eta_seconds: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: the daemon did not answer within {secs}s")]
    Timeout { path: String, secs: u64 },
    #[error("control socket {path}: bad reply: {reason}")]
    Protocol { path: String, reason: String },
}

/// A request from a client with the channel for its reply.
pub type Incoming = (Request, oneshot::Sender<Response>);

/// Accepts clients until `stop`; each request goes to `tx` and its reply back to the client.
pub async fn serve(listener: UnixListener, tx: mpsc::Sender<Incoming>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, tx).await {
                tracing::debug!(error = %e, "control client");
            }
        });
    }
}

async fn handle(stream: UnixStream, tx: mpsc::Sender<Incoming>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let n = tokio::time::timeout(
        IO_TIMEOUT,
        BufReader::new(read.take(MAX_LINE)).read_line(&mut line),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    if n == 0 {
        return Ok(());
    }
    let resp = match serde_json::from_str::<Request>(line.trim()) {
        Err(e) => Response::Error {
            message: format!("bad request: {e}"),
        },
        Ok(req) => {
            let (reply, rx) = oneshot::channel();
            if tx.send((req, reply)).await.is_err() {
                Response::Error {
                    message: "the daemon is shutting down".into(),
                }
            } else {
                rx.await.unwrap_or(Response::Error {
                    message: "the daemon is shutting down".into(),
                })
            }
        }
    };
    let mut out = serde_json::to_string(&resp).map_err(std::io::Error::other)?;
    out.push('\n');
    write.write_all(out.as_bytes()).await?;
    write.shutdown().await
}

/// Sends one request to the daemon at `path`. `Ok(None)` when no daemon listens there (no
/// socket file, or a stale one nobody accepts on): the caller works standalone.
pub async fn request(path: &Path, req: &Request) -> Result<Option<Response>, ControlError> {
    let p = path.display().to_string();
    let io = |source| ControlError::Io {
        path: p.clone(),
        source,
    };
    let mut stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(io(e)),
    };
    let exchange = async {
        let mut line = serde_json::to_string(req).map_err(std::io::Error::other)?;
        line.push('\n');
        stream.write_all(line.as_bytes()).await?;
        let mut answer = String::new();
        BufReader::new((&mut stream).take(16 * 1024 * 1024))
            .read_line(&mut answer)
            .await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(IO_TIMEOUT, exchange)
        .await
        .map_err(|_| ControlError::Timeout {
            path: p.clone(),
            secs: IO_TIMEOUT.as_secs(),
        })?
        .map_err(io)?;
    serde_json::from_str(answer.trim())
        .map(Some)
        .map_err(|e| ControlError::Protocol {
            path: p.clone(),
            reason: e.to_string(),
        })
}

/// Human-readable `status` from the daemon (the JSON form is the struct itself).
pub fn render_status(s: &DaemonStatus) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "daemon: pid {}, up {}s, config {}\n",
        s.pid, s.uptime_seconds, s.config
    );
    if let Some(c) = &s.cluster {
        let _ = writeln!(
            out,
            "cluster: replica {}, {} alive ({}), runs {} disk(s): {}{}",
            c.replica_id,
            c.alive.len(),
            c.alive.join(", "),
            c.assigned.len(),
            if c.assigned.is_empty() {
                "none".to_string()
            } else {
                c.assigned.join(", ")
            },
            match (c.connected, c.view_age_seconds) {
                (true, _) => String::new(),
                (false, Some(age)) => format!(" (coordination unreachable; view {age}s old)"),
                (false, None) => " (coordination unreachable; running every disk)".into(),
            }
        );
    }
    for d in &s.disks {
        let st = &d.status;
        let _ = writeln!(out, "{}  ({} -> {})", st.disk, st.source, st.backup);
        let _ = writeln!(out, "  phase:         {}", st.phase);
        let _ = writeln!(
            out,
            "  running:       {}",
            match &d.progress {
                Some(p) if d.running => format_progress(p),
                _ if d.running => "yes".into(),
                _ => "no".into(),
            }
        );
        let _ = writeln!(
            out,
            "  next run:      {}",
            d.next_run.as_deref().unwrap_or("not scheduled")
        );
        let _ = writeln!(
            out,
            "  last success:  {}",
            st.last_success.as_deref().unwrap_or("never")
        );
        if let Some(e) = &st.last_error {
            let _ = writeln!(out, "  last error:    {e}");
        }
        if d.failures > 0 {
            let _ = writeln!(
                out,
                "  failures:      {} in a row{}; next attempt {}",
                d.failures,
                if d.needs_operator {
                    " (NEEDS AN OPERATOR: SIGHUP or a manual backup retries now)"
                } else {
                    ""
                },
                d.next_attempt.as_deref().unwrap_or("not planned")
            );
        }
        if let Some(c) = &st.last_cycle {
            let _ = writeln!(out, "  last cycle:    {c}");
        }
    }
    out
}

/// `apply 12.0 MiB / 64.0 MiB (18%), 5.1 MiB/s, ETA 10s`
pub fn format_progress(p: &ProgressInfo) -> String {
    let mib = |b: f64| b / (1024.0 * 1024.0);
    let mut s = p.phase.clone();
    if !p.work.is_empty() && p.work != p.phase {
        s += &format!(" ({})", p.work);
    }
    if p.bytes_total > 0 {
        s += &format!(
            " {:.1} MiB / {:.1} MiB ({}%)",
            mib(p.bytes_done as f64),
            mib(p.bytes_total as f64),
            p.bytes_done.saturating_mul(100) / p.bytes_total
        );
    }
    if let Some(r) = p.bytes_per_second {
        s += &format!(", {:.1} MiB/s", mib(r));
    }
    if let Some(e) = p.eta_seconds {
        s += &format!(", ETA {e:.0}s");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        assert_eq!(
            serde_json::to_string(&Request::Backup { disk: "d1".into() }).unwrap(),
            r#"{"cmd":"backup","disk":"d1"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Run {
                run: RunId("7f-3".into())
            })
            .unwrap(),
            r#"{"cmd":"run","run":"7f-3"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"status"}"#).unwrap(),
            Request::Status
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"rm -rf"}"#).is_err());
    }

    /// A CLI older than run ids reads the new backup reply, and a newer one reads the old.
    #[test]
    fn backup_reply_with_and_without_a_run_id() {
        let new = Response::Backup {
            disk: "d1".into(),
            outcome: BackupOutcome::Started,
            run: Some(RunId("7f-3".into())),
        };
        assert_eq!(
            serde_json::to_string(&new).unwrap(),
            r#"{"reply":"backup","disk":"d1","outcome":"started","run":"7f-3"}"#
        );
        #[derive(Deserialize)]
        #[serde(tag = "reply", rename_all = "snake_case")]
        enum OldResponse {
            Backup { disk: String },
        }
        let OldResponse::Backup { disk } =
            serde_json::from_str(&serde_json::to_string(&new).unwrap()).unwrap();
        assert_eq!(disk, "d1");
        let old = r#"{"reply":"backup","disk":"d1","outcome":"already_running"}"#;
        assert!(matches!(
            serde_json::from_str::<Response>(old).unwrap(),
            Response::Backup { run: None, .. }
        ));
    }

    #[test]
    fn progress_line() {
        let mut p = ProgressInfo {
            phase: "apply".into(),
            work: "apply".into(),
            bytes_done: 16 << 20,
            bytes_total: 64 << 20,
            percent: Some(25.0),
            bytes_per_second: Some(4.0 * 1024.0 * 1024.0),
            eta_seconds: Some(12.0),
        };
        assert_eq!(
            format_progress(&p),
            "apply 16.0 MiB / 64.0 MiB (25%), 4.0 MiB/s, ETA 12s"
        );
        p.phase = "copy".into();
        p.work = "seed copy".into();
        assert!(format_progress(&p).starts_with("copy (seed copy) 16.0 MiB"));
    }

    #[tokio::test]
    async fn no_daemon_means_standalone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        assert!(request(&path, &Request::Status).await.unwrap().is_none());
        // A stale socket file nobody listens on is "no daemon" too.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(request(&path, &Request::Status).await.unwrap().is_none());
    }
}
