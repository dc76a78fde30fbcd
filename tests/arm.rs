//! The ARM layer (`src/arm/`) over HTTP against the ARM emulator and Azurite
//! (tests/common/arm.rs): every operation, long-running operations, retries, the 5-SAS
//! limit, tokens, the `x-ms-previous-snapshot-url` diff, redaction.

mod common;

use common::arm::{ArmEmulator, CLIENT_ID, FEDERATED_TOKEN, IDENTITY_HEADER, SUBSCRIPTION, TENANT};
use common::azurite::{Azurite, PREMIUM_KEY};
use common::fixture::{create_disk, write, Fixture};
use snapback::arm::{
    Access, ArmClient, ArmError, ArmErrorKind, ResourceGroup, ResourceId, ResourceKind, Tags,
    UploadDiskSpec,
};
use snapback::azure::shared_key::{blob_read_sas, AccountKey};
use snapback::model::secrets::SasUrl;
use snapback::storage::{BlobRef, Metadata, PageBlobs};
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;
const HOUR: Duration = Duration::from_secs(3600);

fn group() -> ResourceGroup {
    ResourceGroup {
        subscription: SUBSCRIPTION.into(),
        name: "rg-vms".into(),
    }
}

fn disk_id(name: &str) -> ResourceId {
    ResourceId::new(group(), ResourceKind::Disk, name).unwrap()
}

fn snap_id(name: &str) -> ResourceId {
    ResourceId::snapshot_in(&group(), name).unwrap()
}

fn tags(pairs: &[(&str, &str)]) -> Tags {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i / 512) as u8).wrapping_mul(31) ^ (i as u8))
        .collect()
}

/// Creates a disk of `size` bytes the way a restore does (Upload + write SAS + end access)
/// and writes `writes` into it.
async fn upload_disk(arm: &ArmClient, id: &ResourceId, size: u64, writes: &[(u64, Vec<u8>)]) {
    let spec = UploadDiskSpec {
        location: "westeurope".into(),
        upload_size_bytes: size + 512,
        sku: Some("Premium_LRS".into()),
        zone: Some("1".into()),
        tags: tags(&[("purpose", "test")]),
    };
    let disk = arm
        .create_upload_disk(id, &spec)
        .await
        .expect("create disk");
    // As Azure answers (tests/recordings/arm/upload-disk.json): no size before the upload.
    assert_eq!(disk.properties.disk_size_bytes, None);
    assert_eq!(disk.properties.disk_state.as_deref(), Some("ReadyToUpload"));
    assert_eq!(
        disk.properties.provisioning_state.as_deref(),
        Some("Succeeded")
    );
    assert_eq!(disk.zones, vec!["1".to_string()]);
    assert_eq!(
        disk.sku.as_ref().map(|s| s.name.as_str()),
        Some("Premium_LRS")
    );
    let sas = arm
        .begin_get_access(id, Access::Write, HOUR)
        .await
        .expect("write SAS");
    for (offset, data) in writes {
        put_page(sas.expose().as_str(), *offset, data).await;
    }
    arm.end_get_access(id).await.expect("end upload");
    let uploaded = arm.get_disk(id).await.expect("get disk");
    assert_eq!(uploaded.properties.disk_size_bytes, Some(size));
    assert_eq!(
        uploaded.properties.disk_state.as_deref(),
        Some("Unattached")
    );
}

/// Put Page (or Clear Page with `data` empty and `clear_len`) through a SAS URL.
async fn page_write(sas: &str, offset: u64, data: &[u8], clear_len: u64) {
    let (kind, len) = if data.is_empty() {
        ("clear", clear_len)
    } else {
        ("update", data.len() as u64)
    };
    let resp = ArmEmulator::http()
        .put(format!("{sas}&comp=page"))
        .header("x-ms-version", "2021-08-06")
        .header("x-ms-page-write", kind)
        .header("x-ms-range", format!("bytes={offset}-{}", offset + len - 1))
        .header("content-length", data.len().to_string())
        .body(data.to_vec())
        .send()
        .await
        .expect("Azurite answers");
    assert_eq!(
        resp.status().as_u16(),
        201,
        "{kind} pages: {:?}",
        resp.text().await
    );
}

