//! [`ArmClient`]: the Microsoft.Compute requests snapback makes, on azure_core's pipeline.
//!
//! Requests go through a pipeline with azure_core's bearer-token policy (scope
//! `{arm_endpoint}/.default`) and *no* SDK retry policy: retries are done here, because ARM
//! tells how long to wait (`Retry-After` on 429 and 5xx, and on every long-running operation
//! poll) and the SDK's exponential policy would ignore that on polls. A request that starts
//! a long-running operation is polled to its end in `long_running`.

mod long_running;

use super::error::ArmError;
use super::id::{ResourceGroup, ResourceId, ResourceKind};
use super::models::{
    Access, AccessGrant, AccessUri, CreationData, Disk, DiskPut, DiskPutProperties, DiskRecipe,
    ErrorResponse, GrantAccess, Page, SecurityProfile, Sku, Snapshot, SnapshotPut,
    SnapshotPutProperties, Tags, UploadDiskSpec,
};
use super::API_VERSION;
use crate::arm::options::AzureConfig;
use crate::model::secrets::{redact, SasUrl};
use azure_core::credentials::TokenCredential;
use azure_core::error::ErrorKind;
use azure_core::http::headers::{HeaderName, Headers};
use azure_core::http::policies::auth::BearerTokenAuthorizationPolicy;
use azure_core::http::policies::Policy;
use azure_core::http::{
    ClientOptions, Context, Method, Pipeline, PipelineSendOptions, RawResponse, Request,
    RetryOptions, Transport, Url,
};
use bytes::Bytes;
use long_running::Outcome;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

const RETRY_AFTER: HeaderName = HeaderName::from_static("retry-after");

/// Retries of throttled (429), failed (5xx) and unanswered requests.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub max_retries: u32,
    /// Wait before the first retry when the answer has no `Retry-After`; doubles each time.
    pub base_delay: Duration,
    /// No wait is longer, whatever `Retry-After` says.
    pub max_delay: Duration,
}

/// Polling of long-running operations.
#[derive(Clone, Debug)]
pub struct PollPolicy {
    /// Wait between polls when ARM gives no `Retry-After`.
    pub default_interval: Duration,
    /// Give up (typed [`ArmError::Timeout`]) after this long.
    pub timeout: Duration,
}

/// Settings of an [`ArmClient`].
#[derive(Clone, Debug)]
pub struct ArmOptions {
    /// The HTTP client; `None`: azure_core's default (reqwest with the system's roots).
    pub transport: Option<Transport>,
    pub retry: RetryPolicy,
    pub poll: PollPolicy,
}

impl Default for ArmOptions {
    /// Six retries, 1 s doubling to 60 s at most (ARM's throttling windows are per minute);
    /// polls every 5 s unless told otherwise, for at most an hour (a snapshot of a large
    /// disk being copied, or a busy region).
    fn default() -> Self {
        ArmOptions {
            transport: None,
            retry: RetryPolicy {
                max_retries: 6,
                base_delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(60),
            },
            poll: PollPolicy {
                default_interval: Duration::from_secs(5),
                timeout: Duration::from_secs(3600),
            },
        }
    }
}

/// The ARM requests of managed-disk backups and restores.
#[derive(Clone, Debug)]
pub struct ArmClient {
    pipeline: Pipeline,
    endpoint: Url,
    options: ArmOptions,
    /// Also signs the export reads of Entra-only disks ([`Self::credential`]).
    credential: Arc<dyn TokenCredential>,
}

/// Counts as "retry": the answers ARM documents as transient.
fn is_transient(status: u16) -> bool {
    status == 429 || (500..=599).contains(&status)
}

impl ArmClient {
    /// A client signing with `credential` for `{endpoint}/.default`.
    pub fn new(endpoint: Url, credential: Arc<dyn TokenCredential>, options: ArmOptions) -> Self {
        crate::azure::tls::install_provider();
        let scope = format!("{}/.default", endpoint.as_str().trim_end_matches('/'));
        let auth: Arc<dyn Policy> = Arc::new(BearerTokenAuthorizationPolicy::new(
            credential.clone(),
            vec![scope],
        ));
        let client_options = ClientOptions {
            transport: options.transport.clone(),
            retry: RetryOptions::none(),
            ..Default::default()
        };
        let pipeline = Pipeline::new(
            option_env!("CARGO_PKG_NAME"),
            option_env!("CARGO_PKG_VERSION"),
            client_options,
            Vec::new(),
            vec![auth],
            None,
        );
        ArmClient {
            pipeline,
            endpoint,
            options,
            credential,
        }
    }

