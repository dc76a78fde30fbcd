//! The read access a [`ManagedDiskSource`] holds, and its ends: each snapshot's SAS (and a
//! Trusted Launch snapshot's guest state SAS) granted once per process and kept in memory,
//! ends of access started in the background after a diff listing and settled before the
//! snapshot is granted again or deleted, and the sweep of what this process (or a killed one)
//! left granted. Apart from the `Source` impl because it is bookkeeping of credentials with
//! its own ordering rules (an end must land before a new grant), not what a cycle asks for.

use super::{arm_err, gone, key, limits, lock_map, ManagedDiskSource, READ_SAS_LIFETIME};
use crate::arm::{Access, ArmError, ArmErrorKind, ResourceId};
use crate::model::secrets::SasUrl;
use crate::storage::BlobResult;
use std::collections::HashMap;

/// An end of read access running in the background; aborted if the source is dropped
/// before it is settled (a cycle cancelled midway: the next cycle's sweep ends what is left).
pub(super) struct Ending(pub(super) tokio::task::JoinHandle<Result<(), ArmError>>);

impl Drop for Ending {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ManagedDiskSource {
    /// A read SAS for `id`, granted once per process.
    pub(super) async fn sas(&self, id: &ResourceId) -> BlobResult<SasUrl> {
        let key = key(id);
        if let Some(s) = self.lock().get(&key) {
            return Ok(s.clone());
        }
        // Granted again after its end (a listing redone in this process): that end must land
        // first, or it would end the new grant.
        self.settle_end(id).await;
        let snap = self.known(id).await?;
        let size = snap
            .as_ref()
            .and_then(|s| s.properties.disk_size_bytes)
            .unwrap_or(0);
        let policy = snap
            .as_ref()
            .map(|s| s.properties.export.clone())
            .unwrap_or_default();
        crate::source::managed_disk::access::check_export(&policy, &id.to_string())?;
        let lifetime = crate::storage::copy_source_lifetime(size).max(READ_SAS_LIFETIME);
        // A Trusted Launch snapshot's grant also exports its VM guest state.
        let with_guest = self.has_guest_state(snap.as_ref()).await?;
        let grant = match self
            .arm
            .grant_access(id, Access::Read, lifetime, with_guest)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                let e = arm_err(id, e);
                self.note_limit(&e, id, limits::on_access, false).await;
                return Err(e);
            }
        };
        // The guest state is read through the same export host: the same bearer rule.
        if let Some(g) = grant.guest_state {
            let g = crate::source::managed_disk::access::mark(g, &policy);
            lock_map(&self.guest).insert(key.clone(), g);
        }
        let sas = crate::source::managed_disk::access::mark(grant.sas, &policy);
        self.lock().insert(key, sas.clone());
        Ok(sas)
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SasUrl>> {
        lock_map(&self.granted)
    }

    /// Ends access to `id` (also when this process did not grant it). One ended in the
    /// background is waited for; it is ended again only if that failed.
    pub(super) async fn end_access(&self, id: &ResourceId) -> BlobResult<()> {
        if self.settle_end(id).await == Some(true) {
            return Ok(());
        }
        self.ending_lock().remove(&key(id));
        self.lock().remove(&key(id));
        lock_map(&self.guest).remove(&key(id));
        if let Some(s) = self.seen().snapshots.get_mut(&key(id)) {
            s.properties.disk_state = None;
        }
        match self.arm.end_get_access(id).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ArmErrorKind::NotFound => Ok(()),
            Err(e) => Err(arm_err(id, e)),
        }
    }

    /// Ends the read access this process granted, and only that: what `verify` opened,
    /// never another replica's or installation's SAS of a cycle under way.
    pub async fn end_granted(&self) -> BlobResult<()> {
        self.settle_ends().await;
        let mut granted: Vec<String> = self.lock().keys().cloned().collect();
        // Ends that failed in the background: this process granted those too.
        granted.extend(self.ending_lock().keys().cloned());
        for key in granted {
            if let Ok(id) = key.parse::<ResourceId>() {
                self.end_access(&id).await?;
            }
        }
        Ok(())
    }

    /// Snapshots with access: granted by this process, or reported `ActiveSAS` by the
    /// cycle's last listing (a killed process's).
    pub(super) fn with_access(&self) -> Vec<ResourceId> {
        let mut ids: HashMap<String, ResourceId> = HashMap::new();
        for k in self.lock().keys() {
            if let Ok(id) = k.parse::<ResourceId>() {
                ids.insert(key(&id), id);
            }
        }
        for k in self.ending_lock().keys() {
            if let Ok(id) = k.parse::<ResourceId>() {
                ids.insert(key(&id), id);
            }
        }
        for s in self.seen().snapshots.values() {
            if s.properties.disk_state.as_deref() == Some("ActiveSAS") {
                if let Ok(id) = s.id.parse::<ResourceId>() {
                    ids.insert(key(&id), id);
                }
            }
        }
        ids.into_values().collect()
    }

    pub(super) fn ending_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<Ending>>> {
        lock_map(&self.ending)
    }

    /// Waits for the end of `id`'s access started in the background, if one is running:
    /// whether access is ended (None: none was started, or it was settled before). A failed
    /// end is reported here, once, and stays in [`Self::ending`], so the access counts as
    /// granted: prune ends it again before the delete, or the next cycle's sweep does.
    pub(super) async fn settle_end(&self, id: &ResourceId) -> Option<bool> {
        let k = key(id);
        let mut running = {
            let mut ending = self.ending_lock();
            match ending.get_mut(&k) {
                Some(running @ Some(_)) => running.take()?,
                _ => return None,
            }
        };
        let ended = match (&mut running.0).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) if e.kind() == ArmErrorKind::NotFound => true,
            Ok(Err(e)) => {
                tracing::warn!(snapshot = %id, error = %e, "ending read access after the diff listing failed; it is ended again before the snapshot is deleted");
                false
            }
            Err(e) => {
                tracing::warn!(snapshot = %id, error = %e, "the end of read access after the diff listing did not finish; it is ended again before the snapshot is deleted");
                false
            }
        };
        if ended {
            self.ending_lock().remove(&k);
            if let Some(s) = self.seen().snapshots.get_mut(&k) {
                s.properties.disk_state = None;
            }
        }
        Some(ended)
    }

    /// Waits for every end of access still running in the background (a cycle that stops
    /// before prune does not leave one running after it: it would be sent on past the
    /// disk's lease, and could end a later cycle's grant of the same snapshot).
    pub async fn settle_ends(&self) {
        let running: Vec<String> = self
            .ending_lock()
            .iter()
            .filter(|(_, e)| e.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for k in running {
            if let Ok(id) = k.parse::<ResourceId>() {
                self.settle_end(&id).await;
            }
        }
    }

    /// A read SAS for `id`; a snapshot that no longer exists is `NotFound` about it (the
    /// runner then takes a new `S(n)`, or repairs when it was `S(n-1)`).
    pub(super) async fn sas_or_gone(&self, id: &ResourceId) -> BlobResult<SasUrl> {
        self.sas(id)
            .await
            .map_err(|e| if e.is_not_found() { gone(id) } else { e })
    }
}
