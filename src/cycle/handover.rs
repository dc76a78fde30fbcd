//! The open cycle's record travels with the data: it is kept in the disk's lock blob
//! (`<backup>.snapback-state`, see `ownership`), so that a replica that never saw the disk
//! resumes the cycle a dead owner left mid-apply instead of re-seeding it.
//!
//! What is written: [`AzureRecord`], a JSON body with a format version: the cycle record
//! (phase with its data: `S(n)`, base, size, apply checkpoint, written ETag, backup_touched,
//! tag, stats) and what it is bound to (disk, source, backup, chain), and who wrote it.
//! When: when a cycle is opened or resumed, after every step, and during apply at most every
//! [`AZURE_CHECKPOINT_EVERY`]. Always after the local save, so the local state is never
//! behind Azure's record of a cycle this installation wrote.
//!
//! What is decided when the lease is taken (`Runner::take_over`, pure part [`decide`]): see
//! docs/design.md, "Where the state lives".

use super::error::CycleError;
use super::runner::Runner;
use crate::model::record::CycleRecord;
use crate::ownership::{DiskLease, OwnershipError};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The format of [`AzureRecord`]; a record of a newer format is refused, never guessed at.
pub const FORMAT: u32 = 1;

/// How often an apply checkpoint is written to Azure at most (the local one: every 500 ms).
/// A takeover repeats at most this much of the apply (at 60 MiB/s per blob, 300 MiB) on top
/// of the up to 60 s it waits for the lease anyway, for one Put Blob per disk per 5 s of
/// apply: 1,000 disks in apply at once cost 200 requests/s, 1 % of an account's 20,000.
pub const AZURE_CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// The lock blob's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AzureRecord {
    pub format: u32,
    pub disk: String,
    /// The source and backup the cycle is bound to (`DiskSource`/`BlobRef` display form).
    pub source: String,
    pub backup: String,
    /// The chain the cycle's snapshots are tagged with.
    pub chain: String,
    /// Fingerprint of the writer's lease id ([`DiskLease::writer`]).
    pub writer: String,
    /// The disk's current cycle: open, or the last one finished.
    pub cycle: CycleRecord,
}

/// What taking over a disk does to the local state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handover {
    /// Nothing to change: the local open cycle (if any) is resumed, or a new one opened.
    KeepLocal,
    /// The local open cycle is stale (the disk moved past it under another owner, or it
    /// never ran a step): abandoned, never resumed.
    AbandonLocal,
    /// Azure's cycle becomes the local current cycle, open or finished (the local open one,
    /// if any, abandoned: of another tag, or the same cycle where another owner went
    /// further).
    Import,
}

/// The pure decision. `azure` is the record in the lock blob, already checked to be bound to
/// the disk's current source, backup and chain (no record, or one of another binding, is
/// handled before: see `Runner::take_over`); `finished_locally` says whether the local
/// state finished Azure's cycle; `me` is this installation's [`DiskLease::writer`].
pub fn decide(
    local_open: Option<&CycleRecord>,
    azure: &AzureRecord,
    finished_locally: bool,
    me: &str,
) -> Handover {
    let theirs = &azure.cycle;
    match local_open {
        // The same cycle: the record written last is the further ahead. This installation
        // saves locally before it writes to Azure, so if it wrote Azure's record its own is
        // at least as far (one step ahead after a crash between the two); if another owner
        // wrote it, that owner ran the cycle (maybe to its end) after this one stopped.
        Some(local) if local.tag == theirs.tag => {
            if azure.writer == me {
                Handover::KeepLocal
            } else {
                Handover::Import
            }
        }
        // Azure's cycle is open and this state never finished it: resume it here.
        _ if !theirs.is_done() && !finished_locally => Handover::Import,
        // Azure's cycle is finished (or this state finished it): a local open cycle of
        // another tag was opened before it (or never ran a step: its first Azure write comes
        // before its first step), so the disk has moved past it.
        Some(_) => Handover::AbandonLocal,
        None => Handover::KeepLocal,
    }
}

