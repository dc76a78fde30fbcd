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

pub mod lock;

use crate::model::tags;
use crate::storage::lease::LeaseBlobs;
use crate::storage::{BlobError, BlobProps, BlobRef, ErrorKind, IfBlob, PageBlobs};
use bytes::Bytes;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Suffix of the lock blob's name, after the backup blob's.
pub const LOCK_SUFFIX: &str = ".snapback-state";

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

/// The lease's clock: everything follows from its duration `L` (`lease_duration`, 15–60 s).
///
/// - renewals every `L/6`, counted from when the previous one was *sent* (the lease runs
///   from when the service processed the request, which is after it was sent: a schedule
///   counted from the answer drifts later by every answer's delay);
/// - every write to storage has a timeout of `L/3` per try
///   ([`LeaseTiming::request_timeout`], `azure::write_deadline`);
/// - the fence falls `L/3 + L/12` before the lease can expire (35 s after the last renewal
///   sent, for 60 s leases): a request sent just before the fence has ended (answered or
///   timed out) before anyone else can take the lease. A renewal has `5L/12` (25 s of 60,
///   6.25 s of 15) to be answered, retried meanwhile if it fails for a passing reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    duration: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming::new(crate::config::DEFAULT_LEASE_DURATION)
    }
}

impl LeaseTiming {
    /// A lease of `duration` (clamped to Azure's 15–60 s).
    pub fn new(duration: Duration) -> Self {
        let range = crate::config::LEASE_DURATION_RANGE;
        let secs = duration.as_secs().clamp(*range.start(), *range.end());
        LeaseTiming {
            duration: Duration::from_secs(secs),
        }
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The lease duration Azure is asked for.
    pub fn seconds(&self) -> u32 {
        self.duration.as_secs() as u32
    }

    /// The wait from one renewal's send to the next one's.
    pub fn renew_every(&self) -> Duration {
        self.duration / 6
    }

    /// The longest a write (or a renewal) may take.
    pub fn request_timeout(&self) -> Duration {
        self.duration / 3
    }

    /// How long after the last successful renewal was sent the cycle is fenced if no other
    /// renewal has succeeded since: one request timeout plus a margin of `L/12` before expiry.
    pub fn fence_after(&self) -> Duration {
        self.duration - self.request_timeout() - self.duration / 12
    }
}

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
enum Holder {
    /// Another replica, or a holder that names no one.
    Other,
    /// This replica on this host, in a process that no longer runs: a predecessor killed
    /// while it held the lease (its lease expires by itself).
    DeadPredecessor,
    /// This very replica id, alive elsewhere (another host, or a live process here): two
    /// processes with one identity, a cloned state directory or image.
    Clone,
}

fn classify_holder(holder: &str, me: &str) -> Holder {
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

/// A held lease on one disk's lock blob, renewed in the background until released, with the
/// fencing token its cycles write the backup under.
pub struct DiskLease {
    leases: Arc<dyn LeaseBlobs>,
    blob: BlobRef,
    id: String,
    lost: CancellationToken,
    renewer: tokio::task::JoinHandle<()>,
    owner: Owner,
    /// The cycle the previous owner last ran (from the lock blob), if it said.
    last_cycle: Option<String>,
    /// The disk's chain id: kept in the lock blob, minted by the first owner.
    chain: String,
    /// This owner's fencing token (above every token issued before; see [`FENCE_FLOOR`]).
    token: u64,
    /// The backup's ETag before and after this owner raised its sequence number to `token`
    /// (None: the backup did not exist): the raise is snapback's own change, not a foreign
    /// write, so an ETag a record expects is the same base after it.
    raised: Option<(String, String)>,
    /// The lock blob's body as read when the lease was taken, then as this owner last wrote
    /// it (empty: no record).
    record: Mutex<Bytes>,
    /// The ETag of this owner's last write: the next write is `If-Match` on it.
    etag: Mutex<String>,
    /// The body of a write whose answer never came (its future dropped mid-flight): if it
    /// landed, the next write meets its ETag and recognises it by its content.
    in_flight: Mutex<Option<Bytes>>,
}

/// What taking a lease found in the lock blob and did (see [`DiskLease`]'s fields).
struct Taken {
    last_cycle: Option<String>,
    chain: String,
    token: u64,
    raised: Option<(String, String)>,
    record: Bytes,
    etag: String,
}

impl DiskLease {
    /// Takes the lease of `disk` (whose backup blob is `backup`) for `owner`, or says who
    /// holds it; then issues this owner's fencing token and raises the backup's sequence
    /// number to it. `fence` is cancelled if the lease is lost later: hand it to the cycle
    /// as its stop token.
    pub async fn acquire(
        leases: Arc<dyn LeaseBlobs>,
        blobs: &dyn PageBlobs,
        disk: &str,
        backup: &BlobRef,
        owner: &Owner,
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
        let mut id = random_lease_id();
        let timing = owner.timing;
        // A dead predecessor's lease is waited out (once): it expires within the lease
        // duration of its last renewal.
        let mut waited = false;
        let sent = loop {
            let sent = Instant::now();
            match leases.acquire_lease(&blob, &id, timing.seconds()).await {
                Ok(()) => break sent,
                Err(e) if e.kind == ErrorKind::Conflict => {
                    // Named from the lock blob's metadata; the holder writes it right after
                    // taking the lease, so a very young lease may not name anyone yet.
                    let holder = blobs
                        .properties(&blob, None)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|p| tags::holder(&p.metadata).map(str::to_string));
                    let kind = holder
                        .as_deref()
                        .map_or(Holder::Other, |h| classify_holder(h, &owner.holder));
                    if let (Holder::DeadPredecessor, Some(previous)) = (kind, &owner.previous_id) {
                        if *previous != id {
                            tracing::info!(disk, lock = %blob, "taking back the lease a previous snapback process of this replica left");
                            id = previous.clone();
                            continue;
                        }
                    }
                    if kind == Holder::DeadPredecessor && !waited {
                        let wait = timing.duration() + Duration::from_secs(1);
                        tracing::info!(disk, lock = %blob, holder = holder.as_deref().unwrap_or(""), "the disk's lease is held by a previous snapback process of this replica that no longer runs; waiting up to {wait:?} for it to expire");
                        tokio::time::sleep(wait).await;
                        waited = true;
                        continue;
                    }
                    let clone = match kind {
                        Holder::Clone => format!(
                            ", which names this replica too (this process: {}): two \
                             processes share one identity — a cloned host, image or state \
                             directory? Give each its own state_dir and replica_id",
                            owner.holder
                        ),
                        _ => String::new(),
                    };
                    return Err(OwnershipError::Held {
                        disk: disk.to_string(),
                        blob,
                        holder: holder.unwrap_or_else(|| "another snapback process".into()),
                        clone,
                    });
                }
                Err(e) => return Err(err(e)),
            }
        };
        let taken = Self::take(
            leases.clone(),
            blobs,
            disk,
            backup,
            owner,
            (blob.clone(), id.clone()),
        )
        .await;
        let Taken {
            last_cycle,
            chain,
            token,
            raised,
            record,
            etag,
        } = match taken {
            Ok(t) => t,
            Err(e) => {
                let _ = leases.release_lease(&blob, &id).await;
                return Err(e);
            }
        };
        let lost = CancellationToken::new();
        Ok(DiskLease {
            renewer: tokio::spawn(renew(
                leases.clone(),
                blob.clone(),
                id.clone(),
                disk.to_string(),
                (lost.clone(), fence),
                timing,
                sent,
            )),
            leases,
            blob,
            id,
            lost,
            owner: owner.clone(),
            last_cycle,
            chain,
            token,
            raised,
            record: Mutex::new(record),
            etag: Mutex::new(etag),
            in_flight: Mutex::new(None),
        })
    }

    /// Under the new lease: reads the lock blob (holder, cycle, chain, last token, record),
    /// issues the next token into its metadata, then raises the backup to it.
    async fn take(
        leases: Arc<dyn LeaseBlobs>,
        blobs: &dyn PageBlobs,
        disk: &str,
        backup: &BlobRef,
        owner: &Owner,
        (blob, id): (BlobRef, String),
    ) -> Result<Taken, OwnershipError> {
        let err = |source| OwnershipError::Blob {
            disk: disk.to_string(),
            blob: blob.clone(),
            source,
        };
        let (meta, record) = match leases.read_lock_blob(&blob).await.map_err(err)? {
            Some((props, body)) => (props.metadata, body),
            None => Default::default(),
        };
        let last_cycle = tags::cycle(&meta).map(str::to_string);
        let chain = tags::chain(&meta)
            .map(str::to_string)
            .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        let backup_props =
            blobs
                .properties(backup, None)
                .await
                .map_err(|source| OwnershipError::Blob {
                    disk: disk.to_string(),
                    blob: backup.clone(),
                    source,
                })?;
        // Above the last token issued and above the backup's own number (whatever set it).
        let token = tags::fence(&meta)
            .unwrap_or(0)
            .max(
                backup_props
                    .as_ref()
                    .and_then(|p| p.sequence_number)
                    .unwrap_or(0),
            )
            .max(FENCE_FLOOR)
            + 1;
        // Recorded before the raise: an owner after this one issues a higher token even if
        // this process dies between the two.
        let named = tags::lock_holder(&owner.holder, last_cycle.as_deref(), &chain, token);
        let etag = leases
            .set_leased_metadata(&blob, &id, &named)
            .await
            .map_err(err)?;
        let raised = match backup_props {
            Some(props) => Some(raise(blobs, disk, backup, token, props).await?),
            None => None,
        };
        Ok(Taken {
            last_cycle,
            chain,
            token,
            raised,
            record,
            etag,
        })
    }

    /// The cycle the disk's previous owner (maybe this process) last ran under the lease.
    pub fn last_cycle(&self) -> Option<&str> {
        self.last_cycle.as_deref()
    }

    /// The disk's chain id, tagged on everything its cycles make (see `model::tags::of_chain`).
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// The lease id this acquisition proposed (fresh and random, see [`random_lease_id`]).
    pub fn lease_id(&self) -> &str {
        &self.id
    }

    /// This owner's fencing token: every write to the backup carries it.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The backup's ETag before and after this owner's raise (None: no backup blob then).
    pub fn raised(&self) -> Option<(&str, &str)> {
        self.raised.as_ref().map(|(a, b)| (a.as_str(), b.as_str()))
    }

    /// The lock blob's body: the record of the disk's cycle as the previous owner (or this
    /// one) last wrote it; empty when none was ever written.
    pub fn record(&self) -> Bytes {
        lock(&self.record).clone()
    }

    /// Who writes under this lease, as recorded in the body: [`writer_id`], the same for
    /// every process of one installation (state directory) and different for any other.
    pub fn writer(&self) -> &str {
        &self.owner.writer
    }

    /// Writes `body` (the record of cycle `tag`) as the lock blob's body, under the lease and
    /// `If-Match` the ETag this owner's last write left; the metadata (holder, cycle, chain,
    /// token) is written again with it, since Put Blob replaces it. A refused write
    /// ([`OwnershipError::Overwritten`]) means another owner wrote or holds the lease —
    /// unless the blob holds what this owner wrote: this very body (the client's retry of a
    /// write whose answer was lost met its own first try), or the body of an earlier write
    /// whose answer never came (a checkpoint cut in flight), which is then written over.
    pub async fn write_record(
        &self,
        disk: &str,
        tag: &str,
        body: Bytes,
    ) -> Result<(), OwnershipError> {
        let meta = tags::lock_holder(&self.owner.holder, Some(tag), &self.chain, self.token);
        let cut = lock(&self.in_flight).replace(body.clone());
        let mut expected = lock(&self.etag).clone();
        let mut reconciled = false;
        loop {
            let source = match self
                .leases
                .put_leased_body(&self.blob, &self.id, &expected, body.clone(), &meta)
                .await
            {
                Ok(etag) => {
                    self.wrote(etag, body);
                    return Ok(());
                }
                Err(source) if source.kind == ErrorKind::PreconditionFailed => source,
                Err(source) => {
                    return Err(OwnershipError::Blob {
                        disk: disk.to_string(),
                        blob: self.blob.clone(),
                        source,
                    })
                }
            };
            if let Ok(Some((props, now))) = self.leases.read_lock_blob(&self.blob).await {
                if now == body {
                    tracing::debug!(blob = %self.blob, "a retried record write found its first try applied");
                    self.wrote(props.etag, body);
                    return Ok(());
                }
                if !reconciled && cut.as_ref() == Some(&now) {
                    tracing::debug!(blob = %self.blob, "an earlier record write cut in flight had landed; writing over it");
                    expected = props.etag;
                    reconciled = true;
                    continue;
                }
            }
            return Err(OwnershipError::Overwritten {
                disk: disk.to_string(),
                blob: self.blob.clone(),
                source,
            });
        }
    }

    fn wrote(&self, etag: String, body: Bytes) {
        *lock(&self.etag) = etag;
        *lock(&self.record) = body;
        *lock(&self.in_flight) = None;
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
                tracing::warn!(blob = %self.blob, error = %e, "cannot release the disk lease; it expires within {:?}", self.owner.timing.duration())
            }
        }
    }
}

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
async fn raise(
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

/// A mutex whose holder panicked still holds a usable value (a string, bytes).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Renews every [`LeaseTiming::renew_every`], counted from when the previous renewal (or the
/// acquire) was sent; a renewal that fails for a passing reason (throttling, an outage, no
/// answer) is sent again a second later. If no renewal has succeeded by
/// [`LeaseTiming::fence_after`] after the last one sent that did, or one is refused (the lease
/// is someone else's), marks the lease lost and cancels `fence`.
async fn renew(
    leases: Arc<dyn LeaseBlobs>,
    blob: BlobRef,
    id: String,
    disk: String,
    (lost, fence): (CancellationToken, CancellationToken),
    timing: LeaseTiming,
    acquired: Instant,
) {
    let mut valid_from = acquired;
    let error = loop {
        tokio::time::sleep_until(valid_from + timing.renew_every()).await;
        let deadline = valid_from + timing.fence_after();
        let renewed = async {
            loop {
                let sent = Instant::now();
                match leases.renew_lease(&blob, &id).await {
                    Ok(()) => return Ok(sent),
                    Err(e) if e.may_pass() => {
                        tracing::warn!(disk = %disk, blob = %blob, error = %e, "lease renewal failed; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        match tokio::time::timeout_at(deadline, renewed).await {
            Ok(Ok(sent)) => valid_from = sent,
            Ok(Err(refused)) => break refused,
            Err(_) => {
                break format!(
                    "no renewal answered within {:?} of the last one sent",
                    timing.fence_after()
                )
            }
        }
    };
    tracing::error!(disk = %disk, blob = %blob, error = %error, "disk lease lost; the cycle stops at its next checkpoint");
    lost.cancel();
    fence.cancel();
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
    fn the_lock_blob_sits_beside_the_backup() {
        let b = BlobRef::new("backup", "vhds", "vm1/os.vhd");
        assert_eq!(
            lock_blob(&b),
            BlobRef::new("backup", "vhds", "vm1/os.vhd.snapback-state")
        );
    }

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

    /// Renewals answered after `delay`, or refused (`refuse`), each send's instant recorded.
    struct ScriptedLeases {
        delay: Duration,
        refuse: bool,
        sent: Mutex<Vec<Instant>>,
    }

    #[async_trait::async_trait]
    impl LeaseBlobs for ScriptedLeases {
        async fn create_lock_blob(&self, _: &BlobRef) -> crate::storage::BlobResult<()> {
            Ok(())
        }
        async fn acquire_lease(
            &self,
            _: &BlobRef,
            _: &str,
            _: u32,
        ) -> crate::storage::BlobResult<()> {
            Ok(())
        }
        async fn renew_lease(&self, b: &BlobRef, _: &str) -> crate::storage::BlobResult<()> {
            lock(&self.sent).push(Instant::now());
            tokio::time::sleep(self.delay).await;
            if self.refuse {
                return Err(BlobError::local(
                    ErrorKind::Conflict,
                    crate::storage::Resource::blob(b),
                    "LeaseIdMismatchWithLeaseOperation",
                ));
            }
            Ok(())
        }
        async fn release_lease(&self, _: &BlobRef, _: &str) -> crate::storage::BlobResult<()> {
            Ok(())
        }
        async fn set_leased_metadata(
            &self,
            _: &BlobRef,
            _: &str,
            _: &crate::storage::Metadata,
        ) -> crate::storage::BlobResult<String> {
            Ok(String::new())
        }
        async fn read_lock_blob(
            &self,
            _: &BlobRef,
        ) -> crate::storage::BlobResult<Option<(BlobProps, Bytes)>> {
            Ok(None)
        }
        async fn put_leased_body(
            &self,
            _: &BlobRef,
            _: &str,
            _: &str,
            _: Bytes,
            _: &crate::storage::Metadata,
        ) -> crate::storage::BlobResult<String> {
            Ok(String::new())
        }
    }

    /// Runs `renew` for `run` of paused time under a 15 s lease; the renewals' send times
    /// (from the acquire) and when the fence fell, if it did.
    async fn renewals(
        delay: Duration,
        refuse: bool,
        run: Duration,
    ) -> (Vec<Duration>, Option<Duration>) {
        let leases = Arc::new(ScriptedLeases {
            delay,
            refuse,
            sent: Mutex::new(Vec::new()),
        });
        let fence = CancellationToken::new();
        let start = Instant::now();
        let timing = LeaseTiming::new(Duration::from_secs(15));
        let task = tokio::spawn(renew(
            leases.clone(),
            BlobRef::new("backup", "c", "d.snapback-state"),
            "id".into(),
            "d".into(),
            (CancellationToken::new(), fence.clone()),
            timing,
            start,
        ));
        let fell = tokio::select! {
            _ = fence.cancelled() => Some(start.elapsed()),
            _ = tokio::time::sleep(run) => None,
        };
        task.abort();
        let sent = lock(&leases.sent).iter().map(|t| *t - start).collect();
        (sent, fell)
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_are_scheduled_from_when_the_previous_one_was_sent() {
        // Answered 2 s late: a schedule counted from the answers would send at 2.5, 7, 11.5 s.
        let (sent, fell) = renewals(Duration::from_secs(2), false, Duration::from_secs(16)).await;
        let ms: Vec<u128> = sent.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [2_500, 5_000, 7_500, 10_000, 12_500, 15_000]);
        assert_eq!(fell, None, "every renewal succeeded in time");
    }

    #[tokio::test(start_paused = true)]
    async fn the_fence_falls_a_request_timeout_and_a_margin_before_expiry() {
        let timing = LeaseTiming::new(Duration::from_secs(15));
        // Renewals never answered: the fence falls at 8.75 s, the lease expires at 15 s, and
        // a write sent just before the fence has timed out by 13.75 s.
        let (sent, fell) =
            renewals(Duration::from_secs(3600), false, Duration::from_secs(60)).await;
        assert_eq!(fell, Some(Duration::from_millis(8_750)));
        assert_eq!(sent, [Duration::from_millis(2_500)]);
        let fence = fell.unwrap_or_default();
        assert!(fence + timing.request_timeout() < timing.duration());
        // A renewal refused (the lease is someone else's): at once.
        let (_, fell) = renewals(Duration::from_millis(100), true, Duration::from_secs(60)).await;
        assert_eq!(fell, Some(Duration::from_millis(2_600)));
    }

    #[test]
    fn the_lease_clock_follows_its_duration() {
        let t = LeaseTiming::default();
        assert_eq!(t.seconds(), 60);
        assert_eq!(t.renew_every(), Duration::from_secs(10));
        assert_eq!(t.request_timeout(), Duration::from_secs(20));
        assert_eq!(t.fence_after(), Duration::from_secs(35));
        let short = LeaseTiming::new(Duration::from_secs(15));
        assert_eq!(short.renew_every(), Duration::from_millis(2500));
        assert_eq!(short.fence_after(), Duration::from_millis(8750));
        // The fence falls a request timeout and a margin before expiry, after the renewal.
        for t in [t, short] {
            assert!(t.fence_after() + t.request_timeout() < t.duration());
            assert!(t.fence_after() > t.renew_every());
        }
        assert_eq!(LeaseTiming::new(Duration::from_secs(300)).seconds(), 60);
        assert_eq!(LeaseTiming::new(Duration::from_secs(1)).seconds(), 15);
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
