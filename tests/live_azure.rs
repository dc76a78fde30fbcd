//! The live-Azure tier (issue 17, item 8): snapback's binary against a real, throwaway
//! subscription. Opt-in: without every `SNAPBACK_LIVE_AZURE_*` variable below the test
//! prints why it is skipped and passes. How to run it and what it costs: docs/testing.md,
//! "Live Azure tier".
//!
//! Per disk type — Standard_LRS and Premium_LRS (512-byte sectors, created for upload and
//! written through their upload SAS), PremiumV2_LRS with 4096-byte sectors (created Empty:
//! without a VM nothing can write to it, so its content is zeros) and, with
//! `SNAPBACK_LIVE_AZURE_ULTRA=1`, UltraSSD_LRS — the test runs, through the CLI like
//! tests/managed.rs: a seed, a second (incremental) cycle, `verify`, a restore to a new
//! managed disk, and compares the restored disk with the source through read SAS exports.
//!
//! Everything it creates is named `sblive-<run>-…` and the disks carry the tag
//! `snapback-live-run=<run>`; snapback's snapshots are `sblive-<run>-…-sb-<cycle>` in the
//! same group, backups live in the container `sblive-<run>`. Every run first sweeps
//! whatever an earlier run left (crashed or killed included), then sweeps its own at the end,
//! also when an assertion failed.

use azure_core::credentials::{Secret, TokenCredential};
use snapback::arm::{
    Access, ArmClient, ArmErrorKind, ArmOptions, ResourceGroup, ResourceId, ResourceKind, Tags,
    UploadDiskSpec,
};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The variables a maintainer sets (all required except the last two).
const VARS: &[&str] = &[
    "SNAPBACK_LIVE_AZURE_SUBSCRIPTION", // GUID of the throwaway subscription
    "SNAPBACK_LIVE_AZURE_RESOURCE_GROUP", // an existing, dedicated resource group
    "SNAPBACK_LIVE_AZURE_LOCATION",     // e.g. swedencentral (PremiumV2 available)
    "SNAPBACK_LIVE_AZURE_TENANT_ID",
    "SNAPBACK_LIVE_AZURE_CLIENT_ID",
    "SNAPBACK_LIVE_AZURE_CLIENT_SECRET", // the service principal's secret
    "SNAPBACK_LIVE_AZURE_BACKUP_ACCOUNT", // storage account name (backups)
    "SNAPBACK_LIVE_AZURE_BACKUP_SAS",    // account SAS on it: ss=b srt=sco sp=rwdlac
];
// Optional: SNAPBACK_LIVE_AZURE_ZONE (PremiumV2/Ultra in zonal regions),
// SNAPBACK_LIVE_AZURE_ULTRA=1 (include UltraSSD_LRS).

const ARM: &str = "https://management.azure.com";
const API: &str = "2024-03-02";
const RUN_TAG: &str = "snapback-live-run";
const PREFIX: &str = "sblive-";
const MIB: u64 = 1024 * 1024;

struct Live {
    subscription: String,
    group: String,
    location: String,
    zone: Option<String>,
    ultra: bool,
    tenant: String,
    client_id: String,
    account: String,
    credential: Arc<dyn TokenCredential>,
    http: reqwest::Client,
}

/// One disk type under test.
struct Case {
    name: &'static str,
    sku: &'static str,
    sector: u32,
    /// `Some(size)`: an Upload disk of `size` bytes, written by the test; `None`: Empty.
    upload: Option<u64>,
    /// Size of an Empty disk, GiB.
    gib: u64,
}

const CASES: &[Case] = &[
    Case {
        name: "std",
        sku: "Standard_LRS",
        sector: 512,
        upload: Some(32 * MIB),
        gib: 0,
    },
    Case {
        name: "prem",
        sku: "Premium_LRS",
        sector: 512,
        upload: Some(32 * MIB),
        gib: 0,
    },
    Case {
        name: "v2",
        sku: "PremiumV2_LRS",
        sector: 4096,
        upload: None,
        gib: 1,
    },
    Case {
        name: "ultra",
        sku: "UltraSSD_LRS",
        sector: 4096,
        upload: None,
        gib: 4,
    },
];

