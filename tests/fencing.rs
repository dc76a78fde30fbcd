//! Fencing through real processes: an owner frozen (SIGSTOP) or cut off past its lease, or
//! whose writes are held up in the network, while another installation (its own state
//! directory) takes the disk over and runs cycles over the same offsets. The backup's
//! sequence number is the fencing token (docs/design.md, "Fencing"): every write of the old
//! owner that reaches the service after the takeover is refused (412
//! `SequenceNumberConditionNotMet`), and every restore point equals a state the source
//! passed through.

mod common;

use common::faultproxy::{Fault, FaultProxy, Op, Rule};
use common::fixture::{content, create_disk, snapback_command as command, Fixture, Rng};
use common::process::{collect_stderr, send_signal};
use snapback::model::tags;
use snapback::storage::PageBlobs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;
/// Four reads of at most 4 MiB, so four batches of Put Page run at once.
const SIZE: u64 = 16 * MIB;
const SLOT: u64 = 64 * 1024;
const SLOTS: u64 = SIZE / SLOT;
/// Short leases keep the takeovers short (Azure grants 15 to 60 s).
const LEASE: &str = "lease_duration = \"15s\"\n";
/// Longer than a 15 s lease can outlive its last renewal.
const PAST_THE_LEASE: Duration = Duration::from_secs(17);
/// The same when the last renewal may reach the service 4 s after it was sent.
const PAST_A_LATE_RENEWED_LEASE: Duration = Duration::from_secs(21);

/// Installation A's config (routed through `proxy`) and installation B's (its own state
/// directory, straight to Azurite), both with 15 s leases and the same backup blob.
fn two_installations(fx: &Fixture, proxy: &FaultProxy) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(&fx.config_path).unwrap();
    let text = format!("{LEASE}{text}");
    let state = format!("state_dir = \"{}\"", fx.dir.path().join("state").display());
    let b = fx.dir.path().join("b.toml");
    let b_state = format!(
        "state_dir = \"{}\"",
        fx.dir.path().join("state-b").display()
    );
    std::fs::write(&b, text.replacen(&state, &b_state, 1)).unwrap();
    std::fs::write(&fx.config_path, &text).unwrap();
    fx.route_through(proxy.port());
    (fx.config_path.clone(), b)
}

/// `snapback backup d1` to its end; its log.
fn backup(config: &Path) -> String {
    let out = command(config, &["backup", "d1"]).output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{}: {log}", config.display());
    log
}

/// Writes new bytes over `slots` of the source and returns the source's whole content.
async fn change(fx: &Fixture, rng: &mut Rng, slots: &[u64]) -> Vec<u8> {
    let blobs = fx.blobs();
    let src = fx.source("d1");
    for s in slots {
        blobs
            .put_pages(&src, s * SLOT, rng.bytes(SLOT as usize).into(), None)
            .await
            .unwrap();
    }
    content(blobs.as_ref(), &src, None).await
}

/// Every restore point of d1 equals one of `states` (the source's contents over time); the
/// number of restore points.
async fn every_restore_point_is_a_source_state(fx: &Fixture, states: &[Vec<u8>]) -> usize {
    let blobs = fx.blobs();
    let backup = fx.backup("d1");
    let mut n = 0;
    for s in blobs.list_snapshots(&backup).await.unwrap() {
        if !tags::is_restore_point(&s.metadata, "d1") {
            continue;
        }
        let bytes = content(blobs.as_ref(), &backup, Some(&s.snapshot)).await;
        assert!(
            states.contains(&bytes),
            "restore point {} equals no state the source passed through",
            s.snapshot
        );
        n += 1;
    }
    n
}

