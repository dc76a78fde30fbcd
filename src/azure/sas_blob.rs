//! Reads of a blob reached through a SAS URL that snapback did not mint: a managed-disk
//! snapshot exported with `beginGetAccess`. The URL carries its own authorisation, so the
//! pipeline has no signing policy; it retries like every storage request ([`retry_options`]).
//!
//! Errors name the snapshot's ARM resource id (`Resource::Managed`), never the URL: its
//! query is a credential, and anything the transport says is passed through [`crate::model::secrets::redact`].

use super::{check_served_range, page_list, retry_options, SERVICE_VERSION};
use crate::model::pages::ByteRange;
use crate::model::secrets::SasUrl;
use crate::storage::{
    BlobError, BlobResult, ErrorKind, ExportBlobs, PageList, PageListQuery, Resource,
};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::policies::auth::BearerTokenAuthorizationPolicy;
use azure_core::http::policies::Policy;
use azure_core::http::{ClientOptions, Context, Method, Pipeline, Request, Transport};
use bytes::Bytes;
use std::sync::Arc;

/// The OAuth scope of tokens for managed-disk export/upload URLs. The audience is
/// `https://disk.azure.com/` *with* its trailing slash (the service compares it exactly), so
/// the v2 scope has two slashes before `.default` — as AzCopy's `ManagedDiskScope` and the
/// Azure SDKs' challenge policies write it.
pub const DISK_DATA_SCOPE: &str = "https://disk.azure.com//.default";

/// The built-in role a principal needs to read an AAD-mode disk's export.
pub const DATA_OPERATOR_ROLE: &str = "Data Operator for Managed Disks";

/// Header of Get Page Ranges that diffs a managed disk's snapshot against an older one of
/// the same disk, given as its SAS URL
/// (<https://learn.microsoft.com/rest/api/storageservices/get-page-ranges>).
const PREVIOUS_SNAPSHOT_URL: &str = "x-ms-previous-snapshot-url";

/// A pipeline for SAS-authorised reads.
#[derive(Clone, Debug)]
pub struct SasBlobs {
    /// Kept to build the bearer pipeline on the same connection pool.
    transport: Transport,
    pipeline: Pipeline,
    /// The same, plus a bearer token for the managed-disk audience: for the exports of
    /// Entra-only disks ([`SasUrl::needs_bearer`]). None: no `[azure]` credential given.
    bearer: Option<Pipeline>,
}

impl Default for SasBlobs {
    fn default() -> Self {
        Self::new(None)
    }
}

impl SasBlobs {
    /// `transport`: the HTTP client (None: a new one, as the storage clients use).
    pub fn new(transport: Option<Transport>) -> Self {
        crate::azure::tls::install_provider();
        let transport = transport.unwrap_or_else(super::http::transport);
        SasBlobs {
            pipeline: Self::pipeline(&transport, Vec::new()),
            bearer: None,
            transport,
        }
    }

    /// Signs the requests through an Entra-only disk's export with `credential`'s token for
    /// [`DISK_DATA_SCOPE`] (after the SAS, which stays in the URL). Storage accepts bearer
    /// tokens from `x-ms-version` 2017-11-09 on; `SERVICE_VERSION` is later. azure_core's
    /// bearer policy refuses plain http, so a token never leaves over an unencrypted link.
    pub fn with_credential(mut self, credential: Arc<dyn TokenCredential>) -> Self {
        let auth: Arc<dyn Policy> = Arc::new(BearerTokenAuthorizationPolicy::new(
            credential,
            vec![DISK_DATA_SCOPE.to_string()],
        ));
        self.bearer = Some(Self::pipeline(&self.transport, vec![auth]));
        self
    }

    fn pipeline(transport: &Transport, per_try: Vec<Arc<dyn Policy>>) -> Pipeline {
        let options = ClientOptions {
            transport: Some(transport.clone()),
            retry: retry_options(),
            ..Default::default()
        };
        Pipeline::new(
            option_env!("CARGO_PKG_NAME"),
            option_env!("CARGO_PKG_VERSION"),
            options,
            Vec::new(),
            per_try,
            None,
        )
    }

    /// The pipeline `blob` needs: with the bearer token when its export asks for one.
    fn pipeline_for(&self, resource: &str, blob: &SasUrl) -> BlobResult<&Pipeline> {
        if !blob.needs_bearer() {
            return Ok(&self.pipeline);
        }
        self.bearer.as_ref().ok_or_else(|| {
            BlobError::local(
                ErrorKind::Unusable,
                Resource::Managed(resource.to_string()),
                "its export needs an Entra ID token (dataAccessAuthMode = AzureActiveDirectory) \
                 and no [azure] credential was given to sign it",
            )
        })
    }
}

