//! `backup` without a daemon: the cycles run in this process, in the foreground, and each
//! disk's result (and its verify and retention) is printed. With a daemon running, `backup`
//! is handed to it instead (`cli::daemon_client`).

use super::exit::{failed_if, refuse};
use super::interrupt::stoppable;
use snapback::service::{App, CycleReport};
use std::process::ExitCode;

/// One cycle per disk (all if none named), then each disk's result; exit 0 iff all passed.
pub async fn backup(app: &App, names: &[String]) -> ExitCode {
    let disks = match app.select_disks(names) {
        Ok(d) => d,
        Err(e) => return refuse(e),
    };
    let reports = stoppable(|stop| app.backup(&disks, stop)).await;
    let mut failed = false;
    for r in &reports {
        failed |= !print_report(r);
    }
    failed_if(failed)
}

/// Prints a disk's cycle, verify and retention results; whether all of them passed.
fn print_report(r: &CycleReport) -> bool {
    let mut ok = true;
    match &r.result {
        Ok(rec) => println!(
            "{}: ok in {:.1}s, restore point {} ({} bytes written, {} cleared, {} ranges, {} requests)",
            r.disk,
            r.seconds,
            rec.phase.restore_point().map_or("?", |(b, _)| b.as_str()),
            rec.stats.bytes_written,
            rec.stats.bytes_cleared,
            rec.stats.ranges,
            rec.stats.requests
        ),
        Err(e) => {
            ok = false;
            println!("{}: FAILED: {e}", r.disk);
        }
    }
    match &r.verify {
        Some(Ok(v)) => match &v.mismatch {
            None => println!(
                "{}: verify ok ({} bytes compared)",
                r.disk, v.bytes_compared
            ),
            Some(m) => {
                ok = false;
                println!(
                    "{}: VERIFY MISMATCH at offset {}: {}",
                    r.disk, m.offset, m.detail
                );
            }
        },
        Some(Err(e)) => {
            ok = false;
            println!("{}: VERIFY FAILED: {e}", r.disk);
        }
        None => {}
    }
    match &r.prune {
        Some(Ok(p)) => println!(
            "{}: retention pruned {} restore point(s)",
            r.disk,
            p.deleted.len()
        ),
        Some(Err(e)) => {
            ok = false;
            println!("{}: RETENTION FAILED: {e}", r.disk);
        }
        None => {}
    }
    ok
}
