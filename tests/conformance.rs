//! snapback held against what Azure really answered: recorded sessions of the Azure SDK
//! teams (`tests/recordings/`, each file naming its source repository, path and commit; see
//! docs/testing.md) are replayed from 127.0.0.1 (tests/common/replay.rs) to snapback's own
//! clients, and the ARM emulator's answers are compared with the same recordings.

mod common;

use common::arm::ArmEmulator;
use common::replay::{self, Replay};
use serde_json::{json, Value};
use snapback::arm::{Access, ArmClient, ArmErrorKind, Disk, ResourceId, Tags, UploadDiskSpec};
use snapback::azure::sas_blob::SasBlobs;
use snapback::model::pages::{ByteRange, PageItem};
use snapback::model::secrets::SasUrl;
use snapback::storage::ExportBlobs;
use snapback::storage::{ErrorKind, PageListQuery, Resource};
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
        // PUT, its Succeeded poll (carrying the disk: the recorded GET, entry 2, is not
        // sent), DELETE and its polls.
        ["PUT", "GET", "DELETE", "GET", "GET"]
    );
    server.assert_done();
}

/// Read access to a disk as ARM answered it (azure-mgmt-compute `test_compute_disks`):
/// GET of the disk; `beginGetAccess` (202) polled to `Succeeded`, its result taken from
/// that poll's `properties.output` (not read at `Location`) — the recorder sanitized
/// `accessSAS` to the word "accessSAS", which snapback refuses as not a URL (typed
/// `InvalidResponse`, after exactly those three requests);
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
    // The Succeeded poll carries `accessSAS` (`properties.output`): the Location result
    // (entry 3) is not read.
    assert_eq!(sent.len(), 3, "GET, POST, poll");
    assert_eq!(body_json(&sent[1].body), doc["Entries"][1]["RequestBody"]);

    arm.end_get_access(&id).await.expect("end access");
    arm.delete_disk(&id).await.expect("delete");
    assert_eq!(
        server.skipped(),
        [3, 6],
        "neither beginGetAccess's Location result (in its poll) nor endGetAccess's is read"
    );
    assert_eq!(server.received()[3].header("content-length"), Some("0"));
    server.assert_done();
}

/// A snapshot's creation as ARM answered it (`test_compute_shot`): PUT (202, body
/// `provisioningState: Updating`), a poll `InProgress` (with `Retry-After: 10`), a poll
/// `Succeeded` carrying the snapshot as `properties.output`, which snapback takes: the
/// recorded GET after it (entry 3) is not sent. The snapshot parses with the fields
/// snapback reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_snapshot_creation() {
    let doc = replay::load("arm/snapshot-create.json");
    let server = Replay::start(replay::entries(&doc, &[0, 1, 2]), ARM, true);
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

// ------------------------------------------------------- the emulator's shapes --

/// The JSON type of `v` at `pointer`, or None where it is absent (or null).
fn type_at(v: &Value, pointer: &str) -> Option<&'static str> {
    match v.pointer(pointer)? {
        Value::Null => None,
        Value::Bool(_) => Some("bool"),
        Value::Number(_) => Some("number"),
        Value::String(_) => Some("string"),
        Value::Array(_) => Some("array"),
        Value::Object(_) => Some("object"),
    }
}

/// `emulated` has each of `pointers` exactly where `recorded` has it, of the same JSON type
/// (absent where it is absent).
fn assert_same_shape(what: &str, emulated: &Value, recorded: &Value, pointers: &[&str]) {
    for p in pointers {
        assert_eq!(
            type_at(emulated, p),
            type_at(recorded, p),
            "{what}: {p} (emulator {emulated:#}, Azure {recorded:#})"
        );
    }
}

/// The fields of a disk snapback reads, and the resource's identity.
const DISK_FIELDS: &[&str] = &[
    "/name",
    "/id",
    "/type",
    "/location",
    "/sku/name",
    "/sku/tier",
    "/properties/creationData/createOption",
    "/properties/creationData/uploadSizeBytes",
    "/properties/creationData/sourceResourceId",
    "/properties/diskSizeBytes",
    "/properties/diskSizeGB",
    "/properties/provisioningState",
    "/properties/diskState",
    "/properties/uniqueId",
    "/properties/timeCreated",
];

/// The fields of a snapshot snapback reads.
const SNAPSHOT_FIELDS: &[&str] = &[
    "/name",
    "/id",
    "/type",
    "/location",
    "/sku/name",
    "/sku/tier",
    "/properties/creationData/createOption",
    "/properties/creationData/sourceResourceId",
    "/properties/creationData/sourceUniqueId",
    "/properties/diskSizeBytes",
    "/properties/diskSizeGB",
    "/properties/incremental",
    "/properties/provisioningState",
    "/properties/diskState",
    "/properties/uniqueId",
    "/properties/timeCreated",
    "/properties/completionPercent",
];

