//! Verify: proves a restore point equal to the source snapshot it recorded.
//!
//! A restore point `B(n)` names `S(n)` in its metadata (`snapback_source_snapshot`). While
//! `S(n)` exists on the source (the newest one always does: each cycle keeps its own), both are
//! compared: sizes, then every allocated range of either side (the union of the two full page
//! range listings, since the backup stores zero chunks as cleared pages where the source may
//! hold written zeros), read in chunks of at most 4 MiB from both and compared by CRC-64; a
//! chunk whose checksums differ is compared byte by byte to name the first differing offset.
//! Unallocated pages read as zeros on both sides and need no read.
//!
//! Cost: a full read of the allocated part of both blobs (the source account is read as much
//! as by a seed), plus two page range listings. Nothing is written.

use crate::config::DiskConfig;
use crate::model::pages::{crc64, ByteRange, PageItem, MAX_PUT_BYTES};
use crate::model::progress::Progress;
use crate::model::tags::GuestStateCopy;
use crate::model::SnapshotId;
use crate::restore::retention::StoredPoint;
use crate::source::{DiffQuery, Source};
use crate::storage::{
    retry_unanswered, BlobError, BlobRef, Continuation, PageBlobs, PageListQuery, Resource,
};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("disk {disk}: {source}")]
    Blob {
        disk: String,
        #[source]
        source: BlobError,
    },
    #[error("disk {disk} has no restore points")]
    NoRestorePoints { disk: String },
    #[error("disk {disk} has no restore point {snapshot}")]
    UnknownRestorePoint { disk: String, snapshot: String },
    /// Tokens only grow: a restore point whose token is below an earlier one's was taken by
    /// an owner that had lost the disk (see docs/design.md, "Fencing").
    #[error(
        "disk {disk}: restore point {snapshot} carries fencing token {token}, below the \
         {earlier_token} of the earlier restore point {earlier}: it was taken by an owner that \
         had already lost the disk; do not restore from it"
    )]
    FencedOwner {
        disk: String,
        snapshot: String,
        token: u64,
        earlier: String,
        earlier_token: u64,
    },
    #[error(
        "disk {disk}: cannot verify restore point {snapshot}: its source snapshot {source_snapshot} \
         of {source_blob} no longer exists (only the newest restore point's source snapshot is kept)"
    )]
    SourceSnapshotGone {
        disk: String,
        snapshot: String,
        source_snapshot: String,
        source_blob: String,
    },
}

impl VerifyError {
    /// The caller named something that does not exist (a usage error, not a failed check).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            VerifyError::NoRestorePoints { .. } | VerifyError::UnknownRestorePoint { .. }
        )
    }
}

/// Where a restore point and its source first differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// First differing byte offset (for a size mismatch: the smaller size).
    pub offset: u64,
    /// `"size"` or `"content"`.
    pub kind: &'static str,
    /// The chunk (or sizes) compared.
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub disk: String,
    pub restore_point: String,
    pub source_snapshot: String,
    pub size: u64,
    /// Page ranges listed on each side.
    pub backup_ranges: usize,
    pub source_ranges: usize,
    /// Chunks read from both sides and compared.
    pub chunks: u64,
    /// Bytes read from each side.
    pub bytes_compared: u64,
    pub mismatch: Option<Mismatch>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.mismatch.is_none()
    }
}

/// Every allocated range of a blob or snapshot, in offset order.
pub async fn allocated_ranges(
    blobs: &dyn PageBlobs,
    blob: &BlobRef,
    snapshot: Option<&str>,
) -> Result<Vec<ByteRange>, BlobError> {
    let mut out = Vec::new();
    let mut marker: Option<String> = None;
    let mut continuation = Continuation::default();
    loop {
        let q = PageListQuery {
            snapshot,
            marker: marker.as_deref(),
            ..Default::default()
        };
        let page = blobs.page_ranges(blob, &q).await?;
        marker = continuation
            .follow(page.next_marker, page.items.len())
            .map_err(|c| c.on(Resource::of(blob, snapshot), "page list"))?;
        out.extend(page.items.into_iter().filter_map(|i| match i {
            PageItem::Changed(r) => Some(r),
            PageItem::Cleared(_) => None,
        }));
        if marker.is_none() {
            return Ok(out);
        }
    }
}

