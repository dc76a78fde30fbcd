//! The composition root: the one place the process's HTTP clients are built from the config
//! (storage over the configured accounts, the ARM client and the export client of the
//! `[azure]` table, the cluster's coordination client), handed out as `Arc`s. Apart so that
//! `App`, the daemon and `check` take their clients from here instead of each
//! building its own, and so that what each client is configured with is stated once.

use crate::arm::{ArmClient, ArmOptions};
use crate::azure::sas_blob::SasBlobs;
use crate::azure::AzureBlobs;
use crate::config::Config;
use std::sync::Arc;

/// The clients one process (or one loaded config of the daemon) works with.
pub struct Clients {
    /// The storage accounts of the config.
    pub storage: Arc<AzureBlobs>,
    /// The `[azure]` table's clients.
    pub cloud: Cloud,
}

/// The clients of the `[azure]` table (managed disks).
pub struct Cloud {
    /// The ARM client, or why it could not be made (reported by the managed disks only);
    /// None without an `[azure]` table.
    pub arm: Option<Result<Arc<ArmClient>, String>>,
    /// Reads through the SAS URLs of managed disks' snapshots (and uploads through them).
    pub exports: Arc<SasBlobs>,
}

impl Clients {
    /// The clients of cycles, restores and the rest of the commands: every write to storage
    /// is bounded by the disk leases' request timeout, so no write of a lease holder outlives
    /// its lease (`ownership::LeaseTiming::request_timeout`).
    pub fn open(config: &Config) -> Clients {
        let write_timeout =
            crate::ownership::LeaseTiming::new(config.lease_duration).request_timeout();
        Clients {
            storage: Arc::new(
                AzureBlobs::new(config.accounts.values()).with_write_timeout(write_timeout),
            ),
            cloud: Cloud::open(config),
        }
    }

    /// The clients of `check`: its storage writes carry no lease-bound deadline (a check holds
    /// no disk lease; its scratch writes keep the SDK's own timeouts, as they always have).
    pub fn for_check(config: &Config) -> Clients {
        Clients {
            storage: Arc::new(AzureBlobs::new(config.accounts.values())),
            cloud: Cloud::open(config),
        }
    }
}

impl Cloud {
    pub fn open(config: &Config) -> Cloud {
        let arm = config.azure.as_ref().map(|a| {
            ArmClient::from_config(a, ArmOptions::default())
                .map(Arc::new)
                .map_err(|e| e.to_string())
        });
        // Exports of Entra-only disks are read with the same identity that asks for them.
        let exports = Arc::new(match &arm {
            Some(Ok(a)) => SasBlobs::default().with_credential(a.credential()),
            _ => SasBlobs::default(),
        });
        Cloud { arm, exports }
    }
}

/// The `[cluster]` coordination account's own client (the heartbeat is Azure leases, whatever
/// storage the cycles use): that one account only, without the cycles' write deadline (the
/// heartbeat has its own lease timing).
pub fn coordination(config: &Config, account: &str) -> Arc<AzureBlobs> {
    Arc::new(AzureBlobs::new(config.accounts.get(account)))
}
