//! One owner per disk, across processes and hosts: a 60-second Azure blob lease on a small
//! lock blob beside the backup blob (`<backup blob>.snapback-state`, a block blob in the
//! backup container), held and renewed for the whole cycle.
//!
//! Why a lock blob and not a lease on the backup blob itself: a leased blob refuses every
//! write that does not carry the lease id, and Copy Blob onto a leased destination, restores
//! and retention would all have to thread it through; the lock blob keeps the page-blob path
//! unchanged while giving the same exclusion between snapback processes (which all take the
//! lease before their first write). Fencing instead of lease-carrying writes: the renewal
//! task gives up after [`RENEW_TIMEOUT`] without an answer, which is at least
//! `LEASE_SECONDS - RENEW_EVERY - RENEW_TIMEOUT` (20 s) before the lease can expire and
//! someone else take it; it then cancels the cycle's stop token, and the runner stops at its
//! next checkpoint, before the backup snapshot (so no restore point is made by a process that
//! is no longer sure to own the disk).
//!
//! The lock blob's body holds the disk's open cycle (see `cycle::handover`), so that whoever
//! takes the lease next resumes it: read here when the lease is taken, written only under the
//! lease and `If-Match` the ETag this owner's last write left ([`DiskLease::write_record`]).

use crate::blobs::{BlobError, BlobRef, ErrorKind, PageBlobs};
use crate::lease::LeaseBlobs;
use crate::model::tags;
use bytes::Bytes;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Lease duration: the longest Azure allows short of infinite, and the longest a dead owner
/// can keep its disks.
pub const LEASE_SECONDS: u32 = 60;
/// How often the holder renews.
pub const RENEW_EVERY: Duration = Duration::from_secs(20);
/// A renewal not answered within this is a lost lease (see the module comment).
pub const RENEW_TIMEOUT: Duration = Duration::from_secs(20);

/// Suffix of the lock blob's name, after the backup blob's.
pub const LOCK_SUFFIX: &str = ".snapback-state";

#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    /// Another process holds the disk's lease.
    #[error("disk {disk} is owned by {holder} (lease on {blob}); skipped")]
    Held {
        disk: String,
        blob: BlobRef,
        holder: String,
    },
    #[error("disk {disk}: lock blob {blob}: {source}")]
    Blob {
        disk: String,
        blob: BlobRef,
        source: BlobError,
    },
    /// A write of the disk's record was refused: another ETag (someone else wrote it), or the
    /// lease is no longer ours. The cycle stops; whoever holds the lease carries on.
    #[error(
        "disk {disk}: the record in lock blob {blob} was written by someone else or the lease \
         is no longer ours ({source}); the cycle stops"
    )]
    Overwritten {
        disk: String,
        blob: BlobRef,
        source: BlobError,
    },
    /// The lock blob's body cannot be read as a record of the disk's open cycle.
    #[error(
        "disk {disk}: lock blob {blob}: {reason}; refusing to guess the open cycle (see \
         docs/design.md, \"Where the state lives\")"
    )]
    BadRecord {
        disk: String,
        blob: BlobRef,
        reason: String,
    },
}

/// The lock blob of a disk whose backup blob is `backup`.
pub fn lock_blob(backup: &BlobRef) -> BlobRef {
    BlobRef::new(
        &backup.account,
        &backup.container,
        &format!("{}{LOCK_SUFFIX}", backup.blob),
    )
}

