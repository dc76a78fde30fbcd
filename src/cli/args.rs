//! The command line's definition (clap): every subcommand and flag. `--help`, the man pages
//! and the shell completions are generated from it, so they never drift from it.

use snapback::config::DEFAULT_CONFIG_PATH;
use std::path::PathBuf;

#[derive(clap::Parser, Debug)]
#[command(
    name = "snapback",
    version,
    about = "Incremental, crash-safe backups of Azure page blobs (VM disks)"
)]
pub struct Cli {
    /// Config file.
    #[arg(long, global = true, env = "SNAPBACK_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Log format on stderr (overrides the config's log_format).
    #[arg(long, global = true, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
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
    Restore(RestoreArgs),
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

/// The new disk's properties (`restore --to-managed-disk`); each overrides what the restore
/// point recorded of the source disk.
#[derive(clap::Args, Debug)]
pub struct ManagedDiskFlags {
    /// SKU of the new managed disk (e.g. Premium_LRS; default: Azure's).
    #[arg(long, requires = "to_managed_disk")]
    pub sku: Option<String>,
    /// Availability zone of the new managed disk (1, 2 or 3; default: the source disk's).
    #[arg(long, requires = "to_managed_disk")]
    pub zone: Option<String>,
    /// OS type of the new managed disk, Windows or Linux (default: the source disk's as
    /// the restore point recorded it; none: a data disk).
    #[arg(long, requires = "to_managed_disk")]
    pub os_type: Option<String>,
    /// Hyper-V generation of the new OS disk, V1 or V2 (default: the source disk's).
    #[arg(long, requires = "to_managed_disk")]
    pub hyper_v_generation: Option<String>,
    /// Disk encryption set (customer-managed key) of the new managed disk, a resource id
    /// (default: the source disk's).
    #[arg(long, requires = "to_managed_disk")]
    pub disk_encryption_set: Option<String>,
}

// No doc comment here: clap would take it for the subcommand's help, which the variant's
// gives.
#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    pub disk: String,
    /// The restore point (backup snapshot id, as `list` prints it).
    #[arg(long, conflicts_with = "at", required_unless_present = "at")]
    pub snapshot: Option<String>,
    /// The newest restore point captured at or before this time (RFC 3339, or a local
    /// date-time in the disk's tz).
    #[arg(long)]
    pub at: Option<String>,
    /// Target blob ACCOUNT/CONTAINER/BLOB (ACCOUNT is an [accounts.NAME] key).
    #[arg(
        long,
        required_unless_present = "to_managed_disk",
        conflicts_with = "to_managed_disk"
    )]
    pub to: Option<String>,
    /// Target managed disk /subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/disks/NAME,
    /// created for the restore (a managed-disk backup; needs [azure]).
    #[arg(long)]
    pub to_managed_disk: Option<String>,
    #[command(flatten)]
    pub managed: Box<ManagedDiskFlags>,
    /// Restart the backup chain on the restored disk (--to: the promoted blob becomes the
    /// backup of a new disk entry; --to-managed-disk: the disk's chain moves to the new disk).
    #[arg(long)]
    pub rebase: bool,
    /// Disk name of the rebased chain (default: DISK-restored).
    #[arg(long, requires = "rebase", conflicts_with = "to_managed_disk")]
    pub name: Option<String>,
    /// Append the rebased chain's [[disk]] stanza to the config file (default: print it).
    #[arg(long, requires = "rebase", conflicts_with = "to_managed_disk")]
    pub write_config: bool,
    /// Overwrite the target if it exists.
    #[arg(long)]
    pub force: bool,
}
