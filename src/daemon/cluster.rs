//! Cluster membership (`[cluster]`): which replicas are alive, and which disks this one runs.
//!
//! Membership is Azure blob leases, nothing home-made: each replica holds a lease of
//! `heartbeat_lease` on its heartbeat blob `replicas/<replica_id>` in the coordination
//! container, renews it every `heartbeat_every`, and releases it on a graceful shutdown. A
//! replica is alive iff its heartbeat blob is leased, which one List Blobs shows for all of
//! them. Every round, each replica lists the heartbeats and computes the fair share of the
//! configured disks over the alive replicas ([`crate::model::assign`]); equal views give equal
//! assignments, so nothing else is exchanged.
//!
//! Views may differ for a moment (a replica that just joined is seen by the others only at
//! their next round). That is harmless: a replica starts cycles only for its assigned disks,
//! and every cycle still runs under the disk's own lease (`ownership`), so two replicas that
//! both think a disk is theirs take turns on it; never two cycles at once. The worst case of a
//! stale view is a disk waiting a tick, or being tried by two replicas.
//!
//! A round that cannot reach the coordination container keeps the last assignment: a blip
//! must not stop every backup, and the disk leases keep running them safe even if the others
//! meanwhile decided this replica is gone and took its disks. Before the first view (the
//! container unreachable at start) the replica runs every disk, as without `[cluster]`: a
//! broken coordination setting degrades to racing on the disk leases, never to no backups.

use crate::config::{ClusterConfig, DiskConfig};
use crate::model::assign;
use crate::storage::lease::{LeaseBlobs, LeaseListing};
use crate::storage::{BlobError, BlobRef, ErrorKind, Metadata, PageBlobs};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the heartbeat asks of the coordination account: a container and a blob, a lease on
/// it, and a listing with lease states. A trait, not the Azure client: the daemon gets the
/// client from the composition root (`service::clients::coordination`).
pub trait CoordinationBlobs: PageBlobs + LeaseBlobs + LeaseListing {}
impl<T: PageBlobs + LeaseBlobs + LeaseListing> CoordinationBlobs for T {}

/// Heartbeat blobs live under this prefix of the coordination container.
pub const REPLICAS_PREFIX: &str = "replicas/";

/// Heartbeat metadata naming the disk set its replica runs (see [`DiskSet`]).
const DISK_SET_KEY: &str = "disk_set";

/// The configured disks as the cluster sees them: their names, and a fingerprint of the
/// whole set (names, sources and backups). Replicas count each other only when their
/// fingerprints match, so two installations that share a coordination container (the
/// implicit cluster uses the first disk's backup account) never divide each other's disks;
/// replicas in the middle of a rolling config change form two groups for a moment, which
/// the disk leases keep safe (at worst both groups try a disk and one skips it).
#[derive(Clone, Debug)]
pub struct DiskSet {
    names: Vec<String>,
    fingerprint: String,
}

impl DiskSet {
    pub fn of(disks: &[DiskConfig]) -> DiskSet {
        let mut lines: Vec<String> = disks
            .iter()
            .map(|d| format!("{}\0{}\0{}", d.name, d.source, d.backup))
            .collect();
        lines.sort();
        let crc = crc::Crc::<u64>::new(&crc::CRC_64_XZ);
        DiskSet {
            names: disks.iter().map(|d| d.name.clone()).collect(),
            fingerprint: format!("{:016x}", crc.checksum(lines.join("\n").as_bytes())),
        }
    }
}

/// What this replica sees of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub replica_id: String,
    /// Alive replicas, by id (this one included).
    pub alive: Vec<String>,
    /// The disks this replica starts scheduled cycles for.
    pub assigned: BTreeSet<String>,
    /// Whether the last round reached the coordination container.
    pub connected: bool,
    /// When the view was last confirmed by a successful round (`None`: never yet).
    pub seen_at: Option<Instant>,
}

impl View {
    /// Whether this replica runs `disk`'s scheduled cycles.
    pub fn runs(&self, disk: &str) -> bool {
        self.assigned.contains(disk)
    }
}

