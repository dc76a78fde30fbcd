//! Managed-disk cycles, restores and rebases in simulation: the cycle runner and
//! `ManagedDiskSource` over `arm::fake::MemArm` (ARM and the export data plane in memory)
//! and `MemBlobs`, no emulator. A kill after every step, a crash between an action's effect
//! and its record, a failure at every ARM and data-plane call; restore points checked byte
//! for byte against the disk as it was when each snapshot was taken. The same paths run
//! against the ARM emulator and Azurite in tests/managed.rs and tests/trusted_launch.rs.

use snapback::arm::fake::{MemArm, NewDisk, VMGS_BYTES};
use snapback::arm::{ResourceGroup, ResourceId, ResourceKind, TRUSTED_LAUNCH};
use snapback::config::{Config, CopyMode, DiskConfig, DiskSource};
use snapback::cycle::machine::next_action;
use snapback::cycle::runner::{DiskSpec, Runner};
use snapback::model::record::{CycleKind, CycleRecord};
use snapback::model::{Clock, Timestamp};
use snapback::restore::managed_disk::ManagedRestoreRequest;
use snapback::restore::PointSelector;
use snapback::service::App;
use snapback::source::managed_disk::ManagedDiskSource;
use snapback::state::StateStore;
use snapback::storage::fake::MemBlobs;
use snapback::storage::BlobRef;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const SUB: &str = "00000000-0000-4000-8000-000000000001";
const MIB: u64 = 1 << 20;
const PAGE: u64 = 512;

struct FixedClock;
impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        snapback::model::from_unix(1_764_000_000)
    }
}

fn group(name: &str) -> ResourceGroup {
    ResourceGroup {
        subscription: SUB.into(),
        name: name.into(),
    }
}

fn disk_id(name: &str) -> ResourceId {
    ResourceId::new(group("rg-vms"), ResourceKind::Disk, name).expect("a valid disk id")
}

