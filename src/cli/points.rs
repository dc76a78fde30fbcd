//! The commands on one disk's restore points once they exist: `list`, `verify`, `prune`.
//! (`restore` has its own module: it has two targets and prints how to use them.)

use super::exit::{fail, failed_if, one_disk};
use super::print;
use anyhow::Context;
use snapback::service::App;
use std::process::ExitCode;

/// `list`: the disk's restore points, oldest first.
pub async fn list(app: &App, disk: &str, as_json: bool) -> anyhow::Result<ExitCode> {
    let disk = match one_disk(app, disk) {
        Ok(d) => d,
        Err(code) => return Ok(code),
    };
    let points = app
        .list(&disk)
        .await
        .with_context(|| format!("cannot list restore points of disk {}", disk.name))?;
    print::points(&points, as_json)?;
    Ok(ExitCode::SUCCESS)
}

/// `verify`: a restore point (default: the newest) against its source snapshot.
pub async fn verify(
    app: &App,
    disk: &str,
    snapshot: Option<&str>,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let disk = match one_disk(app, disk) {
        Ok(d) => d,
        Err(code) => return Ok(code),
    };
    let rep = match app.verify(&disk, snapshot).await {
        Ok(r) => r,
        Err(e) => return Ok(fail(&e, &format!("verify of disk {}", disk.name))),
    };
    print::verify(&rep, as_json)?;
    Ok(failed_if(!rep.ok()))
}

/// `prune`: the retention plan, executed unless `dry_run`.
pub async fn prune(
    app: &App,
    disk: &str,
    dry_run: bool,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let disk = match one_disk(app, disk) {
        Ok(d) => d,
        Err(code) => return Ok(code),
    };
    let rep = match app.prune(&disk, dry_run).await {
        Ok(r) => r,
        Err(e) => return Ok(fail(&e, &format!("prune of disk {}", disk.name))),
    };
    print::prune(&rep, dry_run, as_json)?;
    Ok(ExitCode::SUCCESS)
}
