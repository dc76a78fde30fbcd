//! One backup cycle of one disk: the pure state machine ([`machine`]), its executor
//! ([`runner`], with the apply phase in [`apply`], the seed copy in [`seed`] and a Trusted
//! Launch disk's VM guest state in [`guest_state`]), how a cycle fails ([`error`]) and what a
//! failure asks of the next attempt ([`policy`]), a request meter ([`metered`]) and the open
//! cycle's record kept in
//! the disk's lock blob ([`handover`]).

pub mod apply;
pub mod error;
mod fenced_writes;
pub mod find_or_make;
pub mod guest_state;
pub mod handover;
pub mod machine;
pub mod metered;
mod open;
pub mod policy;
pub mod runner;
pub mod seed;
mod snapshot_actions;
pub mod tuning;