/// One raw answer of the emulator.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Raw ARM requests to the emulator with a token of its own, to see answers as they are.
struct Raw {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Raw {
    async fn new(emu: &ArmEmulator) -> Raw {
        let http = ArmEmulator::http();
        let base = emu.endpoint().to_string();
        let form: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", common::arm::CLIENT_ID)
            .append_pair("client_secret", common::arm::CLIENT_SECRET)
            .append_pair("scope", &format!("{base}/.default"))
            .finish();
        let token: Value = http
            .post(format!("{base}/{}/oauth2/v2.0/token", common::arm::TENANT))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .expect("token")
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b).expect("token JSON"))
            .expect("token body");
        Raw {
            token: token["access_token"]
                .as_str()
                .expect("access_token")
                .to_string(),
            base,
            http,
        }
    }

    /// `path_or_url`: a resource id (+ action) or a URL the emulator gave.
    async fn send(
        &self,
        method: reqwest::Method,
        path_or_url: &str,
        body: Option<Value>,
    ) -> Answer {
        let url = if path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else {
            format!(
                "{}{path_or_url}?api-version={}",
                self.base,
                snapback::arm::API_VERSION
            )
        };
        let mut req = self.http.request(method, url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&b).expect("JSON"));
        }
        let resp = req.send().await.expect("emulator answers");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON answer")
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    /// Polls `Azure-AsyncOperation` of `first` to its end; every poll body.
    async fn polls(&self, first: &Answer) -> Vec<Answer> {
        let link = first
            .header("azure-asyncoperation")
            .expect("Azure-AsyncOperation")
            .to_string();
        let mut out = Vec::new();
        loop {
            let a = self.send(reqwest::Method::GET, &link, None).await;
            let done = a.body["status"] != "InProgress";
            out.push(a);
            if done {
                return out;
            }
        }
    }
}

/// A recorded answer's body as JSON.
fn recorded_body(doc: &Value, entry: usize) -> Value {
    let bytes = replay::body_bytes(&doc["Entries"][entry]["ResponseBody"]);
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("recorded JSON")
    }
}

/// The long-running-operation answer of `what` has Azure's recorded shape: 202, both
/// polling headers, `Location` being the operation with `monitor=true`.
fn assert_lro_start(what: &str, a: &Answer, recorded: &Value) {
    assert_eq!(
        a.status as u64,
        recorded["StatusCode"].as_u64().unwrap(),
        "{what}"
    );
    let location = a.header("location").expect("Location");
    let rec_location = recorded["ResponseHeaders"]["Location"].as_str().unwrap();
    assert!(a.header("azure-asyncoperation").is_some(), "{what}");
    assert!(recorded["ResponseHeaders"]["Azure-AsyncOperation"].is_string());
    for l in [location, rec_location] {
        assert!(l.contains("monitor=true"), "{what}: {l}");
    }
}

const SUB: &str = "/subscriptions/00000000-0000-4000-8000-000000000001/resourceGroups/rg-conf/providers/Microsoft.Compute";
/// Azure's smallest upload: 20 MiB + the 512-byte VHD footer.
const MIN_UPLOAD: u64 = 20 * 1024 * 1024 + 512;

