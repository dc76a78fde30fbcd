//! `completions` and `man`: generated from the CLI definition (`cli::args`), so they never
//! drift from it. They need no config: packagers run them at build time.

use super::args::{Cli, Command};
use super::exit::EXIT_FAILED;
use std::process::ExitCode;

/// The exit code of `completions` or `man`; `None` for any other command.
pub fn generate(command: &Command) -> Option<ExitCode> {
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
