//! ARM emulator harness: starts `tests/azurite/arm-emulator.js` (HTTPS on 127.0.0.1, a
//! free port) against a running [`Azurite`], and stops it on drop (it also exits by itself
//! when the test process is gone).
//!
//! The emulator's certificate (`tests/arm/emulator-cert.pem`, test only, for 127.0.0.1) is
//! trusted by [`ArmEmulator::transport`] and [`ArmEmulator::http`] only: azure_identity and
//! azure_core's bearer policy accept nothing but https, so the emulator speaks it.
#![allow(dead_code)]

use super::azurite::{Azurite, MD_ACCOUNT, MD_KEY};
use super::process::{tests_path, NodeProcess};
use azure_core::http::Transport;
use snapback::arm::{
    Access, ArmClient, ArmOptions, DiskRecipe, PollPolicy, ResourceId, RetryPolicy, UploadDiskSpec,
};
use snapback::config::azure::AzureConfig;
use std::sync::Arc;
use std::time::Duration;

pub const TENANT: &str = "snapback-test-tenant";
pub const CLIENT_ID: &str = "snapback-test-client";
/// Test-only client secret the emulator's token endpoint accepts.
pub const CLIENT_SECRET: &str = "snapback-test-client-secret-not-a-secret";
/// Test-only federated token (workload identity's token file) the emulator accepts.
pub const FEDERATED_TOKEN: &str = "snapback-test-federated-token-not-a-secret";
/// Test-only `IDENTITY_HEADER` of the emulator's managed identity endpoint (`/msi/token`).
pub const IDENTITY_HEADER: &str = "snapback-test-identity-header";
/// The variable the tests' `[azure]` sections name for the client secret.
pub const SECRET_ENV: &str = "SB_TEST_ARM_SECRET";
/// A subscription id (a GUID, as ARM's are).
pub const SUBSCRIPTION: &str = "00000000-0000-4000-8000-000000000001";

const MARKER: &str = "arm-emulator listening on ";

/// A running emulator.
pub struct ArmEmulator {
    node: NodeProcess,
    endpoint: String,
}

impl ArmEmulator {
    /// Starts an emulator on `azurite`'s md account; `env` adds settings such as
    /// `("EMU_POLLS", "2")` or `("EMU_RETRY_AFTER", "1")`.
    ///
    /// Two of Azure's limits are lifted for the tests of small disks and quick cycles
    /// (`env` may set them back): uploads of any size from 1 KiB (Azure: at least
    /// 20 MiB + 512, whole MiB) and any number of snapshots per disk (Azure: 7 per
    /// 5 minutes). [`Self::start_like_azure`] keeps both; tests/conformance.rs checks them.
    pub fn start(azurite: &Azurite, env: &[(&str, &str)]) -> ArmEmulator {
        let mut all = vec![("EMU_SMALL_UPLOADS", "1"), ("EMU_SNAPSHOT_RATE_LIMIT", "0")];
        all.extend_from_slice(env);
        Self::start_like_azure(azurite, &all)
    }

    /// Starts an emulator with every limit it knows of Azure's (see [`Self::start`]).
    pub fn start_like_azure(azurite: &Azurite, env: &[(&str, &str)]) -> ArmEmulator {
        let (node, listening) =
            NodeProcess::start("ARM emulator", MARKER, Duration::from_secs(20), |cmd| {
                cmd.arg(tests_path("azurite/arm-emulator.js"))
                    .env(
                        "EMU_AZURITE",
                        format!("http://127.0.0.1:{}", azurite.port()),
                    )
                    .env("EMU_MD_ACCOUNT", MD_ACCOUNT)
                    .env("EMU_MD_KEY", MD_KEY)
                    .env("EMU_TLS_CERT", tests_path("arm/emulator-cert.pem"))
                    .env("EMU_TLS_KEY", tests_path("arm/emulator-key.pem"))
                    .env("EMU_TENANT", TENANT)
                    .env("EMU_CLIENT_ID", CLIENT_ID)
                    .env("EMU_CLIENT_SECRET", CLIENT_SECRET)
                    .env("EMU_FEDERATED_TOKEN", FEDERATED_TOKEN)
                    .env("EMU_IDENTITY_HEADER", IDENTITY_HEADER)
                    .envs(env.iter().copied());
            });
        ArmEmulator {
            node,
            endpoint: listening.trim().to_string(),
        }
    }

