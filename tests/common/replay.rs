//! Replays recorded Azure answers (`tests/recordings/**.json`, the Azure SDK recorders'
//! session format: `Entries` of `RequestMethod`, `RequestUri`, `StatusCode`,
//! `ResponseHeaders`, `ResponseBody`) from a server on 127.0.0.1, so snapback's own clients
//! can be pointed at what Azure really answered.
//!
//! The server answers the entries in order: each request must match an entry not yet served
//! (method, path, and query pairs; `api-version` may differ, snapback sends its own); entries
//! passed over to reach it are reported by [`Replay::skipped`]. The recorded origin (e.g.
//! `https://management.azure.com`) is replaced by the server's in every header value, so
//! polling URLs lead back here. Served as recorded except: `Retry-After` is sent as `0` (the
//! recorded waits would only slow the test), and the framing headers (`Content-Length`,
//! `Transfer-Encoding`, `Content-Encoding`: the recorder stored bodies decoded) are the
//! server's own. The server stops when the handle drops or after 60 s, whichever is first.
#![allow(dead_code)]

use super::process::tests_path;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The longest a replay server lives.
const LIFETIME: Duration = Duration::from_secs(60);

/// A recording file: its source (`_source`) and entries.
pub fn load(relative: &str) -> Value {
    let path = tests_path(&format!("recordings/{relative}"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).expect("recording is JSON");
    assert!(
        doc["_source"]["repository"].is_string() || doc["_source"].is_string(),
        "{relative} names its source"
    );
    doc
}

/// The entries `indices` of a recording.
pub fn entries(doc: &Value, indices: &[usize]) -> Vec<Value> {
    indices.iter().map(|&i| doc["Entries"][i].clone()).collect()
}

/// A recorded body as bytes: `null`, an array of text pieces (joined), a JSON value, or a
/// base64 string (binary bodies).
pub fn body_bytes(body: &Value) -> Vec<u8> {
    match body {
        Value::Null => Vec::new(),
        Value::Array(parts) if parts.iter().all(Value::is_string) => parts
            .iter()
            .filter_map(Value::as_str)
            .collect::<String>()
            .into_bytes(),
        Value::String(b64) => {
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)
                .expect("binary body is base64")
        }
        other => serde_json::to_vec(other).expect("JSON body"),
    }
}

/// A request the server received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter, decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        query_pairs(&self.path_and_query)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

#[derive(Default)]
struct State {
    served: Vec<bool>,
    /// Indices of entries passed over to serve a later one.
    skipped: Vec<usize>,
    received: Vec<Received>,
    mismatches: Vec<String>,
}

/// A running replay server.
pub struct Replay {
    origin: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    entries: usize,
}