async fn put_page(sas: &str, offset: u64, data: &[u8]) {
    page_write(sas, offset, data, 0).await
}

/// A read of `range` through a SAS URL: status and body.
async fn read_sas(sas: &str, start: u64, len: u64) -> (u16, Vec<u8>) {
    let resp = ArmEmulator::http()
        .get(sas)
        .header("x-ms-version", "2021-08-06")
        .header("x-ms-range", format!("bytes={start}-{}", start + len - 1))
        .send()
        .await
        .expect("Azurite answers");
    let status = resp.status().as_u16();
    (status, resp.bytes().await.unwrap_or_default().to_vec())
}

/// Get Page Ranges of `target` with `x-ms-previous-snapshot-url: prev`: status, error code
/// and the (kind, start, end) items in order.
async fn managed_diff(target: &str, prev: &str) -> (u16, String, Vec<(String, u64, u64)>) {
    let resp = ArmEmulator::http()
        .get(format!("{target}&comp=pagelist"))
        .header("x-ms-version", "2021-08-06")
        .header("x-ms-previous-snapshot-url", prev)
        .send()
        .await
        .expect("Azurite answers");
    let status = resp.status().as_u16();
    let code = resp
        .headers()
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.unwrap_or_default();
    let mut items = Vec::new();
    for kind in ["PageRange", "ClearRange"] {
        for piece in text.split(&format!("<{kind}>")).skip(1) {
            let num = |tag: &str| -> u64 {
                piece
                    .split(&format!("<{tag}>"))
                    .nth(1)
                    .and_then(|s| s.split('<').next())
                    .and_then(|s| s.parse().ok())
                    .expect("Start/End")
            };
            items.push((kind.to_string(), num("Start"), num("End")));
        }
    }
    items.sort_by_key(|i| i.1);
    (status, code, items)
}

