//! `snapback check`: proves, per disk and against the real service, that every operation a
//! cycle and a restore need is permitted, before the first scheduled cycle finds out.
//!
//! Only scratch objects are used, and all of them are removed whatever happens:
//! - on the source, two snapshots tagged `snapback_check=<id>` (never `snapback_disk`, so no
//!   cycle ever mistakes or prunes them), deleted at the end; the source blob itself is only
//!   read;
//! - in the backup container, a page blob `<backup>.snapback-check-<id>` and one snapshot of
//!   it; the container is created (and deleted afterwards) when it does not exist yet.
//!
//! A failure names its cause and what is missing in terms an operator can act on: the role to
//! assign to a managed identity, the letter a SAS lacks, or the key that is refused.
//!
//! Rows per concern: the report's vocabulary and its table (`report`), what a refusal asks
//! the operator to grant (`remedy`), schedules against Azure's snapshot limits
//! (`schedule_limits`), a page-blob disk's scratch round trip (`page_blob`) and a managed
//! disk's ARM reads (`managed`). This file runs them per disk and records their rows.

mod managed;
mod page_blob;
mod remedy;
mod report;
mod schedule_limits;

pub use report::{all_passed, render, CheckRow, Operation, Outcome};
pub use schedule_limits::{managed_limits_note, premium_schedule_warning};

use super::clients::Clients;
use crate::config::{AccountConfig, Config, DiskConfig};
use crate::storage::{BlobError, BlobRef};
use remedy::missing_for;

/// Metadata tag on every scratch snapshot `check` creates.
pub const TAG_CHECK: &str = "snapback_check";

/// Checks each disk in turn (one at a time: a check is a handful of small requests).
/// The clients come from the composition root ([`Clients::for_check`]).
pub async fn check(config: &Config, clients: &Clients, disks: &[DiskConfig]) -> Vec<CheckRow> {
    let mut rows = Vec::new();
    for disk in disks {
        rows.extend(managed::managed_disk_type(&clients.cloud, disk).await);
        rows.extend(check_disk(clients, config, disk).await);
    }
    rows
}

/// One disk's check: a managed disk's ARM reads, or a page blob's scratch round trip. The
/// concrete `AzureBlobs` (not the `PageBlobs` trait): the preflight asks Azure-specific
/// questions the trait has no words for (the account's SKU, a lease taken and released on a
/// scratch blob, whether a container exists, deleting it).
async fn check_disk(clients: &Clients, config: &Config, disk: &DiskConfig) -> Vec<CheckRow> {
    match disk.blob_source().cloned() {
        Some(source) => {
            page_blob::check_page_blob(clients.storage.as_ref(), config, disk, source).await
        }
        None => managed::check_managed(&clients.cloud, disk).await,
    }
}

/// A disk's check: its rows, in the order the operations ran.
struct DiskCheck<'a> {
    config: &'a Config,
    disk: &'a DiskConfig,
    rows: Vec<CheckRow>,
}

impl DiskCheck<'_> {
    /// Records the result of `op` on `target`; returns the value on success.
    fn record<T>(
        &mut self,
        op: Operation,
        target: &BlobRef,
        result: Result<T, BlobError>,
    ) -> Option<T> {
        let (outcome, cause, missing, value) = match result {
            Ok(v) => (Outcome::Pass, String::new(), String::new(), Some(v)),
            Err(e) => {
                let missing = missing_for(op, self.account(target), &e);
                (Outcome::Fail, e.to_string(), missing, None)
            }
        };
        self.push(op, target, outcome, cause, missing);
        value
    }

    /// A row that says nothing to grant.
    fn note(&mut self, op: Operation, target: &BlobRef, outcome: Outcome, cause: String) {
        self.push(op, target, outcome, cause, String::new());
    }

    fn push(
        &mut self,
        op: Operation,
        target: &BlobRef,
        outcome: Outcome,
        cause: String,
        missing: String,
    ) {
        self.rows.push(CheckRow {
            disk: self.disk.name.clone(),
            operation: op,
            target: target.to_string(),
            outcome,
            cause,
            missing,
        });
    }

    fn skip(&mut self, ops: &[Operation], target: &BlobRef, because: Operation) {
        for op in ops {
            self.note(
                *op,
                target,
                Outcome::Skipped,
                format!("not tried: \"{}\" failed", because.label()),
            );
        }
    }

    fn account(&self, blob: &BlobRef) -> Option<&AccountConfig> {
        self.config.accounts.get(&blob.account)
    }
}
