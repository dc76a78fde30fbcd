//! Shared Key authorisation and service SAS minting.
//!
//! The Azure SDK for Rust 1.x signs only with Entra ID tokens; it has no Shared Key support.
//! This module adds the smallest piece on top of it: the string-to-sign as **pure functions**
//! (each linked to the section of the spec it implements, and tested against the spec's
//! examples), and a pipeline [`Policy`] that re-signs every try with a fresh `x-ms-date`.
//!
//! Spec: <https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key>
//! SAS:  <https://learn.microsoft.com/rest/api/storageservices/create-service-sas>

use azure_core::credentials::Secret;
use azure_core::http::{
    policies::{Policy, PolicyResult},
    Context, Request, Url,
};
use base64::{engine::general_purpose::STANDARD as BASE64, Engine};
use std::collections::BTreeMap;
use std::sync::Arc;

/// An account key (base64, as the portal shows it), checked to decode. Its `Debug` never
/// prints the key.
#[derive(Clone)]
pub struct AccountKey(Secret);

impl AccountKey {
    /// Checks the key decodes as base64. Errors never echo the key.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let text = text.trim();
        BASE64
            .decode(text)
            .map_err(|_| "the key is not valid base64".to_string())?;
        Ok(AccountKey(Secret::new(text.to_string())))
    }

    /// base64(HMAC-SHA256(key, text)), through azure_core's HMAC so we carry no second copy.
    fn sign(&self, string_to_sign: &str) -> String {
        // The key was checked to be base64 in `from_base64`, the only way hmac_sha256 fails.
        azure_core::hmac::hmac_sha256(string_to_sign, &self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccountKey(<redacted>)")
    }
}

/// The request parts that Shared Key signs, independent of any HTTP library.
#[derive(Debug, Default)]
pub struct SignedParts<'a> {
    pub method: &'a str,
    pub url: Option<&'a Url>,
    /// All request headers, names lower-case.
    pub headers: BTreeMap<String, String>,
    /// Length of the body in bytes (0 signs as the empty string).
    pub content_length: u64,
}

/// "Constructing the canonicalized headers string": every `x-ms-*` header, lower-case name,
/// sorted, `name:value` with the value trimmed and inner whitespace runs folded.
pub fn canonicalized_headers(headers: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (name, value) in headers.iter().filter(|(n, _)| n.starts_with("x-ms-")) {
        out.push_str(name);
        out.push(':');
        out.push_str(&value.split_whitespace().collect::<Vec<_>>().join(" "));
        out.push('\n');
    }
    out
}

/// "Constructing the canonicalized resource string" (2009-09-19 and later):
/// `/account/path` then one line `\nname:v1,v2` per query parameter, names lower-case and
/// sorted, values decoded and sorted.
///
/// For path-style endpoints (Azurite, `http://host:port/account/container/blob`) the request
/// path already starts with the account, so the resource reads `/account/account/container/…`,
/// exactly as the service computes it.
pub fn canonicalized_resource(account: &str, url: &Url) -> String {
    let mut out = format!("/{account}{}", url.path());
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in url.query_pairs() {
        params
            .entry(name.to_lowercase())
            .or_default()
            .push(value.into_owned());
    }
    for (name, mut values) in params {
        values.sort();
        out.push('\n');
        out.push_str(&name);
        out.push(':');
        out.push_str(&values.join(","));
    }
    out
}

/// "Blob, Queue, and File services (Shared Key authorization)": the full string-to-sign.
pub fn string_to_sign(account: &str, parts: &SignedParts<'_>) -> String {
    let h = |name: &str| parts.headers.get(name).map(String::as_str).unwrap_or("");
    let content_length = if parts.content_length == 0 {
        String::new()
    } else {
        parts.content_length.to_string()
    };
    let resource = parts
        .url
        .map(|u| canonicalized_resource(account, u))
        .unwrap_or_default();
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}{}",
        parts.method,
        h("content-encoding"),
        h("content-language"),
        content_length,
        h("content-md5"),
        h("content-type"),
        "", // Date: x-ms-date is always sent instead
        h("if-modified-since"),
        h("if-match"),
        h("if-none-match"),
        h("if-unmodified-since"),
        h("range"),
        canonicalized_headers(&parts.headers),
        resource,
    )
}