/// Who this process is, as written into the lock blob: host, pid and replica id.
pub fn holder_identity(replica: Option<&str>) -> String {
    let host = crate::model::host_name();
    let pid = std::process::id();
    let replica = replica
        .map(str::to_string)
        .unwrap_or_else(|| format!("{host}-{pid}"));
    format!("host={host} pid={pid} replica={replica}")
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

/// A held lease on one disk's lock blob, renewed in the background until released.
pub struct DiskLease {
    leases: Arc<dyn LeaseBlobs>,
    blob: BlobRef,
    id: String,
    lost: CancellationToken,
    renewer: tokio::task::JoinHandle<()>,
    holder: String,
    /// The cycle the previous owner last ran (from the lock blob), if it said.
    last_cycle: Option<String>,
    /// The disk's chain id: kept in the lock blob, minted by the first owner.
    chain: String,
    /// The lock blob's body as read when the lease was taken, then as this owner last wrote
    /// it (empty: no record).
    record: Mutex<Bytes>,
    /// The ETag of this owner's last write: the next write is `If-Match` on it.
    etag: Mutex<String>,
}

impl DiskLease {
    /// Takes the lease of `disk` (whose backup blob is `backup`) for `holder` with lease id
    /// `id` (see [`lease_id`]), or says who holds it. `fence` is cancelled if the lease is lost
    /// later: hand it to the cycle as its stop token.
    pub async fn acquire(
        leases: Arc<dyn LeaseBlobs>,
        blobs: &dyn PageBlobs,
        disk: &str,
        backup: &BlobRef,
        (holder, id): (&str, String),
        fence: CancellationToken,
    ) -> Result<DiskLease, OwnershipError> {
        let blob = lock_blob(backup);
        let err = |source| OwnershipError::Blob {
            disk: disk.to_string(),
            blob: blob.clone(),
            source,
        };
        blobs.ensure_container(&blob).await.map_err(err)?;
        leases.create_lock_blob(&blob).await.map_err(err)?;
        match leases.acquire_lease(&blob, &id, LEASE_SECONDS).await {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::Conflict => {
                // Named from the lock blob's metadata; the holder writes it right after
                // taking the lease, so a very young lease may not name anyone yet.
                let holder = blobs
                    .properties(&blob, None)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|p| tags::holder(&p.metadata).map(str::to_string))
                    .unwrap_or_else(|| "another snapback process".into());
                return Err(OwnershipError::Held {
                    disk: disk.to_string(),
                    blob,
                    holder,
                });
            }
            Err(e) => return Err(err(e)),
        }
        // The metadata (holder, cycle, chain), then the body (the open cycle's record).
        let (meta, record) = match leases.read_lock_blob(&blob).await {
            Ok(Some((props, body))) => (props.metadata, body),
            Ok(None) => Default::default(),
            Err(e) => {
                let _ = leases.release_lease(&blob, &id).await;
                return Err(err(e));
            }
        };
        let last_cycle = tags::cycle(&meta).map(str::to_string);
        let chain = tags::chain(&meta)
            .map(str::to_string)
            .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        let lease = |leases: Arc<dyn LeaseBlobs>, lost: CancellationToken| DiskLease {
            renewer: tokio::spawn(renew(
                leases.clone(),
                blob.clone(),
                id.clone(),
                disk.to_string(),
                lost.clone(),
                fence,
            )),
            leases,
            blob: blob.clone(),
            id: id.clone(),
            lost,
            holder: holder.to_string(),
            last_cycle,
            chain,
            record: Mutex::new(record),
            etag: Mutex::new(String::new()),
        };
        let held = lease(leases.clone(), CancellationToken::new());
        let named = tags::lock_holder(holder, held.last_cycle.as_deref(), &held.chain);
        match leases.set_leased_metadata(&blob, &id, &named).await {
            Ok(etag) => *lock(&held.etag) = etag,
            Err(e) => {
                held.release().await;
                return Err(err(e));
            }
        }
        Ok(held)
    }

    /// The cycle the disk's previous owner (maybe this process) last ran under the lease.
    pub fn last_cycle(&self) -> Option<&str> {
        self.last_cycle.as_deref()
    }

    /// The disk's chain id, tagged on everything its cycles make (see `model::tags::of_chain`).
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// The lock blob's body: the record of the disk's cycle as the previous owner (or this
    /// one) last wrote it; empty when none was ever written.
    pub fn record(&self) -> Bytes {
        lock(&self.record).clone()
    }

    /// Who writes under this lease, as recorded in the body: a fingerprint of the lease id,
    /// the same for every process of one installation (state directory) and different for
    /// any other, without giving the lease id itself away to readers of the blob.
    pub fn writer(&self) -> String {
        format!("{:016x}", crate::pages::crc64(self.id.as_bytes()))
    }

    /// Writes `body` (the record of cycle `tag`) as the lock blob's body, under the lease and
    /// `If-Match` the ETag this owner's last write left; the metadata (holder, cycle, chain)
    /// is written again with it, since Put Blob replaces it. A refused write
    /// ([`OwnershipError::Overwritten`]) means another owner wrote or holds the lease.
    pub async fn write_record(
        &self,
        disk: &str,
        tag: &str,
        body: Bytes,
    ) -> Result<(), OwnershipError> {
        let meta = tags::lock_holder(&self.holder, Some(tag), &self.chain);
        let expected = lock(&self.etag).clone();
        match self
            .leases
            .put_leased_body(&self.blob, &self.id, &expected, body.clone(), &meta)
            .await
        {
            Ok(etag) => {
                *lock(&self.etag) = etag;
                *lock(&self.record) = body;
                Ok(())
            }
            Err(source) if source.kind == ErrorKind::PreconditionFailed => {
                // The storage client retries a write whose answer was lost, and the retry
                // meets the ETag of the write that landed: then the blob holds exactly this
                // body (which names this installation as its writer), and the write stands.
                if let Ok(Some((props, now))) = self.leases.read_lock_blob(&self.blob).await {
                    if now == body {
                        tracing::debug!(blob = %self.blob, "a retried record write found its first try applied");
                        *lock(&self.etag) = props.etag;
                        *lock(&self.record) = body;
                        return Ok(());
                    }
                }
                Err(OwnershipError::Overwritten {
                    disk: disk.to_string(),
                    blob: self.blob.clone(),
                    source,
                })
            }
            Err(source) => Err(OwnershipError::Blob {
                disk: disk.to_string(),
                blob: self.blob.clone(),
                source,
            }),
        }
    }

    /// Whether the lease was lost while held (the cycle was fenced).
    pub fn lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// The lock blob.
    pub fn blob(&self) -> &BlobRef {
        &self.blob
    }

    /// Stops renewing and releases the lease, so the next owner need not wait for expiry.
    /// A lease given up as lost is released too: if only the renewal's answer was lost, the
    /// lease is still ours and the next owner should not wait; if someone else holds it, the
    /// service refuses a release with our id. A failed release is only logged: the lease then
    /// expires by itself.
    pub async fn release(self) {
        self.renewer.abort();
        match self.leases.release_lease(&self.blob, &self.id).await {
            Ok(()) => {}
            Err(e) if self.lost() => {
                tracing::debug!(blob = %self.blob, error = %e, "the lost disk lease is not ours to release")
            }
            Err(e) => {
                tracing::warn!(blob = %self.blob, error = %e, "cannot release the disk lease; it expires within {LEASE_SECONDS} s")
            }
        }
    }
}

