//! The only code in snapback that speaks HTTP.
//!
//! [`AzureBlobs`] implements [`PageBlobs`] on the Azure SDK for Rust 1.x (`azure_storage_blob`
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

pub mod account;
pub mod http;
mod lease;
mod lease_list;
pub mod page_list;
mod preflight;
pub mod retry_after;
pub mod sas_blob;
pub mod shared_key;
pub mod tls;
mod write_deadline;

use crate::azure::account::{AccountConfig, AuthConfig};
use crate::model::pages::ByteRange;
use crate::storage::{
    BlobError, BlobProps, BlobRef, BlobResult, Continuation, CopyStatus, ErrorKind as Kind, Fence,
    IfBlob, Metadata, NewPageBlob, PageBlobs, PageList, PageListQuery, Resource, ServiceCode,
    SnapshotInfo,
};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::policies::Policy;
use azure_core::http::{
    ClientOptions, Context, ExponentialRetryOptions, Method, Pipeline, Request, RequestContent,
    RetryOptions, Url,
};
use azure_storage_blob::models::{
    BlobClientCreateSnapshotOptions, BlobClientCreateSnapshotResultHeaders,
    BlobClientGetPropertiesResultHeaders, BlobClientStartCopyFromUrlOptions,
    BlobClientStartCopyFromUrlResultHeaders, BlobContainerClientListBlobsOptions, HttpRange,
    ListBlobsIncludeItem, PageBlobClientClearPagesOptions, PageBlobClientClearPagesResultHeaders,
    PageBlobClientCreateOptions, PageBlobClientCreateResultHeaders, PageBlobClientResizeOptions,
    PageBlobClientResizeResultHeaders, PageBlobClientSetSequenceNumberOptions,
    PageBlobClientSetSequenceNumberResultHeaders, PageBlobClientUploadPagesFromUrlOptions,
    PageBlobClientUploadPagesFromUrlResultHeaders, PageBlobClientUploadPagesOptions,
    PageBlobClientUploadPagesResultHeaders, SequenceNumberActionType,
};
use azure_storage_blob::{
    BlobClient, BlobClientOptions, BlobContainerClient, BlobContainerClientOptions,
};
use bytes::Bytes;
use futures::TryStreamExt;
use shared_key::{AccountKey, SasPolicy, SasToken, SharedKeyPolicy};
use std::collections::HashMap;
use std::sync::Arc;

/// The REST version we send on requests we build ourselves; the SDK's default, so every
/// request of a run speaks the same version. ≥ 2020-10-02 is needed for diff pagination.
const SERVICE_VERSION: &str = "2026-04-06";

/// How long a SAS that snapback mints for one Put Page From URL stays valid: the service
/// reads the source while it handles that request, so a leaked URL exposes one snapshot,
/// read-only, for minutes. A Copy Blob's source SAS lives as long as the copy may take
/// ([`crate::storage::copy_source_lifetime`]).
const MINTED_SAS_LIFETIME: time::Duration = time::Duration::minutes(15);

/// How far back a minted SAS's start (`st=`) is set: the storage service's clock may be
/// behind ours.
const CLOCK_SKEW_ALLOWANCE: time::Duration = time::Duration::minutes(5);

/// The scope of a bearer token for Azure Storage (also for `x-ms-copy-source-authorization`).
const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";

/// How an account's requests are authorised. Every variant's `Debug` hides its secret.
#[derive(Clone, Debug)]
enum Auth {
    SharedKey(AccountKey),
    Sas(SasToken),
    Token(Arc<dyn TokenCredential>),
}

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

