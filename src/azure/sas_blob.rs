//! Reads of a blob reached through a SAS URL that snapback did not mint: a managed-disk
//! snapshot exported with `beginGetAccess`. The URL carries its own authorisation, so the
//! pipeline has no signing policy; it retries like every storage request ([`retry_options`]).
//!
//! Errors name the snapshot's ARM resource id (`Resource::Managed`), never the URL: its
//! query is a credential, and anything the transport says is passed through [`crate::secrets::redact`].

use super::{check_served_range, page_list, retry_options, SERVICE_VERSION};
use crate::arm::sas::SasUrl;
use crate::blobs::{BlobError, BlobResult, PageList, PageListQuery, Resource};
use crate::pages::ByteRange;
use azure_core::http::{ClientOptions, Context, Method, Pipeline, Request, Transport};
use bytes::Bytes;

/// Header of Get Page Ranges that diffs a managed disk's snapshot against an older one of
/// the same disk, given as its SAS URL
/// (<https://learn.microsoft.com/rest/api/storageservices/get-page-ranges>).
const PREVIOUS_SNAPSHOT_URL: &str = "x-ms-previous-snapshot-url";

/// A pipeline for SAS-authorised reads.
#[derive(Clone, Debug)]
pub struct SasBlobs {
    pipeline: Pipeline,
}

impl Default for SasBlobs {
    fn default() -> Self {
        Self::new(None)
    }
}

impl SasBlobs {
    /// `transport`: the HTTP client (None: a new one, as the storage clients use).
    pub fn new(transport: Option<Transport>) -> Self {
        crate::tls::install_provider();
        let transport = transport.unwrap_or_else(super::http::transport);
        let options = ClientOptions {
            transport: Some(transport),
            retry: retry_options(),
            ..Default::default()
        };
        let pipeline = Pipeline::new(
            option_env!("CARGO_PKG_NAME"),
            option_env!("CARGO_PKG_VERSION"),
            options,
            Vec::new(),
            Vec::new(),
            None,
        );
        SasBlobs { pipeline }
    }

    /// One page of Get Page Ranges of `blob` within `query.range`: every written range, or,
    /// with `previous`, the diff against that older snapshot of the same disk.
    pub async fn page_ranges(
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
            .pipeline
            .send(&Context::new(), &mut request, None)
            .await
            .map_err(|e| map_err(resource, what, e))?;
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
    pub async fn read(&self, resource: &str, blob: &SasUrl, range: ByteRange) -> BlobResult<Bytes> {
        let what = format!("read {range}");
        let mut request = Request::new(blob.expose().clone(), Method::Get);
        request.insert_header("x-ms-version", SERVICE_VERSION);
        request.insert_header("x-ms-range", range.http_header());
        // Streamed, as `AzureBlobs::read`: an answer cut mid-body goes to `retry_unanswered`
        // at once instead of through every SDK retry.
        let resp = self
            .pipeline
            .stream(&Context::new(), &mut request, None)
            .await
            .map_err(|e| map_err(resource, &what, e))?;
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
            .map_err(|e| map_err(resource, &what, e))?;
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
}

impl SasBlobs {
    /// Put Page of `data` (page aligned, at most 4 MiB) at `offset` of `blob` (a managed
    /// disk awaiting its upload, through its write SAS), with a transactional CRC-64.
    pub async fn put_pages(
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
        self.pipeline
            .send(&Context::new(), &mut request, None)
            .await
            .map_err(|e| map_err(resource, &what, e))?;
        Ok(())
    }
}

/// As `super::map_err` (whose error constructors redact whatever the transport quoted, the
/// SAS URL included), naming the managed disk's resource id.
fn map_err(resource: &str, what: &str, e: azure_core::Error) -> BlobError {
    super::map_err(Resource::Managed(resource.to_string()), what, e)
}
