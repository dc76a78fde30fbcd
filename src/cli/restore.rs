//! `restore`: a restore point to a new page blob (`--to`) or a new managed disk
//! (`--to-managed-disk`), optionally restarting the backup chain on it; then what to run to
//! attach or swap in the result.

use super::args::RestoreArgs;
use super::exit::{fail, one_disk, refuse};
use super::interrupt::stoppable;
use anyhow::Context;
use snapback::arm::{ResourceId, ResourceKind};
use snapback::config::DiskConfig;
use snapback::restore::managed_disk::ManagedRestoreRequest;
use snapback::restore::{PointSelector, Rebase, RestoreRequest};
use snapback::service::App;
use snapback::source::managed_disk::props::Overrides;
use snapback::storage::BlobRef;
use std::process::ExitCode;

/// `restore`: picks the restore point, then the target.
pub async fn restore(app: &App, args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let disk = match one_disk(app, &args.disk) {
        Ok(d) => d,
        Err(code) => return Ok(code),
    };
    let point = match (args.snapshot, &args.at) {
        (Some(s), _) => PointSelector::Snapshot(s),
        (None, Some(at)) => match snapback::restore::parse_time(at, &disk.tz) {
            Ok(t) => PointSelector::At(t),
            Err(e) => return Ok(refuse(format!("disk {}: {e}", disk.name))),
        },
        (None, None) => {
            return Ok(refuse(format!(
                "restore of disk {}: give --snapshot or --at",
                disk.name
            )))
        }
    };
    if let Some(id) = args.to_managed_disk {
        let m = *args.managed;
        let overrides = Overrides {
            os_type: m.os_type,
            hyper_v_generation: m.hyper_v_generation,
            sku: m.sku,
            zone: m.zone,
            disk_encryption_set: m.disk_encryption_set,
        };
        return to_managed_disk(app, &disk, point, &id, overrides, args.rebase, args.force).await;
    }
    let Some(to) = args.to else {
        return Ok(refuse(format!(
            "restore of disk {}: give --to or --to-managed-disk",
            disk.name
        )));
    };
    let target = match to.parse::<BlobRef>() {
        Ok(p) => p,
        Err(e) => return Ok(refuse(format!("--to: {e}"))),
    };
    let req = RestoreRequest {
        point,
        target,
        rebase: args.rebase.then(|| Rebase {
            name: args
                .name
                .unwrap_or_else(|| format!("{}-restored", disk.name)),
        }),
        force: args.force,
    };
    let rep = match stoppable(|stop| app.restore(&disk, &req, stop)).await {
        Ok(r) => r,
        Err(e) => return Ok(fail(&e, &format!("restore of disk {}", disk.name))),
    };
    let config_path = &app.config.path;
    println!(
        "{}: restored restore point {} (source snapshot {}, {} bytes) to {}",
        rep.disk, rep.restore_point, rep.source_snapshot, rep.size, rep.target
    );
    println!(
        "  promote: {:.2}s to {}{}",
        rep.promote_seconds,
        rep.promoted,
        if rep.promoted_kept {
            ""
        } else {
            " (deleted after the copy)"
        }
    );
    println!("  copy:    {:.2}s", rep.copy_seconds);
    if let Some(vmgs) = &rep.guest_state {
        println!(
            "  VM guest state (Trusted Launch: vTPM, UEFI) beside it: {vmgs}; a managed disk takes both with `az disk create --upload-type UploadWithSecurityData --security-type TrustedLaunch`, or use restore --to-managed-disk"
        );
    }
    if let Some(chain) = &rep.rebased {
        let stanza = snapback::restore::config_stanza(chain, &disk);
        println!(
            "  rebased: disk \"{}\" backs up {} into {}; first snapshot {}, first restore point {}; its next cycle is incremental",
            chain.name, chain.source, chain.backup, chain.source_snapshot, chain.restore_point
        );
        if args.write_config {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(config_path)
                .with_context(|| format!("cannot append to {}", config_path.display()))?;
            write!(f, "\n{stanza}")
                .with_context(|| format!("cannot append to {}", config_path.display()))?;
            println!(
                "  config: appended the [[disk]] stanza to {}",
                config_path.display()
            );
        } else {
            println!("  add this to {}:\n\n{stanza}", config_path.display());
        }
    }
    if let Some((url, account_name)) = app.blob_url(&rep.target) {
        let name = rep.target.blob.trim_end_matches(".vhd").replace('/', "-");
        println!(
            "\n{}",
            snapback::restore::attach_commands(&url, &account_name, &name)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `restore --to-managed-disk`: a new managed disk from a restore point; then the `az`
/// commands that swap it in.
async fn to_managed_disk(
    app: &App,
    disk: &DiskConfig,
    point: PointSelector,
    id: &str,
    overrides: Overrides,
    rebase: bool,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let target = match id.parse::<ResourceId>() {
        Ok(t) if t.kind == ResourceKind::Disk => t,
        Ok(_) => {
            return Ok(refuse(format!(
                "--to-managed-disk: '{id}' is not a disk (…/providers/Microsoft.Compute/disks/NAME)"
            )))
        }
        Err(e) => return Ok(refuse(format!("--to-managed-disk: {e}"))),
    };
    let problems = overrides.problems();
    if !problems.is_empty() {
        for p in problems {
            eprintln!("snapback: restore of disk {}: {p}", disk.name);
        }
        return Ok(ExitCode::from(super::exit::EXIT_USAGE));
    }
    let o = overrides;
    let req = ManagedRestoreRequest {
        point,
        target: target.clone(),
        sku: o.sku,
        zone: o.zone,
        force,
        rebase,
        os_type: o.os_type,
        hyper_v_generation: o.hyper_v_generation,
        disk_encryption_set: o.disk_encryption_set,
    };
    let rep = match app.restore_to_managed_disk(disk, &req).await {
        Ok(r) => r,
        Err(e) => return Ok(fail(&e, &format!("restore of disk {}", disk.name))),
    };
    println!(
        "{}: restored restore point {} (source snapshot {}, {} bytes) to managed disk {} in {} ({} bytes written, {:.2}s)",
        rep.disk, rep.restore_point, rep.source_snapshot, rep.size, rep.target, rep.location, rep.bytes_written, rep.seconds
    );
    if rep.disk_size != rep.size {
        println!(
            "  the new disk is {} bytes, {} more than the restore point: Azure's Upload disks are at least 20 MiB and a whole number of MiB; the restore point's bytes come first, the rest reads as zeros",
            rep.disk_size,
            rep.disk_size - rep.size
        );
    }
    if let Some(rb) = &rep.rebased {
        println!(
            "  rebased: disk \"{}\" now backs up {target}; first snapshot {}, first restore point {}; its next cycle is incremental",
            rep.disk, rb.source_snapshot, rb.restore_point
        );
        for s in &rb.retired {
            println!("  deleted the old chain's snapshot {s}");
        }
        println!(
            "  now point the config at the new disk, in the [[disk]] entry named \"{}\" of {}:\n    managed_disk = \"{target}\"",
            rep.disk,
            app.config.path.display()
        );
    }
    println!(
        "\n{}",
        snapback::restore::managed_disk::swap_commands_for(&target, &rep)
    );
    Ok(ExitCode::SUCCESS)
}