impl Runner<'_> {
    /// Under the disk's lease, before a cycle is opened or resumed: reconciles the local open
    /// cycle with the record in the lock blob (Azure's is authoritative). Without a lease
    /// (in-memory storage) there is nothing to reconcile with.
    pub(super) async fn take_over(&self) -> Result<(), CycleError> {
        let Some(lease) = self.lease else {
            return Ok(());
        };
        let d = self.disk;
        let local = self.store.open_cycle(&d.name)?;
        let Some(azure) = self.azure_record(lease)? else {
            // No record (a new lock blob, or one written before records existed): the lock
            // blob's metadata still names the cycle its last owner ran (invariant 12).
            if let (Some(open), Some(last)) = (&local, lease.last_cycle()) {
                if open.tag != last {
                    tracing::warn!(disk = %d.name, cycle = %open.tag, current = %last, "another owner ran cycles since this unfinished cycle stopped; abandoning it (its source snapshot is swept by the next prune)");
                    self.store.abandon_cycle(open.id)?;
                }
            }
            return Ok(());
        };
        let (source, backup) = (d.source.to_string(), d.backup.to_string());
        if !d.source.is_recorded_as(&azure.source) || azure.backup != backup {
            // The disk was re-pointed since that record was written (Runner::rebind's rule,
            // seen from Azure): its cycle is abandoned with its source's snapshots, and so is
            // a local open cycle, which another owner's later cycle on the old pair may have
            // overwritten the backup under.
            tracing::warn!(disk = %d.name, recorded_source = %azure.source, recorded_backup = %azure.backup, %source, %backup, "the disk's record in Azure is of another source or backup; its cycle is abandoned and a new chain starts");
            if !d.source.is_recorded_as(&azure.source) {
                // By the record's chain: the old source's snapshots were tagged with it.
                self.sweep_recorded(&azure.source, Some(&azure.chain))
                    .await?;
            }
            if let Some(open) = local {
                self.store.abandon_cycle(open.id)?;
            }
            return Ok(());
        }
        let finished = self.store.finished(&d.name, &azure.cycle.tag)?;
        match decide(local.as_ref(), &azure, finished, lease.writer()) {
            Handover::KeepLocal => {}
            Handover::AbandonLocal => {
                if let Some(open) = local {
                    tracing::warn!(disk = %d.name, cycle = %open.tag, current = %azure.cycle.tag, "the disk moved past this unfinished cycle under another owner; abandoning it (its source snapshot is swept by the next prune)");
                    self.store.abandon_cycle(open.id)?;
                }
            }
            Handover::Import => {
                let rec = azure.cycle;
                if local.as_ref().is_some_and(|l| l.tag == rec.tag) {
                    tracing::warn!(disk = %d.name, cycle = %rec.tag, phase = %rec.phase.name(), "another owner ran this cycle further since it stopped here; abandoning it and taking that owner's record from the lock blob");
                } else if let Some(open) = &local {
                    tracing::warn!(disk = %d.name, cycle = %open.tag, current = %rec.tag, "another owner left a cycle open since this unfinished cycle stopped; abandoning it");
                }
                if !rec.is_done() {
                    tracing::info!(disk = %d.name, cycle = %rec.tag, phase = %rec.phase.name(), applied_upto = ?rec.phase.applied_upto(), "resuming the cycle another owner left open (record from the lock blob)");
                }
                self.store.import_cycle(rec, self.now())?;
            }
        }
        Ok(())
    }

    /// The lock blob's record, checked: an empty body is no record; a body that does not
    /// parse, of a newer format, or of another disk or chain is an error naming the blob.
    fn azure_record(&self, lease: &DiskLease) -> Result<Option<AzureRecord>, CycleError> {
        let body = lease.record();
        if body.is_empty() {
            return Ok(None);
        }
        let bad = |reason: String| OwnershipError::BadRecord {
            disk: self.disk.name.clone(),
            blob: lease.blob().clone(),
            reason,
        };
        let rec = parse(&body).map_err(bad)?;
        if rec.disk != self.disk.name || rec.cycle.disk != self.disk.name {
            return Err(bad(format!(
                "the record is of disk {:?}, not {:?}",
                rec.disk, self.disk.name
            ))
            .into());
        }
        if rec.chain != lease.chain() {
            return Err(bad(format!(
                "the record is of chain {}, the lock blob's metadata names chain {}",
                rec.chain,
                lease.chain()
            ))
            .into());
        }
        Ok(Some(rec))
    }

    /// Writes `rec` as the disk's record in its lock blob (nothing without a lease).
    pub(super) async fn publish(&self, rec: &CycleRecord) -> Result<(), CycleError> {
        let Some(lease) = self.lease else {
            return Ok(());
        };
        let d = self.disk;
        publish_record(lease, &d.source.to_string(), &d.backup.to_string(), rec).await?;
        failpoint_after_publish(rec);
        Ok(())
    }

    /// During apply: writes the newest local checkpoint to Azure every
    /// [`AZURE_CHECKPOINT_EVERY`]. Returns only when a write fails (the apply is then dropped,
    /// which is as safe as a crash); pending forever without a lease.
    pub(super) async fn publish_checkpoints(&self) -> CycleError {
        if self.lease.is_none() {
            return std::future::pending().await;
        }
        let every = failpoint_interval().unwrap_or(AZURE_CHECKPOINT_EVERY);
        loop {
            tokio::time::sleep(every).await;
            if let Some(rec) = self.take_unpublished() {
                if let Err(e) = self.publish(&rec).await {
                    return e;
                }
            }
        }
    }

    /// After an apply that stopped (shutdown, a failed request): its last local checkpoint is
    /// written to Azure too, so the next owner need not repeat it. Best effort: a failure
    /// only means the next owner resumes from an earlier checkpoint.
    pub(super) async fn flush_checkpoint(&self) {
        if let Some(rec) = self.take_unpublished() {
            if let Err(e) = self.publish(&rec).await {
                tracing::warn!(disk = %self.disk.name, error = %e, "cannot write the last apply checkpoint to the lock blob; the next owner resumes from an earlier one");
            }
        }
    }
}