/// A mutex whose holder panicked still holds a usable value (a string, bytes).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Renews every [`RENEW_EVERY`]; on a failed or unanswered renewal, marks the lease lost and
/// cancels `fence`.
async fn renew(
    leases: Arc<dyn LeaseBlobs>,
    blob: BlobRef,
    id: String,
    disk: String,
    lost: CancellationToken,
    fence: CancellationToken,
) {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        let error = match tokio::time::timeout(RENEW_TIMEOUT, leases.renew_lease(&blob, &id)).await
        {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {RENEW_TIMEOUT:?}"),
        };
        tracing::error!(disk = %disk, blob = %blob, error = %error, "disk lease lost; the cycle stops at its next checkpoint");
        lost.cancel();
        fence.cancel();
        return;
    }
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

/// The lease id this installation uses for `disk`: a GUID (as Azure wants) derived from the
/// owner key, so the same state directory gets the same id after a crash and re-acquires its
/// own lease at once (Azure accepts an acquire with the id of the active lease), while every
/// other installation waits for it to expire.
pub fn lease_id(owner: u128, disk: &str) -> String {
    let hi = crate::pages::crc64(format!("{disk}\0hi").as_bytes()) as u128;
    let lo = crate::pages::crc64(format!("{disk}\0lo").as_bytes()) as u128;
    let n = owner ^ ((hi << 64) | lo);
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
    fn the_lock_blob_sits_beside_the_backup() {
        let b = BlobRef::new("backup", "vhds", "vm1/os.vhd");
        assert_eq!(
            lock_blob(&b),
            BlobRef::new("backup", "vhds", "vm1/os.vhd.snapback-state")
        );
    }

    #[test]
    fn lease_ids_are_guids_stable_per_owner_and_disk() {
        let id = lease_id(7, "d1");
        let parts: Vec<_> = id.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
        assert_eq!(id, lease_id(7, "d1"));
        assert_ne!(id, lease_id(8, "d1"));
        assert_ne!(id, lease_id(7, "d2"));
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
