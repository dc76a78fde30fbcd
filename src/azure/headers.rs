//! The headers of requests and answers: preconditions (`If-Match`), fencing
//! (`x-ms-if-sequence-number-eq`), ETags, `x-ms-content-crc64`, the `Content-Range` a ranged
//! read must carry, a copy's status, a listing's metadata. Small pure translations between
//! snapback's types and the wire, apart from the operations that send them.

use super::error_map::map_err;
use crate::model::pages::ByteRange;
use crate::storage::{BlobRef, BlobResult, CopyStatus, Fence, IfBlob, Metadata, Resource};

/// `x-ms-content-crc64`: the CRC-64/NVME of the body, 8 bytes little-endian.
pub(super) fn crc64_le(data: &[u8]) -> Vec<u8> {
    crate::model::pages::crc64(data).to_le_bytes().to_vec()
}

/// Checks that the answer to a ranged read says it holds exactly `range`
/// (`Content-Range: bytes START-END/SIZE`, as Azure answers every ranged Get Blob): bytes of
/// another range, even of the right length, would be written to the wrong place of the backup.
pub(super) fn check_served_range(
    headers: &azure_core::http::headers::Headers,
    range: ByteRange,
) -> Result<(), String> {
    let served = headers.get_optional_str(&azure_core::http::headers::HeaderName::from_static(
        "content-range",
    ));
    let parsed = served.and_then(|v| {
        let (span, _size) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
        let (first, last) = span.split_once('-')?;
        Some((
            first.trim().parse::<u64>().ok()?,
            last.trim().parse::<u64>().ok()?,
        ))
    });
    if range.is_empty() || parsed == Some((range.start, range.end - 1)) {
        return Ok(());
    }
    Err(format!(
        "the answer holds {} instead of bytes {}-{}",
        served.map_or_else(
            || "no Content-Range".to_string(),
            |v| format!("Content-Range {v:?}")
        ),
        range.start,
        range.end - 1
    ))
}

/// `If-Match` / `If-None-Match` of a precondition.
pub(super) fn conditions(
    c: &IfBlob,
) -> (
    Option<azure_core::http::Etag>,
    Option<azure_core::http::Etag>,
) {
    match c {
        IfBlob::Any => (None, None),
        IfBlob::Absent => (None, Some("*".into())),
        IfBlob::Is(etag) => (Some(etag.as_str().into()), None),
    }
}

/// `x-ms-if-sequence-number-eq` of a fencing token (the service takes a signed 64-bit
/// number; tokens stay below 2^63).
pub(super) fn fence_header(fence: Option<Fence>) -> Option<i64> {
    fence.map(|Fence(t)| i64::try_from(t).unwrap_or(i64::MAX))
}

pub(super) fn etag_string(etag: Option<azure_core::http::Etag>) -> String {
    etag.map(|e| e.to_string()).unwrap_or_default()
}

/// The blob's new ETag, from the answer to a write of it (`what`, for the error).
pub(super) fn written_etag(
    etag: azure_core::Result<Option<azure_core::http::Etag>>,
    blob: &BlobRef,
    what: impl Into<String>,
) -> BlobResult<String> {
    etag.map(etag_string)
        .map_err(|e| map_err(Resource::blob(blob), what, e))
}

pub(super) fn parse_copy_status(
    status: Option<azure_storage_blob::models::CopyStatus>,
    progress: Option<String>,
    description: Option<String>,
) -> Option<CopyStatus> {
    use azure_storage_blob::models::CopyStatus as S;
    let desc = description.unwrap_or_default();
    Some(match status? {
        S::Pending => {
            let (copied, total) = progress
                .as_deref()
                .and_then(|p| p.split_once('/'))
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .unwrap_or((0, 0));
            CopyStatus::Pending { copied, total }
        }
        S::Success => CopyStatus::Success,
        S::Aborted => CopyStatus::Aborted(desc),
        S::Failed => CopyStatus::Failed(desc),
    })
}

pub(super) fn snapshot_label(blob: &BlobRef, snapshot: Option<&str>) -> String {
    match snapshot {
        Some(s) => format!("{blob} snapshot {s}"),
        None => blob.to_string(),
    }
}

/// A listed blob's metadata with its keys in lower case, as snapback's tags are compared
/// (the service keeps the case a key was written in).
pub(super) fn listed_metadata(m: Option<azure_storage_blob::models::BlobMetadata>) -> Metadata {
    m.and_then(|m| m.values)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_lowercase(), v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_must_hold_the_range_asked_for() {
        let with = |v: &str| {
            let mut h = azure_core::http::headers::Headers::new();
            h.insert("content-range", v.to_string());
            h
        };
        let r = ByteRange::new(8192, 12288);
        assert_eq!(
            check_served_range(&with("bytes 8192-12287/4194304"), r),
            Ok(())
        );
        let wrong = check_served_range(&with("bytes 0-4095/4194304"), r).unwrap_err();
        assert!(
            wrong.contains("\"bytes 0-4095/4194304\"") && wrong.contains("bytes 8192-12287"),
            "{wrong}"
        );
        for bad in ["bytes 8192-12288/4194304", "bytes */4194304", "8192-12287"] {
            assert!(check_served_range(&with(bad), r).is_err(), "{bad}");
        }
        let none = azure_core::http::headers::Headers::new();
        assert!(check_served_range(&none, r)
            .unwrap_err()
            .contains("no Content-Range"));
    }

    #[test]
    fn crc64_is_nvme() {
        let le = crc64_le(b"123456789");
        assert_eq!(
            u64::from_le_bytes(le.try_into().unwrap()),
            0xae8b14860a799888
        );
    }
}
