//! Exit codes, and the refusals and failures that pick them. Scripts and health checks read
//! them: 0 done, 1 work was attempted and failed, 2 a bad config or command line (nothing
//! was attempted).

use snapback::config::DiskConfig;
use snapback::service::{App, AppError};
use std::process::ExitCode;

/// Exit code for a bad config or command line (nothing was attempted).
pub const EXIT_USAGE: u8 = 2;
/// Exit code when work was attempted and failed.
pub const EXIT_FAILED: u8 = 1;

/// Prints why the command line is refused; exit 2.
pub fn refuse(why: impl std::fmt::Display) -> ExitCode {
    eprintln!("snapback: {why}");
    ExitCode::from(EXIT_USAGE)
}

/// 0, or 1 when something failed.
pub fn failed_if(failed: bool) -> ExitCode {
    if failed {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

/// The configured disk `name`, or the exit code for an unknown one.
pub fn one_disk(app: &App, name: &str) -> Result<DiskConfig, ExitCode> {
    match app.select_disks(&[name.to_string()]) {
        Ok(mut d) => Ok(d.remove(0)),
        Err(e) => Err(refuse(e)),
    }
}

/// Prints a failed operation and picks its exit code: 2 for a refused command line (unknown
/// restore point, existing target, ...), 1 for a failure.
pub fn fail(e: &AppError, what: &str) -> ExitCode {
    eprintln!("snapback: {what}: {e}");
    ExitCode::from(if e.is_usage() {
        EXIT_USAGE
    } else {
        EXIT_FAILED
    })
}
