//! snapback held against what Azure really answered: recorded sessions of the Azure SDK
//! teams (`tests/recordings/`, each file naming its source repository, path and commit; see
//! docs/testing.md) are replayed from 127.0.0.1 (tests/common/replay.rs) to snapback's own
//! clients, and the ARM emulator's answers are compared with the same recordings.

mod common;

use common::arm::ArmEmulator;
use common::replay::{self, Replay};
use serde_json::{json, Value};
use snapback::arm::{
    Access, ArmClient, ArmErrorKind, Disk, ResourceId, SasUrl, Tags, UploadDiskSpec,
};
use snapback::azure::sas_blob::SasBlobs;
use snapback::blobs::{ErrorKind, PageListQuery, Resource};
use snapback::pages::{ByteRange, PageItem};
use std::sync::Arc;
use std::time::Duration;

const MD_HOST: &str = "https://md-s1f0l2zctgzf.z33.blob.storage.azure.net";
const ARM: &str = "https://management.azure.com";
const SNAPSHOT_ID: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rgname/providers/Microsoft.Compute/snapshots/recorded";

fn sas(url: &str) -> SasUrl {
    SasUrl::new(url.parse().expect("SAS URL"))
}

/// The ranges of a recorded `<PageList>` body, read without snapback's parser.
fn recorded_ranges(xml: &str) -> Vec<PageItem> {
    let mut items = Vec::new();
    let mut rest = xml;
    while let Some(at) = rest.find("Range><Start>") {
        let kind_start = rest[..at].rfind('<').expect("element start");
        let cleared = &rest[kind_start + 1..at] == "Clear";
        let after = &rest[at + "Range><Start>".len()..];
        let (start, after) = after.split_once("</Start><End>").expect("End");
        let (end, after) = after.split_once("</End>").expect("End close");
        let r = ByteRange::from_inclusive(start.parse().unwrap(), end.parse().unwrap());
        items.push(if cleared {
            PageItem::Cleared(r)
        } else {
            PageItem::Changed(r)
        });
        rest = after;
    }
    items
}

/// A managed-disk diff as Azure answered it (`CanDiffPagesBetweenSnapshots`): the diff of
/// S(2) against S(1) given by `x-ms-previous-snapshot-url`, through `SasBlobs::page_ranges`,
/// keeps all 97 ranges in document order with the two `ClearRange`s in place; the header
/// carries S(1)'s URL untouched; a read of the first cleared range through S(2)'s SAS is
/// 4 KiB of zeros, its `Content-Range` checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_managed_disk_diff_goes_through_sas_blobs() {
    let doc = replay::load("storage/diff-between-snapshots.json");
    let server = Replay::start(replay::entries(&doc, &[0, 1]), MD_HOST, false);
    let s1 = doc["Variables"]["snapshot1SASUri"].as_str().unwrap();
    let s2 = doc["Variables"]["snapshot2SASUri"].as_str().unwrap();
    let blobs = SasBlobs::new(None);
    let list = blobs
        .page_ranges(
            SNAPSHOT_ID,
            &sas(&server.local(MD_HOST, s2)),
            Some(&sas(s1)),
            &PageListQuery::default(),
        )
        .await
        .expect("the recorded diff parses");
    let xml = String::from_utf8(replay::body_bytes(&doc["Entries"][0]["ResponseBody"])).unwrap();
    assert!(
        xml.starts_with('\u{feff}'),
        "Azure's XML answers start with a BOM"
    );
    let want = recorded_ranges(&xml);
    assert_eq!(want.len(), 97);
    assert_eq!(list.items, want);
    assert_eq!(list.next_marker, None);
    let cleared: Vec<&PageItem> = list
        .items
        .iter()
        .filter(|i| matches!(i, PageItem::Cleared(_)))
        .collect();
    assert_eq!(
        cleared,
        [
            &PageItem::Cleared(ByteRange::new(1_199_992_832, 1_199_996_928)),
            &PageItem::Cleared(ByteRange::new(6_436_749_312, 6_436_753_408)),
        ]
    );
    let request = &server.received()[0];
    assert_eq!(
        request.header("x-ms-previous-snapshot-url"),
        Some(s1),
        "the previous snapshot's URL goes out untouched"
    );
    assert_eq!(request.query("comp").as_deref(), Some("pagelist"));
    assert_eq!(
        request.query("snapshot").as_deref(),
        Some("2021-08-05T20:58:06.9075559Z")
    );

    let zeros = blobs
        .read(
            SNAPSHOT_ID,
            &sas(&server.local(MD_HOST, s2)),
            ByteRange::new(1_199_992_832, 1_199_996_928),
        )
        .await
        .expect("recorded read");
    assert_eq!(zeros.as_ref(), &[0u8; 4096][..]);
    assert_eq!(
        server.received()[1].header("x-ms-range"),
        Some("bytes=1199992832-1199996927")
    );
    server.assert_done();
}

