//! [`LeaseBlobs`] over the storage SDK: Put Blob (If-None-Match: *), Lease Blob, and Set Blob
//! Metadata and Put Blob (If-Match) with the lease id.

use super::error_map::map_err;
use super::headers::etag_string;
use super::AzureBlobs;
use crate::model::pages::ByteRange;
use crate::storage::error::ErrorKind as Kind;
use crate::storage::lease::LeaseBlobs;
use crate::storage::{
    retry_unanswered, BlobProps, BlobRef, BlobResult, Metadata, PageBlobs, Resource,
};
use async_trait::async_trait;
use azure_core::http::RequestContent;
use azure_storage_blob::models::{BlobClientSetMetadataOptions, BlockBlobClientUploadOptions};
use bytes::Bytes;
use std::collections::HashMap;

#[async_trait]
impl LeaseBlobs for AzureBlobs {
    async fn create_lock_blob(&self, blob: &BlobRef) -> BlobResult<()> {
        let options = BlockBlobClientUploadOptions {
            if_none_match: Some("*".into()),
            ..Default::default()
        };
        let content = <RequestContent<Bytes, _> as From<Bytes>>::from(Bytes::new());
        match self.blob_client(blob)?.upload(content, Some(options)).await {
            Ok(_) => Ok(()),
            Err(e) => match map_err(Resource::blob(blob), "create lock blob", e) {
                // It exists (409 BlobAlreadyExists), or exists and is leased (412).
                e if matches!(e.kind, Kind::AlreadyExists | Kind::PreconditionFailed) => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn acquire_lease(&self, blob: &BlobRef, lease_id: &str, seconds: u32) -> BlobResult<()> {
        let options = azure_storage_blob::models::BlobClientAcquireLeaseOptions {
            proposed_lease_id: Some(lease_id.to_string()),
            ..Default::default()
        };
        self.blob_client(blob)?
            .acquire_lease(seconds as i32, Some(options))
            .await
            .map(|_| ())
            .map_err(|e| map_err(Resource::blob(blob), "acquire lease", e))
    }

    async fn renew_lease(&self, blob: &BlobRef, lease_id: &str) -> BlobResult<()> {
        self.blob_client(blob)?
            .renew_lease(lease_id.to_string(), None)
            .await
            .map(|_| ())
            .map_err(|e| map_err(Resource::blob(blob), "renew lease", e))
    }

    async fn release_lease(&self, blob: &BlobRef, lease_id: &str) -> BlobResult<()> {
        self.blob_client(blob)?
            .release_lease(lease_id.to_string(), None)
            .await
            .map(|_| ())
            .map_err(|e| map_err(Resource::blob(blob), "release lease", e))
    }

    async fn set_leased_metadata(
        &self,
        blob: &BlobRef,
        lease_id: &str,
        metadata: &Metadata,
    ) -> BlobResult<String> {
        let map: HashMap<String, String> = metadata.clone().into_iter().collect();
        let options = BlobClientSetMetadataOptions {
            lease_id: Some(lease_id.to_string()),
            ..Default::default()
        };
        let resp = self
            .blob_client(blob)?
            .set_metadata(&map, Some(options))
            .await
            .map_err(|e| map_err(Resource::blob(blob), "set lock blob metadata", e))?;
        Ok(resp
            .headers()
            .get_optional_string(&azure_core::http::headers::ETAG)
            .unwrap_or_default())
    }

    async fn read_lock_blob(&self, blob: &BlobRef) -> BlobResult<Option<(BlobProps, Bytes)>> {
        // Two requests, not one Get Blob: a ranged download of an empty blob is refused (416).
        let Some(props) = PageBlobs::properties(self, blob, None).await? else {
            return Ok(None);
        };
        let body = match props.size {
            0 => Bytes::new(),
            n => {
                retry_unanswered("the lock blob", || {
                    PageBlobs::read(self, blob, None, ByteRange::new(0, n))
                })
                .await?
            }
        };
        Ok(Some((props, body)))
    }

    async fn put_leased_body(
        &self,
        blob: &BlobRef,
        lease_id: &str,
        if_match: &str,
        body: Bytes,
        metadata: &Metadata,
    ) -> BlobResult<String> {
        let options = BlockBlobClientUploadOptions {
            lease_id: Some(lease_id.to_string()),
            if_match: Some(if_match.to_string().into()),
            metadata: Some(metadata.clone().into_iter().collect()),
            ..Default::default()
        };
        let content = <RequestContent<Bytes, _> as From<Bytes>>::from(body);
        let resp = self
            .blob_client(blob)?
            .upload(content, Some(options))
            .await
            .map_err(|e| map_err(Resource::blob(blob), "write the disk's state", e))?;
        Ok(etag_string(resp.etag))
    }
}
