//! A minimal HTTP/1.1 client for the tests' own servers on 127.0.0.1 (the harness's control
//! routes, a daemon's `/metrics` and probes): std only, so it works inside any runtime or
//! none, and a test sees exactly the status and body the server sent.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An answer: its status, one header's value (the one asked for; empty if absent), its body.
pub struct Answer {
    pub status: u16,
    pub header: String,
    pub body: String,
}

/// A bodiless `method` request to `path_and_query` on 127.0.0.1:`port`: (status, body).
pub fn request(port: u16, method: &str, path_and_query: &str) -> std::io::Result<(u16, String)> {
    let a = request_with(port, method, path_and_query, &[], "")?;
    Ok((a.status, a.body))
}

/// [`request`] with extra request `headers`, also returning the answer's `want` header.
pub fn request_with(
    port: u16,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
    want: &str,
) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "{method} {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let header = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(want).then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok(Answer {
        status,
        header,
        body: body.to_string(),
    })
}
