//! snapback: incremental, crash-safe backups of Azure page blobs (VM disks).
//!
//! Architecture (see `docs/design.md`, "Architecture"): one folder per layer, each using only
//! the layers below it:
//! - `main.rs` (the binary): the command line.
//! - [`daemon`]: `snapback run`, the long-running scheduler with its control socket and metrics.
//! - [`service`]: the operations behind the commands; `check`, hooks, progress bars, logging.
//! - [`restore`]: restore points once made: restore, restore to a managed disk, verify, retention.
//! - [`cycle`]: one cycle of one disk: the pure machine, its runner, apply, seed, handover.
//! - [`source`]: what a cycle needs from the disk it backs up; page blobs and managed disks.
//! - [`ownership`]: one owner per disk across hosts (lease, fencing); lock files.
//! - [`state`]: the SQLite state database, its schema versions and migrations.
//! - [`config`]: the TOML contract, validated into typed specs with every problem reported.
//! - [`arm`], [`azure`], [`throttle`]: the HTTP clients (ARM, storage) and the request budget.
//! - [`storage`]: the storage traits, typed errors, the in-memory fake, the copy wait.
//! - [`model`]: the shared vocabulary: ids, tags, time, page geometry, the cycle record.

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
