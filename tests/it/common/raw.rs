//! Raw HTTP/1.0 over a TCP socket, for request targets a client library would rewrite.
//!
//! reqwest (through the `url` crate) resolves `..`, `.` and `%2e%2e` segments before sending, so
//! a traversal test written with it mostly probes an ordinary unknown path. Here the request line
//! goes out byte for byte as written. HTTP/1.0 without keep-alive: the body ends when the server
//! closes the connection, so no chunked decoding is needed.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header lines, lowercased names: `("content-type", "text/plain")`.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON, or `Null` when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// Whether any of `needles` occurs in the body (bytes, not text: files may be binary).
    pub fn contains_any(&self, needles: &[&[u8]]) -> Option<String> {
        needles
            .iter()
            .find(|n| self.body.windows(n.len()).any(|w| w == **n))
            .map(|n| String::from_utf8_lossy(n).into_owned())
    }
}

/// `GET <target>` sent to `addr` exactly as written. `addr` must be loopback.
pub async fn get(addr: SocketAddr, target: &str) -> RawResponse {
    assert!(addr.ip().is_loopback(), "raw requests go to loopback only");
    let run = async {
        let mut sock = TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {target} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        sock.write_all(req.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        sock.read_to_end(&mut buf).await.expect("read");
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("no response to GET {target} within 60s"));
    parse(&buf).unwrap_or_else(|| {
        panic!(
            "GET {target}: not an HTTP response: {:?}",
            String::from_utf8_lossy(&buf)
        )
    })
}

fn parse(buf: &[u8]) -> Option<RawResponse> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(RawResponse {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    })
}

#[test]
fn parses_a_response() {
    let r = parse(b"HTTP/1.0 400 Bad Request\r\nContent-Type: a/b\r\n\r\n{\"x\":1}").unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some("a/b"));
    assert_eq!(r.json()["x"], 1);
    assert_eq!(r.contains_any(&[b"zz", b"\"x\""]).as_deref(), Some("\"x\""));
    assert!(r.contains_any(&[b"zz"]).is_none());
    assert!(parse(b"garbage").is_none());
}
