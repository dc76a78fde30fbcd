//! The apply phase: the diff listed in segments and pages, coalesced into batches that run
//! concurrently (client copy: read `S(n)` then Put Page; server copy: Put Page From URL), with
//! a checkpoint over the contiguous prefix of finished batches.

use super::error::CycleError;
use super::machine::Outcome;
use super::runner::Runner;
use super::tuning::ApplyTuning;
use crate::config::CopyMode;
use crate::model::pages::{
    round_up_to_page, segments, Batch, ByteRange, Coalescer, ListingCheck, ReadPlanner,
    MAX_PUT_BYTES,
};
use crate::model::record::{CycleRecord, CycleStats, PhaseName};
use crate::model::SnapshotId;
use crate::source::{CopySource, DiffQuery, Source};
use crate::storage::{retry_unanswered, BlobError, Continuation, ErrorKind, IfBlob, PageBlobs};
use futures::{stream, StreamExt};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often the apply checkpoint is written at most. A crash re-applies at most this much
/// work; each write is one small SQLite transaction.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// How long a stopping apply waits for its running batches. Requests end by their own
/// timeouts well before; this only bounds a stop whatever the transport does.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

impl Runner<'_> {
    /// Applies the diff `base..snapshot` (every page of `snapshot` without a base) from `from`
    /// on, persisting progress as it goes.
    pub(super) async fn apply(
        &self,
        rec: &mut CycleRecord,
        snapshot: &SnapshotId,
        base: Option<&SnapshotId>,
        size: u64,
        from: u64,
        expected_etag: Option<&str>,
    ) -> Result<Outcome, CycleError> {
        let backup = &self.disk.backup;
        let source = self.source();
        // No diff base: a seed by client copy. Every page of S(n) is listed and copied onto a
        // backup base made blank first (only before the first checkpoint: later, resume).
        if base.is_none() && from == 0 {
            // Checked once per cycle, and recorded before the blob is made: a failure between
            // making it and writing to it must not make the next attempt refuse our own blob.
            if !rec.backup_touched {
                self.check_backup_is_ours().await?;
                rec.backup_touched = true;
                self.store.save_cycle(rec, self.now())?;
            }
            self.create_backup(rec, size).await?;
        }
        // A source that grew (or shrank) is matched first, so every put lands inside the blob.
        let props = self
            .blobs
            .properties(backup, None)
            .await
            .map_err(|e| self.blob_err(e))?;
        let stats = CycleStats::default();
        let Some(props) = props else {
            return Ok(Outcome::Repair {
                reason: format!("backup blob {backup} disappeared"),
            });
        };
        // Before the first write (a seed from offset 0 has just made the blob anew): the base
        // must be what this cycle left when it last stopped, or what the diff phase checked.
        if base.is_some() || from > 0 {
            match expected_etag {
                Some(expected) if props.etag != expected => {
                    return Ok(Outcome::Repair {
                        reason: format!(
                            "backup blob {backup} was written by someone else while this \
                             cycle's apply was stopped (ETag {} instead of {expected})",
                            props.etag
                        ),
                    })
                }
                // Checked: forgotten before the first write, so a run killed from here on
                // resumes as "unknown" rather than comparing against a base it changed — in
                // the lock blob too, before that write, so that a takeover from here on
                // resumes instead of taking the changed ETag for a foreign write and seeding.
                Some(_) => {
                    self.checkpoint(rec, from, CycleStats::default())?;
                    self.take_unpublished();
                    self.publish(rec).await?;
                }
                None => {
                    tracing::warn!(disk = %self.disk.name, %backup, from, "resuming an apply whose last run recorded no backup ETag (it was killed): a foreign write to the backup since then cannot be detected");
                }
            }
        }
        if props.size != size {
            let etag = self.fenced_etag(&props, PhaseName::Apply).await?;
            let resized = self
                .blobs
                .resize(backup, round_up_to_page(size), &IfBlob::Is(etag))
                .await;
            if let Err(e) = resized {
                return Err(self.unmatched(PhaseName::Apply, e).await);
            }
            rec.backup_touched = true;
        }

        // Server copy reads S(n) through access granted for this apply (revoked at its end).
        let server_wanted = self.disk.copy_mode != CopyMode::Client;
        let grant = if server_wanted {
            match source.grant_read(snapshot).await {
                Ok(g) => Some(g),
                Err(e) if self.disk.copy_mode == CopyMode::Auto && e.refuses_server_copy() => {
                    tracing::warn!(disk = %self.disk.name, error = %e, "server-side copy unavailable; copying through snapback");
                    None
                }
                Err(e) => return Err(self.blob_err(e)),
            }
        } else {
            None
        };
        let result = self
            .apply_window(
                rec,
                &*source,
                snapshot,
                base,
                size,
                from,
                grant.as_ref(),
                stats,
            )
            .await;
        if grant.is_some() {
            if let Err(e) = source.revoke_read(snapshot).await {
                tracing::warn!(disk = %self.disk.name, error = %e, "could not revoke the backup service's read access");
            }
        }
        result
    }

    /// The pipelined part of [`Runner::apply`]: list, plan and run batches over
    /// `from..size`, checkpointing the contiguous prefix of finished ones.
    #[allow(clippy::too_many_arguments)]
    async fn apply_window(
        &self,
        rec: &mut CycleRecord,
        source: &dyn Source,
        snapshot: &SnapshotId,
        base: Option<&SnapshotId>,
        size: u64,
        from: u64,
        grant: Option<&CopySource>,
        mut stats: CycleStats,
    ) -> Result<Outcome, CycleError> {
        let window = ByteRange::new(from, size);
        let batches = diff_batches(source, snapshot, base, window, self.tuning);
        let mut batches = std::pin::pin!(batches);
        let concurrency = self.disk.concurrency.max(1);
        // Batches run and finish in any order (a slow request does not hold back the ones
        // behind it); the checkpoint only moves over the contiguous prefix of finished ones.
        // At most `max_ahead` batches may be admitted past the oldest unfinished one, which
        // bounds `finished` (and the work a crash can repeat).
        let max_ahead = (concurrency * 64) as u64;
        let server = AtomicBool::new(grant.is_some());
        let server = &server;
        let mut running = futures::stream::FuturesUnordered::new();
        let (mut admitted, mut head) = (0u64, 0u64);
        let mut finished = std::collections::BTreeMap::<u64, u64>::new();
        let mut listed_all = false;
        let mut listing_failed = false;

        let mut last_save = Instant::now();
        let mut upto = from;
        if let Some(p) = &self.progress {
            p.start("apply", upto, size);
        }
        enum Event<B, D> {
            Stop,
            Batch(Option<Result<B, BlobError>>),
            Done(D),
        }
        loop {
            if listed_all && running.is_empty() {
                break;
            }
            let can_admit =
                !listed_all && running.len() < concurrency && admitted - head < max_ahead;
            let event = tokio::select! {
                biased;
                _ = self.stop.cancelled() => Event::Stop,
                d = running.next(), if !running.is_empty() => Event::Done(d),
                b = batches.next(), if can_admit => Event::Batch(b),
            };
            let failure = match event {
                Event::Stop => {
                    self.park(rec, &mut running, &mut finished, head, upto, stats)
                        .await?;
                    return Err(CycleError::Interrupted {
                        disk: rec.disk.clone(),
                        phase: PhaseName::Apply,
                    });
                }
                Event::Batch(None) => {
                    listed_all = true;
                    None
                }
                Event::Batch(Some(Ok(batch))) => {
                    let seq = admitted;
                    admitted += 1;
                    running.push(async move {
                        let mut s = CycleStats::default();
                        let end = batch.end();
                        self.run_batch(source, batch, snapshot, grant, server, &mut s)
                            .await?;
                        Ok::<_, BlobError>((seq, end, s))
                    });
                    None
                }
                Event::Batch(Some(Err(e))) => {
                    listing_failed = true;
                    Some(e)
                }
                Event::Done(Some(Err(e))) => Some(e),
                Event::Done(Some(Ok((seq, end, s)))) => {
                    stats.add(&s);
                    finished.insert(seq, end);
                    while let Some(end) = finished.remove(&head) {
                        upto = end;
                        head += 1;
                    }
                    if let Some(p) = &self.progress {
                        p.set_done(upto);
                    }
                    None
                }
                Event::Done(None) => None,
            };
            if let Some(e) = failure {
                // A later owner raised the token: this run's writes are refused from now on
                // and the cycle is the new owner's; nothing is recorded.
                if e.kind == ErrorKind::Fenced {
                    return Err(self.fenced_off(PhaseName::Apply));
                }
                self.park(rec, &mut running, &mut finished, head, upto, stats)
                    .await?;
                // The source was recreated since S(n-1): no diff against it will ever list,
                // so only a seed restarts the chain.
                if let Some(base) = base.filter(|_| e.kind == ErrorKind::Overwritten) {
                    return Ok(Outcome::Repair {
                        reason: format!(
                            "source {} was overwritten (Put Blob or Copy Blob) since the diff \
                             base snapshot {base} was taken: {e}",
                            self.disk.source
                        ),
                    });
                }
                // No diff or read of S(n) is allowed; a seed by Copy Blob needs neither (the
                // service reads the snapshot itself). Only from an incremental apply: a seed
                // that already fell back to client copy fails with the refusal instead.
                if base.is_some()
                    && self.disk.copy_mode == CopyMode::Auto
                    && self.refuses_snapshot_reads(&e)
                {
                    return Ok(Outcome::Repair {
                        reason: format!(
                            "the source account refuses reads of snapshot {snapshot} ({e}); \
                             copy_mode = \"auto\": seeding by Copy Blob, which the backup \
                             service reads itself"
                        ),
                    });
                }
                // Only a NotFound about the snapshots themselves changes course; a 404 about
                // the backup blob (e.g. during Put Page From URL) fails the apply.
                if e.is_not_found() {
                    if let Some(base) = base.filter(|b| e.concerns(&source.snapshot_resource(b))) {
                        return Ok(Outcome::Repair {
                            reason: format!("diff base snapshot {base} was deleted during apply"),
                        });
                    }
                    if e.concerns(&source.snapshot_resource(snapshot)) {
                        return Ok(Outcome::SourceSnapshotGone);
                    }
                }
                // A diff between snapshots of different sizes (the disk was resized between
                // them) that the service refuses in a way nothing here expects — a 400, a
                // 409, an answer that does not parse — is refused again on every retry: it
                // is reported once (the repair's warning) and the chain starts anew, rather
                // than failing every cycle. Throttling, outages and refused credentials are
                // not this; they fail the attempt as before.
                if let Some(base) = base.filter(|_| {
                    listing_failed
                        && matches!(
                            e.kind,
                            ErrorKind::BadRequest | ErrorKind::Conflict | ErrorKind::BadResponse
                        )
                }) {
                    let before = source.snapshot_size(base).await.ok().flatten();
                    if before.is_some_and(|b| b != size) {
                        return Ok(Outcome::Repair {
                            reason: format!(
                                "the diff from {base} ({} bytes) to {snapshot} ({size} bytes) \
                                 across a resize failed: {e}",
                                before.unwrap_or_default()
                            ),
                        });
                    }
                }
                return Err(self.blob_err(e));
            }
            if last_save.elapsed() >= CHECKPOINT_INTERVAL {
                self.checkpoint(rec, upto, std::mem::take(&mut stats))?;
                last_save = Instant::now();
            }
        }
        rec.written_etag = Some(self.backup_etag().await?);
        Ok(Outcome::Applied {
            upto: size,
            done: true,
            stats,
        })
    }

    /// Stops the apply at a checkpoint with the backup's ETag: the batches still running
    /// finish first (each is idempotent and its requests time out; at most [`SETTLE_LIMIT`]),
    /// so no write of this run can land after the ETag is read. The resumed apply compares it
    /// with the backup before its first write. Batches that fail while settling stay above
    /// the checkpoint; one that may still land (settling timed out) leaves the ETag unknown.
    async fn park<F>(
        &self,
        rec: &mut CycleRecord,
        running: &mut futures::stream::FuturesUnordered<F>,
        finished: &mut std::collections::BTreeMap<u64, u64>,
        mut head: u64,
        mut upto: u64,
        mut stats: CycleStats,
    ) -> Result<(), CycleError>
    where
        F: std::future::Future<Output = Result<(u64, u64, CycleStats), BlobError>>,
    {
        let settle = async {
            while let Some(done) = running.next().await {
                if let Ok((seq, end, s)) = done {
                    stats.add(&s);
                    finished.insert(seq, end);
                }
            }
        };
        let settled = tokio::time::timeout(SETTLE_LIMIT, settle).await.is_ok();
        while let Some(end) = finished.remove(&head) {
            upto = end;
            head += 1;
        }
        let backup_etag = if settled {
            match self.blobs.properties(&self.disk.backup, None).await {
                Ok(p) => p.map(|p| p.etag),
                Err(e) => {
                    tracing::warn!(disk = %self.disk.name, error = %e, "cannot read the backup's ETag at the stop; the resumed apply cannot check it");
                    None
                }
            }
        } else {
            tracing::warn!(disk = %self.disk.name, "writes still running {SETTLE_LIMIT:?} after the stop; the resumed apply cannot check the backup's ETag");
            None
        };
        self.commit(
            rec,
            Outcome::Stopped {
                upto,
                stats,
                backup_etag,
            },
        )
    }

    /// One batch: a clear, or the puts of one coalesced read. Holds one process-wide request
    /// permit (`max_inflight_requests`) while its requests run and, for a client copy, its
    /// read's size of the buffer budget (`max_buffer_mib`), so memory stays bounded whatever
    /// the number of disks.
    async fn run_batch(
        &self,
        source: &dyn Source,
        batch: Batch,
        snapshot: &SnapshotId,
        grant: Option<&CopySource>,
        server: &AtomicBool,
        stats: &mut CycleStats,
    ) -> Result<(), BlobError> {
        // Requests first, then buffer (in copy_client_side): every task takes them in this
        // order and a buffer holder never waits for a request permit, so no deadlock.
        let _permit = match &self.limits {
            Some(l) => l.request().await,
            None => None,
        };
        let backup = &self.disk.backup;
        let (read, puts) = match batch {
            Batch::Clear(r) => {
                self.blobs.clear_pages(backup, r, self.fence).await?;
                stats.bytes_cleared += r.len();
                return Ok(());
            }
            Batch::Copy { read, puts } => (read, puts),
        };
        if let Some(grant) = grant.filter(|_| server.load(Ordering::Relaxed)) {
            match self.copy_server_side(&puts, grant, stats).await {
                Ok(()) => return Ok(()),
                Err(e) if self.disk.copy_mode == CopyMode::Auto && e.refuses_server_copy() => {
                    if server.swap(false, Ordering::Relaxed) {
                        tracing::warn!(disk = %self.disk.name, error = %e, "server-side copy refused; copying through snapback for the rest of this apply");
                    }
                }
                Err(e) => return Err(e),
            }
        }
        self.copy_client_side(source, read, &puts, snapshot, stats)
            .await
    }

    /// Put Page From URL for each put: the service reads `S(n)` itself.
    async fn copy_server_side(
        &self,
        puts: &[ByteRange],
        grant: &CopySource,
        stats: &mut CycleStats,
    ) -> Result<(), BlobError> {
        let (blob, snapshot) = match grant {
            CopySource::Blob { blob, snapshot } => (blob, snapshot),
            CopySource::Url { url, resource } => {
                for p in puts {
                    self.blobs
                        .put_pages_from_sas(
                            &self.disk.backup,
                            *p,
                            url.expose(),
                            resource,
                            p.start,
                            self.fence,
                        )
                        .await?;
                    stats.bytes_written += p.len();
                }
                return Ok(());
            }
        };
        for p in puts {
            self.blobs
                .put_pages_from_url(
                    &self.disk.backup,
                    *p,
                    blob,
                    Some(snapshot.as_str()),
                    p.start,
                    self.fence,
                )
                .await?;
            stats.bytes_written += p.len();
        }
        Ok(())
    }

    /// One ranged read of `S(n)` feeding the puts inside it. A put whose bytes are all zero
    /// is a Clear Page instead: same content, no stored pages, no body sent.
    async fn copy_client_side(
        &self,
        source: &dyn Source,
        read: ByteRange,
        puts: &[ByteRange],
        snapshot: &SnapshotId,
        stats: &mut CycleStats,
    ) -> Result<(), BlobError> {
        let backup = &self.disk.backup;
        let _buffer = match &self.limits {
            Some(l) => l.buffer(read.len()).await,
            None => None,
        };
        let data = retry_unanswered("the source snapshot", || source.read(snapshot, read)).await?;
        for p in puts {
            let piece = data.slice((p.start - read.start) as usize..(p.end - read.start) as usize);
            if piece.iter().all(|b| *b == 0) {
                self.blobs.clear_pages(backup, *p, self.fence).await?;
                stats.bytes_cleared += p.len();
            } else {
                self.blobs
                    .put_pages(backup, p.start, piece, self.fence)
                    .await?;
                stats.bytes_written += p.len();
            }
        }
        Ok(())
    }
}