/// Azure's error answers to Get Page Ranges on a managed disk's export, through
/// `SasBlobs::page_ranges`: 416 `InvalidRange` (XML body with a BOM), 412 and 304
/// `ConditionNotMet` (the 304 without a body) are typed by status and `x-ms-error-code`,
/// about the snapshot's resource id; an empty diff (`<PageList/>` after a BOM) is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_diff_errors_are_typed() {
    let blobs = SasBlobs::new(None);
    let cases = [
        (
            "storage/diff-error-invalid-range.json",
            0,
            416,
            "InvalidRange",
            ErrorKind::BadRequest,
        ),
        (
            "storage/diff-access-conditions-fail.json",
            0,
            304,
            "ConditionNotMet",
            ErrorKind::PreconditionFailed,
        ),
        (
            "storage/diff-access-conditions-fail.json",
            1,
            412,
            "ConditionNotMet",
            ErrorKind::PreconditionFailed,
        ),
    ];
    for (file, index, status, code, kind) in cases {
        let doc = replay::load(file);
        let entry = &doc["Entries"][index];
        let server = Replay::start(vec![entry.clone()], MD_HOST, false);
        let target = entry["RequestUri"]
            .as_str()
            .unwrap()
            .trim_end_matches("&comp=pagelist");
        let previous = entry["RequestHeaders"]["x-ms-previous-snapshot-url"].as_str();
        let range = entry["RequestHeaders"]["x-ms-range"]
            .as_str()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split_once('-'))
            .map(|(s, e)| ByteRange::from_inclusive(s.parse().unwrap(), e.parse().unwrap()));
        let err = blobs
            .page_ranges(
                SNAPSHOT_ID,
                &sas(&server.local(MD_HOST, target)),
                previous.map(sas).as_ref(),
                &PageListQuery {
                    range,
                    ..Default::default()
                },
            )
            .await
            .expect_err(file);
        assert_eq!(
            (err.kind, err.status, err.code.as_deref()),
            (kind, Some(status), Some(code)),
            "{file} #{index}: {err}"
        );
        assert!(
            err.concerns(&Resource::Managed(SNAPSHOT_ID.into())),
            "{err}"
        );
        server.assert_done();
    }

    let doc = replay::load("storage/diff-access-conditions.json");
    let entry = &doc["Entries"][0];
    let server = Replay::start(vec![entry.clone()], MD_HOST, false);
    let target = entry["RequestUri"]
        .as_str()
        .unwrap()
        .trim_end_matches("&comp=pagelist");
    let list = blobs
        .page_ranges(
            SNAPSHOT_ID,
            &sas(&server.local(MD_HOST, target)),
            Some(&sas(doc["Variables"]["snapshot1SASUri"].as_str().unwrap())),
            &PageListQuery {
                range: Some(ByteRange::new(0, 1024)),
                ..Default::default()
            },
        )
        .await
        .expect("an empty recorded diff");
    assert!(list.items.is_empty() && list.next_marker.is_none());
    server.assert_done();
}

