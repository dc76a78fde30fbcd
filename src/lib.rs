//! snapback: incremental, crash-safe backups of Azure page blobs (VM disks).
//!
//! Architecture (see `docs/design.md`, "Architecture"; dependencies point down: CLI → daemon →
//! service → engine → storage, state, model):
//! - [`config`]: the TOML contract, validated into typed specs with every problem reported.
//! - [`model`]: the shared vocabulary: blob and snapshot ids, metadata tags, time.
//! - [`pages`]: page geometry and diff coalescing (pure).
//! - [`assign`]: the fair share of disks across cluster replicas (pure).
//! - [`blob_error`]: typed storage errors (kind, resource, status, error code).
//! - [`blobs`]: the narrow page-blob trait a cycle needs.
//! - [`arm`]: the only code that speaks to Azure Resource Manager (managed disks).
//! - [`azure`]: the only code that speaks HTTP to storage; implements [`blobs::PageBlobs`].
//! - [`throttle`]: the per-account request budget and adaptive concurrency (AIMD).
//! - [`fake`]: an in-memory [`blobs::PageBlobs`] for simulation tests.
//! - [`cycle`]: the cycle state machine (pure) and its runner.
//! - [`state`]: the SQLite state database, its schema versions and migrations.
//! - [`source`]: what a cycle needs from the disk it backs up ([`source::Source`]).
//! - [`copy`]: waiting for an asynchronous Copy Blob.
//! - [`lock`]: lock files (one daemon per state directory, one process per disk).
//! - [`lease`]: the blob lease operations behind disk ownership.
//! - [`ownership`]: one owner per disk across hosts (a renewed lease on a lock blob).
//! - [`restore`]: promote a restore point, copy it to a target, optionally restart the chain.
//! - [`retention`]: which restore points to keep (a pure plan) and pruning.
//! - [`verify`]: compares a restore point with its source snapshot.
//! - [`logging`]: log output on stderr (colour only on a terminal).
//! - [`hooks`]: commands and a webhook run after each cycle, never changing its result.
//! - [`check`]: `snapback check`, the preflight of every permission a disk needs.
//! - [`terminal`]: progress bars on a terminal (nothing otherwise).
//! - [`arm`]: the only code that speaks to Azure Resource Manager (managed disks).
//! - [`service`]: the operations behind the CLI commands (above the engine, below the daemon).
//! - [`daemon`]: `snapback run`, the long-running scheduler with its control socket and metrics.

pub mod arm;
pub mod azure;
pub mod config;
pub mod cycle;
pub mod daemon;
pub mod model;
pub mod ownership;
pub mod restore;
pub mod service;
pub mod source;
pub mod state;
pub mod storage;
pub mod throttle;
