//! Configuration file loading and validation.
//!
//! The daemon is configured by one TOML file (see `config/snapback.example.toml`).
//! The parser here is deliberately hand-written on top of
//! [`toml::de::DeTable`] instead of `#[derive(Deserialize)]` with
//! `deny_unknown_fields`, because serde stops at the first error. An operator
//! editing a config on a server wants *every* mistake reported in one go, each
//! with `file:line:col`, so that one edit/reload round fixes them all. The walk
//! therefore keeps going after a problem, collects all of them, and only
//! returns a [`Config`] when there are none.
//!
//! Secrets are never stored in the config: accounts name an environment
//! variable or a file that holds the key / SAS token, or use managed identity.
//! Fields that look like an inline secret (`shared_key`, `sas_token`, ...) are
//! rejected with a hint pointing at the supported alternatives.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;
use url::{Host, Url};

/// Where the daemon looks for its config when no `--config` is given; the
/// usual FHS location for a system service's configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/snapback/snapback.toml";

const DEFAULT_STATE_DIR: &str = "/var/lib/snapback";
const DEFAULT_MAX_CONCURRENT_CYCLES: usize = 4;
const DEFAULT_MAX_INFLIGHT_REQUESTS: usize = 32;
const DEFAULT_MAX_BUFFER_MIB: u64 = 32;
const MAX_BUFFER_MIB: u64 = 65536;
const MAX_INFLIGHT_REQUESTS: usize = 1024;
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// `copy_stall_timeout` when unset: Azure's asynchronous copies are best-effort and may sit
/// queued for a while, but do not sit still for half an hour.
pub const DEFAULT_COPY_STALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// `lease_duration` when unset: the longest finite lease Azure grants.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(60);
/// The lease durations Azure grants (Lease Blob: 15 to 60 seconds, or infinite).
pub const LEASE_DURATION_RANGE: std::ops::RangeInclusive<u64> = 15..=60;
const DEFAULT_TZ: chrono_tz::Tz = chrono_tz::Tz::UTC;
const DEFAULT_DISK_CONCURRENCY: usize = 8;
const MAX_DISK_CONCURRENCY: usize = 64;
/// `sun_path` in `struct sockaddr_un` is 108 bytes on Linux, including the
/// terminating NUL; a longer control socket path fails only at bind time, so
/// it is caught here where the message can point at the config line.
const MAX_UNIX_SOCKET_PATH: usize = 107;

const TOP_FIELDS: &[&str] = &[
    "state_dir",
    "log_format",
    "max_concurrent_cycles",
    "max_inflight_requests",
    "max_buffer_mib",
    "shutdown_grace",
    "copy_stall_timeout",
    "lease_duration",
    "metrics_listen",
    "control_socket",
    "accounts",
    "azure",
    "disk",
    "hooks",
    "cluster",
];

const ACCOUNT_FIELDS: &[&str] = &[
    "endpoint",
    "account_name",
    "shared_key_env",
    "shared_key_file",
    "sas_token_env",
    "sas_token_file",
    "managed_identity",
    "client_id",
    "throttle",
    "allow_insecure_http",
];

const DISK_FIELDS: &[&str] = &[
    "name",
    "source",
    "managed_disk",
    "snapshot_resource_group",
    "backup",
    "schedule",
    "tz",
    "jitter",
    "window",
    "concurrency",
    "copy_mode",
    "adopt_existing_backup",
    "verify",
    "retention",
    "hooks",
];

const RETENTION_FIELDS: &[&str] = &["keep_last", "hourly", "daily", "weekly", "monthly"];