/// [`PageBlobs`] over Azure Storage (or Azurite).
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

    /// Ends every try of a write not answered within `limit` (see [`write_deadline`]): the
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

    /// Snapshot Blob, sent once (not idempotent), optionally with `If-Match`.
    async fn snapshot_with(
        &self,
        blob: &BlobRef,
        metadata: &Metadata,
        if_match: Option<&str>,
    ) -> BlobResult<String> {
        let client = self.blob_client_once(blob)?;
        let options = BlobClientCreateSnapshotOptions {
            metadata: Some(metadata.clone().into_iter().collect()),
            if_match: if_match.map(azure_core::http::Etag::from),
            ..Default::default()
        };
        let what = "snapshot blob";
        let resp = client
            .create_snapshot(Some(options))
            .await
            .map_err(|e| map_err(Resource::blob(blob), what, e))?;
        resp.snapshot()
            .map_err(|e| map_err(Resource::blob(blob), what, e))?
            .ok_or_else(|| {
                BlobError::bad_response(
                    Resource::blob(blob),
                    201,
                    "MissingSnapshotHeader",
                    "the response carried no x-ms-snapshot".into(),
                )
            })
    }

    /// A URL the *other* account's service can read `blob` (or a snapshot) from, for a
    /// server-side copy: a SAS snapback mints with the account key, read-only, for this one
    /// snapshot (or blob), valid from [`CLOCK_SKEW_ALLOWANCE`] ago for `lifetime`,
    /// https-only when the account's endpoint is https.
    ///
    /// An account configured with a SAS token gets `NoReadAccess` when `reader` (the blob the
    /// copy writes) is in another account: forwarding that token would hand a long-lived
    /// credential, with whatever permissions it has, to another account's service and to
    /// every log line that quotes the copy source. The caller copies through snapback instead
    /// (a seed by client copy; `copy_mode = "auto"` falls back to client copy). Within its own
    /// account (a restore's promote step) the token goes nowhere it does not already go.
    fn readable_source_url(
        &self,
        blob: &BlobRef,
        snapshot: Option<&str>,
        reader: &BlobRef,
        lifetime: time::Duration,
    ) -> BlobResult<Url> {
        let account = self.account(blob)?;
        let mut url = Self::blob_url(account, &blob.container, Some(&blob.blob));
        if let Some(s) = snapshot {
            url.query_pairs_mut().append_pair("snapshot", s);
        }
        let key = match &account.auth {
            Auth::SharedKey(key) => key,
            Auth::Sas(token) if reader.account == blob.account => {
                let query = match url.query() {
                    Some(q) => format!("{q}&{}", token.expose()),
                    None => token.expose().to_string(),
                };
                url.set_query(Some(&query));
                return Ok(url);
            }
            Auth::Sas(_) => {
                return Err(BlobError::local(
                    Kind::NoReadAccess,
                    Resource::of(blob, snapshot),
                    format!(
                        "account '{}' authenticates with a SAS token, which snapback never \
                         forwards to another account as a copy source",
                        account.key
                    ),
                ))
            }
            Auth::Token(_) => {
                return Err(BlobError::local(
                    Kind::NoReadAccess,
                    Resource::of(blob, snapshot),
                    format!(
                        "account '{}' uses a managed identity, which cannot mint the SAS a \
                         cross-account Copy Blob needs",
                        account.key
                    ),
                ))
            }
        };
        let now = time::OffsetDateTime::now_utc();
        let stamp = |t: time::OffsetDateTime| {
            t.replace_nanosecond(0)
                .unwrap_or(t)
                .format(&time::format_description::well_known::Rfc3339)
                .map_err(|e| BlobError::local(Kind::Unusable, Resource::blob(blob), e.to_string()))
        };
        let sas = shared_key::blob_read_sas(
            &account.name,
            key,
            &blob.container,
            &blob.blob,
            snapshot,
            Some(&stamp(now - CLOCK_SKEW_ALLOWANCE)?),
            &stamp(now + lifetime)?,
            account.root.scheme() == "https",
        );
        let query = match url.query() {
            Some(q) => format!("{q}&{sas}"),
            None => sas,
        };
        url.set_query(Some(&query));
        Ok(url)
    }
}

