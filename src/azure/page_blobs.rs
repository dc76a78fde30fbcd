//! The [`PageBlobs`] operations over Azure Storage: properties, snapshots, page ranges,
//! reads, page writes (from bytes, from a URL, from a SAS), copies, metadata. Each is one
//! request through the account's SDK client or raw pipeline (see the parent module).

use super::auth::{Auth, STORAGE_SCOPE};
use super::copy_source::MINTED_SAS_LIFETIME;
use super::error_map::{map_copy_err, map_err};
use super::headers::{
    check_served_range, conditions, crc64_le, etag_string, fence_header, listed_metadata,
    parse_copy_status, snapshot_label, written_etag,
};
use super::{page_list, AzureBlobs, SERVICE_VERSION};
use crate::model::pages::ByteRange;
use crate::storage::{
    BlobError, BlobProps, BlobRef, BlobResult, Continuation, ErrorKind as Kind, Fence, IfBlob,
    Metadata, NewPageBlob, PageBlobs, PageList, PageListQuery, Resource, ServiceCode, SnapshotInfo,
};
use async_trait::async_trait;
use azure_core::http::{Context, Method, Request, RequestContent, Url};
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
use bytes::Bytes;
use futures::TryStreamExt;
use std::collections::HashMap;

impl AzureBlobs {
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