/// The `Authorization` header value for a request.
pub fn authorization(account: &str, key: &AccountKey, parts: &SignedParts<'_>) -> String {
    format!(
        "SharedKey {account}:{}",
        key.sign(&string_to_sign(account, parts))
    )
}

/// A read-only service SAS for one blob snapshot (`sr=bs`) or, without `snapshot`, one blob
/// (`sr=b`): `sp=r`, valid from `start` (if given) until `expiry` (ISO 8601, e.g.
/// `2026-11-25T12:00:00Z`), `spr=https` when `https_only`. Used as the source of a
/// cross-account copy, which the destination account cannot authorise otherwise.
/// Returns the query string without a leading `?`.
/// Spec: <https://learn.microsoft.com/rest/api/storageservices/create-service-sas>
// One parameter per field the spec signs, in its order: a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn blob_read_sas(
    account: &str,
    key: &AccountKey,
    container: &str,
    blob: &str,
    snapshot: Option<&str>,
    start: Option<&str>,
    expiry: &str,
    https_only: bool,
) -> String {
    const VERSION: &str = "2020-12-06";
    let resource = if snapshot.is_some() { "bs" } else { "b" };
    let protocol = if https_only { "https" } else { "" };
    // Version 2020-12-06 layout: sp, st, se, resource, si, sip, spr, sv, sr, snapshot time,
    // encryption scope, rscc, rscd, rsce, rscl, rsct.
    let to_sign = [
        "r",
        start.unwrap_or(""),
        expiry,
        &format!("/blob/{account}/{container}/{blob}"),
        "",
        "",
        protocol,
        VERSION,
        resource,
        snapshot.unwrap_or(""),
        "",
        "",
        "",
        "",
        "",
        "",
    ]
    .join("\n");
    let sig = key.sign(&to_sign);
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("sv", VERSION)
        .append_pair("sr", resource)
        .append_pair("sp", "r");
    if let Some(st) = start {
        query.append_pair("st", st);
    }
    query.append_pair("se", expiry);
    if https_only {
        query.append_pair("spr", "https");
    }
    query.append_pair("sig", &sig).finish()
}

/// A SAS token from the config (`sas_token_env` / `sas_token_file`): sent only to its own
/// account, never forwarded to another. Its `Debug` never prints it.
#[derive(Clone)]
pub struct SasToken(Secret);

impl SasToken {
    /// The token as given, without surrounding blanks or a leading `?`.
    pub fn new(text: &str) -> Self {
        SasToken(Secret::new(text.trim().trim_start_matches('?').to_string()))
    }
}

impl SasToken {
    /// The token's query string, to send to its own account (never to log).
    pub fn expose(&self) -> &str {
        self.0.secret()
    }
}

impl std::fmt::Debug for SasToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SasToken(<redacted>)")
    }
}

/// Pipeline policy that signs each try. It must run after the retry policy (it is added to
/// `per_try_policies`) so that every retry carries a fresh `x-ms-date`.
#[derive(Debug)]
pub struct SharedKeyPolicy {
    account: String,
    key: AccountKey,
}

impl SharedKeyPolicy {
    pub fn new(account: &str, key: AccountKey) -> Arc<Self> {
        Arc::new(SharedKeyPolicy {
            account: account.to_string(),
            key,
        })
    }
}