/// Starts A's `backup d1` and waits until the proxy has seen `puts` of its Put Page requests
/// (the apply is under way): then A is frozen with SIGSTOP.
fn start_and_freeze(
    a: &Path,
    proxy: &FaultProxy,
    puts: usize,
) -> (Child, std::sync::Arc<std::sync::Mutex<String>>) {
    let mut child = command(a, &["backup", "d1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = collect_stderr(&mut child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let before = proxy.count(Op::PutPage);
    while proxy.count(Op::PutPage) < before + puts {
        assert!(
            Instant::now() < deadline,
            "A never applied: {}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    send_signal(child.id(), "STOP");
    (child, log)
}

/// A's Put Page requests answered by the service at or after `since`, and how many of them
/// were refused by the fence.
fn late_puts(proxy: &FaultProxy, since: Instant) -> (usize, usize) {
    let late: Vec<_> = proxy
        .answered()
        .into_iter()
        .filter(|a| a.op == Op::PutPage && a.blob == "backups/d1" && a.at >= since)
        .collect();
    let refused = late
        .iter()
        .filter(|a| a.status == 412 && a.code.as_deref() == Some("SequenceNumberConditionNotMet"))
        .count();
    (late.len(), refused)
}

/// A frozen mid-apply past its lease (its renewals answered 4 s late: a slow network); B
/// takes the disk over and runs two cycles over the same offsets; A is woken. Whatever A
/// sends after waking is refused, and every restore point is a state of the source; B's next
/// cycle ends on a backup equal to the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_frozen_past_its_lease_writes_nothing_after_the_takeover() {
    let fx = Fixture::new(&["d1"]);
    let proxy = FaultProxy::start(fx.azurite.port());
    let (a, b) = two_installations(&fx, &proxy);
    let blobs = fx.blobs();
    create_disk(blobs.as_ref(), &fx.source("d1"), SIZE).await;
    let mut rng = Rng(0xF3_2CE);
    let all: Vec<u64> = (0..SLOTS).collect();
    // Apart, each changed slot is its own Put Page.
    let every_other: Vec<u64> = (0..SLOTS).step_by(2).collect();
    let mut states = vec![change(&fx, &mut rng, &all).await];
    backup(&a);

    // A's apply is slow (each Put Page held 300 ms) and its renewals late.
    states.push(change(&fx, &mut rng, &every_other).await);
    proxy.add(Rule::new(Fault::Delay(Duration::from_millis(300))).op(Op::PutPage));
    proxy.add(Rule::new(Fault::Delay(Duration::from_secs(4))).op(Op::Lease));
    let (mut child, a_log) = start_and_freeze(&a, &proxy, 8);
    std::thread::sleep(PAST_A_LATE_RENEWED_LEASE);

    // B takes over and runs two cycles over the same offsets.
    states.push(change(&fx, &mut rng, &all).await);
    backup(&b);
    states.push(change(&fx, &mut rng, &all).await);
    backup(&b);
    let woken = Instant::now();
    send_signal(child.id(), "CONT");
    let status = child.wait().unwrap();
    let a_log = a_log.lock().unwrap().clone();
    let (late, refused) = late_puts(&proxy, woken);
    println!(
        "A after waking: {late} Put Page answered, {refused} refused by the fence; exit {status}"
    );
    assert_eq!(
        late, refused,
        "every write A sent after waking was refused: {a_log}"
    );

    // B's next cycle: the chain is intact, the backup equals the source.
    let now = change(&fx, &mut rng, &[1, 7, 30]).await;
    states.push(now.clone());
    backup(&b);
    let points = every_restore_point_is_a_source_state(&fx, &states).await;
    println!("{points} restore points, each equal to a state of the source");
    assert!(points >= 4, "seed, B's three cycles: {points}");
    assert_eq!(content(blobs.as_ref(), &fx.backup("d1"), None).await, now);
}

/// The textbook case: A's Put Page requests held in the network for 30 s while A itself is
/// frozen past its lease; B takes over and runs a cycle; the held writes then reach the
/// service — and are all refused (412 `SequenceNumberConditionNotMet`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_held_in_the_network_past_a_takeover_are_refused() {
    let fx = Fixture::new(&["d1"]);
    let proxy = FaultProxy::start(fx.azurite.port());
    let (a, b) = two_installations(&fx, &proxy);
    let blobs = fx.blobs();
    create_disk(blobs.as_ref(), &fx.source("d1"), SIZE).await;
    let mut rng = Rng(0x4E1D);
    let all: Vec<u64> = (0..SLOTS).collect();
    // Apart, each changed slot is its own Put Page.
    let every_other: Vec<u64> = (0..SLOTS).step_by(2).collect();
    let mut states = vec![change(&fx, &mut rng, &all).await];
    backup(&a);

    states.push(change(&fx, &mut rng, &every_other).await);
    proxy.add(Rule::new(Fault::Delay(Duration::from_secs(30))).op(Op::PutPage));
    let sent_before = proxy.count(Op::PutPage);
    let (mut child, a_log) = start_and_freeze(&a, &proxy, 4);
    let held = proxy.count(Op::PutPage) - sent_before;
    std::thread::sleep(PAST_THE_LEASE);
    let takeover = Instant::now();
    states.push(change(&fx, &mut rng, &all).await);
    backup(&b);

    // The held writes are delivered 30 s after they were sent.
    let deadline = Instant::now() + Duration::from_secs(40);
    while late_puts(&proxy, takeover).0 < held {
        assert!(Instant::now() < deadline, "the held writes were delivered");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (late, refused) = late_puts(&proxy, takeover);
    println!("{held} Put Page held past the takeover: {late} delivered, {refused} refused");
    assert_eq!(refused, late, "no held write landed");
    proxy.clear_rules();
    send_signal(child.id(), "CONT");
    child.wait().unwrap();
    let a_log = a_log.lock().unwrap().clone();

    let now = change(&fx, &mut rng, &[0, 3, 9]).await;
    states.push(now.clone());
    backup(&b);
    let points = every_restore_point_is_a_source_state(&fx, &states).await;
    assert!(points >= 3, "seed and B's two cycles: {points}; A: {a_log}");
    assert_eq!(content(blobs.as_ref(), &fx.backup("d1"), None).await, now);
}

/// A cloned state directory (the owner key with it): two processes with one replica id. The
/// clone finds the disk's lease held under an id it did not propose and stops, naming both
/// holders as one identity, while the original's cycle goes on and makes its restore point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloned_state_directory_never_shares_the_lease() {
    let fx = Fixture::new(&["d1"]);
    let proxy = FaultProxy::start(fx.azurite.port());
    let (a, _) = two_installations(&fx, &proxy);
    let blobs = fx.blobs();
    create_disk(blobs.as_ref(), &fx.source("d1"), SIZE).await;
    let mut rng = Rng(0xC1_0E);
    let every_other: Vec<u64> = (0..SLOTS).step_by(2).collect();
    let mut states = vec![change(&fx, &mut rng, &every_other).await];
    backup(&a);

    // The clone: A's state directory copied (owner key, lease id, database), same config.
    let state = fx.dir.path().join("state");
    let cloned = fx.dir.path().join("state-clone");
    copy_dir(&state, &cloned);
    let text = std::fs::read_to_string(&a).unwrap();
    let clone_config = fx.dir.path().join("clone.toml");
    std::fs::write(
        &clone_config,
        text.replacen(
            &format!("state_dir = \"{}\"", state.display()),
            &format!("state_dir = \"{}\"", cloned.display()),
            1,
        ),
    )
    .unwrap();

    states.push(change(&fx, &mut rng, &every_other).await);
    proxy.add(Rule::new(Fault::Delay(Duration::from_millis(200))).op(Op::PutPage));
    let mut original = command(&a, &["backup", "d1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let original_log = collect_stderr(&mut original);
    let before = proxy.count(Op::PutPage);
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.count(Op::PutPage) < before + 2 {
        assert!(Instant::now() < deadline, "the original never applied");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = command(&clone_config, &["backup", "d1"]).output().unwrap();
    let clone_log = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "the clone does not run: {clone_log}");
    assert!(
        clone_log.contains("which names this replica too") && clone_log.contains("cloned host"),
        "the clone is named as such: {clone_log}"
    );
    assert!(
        original.wait().unwrap().success(),
        "{}",
        original_log.lock().unwrap()
    );
    let points = every_restore_point_is_a_source_state(&fx, &states).await;
    assert_eq!(points, 2, "the seed and the original's cycle");
    assert_eq!(
        content(blobs.as_ref(), &fx.backup("d1"), None).await,
        states[1]
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// An owner killed a moment after its apply's first writes, before any checkpoint reached
/// the lock blob: the record there already says the backup's ETag is no longer known, so the
/// installation that takes over resumes the apply rather than taking the owner's own writes
/// for a foreign change and seeding the whole disk again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_in_an_applys_first_seconds_resumes() {
    let fx = Fixture::new(&["d1"]);
    let proxy = FaultProxy::start(fx.azurite.port());
    let (a, b) = two_installations(&fx, &proxy);
    let blobs = fx.blobs();
    create_disk(blobs.as_ref(), &fx.source("d1"), SIZE).await;
    let mut rng = Rng(0x1_7E);
    let every_other: Vec<u64> = (0..SLOTS).step_by(2).collect();
    let mut states = vec![change(&fx, &mut rng, &every_other).await];
    backup(&a);

    states.push(change(&fx, &mut rng, &every_other).await);
    proxy.add(Rule::new(Fault::Delay(Duration::from_millis(200))).op(Op::PutPage));
    let mut child = command(&a, &["backup", "d1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let before = proxy
        .answered()
        .iter()
        .filter(|x| x.op == Op::PutPage)
        .count();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Two writes landed, well within the 5 s between checkpoints in the lock blob.
    while proxy
        .answered()
        .iter()
        .filter(|x| x.op == Op::PutPage)
        .count()
        < before + 2
    {
        assert!(Instant::now() < deadline, "A never applied");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(PAST_THE_LEASE);

    let log = backup(&b);
    assert!(
        !log.contains("re-seeding") && log.contains("kind=\"incremental\""),
        "B resumes A's apply: {log}"
    );
    let points = every_restore_point_is_a_source_state(&fx, &states).await;
    assert_eq!(points, 2);
    assert_eq!(
        content(blobs.as_ref(), &fx.backup("d1"), None).await,
        states[1]
    );
}