impl Replay {
    /// Serves `entries`, recorded against `recorded_origin`, over HTTPS with the tests'
    /// certificate for 127.0.0.1 (`tls`) or plain HTTP.
    pub fn start(entries: Vec<Value>, recorded_origin: &str, tls: bool) -> Replay {
        snapback::azure::tls::install_provider();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("address").port();
        let origin = format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" });
        let state = Arc::new(Mutex::new(State {
            served: vec![false; entries.len()],
            ..Default::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let server = Arc::new(Server {
            entries,
            recorded_origin: recorded_origin.to_string(),
            origin: origin.clone(),
            state: state.clone(),
            stop: stop.clone(),
            tls: tls.then(tls_config),
        });
        let count = server.entries.len();
        thread::spawn(move || {
            let deadline = Instant::now() + LIFETIME;
            while !server.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let server = server.clone();
                        thread::spawn(move || server.connection(stream));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Replay {
            origin,
            state,
            stop,
            entries: count,
        }
    }

    /// `http(s)://127.0.0.1:PORT`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// `url` (a recorded one) with the recorded origin replaced by this server's.
    pub fn local(&self, recorded_origin: &str, url: &str) -> String {
        url.replacen(recorded_origin, &self.origin, 1)
    }

    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// Entries passed over to serve a later one.
    pub fn skipped(&self) -> Vec<usize> {
        self.lock().skipped.clone()
    }

    /// Every request matched an entry, and every entry was served or passed over.
    pub fn assert_done(&self) {
        let state = self.lock();
        assert!(
            state.mismatches.is_empty(),
            "requests that match no recorded entry: {:#?}",
            state.mismatches
        );
        let left: Vec<usize> = (0..self.entries)
            .filter(|&i| !state.served[i] && !state.skipped.contains(&i))
            .collect();
        assert!(
            left.is_empty(),
            "recorded entries never requested: {left:?}"
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Server {
    entries: Vec<Value>,
    recorded_origin: String,
    origin: String,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

impl Server {
    fn connection(&self, tcp: TcpStream) {
        let _ = tcp.set_nonblocking(false);
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
        let stream: Box<dyn Stream> = match &self.tls {
            Some(config) => match rustls::ServerConnection::new(config.clone()) {
                Ok(conn) => Box::new(rustls::StreamOwned::new(conn, tcp)),
                Err(_) => return,
            },
            None => Box::new(tcp),
        };
        let mut reader = BufReader::new(stream);
        while !self.stop.load(Ordering::Relaxed) {
            let Some(request) = read_request(&mut reader) else {
                return;
            };
            let response = self.answer(request);
            let out = reader.get_mut();
            if out.write_all(&response).and_then(|()| out.flush()).is_err() {
                return;
            }
        }
    }

    /// The recorded answer to `request`, or a 599 naming the mismatch.
    fn answer(&self, request: Received) -> Vec<u8> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let found = (0..self.entries.len())
            .filter(|&i| !state.served[i])
            .find(|&i| self.matches(&self.entries[i], &request));
        let what = format!("{} {}", request.method, request.path_and_query);
        state.received.push(request);
        let Some(index) = found else {
            state.mismatches.push(what.clone());
            return http_response(599, &[], format!("replay: no entry for {what}").as_bytes());
        };
        let passed: Vec<usize> = (0..index)
            .filter(|&i| !state.served[i] && !state.skipped.contains(&i))
            .collect();
        state.skipped.extend(passed);
        state.served[index] = true;
        let entry = &self.entries[index];
        let mut headers = Vec::new();
        if let Some(map) = entry["ResponseHeaders"].as_object() {
            for (name, value) in map {
                let lower = name.to_ascii_lowercase();
                if matches!(
                    lower.as_str(),
                    "content-length" | "transfer-encoding" | "content-encoding" | "connection"
                ) {
                    continue;
                }
                let value = match value {
                    Value::Array(parts) => parts
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" "),
                    other => other.as_str().unwrap_or_default().to_string(),
                };
                let value = if lower == "retry-after" {
                    "0".to_string()
                } else {
                    value.replace(&self.recorded_origin, &self.origin)
                };
                headers.push((name.clone(), value));
            }
        }
        let status = entry["StatusCode"].as_u64().unwrap_or(500) as u16;
        http_response(status, &headers, &body_bytes(&entry["ResponseBody"]))
    }

    fn matches(&self, entry: &Value, request: &Received) -> bool {
        let uri = entry["RequestUri"].as_str().unwrap_or_default();
        let Some(recorded) = uri.strip_prefix(&self.recorded_origin) else {
            return false;
        };
        let (path, _) = recorded.split_once('?').unwrap_or((recorded, ""));
        let (got_path, _) = request
            .path_and_query
            .split_once('?')
            .unwrap_or((&request.path_and_query, ""));
        let without_version = |pairs: Vec<(String, String)>| {
            let mut v: Vec<(String, String)> = pairs
                .into_iter()
                .map(|(k, v)| {
                    if k == "api-version" {
                        (k, String::new())
                    } else {
                        (k, v)
                    }
                })
                .collect();
            v.sort();
            v
        };
        entry["RequestMethod"].as_str() == Some(request.method.as_str())
            && path == got_path
            && without_version(query_pairs(recorded))
                == without_version(query_pairs(&request.path_and_query))
    }
}

fn query_pairs(path_and_query: &str) -> Vec<(String, String)> {
    let query = path_and_query
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default();
    url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// One HTTP/1.1 request (headers and a `Content-Length` body), or None at the end.
fn read_request(reader: &mut impl BufRead) -> Option<Received> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path_and_query = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        method,
        path_and_query,
        headers,
        body,
    })
}

fn http_response(status: u16, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} Recorded\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// The tests' certificate for 127.0.0.1 (the ARM emulator's), trusted by
/// `ArmEmulator::transport()`.
fn tls_config() -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert = CertificateDer::from_pem_file(tests_path("arm/emulator-cert.pem")).expect("cert");
    let key = PrivateKeyDer::from_pem_file(tests_path("arm/emulator-key.pem")).expect("key");
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .expect("TLS config");
    Arc::new(config)
}
