//! The local demo behind `scripts/demo`: starts a private Azurite (the pinned emulator, with
//! the extension that gives it Azure's diff semantics) and the tests' ARM emulator, creates a
//! 64 MiB demo page blob and a 64 MiB managed disk, runs three backup cycles of both with the
//! real `snapback` binary while the "VMs" keep writing, then shows `snapback list` and
//! `snapback status`. Everything lives under `./.snapback-demo/`; Azurite and the emulator
//! stop when the demo ends.

#[path = "../tests/common/arm.rs"]
mod arm;
#[path = "../tests/common/azurite.rs"]
mod azurite;
#[path = "../tests/common/http.rs"]
mod http;
#[path = "../tests/common/process.rs"]
mod process;

use arm::{ArmEmulator, CLIENT_ID, CLIENT_SECRET, SUBSCRIPTION, TENANT};
use azurite::{Azurite, BACKUP_KEY, PREMIUM_KEY};
use snapback::arm::{Access, ResourceId, Tags, UploadDiskSpec};
use snapback::azure::AzureBlobs;
use snapback::config::Config;
use snapback::storage::{BlobRef, PageBlobs};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1024 * 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let work = PathBuf::from(".snapback-demo");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    println!("== starting Azurite (premium and backup accounts on 127.0.0.1) and the ARM emulator");
    let az = Azurite::start();
    let emu = ArmEmulator::start(&az, &[]);
    let md: ResourceId = format!(
        "/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-demo/providers/Microsoft.Compute/disks/demo-md"
    )
    .parse()?;
    let config_path = work.join("snapback.toml");
    std::fs::write(
        &config_path,
        format!(
            "state_dir = \"{state}\"\n\n[accounts.premium]\nendpoint = \"{p}\"\nshared_key_env = \"PREMIUM_KEY\"\n\n\
             [accounts.backup]\nendpoint = \"{b}\"\nshared_key_env = \"BACKUP_KEY\"\n\n\
             [azure]\narm_endpoint = \"{e}\"\nauthority_host = \"{e}\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_env = \"ARM_SECRET\"\n\n\
             [[disk]]\nname = \"demo\"\nsource = \"premium/vhds/demo.vhd\"\nbackup = \"backup/backups/demo\"\nschedule = \"0 */12 * * *\"\n\n\
             [[disk]]\nname = \"demo-md\"\nmanaged_disk = \"{md}\"\nbackup = \"backup/backups/demo-md\"\nschedule = \"0 */12 * * *\"\n",
            state = work.join("state").display(),
            p = az.endpoint("premium"),
            b = az.endpoint("backup"),
            e = emu.endpoint(),
        ),
    )?;
    std::env::set_var("ARM_SECRET", CLIENT_SECRET);
    // The emulator's test certificate, for the snapback binary's HTTP client.
    std::env::set_var(
        "SSL_CERT_FILE",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/arm/emulator-cert.pem"),
    );
    std::env::set_var("PREMIUM_KEY", PREMIUM_KEY);
    std::env::set_var("BACKUP_KEY", BACKUP_KEY);
    println!("== config: {}", config_path.display());

    let config = Config::load(&config_path)?;
    let blobs = AzureBlobs::new(config.accounts.values());
    let disk = BlobRef::new("premium", "vhds", "demo.vhd");
    blobs.ensure_container(&disk).await?;
    blobs
        .create_page_blob(&disk, 64 * MIB, &Default::default())
        .await?;
    write_random(&blobs, &disk, 0, 8 * MIB, 1).await?;
    println!("== demo disk premium/vhds/demo.vhd: 64 MiB, 8 MiB written");
    let client = emu.client();
    let spec = UploadDiskSpec {
        location: "westeurope".into(),
        upload_size_bytes: 64 * MIB + 512,
        sku: Some("Premium_LRS".into()),
        zone: None,
        tags: Tags::new(),
    };
    client.create_upload_disk(&md, &spec).await?;
    client
        .begin_get_access(&md, Access::Write, std::time::Duration::from_secs(600))
        .await?;
    client.end_get_access(&md).await?;
    vm_write(&emu, &md, 0, 8 * MIB, 2).await?;
    println!("== managed disk {md}: 64 MiB, 8 MiB written");

    let exe = snapback_exe()?;
    for cycle in 1..=3 {
        println!("\n== cycle {cycle}: snapback backup demo demo-md");
        run(&exe, &config_path, &["backup", "demo", "demo-md"])?;
        // The VM keeps writing: a few scattered 64 KiB writes before the next cycle.
        for i in 0..8u64 {
            write_random(
                &blobs,
                &disk,
                (cycle * 8 + i) * MIB / 2,
                64 * 1024,
                cycle * 100 + i,
            )
            .await?;
            vm_write(
                &emu,
                &md,
                (cycle * 8 + i) * MIB / 2,
                64 * 1024,
                cycle * 200 + i,
            )
            .await?;
        }
    }
    println!("\n== snapback list demo");
    run(&exe, &config_path, &["list", "demo"])?;
    println!("\n== snapback list demo-md");
    run(&exe, &config_path, &["list", "demo-md"])?;
    let state = emu.control_get("/__emulator/state").await;
    println!(
        "\n== left on the emulator: {} snapshot resource(s), {} active SAS",
        state["snapshots"].as_array().map_or(0, Vec::len),
        state["activeAccess"].as_array().map_or(0, Vec::len)
    );
    println!("\n== snapback status");
    run(&exe, &config_path, &["status"])?;
    println!(
        "\nDone. Azurite stops now; state and config stay in {}.",
        work.display()
    );
    Ok(())
}