/// Writes `rec` (a cycle of the disk bound to `source` and `backup`, display forms) as the
/// disk's record in the lock blob `lease` holds: by the runner as a cycle moves on, and by a
/// rebase for the new chain's first cycle.
pub async fn publish_record(
    lease: &DiskLease,
    source: &str,
    backup: &str,
    rec: &CycleRecord,
) -> Result<(), OwnershipError> {
    let body = AzureRecord {
        format: FORMAT,
        disk: rec.disk.clone(),
        source: source.to_string(),
        backup: backup.to_string(),
        chain: lease.chain().to_string(),
        writer: lease.writer().to_string(),
        cycle: rec.clone(),
    };
    // Serialising plain strings and numbers cannot fail.
    let body = serde_json::to_vec(&body).unwrap_or_default();
    lease
        .write_record(&rec.disk, &rec.tag, Bytes::from(body))
        .await
}

/// Parses a lock blob's body.
pub fn parse(body: &[u8]) -> Result<AzureRecord, String> {
    #[derive(Deserialize)]
    struct Version {
        format: u32,
    }
    let v: Version = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not a snapback record ({e})"))?;
    if v.format != FORMAT {
        return Err(format!(
            "the record has format {}, this snapback reads format {FORMAT} (a newer snapback \
             wrote it: upgrade this one)",
            v.format
        ));
    }
    serde_json::from_slice(body).map_err(|e| format!("the record does not decode ({e})"))
}

/// Test failpoint: with `SNAPBACK_FAILPOINT_PAUSE_AFTER_AZURE_CHECKPOINT=N`, every apply
/// checkpoint is written to Azure at once (not every [`AZURE_CHECKPOINT_EVERY`]) and, after
/// the N-th, the process prints `failpoint: paused after Azure checkpoint N` to stderr and
/// blocks the thread that runs the cycle, so the apply writes nothing more before a crash
/// test's SIGKILL (an async pause would leave the apply running beside it).
fn failpoint_setting() -> Option<usize> {
    std::env::var("SNAPBACK_FAILPOINT_PAUSE_AFTER_AZURE_CHECKPOINT")
        .ok()
        .and_then(|v| v.parse().ok())
}

fn failpoint_interval() -> Option<Duration> {
    failpoint_setting().map(|_| Duration::from_millis(50))
}