/// The emulator answers Upload-disk creation, upload (write access), snapshot creation,
/// read access and deletion in the shapes Azure's recorded answers have: statuses, the
/// polling headers, poll bodies (`InProgress` without `endTime`, `Succeeded` with the
/// resource as `properties.output`), the disk without a size until uploaded, the result
/// at `Location` (the SAS; 200 with an empty body for endGetAccess), the snapshot's
/// fields, and a snapshot's export URL shaped like the DiskRP spec's (its own blob
/// `…/<container>/abcd`, `sr=b`, no `snapshot=`, a different container per snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_answers_in_the_recorded_shapes() {
    let az = common::azurite::Azurite::start();
    let emu = ArmEmulator::start_like_azure(&az, &[("EMU_POLLS", "1")]);
    let raw = Raw::new(&emu).await;
    let upload = replay::load("arm/upload-disk.json");
    let grant = replay::load("arm/disk-grant-revoke.json");
    let shot = replay::load("arm/snapshot-create.json");
    let disk = format!("{SUB}/disks/conf1");

    let put = raw
        .send(
            reqwest::Method::PUT,
            &disk,
            Some(json!({"location": "westeurope", "sku": {"name": "Standard_LRS"},
                "properties": {"creationData": {"createOption": "Upload", "uploadSizeBytes": MIN_UPLOAD}}})),
        )
        .await;
    assert_lro_start("PUT disk", &put, &upload["Entries"][0]);
    let recorded_put = recorded_body(&upload, 0);
    assert_same_shape(
        "PUT disk body",
        &put.body,
        &recorded_put,
        &[
            "/name",
            "/location",
            "/sku/name",
            "/properties/creationData/createOption",
            "/properties/creationData/uploadSizeBytes",
            "/properties/provisioningState",
            "/properties/diskSizeBytes",
        ],
    );
    assert_eq!(put.body["properties"]["provisioningState"], "Updating");
    let polls = raw.polls(&put).await;
    assert_eq!(polls.len(), 2, "one InProgress, then Succeeded");
    let in_progress = recorded_body(&upload, 4);
    assert_same_shape(
        "InProgress poll",
        &polls[0].body,
        &in_progress,
        &["/status", "/name", "/startTime", "/endTime", "/properties"],
    );
    let succeeded = recorded_body(&upload, 1);
    assert_same_shape(
        "Succeeded poll",
        &polls[1].body,
        &succeeded,
        &[
            "/status",
            "/name",
            "/startTime",
            "/endTime",
            "/properties/output",
        ],
    );
    let output = &polls[1].body["properties"]["output"];
    assert_same_shape(
        "PUT disk output",
        output,
        &succeeded["properties"]["output"],
        DISK_FIELDS,
    );
    let got = raw.send(reqwest::Method::GET, &disk, None).await;
    assert_eq!(got.status, 200);
    assert_same_shape(
        "upload disk",
        &got.body,
        &recorded_body(&upload, 2),
        DISK_FIELDS,
    );
    assert_eq!(got.body["properties"]["diskState"], "ReadyToUpload");

    // Write access, as a restore's upload: 202 with both headers and no body; the SAS at
    // Location; endGetAccess's Location: 200, empty.
    let begin = raw
        .send(
            reqwest::Method::POST,
            &format!("{disk}/beginGetAccess"),
            Some(json!({"access": "Write", "durationInSeconds": 600})),
        )
        .await;
    assert_lro_start("beginGetAccess", &begin, &grant["Entries"][1]);
    assert_eq!(begin.body, Value::Null);
    let polls = raw.polls(&begin).await;
    let last = &polls.last().unwrap().body;
    assert_same_shape(
        "beginGetAccess poll",
        last,
        &recorded_body(&grant, 2),
        &[
            "/status",
            "/name",
            "/startTime",
            "/endTime",
            "/properties/output/accessSAS",
        ],
    );
    let result = raw
        .send(
            reqwest::Method::GET,
            begin.header("location").unwrap(),
            None,
        )
        .await;
    assert_eq!(result.status, 200);
    assert_same_shape(
        "beginGetAccess result",
        &result.body,
        &recorded_body(&grant, 3),
        &["/accessSAS"],
    );
    let end = raw
        .send(reqwest::Method::POST, &format!("{disk}/endGetAccess"), None)
        .await;
    assert_lro_start("endGetAccess", &end, &grant["Entries"][4]);
    let polls = raw.polls(&end).await;
    assert_same_shape(
        "endGetAccess poll",
        &polls.last().unwrap().body,
        &recorded_body(&grant, 5),
        &["/status", "/name", "/startTime", "/endTime", "/properties"],
    );
    let result = raw
        .send(reqwest::Method::GET, end.header("location").unwrap(), None)
        .await;
    assert_eq!(
        (result.status, &result.body),
        (200, &Value::Null),
        "as recorded: 200, Content-Length 0"
    );
    let got = raw.send(reqwest::Method::GET, &disk, None).await;
    let fields: Vec<&str> = DISK_FIELDS
        .iter()
        .copied()
        .filter(|f| !f.ends_with("uploadSizeBytes"))
        .collect();
    assert_same_shape(
        "uploaded disk",
        &got.body,
        &recorded_body(&grant, 0),
        &fields,
    );
    assert_eq!(got.body["properties"]["diskSizeBytes"], MIN_UPLOAD - 512);

    // A snapshot: 202 with the resource Updating; its poll's output and its GET as recorded.
    let snap = format!("{SUB}/snapshots/conf1-s1");
    let put = raw
        .send(
            reqwest::Method::PUT,
            &snap,
            Some(
                json!({"location": "westeurope", "properties": {"incremental": true,
                "creationData": {"createOption": "Copy", "sourceResourceId": disk}}}),
            ),
        )
        .await;
    assert_lro_start("PUT snapshot", &put, &shot["Entries"][0]);
    assert_eq!(
        put.body["properties"]["provisioningState"],
        recorded_body(&shot, 0)["properties"]["provisioningState"]
    );
    let polls = raw.polls(&put).await;
    assert_same_shape(
        "snapshot InProgress",
        &polls[0].body,
        &recorded_body(&shot, 1),
        &["/status", "/name", "/startTime", "/endTime"],
    );
    let recorded_snapshot = recorded_body(&shot, 3);
    assert_same_shape(
        "snapshot output",
        &polls[1].body["properties"]["output"],
        &recorded_snapshot,
        SNAPSHOT_FIELDS,
    );
    let got = raw.send(reqwest::Method::GET, &snap, None).await;
    assert_same_shape("snapshot", &got.body, &recorded_snapshot, SNAPSHOT_FIELDS);
    let spec = replay::load("arm/spec-examples.json");
    let incremental = &spec["examples"]["Snapshot_GetIncrementalSnapshot"]["body"];
    assert_same_shape(
        "incremental snapshot (spec)",
        &got.body,
        incremental,
        &[
            "/properties/incremental",
            "/properties/creationData/sourceUniqueId",
            "/properties/diskSizeBytes",
            "/properties/completionPercent",
        ],
    );

    // Its export URL, against the spec's Snapshot_BeginGetAccess.
    let arm = emu.client();
    let s1: ResourceId = snap.parse().unwrap();
    let url = arm
        .begin_get_access(&s1, Access::Read, Duration::from_secs(600))
        .await
        .expect("read SAS");
    let spec_url: url::Url = spec["examples"]["Snapshot_BeginGetAccess"]["body"]["accessSAS"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let shape = |u: &url::Url| {
        let q = |k: &str| query(u, k);
        let segments: Vec<String> = u.path_segments().unwrap().map(str::to_string).collect();
        (
            q("sr"),
            q("sp"),
            q("snapshot"),
            q("sig").is_some(),
            q("se").is_some(),
            segments.last().cloned(),
        )
    };
    assert_eq!(shape(url.expose()), shape(&spec_url));
    let recorded_2021 = replay::load("storage/diff-between-snapshots.json");
    assert!(
        recorded_2021["Variables"]["snapshot1SASUri"].as_str().unwrap().contains("sr=bs"),
        "the 2021 recordings still show the older snapshot= form, which snapback also passes through"
    );
    arm.end_get_access(&s1).await.expect("end access");

    let del = raw.send(reqwest::Method::DELETE, &snap, None).await;
    assert_lro_start("DELETE snapshot", &del, &upload["Entries"][3]);
    assert_eq!(del.body, Value::Null);
    let polls = raw.polls(&del).await;
    assert_same_shape(
        "DELETE poll",
        &polls.last().unwrap().body,
        &recorded_body(&upload, 5),
        &["/status", "/name", "/startTime", "/endTime", "/properties"],
    );
}

/// Writes `data` at `offset` of a disk awaiting its upload and ends the upload.
async fn upload(arm: &ArmClient, id: &ResourceId, writes: &[(u64, Vec<u8>)]) {
    let sas = arm
        .begin_get_access(id, Access::Write, Duration::from_secs(600))
        .await
        .expect("write SAS");
    let blobs = SasBlobs::new(None);
    for (offset, data) in writes {
        blobs
            .put_pages(
                &id.to_string(),
                &sas,
                *offset,
                bytes::Bytes::from(data.clone()),
            )
            .await
            .expect("put pages");
    }
    arm.end_get_access(id).await.expect("end upload");
}