/// Requests through the URL; a bearer token for the disk audience where it asks for one.
#[async_trait]
impl ExportBlobs for SasBlobs {
    /// One page of Get Page Ranges of `blob` within `query.range`: every written range, or,
    /// with `previous`, the diff against that older snapshot of the same disk.
    async fn page_ranges(
        &self,
        resource: &str,
        blob: &SasUrl,
        previous: Option<&SasUrl>,
        query: &PageListQuery<'_>,
    ) -> BlobResult<PageList> {
        let what = match previous {
            Some(_) => "diff against the previous snapshot",
            None => "page ranges",
        };
        let url = page_list::request_url(blob.expose(), query);
        let mut request = Request::new(url, Method::Get);
        request.insert_header("x-ms-version", SERVICE_VERSION);
        if let Some(r) = query.range {
            request.insert_header("x-ms-range", r.http_header());
        }
        if let Some(p) = previous {
            request.insert_header(PREVIOUS_SNAPSHOT_URL, p.expose().to_string());
        }
        let resp = self
            .pipeline_for(resource, blob)?
            .send(&Context::new(), &mut request, None)
            .await
            .map_err(|e| map_err(resource, blob, what, e))?;
        page_list::parse(resp.body().as_ref()).map_err(|message| {
            BlobError::bad_response(
                Resource::Managed(resource.to_string()),
                200,
                "MalformedPageList",
                format!("{what}: {message}"),
            )
        })
    }

    /// Reads `range` of `blob`.
    async fn read(&self, resource: &str, blob: &SasUrl, range: ByteRange) -> BlobResult<Bytes> {
        let what = format!("read {range}");
        let mut request = Request::new(blob.expose().clone(), Method::Get);
        request.insert_header("x-ms-version", SERVICE_VERSION);
        request.insert_header("x-ms-range", range.http_header());
        // Streamed, as `AzureBlobs::read`: an answer cut mid-body goes to `retry_unanswered`
        // at once instead of through every SDK retry.
        let resp = self
            .pipeline_for(resource, blob)?
            .stream(&Context::new(), &mut request, None)
            .await
            .map_err(|e| map_err(resource, blob, &what, e))?;
        check_served_range(resp.headers(), range).map_err(|why| {
            BlobError::bad_response(
                Resource::Managed(resource.to_string()),
                206,
                "WrongRange",
                format!("{what}: {why}"),
            )
        })?;
        let data = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| map_err(resource, blob, &what, e))?;
        if data.len() as u64 != range.len() {
            return Err(BlobError::bad_response(
                Resource::Managed(resource.to_string()),
                206,
                "ShortRead",
                format!("{what}: got {} of {} bytes", data.len(), range.len()),
            ));
        }
        Ok(data)
    }

    /// Get Blob Properties: how big a managed disk's VM guest state blob is, before it is
    /// copied or uploaded into.
    async fn size(&self, resource: &str, blob: &SasUrl) -> BlobResult<u64> {
        let what = "properties";
        let mut request = Request::new(blob.expose().clone(), Method::Head);
        request.insert_header("x-ms-version", SERVICE_VERSION);
        let resp = self
            .pipeline_for(resource, blob)?
            .send(&Context::new(), &mut request, None)
            .await
            .map_err(|e| map_err(resource, blob, what, e))?;
        resp.headers()
            .get_optional_str(&azure_core::http::headers::CONTENT_LENGTH)
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                BlobError::bad_response(
                    Resource::Managed(resource.to_string()),
                    200,
                    "MissingContentLength",
                    format!("{what}: no Content-Length"),
                )
            })
    }

    /// Put Page of `data` (page aligned, at most 4 MiB) at `offset` of `blob` (a managed
    /// disk awaiting its upload, through its write SAS), with a transactional CRC-64.
    async fn put_pages(
        &self,
        resource: &str,
        blob: &SasUrl,
        offset: u64,
        data: Bytes,
    ) -> BlobResult<()> {
        let range = ByteRange::new(offset, offset + data.len() as u64);
        let what = format!("put {range}");
        let mut url = blob.expose().clone();
        url.query_pairs_mut().append_pair("comp", "page");
        let mut request = Request::new(url, Method::Put);
        request.insert_header("x-ms-version", SERVICE_VERSION);
        request.insert_header("x-ms-page-write", "update");
        request.insert_header("x-ms-range", range.http_header());
        request.insert_header("content-length", data.len().to_string());
        request.insert_header(
            "x-ms-content-crc64",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                super::crc64_le(&data),
            ),
        );
        request.set_body(data);
        self.pipeline_for(resource, blob)?
            .send(&Context::new(), &mut request, None)
            .await
            .map_err(|e| map_err(resource, blob, &what, e))?;
        Ok(())
    }
}

/// As `super::map_err` (whose error constructors redact whatever the transport quoted, the
/// SAS URL included), naming the managed disk's resource id. A refused token on an
/// Entra-only export names the role the `[azure]` identity lacks.
fn map_err(resource: &str, blob: &SasUrl, what: &str, e: azure_core::Error) -> BlobError {
    let mut err = super::map_err(Resource::Managed(resource.to_string()), what, e);
    if blob.needs_bearer() && err.kind == ErrorKind::Auth {
        err.detail = format!(
            "{}; the export of this Entra-only disk (dataAccessAuthMode = AzureActiveDirectory) \
             needs the [azure] identity to hold the '{DATA_OPERATOR_ROLE}' role (or \
             Microsoft.Compute/snapshots/download/action) on it: az role assignment create \
             --role '{DATA_OPERATOR_ROLE}' --assignee <the [azure] principal> --scope <its resource group>",
            err.detail
        );
    }
    err
}
