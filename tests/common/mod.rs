pub mod arm;
pub mod azurite;
pub mod daemon;
pub mod faultproxy;
pub mod fixture;
pub mod http;
pub mod process;
pub mod pty;
