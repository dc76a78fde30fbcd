//! The request budget on the real pipeline: writes to Azurite through the fault proxy's
//! rate limiter (503 ServerBusy above the blob's requests/s) are paced by the throttle policy
//! to the configured budget, so almost none are refused, and every byte lands.

#[path = "common/azurite.rs"]
mod azurite;
#[path = "common/faultproxy.rs"]
mod faultproxy;
#[path = "common/http.rs"]
mod http;
#[path = "common/process.rs"]
mod process;

use azurite::{Azurite, BACKUP_KEY};
use bytes::Bytes;
use faultproxy::{FaultProxy, RateLimit};
use futures::StreamExt;
use snapback::azure::AzureBlobs;
use snapback::config::Config;
use snapback::model::pages::ByteRange;
use snapback::storage::{BlobRef, PageBlobs};
use std::time::{Duration, Instant};

const WRITES: u64 = 50;
const WRITE: u64 = 4096;
const BLOB_RPS: u32 = 20;

fn client(dir: &std::path::Path, endpoint: &str, throttle: &str) -> AzureBlobs {
    let text = format!(
        "state_dir = \"{}\"\n[accounts.backup]\nendpoint = \"{endpoint}\"\nshared_key_env = \"THROTTLE_TEST_BACKUP_KEY\"\n[accounts.backup.throttle]\n{throttle}\n",
        dir.join("state").display()
    );
    let config = Config::parse(&text, &dir.join("snapback.toml")).expect("config");
    AzureBlobs::new(config.accounts.values())
}

fn payload(j: u64) -> Bytes {
    Bytes::from(vec![(j % 251) as u8 + 1; WRITE as usize])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_paces_writes_to_the_blob_limit() {
    std::env::set_var("THROTTLE_TEST_BACKUP_KEY", BACKUP_KEY);
    let az = Azurite::start();
    let proxy = FaultProxy::start(az.port());
    let dir = tempfile::tempdir().expect("tempdir");
    let direct = client(dir.path(), &az.endpoint("backup"), "enabled = false");
    let paced = client(
        dir.path(),
        &proxy.endpoint("backup"),
        &format!("blob_max_requests_per_second = {BLOB_RPS}"),
    );
    let blob = BlobRef::new("backup", "throttle", "b");
    direct.ensure_container(&blob).await.expect("container");
    direct
        .create_page_blob(&blob, WRITES * WRITE, &Default::default())
        .await
        .expect("blob");
    proxy.rate_limit(Some(RateLimit {
        blob_requests_per_s: Some(BLOB_RPS),
        ..Default::default()
    }));

    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(0..WRITES)
        .map(|j| {
            let (paced, blob) = (&paced, &blob);
            async move { paced.put_pages(blob, j * WRITE, payload(j), None).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let stats = proxy.rate_stats();

    for r in results {
        r.expect("write");
    }
    // 50 requests at 20/s: the first goes at once, the rest one per 50 ms.
    let floor = Duration::from_millis(50 * (WRITES - 1) * 9 / 10);
    assert!(elapsed >= floor, "{WRITES} writes took only {elapsed:?}");
    let sent = stats.served + stats.throttled;
    assert!(
        stats.throttled * 20 <= sent,
        "{} of {sent} requests throttled (more than 5 %)",
        stats.throttled
    );
    let all = direct
        .read(&blob, None, ByteRange::new(0, WRITES * WRITE))
        .await
        .expect("read back");
    for j in 0..WRITES {
        let at = (j * WRITE) as usize;
        assert_eq!(all.slice(at..at + WRITE as usize), payload(j), "write {j}");
    }
}