/// Every allocated range of a source snapshot of `size` bytes, in offset order (its diff
/// against nothing).
async fn source_ranges(
    source: &dyn Source,
    snapshot: &SnapshotId,
    size: u64,
) -> Result<Vec<ByteRange>, BlobError> {
    let mut out = Vec::new();
    let mut marker: Option<String> = None;
    let mut continuation = Continuation::default();
    loop {
        let q = DiffQuery {
            snapshot,
            base: None,
            range: ByteRange::new(0, size),
            marker: marker.as_deref(),
            max_results: crate::cycle::tuning::DIFF_PAGE_RESULTS,
        };
        let page = source.diff(q).await?;
        marker = continuation
            .follow(page.next_marker, page.items.len())
            .map_err(|c| c.on(source.snapshot_resource(snapshot), "page list"))?;
        out.extend(page.items.into_iter().filter_map(|i| match i {
            PageItem::Changed(r) => Some(r),
            PageItem::Cleared(_) => None,
        }));
        if marker.is_none() {
            return Ok(out);
        }
    }
}

/// The union of two range lists, merged and clipped to `size`, split into chunks of at most
/// `chunk` bytes.
pub fn union_chunks(a: &[ByteRange], b: &[ByteRange], size: u64, chunk: u64) -> Vec<ByteRange> {
    let mut all: Vec<ByteRange> = a.iter().chain(b).copied().collect();
    all.sort_by_key(|r| (r.start, r.end));
    let mut merged: Vec<ByteRange> = Vec::new();
    for r in all {
        let r = ByteRange::new(r.start.min(size), r.end.min(size));
        if r.is_empty() {
            continue;
        }
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    let mut out = Vec::new();
    for r in merged {
        let mut at = r.start;
        while at < r.end {
            let end = (at + chunk).min(r.end);
            out.push(ByteRange::new(at, end));
            at = end;
        }
    }
    out
}

/// Compares `backup`@`restore_point` with the source's `source_snapshot`, both already
/// resolved; `source_name` names the source in messages.
pub async fn compare(
    blobs: &dyn PageBlobs,
    disk: &str,
    (backup, restore_point): (&BlobRef, &str),
    (source, source_name, source_snapshot): (&dyn Source, &str, &str),
    concurrency: usize,
    progress: Option<&Progress>,
) -> Result<VerifyReport, VerifyError> {
    let err = |source| VerifyError::Blob {
        disk: disk.to_string(),
        source,
    };
    let snap = SnapshotId::new(source_snapshot);
    let Some(source_size) = source.snapshot_size(&snap).await.map_err(err)? else {
        return Err(VerifyError::SourceSnapshotGone {
            disk: disk.to_string(),
            snapshot: restore_point.to_string(),
            source_snapshot: source_snapshot.to_string(),
            source_blob: source_name.to_string(),
        });
    };
    let bprops = blobs
        .properties(backup, Some(restore_point))
        .await
        .map_err(err)?
        .ok_or_else(|| VerifyError::UnknownRestorePoint {
            disk: disk.to_string(),
            snapshot: restore_point.to_string(),
        })?;
    let mut report = VerifyReport {
        disk: disk.to_string(),
        restore_point: restore_point.to_string(),
        source_snapshot: source_snapshot.to_string(),
        size: source_size,
        backup_ranges: 0,
        source_ranges: 0,
        chunks: 0,
        bytes_compared: 0,
        mismatch: None,
    };
    if bprops.size != source_size {
        report.mismatch = Some(Mismatch {
            offset: bprops.size.min(source_size),
            kind: "size",
            detail: format!(
                "restore point is {} bytes, source snapshot {source_size} bytes",
                bprops.size
            ),
        });
        return Ok(report);
    }
    let b_ranges = allocated_ranges(blobs, backup, Some(restore_point))
        .await
        .map_err(err)?;
    let s_ranges = source_ranges(source, &snap, source_size)
        .await
        .map_err(err)?;
    report.backup_ranges = b_ranges.len();
    report.source_ranges = s_ranges.len();
    let chunks = union_chunks(&b_ranges, &s_ranges, source_size, MAX_PUT_BYTES);
    if let Some(p) = progress {
        p.start("verify", 0, chunks.iter().map(|c| c.len()).sum());
    }
    let results = futures::stream::iter(chunks.into_iter().map(Ok::<_, BlobError>))
        .map_ok(|r| {
            let snap = &snap;
            async move {
                let (b, s) = futures::try_join!(
                    retry_unanswered("the restore point", || blobs.read(
                        backup,
                        Some(restore_point),
                        r
                    )),
                    retry_unanswered("the source snapshot", || source.read(snap, r))
                )?;
                let (cb, cs) = (crc64(&b), crc64(&s));
                let first = (cb != cs || b != s).then(|| {
                    let at = b
                        .iter()
                        .zip(s.iter())
                        .position(|(x, y)| x != y)
                        .unwrap_or(b.len().min(s.len()));
                    (r.start + at as u64, cb, cs)
                });
                Ok((r, first))
            }
        })
        .try_buffered(concurrency.max(1));
    let mut results = std::pin::pin!(results);
    while let Some(item) = results.next().await {
        let (r, first) = item.map_err(err)?;
        report.chunks += 1;
        report.bytes_compared += r.len();
        if let Some(p) = progress {
            p.add_done(r.len());
        }
        if let Some((offset, cb, cs)) = first {
            report.mismatch = Some(Mismatch {
                offset,
                kind: "content",
                detail: format!(
                    "chunk {r}: CRC-64 {cb:016x} in the restore point, {cs:016x} in the source snapshot"
                ),
            });
            break;
        }
    }
    Ok(report)
}

/// Verifies one restore point of `disk` (the newest when `snapshot` is None).
pub async fn verify(
    blobs: &dyn PageBlobs,
    source: &dyn Source,
    disk: &DiskConfig,
    snapshot: Option<&str>,
    progress: Option<&Progress>,
) -> Result<VerifyReport, VerifyError> {
    let backup = disk.backup.clone();
    let ours = crate::restore::retention::restore_points(blobs, disk)
        .await
        .map_err(|source| VerifyError::Blob {
            disk: disk.name.clone(),
            source,
        })?;
    let point = match snapshot {
        Some(want) => ours.iter().find(|s| s.snapshot == want).ok_or_else(|| {
            VerifyError::UnknownRestorePoint {
                disk: disk.name.clone(),
                snapshot: want.to_string(),
            }
        })?,
        None => ours.last().ok_or_else(|| VerifyError::NoRestorePoints {
            disk: disk.name.clone(),
        })?,
    };
    if let Some((earlier, token, earlier_token)) = out_of_order_token(&ours, point) {
        return Err(VerifyError::FencedOwner {
            disk: disk.name.clone(),
            snapshot: point.snapshot.clone(),
            token,
            earlier: earlier.snapshot.clone(),
            earlier_token,
        });
    }
    let mut report = compare(
        blobs,
        &disk.name,
        (&backup, &point.snapshot),
        (source, &disk.source.to_string(), point.source.as_str()),
        disk.concurrency,
        progress,
    )
    .await?;
    if report.ok() {
        report.mismatch = guest_state_mismatch(blobs, source, &backup, point)
            .await
            .map_err(|source| VerifyError::Blob {
                disk: disk.name.clone(),
                source,
            })?;
    }
    Ok(report)
}

/// What is wrong with the VM guest state copy `point` names, if anything: missing, another
/// length or CRC-64 than recorded, or other bytes than the guest state exported with its
/// source snapshot.
async fn guest_state_mismatch(
    blobs: &dyn PageBlobs,
    source: &dyn Source,
    backup: &BlobRef,
    point: &StoredPoint,
) -> Result<Option<Mismatch>, BlobError> {
    let mismatch = |detail: String| {
        Some(Mismatch {
            offset: 0,
            kind: "guest-state",
            detail,
        })
    };
    let g = match &point.guest_state {
        None => return Ok(None),
        Some(Err(why)) => return Ok(mismatch(why.clone())),
        Some(Ok(g)) => g,
    };
    let copy = match read_guest_state(blobs, backup, g).await? {
        Ok(data) => data,
        Err(why) => return Ok(mismatch(why)),
    };
    let Some(exported) = source.guest_state(&point.source).await? else {
        return Ok(mismatch(format!(
            "the source snapshot {} exports no VM guest state, the restore point names {}",
            point.source, g.blob
        )));
    };
    let mut crc = crate::model::pages::crc64_digest();
    for r in crate::cycle::guest_state::chunks(exported.size) {
        crc.update(&source.read_guest_state(&point.source, r).await?);
    }
    let (was, is) = (crc.finalize(), crc64(&copy));
    Ok((exported.size != g.length || was != is).then(|| Mismatch {
        offset: 0,
        kind: "guest-state",
        detail: format!(
            "VM guest state copy {}: {} bytes, CRC-64 {is:016x}; the source snapshot's: {} bytes, CRC-64 {was:016x}",
            g.blob, g.length, exported.size
        ),
    }))
}

/// Reads the VM guest state copy `g` a restore point of `backup` names (a Trusted Launch
/// disk's; it is small: about 4 MiB on Azure) and checks it against its record: Ok(Err)
/// names what is wrong (missing, another length, another CRC-64), Err is a storage failure.
pub async fn read_guest_state(
    blobs: &dyn PageBlobs,
    backup: &BlobRef,
    g: &GuestStateCopy,
) -> Result<Result<Vec<u8>, String>, BlobError> {
    let copy = BlobRef::new(&backup.account, &backup.container, &g.blob);
    let Some(props) = blobs.properties(&copy, None).await? else {
        return Ok(Err(format!(
            "its VM guest state copy {copy} does not exist"
        )));
    };
    if props.size != g.length {
        return Ok(Err(format!(
            "its VM guest state copy {copy} is {} bytes, the restore point recorded {}",
            props.size, g.length
        )));
    }
    let mut data = Vec::with_capacity(usize::try_from(g.length).unwrap_or(0));
    for r in crate::cycle::guest_state::chunks(g.length) {
        data.extend_from_slice(
            &retry_unanswered("the VM guest state copy", || blobs.read(&copy, None, r)).await?,
        );
    }
    let crc = crc64(&data);
    if crc != g.crc64 {
        return Ok(Err(format!(
            "its VM guest state copy {copy} has CRC-64 {crc:016x}, the restore point recorded {:016x}: it was altered",
            g.crc64
        )));
    }
    Ok(Ok(data))
}

/// An earlier restore point (in `ours`, oldest first) whose fencing token is above `point`'s,
/// with both tokens. Points without a token (taken before fencing) are not compared.
fn out_of_order_token<'p>(
    ours: &'p [StoredPoint],
    point: &StoredPoint,
) -> Option<(&'p StoredPoint, u64, u64)> {
    let token = point.fence?;
    ours.iter()
        .take_while(|p| p.snapshot != point.snapshot)
        .filter_map(|p| Some((p, p.fence?)))
        .filter(|(_, t)| *t > token)
        .last()
        .map(|(p, t)| (p, token, t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_point_below_an_earlier_token_is_a_fenced_owners() {
        let p = |s: &str, fence: Option<u64>| StoredPoint {
            guest_state: None,
            snapshot: s.into(),
            source: SnapshotId::new(format!("src-{s}")),
            size: 0,
            fence,
        };
        let ours = [
            p("1", None),
            p("2", Some(5)),
            p("3", Some(7)),
            p("4", Some(6)),
            p("5", Some(7)),
        ];
        assert!(out_of_order_token(&ours, &ours[2]).is_none());
        assert!(
            out_of_order_token(&ours, &ours[4]).is_none(),
            "equal tokens: one owner"
        );
        assert!(
            out_of_order_token(&ours, &ours[0]).is_none(),
            "no token: not compared"
        );
        let (earlier, token, earlier_token) = out_of_order_token(&ours, &ours[3]).unwrap();
        assert_eq!(
            (earlier.snapshot.as_str(), token, earlier_token),
            ("3", 6, 7)
        );
    }
    use crate::source::PageBlobSource;
    use crate::storage::fake::MemBlobs;
    use crate::storage::Metadata;

    /// [`compare`] of the backup snapshot `bk` with the source snapshot `src`, both in `blobs`.
    async fn compare_in(
        blobs: &MemBlobs,
        (src, s): (&BlobRef, &str),
        (bk, b): (&BlobRef, &str),
    ) -> Result<VerifyReport, VerifyError> {
        compare(
            blobs,
            "d",
            (bk, b),
            (&PageBlobSource::new(blobs, src), "src", s),
            2,
            None,
        )
        .await
    }

    fn r(a: u64, b: u64) -> ByteRange {
        ByteRange::new(a, b)
    }

    #[test]
    fn union_merges_clips_and_chunks() {
        let a = [r(0, 512), r(4096, 8192)];
        let b = [r(512, 1024), r(6144, 12288), r(20480, 30720)];
        assert_eq!(
            union_chunks(&a, &b, 25600, 4096),
            vec![
                r(0, 1024),
                r(4096, 8192),
                r(8192, 12288),
                r(20480, 24576),
                r(24576, 25600)
            ]
        );
    }

    #[tokio::test]
    async fn equal_content_passes_even_when_zeros_are_stored_differently() {
        let blobs = MemBlobs::new();
        let (src, bk) = (BlobRef::new("p", "c", "src"), BlobRef::new("b", "c", "bk"));
        blobs.write(&src, 0, &[7u8; 8192]);
        blobs.write(&src, 65536, &[0u8; 4096]); // written zeros: allocated on the source only
        blobs.write(&bk, 0, &[7u8; 8192]);
        blobs.resize(&bk, 69632, &Default::default()).await.unwrap();
        let s = blobs.create_snapshot(&src, &Metadata::new()).await.unwrap();
        let b = blobs.create_snapshot(&bk, &Metadata::new()).await.unwrap();
        let rep = compare_in(&blobs, (&src, &s), (&bk, &b)).await.unwrap();
        assert!(rep.ok(), "{rep:?}");
        assert_eq!(rep.bytes_compared, 8192 + 4096);
        assert_eq!((rep.backup_ranges, rep.source_ranges), (1, 2));
    }

    #[tokio::test]
    async fn names_the_first_differing_byte() {
        let blobs = MemBlobs::new();
        let (src, bk) = (BlobRef::new("p", "c", "src"), BlobRef::new("b", "c", "bk"));
        let mut data = vec![3u8; 16384];
        blobs.write(&src, 0, &data);
        data[10_000] = 4;
        blobs.write(&bk, 0, &data);
        let s = blobs.create_snapshot(&src, &Metadata::new()).await.unwrap();
        let b = blobs.create_snapshot(&bk, &Metadata::new()).await.unwrap();
        let rep = compare_in(&blobs, (&src, &s), (&bk, &b)).await.unwrap();
        let m = rep.mismatch.unwrap();
        assert_eq!((m.offset, m.kind), (10_000, "content"));
        // A size difference is reported at the smaller size.
        blobs.resize(&bk, 32768, &Default::default()).await.unwrap();
        let b2 = blobs.create_snapshot(&bk, &Metadata::new()).await.unwrap();
        let rep = compare_in(&blobs, (&src, &s), (&bk, &b2)).await.unwrap();
        assert_eq!(rep.mismatch.unwrap().offset, 16384);
    }

    #[tokio::test]
    async fn a_deleted_source_snapshot_is_reported_not_compared() {
        let blobs = MemBlobs::new();
        let (src, bk) = (BlobRef::new("p", "c", "src"), BlobRef::new("b", "c", "bk"));
        blobs.write(&src, 0, &[1u8; 512]);
        blobs.write(&bk, 0, &[1u8; 512]);
        let s = blobs.create_snapshot(&src, &Metadata::new()).await.unwrap();
        let b = blobs.create_snapshot(&bk, &Metadata::new()).await.unwrap();
        blobs.delete_snapshot(&src, &s).await.unwrap();
        let e = compare_in(&blobs, (&src, &s), (&bk, &b)).await.unwrap_err();
        assert!(matches!(e, VerifyError::SourceSnapshotGone { .. }), "{e}");
        assert!(e.to_string().contains(&s));
    }
}
