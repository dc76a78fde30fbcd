//! The budget as a policy on azure_core's pipeline. It sits in `per_try_policies` before
//! the signing policy: every try (retries included, as Azure counts them) waits for the
//! budget, is signed only then (a long wait must not age `x-ms-date`), and reports its
//! answer. The SDK's retry policy stays outside and still retries the throttled try.

use super::budget::Budget;
use super::learn::Refusal;
use super::{Blame, Limits, Outcome};
use crate::throttle::options::ThrottleConfig;
use azure_core::http::headers::HeaderName;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Method, Request, StatusCode};
use std::sync::Arc;
use std::time::Duration;

const ERROR_CODE: HeaderName = HeaderName::from_static("x-ms-error-code");
const RANGE: HeaderName = HeaderName::from_static("range");
const MS_RANGE: HeaderName = HeaderName::from_static("x-ms-range");
const X_MS_RETRY_AFTER_MS: HeaderName = HeaderName::from_static("x-ms-retry-after-ms");
const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
const RETRY_AFTER: HeaderName = HeaderName::from_static("retry-after");

/// One per storage account: every client of the account shares its [`Budget`].
#[derive(Debug)]
pub struct ThrottlePolicy {
    budget: Arc<Budget>,
}

impl ThrottlePolicy {
    pub fn new(config: &ThrottleConfig) -> Arc<ThrottlePolicy> {
        Arc::new(ThrottlePolicy {
            budget: Budget::new(Limits::from(config)),
        })
    }
}

#[async_trait::async_trait]
impl Policy for ThrottlePolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        // The URL path names the blob on host- and path-style endpoints alike; snapshots
        // (`?snapshot=`) share their blob's budget, as they share its partition.
        let blob = request.url().path().to_string();
        let bytes = payload_bytes(request);
        let permit = self.budget.acquire(&blob, bytes).await;
        let answer = next[0].send(ctx, request, &next[1..]).await;
        let (outcome, hint) = match &answer {
            Ok(response) => {
                let headers = response.headers();
                let code = headers.get_optional_str(&ERROR_CODE);
                let outcome = classify(response.status(), code);
                let hint = (outcome == Outcome::Throttled)
                    .then(|| retry_hint(headers))
                    .flatten();
                (outcome, hint)
            }
            Err(_) => (Outcome::NoAnswer, None),
        };
        match permit.finish_with(outcome, hint) {
            Some(Blame::Blob(Refusal::Decreased(rate))) => tracing::debug!(
                blob,
                rate,
                "blob busy: its requests/s held below the rate refused"
            ),
            Some(Blame::Account(Refusal::Decreased(rate))) => tracing::debug!(
                blob,
                rate,
                "storage account busy: its requests/s held below the rate refused"
            ),
            _ if outcome == Outcome::Throttled => {
                tracing::debug!(blob, "storage account busy: concurrency decreased")
            }
            _ => {}
        }
        answer
    }
}

/// Throttling, as the Blob service reports it: 503 (ServerBusy) or 500 OperationTimedOut.
fn classify(status: StatusCode, error_code: Option<&str>) -> Outcome {
    use crate::storage::error::ServiceCode;
    match (status, error_code.and_then(ServiceCode::parse)) {
        (StatusCode::ServiceUnavailable, _) => Outcome::Throttled,
        (StatusCode::InternalServerError, Some(ServiceCode::OperationTimedOut)) => {
            Outcome::Throttled
        }
        _ => Outcome::Done,
    }
}

/// The wait a throttled answer asks for, from the same headers as the SDK's retry policy
/// reads (`x-ms-retry-after-ms`, `retry-after-ms`, `Retry-After` in seconds; an HTTP date
/// is left to the retry policy). [`super::learn`] caps it.
fn retry_hint(headers: &azure_core::http::headers::Headers) -> Option<Duration> {
    let read = |h: &HeaderName| headers.get_optional_str(h)?.trim().parse::<u64>().ok();
    read(&X_MS_RETRY_AFTER_MS)
        .or_else(|| read(&RETRY_AFTER_MS))
        .map(Duration::from_millis)
        .or_else(|| read(&RETRY_AFTER).map(Duration::from_secs))
}

/// Bytes the request moves: its body (Put Page) or the range it reads (Get Blob). A GET
/// with `comp=` (Get Page Ranges, List Blobs) returns a listing, not its range's bytes.
fn payload_bytes(request: &Request) -> u64 {
    let url = request.url();
    if request.method() == Method::Get && !url.query_pairs().any(|(k, _)| k == "comp") {
        let headers = request.headers();
        let range = headers
            .get_optional_str(&MS_RANGE)
            .or_else(|| headers.get_optional_str(&RANGE));
        if let Some(range) = range {
            return range_len(range).unwrap_or(0);
        }
    }
    request.body().len().unwrap_or(0)
}

/// Length of `bytes=START-END` (inclusive end).
fn range_len(range: &str) -> Option<u64> {
    let (a, b) = range.strip_prefix("bytes=")?.split_once('-')?;
    let (a, b) = (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?);
    b.checked_sub(a).map(|n| n + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::http::Url;
    use bytes::Bytes;

    #[test]
    fn throttle_answers_are_recognised_by_status_and_code() {
        let cases = [
            (
                StatusCode::ServiceUnavailable,
                Some("ServerBusy"),
                Outcome::Throttled,
            ),
            (StatusCode::ServiceUnavailable, None, Outcome::Throttled),
            (
                StatusCode::InternalServerError,
                Some("OperationTimedOut"),
                Outcome::Throttled,
            ),
            (
                StatusCode::InternalServerError,
                Some("InternalError"),
                Outcome::Done,
            ),
            (StatusCode::Ok, None, Outcome::Done),
            (StatusCode::NotFound, Some("BlobNotFound"), Outcome::Done),
        ];
        for (status, code, want) in cases {
            assert_eq!(classify(status, code), want, "{status:?} {code:?}");
        }
    }

    #[test]
    fn payload_is_the_body_or_the_blob_range_read() {
        let url = |q: &str| Url::parse(&format!("http://h/a/c/b{q}")).unwrap();
        let mut read = Request::new(url(""), Method::Get);
        read.insert_header("range", "bytes=0-1048575");
        assert_eq!(payload_bytes(&read), 1 << 20);
        let mut list = Request::new(url("?comp=pagelist"), Method::Get);
        list.insert_header("x-ms-range", "bytes=0-68719476735");
        assert_eq!(payload_bytes(&list), 0);
        let mut put = Request::new(url("?comp=page"), Method::Put);
        put.set_body(Bytes::from(vec![1u8; 8192]));
        assert_eq!(payload_bytes(&put), 8192);
    }

    #[test]
    fn range_lengths() {
        assert_eq!(range_len("bytes=0-511"), Some(512));
        assert_eq!(range_len("bytes=4194304-8388607"), Some(4 * 1024 * 1024));
        assert_eq!(range_len("bytes=10-5"), None);
        assert_eq!(range_len("0-511"), None);
    }
}
