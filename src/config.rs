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
const DEFAULT_TZ: &str = "UTC";
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
    "metrics_listen",
    "control_socket",
    "accounts",
    "disk",
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
];

const DISK_FIELDS: &[&str] = &[
    "name",
    "source",
    "backup",
    "schedule",
    "tz",
    "jitter",
    "window",
    "concurrency",
    "copy_mode",
    "verify",
    "retention",
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
    /// Where to serve Prometheus metrics; `None` disables the endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// Unix socket for the control CLI; defaults to `<state_dir>/control.sock`
    /// so that a single directory holds everything the daemon writes.
    pub control_socket: PathBuf,
    /// Storage accounts by their `[accounts.KEY]` name.
    pub accounts: BTreeMap<String, AccountConfig>,
    /// Disks to back up, in file order.
    pub disks: Vec<DiskConfig>,
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

/// One `[accounts.KEY]` section: where a storage account is and how to
/// authenticate to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountConfig {
    /// The `[accounts.KEY]` name; this is what disk `source`/`backup` paths
    /// refer to, and it need not equal the Azure account name.
    pub key: String,
    /// The blob service root, e.g. `https://acct.blob.core.windows.net/` or,
    /// for path-style endpoints (Azurite), `http://127.0.0.1:10000/premium`.
    ///
    /// Note that a path-style root has no trailing slash, so `Url::join` with
    /// a relative path would *replace* the account segment; append container
    /// and blob names with `path_segments_mut()` instead.
    pub endpoint: Url,
    /// The storage account name, needed for Shared Key signing. Derived from
    /// the endpoint unless `account_name` overrides it.
    pub account_name: String,
    /// True when the account is addressed by the first URL path segment
    /// (Azurite, emulators, IP endpoints) instead of by host name.
    pub path_style: bool,
    /// How to authenticate.
    pub auth: AuthConfig,
}

/// How to authenticate to an account. Exactly one per account; the secret
/// itself is always outside the config file, so the file can be world-readable
/// and kept in version control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    /// Account key, read from this environment variable.
    SharedKeyEnv(String),
    /// Account key, read from this file (e.g. a systemd credential).
    SharedKeyFile(PathBuf),
    /// SAS token, read from this environment variable.
    SasTokenEnv(String),
    /// SAS token, read from this file.
    SasTokenFile(PathBuf),
    /// Azure managed identity; `client_id` selects a user-assigned identity,
    /// `None` means the system-assigned one.
    ManagedIdentity {
        /// Client id of a user-assigned identity.
        client_id: Option<String>,
    },
}

/// A blob addressed as `account/container/blob`, where `account` is the key
/// of an `[accounts.KEY]` section (not necessarily the Azure account name).
///
/// One string per side keeps disk entries short and greppable; the blob part
/// may itself contain `/` (virtual directories).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobPath {
    /// Key of the `[accounts.KEY]` section.
    pub account: String,
    /// Container name.
    pub container: String,
    /// Blob name, possibly containing `/`.
    pub blob: String,
}

impl fmt::Display for BlobPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.account, self.container, self.blob)
    }
}

impl FromStr for BlobPath {
    type Err = String;

    /// Parses `account/container/blob`. Container names are checked against
    /// Azure's rules here so a typo fails at load time rather than as an HTTP
    /// 400 in the middle of the night.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let form = "expected \"account/container/blob\"";
        let mut parts = s.splitn(3, '/');
        let (Some(account), Some(container), Some(blob)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("invalid blob path \"{s}\": {form}"));
        };
        if account.is_empty() {
            return Err(format!("invalid blob path \"{s}\": empty account; {form}"));
        }
        if container.is_empty() {
            return Err(format!(
                "invalid blob path \"{s}\": empty container; {form}"
            ));
        }
        if blob.is_empty() {
            return Err(format!(
                "invalid blob path \"{s}\": empty blob name; {form}"
            ));
        }
        if !valid_container_name(container) {
            return Err(format!(
                "invalid blob path \"{s}\": container \"{container}\" is not a valid container name \
                 (3-63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit)"
            ));
        }
        if blob.starts_with('/') || blob.ends_with('/') {
            return Err(format!(
                "invalid blob path \"{s}\": blob name must not start or end with '/'"
            ));
        }
        if blob.chars().count() > 1024 {
            return Err(format!(
                "invalid blob path \"{s}\": blob name is longer than 1024 characters"
            ));
        }
        if blob.chars().any(char::is_control) {
            return Err(format!(
                "invalid blob path \"{s}\": blob name contains control characters"
            ));
        }
        Ok(BlobPath {
            account: account.to_string(),
            container: container.to_string(),
            blob: blob.to_string(),
        })
    }
}

/// One `[[disk]]` entry: a source page blob and where its backup goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Unique name; used in state, metrics labels and the control CLI, hence
    /// the restricted character set.
    pub name: String,
    /// The page blob being backed up.
    pub source: BlobPath,
    /// The page blob the backup is written to (snapshots are taken of it).
    pub backup: BlobPath,
    /// Cron expression (5 fields, or 6 with leading seconds); `None` means
    /// the disk is only backed up on demand.
    pub schedule: Option<String>,
    /// IANA time zone the schedule and window are evaluated in. Only checked
    /// loosely here (no tz database is linked into this module).
    pub tz: String,
    /// Random delay up to this long before each scheduled cycle, so many
    /// disks on the same schedule do not all hit the storage account at once.
    pub jitter: Option<Duration>,
    /// Time-of-day window in which cycles may start.
    pub window: Option<Window>,
    /// Parallel page range requests for this disk.
    pub concurrency: usize,
    /// How changed pages are copied.
    pub copy_mode: CopyMode,
    /// Whether to verify the backup after each cycle.
    pub verify: VerifyMode,
    /// Which backup snapshots to keep.
    pub retention: Retention,
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

/// Collects problems with their byte offsets; turned into `file:line:col`
/// messages, sorted in file order, at the end.
struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    line_starts: Vec<usize>,
    problems: Vec<(usize, String)>,
}

impl<'a> Ctx<'a> {
    fn new(text: &'a str, path: &'a Path) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Ctx {
            path,
            text,
            line_starts,
            problems: Vec::new(),
        }
    }

    fn err(&mut self, span: Range<usize>, msg: impl Into<String>) {
        self.problems.push((span.start, msg.into()));
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line_idx = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let start = self.line_starts[line_idx];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line_idx + 1, col + 1)
    }

    fn line(&self, offset: usize) -> usize {
        self.line_col(offset).0
    }

    fn into_error(mut self) -> ConfigError {
        self.problems.sort_by_key(|(off, _)| *off);
        let problems = self
            .problems
            .iter()
            .map(|(off, msg)| {
                let (line, col) = self.line_col(*off);
                format!("{}:{line}:{col}: {msg}", self.path.display())
            })
            .collect();
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            problems,
        }
    }
}

type Value<'i> = Spanned<DeValue<'i>>;

/// Reports every key of `table` not in `known`, with a "did you mean" for
/// near misses and a pointer to the supported alternatives for inline
/// secrets.
fn check_unknown(cx: &mut Ctx<'_>, table: &DeTable<'_>, known: &[&str], prefix: &str) {
    for (key, _) in table.iter() {
        let k: &str = key.get_ref();
        if known.contains(&k) {
            continue;
        }
        let mut msg = format!("{prefix}unknown field \"{k}\"");
        if let Some(hint) = secret_hint(k) {
            msg.push_str(&format!(
                "; secrets must not be stored in the config file, {hint}"
            ));
        } else if let Some(s) = closest(k, known) {
            msg.push_str(&format!(" (did you mean \"{s}\"?)"));
        } else {
            msg.push_str(&format!(" (expected one of: {})", known.join(", ")));
        }
        cx.err(key.span(), msg);
    }
}

