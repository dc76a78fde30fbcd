//! A fault-injecting HTTP proxy for Azure Storage requests: it sits between snapback and
//! Azurite (point an account's `endpoint` at [`FaultProxy::endpoint`]) and, per rule, answers
//! an error instead of forwarding, drops the connection at a chosen moment, stalls, rewrites
//! an answer, or throttles like a busy account. Faults are injected over HTTP, at the wire,
//! so the product code under test (the SDK's retry policy included) runs unchanged.
//!
//! Binds 127.0.0.1 on a kernel-chosen port; its runtime and every connection it holds stop
//! when the [`FaultProxy`] is dropped.
//!
//! ```ignore
//! let proxy = FaultProxy::start(az.port());
//! let lost = proxy.add(Rule::new(Fault::AnswerLost).op(Op::SnapshotBlob).nth(1, 1));
//! // … config endpoint = proxy.endpoint("premium") …
//! assert_eq!(proxy.stats(lost).injected, 1);
//! ```
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::http::response::Parts;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = BoxBody<Bytes, BoxError>;

/// A Blob service operation, recognised from the request line and headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `PUT ?comp=snapshot`
    SnapshotBlob,
    /// `PUT ?comp=page`, `x-ms-page-write: update`, with a body.
    PutPage,
    /// `PUT ?comp=page`, `x-ms-page-write: clear`.
    ClearPage,
    /// `PUT ?comp=page` with `x-ms-copy-source`.
    PutPageFromUrl,
    /// `PUT` of a blob with `x-ms-copy-source` (no `comp`).
    CopyBlob,
    /// `PUT ?comp=copy` (Abort Copy Blob).
    AbortCopy,
    /// `PUT` of a blob, no `comp`, no copy source (Put Blob: creates a page blob here).
    PutBlob,
    /// `GET ?comp=pagelist` (with or without `prevsnapshot`).
    GetPageRanges,
    /// `GET` of a blob or snapshot (its bytes).
    GetBlob,
    /// `HEAD` of a blob or snapshot.
    GetBlobProperties,
    /// `DELETE` of a blob or snapshot.
    DeleteBlob,
    /// `PUT ?comp=lease`.
    Lease,
    /// `PUT ?comp=properties` (resize, …).
    SetBlobProperties,
    /// `PUT ?comp=metadata`.
    SetBlobMetadata,
    /// `GET ?restype=container&comp=list`.
    ListBlobs,
    /// `PUT ?restype=container`.
    CreateContainer,
    /// Anything else (account information, container properties, tags, …).
    Other,
}

impl Op {
    /// Classifies a request the way the Blob service REST API defines its operations.
    pub fn of(method: &Method, query: &HashMap<String, String>, headers: &hyper::HeaderMap) -> Op {
        let comp = query.get("comp").map(String::as_str);
        let restype = query.get("restype").map(String::as_str);
        let copy_source = headers.contains_key("x-ms-copy-source");
        let page_write = headers
            .get("x-ms-page-write")
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase);
        match (method.as_str(), restype, comp) {
            ("PUT", Some("container"), None) => Op::CreateContainer,
            ("GET", Some("container"), Some("list")) => Op::ListBlobs,
            (_, Some(_), _) => Op::Other,
            ("PUT", None, Some("snapshot")) => Op::SnapshotBlob,
            ("PUT", None, Some("page")) if copy_source => Op::PutPageFromUrl,
            ("PUT", None, Some("page")) if page_write.as_deref() == Some("clear") => Op::ClearPage,
            ("PUT", None, Some("page")) => Op::PutPage,
            ("PUT", None, Some("copy")) => Op::AbortCopy,
            ("PUT", None, Some("lease")) => Op::Lease,
            ("PUT", None, Some("properties")) => Op::SetBlobProperties,
            ("PUT", None, Some("metadata")) => Op::SetBlobMetadata,
            ("PUT", None, None) if copy_source => Op::CopyBlob,
            ("PUT", None, None) => Op::PutBlob,
            ("GET", None, Some("pagelist")) => Op::GetPageRanges,
            ("GET", None, None) => Op::GetBlob,
            ("HEAD", None, None) => Op::GetBlobProperties,
            ("DELETE", None, None) => Op::DeleteBlob,
            _ => Op::Other,
        }
    }
}

