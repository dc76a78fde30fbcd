//! The held lease on one disk's lock blob: taking it (waiting out a dead predecessor,
//! naming a clone), issuing the next fencing token and minting the chain id, renewing it in
//! the background until the fence falls, writing the open cycle's record under it, and
//! releasing it. Apart because it is the one part of ownership that holds state and runs.

use super::fencing::{raise, FENCE_FLOOR};
use super::identity::{classify_holder, random_lease_id, Holder, Owner};
use super::timing::LeaseTiming;
use super::{lock_blob, OwnershipError};
use crate::model::tags;
use crate::storage::lease::LeaseBlobs;
use crate::storage::{BlobRef, ErrorKind, PageBlobs};
use bytes::Bytes;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

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

    /// Who writes under this lease, as recorded in the body: [`writer_id`](super::writer_id), the same for
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{BlobError, BlobProps};

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
}
