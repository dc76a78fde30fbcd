//! The product's vocabulary, shared by every layer: which blob ([`BlobRef`]), which snapshot
//! ([`SnapshotId`]), the metadata tags snapback writes and reads ([`tags`]), and time
//! ([`Timestamp`], [`Clock`]). Nothing here does I/O.
//!
//! Tag strings are built and parsed only here: a restore point, a cycle's snapshot and a
//! restored blob are recognised by the functions of [`tags`], never by hand-written lookups.

pub mod assign;
pub mod pages;
pub mod progress;
pub mod record;
pub mod secrets;

use chrono::{DateTime, SecondsFormat, Utc};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

/// A page blob: account (the config's `[accounts.NAME]` key), container and blob name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobRef {
    pub account: String,
    pub container: String,
    /// Blob name, possibly containing `/`.
    pub blob: String,
}

impl BlobRef {
    pub fn new(account: &str, container: &str, blob: &str) -> Self {
        BlobRef {
            account: account.to_string(),
            container: container.to_string(),
            blob: blob.to_string(),
        }
    }
}

impl fmt::Display for BlobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.account, self.container, self.blob)
    }
}

impl FromStr for BlobRef {
    type Err = String;

    /// Parses `account/container/blob`. Container names are checked against Azure's rules
    /// here so a typo fails at load time rather than as an HTTP 400 in the middle of the night.
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
        Ok(BlobRef::new(account, container, blob))
    }
}

