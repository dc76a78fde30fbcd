//! SAS URLs are credentials: [`SasUrl`] keeps one out of logs, errors and `Debug` output;
//! [`redact`] (the crate's one redaction function) removes secrets from any text put into an
//! error.

pub use crate::model::secrets::redact;
use std::fmt;
use url::Url;

/// A URL that carries a SAS (`sig=`), e.g. the answer of `beginGetAccess`.
///
/// `Debug` and `Display` show it with `sig=REDACTED`; the usable URL is only reachable
/// through [`SasUrl::expose`], named so that every use is deliberate.
///
/// An export of an Entra-only disk (`dataAccessAuthMode = AzureActiveDirectory`) needs a
/// bearer token on top of the SAS: [`SasUrl::with_bearer`] marks it, and the storage layer
/// (`azure::sas_blob`) then signs every request through it.
#[derive(Clone, PartialEq, Eq)]
pub struct SasUrl(Url, bool);

impl SasUrl {
    pub fn new(url: Url) -> Self {
        SasUrl(url, false)
    }

    /// The same URL, whose requests must also carry a bearer token for the managed-disk
    /// audience ([`super::export::DISK_DATA_SCOPE`]).
    pub fn with_bearer(mut self) -> Self {
        self.1 = true;
        self
    }

    /// Whether requests through it need a bearer token.
    pub fn needs_bearer(&self) -> bool {
        self.1
    }

    /// The URL with its signature, to send to the storage service (never to log).
    pub fn expose(&self) -> &Url {
        &self.0
    }

    /// The blob snapshot the SAS is for (`snapshot=`), if any. Part of the authorisation:
    /// a request that drops it is refused.
    pub fn snapshot(&self) -> Option<String> {
        self.0
            .query_pairs()
            .find(|(k, _)| k == "snapshot")
            .map(|(_, v)| v.into_owned())
    }

    /// `scheme://host/path` with no query: names the blob in messages.
    pub fn without_query(&self) -> String {
        let mut u = self.0.clone();
        u.set_query(None);
        u.to_string()
    }
}

impl fmt::Display for SasUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(self.0.as_str()))
    }
}

impl fmt::Debug for SasUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SasUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_signature() {
        let url = Url::parse(
            "https://md-abc.blob.storage.azure.net/x/abcd?snapshot=2026-01-01T00%3A00%3A00.0000000Z&sv=2020-12-06&sr=bs&sp=r&sig=c2VjcmV0%2Bc2lnbmF0dXJl%3D",
        )
        .unwrap();
        let sas = SasUrl::new(url);
        for shown in [
            format!("{sas}"),
            format!("{sas:?}"),
            format!("{:?}", Some(&sas)),
        ] {
            assert!(!shown.contains("c2VjcmV0"), "{shown}");
            assert!(shown.contains("sig=REDACTED"), "{shown}");
            assert!(shown.contains("sr=bs"), "the rest stays readable: {shown}");
        }
        assert_eq!(
            sas.snapshot().as_deref(),
            Some("2026-01-01T00:00:00.0000000Z")
        );
        assert!(sas.expose().as_str().contains("sig=c2VjcmV0"));
        assert_eq!(
            sas.without_query(),
            "https://md-abc.blob.storage.azure.net/x/abcd"
        );
    }
}