#[async_trait::async_trait]
impl Policy for SharedKeyPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let now = time::OffsetDateTime::now_utc();
        request.insert_header("x-ms-date", azure_core::time::to_rfc7231(&now));
        let headers = request
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_lowercase(), v.as_str().to_string()))
            .collect();
        let method = request.method().to_string();
        let auth = {
            let parts = SignedParts {
                method: &method,
                url: Some(request.url()),
                headers,
                content_length: request.body().len().unwrap_or(0),
            };
            authorization(&self.account, &self.key, &parts)
        };
        request.insert_header("authorization", auth);
        next[0].send(ctx, request, &next[1..]).await
    }
}

/// Pipeline policy that appends a SAS token's query parameters to every request.
pub struct SasPolicy {
    pairs: Vec<(String, String)>,
}

impl SasPolicy {
    pub fn new(token: SasToken) -> Arc<Self> {
        Arc::new(SasPolicy {
            pairs: url::form_urlencoded::parse(token.expose().as_bytes())
                .into_owned()
                .collect(),
        })
    }
}

impl std::fmt::Debug for SasPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SasPolicy(<redacted>)")
    }
}

#[async_trait::async_trait]
impl Policy for SasPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let url = request.url_mut();
        if !url.query_pairs().any(|(k, _)| k == "sig") {
            let mut q = url.query_pairs_mut();
            for (k, v) in &self.pairs {
                q.append_pair(k, v);
            }
        }
        next[0].send(ctx, request, &next[1..]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Examples from "Constructing the canonicalized resource string" in the spec.
    #[test]
    fn canonicalized_resource_matches_spec_examples() {
        let url = Url::parse(
            "https://myaccount.blob.core.windows.net/mycontainer?restype=container&comp=metadata",
        )
        .unwrap();
        assert_eq!(
            canonicalized_resource("myaccount", &url),
            "/myaccount/mycontainer\ncomp:metadata\nrestype:container"
        );
        let url = Url::parse(
            "https://myaccount.blob.core.windows.net/mycontainer?restype=container&comp=list&include=snapshots&include=metadata&include=uncommittedblobs",
        )
        .unwrap();
        assert_eq!(
            canonicalized_resource("myaccount", &url),
            "/myaccount/mycontainer\ncomp:list\ninclude:metadata,snapshots,uncommittedblobs\nrestype:container"
        );
    }

    #[test]
    fn path_style_resource_repeats_the_account_and_decodes_query_values() {
        let url = Url::parse(
            "http://127.0.0.1:10000/premium/vhds/disk.vhd?comp=pagelist&prevsnapshot=2026-11-25T06%3A00%3A00.1234567Z",
        )
        .unwrap();
        assert_eq!(
            canonicalized_resource("premium", &url),
            "/premium/premium/vhds/disk.vhd\ncomp:pagelist\nprevsnapshot:2026-11-25T06:00:00.1234567Z"
        );
    }

    #[test]
    fn canonicalized_headers_sorts_and_folds() {
        let mut h = BTreeMap::new();
        h.insert("x-ms-version".into(), "2026-04-06".into());
        h.insert("x-ms-date".into(), "Sun, 11 Oct 2009 21:49:13 GMT".into());
        h.insert("x-ms-meta-a".into(), "  two   words ".into());
        h.insert("content-type".into(), "text/plain".into());
        assert_eq!(
            canonicalized_headers(&h),
            "x-ms-date:Sun, 11 Oct 2009 21:49:13 GMT\nx-ms-meta-a:two words\nx-ms-version:2026-04-06\n"
        );
    }

    // The spec's worked string-to-sign layout: verb, 11 standard headers (Date empty because
    // x-ms-date is used), canonical headers, canonical resource. Zero length signs as empty.
    #[test]
    fn string_to_sign_layout() {
        let url =
            Url::parse("https://myaccount.blob.core.windows.net/mycontainer/myblob?comp=page")
                .unwrap();
        let mut headers = BTreeMap::new();
        headers.insert("x-ms-date".into(), "Fri, 26 Jun 2015 23:39:12 GMT".into());
        headers.insert("x-ms-version".into(), "2015-02-21".into());
        headers.insert("x-ms-range".into(), "bytes=0-511".into());
        headers.insert("content-md5".into(), "abc==".into());
        let parts = SignedParts {
            method: "PUT",
            url: Some(&url),
            headers,
            content_length: 512,
        };
        assert_eq!(
            string_to_sign("myaccount", &parts),
            "PUT\n\n\n512\nabc==\n\n\n\n\n\n\n\nx-ms-date:Fri, 26 Jun 2015 23:39:12 GMT\nx-ms-range:bytes=0-511\nx-ms-version:2015-02-21\n/myaccount/mycontainer/myblob\ncomp:page"
        );
        let empty = SignedParts {
            method: "GET",
            url: Some(&url),
            headers: BTreeMap::new(),
            content_length: 0,
        };
        assert!(string_to_sign("myaccount", &empty).starts_with("GET\n\n\n\n"));
    }

    // HMAC-SHA256 known answer (RFC 4231 test case 2) through the signing path, so a change of
    // crypto backend cannot silently break signatures.
    #[test]
    fn signature_is_base64_hmac_sha256() {
        let key = AccountKey::from_base64("SmVmZQ==").unwrap();
        let sig = key.sign("what do ya want for nothing?");
        assert_eq!(
            BASE64.decode(sig).unwrap(),
            hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }

    #[test]
    fn key_debug_is_redacted_and_bad_key_is_named_without_echo() {
        let key = AccountKey::from_base64("c2VjcmV0").unwrap();
        assert_eq!(format!("{key:?}"), "AccountKey(<redacted>)");
        let err = AccountKey::from_base64("not base64 !!").unwrap_err();
        assert!(!err.contains("!!"));
    }

    #[test]
    fn sas_for_a_snapshot_signs_the_snapshot_time() {
        let key = AccountKey::from_base64("aw==").unwrap();
        let a = blob_read_sas(
            "acct",
            &key,
            "c",
            "b",
            Some("2026-01-01T00:00:00.0000000Z"),
            None,
            "2026-01-02T00:00:00Z",
            false,
        );
        let b = blob_read_sas(
            "acct",
            &key,
            "c",
            "b",
            None,
            None,
            "2026-01-02T00:00:00Z",
            false,
        );
        assert!(a.contains("sr=bs") && b.contains("sr=b&"));
        assert_ne!(a.split("sig=").nth(1), b.split("sig=").nth(1));
    }

    #[test]
    fn sas_is_read_only_and_bounded_in_time_and_protocol() {
        let key = AccountKey::from_base64("aw==").unwrap();
        let sas = blob_read_sas(
            "acct",
            &key,
            "c",
            "b",
            Some("2026-01-01T00:00:00.0000000Z"),
            Some("2026-01-01T11:55:00Z"),
            "2026-01-01T12:15:00Z",
            true,
        );
        let pairs: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(sas.as_bytes())
                .into_owned()
                .collect();
        assert_eq!(pairs["sp"], "r");
        assert_eq!(pairs["sr"], "bs");
        assert_eq!(pairs["st"], "2026-01-01T11:55:00Z");
        assert_eq!(pairs["se"], "2026-01-01T12:15:00Z");
        assert_eq!(pairs["spr"], "https");
        let plain = blob_read_sas(
            "acct",
            &key,
            "c",
            "b",
            Some("2026-01-01T00:00:00.0000000Z"),
            Some("2026-01-01T11:55:00Z"),
            "2026-01-01T12:15:00Z",
            false,
        );
        assert!(!plain.contains("spr="));
        assert_ne!(sas.split("sig=").nth(1), plain.split("sig=").nth(1));
    }

    #[test]
    fn configured_sas_tokens_never_show_in_debug() {
        let token = SasToken::new("?sv=2025&sig=c2VjcmV0LXNpZw%3D%3D");
        let shown = format!("{token:?} {:?}", SasPolicy::new(token.clone()));
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