/// This host's name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`), or `unknown-host`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Azure container names: 3-63 of lowercase letters, digits and single hyphens, starting and
/// ending with a letter or digit; or `$root`.
pub fn valid_container_name(s: &str) -> bool {
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

/// The one rule for disk names (config `[[disk]] name`, `restore --rebase NAME`) and account
/// keys: `[A-Za-z0-9._-]{1,63}`, safe in file names, metric labels, URLs and logs.
pub fn valid_simple_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// How to spell a valid [`valid_simple_name`], for messages.
pub const SIMPLE_NAME_RULE: &str = "use 1-63 characters from A-Z a-z 0-9 . _ -";

/// A snapshot's identifier, opaque to the cycle: a blob snapshot's timestamp exactly as Azure
/// returns it (`2026-11-25T07:00:09.7120000Z`), or, for a managed disk, the resource id of an
/// incremental snapshot. Only the source that made it interprets it.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct SnapshotId(String);

impl SnapshotId {
    pub fn new(id: impl Into<String>) -> Self {
        SnapshotId(id.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Metadata as Azure stores it (`x-ms-meta-*`), names lower-cased.
pub type Metadata = BTreeMap<String, String>;

/// The diff base `S(n-1)` as the source sees it at the start of an incremental cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BaseState {
    Present {
        size: u64,
    },
    /// Deleted (or never there).
    Gone,
    /// A snapshot of another disk (the chain was rebased onto a new disk).
    OtherSource,
    /// A snapshot of an earlier disk of the same name: it was deleted and re-created since
    /// (`sourceUniqueId` `was`, the disk's now `now`).
    Recreated {
        was: String,
        now: String,
    },
}

/// The metadata vocabulary (see docs/design.md, "Metadata tags"): builders for what snapback
/// writes, parsers for what it reads back.
pub mod tags {
    use super::{Metadata, SnapshotId};

    const DISK: &str = "snapback_disk";
    const CYCLE: &str = "snapback_cycle";
    const SOURCE_SNAPSHOT: &str = "snapback_source_snapshot";
    const BACKUP_OF: &str = "snapback_backup_of";
    const BASE_ETAG: &str = "snapback_base_etag";
    const RESTORE: &str = "snapback_restore";
    const RESTORED_FROM: &str = "snapback_restored_from";
    const HOLDER: &str = "snapback_holder";
    const CHAIN: &str = "snapback_chain";
    const FENCE: &str = "snapback_fence";
    const GUEST_STATE: &str = "snapback_vmgs";
    const GUEST_STATE_LENGTH: &str = "snapback_vmgs_length";
    const GUEST_STATE_CRC64: &str = "snapback_vmgs_crc64";

    /// The copy of a Trusted Launch disk's VM guest state a restore point names: a page
    /// blob in the backup's container, its length and its CRC-64/NVME.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct GuestStateCopy {
        pub blob: String,
        pub length: u64,
        pub crc64: u64,
    }

    /// The name of the copy of the guest state exported with source snapshot `source_name`
    /// (unique per cycle: a managed snapshot's name carries the cycle id), beside `backup`.
    pub fn guest_state_blob(backup: &str, source_name: &str) -> String {
        format!("{backup}.vmgs.{source_name}")
    }

    /// `m` naming the guest state copy `g` (a restore point of a Trusted Launch disk).
    pub fn with_guest_state(mut m: Metadata, g: &GuestStateCopy) -> Metadata {
        m.insert(GUEST_STATE.to_string(), g.blob.clone());
        m.insert(GUEST_STATE_LENGTH.to_string(), g.length.to_string());
        m.insert(GUEST_STATE_CRC64.to_string(), format!("{:016x}", g.crc64));
        m
    }

    /// The guest state copy a restore point names: None if it names none, an error naming
    /// the key when the record is incomplete or unreadable.
    pub fn guest_state(m: &Metadata) -> Option<Result<GuestStateCopy, String>> {
        let blob = m.get(GUEST_STATE).filter(|b| !b.is_empty())?;
        let field = |key: &str, radix: u32| {
            m.get(key)
                .and_then(|v| u64::from_str_radix(v, radix).ok())
                .ok_or_else(|| format!("metadata {key} is missing or not a number"))
        };
        Some((|| {
            Ok(GuestStateCopy {
                blob: blob.clone(),
                length: field(GUEST_STATE_LENGTH, 10)?,
                crc64: field(GUEST_STATE_CRC64, 16)?,
            })
        })())
    }

    /// Tags of a source snapshot `S(n)` taken by cycle `cycle` of `disk`.
    pub fn source_snapshot(disk: &str, cycle: &str) -> Metadata {
        Metadata::from([
            (DISK.to_string(), disk.to_string()),
            (CYCLE.to_string(), cycle.to_string()),
        ])
    }

    /// Tags of a restore point `B(n)`: the cycle's tags and the source snapshot it equals.
    pub fn restore_point(disk: &str, cycle: &str, source: &SnapshotId) -> Metadata {
        let mut m = source_snapshot(disk, cycle);
        m.insert(SOURCE_SNAPSHOT.to_string(), source.as_str().to_string());
        m
    }

    /// Metadata of the backup base blob: the disk it backs up (set explicitly so that a
    /// Copy Blob does not copy the source snapshot's tags onto it).
    pub fn backup_base(disk: &str) -> Metadata {
        Metadata::from([(BACKUP_OF.to_string(), disk.to_string())])
    }

    /// Tags of a restore point that also record the backup base's ETag it was taken on, so
    /// the chain can be rebuilt from Azure (a lost state directory) without trusting an
    /// unknown base.
    pub fn restore_point_on(disk: &str, cycle: &str, source: &SnapshotId, etag: &str) -> Metadata {
        let mut m = restore_point(disk, cycle, source);
        m.insert(BASE_ETAG.to_string(), etag.to_string());
        m
    }

    /// The backup base ETag a restore point was taken on, if it records one.
    pub fn base_etag(m: &Metadata) -> Option<&str> {
        m.get(BASE_ETAG).map(String::as_str)
    }

    /// The disk a backup base blob was created for by snapback.
    pub fn backup_of(m: &Metadata) -> Option<&str> {
        m.get(BACKUP_OF).map(String::as_str)
    }

    /// Metadata of a disk's lock blob while a process holds its lease: who (host, pid,
    /// replica id), so that whoever finds it held can name the holder; the cycle it runs
    /// (read back with [`cycle`]), so that the next owner knows whether an unfinished cycle
    /// of its own is still the disk's current one; and the disk's chain id ([`chain`]).
    /// The lock blob also carries the last fencing token issued ([`fence`]), so the next
    /// owner issues a higher one.
    pub fn lock_holder(holder: &str, cycle: Option<&str>, chain: &str, token: u64) -> Metadata {
        let mut m = Metadata::from([
            (HOLDER.to_string(), holder.to_string()),
            (CHAIN.to_string(), chain.to_string()),
            (FENCE.to_string(), token.to_string()),
        ]);
        if let Some(c) = cycle {
            m.insert(CYCLE.to_string(), c.to_string());
        }
        m
    }

    /// `m` with the chain id (when there is one): which backup chain a snapshot, restore
    /// point or backup base belongs to.
    pub fn in_chain(mut m: Metadata, chain: Option<&str>) -> Metadata {
        if let Some(c) = chain {
            m.insert(CHAIN.to_string(), c.to_string());
        }
        m
    }

    /// `m` with the fencing token its writer held (a restore point records the token of the
    /// owner that took it, so `verify` can tell one taken by an owner that had lost the disk).
    pub fn with_fence(mut m: Metadata, token: Option<u64>) -> Metadata {
        if let Some(t) = token {
            m.insert(FENCE.to_string(), t.to_string());
        }
        m
    }

    /// The fencing token a lock blob or restore point names (none, or not a number: None).
    pub fn fence(m: &Metadata) -> Option<u64> {
        m.get(FENCE).and_then(|t| t.parse().ok())
    }

    /// The chain a snapshot or lock blob names.
    pub fn chain(m: &Metadata) -> Option<&str> {
        m.get(CHAIN).map(String::as_str)
    }

    /// Whether a snapshot tagged for `disk` belongs to chain `ours` and may be swept by it:
    /// same chain id, or no chain id at all (taken before chain ids existed). Another
    /// installation's chain (same disk name, another chain id) is never ours.
    pub fn of_chain(m: &Metadata, disk: &str, ours: Option<&str>) -> bool {
        self::disk(m) == Some(disk) && (chain(m).is_none() || chain(m) == ours)
    }

    /// The holder a lock blob names.
    pub fn holder(m: &Metadata) -> Option<&str> {
        m.get(HOLDER).map(String::as_str)
    }

    /// The disk a snapshot was tagged for.
    pub fn disk(m: &Metadata) -> Option<&str> {
        m.get(DISK).map(String::as_str)
    }

    /// The cycle tag a snapshot carries.
    pub fn cycle(m: &Metadata) -> Option<&str> {
        m.get(CYCLE).map(String::as_str)
    }

    /// The source snapshot a restore point (or promoted blob) records; None if absent or empty.
    pub fn source_of(m: &Metadata) -> Option<SnapshotId> {
        m.get(SOURCE_SNAPSHOT)
            .filter(|s| !s.is_empty())
            .map(|s| SnapshotId::new(s.clone()))
    }

    /// Whether a snapshot of a disk's backup blob is one of its restore points: tagged for
    /// `disk` *and* naming its source snapshot. The second condition rejects snapshots that
    /// merely inherited the base blob's metadata (Snapshot Blob without metadata copies the
    /// base's), so only snapshots snapback made itself are listed, verified or pruned.
    pub fn is_restore_point(m: &Metadata, disk: &str) -> bool {
        self::disk(m) == Some(disk) && source_of(m).is_some()
    }

    /// Where a blob written by a restore stands.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum RestoreState {
        InProgress,
        Promoted,
        Complete,
    }

    impl RestoreState {
        fn as_str(self) -> &'static str {
            match self {
                RestoreState::InProgress => "in-progress",
                RestoreState::Promoted => "promoted",
                RestoreState::Complete => "complete",
            }
        }
    }

    /// Metadata of a blob written by a restore of `disk`'s restore point `point`; a promoted
    /// blob also records the source snapshot of that point.
    pub fn restored(
        state: RestoreState,
        disk: &str,
        point: &SnapshotId,
        source: Option<&SnapshotId>,
    ) -> Metadata {
        let mut m = Metadata::from([
            (RESTORE.to_string(), state.as_str().to_string()),
            (RESTORED_FROM.to_string(), format!("{disk}@{point}")),
        ]);
        if let Some(s) = source {
            m.insert(SOURCE_SNAPSHOT.to_string(), s.as_str().to_string());
        }
        m
    }

    /// The restore state of a blob, if a restore wrote it.
    pub fn restore_state(m: &Metadata) -> Option<RestoreState> {
        match m.get(RESTORE).map(String::as_str) {
            Some("in-progress") => Some(RestoreState::InProgress),
            Some("promoted") => Some(RestoreState::Promoted),
            Some("complete") => Some(RestoreState::Complete),
            _ => None,
        }
    }

    /// `<disk>@<restore point>` a blob was restored from.
    pub fn restored_from(m: &Metadata) -> Option<&str> {
        m.get(RESTORED_FROM).map(String::as_str)
    }
}

