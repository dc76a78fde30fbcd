//! The VM guest state of a Trusted Launch disk, copied beside the backup before the restore
//! point that names it is taken (docs/managed-disks.md, "Trusted Launch").
//!
//! A Trusted Launch disk's UEFI variables and vTPM state live in a page blob beside the disk
//! (the "VMGS"), exported with each snapshot when the grant asks for it. An OS disk restored
//! without it boots with a blank vTPM: BitLocker asks for its recovery key and TPM-sealed
//! LUKS volumes do not open. So each restore point of such a disk names its own copy of the
//! guest state exported with `S(n)`:
//!
//! - the copy is the page blob `<backup>.vmgs.<S(n)'s name>` in the backup's container: the
//!   snapshot's ARM name carries the cycle id, so no other cycle, owner or installation
//!   writes under that name;
//! - it is written before `B(n)` and its record (name, length, CRC-64) goes into `B(n)`'s
//!   metadata, so a restore point either names a complete copy or does not exist;
//! - it is fenced like the backup: created carrying this owner's token as its sequence
//!   number (replacing an earlier copy only `If-Match` the ETag read with a token not above
//!   this owner's), every Put Page conditional on that number. A fenced-off owner can write
//!   only into a copy of its own, which no restore point names (its `B(n)` is refused by the
//!   backup's fence);
//! - a resumed cycle (kill -9 anywhere) writes the copy again from the start: the guest
//!   state of an immutable snapshot is the same bytes every time.

use super::runner::Runner;
use crate::config::CopyMode;
use crate::model::pages::{crc64_digest, segments, ByteRange, MAX_PUT_BYTES};
use crate::model::{tags, SnapshotId};
use crate::source::{CopySource, GuestState, Source};
use crate::storage::{
    BlobError, BlobRef, ErrorKind, Fence, IfBlob, NewPageBlob, PageBlobs, Resource,
};

/// The copy of a guest state beside `backup`.
pub fn copy_blob(backup: &BlobRef, g: &GuestState) -> BlobRef {
    BlobRef::new(
        &backup.account,
        &backup.container,
        &tags::guest_state_blob(&backup.blob, &g.name),
    )
}

/// The 4 MiB pieces of a blob of `size` bytes (one Put Page each).
pub fn chunks(size: u64) -> impl Iterator<Item = ByteRange> {
    segments(ByteRange::new(0, size), MAX_PUT_BYTES)
}

