//! The `snapback` command line: parse arguments, load the config, call `snapback::app`,
//! print, and map the outcome to an exit code. No backup logic lives here.

use anyhow::Context;
use clap::{Parser, Subcommand};
use snapback::app::{App, DiskStatus, RestorePoint};
use snapback::config::{Config, LogFormat, DEFAULT_CONFIG_PATH};
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
    /// Run (or resume) one backup cycle now for each named disk (all if none).
    Backup {
        /// Disk names from the config.
        disks: Vec<String>,
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
    /// Run the daemon: back up each disk on its schedule until SIGTERM/SIGINT; SIGHUP
    /// reloads the config. See docs/operations.md.
    Run,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("snapback: invalid configuration:\n{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Err(errors) = snapback::daemon::schedule::validate(&config.disks) {
        for e in errors {
            eprintln!(
                "snapback: invalid configuration:\n{}: {e}",
                config.path.display()
            );
        }
        return ExitCode::from(EXIT_USAGE);
    }
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
    let filter = tracing_subscriber::EnvFilter::try_from_env("SNAPBACK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    let config_path = config.path.clone();
    if let Some(code) = daemon_aware(&command, &config).await? {
        return Ok(code);
    }
    let app = App::open(config)
        .with_context(|| format!("cannot start with {}", config_path.display()))?;
    match command {
        Command::CheckConfig => unreachable!("handled before the runtime starts"),
        Command::Backup { disks } => {
            let disks = match app.select_disks(&disks) {
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
                        rec.backup_snapshot.as_deref().unwrap_or("?"),
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
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            })
        }
        Command::List { disk, json } => {
            let disk = match app.select_disks(std::slice::from_ref(&disk)) {
                Ok(mut d) => d.remove(0),
                Err(e) => {
                    eprintln!("snapback: {e}");
                    return Ok(ExitCode::from(EXIT_USAGE));
                }
            };
            let points = app
                .list(&disk)
                .await
                .with_context(|| format!("cannot list restore points of disk {}", disk.name))?;
            print_points(&points, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => unreachable!("handled by daemon_aware"),
        Command::Status { json, .. } => {
            print_status(&app.status()?, json)?;
            Ok(ExitCode::SUCCESS)
        }
    }
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
        Command::Backup { disks } => {
            let names: Vec<String> = if disks.is_empty() {
                config.disks.iter().map(|d| d.name.clone()).collect()
            } else {
                disks.clone()
            };
            let mut code = ExitCode::SUCCESS;
            for (i, disk) in names.into_iter().enumerate() {
                match ask(Request::Backup { disk: disk.clone() }).await? {
                    None if i == 0 => return Ok(None),
                    None => anyhow::bail!("the daemon went away"),
                    Some(Response::Backup { disk, outcome }) => {
                        println!(
                            "{disk}: {} by the daemon",
                            match outcome {
                                control::BackupOutcome::Started => "cycle started",
                                control::BackupOutcome::AlreadyRunning => "cycle already running",
                            }
                        );
                    }
                    Some(Response::Error { message }) => {
                        eprintln!("snapback: {message}");
                        code = ExitCode::from(EXIT_USAGE);
                    }
                    Some(other) => anyhow::bail!("unexpected reply from the daemon: {other:?}"),
                }
            }
            Ok(Some(code))
        }
        _ => Ok(None),
    }
}

/// SIGINT/SIGTERM during a manual backup: stop at the next checkpoint; the next run resumes.
async fn stop_on_signal(stop: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
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
        println!(
            "{}  source {}  {} bytes",
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
            println!(
                "  last cycle:    {} -> {} ({} bytes written, {} cleared, {} ranges, {} requests, {}s)",
                c.kind,
                c.backup_snapshot.as_deref().unwrap_or("-"),
                c.bytes_written,
                c.bytes_cleared,
                c.ranges,
                c.requests,
                c.seconds
            );
        }
    }
    Ok(())
}
