pub mod azurite;
pub mod fixture;
