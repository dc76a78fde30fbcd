//! A deadline on every try of a write.
//!
//! snapback's HTTP client has no whole-request timeout (a 4 MiB read over a slow but live link
//! must finish; see docs/azure.md, "Timeouts"). A write is another matter: one sent under a
//! disk's lease must be answered, or given up, well before the lease can expire, so that the
//! owner's client-side fence (`ownership::LeaseTiming`) holds: no write of this process is
//! still waiting for its answer when another owner may start. This policy, the last of every
//! try's (after the throttle budget's wait and the signing, right before the transport), ends
//! a PUT or DELETE not answered within the limit as a connection error, which the retry policy
//! treats like any other (the write is idempotent, or found before it is made again). A write
//! that reaches the service late anyway is refused there by the fencing token.

use azure_core::error::{Error, ErrorKind};
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Method, Request};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug)]
pub struct WriteDeadline(pub Duration);

#[async_trait::async_trait]
impl Policy for WriteDeadline {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        if !matches!(request.method(), Method::Put | Method::Delete) {
            return next[0].send(ctx, request, &next[1..]).await;
        }
        match tokio::time::timeout(self.0, next[0].send(ctx, request, &next[1..])).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::with_message(
                ErrorKind::Io,
                format!("no answer to the write within {:?}", self.0),
            )),
        }
    }
}
