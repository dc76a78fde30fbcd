//! A state database written by the previous schema (tests/fixtures/state-v1.db, made by
//! snapback at schema version 1) is migrated on open, and work resumes from it: the
//! unfinished cycles continue where they stopped, `status` reads it, and the chain goes on.

use snapback::config::Config;
use snapback::config::DiskSource;
use snapback::cycle::runner::{DiskSpec, Runner};
use snapback::model::record::{CycleKind, Phase, PhaseName};
use snapback::model::{Clock, SnapshotId, Timestamp};
use snapback::service::App;
use snapback::state::{StateError, StateStore};
use snapback::storage::fake::MemBlobs;
use snapback::storage::{BlobRef, PageBlobs};
use std::path::Path;
use std::sync::Arc;

struct FixedClock;
impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        snapback::model::from_unix(1_764_000_000)
    }
}

fn disk(n: &str) -> DiskSpec {
    DiskSpec {
        name: n.into(),
        source: DiskSource::Blob(BlobRef::new("premium", "vhds", &format!("{n}.vhd"))),
        backup: BlobRef::new("backup", "backups", n),
        concurrency: 3,
        copy_mode: Default::default(),
    }
}

fn id(s: &str) -> SnapshotId {
    SnapshotId::new(s)
}

/// A copy of the fixture in a fresh state directory.
fn fixture_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v1.db"),
        dir.path().join("snapback.db"),
    )
    .unwrap();
    dir
}

fn runner<'a>(blobs: &'a MemBlobs, store: &'a StateStore, d: &'a DiskSpec) -> Runner<'a> {
    let mut r = Runner::new(blobs, store, &FixedClock, d);
    r.copy_poll = (
        std::time::Duration::from_millis(1),
        std::time::Duration::from_millis(1),
    );
    r
}

/// The storage the fixture's database describes: the same operations, in the same order,
/// on the in-memory store (whose snapshot ids count its operations), with a scratch state.
async fn fixture_world() -> MemBlobs {
    let blobs = MemBlobs::new();
    let scratch = StateStore::open_in_memory().unwrap();
    let d = disk("d");
    blobs
        .create_page_blob(d.source.blob().unwrap(), 64 * 512, &Default::default())
        .await
        .unwrap();
    blobs.write(d.source.blob().unwrap(), 0, &[1u8; 4096]);
    runner(&blobs, &scratch, &d).run_cycle().await.unwrap();
    blobs.write(d.source.blob().unwrap(), 512, &[3u8; 1024]);
    runner(&blobs, &scratch, &d).run_cycle().await.unwrap();
    blobs.write(d.source.blob().unwrap(), 40 * 512, &[4u8; 512]);
    let r = runner(&blobs, &scratch, &d);
    let mut rec = r.open_or_resume().await.unwrap();
    while rec.phase.name() != PhaseName::Apply {
        r.step(&mut rec).await.unwrap();
    }
    let s = disk("s");
    blobs
        .create_page_blob(s.source.blob().unwrap(), 16 * 512, &Default::default())
        .await
        .unwrap();
    blobs.write(s.source.blob().unwrap(), 0, &[7u8; 512]);
    let r = runner(&blobs, &scratch, &s);
    let mut rec = r.open_or_resume().await.unwrap();
    while !matches!(
        rec.phase,
        Phase::Copy {
            copy_id: Some(_),
            ..
        }
    ) {
        r.step(&mut rec).await.unwrap();
    }
    blobs
}

#[test]
fn a_version_1_database_is_migrated_with_every_record_typed() {
    let dir = fixture_dir();
    let store = StateStore::open(dir.path()).unwrap();
    let version: i32 = rusqlite::Connection::open(dir.path().join("snapback.db"))
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);

    let open = store.open_cycle("d").unwrap().unwrap();
    assert_eq!(open.id, 3);
    assert_eq!(open.tag, "de55a221fdff742f");
    assert_eq!(open.kind, CycleKind::Incremental);
    assert_eq!(
        open.phase,
        Phase::Apply {
            source: id("2026-01-01T00:00:00.0000011Z"),
            size: 32768,
            base: Some(id("2026-01-01T00:00:00.0000007Z")),
            applied_upto: 4096,
            backup_etag: None,
        }
    );
    let seed = store.open_cycle("s").unwrap().unwrap();
    assert_eq!(
        seed.phase,
        Phase::Copy {
            source: id("2026-01-01T00:00:00.0000014Z"),
            size: 8192,
            copy_id: Some("copy-15".into()),
        }
    );
    let last = store.last_finished_cycle("d").unwrap().unwrap();
    assert_eq!(
        last.phase,
        Phase::Done {
            source: id("2026-01-01T00:00:00.0000007Z"),
            backup_snapshot: id("2026-01-01T00:00:00.0000009Z"),
            backup_etag: "\"8\"".into(),
            finished_at: 1_764_000_000,
        }
    );
    assert_eq!(store.restore_points("d").unwrap().len(), 2);
    // Reopening a migrated database changes nothing.
    drop(store);
    let again = StateStore::open(dir.path()).unwrap();
    assert_eq!(again.open_cycle("d").unwrap().unwrap(), open);
}

