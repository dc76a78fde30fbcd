//! The `[azure]` table: where Azure Resource Manager is and how snapback signs in to it.
//!
//! Needed only for managed disks (docs/managed-disks.md). The contract:
//!
//! ```toml
//! [azure]
//! arm_endpoint = "https://management.azure.com"          # default
//! authority_host = "https://login.microsoftonline.com"   # default
//! # exactly one credential:
//! managed_identity = true            # optional client_id = "..." (user-assigned identity)
//! # workload_identity = true         # AKS workload identity: AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE
//! # tenant_id = "..."  client_id = "..."  client_secret_env = "VAR"   (or client_secret_file = "/path")
//! # azure_cli = true                 # a developer's machine (`az login`)
//! ```
//!
//! Parsed from a `toml::Table` on its own, so it can be validated (and tested) without the
//! rest of the config; every problem is reported at once, each naming its `azure.FIELD`.
//! Secrets never live in the file: a client secret is named by a variable or a file.

use std::fmt;
use std::path::PathBuf;
use toml::{Table, Value};
use url::Url;

pub use crate::arm::options::{
    ArmCredentialConfig, AzureConfig, SecretSource, DEFAULT_ARM_ENDPOINT, DEFAULT_AUTHORITY_HOST,
};

const FIELDS: &[&str] = &[
    "arm_endpoint",
    "authority_host",
    "managed_identity",
    "workload_identity",
    "azure_cli",
    "tenant_id",
    "client_id",
    "client_secret_env",
    "client_secret_file",
];

/// One problem in the `[azure]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureConfigProblem {
    /// The field, e.g. `azure.client_secret_env` (or `azure` for the table as a whole).
    pub field: String,
    pub message: String,
}

