//! Long-running operations: a PUT, DELETE or `beginGetAccess` that ARM answers 201/202 with
//! `Azure-AsyncOperation` or `Location` is polled here to its end, honouring `Retry-After`
//! and the poll timeout, and the result its caller needs is read (or taken from the last
//! poll). Apart from the requests in `client` because it is one protocol of its own, shared
//! by every request that starts an operation.

use super::{json, parse, retry_after, ArmClient};
use crate::arm::error::ArmError;
use crate::arm::id::ResourceId;
use crate::arm::models::AsyncOperation;
use crate::model::secrets::redact;
use azure_core::http::headers::HeaderName;
use azure_core::http::{Method, Url};
use bytes::Bytes;
use std::time::{Duration, Instant};

const ASYNC_OPERATION: HeaderName = HeaderName::from_static("azure-asyncoperation");
const LOCATION: HeaderName = HeaderName::from_static("location");

impl ArmClient {
    /// A request that may start a long-running operation (201/202 with
    /// `Azure-AsyncOperation` or `Location`): polls it to its end, honouring `Retry-After`,
    /// and returns the body of the result `want`s (empty for [`Outcome::Nothing`]).
    pub(super) async fn lro(
        &self,
        op: &'static str,
        id: &ResourceId,
        method: Method,
        url: Url,
        body: Option<Bytes>,
        want: Outcome,
    ) -> Result<Bytes, ArmError> {
        let resource = id.to_string();
        let first = self.send(op, &resource, method, url.clone(), body).await?;
        let status = u16::from(first.status());
        let headers = first.headers().clone();
        let async_op = headers
            .get_optional_str(&ASYNC_OPERATION)
            .map(str::to_string);
        let location = headers.get_optional_str(&LOCATION).map(str::to_string);
        if !matches!(status, 201 | 202) || (async_op.is_none() && location.is_none()) {
            return Ok(first.into_body().into());
        }
        let deadline = Instant::now() + self.options.poll.timeout;
        let mut wait = retry_after(&headers);
        let Some(link) = async_op else {
            // Only `Location`: it answers 202 until the operation ends, then the result.
            let poll_url = match &location {
                Some(link) => self.same_origin(op, &resource, link)?,
                None => return Ok(Bytes::new()),
            };
            loop {
                self.pause(op, &resource, deadline, wait).await?;
                let resp = self
                    .send(op, &resource, Method::Get, poll_url.clone(), None)
                    .await?;
                if u16::from(resp.status()) != 202 {
                    return match want {
                        Outcome::Resource => self.call(op, &resource, Method::Get, url, None).await,
                        Outcome::AtLocation => Ok(resp.into_body().into()),
                        Outcome::Nothing => Ok(Bytes::new()),
                    };
                }
                wait = retry_after(resp.headers());
            }
        };
        let poll_url = self.same_origin(op, &resource, &link)?;
        let output = loop {
            self.pause(op, &resource, deadline, wait).await?;
            let resp = self
                .send(op, &resource, Method::Get, poll_url.clone(), None)
                .await?;
            wait = retry_after(resp.headers());
            let state: AsyncOperation = parse(op, &resource, resp.into_body().into())?;
            match state.status.as_str() {
                "Succeeded" => break state.properties.and_then(|p| p.output),
                "Failed" | "Canceled" => {
                    let (code, message) = state
                        .error
                        .map(|e| (e.code, redact(&e.message)))
                        .unwrap_or_default();
                    return Err(ArmError::OperationFailed {
                        operation: op,
                        resource,
                        status: state.status,
                        code,
                        message,
                    });
                }
                _ => {}
            }
        };
        // The result the last poll carried saves the request that would read it.
        if let (Outcome::Resource | Outcome::AtLocation, Some(out)) = (want, output) {
            if !out.is_null() {
                return Ok(json(&out));
            }
        }
        match (want, location) {
            (Outcome::Resource, _) => self.call(op, &resource, Method::Get, url, None).await,
            (Outcome::AtLocation, Some(link)) => {
                let url = self.same_origin(op, &resource, &link)?;
                self.call(op, &resource, Method::Get, url, None).await
            }
            (Outcome::AtLocation, None) => Err(ArmError::invalid(
                op,
                &resource,
                "the operation succeeded but gave no Location to read its result from",
            )),
            (Outcome::Nothing, _) => Ok(Bytes::new()),
        }
    }

    async fn pause(
        &self,
        op: &'static str,
        resource: &str,
        deadline: Instant,
        wait: Option<Duration>,
    ) -> Result<(), ArmError> {
        let wait = wait.unwrap_or(self.options.poll.default_interval);
        if Instant::now() + wait > deadline {
            return Err(ArmError::Timeout {
                operation: op,
                resource: resource.to_string(),
                seconds: self.options.poll.timeout.as_secs(),
            });
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

/// What a long-running operation's caller needs once it succeeded; each is one request
/// (or none), so a caller that needs nothing spends no request on it — none either when
/// the `Succeeded` poll carried the result (`properties.output`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The resource (PUT): a GET of the request URL.
    Resource,
    /// The operation's result at `Location` (`beginGetAccess`: the SAS; ARM's
    /// final-state-via for it).
    AtLocation,
    /// Nothing (DELETE, `endGetAccess`).
    Nothing,
}