/// A token for the replay server, which checks none.
#[derive(Debug)]
struct StaticToken;

#[async_trait::async_trait]
impl azure_core::credentials::TokenCredential for StaticToken {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        Ok(azure_core::credentials::AccessToken::new(
            "replayed-token",
            time::OffsetDateTime::now_utc() + time::Duration::hours(1),
        ))
    }
}

fn arm_client(server: &Replay) -> ArmClient {
    ArmClient::new(
        server.origin().parse().expect("origin"),
        Arc::new(StaticToken),
        ArmEmulator::options(),
    )
}

fn body_json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("JSON request body")
}

/// An Upload disk as ARM answered its creation (`UploadDiskPositiveTest`, 32 TiB + 512):
/// PUT (202, `Azure-AsyncOperation` + `Location`), one poll to `Succeeded` (the disk as
/// `properties.output`), GET; the disk awaits its upload and reports no `diskSizeBytes`
/// yet. Then DELETE (202) polled through `InProgress` to `Succeeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_upload_disk_create_and_delete() {
    let doc = replay::load("arm/upload-disk.json");
    let server = Replay::start(replay::entries(&doc, &[0, 1, 2, 3, 4, 5]), ARM, true);
    let arm = arm_client(&server);
    let id: ResourceId = "/subscriptions/db1ab6f0-4769-4b27-930e-01e2ef9c123c/resourceGroups/crptestar5287/providers/Microsoft.Compute/disks/diskrp2203"
        .parse()
        .unwrap();
    let spec = UploadDiskSpec {
        location: "centralus".into(),
        upload_size_bytes: 35_183_298_347_520,
        sku: Some("Standard_LRS".into()),
        zone: None,
        tags: Tags::new(),
    };
    let disk = arm.create_upload_disk(&id, &spec).await.expect("create");
    assert_eq!(disk.properties.disk_state.as_deref(), Some("ReadyToUpload"));
    assert_eq!(
        disk.properties.provisioning_state.as_deref(),
        Some("Succeeded")
    );
    assert_eq!(disk.properties.creation_data.create_option, "Upload");
    assert_eq!(
        disk.properties.creation_data.upload_size_bytes,
        Some(35_183_298_347_520)
    );
    assert_eq!(
        disk.properties.disk_size_bytes, None,
        "an upload disk has no size yet"
    );
    assert_eq!(disk.sku.map(|s| s.name).as_deref(), Some("Standard_LRS"));
    assert_eq!(
        disk.properties.unique_id.as_deref(),
        Some("d2cf26b2-52c7-493f-ac68-c4f0fd419b68")
    );
    let sent = server.received();
    assert_eq!(
        sent[0].query("api-version").as_deref(),
        Some(snapback::arm::API_VERSION)
    );
    let put = body_json(&sent[0].body);
    let recorded = &doc["Entries"][0]["RequestBody"];
    for field in ["location", "sku"] {
        assert_eq!(put[field], recorded[field], "{field}");
    }
    assert_eq!(
        put["properties"]["creationData"],
        recorded["properties"]["creationData"]
    );

    arm.delete_disk(&id).await.expect("delete");
    assert_eq!(
        server
            .received()
            .iter()
            .map(|r| r.method.as_str())
            .collect::<Vec<_>>(),
        ["PUT", "GET", "GET", "DELETE", "GET", "GET"]
    );
    server.assert_done();
}