    /// The `[azure]` credential: the identity whose token an Entra-only disk's export
    /// requires (`dataAccessAuthMode = AzureActiveDirectory`, see [`super::export`]), the
    /// same principal that asked for the SAS.
    pub fn credential(&self) -> Arc<dyn TokenCredential> {
        self.credential.clone()
    }

    /// A client for an `[azure]` table: its endpoint and its credential (see
    /// [`super::credential::build`]); the token requests use the same transport.
    pub fn from_config(cfg: &AzureConfig, options: ArmOptions) -> Result<Self, ArmError> {
        crate::azure::tls::install_provider();
        let credential = super::credential::build(cfg, options.transport.clone())?;
        Ok(Self::new(cfg.arm_endpoint.clone(), credential, options))
    }

    // ------------------------------------------------------------ operations --

    pub async fn get_disk(&self, id: &ResourceId) -> Result<Disk, ArmError> {
        self.get("get disk", id, ResourceKind::Disk).await
    }

    pub async fn get_snapshot(&self, id: &ResourceId) -> Result<Snapshot, ArmError> {
        self.get("get snapshot", id, ResourceKind::Snapshot).await
    }

    /// Creates (or, if it exists, returns) the incremental snapshot `id` of `source`, and
    /// waits until it is provisioned. PUT by name is idempotent: retrying after a lost
    /// answer makes no second snapshot.
    pub async fn create_incremental_snapshot(
        &self,
        id: &ResourceId,
        source: &Disk,
        tags: &Tags,
    ) -> Result<Snapshot, ArmError> {
        const OP: &str = "create snapshot";
        expect_kind(OP, id, ResourceKind::Snapshot)?;
        let body = SnapshotPut {
            location: &source.location,
            tags,
            properties: SnapshotPutProperties {
                creation_data: CreationData {
                    create_option: "Copy".into(),
                    source_resource_id: Some(source.id.clone()),
                    ..Default::default()
                },
                incremental: true,
                // Never more exportable than the disk it is taken of.
                export: source.properties.export.restrictive(),
            },
        };
        self.put(OP, id, json(&body)).await
    }

    /// The snapshots in `group` made from `source`, optionally only those tagged `tag`,
    /// following `nextLink`.
    pub async fn list_snapshots(
        &self,
        group: &ResourceGroup,
        source: &ResourceId,
        tag: Option<(&str, &str)>,
    ) -> Result<Vec<Snapshot>, ArmError> {
        const OP: &str = "list snapshots";
        let what = format!(
            "/subscriptions/{}/resourceGroups/{}",
            group.subscription, group.name
        );
        let mut url = self.endpoint.clone();
        url.set_path(&format!("{what}/providers/Microsoft.Compute/snapshots"));
        url.query_pairs_mut()
            .append_pair("api-version", API_VERSION);
        let source = source.to_string();
        let mut out = Vec::new();
        let mut next = Some(url);
        while let Some(url) = next.take() {
            let body = self.call(OP, &what, Method::Get, url, None).await?;
            let page: Page<Snapshot> = parse(OP, &what, body)?;
            out.extend(page.value.into_iter().filter(|s| {
                s.properties
                    .creation_data
                    .source_resource_id
                    .as_deref()
                    .is_some_and(|src| src.eq_ignore_ascii_case(&source))
                    && tag.is_none_or(|(k, v)| s.tags.get(k).map(String::as_str) == Some(v))
            }));
            if let Some(link) = page.next_link.filter(|l| !l.is_empty()) {
                next = Some(self.same_origin(OP, &what, &link)?);
            }
        }
        Ok(out)
    }

    /// Deletes a snapshot; a missing one is not an error (ARM answers 204).
    pub async fn delete_snapshot(&self, id: &ResourceId) -> Result<(), ArmError> {
        self.delete("delete snapshot", id, ResourceKind::Snapshot)
            .await
    }

