//! Trusted Launch managed disks end to end, through the CLI: each restore point carries a
//! copy of the disk's VM guest state (UEFI, vTPM: the "VMGS" blob the emulator keeps beside
//! the disk, `EMU_VMGS_BYTES` long), and a restore to a new managed disk uploads both
//! (`UploadPreparedSecure`). Bytes are compared with what the disk and its guest state held
//! at each cycle (docs/managed-disks.md, "Trusted Launch").

mod common;

use common::arm::{ArmEmulator, SUBSCRIPTION};
use common::fixture::{content, Fixture, Rng, MIB};
use common::process::kill_at_failpoint;
use snapback::arm::{
    DiskRecipe, ResourceGroup, ResourceId, ResourceKind, SecurityProfile, Tags, UploadDiskSpec,
};
use snapback::storage::{BlobRef, Metadata, PageBlobs};
use std::process::{Command, Output};

/// The guest state blob's length: two pieces of a copy (4 MiB and 64 KiB).
const VMGS: u64 = 4 * MIB + 64 * 1024;
const DISK: u64 = 4 * MIB;

fn id(name: &str) -> ResourceId {
    let group = ResourceGroup {
        subscription: SUBSCRIPTION.into(),
        name: "rg-vms".into(),
    };
    ResourceId::new(group, ResourceKind::Disk, name).unwrap()
}

/// A Trusted Launch OS disk `tl-os` in the emulator, backed up as disk `disk1`.
struct Tl {
    fx: Fixture,
    emu: ArmEmulator,
    disk: ResourceId,
}

impl Tl {
    async fn new(extra_disk_lines: &str) -> Tl {
        let azurite = common::azurite::Azurite::start();
        let vmgs = VMGS.to_string();
        let emu = ArmEmulator::start(&azurite, &[("EMU_VMGS_BYTES", vmgs.as_str())]);
        let disk = id("tl-os");
        let section = emu.disk_section(&disk, extra_disk_lines);
        let fx = Fixture::start(azurite, &section);
        let recipe = DiskRecipe {
            os_type: Some("Linux".into()),
            hyper_v_generation: Some("V2".into()),
            security_profile: Some(SecurityProfile {
                security_type: Some("TrustedLaunch".into()),
                ..SecurityProfile::default()
            }),
            ..DiskRecipe::default()
        };
        let spec = UploadDiskSpec {
            location: "westeurope".into(),
            upload_size_bytes: DISK + 512,
            sku: Some("Premium_LRS".into()),
            zone: None,
            tags: Tags::new(),
        };
        emu.make_disk(&disk, &spec, &recipe).await;
        Tl { fx, emu, disk }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.fx.command(args);
        ArmEmulator::sign_in(&mut cmd);
        cmd
    }

    fn snapback(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run snapback")
    }

