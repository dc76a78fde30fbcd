//! snapback: incremental, crash-safe backups of Azure page blobs (VM disks).
//!
//! Architecture (see `docs/design.md`):
//! - [`config`]: the TOML contract, validated into typed specs with every problem reported.
//! - [`pages`]: page geometry and diff coalescing (pure).
//! - [`blobs`]: the narrow page-blob trait a cycle needs.
//! - [`azure`]: the only code that speaks HTTP; implements [`blobs::PageBlobs`].
//! - [`throttle`]: the per-account request budget and adaptive concurrency (AIMD).
//! - [`fake`]: an in-memory [`blobs::PageBlobs`] for simulation tests.
//! - [`cycle`]: the cycle state machine (pure) and its runner.
//! - [`state`]: the SQLite state database.
//! - [`restore`]: promote a restore point, copy it to a target, optionally restart the chain.
//! - [`retention`]: which restore points to keep (a pure plan) and pruning.
//! - [`verify`]: compares a restore point with its source snapshot.
//! - [`app`]: the operations behind the CLI commands.
//! - [`daemon`]: `snapback run`, the long-running scheduler with its control socket and metrics.

pub mod app;
pub mod azure;
pub mod blobs;
pub mod config;
pub mod cycle;
pub mod daemon;
pub mod fake;
pub mod pages;
pub mod restore;
pub mod retention;
pub mod state;
pub mod throttle;
pub mod verify;
