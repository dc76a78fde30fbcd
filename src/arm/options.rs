//! What the ARM client needs to know: where ARM and Entra ID are and how snapback signs in.
//! The client owns these types; `config` (the `[azure]` table) builds them from the file.

use std::path::PathBuf;
use url::Url;

/// ARM of Azure's public cloud.
pub const DEFAULT_ARM_ENDPOINT: &str = "https://management.azure.com";
/// Entra ID of Azure's public cloud.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// The validated `[azure]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureConfig {
    /// ARM root, e.g. `https://management.azure.com` (no trailing path).
    pub arm_endpoint: Url,
    /// Entra ID authority, e.g. `https://login.microsoftonline.com`.
    pub authority_host: Url,
    pub credential: ArmCredentialConfig,
}

/// How snapback gets its ARM token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArmCredentialConfig {
    /// The VM's (or a user-assigned) managed identity.
    ManagedIdentity { client_id: Option<String> },
    /// AKS workload identity, configured by the `AZURE_*` variables the webhook injects.
    WorkloadIdentity,
    /// A service principal with a client secret read from a variable or a file.
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: SecretSource,
    },
    /// The signed-in Azure CLI.
    AzureCli,
}

/// Where a secret is read from (never the config file itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}