/// Reads the account's secret from where the config points.
fn load_auth(cfg: &AccountConfig) -> BlobResult<Auth> {
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

/// Maps an SDK error on `resource` to a [`BlobError`]; `what` (the operation) is kept for
/// people, the kind comes from the status and `x-ms-error-code` only.
fn map_err(resource: Resource, what: impl Into<String>, e: azure_core::Error) -> BlobError {
    let what = what.into();
    match e.kind() {
        ErrorKind::HttpResponse {
            status,
            error_code,
            raw_response,
        } => {
            let message = raw_response
                .as_ref()
                .and_then(|r| xml_message(r.body().as_ref()));
            let detail = match message {
                Some(m) => format!("{what}: {m}"),
                None => what,
            };
            BlobError::service(resource, u16::from(*status), error_code.clone(), detail)
        }
        _ => BlobError::local(
            Kind::Transient,
            resource,
            format!("{what}: {}", error_chain(&e)),
        ),
    }
}

/// The resource a failed copy request (Put Page From URL, Copy Blob) concerns: the service
/// reports a source it could not read with `CannotVerifyCopySource`; anything else is about
/// the destination it was writing.
fn copy_error_resource(
    code: Option<ServiceCode>,
    dest: &BlobRef,
    source: &BlobRef,
    snapshot: Option<&str>,
) -> Resource {
    match code {
        Some(ServiceCode::CannotVerifyCopySource) => Resource::of(source, snapshot),
        _ => Resource::blob(dest),
    }
}

/// Maps an SDK error of a copy request, naming the resource it concerns.
fn map_copy_err(
    dest: &BlobRef,
    source: &BlobRef,
    snapshot: Option<&str>,
    what: String,
    e: azure_core::Error,
) -> BlobError {
    let mut err = map_err(Resource::blob(dest), what, e);
    err.resource = Box::new(copy_error_resource(
        err.service_code(),
        dest,
        source,
        snapshot,
    ));
    err
}

/// An error and its causes on one line ("retry policy expired: …: connection refused"), so
/// the log names the root cause, not only the last wrapper.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The `<Message>` of an Azure error body, first line only.
fn xml_message(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Message>")? + "<Message>".len();
    let end = text[start..].find("</Message>")? + start;
    text[start..end].lines().next().map(str::to_string)
}

/// `x-ms-content-crc64`: the CRC-64/NVME of the body, 8 bytes little-endian.
fn crc64_le(data: &[u8]) -> Vec<u8> {
    crate::model::pages::crc64(data).to_le_bytes().to_vec()
}

/// Checks that the answer to a ranged read says it holds exactly `range`
/// (`Content-Range: bytes START-END/SIZE`, as Azure answers every ranged Get Blob): bytes of
/// another range, even of the right length, would be written to the wrong place of the backup.
fn check_served_range(
    headers: &azure_core::http::headers::Headers,
    range: ByteRange,
) -> Result<(), String> {
    let served = headers.get_optional_str(&azure_core::http::headers::HeaderName::from_static(
        "content-range",
    ));
    let parsed = served.and_then(|v| {
        let (span, _size) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
        let (first, last) = span.split_once('-')?;
        Some((
            first.trim().parse::<u64>().ok()?,
            last.trim().parse::<u64>().ok()?,
        ))
    });
    if range.is_empty() || parsed == Some((range.start, range.end - 1)) {
        return Ok(());
    }
    Err(format!(
        "the answer holds {} instead of bytes {}-{}",
        served.map_or_else(
            || "no Content-Range".to_string(),
            |v| format!("Content-Range {v:?}")
        ),
        range.start,
        range.end - 1
    ))
}

/// `If-Match` / `If-None-Match` of a precondition.
fn conditions(
    c: &IfBlob,
) -> (
    Option<azure_core::http::Etag>,
    Option<azure_core::http::Etag>,
) {
    match c {
        IfBlob::Any => (None, None),
        IfBlob::Absent => (None, Some("*".into())),
        IfBlob::Is(etag) => (Some(etag.as_str().into()), None),
    }
}

/// `x-ms-if-sequence-number-eq` of a fencing token (the service takes a signed 64-bit
/// number; tokens stay below 2^63).
fn fence_header(fence: Option<Fence>) -> Option<i64> {
    fence.map(|Fence(t)| i64::try_from(t).unwrap_or(i64::MAX))
}

fn etag_string(etag: Option<azure_core::http::Etag>) -> String {
    etag.map(|e| e.to_string()).unwrap_or_default()
}

/// The blob's new ETag, from the answer to a write of it (`what`, for the error).
fn written_etag(
    etag: azure_core::Result<Option<azure_core::http::Etag>>,
    blob: &BlobRef,
    what: impl Into<String>,
) -> BlobResult<String> {
    etag.map(etag_string)
        .map_err(|e| map_err(Resource::blob(blob), what, e))
}

fn parse_copy_status(
    status: Option<azure_storage_blob::models::CopyStatus>,
    progress: Option<String>,
    description: Option<String>,
) -> Option<CopyStatus> {
    use azure_storage_blob::models::CopyStatus as S;
    let desc = description.unwrap_or_default();
    Some(match status? {
        S::Pending => {
            let (copied, total) = progress
                .as_deref()
                .and_then(|p| p.split_once('/'))
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .unwrap_or((0, 0));
            CopyStatus::Pending { copied, total }
        }
        S::Success => CopyStatus::Success,
        S::Aborted => CopyStatus::Aborted(desc),
        S::Failed => CopyStatus::Failed(desc),
    })
}

fn snapshot_label(blob: &BlobRef, snapshot: Option<&str>) -> String {
    match snapshot {
        Some(s) => format!("{blob} snapshot {s}"),
        None => blob.to_string(),
    }
}

#[async_trait]
impl PageBlobs for AzureBlobs {
    fn check_account(&self, account: &str) -> BlobResult<()> {
        self.account(&BlobRef::new(account, "", "")).map(|_| ())
    }

    async fn properties(
        &self,
        blob: &BlobRef,
        snapshot: Option<&str>,
    ) -> BlobResult<Option<BlobProps>> {
        let mut client = self.blob_client(blob)?;
        if let Some(s) = snapshot {
            client = client
                .with_snapshot(s)
                .map_err(|e| map_err(Resource::of(blob, snapshot), "get properties", e))?;
        }
        let resp = match client.get_properties(None).await {
            Ok(r) => r,
            Err(e) => {
                return match map_err(Resource::of(blob, snapshot), "get properties", e) {
                    e if e.is_not_found() => Ok(None),
                    other => Err(other),
                }
            }
        };
        let bad = |e| map_err(Resource::of(blob, snapshot), "get properties", e);
        let copy = match (
            resp.copy_id().map_err(bad)?,
            resp.copy_status().map_err(bad)?,
        ) {
            (Some(id), status) => parse_copy_status(
                status,
                resp.copy_progress().map_err(bad)?,
                resp.copy_status_description().map_err(bad)?,
            )
            .map(|s| (id, s)),
            _ => None,
        };
        Ok(Some(BlobProps {
            size: resp.content_length().map_err(bad)?.unwrap_or(0),
            etag: etag_string(resp.etag().map_err(bad)?),
            metadata: resp
                .metadata()
                .map_err(bad)?
                .into_iter()
                .map(|(k, v)| (k.to_lowercase(), v))
                .collect(),
            copy,
            sequence_number: resp
                .blob_sequence_number()
                .map_err(bad)?
                .and_then(|n| u64::try_from(n).ok()),
        }))
    }

    async fn create_snapshot(&self, blob: &BlobRef, metadata: &Metadata) -> BlobResult<String> {
        self.snapshot_with(blob, metadata, None).await
    }

    async fn create_snapshot_if_match(
        &self,
        blob: &BlobRef,
        metadata: &Metadata,
        etag: &str,
    ) -> BlobResult<String> {
        self.snapshot_with(blob, metadata, Some(etag)).await
    }

    async fn list_snapshots(&self, blob: &BlobRef) -> BlobResult<Vec<SnapshotInfo>> {
        let client = self.container_client(blob)?;
        let options = BlobContainerClientListBlobsOptions {
            prefix: Some(blob.blob.clone()),
            include: Some(vec![
                ListBlobsIncludeItem::Snapshots,
                ListBlobsIncludeItem::Metadata,
            ]),
            ..Default::default()
        };
        let what = || "list snapshots";
        let mut pages = client
            .list_blobs(Some(options))
            .map_err(|e| map_err(Resource::blob(blob), what(), e))?
            .into_pages();
        let mut out = Vec::new();
        let mut continuation = Continuation::default();
        while let Some(page) = pages
            .try_next()
            .await
            .map_err(|e| map_err(Resource::blob(blob), what(), e))?
        {
            let page = page
                .into_model()
                .map_err(|e| map_err(Resource::blob(blob), what(), e))?;
            // The pager follows the marker itself, when polled again: an error here ends it.
            continuation
                .follow(page.next_marker.clone(), page.blob_items.len())
                .map_err(|c| c.on(Resource::blob(blob), what()))?;
            for item in page.blob_items {
                let (Some(name), Some(snapshot)) = (item.name.as_ref(), item.snapshot) else {
                    continue;
                };
                if name != &blob.blob {
                    continue;
                }
                out.push(SnapshotInfo {
                    snapshot,
                    metadata: listed_metadata(item.metadata),
                    size: item.properties.and_then(|p| p.content_length).unwrap_or(0),
                });
            }
        }
        // Azurite does not list snapshots in time order; the timestamps sort as text.
        out.sort_by(|a, b| a.snapshot.cmp(&b.snapshot));
        Ok(out)
    }

    async fn delete_snapshot(&self, blob: &BlobRef, snapshot: &str) -> BlobResult<()> {
        let res = || Resource::of(blob, Some(snapshot));
        let client = self
            .blob_client(blob)?
            .with_snapshot(snapshot)
            .map_err(|e| map_err(res(), "delete snapshot", e))?;
        match client.delete(None).await {
            Ok(_) => Ok(()),
            Err(e) => match map_err(res(), "delete snapshot", e) {
                e if e.is_not_found() => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn page_ranges(&self, blob: &BlobRef, query: &PageListQuery<'_>) -> BlobResult<PageList> {
        let account = self.account(blob)?;
        let what = || match query.prev_snapshot {
            Some(p) => format!(
                "diff of {} against {p}",
                snapshot_label(blob, query.snapshot)
            ),
            None => format!("page ranges of {}", snapshot_label(blob, query.snapshot)),
        };
        let url = page_list::request_url(
            &Self::blob_url(account, &blob.container, Some(&blob.blob)),
            query,
        );
        let mut request = Request::new(url, Method::Get);
        request.insert_header("x-ms-version", SERVICE_VERSION);
        if let Some(r) = query.range {
            request.insert_header("x-ms-range", r.http_header());
        }
        let resp = Self::raw_pipeline(account)
            .send(&Context::new(), &mut request, None)
            .await
            .map_err(|e| {
                let mut err = map_err(Resource::of(blob, query.snapshot), what(), e);
                // The codes that are about the diff base rather than the listed snapshot.
                if err.service_code() == Some(ServiceCode::PreviousSnapshotNotFound)
                    || err.kind == Kind::Overwritten
                {
                    err.resource = Box::new(Resource::of(blob, query.prev_snapshot));
                }
                err
            })?;
        page_list::parse(resp.body().as_ref()).map_err(|message| {
            BlobError::bad_response(
                Resource::of(blob, query.snapshot),
                200,
                "MalformedPageList",
                format!("{}: {message}", what()),
            )
        })
    }

    /// One ranged Get Blob through the raw pipeline rather than the SDK's partitioned
    /// download, which trusts the answer's `Content-Range` to place the bytes: the answer is
    /// checked to hold exactly `range` before its body is used.
    async fn read(
        &self,
        blob: &BlobRef,
        snapshot: Option<&str>,
        range: ByteRange,
    ) -> BlobResult<Bytes> {
        let what = || format!("{} {range}", snapshot_label(blob, snapshot));
        let account = self.account(blob)?;
        let mut url = Self::blob_url(account, &blob.container, Some(&blob.blob));
        if let Some(s) = snapshot {
            url.query_pairs_mut().append_pair("snapshot", s);
        }
        let mut request = Request::new(url, Method::Get);
        request.insert_header("x-ms-version", SERVICE_VERSION);
        request.insert_header("x-ms-range", range.http_header());
        // Streamed: the body is read here, after the retry policy, so that an answer cut
        // mid-body goes to `retry_unanswered` at once instead of through every SDK retry.
        let resp = Self::raw_pipeline(account)
            .stream(&Context::new(), &mut request, None)
            .await
            .map_err(|e| map_err(Resource::of(blob, snapshot), what(), e))?;
        let wrong = |code: &str, why: String| {
            BlobError::bad_response(
                Resource::of(blob, snapshot),
                206,
                code,
                format!("{}: {why}", what()),
            )
        };
        check_served_range(resp.headers(), range).map_err(|why| wrong("WrongRange", why))?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| map_err(Resource::of(blob, snapshot), what(), e))?;
        if body.len() as u64 != range.len() {
            let why = format!("got {} of {} bytes", body.len(), range.len());
            return Err(wrong("ShortRead", why));
        }
        Ok(body)
    }

    async fn put_pages(
        &self,
        blob: &BlobRef,
        offset: u64,
        data: Bytes,
        fence: Option<Fence>,
    ) -> BlobResult<String> {
        let len = data.len() as u64;
        let what = || format!("put {blob} {}", ByteRange::new(offset, offset + len));
        let client = self.blob_client(blob)?.page_blob_client();
        let options = PageBlobClientUploadPagesOptions {
            transactional_content_crc64: Some(crc64_le(&data)),
            if_sequence_number_equal_to: fence_header(fence),
            ..Default::default()
        };
        let resp = client
            .upload_pages(
                <RequestContent<Bytes, _> as From<Bytes>>::from(data),
                len,
                HttpRange::new(offset, len),
                Some(options),
            )
            .await
            .map_err(|e| map_err(Resource::blob(blob), what(), e))?;
        written_etag(resp.etag(), blob, what())
    }

    async fn put_pages_from_url(
        &self,
        dest: &BlobRef,
        range: ByteRange,
        source: &BlobRef,
        source_snapshot: Option<&str>,
        source_offset: u64,
        fence: Option<Fence>,
    ) -> BlobResult<String> {
        let what = || {
            format!(
                "put {dest} {range} from {} at {source_offset}",
                snapshot_label(source, source_snapshot)
            )
        };
        let account = self.account(source)?;
        // A token-authenticated source is read with a bearer token for it; otherwise a
        // short-lived read SAS for this one snapshot is put into the source URL.
        let (url, authorization) = match &account.auth {
            Auth::Token(cred) => {
                let mut url = Self::blob_url(account, &source.container, Some(&source.blob));
                if let Some(s) = source_snapshot {
                    url.query_pairs_mut().append_pair("snapshot", s);
                }
                let token = cred
                    .get_token(&[STORAGE_SCOPE], None)
                    .await
                    .map_err(|e| map_err(Resource::of(source, source_snapshot), what(), e))?;
                (url, Some(format!("Bearer {}", token.token.secret())))
            }
            _ => (
                self.readable_source_url(source, source_snapshot, dest, MINTED_SAS_LIFETIME)?,
                None,
            ),
        };
        let options = PageBlobClientUploadPagesFromUrlOptions {
            copy_source_authorization: authorization,
            if_sequence_number_equal_to: fence_header(fence),
            ..Default::default()
        };
        let resp = self
            .blob_client(dest)?
            .page_blob_client()
            .upload_pages_from_url(
                url.to_string(),
                HttpRange::new(source_offset, range.len()),
                0,
                HttpRange::new(range.start, range.len()),
                Some(options),
            )
            .await
            .map_err(|e| map_copy_err(dest, source, source_snapshot, what(), e))?;
        written_etag(resp.etag(), dest, what())
    }

    async fn put_pages_from_sas(
        &self,
        dest: &BlobRef,
        range: ByteRange,
        source: &Url,
        source_resource: &str,
        source_offset: u64,
        fence: Option<Fence>,
    ) -> BlobResult<String> {
        let what = || format!("put {dest} {range} from {source_resource} at {source_offset}");
        let options = PageBlobClientUploadPagesFromUrlOptions {
            if_sequence_number_equal_to: fence_header(fence),
            ..Default::default()
        };
        let resp = self
            .blob_client(dest)?
            .page_blob_client()
            .upload_pages_from_url(
                source.to_string(),
                HttpRange::new(source_offset, range.len()),
                0,
                HttpRange::new(range.start, range.len()),
                Some(options),
            )
            .await
            .map_err(|e| {
                let mut err = map_err(Resource::blob(dest), what(), e);
                // The service could not read the source: about the snapshot, not the backup.
                if err.service_code() == Some(ServiceCode::CannotVerifyCopySource) {
                    err.resource = Box::new(Resource::Managed(source_resource.to_string()));
                }
                err.detail = crate::model::secrets::redact(&err.detail);
                err
            })?;
        written_etag(resp.etag(), dest, what())
    }

    async fn clear_pages(
        &self,
        blob: &BlobRef,
        range: ByteRange,
        fence: Option<Fence>,
    ) -> BlobResult<String> {
        let what = || format!("clear {blob} {range}");
        let client = self.blob_client(blob)?.page_blob_client();
        let options = PageBlobClientClearPagesOptions {
            if_sequence_number_equal_to: fence_header(fence),
            ..Default::default()
        };
        let resp = client
            .clear_pages(HttpRange::new(range.start, range.len()), Some(options))
            .await
            .map_err(|e| map_err(Resource::blob(blob), what(), e))?;
        written_etag(resp.etag(), blob, what())
    }

    async fn ensure_container(&self, blob: &BlobRef) -> BlobResult<()> {
        match self.container_client(blob)?.create(None).await {
            Ok(_) => Ok(()),
            Err(e) => match map_err(Resource::container(blob), "create container", e) {
                e if e.kind == Kind::AlreadyExists => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn create_page_blob(
        &self,
        blob: &BlobRef,
        size: u64,
        new: &NewPageBlob,
    ) -> BlobResult<String> {
        let what = "create page blob";
        let (if_match, if_none_match) = conditions(&new.condition);
        let options = PageBlobClientCreateOptions {
            metadata: (!new.metadata.is_empty())
                .then(|| new.metadata.clone().into_iter().collect()),
            blob_sequence_number: fence_header(new.sequence_number.map(Fence)),
            if_match,
            if_none_match,
            ..Default::default()
        };
        let resp = self
            .blob_client(blob)?
            .page_blob_client()
            .create(size, Some(options))
            .await
            .map_err(|e| map_err(Resource::blob(blob), what, e))?;
        written_etag(resp.etag(), blob, what)
    }

    async fn resize(&self, blob: &BlobRef, size: u64, condition: &IfBlob) -> BlobResult<String> {
        let what = || format!("resize to {size} bytes");
        let (if_match, if_none_match) = conditions(condition);
        let options = PageBlobClientResizeOptions {
            if_match,
            if_none_match,
            ..Default::default()
        };
        let resp = self
            .blob_client(blob)?
            .page_blob_client()
            .resize(size, Some(options))
            .await
            .map_err(|e| map_err(Resource::blob(blob), what(), e))?;
        written_etag(resp.etag(), blob, what())
    }

    async fn set_sequence_number(
        &self,
        blob: &BlobRef,
        value: u64,
        condition: &IfBlob,
    ) -> BlobResult<String> {
        let what = || format!("set the sequence number to {value}");
        let (if_match, if_none_match) = conditions(condition);
        let options = PageBlobClientSetSequenceNumberOptions {
            blob_sequence_number: fence_header(Some(Fence(value))),
            if_match,
            if_none_match,
            ..Default::default()
        };
        let resp = self
            .blob_client(blob)?
            .page_blob_client()
            .set_sequence_number(SequenceNumberActionType::Update, Some(options))
            .await
            .map_err(|e| map_err(Resource::blob(blob), what(), e))?;
        written_etag(resp.etag(), blob, what())
    }

    async fn start_copy(
        &self,
        dest: &BlobRef,
        source: &BlobRef,
        source_snapshot: Option<&str>,
        metadata: &Metadata,
        condition: &IfBlob,
    ) -> BlobResult<String> {
        let what = || format!("copy {} to {dest}", snapshot_label(source, source_snapshot));
        // The service reads the source for the whole (asynchronous) copy: its SAS must
        // outlive a slow copy of this size.
        let size = self
            .properties(source, source_snapshot)
            .await?
            .map_or(0, |p| p.size);
        let lifetime = time::Duration::seconds(
            i64::try_from(crate::storage::copy_source_lifetime(size).as_secs()).unwrap_or(i64::MAX),
        );
        let url = self.readable_source_url(source, source_snapshot, dest, lifetime)?;
        // No x-ms-meta-* at all means "copy the source's metadata".
        let (if_match, if_none_match) = conditions(condition);
        let options = BlobClientStartCopyFromUrlOptions {
            metadata: (!metadata.is_empty()).then(|| metadata.clone().into_iter().collect()),
            if_match,
            if_none_match,
            ..Default::default()
        };
        let resp = self
            .blob_client_once(dest)?
            .start_copy_from_url(url.to_string(), Some(options))
            .await
            .map_err(|e| map_copy_err(dest, source, source_snapshot, what(), e))?;
        resp.copy_id()
            .map_err(|e| map_err(Resource::blob(dest), what(), e))?
            .ok_or_else(|| {
                BlobError::bad_response(
                    Resource::blob(dest),
                    202,
                    "MissingCopyId",
                    "the response carried no x-ms-copy-id".into(),
                )
            })
    }

    async fn set_metadata(&self, blob: &BlobRef, metadata: &Metadata) -> BlobResult<()> {
        let map: HashMap<String, String> = metadata.clone().into_iter().collect();
        self.blob_client(blob)?
            .set_metadata(&map, None)
            .await
            .map(|_| ())
            .map_err(|e| map_err(Resource::blob(blob), "set metadata", e))
    }

    async fn delete_blob(&self, blob: &BlobRef) -> BlobResult<()> {
        match self.blob_client(blob)?.delete(None).await {
            Ok(_) => Ok(()),
            Err(e) => match map_err(Resource::blob(blob), "delete blob", e) {
                e if e.is_not_found() => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn abort_copy(&self, dest: &BlobRef, copy_id: &str) -> BlobResult<()> {
        match self.blob_client(dest)?.abort_copy(copy_id, None).await {
            Ok(_) => Ok(()),
            // 409 NoPendingCopyOperation: the copy ended (or never started) already.
            Err(e) => match map_err(Resource::blob(dest), "abort copy", e) {
                e if matches!(e.kind, Kind::Conflict | Kind::NotFound) => Ok(()),
                other => Err(other),
            },
        }
    }
}

/// A listed blob's metadata with its keys in lower case, as snapback's tags are compared
/// (the service keeps the case a key was written in).
pub(super) fn listed_metadata(m: Option<azure_storage_blob::models::BlobMetadata>) -> Metadata {
    m.and_then(|m| m.values)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_lowercase(), v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_must_hold_the_range_asked_for() {
        let with = |v: &str| {
            let mut h = azure_core::http::headers::Headers::new();
            h.insert("content-range", v.to_string());
            h
        };
        let r = ByteRange::new(8192, 12288);
        assert_eq!(
            check_served_range(&with("bytes 8192-12287/4194304"), r),
            Ok(())
        );
        let wrong = check_served_range(&with("bytes 0-4095/4194304"), r).unwrap_err();
        assert!(
            wrong.contains("\"bytes 0-4095/4194304\"") && wrong.contains("bytes 8192-12287"),
            "{wrong}"
        );
        for bad in ["bytes 8192-12288/4194304", "bytes */4194304", "8192-12287"] {
            assert!(check_served_range(&with(bad), r).is_err(), "{bad}");
        }
        let none = azure_core::http::headers::Headers::new();
        assert!(check_served_range(&none, r)
            .unwrap_err()
            .contains("no Content-Range"));
    }

    #[test]
    fn crc64_is_nvme() {
        let le = crc64_le(b"123456789");
        assert_eq!(
            u64::from_le_bytes(le.try_into().unwrap()),
            0xae8b14860a799888
        );
    }

    #[test]
    fn a_failed_copy_names_the_resource_the_service_meant() {
        let (dest, src) = (
            BlobRef::new("backup", "backups", "d"),
            BlobRef::new("premium", "vhds", "d.vhd"),
        );
        let snap = Some("2026-01-01T00:00:00.0000000Z");
        assert_eq!(
            copy_error_resource(ServiceCode::parse("BlobNotFound"), &dest, &src, snap),
            Resource::blob(&dest)
        );
        assert_eq!(
            copy_error_resource(None, &dest, &src, snap),
            Resource::blob(&dest)
        );
        assert_eq!(
            copy_error_resource(
                ServiceCode::parse("CannotVerifyCopySource"),
                &dest,
                &src,
                snap
            ),
            Resource::of(&src, snap)
        );
    }

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

    #[test]
    fn error_message_is_extracted() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>X</Code><Message>Server failed.\nRequestId:1</Message></Error>";
        assert_eq!(xml_message(body).as_deref(), Some("Server failed."));
    }
}