impl fmt::Display for AzureConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl AzureConfig {
    /// Validates the `[azure]` table; returns every problem found.
    pub fn from_table(table: &Table) -> Result<AzureConfig, Vec<AzureConfigProblem>> {
        let mut p = Problems(Vec::new());
        for key in table.keys() {
            if !FIELDS.contains(&key.as_str()) {
                let hint = if key == "client_secret" {
                    " (secrets never live in the file: use client_secret_env or client_secret_file)"
                } else {
                    ""
                };
                p.add(
                    key,
                    format!("unknown field{hint}; known: {}", FIELDS.join(", ")),
                );
            }
        }
        let arm_endpoint = p.url(table, "arm_endpoint", DEFAULT_ARM_ENDPOINT);
        let authority_host = p.url(table, "authority_host", DEFAULT_AUTHORITY_HOST);
        let managed = p.flag(table, "managed_identity");
        let workload = p.flag(table, "workload_identity");
        let cli = p.flag(table, "azure_cli");
        let tenant_id = p.string(table, "tenant_id");
        let client_id = p.string(table, "client_id");
        let secret_env = p.string(table, "client_secret_env");
        let secret_file = p.string(table, "client_secret_file");
        let secret = match (secret_env, secret_file) {
            (Some(v), None) => Some(SecretSource::Env(v)),
            (None, Some(f)) => Some(SecretSource::File(PathBuf::from(f))),
            (Some(_), Some(_)) => {
                p.add(
                    "client_secret_file",
                    "give client_secret_env or client_secret_file, not both",
                );
                None
            }
            (None, None) => None,
        };
        let chosen: Vec<&str> = [
            (managed, "managed_identity = true"),
            (workload, "workload_identity = true"),
            (secret.is_some(), "client_secret_env/client_secret_file"),
            (cli, "azure_cli = true"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
        let credential = match chosen.as_slice() {
            [] => {
                p.add_table(
                    "no credential: set exactly one of managed_identity = true, \
                     workload_identity = true, tenant_id + client_id + client_secret_env \
                     (or client_secret_file), azure_cli = true",
                );
                None
            }
            [_] => {
                if managed {
                    if tenant_id.is_some() {
                        p.add("tenant_id", "only used with a client secret");
                    }
                    Some(ArmCredentialConfig::ManagedIdentity { client_id })
                } else if let Some(secret) = secret {
                    if tenant_id.is_none() {
                        p.add("tenant_id", "required with a client secret");
                    }
                    if client_id.is_none() {
                        p.add("client_id", "required with a client secret");
                    }
                    match (tenant_id, client_id) {
                        (Some(tenant_id), Some(client_id)) => {
                            Some(ArmCredentialConfig::ClientSecret {
                                tenant_id,
                                client_id,
                                secret,
                            })
                        }
                        _ => None,
                    }
                } else {
                    // Workload identity and the CLI take their identity from the environment.
                    for field in ["tenant_id", "client_id"] {
                        if table.contains_key(field) {
                            p.add(field, format!("not used with {}", chosen[0]));
                        }
                    }
                    Some(if workload {
                        ArmCredentialConfig::WorkloadIdentity
                    } else {
                        ArmCredentialConfig::AzureCli
                    })
                }
            }
            many => {
                p.add_table(format!(
                    "more than one credential ({}): set exactly one",
                    many.join(", ")
                ));
                None
            }
        };
        match (arm_endpoint, authority_host, credential, p.0.is_empty()) {
            (Some(arm_endpoint), Some(authority_host), Some(credential), true) => Ok(AzureConfig {
                arm_endpoint,
                authority_host,
                credential,
            }),
            _ => Err(p.0),
        }
    }
}

struct Problems(Vec<AzureConfigProblem>);

impl Problems {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(AzureConfigProblem {
            field: format!("azure.{field}"),
            message: message.into(),
        });
    }

    fn add_table(&mut self, message: impl Into<String>) {
        self.0.push(AzureConfigProblem {
            field: "azure".into(),
            message: message.into(),
        });
    }

    fn string(&mut self, table: &Table, field: &str) -> Option<String> {
        match table.get(field)? {
            Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::String(_) => {
                self.add(field, "must not be empty");
                None
            }
            other => {
                self.add(field, format!("must be a string, not {}", other.type_str()));
                None
            }
        }
    }

    fn flag(&mut self, table: &Table, field: &str) -> bool {
        match table.get(field) {
            None => false,
            Some(Value::Boolean(b)) => *b,
            Some(other) => {
                self.add(
                    field,
                    format!("must be true or false, not {}", other.type_str()),
                );
                false
            }
        }
    }

    /// An https URL with nothing after the host but an optional `/` (tokens go only there).
    fn url(&mut self, table: &Table, field: &str, default: &str) -> Option<Url> {
        let text = match table.get(field) {
            None => default.to_string(),
            Some(_) => self.string(table, field)?,
        };
        let url = match Url::parse(&text) {
            Ok(u) => u,
            Err(e) => {
                self.add(field, format!("'{text}' is not a URL: {e}"));
                return None;
            }
        };
        if url.scheme() != "https" {
            self.add(
                field,
                format!("'{text}' must use https (a bearer token is sent to it)"),
            );
            return None;
        }
        if url.host().is_none()
            || url.path() != "/"
            || url.query().is_some()
            || url.fragment().is_some()
            || !url.username().is_empty()
        {
            self.add(
                field,
                format!("'{text}' must be a bare https://host[:port] URL"),
            );
            return None;
        }
        Some(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AzureConfig, Vec<String>> {
        let doc: Table = text.parse().expect("valid TOML");
        let table = doc["azure"].as_table().expect("[azure]").clone();
        AzureConfig::from_table(&table).map_err(|ps| ps.iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn defaults_and_managed_identity() {
        let c = parse("[azure]\nmanaged_identity = true\n").unwrap();
        assert_eq!(c.arm_endpoint.as_str(), "https://management.azure.com/");
        assert_eq!(
            c.authority_host.as_str(),
            "https://login.microsoftonline.com/"
        );
        assert_eq!(
            c.credential,
            ArmCredentialConfig::ManagedIdentity { client_id: None }
        );
        let c = parse("[azure]\nmanaged_identity = true\nclient_id = \"abc\"\n").unwrap();
        assert_eq!(
            c.credential,
            ArmCredentialConfig::ManagedIdentity {
                client_id: Some("abc".into())
            }
        );
    }

    #[test]
    fn client_secret_env_or_file() {
        let c = parse(
            "[azure]\narm_endpoint = \"https://127.0.0.1:8443\"\ntenant_id = \"t\"\n\
             client_id = \"c\"\nclient_secret_file = \"/run/secret\"\n",
        )
        .unwrap();
        assert_eq!(c.arm_endpoint.as_str(), "https://127.0.0.1:8443/");
        assert_eq!(
            c.credential,
            ArmCredentialConfig::ClientSecret {
                tenant_id: "t".into(),
                client_id: "c".into(),
                secret: SecretSource::File("/run/secret".into())
            }
        );
        let c = parse("[azure]\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret_env = \"V\"\n")
            .unwrap();
        assert!(matches!(
            c.credential,
            ArmCredentialConfig::ClientSecret { secret: SecretSource::Env(ref v), .. } if v == "V"
        ));
    }

    #[test]
    fn workload_identity_and_cli() {
        assert_eq!(
            parse("[azure]\nworkload_identity = true\n")
                .unwrap()
                .credential,
            ArmCredentialConfig::WorkloadIdentity
        );
        assert_eq!(
            parse("[azure]\nazure_cli = true\n").unwrap().credential,
            ArmCredentialConfig::AzureCli
        );
    }

    #[test]
    fn every_problem_names_its_field() {
        let errs = parse(
            "[azure]\narm_endpoint = \"http://management.azure.com\"\n\
             authority_host = \"https://login.example/tenant?x=1\"\nclient_secret = \"s\"\n\
             managed_identity = \"yes\"\nclient_secret_env = \"V\"\n",
        )
        .unwrap_err();
        let text = errs.join("\n");
        assert!(text.contains("azure.arm_endpoint: 'http://management.azure.com' must use https"));
        assert!(text.contains("azure.authority_host: "));
        assert!(text.contains("azure.client_secret: unknown field (secrets never live"));
        assert!(text.contains("azure.managed_identity: must be true or false, not string"));
        assert!(text.contains("azure.tenant_id: required with a client secret"));
        assert!(text.contains("azure.client_id: required with a client secret"));
    }

    #[test]
    fn exactly_one_credential() {
        let errs = parse("[azure]\n").unwrap_err();
        assert!(errs[0].starts_with("azure: no credential"), "{errs:?}");
        let errs = parse("[azure]\nmanaged_identity = true\nazure_cli = true\n").unwrap_err();
        assert_eq!(
            errs,
            vec![
                "azure: more than one credential (managed_identity = true, azure_cli = true): \
                 set exactly one"
                    .to_string()
            ]
        );
        let errs = parse(
            "[azure]\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret_env = \"V\"\n\
             client_secret_file = \"/f\"\n",
        )
        .unwrap_err();
        assert!(errs[0].starts_with("azure.client_secret_file: give client_secret_env or"));
        let errs = parse("[azure]\nazure_cli = true\ntenant_id = \"t\"\n").unwrap_err();
        assert_eq!(
            errs,
            vec!["azure.tenant_id: not used with azure_cli = true".to_string()]
        );
        // `false` does not choose a credential.
        assert!(parse("[azure]\nmanaged_identity = false\nazure_cli = true\n").is_ok());
    }
}
