//! `status` and `backup` next to a running daemon, asked over its control socket
//! (`daemon::control`). Each answers `None` when no daemon listens: the command then runs
//! standalone.

use super::exit::{failed_if, refuse, EXIT_FAILED};
use super::print;
use snapback::config::Config;
use snapback::daemon::control::{self, BackupOutcome, Request, Response, RunId, RunResult};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// How often a waiting `backup` asks after its runs.
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum DaemonClientError {
    #[error("cannot talk to the running daemon")]
    Control(#[source] control::ControlError),
    #[error("unexpected reply from the daemon: {0:?}")]
    Unexpected(Box<Response>),
    #[error("the daemon went away")]
    Gone,
    #[error("the daemon stopped before the cycle of {disks} finished; it resumes when the daemon starts again")]
    StoppedBefore { disks: String },
    #[error(transparent)]
    Print(#[from] serde_json::Error),
}

/// One request; `None`: no daemon listens.
async fn ask(socket: &Path, req: Request) -> Result<Option<Response>, DaemonClientError> {
    control::request(socket, &req)
        .await
        .map_err(DaemonClientError::Control)
}

/// `status` from the daemon. `--require-daemon` without one: exit 1 (health checks).
pub async fn status(
    config: &Config,
    as_json: bool,
    require_daemon: bool,
) -> Result<Option<ExitCode>, DaemonClientError> {
    let socket = &config.control_socket;
    match ask(socket, Request::Status).await? {
        Some(Response::Status(s)) => {
            print::daemon_status(&s, as_json)?;
            Ok(Some(ExitCode::SUCCESS))
        }
        Some(other) => Err(DaemonClientError::Unexpected(Box::new(other))),
        None if require_daemon => {
            eprintln!("snapback: no daemon answers on {}", socket.display());
            Ok(Some(ExitCode::from(EXIT_FAILED)))
        }
        None => Ok(None),
    }
}

/// `backup` handed to the daemon: one run per disk (all if none named), then, unless
/// `no_wait`, each run's result as it ends; exit 0 iff all succeeded.
pub async fn backup(
    config: &Config,
    names: &[String],
    no_wait: bool,
) -> Result<Option<ExitCode>, DaemonClientError> {
    let socket = &config.control_socket;
    let names: Vec<String> = if names.is_empty() {
        config.disks.iter().map(|d| d.name.clone()).collect()
    } else {
        names.to_vec()
    };
    let mut runs = Vec::new();
    for disk in names {
        match ask(socket, Request::Backup { disk }).await? {
            None if runs.is_empty() => return Ok(None),
            None => return Err(DaemonClientError::Gone),
            Some(Response::Backup { disk, outcome, run }) => {
                println!(
                    "{disk}: {} by the daemon",
                    match outcome {
                        BackupOutcome::Started => "cycle started",
                        BackupOutcome::AlreadyRunning => "cycle already running",
                    }
                );
                runs.push((disk, run));
            }
            Some(Response::Error { message }) => return Ok(Some(refuse(message))),
            Some(other) => return Err(DaemonClientError::Unexpected(Box::new(other))),
        }
    }
    if no_wait {
        return Ok(Some(ExitCode::SUCCESS));
    }
    let mut all_ok = true;
    let mut pending = Vec::new();
    for (disk, run) in runs {
        match run {
            Some(run) => pending.push((disk, run)),
            None => {
                println!("{disk}: the daemon gives no run id (it is older than this snapback), so its result cannot be waited for; follow the cycle with `snapback status`, or restart the daemon");
                all_ok = false;
            }
        }
    }
    all_ok &= wait_for_runs(socket, pending).await?;
    Ok(Some(failed_if(!all_ok)))
}

/// Waits until each run has ended, printing each result as it comes; whether all succeeded.
///
/// It polls `run RUN_ID` rather than sending one `wait` that blocks until the end: the
/// supervisor answers every request at once from its own loop and holds no client open, each
/// exchange stays within the socket's answer timeout however long the cycle takes, and a
/// daemon that stops or restarts shows at the next poll.
async fn wait_for_runs(
    socket: &Path,
    mut pending: Vec<(String, RunId)>,
) -> Result<bool, DaemonClientError> {
    let mut all_ok = true;
    while !pending.is_empty() {
        tokio::time::sleep(POLL).await;
        let mut still = Vec::new();
        let mut queue = std::mem::take(&mut pending).into_iter();
        while let Some((disk, run)) = queue.next() {
            let answer = ask(socket, Request::Run { run: run.clone() }).await;
            match answer {
                Ok(Some(Response::Run { result, .. })) => match ended(&disk, &result) {
                    Some(ok) => all_ok &= ok,
                    None => still.push((disk, run)),
                },
                Ok(Some(Response::UnknownRun { run })) => {
                    println!("{disk}: RESULT UNKNOWN: the daemon does not know run {run} (it has restarted since); `snapback status` shows the disk's last cycle");
                    all_ok = false;
                }
                _ => {
                    let waiting = still.into_iter().chain([(disk, run)]).chain(queue);
                    let disks: Vec<String> = waiting.map(|(d, _)| d).collect();
                    return Err(DaemonClientError::StoppedBefore {
                        disks: disks.join(", "),
                    });
                }
            }
        }
        pending = still;
    }
    Ok(all_ok)
}

/// Prints how a run ended; whether it succeeded. `None`: it has not ended yet.
fn ended(disk: &str, result: &RunResult) -> Option<bool> {
    match result {
        RunResult::Running => return None,
        RunResult::Ok { restore_point, .. } => println!(
            "{disk}: ok, restore point {}",
            restore_point.as_deref().unwrap_or("?")
        ),
        // The error says which (a failure, a fence, another owner), as it does standalone.
        RunResult::Failed { error, .. }
        | RunResult::Fenced { error }
        | RunResult::OwnedElsewhere { error } => println!("{disk}: FAILED: {error}"),
        RunResult::Stopped { reason } => println!(
            "{disk}: FAILED: {reason}; the cycle stopped at a checkpoint and its next run resumes it"
        ),
    }
    Some(matches!(result, RunResult::Ok { .. }))
}
