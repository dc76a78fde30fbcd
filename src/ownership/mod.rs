//! One owner per disk, across processes and hosts: an Azure blob lease on a small lock blob
//! beside the backup blob (`<backup blob>.snapback-state`, a block blob in the backup
//! container), held and renewed for the whole cycle — and a fencing token on every write to
//! the backup, so that an owner that lost the lease can never write.
//!
//! Why a lock blob and not a lease on the backup blob itself: a leased blob refuses every
//! write that does not carry the lease id, and Copy Blob onto a leased destination, restores
//! and retention would all have to thread it through; the lock blob keeps the page-blob path
//! unchanged while giving the same exclusion between snapback processes.
//!
//! A lease alone decides who *may* run a disk's cycle, not who *does* write: a process frozen
//! past its lease (SIGSTOP, a paused VM, a host stalled behind a slow disk) wakes with writes
//! in flight, and a write held up in the network lands whenever it lands. No client-side
//! check stops a write already on the wire; a condition the service checks does. So whoever
//! takes a disk's lease issues a **fencing token** higher than any issued before (recorded in
//! the lock blob, [`FENCE_FLOOR`] and up) and raises the backup page blob's sequence number
//! to it; every Put Page, Clear Page and Put Page From URL of its cycles carries
//! `x-ms-if-sequence-number-eq: <token>`, so a write of an earlier owner is refused by the
//! service (412 `SequenceNumberConditionNotMet`) from the moment of the raise. The requests
//! that take no sequence-number condition (Snapshot Blob, resize, Copy Blob, Put Blob) are
//! sent `If-Match` an ETag read together with the sequence number, after checking that it is
//! still the token: the raise changes the ETag, so those of an earlier owner fail too. See
//! docs/design.md, "Fencing", for the protocol and why a stale write cannot land.
//!
//! The client-side part stays as a second line: the lease is renewed on a schedule counted
//! from when each renewal was *sent* ([`LeaseTiming`]), and if no renewal has succeeded by
//! the fence — one request timeout plus a margin before the lease can expire — the cycle's
//! stop token is cancelled and the runner stops at its next checkpoint.
//!
//! Every acquisition proposes a fresh random lease id: a cloned state directory, VM image or
//! volume therefore never shares a lease with its original (Azure accepts an acquire with
//! the active lease's own id, so a derived id would let both "own" the disk). A restarted
//! process waits for the lease its dead predecessor left to expire ([`LeaseTiming`]).
//!
//! The lock blob's body holds the disk's open cycle (see `cycle::handover`), so that whoever
//! takes the lease next resumes it: read here when the lease is taken, written only under the
//! lease and `If-Match` the ETag this owner's last write left ([`DiskLease::write_record`]).

//!
//! By concept: the lease's clock (`timing`), who this process and installation are
//! (`identity`), fencing the backup with the token (`fencing`), and the held lease
//! itself (`disk_lease`); the lock blob's name and the errors stay here, shared by all.

mod disk_lease;
mod fencing;
mod identity;
pub mod lock;
mod timing;

pub use disk_lease::DiskLease;
pub use fencing::{token_etag, FENCE_FLOOR};
pub use identity::{
    default_replica_id, derived_id, holder_identity, owner_key, random_lease_id, writer_id, Owner,
    OWNER_KEY_FILE,
};
pub use timing::LeaseTiming;

use crate::storage::{BlobError, BlobRef};

/// Suffix of the lock blob's name, after the backup blob's.
pub const LOCK_SUFFIX: &str = ".snapback-state";

#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    /// Another process holds the disk's lease.
    #[error("disk {disk} is owned by {holder} (lease on {blob}){clone}; skipped")]
    Held {
        disk: String,
        blob: BlobRef,
        holder: String,
        /// Empty, or a note that the holder names this very replica (a cloned host or state
        /// directory: two processes with one identity).
        clone: String,
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
    /// The backup blob's sequence number could not be raised to this owner's fencing token.
    #[error("disk {disk}: cannot fence backup blob {backup} with token {token}: {reason}")]
    Unfenced {
        disk: String,
        backup: BlobRef,
        token: u64,
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
}
