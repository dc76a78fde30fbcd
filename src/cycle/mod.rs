//! One backup cycle of one disk: the pure state machine ([`machine`]), its executor
//! ([`runner`]) and a request meter ([`metered`]).

pub mod find_or_make;
pub mod machine;
pub mod metered;
pub mod progress;
pub mod runner;