impl Runner<'_> {
    /// Copies the guest state exported with `snapshot` (if the source has one) beside the
    /// backup and returns its record for the restore point; None: nothing to copy.
    pub(super) async fn copy_guest_state(
        &self,
        source: &dyn Source,
        disk: &str,
        cycle: &str,
        snapshot: &SnapshotId,
    ) -> Result<Option<tags::GuestStateCopy>, BlobError> {
        let Some(g) = source.guest_state(snapshot).await? else {
            return Ok(None);
        };
        let copy = copy_blob(&self.disk.backup, &g);
        self.create_copy(&copy, g.size, disk, cycle).await?;
        let mut server = match (&g.copy_from, self.disk.copy_mode) {
            (_, CopyMode::Client) | (None, _) => None,
            (Some(CopySource::Url { url, resource }), _) => Some((url, resource)),
            // A source's guest state is always a URL; nothing else would be one here.
            (Some(CopySource::Blob { .. }), _) => None,
        };
        if g.copy_from.is_none() && self.disk.copy_mode == CopyMode::Server {
            tracing::warn!(
                disk,
                "the VM guest state's export needs snapback's own token: copied through snapback"
            );
        }
        for (i, r) in chunks(g.size).enumerate() {
            if i == 1 {
                failpoint_in_copy().await;
            }
            if let Some((url, resource)) = server {
                let put = self
                    .blobs
                    .put_pages_from_sas(&copy, r, url.expose(), resource, r.start, self.fence)
                    .await;
                match put {
                    Ok(_) => continue,
                    Err(e) if self.disk.copy_mode == CopyMode::Auto && e.refuses_server_copy() => {
                        tracing::warn!(disk, error = %e, "server-side copy of the VM guest state refused; copying through snapback");
                        server = None;
                    }
                    Err(e) => return Err(e),
                }
            }
            let data = source.read_guest_state(snapshot, r).await?;
            // The copy was created blank: zeros need no write.
            if data.iter().any(|b| *b != 0) {
                self.blobs
                    .put_pages(&copy, r.start, data, self.fence)
                    .await?;
            }
        }
        // The checksum is of what the copy holds, read back: the record vouches for the
        // stored bytes, whichever way they got there.
        let mut crc = crc64_digest();
        for r in chunks(g.size) {
            crc.update(&self.blobs.read(&copy, None, r).await?);
        }
        Ok(Some(tags::GuestStateCopy {
            blob: copy.blob,
            length: g.size,
            crc64: crc.finalize(),
        }))
    }

    /// Makes `copy` a blank page blob of `size` bytes carrying this owner's token. An
    /// earlier copy (a killed run's, or a fenced-off owner's) is replaced only if its token
    /// is not above this owner's, `If-Match` the ETag read with that token.
    async fn create_copy(
        &self,
        copy: &BlobRef,
        size: u64,
        disk: &str,
        cycle: &str,
    ) -> Result<(), BlobError> {
        let now = self.blobs.properties(copy, None).await?;
        let token = self.fence.map(|Fence(t)| t);
        if let (Some(t), Some(n)) = (token, now.as_ref().and_then(|p| p.sequence_number)) {
            if n > t {
                return Err(BlobError::local(
                    ErrorKind::Fenced,
                    Resource::blob(copy),
                    format!("the VM guest state copy carries token {n}, above this owner's {t}"),
                ));
            }
        }
        let new = NewPageBlob {
            metadata: tags::in_chain(tags::source_snapshot(disk, cycle), self.chain.as_deref()),
            sequence_number: token,
            condition: match now {
                None => IfBlob::Absent,
                Some(p) => IfBlob::Is(p.etag),
            },
        };
        match self.blobs.create_page_blob(copy, size, &new).await {
            Ok(_) => Ok(()),
            // Someone wrote it between the read and the create: a later owner (a higher
            // token) or a concurrent one; either way this owner stops, as fenced.
            Err(e)
                if matches!(
                    e.kind,
                    ErrorKind::PreconditionFailed | ErrorKind::AlreadyExists
                ) =>
            {
                Err(BlobError {
                    kind: ErrorKind::Fenced,
                    ..e
                })
            }
            Err(e) => Err(e),
        }
    }
}

/// Test failpoint: with `SNAPBACK_FAILPOINT_PAUSE_IN_GUEST_STATE=1` the process prints
/// `failpoint: paused in the guest state copy` to stderr once the copy's first piece is
/// written and waits forever, so a crash test can SIGKILL it halfway through the copy.
async fn failpoint_in_copy() {
    if std::env::var("SNAPBACK_FAILPOINT_PAUSE_IN_GUEST_STATE").as_deref() == Ok("1") {
        eprintln!("failpoint: paused in the guest state copy");
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_blob_in_4_mib_pieces() {
        let got: Vec<ByteRange> = chunks(MAX_PUT_BYTES * 2 + 512).collect();
        assert_eq!(
            got,
            vec![
                ByteRange::new(0, MAX_PUT_BYTES),
                ByteRange::new(MAX_PUT_BYTES, 2 * MAX_PUT_BYTES),
                ByteRange::new(2 * MAX_PUT_BYTES, 2 * MAX_PUT_BYTES + 512),
            ]
        );
        assert_eq!(chunks(0).count(), 0);
    }

    #[test]
    fn the_copy_is_named_by_the_backup_and_the_source_snapshot() {
        let backup = BlobRef::new("acct", "backups", "vm/os");
        let g = GuestState {
            name: "os-sb-0123456789abcdef".into(),
            size: 4096,
            copy_from: None,
        };
        let c = copy_blob(&backup, &g);
        assert_eq!(
            (c.account.as_str(), c.container.as_str(), c.blob.as_str()),
            ("acct", "backups", "vm/os.vmgs.os-sb-0123456789abcdef")
        );
    }
}