fn secret_hint(key: &str) -> Option<&'static str> {
    let k = key.to_ascii_lowercase().replace('-', "_");
    match k.as_str() {
        "shared_key" | "key" | "account_key" | "access_key" | "storage_key" | "secret"
        | "password" | "connection_string" => {
            Some("use shared_key_env or shared_key_file (or sas_token_env / sas_token_file, or managed_identity = true)")
        }
        "sas_token" | "sas" | "token" => Some("use sas_token_env or sas_token_file"),
        "client_secret" => Some("use managed_identity = true (with client_id for a user-assigned identity)"),
        _ => None,
    }
}

/// Closest known name within edit distance 2, if any.
fn closest<'k>(word: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, case-insensitive.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------
// Typed field accessors: each reports a type error and returns None.
// ---------------------------------------------------------------------------

fn type_err(cx: &mut Ctx<'_>, prefix: &str, key: &str, v: &Value<'_>, want: &str) {
    cx.err(
        v.span(),
        format!(
            "{prefix}field \"{key}\" must be {want}, found {}",
            v.get_ref().type_str()
        ),
    );
}

fn get_str<'t>(
    cx: &mut Ctx<'_>,
    t: &'t DeTable<'_>,
    key: &str,
    prefix: &str,
) -> Option<(&'t str, Range<usize>)> {
    let v = t.get(key)?;
    match v.get_ref() {
        DeValue::String(s) => Some((s.as_ref(), v.span())),
        _ => {
            type_err(cx, prefix, key, v, "a string");
            None
        }
    }
}

/// A string that must not be empty (paths, names, env vars).
fn get_nonempty_str<'t>(
    cx: &mut Ctx<'_>,
    t: &'t DeTable<'_>,
    key: &str,
    prefix: &str,
) -> Option<(&'t str, Range<usize>)> {
    let (s, span) = get_str(cx, t, key, prefix)?;
    if s.trim().is_empty() {
        cx.err(span, format!("{prefix}field \"{key}\" must not be empty"));
        return None;
    }
    Some((s, span))
}

fn get_int(
    cx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    key: &str,
    prefix: &str,
) -> Option<(i128, Range<usize>)> {
    let v = t.get(key)?;
    match v.get_ref() {
        DeValue::Integer(i) => {
            let digits: String = i
                .as_str()
                .chars()
                .filter(|&c| c != '_' && c != '+')
                .collect();
            match i128::from_str_radix(&digits, i.radix()) {
                Ok(n) => Some((n, v.span())),
                Err(_) => {
                    cx.err(v.span(), format!("{prefix}field \"{key}\" is out of range"));
                    None
                }
            }
        }
        _ => {
            type_err(cx, prefix, key, v, "an integer");
            None
        }
    }
}

fn get_int_in(
    cx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    key: &str,
    prefix: &str,
    min: i128,
    max: i128,
) -> Option<i128> {
    let (n, span) = get_int(cx, t, key, prefix)?;
    if n < min || n > max {
        let range = if max == i128::from(u32::MAX) || max == usize::MAX as i128 {
            format!("at least {min}")
        } else {
            format!("between {min} and {max}")
        };
        cx.err(
            span,
            format!("{prefix}field \"{key}\" must be {range}, got {n}"),
        );
        return None;
    }
    Some(n)
}

fn get_bool(
    cx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    key: &str,
    prefix: &str,
) -> Option<(bool, Range<usize>)> {
    let v = t.get(key)?;
    match v.get_ref() {
        DeValue::Boolean(b) => Some((*b, v.span())),
        _ => {
            type_err(cx, prefix, key, v, "true or false");
            None
        }
    }
}

fn get_duration(cx: &mut Ctx<'_>, t: &DeTable<'_>, key: &str, prefix: &str) -> Option<Duration> {
    let v = t.get(key)?;
    let DeValue::String(s) = v.get_ref() else {
        type_err(
            cx,
            prefix,
            key,
            v,
            "a duration string such as \"30s\" or \"5m\"",
        );
        return None;
    };
    match parse_duration(s) {
        Ok(d) => Some(d),
        Err(e) => {
            cx.err(v.span(), format!("{prefix}field \"{key}\": {e}"));
            None
        }
    }
}

/// A string field restricted to a fixed set of spellings.
fn get_choice<T: Copy>(
    cx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    key: &str,
    prefix: &str,
    choices: &[(&str, T)],
) -> Option<T> {
    let (s, span) = get_str(cx, t, key, prefix)?;
    if let Some((_, v)) = choices.iter().find(|(name, _)| *name == s) {
        return Some(*v);
    }
    let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    cx.err(
        span,
        format!(
            "{prefix}field \"{key}\" must be one of {}, got \"{s}\"",
            names.join(", ")
        ),
    );
    None
}

// ---------------------------------------------------------------------------
// The walk
// ---------------------------------------------------------------------------

fn build_config(cx: &mut Ctx<'_>, doc: &DeTable<'_>, path: &Path) -> Config {
    check_unknown(cx, doc, TOP_FIELDS, "");
    let p = "";

    let state_dir = get_nonempty_str(cx, doc, "state_dir", p).map_or_else(
        || PathBuf::from(DEFAULT_STATE_DIR),
        |(s, _)| PathBuf::from(s),
    );
    let log_format = get_choice(
        cx,
        doc,
        "log_format",
        p,
        &[("text", LogFormat::Text), ("json", LogFormat::Json)],
    )
    .unwrap_or_default();
    let max_concurrent_cycles =
        get_int_in(cx, doc, "max_concurrent_cycles", p, 1, usize::MAX as i128)
            .map_or(DEFAULT_MAX_CONCURRENT_CYCLES, |n| n as usize);
    let max_inflight_requests = get_int_in(
        cx,
        doc,
        "max_inflight_requests",
        p,
        1,
        MAX_INFLIGHT_REQUESTS as i128,
    )
    .map_or(DEFAULT_MAX_INFLIGHT_REQUESTS, |n| n as usize);
    // At least one full 4 MiB read must fit.
    let max_buffer_mib = get_int_in(cx, doc, "max_buffer_mib", p, 4, MAX_BUFFER_MIB as i128)
        .map_or(DEFAULT_MAX_BUFFER_MIB, |n| n as u64);
    let shutdown_grace =
        get_duration(cx, doc, "shutdown_grace", p).unwrap_or(DEFAULT_SHUTDOWN_GRACE);

    let metrics_listen = get_str(cx, doc, "metrics_listen", p).and_then(|(s, span)| {
        match s.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                cx.err(
                    span,
                    format!(
                        "field \"metrics_listen\": invalid socket address \"{s}\"; expected IP:PORT such as \"127.0.0.1:9464\" or \"[::1]:9464\""
                    ),
                );
                None
            }
        }
    });

    let control_socket = match get_nonempty_str(cx, doc, "control_socket", p) {
        Some((s, span)) => {
            if s.len() > MAX_UNIX_SOCKET_PATH {
                cx.err(
                    span,
                    format!("field \"control_socket\": path is longer than {MAX_UNIX_SOCKET_PATH} bytes, the limit for a unix socket"),
                );
            }
            PathBuf::from(s)
        }
        None => {
            let derived = state_dir.join("control.sock");
            if derived.as_os_str().len() > MAX_UNIX_SOCKET_PATH {
                if let Some(v) = doc.get("state_dir") {
                    cx.err(
                        v.span(),
                        format!("field \"state_dir\": the default control socket path \"{}\" is longer than {MAX_UNIX_SOCKET_PATH} bytes, the limit for a unix socket; set control_socket to a shorter path", derived.display()),
                    );
                }
            }
            derived
        }
    };

    let (accounts, account_keys) = build_accounts(cx, doc);
    let disks = build_disks(cx, doc, &account_keys);

    Config {
        path: path.to_path_buf(),
        state_dir,
        log_format,
        max_concurrent_cycles,
        max_inflight_requests,
        max_buffer_mib,
        shutdown_grace,
        metrics_listen,
        control_socket,
        accounts,
        disks,
    }
}

