//! Self-check of the test harness through snapback's own Azure client: the Azurite in use
//! answers a diff like Azure (a cleared page is a ClearRange, items interleave in offset
//! order, NextMarker pagination, sub-ranges), and is as strict as Azure where stock Azurite is
//! lax (Put Page over 4 MiB, asynchronous Copy Blob). If any of this fails, the other tests
//! would prove nothing.

mod common;

use common::fixture::{create_disk, write, Fixture, MIB};
use snapback::blobs::{
    BlobRef, CopyStatus, ErrorKind, Metadata, PageBlobs, PageListQuery, Resource,
};
use snapback::pages::{ByteRange, PageItem};

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
        .clear_pages(&b, ByteRange::new(1024, 2048))
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
        .put_pages(&b, 0, bytes::Bytes::from(vec![1u8; 4 * MIB as usize + 512]))
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
        .start_copy(&dest, &b, Some(&snap), &Metadata::new())
        .await
        .unwrap();
    let mut seen_pending = false;
    loop {
        let (cid, status) = blobs
            .properties(&dest, None)
            .await
            .unwrap()
            .unwrap()
            .copy
            .unwrap();
        assert_eq!(cid, id);
        match status {
            CopyStatus::Pending { .. } => seen_pending = true,
            CopyStatus::Success => break,
            other => panic!("copy failed: {other:?}"),
        }
    }
    assert!(seen_pending, "the copy was reported pending before success");
    let copied = blobs
        .read(&dest, None, ByteRange::new(0, 512))
        .await
        .unwrap();
    assert_eq!(&copied[..], &[7u8; 512][..]);
}
