//! Get Page Ranges, including the diff form (`prevsnapshot`), which the Azure SDK lacks.
//!
//! The SDK's `PageList` model keeps page and clear ranges in two vectors and fails on an
//! answer where `<PageRange>` and `<ClearRange>` interleave, which is exactly what a diff
//! returns. So we build the request ourselves, send it through the same pipeline (retries,
//! signing, logging) and parse the body here, keeping document order.
//!
//! Spec: <https://learn.microsoft.com/rest/api/storageservices/get-page-ranges>

use crate::model::pages::{ByteRange, PageItem};
use crate::storage::{PageList, PageListQuery};
use azure_core::http::Url;
use quick_xml::events::Event;
use quick_xml::Reader;

/// Adds the Get Page Ranges query parameters to a blob URL.
pub fn request_url(blob_url: &Url, query: &PageListQuery<'_>) -> Url {
    let mut url = blob_url.clone();
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("comp", "pagelist");
        if let Some(s) = query.snapshot {
            q.append_pair("snapshot", s);
        }
        if let Some(p) = query.prev_snapshot {
            q.append_pair("prevsnapshot", p);
        }
        if let Some(m) = query.marker {
            q.append_pair("marker", m);
        }
        if let Some(n) = query.max_results {
            q.append_pair("maxresults", &n.to_string());
        }
    }
    url
}

/// Parses a `<PageList>` body, keeping `<PageRange>` and `<ClearRange>` in document order.
pub fn parse(body: &[u8]) -> Result<PageList, String> {
    let mut reader = Reader::from_reader(body);
    reader.config_mut().trim_text(true);
    let mut list = PageList::default();
    let mut buf = Vec::new();
    // Which element we are inside: the current range kind and field, or NextMarker.
    let mut kind: Option<bool> = None; // Some(true) = PageRange, Some(false) = ClearRange
    let mut field: Option<&'static str> = None;
    let (mut start, mut end): (Option<u64>, Option<u64>) = (None, None);
    let mut in_marker = false;
    loop {
        let event = reader.read_event_into(&mut buf).map_err(|e| {
            format!(
                "malformed page list XML at byte {}: {e}",
                reader.buffer_position()
            )
        })?;
        match event {
            Event::Start(e) => match e.local_name().as_ref() {
                b"PageRange" => kind = Some(true),
                b"ClearRange" => kind = Some(false),
                b"Start" if kind.is_some() => field = Some("Start"),
                b"End" if kind.is_some() => field = Some("End"),
                b"NextMarker" => in_marker = true,
                _ => {}
            },
            Event::Text(t) => {
                let text = t
                    .decode()
                    .map_err(|e| format!("bad text in page list: {e}"))?;
                if let Some(f) = field {
                    let v: u64 = text
                        .trim()
                        .parse()
                        .map_err(|_| format!("page list {f} is not a number: {text:?}"))?;
                    if f == "Start" {
                        start = Some(v);
                    } else {
                        end = Some(v);
                    }
                } else if in_marker && !text.trim().is_empty() {
                    list.next_marker = Some(text.trim().to_string());
                }
            }
            Event::End(e) => match e.local_name().as_ref() {
                b"Start" | b"End" => field = None,
                b"NextMarker" => in_marker = false,
                b"PageRange" | b"ClearRange" => {
                    let (Some(s), Some(en)) = (start.take(), end.take()) else {
                        return Err("page list range without Start or End".into());
                    };
                    if en < s {
                        return Err(format!("page list range ends before it starts: {s}-{en}"));
                    }
                    // A hostile or broken answer may claim the last byte of the address space:
                    // no page blob reaches it (8 TiB at most), and `End + 1` would overflow.
                    if en == u64::MAX {
                        return Err(format!("page list range {s}-{en} ends past any page blob"));
                    }
                    let r = ByteRange::from_inclusive(s, en);
                    list.items.push(if kind == Some(true) {
                        PageItem::Changed(r)
                    } else {
                        PageItem::Cleared(r)
                    });
                    kind = None;
                }
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: u64, e: u64) -> ByteRange {
        ByteRange::new(s, e)
    }

    // Shape of a real diff answer (x-ms-version 2020-10-02+): interleaved kinds, a marker.
    const DIFF_PAGE_1: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<PageList>
  <PageRange><Start>0</Start><End>511</End></PageRange>
  <ClearRange><Start>512</Start><End>1023</End></ClearRange>
  <PageRange><Start>1024</Start><End>4095</End></PageRange>
  <PageRange><Start>4096</Start><End>8191</End></PageRange>
  <ClearRange><Start>65536</Start><End>131071</End></ClearRange>
  <NextMarker>2!104!MDAwMDM2IWJsb2IvcGFnZS8xMzEwNzIh</NextMarker>
</PageList>"#;

    #[test]
    fn interleaved_ranges_keep_document_order() {
        let list = parse(DIFF_PAGE_1.as_bytes()).unwrap();
        assert_eq!(
            list.items,
            vec![
                PageItem::Changed(r(0, 512)),
                PageItem::Cleared(r(512, 1024)),
                PageItem::Changed(r(1024, 4096)),
                PageItem::Changed(r(4096, 8192)),
                PageItem::Cleared(r(65536, 131072)),
            ]
        );
        assert_eq!(
            list.next_marker.as_deref(),
            Some("2!104!MDAwMDM2IWJsb2IvcGFnZS8xMzEwNzIh")
        );
    }

    #[test]
    fn empty_marker_and_empty_list() {
        let list = parse(b"<?xml version=\"1.0\"?><PageList><NextMarker /></PageList>").unwrap();
        assert!(list.items.is_empty());
        assert_eq!(list.next_marker, None);
        let list = parse(b"<PageList><NextMarker></NextMarker></PageList>").unwrap();
        assert_eq!(list.next_marker, None);
    }

    #[test]
    fn malformed_answers_are_named() {
        assert!(
            parse(b"<PageList><PageRange><Start>x</Start><End>1</End></PageRange></PageList>")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(
            parse(b"<PageList><PageRange><Start>0</Start></PageRange></PageList>")
                .unwrap_err()
                .contains("without Start or End")
        );
        assert!(
            parse(b"<PageList><PageRange><Start>9</Start><End>1</End></PageRange></PageList>")
                .unwrap_err()
                .contains("ends before")
        );
    }

    #[test]
    fn url_carries_diff_parameters() {
        let base = Url::parse("http://127.0.0.1:10000/premium/vhds/d.vhd").unwrap();
        let q = PageListQuery {
            snapshot: Some("2026-11-25T06:00:01.0000000Z"),
            prev_snapshot: Some("2026-11-25T06:00:00.0000000Z"),
            marker: Some("m1"),
            max_results: Some(100),
            range: None,
        };
        let url = request_url(&base, &q);
        let pairs: Vec<_> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs[0], ("comp".into(), "pagelist".into()));
        assert!(pairs.contains(&("prevsnapshot".into(), "2026-11-25T06:00:00.0000000Z".into())));
        assert!(pairs.contains(&("marker".into(), "m1".into())));
        assert!(pairs.contains(&("maxresults".into(), "100".into())));
    }
}