fn spec(size_with_footer: u64, sku: &str) -> UploadDiskSpec {
    UploadDiskSpec {
        location: "westeurope".into(),
        upload_size_bytes: size_with_footer,
        sku: Some(sku.into()),
        zone: None,
        tags: Tags::new(),
    }
}

fn id(kind: &str, name: &str) -> ResourceId {
    format!("{SUB}/{kind}/{name}").parse().unwrap()
}

/// Azure's limits, in the emulator and typed by snapback's client: an upload smaller than
/// 20 MiB + 512 and one not a whole number of MiB (plus the footer) are 400 `BadRequest`
/// (the MiB message in Azure's words), an upload disk of 4096-byte sectors is refused
/// while an Empty one reports `logicalSectorSize` 4096 (and its snapshot too); the 8th
/// snapshot of a disk within 5 minutes is 409 `OperationNotAllowed`, and a retried PUT of
/// an existing snapshot is not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_keeps_azure_limits() {
    let az = common::azurite::Azurite::start();
    let emu = ArmEmulator::start_like_azure(&az, &[("EMU_POLLS", "0")]);
    let arm = emu.client();
    let raw = Raw::new(&emu).await;

    for (size, message) in [
        (
            MIN_UPLOAD - 1024 * 1024,
            "must be between 20972032 (20 MiB + 512 bytes for the VHD footer)",
        ),
        (
            MIN_UPLOAD + 512,
            "- 512 bytes for the VHD footer (20972032 in this case) must be a multiple of MiB.",
        ),
    ] {
        let err = arm
            .create_upload_disk(&id("disks", "small"), &spec(size, "Standard_LRS"))
            .await
            .expect_err("refused size");
        assert_eq!(
            (err.kind(), err.status(), err.code()),
            (ArmErrorKind::BadRequest, Some(400), Some("BadRequest")),
            "{err}"
        );
        assert!(err.to_string().contains(message), "{err}");
    }
    let four_k = raw
        .send(
            reqwest::Method::PUT,
            &id("disks", "upload4k").to_string(),
            Some(json!({"location": "westeurope", "properties": {"creationData":
                {"createOption": "Upload", "uploadSizeBytes": MIN_UPLOAD, "logicalSectorSize": 4096}}})),
        )
        .await;
    assert_eq!(
        (four_k.status, four_k.body["error"]["code"].as_str()),
        (400, Some("InvalidParameter"))
    );
    let empty = raw
        .send(
            reqwest::Method::PUT,
            &id("disks", "v2disk").to_string(),
            Some(json!({"location": "westeurope", "sku": {"name": "PremiumV2_LRS"}, "properties":
                {"diskSizeGB": 1, "creationData": {"createOption": "Empty", "logicalSectorSize": 4096}}})),
        )
        .await;
    assert_eq!(empty.status, 202);
    let disk = arm
        .get_disk(&id("disks", "v2disk"))
        .await
        .expect("4096 disk");
    assert_eq!(disk.properties.disk_size_bytes, Some(1 << 30));
    let got = raw
        .send(
            reqwest::Method::GET,
            &id("disks", "v2disk").to_string(),
            None,
        )
        .await;
    assert_eq!(
        got.body["properties"]["creationData"]["logicalSectorSize"],
        4096
    );
    assert_eq!(
        got.body["sku"],
        json!({"name": "PremiumV2_LRS", "tier": "Premium"})
    );

    let source = id("disks", "ratelimited");
    arm.create_upload_disk(&source, &spec(MIN_UPLOAD, "Premium_LRS"))
        .await
        .expect("create");
    upload(&arm, &source, &[]).await;
    let source_disk = arm.get_disk(&source).await.unwrap();
    for i in 0..7 {
        arm.create_incremental_snapshot(
            &id("snapshots", &format!("rl-{i}")),
            &source_disk,
            &Tags::new(),
        )
        .await
        .expect("within 7 per 5 minutes");
    }
    arm.create_incremental_snapshot(&id("snapshots", "rl-0"), &source_disk, &Tags::new())
        .await
        .expect("a retried PUT of an existing snapshot is no new snapshot");
    let err = arm
        .create_incremental_snapshot(&id("snapshots", "rl-7"), &source_disk, &Tags::new())
        .await
        .expect_err("the 8th within 5 minutes");
    assert_eq!(
        (err.kind(), err.status(), err.code()),
        (
            ArmErrorKind::Conflict,
            Some(409),
            Some("OperationNotAllowed")
        ),
        "{err}"
    );
    let snap = raw
        .send(
            reqwest::Method::GET,
            &id("snapshots", "rl-0").to_string(),
            None,
        )
        .await;
    assert_eq!(
        snap.body["properties"]["completionPercent"],
        Value::Null,
        "Premium SSD: readable at once"
    );
}

