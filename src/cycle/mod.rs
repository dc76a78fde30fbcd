//! One backup cycle of one disk: the pure state machine ([`machine`]), its executor
//! ([`runner`], with the apply phase in [`apply`] and the seed copy in [`seed`]), how a cycle
//! fails ([`error`]) and a request meter ([`metered`]).

pub mod apply;
pub mod error;
pub mod find_or_make;
pub mod machine;
pub mod metered;
pub mod progress;
pub mod runner;
pub mod seed;