/// xorshift64*: the same writes on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The first offset where `a` and `b` differ, for a message shorter than two disks.
fn differ(a: &[u8], b: &[u8]) -> Option<usize> {
    if a.len() != b.len() {
        return Some(a.len().min(b.len()));
    }
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn assert_same(got: Option<Vec<u8>>, want: &[u8], ctx: &str) {
    let got = got.unwrap_or_else(|| panic!("{ctx}: missing"));
    if let Some(at) = differ(&got, want) {
        panic!(
            "{ctx}: differs at byte {at} ({} vs {} bytes)",
            got.len(),
            want.len()
        );
    }
}

/// A managed disk, its backup in `MemBlobs` and the local state: one process's world.
struct World {
    arm: MemArm,
    blobs: MemBlobs,
    store: StateStore,
    spec: DiskSpec,
    disk: ResourceId,
    rng: Rng,
}

impl World {
    async fn new(disk: NewDisk, seed: u64) -> World {
        let arm = MemArm::new();
        let id = disk_id("vm1-data");
        arm.create_disk(&id, &disk).await.expect("the disk");
        let spec = DiskSpec {
            name: "d".into(),
            source: DiskSource::Managed {
                disk: id.clone(),
                snapshot_group: group("rg-snapshots"),
            },
            backup: BlobRef::new("backup", "backups", "d"),
            concurrency: 3,
            copy_mode: CopyMode::Auto,
        };
        let mut w = World {
            arm,
            blobs: MemBlobs::new(),
            store: StateStore::open_in_memory().expect("state"),
            spec,
            disk: id,
            rng: Rng(seed),
        };
        w.scribble(12).await;
        w
    }

    /// A new process's source: nothing granted or seen yet.
    fn source(&self) -> ManagedDiskSource {
        ManagedDiskSource::new(
            Arc::new(self.arm.clone()),
            Arc::new(self.arm.clone()),
            self.disk.clone(),
            group("rg-snapshots"),
        )
        .with_ready_poll(Duration::from_millis(1))
    }

    fn runner<'a>(&'a self, source: &'a ManagedDiskSource) -> Runner<'a> {
        let mut r = Runner::new(&self.blobs, &self.store, &FixedClock, &self.spec);
        r.other_source = Some(source);
        r
    }

    async fn cycle(&self) -> CycleRecord {
        let source = self.source();
        let rec = self.runner(&source).run_cycle().await.expect("a cycle");
        // As the service does before it lets the disk go.
        source.settle_ends().await;
        rec
    }

    /// `n` writes of 1 to 8 pages of random bytes at random pages (the VM writing), and a
    /// minute of the fake's clock (Azure's 7 snapshots per 5 minutes).
    async fn scribble(&mut self, n: usize) {
        let size = self.size().await;
        for _ in 0..n {
            let pages = 1 + self.rng.below(8);
            let at = self.rng.below(size / PAGE - pages) * PAGE;
            let data: Vec<u8> = (0..pages * PAGE).map(|_| self.rng.next() as u8).collect();
            self.arm.write(&self.disk, at, &data).await;
        }
        self.arm.advance(Duration::from_secs(60)).await;
    }

    async fn size(&self) -> u64 {
        let (data, _) = self.arm.content(&self.disk).await;
        data.map_or(0, |d| d.len() as u64)
    }

    async fn now(&self) -> Vec<u8> {
        self.arm.content(&self.disk).await.0.expect("the disk")
    }

    /// After a finished cycle: the restore points are `expected`, byte for byte; exactly one
    /// snapshot resource is left, the newest point's `S(n)`; no access is left granted.
    async fn check(&self, expected: &[Vec<u8>], ctx: &str) {
        let points = self.store.restore_points(&self.spec.name).expect("points");
        assert_eq!(points.len(), expected.len(), "{ctx}: restore points");
        for (i, (p, want)) in points.iter().zip(expected).enumerate() {
            let got = self.blobs.content(&self.spec.backup, Some(&p.snapshot));
            assert_same(got, want, &format!("{ctx}: restore point {i}"));
        }
        let (snapshots, access) = self.arm.inventory().await;
        let newest = &points[points.len() - 1].source_snapshot;
        assert_eq!(
            snapshots,
            std::slice::from_ref(newest),
            "{ctx}: snapshot resources"
        );
        assert!(access.is_empty(), "{ctx}: access left granted: {access:?}");
    }
}

/// Standard and Premium SSD v2 disks (whose snapshots copy in the background): cycles over
/// random writes, each restore point equal to the disk when its snapshot was taken.
#[tokio::test]
async fn managed_cycles_over_random_writes_equal_the_disk_at_each_snapshot() {
    let v2 = NewDisk {
        sku: Some("PremiumV2_LRS".into()),
        logical_sector_size: Some(512),
        ..NewDisk::default()
    };
    for (kind, disk) in [("premium", NewDisk::default()), ("premium v2", v2)] {
        let mut w = World::new(disk, 0x5eed).await;
        let mut expected = Vec::new();
        for n in 0..8 {
            expected.push(w.now().await);
            let rec = w.cycle().await;
            let want = if n == 0 {
                CycleKind::Seed
            } else {
                CycleKind::Incremental
            };
            assert_eq!(rec.kind, want, "{kind}: cycle {n}");
            w.check(&expected, &format!("{kind}: cycle {n}")).await;
            w.scribble(1 + n).await;
        }
    }
}

/// A world with a seeded chain and writes for the cycle under test.
async fn seeded(seed: u64) -> (World, Vec<Vec<u8>>) {
    let mut w = World::new(NewDisk::default(), seed).await;
    let first = w.now().await;
    w.cycle().await;
    w.scribble(20).await;
    (w, vec![first])
}

/// The process is killed after each step of an incremental cycle in turn, while the VM goes
/// on writing; a new process resumes: one restore point, equal to the disk when `S(n)` was
/// taken, and nothing orphaned (one snapshot resource, no access).
#[tokio::test]
async fn a_kill_after_every_step_of_a_managed_cycle_resumes_to_one_restore_point() {
    let mut k = 0;
    loop {
        let (mut w, mut expected) = seeded(0xc0ffee).await;
        let at_snapshot = w.now().await;
        let source = w.source();
        let r = w.runner(&source);
        let mut rec = r.open_or_resume().await.expect("open");
        let mut finished = false;
        for _ in 0..k {
            if !r.step(&mut rec).await.expect("a step") {
                finished = true;
                break;
            }
        }
        // Killed: the runner and the source (its grants, its background ends) are dropped.
        drop(r);
        drop(source);
        w.scribble(5).await;
        // Before its first step the cycle has no S(n): the resumed one snapshots the disk
        // as the VM left it.
        expected.push(if k == 0 { w.now().await } else { at_snapshot });
        if !finished {
            let resumed = w.cycle().await;
            assert_eq!(
                resumed.kind,
                CycleKind::Incremental,
                "killed after {k} steps"
            );
        }
        w.check(&expected, &format!("killed after {k} steps")).await;
        if finished {
            break;
        }
        k += 1;
    }
    assert_eq!(k, 5, "snapshot, diff, apply, backup-snapshot, prune");
}

/// Each action takes effect in ARM and storage, then the process dies before recording it:
/// the resumed cycle finds what was made and makes nothing twice.
#[tokio::test]
async fn a_crash_inside_every_action_of_a_managed_cycle_never_duplicates() {
    let mut k = 0;
    loop {
        let (w, mut expected) = seeded(0xfeed).await;
        let source = w.source();
        let r = w.runner(&source);
        let mut rec = r.open_or_resume().await.expect("open");
        for _ in 0..k {
            r.step(&mut rec).await.expect("a step");
        }
        let Some(action) = next_action(&rec) else {
            break;
        };
        expected.push(w.now().await);
        let _lost = r
            .execute(action.clone(), &mut rec.clone())
            .await
            .expect("the action");
        drop(r);
        drop(source);
        w.cycle().await;
        w.check(&expected, &format!("crash inside {action:?}"))
            .await;
        k += 1;
    }
    assert!(k >= 5, "every action of the cycle was crashed in, saw {k}");
}

/// ARM or the export answers 503 from the n-th call on (after the client's own retries):
/// the run fails there, and the next run finishes the same cycle, for every n. Tokio's clock
/// is paused, so the cycle's own waits before trying again (`find_or_make`) take no time.
#[tokio::test(start_paused = true)]
async fn a_failure_at_every_arm_and_export_call_then_resume() {
    let mut n = 0;
    loop {
        let (w, mut expected) = seeded(0xbad).await;
        expected.push(w.now().await);
        w.arm.fail_after(Some(n)).await;
        let first = {
            let source = w.source();
            let r = w.runner(&source).run_cycle().await;
            source.settle_ends().await;
            r
        };
        w.arm.fail_after(None).await;
        let done_first_time = first.is_ok();
        if !done_first_time {
            let rec = w.cycle().await;
            assert_eq!(rec.kind, CycleKind::Incremental, "failure at call {n}");
        }
        w.check(&expected, &format!("failure at call {n}")).await;
        if done_first_time {
            break;
        }
        n += 1;
    }
    assert!(
        n > 10,
        "a cycle makes more than ten ARM and export calls, saw {n}"
    );
}

// ---- through the service: restore to a new managed disk, rebase ----

/// The service over the fake: the config's disk is `disk`, its clients the fake's.
fn app(w: &World, dir: &std::path::Path) -> (App, DiskConfig) {
    let text = format!(
        "state_dir = {dir:?}\n[accounts.backup]\nendpoint = \"http://127.0.0.1:1/backup\"\n\
         shared_key_env = \"SB_UNUSED\"\n[azure]\nmanaged_identity = true\n\
         [[disk]]\nname = \"d\"\nmanaged_disk = \"{}\"\nsnapshot_resource_group = \"rg-snapshots\"\n\
         backup = \"backup/backups/d\"\nconcurrency = 3\n",
        w.disk
    );
    let config = Config::parse(&text, std::path::Path::new("sim.toml")).expect("config");
    let disk = config.disk("d").expect("the disk entry").clone();
    let mut app = App::with_blobs(config, Arc::new(w.blobs.clone())).expect("app");
    app.arm = Some(Ok(Arc::new(w.arm.clone())));
    app.sas = Arc::new(w.arm.clone());
    (app, disk)
}

async fn backup(app: &App, disk: &DiskConfig) -> CycleRecord {
    app.backup_disk(disk, CancellationToken::new())
        .await
        .result
        .expect("a cycle")
}

fn request(point: &str, target: &ResourceId, rebase: bool) -> ManagedRestoreRequest {
    ManagedRestoreRequest {
        point: PointSelector::Snapshot(point.to_string()),
        target: target.clone(),
        sku: None,
        zone: None,
        force: false,
        rebase,
        os_type: None,
        hyper_v_generation: None,
        disk_encryption_set: None,
    }
}

/// Three cycles of a Trusted Launch OS disk whose disk and guest state change before each;
/// every restore point restored to a new managed disk: its bytes and its guest state are the
/// disk's when the point's snapshot was taken, made by `UploadPreparedSecure`, upload ended.
#[tokio::test]
async fn restore_points_restore_to_new_managed_disks_byte_equal() {
    let disk = NewDisk {
        size: 20 * MIB,
        security_type: Some(TRUSTED_LAUNCH.into()),
        os_type: Some("Linux".into()),
        hyper_v_generation: Some("V2".into()),
        ..NewDisk::default()
    };
    let mut w = World::new(disk, 0x7e57).await;
    let dir = tempfile::tempdir().expect("state dir");
    let (app, config) = app(&w, dir.path());
    let mut expected = Vec::new();
    for n in 0..3u8 {
        w.arm
            .write_guest_state(&w.disk, u64::from(n) * PAGE, &[n + 1; 512])
            .await;
        expected.push(w.arm.content(&w.disk).await);
        backup(&app, &config).await;
        w.scribble(10).await;
    }
    let points = w.store_points(&app);
    assert_eq!(points.len(), 3);
    for (i, (point, (data, guest))) in points.iter().zip(&expected).enumerate() {
        let target = disk_id(&format!("vm1-restored-{i}"));
        let report = app
            .restore_to_managed_disk(&config, &request(point, &target, false))
            .await
            .expect("a restore");
        assert_eq!(report.guest_state, Some(VMGS_BYTES), "point {i}");
        let got = w.arm.content(&target).await;
        assert_same(
            got.0,
            data.as_deref().expect("disk"),
            &format!("disk of point {i}"),
        );
        assert_same(
            got.1,
            guest.as_deref().expect("guest"),
            &format!("guest state of point {i}"),
        );
        let made = snapback::arm::Arm::get_disk(&w.arm, &target)
            .await
            .expect("made");
        assert_eq!(
            made.properties.creation_data.create_option, "UploadPreparedSecure",
            "point {i}"
        );
        assert_eq!(made.properties.disk_state.as_deref(), Some("Unattached"));
        assert_eq!(made.properties.os_type.as_deref(), Some("Linux"));
    }
    let (_, access) = w.arm.inventory().await;
    assert!(access.is_empty(), "access left: {access:?}");
    // A target that exists is refused, nothing written.
    let target = disk_id("vm1-restored-0");
    let refused = app
        .restore_to_managed_disk(&config, &request(&points[0], &target, false))
        .await;
    assert!(refused.is_err(), "an existing disk is not overwritten");
}

impl World {
    fn store_points(&self, app: &App) -> Vec<String> {
        app.store
            .restore_points(&self.spec.name)
            .expect("points")
            .into_iter()
            .map(|p| p.snapshot)
            .collect()
    }
}

/// `--rebase`: the chain moves to the restored disk. Only its `S(0)` is left, no access;
/// once the config names the new disk, the next cycle is incremental (1 KiB written) and
/// its restore point equals the new disk.
#[tokio::test]
async fn rebase_moves_the_chain_to_the_restored_disk() {
    let disk = NewDisk {
        size: 20 * MIB,
        ..NewDisk::default()
    };
    let mut w = World::new(disk, 0xba5e).await;
    let dir = tempfile::tempdir().expect("state dir");
    let (app, config) = app(&w, dir.path());
    let first = w.now().await;
    backup(&app, &config).await;
    w.scribble(10).await;
    backup(&app, &config).await;
    let points = w.store_points(&app);
    let target = disk_id("vm1-rebased");
    let report = app
        .restore_to_managed_disk(&config, &request(&points[0], &target, true))
        .await
        .expect("a rebase");
    let rebased = report.rebased.expect("rebased");
    let (snapshots, access) = w.arm.inventory().await;
    assert_eq!(
        snapshots,
        vec![rebased.source_snapshot.clone()],
        "only S(0)"
    );
    assert!(access.is_empty(), "access left: {access:?}");
    assert_same(w.arm.content(&target).await.0, &first, "the new disk");
    assert_same(
        w.blobs
            .content(&w.spec.backup, Some(&rebased.restore_point)),
        &first,
        "B(0)",
    );

    w.arm.write(&target, 3 * MIB, &[7u8; 1024]).await;
    let mut moved = config.clone();
    moved.source = DiskSource::Managed {
        disk: target.clone(),
        snapshot_group: group("rg-snapshots"),
    };
    let rec = backup(&app, &moved).await;
    assert_eq!(rec.kind, CycleKind::Incremental);
    assert_eq!(rec.stats.bytes_written, 1024);
    let newest = w.store_points(&app).pop().expect("a point");
    let now = w.arm.content(&target).await.0.expect("the new disk");
    assert_same(
        w.blobs.content(&w.spec.backup, Some(&newest)),
        &now,
        "the restore point after the rebase",
    );
    let (snapshots, access) = w.arm.inventory().await;
    assert_eq!(snapshots.len(), 1, "one snapshot resource: {snapshots:?}");
    assert!(access.is_empty());
}

/// Eight cycles within five minutes of the fake's clock: the eighth snapshot is refused by
/// Azure's rate limit, which the cycle names (kind `Rate`); the earlier snapshots were
/// deleted by the cycles, so their times are not listed and the wait is the whole window.
/// Nothing is left granted, and once the window has passed the cycle finishes.
#[tokio::test]
async fn the_snapshot_rate_limit_is_named_and_waited_out() {
    use snapback::cycle::error::{CycleError, SnapshotLimit};
    use snapback::source::snapshot_limits::LimitKind;
    let w = World::new(NewDisk::default(), 0x11).await;
    for n in 0..7 {
        w.arm.write(&w.disk, n * PAGE, &[n as u8 + 1; 512]).await;
        w.cycle().await;
    }
    let source = w.source();
    let refused = w.runner(&source).run_cycle().await;
    let Err(CycleError::SnapshotLimit {
        limit: SnapshotLimit::Managed(limit),
        ..
    }) = refused
    else {
        panic!("the eighth snapshot in 5 minutes is refused for the rate: {refused:?}");
    };
    assert!(matches!(limit.kind, LimitKind::Rate { .. }), "{limit}");
    assert_eq!(limit.wait, Some(Duration::from_secs(300)), "{limit}");
    let (_, access) = w.arm.inventory().await;
    assert!(access.is_empty(), "access left: {access:?}");
    w.arm.advance(Duration::from_secs(300)).await;
    assert_eq!(w.cycle().await.kind, CycleKind::Incremental);
}