/// The whole validated configuration.
///
/// Every field is already defaulted and checked, so the rest of the daemon
/// never has to re-validate or guess defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file this was loaded from; kept so that later messages (e.g. on
    /// reload) can name it.
    pub path: PathBuf,
    /// Directory for the state database and other local state.
    pub state_dir: PathBuf,
    /// Log output format.
    pub log_format: LogFormat,
    /// Upper bound on backup cycles running at the same time, across all
    /// disks, to bound memory and network use.
    pub max_concurrent_cycles: usize,
    /// Upper bound on page requests (read + put, or clear) in flight at once across all
    /// disks: bounds memory to about this many × 4 MiB, and the load on the accounts.
    pub max_inflight_requests: usize,
    /// Upper bound, in MiB, on page data held in memory at once across all disks (client
    /// copy reads and their puts): the memory bound whatever the write sizes.
    pub max_buffer_mib: u64,
    /// How long in-flight cycles may keep running after a shutdown signal
    /// before they are abandoned (they resume safely on next start).
    pub shutdown_grace: Duration,
    /// How long an asynchronous Copy Blob (seed, restore) may report the same progress
    /// before it is aborted as stalled and counted as a failed copy.
    pub copy_stall_timeout: Duration,
    /// How long a disk's lease lasts without a renewal (`lease_duration`, Azure allows 15 to
    /// 60 s): how long a dead owner keeps its disks, and what the renewal schedule, the
    /// client-side fence and the timeout of every write derive from
    /// (`ownership::LeaseTiming`).
    pub lease_duration: Duration,
    /// Where to serve Prometheus metrics; `None` disables the endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Unix socket for the control CLI; defaults to `<state_dir>/control.sock`
    /// so that a single directory holds everything the daemon writes.
    pub control_socket: PathBuf,
    /// Storage accounts by their `[accounts.KEY]` name.
    pub accounts: BTreeMap<String, AccountConfig>,
    /// The `[azure]` table (ARM endpoint and credential); required when a disk is a
    /// managed disk.
    pub azure: Option<azure::AzureConfig>,
    /// Disks to back up, in file order.
    pub disks: Vec<DiskConfig>,
    /// The `[hooks]` table: hooks of every disk that does not override them.
    pub hooks: Hooks,
    /// The `[cluster]` table: replicas sharing the disks (`None`: this daemon runs them all).
    pub cluster: Option<ClusterConfig>,
}

/// Log output format: `text` for humans at a terminal / journald, `json` for
/// log shippers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

pub use crate::azure::account::{AccountConfig, AuthConfig};

/// `account/container/blob`, as the config names a page blob (parsed and checked by
/// [`BlobRef`]'s `FromStr`).
pub use crate::model::BlobRef;

/// A cron schedule: the expression as written and its parse. The one place cron is parsed.
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    cron: croner::Cron,
}

impl Schedule {
    /// Parses a cron expression the way the scheduler runs it: 5 fields, or 6 with leading
    /// seconds (croner's optional-seconds mode), no year field.
    pub fn parse(expr: &str) -> Result<Schedule, String> {
        use croner::parser::{CronParser, Seconds, Year};
        let expr = expr.trim();
        let n = expr.split_whitespace().count();
        if n != 5 && n != 6 {
            return Err(format!(
                "cron expression \"{expr}\" has {n} fields; expected 5 (minute hour day-of-month month day-of-week) or 6 (with leading seconds)"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(expr)
            .map_err(|e| format!("invalid cron expression \"{expr}\": {e}"))?;
        Ok(Schedule {
            expr: expr.to_string(),
            cron,
        })
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    pub fn cron(&self) -> &croner::Cron {
        &self.cron
    }
}

/// Two schedules are the same if they are written the same (a config reload compares them).
impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr
    }
}

impl Eq for Schedule {}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.expr)
    }
}

/// What a disk's backups are taken of: exactly one of `source` and `managed_disk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    /// A page blob (`source = "account/container/blob"`).
    Blob(BlobRef),
    /// A managed disk (`managed_disk = "/subscriptions/…/disks/NAME"`); its incremental
    /// snapshots are made in `snapshot_group` (`snapshot_resource_group`, default the disk's).
    Managed {
        disk: crate::arm::id::ResourceId,
        snapshot_group: crate::arm::id::ResourceGroup,
    },
}

impl DiskConfig {
    /// The source page blob, for a page-blob disk.
    pub fn blob_source(&self) -> Option<&BlobRef> {
        self.source.blob()
    }
}

/// Resource group names compare without regard to case, as ARM does.
fn same_group(a: &crate::arm::id::ResourceGroup, b: &crate::arm::id::ResourceGroup) -> bool {
    a.subscription.eq_ignore_ascii_case(&b.subscription) && a.name.eq_ignore_ascii_case(&b.name)
}

/// How a managed source's display form names a snapshot resource group other than the
/// disk's own: `<disk id> snapshots=/subscriptions/S/resourceGroups/G`.
const SNAPSHOTS_IN: &str = " snapshots=";

impl DiskSource {
    /// The page blob, for a page-blob source.
    pub fn blob(&self) -> Option<&BlobRef> {
        match self {
            DiskSource::Blob(b) => Some(b),
            DiskSource::Managed { .. } => None,
        }
    }

    /// A managed source from its display form (as the state and the lock blob's record keep
    /// it), None for anything else: the disk and where its snapshots are.
    pub fn parse_managed(
        recorded: &str,
    ) -> Option<(crate::arm::id::ResourceId, crate::arm::id::ResourceGroup)> {
        let (disk, group) = match recorded.split_once(SNAPSHOTS_IN) {
            Some((disk, group)) => (disk, Some(group)),
            None => (recorded, None),
        };
        let disk: crate::arm::id::ResourceId = disk.parse().ok()?;
        let group = match group {
            None => disk.group.clone(),
            Some(g) => {
                let parts: Vec<&str> = g.split('/').collect();
                let ["", subs, sub, rgs, name] = parts.as_slice() else {
                    return None;
                };
                if !subs.eq_ignore_ascii_case("subscriptions")
                    || !rgs.eq_ignore_ascii_case("resourceGroups")
                {
                    return None;
                }
                crate::arm::id::ResourceGroup {
                    subscription: sub.to_string(),
                    name: name.to_string(),
                }
            }
        };
        Some((disk, group))
    }