    /// Deletes a disk (a restore target replaced with `--force`).
    pub async fn delete_disk(&self, id: &ResourceId) -> Result<(), ArmError> {
        self.delete("delete disk", id, ResourceKind::Disk).await
    }

    /// DELETE of a resource of `kind`, followed to the end of its long-running operation.
    async fn delete(
        &self,
        op: &'static str,
        id: &ResourceId,
        kind: ResourceKind,
    ) -> Result<(), ArmError> {
        expect_kind(op, id, kind)?;
        self.lro(
            op,
            id,
            Method::Delete,
            self.url(id, ""),
            None,
            Outcome::Nothing,
        )
        .await?;
        Ok(())
    }

    /// Grants access to a snapshot (`Read`) or a disk (`Read`, or `Write` while it awaits
    /// an upload) for `duration`; returns the SAS URL. At most 5 snapshots of one disk can
    /// have access at once: end it with [`Self::end_get_access`] as soon as possible.
    pub async fn begin_get_access(
        &self,
        id: &ResourceId,
        access: Access,
        duration: Duration,
    ) -> Result<SasUrl, ArmError> {
        Ok(self
            .begin_get_access_with(id, access, duration, false)
            .await?
            .sas)
    }

    /// [`Self::begin_get_access`], with `guest_state` also asking for the Trusted Launch VM
    /// guest state blob's SAS (`getSecureVMGuestStateSAS`; answered as
    /// `securityDataAccessSAS`, [`parse_access`]).
    pub async fn begin_get_access_with(
        &self,
        id: &ResourceId,
        access: Access,
        duration: Duration,
        guest_state: bool,
    ) -> Result<AccessGrant, ArmError> {
        const OP: &str = "begin get access";
        let body = GrantAccess {
            access,
            duration_in_seconds: u32::try_from(duration.as_secs()).unwrap_or(u32::MAX),
            get_secure_vm_guest_state_sas: guest_state,
        };
        let out = self
            .lro(
                OP,
                id,
                Method::Post,
                self.url(id, "/beginGetAccess"),
                Some(json(&body)),
                Outcome::AtLocation,
            )
            .await?;
        parse_access(&id.to_string(), out)
    }

    /// Revokes the SAS of a snapshot or disk (also ends an upload).
    pub async fn end_get_access(&self, id: &ResourceId) -> Result<(), ArmError> {
        const OP: &str = "end get access";
        self.lro(
            OP,
            id,
            Method::Post,
            self.url(id, "/endGetAccess"),
            // No body, as Azure's own SDKs send it; an explicit empty one so that the POST
            // carries `Content-Length: 0`.
            Some(Bytes::new()),
            Outcome::Nothing,
        )
        .await?;
        Ok(())
    }

    /// Creates an empty disk awaiting an upload (`createOption: Upload`); a disk of that
    /// name that exists already answers 409 (refused, not replaced).
    pub async fn create_upload_disk(
        &self,
        id: &ResourceId,
        spec: &UploadDiskSpec,
    ) -> Result<Disk, ArmError> {
        self.create_upload_disk_with(id, spec, &DiskRecipe::default())
            .await
    }

    /// [`Self::create_upload_disk`] with the properties of `recipe` (OS type, Hyper-V
    /// generation, capabilities, encryption, tier), as a restore of an OS disk needs them.
    pub async fn create_upload_disk_with(
        &self,
        id: &ResourceId,
        spec: &UploadDiskSpec,
        recipe: &DiskRecipe,
    ) -> Result<Disk, ArmError> {
        const OP: &str = "create disk";
        expect_kind(OP, id, ResourceKind::Disk)?;
        let body = DiskPut {
            location: &spec.location,
            sku: spec.sku.clone().map(|name| Sku { name, tier: None }),
            zones: spec.zone.iter().cloned().collect(),
            tags: &spec.tags,
            properties: DiskPutProperties {
                creation_data: CreationData {
                    // A Trusted Launch disk is uploaded with its VM guest state
                    // (`Disk_Create_FromUploadPreparedSecure.json`): its write grant then
                    // answers a `securityDataAccessSAS` too.
                    create_option: if SecurityProfile::is_trusted_launch(
                        recipe.security_profile.as_ref(),
                    ) {
                        "UploadPreparedSecure".into()
                    } else {
                        "Upload".into()
                    },
                    upload_size_bytes: Some(spec.upload_size_bytes),
                    logical_sector_size: recipe.logical_sector_size,
                    ..Default::default()
                },
                recipe: recipe.clone(),
            },
        };
        self.put(OP, id, json(&body)).await
    }

