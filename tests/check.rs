//! `snapback check` against Azurite: every operation passes with the right keys; a wrong key
//! or a read-only SAS gives failing rows naming the cause and what is missing (exit 1); and
//! whatever happens, the accounts hold exactly what they held before.

mod common;

use azure_core::http::ClientOptions;
use azure_storage_blob::models::{BlobContainerClientListBlobsOptions, ListBlobsIncludeItem};
use azure_storage_blob::{BlobServiceClient, BlobServiceClientOptions};
use common::azurite::{BACKUP_KEY, PREMIUM_KEY};
use common::fixture::{account_sas, create_disk, write, Fixture, MIB};
use futures::TryStreamExt;
use snapback::azure::shared_key::{AccountKey, SharedKeyPolicy};
use snapback::storage::{BlobRef, PageBlobs};

/// Every container, blob and snapshot of both accounts, as `account/container/blob@snapshot`.
async fn inventory(fx: &Fixture) -> Vec<String> {
    let mut out = Vec::new();
    for (account, key) in [("premium", PREMIUM_KEY), ("backup", BACKUP_KEY)] {
        let mut client_options = ClientOptions::default();
        client_options.per_try_policies.push(SharedKeyPolicy::new(
            account,
            AccountKey::from_base64(key).unwrap(),
        ));
        let service = BlobServiceClient::new(
            fx.azurite.endpoint(account).parse().unwrap(),
            None,
            Some(BlobServiceClientOptions {
                client_options,
                ..Default::default()
            }),
        )
        .unwrap();
        let mut containers = service.list_containers(None).unwrap().into_pages();
        while let Some(page) = containers.try_next().await.unwrap() {
            for c in page.into_model().unwrap().container_items {
                let name = c.name.unwrap_or_default();
                out.push(format!("{account}/{name}/"));
                let options = BlobContainerClientListBlobsOptions {
                    include: Some(vec![ListBlobsIncludeItem::Snapshots]),
                    ..Default::default()
                };
                let container = service.blob_container_client(&name);
                let mut blobs = container.list_blobs(Some(options)).unwrap().into_pages();
                while let Some(page) = blobs.try_next().await.unwrap() {
                    for b in page.into_model().unwrap().blob_items {
                        out.push(format!(
                            "{account}/{name}/{}@{}",
                            b.name.unwrap_or_default(),
                            b.snapshot.unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }
    out.sort();
    out
}

/// Disk `d1` with server copy, so the check also tries Put Page From URL.
async fn fixture_with_disk() -> Fixture {
    let fx = Fixture::with_extra(&format!(
        "{}copy_mode = \"server\"\n",
        common::fixture::disks_toml(&["d1"])
    ));
    let blobs = fx.blobs();
    create_disk(blobs.as_ref(), &fx.source("d1"), MIB).await;
    write(blobs.as_ref(), &fx.source("d1"), 4096, &[3u8; 4096]).await;
    fx
}

fn parse_rows(out: &std::process::Output) -> Vec<serde_json::Value> {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn row<'a>(rows: &'a [serde_json::Value], op: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["operation"] == op)
        .unwrap_or_else(|| panic!("no row {op}: {rows:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_passes_and_nothing_is_left_behind() {
    let fx = fixture_with_disk().await;
    let before = inventory(&fx).await;
    assert!(
        !before.iter().any(|b| b.starts_with("backup/")),
        "{before:?}"
    );

    let out = fx.snapback(&["check"]);
    let table = String::from_utf8_lossy(&out.stdout);
    println!("{table}"); // shown with --nocapture
    assert_eq!(
        out.status.code(),
        Some(0),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for op in [
        "source: snapshot",
        "source: diff (prevsnapshot)",
        "backup: write (put/clear/resize)",
        "backup: lease",
        "copy source -> backup",
        "source: delete own snapshot",
        "clean up scratch objects",
    ] {
        let line = table
            .lines()
            .find(|l| l.contains(op))
            .unwrap_or_else(|| panic!("no row {op}:\n{table}"));
        assert!(line.starts_with("d1") && line.contains(" pass"), "{line}");
    }
    assert!(
        table.contains("16 operation(s) checked, 0 not permitted"),
        "{table}"
    );
    // The backup container did not exist: check made it for its scratch blob and removed it.
    assert_eq!(inventory(&fx).await, before);

    let out = fx.snapback(&["check", "d1", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let rows = parse_rows(&out);
    assert_eq!(rows.len(), 16);
    // Azurite reports its SKU (not premium): a note, no warning.
    let sku = row(&rows, "source-account-sku");
    assert!(
        sku["cause"]
            .as_str()
            .is_some_and(|c| c.starts_with("account 'premium' is ") && !c.contains("warning")),
        "{sku}"
    );
    assert!(rows.iter().all(|r| r["outcome"] == "pass"), "{rows:?}");
    assert_eq!(inventory(&fx).await, before);

    // A failure midway, with the scratch blob and snapshots made: cleaned up all the same.
    fx.azurite.inject_fault("409", 1, "comp=lease");
    let out = fx.snapback(&["check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let failed = parse_rows(&out);
    let lease = row(&failed, "backup-lease");
    assert_eq!(lease["outcome"], "fail", "{lease}");
    assert!(lease["cause"].as_str().unwrap().contains("409"), "{lease}");
    assert_eq!(row(&failed, "backup-snapshot")["outcome"], "pass");
    assert_eq!(row(&failed, "cleanup")["outcome"], "pass");
    assert_eq!(inventory(&fx).await, before);

    let out = fx.snapback(&["check", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown disk 'nope'"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_backup_key_fails_the_backup_rows_and_cleans_the_source() {
    let fx = fixture_with_disk().await;
    let before = inventory(&fx).await;
    let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleS0wMDAwMDAwMA==";
    let out = fx
        .command(&["check", "--json"])
        .env("SB_TEST_BACKUP_KEY", wrong)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let rows = parse_rows(&out);
    for op in [
        "source-snapshot",
        "source-diff",
        "source-read-snapshot",
        "source-delete-snapshot",
    ] {
        assert_eq!(row(&rows, op)["outcome"], "pass", "{op}: {rows:?}");
    }
    let create = row(&rows, "backup-create");
    assert_eq!(create["outcome"], "fail");
    let cause = create["cause"].as_str().unwrap();
    assert!(
        cause.contains("authentication failed for account 'backup' on container backup/backups")
            && cause.contains("(403 AuthorizationFailure)"),
        "{create}"
    );
    assert!(
        create["missing"]
            .as_str()
            .unwrap()
            .contains("use a valid key of storage account 'backup' in $SB_TEST_BACKUP_KEY"),
        "{create}"
    );
    assert_eq!(row(&rows, "backup-lease")["outcome"], "skipped");
    assert_eq!(row(&rows, "cleanup")["outcome"], "pass");
    assert_eq!(
        inventory(&fx).await,
        before,
        "the source's scratch snapshots are gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_sas_names_the_missing_permission() {
    let fx = fixture_with_disk().await;
    // The container exists (made with the key), so the SAS is what the writes meet.
    fx.blobs()
        .ensure_container(&BlobRef::new("backup", "backups", "x"))
        .await
        .unwrap();
    let text = std::fs::read_to_string(&fx.config_path).unwrap();
    let text = text.replace(
        "shared_key_env = \"SB_TEST_BACKUP_KEY\"",
        "sas_token_env = \"SB_TEST_BACKUP_SAS\"",
    );
    std::fs::write(&fx.config_path, text).unwrap();
    let before = inventory(&fx).await;

    let out = fx
        .command(&["check"])
        .env(
            "SB_TEST_BACKUP_SAS",
            account_sas("backup", BACKUP_KEY, "rl"),
        )
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    println!("{table}"); // shown with --nocapture
    assert_eq!(out.status.code(), Some(1), "{table}");
    let create = table
        .lines()
        .find(|l| l.contains("backup: create blob"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(create.contains("FAIL"), "{create}");
    assert!(
        create.contains("the SAS in $SB_TEST_BACKUP_SAS lacks 'c' or 'w'"),
        "{create}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("backup: lease") && l.contains("skip")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("source: diff") && l.contains("pass")),
        "{table}"
    );
    assert_eq!(inventory(&fx).await, before);
}
