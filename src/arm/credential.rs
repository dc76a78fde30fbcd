//! The azure_identity credential an `[azure]` table asks for.

use super::error::ArmError;
use crate::arm::options::{ArmCredentialConfig, AzureConfig, SecretSource};
use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::{ClientOptions, Transport};
use azure_identity::{
    AzureCliCredential, ClientAssertionCredentialOptions, ClientSecretCredential,
    ClientSecretCredentialOptions, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use std::sync::Arc;

/// Builds the credential. `transport` replaces the default HTTP client of the token
/// requests (tests: one that trusts the emulator's certificate). The client secret is read
/// here; errors name the variable or file, never the secret.
pub fn build(
    cfg: &AzureConfig,
    transport: Option<Transport>,
) -> Result<Arc<dyn TokenCredential>, ArmError> {
    let mut cloud = CustomConfiguration::default();
    cloud.authority_host = cfg
        .authority_host
        .as_str()
        .trim_end_matches('/')
        .to_string();
    let client_options = ClientOptions {
        transport,
        cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
        ..Default::default()
    };
    let fail = |what: &str, e: azure_core::Error| ArmError::Credential {
        reason: format!("{what}: {e}"),
    };
    Ok(match &cfg.credential {
        ArmCredentialConfig::ManagedIdentity { client_id } => {
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id: client_id.clone().map(UserAssignedId::ClientId),
                client_options,
            };
            ManagedIdentityCredential::new(Some(options))
                .map_err(|e| fail("managed identity", e))?
        }
        ArmCredentialConfig::WorkloadIdentity => {
            let options = WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions { client_options },
                ..Default::default()
            };
            WorkloadIdentityCredential::new(Some(options))
                .map_err(|e| fail("workload identity (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE)", e))?
        }
        ArmCredentialConfig::ClientSecret {
            tenant_id,
            client_id,
            secret,
        } => {
            let secret = read_secret(secret)?;
            let options = ClientSecretCredentialOptions { client_options };
            ClientSecretCredential::new(
                tenant_id,
                client_id.clone(),
                Secret::new(secret),
                Some(options),
            )
            .map_err(|e| fail("client secret", e))?
        }
        ArmCredentialConfig::AzureCli => {
            AzureCliCredential::new(None).map_err(|e| fail("Azure CLI", e))?
        }
    })
}

fn read_secret(source: &SecretSource) -> Result<String, ArmError> {
    let value = match source {
        SecretSource::Env(var) => std::env::var(var).map_err(|_| ArmError::Credential {
            reason: format!("azure.client_secret_env: environment variable {var} is not set"),
        })?,
        SecretSource::File(path) => {
            crate::model::secrets::read_file(path).map_err(|e| ArmError::Credential {
                reason: format!("azure.client_secret_file: {} {e}", path.display()),
            })?
        }
    };
    let value = value.trim().to_string();
    if value.is_empty() {
        let name = match source {
            SecretSource::Env(var) => format!("environment variable {var}"),
            SecretSource::File(path) => path.display().to_string(),
        };
        return Err(ArmError::Credential {
            reason: format!("the client secret in {name} is empty"),
        });
    }
    Ok(value)
}