/// A transformation of an answer the service gave (headers and whole body).
pub type Rewrite = Arc<dyn Fn(&mut Parts, &mut Vec<u8>) + Send + Sync>;

/// What the proxy does to a request a rule picked.
#[derive(Clone)]
pub enum Fault {
    /// Answers `status` with Azure's XML error body and `x-ms-error-code: code`; the request
    /// never reaches the service.
    Status { status: u16, code: &'static str },
    /// Reads the first chunk of the request body (if any), then drops the connection without
    /// forwarding: the request is cut mid-body.
    ResetRequestBody,
    /// Forwards, then sends the answer's headers and half of its body and drops the
    /// connection: the service applied the request, the client sees a truncated answer.
    ResetResponseBody,
    /// Holds the request this long without forwarding it, then drops the connection: a
    /// service that stopped answering (set it past the client's timeout).
    Stall(Duration),
    /// Holds the request this long, then forwards it and answers normally: a slow service.
    Delay(Duration),
    /// Forwards and waits for the service's whole answer, then drops the connection without
    /// answering: the service applied the request and the client cannot know.
    AnswerLost,
    /// Forwards and hands the client the answer after `Rewrite` changed it.
    Rewrite(Rewrite),
}

impl Fault {
    /// `503 ServerBusy`, Azure's answer to a throttled account.
    pub fn server_busy() -> Fault {
        Fault::Status {
            status: 503,
            code: "ServerBusy",
        }
    }

    /// `500 OperationTimedOut`.
    pub fn operation_timeout() -> Fault {
        Fault::Status {
            status: 500,
            code: "OperationTimedOut",
        }
    }

    /// The kind, for counting and messages.
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Status { .. } => FaultKind::Status,
            Fault::ResetRequestBody => FaultKind::ResetRequestBody,
            Fault::ResetResponseBody => FaultKind::ResetResponseBody,
            Fault::Stall(_) => FaultKind::Stall,
            Fault::Delay(_) => FaultKind::Delay,
            Fault::AnswerLost => FaultKind::AnswerLost,
            Fault::Rewrite(_) => FaultKind::Rewrite,
        }
    }
}

impl fmt::Debug for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Status { status, code } => write!(f, "{status} {code}"),
            Fault::Stall(d) => write!(f, "stall {d:?}"),
            Fault::Delay(d) => write!(f, "delay {d:?}"),
            other => write!(f, "{:?}", other.kind()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    Status,
    ResetRequestBody,
    ResetResponseBody,
    Stall,
    Delay,
    AnswerLost,
    Rewrite,
}

/// Which of the matching requests a rule fires on.
#[derive(Clone, Copy, Debug)]
enum When {
    /// The `from`-th to the `to`-th matching request (1-based, inclusive).
    Nth { from: u64, to: u64 },
    /// Each matching request with probability `p`, from a seeded generator (reproducible).
    Random { p: f64, seed: u64 },
}

/// One fault rule: which requests (operation, account, blob), when, and what to do.
#[derive(Clone, Debug)]
pub struct Rule {
    ops: Vec<Op>,
    account: Option<String>,
    blob: Option<String>,
    when: When,
    fault: Fault,
}

impl Rule {
    /// A rule firing on every request until narrowed with [`Rule::op`], [`Rule::account`],
    /// [`Rule::blob`], [`Rule::nth`] or [`Rule::probability`].
    pub fn new(fault: Fault) -> Rule {
        Rule {
            ops: Vec::new(),
            account: None,
            blob: None,
            when: When::Nth {
                from: 1,
                to: u64::MAX,
            },
            fault,
        }
    }

    /// Only this operation (several calls: any of them).
    pub fn op(mut self, op: Op) -> Rule {
        self.ops.push(op);
        self
    }

    /// Only requests to this account (the first path segment of a path-style URL).
    pub fn account(mut self, account: &str) -> Rule {
        self.account = Some(account.to_string());
        self
    }

    /// Only requests to this blob, `container/blob` (its snapshots included).
    pub fn blob(mut self, container_and_blob: &str) -> Rule {
        self.blob = Some(container_and_blob.to_string());
        self
    }

