//! Secrets: read only from files nobody else can read, and kept out of every text snapback
//! writes.
//!
//! [`read_file`] refuses a key, SAS or client-secret file that group or others may read: on a
//! shared host such a file has already leaked, and saying so is the only safe answer.
//!
//! A SAS signature (`sig=`), a Shared Key signature (`SharedKey account:SIG`) and a bearer
//! token (`Bearer TOKEN`) are credentials; anything that may quote a request URL or header
//! (an SDK or transport error, a message the service echoed back, an SDK log line) goes
//! through [`redact`] before it reaches an error, a log line, the state database, `status`,
//! metrics or a hook. The rest of a URL stays readable (`se=`/`st=`/`sp=` tell an operator
//! why a SAS was refused); only the secret values become `REDACTED`.

use std::fmt;
use std::path::Path;
use url::Url;

/// Why a secret file was not read; the message names the file and, for a loose mode, the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileError {
    /// Group or others may read or write it (`mode` is the permission bits).
    Exposed { mode: u32 },
    /// It could not be read (missing, a directory, no permission...).
    Unreadable(String),
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileError::Exposed { mode } => write!(
                f,
                "is open to group or others (mode {mode:04o}); a secret file must be \
                 readable and writable only by its owner: chmod 600 it"
            ),
            FileError::Unreadable(e) => write!(f, "cannot be read: {e}"),
        }
    }
}

/// The contents of the secret file `path`, refused before reading when its mode lets group or
/// others read (or write) it. Callers prefix the error with the path and the config field.
pub fn read_file(path: &Path) -> Result<String, FileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| FileError::Unreadable(e.to_string()))?
            .permissions()
            .mode()
            & 0o7777;
        if mode & 0o077 != 0 {
            return Err(FileError::Exposed { mode });
        }
    }
    std::fs::read_to_string(path).map_err(|e| FileError::Unreadable(e.to_string()))
}

/// What a secret value is replaced with.
pub const REDACTED: &str = "REDACTED";

/// `text` with every secret value replaced by [`REDACTED`]: the value of each `sig=`
/// parameter (any case, also percent-encoded as `sig%3D`), and what follows `SharedKey ` or
/// `Bearer ` (an `Authorization` value, as spelled on the wire) up to the next delimiter.
pub fn redact(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while pos < text.len() {
        // `sig` in any case; the Authorization schemes as the SDK and the service spell them
        // (lower-case "bearer" is a word in our own messages).
        let next = [
            ("sig=", lower.as_str()),
            ("sig%3d", lower.as_str()),
            ("SharedKey ", text),
            ("Bearer ", text),
        ]
        .into_iter()
        .filter_map(|(pat, hay)| hay[pos..].find(pat).map(|i| (pos + i, pat)))
        .min();
        let Some((at, pat)) = next else { break };
        // A parameter named exactly `sig` (not `xsig=`), or the scheme word of an
        // Authorization value: preceded by a non-word character or by an encoded `&` / `?`.
        let before = &lower[..at];
        let is_secret = before.ends_with("%26")
            || before.ends_with("%3f")
            || before
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let value_start = at + pat.len();
        out.push_str(&text[pos..value_start]);
        if is_secret {
            let value_len = text[value_start..]
                .find(|c: char| {
                    c == '&' || c == '"' || c == '\'' || c == '<' || c == ')' || c.is_whitespace()
                })
                .unwrap_or(text.len() - value_start);
            if value_len > 0 {
                out.push_str(REDACTED);
            }
            pos = value_start + value_len;
        } else {
            pos = value_start;
        }
    }
    out.push_str(&text[pos..]);
    out
}

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
    /// audience ([`crate::azure::sas_blob::DISK_DATA_SCOPE`]).
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
mod sas_url_tests {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn files_others_can_read_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "c2VjcmV0").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o604, false),
            (0o620, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            match read_file(&path) {
                Ok(text) => assert!(ok && text == "c2VjcmV0", "{mode:o}"),
                Err(e) => {
                    assert!(!ok, "{mode:o}: {e}");
                    assert_eq!(e, FileError::Exposed { mode });
                    assert!(e.to_string().contains("chmod 600"), "{e}");
                }
            }
        }
        assert!(matches!(
            read_file(&dir.path().join("missing")),
            Err(FileError::Unreadable(_))
        ));
    }

    #[test]
    fn redacts_every_signature_in_free_text() {
        let text = "copy of https://a/b?sv=1&SIG=aaa%2Bb&x=1 failed; see \"https://c/d?sig=zzz\" \
                    and https%3A%2F%2Fe%2Ff%3Fsv%3D1%26sig%3Dyyy ; signature=kept; sig=top \
                    (for url (http://h/p?se=2099&sig=qqq))";
        let r = redact(text);
        for secret in ["aaa%2Bb", "zzz", "yyy", "top", "qqq"] {
            assert!(!r.contains(secret), "{secret} in {r}");
        }
        assert!(r.contains("signature=kept"), "{r}");
        assert!(r.contains("&x=1"), "{r}");
        assert!(r.contains("se=2099&sig=REDACTED))"), "{r}");
    }

    #[test]
    fn redacts_authorization_values() {
        let r = redact(
            "authorization: SharedKey premium:c2lnbmF0dXJl\nAuthorization=Bearer eyJ0eXAi.x.y",
        );
        assert!(
            !r.contains("c2lnbmF0dXJl") && !r.contains("eyJ0eXAi"),
            "{r}"
        );
        assert!(r.contains("SharedKey REDACTED"), "{r}");
        assert!(r.contains("Bearer REDACTED"), "{r}");
        // Words that only look alike are left alone.
        let plain = "shared_key_env SharedKeyPolicy: a bearer token is sent to it";
        assert_eq!(redact(plain), plain);
    }
}
