//! The one HTTP client of the storage requests, with explicit timeouts.
//!
//! A request that stalls (a connection that accepts but never answers, a half-open TCP
//! connection after a network change) must end, so the retry policy can send it again (every
//! request the policy retries is idempotent; the others are reconciled by
//! `cycle::find_or_make`). Only the connection set-up and the silence between two reads are
//! bounded, never the whole request: a 4 MiB read or write through a slow but live link must
//! not be cut.

use azure_core::http::Transport;
use std::sync::Arc;
use std::time::Duration;

/// Longest wait for a TCP (and TLS) connection to be set up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest silence while waiting for an answer or between two reads of its body. Azure's
/// own server-side timeout for most blob operations is 30 s, after which it answers 500
/// OperationTimedOut; a connection silent that long is not coming back.
pub const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A transport over one reqwest client (one connection pool) for every account: redirects
/// are not followed (Azure storage does not redirect) and bodies are not decompressed (ranged
/// reads must arrive as stored).
pub fn transport() -> Transport {
    crate::azure::tls::install_provider();
    let client = reqwest::ClientBuilder::new()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_IDLE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build();
    match client {
        Ok(c) => Transport::new(Arc::new(c)),
        // Building fails only when the TLS back end cannot start; the SDK's own client then
        // reports it on the first request, naming the cause.
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the HTTP client with timeouts; using the SDK's default");
            Transport::new(azure_core::http::new_http_client(None))
        }
    }
}
