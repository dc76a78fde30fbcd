//! Self-test of the fault-injecting proxy (tests/common/faultproxy.rs), observed by a plain
//! HTTP/1.1 client over a socket, with a recording upstream standing in for the service: each
//! operation is recognised, each fault kind happens on the wire as documented (and reaches
//! the service or not, as documented), rules fire on the requests they name, and the rate-limit
//! mode throttles and counts. If any of this fails, the scenario tests prove nothing.

mod common;

use common::faultproxy::{
    copy_reported_failed, copy_reported_pending_without_progress, page_list_out_of_order, Fault,
    FaultKind, FaultProxy, Op, RateLimit, Rule,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BODY_LEN: usize = 1000;
const INTERLEAVED: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?><PageList>\
<PageRange><Start>0</Start><End>511</End></PageRange>\
<ClearRange><Start>512</Start><End>1023</End></ClearRange>\
<PageRange><Start>1024</Start><End>1535</End></PageRange>\
<ClearRange><Start>2048</Start><End>2559</End></ClearRange>\
<NextMarker /></PageList>";

/// Stands in for the service: records each request line (`METHOD /path?query`) and the body
/// length, answers `201` with 1000 bytes (a page list for `comp=pagelist`, copy headers on
/// HEAD). One request per connection, like the proxy sends them.
struct Upstream {
    port: u16,
    got: Arc<Mutex<Vec<(String, usize)>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag and ends.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl Upstream {
    fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, stopped) = (Arc::clone(&got), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let log = Arc::clone(&log);
                std::thread::spawn(move || answer_one(stream, &log));
            }
        });
        Upstream { port, got, stop }
    }

    fn received(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(l, _)| l.clone())
            .collect()
    }
}

fn answer_one(stream: TcpStream, log: &Mutex<Vec<(String, usize)>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut length = 0;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let request_line = line
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    log.lock().unwrap().push((request_line.clone(), length));
    let mut out = stream;
    let (head, payload) = if request_line.contains("comp=pagelist") {
        ("200 OK", INTERLEAVED.as_bytes().to_vec())
    } else if request_line.starts_with("HEAD") {
        ("200 OK", Vec::new())
    } else {
        ("201 Created", vec![b'x'; BODY_LEN])
    };
    let _ = write!(
        out,
        "HTTP/1.1 {head}\r\nContent-Length: {}\r\nx-ms-copy-status: success\r\nConnection: close\r\n\r\n",
        if request_line.starts_with("HEAD") { BODY_LEN } else { payload.len() }
    );
    let _ = out.write_all(&payload);
}

/// What the plain client got: a status, headers and as much body as arrived, or the I/O
/// error that ended the exchange (connection closed without an answer, timeout).
#[derive(Debug)]
struct Got {
    status: u16,
    headers: String,
    body: Vec<u8>,
    content_length: usize,
}

fn send(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Got> {
    send_with_timeout(port, method, target, headers, body, Duration::from_secs(10))
}

fn send_with_timeout(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Got> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(timeout))?;
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    // A proxy that drops the connection mid-body makes this write fail: that is an answer.
    s.write_all(body)?;
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    if raw.is_empty() {
        read?;
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed without an answer",
        ));
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let headers = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_length = headers
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    Ok(Got {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
        content_length,
    })
}

const BLOB: &str = "/premium/vhds/d1.vhd";

/// Method, query, headers, body, and the operation the proxy must recognise.
type Case = (
    &'static str,
    String,
    Vec<(&'static str, &'static str)>,
    Vec<u8>,
    Op,
);