/// Returns the valid accounts, plus the keys of *all* account sections (even
/// invalid ones), so that disks referring to a broken account do not get a
/// misleading "unknown account" error on top.
fn build_accounts(
    cx: &mut Ctx<'_>,
    doc: &DeTable<'_>,
) -> (BTreeMap<String, AccountConfig>, Vec<String>) {
    let mut accounts = BTreeMap::new();
    let mut keys = Vec::new();
    let Some(v) = doc.get("accounts") else {
        return (accounts, keys);
    };
    let DeValue::Table(table) = v.get_ref() else {
        type_err(cx, "", "accounts", v, "a table of [accounts.NAME] sections");
        return (accounts, keys);
    };
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        keys.push(name.to_string());
        let prefix = format!("account \"{name}\": ");
        if !valid_simple_name(name) {
            cx.err(
                key.span(),
                format!("{prefix}invalid account key; use 1-63 characters from A-Z a-z 0-9 . _ - (it is used in \"account/container/blob\" paths)"),
            );
        }
        let DeValue::Table(t) = value.get_ref() else {
            cx.err(
                value.span(),
                format!(
                    "{prefix}must be a table ([accounts.{name}]), found {}",
                    value.get_ref().type_str()
                ),
            );
            continue;
        };
        if let Some(acct) = build_account(cx, name, t, value.span(), &prefix) {
            accounts.insert(name.to_string(), acct);
        }
    }
    (accounts, keys)
}

fn build_account(
    cx: &mut Ctx<'_>,
    key: &str,
    t: &DeTable<'_>,
    header: Range<usize>,
    prefix: &str,
) -> Option<AccountConfig> {
    check_unknown(cx, t, ACCOUNT_FIELDS, prefix);

    // Authentication: exactly one method.
    let mut methods: Vec<(&str, Range<usize>, AuthConfig)> = Vec::new();
    if let Some((s, span)) = get_nonempty_str(cx, t, "shared_key_env", prefix) {
        if check_env_name(cx, s, span.clone(), "shared_key_env", prefix) {
            methods.push((
                "shared_key_env",
                span,
                AuthConfig::SharedKeyEnv(s.to_string()),
            ));
        }
    }
    if let Some((s, span)) = get_nonempty_str(cx, t, "shared_key_file", prefix) {
        methods.push((
            "shared_key_file",
            span,
            AuthConfig::SharedKeyFile(PathBuf::from(s)),
        ));
    }
    if let Some((s, span)) = get_nonempty_str(cx, t, "sas_token_env", prefix) {
        if check_env_name(cx, s, span.clone(), "sas_token_env", prefix) {
            methods.push((
                "sas_token_env",
                span,
                AuthConfig::SasTokenEnv(s.to_string()),
            ));
        }
    }
    if let Some((s, span)) = get_nonempty_str(cx, t, "sas_token_file", prefix) {
        methods.push((
            "sas_token_file",
            span,
            AuthConfig::SasTokenFile(PathBuf::from(s)),
        ));
    }
    let client_id = get_nonempty_str(cx, t, "client_id", prefix);
    let managed = get_bool(cx, t, "managed_identity", prefix);
    if let Some((true, span)) = managed {
        methods.push((
            "managed_identity",
            span,
            AuthConfig::ManagedIdentity {
                client_id: client_id.as_ref().map(|(s, _)| s.to_string()),
            },
        ));
    } else if let Some((_, span)) = &client_id {
        cx.err(
            span.clone(),
            format!("{prefix}\"client_id\" is only valid with managed_identity = true"),
        );
    }
    // Presence counts even when the value itself was bad, so a typo in the
    // value does not also trigger "no authentication method".
    let auth_keys = [
        "shared_key_env",
        "shared_key_file",
        "sas_token_env",
        "sas_token_file",
    ];
    let any_auth_present = auth_keys.iter().any(|k| t.contains_key(*k))
        || matches!(t.get("managed_identity").map(|v| v.get_ref()), Some(v) if !matches!(v, DeValue::Boolean(false)));
    let auth = match methods.len() {
        0 => {
            if !any_auth_present {
                cx.err(
                    header.clone(),
                    format!("{prefix}no authentication method; set exactly one of shared_key_env, shared_key_file, sas_token_env, sas_token_file, managed_identity = true"),
                );
            }
            None
        }
        1 => methods.pop().map(|(_, _, a)| a),
        _ => {
            let names: Vec<&str> = methods.iter().map(|(n, _, _)| *n).collect();
            let span = methods[1].1.clone();
            cx.err(
                span,
                format!(
                    "{prefix}only one authentication method may be set, found {}",
                    names.join(" and ")
                ),
            );
            None
        }
    };

    let name_override = get_nonempty_str(cx, t, "account_name", prefix);
    let endpoint = match get_nonempty_str(cx, t, "endpoint", prefix) {
        Some((raw, span)) => match resolve_endpoint(raw) {
            Ok(e) => Some((e, span)),
            Err(msg) => {
                cx.err(span, format!("{prefix}field \"endpoint\": {msg}"));
                None
            }
        },
        None => {
            if !t.contains_key("endpoint") {
                cx.err(
                    header,
                    format!("{prefix}missing required field \"endpoint\" (e.g. \"https://ACCOUNT.blob.core.windows.net\")"),
                );
            }
            None
        }
    };

    let ((url, derived, path_style), ep_span) = endpoint?;
    let (account_name, name_span, derived_note) = match name_override {
        Some((s, span)) => (s.to_string(), span, ""),
        None => (
            derived,
            ep_span,
            " (derived from endpoint; set account_name to override)",
        ),
    };
    if !valid_storage_account_name(&account_name) {
        cx.err(
            name_span,
            format!("{prefix}\"{account_name}\" is not a valid storage account name{derived_note}: use 3-24 lowercase letters and digits"),
        );
        return None;
    }
    Some(AccountConfig {
        key: key.to_string(),
        endpoint: url,
        account_name,
        path_style,
        auth: auth?,
    })
}

fn check_env_name(cx: &mut Ctx<'_>, s: &str, span: Range<usize>, key: &str, prefix: &str) -> bool {
    let mut chars = s.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        cx.err(
            span,
            format!("{prefix}field \"{key}\" must be the *name* of an environment variable (letters, digits, _), got \"{s}\""),
        );
    }
    ok
}

/// Turns an endpoint URL into (service root, derived account name,
/// path_style).
fn resolve_endpoint(raw: &str) -> Result<(Url, String, bool), String> {
    let url = Url::parse(raw.trim()).map_err(|e| format!("invalid URL \"{raw}\": {e}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "URL scheme must be http or https, got \"{}\"",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "credentials must not be embedded in the endpoint URL; use the account's auth fields"
                .to_string(),
        );
    }
    if url.query().is_some() {
        return Err("endpoint must not have a query string; a SAS token belongs in sas_token_env or sas_token_file".to_string());
    }
    if url.fragment().is_some() {
        return Err("endpoint must not have a #fragment".to_string());
    }
    let host = url
        .host()
        .ok_or_else(|| format!("URL \"{raw}\" has no host"))?;
    let host_is_local = match &host {
        Host::Ipv4(_) | Host::Ipv6(_) => true,
        Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
    };
    let segments: Vec<&str> = url
        .path_segments()
        .map(|s| s.filter(|p| !p.is_empty()).collect())
        .unwrap_or_default();
    let path_style = !segments.is_empty() || host_is_local;
    if path_style {
        let Some(first) = segments.first() else {
            return Err(format!(
                "path-style endpoint \"{raw}\" needs the account name as its first path segment, e.g. \"http://127.0.0.1:10000/devstoreaccount1\""
            ));
        };
        if segments.len() > 1 {
            return Err(format!(
                "endpoint \"{raw}\" must be the service root (\"scheme://host[:port]/ACCOUNT\" for path-style); container and blob go in the disk's source/backup"
            ));
        }
        let account = first.to_string();
        let mut root = url.clone();
        root.set_path(&format!("/{first}"));
        Ok((root, account, true))
    } else {
        let account = match host {
            Host::Domain(d) => d.split('.').next().unwrap_or_default().to_ascii_lowercase(),
            // IP hosts are always path-style, handled above.
            Host::Ipv4(_) | Host::Ipv6(_) => String::new(),
        };
        let mut root = url.clone();
        root.set_path("/");
        Ok((root, account, false))
    }
}