/// A Premium SSD v2 disk's snapshot is provisioned before its background copy is done:
/// `completionPercent` grows 25 per GET from 0 (what the operation's `Succeeded` poll
/// carries, which the client takes instead of a GET) to 100; its export is refused (409) until then;
/// snapback's managed-disk source waits for 100 before it calls a snapshot taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn premium_v2_snapshots_complete_in_the_background() {
    let az = common::azurite::Azurite::start();
    let emu =
        ArmEmulator::start_like_azure(&az, &[("EMU_POLLS", "0"), ("EMU_COMPLETION_STEP", "25")]);
    let arm = emu.client();
    let disk = id("disks", "v2");
    arm.create_upload_disk(&disk, &spec(MIN_UPLOAD, "PremiumV2_LRS"))
        .await
        .expect("create");
    upload(&arm, &disk, &[(0, vec![7u8; 4096])]).await;
    let source = arm.get_disk(&disk).await.unwrap();
    let s1 = id("snapshots", "v2-s1");
    let snap = arm
        .create_incremental_snapshot(&s1, &source, &Tags::new())
        .await
        .expect("snapshot");
    assert_eq!(
        snap.properties.provisioning_state.as_deref(),
        Some("Succeeded")
    );
    assert!(
        !snap.is_ready(),
        "copy under way: {:?}",
        snap.properties.completion_percent
    );
    let err = arm
        .begin_get_access(&s1, Access::Read, Duration::from_secs(600))
        .await
        .expect_err("not exportable before 100");
    assert_eq!(
        (err.kind(), err.code()),
        (ArmErrorKind::Conflict, Some("OperationNotAllowed")),
        "{err}"
    );
    let mut seen = vec![snap.properties.completion_percent];
    while seen.last() != Some(&Some(100.0)) && seen.len() < 10 {
        seen.push(
            arm.get_snapshot(&s1)
                .await
                .unwrap()
                .properties
                .completion_percent,
        );
    }
    assert_eq!(
        seen,
        [Some(0.0), Some(25.0), Some(50.0), Some(75.0), Some(100.0)]
    );
    arm.begin_get_access(&s1, Access::Read, Duration::from_secs(600))
        .await
        .expect("exportable at 100");
    arm.end_get_access(&s1).await.unwrap();

    use snapback::source::Source;
    let group = snapback::arm::ResourceGroup {
        subscription: "00000000-0000-4000-8000-000000000001".into(),
        name: "rg-conf".into(),
    };
    let source = snapback::source::managed_disk::ManagedDiskSource::new(
        std::sync::Arc::new(emu.client()),
        std::sync::Arc::new(SasBlobs::new(None)),
        disk,
        group,
    )
    .with_ready_poll(Duration::from_millis(20));
    let taken = source
        .take_snapshot("v2", "c2")
        .await
        .expect("taken once copied");
    assert_eq!(taken.size, MIN_UPLOAD - 512);
    let got = arm
        .get_snapshot(&taken.id.as_str().parse().unwrap())
        .await
        .unwrap();
    assert_eq!(got.properties.completion_percent, Some(100.0));
}

/// Per-snapshot exports through snapback's data-plane client: S(1) and S(2) of one disk
/// exported as two blobs, the diff of S(2) against S(1) given by `x-ms-previous-snapshot-url`
/// is exactly the changed and the cleared ranges, reads see each snapshot's bytes; a diff
/// against another disk's export is refused (409); an ended export is gone (404).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_snapshot_exports_diff_and_read_through_sas_blobs() {
    let az = common::azurite::Azurite::start();
    let emu = ArmEmulator::start_like_azure(&az, &[("EMU_POLLS", "0")]);
    let arm = emu.client();
    let blobs = SasBlobs::new(None);
    let disk = id("disks", "exp");
    arm.create_upload_disk(&disk, &spec(MIN_UPLOAD, "Premium_LRS"))
        .await
        .unwrap();
    upload(
        &arm,
        &disk,
        &[(0, vec![1u8; 8192]), (1 << 20, vec![2u8; 4096])],
    )
    .await;
    let source = arm.get_disk(&disk).await.unwrap();
    let s1 = id("snapshots", "exp-s1");
    arm.create_incremental_snapshot(&s1, &source, &Tags::new())
        .await
        .unwrap();
    // The "VM" writes 4 KiB at 64 KiB and clears the page at 1 MiB.
    let live: Value = emu
        .control_get(&format!("/__emulator/disk-sas?id={disk}"))
        .await;
    let live = sas(live["url"].as_str().unwrap());
    blobs
        .put_pages(
            "live",
            &live,
            64 * 1024,
            bytes::Bytes::from(vec![3u8; 4096]),
        )
        .await
        .unwrap();
    let resp = ArmEmulator::http()
        .put(format!("{}&comp=page", live.expose()))
        .header("x-ms-version", "2021-08-06")
        .header("x-ms-page-write", "clear")
        .header(
            "x-ms-range",
            format!("bytes={}-{}", 1 << 20, (1 << 20) + 4095),
        )
        .header("content-length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let s2 = id("snapshots", "exp-s2");
    arm.create_incremental_snapshot(&s2, &source, &Tags::new())
        .await
        .unwrap();

    let e1 = arm
        .begin_get_access(&s1, Access::Read, Duration::from_secs(600))
        .await
        .unwrap();
    let e2 = arm
        .begin_get_access(&s2, Access::Read, Duration::from_secs(600))
        .await
        .unwrap();
    assert_ne!(
        e1.expose().path(),
        e2.expose().path(),
        "one export blob per snapshot"
    );
    for e in [&e1, &e2] {
        assert!(
            e.snapshot().is_none() && e.expose().path().ends_with("/abcd"),
            "{e}"
        );
    }
    let diff = blobs
        .page_ranges(&s2.to_string(), &e2, Some(&e1), &PageListQuery::default())
        .await
        .expect("diff of two exports");
    assert_eq!(
        diff.items,
        [
            PageItem::Changed(ByteRange::new(64 * 1024, 68 * 1024)),
            PageItem::Cleared(ByteRange::new(1 << 20, (1 << 20) + 4096)),
        ]
    );
    let r = ByteRange::new(1 << 20, (1 << 20) + 4096);
    assert_eq!(
        blobs.read("s1", &e1, r).await.unwrap().as_ref(),
        &[2u8; 4096][..]
    );
    assert_eq!(
        blobs.read("s2", &e2, r).await.unwrap().as_ref(),
        &[0u8; 4096][..]
    );

    // Another disk's export is no diff base.
    let other = id("disks", "exp-other");
    arm.create_upload_disk(&other, &spec(MIN_UPLOAD, "Premium_LRS"))
        .await
        .unwrap();
    upload(&arm, &other, &[]).await;
    let o1 = id("snapshots", "exp-other-s1");
    arm.create_incremental_snapshot(&o1, &arm.get_disk(&other).await.unwrap(), &Tags::new())
        .await
        .unwrap();
    let eo = arm
        .begin_get_access(&o1, Access::Read, Duration::from_secs(600))
        .await
        .unwrap();
    let err = blobs
        .page_ranges(&s2.to_string(), &e2, Some(&eo), &PageListQuery::default())
        .await
        .expect_err("another disk's export");
    assert_eq!(
        (err.status, err.code.as_deref()),
        (Some(409), Some("PreviousSnapshotOperationNotSupported")),
        "{err}"
    );

    arm.end_get_access(&s1).await.unwrap();
    let err = blobs.read("s1", &e1, r).await.expect_err("ended export");
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
}

