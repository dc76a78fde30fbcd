//! A test world: a private Azurite with the accounts `premium` and `backup`, a config file
//! pointing at it, and helpers to build and inspect page blobs with our Azure client.
#![allow(dead_code)]

use super::azurite::{Azurite, BACKUP_KEY, PREMIUM_KEY};
use snapback::azure::AzureBlobs;
use snapback::config::Config;
use snapback::model::pages::{ByteRange, MAX_PUT_BYTES};
use snapback::service::App;
use snapback::storage::{BlobRef, PageBlobs};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const MIB: u64 = 1024 * 1024;

pub struct Fixture {
    pub azurite: Azurite,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// The accounts of `config_path` as first written, always straight to Azurite: what the
    /// test's own client ([`Fixture::blobs`]) uses, even when snapback's config is routed
    /// through a fault proxy ([`Fixture::route_through`]).
    direct_config_path: PathBuf,
}

/// `premium/vhds/<disk>.vhd` → `backup/backups/<disk>` for each disk name.
pub fn disks_toml(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| {
            format!(
                "[[disk]]\nname = \"{n}\"\nsource = \"premium/vhds/{n}.vhd\"\nbackup = \"backup/backups/{n}\"\nconcurrency = 4\n\n"
            )
        })
        .collect()
}

impl Fixture {
    pub fn new(disks: &[&str]) -> Fixture {
        Self::with_extra(&disks_toml(disks))
    }

    /// A config whose disk section is `disks_section` (raw TOML).
    pub fn with_extra(disks_section: &str) -> Fixture {
        Self::start(Azurite::start(), disks_section)
    }

    pub fn start(azurite: Azurite, disks_section: &str) -> Fixture {
        // The same fixed test keys serve every Azurite instance, so a process-wide
        // environment is safe even with tests running in parallel.
        std::env::set_var("SB_TEST_PREMIUM_KEY", PREMIUM_KEY);
        std::env::set_var("SB_TEST_BACKUP_KEY", BACKUP_KEY);
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("snapback.toml");
        let text = format!(
            "state_dir = \"{}\"\n\n[accounts.premium]\nendpoint = \"{}\"\nshared_key_env = \"SB_TEST_PREMIUM_KEY\"\n\n[accounts.backup]\nendpoint = \"{}\"\nshared_key_env = \"SB_TEST_BACKUP_KEY\"\n\n{}",
            dir.path().join("state").display(),
            azurite.endpoint("premium"),
            azurite.endpoint("backup"),
            disks_section
        );
        std::fs::write(&config_path, &text).expect("write config");
        let direct_config_path = dir.path().join("direct.toml");
        std::fs::write(&direct_config_path, text).expect("write config");
        Fixture {
            azurite,
            dir,
            config_path,
            direct_config_path,
        }
    }

    /// Points snapback's config at `proxy_port` (a fault proxy in front of this Azurite)
    /// instead of Azurite itself; the test's own client stays direct.
    pub fn route_through(&self, proxy_port: u16) {
        let text = std::fs::read_to_string(&self.config_path).expect("read config");
        let direct = format!("http://127.0.0.1:{}/", self.azurite.port());
        let proxied = format!("http://127.0.0.1:{proxy_port}/");
        std::fs::write(&self.config_path, text.replace(&direct, &proxied)).expect("write config");
    }

    pub fn config(&self) -> Config {
        Config::load(&self.config_path).expect("test config is valid")
    }

    pub fn blobs(&self) -> Arc<AzureBlobs> {
        let direct = Config::load(&self.direct_config_path).expect("test config is valid");
        Arc::new(AzureBlobs::new(direct.accounts.values()))
    }

    pub fn app(&self) -> App {
        App::open(self.config()).expect("app")
    }

    pub fn source(&self, disk: &str) -> BlobRef {
        BlobRef::new("premium", "vhds", &format!("{disk}.vhd"))
    }

    pub fn backup(&self, disk: &str) -> BlobRef {
        BlobRef::new("backup", "backups", disk)
    }

    /// Runs the snapback binary with this fixture's config.
    pub fn snapback(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run snapback")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        snapback_command(&self.config_path, args)
    }
}

/// The snapback binary with `config` (another installation's or host's, say), the test keys
/// and info logs.
pub fn snapback_command(config: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_snapback"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("SB_TEST_PREMIUM_KEY", PREMIUM_KEY)
        .env("SB_TEST_BACKUP_KEY", BACKUP_KEY)
        .env("SNAPBACK_LOG", "info");
    cmd
}

/// Creates a page blob of `size` bytes (container too).
pub async fn create_disk(blobs: &dyn PageBlobs, blob: &BlobRef, size: u64) {
    blobs.ensure_container(blob).await.expect("container");
    blobs
        .create_page_blob(blob, size, &Default::default())
        .await
        .expect("create page blob");
}

