//! An in-memory [`PageBlobs`] with Azure's semantics where a cycle depends on them: snapshots
//! are immutable copies with their own metadata, the diff reports pages *written* since the
//! older snapshot (even with identical bytes) and pages cleared, results are paginated, and
//! Copy Blob stays pending for a few polls. For fast simulation tests of the cycle; the same
//! behaviour is tested for real against Azurite in `tests/`.

use crate::model::pages::{ByteRange, PageItem, MAX_PUT_BYTES, PAGE_SIZE};
use crate::storage::{
    BlobError, BlobProps, BlobRef, BlobResult, CopyStatus, ErrorKind, Fence, IfBlob, Metadata,
    NewPageBlob, PageBlobs, PageList, PageListQuery, Resource, SnapshotInfo,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// One stored page: its bytes and the id of the write that put them there.
type Page = (Arc<[u8]>, u64);

#[derive(Clone, Debug, Default)]
struct Image {
    size: u64,
    pages: BTreeMap<u64, Page>,
    metadata: Metadata,
    /// The page blob's sequence number (snapshots and copies keep it, as on Azure).
    sequence_number: u64,
}

#[derive(Clone, Debug, Default)]
struct Blob {
    image: Image,
    etag: u64,
    snapshots: BTreeMap<String, Image>,
    /// A pending copy: its id, the polls left before success, the bytes it reports copied.
    copy: Option<(String, u32, u64)>,
    /// A copy that ended without success (aborted, or failed by [`MemBlobs::fail_copies`]).
    ended: Option<(String, CopyStatus)>,
}

#[derive(Default)]
struct Inner {
    blobs: HashMap<BlobRef, Blob>,
    containers: std::collections::HashSet<(String, String)>,
    /// After this many more calls, every call fails (a simulated outage / crash point).
    fail_after: Option<u64>,
    /// This many more copies end as `Failed` instead of succeeding.
    fail_copies: u32,
}

/// In-memory page blob storage. Cloning shares the same storage.
#[derive(Clone, Default)]
pub struct MemBlobs {
    inner: Arc<Mutex<Inner>>,
    clock: Arc<AtomicU64>,
    /// Items per Get Page Ranges result page (small, to exercise `NextMarker`).
    pub page_size: usize,
    /// Polls a copy stays pending.
    pub copy_polls: u32,
    /// Bytes a pending copy reports copied more at each poll (0: its progress stands still).
    pub copy_bytes_per_poll: u64,
    /// Answer Put Page From URL with 501 NotImplemented (as Azurite does unpatched).
    pub refuse_server_copy: bool,
    /// Copy Blob answers as for a source it cannot read (a managed-identity account).
    pub refuse_copy: bool,
    /// Copy Blob to this destination is refused at its start (other copies proceed).
    pub refuse_copy_to: Option<BlobRef>,
    /// Reads, puts and clears wait a pseudo-random 0..jitter_ms first, so concurrent requests
    /// finish out of order (as over a network).
    pub jitter_ms: u64,
}

impl MemBlobs {
    pub fn new() -> Self {
        MemBlobs {
            page_size: 3,
            copy_polls: 2,
            ..Default::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn jitter(&self) {
        if self.jitter_ms > 0 {
            let n = self
                .clock
                .fetch_add(1, Ordering::SeqCst)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let ms = (n >> 33) % self.jitter_ms;
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Makes every call fail after `n` more calls succeed (None: never).
    pub fn fail_after(&self, n: Option<u64>) {
        self.lock().fail_after = n;
    }

    /// Makes the next `n` copies end as `Failed` (after being started).
    pub fn fail_copies(&self, n: u32) {
        self.lock().fail_copies = n;
    }

    /// Test helper: base blob names that exist.
    pub fn blob_names(&self) -> Vec<BlobRef> {
        let mut v: Vec<BlobRef> = self.lock().blobs.keys().cloned().collect();
        v.sort();
        v
    }

    fn gate(&self) -> BlobResult<MutexGuard<'_, Inner>> {
        let mut g = self.lock();
        match g.fail_after {
            Some(0) => Err(BlobError::local(
                ErrorKind::Transient,
                Resource::Account("fake".into()),
                "injected failure",
            )),
            Some(n) => {
                g.fail_after = Some(n - 1);
                Ok(g)
            }
            None => Ok(g),
        }
    }

    /// Test helper: writes `data` at `offset` into the base blob (creating it if needed).
    pub fn write(&self, blob: &BlobRef, offset: u64, data: &[u8]) {
        let id = self.tick();
        let mut g = self.lock();
        let b = g.blobs.entry(blob.clone()).or_default();
        write_pages(&mut b.image, offset, data, id);
        b.image.size = b
            .image
            .size
            .max((offset + data.len() as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE);
        b.etag = id;
    }

    /// Test helper: the full content of a blob or snapshot.
    pub fn content(&self, blob: &BlobRef, snapshot: Option<&str>) -> Option<Vec<u8>> {
        let g = self.lock();
        let b = g.blobs.get(blob)?;
        let img = match snapshot {
            Some(s) => b.snapshots.get(s)?,
            None => &b.image,
        };
        Some(read_image(img, ByteRange::new(0, img.size)))
    }

    /// Test helper: snapshot ids of a blob.
    pub fn snapshot_ids(&self, blob: &BlobRef) -> Vec<String> {
        self.lock()
            .blobs
            .get(blob)
            .map(|b| b.snapshots.keys().cloned().collect())
            .unwrap_or_default()
    }
}

fn write_pages(img: &mut Image, offset: u64, data: &[u8], id: u64) {
    for (i, chunk) in data.chunks(PAGE_SIZE as usize).enumerate() {
        let mut page = vec![0u8; PAGE_SIZE as usize];
        page[..chunk.len()].copy_from_slice(chunk);
        img.pages
            .insert(offset / PAGE_SIZE + i as u64, (page.into(), id));
    }
}

fn read_image(img: &Image, r: ByteRange) -> Vec<u8> {
    let mut out = vec![0u8; r.len() as usize];
    for (&idx, (data, _)) in img
        .pages
        .range(r.start / PAGE_SIZE..r.end.div_ceil(PAGE_SIZE))
    {
        let page = ByteRange::new(idx * PAGE_SIZE, (idx + 1) * PAGE_SIZE);
        if let Some(overlap) = page.intersect(&r) {
            let src =
                &data[(overlap.start - page.start) as usize..(overlap.end - page.start) as usize];
            out[(overlap.start - r.start) as usize..(overlap.end - r.start) as usize]
                .copy_from_slice(src);
        }
    }
    out
}

/// A blob's base image, or one of its snapshots; NotFound names which.
fn image<'g>(g: &'g Inner, blob: &BlobRef, snapshot: Option<&str>) -> BlobResult<&'g Image> {
    let b = g
        .blobs
        .get(blob)
        .ok_or_else(|| not_found(Resource::of(blob, snapshot)))?;
    match snapshot {
        Some(s) => b
            .snapshots
            .get(s)
            .ok_or_else(|| not_found(Resource::of(blob, snapshot))),
        None => Ok(&b.image),
    }
}

/// A base blob, for writing; NotFound names it.
fn blob_mut<'g>(g: &'g mut Inner, blob: &BlobRef) -> BlobResult<&'g mut Blob> {
    g.blobs
        .get_mut(blob)
        .ok_or_else(|| not_found(Resource::blob(blob)))
}

/// Azure's answer to a write whose `If-Match` / `If-None-Match` does not hold.
fn check_condition(blob: &BlobRef, b: Option<&Blob>, condition: &IfBlob) -> BlobResult<()> {
    let holds = match (condition, b) {
        (IfBlob::Any, _) => true,
        (IfBlob::Absent, b) => b.is_none(),
        (IfBlob::Is(etag), Some(b)) => format!("\"{}\"", b.etag) == *etag,
        (IfBlob::Is(_), None) => false,
    };
    match (holds, condition, b) {
        (true, _, _) => Ok(()),
        (false, IfBlob::Absent, _) => Err(BlobError::service(
            Resource::blob(blob),
            409,
            Some("BlobAlreadyExists".into()),
            String::new(),
        )),
        (false, _, None) => Err(not_found(Resource::blob(blob))),
        (false, _, Some(_)) => Err(BlobError::service(
            Resource::blob(blob),
            412,
            Some("ConditionNotMet".into()),
            String::new(),
        )),
    }
}

/// Azure's answer to a page write whose `x-ms-if-sequence-number-eq` does not hold.
fn check_fence(blob: &BlobRef, b: &Blob, fence: Option<Fence>) -> BlobResult<()> {
    match fence {
        Some(Fence(t)) if b.image.sequence_number != t => Err(BlobError::service(
            Resource::blob(blob),
            412,
            Some("SequenceNumberConditionNotMet".into()),
            format!("sequence number {} is not {t}", b.image.sequence_number),
        )),
        _ => Ok(()),
    }
}

fn not_found(resource: Resource) -> BlobError {
    BlobError::service(resource, 404, Some("BlobNotFound".into()), String::new())
}

/// Pages of `new` that differ from `old` (by write), and pages only `old` has, merged into
/// ranges and in offset order, like a real diff.
fn diff_items(new: &Image, old: Option<&Image>) -> Vec<PageItem> {
    let mut idx: Vec<u64> = new.pages.keys().copied().collect();
    if let Some(old) = old {
        idx.extend(old.pages.keys().copied());
    }
    idx.sort_unstable();
    idx.dedup();
    let mut items: Vec<PageItem> = Vec::new();
    for i in idx {
        let now = new.pages.get(&i).map(|p| p.1);
        let before = old.and_then(|o| o.pages.get(&i).map(|p| p.1));
        let r = ByteRange::new(i * PAGE_SIZE, (i + 1) * PAGE_SIZE);
        let item = match (now, before) {
            (Some(a), Some(b)) if a == b => continue,
            (Some(_), _) => PageItem::Changed(r),
            (None, Some(_)) => PageItem::Cleared(r),
            (None, None) => continue,
        };
        match (items.last_mut(), item) {
            (Some(PageItem::Changed(p)), PageItem::Changed(r)) if p.end == r.start => p.end = r.end,
            (Some(PageItem::Cleared(p)), PageItem::Cleared(r)) if p.end == r.start => p.end = r.end,
            _ => items.push(item),
        }
    }
    items
}

#[async_trait]
impl PageBlobs for MemBlobs {
    async fn properties(
        &self,
        blob: &BlobRef,
        snapshot: Option<&str>,
    ) -> BlobResult<Option<BlobProps>> {
        let mut g = self.gate()?;
        let Some(b) = g.blobs.get_mut(blob) else {
            return Ok(None);
        };
        if let Some(s) = snapshot {
            return Ok(b.snapshots.get(s).map(|img| BlobProps {
                size: img.size,
                etag: format!("\"{}\"", b.etag),
                metadata: img.metadata.clone(),
                copy: None,
                sequence_number: Some(img.sequence_number),
            }));
        }
        if let Some(ended) = &b.ended {
            return Ok(Some(BlobProps {
                size: b.image.size,
                etag: format!("\"{}\"", b.etag),
                metadata: b.image.metadata.clone(),
                copy: Some(ended.clone()),
                sequence_number: Some(b.image.sequence_number),
            }));
        }
        let size = b.image.size;
        let step = self.copy_bytes_per_poll;
        let copy = b.copy.as_mut().map(|(id, left, copied)| {
            let status = if *left == 0 {
                CopyStatus::Success
            } else {
                *left -= 1;
                *copied += step;
                CopyStatus::Pending {
                    copied: *copied,
                    total: size,
                }
            };
            (id.clone(), status)
        });
        Ok(Some(BlobProps {
            size: b.image.size,
            etag: format!("\"{}\"", b.etag),
            metadata: b.image.metadata.clone(),
            copy,
            sequence_number: Some(b.image.sequence_number),
        }))
    }

    async fn create_snapshot(&self, blob: &BlobRef, metadata: &Metadata) -> BlobResult<String> {
        let t = self.tick();
        let mut g = self.gate()?;
        let b = blob_mut(&mut g, blob)?;
        let ts = format!("2026-01-01T00:00:00.{t:07}Z");
        let mut img = b.image.clone();
        img.metadata = metadata.clone();
        b.snapshots.insert(ts.clone(), img);
        Ok(ts)
    }

    async fn create_snapshot_if_match(
        &self,
        blob: &BlobRef,
        metadata: &Metadata,
        etag: &str,
    ) -> BlobResult<String> {
        let current = {
            let mut g = self.gate()?;
            format!("\"{}\"", blob_mut(&mut g, blob)?.etag)
        };
        if current != etag {
            return Err(BlobError::service(
                Resource::blob(blob),
                412,
                Some("ConditionNotMet".into()),
                String::new(),
            ));
        }
        self.create_snapshot(blob, metadata).await
    }

    async fn list_snapshots(&self, blob: &BlobRef) -> BlobResult<Vec<SnapshotInfo>> {
        let g = self.gate()?;
        Ok(g.blobs
            .get(blob)
            .map(|b| {
                b.snapshots
                    .iter()
                    .map(|(s, img)| SnapshotInfo {
                        snapshot: s.clone(),
                        metadata: img.metadata.clone(),
                        size: img.size,
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn delete_snapshot(&self, blob: &BlobRef, snapshot: &str) -> BlobResult<()> {
        let mut g = self.gate()?;
        if let Some(b) = g.blobs.get_mut(blob) {
            b.snapshots.remove(snapshot);
        }
        Ok(())
    }

    async fn page_ranges(&self, blob: &BlobRef, q: &PageListQuery<'_>) -> BlobResult<PageList> {
        let g = self.gate()?;
        let new = image(&g, blob, q.snapshot)?;
        let old = match q.prev_snapshot {
            Some(p) => Some(image(&g, blob, Some(p)).map_err(|_| {
                BlobError::service(
                    Resource::of(blob, Some(p)),
                    409,
                    Some("PreviousSnapshotNotFound".into()),
                    String::new(),
                )
            })?),
            None => None,
        };
        let mut items = diff_items(new, old);
        if let Some(w) = q.range {
            items.retain(|i| i.range().intersect(&w).is_some());
        }
        let start: usize = q.marker.and_then(|m| m.parse().ok()).unwrap_or(0);
        let per_page = q
            .max_results
            .map_or(self.page_size, |n| (n as usize).min(self.page_size.max(1)))
            .max(1);
        let end = (start + per_page).min(items.len());
        Ok(PageList {
            next_marker: (end < items.len()).then(|| end.to_string()),
            items: items[start.min(end)..end].to_vec(),
        })
    }

    async fn read(
        &self,
        blob: &BlobRef,
        snapshot: Option<&str>,
        range: ByteRange,
    ) -> BlobResult<Bytes> {
        self.jitter().await;
        let g = self.gate()?;
        let img = image(&g, blob, snapshot)?;
        Ok(Bytes::from(read_image(img, range)))
    }

    async fn put_pages(
        &self,
        blob: &BlobRef,
        offset: u64,
        data: Bytes,
        fence: Option<Fence>,
    ) -> BlobResult<String> {
        self.jitter().await;
        let id = self.tick();
        let mut g = self.gate()?;
        let b = blob_mut(&mut g, blob)?;
        check_fence(blob, b, fence)?;
        let r = ByteRange::new(offset, offset + data.len() as u64);
        if !r.is_page_aligned() || r.len() > MAX_PUT_BYTES || r.end > b.image.size {
            return Err(BlobError::service(
                Resource::blob(blob),
                416,
                Some("InvalidPageRange".into()),
                format!("put {r}: misaligned, too large or beyond the blob"),
            ));
        }
        write_pages(&mut b.image, offset, &data, id);
        b.etag = id;
        Ok(format!("\"{id}\""))
    }

    async fn put_pages_from_url(
        &self,
        dest: &BlobRef,
        range: ByteRange,
        source: &BlobRef,
        source_snapshot: Option<&str>,
        source_offset: u64,
        fence: Option<Fence>,
    ) -> BlobResult<String> {
        if self.refuse_server_copy {
            return Err(BlobError::service(
                Resource::blob(dest),
                501,
                Some("NotImplemented".into()),
                "Put Page From URL is not implemented".into(),
            ));
        }
        if range.len() > MAX_PUT_BYTES || !range.is_page_aligned() {
            return Err(BlobError::service(
                Resource::blob(dest),
                416,
                Some("InvalidPageRange".into()),
                format!("put {range}: misaligned or too large"),
            ));
        }
        let src = ByteRange::new(source_offset, source_offset + range.len());
        // As on Azure, a source the service cannot read is reported with
        // CannotVerifyCopySource, a missing destination with BlobNotFound.
        let data = match self.read(source, source_snapshot, src).await {
            Err(e) if e.is_not_found() => {
                return Err(BlobError::service(
                    *e.resource,
                    404,
                    Some("CannotVerifyCopySource".into()),
                    String::new(),
                ))
            }
            r => r?,
        };
        self.put_pages(dest, range.start, data, fence).await
    }

    async fn clear_pages(
        &self,
        blob: &BlobRef,
        range: ByteRange,
        fence: Option<Fence>,
    ) -> BlobResult<String> {
        self.jitter().await;
        let id = self.tick();
        let mut g = self.gate()?;
        let b = blob_mut(&mut g, blob)?;
        check_fence(blob, b, fence)?;
        let first = range.start / PAGE_SIZE;
        let pages: Vec<u64> = b
            .image
            .pages
            .range(first..range.end / PAGE_SIZE)
            .map(|(k, _)| *k)
            .collect();
        for p in pages {
            b.image.pages.remove(&p);
        }
        b.etag = id;
        Ok(format!("\"{id}\""))
    }

    async fn ensure_container(&self, blob: &BlobRef) -> BlobResult<()> {
        let mut g = self.gate()?;
        g.containers
            .insert((blob.account.clone(), blob.container.clone()));
        Ok(())
    }

    async fn create_page_blob(
        &self,
        blob: &BlobRef,
        size: u64,
        new: &NewPageBlob,
    ) -> BlobResult<String> {
        let id = self.tick();
        let mut g = self.gate()?;
        check_condition(blob, g.blobs.get(blob), &new.condition)?;
        let b = g.blobs.entry(blob.clone()).or_default();
        b.image = Image {
            size,
            metadata: new.metadata.clone(),
            sequence_number: new.sequence_number.unwrap_or(0),
            ..Default::default()
        };
        b.etag = id;
        Ok(format!("\"{id}\""))
    }

    async fn resize(&self, blob: &BlobRef, size: u64, condition: &IfBlob) -> BlobResult<String> {
        let id = self.tick();
        let mut g = self.gate()?;
        check_condition(blob, g.blobs.get(blob), condition)?;
        let b = blob_mut(&mut g, blob)?;
        b.image.size = size;
        b.image.pages.retain(|k, _| k * PAGE_SIZE < size);
        b.etag = id;
        Ok(format!("\"{id}\""))
    }

    async fn set_sequence_number(
        &self,
        blob: &BlobRef,
        value: u64,
        condition: &IfBlob,
    ) -> BlobResult<String> {
        let id = self.tick();
        let mut g = self.gate()?;
        check_condition(blob, g.blobs.get(blob), condition)?;
        let b = blob_mut(&mut g, blob)?;
        b.image.sequence_number = value;
        b.etag = id;
        Ok(format!("\"{id}\""))
    }

    async fn start_copy(
        &self,
        dest: &BlobRef,
        source: &BlobRef,
        snap: Option<&str>,
        metadata: &Metadata,
        condition: &IfBlob,
    ) -> BlobResult<String> {
        if self.refuse_copy {
            return Err(BlobError::local(
                ErrorKind::NoReadAccess,
                Resource::of(source, snap),
                "the fake refuses copies",
            ));
        }
        if self.refuse_copy_to.as_ref() == Some(dest) {
            return Err(BlobError::local(
                ErrorKind::Auth,
                Resource::of(dest, None),
                "the fake refuses copies to this blob",
            ));
        }
        let id = self.tick();
        let mut g = self.gate()?;
        check_condition(dest, g.blobs.get(dest), condition)?;
        let img = image(&g, source, snap)?;
        // A copy makes the destination's pages new writes (a diff against an older backup
        // snapshot shows every page), as on Azure.
        let mut img = img.clone();
        img.metadata = metadata.clone();
        for page in img.pages.values_mut() {
            page.1 = id;
        }
        let copy_id = format!("copy-{id}");
        let polls = self.copy_polls;
        let b = g.blobs.entry(dest.clone()).or_default();
        b.image = img;
        b.etag = id;
        b.copy = Some((copy_id.clone(), polls, 0));
        b.ended = None;
        if g.fail_copies > 0 {
            g.fail_copies -= 1;
            if let Some(b) = g.blobs.get_mut(dest) {
                b.copy = None;
                b.ended = Some((copy_id.clone(), CopyStatus::Failed("injected".into())));
            }
        }
        Ok(copy_id)
    }

    async fn abort_copy(&self, dest: &BlobRef, copy_id: &str) -> BlobResult<()> {
        let mut g = self.gate()?;
        if let Some(b) = g.blobs.get_mut(dest) {
            if matches!(&b.copy, Some((id, left, _)) if id == copy_id && *left > 0) {
                b.copy = None;
                b.ended = Some((copy_id.to_string(), CopyStatus::Aborted("aborted".into())));
            }
        }
        Ok(())
    }

    async fn set_metadata(&self, blob: &BlobRef, metadata: &Metadata) -> BlobResult<()> {
        let id = self.tick();
        let mut g = self.gate()?;
        let b = blob_mut(&mut g, blob)?;
        b.image.metadata = metadata.clone();
        b.etag = id;
        Ok(())
    }

    async fn delete_blob(&self, blob: &BlobRef) -> BlobResult<()> {
        let mut g = self.gate()?;
        if let Some(b) = g.blobs.get(blob) {
            if !b.snapshots.is_empty() {
                return Err(BlobError::service(
                    Resource::blob(blob),
                    409,
                    Some("SnapshotsPresent".into()),
                    "This operation is not permitted because the blob has snapshots.".into(),
                ));
            }
        }
        g.blobs.remove(blob);
        Ok(())
    }
}