fn failpoint_after_publish(rec: &CycleRecord) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static WRITTEN: AtomicUsize = AtomicUsize::new(0);
    let Some(n) = failpoint_setting() else { return };
    if !matches!(rec.phase.applied_upto(), Some(upto) if upto > 0) {
        return;
    }
    if WRITTEN.fetch_add(1, Ordering::SeqCst) + 1 == n {
        eprintln!("failpoint: paused after Azure checkpoint {n}");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::record::{CycleRecord, DiffBase, Phase};
    use crate::model::SnapshotId;

    fn cycle(tag: &str, phase: Phase) -> CycleRecord {
        CycleRecord {
            phase,
            ..CycleRecord::new("d1", tag.into(), None, 0)
        }
    }

    fn applying(tag: &str, upto: u64) -> CycleRecord {
        cycle(
            tag,
            Phase::Apply {
                source: SnapshotId::new("s2".to_string()),
                size: 1 << 20,
                base: Some(SnapshotId::new("s1".to_string())),
                applied_upto: upto,
                backup_etag: None,
            },
        )
    }

    fn done(tag: &str) -> CycleRecord {
        cycle(
            tag,
            Phase::Done {
                source: SnapshotId::new("s2".to_string()),
                backup_snapshot: SnapshotId::new("b2".to_string()),
                backup_etag: "e".into(),
                finished_at: 1,
            },
        )
    }

    fn azure(writer: &str, cycle: CycleRecord) -> AzureRecord {
        AzureRecord {
            format: FORMAT,
            disk: "d1".into(),
            source: "premium/vhds/d1.vhd".into(),
            backup: "backup/backups/d1".into(),
            chain: "c".into(),
            writer: writer.into(),
            cycle,
        }
    }

    #[test]
    fn a_fresh_replica_imports_the_open_cycle() {
        assert_eq!(
            decide(None, &azure("them", applying("t", 4096)), false, "me"),
            Handover::Import
        );
    }

    #[test]
    fn a_different_local_open_cycle_gives_way_to_azures() {
        let local = cycle("mine", Phase::Snapshot { base: None });
        assert_eq!(
            decide(
                Some(&local),
                &azure("them", applying("t", 4096)),
                false,
                "me"
            ),
            Handover::Import
        );
    }

    #[test]
    fn the_same_cycle_keeps_the_record_written_last() {
        let local = applying("t", 8192);
        // Written by this installation: the local record was saved first (one step ahead).
        assert_eq!(
            decide(Some(&local), &azure("me", applying("t", 4096)), false, "me"),
            Handover::KeepLocal
        );
        // Written by another owner after this one stopped: theirs, even finished.
        assert_eq!(
            decide(Some(&local), &azure("them", done("t")), false, "me"),
            Handover::Import
        );
    }

    #[test]
    fn a_local_cycle_the_disk_moved_past_is_abandoned() {
        let local = applying("old", 4096);
        assert_eq!(
            decide(Some(&local), &azure("them", done("new")), false, "me"),
            Handover::AbandonLocal
        );
        assert_eq!(
            decide(None, &azure("them", done("new")), false, "me"),
            Handover::KeepLocal
        );
    }

    #[test]
    fn a_cycle_finished_here_is_not_opened_again() {
        // Finished locally, crashed before the Azure write of its end.
        let in_azure = azure(
            "me",
            cycle(
                "t",
                Phase::Prune {
                    source: SnapshotId::new("s2".to_string()),
                    backup_snapshot: SnapshotId::new("b2".to_string()),
                    backup_etag: "e".into(),
                },
            ),
        );
        assert_eq!(decide(None, &in_azure, true, "me"), Handover::KeepLocal);
        let newer = cycle("u", Phase::Snapshot { base: None });
        assert_eq!(
            decide(Some(&newer), &in_azure, true, "me"),
            Handover::AbandonLocal
        );
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_named() {
        let rec = azure(
            "me",
            cycle(
                "t",
                Phase::Snapshot {
                    base: Some(DiffBase {
                        snapshot: SnapshotId::new("s1".to_string()),
                        backup_etag: Some("\"0x1\"".into()),
                    }),
                },
            ),
        );
        let body = serde_json::to_vec(&rec).unwrap();
        assert_eq!(parse(&body).unwrap(), rec);
        assert!(body.len() < 2048, "a record is small: {} bytes", body.len());
        let e = parse(b"{not json").unwrap_err();
        assert!(e.contains("not a snapback record"), "{e}");
        let newer = String::from_utf8(body)
            .unwrap()
            .replace("\"format\":1", "\"format\":2");
        let e = parse(newer.as_bytes()).unwrap_err();
        assert!(e.contains("format 2"), "{e}");
        let e = parse(br#"{"format":1,"disk":"d1"}"#).unwrap_err();
        assert!(e.contains("does not decode"), "{e}");
    }
}