/// The diff `base..snapshot` (every page of `snapshot` when there is no base) within `window`, as a stream of [`Batch`]es in offset order.
/// The window is listed in `x-ms-range` segments (Microsoft's advice for heavily fragmented
/// blobs) and each segment page by page (`NextMarker`, `maxresults`); batches are made from
/// the current page's items one at a time, as the apply pulls them. So a diff of millions of
/// ranges is never held in memory: one result page (≤ `page_results` items) and a few batches
/// are. Items are clipped to the window: a resumed apply starts exactly at its checkpoint.
fn diff_batches<'b>(
    source: &'b dyn Source,
    snapshot: &'b SnapshotId,
    base: Option<&'b SnapshotId>,
    window: ByteRange,
    tuning: ApplyTuning,
) -> impl stream::Stream<Item = Result<Batch, BlobError>> + 'b {
    struct State {
        /// Consecutive `x-ms-range` segments of the window (128 for an 8 TiB disk).
        segments: Vec<ByteRange>,
        /// The next listing to fetch: segment index and marker; None once all are fetched.
        next: Option<(usize, Option<String>)>,
        /// Items of the current page, and the segment they are clipped to.
        items: std::vec::IntoIter<crate::model::pages::PageItem>,
        segment: ByteRange,
        coalescer: Coalescer,
        planner: ReadPlanner,
        ops: Vec<crate::model::pages::PageOp>,
        made: Vec<Batch>,
        ready: std::collections::VecDeque<Batch>,
        finished: bool,
        check: ListingCheck,
        /// The current segment's marker chain.
        continuation: Continuation,
    }
    let segments: Vec<ByteRange> = segments(window, tuning.segment).collect();
    let init = State {
        next: (!segments.is_empty()).then_some((0, None)),
        segments,
        items: Vec::new().into_iter(),
        segment: window,
        coalescer: Coalescer::new(MAX_PUT_BYTES),
        planner: ReadPlanner::new(tuning.max_read, tuning.max_gap),
        ops: Vec::new(),
        made: Vec::new(),
        ready: Default::default(),
        finished: false,
        check: ListingCheck::new(window.start, window.end),
        continuation: Continuation::default(),
    };
    stream::try_unfold(init, move |mut st| async move {
        loop {
            if let Some(b) = st.ready.pop_front() {
                return Ok(Some((b, st)));
            }
            if st.finished {
                return Ok(None);
            }
            if let Some(item) = st.items.next() {
                if let Some(clipped) = clip(item, &st.segment) {
                    st.coalescer.push(clipped, &mut st.ops);
                }
            } else if let Some((index, marker)) = st.next.take() {
                let segment = st.segments[index];
                let query = DiffQuery {
                    snapshot,
                    base,
                    range: segment,
                    marker: marker.as_deref(),
                    max_results: tuning.page_results,
                };
                let page = source.diff(query).await?;
                // The whole result page is checked before any of its items is planned, so
                // nothing from a listing that breaks the rules is applied.
                st.check.page(&page.items, segment).map_err(|v| {
                    BlobError::local(
                        ErrorKind::BadResponse,
                        source.snapshot_resource(snapshot),
                        format!("diff listing of {segment:?} refused: {v}"),
                    )
                })?;
                let next = st
                    .continuation
                    .follow(page.next_marker, page.items.len())
                    .map_err(|c| {
                        c.on(
                            source.snapshot_resource(snapshot),
                            &format!("diff listing of {segment:?}"),
                        )
                    })?;
                st.next = match next {
                    Some(m) => Some((index, Some(m))),
                    None if index + 1 < st.segments.len() => {
                        st.continuation = Continuation::default();
                        Some((index + 1, None))
                    }
                    None => None,
                };
                // The last page that needed the diff base is read (and checked): the rest of
                // the apply reads `S(n)` only, so the source may let the base go beside it.
                // A resume lists again from its checkpoint, with the base granted anew.
                if let (None, Some(base)) = (&st.next, base) {
                    source.diff_listed(base);
                }
                st.items = page.items.into_iter();
                st.segment = segment;
                continue;
            } else {
                st.coalescer.finish(&mut st.ops);
                st.finished = true;
            }
            for op in st.ops.drain(..) {
                st.planner.push(op, &mut st.made);
            }
            if st.finished {
                st.planner.finish(&mut st.made);
            }
            st.ready.extend(st.made.drain(..));
        }
    })
}

fn clip(
    item: crate::model::pages::PageItem,
    window: &ByteRange,
) -> Option<crate::model::pages::PageItem> {
    use crate::model::pages::PageItem;
    let r = item.range().intersect(window)?;
    Some(match item {
        PageItem::Changed(_) => PageItem::Changed(r),
        PageItem::Cleared(_) => PageItem::Cleared(r),
    })
}
