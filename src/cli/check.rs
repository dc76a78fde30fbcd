//! `check`: the preflight table (`service::check`). It runs before any state is opened, so
//! it names unknown disks itself rather than through `App`.

use super::exit::{failed_if, refuse};
use super::print::json;
use snapback::config::Config;
use snapback::service::check;
use std::process::ExitCode;

/// Exit 0 iff every operation passed for every named disk (all if none).
pub async fn run(config: &Config, names: &[String], as_json: bool) -> anyhow::Result<ExitCode> {
    let mut disks = Vec::new();
    for n in names {
        match config.disk(n) {
            Some(d) => disks.push(d.clone()),
            None => {
                let known: Vec<_> = config.disks.iter().map(|d| d.name.as_str()).collect();
                return Ok(refuse(format!(
                    "unknown disk '{n}' (configured disks: {})",
                    known.join(", ")
                )));
            }
        }
    }
    if names.is_empty() {
        disks = config.disks.clone();
    }
    let clients = snapback::service::clients::Clients::for_check(config);
    let rows = check::check(config, &clients, &disks).await;
    if as_json {
        json(&rows)?;
    } else {
        print!("{}", check::render(&rows));
    }
    Ok(failed_if(!check::all_passed(&rows)))
}
