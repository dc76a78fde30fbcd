//! Self-check of the test harness through snapback's own Azure client: the Azurite in use
//! answers a diff like Azure (a cleared page is a ClearRange, items interleave in offset
//! order, NextMarker pagination, sub-ranges), and is as strict as Azure where stock Azurite is
//! lax (Put Page over 4 MiB, asynchronous Copy Blob). If any of this fails, the other tests
//! would prove nothing.

mod common;

use common::fixture::{create_disk, write, Fixture, MIB};
use snapback::model::pages::{ByteRange, PageItem};
use snapback::storage::{
    BlobRef, CopyStatus, ErrorKind, Metadata, PageBlobs, PageListQuery, Resource,
};

fn diff<'a>(s2: &'a str, s1: &'a str) -> PageListQuery<'a> {
    PageListQuery {
        snapshot: Some(s2),
        prev_snapshot: Some(s1),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_answers_diffs_like_azure() {
    let fx = Fixture::new(&[]);
    let blobs = fx.blobs();
    let b = BlobRef::new("premium", "vhds", "probe.vhd");
    create_disk(blobs.as_ref(), &b, MIB).await;
    write(blobs.as_ref(), &b, 0, &[1; 4096]).await;
    let s1 = blobs.create_snapshot(&b, &Metadata::new()).await.unwrap();
    write(blobs.as_ref(), &b, 8192, &[2; 1024]).await;
    blobs
        .clear_pages(&b, ByteRange::new(1024, 2048), None)
        .await
        .unwrap();
    write(blobs.as_ref(), &b, 65536, &[3; 512]).await;
    let s2 = blobs.create_snapshot(&b, &Metadata::new()).await.unwrap();

    let all = blobs.page_ranges(&b, &diff(&s2, &s1)).await.unwrap();
    assert_eq!(
        all.items,
        vec![
            PageItem::Cleared(ByteRange::new(1024, 2048)),
            PageItem::Changed(ByteRange::new(8192, 9216)),
            PageItem::Changed(ByteRange::new(65536, 66048)),
        ],
        "a cleared page is a ClearRange, in offset order"
    );
    assert_eq!(all.next_marker, None);

    // maxresults=1 paginates with NextMarker; the pages concatenate to the whole diff.
    let (mut items, mut marker, mut pages) = (Vec::new(), None::<String>, 0);
    loop {
        let q = PageListQuery {
            max_results: Some(1),
            marker: marker.as_deref(),
            ..diff(&s2, &s1)
        };
        let page = blobs.page_ranges(&b, &q).await.unwrap();
        items.extend(page.items);
        pages += 1;
        marker = page.next_marker;
        if marker.is_none() {
            break;
        }
    }
    assert_eq!((items, pages), (all.items.clone(), 3));

    // A sub-range restricts the listing.
    let q = PageListQuery {
        range: Some(ByteRange::new(4096, 65536)),
        ..diff(&s2, &s1)
    };
    assert_eq!(
        blobs.page_ranges(&b, &q).await.unwrap().items,
        vec![PageItem::Changed(ByteRange::new(8192, 9216))]
    );

    // A deleted diff base is reported as such.
    blobs.delete_snapshot(&b, &s1).await.unwrap();
    let err = blobs.page_ranges(&b, &diff(&s2, &s1)).await.unwrap_err();
    assert!(
        err.kind == ErrorKind::NotFound && err.concerns(&Resource::of(&b, Some(&s1))),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_is_as_strict_as_azure() {
    let fx = Fixture::new(&[]);
    let blobs = fx.blobs();
    let b = BlobRef::new("premium", "vhds", "strict.vhd");
    create_disk(blobs.as_ref(), &b, 8 * MIB).await;
    let err = blobs
        .put_pages(
            &b,
            0,
            bytes::Bytes::from(vec![1u8; 4 * MIB as usize + 512]),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        err.status == Some(413) && err.kind == ErrorKind::BadRequest,
        "Put Page over 4 MiB: {err}"
    );

    // Copy Blob across accounts is asynchronous: pending first, then success.
    write(blobs.as_ref(), &b, 0, &[7; 512]).await;
    let snap = blobs.create_snapshot(&b, &Metadata::new()).await.unwrap();
    let dest = BlobRef::new("backup", "backups", "copy");
    blobs.ensure_container(&dest).await.unwrap();
    let id = blobs
        .start_copy(
            &dest,
            &b,
            Some(&snap),
            &Metadata::new(),
            &Default::default(),
        )
        .await
        .unwrap();
    assert!(
        copied(blobs.as_ref(), &dest, &id).await,
        "the copy was reported pending before success"
    );
    let bytes = blobs
        .read(&dest, None, ByteRange::new(0, 512))
        .await
        .unwrap();
    assert_eq!(&bytes[..], &[7u8; 512][..]);
}

/// Polls `dest` until its copy `id` succeeds; whether it was reported pending first.
async fn copied(blobs: &dyn PageBlobs, dest: &BlobRef, id: &str) -> bool {
    let mut seen_pending = false;
    loop {
        let (cid, status) = blobs
            .properties(dest, None)
            .await
            .unwrap()
            .unwrap()
            .copy
            .unwrap();
        assert_eq!(cid, id);
        match status {
            CopyStatus::Pending { .. } => seen_pending = true,
            CopyStatus::Success => return seen_pending,
            other => panic!("copy failed: {other:?}"),
        }
    }
}

/// A Copy Blob destination is a blob of its own: writing it (as every apply writes the backup
/// a seed copied from `S(1)`, or as someone else may) changes neither the source snapshot's
/// page list nor its bytes nor a diff against it. Stock Azurite hands the copy the snapshot's
/// range table itself, so before the extension's patch (k) the source snapshot read the
/// copy's bytes and a diff `S(2)` vs `S(1)` answered a ClearRange at 6 MiB, where only the
/// copy had been written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_independent_of_its_source_snapshot() {
    let fx = Fixture::new(&[]);
    let blobs = fx.blobs();
    let b = BlobRef::new("premium", "vhds", "copied.vhd");
    create_disk(blobs.as_ref(), &b, 8 * MIB).await;
    write(blobs.as_ref(), &b, 0, &[1; 65536]).await;
    let s1 = blobs.create_snapshot(&b, &Metadata::new()).await.unwrap();
    write(blobs.as_ref(), &b, 0, &[2; 65536]).await;
    let s2 = blobs.create_snapshot(&b, &Metadata::new()).await.unwrap();
    let dest = BlobRef::new("backup", "backups", "copied");
    blobs.ensure_container(&dest).await.unwrap();
    let id = blobs
        .start_copy(&dest, &b, Some(&s1), &Metadata::new(), &Default::default())
        .await
        .unwrap();
    copied(blobs.as_ref(), &dest, &id).await;
    write(blobs.as_ref(), &dest, 0, &[2; 65536]).await;
    write(blobs.as_ref(), &dest, 6 * MIB, &[3; 65536]).await;

    let s1_pages = PageListQuery {
        snapshot: Some(&s1),
        ..Default::default()
    };
    assert_eq!(
        blobs.page_ranges(&b, &s1_pages).await.unwrap().items,
        vec![PageItem::Changed(ByteRange::new(0, 65536))],
        "S(1)'s page list"
    );
    for (at, byte) in [(0, 1), (6 * MIB, 0)] {
        let read = blobs
            .read(&b, Some(&s1), ByteRange::new(at, at + 65536))
            .await
            .unwrap();
        assert!(
            read.iter().all(|&x| x == byte),
            "S(1) at {at} reads {byte}s"
        );
    }
    assert_eq!(
        blobs.page_ranges(&b, &diff(&s2, &s1)).await.unwrap().items,
        vec![PageItem::Changed(ByteRange::new(0, 65536))],
        "S(2) vs S(1): the source's one change, no clear"
    );
}