    fn backup_ok(&self, ctx: &str) {
        let out = self.snapback(&["backup", "disk1"]);
        assert!(
            out.status.success(),
            "{ctx}: backup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The guest writes its disk and changes its vTPM state.
    async fn change(&self, rng: &mut Rng) {
        let disk = self.emu.disk_sas(&self.disk.to_string(), false).await;
        let at = rng.below(DISK / 4096 - 16) * 4096;
        ArmEmulator::sas_write(&disk, at, &rng.bytes(64 * 1024)).await;
        let vmgs = self.emu.disk_sas(&self.disk.to_string(), true).await;
        // Both pieces of the copy change: the first 4 MiB and the 64 KiB after them.
        ArmEmulator::sas_write(&vmgs, rng.below(8) * 4096, &rng.bytes(8192)).await;
        ArmEmulator::sas_write(&vmgs, 4 * MIB, &rng.bytes(64 * 1024)).await;
    }

    /// The disk's and the guest state's bytes now.
    async fn now(&self) -> (Vec<u8>, Vec<u8>) {
        self.of(&self.disk).await
    }

    /// A disk's and its guest state's bytes.
    async fn of(&self, disk: &ResourceId) -> (Vec<u8>, Vec<u8>) {
        let d = self.emu.disk_sas(&disk.to_string(), false).await;
        let g = self.emu.disk_sas(&disk.to_string(), true).await;
        (
            ArmEmulator::sas_read(&d, DISK).await,
            ArmEmulator::sas_read(&g, VMGS).await,
        )
    }

    fn backup(&self) -> BlobRef {
        BlobRef::new("backup", "backups", "disk1")
    }

    /// Restore points, oldest first, with their metadata.
    async fn points(&self) -> Vec<(String, Metadata)> {
        self.fx
            .blobs()
            .list_snapshots(&self.backup())
            .await
            .unwrap()
            .into_iter()
            .filter(|s| s.metadata.contains_key("snapback_source_snapshot"))
            .map(|s| (s.snapshot, s.metadata))
            .collect()
    }

    /// The guest state copy a restore point names.
    fn copy_of(&self, meta: &Metadata) -> BlobRef {
        let name = meta
            .get("snapback_vmgs")
            .expect("the point names its VMGS copy");
        BlobRef::new("backup", "backups", name)
    }

    fn restore_to(&self, point: &str, target: &ResourceId) -> Output {
        let target = target.to_string();
        self.snapback(&[
            "restore",
            "disk1",
            "--snapshot",
            point,
            "--to-managed-disk",
            &target,
        ])
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Two cycles of a Trusted Launch disk whose disk and guest state change in between; each
/// restore point restored to a new managed disk holds the disk's bytes and the guest state's
/// as they were at its cycle, and is a Trusted Launch disk made by `UploadPreparedSecure`.
/// `check` admits the disk; a restore to a page blob puts the guest state beside it;
/// `verify` passes, then names an altered and a missing copy, and a restore of that point
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_points_restore_the_disk_and_its_guest_state() {
    let w = Tl::new("").await;
    let mut rng = Rng(0x7417_0001);
    // `check` admits the disk, naming it Trusted Launch (it refused it before).
    let check = w.snapback(&["check", "disk1", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&check.stdout).expect("check JSON");
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["operation"] == "managed-disk-type"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(row["outcome"], "pass", "{rows}");
    assert_eq!(
        row["cause"], "Premium SSD, 512-byte sectors, Trusted Launch",
        "{row}"
    );
    let mut want = Vec::new();
    for cycle in 0..2 {
        w.change(&mut rng).await;
        want.push(w.now().await);
        w.backup_ok(&format!("cycle {cycle}"));
        w.emu.assert_clean(&format!("cycle {cycle}")).await;
    }
    assert_ne!(
        want[0].1, want[1].1,
        "the guest state changed between cycles"
    );
    let points = w.points().await;
    assert_eq!(points.len(), 2);
    let arm = w.emu.client();
    for (i, ((point, meta), (disk, vmgs))) in points.iter().zip(&want).enumerate() {
        assert_eq!(meta["snapback_vmgs_length"], VMGS.to_string());
        let copy = content(w.fx.blobs().as_ref(), &w.copy_of(meta), None).await;
        assert!(
            &copy == vmgs,
            "point {i}: the copy is the guest state of its cycle"
        );
        let target = id(&format!("tl-restored-{i}"));
        let out = w.restore_to(point, &target);
        assert!(out.status.success(), "restore {i}: {}", text(&out));
        assert!(
            text(&out).contains("Trusted Launch") && text(&out).contains("--os-disk"),
            "the swap commands are a Trusted Launch OS disk's: {}",
            text(&out)
        );
        let (got_disk, got_vmgs) = w.of(&target).await;
        assert!(&got_disk == disk, "point {i}: the disk's bytes");
        assert!(&got_vmgs == vmgs, "point {i}: the guest state's bytes");
        let made = arm.get_disk(&target).await.unwrap();
        assert_eq!(
            made.properties
                .security_profile
                .and_then(|p| p.security_type)
                .as_deref(),
            Some("TrustedLaunch")
        );
        assert_eq!(
            made.properties.creation_data.create_option,
            "UploadPreparedSecure"
        );
    }
    w.emu.assert_clean("after the restores").await;

    // To a page blob: the disk, and the guest state beside it.
    let (newest, meta) = points.last().unwrap().clone();
    let out = w.snapback(&[
        "restore",
        "disk1",
        "--snapshot",
        &newest,
        "--to",
        "backup/restored/os.vhd",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("backup/restored/os.vhd.vmgs"),
        "{}",
        text(&out)
    );
    let beside = BlobRef::new("backup", "restored", "os.vhd.vmgs");
    assert!(content(w.fx.blobs().as_ref(), &beside, None).await == want[1].1);

    let out = w.snapback(&["verify", "disk1"]);
    assert!(out.status.success(), "verify: {}", text(&out));
    // Altered, then gone: verify names it, a restore refuses it.
    let copy = w.copy_of(&meta);
    w.fx.blobs()
        .put_pages(&copy, 0, bytes::Bytes::from(vec![0x5a; 512]), None)
        .await
        .unwrap();
    let out = w.snapback(&["verify", "disk1"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("guest state") && text(&out).contains("CRC-64"),
        "verify names the altered copy: {}",
        text(&out)
    );
    let out = w.restore_to(&newest, &id("tl-from-altered"));
    assert!(!out.status.success());
    assert!(text(&out).contains("altered"), "{}", text(&out));
    w.fx.blobs().delete_blob(&copy).await.unwrap();
    let out = w.snapback(&["verify", "disk1"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("does not exist") && text(&out).contains(&copy.blob),
        "verify names the missing copy: {}",
        text(&out)
    );
    let state = w.emu.control_get("/__emulator/state").await;
    assert!(
        !state["disks"].to_string().contains("tl-from-altered"),
        "a refused restore creates no disk"
    );
}

/// A grant that answers no `securityDataAccessSAS` fails the cycle, named, with no restore
/// point; cycles killed (SIGKILL) halfway through the guest state copy, after the apply and
/// after the restore point resume to restore points whose copies are the guest state of
/// their cycle; with `keep_last = 1` retention deletes each pruned point's copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_state_copies_survive_sigkill_and_go_with_pruned_points() {
    let w = Tl::new("retention = { keep_last = 1 }\ncopy_mode = \"server\"").await;
    let mut rng = Rng(0x7417_0002);
    w.change(&mut rng).await;
    w.backup_ok("seed");

    w.emu
        .control_post("/__emulator/drop-guest-state?on=1")
        .await;
    w.change(&mut rng).await;
    let out = w.snapback(&["backup", "disk1"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("NoSecurityDataAccessSAS"),
        "named: {}",
        text(&out)
    );
    assert_eq!(w.points().await.len(), 1, "no restore point without it");
    w.emu
        .control_post("/__emulator/drop-guest-state?on=0")
        .await;
    w.backup_ok("after the refusal");

    let kills: [(&str, &str); 3] = [
        ("SNAPBACK_FAILPOINT_PAUSE_IN_GUEST_STATE", "1"),
        ("SNAPBACK_FAILPOINT_PAUSE_AFTER_STEPS", "3"),
        ("SNAPBACK_FAILPOINT_PAUSE_AFTER_STEPS", "4"),
    ];
    for (var, value) in kills {
        let ctx = format!("SIGKILL at {var}={value}");
        let before = w.points().await;
        assert_eq!(before.len(), 1, "{ctx}: keep_last = 1");
        let old_copy = w.copy_of(&before[0].1);
        w.change(&mut rng).await;
        let (_, vmgs) = w.now().await;
        let mut cmd = w.command(&["backup", "disk1"]);
        cmd.env(var, value);
        kill_at_failpoint(cmd, &ctx);
        w.backup_ok(&format!("resume after {ctx}"));
        w.emu.assert_clean(&ctx).await;
        let after = w.points().await;
        assert_eq!(after.len(), 1, "{ctx}: the older point was pruned");
        let copy = w.copy_of(&after[0].1);
        assert!(
            content(w.fx.blobs().as_ref(), &copy, None).await == vmgs,
            "{ctx}: the copy is the guest state of the resumed cycle"
        );
        assert_ne!(copy, old_copy);
        assert!(
            w.fx.blobs()
                .properties(&old_copy, None)
                .await
                .unwrap()
                .is_none(),
            "{ctx}: the pruned point's copy {old_copy} is deleted"
        );
    }
}