fn build_disks(cx: &mut Ctx<'_>, doc: &DeTable<'_>, account_keys: &[String]) -> Vec<DiskConfig> {
    let mut disks = Vec::new();
    let Some(v) = doc.get("disk") else {
        return disks;
    };
    let DeValue::Array(entries) = v.get_ref() else {
        cx.err(
            v.span(),
            format!("\"disk\" must be an array of tables: write each disk as a [[disk]] section (found {})", v.get_ref().type_str()),
        );
        return disks;
    };
    // name -> line of its first definition
    let mut seen: HashMap<String, usize> = HashMap::new();
    // Valid disks with the span of their `backup` value, for the overlap checks.
    let mut valid: Vec<(DiskConfig, Range<usize>)> = Vec::new();
    for (idx, entry) in entries.iter().enumerate() {
        let DeValue::Table(t) = entry.get_ref() else {
            cx.err(
                entry.span(),
                format!(
                    "disk #{}: must be a table, found {}",
                    idx + 1,
                    entry.get_ref().type_str()
                ),
            );
            continue;
        };
        let line = cx.line(entry.span().start);
        if let Some(d) = build_disk(cx, t, entry.span(), idx, line, account_keys, &mut seen) {
            valid.push(d);
        }
    }
    check_blob_overlaps(cx, &valid);
    disks.extend(valid.into_iter().map(|(d, _)| d));
    disks
}

/// A backup blob written by two disks, or a backup that is some disk's
/// source, would silently destroy data, so it is rejected up front.
fn check_blob_overlaps(cx: &mut Ctx<'_>, disks: &[(DiskConfig, Range<usize>)]) {
    for (i, (d, span)) in disks.iter().enumerate() {
        for (other, _) in &disks[..i] {
            if other.backup == d.backup {
                cx.err(
                    span.clone(),
                    format!(
                        "disk \"{}\": backup {} is already the backup of disk \"{}\" (line {})",
                        d.name, d.backup, other.name, other.line
                    ),
                );
            }
        }
        for (j, (other, _)) in disks.iter().enumerate() {
            if j != i && other.source == d.backup {
                cx.err(
                    span.clone(),
                    format!(
                        "disk \"{}\": backup {} is the source of disk \"{}\" (line {}); a backup must never overwrite a source",
                        d.name, d.backup, other.name, other.line
                    ),
                );
            }
        }
    }
}

fn build_disk(
    cx: &mut Ctx<'_>,
    t: &DeTable<'_>,
    header: Range<usize>,
    idx: usize,
    line: usize,
    account_keys: &[String],
    seen: &mut HashMap<String, usize>,
) -> Option<(DiskConfig, Range<usize>)> {
    // Name first, so every other message for this disk can say which one.
    let raw_name = match t.get("name").map(|v| v.get_ref()) {
        Some(DeValue::String(s)) => Some(s.to_string()),
        _ => None,
    };
    let prefix = match &raw_name {
        Some(n) => format!("disk \"{n}\": "),
        None => format!("disk #{}: ", idx + 1),
    };
    check_unknown(cx, t, DISK_FIELDS, &prefix);
    let before = cx.problems.len();

    let name = match get_str(cx, t, "name", &prefix) {
        Some((s, span)) => {
            if !valid_simple_name(s) {
                cx.err(
                    span,
                    format!("{prefix}invalid name; use 1-63 characters from A-Z a-z 0-9 . _ -"),
                );
            } else if let Some(first) = seen.get(s) {
                cx.err(
                    span,
                    format!("{prefix}duplicate disk name (first defined at line {first})"),
                );
            } else {
                seen.insert(s.to_string(), line);
            }
            Some(s.to_string())
        }
        None => {
            if !t.contains_key("name") {
                cx.err(
                    header.clone(),
                    format!("{prefix}missing required field \"name\""),
                );
            }
            None
        }
    };

    let blob = |cx: &mut Ctx<'_>, key: &str| -> Option<(BlobPath, Range<usize>)> {
        let Some((s, span)) = get_str(cx, t, key, &prefix) else {
            if !t.contains_key(key) {
                cx.err(
                    header.clone(),
                    format!(
                        "{prefix}missing required field \"{key}\" (\"account/container/blob\")"
                    ),
                );
            }
            return None;
        };
        match s.parse::<BlobPath>() {
            Ok(b) => {
                if !account_keys.contains(&b.account) {
                    let known: Vec<&str> = account_keys.iter().map(String::as_str).collect();
                    let hint = match closest(&b.account, &known) {
                        Some(c) => format!(" (did you mean \"{c}\"?)"),
                        None if known.is_empty() => {
                            " (no [accounts.NAME] sections are defined)".to_string()
                        }
                        None => format!(" (defined accounts: {})", known.join(", ")),
                    };
                    cx.err(
                        span,
                        format!(
                            "{prefix}{key} refers to unknown account \"{}\"{hint}",
                            b.account
                        ),
                    );
                    return None;
                }
                Some((b, span))
            }
            Err(e) => {
                cx.err(span, format!("{prefix}field \"{key}\": {e}"));
                None
            }
        }
    };
    let source = blob(cx, "source");
    let backup = blob(cx, "backup");
    if let (Some((s, _)), Some((b, span))) = (&source, &backup) {
        if s == b {
            cx.err(
                span.clone(),
                format!("{prefix}backup must be a different blob than source ({s})"),
            );
        }
    }

    let schedule =
        get_str(cx, t, "schedule", &prefix).and_then(|(s, span)| match validate_cron(s) {
            Ok(()) => Some(s.trim().to_string()),
            Err(e) => {
                cx.err(span, format!("{prefix}field \"schedule\": {e}"));
                None
            }
        });
    let tz = match get_str(cx, t, "tz", &prefix) {
        Some((s, span)) => {
            if s.is_empty() || s.chars().any(char::is_whitespace) {
                cx.err(
                    span,
                    format!("{prefix}field \"tz\": \"{s}\" is not a time zone name; use an IANA name such as \"UTC\" or \"Europe/Paris\""),
                );
            }
            s.to_string()
        }
        None => DEFAULT_TZ.to_string(),
    };
    let jitter = get_duration(cx, t, "jitter", &prefix);
    let window =
        get_str(cx, t, "window", &prefix).and_then(|(s, span)| match s.parse::<Window>() {
            Ok(w) => Some(w),
            Err(e) => {
                cx.err(span, format!("{prefix}field \"window\": {e}"));
                None
            }
        });
    let concurrency = get_int_in(
        cx,
        t,
        "concurrency",
        &prefix,
        1,
        MAX_DISK_CONCURRENCY as i128,
    )
    .map_or(DEFAULT_DISK_CONCURRENCY, |n| n as usize);
    let copy_mode = get_choice(
        cx,
        t,
        "copy_mode",
        &prefix,
        &[
            ("client", CopyMode::Client),
            ("server", CopyMode::Server),
            ("auto", CopyMode::Auto),
        ],
    )
    .unwrap_or_default();
    let verify = get_choice(
        cx,
        t,
        "verify",
        &prefix,
        &[
            ("never", VerifyMode::Never),
            ("after-cycle", VerifyMode::AfterCycle),
        ],
    )
    .unwrap_or_default();
    let retention = build_retention(cx, t, &prefix);

    if cx.problems.len() != before {
        return None;
    }
    let (source, _) = source?;
    let (backup, backup_span) = backup?;
    Some((
        DiskConfig {
            name: name?,
            source,
            backup,
            schedule,
            tz,
            jitter,
            window,
            concurrency,
            copy_mode,
            verify,
            retention,
            line,
        },
        backup_span,
    ))
}

fn build_retention(cx: &mut Ctx<'_>, t: &DeTable<'_>, prefix: &str) -> Retention {
    let Some(v) = t.get("retention") else {
        return Retention::default();
    };
    let DeValue::Table(r) = v.get_ref() else {
        type_err(
            cx,
            prefix,
            "retention",
            v,
            "a table such as { keep_last = 3, daily = 7 }",
        );
        return Retention::default();
    };
    let prefix = format!("{prefix}retention: ");
    check_unknown(cx, r, RETENTION_FIELDS, &prefix);
    let mut get =
        |key: &str| get_int_in(cx, r, key, &prefix, 0, i128::from(u32::MAX)).map(|n| n as u32);
    Retention {
        keep_last: get("keep_last"),
        hourly: get("hourly"),
        daily: get("daily"),
        weekly: get("weekly"),
        monthly: get("monthly"),
    }
}