/// Location-only long-running operations (EMU_LOCATION_ONLY=1): the first answer has
/// `Location` and no `Azure-AsyncOperation`; `Location` answers 202 until the end, then
/// the result; snapback's client creates, exports and deletes through them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_only_operations() {
    let az = common::azurite::Azurite::start();
    let emu = ArmEmulator::start_like_azure(&az, &[("EMU_POLLS", "1"), ("EMU_LOCATION_ONLY", "1")]);
    let raw = Raw::new(&emu).await;
    let arm = emu.client();
    let disk = id("disks", "loc");
    let put = raw
        .send(
            reqwest::Method::PUT,
            &disk.to_string(),
            Some(
                json!({"location": "westeurope", "properties": {"creationData":
                {"createOption": "Upload", "uploadSizeBytes": MIN_UPLOAD}}}),
            ),
        )
        .await;
    assert_eq!(put.status, 202);
    assert!(put.header("azure-asyncoperation").is_none());
    let location = put.header("location").expect("Location").to_string();
    let first = raw.send(reqwest::Method::GET, &location, None).await;
    assert_eq!(
        (first.status, first.header("location").is_some()),
        (202, true)
    );
    let done = raw.send(reqwest::Method::GET, &location, None).await;
    assert_eq!(done.status, 200);
    assert_eq!(done.body["properties"]["diskState"], "ReadyToUpload");

    upload(&arm, &disk, &[(0, vec![9u8; 4096])]).await;
    let source = arm.get_disk(&disk).await.unwrap();
    let s1 = id("snapshots", "loc-s1");
    let snap = arm
        .create_incremental_snapshot(&s1, &source, &Tags::new())
        .await
        .expect("snapshot");
    assert!(snap.is_ready());
    let e1 = arm
        .begin_get_access(&s1, Access::Read, Duration::from_secs(600))
        .await
        .expect("export");
    let blobs = SasBlobs::new(None);
    assert_eq!(
        blobs
            .read("s1", &e1, ByteRange::new(0, 4096))
            .await
            .unwrap()
            .as_ref(),
        &[9u8; 4096][..]
    );
    arm.end_get_access(&s1).await.expect("end");
    arm.delete_snapshot(&s1).await.expect("delete snapshot");
    arm.delete_disk(&disk).await.expect("delete disk");
    let state = emu.control_get("/__emulator/state").await;
    assert_eq!(
        (
            state["disks"].as_array().unwrap().len(),
            state["snapshots"].as_array().unwrap().len()
        ),
        (0, 0)
    );
}

