//! The binary's command line, beside `main.rs` (which parses, dispatches and maps outcomes to
//! exit codes). One module per concern; none holds backup logic: that is `snapback::service`
//! and the daemon, which these call and print.
//!
//! - [`args`]: the clap definition of every subcommand and flag.
//! - [`exit`]: exit codes (0/1/2) and the refusals and failures that pick them.
//! - [`daemon_client`]: `status` and `backup` next to a running daemon (the control socket;
//!   a backup handed over is waited on by its run id).
//! - [`backup`]: `backup` in the foreground, without a daemon.
//! - [`points`]: `list`, `verify`, `prune`.
//! - [`restore`]: `restore` to a page blob or a managed disk.
//! - [`check`]: the preflight `check`.
//! - [`print`]: the text and JSON output of `list`, `status`, `verify`, `prune`.
//! - [`interrupt`]: SIGINT/SIGTERM during foreground work.
//! - [`generate`]: `completions` and `man`, for packagers.

pub mod args;
pub mod backup;
pub mod check;
pub mod daemon_client;
pub mod exit;
pub mod generate;
pub mod interrupt;
pub mod points;
pub mod print;
pub mod restore;
