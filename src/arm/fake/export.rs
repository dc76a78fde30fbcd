//! The URLs [`MemArm`]'s grants hand out, and the data plane behind them: each grant opens
//! a container of its own on the fake export host, `endGetAccess` closes it (see the module
//! above).

use super::{Data, Export, MemArm, State};
use crate::arm::models::AccessGrant;
use crate::model::pages::ByteRange;
use crate::model::secrets::SasUrl;
use crate::storage::{
    BlobError, BlobRef, BlobResult, ErrorKind, ExportBlobs, PageBlobs, PageList, PageListQuery,
    Resource,
};
use async_trait::async_trait;
use bytes::Bytes;

impl MemArm {
    /// A URL on `blob` (its own container, as Azure's exports: one per grant).
    fn export(
        s: &mut State,
        resource: &str,
        at: (&BlobRef, Option<&String>),
        write: bool,
        name: &str,
    ) -> SasUrl {
        let n = Self::id(s);
        let path = format!("/x{n:08x}/{name}");
        let url = format!(
            "https://md-fake.blob.storage.azure.net{path}?sv=2018-03-28&sr=b&si=x{n}&sig=fake{n}"
        );
        s.exports.insert(
            path,
            Export {
                resource: resource.to_string(),
                blob: at.0.clone(),
                snapshot: at.1.cloned(),
                write,
            },
        );
        // A URL the fake formats itself: it parses.
        SasUrl::new(url.parse().unwrap_or_else(|e| panic!("fake SAS URL: {e}")))
    }

    pub(super) fn grant_urls(
        s: &mut State,
        resource: &str,
        data: &Data,
        write: bool,
        guest: bool,
    ) -> AccessGrant {
        let sas = Self::export(
            s,
            resource,
            (&data.blob, data.snapshot.as_ref()),
            write,
            "abcd",
        );
        let guest_state = match (&data.vmgs, guest) {
            (Some((g, at)), true) => {
                let name = format!("{:08x}-0000-4000-8000-000000000000_vmgs", s.next);
                Some(Self::export(s, resource, (g, at.as_ref()), write, &name))
            }
            _ => None,
        };
        AccessGrant { sas, guest_state }
    }

    /// The export `url` opens, or 403 (never granted, or revoked).
    async fn open(
        &self,
        resource: &str,
        url: &SasUrl,
    ) -> BlobResult<(BlobRef, Option<String>, bool)> {
        let mut s = self.state.lock().await;
        let here = Resource::Managed(resource.to_string());
        if let Some(0) = s.fail_after {
            return Err(BlobError::service(
                here,
                503,
                Some("ServerBusy".into()),
                "injected failure".into(),
            ));
        }
        if let Some(n) = s.fail_after {
            s.fail_after = Some(n - 1);
        }
        match s.exports.get(url.expose().path()) {
            Some(e) => Ok((e.blob.clone(), e.snapshot.clone(), e.write)),
            None => Err(BlobError::service(
                here,
                403,
                Some("AuthenticationFailed".into()),
                "no access is granted through this URL (never granted, or ended)".into(),
            )),
        }
    }
}

/// Maps the fake storage's error onto the resource the URL was granted on.
fn about(resource: &str) -> impl Fn(BlobError) -> BlobError + '_ {
    move |mut e| {
        e.resource = Box::new(Resource::Managed(resource.to_string()));
        e
    }
}

#[async_trait]
impl ExportBlobs for MemArm {
    async fn page_ranges(
        &self,
        resource: &str,
        blob: &SasUrl,
        previous: Option<&SasUrl>,
        query: &PageListQuery<'_>,
    ) -> BlobResult<PageList> {
        let (at, snapshot, _) = self.open(resource, blob).await?;
        let prev = match previous {
            Some(p) => {
                let (of, snapshot, _) = self.open(resource, p).await?;
                if of != at {
                    return Err(BlobError::service(
                        Resource::Managed(resource.to_string()),
                        400,
                        Some("InvalidHeaderValue".into()),
                        "the previous snapshot is not of the same disk".into(),
                    ));
                }
                snapshot
            }
            None => None,
        };
        let q = PageListQuery {
            snapshot: snapshot.as_deref(),
            prev_snapshot: prev.as_deref(),
            ..*query
        };
        self.data
            .page_ranges(&at, &q)
            .await
            .map_err(about(resource))
    }

    async fn read(&self, resource: &str, blob: &SasUrl, range: ByteRange) -> BlobResult<Bytes> {
        let (at, snapshot, _) = self.open(resource, blob).await?;
        let size = self.size_of(resource, &at, snapshot.as_deref()).await?;
        if range.end > size {
            return Err(BlobError::service(
                Resource::Managed(resource.to_string()),
                416,
                Some("InvalidRange".into()),
                format!("read {range} of {size} bytes"),
            ));
        }
        self.data
            .read(&at, snapshot.as_deref(), range)
            .await
            .map_err(about(resource))
    }

    async fn size(&self, resource: &str, blob: &SasUrl) -> BlobResult<u64> {
        let (at, snapshot, _) = self.open(resource, blob).await?;
        self.size_of(resource, &at, snapshot.as_deref()).await
    }

    async fn put_pages(
        &self,
        resource: &str,
        blob: &SasUrl,
        offset: u64,
        data: Bytes,
    ) -> BlobResult<()> {
        let (at, _, write) = self.open(resource, blob).await?;
        if !write {
            return Err(BlobError::service(
                Resource::Managed(resource.to_string()),
                403,
                Some("AuthorizationPermissionMismatch".into()),
                "a read SAS".into(),
            ));
        }
        self.data
            .put_pages(&at, offset, data, None)
            .await
            .map_err(about(resource))?;
        Ok(())
    }
}

impl MemArm {
    async fn size_of(
        &self,
        resource: &str,
        blob: &BlobRef,
        snapshot: Option<&str>,
    ) -> BlobResult<u64> {
        match self
            .data
            .properties(blob, snapshot)
            .await
            .map_err(about(resource))?
        {
            Some(p) => Ok(p.size),
            None => Err(BlobError::local(
                ErrorKind::NotFound,
                Resource::Managed(resource.to_string()),
                "the export's blob is gone",
            )),
        }
    }
}
