//! Fencing the backup: the token range, and raising the backup's sequence number to an
//! owner's token so that every write of an earlier owner is refused by the service (see the
//! parent module and docs/design.md, "Fencing"). Apart from the lease: restores and the
//! cycle's unconditioned writes use [`token_etag`] with a token they already hold.

use super::OwnershipError;
use crate::storage::{BlobError, BlobProps, BlobRef, ErrorKind, IfBlob, PageBlobs};

/// The lowest fencing token. Tokens live above 2^52 so that a sequence number a page blob
/// carries for another reason — Copy Blob gives its destination the *source's* sequence
/// number (a seed, a rebase), and VM disks and other page blobs use theirs freely, in
/// practice from 0 — is never taken for an owner's token. They stay below 2^53: the service
/// takes up to 2^63 − 1, but Azurite keeps the number as a JavaScript double, exact only up
/// to 2^53 (above, 2^62 + 1 comes back as 4611686018427388000), and tokens must compare
/// exactly wherever the tests run.
pub const FENCE_FLOOR: u64 = 1 << 52;

/// How often a raise of the backup's sequence number is tried when the backup keeps changing
/// between the read and the raise (a write of an earlier owner landing just then).
const RAISE_ATTEMPTS: u32 = 5;

/// Before a write that takes no sequence-number condition (resize, Put Blob, Copy Blob,
/// Snapshot Blob) onto `backup` as `props` shows it, by the owner of `token`: the ETag to send
/// it `If-Match` on, once the backup carries the token — or None when the backup carries a
/// higher one (a later owner's: this one is fenced). A lower number (a blob made after the
/// owner's raise, or a Copy Blob that carried its source's number) is raised to the token
/// first, `If-Match` the ETag just read; a raise refused because the backup changed meanwhile
/// is the caller's to handle (412 `PreconditionFailed`).
pub async fn token_etag(
    blobs: &dyn PageBlobs,
    backup: &BlobRef,
    props: &BlobProps,
    token: u64,
) -> Result<Option<String>, BlobError> {
    match props.sequence_number {
        Some(n) if n == token => Ok(Some(props.etag.clone())),
        Some(n) if n > token => Ok(None),
        _ => blobs
            .set_sequence_number(backup, token, &IfBlob::Is(props.etag.clone()))
            .await
            .map(Some),
    }
}

/// Raises `backup`'s sequence number to `token`, `If-Match` the ETag read with it, so that the
/// ETag before and after are known exactly (returned). The backup changing in between (a
/// write of an earlier owner landing just then) is read again and the raise tried again; a
/// raise whose answer was lost is recognised by the number it left.
pub(super) async fn raise(
    blobs: &dyn PageBlobs,
    disk: &str,
    backup: &BlobRef,
    token: u64,
    mut props: BlobProps,
) -> Result<(String, String), OwnershipError> {
    let unfenced = |reason: String| OwnershipError::Unfenced {
        disk: disk.to_string(),
        backup: backup.clone(),
        token,
        reason,
    };
    for _ in 0..RAISE_ATTEMPTS {
        let before = props.etag.clone();
        let refused = match blobs
            .set_sequence_number(backup, token, &IfBlob::Is(before.clone()))
            .await
        {
            Ok(after) => return Ok((before, after)),
            Err(e) if e.kind == ErrorKind::PreconditionFailed => e,
            Err(e) => return Err(unfenced(e.to_string())),
        };
        props = match blobs.properties(backup, None).await {
            Ok(Some(p)) => p,
            Ok(None) => return Err(unfenced("the backup blob was deleted meanwhile".into())),
            Err(e) => return Err(unfenced(e.to_string())),
        };
        match props.sequence_number {
            // The retry of a raise whose answer was lost met the raise itself.
            Some(n) if n == token => return Ok((before, props.etag)),
            // Tokens only grow: a higher one means this lease is no longer the newest.
            Some(n) if n > token => {
                return Err(unfenced(format!(
                    "its sequence number is already {n}, a later owner's token ({refused})"
                )))
            }
            _ => {}
        }
    }
    Err(unfenced(format!(
        "it changed under every one of {RAISE_ATTEMPTS} attempts"
    )))
}
