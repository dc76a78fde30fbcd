//! The `snapback` command line: parse the arguments, load the config, dispatch to the
//! command's module in `cli/`, and map the outcome to an exit code. No backup logic lives
//! here: that is `snapback::service`, or the daemon when one runs.

mod cli;

use crate::cli::args::{Cli, Command};
use crate::cli::exit::{refuse, EXIT_FAILED};
use crate::cli::{backup, check, daemon_client, generate, points, print, restore};
use anyhow::Context;
use clap::Parser;
use snapback::config::{Config, LogFormat};
use snapback::service::App;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(code) = generate::generate(&cli.command) {
        return code;
    }
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => return refuse(format!("invalid configuration:\n{e}")),
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
    // First what needs no state of its own, and what a running daemon answers instead.
    match &command {
        Command::Run => {
            snapback::daemon::run(config)
                .await
                .context("the daemon cannot start")?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Check { disks, json } => return check::run(&config, disks, *json).await,
        Command::Status {
            json,
            require_daemon,
        } => {
            if let Some(code) = daemon_client::status(&config, *json, *require_daemon).await? {
                return Ok(code);
            }
        }
        Command::Backup { disks, no_wait } => {
            if let Some(code) = daemon_client::backup(&config, disks, *no_wait).await? {
                return Ok(code);
            }
        }
        _ => {}
    }
    let config_path = config.path.clone();
    let app = App::open(config)
        .with_context(|| format!("cannot start with {}", config_path.display()))?;
    Ok(match command {
        Command::Backup { disks, .. } => backup::backup(&app, &disks).await,
        Command::Status { json, .. } => {
            print::status(&app.status()?, json)?;
            ExitCode::SUCCESS
        }
        Command::List { disk, json } => points::list(&app, &disk, json).await?,
        Command::Verify {
            disk,
            snapshot,
            json,
        } => points::verify(&app, &disk, snapshot.as_deref(), json).await?,
        Command::Prune {
            disk,
            dry_run,
            json,
        } => points::prune(&app, &disk, dry_run, json).await?,
        Command::Restore(args) => restore::restore(&app, args).await?,
        Command::CheckConfig
        | Command::Check { .. }
        | Command::Run
        | Command::Completions { .. }
        | Command::Man { .. } => unreachable!("answered before the state is opened"),
    })
}
