//! How an account's requests are authorised: its secret read from where the config points
//! (a Shared Key, a SAS token, or a managed / workload identity). Apart from the client's
//! set-up because it is the one place secrets are loaded, and every error here names the
//! variable or file, never the secret.

use super::shared_key::{AccountKey, SasToken};
use crate::azure::account::{AccountConfig, AuthConfig};
use crate::storage::{BlobError, BlobResult, ErrorKind as Kind, Resource};
use azure_core::credentials::TokenCredential;
use std::sync::Arc;

/// The scope of a bearer token for Azure Storage (also for `x-ms-copy-source-authorization`).
pub(super) const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// How an account's requests are authorised. Every variant's `Debug` hides its secret.
#[derive(Clone, Debug)]
pub(super) enum Auth {
    SharedKey(AccountKey),
    Sas(SasToken),
    Token(Arc<dyn TokenCredential>),
}

/// Reads the account's secret from where the config points.
pub(super) fn load_auth(cfg: &AccountConfig) -> BlobResult<Auth> {
    let read_env = |var: &str| {
        std::env::var(var).map_err(|_| {
            BlobError::local(
                Kind::Unusable,
                Resource::Account(cfg.key.clone()),
                format!("environment variable {var} is not set"),
            )
        })
    };
    let read_file = |path: &std::path::Path, field: &str| {
        crate::model::secrets::read_file(path).map_err(|e| {
            BlobError::local(
                Kind::Unusable,
                Resource::Account(cfg.key.clone()),
                format!("{field} {} {e}", path.display()),
            )
        })
    };
    let key = |text: String, source: String| {
        AccountKey::from_base64(&text)
            .map(Auth::SharedKey)
            .map_err(|e| {
                BlobError::local(
                    Kind::Unusable,
                    Resource::Account(cfg.key.clone()),
                    format!("{source}: {e}"),
                )
            })
    };
    match &cfg.auth {
        AuthConfig::SharedKeyEnv(var) => key(read_env(var)?, var.clone()),
        AuthConfig::SharedKeyFile(path) => key(
            read_file(path, "shared_key_file")?,
            path.display().to_string(),
        ),
        AuthConfig::SasTokenEnv(var) => Ok(Auth::Sas(SasToken::new(&read_env(var)?))),
        AuthConfig::SasTokenFile(path) => Ok(Auth::Sas(SasToken::new(&read_file(
            path,
            "sas_token_file",
        )?))),
        AuthConfig::ManagedIdentity { client_id } => {
            let err = |e: azure_core::Error| {
                BlobError::local(
                    Kind::Unusable,
                    Resource::Account(cfg.key.clone()),
                    format!("managed identity: {e}"),
                )
            };
            // Workload identity (AKS) is announced by its token file; otherwise IMDS.
            if std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").is_some() {
                let cred = azure_identity::WorkloadIdentityCredential::new(None).map_err(err)?;
                Ok(Auth::Token(cred))
            } else {
                let options = azure_identity::ManagedIdentityCredentialOptions {
                    user_assigned_id: client_id
                        .clone()
                        .map(azure_identity::UserAssignedId::ClientId),
                    ..Default::default()
                };
                let cred =
                    azure_identity::ManagedIdentityCredential::new(Some(options)).map_err(err)?;
                Ok(Auth::Token(cred))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::AzureBlobs;
    use azure_core::http::Url;

    #[test]
    fn debug_output_never_shows_a_credential() {
        use crate::azure::account::{AccountConfig, AuthConfig};
        let sas = "sv=2025-11-05&sp=rl&sig=c2VjcmV0LXNpZ25hdHVyZQ%3D%3D";
        let key = "c2VjcmV0LWFjY291bnQta2V5";
        std::env::set_var("SNAPBACK_UNIT_TEST_DEBUG_SAS", sas);
        std::env::set_var("SNAPBACK_UNIT_TEST_DEBUG_KEY", key);
        let account = |name: &str, auth| AccountConfig {
            key: name.to_string(),
            endpoint: Url::parse(&format!("http://127.0.0.1:1/{name}")).unwrap(),
            account_name: name.to_string(),
            path_style: true,
            auth,
            throttle: Default::default(),
        };
        let blobs = AzureBlobs::new(&[
            account(
                "withsas",
                AuthConfig::SasTokenEnv("SNAPBACK_UNIT_TEST_DEBUG_SAS".into()),
            ),
            account(
                "withkey",
                AuthConfig::SharedKeyEnv("SNAPBACK_UNIT_TEST_DEBUG_KEY".into()),
            ),
        ]);
        let shown = format!("{blobs:?} {blobs:#?}");
        assert!(
            shown.contains("withsas") && shown.contains("withkey"),
            "{shown}"
        );
        for secret in ["c2VjcmV0LXNpZ25hdHVyZQ", key] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
}
