//! [`LeaseListing`] over the storage SDK: List Blobs with metadata; each item carries its
//! lease state.

use super::error_map::map_err;
use super::headers::listed_metadata;
use super::AzureBlobs;
use crate::storage::lease::{LeaseListing, LeasedBlob};
use crate::storage::{BlobRef, BlobResult, Continuation, Resource};
use async_trait::async_trait;
use azure_storage_blob::models::{
    BlobContainerClientListBlobsOptions, LeaseState, ListBlobsIncludeItem,
};
use futures::TryStreamExt;

#[async_trait]
impl LeaseListing for AzureBlobs {
    async fn list_leases(&self, dir: &BlobRef) -> BlobResult<Vec<LeasedBlob>> {
        let what = "list leased blobs";
        let err = |e| map_err(Resource::container(dir), what, e);
        let options = BlobContainerClientListBlobsOptions {
            prefix: Some(dir.blob.clone()),
            include: Some(vec![ListBlobsIncludeItem::Metadata]),
            ..Default::default()
        };
        let mut pages = self
            .container_client(dir)?
            .list_blobs(Some(options))
            .map_err(err)?
            .into_pages();
        let mut out = Vec::new();
        let mut continuation = Continuation::default();
        while let Some(page) = pages.try_next().await.map_err(err)? {
            let page = page.into_model().map_err(err)?;
            // The pager follows the marker itself, when polled again: an error here ends it.
            continuation
                .follow(page.next_marker.clone(), page.blob_items.len())
                .map_err(|c| c.on(Resource::container(dir), what))?;
            for item in page.blob_items {
                let Some(name) = item.name else { continue };
                out.push(LeasedBlob {
                    name,
                    leased: item
                        .properties
                        .and_then(|p| p.lease_state)
                        .is_some_and(|s| s == LeaseState::Leased),
                    metadata: listed_metadata(item.metadata),
                });
            }
        }
        Ok(out)
    }
}
