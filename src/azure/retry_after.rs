//! A cap on the wait a throttled answer asks for.
//!
//! azure_core's retry policy waits the longer of its own backoff and the answer's
//! `x-ms-retry-after-ms` / `retry-after-ms` / `Retry-After` (on 429 and 503), with no upper
//! bound: one answer saying `Retry-After: 86400` would park a cycle for a day. Azure Storage
//! itself asks for seconds at most, so this policy, one of every try's (each answer passes it
//! on its way back to the retry policy), rewrites such a header to at most
//! [`MAX_RETRY_DELAY`], the longest wait the retry policy takes on its own.

use azure_core::http::headers::{HeaderName, Headers};
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{AsyncRawResponse, Context, Request};
use std::sync::Arc;
use std::time::Duration;

/// The longest wait between two tries of one request, whatever the answer asks for.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(15);

const X_MS_RETRY_AFTER_MS: HeaderName = HeaderName::from_static("x-ms-retry-after-ms");
const RETRY_AFTER_MS: HeaderName = HeaderName::from_static("retry-after-ms");
const RETRY_AFTER: HeaderName = HeaderName::from_static("retry-after");

#[derive(Debug)]
pub struct RetryAfterCap;

#[async_trait::async_trait]
impl Policy for RetryAfterCap {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let response = next[0].send(ctx, request, &next[1..]).await?;
        if !asks_to_wait(response.headers()) {
            return Ok(response);
        }
        let (status, mut headers, body) = response.deconstruct();
        cap(&mut headers, chrono::Utc::now());
        Ok(AsyncRawResponse::new(status, headers, Box::pin(body)))
    }
}

fn asks_to_wait(headers: &Headers) -> bool {
    [X_MS_RETRY_AFTER_MS, RETRY_AFTER_MS, RETRY_AFTER]
        .iter()
        .any(|h| headers.get_optional_str(h).is_some())
}

/// Replaces the retry headers with one `retry-after-ms` of the wait they ask for (read in the
/// retry policy's order of precedence), at most [`MAX_RETRY_DELAY`]; a value that does not
/// parse is dropped, leaving the policy's own backoff.
fn cap(headers: &mut Headers, now: chrono::DateTime<chrono::Utc>) {
    let millis = |h: &HeaderName| {
        headers
            .get_optional_str(h)
            .map(|v| v.trim().parse::<u64>().ok().map(Duration::from_millis))
    };
    let asked = millis(&X_MS_RETRY_AFTER_MS)
        .or_else(|| millis(&RETRY_AFTER_MS))
        .or_else(|| {
            headers.get_optional_str(&RETRY_AFTER).map(|v| {
                let v = v.trim();
                v.parse::<u64>().ok().map(Duration::from_secs).or_else(|| {
                    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
                    Some(
                        (at.with_timezone(&chrono::Utc) - now)
                            .to_std()
                            .unwrap_or_default(),
                    )
                })
            })
        })
        .flatten();
    for h in [X_MS_RETRY_AFTER_MS, RETRY_AFTER_MS, RETRY_AFTER] {
        headers.remove(h);
    }
    if let Some(wait) = asked {
        let wait = wait.min(MAX_RETRY_DELAY);
        headers.insert(RETRY_AFTER_MS, wait.as_millis().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capped(pairs: &[(HeaderName, &str)]) -> Option<String> {
        let mut headers = Headers::new();
        for (k, v) in pairs {
            headers.insert(k.clone(), v.to_string());
        }
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        cap(&mut headers, now);
        assert_eq!(headers.get_optional_str(&RETRY_AFTER), None);
        assert_eq!(headers.get_optional_str(&X_MS_RETRY_AFTER_MS), None);
        headers.get_optional_string(&RETRY_AFTER_MS)
    }

    #[test]
    fn long_waits_are_capped_and_short_ones_kept() {
        let s = |v: &'static str| capped(&[(RETRY_AFTER, v)]);
        assert_eq!(s("86400").as_deref(), Some("15000"));
        assert_eq!(s("3").as_deref(), Some("3000"));
        assert_eq!(s("Mon, 30 Nov 2026 12:00:05 GMT").as_deref(), Some("5000"));
        assert_eq!(s("Tue, 01 Dec 2026 12:00:00 GMT").as_deref(), Some("15000"));
        assert_eq!(s("Mon, 30 Nov 2026 11:00:00 GMT").as_deref(), Some("0"));
        assert_eq!(s("soon"), None, "unreadable: the policy's own backoff");
        assert_eq!(
            capped(&[(X_MS_RETRY_AFTER_MS, "250"), (RETRY_AFTER, "9999")]).as_deref(),
            Some("250"),
            "the SDK's precedence: x-ms-retry-after-ms first"
        );
        assert_eq!(
            capped(&[(RETRY_AFTER_MS, "99999999")]).as_deref(),
            Some("15000")
        );
    }
}