    /// `https://127.0.0.1:PORT` (ARM endpoint and authority host at once).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn stderr(&self) -> String {
        self.node.stderr()
    }

    /// An HTTP client that trusts only the emulator's certificate (plain http to Azurite
    /// works too).
    pub fn http() -> reqwest::Client {
        snapback::azure::tls::install_provider();
        let pem = std::fs::read(tests_path("arm/emulator-cert.pem")).expect("read test cert");
        let cert = reqwest::Certificate::from_pem(&pem).expect("test cert is PEM");
        reqwest::Client::builder()
            .tls_certs_only([cert])
            .no_proxy()
            .build()
            .expect("reqwest client")
    }

    /// The same client as azure_core's transport (ARM and token requests).
    pub fn transport() -> Transport {
        Transport::new(Arc::new(Self::http()))
    }

    /// An `[azure]` table pointing at this emulator with the client-secret credential,
    /// the secret in `secret_env` (which the caller sets).
    pub fn azure_config(&self, secret_env: &str) -> AzureConfig {
        self.azure_config_with(&format!(
            "tenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_env = \"{secret_env}\""
        ))
    }

    /// An `[azure]` table pointing at this emulator with `credential_lines` (TOML) as the
    /// credential.
    pub fn azure_config_with(&self, credential_lines: &str) -> AzureConfig {
        let text = format!(
            "arm_endpoint = \"{e}\"\nauthority_host = \"{e}\"\n{credential_lines}\n",
            e = self.endpoint
        );
        AzureConfig::from_table(&text.parse().expect("TOML")).expect("valid [azure]")
    }

    /// Options for tests: fast retries, polls at the emulator's `Retry-After`.
    pub fn options() -> ArmOptions {
        ArmOptions {
            transport: Some(Self::transport()),
            retry: RetryPolicy {
                max_retries: 3,
                base_delay: Duration::from_millis(20),
                max_delay: Duration::from_secs(5),
            },
            poll: PollPolicy {
                default_interval: Duration::from_millis(50),
                timeout: Duration::from_secs(60),
            },
        }
    }

    /// A client signed in through azure_identity's `ClientSecretCredential` against the
    /// emulator's token endpoint.
    pub fn client(&self) -> ArmClient {
        // One fixed secret for every emulator, so a process-wide variable is safe.
        std::env::set_var(SECRET_ENV, CLIENT_SECRET);
        ArmClient::from_config(&self.azure_config(SECRET_ENV), Self::options()).expect("ARM client")
    }

    /// The config lines of one managed disk `disk1` backed up from `disk` through this
    /// emulator, signed in with the test client secret (read from [`SECRET_ENV`]).
    pub fn disk_section(&self, disk: &ResourceId, extra_disk_lines: &str) -> String {
        format!(
            "[azure]\narm_endpoint = \"{e}\"\nauthority_host = \"{e}\"\ntenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_env = \"{SECRET_ENV}\"\n\n[[disk]]\nname = \"disk1\"\nmanaged_disk = \"{disk}\"\nsnapshot_resource_group = \"rg-snapshots\"\nbackup = \"backup/backups/disk1\"\n{extra_disk_lines}\n",
            e = self.endpoint(),
        )
    }

    /// Makes `disk` as a restore makes one (Upload, write SAS, end access): a disk of
    /// `spec.upload_size_bytes - 512` zero bytes with `recipe`'s properties.
    pub async fn make_disk(&self, disk: &ResourceId, spec: &UploadDiskSpec, recipe: &DiskRecipe) {
        let arm = self.client();
        arm.create_upload_disk_with(disk, spec, recipe)
            .await
            .expect("create the disk");
        arm.begin_get_access(disk, Access::Write, Duration::from_secs(600))
            .await
            .expect("write access to the disk");
        arm.end_get_access(disk)
            .await
            .expect("end access to the disk");
    }

    /// Asserts what a finished cycle leaves on the emulator: one snapshot resource (the
    /// newest cycle's `S(n)`) and no SAS granted. Returns that snapshot's resource id.
    pub async fn assert_clean(&self, ctx: &str) -> String {
        let state = self.control_get("/__emulator/state").await;
        let snaps = state["snapshots"].as_array().expect("snapshots");
        assert_eq!(
            snaps.len(),
            1,
            "{ctx}: one snapshot resource left: {snaps:?}"
        );
        assert_eq!(
            state["activeAccess"]
                .as_array()
                .expect("activeAccess")
                .len(),
            0,
            "{ctx}: no SAS left granted: {}",
            state["activeAccess"]
        );
        snaps[0]["id"].as_str().expect("snapshot id").to_string()
    }

    /// Lets a `snapback` process reach this emulator as a config from
    /// [`Self::disk_section`] asks: the emulator's test certificate trusted
    /// (rustls-platform-verifier reads SSL_CERT_FILE on Linux) and the client secret set.
    pub fn sign_in(cmd: &mut std::process::Command) {
        cmd.env("SSL_CERT_FILE", tests_path("arm/emulator-cert.pem"))
            .env(SECRET_ENV, CLIENT_SECRET);
    }

    /// GET a control route; the JSON answer.
    pub async fn control_get(&self, path: &str) -> serde_json::Value {
        let body = self.control(reqwest::Method::GET, path).await;
        serde_json::from_slice(&body).expect("JSON")
    }

    /// A read-write SAS on a disk's live blob (the "VM" writing its disk) or, with `vmgs`,
    /// on its VM guest state blob (a Trusted Launch disk's vTPM and UEFI state).
    pub async fn disk_sas(&self, disk: &str, vmgs: bool) -> String {
        let part = if vmgs { "&part=vmgs" } else { "" };
        let v = self
            .control_get(&format!("/__emulator/disk-sas?id={disk}{part}"))
            .await;
        v["url"].as_str().expect("disk SAS").to_string()
    }

    /// Put Page of `data` (page aligned, at most 4 MiB) at `offset` through the SAS `url`.
    pub async fn sas_write(url: &str, offset: u64, data: &[u8]) {
        let resp = Self::http()
            .put(format!("{url}&comp=page"))
            .header("x-ms-version", "2021-08-06")
            .header("x-ms-page-write", "update")
            .header(
                "x-ms-range",
                format!("bytes={offset}-{}", offset + data.len() as u64 - 1),
            )
            .header("content-length", data.len().to_string())
            .body(data.to_vec())
            .send()
            .await
            .expect("put page");
        assert_eq!(
            resp.status().as_u16(),
            201,
            "put page {offset}+{}",
            data.len()
        );
    }

    /// The first `len` bytes of the blob behind the SAS `url`.
    pub async fn sas_read(url: &str, len: u64) -> Vec<u8> {
        let resp = Self::http()
            .get(url)
            .header("x-ms-version", "2021-08-06")
            .header("x-ms-range", format!("bytes=0-{}", len - 1))
            .send()
            .await
            .expect("get blob");
        assert!(resp.status().is_success(), "read: {}", resp.status());
        resp.bytes().await.expect("body").to_vec()
    }

    /// POST a control route (e.g. arm a fault).
    pub async fn control_post(&self, path_and_query: &str) {
        self.control(reqwest::Method::POST, path_and_query).await;
    }

    /// A control request that must succeed; its body.
    async fn control(&self, method: reqwest::Method, path_and_query: &str) -> bytes::Bytes {
        let resp = Self::http()
            .request(method, format!("{}{path_and_query}", self.endpoint))
            .send()
            .await
            .expect("control route answers");
        assert!(
            resp.status().is_success(),
            "{path_and_query}: {}",
            resp.status()
        );
        resp.bytes().await.expect("body")
    }
}