impl Live {
    /// None (and why) unless every variable is set.
    fn from_env() -> Result<Live, String> {
        let missing: Vec<&str> = VARS
            .iter()
            .copied()
            .filter(|v| std::env::var(v).map(|s| s.is_empty()).unwrap_or(true))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "live Azure tier skipped: {} not set (docs/testing.md, \"Live Azure tier\")",
                missing.join(", ")
            ));
        }
        let var = |n: &str| std::env::var(n).unwrap_or_default();
        snapback::azure::tls::install_provider();
        let credential = azure_identity::ClientSecretCredential::new(
            &var("SNAPBACK_LIVE_AZURE_TENANT_ID"),
            var("SNAPBACK_LIVE_AZURE_CLIENT_ID"),
            Secret::new(var("SNAPBACK_LIVE_AZURE_CLIENT_SECRET")),
            None,
        )
        .map_err(|e| format!("the service principal's credential: {e}"))?;
        Ok(Live {
            subscription: var("SNAPBACK_LIVE_AZURE_SUBSCRIPTION"),
            group: var("SNAPBACK_LIVE_AZURE_RESOURCE_GROUP"),
            location: var("SNAPBACK_LIVE_AZURE_LOCATION"),
            zone: std::env::var("SNAPBACK_LIVE_AZURE_ZONE")
                .ok()
                .filter(|z| !z.is_empty()),
            ultra: var("SNAPBACK_LIVE_AZURE_ULTRA") == "1",
            tenant: var("SNAPBACK_LIVE_AZURE_TENANT_ID"),
            client_id: var("SNAPBACK_LIVE_AZURE_CLIENT_ID"),
            account: var("SNAPBACK_LIVE_AZURE_BACKUP_ACCOUNT"),
            credential,
            http: reqwest::Client::new(),
        })
    }

    fn arm(&self) -> ArmClient {
        ArmClient::new(
            ARM.parse().expect("ARM endpoint"),
            self.credential.clone(),
            ArmOptions::default(),
        )
    }

    fn rg(&self) -> ResourceGroup {
        ResourceGroup {
            subscription: self.subscription.clone(),
            name: self.group.clone(),
        }
    }

    fn id(&self, kind: ResourceKind, name: &str) -> ResourceId {
        ResourceId::new(self.rg(), kind, name).expect("resource id")
    }

    async fn token(&self) -> String {
        let t = self
            .credential
            .get_token(&[&format!("{ARM}/.default")], None)
            .await
            .expect("ARM token");
        t.token.secret().to_string()
    }

    /// A raw ARM request (what `ArmClient` has no operation for: listing by tag, Empty
    /// disks); the JSON answer.
    async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let url = format!(
            "{ARM}{path}{}api-version={API}",
            if path.contains('?') { "&" } else { "?" }
        );
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(self.token().await);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("ARM answers");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    /// Every disk and snapshot of the group this tier made (by tag or name), oldest run
    /// included.
    async fn leftovers(&self, kind: &str) -> Vec<ResourceId> {
        let path = format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Compute/{kind}",
            self.subscription, self.group
        );
        let mut out = Vec::new();
        let mut page = self.raw(reqwest::Method::GET, &path, None).await;
        loop {
            for r in page["value"].as_array().cloned().unwrap_or_default() {
                let name = r["name"].as_str().unwrap_or_default();
                let tagged = r["tags"].get(RUN_TAG).is_some();
                if tagged || name.starts_with(PREFIX) {
                    if let Ok(id) = r["id"].as_str().unwrap_or_default().parse() {
                        out.push(id);
                    }
                }
            }
            let Some(next) = page["nextLink"].as_str().map(str::to_string) else {
                break;
            };
            let resp = self
                .http
                .get(&next)
                .bearer_auth(self.token().await)
                .send()
                .await
                .expect("next page");
            page = serde_json::from_slice(&resp.bytes().await.expect("next page"))
                .expect("next page JSON");
        }
        out
    }

    /// Removes everything an earlier or this run left: access ended, snapshots, disks, the
    /// backup containers. Failures are printed, not fatal: the next run tries again.
    async fn sweep(&self) {
        let arm = self.arm();
        for kind in ["snapshots", "disks"] {
            for id in self.leftovers(kind).await {
                let _ = arm.end_get_access(&id).await;
                let r = match id.kind {
                    ResourceKind::Snapshot => arm.delete_snapshot(&id).await,
                    _ => arm.delete_disk(&id).await,
                };
                match r {
                    Ok(()) => eprintln!("swept {id}"),
                    Err(e) => eprintln!("sweep: {id}: {e}"),
                }
            }
        }
        let sas = std::env::var("SNAPBACK_LIVE_AZURE_BACKUP_SAS").unwrap_or_default();
        let sas = sas.trim_start_matches('?');
        let base = format!("https://{}.blob.core.windows.net", self.account);
        let list = self
            .http
            .get(format!("{base}/?comp=list&prefix={PREFIX}&{sas}"))
            .header("x-ms-version", "2021-08-06")
            .send()
            .await;
        let Ok(list) = list else { return };
        let xml = list.text().await.unwrap_or_default();
        for name in xml
            .split("<Name>")
            .skip(1)
            .filter_map(|s| s.split("</Name>").next())
        {
            let r = self
                .http
                .delete(format!("{base}/{name}?restype=container&{sas}"))
                .header("x-ms-version", "2021-08-06")
                .send()
                .await;
            eprintln!("swept container {name}: {:?}", r.map(|r| r.status()));
        }
    }

    /// The disk of `case`, created and (for an upload disk) written; its bytes' checksum
    /// is what the restored disk is compared with.
    async fn make_disk(&self, run: &str, case: &Case) -> ResourceId {
        let arm = self.arm();
        let id = self.id(ResourceKind::Disk, &format!("{PREFIX}{run}-{}", case.name));
        let tags: Tags = [(RUN_TAG.to_string(), run.to_string())].into();
        if let Some(size) = case.upload {
            let spec = UploadDiskSpec {
                location: self.location.clone(),
                upload_size_bytes: size + 512,
                sku: Some(case.sku.into()),
                zone: None,
                tags,
            };
            arm.create_upload_disk(&id, &spec)
                .await
                .expect("create upload disk");
            let sas = arm
                .begin_get_access(&id, Access::Write, Duration::from_secs(3600))
                .await
                .expect("write SAS");
            // 4 MiB of pattern at three places (start, middle, end of the data) and the
            // fixed-VHD footer Azure expects at `size`.
            let mut seed = 0x5eed_u64 ^ size;
            for at in [0, size / 2, size - 4 * MIB] {
                let data: Vec<u8> = (0..4 * MIB)
                    .map(|_| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        (seed >> 56) as u8
                    })
                    .collect();
                self.put_page(sas.expose().as_str(), at, data).await;
            }
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let footer =
                snapback::restore::vhd::fixed_footer(size, unix, *b"snapback-live-ti").to_vec();
            self.put_page(sas.expose().as_str(), size, footer).await;
            arm.end_get_access(&id).await.expect("end upload");
        } else {
            let mut body = serde_json::json!({
                "location": self.location,
                "sku": { "name": case.sku },
                "tags": { RUN_TAG: run },
                "properties": {
                    "creationData": { "createOption": "Empty", "logicalSectorSize": case.sector },
                    "diskSizeGB": case.gib,
                },
            });
            if let Some(z) = &self.zone {
                body["zones"] = serde_json::json!([z]);
            }
            self.raw(reqwest::Method::PUT, &id.to_string(), Some(body))
                .await;
            let started = Instant::now();
            loop {
                match arm.get_disk(&id).await {
                    Ok(d) if d.properties.provisioning_state.as_deref() == Some("Succeeded") => {
                        break
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == ArmErrorKind::NotFound => {}
                    Err(e) => panic!("{id}: {e}"),
                }
                assert!(
                    started.elapsed() < Duration::from_secs(900),
                    "{id} not provisioned"
                );
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
        id
    }

    async fn put_page(&self, sas: &str, at: u64, data: Vec<u8>) {
        let len = data.len() as u64;
        let resp = self
            .http
            .put(format!("{sas}&comp=page"))
            .header("x-ms-version", "2021-08-06")
            .header("x-ms-page-write", "update")
            .header("x-ms-range", format!("bytes={at}-{}", at + len - 1))
            .body(data)
            .send()
            .await
            .expect("put page");
        assert_eq!(resp.status().as_u16(), 201, "put page at {at}");
    }

    /// `len` bytes at `at` of a disk, through a read export (granted and ended here).
    async fn read_disk(&self, id: &ResourceId, at: u64, len: u64) -> Vec<u8> {
        let arm = self.arm();
        let sas = arm
            .begin_get_access(id, Access::Read, Duration::from_secs(3600))
            .await
            .expect("read SAS");
        let resp = self
            .http
            .get(sas.expose().as_str())
            .header("x-ms-version", "2021-08-06")
            .header("x-ms-range", format!("bytes={at}-{}", at + len - 1))
            .send()
            .await
            .expect("read export");
        assert!(resp.status().is_success(), "read {id}: {}", resp.status());
        let bytes = resp.bytes().await.expect("export body").to_vec();
        arm.end_get_access(id).await.expect("end read");
        bytes
    }
}

fn config(
    live: &Live,
    run: &str,
    dir: &std::path::Path,
    disks: &[(&Case, ResourceId)],
) -> std::path::PathBuf {
    let mut text = format!(
        "state_dir = \"{}\"\n\n[accounts.backup]\nendpoint = \"https://{}.blob.core.windows.net\"\nsas_token_env = \"SNAPBACK_LIVE_AZURE_BACKUP_SAS\"\n\n[azure]\ntenant_id = \"{}\"\nclient_id = \"{}\"\nclient_secret_env = \"SNAPBACK_LIVE_AZURE_CLIENT_SECRET\"\n",
        dir.join("state").display(),
        live.account,
        live.tenant,
        live.client_id
    );
    for (case, id) in disks {
        text += &format!(
            "\n[[disk]]\nname = \"{}\"\nmanaged_disk = \"{id}\"\nsnapshot_resource_group = \"{}\"\nbackup = \"backup/{PREFIX}{run}/{}\"\n",
            case.name, live.group, case.name
        );
    }
    let path = dir.join("snapback.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn snapback(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_snapback"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env("SNAPBACK_LOG", "info")
        .output()
        .expect("run snapback");
    eprintln!(
        "snapback {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for text in [&out.stdout, &out.stderr] {
        assert!(
            !String::from_utf8_lossy(text).contains("sig="),
            "a SAS signature in the output"
        );
    }
    out
}

async fn run_cases(live: &Live, run: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut disks = Vec::new();
    for case in CASES
        .iter()
        .filter(|c| c.sku != "UltraSSD_LRS" || live.ultra)
    {
        let started = Instant::now();
        let id = live.make_disk(run, case).await;
        eprintln!("{}: {} made in {:.0?}", case.name, id, started.elapsed());
        disks.push((case, id));
    }
    let cfg = config(live, run, dir.path(), &disks);
    for (case, disk) in &disks {
        for cycle in 0..2 {
            let started = Instant::now();
            let out = snapback(&cfg, &["backup", case.name]);
            assert!(out.status.success(), "{}: cycle {cycle} failed", case.name);
            eprintln!("{}: cycle {cycle} in {:.0?}", case.name, started.elapsed());
        }
        let out = snapback(&cfg, &["verify", case.name]);
        assert!(out.status.success(), "{}: verify failed", case.name);

        let list = snapback(&cfg, &["list", case.name, "--json"]);
        let points: serde_json::Value = serde_json::from_slice(&list.stdout).expect("list --json");
        let newest = points
            .as_array()
            .and_then(|p| p.last())
            .expect("a restore point")["snapshot"]
            .as_str()
            .expect("restore point id")
            .to_string();
        let target = live.id(
            ResourceKind::Disk,
            &format!("{PREFIX}{run}-{}-restored", case.name),
        );
        let out = snapback(
            &cfg,
            &[
                "restore",
                case.name,
                "--snapshot",
                &newest,
                "--to-managed-disk",
                &target.to_string(),
                "--sku",
                "Standard_LRS",
            ],
        );
        assert!(out.status.success(), "{}: restore failed", case.name);

        // The restored disk equals the source where the test wrote and at both ends.
        let size = live
            .arm()
            .get_disk(disk)
            .await
            .expect("source disk")
            .properties
            .disk_size_bytes
            .expect("size");
        for at in [0, size / 2, size - 4 * MIB] {
            let a = live.read_disk(disk, at, 4 * MIB).await;
            let b = live.read_disk(&target, at, 4 * MIB).await;
            assert!(
                a == b,
                "{}: restored disk differs from the source at {at}",
                case.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_azure_seed_cycles_restore_verify_per_disk_type() {
    let live = match Live::from_env() {
        Ok(l) => Arc::new(l),
        Err(why) => {
            // Printed (not only captured) so that a run without --nocapture says why too.
            println!("{why}");
            eprintln!("{why}");
            return;
        }
    };
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    eprintln!(
        "live run {run} in {}/{} ({})",
        live.subscription, live.group, live.location
    );
    live.sweep().await;
    // The cases run in a task of their own so that the sweep runs after a failed assertion.
    let body = {
        let live = live.clone();
        let run = run.clone();
        tokio::spawn(async move { run_cases(&live, &run).await })
    };
    let outcome = body.await;
    live.sweep().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
