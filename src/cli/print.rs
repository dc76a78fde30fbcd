//! What `list`, `status`, `verify` and `prune` print: text for people, or with `--json` the
//! report itself as JSON (scripts rely on its shape).

use snapback::daemon::control::{self, DaemonStatus};
use snapback::restore::retention::PruneReport;
use snapback::restore::verify::VerifyReport;
use snapback::service::{DiskStatus, RestorePoint};

/// Prints `value` as pretty JSON.
pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `list`: the restore points, oldest first.
pub fn points(points: &[RestorePoint], as_json: bool) -> serde_json::Result<()> {
    if as_json {
        return json(points);
    }
    if points.is_empty() {
        println!("no restore points");
    }
    for p in points {
        let kept = if p.kept_by.is_empty() {
            "pruned next".to_string()
        } else {
            format!("kept by {}", p.kept_by.join(","))
        };
        println!(
            "{}  source {}  {} bytes  {kept}",
            p.snapshot, p.source_snapshot, p.size
        );
    }
    Ok(())
}

/// `status` without a daemon: what the state database knows.
pub fn status(status: &[DiskStatus], as_json: bool) -> serde_json::Result<()> {
    if as_json {
        return json(status);
    }
    for s in status {
        println!("{}  ({} -> {})", s.disk, s.source, s.backup);
        println!("  phase:         {}", s.phase);
        println!(
            "  last success:  {}",
            s.last_success.as_deref().unwrap_or("never")
        );
        if let Some(e) = &s.last_error {
            println!("  last error:    {e}");
        }
        if let Some(c) = &s.last_cycle {
            println!("  last cycle:    {c}");
        }
    }
    Ok(())
}

/// `status` from a running daemon: the above, with running cycles, progress and plans.
pub fn daemon_status(status: &DaemonStatus, as_json: bool) -> serde_json::Result<()> {
    if as_json {
        return json(status);
    }
    print!("{}", control::render_status(status));
    Ok(())
}

/// `verify`: equal, or where the restore point and its source snapshot differ.
pub fn verify(rep: &VerifyReport, as_json: bool) -> serde_json::Result<()> {
    if as_json {
        return json(rep);
    }
    match &rep.mismatch {
        None => println!(
            "{}: restore point {} equals source snapshot {} ({} bytes, {} chunks / {} bytes compared)",
            rep.disk, rep.restore_point, rep.source_snapshot, rep.size, rep.chunks, rep.bytes_compared
        ),
        Some(m) => println!(
            "{}: MISMATCH: restore point {} differs from source snapshot {} at offset {} ({}: {})",
            rep.disk, rep.restore_point, rep.source_snapshot, m.offset, m.kind, m.detail
        ),
    }
    Ok(())
}

/// `prune`: each restore point kept (and by which rule) or pruned, then the counts.
pub fn prune(rep: &PruneReport, dry_run: bool, as_json: bool) -> serde_json::Result<()> {
    if as_json {
        let rows: Vec<_> = rep
            .decisions
            .iter()
            .map(|d| {
                serde_json::json!({
                    "snapshot": d.point.snapshot,
                    "kept_by": d.kept_by.clone().unwrap_or_default(),
                    "deleted": rep.deleted.contains(&d.point.snapshot),
                })
            })
            .collect();
        return json(&rows);
    }
    for d in &rep.decisions {
        let action = match (&d.kept_by, dry_run) {
            (Some(_), _) => format!("keep   ({})", d.label()),
            (None, true) => "prune  (would delete)".to_string(),
            (None, false) => "pruned (deleted)".to_string(),
        };
        println!("{}  {action}", d.point.snapshot);
    }
    let n = rep.to_prune().count();
    println!(
        "{}: {} restore point(s), {} kept, {} {}",
        rep.disk,
        rep.decisions.len(),
        rep.decisions.len() - n,
        n,
        if dry_run {
            "to prune (dry run)"
        } else {
            "deleted"
        }
    );
    Ok(())
}