/// Read access to a disk as ARM answered it (azure-mgmt-compute `test_compute_disks`):
/// GET of the disk; `beginGetAccess` (202) polled to `Succeeded`, its result read at
/// `Location` — the recorder sanitized `accessSAS` to the word "accessSAS", which snapback
/// refuses as not a URL (typed `InvalidResponse`, after exactly those three requests);
/// `endGetAccess` (202) polled to `Succeeded` (snapback skips the empty `Location` result
/// the Python SDK also read); DELETE (202) polled to `Succeeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_access_grant_and_revoke() {
    let doc = replay::load("arm/disk-grant-revoke.json");
    let server = Replay::start(
        replay::entries(&doc, &[0, 1, 2, 3, 4, 5, 6, 7, 8]),
        ARM,
        true,
    );
    let arm = arm_client(&server);
    let id: ResourceId = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rgname/providers/Microsoft.Compute/disks/disknamexe6ad29c6"
        .parse()
        .unwrap();
    let disk = arm.get_disk(&id).await.expect("get");
    assert_eq!(disk.properties.disk_size_bytes, Some(214_748_364_800));
    assert_eq!(disk.properties.disk_state.as_deref(), Some("Unattached"));
    assert_eq!(disk.location, "eastus");

    let err = arm
        .begin_get_access(&id, Access::Read, Duration::from_secs(1800))
        .await
        .expect_err("the recorded accessSAS is sanitized, not a URL");
    assert_eq!(err.kind(), ArmErrorKind::InvalidResponse, "{err}");
    assert!(err.to_string().contains("accessSAS is not a URL"), "{err}");
    let sent = server.received();
    assert_eq!(sent.len(), 4, "GET, POST, poll, Location");
    assert_eq!(body_json(&sent[1].body), doc["Entries"][1]["RequestBody"]);
    assert_eq!(sent[3].query("monitor").as_deref(), Some("true"));

    arm.end_get_access(&id).await.expect("end access");
    arm.delete_disk(&id).await.expect("delete");
    assert_eq!(
        server.skipped(),
        [6],
        "endGetAccess's Location result is not read"
    );
    assert_eq!(server.received()[4].header("content-length"), Some("0"));
    server.assert_done();
}

/// A snapshot's creation as ARM answered it (`test_compute_shot`): PUT (202, body
/// `provisioningState: Updating`), a poll `InProgress` (with `Retry-After: 10`), a poll
/// `Succeeded`, GET. The snapshot parses with the fields snapback reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_snapshot_creation() {
    let doc = replay::load("arm/snapshot-create.json");
    let server = Replay::start(replay::entries(&doc, &[0, 1, 2, 3]), ARM, true);
    let arm = arm_client(&server);
    let source: Disk = serde_json::from_value(json!({
        "id": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rgname/providers/Microsoft.Compute/disks/disknamexbc8e2966",
        "name": "disknamexbc8e2966",
        "location": "eastus",
        "properties": {"creationData": {"createOption": "Empty"}}
    }))
    .unwrap();
    let id: ResourceId = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rgname/providers/Microsoft.Compute/snapshots/snapshotxbc8e2966"
        .parse()
        .unwrap();
    let snap = arm
        .create_incremental_snapshot(&id, &source, &Tags::new())
        .await
        .expect("create snapshot");
    assert_eq!(
        snap.properties.provisioning_state.as_deref(),
        Some("Succeeded")
    );
    assert_eq!(snap.properties.disk_size_bytes, Some(214_748_364_800));
    assert_eq!(
        snap.properties.incremental,
        Some(false),
        "the recording made a full snapshot"
    );
    assert_eq!(snap.properties.completion_percent, None);
    assert!(snap.is_ready());
    assert_eq!(
        snap.properties.creation_data.source_resource_id.as_deref(),
        Some(source.id.as_str())
    );
    assert_eq!(
        snap.properties.creation_data.source_unique_id.as_deref(),
        Some("93c2124a-d66e-4cf2-ae99-5fb505f7dd3a")
    );
    let put = body_json(&server.received()[0].body);
    assert_eq!(put["properties"]["incremental"], true);
    assert_eq!(
        put["properties"]["creationData"]["sourceResourceId"],
        source.id.as_str()
    );
    assert_eq!(
        put["location"],
        doc["Entries"][0]["RequestBody"]["location"]
    );
    server.assert_done();
}
