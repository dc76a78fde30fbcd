//! Readiness (`/readyz`): "connected and working", as an orchestrator should see it.
//!
//! Liveness (`/healthz`) only says the process serves HTTP. Readiness also needs evidence
//! from the storage service: the daemon is ready once every storage account its disks use
//! has answered a request, and stays ready until a request fails in a way that no retry of
//! the same setup fixes (credentials refused, no route to the service, a secret that cannot
//! be read). A disk-level failure (a missing source blob, a 500) is not a readiness matter:
//! the service answered, and the alert rules report the disk.
//!
//! Evidence comes from a probe (one Get Blob Properties per account, at start, after a
//! reload and again while not ready) and from every cycle's result.

use crate::config::DiskConfig;
use crate::cycle::error::CycleError;
use crate::model::record::CycleRecord;
use crate::storage::{BlobError, ErrorKind, PageBlobs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Debug)]
pub struct Readiness {
    state: Mutex<State>,
    /// A probe is under way (a slow one is not joined by the next).
    probing: AtomicBool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Ready,
    NotReady(String),
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            state: Mutex::new(State::NotReady(
                "waiting for the storage accounts to answer".into(),
            )),
            probing: AtomicBool::new(false),
        }
    }
}

impl Readiness {
    /// `Err(why)` while not ready.
    pub fn check(&self) -> Result<(), String> {
        match self.state.lock().map(|s| s.clone()) {
            Ok(State::Ready) => Ok(()),
            Ok(State::NotReady(why)) => Err(why),
            Err(_) => Err("readiness state poisoned".into()),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.check().is_ok()
    }

    fn set(&self, state: State) {
        if let Ok(mut s) = self.state.lock() {
            if *s != state {
                match &state {
                    State::Ready => tracing::info!("ready: the storage accounts answer"),
                    State::NotReady(why) => tracing::warn!(reason = %why, "not ready"),
                }
                *s = state;
            }
        }
    }

    /// Claims the right to probe; `false` while another probe runs.
    pub fn start_probe(&self) -> bool {
        !self.probing.swap(true, Ordering::AcqRel)
    }

    /// Takes a probe's result (and ends the probe).
    pub fn probed(&self, result: Result<(), String>) {
        self.probing.store(false, Ordering::Release);
        self.set(match result {
            Ok(()) => State::Ready,
            Err(why) => State::NotReady(why),
        });
    }

    /// Takes what a finished cycle proves about the connection.
    pub fn cycle_ended(&self, disk: &str, result: &Result<CycleRecord, CycleError>) {
        match result {
            Ok(_) => self.set(State::Ready),
            Err(CycleError::Blob { source, .. }) if !answered(source) => {
                self.set(State::NotReady(format!("disk {disk}: {source}")))
            }
            // The service answered (or the cycle stopped before asking): no new evidence.
            Err(_) => {}
        }
    }
}

/// Whether an error still proves that the service was reached with working credentials.
fn answered(e: &BlobError) -> bool {
    !matches!(
        e.kind,
        ErrorKind::Auth | ErrorKind::Transient | ErrorKind::Unusable
    )
}

/// One Get Blob Properties per account the disks use (on the first blob naming it); a blob
/// that does not exist is an answer. `Err` names the account and blob of the first failure.
pub async fn probe(blobs: &dyn PageBlobs, disks: &[DiskConfig]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    let blobs_of = |d: &'_ DiskConfig| [d.blob_source().cloned(), Some(d.backup.clone())];
    for path in disks.iter().flat_map(blobs_of).flatten() {
        let path = &path;
        if !seen.insert(path.account.clone()) {
            continue;
        }
        let result = match blobs.check_account(&path.account) {
            Ok(()) => blobs.properties(path, None).await.map(|_| ()),
            Err(e) => Err(e),
        };
        match result {
            Err(e) if !answered(&e) => {
                return Err(format!(
                    "account '{}' (probing {}/{}/{}): {e}",
                    path.account, path.account, path.container, path.blob
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_not_ready_and_follows_cycle_evidence() {
        let r = Readiness::default();
        assert!(r.check().unwrap_err().contains("waiting"));
        assert!(r.start_probe());
        assert!(!r.start_probe(), "one probe at a time");
        r.probed(Ok(()));
        assert!(r.start_probe());
        assert!(r.is_ready());
        let auth = Err(CycleError::Blob {
            disk: "d1".into(),
            source: BlobError::service(
                crate::storage::Resource::Account("premium".into()),
                403,
                Some("AuthenticationFailed".into()),
                "get properties".into(),
            ),
        });
        r.cycle_ended("d1", &auth);
        let why = r.check().unwrap_err();
        assert!(
            why.contains("disk d1") && why.contains("account 'premium'"),
            "{why}"
        );
        // A missing source blob is the disk's problem, not the connection's.
        let missing = Err(CycleError::Blob {
            disk: "d2".into(),
            source: BlobError::service(
                crate::storage::Resource::blob(&crate::model::BlobRef::new(
                    "premium", "vhds", "d2.vhd",
                )),
                404,
                Some("BlobNotFound".into()),
                "get properties".into(),
            ),
        });
        r.probed(Ok(()));
        r.cycle_ended("d2", &missing);
        assert!(r.is_ready());
    }
}