    // --------------------------------------------------------------- plumbing --

    /// GET of a resource of `kind`.
    async fn get<T: DeserializeOwned>(
        &self,
        op: &'static str,
        id: &ResourceId,
        kind: ResourceKind,
    ) -> Result<T, ArmError> {
        expect_kind(op, id, kind)?;
        let body = self
            .call(op, &id.to_string(), Method::Get, self.url(id, ""), None)
            .await?;
        parse(op, &id.to_string(), body)
    }

    /// PUT of a resource, followed to the end of its long-running operation; the resource
    /// as provisioned.
    async fn put<T: DeserializeOwned>(
        &self,
        op: &'static str,
        id: &ResourceId,
        body: Bytes,
    ) -> Result<T, ArmError> {
        let out = self
            .lro(
                op,
                id,
                Method::Put,
                self.url(id, ""),
                Some(body),
                Outcome::Resource,
            )
            .await?;
        parse(op, &id.to_string(), out)
    }

    fn url(&self, id: &ResourceId, action: &str) -> Url {
        let mut url = self.endpoint.clone();
        url.set_path(&format!("{id}{action}"));
        url.query_pairs_mut()
            .append_pair("api-version", API_VERSION);
        url
    }

    /// A URL ARM gave us (polling, next page), accepted only on ARM's own origin: the
    /// bearer token is sent to it.
    fn same_origin(&self, op: &'static str, resource: &str, link: &str) -> Result<Url, ArmError> {
        let url = Url::parse(link)
            .map_err(|e| ArmError::invalid(op, resource, format!("'{link}' is not a URL: {e}")))?;
        if url.origin() != self.endpoint.origin() {
            return Err(ArmError::invalid(
                op,
                resource,
                format!(
                    "ARM pointed to {}, outside {}",
                    url.origin().ascii_serialization(),
                    self.endpoint.origin().ascii_serialization()
                ),
            ));
        }
        Ok(url)
    }

    /// One request with retries; any 2xx answer's body, or the typed error.
    async fn call(
        &self,
        op: &'static str,
        resource: &str,
        method: Method,
        url: Url,
        body: Option<Bytes>,
    ) -> Result<Bytes, ArmError> {
        let resp = self.send(op, resource, method, url, body).await?;
        Ok(resp.into_body().into())
    }

    /// Sends with retries of 429/5xx (after `Retry-After`) and of unanswered requests;
    /// returns a 2xx answer or the typed error of the last one.
    async fn send(
        &self,
        op: &'static str,
        resource: &str,
        method: Method,
        url: Url,
        body: Option<Bytes>,
    ) -> Result<RawResponse, ArmError> {
        let retry = &self.options.retry;
        let mut attempt = 0u32;
        loop {
            let mut request = Request::new(url.clone(), method);
            request.insert_header("accept", "application/json");
            if let Some(b) = &body {
                if !b.is_empty() {
                    request.insert_header("content-type", "application/json");
                }
                request.set_body(b.clone());
            }
            let options = PipelineSendOptions {
                skip_checks: true,
                ..Default::default()
            };
            let wait = match self
                .pipeline
                .send(&Context::new(), &mut request, Some(options))
                .await
            {
                Ok(resp) => {
                    let status = u16::from(resp.status());
                    if (200..300).contains(&status) {
                        return Ok(resp);
                    }
                    if !is_transient(status) || attempt >= retry.max_retries {
                        return Err(service_error(op, resource, status, resp.body().as_ref()));
                    }
                    tracing::debug!(
                        operation = op,
                        resource,
                        status,
                        attempt,
                        "ARM answered a transient error; retrying"
                    );
                    retry_after(resp.headers())
                }
                Err(e) => {
                    if matches!(e.kind(), ErrorKind::Credential) {
                        return Err(ArmError::Credential {
                            reason: redact(&e.to_string()),
                        });
                    }
                    if !matches!(e.kind(), ErrorKind::Io) || attempt >= retry.max_retries {
                        return Err(ArmError::transport(op, resource, &e.to_string()));
                    }
                    tracing::debug!(
                        operation = op,
                        resource,
                        attempt,
                        "no answer from ARM; retrying"
                    );
                    None
                }
            };
            let backoff = retry.base_delay.saturating_mul(1 << attempt.min(16));
            tokio::time::sleep(wait.unwrap_or(backoff).min(retry.max_delay)).await;
            attempt += 1;
        }
    }
}

