//! SAS URLs are credentials: [`SasUrl`] keeps one out of logs, errors and `Debug` output, and
//! [`redact`] removes SAS signatures from any text put into an error.

use std::fmt;
use url::Url;

const REDACTED: &str = "REDACTED";

/// A URL that carries a SAS (`sig=`), e.g. the answer of `beginGetAccess`.
///
/// `Debug` and `Display` show it with `sig=REDACTED`; the usable URL is only reachable
/// through [`SasUrl::expose`], named so that every use is deliberate.
#[derive(Clone, PartialEq, Eq)]
pub struct SasUrl(Url);

impl SasUrl {
    pub fn new(url: Url) -> Self {
        SasUrl(url)
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

/// `text` with the value of every `sig=` parameter (any case, also percent-encoded as
/// `sig%3D`) replaced by `REDACTED`. For URLs and for messages a service echoed back,
/// which may quote a URL.
pub fn redact(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while pos < text.len() {
        let next = ["sig=", "sig%3d"]
            .iter()
            .filter_map(|pat| lower[pos..].find(pat).map(|i| (pos + i, pat.len())))
            .min();
        let Some((at, len)) = next else { break };
        // A parameter named exactly `sig` (not `xsig=`): preceded by a non-word character
        // or by an encoded `&` / `?`.
        let before = &lower[..at];
        let is_param = before.ends_with("%26")
            || before.ends_with("%3f")
            || before
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let value_start = at + len;
        out.push_str(&text[pos..value_start]);
        if is_param {
            let value_len = text[value_start..]
                .find(|c: char| c == '&' || c == '"' || c == '\'' || c == '<' || c.is_whitespace())
                .unwrap_or(text.len() - value_start);
            out.push_str(REDACTED);
            pos = value_start + value_len;
        } else {
            pos = value_start;
        }
    }
    out.push_str(&text[pos..]);
    out
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

    #[test]
    fn redacts_every_signature_in_free_text() {
        let text = "copy of https://a/b?sv=1&SIG=aaa%2Bb&x=1 failed; see \"https://c/d?sig=zzz\" \
                    and https%3A%2F%2Fe%2Ff%3Fsv%3D1%26sig%3Dyyy ; signature=kept; sig=top";
        let r = redact(text);
        for secret in ["aaa%2Bb", "zzz", "yyy", "top"] {
            assert!(!r.contains(secret), "{secret} in {r}");
        }
        assert!(r.contains("signature=kept"), "{r}");
        assert!(r.contains("&x=1"), "{r}");
    }
}