/// Writes `data` at `offset` in pieces of at most 4 MiB.
pub async fn write(blobs: &dyn PageBlobs, blob: &BlobRef, offset: u64, data: &[u8]) {
    for (i, chunk) in data.chunks(MAX_PUT_BYTES as usize).enumerate() {
        let at = offset + i as u64 * MAX_PUT_BYTES;
        blobs
            .put_pages(blob, at, bytes::Bytes::copy_from_slice(chunk), None)
            .await
            .expect("put pages");
    }
}

/// The whole content of a blob or snapshot.
pub async fn content(blobs: &dyn PageBlobs, blob: &BlobRef, snapshot: Option<&str>) -> Vec<u8> {
    let size = blobs
        .properties(blob, snapshot)
        .await
        .expect("properties")
        .unwrap_or_else(|| panic!("{blob} {snapshot:?} exists"))
        .size;
    let mut out = Vec::with_capacity(size as usize);
    let mut at = 0;
    while at < size {
        let end = (at + MAX_PUT_BYTES).min(size);
        out.extend_from_slice(
            &blobs
                .read(blob, snapshot, ByteRange::new(at, end))
                .await
                .expect("read"),
        );
        at = end;
    }
    out
}

/// Snapshots of a blob carrying `snapback_disk` metadata.
pub async fn tagged_snapshots(blobs: &dyn PageBlobs, blob: &BlobRef) -> Vec<String> {
    blobs
        .list_snapshots(blob)
        .await
        .expect("list snapshots")
        .into_iter()
        .filter(|s| s.metadata.contains_key("snapback_disk"))
        .map(|s| s.snapshot)
        .collect()
}

/// A small deterministic PRNG (xorshift), so failures reproduce from the printed seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Runs `cmd` to completion, collecting its output. Past `limit` it is killed and what it
/// printed is the `Err`: a command that loops forever fails its test instead of hanging it.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Result<Output, Output> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn snapback");
    // Drained while waiting, so a chatty child never blocks on a full pipe.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = pipe.read_to_end(&mut b);
            b
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout piped")));
    let err = drain(Box::new(child.stderr.take().expect("stderr piped")));
    let started = Instant::now();
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break (status, false);
        }
        if started.elapsed() > limit {
            child.kill().expect("kill");
            break (child.wait().expect("reap"), true);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    };
    if timed_out {
        Err(output)
    } else {
        Ok(output)
    }
}

/// An account SAS (version 2019-12-12 layout) for the blob service with permissions `sp`,
/// signed with `key` (base64), valid until 2099.
pub fn account_sas(account: &str, key: &str, sp: &str) -> String {
    let (sv, ss, srt, se) = ("2019-12-12", "b", "sco", "2099-01-01T00:00:00Z");
    let to_sign = format!("{account}\n{sp}\n{ss}\n{srt}\n\n{se}\n\n\n{sv}\n");
    let sig = azure_core::hmac::hmac_sha256(&to_sign, &key.to_string().into()).unwrap();
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sv", sv)
        .append_pair("ss", ss)
        .append_pair("srt", srt)
        .append_pair("sp", sp)
        .append_pair("se", se)
        .append_pair("sig", &sig)
        .finish()
}

/// The test's own SDK client for `blob`, signed with the account's Shared Key: for requests
/// snapback's storage traits do not make (breaking a lease, writing a lock blob by hand).
pub fn sdk_blob_client(fx: &Fixture, blob: &BlobRef) -> azure_storage_blob::BlobClient {
    use azure_core::http::ClientOptions;
    use snapback::azure::shared_key::{AccountKey, SharedKeyPolicy};
    let mut client_options = ClientOptions::default();
    client_options.per_try_policies.push(SharedKeyPolicy::new(
        &blob.account,
        AccountKey::from_base64(&fx.azurite.key(&blob.account)).expect("test key"),
    ));
    let service = azure_storage_blob::BlobServiceClient::new(
        fx.azurite
            .endpoint(&blob.account)
            .parse()
            .expect("endpoint URL"),
        None,
        Some(azure_storage_blob::BlobServiceClientOptions {
            client_options,
            ..Default::default()
        }),
    )
    .expect("blob service client");
    service
        .blob_container_client(&blob.container)
        .blob_client(&blob.blob)
}

/// Breaks the lease on `blob` at once (Lease Blob `x-ms-lease-action: break`,
/// `x-ms-lease-break-period: 0`): what the expiry of a dead owner's lease does, without
/// waiting for it.
pub async fn break_lease(fx: &Fixture, blob: &BlobRef) {
    let options = azure_storage_blob::models::BlobClientBreakLeaseOptions {
        break_period: Some(0),
        ..Default::default()
    };
    sdk_blob_client(fx, blob)
        .break_lease(Some(options))
        .await
        .expect("break the lease");
}