/// The one time type inside the product. (The SDK's `time` types appear only at its edge, in
/// `azure/`; the state database stores Unix seconds.)
pub type Timestamp = DateTime<Utc>;

/// Unix seconds as a timestamp (out-of-range values clamp, which no real clock produces).
pub fn from_unix(unix: i64) -> Timestamp {
    DateTime::from_timestamp(unix, 0).unwrap_or(if unix < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// An RFC 3339 timestamp with an offset, as UTC: Azure snapshot ids
/// (`2026-11-25T07:00:09.7120000Z`, seven fractional digits) and `--at` times.
pub fn parse_timestamp(s: &str) -> Option<Timestamp> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// RFC 3339 in UTC with as many fractional digits as needed (`2026-11-25T07:00:09.712Z`,
/// `2026-11-25T07:00:00Z`).
pub fn format_timestamp(t: Timestamp) -> String {
    let s = t.to_rfc3339_opts(SecondsFormat::Nanos, true);
    let (rest, _z) = s.split_at(s.len() - 1);
    let trimmed = rest.trim_end_matches('0').trim_end_matches('.');
    format!("{trimmed}Z")
}

/// The clock, injected so tests control time (cycle stamps, schedules, windows, retention).
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
    /// Longest real sleep between looks at the clock. The system clock is re-read at least
    /// every minute (it may jump: NTP, suspend); a fake clock must be polled often.
    fn max_nap(&self) -> Duration {
        Duration::from_secs(60)
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Utc::now()
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    pub fn new(t: Timestamp) -> ManualClock {
        ManualClock(Mutex::new(t))
    }
    pub fn set(&self, t: Timestamp) {
        if let Ok(mut now) = self.0.lock() {
            *now = t;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        self.0.lock().map(|t| *t).unwrap_or_else(|_| Utc::now())
    }
    fn max_nap(&self) -> Duration {
        Duration::from_millis(20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_state_record_round_trips_and_a_broken_one_is_named() {
        let g = tags::GuestStateCopy {
            blob: tags::guest_state_blob("vm/os", "os-sb-00ff"),
            length: 4 * 1024 * 1024 + 65536,
            crc64: 0xae8b_1486_0a79_9888,
        };
        assert_eq!(g.blob, "vm/os.vmgs.os-sb-00ff");
        let m = tags::with_guest_state(Metadata::new(), &g);
        assert_eq!(m["snapback_vmgs_crc64"], "ae8b14860a799888");
        assert_eq!(tags::guest_state(&m), Some(Ok(g)));
        assert_eq!(tags::guest_state(&Metadata::new()), None);
        let mut broken = m.clone();
        broken.insert("snapback_vmgs_length".into(), "many".into());
        assert!(tags::guest_state(&broken)
            .unwrap()
            .unwrap_err()
            .contains("snapback_vmgs_length"));
        broken.remove("snapback_vmgs_length");
        assert!(tags::guest_state(&broken).unwrap().is_err());
    }

    #[test]
    fn restore_points_need_both_tags() {
        let s = SnapshotId::new("2026-01-01T00:00:00.0000000Z");
        assert!(tags::is_restore_point(
            &tags::restore_point("d", "c", &s),
            "d"
        ));
        assert!(!tags::is_restore_point(
            &tags::restore_point("d", "c", &s),
            "e"
        ));
        // Inherited from the base or a source snapshot: no source snapshot recorded.
        assert!(!tags::is_restore_point(
            &tags::source_snapshot("d", "c"),
            "d"
        ));
        let empty = tags::restore_point("d", "c", &SnapshotId::new(""));
        assert!(!tags::is_restore_point(&empty, "d"));
    }

    #[test]
    fn restore_tags_round_trip() {
        let p = SnapshotId::new("P");
        let m = tags::restored(
            tags::RestoreState::Promoted,
            "d",
            &p,
            Some(&SnapshotId::new("S")),
        );
        assert_eq!(tags::restore_state(&m), Some(tags::RestoreState::Promoted));
        assert_eq!(tags::restored_from(&m), Some("d@P"));
        assert_eq!(tags::source_of(&m), Some(SnapshotId::new("S")));
    }

    #[test]
    fn names() {
        assert!(valid_simple_name("db-01.data_2"));
        assert!(!valid_simple_name(""));
        assert!(!valid_simple_name("a/b"));
        assert!(!valid_simple_name(&"x".repeat(64)));
        assert!(valid_container_name("$root") && !valid_container_name("a--b"));
    }
}