/// A running membership: the heartbeat task and the view it publishes.
pub struct Member {
    view: watch::Receiver<View>,
    disks: watch::Sender<DiskSet>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Member {
    /// Joins the cluster: takes the heartbeat lease and reads the first view before
    /// returning (bounded by `heartbeat_every`), so a replica that starts with the others
    /// does not first run every disk. Then keeps the heartbeat in the background.
    pub async fn join(
        cfg: &ClusterConfig,
        replica_id: &str,
        blobs: Arc<dyn CoordinationBlobs>,
        owner_key: u128,
        holder: &str,
        disks: DiskSet,
    ) -> Member {
        let name = format!("{REPLICAS_PREFIX}{replica_id}");
        let mut hb = Heartbeat {
            blob: BlobRef::new(&cfg.account, &cfg.container, &name),
            dir: BlobRef::new(&cfg.account, &cfg.container, REPLICAS_PREFIX),
            lease_id: crate::ownership::derived_id(owner_key, &name),
            metadata: Metadata::from([
                ("holder".to_string(), holder.to_string()),
                (
                    "started_at".to_string(),
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                ),
            ]),
            blobs,
            cfg: cfg.clone(),
            replica_id: replica_id.to_string(),
            held: false,
        };
        let first = View {
            replica_id: replica_id.to_string(),
            alive: vec![replica_id.to_string()],
            assigned: disks.names.iter().cloned().collect(),
            connected: false,
            seen_at: None,
        };
        let (view_tx, view) = watch::channel(first);
        hb.round(&view_tx, &disks).await;
        let (disks_tx, disks_rx) = watch::channel(disks);
        let stop = CancellationToken::new();
        let task = tokio::spawn(hb.run(view_tx, disks_rx, stop.clone()));
        Member {
            view,
            disks: disks_tx,
            stop,
            task,
        }
    }

    /// The current view.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// Whether this replica runs `disk`'s scheduled cycles now.
    pub fn runs(&self, disk: &str) -> bool {
        self.view.borrow().runs(disk)
    }

    /// A receiver of the views, for the supervisor's event loop (see [`next_view`]).
    pub fn subscribe(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// The configured disks changed (a reload): re-assign at once.
    pub fn set_disks(&self, disks: DiskSet) {
        self.disks.send_replace(disks);
    }

    /// Leaves the cluster: releases the heartbeat lease so the others rebalance at their next
    /// round instead of after the lease expires.
    pub async fn leave(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The next view from `rx`; never ready without a cluster (or once the heartbeat stopped).
pub async fn next_view(rx: &mut Option<watch::Receiver<View>>) -> View {
    if let Some(r) = rx {
        if r.changed().await.is_ok() {
            return r.borrow_and_update().clone();
        }
    }
    std::future::pending().await
}

/// Logs what changed between two views (who is alive, which disks this replica runs).
pub fn log_change(old: &View, new: &View) {
    if old.alive != new.alive || old.assigned != new.assigned {
        let gained: Vec<&str> = new
            .assigned
            .difference(&old.assigned)
            .map(String::as_str)
            .collect();
        let lost: Vec<&str> = old
            .assigned
            .difference(&new.assigned)
            .map(String::as_str)
            .collect();
        let assigned: Vec<&str> = new.assigned.iter().map(String::as_str).collect();
        tracing::info!(
            replica = %new.replica_id,
            alive = %new.alive.join(","),
            assigned = %assigned.join(","),
            gained = %gained.join(","),
            lost = %lost.join(","),
            "cluster assignment changed"
        );
    }
    if old.seen_at.is_some() && !old.connected && new.connected {
        tracing::info!(replica = %new.replica_id, alive = new.alive.len(), "coordination container reachable again");
    }
}

struct Heartbeat {
    cfg: ClusterConfig,
    /// `cfg.replica_id`, or the installation's default.
    replica_id: String,
    blobs: Arc<dyn CoordinationBlobs>,
    blob: BlobRef,
    dir: BlobRef,
    lease_id: String,
    metadata: Metadata,
    held: bool,
}

impl Heartbeat {
    async fn run(
        mut self,
        view: watch::Sender<View>,
        mut disks: watch::Receiver<DiskSet>,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.cfg.heartbeat_every) => {}
                r = disks.changed() => if r.is_err() { break },
            }
            let set = disks.borrow_and_update().clone();
            self.round(&view, &set).await;
        }
        if self.held {
            // Bounded: a shutdown must not wait on an unreachable coordination account (the
            // lease then expires by itself).
            let limit = self.cfg.heartbeat_every;
            let release = self.blobs.release_lease(&self.blob, &self.lease_id);
            match tokio::time::timeout(limit, release).await {
                Ok(Ok(())) => {
                    tracing::info!(replica = %self.replica_id, "left the cluster (heartbeat lease released)")
                }
                Ok(Err(e)) => {
                    tracing::warn!(blob = %self.blob, error = %e, "cannot release the heartbeat lease; the others see this replica gone when it expires")
                }
                Err(_) => {
                    tracing::warn!(blob = %self.blob, "no answer to the heartbeat lease release within {limit:?}; the others see this replica gone when it expires")
                }
            }
        }
    }

    /// One heartbeat and one look at who is alive, bounded by `heartbeat_every` so a hung
    /// request cannot hold the heartbeat back; the view changes only on success.
    async fn round(&mut self, view: &watch::Sender<View>, disks: &DiskSet) {
        let limit = self.cfg.heartbeat_every.max(Duration::from_secs(1));
        let alive = match tokio::time::timeout(limit, self.beat_and_list(disks)).await {
            Ok(Ok(alive)) => alive,
            Ok(Err(e)) => return self.unreachable(view, &e.to_string()),
            Err(_) => return self.unreachable(view, &format!("no answer within {limit:?}")),
        };
        let me = &self.replica_id;
        let share = assign::disks_of(&assign::assign(&disks.names, &alive), me);
        view.send_modify(|v| {
            v.alive = alive;
            v.assigned = share.into_iter().collect();
            v.connected = true;
            v.seen_at = Some(Instant::now());
        });
    }

    fn unreachable(&self, view: &watch::Sender<View>, error: &str) {
        view.send_if_modified(|v| {
            if v.connected {
                tracing::warn!(container = %format!("{}/{}", self.dir.account, self.dir.container), error = %error, assigned = v.assigned.len(), "cannot reach the cluster's coordination container; keeping the disks assigned so far");
            }
            let was = v.connected;
            v.connected = false;
            was
        });
    }

    /// Renews (or takes) this replica's heartbeat lease, then lists who holds one.
    async fn beat_and_list(&mut self, disks: &DiskSet) -> Result<Vec<String>, BlobError> {
        if self.held {
            if let Err(e) = self.blobs.renew_lease(&self.blob, &self.lease_id).await {
                tracing::warn!(blob = %self.blob, error = %e, "heartbeat lease lost; taking it again");
                self.held = false;
            }
        }
        let set_changed = self.metadata.get(DISK_SET_KEY) != Some(&disks.fingerprint);
        if set_changed {
            self.metadata
                .insert(DISK_SET_KEY.to_string(), disks.fingerprint.clone());
        }
        if !self.held {
            self.take().await?;
        } else if set_changed {
            self.blobs
                .set_leased_metadata(&self.blob, &self.lease_id, &self.metadata)
                .await?;
        }
        let listed = self.blobs.list_leases(&self.dir).await?;
        let mut alive: Vec<String> = listed
            .into_iter()
            .filter(|b| b.leased && b.metadata.get(DISK_SET_KEY) == Some(&disks.fingerprint))
            .filter_map(|b| b.name.strip_prefix(REPLICAS_PREFIX).map(str::to_string))
            .collect();
        // Counted even when its own heartbeat is not held (another process uses the same id):
        // it then shares that id's disks with it, which the disk leases keep safe.
        alive.push(self.replica_id.clone());
        alive.sort();
        alive.dedup();
        Ok(alive)
    }

    /// Creates the heartbeat blob if needed, leases it and names the holder in its metadata.
    /// Held by someone else: logged, not an error (see [`Heartbeat::beat_and_list`]).
    async fn take(&mut self) -> Result<(), BlobError> {
        self.blobs.ensure_container(&self.blob).await?;
        self.blobs.create_lock_blob(&self.blob).await?;
        let seconds = self.cfg.heartbeat_lease.as_secs() as u32;
        match self
            .blobs
            .acquire_lease(&self.blob, &self.lease_id, seconds)
            .await
        {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::Conflict => {
                let other = self
                    .blobs
                    .properties(&self.blob, None)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|p| p.metadata.get("holder").cloned())
                    .unwrap_or_else(|| "another process".into());
                tracing::error!(replica = %self.replica_id, holder = %other, blob = %self.blob, "this replica id is in use by another live process; give every replica its own replica_id");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        self.held = true;
        self.blobs
            .set_leased_metadata(&self.blob, &self.lease_id, &self.metadata)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::DiskSet;
    use crate::config::Config;
    use std::path::Path;

    fn disks(body: &str) -> Vec<crate::config::DiskConfig> {
        let text = format!("state_dir = \"/tmp/s\"\n[accounts.acct]\nendpoint = \"https://acct.blob.core.windows.net\"\nshared_key_env = \"K\"\n{body}");
        Config::parse(&text, Path::new("t.toml")).unwrap().disks
    }

    #[test]
    fn replicas_share_a_disk_set_only_when_names_sources_and_backups_all_match() {
        let d1 =
            "[[disk]]\nname = \"d1\"\nsource = \"acct/vhds/s1\"\nbackup = \"acct/backups/d1\"\n";
        let d2 =
            "[[disk]]\nname = \"d2\"\nsource = \"acct/vhds/s2\"\nbackup = \"acct/backups/d2\"\n";
        let set = |body: &str| DiskSet::of(&disks(body)).fingerprint;
        assert_eq!(set(&format!("{d1}{d2}")), set(&format!("{d2}{d1}")));
        assert_ne!(set(&format!("{d1}{d2}")), set(d1));
        let other_backup = d2.replace("acct/backups/d2", "acct/backups/other");
        assert_ne!(
            set(&format!("{d1}{d2}")),
            set(&format!("{d1}{other_backup}"))
        );
    }
}