    /// Only the `from`-th to the `to`-th matching request (1-based, inclusive).
    pub fn nth(mut self, from: u64, to: u64) -> Rule {
        self.when = When::Nth { from, to };
        self
    }

    /// Each matching request with probability `p`, reproducibly from `seed`.
    pub fn probability(mut self, p: f64, seed: u64) -> Rule {
        self.when = When::Random {
            p,
            seed: seed.max(1),
        };
        self
    }

    fn selects(&self, req: &Classified) -> bool {
        (self.ops.is_empty() || self.ops.contains(&req.op))
            && self.account.as_ref().is_none_or(|a| *a == req.account)
            && self.blob.as_ref().is_none_or(|b| *b == req.blob)
    }
}

/// What a rule did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// Requests its operation/account/blob filter selected.
    pub matched: u64,
    /// Requests it injected its fault into.
    pub injected: u64,
}

/// Handle of a rule added with [`FaultProxy::add`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleId(usize);

/// Limits of the rate-limit mode; `None` = unlimited. Requests above a limit within the last
/// second are answered `503 ServerBusy` without reaching the service, as Azure does when an
/// account or a blob is over its target. Bytes counted: the request body (Content-Length) and
/// the length of a ranged read (`x-ms-range`/`Range`); a single request is never refused for
/// its size alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct RateLimit {
    pub account_requests_per_s: Option<u32>,
    pub blob_requests_per_s: Option<u32>,
    pub account_mib_per_s: Option<f64>,
    pub blob_mib_per_s: Option<f64>,
}

/// Counters of the rate-limit mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateStats {
    pub served: u64,
    pub throttled: u64,
}

/// A request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub op: Op,
    pub account: String,
    /// `container/blob` (empty for account and container requests).
    pub blob: String,
    /// The fault injected into it, if any.
    pub fault: Option<FaultKind>,
    /// `x-ms-copy-source` (Copy Blob, Put Page From URL): what snapback let the service read.
    pub copy_source: Option<String>,
}

struct RuleState {
    rule: Rule,
    stats: RuleStats,
    rng: u64,
}

#[derive(Default)]
struct Limiter {
    limit: RateLimit,
    stats: RateStats,
    /// Per account and per `account/container/blob`: (instant, bytes) of served requests of
    /// the last second.
    windows: HashMap<String, VecDeque<(Instant, u64)>>,
}

impl Limiter {
    /// Admits the request (recording it) or says it is over a limit.
    fn admit(&mut self, account: &str, blob_key: &str, bytes: u64) -> bool {
        let now = Instant::now();
        let checks = [
            (
                account.to_string(),
                self.limit.account_requests_per_s,
                self.limit.account_mib_per_s,
            ),
            (
                blob_key.to_string(),
                self.limit.blob_requests_per_s,
                self.limit.blob_mib_per_s,
            ),
        ];
        let mut over = false;
        for (key, rps, mibps) in &checks {
            let window = self.windows.entry(key.clone()).or_default();
            while window
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) >= Duration::from_secs(1))
            {
                window.pop_front();
            }
            let used: u64 = window.iter().map(|(_, b)| b).sum();
            if rps.is_some_and(|r| window.len() as u64 >= u64::from(r)) {
                over = true;
            }
            if mibps.is_some_and(|m| !window.is_empty() && (used + bytes) as f64 > m * 1048576.0) {
                over = true;
            }
        }
        if over {
            self.stats.throttled += 1;
            return false;
        }
        for (key, _, _) in checks {
            self.windows.entry(key).or_default().push_back((now, bytes));
        }
        self.stats.served += 1;
        true
    }
}

struct Shared {
    upstream: SocketAddr,
    rules: Mutex<Vec<RuleState>>,
    limiter: Mutex<Option<Limiter>>,
    seen: Mutex<Vec<Seen>>,
    answered: Mutex<Vec<Answered>>,
}

/// An answer the service gave to a forwarded request (faults that answer themselves are not
/// answers of the service).
#[derive(Clone, Debug)]
pub struct Answered {
    pub op: Op,
    /// `container/blob`.
    pub blob: String,
    pub status: u16,
    /// `x-ms-error-code`, if the service sent one.
    pub code: Option<String>,
    /// When the service's answer reached the proxy.
    pub at: Instant,
}

