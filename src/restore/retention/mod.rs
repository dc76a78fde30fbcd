//! Retention: which restore points to keep, as a pure plan, and its execution.
//!
//! [`plan`] is pure: the points, the rules, the time and the time zone go in; a decision per
//! point comes out. Grid semantics as in restic's `forget`: each periodic rule keeps the newest
//! point of each of the last N periods *that have a point* (so a week without backups does not
//! make `daily = 7` forget older days); a point is pruned only if no rule keeps it; the newest
//! point is always kept; with no rule configured everything is kept.
//!
//! Periods are calendar periods in the disk's time zone (`tz`): hours are real hours (the
//! repeated hour of a DST fall-back is two hours, told apart by their UTC offset), days are
//! local dates (23 or 25 hours long around DST changes), weeks are ISO weeks (Monday first;
//! 31 December may belong to week 1 of the next year), months are local calendar months.
//!
//! [`prune`] executes a plan on a disk's backup blob: it lists the snapshots tagged
//! `snapback_disk = <this disk>` (never anyone else's), deletes the ones no rule keeps and
//! removes them from the state's `restore_points` table.
//!
//! The two live apart: [`plan`] (the rules, pure) in `plan.rs`, and what reads the backup's
//! snapshots and deletes ([`restore_points`], [`disk_plan`], [`prune`]) in `prune.rs`.

mod plan;
mod prune;

pub use plan::{keeps_everything, plan, Decision, Point, Rule, FUTURE_TOLERANCE};
pub use prune::{disk_plan, prune, restore_points, PruneReport, RetentionError, StoredPoint};
