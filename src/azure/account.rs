//! Where a storage account is and how to sign in to it: the data-plane client owns these
//! types; `config` builds them from `[accounts.KEY]`.

use crate::throttle::options::ThrottleConfig;
use std::path::PathBuf;
use url::Url;

/// One `[accounts.KEY]` section: where a storage account is and how to
/// authenticate to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountConfig {
    /// The `[accounts.KEY]` name; this is what disk `source`/`backup` paths
    /// refer to, and it need not equal the Azure account name.
    pub key: String,
    /// The blob service root, e.g. `https://acct.blob.core.windows.net/` or,
    /// for path-style endpoints (Azurite), `http://127.0.0.1:10000/premium`.
    ///
    /// Note that a path-style root has no trailing slash, so `Url::join` with
    /// a relative path would *replace* the account segment; append container
    /// and blob names with `path_segments_mut()` instead.
    pub endpoint: Url,
    /// The storage account name, needed for Shared Key signing. Derived from
    /// the endpoint unless `account_name` overrides it.
    pub account_name: String,
    /// True when the account is addressed by the first URL path segment
    /// (Azurite, emulators, IP endpoints) instead of by host name.
    pub path_style: bool,
    /// How to authenticate.
    pub auth: AuthConfig,
    /// Request budget (`[accounts.KEY.throttle]`).
    pub throttle: ThrottleConfig,
}

/// How to authenticate to an account. Exactly one per account; the secret
/// itself is always outside the config file, so the file can be world-readable
/// and kept in version control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    /// Account key, read from this environment variable.
    SharedKeyEnv(String),
    /// Account key, read from this file (e.g. a systemd credential).
    SharedKeyFile(PathBuf),
    /// SAS token, read from this environment variable.
    SasTokenEnv(String),
    /// SAS token, read from this file.
    SasTokenFile(PathBuf),
    /// Azure managed identity; `client_id` selects a user-assigned identity,
    /// `None` means the system-assigned one.
    ManagedIdentity {
        /// Client id of a user-assigned identity.
        client_id: Option<String>,
    },
}
