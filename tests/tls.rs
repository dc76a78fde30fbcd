//! The TLS stack: reqwest on rustls with the ring provider (Cargo.toml), installed by
//! `tls::install_provider`. No test talks to Azure over TLS, so this proves the stack
//! is wired: an https request reaches a loopback listener as a TLS ClientHello instead of
//! panicking for want of a crypto provider.

use azure_core::http::{new_http_client, Method, Request, Url};
use std::time::Duration;
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn https_requests_start_a_tls_handshake() {
    snapback::azure::tls::install_provider();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut record_header = [0u8; 5];
        conn.read_exact(&mut record_header).await.unwrap();
        record_header // dropping the connection ends the handshake
    });
    let client = new_http_client(None);
    let url = Url::parse(&format!("https://127.0.0.1:{port}/")).unwrap();
    let request = Request::new(url, Method::Get);
    let answer = tokio::time::timeout(Duration::from_secs(20), client.execute_request(&request))
        .await
        .expect("the request ends");
    let header = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the listener was reached")
        .unwrap();
    // 0x16 = handshake record, 0x03 = TLS major version: a ClientHello.
    assert_eq!(&header[..2], &[0x16, 0x03], "first bytes {header:?}");
    assert!(
        answer.is_err(),
        "a closed handshake cannot yield a response"
    );
}
