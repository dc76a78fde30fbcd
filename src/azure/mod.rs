//! The only code in snapback that speaks HTTP.
//!
//! [`AzureBlobs`] implements [`PageBlobs`](crate::storage::PageBlobs) on the Azure SDK for Rust 1.x (`azure_storage_blob`
//! over `azure_core`'s pipeline). Where the SDK has no operation we add the smallest piece on
//! the same pipeline: Shared Key signing ([`shared_key`]) and the Get Page Ranges diff
//! ([`page_list`]). Why this layout: see `docs/azure.md`.
//!
//! Retries: every request goes through the SDK's retry policy (exponential backoff with
//! jitter; 408, 429, 500, 502, 503, 504 and connection errors), configured in [`retry_options`],
//! except the two that are not idempotent: Snapshot Blob and Copy Blob (start). A blind
//! re-send of those after a lost answer makes a second snapshot or a second copy, so they are
//! sent once (`AzureBlobs::blob_client_once`) and the cycle retries them only after looking
//! for what the lost attempt may have made (`cycle::runner`).
//!
//! The client is set up here (accounts, retry policy, the SDK clients per request); the
//! rest lives by job: how an account signs (`auth`), the SAS minted for a server-side
//! copy's source (`copy_source`), what the service's errors mean (`error_map`), the
//! headers of requests and answers (`headers`), and the [`PageBlobs`](crate::storage::PageBlobs) operations
//! themselves (`page_blobs`).

pub mod account;
mod auth;
mod copy_source;
mod error_map;
mod headers;
pub mod http;
mod lease;
mod lease_list;
mod page_blobs;
pub mod page_list;
mod preflight;
pub mod retry_after;
pub mod sas_blob;
pub mod shared_key;
pub mod tls;
mod write_deadline;

use crate::azure::account::AccountConfig;
use crate::storage::{BlobError, BlobRef, BlobResult, ErrorKind as Kind, Resource};
use azure_core::credentials::TokenCredential;
use azure_core::http::policies::Policy;
use azure_core::http::{ClientOptions, ExponentialRetryOptions, Pipeline, RetryOptions, Url};
use azure_storage_blob::{
    BlobClient, BlobClientOptions, BlobContainerClient, BlobContainerClientOptions,
};
use shared_key::{SasPolicy, SharedKeyPolicy};
use std::collections::HashMap;
use std::sync::Arc;

use auth::{load_auth, Auth};
// The SAS-URL client (`sas_blob`) reads, checks and maps errors as the page-blob client does.
use error_map::map_err;
use headers::{check_served_range, crc64_le};

/// The REST version we send on requests we build ourselves; the SDK's default, so every
/// request of a run speaks the same version. ≥ 2020-10-02 is needed for diff pagination.
const SERVICE_VERSION: &str = "2026-04-06";

/// One storage account: where it is and how to sign for it.
#[derive(Clone, Debug)]
struct Account {
    /// The `[accounts.KEY]` name in the config.
    key: String,
    /// The storage account's own name (signs Shared Key requests).
    name: String,
    /// Service root: `https://acct.blob.core.windows.net` or `http://127.0.0.1:10000/acct`.
    root: Url,
    auth: Auth,
    options: ClientOptions,
}

/// [`PageBlobs`](crate::storage::PageBlobs) over Azure Storage (or Azurite).
#[derive(Clone, Debug)]
pub struct AzureBlobs {
    /// Per account: its clients' settings, or why its secret could not be loaded. A broken
    /// account fails the disks that use it, with that reason, and no others.
    accounts: HashMap<String, Result<Account, BlobError>>,
}

/// Retry policy for all requests: exponential backoff with jitter, the first retry after
/// 500 ms, doubling to at most 15 s (also the cap on a `Retry-After`, see [`retry_after`]),
/// for at most 8 retries or 2 minutes. A throttled account (503 ServerBusy, 500
/// OperationTimedOut) gets time to recover, but a dead endpoint fails the cycle within two
/// minutes instead of hanging it; the cycle itself resumes on the next run (the daemon
/// retries failed cycles with its own, longer backoff).
pub fn retry_options() -> RetryOptions {
    RetryOptions::exponential(ExponentialRetryOptions {
        initial_delay: azure_core::time::Duration::milliseconds(500),
        max_retries: 8,
        max_total_elapsed: azure_core::time::Duration::minutes(2),
        max_delay: azure_core::time::Duration::seconds(
            retry_after::MAX_RETRY_DELAY.as_secs() as i64
        ),
    })
}