fn put(port: u16, query: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<Got> {
    send(port, "PUT", &format!("{BLOB}{query}"), headers, body)
}

#[test]
fn every_operation_is_recognised_and_forwarded_unchanged() {
    let up = Upstream::start();
    let proxy = FaultProxy::start(up.port);
    let p = proxy.port();
    let src = (
        "x-ms-copy-source",
        "http://127.0.0.1:1/premium/vhds/s.vhd?snapshot=x",
    );
    let cases: Vec<Case> = vec![
        (
            "PUT",
            "?comp=snapshot".into(),
            vec![],
            vec![],
            Op::SnapshotBlob,
        ),
        (
            "PUT",
            "?comp=page".into(),
            vec![("x-ms-page-write", "update")],
            vec![7; 512],
            Op::PutPage,
        ),
        (
            "PUT",
            "?comp=page".into(),
            vec![("x-ms-page-write", "clear")],
            vec![],
            Op::ClearPage,
        ),
        (
            "PUT",
            "?comp=page".into(),
            vec![("x-ms-page-write", "update"), src],
            vec![],
            Op::PutPageFromUrl,
        ),
        ("PUT", "".into(), vec![src], vec![], Op::CopyBlob),
        (
            "PUT",
            "?comp=copy&copyid=1".into(),
            vec![],
            vec![],
            Op::AbortCopy,
        ),
        (
            "PUT",
            "".into(),
            vec![("x-ms-blob-type", "PageBlob")],
            vec![],
            Op::PutBlob,
        ),
        (
            "GET",
            "?comp=pagelist&prevsnapshot=a".into(),
            vec![],
            vec![],
            Op::GetPageRanges,
        ),
        (
            "GET",
            "".into(),
            vec![("x-ms-range", "bytes=0-511")],
            vec![],
            Op::GetBlob,
        ),
        (
            "HEAD",
            "?snapshot=a".into(),
            vec![],
            vec![],
            Op::GetBlobProperties,
        ),
        (
            "DELETE",
            "?snapshot=a".into(),
            vec![],
            vec![],
            Op::DeleteBlob,
        ),
        (
            "PUT",
            "?comp=lease".into(),
            vec![("x-ms-lease-action", "acquire")],
            vec![],
            Op::Lease,
        ),
        (
            "PUT",
            "?comp=properties".into(),
            vec![],
            vec![],
            Op::SetBlobProperties,
        ),
        (
            "PUT",
            "?comp=metadata".into(),
            vec![],
            vec![],
            Op::SetBlobMetadata,
        ),
    ];
    for (method, query, headers, body, _) in &cases {
        let got = send(p, method, &format!("{BLOB}{query}"), headers, body).unwrap();
        assert!(
            got.status == 200 || got.status == 201,
            "{method} {query}: {got:?}"
        );
        if *method != "HEAD" {
            assert_eq!(
                got.body.len(),
                got.content_length,
                "{method} {query}: whole body"
            );
        }
    }
    send(p, "PUT", "/backup/backups?restype=container", &[], &[]).unwrap();
    send(
        p,
        "GET",
        "/backup/backups?restype=container&comp=list",
        &[],
        &[],
    )
    .unwrap();
    let seen = proxy.seen();
    let ops: Vec<Op> = seen.iter().map(|s| s.op).collect();
    let mut want: Vec<Op> = cases.iter().map(|c| c.4).collect();
    want.extend([Op::CreateContainer, Op::ListBlobs]);
    assert_eq!(ops, want);
    assert_eq!(
        (seen[0].account.as_str(), seen[0].blob.as_str()),
        ("premium", "vhds/d1.vhd")
    );
    assert_eq!(
        (seen[14].account.as_str(), seen[14].blob.as_str()),
        ("backup", "")
    );
    // Forwarded unchanged: every request line and the body reached the service.
    let received = up.received();
    assert_eq!(received.len(), cases.len() + 2);
    assert_eq!(received[1], format!("PUT {BLOB}?comp=page"));
    assert_eq!(
        up.got.lock().unwrap()[1].1,
        512,
        "Put Page body forwarded whole"
    );
}

#[test]
fn status_faults_hit_the_nth_matching_requests_of_the_named_operation_and_blob() {
    let up = Upstream::start();
    let proxy = FaultProxy::start(up.port);
    let p = proxy.port();
    let busy = proxy.add(
        Rule::new(Fault::server_busy())
            .op(Op::SnapshotBlob)
            .nth(1, 2),
    );
    let timeout = proxy.add(
        Rule::new(Fault::operation_timeout())
            .op(Op::PutPage)
            .account("premium")
            .blob("vhds/other.vhd"),
    );
    let statuses: Vec<u16> = (0..3)
        .map(|_| put(p, "?comp=snapshot", &[], &[]).unwrap().status)
        .collect();
    assert_eq!(
        statuses,
        [503, 503, 201],
        "a burst of two ServerBusy, then through"
    );
    let first = put(p, "?comp=snapshot", &[], &[]).unwrap();
    assert!(!first.headers.contains("ServerBusy"));
    let page = [("x-ms-page-write", "update")];
    assert_eq!(
        put(p, "?comp=page", &page, &[1; 512]).unwrap().status,
        201,
        "another blob"
    );
    let other = send(
        p,
        "PUT",
        "/premium/vhds/other.vhd?comp=page",
        &page,
        &[1; 512],
    )
    .unwrap();
    assert_eq!(other.status, 500);
    assert!(
        other.headers.contains("x-ms-error-code: OperationTimedOut"),
        "{}",
        other.headers
    );
    assert!(String::from_utf8_lossy(&other.body).contains("<Code>OperationTimedOut</Code>"));
    assert_eq!(proxy.stats(busy).matched, 4);
    assert_eq!(proxy.stats(busy).injected, 2);
    assert_eq!(proxy.stats(timeout).matched, 1);
    assert_eq!(proxy.stats(timeout).injected, 1);
    // Refused requests never reach the service.
    let received = up.received();
    assert_eq!(
        received
            .iter()
            .filter(|l| l.contains("comp=snapshot"))
            .count(),
        2
    );
    assert!(!received.iter().any(|l| l.contains("other.vhd")));
}

#[test]
fn answer_lost_reaches_the_service_and_the_client_gets_no_answer() {
    let up = Upstream::start();
    let proxy = FaultProxy::start(up.port);
    let rule = proxy.add(Rule::new(Fault::AnswerLost).op(Op::SnapshotBlob).nth(1, 1));
    let err = put(proxy.port(), "?comp=snapshot", &[], &[]).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    assert_eq!(
        up.received(),
        [format!("PUT {BLOB}?comp=snapshot")],
        "applied"
    );
    assert_eq!(
        put(proxy.port(), "?comp=snapshot", &[], &[])
            .unwrap()
            .status,
        201
    );
    assert_eq!(proxy.stats(rule).injected, 1);
    assert_eq!(proxy.injected_by_kind()[&FaultKind::AnswerLost], 1);
}

#[test]
fn reset_mid_request_body_never_reaches_the_service() {
    let up = Upstream::start();
    let proxy = FaultProxy::start(up.port);
    proxy.add(Rule::new(Fault::ResetRequestBody).op(Op::PutPage));
    let got = put(
        proxy.port(),
        "?comp=page",
        &[("x-ms-page-write", "update")],
        &vec![9; 4 << 20],
    );
    assert!(got.is_err(), "no answer to a request cut mid-body: {got:?}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(up.received().is_empty(), "{:?}", up.received());
}

#[test]
fn reset_mid_response_body_truncates_an_answer_the_service_gave() {
    let up = Upstream::start();
    let proxy = FaultProxy::start(up.port);
    proxy.add(Rule::new(Fault::ResetResponseBody).op(Op::GetBlob));
    let got = send(
        proxy.port(),
        "GET",
        BLOB,
        &[("x-ms-range", "bytes=0-999")],
        &[],
    )
    .unwrap();
    assert_eq!(got.status, 201, "the headers arrived");
    assert_eq!(got.content_length, BODY_LEN);
    assert_eq!(
        got.body.len(),
        BODY_LEN / 2,
        "then half the body and the connection dropped"
    );
    assert_eq!(up.received().len(), 1);
}

#[test]
fn stall_outlasts_the_client_timeout_and_never_forwards() {
    let up = Upstream::start();
    let proxy = FaultProxy::start(up.port);
    proxy.add(Rule::new(Fault::Stall(Duration::from_millis(800))).op(Op::DeleteBlob));
    let err = send_with_timeout(
        proxy.port(),
        "DELETE",
        BLOB,
        &[],
        &[],
        Duration::from_millis(200),
    )
    .unwrap_err();
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "the client timed out: {err}"
    );
    std::thread::sleep(Duration::from_millis(900));
    assert!(up.received().is_empty());
}

#[test]
fn probability_rules_are_reproducible_from_their_seed() {
    let up = Upstream::start();
    let pattern = |seed| {
        let proxy = FaultProxy::start(up.port);
        let rule = proxy.add(Rule::new(Fault::server_busy()).probability(0.25, seed));
        let got: Vec<u16> = (0..120)
            .map(|_| send(proxy.port(), "HEAD", BLOB, &[], &[]).unwrap().status)
            .collect();
        let stats = proxy.stats(rule);
        assert_eq!(stats.matched, 120);
        assert_eq!(
            stats.injected as usize,
            got.iter().filter(|s| **s == 503).count()
        );
        got
    };
    let a = pattern(42);
    assert_eq!(a, pattern(42), "same seed, same requests faulted");
    let faulted = a.iter().filter(|s| **s == 503).count();
    assert!(
        (15..=45).contains(&faulted),
        "about a quarter: {faulted} of 120"
    );
}

#[test]
fn rate_limit_answers_server_busy_above_the_limits_and_counts() {
    let up = Upstream::start();
    let proxy = FaultProxy::start(up.port);
    proxy.rate_limit(Some(RateLimit {
        account_requests_per_s: Some(5),
        ..Default::default()
    }));
    let started = Instant::now();
    let got: Vec<u16> = (0..12)
        .map(|_| send(proxy.port(), "HEAD", BLOB, &[], &[]).unwrap().status)
        .collect();
    // A second's worth, plus what refilled while the requests were sent (a slow machine).
    let refilled = (started.elapsed().as_secs_f64() * 5.0).ceil() as usize;
    let served = got.iter().filter(|s| **s != 503).count();
    assert!(
        (5..=6 + refilled).contains(&served),
        "5 per second: {got:?}"
    );
    let stats = proxy.rate_stats();
    assert_eq!((stats.served + stats.throttled) as usize, got.len());
    assert_eq!(stats.served as usize, served);
    assert_eq!(
        up.received().len(),
        served,
        "throttled requests never reach the service"
    );
    std::thread::sleep(Duration::from_millis(1100));
    assert_ne!(
        send(proxy.port(), "HEAD", BLOB, &[], &[]).unwrap().status,
        503,
        "a second later"
    );

    // MiB/s per blob: 1 MiB/s admits two 512 KiB puts, not a third, and not another blob's
    // budget.
    proxy.rate_limit(Some(RateLimit {
        blob_mib_per_s: Some(1.0),
        ..Default::default()
    }));
    let page = [("x-ms-page-write", "update")];
    let puts: Vec<u16> = (0..3)
        .map(|_| {
            put(proxy.port(), "?comp=page", &page, &[0; 512 << 10])
                .unwrap()
                .status
        })
        .collect();
    assert_eq!(puts, [201, 201, 503]);
    let other = send(
        proxy.port(),
        "PUT",
        "/premium/vhds/b.vhd?comp=page",
        &page,
        &[0; 512 << 10],
    );
    assert_eq!(other.unwrap().status, 201);
    assert_eq!(proxy.rate_stats().throttled, 1);
}

#[test]
fn page_list_rewrite_puts_every_clear_range_after_every_page_range() {
    let up = Upstream::start();
    let proxy = FaultProxy::start(up.port);
    proxy.add(Rule::new(page_list_out_of_order()).op(Op::GetPageRanges));
    let got = send(
        proxy.port(),
        "GET",
        &format!("{BLOB}?comp=pagelist&prevsnapshot=a"),
        &[],
        &[],
    )
    .unwrap();
    let body = String::from_utf8(got.body).unwrap();
    assert_eq!(got.content_length, body.len());
    let want = INTERLEAVED
        .replace("<ClearRange><Start>512</Start><End>1023</End></ClearRange>", "")
        .replace(
            "<ClearRange><Start>2048</Start><End>2559</End></ClearRange>",
            "<ClearRange><Start>512</Start><End>1023</End></ClearRange><ClearRange><Start>2048</Start><End>2559</End></ClearRange>",
        );
    assert_eq!(body, want);
}

#[test]
fn copy_failed_rewrite_reports_a_failed_copy() {
    let up = Upstream::start();
    let proxy = FaultProxy::start(up.port);
    proxy.add(Rule::new(copy_reported_failed()).op(Op::GetBlobProperties));
    let got = send(proxy.port(), "HEAD", BLOB, &[], &[]).unwrap();
    assert!(
        got.headers.contains("x-ms-copy-status: failed"),
        "{}",
        got.headers
    );
    assert!(got.headers.contains("x-ms-copy-status-description"));
    assert_eq!(
        got.content_length, BODY_LEN,
        "a HEAD keeps the blob's Content-Length"
    );
}

#[test]
fn copy_pending_rewrite_reports_a_copy_that_never_moves() {
    let up = Upstream::start();
    let proxy = FaultProxy::start(up.port);
    proxy.add(Rule::new(copy_reported_pending_without_progress()).op(Op::GetBlobProperties));
    let got = send(proxy.port(), "HEAD", BLOB, &[], &[]).unwrap();
    assert!(
        got.headers.contains("x-ms-copy-status: pending"),
        "{}",
        got.headers
    );
    assert!(
        got.headers
            .contains(&format!("x-ms-copy-progress: 0/{BODY_LEN}")),
        "{}",
        got.headers
    );
    assert_eq!(got.content_length, BODY_LEN);
}

#[test]
fn delay_holds_the_request_then_answers_normally() {
    let up = Upstream::start();
    let proxy = FaultProxy::start(up.port);
    proxy.add(Rule::new(Fault::Delay(Duration::from_millis(300))).op(Op::DeleteBlob));
    let started = std::time::Instant::now();
    let got = send(proxy.port(), "DELETE", BLOB, &[], &[]).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!((got.status, got.body.len()), (201, BODY_LEN));
    assert_eq!(up.received().len(), 1);
}
