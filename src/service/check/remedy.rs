//! What a refused operation asks of the operator: the role to assign to a managed identity,
//! the letter a SAS lacks, the key the service refused, the secret that is missing. Apart
//! because it reads the account's configured authorisation, not the service.

use super::report::Operation;
use crate::config::{AccountConfig, AuthConfig};
use crate::storage::{BlobError, ErrorKind, ServiceCode};

/// What to grant or fix for `op` failing with `e` on an account authorised as `account` says.
pub(super) fn missing_for(op: Operation, account: Option<&AccountConfig>, e: &BlobError) -> String {
    let Some(account) = account else {
        return String::new();
    };
    let name = &account.account_name;
    let code = e.code.as_deref().unwrap_or("");
    match e.kind {
        ErrorKind::Auth => match &account.auth {
            AuthConfig::SharedKeyEnv(_) | AuthConfig::SharedKeyFile(_) => format!(
                "use a valid key of storage account '{name}' in {} (the service refused the signature: {code})",
                secret_source(&account.auth)
            ),
            AuthConfig::SasTokenEnv(_) | AuthConfig::SasTokenFile(_) => {
                if matches!(
                    e.service_code(),
                    Some(
                        ServiceCode::AuthorizationPermissionMismatch
                            | ServiceCode::AuthorizationResourceTypeMismatch
                            | ServiceCode::AuthorizationFailure
                    )
                ) {
                    format!(
                        "the SAS in {} lacks '{}' (or does not cover this container) for account '{name}': issue one with it",
                        secret_source(&account.auth),
                        op.sas_permission()
                    )
                } else {
                    format!(
                        "use a valid, unexpired SAS for account '{name}' in {}",
                        secret_source(&account.auth)
                    )
                }
            }
            AuthConfig::ManagedIdentity { .. } => format!(
                "assign role \"{}\" on storage account '{name}' to the identity",
                if op.writes() {
                    "Storage Blob Data Contributor"
                } else {
                    "Storage Blob Data Reader"
                }
            ),
        },
        ErrorKind::Unusable => format!("provide the secret of account '{}'", account.key),
        ErrorKind::NotFound if op == Operation::SourceRead => {
            "check the disk's source path: the blob does not exist".into()
        }
        _ => String::new(),
    }
}

fn secret_source(auth: &AuthConfig) -> String {
    match auth {
        AuthConfig::SharedKeyEnv(v) | AuthConfig::SasTokenEnv(v) => format!("${v}"),
        AuthConfig::SharedKeyFile(p) | AuthConfig::SasTokenFile(p) => p.display().to_string(),
        AuthConfig::ManagedIdentity { .. } => "managed identity".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::storage::Resource;
    use std::path::Path;

    fn account(auth: &str) -> AccountConfig {
        let text = format!(
            "[accounts.bk]\nendpoint = \"https://mybackup.blob.core.windows.net\"\n{auth}\n"
        );
        Config::parse(&text, Path::new("t.toml"))
            .unwrap()
            .accounts
            .remove("bk")
            .unwrap()
    }

    fn denied(code: &str) -> BlobError {
        BlobError::service(
            Resource::Account("bk".into()),
            403,
            Some(code.into()),
            "put page".into(),
        )
    }

    #[test]
    fn a_refusal_names_the_role_the_sas_letter_or_the_key() {
        let mi = account("managed_identity = true");
        let e = denied("AuthorizationPermissionMismatch");
        assert_eq!(
            missing_for(Operation::BackupWrite, Some(&mi), &e),
            "assign role \"Storage Blob Data Contributor\" on storage account 'mybackup' to the identity"
        );
        assert!(missing_for(Operation::SourceDiff, Some(&mi), &e)
            .contains("\"Storage Blob Data Reader\""));
        let sas = account("sas_token_file = \"/run/secrets/bk-sas\"");
        assert!(missing_for(Operation::SourceList, Some(&sas), &e)
            .starts_with("the SAS in /run/secrets/bk-sas lacks 'l'"));
        assert!(missing_for(Operation::BackupDelete, Some(&sas), &e).contains("lacks 'd'"));
        assert!(missing_for(
            Operation::BackupRead,
            Some(&sas),
            &denied("AuthenticationFailed")
        )
        .starts_with("use a valid, unexpired SAS"));
        let key = account("shared_key_env = \"BK_KEY\"");
        assert!(missing_for(
            Operation::SourceRead,
            Some(&key),
            &denied("AuthenticationFailed")
        )
        .starts_with("use a valid key of storage account 'mybackup' in $BK_KEY"));
    }
}