/// Validates a cron expression the way the scheduler will parse it: 5
/// fields, or 6 with leading seconds (croner's optional-seconds mode).
fn validate_cron(expr: &str) -> Result<(), String> {
    use croner::parser::{CronParser, Seconds, Year};
    let n = expr.split_whitespace().count();
    if n != 5 && n != 6 {
        return Err(format!(
            "cron expression \"{expr}\" has {n} fields; expected 5 (minute hour day-of-month month day-of-week) or 6 (with leading seconds)"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map(|_| ())
        .map_err(|e| format!("invalid cron expression \"{expr}\": {e}"))
}

/// `[A-Za-z0-9._-]{1,63}`: safe in file names, metric labels, URLs and logs.
fn valid_simple_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Azure storage account names: 3-24 lowercase letters and digits.
fn valid_storage_account_name(s: &str) -> bool {
    (3..=24).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Azure container names: 3-63 of lowercase letters, digits and single
/// hyphens, starting and ending with a letter or digit; or `$root`.
fn valid_container_name(s: &str) -> bool {
    if s == "$root" {
        return true;
    }
    (3..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNTS: &str = r#"
[accounts.premium]
endpoint = "https://mypremiumaccount.blob.core.windows.net"
shared_key_env = "PREMIUM_KEY"

[accounts.backup]
endpoint = "https://mybackupstdaccount.blob.core.windows.net"
shared_key_env = "BACKUP_KEY"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("snapback.toml"))
    }

    /// Parses `text` expecting failure; returns the problems.
    fn problems(text: &str) -> Vec<String> {
        match parse(text) {
            Ok(c) => panic!("expected an error, got {c:#?}"),
            Err(ConfigError::Invalid { problems, path }) => {
                assert_eq!(path, Path::new("snapback.toml"));
                problems
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    fn assert_one(text: &str, needle: &str) {
        let p = problems(text);
        assert!(
            p.iter().any(|m| m.contains(needle)),
            "no problem contains {needle:?}; got:\n{}",
            p.join("\n")
        );
    }

    fn with_disk(disk: &str) -> String {
        format!("{ACCOUNTS}\n[[disk]]\n{disk}")
    }

    fn example_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config")
    }

    #[test]
    fn full_example_values() {
        let c = Config::load(&example_dir().join("snapback.example.toml")).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/snapback"));
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.max_concurrent_cycles, 4);
        assert_eq!(c.max_inflight_requests, 32);
        assert_eq!(c.max_buffer_mib, 32);
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(
            c.control_socket,
            PathBuf::from("/run/snapback/control.sock")
        );

        let p = &c.accounts["premium"];
        assert_eq!(p.key, "premium");
        assert_eq!(p.account_name, "mypremiumaccount");
        assert!(!p.path_style);
        assert_eq!(
            p.endpoint.as_str(),
            "https://mypremiumaccount.blob.core.windows.net/"
        );
        assert_eq!(p.auth, AuthConfig::SharedKeyEnv("PREMIUM_KEY".into()));
        assert_eq!(c.accounts["backup"].account_name, "mybackupstdaccount");
        assert_eq!(
            c.accounts["backup_mi"].auth,
            AuthConfig::ManagedIdentity {
                client_id: Some("00000000-0000-0000-0000-000000000000".into())
            }
        );

        assert_eq!(c.disks.len(), 2);
        let d = c.disk("mypremiumdisk").unwrap();
        assert_eq!(
            d.source,
            BlobPath {
                account: "premium".into(),
                container: "vhds".into(),
                blob: "mypremiumdisk.vhd".into()
            }
        );
        assert_eq!(d.backup.to_string(), "backup/backups/mybackupstdpageblob");
        assert_eq!(d.schedule.as_deref(), Some("0 */12 * * *"));
        assert_eq!(d.tz, "Europe/Paris");
        assert_eq!(d.jitter, Some(Duration::from_secs(300)));
        assert_eq!(
            d.window,
            Some(Window {
                start_minute: 22 * 60,
                end_minute: 6 * 60
            })
        );
        assert_eq!(d.concurrency, 8);
        assert_eq!(d.copy_mode, CopyMode::Client);
        assert_eq!(d.verify, VerifyMode::Never);
        assert_eq!(
            d.retention,
            Retention {
                keep_last: Some(3),
                hourly: Some(24),
                daily: Some(7),
                weekly: Some(4),
                monthly: Some(12)
            }
        );
        let text = std::fs::read_to_string(example_dir().join("snapback.example.toml")).unwrap();
        assert_eq!(text.lines().nth(d.line - 1), Some("[[disk]]"));

        // The minimal disk gets every default.
        let d2 = c.disk("data-disk-1").unwrap();
        assert_eq!(
            d2.backup.blob,
            "backups/data/disk1".split_once('/').unwrap().1
        );
        assert_eq!(d2.source.blob, "data/disk1.vhd");
        assert_eq!(d2.schedule, None);
        assert_eq!(d2.tz, "UTC");
        assert_eq!(d2.jitter, None);
        assert_eq!(d2.window, None);
        assert_eq!(d2.concurrency, 8);
        assert_eq!(d2.copy_mode, CopyMode::Client);
        assert_eq!(d2.verify, VerifyMode::Never);
        assert_eq!(d2.retention, Retention::default());
        assert!(c.disk("nope").is_none());
    }

    #[test]
    fn defaults_for_empty_file() {
        let c = parse("").unwrap();
        assert_eq!(c.path, PathBuf::from("snapback.toml"));
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(
            c.control_socket,
            PathBuf::from("/var/lib/snapback/control.sock")
        );
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.max_concurrent_cycles, 4);
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.metrics_listen, None);
        assert!(c.accounts.is_empty() && c.disks.is_empty());
    }

    #[test]
    fn accounts_only_is_valid_and_control_socket_follows_state_dir() {
        let c = parse(&format!(
            "state_dir = \"/srv/sb\"\nlog_format = \"json\"\n{ACCOUNTS}"
        ))
        .unwrap();
        assert_eq!(c.accounts.len(), 2);
        assert!(c.disks.is_empty());
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.control_socket, PathBuf::from("/srv/sb/control.sock"));
    }

    #[test]
    fn azurite_example() {
        let c = Config::load(&example_dir().join("azurite-local.toml")).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("./.snapback-state"));
        for (key, var) in [("premium", "PREMIUM_KEY"), ("backup", "BACKUP_KEY")] {
            let a = &c.accounts[key];
            assert!(a.path_style);
            assert_eq!(a.account_name, key);
            assert_eq!(a.endpoint.as_str(), format!("http://127.0.0.1:10000/{key}"));
            assert_eq!(a.auth, AuthConfig::SharedKeyEnv(var.into()));
        }
        assert_eq!(c.disks.len(), 1);
        let d = &c.disks[0];
        assert_eq!(d.name, "demo");
        assert_eq!(d.source.to_string(), "premium/vhds/demo.vhd");
        assert_eq!(d.backup.to_string(), "backup/backups/demo");
        assert_eq!(d.schedule.as_deref(), Some("*/30 * * * * *"));
    }

    fn account(endpoint: &str, extra: &str) -> AccountConfig {
        let text =
            format!("[accounts.a]\nendpoint = \"{endpoint}\"\nshared_key_env = \"K\"\n{extra}");
        match parse(&text) {
            Ok(c) => c.accounts["a"].clone(),
            Err(e) => panic!("{endpoint}: {e}"),
        }
    }

    #[test]
    fn host_and_path_style_account_names() {
        let a = account("https://MyAcct.blob.core.windows.net", "");
        assert_eq!((a.account_name.as_str(), a.path_style), ("myacct", false));
        assert_eq!(a.endpoint.as_str(), "https://myacct.blob.core.windows.net/");

        let a = account("https://acct.blob.core.windows.net/", "");
        assert_eq!((a.account_name.as_str(), a.path_style), ("acct", false));

        let a = account("http://127.0.0.1:10000/devstoreaccount1", "");
        assert_eq!(
            (a.account_name.as_str(), a.path_style),
            ("devstoreaccount1", true)
        );
        assert_eq!(
            a.endpoint.as_str(),
            "http://127.0.0.1:10000/devstoreaccount1"
        );

        let a = account("http://localhost:10000/premium/", "");
        assert_eq!((a.account_name.as_str(), a.path_style), ("premium", true));
        assert_eq!(a.endpoint.as_str(), "http://localhost:10000/premium");

        let a = account("http://[::1]:10000/premium", "");
        assert!(a.path_style);
        assert_eq!(a.account_name, "premium");

        // A DNS name with a path (e.g. an Azurite container in compose) is
        // path-style too.
        let a = account("http://azurite:10000/backup", "");
        assert_eq!((a.account_name.as_str(), a.path_style), ("backup", true));

        // account_name overrides the derived one, for both styles.
        let a = account(
            "http://127.0.0.1:10000/premium",
            "account_name = \"devstoreaccount1\"",
        );
        assert_eq!(a.account_name, "devstoreaccount1");
        assert_eq!(a.endpoint.as_str(), "http://127.0.0.1:10000/premium");
        let a = account("https://cname.example.com", "account_name = \"realacct\"");
        assert_eq!(a.account_name, "realacct");
        assert!(!a.path_style);
    }

    #[test]
    fn every_auth_method() {
        let cases = [
            (
                "shared_key_env = \"K\"",
                AuthConfig::SharedKeyEnv("K".into()),
            ),
            (
                "shared_key_file = \"/k\"",
                AuthConfig::SharedKeyFile("/k".into()),
            ),
            ("sas_token_env = \"S\"", AuthConfig::SasTokenEnv("S".into())),
            (
                "sas_token_file = \"/s\"",
                AuthConfig::SasTokenFile("/s".into()),
            ),
            (
                "managed_identity = true",
                AuthConfig::ManagedIdentity { client_id: None },
            ),
            (
                "managed_identity = true\nclient_id = \"abc\"",
                AuthConfig::ManagedIdentity {
                    client_id: Some("abc".into()),
                },
            ),
        ];
        for (line, want) in cases {
            let text = format!(
                "[accounts.a]\nendpoint = \"https://acct.blob.core.windows.net\"\n{line}\n"
            );
            assert_eq!(parse(&text).unwrap().accounts["a"].auth, want, "{line}");
        }
    }

    #[test]
    fn every_example_config_parses() {
        let mut n = 0;
        for entry in std::fs::read_dir(example_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                if let Err(e) = Config::load(&path) {
                    panic!("{} should be valid:\n{e}", path.display());
                }
                n += 1;
            }
        }
        assert!(n >= 2, "expected at least the two shipped examples");
    }

    #[test]
    fn every_invalid_example_fails_as_expected() {
        let dir = example_dir().join("invalid");
        let mut n = 0;
        let mut failures = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            n += 1;
            let expected_path = path.with_extension("expected");
            let expected = std::fs::read_to_string(&expected_path)
                .unwrap_or_else(|e| panic!("{}: {e}", expected_path.display()));
            let expected = expected.trim_end_matches(['\n', '\r']);
            assert!(!expected.is_empty(), "{} is empty", expected_path.display());
            match Config::load(&path) {
                Ok(_) => failures.push(format!("{} should be rejected", path.display())),
                Err(e @ ConfigError::Invalid { .. }) => {
                    let msg = e.to_string();
                    if !msg.contains(expected) {
                        failures.push(format!(
                            "{}: message does not contain {expected:?}:\n{msg}",
                            path.display()
                        ));
                    }
                    // Every problem line names the file.
                    for line in msg.lines() {
                        assert!(line.starts_with(&path.display().to_string()), "{line}");
                    }
                }
                Err(e) => failures.push(format!("{}: {e}", path.display())),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
        assert!(n >= 10, "only {n} invalid examples found");
    }

    #[test]
    fn read_error() {
        let err = Config::load(Path::new("/nonexistent/snapback.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/snapback.toml"));
    }

    #[test]
    fn malformed_toml_names_the_line() {
        let p = problems("state_dir = \"/x\"\nlog_format = \n[accounts.a]\n");
        assert!(p[0].starts_with("snapback.toml:2:"), "{p:?}");
        assert!(p[0].contains("invalid TOML"), "{p:?}");

        let p = problems("a = 1\n[x]\nb = 1\n[x]\n");
        assert!(
            p[0].starts_with("snapback.toml:4:2: invalid TOML: duplicate key \"x\""),
            "{p:?}"
        );
    }

    #[test]
    fn all_problems_reported_with_their_own_lines() {
        let text = r#"max_concurrent_cycles = 0
shutdown_grace = "soon"

[accounts.premium]
endpoint = "https://mypremiumaccount.blob.core.windows.net"

[[disk]]
name = "a"
source = "premium/vhds/a.vhd"
backup = "nowhere/backups/a"
shedule = "0 * * * *"
window = "nope"

[[disk]]
name = "b"
source = "premium/vhds/b.vhd"
backup = "premium/backups/b"
concurrency = 0
"#;
        let p = problems(text);
        let want = [
            "snapback.toml:1:25: field \"max_concurrent_cycles\" must be at least 1, got 0",
            "snapback.toml:2:18: field \"shutdown_grace\": invalid duration \"soon\"",
            "snapback.toml:4:1: account \"premium\": no authentication method",
            "snapback.toml:10:10: disk \"a\": backup refers to unknown account \"nowhere\"",
            "snapback.toml:11:1: disk \"a\": unknown field \"shedule\" (did you mean \"schedule\"?)",
            "snapback.toml:12:10: disk \"a\": field \"window\": invalid window \"nope\"",
            "snapback.toml:18:15: disk \"b\": field \"concurrency\" must be between 1 and 64, got 0",
        ];
        assert_eq!(p.len(), want.len(), "{}", p.join("\n"));
        for (got, want) in p.iter().zip(want) {
            assert!(got.starts_with(want), "got {got:?}, want prefix {want:?}");
        }
        // The Display form is all of them, one per line.
        let msg = parse(text).unwrap_err().to_string();
        assert_eq!(msg.lines().count(), want.len());
    }

    #[test]
    fn unknown_field_suggestions() {
        assert_one(
            &with_disk("name = \"x\"\nsource = \"premium/vhds/x\"\nbackup = \"backup/bak/x\"\ncopymode = \"auto\"\n"),
            "disk \"x\": unknown field \"copymode\" (did you mean \"copy_mode\"?)",
        );
        assert_one(
            "stat_dir = \"/x\"\n",
            "snapback.toml:1:1: unknown field \"stat_dir\" (did you mean \"state_dir\"?)",
        );
        assert_one(
            "[accounts.a]\nendpoint = \"https://a.blob.core.windows.net\"\nshared_key_evn = \"K\"\n",
            "account \"a\": unknown field \"shared_key_evn\" (did you mean \"shared_key_env\"?)",
        );
        // Far from anything: list what is allowed instead.
        assert_one(
            "frobnicate = 1\n",
            "unknown field \"frobnicate\" (expected one of: state_dir,",
        );
    }

    #[test]
    fn unknown_account_reference() {
        let p = problems(&with_disk(
            "name = \"x\"\nsource = \"elsewhere/vhds/x\"\nbackup = \"backup/bak/x\"\n",
        ));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("disk \"x\": source refers to unknown account \"elsewhere\" (defined accounts: backup, premium)"),
            "{p:?}"
        );
        // With no accounts at all.
        assert_one(
            "[[disk]]\nname = \"x\"\nsource = \"a/vhds/x\"\nbackup = \"b/vhds/x\"\n",
            "no [accounts.NAME] sections are defined",
        );
    }

    #[test]
    fn broken_account_does_not_cascade_into_unknown_account() {
        let text = "[accounts.premium]\nendpoint = \"https://pacct.blob.core.windows.net\"\n\
                    [accounts.backup]\nendpoint = \"https://bkacct.blob.core.windows.net\"\nshared_key_env = \"B\"\n\
                    [[disk]]\nname = \"x\"\nsource = \"premium/vhds/x\"\nbackup = \"backup/bak/x\"\n";
        let p = problems(text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("no authentication method"));
    }

    #[test]
    fn duplicate_disk_name() {
        let text = format!(
            "{ACCOUNTS}\n[[disk]]\nname = \"x\"\nsource = \"premium/vhds/a\"\nbackup = \"backup/bak/a\"\n\
             [[disk]]\nname = \"x\"\nsource = \"premium/vhds/b\"\nbackup = \"backup/bak/b\"\n"
        );
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains(":15:8: disk \"x\": duplicate disk name (first defined at line 10)"),
            "{p:?}"
        );
    }

    #[test]
    fn invalid_disk_names() {
        for bad in ["", "has space", "a/b", &"x".repeat(64)] {
            assert_one(
                &with_disk(&format!(
                    "name = \"{bad}\"\nsource = \"premium/vhds/a\"\nbackup = \"backup/bak/a\"\n"
                )),
                "invalid name",
            );
        }
        let ok = with_disk(&format!(
            "name = \"{}\"\nsource = \"premium/vhds/a\"\nbackup = \"backup/bak/a\"\n",
            "A.b_c-9".repeat(9)
        ));
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn cron_validation() {
        for good in [
            "0 */12 * * *",
            "*/30 * * * * *",
            "0 0 3 * * MON-FRI",
            "15 2 1 * *",
        ] {
            let t = with_disk(&format!("name = \"x\"\nsource = \"premium/vhds/a\"\nbackup = \"backup/bak/a\"\nschedule = \"{good}\"\n"));
            assert!(parse(&t).is_ok(), "{good}: {:?}", parse(&t).err());
        }
        for (bad, needle) in [
            ("61 * * * *", "invalid cron expression"),
            ("* * 32 * *", "invalid cron expression"),
            ("every hour", "cron expression \"every hour\" has 2 fields"),
            (
                "0 0 0 * * * 2030",
                "cron expression \"0 0 0 * * * 2030\" has 7 fields",
            ),
            ("@daily", "cron expression \"@daily\" has 1 fields"),
            ("", "cron expression \"\" has 0 fields"),
        ] {
            let t = with_disk(&format!("name = \"x\"\nsource = \"premium/vhds/a\"\nbackup = \"backup/bak/a\"\nschedule = \"{bad}\"\n"));
            assert_one(&t, &format!("disk \"x\": field \"schedule\": {needle}"));
        }
    }

    #[test]
    fn window_parsing_and_contains() {
        let w: Window = "22:00-06:00".parse().unwrap();
        assert_eq!((w.start_minute, w.end_minute), (1320, 360));
        assert!(w.contains(1320) && w.contains(1439) && w.contains(0) && w.contains(359));
        assert!(!w.contains(360) && !w.contains(720) && !w.contains(1319));
        let w: Window = "01:30-2:45".parse().unwrap();
        assert_eq!((w.start_minute, w.end_minute), (90, 165));
        assert!(w.contains(90) && w.contains(164) && !w.contains(165) && !w.contains(89));
        let w: Window = "00:00-23:59".parse().unwrap();
        assert!(w.contains(0) && !w.contains(1439));
        let whole = Window {
            start_minute: 5,
            end_minute: 5,
        };
        assert!(whole.contains(0) && whole.contains(1439));
        for bad in [
            "",
            "22:00",
            "24:00-01:00",
            "22:60-01:00",
            "2200-0600",
            "22:0-06:00",
            "ab:cd-ef:gh",
            "10:00-10:00",
        ] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
        assert_one(
            &with_disk("name = \"x\"\nsource = \"premium/vhds/a\"\nbackup = \"backup/bak/a\"\nwindow = \"22-6\"\n"),
            "disk \"x\": field \"window\": invalid window \"22-6\": expected \"HH:MM-HH:MM\"",
        );
    }

    #[test]
    fn two_auth_methods() {
        let p = problems(
            "[accounts.a]\nendpoint = \"https://acct1.blob.core.windows.net\"\nsas_token_env = \"S\"\nmanaged_identity = true\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("account \"a\": only one authentication method may be set, found sas_token_env and managed_identity"),
            "{p:?}"
        );
    }

    #[test]
    fn no_auth_method() {
        assert_one(
            "[accounts.a]\nendpoint = \"https://acct1.blob.core.windows.net\"\n",
            "snapback.toml:1:1: account \"a\": no authentication method",
        );
        // managed_identity = false is not a method either.
        assert_one(
            "[accounts.a]\nendpoint = \"https://acct1.blob.core.windows.net\"\nmanaged_identity = false\n",
            "no authentication method",
        );
        // A badly typed method is reported as such, not as "missing".
        let p = problems("[accounts.a]\nendpoint = \"https://acct1.blob.core.windows.net\"\nshared_key_env = 3\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("field \"shared_key_env\" must be a string, found integer"),
            "{p:?}"
        );
    }

    #[test]
    fn inline_secrets_rejected_with_hint() {
        let p = problems(
            "[accounts.a]\nendpoint = \"https://acct1.blob.core.windows.net\"\nshared_key = \"c2VjcmV0\"\nshared_key_env = \"K\"\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("snapback.toml:3:1: account \"a\": unknown field \"shared_key\""),
            "{p:?}"
        );
        assert!(
            p[0].contains("use shared_key_env or shared_key_file"),
            "{p:?}"
        );
        assert_one(
            "[accounts.a]\nendpoint = \"https://acct1.blob.core.windows.net\"\nsas_token = \"sv=...\"\n",
            "use sas_token_env or sas_token_file",
        );
    }

    #[test]
    fn env_var_names_checked() {
        assert_one(
            "[accounts.a]\nendpoint = \"https://acct1.blob.core.windows.net\"\nshared_key_env = \"c2VjcmV0Zm9vYmFy==\"\n",
            "must be the *name* of an environment variable",
        );
    }

    #[test]
    fn endpoint_validation() {
        for (ep, needle) in [
            ("not a url", "invalid URL"),
            (
                "ftp://a.blob.core.windows.net",
                "scheme must be http or https",
            ),
            (
                "https://u:p@a.blob.core.windows.net",
                "credentials must not be embedded",
            ),
            ("https://a.blob.core.windows.net?sig=x", "query string"),
            ("http://127.0.0.1:10000", "first path segment"),
            (
                "http://127.0.0.1:10000/acct/container",
                "must be the service root",
            ),
            (
                "https://A_B.blob.core.windows.net",
                "not a valid storage account name",
            ),
        ] {
            assert_one(
                &format!("[accounts.a]\nendpoint = \"{ep}\"\nshared_key_env = \"K\"\n"),
                "snapback.toml:2:12: account \"a\": ",
            );
            assert_one(
                &format!("[accounts.a]\nendpoint = \"{ep}\"\nshared_key_env = \"K\"\n"),
                needle,
            );
        }
        assert_one(
            "[accounts.a]\nendpoint = \"http://127.0.0.1:10000/x\"\naccount_name = \"NO\"\nshared_key_env = \"K\"\n",
            "snapback.toml:3:16: account \"a\": \"NO\" is not a valid storage account name: use 3-24",
        );
    }

    #[test]
    fn same_source_and_backup() {
        assert_one(
            &with_disk("name = \"x\"\nsource = \"premium/vhds/a\"\nbackup = \"premium/vhds/a\"\n"),
            "disk \"x\": backup must be a different blob than source (premium/vhds/a)",
        );
        // Same container and blob on different accounts is fine.
        assert!(parse(&with_disk(
            "name = \"x\"\nsource = \"premium/vhds/a\"\nbackup = \"backup/vhds/a\"\n"
        ))
        .is_ok());
    }

    #[test]
    fn backup_overlaps_between_disks() {
        let text = format!(
            "{ACCOUNTS}\n[[disk]]\nname = \"x\"\nsource = \"premium/vhds/a\"\nbackup = \"backup/bak/a\"\n\
             [[disk]]\nname = \"y\"\nsource = \"backup/bak/a\"\nbackup = \"premium/vhds/a\"\n"
        );
        let p = problems(&text);
        assert!(
            p.iter()
                .any(|m| m.contains("disk \"x\": backup backup/bak/a is the source of disk \"y\"")),
            "{p:?}"
        );
        assert!(
            p.iter().any(
                |m| m.contains("disk \"y\": backup premium/vhds/a is the source of disk \"x\"")
            ),
            "{p:?}"
        );
    }

    #[test]
    fn global_apply_limits_are_bounded() {
        let disk = "name = \"x\"\nsource = \"premium/vhds/a\"\nbackup = \"backup/bak/a\"\n";
        for (line, needle) in [
            (
                "max_inflight_requests = 0",
                "field \"max_inflight_requests\" must be between 1 and 1024, got 0",
            ),
            (
                "max_inflight_requests = 1025",
                "field \"max_inflight_requests\" must be between 1 and 1024, got 1025",
            ),
            (
                "max_inflight_requests = \"8\"",
                "field \"max_inflight_requests\" must be an integer, found string",
            ),
            (
                "max_buffer_mib = 3",
                "field \"max_buffer_mib\" must be between 4 and 65536, got 3",
            ),
            (
                "max_buffer_mib = 1.5",
                "field \"max_buffer_mib\" must be an integer",
            ),
        ] {
            let p = problems(&format!("{line}\n{}", with_disk(disk)));
            assert!(p.iter().any(|m| m.contains(needle)), "{line}: {p:?}");
        }
        let c = parse(&format!(
            "max_inflight_requests = 7\nmax_buffer_mib = 8\n{}",
            with_disk(disk)
        ))
        .unwrap();
        assert_eq!(c.max_inflight_requests, 7);
        assert_eq!(c.max_buffer_mib, 8);
    }

    #[test]
    fn disk_field_types_and_ranges() {
        let d = "name = \"x\"\nsource = \"premium/vhds/a\"\nbackup = \"backup/bak/a\"\n";
        for (extra, needle) in [
            (
                "concurrency = 65",
                "field \"concurrency\" must be between 1 and 64, got 65",
            ),
            (
                "concurrency = \"8\"",
                "field \"concurrency\" must be an integer, found string",
            ),
            ("jitter = 300", "field \"jitter\" must be a duration string"),
            ("jitter = \"5min\"", "unknown unit \"min\""),
            (
                "verify = \"always\"",
                "field \"verify\" must be one of \"never\", \"after-cycle\", got \"always\"",
            ),
            ("tz = \"Europe Paris\"", "is not a time zone name"),
            ("tz = \"\"", "is not a time zone name"),
            ("retention = 3", "field \"retention\" must be a table"),
            (
                "retention = { daily = -1 }",
                "retention: field \"daily\" must be at least 0, got -1",
            ),
            (
                "retention = { daily = 4294967296 }",
                "retention: field \"daily\" must be at least 0, got 4294967296",
            ),
        ] {
            assert_one(&with_disk(&format!("{d}{extra}\n")), needle);
        }
        let c = parse(&with_disk(&format!(
            "{d}concurrency = 64\ncopy_mode = \"auto\"\nverify = \"after-cycle\"\njitter = \"1h30m\"\n\
             [disk.retention]\nkeep_last = 0\nmonthly = 4294967295\n"
        )))
        .unwrap();
        let disk = &c.disks[0];
        assert_eq!(disk.concurrency, 64);
        assert_eq!(disk.copy_mode, CopyMode::Auto);
        assert_eq!(disk.verify, VerifyMode::AfterCycle);
        assert_eq!(disk.jitter, Some(Duration::from_secs(5400)));
        assert_eq!(disk.retention.keep_last, Some(0));
        assert_eq!(disk.retention.monthly, Some(u32::MAX));
        assert_eq!(disk.retention.daily, None);
    }

    #[test]
    fn missing_required_disk_fields() {
        let p = problems(&format!("{ACCOUNTS}\n[[disk]]\nconcurrency = 2\n"));
        let all = p.join("\n");
        for f in ["name", "source", "backup"] {
            assert!(
                all.contains(&format!(":10:1: disk #1: missing required field \"{f}\"")),
                "{all}"
            );
        }
    }

    #[test]
    fn top_level_types() {
        assert_one(
            "metrics_listen = \"localhost:9464\"\n",
            "invalid socket address \"localhost:9464\"",
        );
        assert_one(
            "log_format = \"xml\"\n",
            "field \"log_format\" must be one of \"text\", \"json\", got \"xml\"",
        );
        assert_one(
            "max_concurrent_cycles = \"4\"\n",
            "must be an integer, found string",
        );
        assert_one(
            "state_dir = \"\"\n",
            "field \"state_dir\" must not be empty",
        );
        assert_one("accounts = 3\n", "field \"accounts\" must be a table");
        assert_one(
            "[accounts]\npremium = 3\n",
            "account \"premium\": must be a table",
        );
        assert_one(
            &format!("control_socket = \"/{}\"\n", "x".repeat(120)),
            "the limit for a unix socket",
        );
        assert_one(
            &format!("state_dir = \"/{}\"\n", "x".repeat(100)),
            "set control_socket to a shorter path",
        );
        let c = parse("metrics_listen = \"[::]:9464\"\nshutdown_grace = \"500ms\"\nmax_concurrent_cycles = 1\n").unwrap();
        assert_eq!(c.metrics_listen, Some("[::]:9464".parse().unwrap()));
        assert_eq!(c.shutdown_grace, Duration::from_millis(500));
        assert_eq!(c.max_concurrent_cycles, 1);
    }

    #[test]
    fn durations() {
        let ok = [
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("500ms", 500),
            ("2d", 172_800_000),
            ("1h30m", 5_400_000),
            ("1m 30s", 90_000),
            (" 0s ", 0),
        ];
        for (s, ms) in ok {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        for bad in [
            "",
            "30",
            "s",
            "1.5h",
            "-1s",
            "5 m",
            "10y",
            "99999999999999999999s",
            "18446744073709551615d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("30").unwrap_err().contains("missing unit"));
    }

    #[test]
    fn blob_paths() {
        let b: BlobPath = "premium/vhds/dir/sub/disk.vhd".parse().unwrap();
        assert_eq!(b.account, "premium");
        assert_eq!(b.container, "vhds");
        assert_eq!(b.blob, "dir/sub/disk.vhd");
        assert_eq!(b.to_string(), "premium/vhds/dir/sub/disk.vhd");
        assert!("a/$root/x".parse::<BlobPath>().is_ok());
        for (bad, needle) in [
            ("premium", "expected \"account/container/blob\""),
            ("premium/vhds", "expected \"account/container/blob\""),
            ("/vhds/x", "empty account"),
            ("a//x", "empty container"),
            ("a/vhds/", "empty blob name"),
            ("a/VHDs/x", "not a valid container name"),
            ("a/ab/x", "not a valid container name"),
            ("a/a--b/x", "not a valid container name"),
            ("a/vhds//x", "must not start or end with '/'"),
        ] {
            let e = bad.parse::<BlobPath>().unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn disk_must_be_array_of_tables() {
        assert_one(
            &format!("{ACCOUNTS}\n[disk]\nname = \"x\"\n"),
            "\"disk\" must be an array of tables: write each disk as a [[disk]] section (found table)",
        );
    }

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("shedule", "schedule"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(closest("windo", DISK_FIELDS), Some("window"));
        assert_eq!(closest("zzzzzz", DISK_FIELDS), None);
    }

    #[test]
    fn line_col_is_char_based() {
        let p = problems("# é\nstate_dir = \"\"\n \"é\" = 1\n");
        assert!(p[0].starts_with("snapback.toml:2:13:"), "{p:?}");
        assert!(p[1].starts_with("snapback.toml:3:2:"), "{p:?}");
    }
}
