//! SIGHUP: the config re-read while the daemon runs, and how the supervisor follows it (disks
//! added, removed or changed; new clients from the composition root; every backoff started
//! afresh). Apart from the supervisor's loop because it is the one place the running
//! configuration is replaced, with its own rules on what needs a restart.

use super::cluster;
use super::supervisor::Supervisor;
use crate::config::{Config, DiskConfig};
use crate::service::{App, AppError};
use crate::storage::PageBlobs;
use std::sync::Arc;
use tokio::sync::Semaphore;

pub(super) fn open_app(
    config: Config,
    blobs: Option<&Arc<dyn PageBlobs>>,
) -> Result<App, AppError> {
    match blobs {
        Some(b) => App::with_blobs(config, Arc::clone(b)),
        None => App::open(config),
    }
}

/// A disk's config as far as "did it change" goes (its line in the file does not count).
pub(super) fn same_disk(a: &DiskConfig, b: &DiskConfig) -> bool {
    DiskConfig {
        line: 0,
        ..a.clone()
    } == DiskConfig {
        line: 0,
        ..b.clone()
    }
}

impl Supervisor {
    /// SIGHUP: re-read the config; an invalid one is reported and the running one kept.
    /// Either way every disk's backoff starts afresh and a disk whose last cycle failed is
    /// tried now: SIGHUP is how an operator says "fixed" (a role assigned, a key rotated).
    pub(super) fn reload(&mut self) {
        self.sd_notify(&[sd_notify::NotifyState::Reloading]);
        let now = self.clock.now();
        for slot in self.slots.values_mut() {
            slot.planner.afresh(now, slot.running.is_none());
        }
        match self.try_reload() {
            Ok(()) => {
                self.metrics.reload(true);
                self.probe_storage();
            }
            Err(why) => {
                self.metrics.reload(false);
                tracing::error!(config = %self.config.path.display(), "config reload failed; still running on the previous config:\n{why}");
            }
        }
        self.sd_notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&format!("{} disk(s)", self.slots.len())),
        ]);
    }

    fn try_reload(&mut self) -> Result<(), String> {
        let new = Config::load(&self.config.path).map_err(|e| e.to_string())?;
        if new.state_dir != self.config.state_dir {
            return Err(format!(
                "state_dir changed ({} -> {}); that needs a restart",
                self.config.state_dir.display(),
                new.state_dir.display()
            ));
        }
        if new.control_socket != self.config.control_socket
            || new.metrics_listen != self.config.metrics_listen
        {
            tracing::warn!(
                "control_socket and metrics_listen changes take effect at the next restart"
            );
        }
        let app = open_app(new.clone(), self.blobs.as_ref()).map_err(|e| e.to_string())?;
        self.app = Arc::new(app);
        if new.max_concurrent_cycles != self.config.max_concurrent_cycles {
            // Running cycles keep their permits of the old semaphore; new ones use the new.
            self.sem = Arc::new(Semaphore::new(new.max_concurrent_cycles.max(1)));
        }
        let now = self.clock.now();
        let (mut added, mut removed, mut changed) = (Vec::new(), Vec::new(), Vec::new());
        let keep: Vec<&str> = new.disks.iter().map(|d| d.name.as_str()).collect();
        let gone: Vec<String> = self
            .slots
            .keys()
            .filter(|n| !keep.contains(&n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            if let Some(slot) = self.slots.remove(&name) {
                if let Some(r) = slot.running {
                    tracing::info!(disk = %name, "disk removed from the config: stopping its cycle at the next checkpoint");
                    r.token.cancel();
                }
                self.metrics.remove_disk(&name);
                removed.push(name);
            }
        }
        for d in &new.disks {
            match self.slots.get(&d.name) {
                Some(slot) if same_disk(&slot.disk, d) => {}
                Some(_) => {
                    // A running cycle finishes with the config it started with.
                    let running = self.slots.remove(&d.name).and_then(|s| s.running);
                    self.add_disk(d.clone(), now);
                    if let Some(slot) = self.slots.get_mut(&d.name) {
                        slot.running = running;
                    }
                    changed.push(d.name.clone());
                }
                None => {
                    self.add_disk(d.clone(), now);
                    added.push(d.name.clone());
                }
            }
        }
        if new.cluster != self.config.cluster {
            tracing::warn!("[cluster] changes take effect at the next restart");
        }
        if let Some(c) = &self.cluster {
            c.set_disks(cluster::DiskSet::of(&new.disks));
        }
        self.config = new;
        self.metrics.set_disks(self.slots.len());
        let relist = self
            .config
            .disks
            .iter()
            .filter(|d| added.contains(&d.name) || changed.contains(&d.name))
            .cloned()
            .collect();
        self.list_restore_points(relist);
        tracing::info!(
            added = %added.join(","),
            removed = %removed.join(","),
            changed = %changed.join(","),
            disks = self.slots.len(),
            "config reloaded"
        );
        Ok(())
    }
}
