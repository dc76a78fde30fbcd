//! Requests that only `snapback check` makes: a cycle never leases a blob, asks whether a
//! container exists or deletes one. Kept here so the cycle's client stays what it needs.

use super::error_map::map_err;
use super::AzureBlobs;
use crate::storage::{BlobError, BlobRef, BlobResult, ErrorKind, Resource};
use azure_storage_blob::models::BlobClientAcquireLeaseResultHeaders;

/// Shortest lease Azure grants; the lease is released at once anyway.
const LEASE_SECONDS: i32 = 15;

impl AzureBlobs {
    /// Acquires a lease on `blob` and releases it.
    pub async fn lease_and_release(&self, blob: &BlobRef) -> BlobResult<()> {
        let what = || format!("lease {blob}");
        let client = self.blob_client(blob)?;
        let resp = client
            .acquire_lease(LEASE_SECONDS, None)
            .await
            .map_err(|e| map_err(Resource::blob(blob), what(), e))?;
        let id = resp
            .lease_id()
            .map_err(|e| map_err(Resource::blob(blob), what(), e))?
            .ok_or_else(|| {
                BlobError::bad_response(
                    Resource::blob(blob),
                    201,
                    "MissingLeaseId",
                    format!("{}: the response carried no x-ms-lease-id", what()),
                )
            })?;
        client
            .release_lease(id, None)
            .await
            .map(|_| ())
            .map_err(|e| {
                map_err(
                    Resource::blob(blob),
                    format!("release the lease on {blob}"),
                    e,
                )
            })
    }

    /// The SKU of `blob`'s account (`x-ms-sku-name` of Get Account Information, e.g.
    /// `Premium_LRS`), or None when the service does not say.
    pub async fn account_sku(&self, blob: &BlobRef) -> BlobResult<Option<String>> {
        use azure_storage_blob::models::BlobClientGetAccountInfoResultHeaders;
        let what = || format!("get account information of account '{}'", blob.account);
        let resource = || Resource::Account(blob.account.clone());
        let resp = self
            .blob_client(blob)?
            .get_account_info(None)
            .await
            .map_err(|e| map_err(resource(), what(), e))?;
        let sku = resp
            .sku_name()
            .map_err(|e| map_err(resource(), what(), e))?;
        Ok(sku.map(|s| s.to_string()))
    }

    /// Whether `blob`'s container exists.
    pub async fn container_exists(&self, blob: &BlobRef) -> BlobResult<bool> {
        let what = format!("container {}/{}", blob.account, blob.container);
        match self.container_client(blob)?.get_properties(None).await {
            Ok(_) => Ok(true),
            Err(e) => match map_err(Resource::container(blob), what, e) {
                e if e.kind == ErrorKind::NotFound => Ok(false),
                other => Err(other),
            },
        }
    }

    /// Deletes `blob`'s container (all it holds).
    pub async fn delete_container(&self, blob: &BlobRef) -> BlobResult<()> {
        let what = format!("delete container {}/{}", blob.account, blob.container);
        self.container_client(blob)?
            .delete(None)
            .await
            .map(|_| ())
            .map_err(|e| map_err(Resource::container(blob), what, e))
    }
}
