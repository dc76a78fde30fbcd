//! The local demo behind `scripts/demo`: starts a private Azurite (the pinned emulator, with
//! the extension that gives it Azure's diff semantics), creates a 64 MiB demo disk, runs three
//! backup cycles with the real `snapback` binary while the "VM" keeps writing, then shows
//! `snapback list` and `snapback status`. Everything lives under `./.snapback-demo/` and
//! Azurite stops when the demo ends.

#[path = "../tests/common/azurite.rs"]
mod azurite;

use azurite::{Azurite, BACKUP_KEY, PREMIUM_KEY};
use snapback::azure::AzureBlobs;
use snapback::blobs::{BlobRef, PageBlobs};
use snapback::config::Config;
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
    println!("== starting Azurite (premium and backup accounts on 127.0.0.1)");
    let az = Azurite::start();
    let config_path = work.join("snapback.toml");
    std::fs::write(
        &config_path,
        format!(
            "state_dir = \"{state}\"\n\n[accounts.premium]\nendpoint = \"{p}\"\nshared_key_env = \"PREMIUM_KEY\"\n\n\
             [accounts.backup]\nendpoint = \"{b}\"\nshared_key_env = \"BACKUP_KEY\"\n\n\
             [[disk]]\nname = \"demo\"\nsource = \"premium/vhds/demo.vhd\"\nbackup = \"backup/backups/demo\"\nschedule = \"0 */12 * * *\"\n",
            state = work.join("state").display(),
            p = az.endpoint("premium"),
            b = az.endpoint("backup"),
        ),
    )?;
    std::env::set_var("PREMIUM_KEY", PREMIUM_KEY);
    std::env::set_var("BACKUP_KEY", BACKUP_KEY);
    println!("== config: {}", config_path.display());

    let config = Config::load(&config_path)?;
    let blobs = AzureBlobs::new(config.accounts.values());
    let disk = BlobRef::new("premium", "vhds", "demo.vhd");
    blobs.ensure_container(&disk).await?;
    blobs.create_page_blob(&disk, 64 * MIB).await?;
    write_random(&blobs, &disk, 0, 8 * MIB, 1).await?;
    println!("== demo disk premium/vhds/demo.vhd: 64 MiB, 8 MiB written");

    let exe = snapback_exe()?;
    for cycle in 1..=3 {
        println!("\n== cycle {cycle}: snapback backup demo");
        run(&exe, &config_path, &["backup", "demo"])?;
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
        }
    }
    println!("\n== snapback list demo");
    run(&exe, &config_path, &["list", "demo"])?;
    println!("\n== snapback status");
    run(&exe, &config_path, &["status"])?;
    println!(
        "\nDone. Azurite stops now; state and config stay in {}.",
        work.display()
    );
    Ok(())
}

async fn write_random(
    blobs: &AzureBlobs,
    disk: &BlobRef,
    at: u64,
    len: u64,
    seed: u64,
) -> anyhow::Result<()> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for (i, chunk) in data.chunks(4 * MIB as usize).enumerate() {
        blobs
            .put_pages(
                disk,
                at + i as u64 * 4 * MIB,
                bytes::Bytes::copy_from_slice(chunk),
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