    /// Whether `recorded` (a display form the state or a record kept) names this source. A
    /// managed disk recorded before the display form named its snapshot resource group (by
    /// its id alone) is this source whatever the group.
    pub fn is_recorded_as(&self, recorded: &str) -> bool {
        let now = self.to_string();
        now == recorded
            || matches!(self, DiskSource::Managed { disk, .. }
                if !recorded.contains(SNAPSHOTS_IN) && disk.to_string() == recorded)
    }
}

/// A page blob as `account/container/blob`, a managed disk as its resource id (followed by
/// ` snapshots=<resource group id>` when its snapshots go to another group than the disk's).
impl fmt::Display for DiskSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskSource::Blob(b) => b.fmt(f),
            DiskSource::Managed {
                disk,
                snapshot_group,
            } if !same_group(snapshot_group, &disk.group) => write!(
                f,
                "{disk}{SNAPSHOTS_IN}/subscriptions/{}/resourceGroups/{}",
                snapshot_group.subscription, snapshot_group.name
            ),
            DiskSource::Managed { disk, .. } => disk.fmt(f),
        }
    }
}

/// One `[[disk]]` entry: a source (page blob or managed disk) and where its backup goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Unique name; used in state, metrics labels and the control CLI, hence
    /// the restricted character set.
    pub name: String,
    /// What is backed up.
    pub source: DiskSource,
    /// The page blob the backup is written to (snapshots are taken of it).
    pub backup: BlobRef,
    /// Cron schedule (5 fields, or 6 with leading seconds); `None` means
    /// the disk is only backed up on demand.
    pub schedule: Option<Schedule>,
    /// IANA time zone the schedule, the window and retention periods are evaluated in.
    pub tz: chrono_tz::Tz,
    /// Random delay up to this long before each scheduled cycle, so many
    /// disks on the same schedule do not all hit the storage account at once.
    pub jitter: Option<Duration>,
    /// Time-of-day window in which cycles may start.
    pub window: Option<Window>,
    /// Parallel page range requests for this disk.
    pub concurrency: usize,
    /// How changed pages are copied.
    pub copy_mode: CopyMode,
    /// Whether snapback may write to an existing `backup` blob it did not create (no
    /// `snapback_backup_of` tag naming this disk). Default false: such a blob is refused.
    pub adopt_existing_backup: bool,
    /// Whether to verify the backup after each cycle.
    pub verify: VerifyMode,
    /// Which backup snapshots to keep.
    pub retention: Retention,
    /// This disk's `hooks` table (overrides of the global `[hooks]`; see [`Config::hooks_for`]).
    pub hooks: Hooks,
    /// Line of the `[[disk]]` header, so later runtime messages can point the
    /// operator at the right entry.
    pub line: usize,
}

/// A daily time-of-day window, in minutes after midnight (local to the
/// disk's `tz`). `start_minute > end_minute` means the window wraps past
/// midnight (e.g. `22:00-06:00`). The start is inclusive, the end exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Start, inclusive, in `0..1440`.
    pub start_minute: u16,
    /// End, exclusive, in `0..1440`.
    pub end_minute: u16,
}

impl Window {
    /// Whether `minute_of_day` (0..1440) lies inside the window, taking a
    /// wrap past midnight into account. A window whose start equals its end
    /// (never produced by the parser) is treated as the whole day, so a
    /// hand-built degenerate window cannot silently stop all backups.
    pub fn contains(&self, minute_of_day: u16) -> bool {
        use std::cmp::Ordering;
        match self.start_minute.cmp(&self.end_minute) {
            Ordering::Less => minute_of_day >= self.start_minute && minute_of_day < self.end_minute,
            Ordering::Greater => {
                minute_of_day >= self.start_minute || minute_of_day < self.end_minute
            }
            Ordering::Equal => true,
        }
    }
}

impl FromStr for Window {
    type Err = String;

    /// Parses `HH:MM-HH:MM`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("invalid window \"{s}\": expected \"HH:MM-HH:MM\", e.g. \"22:00-06:00\"");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let start_minute = parse_hhmm(a.trim()).ok_or_else(bad)?;
        let end_minute = parse_hhmm(b.trim()).ok_or_else(bad)?;
        if start_minute == end_minute {
            return Err(format!(
                "invalid window \"{s}\": start and end are equal; omit `window` to allow any time"
            ));
        }
        Ok(Window {
            start_minute,
            end_minute,
        })
    }
}

