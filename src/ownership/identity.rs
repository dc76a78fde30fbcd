//! Who this process and this installation are: the holder identity written into the lock
//! blob (and how a holder found there relates to us: another replica, a dead predecessor, a
//! clone), the owner key in the state directory, and the ids derived from it (writer ids,
//! replica ids, heartbeat lease ids) or drawn fresh (disk lease ids). Apart from the lease
//! because none of it talks to storage.

use super::timing::LeaseTiming;
use std::path::Path;

/// Who this process is, as written into the lock blob: host, pid and replica id.
pub fn holder_identity(replica: Option<&str>) -> String {
    let host = crate::model::host_name();
    let pid = std::process::id();
    let replica = replica
        .map(str::to_string)
        .unwrap_or_else(|| format!("{host}-{pid}"));
    format!("host={host} pid={pid} replica={replica}")
}

/// The `key=value` fields of a holder identity.
fn holder_field<'h>(holder: &'h str, key: &str) -> Option<&'h str> {
    holder
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// How a lease held under another id relates to this process, from the holder the lock blob
/// names and `me` ([`holder_identity`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Holder {
    /// Another replica, or a holder that names no one.
    Other,
    /// This replica on this host, in a process that no longer runs: a predecessor killed
    /// while it held the lease (its lease expires by itself).
    DeadPredecessor,
    /// This very replica id, alive elsewhere (another host, or a live process here): two
    /// processes with one identity, a cloned state directory or image.
    Clone,
}

pub(super) fn classify_holder(holder: &str, me: &str) -> Holder {
    let field = |h, k| holder_field(h, k);
    if field(holder, "replica").is_none() || field(holder, "replica") != field(me, "replica") {
        return Holder::Other;
    }
    let pid = field(holder, "pid").and_then(|p| p.parse::<i32>().ok());
    let alive = |pid: i32| {
        // Signal 0 checks existence only: ESRCH means no such process.
        // SAFETY: kill with signal 0 sends nothing; it only reports whether `pid` exists.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    };
    match pid {
        Some(pid)
            if field(holder, "host") == field(me, "host")
                && pid > 0
                && pid != std::process::id() as i32
                && !alive(pid) =>
        {
            Holder::DeadPredecessor
        }
        _ => Holder::Clone,
    }
}

/// A fresh lease id (a GUID, as Azure wants): every acquisition proposes its own, so no two
/// processes ever share a lease, whatever they were cloned from.
pub fn random_lease_id() -> String {
    guid(rand::random())
}

/// This installation's replica id when none is configured: the host name (made blob-name
/// safe) and the first 8 hex digits of the owner key, so two daemons on one host, each with
/// its own state directory, are two replicas, and a restarted daemon is the same one.
pub fn default_replica_id(owner: u128) -> String {
    let host: String = crate::model::host_name()
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .take(54)
        .collect();
    format!("{host}-{:08x}", (owner >> 96) as u32)
}

/// Who takes a disk's lease: its identity in the lock blob's metadata, its writer
/// fingerprint in the records it writes (`cycle::handover`), and the lease's clock.
#[derive(Clone, Debug)]
pub struct Owner {
    /// [`holder_identity`].
    pub holder: String,
    /// [`writer_id`].
    pub writer: String,
    pub timing: LeaseTiming,
    /// The lease id the previous process of this installation proposed for the disk (kept in
    /// the state directory beside the disk's lock file): when the lock blob names this
    /// replica in a process that no longer runs, proposing it again takes that dead
    /// predecessor's lease back at once instead of waiting for it to expire.
    pub previous_id: Option<String>,
}

/// File in the state directory holding this installation's random owner key.
pub const OWNER_KEY_FILE: &str = "owner-id";

/// This installation's owner key: read from `<state_dir>/owner-id`, made on first use.
pub fn owner_key(state_dir: &Path) -> std::io::Result<u128> {
    let path = state_dir.join(OWNER_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => u128::from_str_radix(text.trim(), 16).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: not a 32-digit hex owner key: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(state_dir)?;
            let key: u128 = rand::random();
            std::fs::write(&path, format!("{key:032x}\n"))?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

/// The id this installation writes `disk`'s records under (`cycle::handover`): a fingerprint
/// of the owner key and the disk, the same for every process of one state directory and
/// different for any other, without giving the owner key itself away to readers of the blob.
/// (It is the fingerprint of the lease id earlier versions derived from the owner key, so
/// records they wrote are recognised as this installation's.)
pub fn writer_id(owner: u128, disk: &str) -> String {
    format!(
        "{:016x}",
        crate::model::pages::crc64(derived_id(owner, disk).as_bytes())
    )
}

/// A GUID derived from the owner key and `name`: stable for one installation. Disk leases
/// never use it (every acquisition proposes a [`random_lease_id`]); a replica's heartbeat
/// lease does (`daemon::cluster`), so a restarted daemon is the same replica at once.
pub fn derived_id(owner: u128, name: &str) -> String {
    let hi = crate::model::pages::crc64(format!("{name}\0hi").as_bytes()) as u128;
    let lo = crate::model::pages::crc64(format!("{name}\0lo").as_bytes()) as u128;
    guid(owner ^ ((hi << 64) | lo))
}

fn guid(n: u128) -> String {
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_are_fresh_guids_and_writer_ids_stable_per_installation_and_disk() {
        let id = random_lease_id();
        let parts: Vec<_> = id.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
        assert_ne!(id, random_lease_id());
        assert_eq!(writer_id(7, "d1"), writer_id(7, "d1"));
        assert_ne!(writer_id(7, "d1"), writer_id(8, "d1"));
        assert_ne!(writer_id(7, "d1"), writer_id(7, "d2"));
        // What earlier versions wrote: crc64 of the lease id they derived from the key.
        assert_eq!(writer_id(7, "d1"), "89829b95a2444fb9");
    }

    #[test]
    fn a_holder_naming_this_replica_is_a_dead_predecessor_or_a_clone() {
        let me = holder_identity(Some("r1"));
        let host = crate::model::host_name();
        assert_eq!(
            classify_holder(&format!("host={host} pid=1 replica=r2"), &me),
            Holder::Other
        );
        assert_eq!(classify_holder("someone", &me), Holder::Other);
        // A pid that cannot exist on this host: the predecessor is dead.
        assert_eq!(
            classify_holder(&format!("host={host} pid=2147483646 replica=r1"), &me),
            Holder::DeadPredecessor
        );
        // This very process, or this replica on another host: a clone.
        assert_eq!(classify_holder(&me, &me), Holder::Clone);
        assert_eq!(
            classify_holder("host=elsewhere pid=2147483646 replica=r1", &me),
            Holder::Clone
        );
    }

    #[test]
    fn the_owner_key_is_made_once_per_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let a = owner_key(dir.path()).unwrap();
        assert_eq!(owner_key(dir.path()).unwrap(), a);
        std::fs::write(dir.path().join(OWNER_KEY_FILE), "zz").unwrap();
        let e = owner_key(dir.path()).unwrap_err();
        assert!(e.to_string().contains("owner-id"), "{e}");
    }

    #[test]
    fn the_holder_names_host_pid_and_replica() {
        let h = holder_identity(Some("r1"));
        assert!(h.contains(&format!("pid={}", std::process::id())), "{h}");
        assert!(h.ends_with("replica=r1"), "{h}");
    }
}
