//! The `snapback` command line: parse arguments, load the config, call `snapback::app`,
//! print, and map the outcome to an exit code. No backup logic lives here.

use anyhow::Context;
use clap::{Parser, Subcommand};
use snapback::config::DiskConfig;
use snapback::config::{Config, LogFormat, DEFAULT_CONFIG_PATH};
use snapback::restore::{PointSelector, Rebase, RestoreRequest};
use snapback::service::{App, AppError, DiskStatus, RestorePoint};
use snapback::storage::BlobRef;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// Exit code for a bad config or command line (nothing was attempted).
const EXIT_USAGE: u8 = 2;
/// Exit code when work was attempted and failed.
const EXIT_FAILED: u8 = 1;

#[derive(Parser, Debug)]
#[command(
    name = "snapback",
    version,
    about = "Incremental, crash-safe backups of Azure page blobs (VM disks)"
)]
struct Cli {
    /// Config file.
    #[arg(long, global = true, env = "SNAPBACK_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Log format on stderr (overrides the config's log_format).
    #[arg(long, global = true, value_parser = ["text", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate the config file; exit 0 iff it is valid.
    CheckConfig,
    /// Prove against the service that every operation each disk's cycles and restores need
    /// is permitted, with scratch objects only (see docs/operations.md); exit 0 iff all pass.
    Check {
        /// Disk names from the config (all if none).
        disks: Vec<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run (or resume) one backup cycle now for each named disk (all if none).
    Backup {
        /// Disk names from the config.
        disks: Vec<String>,
        /// With a daemon running: return once it has started the cycles, instead of waiting
        /// for their results.
        #[arg(long)]
        no_wait: bool,
    },
    /// List a disk's restore points, oldest first.
    List {
        disk: String,
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Per disk: phase, last success, last error, what the last cycle moved. Asks the
    /// running daemon when there is one (adding progress and next run), else reads the state.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Fail (exit 1) unless a daemon answers on the control socket (for health checks).
        #[arg(long)]
        require_daemon: bool,
    },
    /// Restore a restore point as a new blob: promote it, copy it to --to, optionally restart
    /// the backup chain on it (see docs/restore.md).
    Restore {
        disk: String,
        /// The restore point (backup snapshot id, as `list` prints it).
        #[arg(long, conflicts_with = "at", required_unless_present = "at")]
        snapshot: Option<String>,
        /// The newest restore point captured at or before this time (RFC 3339, or a local
        /// date-time in the disk's tz).
        #[arg(long)]
        at: Option<String>,
        /// Target blob ACCOUNT/CONTAINER/BLOB (ACCOUNT is an [accounts.NAME] key).
        #[arg(
            long,
            required_unless_present = "to_managed_disk",
            conflicts_with = "to_managed_disk"
        )]
        to: Option<String>,
        /// Target managed disk /subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/disks/NAME,
        /// created for the restore (a managed-disk backup; needs [azure]).
        #[arg(long)]
        to_managed_disk: Option<String>,
        #[command(flatten)]
        managed: Box<ManagedDiskFlags>,
        /// Restart the backup chain on the restored disk (--to: the promoted blob becomes the
        /// backup of a new disk entry; --to-managed-disk: the disk's chain moves to the new disk).
        #[arg(long)]
        rebase: bool,
        /// Disk name of the rebased chain (default: DISK-restored).
        #[arg(long, requires = "rebase", conflicts_with = "to_managed_disk")]
        name: Option<String>,
        /// Append the rebased chain's [[disk]] stanza to the config file (default: print it).
        #[arg(long, requires = "rebase", conflicts_with = "to_managed_disk")]
        write_config: bool,
        /// Overwrite the target if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Compare a restore point (default: the newest) with the source snapshot it recorded.
    Verify {
        disk: String,
        #[arg(long)]
        snapshot: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply the disk's retention rules now (with --dry-run: print the plan only).
    Prune {
        disk: String,
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the daemon: back up each disk on its schedule until SIGTERM/SIGINT; SIGHUP
    /// reloads the config. See docs/operations.md.
    Run,
    /// Print a shell completion script (for packagers; see README "For packagers").
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Write the man pages (snapback.1 and one per subcommand) into DIR (for packagers).
    #[command(hide = true)]
    Man { dir: PathBuf },
}

/// `completions` and `man`: generated from this CLI definition, so they never drift from it.
/// They need no config (packagers run them at build time).
fn generate(command: &Command) -> Option<ExitCode> {
    use clap::CommandFactory;
    use std::io::Write;
    let (written, target) = match command {
        Command::Completions { shell } => {
            // Into memory first: clap_complete panics on a write error (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "snapback", &mut script);
            (std::io::stdout().write_all(&script), "stdout".to_string())
        }
        Command::Man { dir } => (
            clap_mangen::generate_to(Cli::command(), dir),
            dir.display().to_string(),
        ),
        _ => return None,
    };
    Some(match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snapback: cannot write to {target}: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(code) = generate(&cli.command) {
        return code;
    }
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("snapback: invalid configuration:\n{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(&cli, &config);
    if let Command::CheckConfig = cli.command {
        println!(
            "{}: ok ({} account(s), {} disk(s))",
            config.path.display(),
            config.accounts.len(),
            config.disks.len()
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("snapback: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let result = runtime.block_on(run(cli.command, config));
    // Cycles abandoned after shutdown_grace are at a checkpoint; don't wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("snapback: error: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn init_logging(cli: &Cli, config: &Config) {
    let json = match cli.log_format.as_deref() {
        Some(f) => f == "json",
        None => config.log_format == LogFormat::Json,
    };
    snapback::service::logging::init(json);
}

async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    let config_path = config.path.clone();
    if let Some(code) = daemon_aware(&command, &config).await? {
        return Ok(code);
    }
    if let Command::Check { disks, json } = &command {
        return check(&config, disks, *json).await;
    }
    let app = App::open(config)
        .with_context(|| format!("cannot start with {}", config_path.display()))?;
    match command {
        Command::CheckConfig => unreachable!("handled before the runtime starts"),
        Command::Run => unreachable!("handled by daemon_aware"),
        Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled before the config is read")
        }
        Command::Check { .. } => unreachable!("handled before the state is opened"),
        Command::Backup { disks, .. } => backup(&app, &disks).await,
        Command::List { disk, json } => list(&app, &disk, json).await,
        Command::Status { json, .. } => {
            print_status(&app.status()?, json)?;
            Ok(ExitCode::SUCCESS)
        }
        cmd @ Command::Restore { .. } => restore(&app, cmd).await,
        Command::Verify {
            disk,
            snapshot,
            json,
        } => verify(&app, &disk, snapshot.as_deref(), json).await,
        Command::Prune {
            disk,
            dry_run,
            json,
        } => prune(&app, &disk, dry_run, json).await,
    }
}

/// `backup`: one cycle per disk, then each disk's result (and its verify and retention).
async fn backup(app: &App, disks: &[String]) -> anyhow::Result<ExitCode> {
    let disks = match app.select_disks(disks) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("snapback: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(stop_on_signal(stop.clone()));
    let reports = app.backup(&disks, stop).await;
    watcher.abort();
    let mut failed = 0;
    for r in &reports {
        match &r.result {
                Ok(rec) => println!(
                    "{}: ok in {:.1}s, restore point {} ({} bytes written, {} cleared, {} ranges, {} requests)",
                    r.disk,
                    r.seconds,
                    rec.phase
                        .restore_point()
                        .map_or("?", |(b, _)| b.as_str()),
                    rec.stats.bytes_written,
                    rec.stats.bytes_cleared,
                    rec.stats.ranges,
                    rec.stats.requests
                ),
                Err(e) => {
                    failed += 1;
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
                    failed += 1;
                    println!(
                        "{}: VERIFY MISMATCH at offset {}: {}",
                        r.disk, m.offset, m.detail
                    );
                }
            },
            Some(Err(e)) => {
                failed += 1;
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
                failed += 1;
                println!("{}: RETENTION FAILED: {e}", r.disk);
            }
            None => {}
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// `check`: the preflight table; exit 0 iff every operation passed.
async fn check(config: &Config, names: &[String], json: bool) -> anyhow::Result<ExitCode> {
    let disks = if names.is_empty() {
        config.disks.clone()
    } else {
        let mut out = Vec::new();
        for n in names {
            match config.disk(n) {
                Some(d) => out.push(d.clone()),
                None => {
                    let known: Vec<_> = config.disks.iter().map(|d| d.name.as_str()).collect();
                    eprintln!(
                        "snapback: unknown disk '{n}' (configured disks: {})",
                        known.join(", ")
                    );
                    return Ok(ExitCode::from(EXIT_USAGE));
                }
            }
        }
        out
    };
    let rows = snapback::service::check::check(config, &disks).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", snapback::service::check::render(&rows));
    }
    Ok(if snapback::service::check::all_passed(&rows) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// `list`: the disk's restore points, oldest first.
async fn list(app: &App, disk: &str, json: bool) -> anyhow::Result<ExitCode> {
    let disk = match one_disk(app, disk) {
        Ok(d) => d,
        Err(code) => return Ok(code),
    };
    let points = app
        .list(&disk)
        .await
        .with_context(|| format!("cannot list restore points of disk {}", disk.name))?;
    print_points(&points, json)?;
    Ok(ExitCode::SUCCESS)
}

/// `restore`: promote, copy back, optionally rebase; then the `az` commands to attach.
async fn restore(app: &App, command: Command) -> anyhow::Result<ExitCode> {
    let Command::Restore {
        disk,
        snapshot,
        at,
        to,
        to_managed_disk,
        managed,
        rebase,
        name,
        write_config,
        force,
    } = command
    else {
        unreachable!("called for restore only")
    };
    let config_path = &app.config.path;
    let disk = match one_disk(app, &disk) {
        Ok(d) => d,
        Err(code) => return Ok(code),
    };
    let point = match (snapshot, at) {
        (Some(s), _) => PointSelector::Snapshot(s),
        (None, Some(at)) => {
            let parsed = snapback::restore::parse_time(&at, &disk.tz);
            match parsed {
                Ok(t) => PointSelector::At(t),
                Err(e) => {
                    eprintln!("snapback: disk {}: {e}", disk.name);
                    return Ok(ExitCode::from(EXIT_USAGE));
                }
            }
        }
        (None, None) => {
            eprintln!(
                "snapback: restore of disk {}: give --snapshot or --at",
                disk.name
            );
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    if let Some(id) = to_managed_disk {
        let target = ManagedTarget {
            id,
            overrides: snapback::source::managed_disk::props::Overrides {
                os_type: managed.os_type,
                hyper_v_generation: managed.hyper_v_generation,
                sku: managed.sku,
                zone: managed.zone,
                disk_encryption_set: managed.disk_encryption_set,
            },
            rebase,
            force,
        };
        return restore_to_managed_disk(app, &disk, point, target).await;
    }
    let Some(to) = to else {
        eprintln!(
            "snapback: restore of disk {}: give --to or --to-managed-disk",
            disk.name
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    };
    let target = match to.parse::<BlobRef>() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("snapback: --to: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let req = RestoreRequest {
        point,
        target,
        rebase: rebase.then(|| Rebase {
            name: name.unwrap_or_else(|| format!("{}-restored", disk.name)),
        }),
        force,
    };
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(stop_on_signal(stop.clone()));
    let result = app.restore(&disk, &req, stop).await;
    watcher.abort();
    let rep = match result {
        Ok(r) => r,
        Err(e) => return Ok(fail(&e, &format!("restore of disk {}", disk.name))),
    };
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
        if write_config {
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

/// The new disk's properties (`restore --to-managed-disk`); each overrides what the restore
/// point recorded of the source disk.
#[derive(clap::Args, Debug)]
struct ManagedDiskFlags {
    /// SKU of the new managed disk (e.g. Premium_LRS; default: Azure's).
    #[arg(long, requires = "to_managed_disk")]
    sku: Option<String>,
    /// Availability zone of the new managed disk (1, 2 or 3; default: the source disk's).
    #[arg(long, requires = "to_managed_disk")]
    zone: Option<String>,
    /// OS type of the new managed disk, Windows or Linux (default: the source disk's as
    /// the restore point recorded it; none: a data disk).
    #[arg(long, requires = "to_managed_disk")]
    os_type: Option<String>,
    /// Hyper-V generation of the new OS disk, V1 or V2 (default: the source disk's).
    #[arg(long, requires = "to_managed_disk")]
    hyper_v_generation: Option<String>,
    /// Disk encryption set (customer-managed key) of the new managed disk, a resource id
    /// (default: the source disk's).
    #[arg(long, requires = "to_managed_disk")]
    disk_encryption_set: Option<String>,
}

/// The `--to-managed-disk` options.
struct ManagedTarget {
    id: String,
    overrides: snapback::source::managed_disk::props::Overrides,
    rebase: bool,
    force: bool,
}

/// `restore --to-managed-disk`: a new managed disk from a restore point; then the `az`
/// commands that swap it in.
async fn restore_to_managed_disk(
    app: &App,
    disk: &snapback::config::DiskConfig,
    point: PointSelector,
    to: ManagedTarget,
) -> anyhow::Result<ExitCode> {
    use snapback::arm::{ResourceId, ResourceKind};
    let id = &to.id;
    let target = match id.parse::<ResourceId>() {
        Ok(t) if t.kind == ResourceKind::Disk => t,
        Ok(_) => {
            eprintln!("snapback: --to-managed-disk: '{id}' is not a disk (…/providers/Microsoft.Compute/disks/NAME)");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
        Err(e) => {
            eprintln!("snapback: --to-managed-disk: {e}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let problems = to.overrides.problems();
    if !problems.is_empty() {
        for p in problems {
            eprintln!("snapback: restore of disk {}: {p}", disk.name);
        }
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let o = to.overrides;
    let req = snapback::restore::managed_disk::ManagedRestoreRequest {
        point,
        target: target.clone(),
        sku: o.sku,
        zone: o.zone,
        force: to.force,
        rebase: to.rebase,
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

/// `verify`: a restore point against its source snapshot.
async fn verify(
    app: &App,
    disk: &str,
    snapshot: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let disk = match one_disk(app, disk) {
        Ok(d) => d,
        Err(code) => return Ok(code),
    };
    let rep = match app.verify(&disk, snapshot).await {
        Ok(r) => r,
        Err(e) => return Ok(fail(&e, &format!("verify of disk {}", disk.name))),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
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
    }
    Ok(if rep.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    })
}

/// `prune`: the retention plan, executed unless `dry_run`.
async fn prune(app: &App, disk: &str, dry_run: bool, json: bool) -> anyhow::Result<ExitCode> {
    let disk = match one_disk(app, disk) {
        Ok(d) => d,
        Err(code) => return Ok(code),
    };
    let rep = match app.prune(&disk, dry_run).await {
        Ok(r) => r,
        Err(e) => return Ok(fail(&e, &format!("prune of disk {}", disk.name))),
    };
    if json {
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
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
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
    }
    Ok(ExitCode::SUCCESS)
}

/// The configured disk `name`, or the exit code for an unknown one.
fn one_disk(app: &App, name: &str) -> Result<DiskConfig, ExitCode> {
    match app.select_disks(&[name.to_string()]) {
        Ok(mut d) => Ok(d.remove(0)),
        Err(e) => {
            eprintln!("snapback: {e}");
            Err(ExitCode::from(EXIT_USAGE))
        }
    }
}

/// Prints a failed operation and picks its exit code: 2 for a refused command line (unknown
/// restore point, existing target, ...), 1 for a failure.
fn fail(e: &AppError, what: &str) -> ExitCode {
    eprintln!("snapback: {what}: {e}");
    ExitCode::from(if e.is_usage() {
        EXIT_USAGE
    } else {
        EXIT_FAILED
    })
}

/// `run`, and `status`/`backup` when a daemon listens on the control socket. `None`: go on
/// standalone.
async fn daemon_aware(command: &Command, config: &Config) -> anyhow::Result<Option<ExitCode>> {
    use snapback::daemon::control::{self, Request, Response};
    let socket = &config.control_socket;
    let ask = |req: Request| async move {
        control::request(socket, &req)
            .await
            .context("cannot talk to the running daemon")
    };
    match command {
        Command::Run => {
            snapback::daemon::run(config.clone())
                .await
                .context("the daemon cannot start")?;
            Ok(Some(ExitCode::SUCCESS))
        }
        Command::Status {
            json,
            require_daemon,
        } => match ask(Request::Status).await? {
            Some(Response::Status(s)) => {
                if *json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    print!("{}", control::render_status(&s));
                }
                Ok(Some(ExitCode::SUCCESS))
            }
            Some(other) => anyhow::bail!("unexpected reply from the daemon: {other:?}"),
            None if *require_daemon => {
                eprintln!(
                    "snapback: no daemon answers on {}",
                    config.control_socket.display()
                );
                Ok(Some(ExitCode::from(EXIT_FAILED)))
            }
            None => Ok(None),
        },
        Command::Backup { disks, no_wait } => {
            let names: Vec<String> = if disks.is_empty() {
                config.disks.iter().map(|d| d.name.clone()).collect()
            } else {
                disks.clone()
            };
            // What each disk's last cycle and failure count were before asking, to tell the
            // cycle we asked for from earlier ones.
            let before = match ask(Request::Status).await? {
                Some(Response::Status(s)) => s,
                Some(other) => anyhow::bail!("unexpected reply from the daemon: {other:?}"),
                None => return Ok(None),
            };
            let mut code = ExitCode::SUCCESS;
            let mut started = Vec::new();
            for disk in names {
                match ask(Request::Backup { disk: disk.clone() }).await? {
                    None => anyhow::bail!("the daemon went away"),
                    Some(Response::Backup { disk, outcome }) => {
                        println!(
                            "{disk}: {} by the daemon",
                            match outcome {
                                control::BackupOutcome::Started => "cycle started",
                                control::BackupOutcome::AlreadyRunning => "cycle already running",
                            }
                        );
                        started.push(disk);
                    }
                    Some(Response::Error { message }) => {
                        eprintln!("snapback: {message}");
                        return Ok(Some(ExitCode::from(EXIT_USAGE)));
                    }
                    Some(other) => anyhow::bail!("unexpected reply from the daemon: {other:?}"),
                }
            }
            if *no_wait {
                return Ok(Some(code));
            }
            if !wait_for_daemon_cycles(socket, &before, started).await? {
                code = ExitCode::from(EXIT_FAILED);
            }
            Ok(Some(code))
        }
        _ => Ok(None),
    }
}

/// Waits until the daemon has finished a cycle of each disk (one that ends after `before`),
/// printing each result; returns whether all succeeded. A cycle succeeded when the disk's last
/// restore point changed, and failed when its count of failures in a row went up.
async fn wait_for_daemon_cycles(
    socket: &std::path::Path,
    before: &snapback::daemon::control::DaemonStatus,
    mut pending: Vec<String>,
) -> anyhow::Result<bool> {
    use snapback::daemon::control::{self, Request, Response};
    let key = |s: &control::DaemonDiskStatus| {
        (
            s.status
                .last_cycle
                .as_ref()
                .and_then(|c| c.backup_snapshot.clone()),
            s.failures,
        )
    };
    let earlier: std::collections::HashMap<String, _> = before
        .disks
        .iter()
        .map(|d| (d.status.disk.clone(), key(d)))
        .collect();
    let mut all_ok = true;
    while !pending.is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let now = match control::request(socket, &Request::Status).await {
            Ok(Some(Response::Status(s))) => s,
            _ => anyhow::bail!(
                "the daemon stopped before the cycle of {} finished; it resumes when the daemon starts again",
                pending.join(", ")
            ),
        };
        pending.retain(|name| {
            let Some(d) = now.disks.iter().find(|d| &d.status.disk == name) else {
                println!("{name}: FAILED: the disk was removed from the daemon's config");
                all_ok = false;
                return false;
            };
            let (point, failures) = key(d);
            let (old_point, old_failures) = earlier.get(name).cloned().unwrap_or((None, 0));
            if d.running {
                return true;
            }
            if point.is_some() && point != old_point {
                println!("{name}: ok, restore point {}", point.unwrap_or_default());
                false
            } else if failures > old_failures {
                println!(
                    "{name}: FAILED: {}",
                    d.status
                        .last_error
                        .as_deref()
                        .unwrap_or("see the daemon's log")
                );
                all_ok = false;
                false
            } else {
                true // not started yet (waiting for a slot or a window)
            }
        });
    }
    Ok(all_ok)
}

/// SIGINT/SIGTERM during a manual backup: stop at the next checkpoint; the next run resumes.
/// Caught through signal-hook, as the daemon's signals are (`daemon::signals`): one way of
/// catching signals in the whole program.
async fn stop_on_signal(stop: CancellationToken) {
    use futures::StreamExt;
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook_tokio::Signals::new([SIGTERM, SIGINT]) else {
        return;
    };
    if signals.next().await.is_none() {
        return;
    }
    tracing::warn!("stopping at the next checkpoint; run backup again to resume");
    stop.cancel();
}

fn print_points(points: &[RestorePoint], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(points)?);
        return Ok(());
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

fn print_status(status: &[DiskStatus], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(status)?);
        return Ok(());
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
