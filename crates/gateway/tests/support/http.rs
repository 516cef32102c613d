//! A minimal HTTP/1.1 client for tests (one request per connection), so the tests depend on
//! nothing but tokio.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;

use cim_auth::{Claims, issue_hs256, now_secs};
use cim_core::TenantId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The HS256 secret the tests' gateways verify tokens with (`CIM_JWT_HS256_SECRET`).
pub const SECRET: &str = "test-secret-test-secret-test-secret!";

/// Request headers carrying credentials.
pub type Auth = Vec<(&'static str, String)>;

/// A bearer token for `subject` in `tenant` with `roles`, valid for ten minutes.
pub fn token(tenant: TenantId, subject: &str, roles: &[&str]) -> Auth {
    let claims = Claims {
        sub: subject.into(),
        tenant: tenant.to_string(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        exp: now_secs() + 600,
        iss: "cim".into(),
        aud: "cim".into(),
    };
    vec![("Authorization", format!("Bearer {}", issue_hs256(SECRET, &claims).unwrap()))]
}

/// A problem+json answer with this status and code.
pub fn problem(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/problem+json"), "{r:?}");
    assert_eq!(r.json()["code"], code, "{r:?}");
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

pub async fn call(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, String)], body: Option<&str>) -> Reply {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let (status, headers, body) = exchange(addr, req, body.unwrap_or_default().as_bytes()).await;
    Reply { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// Sends `head` (the request line and headers, ending in an empty line) and `body`; answers the
/// status, the headers (lower-case names) and the body, de-chunked.
pub async fn exchange(addr: SocketAddr, head: String, body: &[u8]) -> (u16, HashMap<String, String>, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(raw.len());
    let text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = text.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = raw.get(split + 4..).unwrap_or_default();
    let body =
        if headers.get("transfer-encoding").is_some_and(|t| t == "chunked") { dechunk(rest) } else { rest.to_vec() };
    (status, headers, body)
}

fn dechunk(mut s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = s.windows(2).position(|w| w == b"\r\n") {
        let n = std::str::from_utf8(&s[..end]).ok().and_then(|h| usize::from_str_radix(h.trim(), 16).ok()).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&s[end + 2..end + 2 + n]);
        s = &s[end + 4 + n..];
    }
    out
}