/// The managed disk's "VM" writes `len` pseudo-random bytes at `at`, through the emulator's
/// read-write SAS on the live disk.
async fn vm_write(
    emu: &ArmEmulator,
    id: &ResourceId,
    at: u64,
    len: u64,
    seed: u64,
) -> anyhow::Result<()> {
    let sas = emu
        .control_get(&format!("/__emulator/disk-sas?id={id}"))
        .await;
    let sas = sas["url"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no disk SAS"))?;
    let data = random_bytes(len, seed);
    for (i, chunk) in data.chunks(4 * MIB as usize).enumerate() {
        let start = at + i as u64 * 4 * MIB;
        let resp = ArmEmulator::http()
            .put(format!("{sas}&comp=page"))
            .header("x-ms-version", "2021-08-06")
            .header("x-ms-page-write", "update")
            .header(
                "x-ms-range",
                format!("bytes={start}-{}", start + chunk.len() as u64 - 1),
            )
            .body(chunk.to_vec())
            .send()
            .await?;
        anyhow::ensure!(resp.status().is_success(), "VM write: {}", resp.status());
    }
    Ok(())
}

fn random_bytes(len: u64, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn write_random(
    blobs: &AzureBlobs,
    disk: &BlobRef,
    at: u64,
    len: u64,
    seed: u64,
) -> anyhow::Result<()> {
    let data = random_bytes(len, seed);
    for (i, chunk) in data.chunks(4 * MIB as usize).enumerate() {
        blobs
            .put_pages(
                disk,
                at + i as u64 * 4 * MIB,
                bytes::Bytes::copy_from_slice(chunk),
                None,
            )
            .await?;
    }
    Ok(())
}

/// The `snapback` binary built next to this example (`target/<profile>/snapback`).
fn snapback_exe() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow::anyhow!("no target dir"))?;
    let exe = dir.join("snapback");
    anyhow::ensure!(
        exe.exists(),
        "{} not found: run `cargo build --release` first (scripts/demo does)",
        exe.display()
    );
    Ok(exe)
}

fn run(exe: &Path, config: &Path, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(exe)
        .arg("--config")
        .arg(config)
        .args(args)
        .status()?;
    anyhow::ensure!(status.success(), "snapback {} failed", args.join(" "));
    Ok(())
}