fn expect_kind(op: &'static str, id: &ResourceId, kind: ResourceKind) -> Result<(), ArmError> {
    if id.kind == kind {
        Ok(())
    } else {
        Err(ArmError::WrongKind {
            operation: op,
            resource: id.to_string(),
        })
    }
}

/// `Retry-After` in seconds (ARM sends delta-seconds).
fn retry_after(headers: &Headers) -> Option<Duration> {
    headers
        .get_optional_str(&RETRY_AFTER)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

fn json<T: serde::Serialize>(body: &T) -> Bytes {
    // Serialising these plain structs of strings and numbers cannot fail.
    Bytes::from(serde_json::to_vec(body).unwrap_or_default())
}

fn parse<T: DeserializeOwned>(
    op: &'static str,
    resource: &str,
    body: Bytes,
) -> Result<T, ArmError> {
    serde_json::from_slice(&body)
        .map_err(|e| ArmError::invalid(op, resource, format!("bad JSON: {e}")))
}

/// The answer of `beginGetAccess` (its `properties.output`, or the `Location` result):
/// `accessSAS` and, when the guest state was asked for and the resource has one,
/// `securityDataAccessSAS`. Either not a URL: `InvalidResponse` (the value is a credential
/// and never quoted).
pub fn parse_access(resource: &str, body: Bytes) -> Result<AccessGrant, ArmError> {
    const OP: &str = "begin get access";
    let uri: AccessUri = parse(OP, resource, body)?;
    let url = |field: &str, v: &str| {
        Url::parse(v)
            .map(SasUrl::new)
            .map_err(|e| ArmError::invalid(OP, resource, format!("{field} is not a URL: {e}")))
    };
    Ok(AccessGrant {
        sas: url("accessSAS", &uri.access_sas)?,
        guest_state: uri
            .security_data_access_sas
            .as_deref()
            .map(|v| url("securityDataAccessSAS", v))
            .transpose()?,
    })
}

fn service_error(op: &'static str, resource: &str, status: u16, body: &[u8]) -> ArmError {
    let (code, message) = match serde_json::from_slice::<ErrorResponse>(body) {
        Ok(e) => (e.error.code, e.error.message),
        Err(_) => (
            String::new(),
            String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned(),
        ),
    };
    ArmError::Service {
        operation: op,
        resource: resource.to_string(),
        status,
        code: if code.is_empty() {
            "(no code)".into()
        } else {
            code
        },
        message: redact(&message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_answer_is_parsed_with_or_without_the_guest_state() {
        let both = parse_access(
            "d",
            Bytes::from_static(
                br#"{"accessSAS":"https://md-x.blob.storage.azure.net/c/abcd?sr=b&sig=S1","securityDataAccessSAS":"https://md-x.blob.storage.azure.net/c/0f_vmgs?sr=b&sig=S2"}"#,
            ),
        )
        .unwrap();
        let g = both.guest_state.clone().expect("securityDataAccessSAS");
        assert!(g.expose().path().ends_with("_vmgs"));
        assert!(
            !format!("{both:?}").contains("S2"),
            "the signature is redacted"
        );
        let plain = parse_access(
            "d",
            Bytes::from_static(
                br#"{"accessSAS":"https://md-x.blob.storage.azure.net/c/abcd?sig=S"}"#,
            ),
        )
        .unwrap();
        assert_eq!(plain.guest_state, None);
        let bad = parse_access(
            "d",
            Bytes::from_static(br#"{"accessSAS":"https://h/c/abcd?sig=S","securityDataAccessSAS":"not a url sig=S2"}"#),
        )
        .unwrap_err();
        assert_eq!(bad.kind(), crate::arm::ArmErrorKind::InvalidResponse);
        assert!(bad.to_string().contains("securityDataAccessSAS"), "{bad}");
        assert!(!bad.to_string().contains("S2"), "{bad}");
    }
}