fn parse_hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    if !h.bytes().all(|b| b.is_ascii_digit()) || !m.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// How changed page ranges get from source to backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CopyMode {
    /// Read pages through the daemon and write them (works everywhere).
    #[default]
    Client,
    /// Let the storage service copy pages (`Put Page From URL`); no data
    /// through the daemon, but needs the source readable by the service.
    Server,
    /// Try server-side, fall back to client-side.
    Auto,
}

/// Whether to re-read and compare the backup after a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyMode {
    /// No verification (cheapest).
    #[default]
    Never,
    /// Verify after each completed cycle.
    AfterCycle,
}

/// Which backup snapshots to keep. Each rule keeps the newest snapshot in
/// that many distinct periods; a snapshot kept by any rule survives. `None`
/// means the rule is not used; if every rule is `None` nothing is pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Keep the N most recent snapshots.
    pub keep_last: Option<u32>,
    /// One per hour for N hours.
    pub hourly: Option<u32>,
    /// One per day for N days.
    pub daily: Option<u32>,
    /// One per week for N weeks.
    pub weekly: Option<u32>,
    /// One per month for N months.
    pub monthly: Option<u32>,
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file that was tried.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The file was read but has problems; all of them are listed, one per
    /// line, each already formatted as `file:line:col: message` in file order.
    #[error("{}", .problems.join("\n"))]
    Invalid {
        /// The file that was parsed.
        path: PathBuf,
        /// Every problem found, in file order.
        problems: Vec<String>,
    },
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Validates config `text`; `path` is only used in messages and stored in
    /// [`Config::path`], which lets tests parse strings without files.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cx = Ctx::new(text, path);
        // `parse_recoverable` is `DeTable::parse` plus error recovery, so
        // several syntax errors are reported at once too.
        let (doc, errors) = DeTable::parse_recoverable(text);
        if !errors.is_empty() {
            for e in errors {
                let span = e.span().unwrap_or(0..0);
                let mut msg = format!("invalid TOML: {}", e.message().trim());
                if msg.ends_with("duplicate key") {
                    if let Some(k) = text.get(span.clone()).filter(|k| !k.is_empty()) {
                        msg.push_str(&format!(" \"{k}\""));
                    }
                }
                cx.err(span, msg);
            }
            // The recovered document may be partial; checking it further
            // would mostly produce confusing follow-on errors.
            return Err(cx.into_error());
        }
        let config = build_config(&mut cx, doc.get_ref(), path);
        if cx.problems.is_empty() {
            Ok(config)
        } else {
            Err(cx.into_error())
        }
    }

    /// The hooks that run after `disk`'s cycles: its own, else the global ones.
    pub fn hooks_for(&self, disk: &DiskConfig) -> Hooks {
        disk.hooks.over(&self.hooks)
    }

    /// Looks up a disk by name.
    pub fn disk(&self, name: &str) -> Option<&DiskConfig> {
        self.disks.iter().find(|d| d.name == name)
    }
}

/// Parses a human duration such as `30s`, `5m`, `1h`, `500ms`, `2d`, or a
/// sum like `1h30m`. A unit is required: a bare `30` is ambiguous and a
/// classic source of "why is the grace period 30 ms" surprises.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: &str| {
        format!("invalid duration \"{s}\": {why}; expected e.g. \"500ms\", \"30s\", \"5m\", \"1h\", \"1h30m\"")
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(bad("empty"));
    }
    let bytes = t.as_bytes();
    let mut i = 0;
    let mut total = Duration::ZERO;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(bad("expected a number"));
        }
        let n: u64 = t[start..i].parse().map_err(|_| bad("number too large"))?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &t[ustart..i];
        let part = match unit {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "d" => n.checked_mul(86_400).map(Duration::from_secs),
            "" => return Err(bad("missing unit (ms, s, m, h, d)")),
            _ => {
                return Err(bad(&format!(
                    "unknown unit \"{unit}\" (use ms, s, m, h, d)"
                )))
            }
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| bad("too large"))?;
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
    }
    Ok(total)
}

// ---------------------------------------------------------------------------
// Problem collection
// ---------------------------------------------------------------------------

mod accounts;
pub mod azure;
pub mod cluster;
pub use cluster::ClusterConfig;
mod disks;
mod hooks;
mod throttle;
pub use throttle::ThrottleConfig;
mod reader;
mod validate;
pub use hooks::{Hooks, DEFAULT_HOOK_TIMEOUT};
use reader::Ctx;
use validate::build_config;

#[cfg(test)]
mod tests;