#[tokio::test]
async fn work_resumes_from_a_migrated_database() {
    let blobs = fixture_world().await;
    let dir = fixture_dir();
    let store = StateStore::open(dir.path()).unwrap();
    for name in ["d", "s"] {
        let d = disk(name);
        let rec = runner(&blobs, &store, &d).run_cycle().await.unwrap();
        let (b, s) = rec.phase.restore_point().unwrap();
        assert_eq!(
            blobs.content(&d.backup, Some(b.as_str())),
            blobs.content(d.source.blob().unwrap(), Some(s.as_str())),
            "disk {name}: the resumed cycle's restore point equals its source snapshot"
        );
        assert_eq!(
            blobs.snapshot_ids(d.source.blob().unwrap()),
            vec![s.as_str().to_string()],
            "disk {name}: one source snapshot left"
        );
    }
    // The resumed cycle of d is the one the old database had open, not a new one.
    let d_last = store.last_finished_cycle("d").unwrap().unwrap();
    assert_eq!((d_last.id, d_last.tag.as_str()), (3, "de55a221fdff742f"));
    assert_eq!(store.restore_points("d").unwrap().len(), 3);
    // The next cycle is incremental from there.
    let d = disk("d");
    blobs.write(d.source.blob().unwrap(), 0, &[9u8; 512]);
    let rec = runner(&blobs, &store, &d).run_cycle().await.unwrap();
    assert_eq!(rec.kind, CycleKind::Incremental);
    assert_eq!(rec.stats.bytes_written, 512);
}

#[test]
fn status_reads_a_migrated_database() {
    let dir = fixture_dir();
    let config = Config::parse(
        &format!(
            "state_dir = {:?}\n[accounts.premium]\nendpoint = \"http://127.0.0.1:1/premium\"\n\
             shared_key_env = \"SB_UNUSED\"\n[accounts.backup]\n\
             endpoint = \"http://127.0.0.1:1/backup\"\nshared_key_env = \"SB_UNUSED\"\n\
             [[disk]]\nname = \"d\"\nsource = \"premium/vhds/d.vhd\"\nbackup = \"backup/backups/d\"\n\
             [[disk]]\nname = \"s\"\nsource = \"premium/vhds/s.vhd\"\nbackup = \"backup/backups/s\"\n",
            dir.path()
        ),
        Path::new("test.toml"),
    )
    .unwrap();
    let app = App::with_blobs(config, Arc::new(MemBlobs::new())).unwrap();
    let status = app.status().unwrap();
    assert_eq!(
        status.iter().map(|s| s.phase.as_str()).collect::<Vec<_>>(),
        ["apply", "copy"]
    );
    let last = status[0].last_cycle.as_ref().unwrap();
    assert_eq!(last.kind, "incremental");
    assert_eq!(
        last.backup_snapshot.as_deref(),
        Some("2026-01-01T00:00:00.0000009Z")
    );
    assert_eq!(
        status[0].last_success.as_deref(),
        Some("2025-11-24T16:00:00Z")
    );
}

/// A record that lacks what its phase needs (here: a prune without `S(n)`, which version 1
/// could store) is not migrated into a record that prunes: opening fails, naming the disk
/// and the cycle.
#[test]
fn a_corrupt_version_1_record_is_an_error_naming_disk_and_cycle() {
    let dir = fixture_dir();
    {
        let c = rusqlite::Connection::open(dir.path().join("snapback.db")).unwrap();
        let json: String = c
            .query_row("SELECT record FROM cycles WHERE id = 3", [], |r| r.get(0))
            .unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v["phase"] = "prune".into();
        v["source_snapshot"] = serde_json::Value::Null;
        v["backup_snapshot"] = "B".into();
        v["backup_etag"] = "e".into();
        c.execute(
            "UPDATE cycles SET record = ?1 WHERE id = 3",
            [v.to_string()],
        )
        .unwrap();
    }
    match StateStore::open(dir.path()) {
        Err(e @ StateError::Corrupt { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("cycle 3 of disk d") && msg.contains("source_snapshot"),
                "{msg}"
            );
        }
        Err(e) => panic!("expected a corrupt record, got {e}"),
        Ok(_) => panic!("a prune without S(n) was accepted"),
    }
}

/// Today's format: a stored prune record missing `S(n)` does not decode into anything the
/// runner could act on.
#[test]
fn a_current_prune_record_without_its_source_snapshot_does_not_decode() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    store
        .register_disk("d", "premium/vhds/d.vhd", "backup/backups/d")
        .unwrap();
    let rec = snapback::model::record::CycleRecord::new("d", "t".into(), None, 0);
    let rec = store.insert_cycle(rec).unwrap();
    drop(store);
    let c = rusqlite::Connection::open(dir.path().join("snapback.db")).unwrap();
    c.execute(
        "UPDATE cycles SET record = json_set(record, '$.phase', json('{\"prune\":{\"backup_snapshot\":\"B\",\"backup_etag\":\"e\"}}')) WHERE id = ?1",
        [rec.id],
    )
    .unwrap();
    drop(c);
    let store = StateStore::open(dir.path()).unwrap();
    let e = store.open_cycle("d").unwrap_err();
    assert!(matches!(e, StateError::Corrupt { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("cycle {} of disk d", rec.id)) && msg.contains("source"),
        "{msg}"
    );
}

/// Several processes opening a new state directory at once (a daemon starting while a
/// `status` runs) each find the schema made or make it: the version is read and the schema
/// made in one write transaction. Before, the second failed with "table disks already exists".
#[test]
fn opening_a_new_state_directory_from_many_places_at_once_makes_the_schema_once() {
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
        let openers: Vec<_> = (0..6)
            .map(|_| {
                let (path, barrier) = (dir.path().to_path_buf(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    StateStore::open(&path).map(|_| ())
                })
            })
            .collect();
        for o in openers {
            o.join()
                .unwrap()
                .expect("every opener sees a usable database");
        }
        let store = StateStore::open(dir.path()).unwrap();
        assert!(store.disk("d1").unwrap().is_none());
    }
}