/// Disk types (docs/managed-disks.md, "Disk types"): a Premium SSD v2 disk created without
/// `logicalSectorSize` reports Azure's default 4096 and is refused by snapback before any
/// snapshot is made, naming the type and the VHDX reason; one of 512-byte sectors is
/// admitted; at most 3 snapshots of a Premium SSD v2 disk may be pending (409
/// `OperationNotAllowed` for the 4th); the emulator refuses what DiskRP documents as invalid
/// (4096 on Premium SSD, Trusted Launch not V2, a customer key without a disk encryption
/// set) and echoes the properties it keeps, on the disk and on its snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_types_are_admitted_or_refused_and_the_emulator_keeps_properties() {
    use snapback::source::Source;
    let az = common::azurite::Azurite::start();
    let emu = ArmEmulator::start_like_azure(
        &az,
        &[
            ("EMU_POLLS", "0"),
            ("EMU_COMPLETION_STEP", "1"),
            ("EMU_SNAPSHOT_RATE_LIMIT", "0"),
        ],
    );
    let arm = emu.client();
    let raw = Raw::new(&emu).await;
    // The PUT, then one poll of its operation (EMU_POLLS=0: it ends there) so that the disk
    // is provisioned.
    let put = |name: &str, body: Value| {
        let (raw, path) = (&raw, id("disks", name).to_string());
        async move {
            let answer = raw.send(reqwest::Method::PUT, &path, Some(body)).await;
            if let Some(op) = answer
                .headers
                .get("azure-asyncoperation")
                .and_then(|v| v.to_str().ok())
            {
                raw.send(reqwest::Method::GET, op, None).await;
            }
            answer
        }
    };
    let v2 = put(
        "v2-default",
        json!({"location": "westeurope", "sku": {"name": "PremiumV2_LRS"}, "properties":
            {"diskSizeGB": 1, "creationData": {"createOption": "Empty"}}}),
    )
    .await;
    assert_eq!(v2.status, 202, "{:?}", v2.body);
    let disk = arm.get_disk(&id("disks", "v2-default")).await.unwrap();
    assert_eq!(
        disk.properties.creation_data.logical_sector_size,
        Some(4096)
    );
    let refusal = snapback::source::managed_disk::props::admit(&disk).expect_err("4096 refused");
    assert_eq!(
        refusal.disk_type,
        "Premium SSD v2 with 4096-byte logical sectors"
    );
    assert!(refusal.reason.contains("VHDX"), "{refusal}");
    let group = snapback::arm::ResourceGroup {
        subscription: "00000000-0000-4000-8000-000000000001".into(),
        name: "rg-conf".into(),
    };
    let source = snapback::source::managed_disk::ManagedDiskSource::new(
        std::sync::Arc::new(emu.client()),
        std::sync::Arc::new(SasBlobs::new(None)),
        id("disks", "v2-default"),
        group,
    );
    let err = source
        .take_snapshot("d", "c1")
        .await
        .expect_err("refused at cycle start");
    assert_eq!(err.kind, snapback::storage::ErrorKind::Unusable, "{err}");
    assert!(err.to_string().contains("Premium SSD v2"), "{err}");
    let state = emu.control_get("/__emulator/state").await;
    assert_eq!(state["snapshots"], json!([]), "nothing made");

    let ok = put(
        "v2-512",
        json!({"location": "westeurope", "sku": {"name": "PremiumV2_LRS"}, "properties":
            {"diskSizeGB": 1, "creationData": {"createOption": "Empty", "logicalSectorSize": 512}}}),
    )
    .await;
    assert_eq!(ok.status, 202);
    let v512 = arm.get_disk(&id("disks", "v2-512")).await.unwrap();
    assert_eq!(
        snapback::source::managed_disk::props::admit(&v512).as_deref(),
        Ok("Premium SSD v2, 512-byte sectors")
    );
    for i in 0..3 {
        let s = arm
            .create_incremental_snapshot(&id("snapshots", &format!("p{i}")), &v512, &Tags::new())
            .await
            .expect("pending snapshot");
        assert!(!s.is_ready(), "{:?}", s.properties.completion_percent);
    }
    let err = arm
        .create_incremental_snapshot(&id("snapshots", "p3"), &v512, &Tags::new())
        .await
        .expect_err("a 4th pending");
    assert_eq!(
        (err.kind(), err.code()),
        (ArmErrorKind::Conflict, Some("OperationNotAllowed")),
        "{err}"
    );

    for (name, body, why) in [
        (
            "p1-4k",
            json!({"location": "westeurope", "sku": {"name": "Premium_LRS"}, "properties":
                {"diskSizeGB": 1, "creationData": {"createOption": "Empty", "logicalSectorSize": 4096}}}),
            "logicalSectorSize 4096",
        ),
        (
            "tl-v1",
            json!({"location": "westeurope", "properties": {"osType": "Windows", "hyperVGeneration": "V1",
                "securityProfile": {"securityType": "TrustedLaunch"},
                "creationData": {"createOption": "Upload", "uploadSizeBytes": MIN_UPLOAD}}}),
            "requires hyperVGeneration V2",
        ),
        (
            "cmk-nodes",
            json!({"location": "westeurope", "properties": {"encryption": {"type": "EncryptionAtRestWithCustomerKey"},
                "creationData": {"createOption": "Upload", "uploadSizeBytes": MIN_UPLOAD}}}),
            "diskEncryptionSetId",
        ),
    ] {
        let got = put(name, body).await;
        assert_eq!(
            (got.status, got.body["error"]["code"].as_str()),
            (400, Some("InvalidParameter")),
            "{name}: {:?}",
            got.body
        );
        assert!(
            got.body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(why)),
            "{name}: {:?}",
            got.body
        );
    }

    let des = format!("{SUB}/diskEncryptionSets/des1");
    let recipe = snapback::arm::DiskRecipe {
        os_type: Some("Linux".into()),
        hyper_v_generation: Some("V2".into()),
        supported_capabilities: Some(snapback::arm::SupportedCapabilities {
            architecture: Some("x64".into()),
            ..Default::default()
        }),
        encryption: Some(snapback::arm::Encryption {
            kind: Some("EncryptionAtRestWithCustomerKey".into()),
            disk_encryption_set_id: Some(des.clone()),
        }),
        tier: Some("P30".into()),
        ..Default::default()
    };
    let os = id("disks", "os-disk");
    arm.create_upload_disk_with(&os, &spec(MIN_UPLOAD, "Premium_LRS"), &recipe)
        .await
        .expect("OS disk");
    upload(&arm, &os, &[]).await;
    let got = arm.get_disk(&os).await.unwrap();
    let rec = snapback::source::managed_disk::props::RecordedDisk::of(&got);
    assert_eq!(
        (
            rec.os_type.as_deref(),
            rec.hyper_v_generation.as_deref(),
            rec.tier.as_deref(),
            rec.logical_sector_size
        ),
        (Some("Linux"), Some("V2"), Some("P30"), 512)
    );
    assert_eq!(
        rec.encryption.and_then(|e| e.disk_encryption_set_id),
        Some(des)
    );
    let snap = arm
        .create_incremental_snapshot(&id("snapshots", "os-s1"), &got, &Tags::new())
        .await
        .unwrap();
    let snap_raw = raw.send(reqwest::Method::GET, &snap.id, None).await.body;
    assert_eq!(snap_raw["properties"]["osType"], "Linux");
    assert_eq!(snap_raw["properties"]["hyperVGeneration"], "V2");
}