/// The running proxy; stops (closing every connection) on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 (free port) forwarding to `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16) -> FaultProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy port");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream_port)),
            rules: Mutex::new(Vec::new()),
            limiter: Mutex::new(None),
            seen: Mutex::new(Vec::new()),
            answered: Mutex::new(Vec::new()),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let state = Arc::clone(&shared);
        // Its own thread and runtime, so sync and async tests alike can use it, and dropping
        // the runtime cancels every connection task (stalls included).
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                tokio::pin!(stopped);
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            tokio::spawn(serve(Arc::clone(&state), stream));
                        }
                    }
                }
            });
        });
        FaultProxy {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Path-style account endpoint through the proxy, e.g. `http://127.0.0.1:PORT/premium`.
    pub fn endpoint(&self, account: &str) -> String {
        format!("http://127.0.0.1:{}/{account}", self.addr.port())
    }

    /// Adds a rule (checked after the earlier ones: the first rule that fires wins).
    pub fn add(&self, rule: Rule) -> RuleId {
        let mut rules = self.shared.rules.lock().unwrap();
        let rng = match rule.when {
            When::Random { seed, .. } => seed,
            When::Nth { .. } => 1,
        };
        rules.push(RuleState {
            rule,
            stats: RuleStats::default(),
            rng,
        });
        RuleId(rules.len() - 1)
    }

    /// Disarms every rule (their counters stay readable).
    pub fn clear_rules(&self) {
        for r in self.shared.rules.lock().unwrap().iter_mut() {
            r.rule.when = When::Nth { from: 1, to: 0 };
        }
    }

    pub fn stats(&self, id: RuleId) -> RuleStats {
        self.shared.rules.lock().unwrap()[id.0].stats
    }

    /// Turns on (or, with `None`, off) the rate-limit mode.
    pub fn rate_limit(&self, limit: Option<RateLimit>) {
        *self.shared.limiter.lock().unwrap() = limit.map(|limit| Limiter {
            limit,
            ..Default::default()
        });
    }

    pub fn rate_stats(&self) -> RateStats {
        self.shared
            .limiter
            .lock()
            .unwrap()
            .as_ref()
            .map(|l| l.stats)
            .unwrap_or_default()
    }

    /// Every request received so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Every answer the service gave to a forwarded request, in order.
    pub fn answered(&self) -> Vec<Answered> {
        self.shared.answered.lock().unwrap().clone()
    }

    /// How many requests of `op` arrived (faulted or not).
    pub fn count(&self, op: Op) -> usize {
        self.seen().iter().filter(|s| s.op == op).count()
    }

    /// Faults injected so far, by kind.
    pub fn injected_by_kind(&self) -> HashMap<FaultKind, u64> {
        let mut out = HashMap::new();
        for s in self.seen() {
            if let Some(k) = s.fault {
                *out.entry(k).or_insert(0) += 1;
            }
        }
        out
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What rules and limits look at.
struct Classified {
    op: Op,
    account: String,
    blob: String,
    bytes: u64,
}

fn classify(req: &Request<Incoming>) -> Classified {
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let op = Op::of(req.method(), &query, req.headers());
    let path = req.uri().path().trim_start_matches('/');
    let (account, blob) = path.split_once('/').unwrap_or((path, ""));
    let blob = if blob.contains('/') { blob } else { "" };
    let header_u64 = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let body = header_u64(CONTENT_LENGTH.as_str())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let range = header_u64("x-ms-range")
        .or_else(|| header_u64("range"))
        .and_then(|r| {
            let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
            Some(b.parse::<u64>().ok()? + 1 - a.parse::<u64>().ok()?)
        })
        .filter(|_| op == Op::GetBlob)
        .unwrap_or(0);
    Classified {
        op,
        account: account.to_string(),
        blob: percent_decode(blob),
        bytes: body + range,
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

async fn serve(shared: Arc<Shared>, stream: tokio::net::TcpStream) {
    let service = hyper::service::service_fn(move |req| handle(Arc::clone(&shared), req));
    // An Err from the service makes hyper close the connection without an answer: that is
    // how the drop-the-connection faults are made.
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

#[derive(Debug)]
struct Dropped(&'static str);

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fault proxy: {}", self.0)
    }
}

impl std::error::Error for Dropped {}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, BoxError> {
    let c = classify(&req);
    let fault = pick(&shared, &c);
    shared.seen.lock().unwrap().push(Seen {
        op: c.op,
        account: c.account.clone(),
        blob: c.blob.clone(),
        fault: fault.as_ref().map(Fault::kind),
        copy_source: req
            .headers()
            .get("x-ms-copy-source")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
    let throttled =
        fault.is_none()
            && shared.limiter.lock().unwrap().as_mut().is_some_and(|l| {
                !l.admit(&c.account, &format!("{}/{}", c.account, c.blob), c.bytes)
            });
    if throttled {
        return Ok(error_answer(503, "ServerBusy"));
    }
    match fault {
        None => {
            let (parts, body) = forward(&shared, req).await?;
            record(&shared, &c, &parts);
            Ok(answer(parts, body))
        }
        Some(Fault::Status { status, code }) => Ok(error_answer(status, code)),
        Some(Fault::ResetRequestBody) => {
            let mut body = req.into_body();
            let _ = body.frame().await;
            Err(Box::new(Dropped("connection reset mid-request-body")))
        }
        Some(Fault::Stall(d)) => {
            tokio::time::sleep(d).await;
            Err(Box::new(Dropped("stalled, then dropped")))
        }
        Some(Fault::Delay(d)) => {
            // Held in the network: once read, the request reaches the service after the
            // delay even if its sender has given up or gone meanwhile (a task of its own).
            let (parts, body) = req.into_parts();
            let body = body.collect().await?.to_bytes();
            let held = Arc::clone(&shared);
            let delivered = tokio::spawn(async move {
                tokio::time::sleep(d).await;
                let answer = forward_read(&held, parts, body).await;
                if let Ok((parts, _)) = &answer {
                    record(&held, &c, parts);
                }
                answer
            });
            let (parts, body) = delivered.await??;
            Ok(answer(parts, body))
        }
        Some(Fault::AnswerLost) => {
            forward(&shared, req).await?;
            Err(Box::new(Dropped(
                "answer lost after the service applied it",
            )))
        }
        Some(Fault::ResetResponseBody) => {
            let (parts, body) = forward(&shared, req).await?;
            let half = Bytes::from(body[..body.len() / 2].to_vec());
            use futures::StreamExt;
            let first: Result<Frame<Bytes>, BoxError> = Ok(Frame::data(half));
            // The pause lets hyper flush the headers and the first half before the body
            // fails; failing at once would drop them unsent.
            let cut = futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err::<Frame<Bytes>, BoxError>(Box::new(Dropped(
                    "connection reset mid-response-body",
                )))
            });
            let frames = futures::stream::iter([first]).chain(cut);
            let mut resp = Response::from_parts(parts, BodyExt::boxed(StreamBody::new(frames)));
            resp.headers_mut().remove(TRANSFER_ENCODING);
            resp.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
            Ok(resp)
        }
        Some(Fault::Rewrite(f)) => {
            let (mut parts, body) = forward(&shared, req).await?;
            let mut body = body.to_vec();
            let before = body.len();
            f(&mut parts, &mut body);
            // Only a changed body changes the length: a HEAD answer's Content-Length is the
            // blob's size, not its (empty) body's.
            if body.len() != before {
                parts
                    .headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
            }
            Ok(answer(parts, Bytes::from(body)))
        }
    }
}

fn record(shared: &Shared, c: &Classified, parts: &Parts) {
    shared.answered.lock().unwrap().push(Answered {
        op: c.op,
        blob: c.blob.clone(),
        status: parts.status.as_u16(),
        code: parts
            .headers
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        at: Instant::now(),
    });
}

/// Counts the request against every rule that selects it; the first that fires injects.
fn pick(shared: &Shared, c: &Classified) -> Option<Fault> {
    let mut rules = shared.rules.lock().unwrap();
    let mut chosen = None;
    for r in rules.iter_mut() {
        if !r.rule.selects(c) {
            continue;
        }
        r.stats.matched += 1;
        let fires = match r.rule.when {
            When::Nth { from, to } => (from..=to).contains(&r.stats.matched),
            When::Random { p, .. } => {
                r.rng ^= r.rng << 13;
                r.rng ^= r.rng >> 7;
                r.rng ^= r.rng << 17;
                ((r.rng >> 11) as f64 / (1u64 << 53) as f64) < p
            }
        };
        if fires && chosen.is_none() {
            r.stats.injected += 1;
            chosen = Some(r.rule.fault.clone());
        }
    }
    chosen
}

/// Sends the request to the service on a fresh connection and reads its whole answer.
async fn forward(shared: &Shared, req: Request<Incoming>) -> Result<(Parts, Bytes), BoxError> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    forward_read(shared, parts, body).await
}

/// [`forward`] of a request whose body was read already.
async fn forward_read(
    shared: &Shared,
    parts: hyper::http::request::Parts,
    body: Bytes,
) -> Result<(Parts, Bytes), BoxError> {
    // The Host header is left as the client sent it (the proxy's address): Azurite accepts a
    // cross-account Copy Blob only from a source URL on the host the request was sent to, and
    // the source URL snapback sends names the proxy.
    let is_head = parts.method == Method::HEAD;
    let stream = tokio::net::TcpStream::connect(shared.upstream).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await?;
    let (mut parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    if !is_head && parts.headers.remove(TRANSFER_ENCODING).is_some() {
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    Ok((parts, body))
}

fn answer(parts: Parts, body: Bytes) -> Response<ProxyBody> {
    Response::from_parts(
        parts,
        Full::new(body).map_err(|never| match never {}).boxed(),
    )
}

/// An Azure-style error answer (`x-ms-error-code` and the XML body the SDK parses).
fn error_answer(status: u16, code: &str) -> Response<ProxyBody> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Message>injected by the fault proxy</Message></Error>"
    );
    Response::builder()
        .status(StatusCode::from_u16(status).expect("valid status"))
        .header("x-ms-error-code", code)
        .header("content-type", "application/xml")
        .header(CONTENT_LENGTH, body.len())
        .body(
            Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("error answer")
}

// ------------------------------------------------------------ rewrites --

/// Rewrites a Get Page Ranges answer so that every `PageRange` comes first and every
/// `ClearRange` after them: each item is intact, the order is not the offset order Azure
/// documents. A listing without both kinds is left alone.
pub fn page_list_out_of_order() -> Fault {
    Fault::Rewrite(Arc::new(|parts: &mut Parts, body: &mut Vec<u8>| {
        if !parts.status.is_success() {
            return;
        }
        let Ok(text) = std::str::from_utf8(body) else {
            return;
        };
        let pages = elements(text, "PageRange");
        let clears = elements(text, "ClearRange");
        if pages.is_empty() || clears.is_empty() {
            return;
        }
        let Some(start) = text
            .find("<PageRange>")
            .into_iter()
            .chain(text.find("<ClearRange>"))
            .min()
        else {
            return;
        };
        let end = [
            text.rfind("</PageRange>").map(|i| i + "</PageRange>".len()),
            text.rfind("</ClearRange>")
                .map(|i| i + "</ClearRange>".len()),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(start);
        let reordered = format!(
            "{}{}{}{}",
            &text[..start],
            pages.concat(),
            clears.concat(),
            &text[end..]
        );
        *body = reordered.into_bytes();
    }))
}

/// Every `<tag>…</tag>` element of `text`, in document order.
fn elements<'a>(text: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = text;
    let mut base = 0;
    while let Some(i) = rest.find(&open) {
        let Some(j) = rest[i..].find(&close) else {
            break;
        };
        let end = i + j + close.len();
        out.push(&text[base + i..base + end]);
        base += end;
        rest = &text[base..];
    }
    out
}

/// Makes a listing go round in circles: every successful Get Page Ranges or List Blobs answer
/// ends with `<NextMarker>marker</NextMarker>`, and a page list also loses its items (an empty
/// page that says "more to come"). Following it would never end.
pub fn listing_goes_round(marker: &'static str) -> Fault {
    Fault::Rewrite(Arc::new(move |parts: &mut Parts, body: &mut Vec<u8>| {
        if !parts.status.is_success() {
            return;
        }
        let Ok(text) = std::str::from_utf8(body) else {
            return;
        };
        let mut text = text.to_string();
        for tag in ["PageRange", "ClearRange", "NextMarker"] {
            for e in elements(&text.clone(), tag) {
                text = text.replacen(e, "", 1);
            }
        }
        text = text
            .replace("<NextMarker />", "")
            .replace("<NextMarker/>", "");
        let Some(root_end) = text.rfind("</") else {
            return;
        };
        text.insert_str(root_end, &format!("<NextMarker>{marker}</NextMarker>"));
        *body = text.into_bytes();
    }))
}

/// Makes a ranged read's answer claim another range of the same length
/// (`Content-Range: bytes 0-…` for a read further on, the next range for a read at 0): the
/// body is intact, the answer says it is not the range asked for.
pub fn content_range_elsewhere() -> Fault {
    Fault::Rewrite(Arc::new(|parts: &mut Parts, _body: &mut Vec<u8>| {
        let Some(served) = parts
            .headers
            .get("content-range")
            .and_then(|v| v.to_str().ok())
        else {
            return;
        };
        let parsed = served
            .strip_prefix("bytes ")
            .and_then(|v| v.split_once('/'))
            .and_then(|(span, size)| Some((span.split_once('-')?, size.to_string())))
            .and_then(|((a, b), size)| {
                Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?, size))
            });
        let Some((first, last, size)) = parsed else {
            return;
        };
        let len = last - first + 1;
        let moved = if first == 0 { len } else { 0 };
        let claimed = format!("bytes {moved}-{}/{size}", moved + len - 1);
        parts.headers.insert(
            "content-range",
            HeaderValue::from_str(&claimed).expect("ASCII"),
        );
    }))
}

/// Forwards, then answers `503 ServerBusy` with `Retry-After: seconds` instead of the
/// service's answer: a throttled account asking for a (possibly absurd) wait.
pub fn server_busy_retry_after(seconds: &'static str) -> Fault {
    Fault::Rewrite(Arc::new(move |parts: &mut Parts, body: &mut Vec<u8>| {
        parts.status = StatusCode::SERVICE_UNAVAILABLE;
        parts.headers.remove(CONTENT_TYPE);
        parts
            .headers
            .insert("retry-after", HeaderValue::from_static(seconds));
        parts
            .headers
            .insert("x-ms-error-code", HeaderValue::from_static("ServerBusy"));
        *body = Vec::new();
    }))
}

/// Makes every answer report its copy as failed (`x-ms-copy-status: failed`): a Copy Blob
/// the service keeps failing, as Azure reports it on Get Blob Properties.
pub fn copy_reported_failed() -> Fault {
    Fault::Rewrite(Arc::new(|parts: &mut Parts, _body: &mut Vec<u8>| {
        if parts.headers.contains_key("x-ms-copy-status") {
            parts
                .headers
                .insert("x-ms-copy-status", HeaderValue::from_static("failed"));
            parts.headers.insert(
                "x-ms-copy-status-description",
                HeaderValue::from_static("500 InternalError injected by the fault proxy"),
            );
        }
    }))
}

/// Makes every answer that reports a copy report it pending with nothing copied
/// (`x-ms-copy-status: pending`, `x-ms-copy-progress: 0/TOTAL`), however far the service got:
/// a copy that never moves, in a hostile but valid-looking answer. TOTAL is the copy's own
/// total, else the answer's Content-Length (a HEAD's is the blob's size).
pub fn copy_reported_pending_without_progress() -> Fault {
    Fault::Rewrite(Arc::new(|parts: &mut Parts, _body: &mut Vec<u8>| {
        if !parts.headers.contains_key("x-ms-copy-status") {
            return;
        }
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let total = header("x-ms-copy-progress")
            .and_then(|p| p.split_once('/').map(|(_, t)| t.to_string()))
            .or_else(|| header(CONTENT_LENGTH.as_str()))
            .unwrap_or_else(|| "0".into());
        parts
            .headers
            .insert("x-ms-copy-status", HeaderValue::from_static("pending"));
        if let Ok(progress) = HeaderValue::from_str(&format!("0/{total}")) {
            parts.headers.insert("x-ms-copy-progress", progress);
        }
        parts.headers.remove("x-ms-copy-completion-time");
        parts.headers.remove("x-ms-copy-status-description");
    }))
}
