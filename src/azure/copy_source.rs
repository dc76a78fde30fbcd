//! The URL another account's service reads a server-side copy's source from: a read-only SAS
//! snapback mints with the account key for one snapshot and a short time. Apart because it
//! is the one place a credential is handed to the service for a third party to use.

use super::auth::Auth;
use super::{shared_key, AzureBlobs};
use crate::storage::{BlobError, BlobRef, BlobResult, ErrorKind as Kind, Resource};
use azure_core::http::Url;

/// How long a SAS that snapback mints for one Put Page From URL stays valid: the service
/// reads the source while it handles that request, so a leaked URL exposes one snapshot,
/// read-only, for minutes. A Copy Blob's source SAS lives as long as the copy may take
/// ([`crate::storage::copy_source_lifetime`]).
pub(super) const MINTED_SAS_LIFETIME: time::Duration = time::Duration::minutes(15);

/// How far back a minted SAS's start (`st=`) is set: the storage service's clock may be
/// behind ours.
const CLOCK_SKEW_ALLOWANCE: time::Duration = time::Duration::minutes(5);

impl AzureBlobs {
    /// A URL the *other* account's service can read `blob` (or a snapshot) from, for a
    /// server-side copy: a SAS snapback mints with the account key, read-only, for this one
    /// snapshot (or blob), valid from [`CLOCK_SKEW_ALLOWANCE`] ago for `lifetime`,
    /// https-only when the account's endpoint is https.
    ///
    /// An account configured with a SAS token gets `NoReadAccess` when `reader` (the blob the
    /// copy writes) is in another account: forwarding that token would hand a long-lived
    /// credential, with whatever permissions it has, to another account's service and to
    /// every log line that quotes the copy source. The caller copies through snapback instead
    /// (a seed by client copy; `copy_mode = "auto"` falls back to client copy). Within its own
    /// account (a restore's promote step) the token goes nowhere it does not already go.
    pub(super) fn readable_source_url(
        &self,
        blob: &BlobRef,
        snapshot: Option<&str>,
        reader: &BlobRef,
        lifetime: time::Duration,
    ) -> BlobResult<Url> {
        let account = self.account(blob)?;
        let mut url = Self::blob_url(account, &blob.container, Some(&blob.blob));
        if let Some(s) = snapshot {
            url.query_pairs_mut().append_pair("snapshot", s);
        }
        let key = match &account.auth {
            Auth::SharedKey(key) => key,
            Auth::Sas(token) if reader.account == blob.account => {
                let query = match url.query() {
                    Some(q) => format!("{q}&{}", token.expose()),
                    None => token.expose().to_string(),
                };
                url.set_query(Some(&query));
                return Ok(url);
            }
            Auth::Sas(_) => {
                return Err(BlobError::local(
                    Kind::NoReadAccess,
                    Resource::of(blob, snapshot),
                    format!(
                        "account '{}' authenticates with a SAS token, which snapback never \
                         forwards to another account as a copy source",
                        account.key
                    ),
                ))
            }
            Auth::Token(_) => {
                return Err(BlobError::local(
                    Kind::NoReadAccess,
                    Resource::of(blob, snapshot),
                    format!(
                        "account '{}' uses a managed identity, which cannot mint the SAS a \
                         cross-account Copy Blob needs",
                        account.key
                    ),
                ))
            }
        };
        let now = time::OffsetDateTime::now_utc();
        let stamp = |t: time::OffsetDateTime| {
            t.replace_nanosecond(0)
                .unwrap_or(t)
                .format(&time::format_description::well_known::Rfc3339)
                .map_err(|e| BlobError::local(Kind::Unusable, Resource::blob(blob), e.to_string()))
        };
        let sas = shared_key::blob_read_sas(
            &account.name,
            key,
            &blob.container,
            &blob.blob,
            snapshot,
            Some(&stamp(now - CLOCK_SKEW_ALLOWANCE)?),
            &stamp(now + lifetime)?,
            account.root.scheme() == "https",
        );
        let query = match url.query() {
            Some(q) => format!("{q}&{sas}"),
            None => sas,
        };
        url.set_query(Some(&query));
        Ok(url)
    }
}