impl AzureBlobs {
    /// Builds clients for every configured account. Secrets are read here, from the
    /// environment or files the config names; errors name the account and the variable or
    /// file, never the secret, and are reported when the account is used.
    pub fn new<'a>(accounts: impl IntoIterator<Item = &'a AccountConfig>) -> Self {
        // One HTTP client for all accounts: each SDK client would otherwise make its own
        // connection pool.
        let transport = http::transport();
        let mut out = HashMap::new();
        for cfg in accounts {
            let auth = match load_auth(cfg) {
                Ok(a) => a,
                Err(e) => {
                    out.insert(cfg.key.clone(), Err(e));
                    continue;
                }
            };
            let mut options = ClientOptions {
                transport: Some(transport.clone()),
                retry: retry_options(),
                // First of every try: the retry policy sees the answer after it.
                per_try_policies: vec![Arc::new(retry_after::RetryAfterCap)],
                ..Default::default()
            };
            // Before signing: a request waits for the budget, then is signed fresh.
            if cfg.throttle.enabled {
                let policy = crate::throttle::policy::ThrottlePolicy::new(&cfg.throttle);
                options.per_try_policies.push(policy);
            }
            match &auth {
                Auth::SharedKey(key) => options
                    .per_try_policies
                    .push(SharedKeyPolicy::new(&cfg.account_name, key.clone())),
                Auth::Sas(token) => options.per_try_policies.push(SasPolicy::new(token.clone())),
                Auth::Token(_) => {}
            }
            out.insert(
                cfg.key.clone(),
                Ok(Account {
                    key: cfg.key.clone(),
                    name: cfg.account_name.clone(),
                    root: cfg.endpoint.clone(),
                    auth,
                    options,
                }),
            );
        }
        AzureBlobs { accounts: out }
    }

    /// Ends every try of a write not answered within `limit` (see `write_deadline`): the
    /// request timeout of the disk leases (`ownership::LeaseTiming::request_timeout`).
    pub fn with_write_timeout(mut self, limit: std::time::Duration) -> Self {
        for account in self.accounts.values_mut().flatten() {
            account
                .options
                .per_try_policies
                .push(Arc::new(write_deadline::WriteDeadline(limit)));
        }
        self
    }

    fn account(&self, blob: &BlobRef) -> BlobResult<&Account> {
        match self.accounts.get(&blob.account) {
            Some(Ok(a)) => Ok(a),
            Some(Err(e)) => Err(e.clone()),
            None => Err(BlobError::local(
                Kind::Unusable,
                Resource::Account(blob.account.clone()),
                "no such account is configured",
            )),
        }
    }

    fn credential(account: &Account) -> Option<Arc<dyn TokenCredential>> {
        match &account.auth {
            Auth::Token(t) => Some(t.clone()),
            _ => None,
        }
    }

    fn blob_url(account: &Account, container: &str, blob: Option<&str>) -> Url {
        let mut url = account.root.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty().push(container);
            if let Some(blob) = blob {
                segs.extend(blob.split('/'));
            }
        }
        url
    }

    /// A pipeline with the account's policies (retry, `Retry-After` cap, budget, signing),
    /// for the requests sent without an SDK client: the page-range diff and ranged reads.
    fn raw_pipeline(account: &Account) -> Pipeline {
        let mut per_try: Vec<Arc<dyn Policy>> = Vec::new();
        if let Auth::Token(cred) = &account.auth {
            per_try.push(Arc::new(
                azure_core::http::policies::auth::BearerTokenAuthorizationPolicy::new(
                    cred.clone(),
                    vec!["https://storage.azure.com/.default"],
                ),
            ));
        }
        Pipeline::new(
            option_env!("CARGO_PKG_NAME"),
            option_env!("CARGO_PKG_VERSION"),
            account.options.clone(),
            Vec::new(),
            per_try,
            None,
        )
    }

    fn blob_client(&self, blob: &BlobRef) -> BlobResult<BlobClient> {
        self.blob_client_with(blob, |_| {})
    }

    /// A client whose requests are sent once, without the SDK's retries: for the requests
    /// that are not idempotent (Snapshot Blob, Copy Blob).
    fn blob_client_once(&self, blob: &BlobRef) -> BlobResult<BlobClient> {
        self.blob_client_with(blob, |o| o.retry = RetryOptions::none())
    }

    fn blob_client_with(
        &self,
        blob: &BlobRef,
        adjust: impl FnOnce(&mut ClientOptions),
    ) -> BlobResult<BlobClient> {
        let account = self.account(blob)?;
        let url = Self::blob_url(account, &blob.container, Some(&blob.blob));
        let mut client_options = account.options.clone();
        adjust(&mut client_options);
        BlobClient::new(
            url,
            Self::credential(account),
            Some(BlobClientOptions {
                client_options,
                ..Default::default()
            }),
        )
        .map_err(|e| BlobError::local(Kind::Unusable, Resource::blob(blob), e.to_string()))
    }

    fn container_client(&self, blob: &BlobRef) -> BlobResult<BlobContainerClient> {
        let account = self.account(blob)?;
        let url = Self::blob_url(account, &blob.container, None);
        BlobContainerClient::new(
            url,
            Self::credential(account),
            Some(BlobContainerClientOptions {
                client_options: account.options.clone(),
                ..Default::default()
            }),
        )
        .map_err(|e| BlobError::local(Kind::Unusable, Resource::container(blob), e.to_string()))
    }
}