fn assert_no_secret(text: &str) {
    assert!(
        !text.to_ascii_lowercase().contains("sig=") || text.contains("sig=REDACTED"),
        "{text}"
    );
    for part in text.split("sig=").skip(1) {
        assert!(
            part.starts_with("REDACTED"),
            "unredacted signature in: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_sas_and_managed_diff_over_http() {
    let fx = Fixture::new(&[]);
    let emu = ArmEmulator::start(&fx.azurite, &[("EMU_POLLS", "1")]);
    let arm = emu.client();
    let disk = disk_id("db01-data");
    let size = MIB;
    let a = pattern(1, 128 * 1024);
    let b = pattern(2, 64 * 1024);
    upload_disk(
        &arm,
        &disk,
        size,
        &[(0, a.clone()), (512 * 1024, b.clone())],
    )
    .await;
    let got = arm.get_disk(&disk).await.expect("get disk");
    assert_eq!(got.properties.disk_state.as_deref(), Some("Unattached"));
    assert_eq!(got.location, "westeurope");
    assert!(got.id.eq_ignore_ascii_case(&disk.to_string()));
    let unique = got.properties.unique_id.clone().expect("uniqueId");

    // S1, tagged; a second PUT of the same name is the same snapshot (idempotent).
    let t = tags(&[("snapback-disk", "db01"), ("snapback-cycle", "1")]);
    let s1 = arm
        .create_incremental_snapshot(&snap_id("db01-c1"), &got, &t)
        .await
        .expect("create S1");
    assert_eq!(
        s1.properties.provisioning_state.as_deref(),
        Some("Succeeded")
    );
    // A Premium SSD disk's snapshot: readable at once, no completionPercent (as recorded).
    assert_eq!(s1.properties.completion_percent, None);
    assert!(s1.is_ready());
    assert_eq!(s1.properties.disk_size_bytes, Some(size));
    assert_eq!(s1.properties.incremental, Some(true));
    assert_eq!(
        s1.properties.creation_data.source_resource_id.as_deref(),
        Some(&*got.id)
    );
    assert_eq!(
        s1.properties.creation_data.source_unique_id.as_deref(),
        Some(&*unique)
    );
    assert_eq!(s1.tags, t);
    let again = arm
        .create_incremental_snapshot(&snap_id("db01-c1"), &got, &t)
        .await
        .expect("PUT again");
    assert_eq!(again.id, s1.id);
    assert_eq!(arm.get_snapshot(&snap_id("db01-c1")).await.unwrap(), again);

    // The VM writes: pages 64-128 KiB change, 512-576 KiB are cleared, then S2.
    let vm: serde_json::Value = emu
        .control_get(&format!("/__emulator/disk-sas?id={disk}"))
        .await;
    let vm_sas = vm["url"].as_str().expect("disk SAS").to_string();
    let c = pattern(3, 64 * 1024);
    put_page(&vm_sas, 64 * 1024, &c).await;
    page_write(&vm_sas, 512 * 1024, &[], 64 * 1024).await;
    let t2 = tags(&[("snapback-disk", "db01"), ("snapback-cycle", "2")]);
    arm.create_incremental_snapshot(&snap_id("db01-c2"), &got, &t2)
        .await
        .expect("create S2");
    // Two snapshots of another disk and one untagged: filtered out, and with the
    // emulator's page size of 2 the listing takes several pages (nextLink).
    let other = disk_id("other");
    upload_disk(&arm, &other, MIB, &[]).await;
    let other_disk = arm.get_disk(&other).await.unwrap();
    arm.create_incremental_snapshot(&snap_id("a-other"), &other_disk, &t)
        .await
        .unwrap();
    arm.create_incremental_snapshot(&snap_id("db01-manual"), &got, &Tags::new())
        .await
        .unwrap();
    let mut names: Vec<String> = arm
        .list_snapshots(&group(), &disk, Some(("snapback-disk", "db01")))
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.name)
        .collect();
    names.sort();
    assert_eq!(names, ["db01-c1", "db01-c2"]);
    let all = arm.list_snapshots(&group(), &disk, None).await.unwrap();
    assert_eq!(
        all.len(),
        3,
        "untagged snapshot of the disk listed without a tag filter"
    );

    // Read SAS: as on Azure, each snapshot exported as a blob of its own (sr=b, no
    // snapshot=), real Azurite SAS URLs.
    let sas1 = arm
        .begin_get_access(&snap_id("db01-c1"), Access::Read, HOUR)
        .await
        .expect("read SAS S1");
    let sas2 = arm
        .begin_get_access(&snap_id("db01-c2"), Access::Read, HOUR)
        .await
        .expect("read SAS S2");
    assert!(sas1.snapshot().is_none() && sas2.snapshot().is_none());
    assert_ne!(sas1.expose().path(), sas2.expose().path());
    assert_no_secret(&format!("{sas1} {sas2:?}"));
    let (status, bytes) = read_sas(sas1.expose().as_str(), 0, 128 * 1024).await;
    assert_eq!(status, 206);
    assert_eq!(bytes, a, "S1 holds the uploaded bytes");
    let (_, bytes) = read_sas(sas2.expose().as_str(), 64 * 1024, 64 * 1024).await;
    assert_eq!(bytes, c, "S2 holds the VM's write");
    let (_, bytes) = read_sas(sas2.expose().as_str(), 512 * 1024, 64 * 1024).await;
    assert_eq!(bytes, vec![0u8; 64 * 1024], "S2 has the cleared pages");
    let (_, bytes) = read_sas(sas1.expose().as_str(), 512 * 1024, 64 * 1024).await;
    assert_eq!(bytes, b, "S1 is unchanged by later writes");
    // Each grant is for its own export: S1's signature does not open S2's blob.
    let mut crossed = sas1.expose().clone();
    crossed.set_path(sas2.expose().path());
    assert_eq!(read_sas(crossed.as_str(), 0, 512).await.0, 403);

    // The managed-disk diff: exactly the changed and the cleared ranges.
    let (status, code, items) = managed_diff(sas2.expose().as_str(), sas1.expose().as_str()).await;
    assert_eq!((status, code.as_str()), (200, ""));
    assert_eq!(
        items,
        vec![
            ("PageRange".to_string(), 64 * 1024, 128 * 1024 - 1),
            ("ClearRange".to_string(), 512 * 1024, 576 * 1024 - 1),
        ]
    );
    // A previous-snapshot URL without a valid signature is refused.
    let forged = sas1.expose().as_str().replace("sig=", "sig=AAAA");
    let (status, _, _) = managed_diff(sas2.expose().as_str(), &forged).await;
    assert_eq!(status, 403);

    // The same header on an ordinary storage account: 400, as on Azure.
    let blobs = fx.blobs();
    let premium = BlobRef::new("premium", "vhds", "plain.vhd");
    create_disk(blobs.as_ref(), &premium, MIB).await;
    write(blobs.as_ref(), &premium, 0, &a).await;
    let p1 = blobs
        .create_snapshot(&premium, &Metadata::new())
        .await
        .unwrap();
    let p2 = blobs
        .create_snapshot(&premium, &Metadata::new())
        .await
        .unwrap();
    let key = AccountKey::from_base64(PREMIUM_KEY).unwrap();
    let premium_sas = |snap: &str| {
        format!(
            "{}/vhds/plain.vhd?snapshot={}&{}",
            fx.azurite.endpoint("premium"),
            snap,
            blob_read_sas(
                "premium",
                &key,
                "vhds",
                "plain.vhd",
                Some(snap),
                None,
                "2099-01-01T00:00:00Z",
                false,
            )
        )
    };
    let (status, code, _) = managed_diff(&premium_sas(&p2), &premium_sas(&p1)).await;
    assert_eq!(
        (status, code.as_str()),
        (400, "UnsupportedHeaderForNonManagedDisksAccount")
    );

    // End access, delete S1; deleting it again is not an error; getting it is NotFound.
    arm.end_get_access(&snap_id("db01-c1"))
        .await
        .expect("end S1");
    arm.end_get_access(&snap_id("db01-c2"))
        .await
        .expect("end S2");
    let state = emu.control_get("/__emulator/state").await;
    assert_eq!(
        state["activeAccess"],
        serde_json::json!([]),
        "no SAS left granted"
    );
    arm.delete_snapshot(&snap_id("db01-c1"))
        .await
        .expect("delete S1");
    arm.delete_snapshot(&snap_id("db01-c1"))
        .await
        .expect("delete twice");
    let err = arm.get_snapshot(&snap_id("db01-c1")).await.unwrap_err();
    assert_eq!(err.kind(), ArmErrorKind::NotFound);
    assert_eq!(
        (err.status(), err.code()),
        (Some(404), Some("ResourceNotFound"))
    );
    assert!(
        err.to_string().contains(&snap_id("db01-c1").to_string()),
        "{err}"
    );
    // S2 still reads after S1 is gone (incremental snapshots stand alone).
    let sas2 = arm
        .begin_get_access(&snap_id("db01-c2"), Access::Read, HOUR)
        .await
        .unwrap();
    assert_eq!(
        read_sas(sas2.expose().as_str(), 0, 64 * 1024).await.1,
        a[..64 * 1024]
    );
    arm.end_get_access(&snap_id("db01-c2")).await.unwrap();
    // Kinds are checked before any request.
    let err = arm.get_disk(&snap_id("db01-c2")).await.unwrap_err();
    assert_eq!(err.kind(), ArmErrorKind::BadRequest);

    // The ARM side of one incremental cycle, counted: snapshot S3, read SAS for S3 and S2,
    // end both, delete S2. Each operation is polled twice (InProgress, Succeeded), and the
    // Succeeded poll carries the result (the snapshot, the SAS): PUT + 2 polls, 2 × (POST + 2
    // polls), 2 × (POST + 2 polls), DELETE + 2 polls = 3 + 6 + 6 + 3 = 18 requests.
    let before = emu.control_get("/__emulator/stats").await["arm"]
        .as_u64()
        .unwrap();
    let started = Instant::now();
    arm.create_incremental_snapshot(&snap_id("db01-c3"), &got, &t2)
        .await
        .unwrap();
    for s in ["db01-c3", "db01-c2"] {
        arm.begin_get_access(&snap_id(s), Access::Read, HOUR)
            .await
            .unwrap();
    }
    for s in ["db01-c3", "db01-c2"] {
        arm.end_get_access(&snap_id(s)).await.unwrap();
    }
    arm.delete_snapshot(&snap_id("db01-c2")).await.unwrap();
    let after = emu.control_get("/__emulator/stats").await["arm"]
        .as_u64()
        .unwrap();
    eprintln!(
        "ARM side of one cycle: {} requests, {:?}",
        after - before,
        started.elapsed()
    );
    assert_eq!(after - before, 18);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_sas_limit_and_conflicts_are_typed() {
    let az = Azurite::start();
    let emu = ArmEmulator::start(&az, &[("EMU_POLLS", "1")]);
    let arm = emu.client();
    let disk = disk_id("db02");
    upload_disk(&arm, &disk, MIB, &[(0, pattern(9, 4096))]).await;
    let got = arm.get_disk(&disk).await.unwrap();
    let mut sas: Vec<SasUrl> = Vec::new();
    for i in 1..=6 {
        arm.create_incremental_snapshot(&snap_id(&format!("db02-{i}")), &got, &Tags::new())
            .await
            .unwrap();
    }
    for i in 1..=5 {
        sas.push(
            arm.begin_get_access(&snap_id(&format!("db02-{i}")), Access::Read, HOUR)
                .await
                .unwrap_or_else(|e| panic!("SAS {i}: {e}")),
        );
    }
    let err = arm
        .begin_get_access(&snap_id("db02-6"), Access::Read, HOUR)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ArmErrorKind::Conflict, "{err}");
    assert_eq!(
        (err.status(), err.code()),
        (Some(409), Some("OperationNotAllowed"))
    );
    assert!(
        err.to_string().contains("db02-6"),
        "names the snapshot: {err}"
    );
    assert_no_secret(&format!("{err} {err:?} {sas:?}"));
    // A snapshot with access cannot be deleted; once access ends, a sixth SAS is granted.
    let err = arm.delete_snapshot(&snap_id("db02-1")).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.code()),
        (ArmErrorKind::Conflict, Some("OperationNotAllowed"))
    );
    arm.end_get_access(&snap_id("db02-1")).await.unwrap();
    arm.delete_snapshot(&snap_id("db02-1")).await.unwrap();
    arm.begin_get_access(&snap_id("db02-6"), Access::Read, HOUR)
        .await
        .expect("sixth SAS after one ended");

    // A disk over an existing one: 409, not replaced.
    let spec = UploadDiskSpec {
        location: "westeurope".into(),
        upload_size_bytes: MIB + 512,
        sku: None,
        zone: None,
        tags: Tags::new(),
    };
    let err = arm.create_upload_disk(&disk, &spec).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.status()),
        (ArmErrorKind::Conflict, Some(409))
    );
    // Write access to a disk that is not awaiting an upload: 409.
    let err = arm
        .begin_get_access(&disk, Access::Write, HOUR)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ArmErrorKind::Conflict);
    // --force's path: delete the disk, then create it again.
    let target = disk_id("restored");
    upload_disk(&arm, &target, MIB, &[]).await;
    arm.delete_disk(&target).await.expect("delete disk");
    assert_eq!(
        arm.get_disk(&target).await.unwrap_err().kind(),
        ArmErrorKind::NotFound
    );
    arm.create_upload_disk(&target, &spec)
        .await
        .expect("create again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_honours_retry_after_and_429_is_retried() {
    let az = Azurite::start();
    let emu = ArmEmulator::start(&az, &[("EMU_POLLS", "2"), ("EMU_RETRY_AFTER", "1")]);
    let arm = emu.client();
    let disk = disk_id("db03");
    // create: initial 202 (Retry-After 1) → InProgress, InProgress, Succeeded (1 s apart).
    let started = Instant::now();
    let spec = UploadDiskSpec {
        location: "westeurope".into(),
        upload_size_bytes: MIB + 512,
        sku: None,
        zone: None,
        tags: Tags::new(),
    };
    let created = arm.create_upload_disk(&disk, &spec).await.expect("create");
    let took = started.elapsed();
    assert_eq!(
        created.properties.provisioning_state.as_deref(),
        Some("Succeeded")
    );
    assert!(
        took >= Duration::from_secs(3),
        "3 polls 1 s apart, took {took:?}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // Two 429s with Retry-After: 1, then success.
    emu.control_post(
        "/__emulator/faults?status=429&count=2&retry_after=1&match=/disks/db03&method=GET",
    )
    .await;
    let started = Instant::now();
    let got = arm.get_disk(&disk).await.expect("get after 429s");
    assert_eq!(got.name, "db03");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // 503 on the first try and all 3 retries: typed Server error with ARM's code.
    emu.control_post(
        "/__emulator/faults?status=503&count=4&retry_after=0&match=/disks/db03&code=ServerBusy",
    )
    .await;
    let err = arm.get_disk(&disk).await.unwrap_err();
    assert_eq!(err.kind(), ArmErrorKind::Server);
    assert_eq!((err.status(), err.code()), (Some(503), Some("ServerBusy")));
    let stats = emu.control_get("/__emulator/stats").await;
    assert!(stats["arm"].as_u64().unwrap() >= 4 + 3 + 4, "{stats}");

    // Operations that announce only `Location` (no Azure-AsyncOperation) are polled there:
    // a second emulator on the same Azurite, in that mode.
    let loc = ArmEmulator::start(&az, &[("EMU_POLLS", "2"), ("EMU_LOCATION_ONLY", "1")]);
    let arm2 = loc.client();
    let d7 = disk_id("db07");
    let data = pattern(7, 8192);
    upload_disk(&arm2, &d7, MIB, &[(4096, data.clone())]).await;
    let d7_disk = arm2.get_disk(&d7).await.unwrap();
    let s7 = arm2
        .create_incremental_snapshot(&snap_id("db07-1"), &d7_disk, &Tags::new())
        .await
        .expect("snapshot, Location-only");
    assert!(s7.is_ready());
    let sas = arm2
        .begin_get_access(&snap_id("db07-1"), Access::Read, HOUR)
        .await
        .expect("read SAS, Location-only");
    assert_eq!(read_sas(sas.expose().as_str(), 4096, 8192).await.1, data);
    arm2.end_get_access(&snap_id("db07-1")).await.unwrap();
    arm2.delete_snapshot(&snap_id("db07-1")).await.unwrap();
    arm2.delete_disk(&d7).await.unwrap();
    let state = loc.control_get("/__emulator/state").await;
    assert_eq!(
        (
            state["disks"].as_array().map(Vec::len),
            state["snapshots"].as_array().map(Vec::len)
        ),
        (Some(0), Some(0)),
        "{state}"
    );

    // An operation that ends Failed: typed, with ARM's code, the message redacted.
    emu.control_post(
        "/__emulator/next-operation?fail=InternalDiskManagementError\
         &message=see%20https%3A%2F%2Fmd%2Fd%3Fsig%3DOPSECRET",
    )
    .await;
    let err = arm.end_get_access(&disk).await.unwrap_err();
    assert_eq!(err.kind(), ArmErrorKind::OperationFailed, "{err}");
    assert_eq!(err.code(), Some("InternalDiskManagementError"));
    assert!(matches!(&err, ArmError::OperationFailed { status, .. } if status == "Failed"));
    assert!(!format!("{err} {err:?}").contains("OPSECRET"), "{err:?}");
    // A polling URL on another origin is not followed (the token would go there).
    emu.control_post("/__emulator/next-operation?host=localhost")
        .await;
    let err = arm
        .begin_get_access(&disk, Access::Write, HOUR)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ArmErrorKind::InvalidResponse, "{err}");
    assert!(
        err.to_string().contains("outside https://127.0.0.1:"),
        "{err}"
    );

    // A message that quotes a SAS URL (services do echo URLs) is redacted in the error.
    emu.control_post(
        "/__emulator/faults?status=400&count=1&match=/disks/db03&code=InvalidParameter\
         &message=bad%20source%20https%3A%2F%2Fmd-x.blob%2Fd%3Fsv%3D1%26sig%3DTOPSECRETSIG%26sr%3Db",
    )
    .await;
    let err = arm.get_disk(&disk).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.code()),
        (ArmErrorKind::BadRequest, Some("InvalidParameter"))
    );
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains("TOPSECRETSIG"), "{shown}");
        assert!(shown.contains("sig=REDACTED"), "{shown}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_and_a_bad_secret_is_a_credential_error() {
    let az = Azurite::start();
    let emu = ArmEmulator::start(&az, &[]);
    let url = format!(
        "{}{}?api-version={}",
        emu.endpoint(),
        disk_id("db04"),
        snapback::arm::API_VERSION
    );
    let http = ArmEmulator::http();
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = http.get(&url).bearer_auth("made-up").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    // The real credential path: ClientSecretCredential → the emulator's token endpoint.
    let arm = emu.client();
    assert_eq!(
        arm.get_disk(&disk_id("db04")).await.unwrap_err().kind(),
        ArmErrorKind::NotFound,
        "signed in: the disk is simply missing"
    );
    let stats = emu.control_get("/__emulator/stats").await;
    assert_eq!(stats["token"], 1, "{stats}");
    // The cached token (the emulator's start with "emu-") is not in the client's Debug.
    assert!(!format!("{arm:?}").contains("emu-"), "{arm:?}");

    // A wrong secret: a credential error that does not show the secret.
    std::env::set_var("SB_TEST_ARM_WRONG_SECRET", "wrong-secret-value");
    let arm = ArmClient::from_config(
        &emu.azure_config("SB_TEST_ARM_WRONG_SECRET"),
        ArmEmulator::options(),
    )
    .unwrap();
    let err = arm.get_disk(&disk_id("db04")).await.unwrap_err();
    assert_eq!(err.kind(), ArmErrorKind::Credential, "{err}");
    assert!(!err.to_string().contains("wrong-secret-value"), "{err}");
    // A missing variable is named.
    let err = ArmClient::from_config(
        &emu.azure_config("SB_TEST_ARM_UNSET_VARIABLE"),
        ArmEmulator::options(),
    )
    .unwrap_err();
    assert!(matches!(err, ArmError::Credential { .. }));
    assert!(
        err.to_string().contains("SB_TEST_ARM_UNSET_VARIABLE"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_signs_in_with_the_federated_token_file() {
    let az = Azurite::start();
    let emu = ArmEmulator::start(&az, &[]);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, FEDERATED_TOKEN).unwrap();
    // What the AKS webhook injects. Only this test reads these variables: the other
    // credentials ignore them (the authority host comes from the config, not the environment).
    std::env::set_var("AZURE_TENANT_ID", TENANT);
    std::env::set_var("AZURE_CLIENT_ID", CLIENT_ID);
    std::env::set_var("AZURE_FEDERATED_TOKEN_FILE", &token_file);
    let cfg = emu.azure_config_with("workload_identity = true");
    let arm = ArmClient::from_config(&cfg, ArmEmulator::options()).expect("workload identity");
    assert_signs_in_once(&emu, &arm, "db05").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_signs_in_at_the_identity_endpoint_never_imds() {
    let az = Azurite::start();
    let emu = ArmEmulator::start(&az, &[]);
    // azure_identity's ManagedIdentityCredential takes the App Service protocol when these
    // are set, so it asks the emulator, never IMDS (169.254.169.254). Only this test sets them.
    std::env::set_var("IDENTITY_ENDPOINT", format!("{}/msi/token", emu.endpoint()));
    std::env::set_var("IDENTITY_HEADER", IDENTITY_HEADER);
    let cfg = emu.azure_config_with(&format!(
        "managed_identity = true\nclient_id = \"{CLIENT_ID}\""
    ));
    let arm = ArmClient::from_config(&cfg, ArmEmulator::options()).expect("managed identity");
    assert_signs_in_once(&emu, &arm, "db06").await;
}

/// `arm` gets a token once, with no unauthorised request, and then a plain 404 for a missing
/// disk: the credential worked.
async fn assert_signs_in_once(emu: &ArmEmulator, arm: &ArmClient, disk: &str) {
    let err = arm.get_disk(&disk_id(disk)).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ArmErrorKind::NotFound,
        "signed in, then 404: {err}"
    );
    let stats = emu.control_get("/__emulator/stats").await;
    assert_eq!(
        (stats["token"].as_u64(), stats["unauthorized"].as_u64()),
        (Some(1), Some(0)),
        "{stats}"
    );
}