/// The spec's Trusted Launch examples: snapback's parser of `beginGetAccess` reads
/// `Disk_BeginGetAccess_WithVMGuestState`'s two SASes (the guest state a page blob
/// `<guid>_vmgs`, `sr=b`, beside `abcd` in the same export container) and finds none in
/// `Snapshot_BeginGetAccess`'s. The emulator answers in those shapes: an
/// `UploadPreparedSecure` disk made from the spec's own request body has the example's
/// fields, its write grant with the flag answers both SASes, a snapshot's read grant with
/// the flag exports the uploaded guest state as `<guid>_vmgs` beside `abcd`, without the
/// flag there is no such field, and `UploadPreparedSecure` without a security type is 400
/// `InvalidParameter`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_launch_grants_and_uploads_have_the_spec_shapes() {
    let spec = replay::load("arm/spec-examples.json");
    let parse = |name: &str| {
        let body = spec["examples"][name]["body"].to_string();
        snapback::arm::client::parse_access("spec", bytes::Bytes::from(body)).expect(name)
    };
    // (host, container, blob name, sr, sp) of a SAS URL.
    let shape = |u: &url::Url| {
        let q = |k: &str| query(u, k);
        let segments: Vec<String> = u.path_segments().unwrap().map(str::to_string).collect();
        let n = segments.len();
        (
            u.host_str().map(str::to_string),
            segments[n - 2].clone(),
            segments[n - 1].clone(),
            q("sr"),
            q("sp"),
        )
    };
    let with = parse("Disk_BeginGetAccess_WithVMGuestState");
    let guest = with
        .guest_state
        .as_ref()
        .expect("securityDataAccessSAS parsed");
    let (disk_host, disk_container, disk_blob, _, _) = shape(with.sas.expose());
    let (host, container, blob, sr, _) = shape(guest.expose());
    assert_eq!(
        (host, container),
        (disk_host, disk_container),
        "same export"
    );
    assert_eq!(disk_blob, "abcd");
    assert!(blob.ends_with("_vmgs"), "{blob}");
    assert_eq!(sr.as_deref(), Some("b"));
    assert!(format!("{guest:?}").contains("sig=REDACTED"));
    assert_eq!(parse("Snapshot_BeginGetAccess").guest_state, None);

    let az = common::azurite::Azurite::start();
    let emu = ArmEmulator::start(&az, &[]);
    let raw = Raw::new(&emu).await;
    let arm = emu.client();
    let example = &spec["examples"]["Disk_Create_FromUploadPreparedSecure"];
    let mut request = example["request"].clone();
    request["properties"]["creationData"]["uploadSizeBytes"] = json!(MIB8 + 512);
    let disk = id("disks", "tl-upload");
    let put = raw
        .send(reqwest::Method::PUT, &disk.to_string(), Some(request))
        .await;
    assert_eq!(put.status, 202, "{:?}", put.body);
    raw.polls(&put).await;
    let got = raw
        .send(reqwest::Method::GET, &disk.to_string(), None)
        .await;
    assert_same_shape(
        "UploadPreparedSecure disk",
        &got.body,
        &example["body"],
        &[
            "/properties/osType",
            "/properties/securityProfile/securityType",
            "/properties/creationData/createOption",
            "/properties/creationData/uploadSizeBytes",
            "/properties/provisioningState",
        ],
    );
    assert_eq!(
        got.body["properties"]["creationData"]["createOption"],
        "UploadPreparedSecure"
    );
    let write = arm
        .begin_get_access_with(&disk, Access::Write, Duration::from_secs(600), true)
        .await
        .expect("write grant");
    let guest_write = write
        .guest_state
        .expect("the write grant's securityDataAccessSAS");
    let vmgs: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    let blobs = SasBlobs::new(None);
    blobs
        .put_pages("tl", &guest_write, 0, bytes::Bytes::from(vmgs.clone()))
        .await
        .expect("upload the guest state");
    arm.end_get_access(&disk).await.expect("end upload");
    let made = arm.get_disk(&disk).await.unwrap();
    let snap = id("snapshots", "tl-s1");
    arm.create_incremental_snapshot(&snap, &made, &Tags::new())
        .await
        .unwrap();
    let read = arm
        .begin_get_access_with(&snap, Access::Read, Duration::from_secs(600), true)
        .await
        .expect("read grant");
    let exported = read
        .guest_state
        .expect("the read grant's securityDataAccessSAS");
    let (_, c1, b1, sr1, sp1) = shape(read.sas.expose());
    let (_, c2, b2, sr2, sp2) = shape(exported.expose());
    assert_eq!((c1, b1.as_str()), (c2, "abcd"), "beside abcd: {b2}");
    assert!(b2.ends_with("_vmgs") && b2.len() == 36 + 5, "{b2}");
    assert_eq!((sr1, sp1), (sr2, sp2));
    let got = blobs
        .read("tl", &exported, ByteRange::new(0, vmgs.len() as u64))
        .await
        .expect("read the exported guest state");
    assert!(got.as_ref() == vmgs.as_slice(), "the uploaded guest state");
    arm.end_get_access(&snap).await.unwrap();
    let plain = arm
        .begin_get_access_with(&snap, Access::Read, Duration::from_secs(600), false)
        .await
        .unwrap();
    assert_eq!(plain.guest_state, None, "no field without the flag");
    arm.end_get_access(&snap).await.unwrap();

    let mut no_type = example["request"].clone();
    no_type["properties"]
        .as_object_mut()
        .unwrap()
        .remove("securityProfile");
    no_type["properties"]["creationData"]["uploadSizeBytes"] = json!(MIB8 + 512);
    let refused = raw
        .send(
            reqwest::Method::PUT,
            &id("disks", "tl-no-type").to_string(),
            Some(no_type),
        )
        .await;
    assert_eq!(
        (refused.status, refused.body["error"]["code"].as_str()),
        (400, Some("InvalidParameter")),
        "{:?}",
        refused.body
    );
}

const MIB8: u64 = 8 << 20;

/// The value of query parameter `k` of `u`.
fn query(u: &url::Url, k: &str) -> Option<String> {
    u.query_pairs()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.into_owned())
}
