//! The peer: a private `nats-server` with JetStream (in a temporary directory) and its own
//! websocket listener, and a bench client that speaks the NATS text protocol over websocket
//! (`CONNECT`, `SUB`, `PING`/`PONG`, `MSG`), as a browser subscribing to NATS directly would.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{Seen, free_port, masked_frame, server_frame};

/// `nats-server` as the Debian package installs it; `CIM_BENCH_NATS_SERVER` overrides.
const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A `nats-server` of this run only: client port, websocket port, JetStream in `dir`.
pub struct PrivateNats {
    pub child: tokio::process::Child,
    pub pid: u32,
    pub url: String,
    pub ws_addr: String,
    dir: std::path::PathBuf,
}

impl PrivateNats {
    pub async fn start() -> PrivateNats {
        let (port, ws_port) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(super::unique("natspeer"));
        std::fs::create_dir_all(dir.join("js")).expect("nats temp dir");
        let config = format!(
            "listen: \"127.0.0.1:{port}\"\n\
             server_name: \"cim-bench-peer\"\n\
             jetstream {{ store_dir: \"{js}\" }}\n\
             websocket {{ host: \"127.0.0.1\", port: {ws_port}, no_tls: true }}\n",
            js = dir.join("js").display()
        );
        let conf = dir.join("nats.conf");
        std::fs::write(&conf, config).expect("nats config");
        let binary = std::env::var("CIM_BENCH_NATS_SERVER").unwrap_or_else(|_| NATS_SERVER.to_owned());
        let child = tokio::process::Command::new(&binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{binary} starts: {e}"));
        let pid = child.id().expect("nats pid");
        let (url, ws_addr) = (format!("nats://127.0.0.1:{port}"), format!("127.0.0.1:{ws_port}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = async_nats::connect(url.as_str()).await.is_ok() && TcpStream::connect(&ws_addr).await.is_ok();
            if up {
                break;
            }
            assert!(Instant::now() < deadline, "the private nats-server did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        PrivateNats { child, pid, url, ws_addr, dir }
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One NATS protocol message at the start of `buf`, if complete.
enum Op<'a> {
    /// A delivered message's payload (after any headers).
    Msg(&'a [u8]),
    Ping,
    Pong,
    Err(String),
    Other,
}

/// Parses one operation; `None` until it is complete. Returns the operation and its length.
fn next_op(buf: &[u8]) -> Option<(Op<'_>, usize)> {
    let eol = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&buf[..eol]).unwrap_or_default();
    let body = eol + 2;
    let mut words = line.split_ascii_whitespace();
    let op = words.next().unwrap_or_default();
    if op.eq_ignore_ascii_case("MSG") || op.eq_ignore_ascii_case("HMSG") {
        let sizes: Vec<usize> = line.split_ascii_whitespace().rev().map_while(|w| w.parse().ok()).collect();
        // MSG <subject> <sid> [reply] <total>; HMSG <subject> <sid> [reply] <header> <total>.
        let (header, total) = match op.eq_ignore_ascii_case("HMSG") {
            true => (*sizes.get(1)?, *sizes.first()?),
            false => (0, *sizes.first()?),
        };
        let end = body + total + 2;
        return (buf.len() >= end).then(|| (Op::Msg(&buf[body + header..body + total]), end));
    }
    let parsed = match op.to_ascii_uppercase().as_str() {
        "PING" => Op::Ping,
        "PONG" => Op::Pong,
        "-ERR" => Op::Err(line.to_owned()),
        _ => Op::Other,
    };
    Some((parsed, body))
}

/// A browser's view of NATS over websocket: subscribes to `subject` and records each message as
/// the CIM bench client records an event frame (event id, when read, every tenth frame's age).
pub async fn client(
    addr: String,
    subject: String,
    ready: Arc<AtomicU64>,
    got: Arc<AtomicU64>,
    stop: CancellationToken,
) -> Seen {
    let mut seen = Seen::default();
    let Ok(mut tcp) = TcpStream::connect(&addr).await else {
        seen.closed = Some("connect failed".into());
        return seen;
    };
    let _ = tcp.set_nodelay(true);
    let handshake = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    // No headers asked for: the client gets the payload, as CIM's client gets the envelope.
    let hello = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":false,\"protocol\":1,\"name\":\"bench\"}}\r\n\
         SUB {subject} 1\r\nPING\r\n"
    );
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let upgraded = async {
        tcp.write_all(handshake.as_bytes()).await?;
        loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                if !buf.starts_with(b"HTTP/1.1 101") {
                    return Err(std::io::Error::other(String::from_utf8_lossy(&buf[..i]).to_string()));
                }
                buf.drain(..i + 4);
                break;
            }
            if tcp.read_buf(&mut buf).await? == 0 {
                return Err(std::io::Error::other("closed during the handshake"));
            }
        }
        tcp.write_all(&masked_frame(2, hello.as_bytes())).await
    };
    if let Err(e) = upgraded.await {
        seen.closed = Some(format!("handshake: {e}"));
        return seen;
    }
    // The NATS byte stream, reassembled from the websocket frames' payloads.
    let mut proto: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut subscribed = false;
    'read: loop {
        let mut consumed = 0;
        while let Some((opcode, payload, len)) = server_frame(&buf[consumed..]) {
            let payload = consumed + payload.start..consumed + payload.end;
            match opcode {
                0..=2 => proto.extend_from_slice(&buf[payload]),
                9 if tcp.write_all(&masked_frame(10, &buf[payload.clone()])).await.is_err() => {
                    seen.closed = Some("pong failed".into());
                    break 'read;
                }
                8 => {
                    seen.closed = Some(format!("close frame {:?}", String::from_utf8_lossy(&buf[payload])));
                    break 'read;
                }
                _ => {}
            }
            consumed += len;
        }
        buf.drain(..consumed);
        let now = Instant::now();
        let mut used = 0;
        while let Some((op, len)) = next_op(&proto[used..]) {
            match op {
                Op::Msg(payload) => {
                    let text = std::str::from_utf8(payload).unwrap_or_default();
                    // Each client follows one aggregate, whose sequence grows by one per event.
                    seen.event(text, r#""sequence":"#, now, payload.len());
                    got.fetch_add(1, Ordering::Relaxed);
                }
                Op::Ping => {
                    if tcp.write_all(&masked_frame(2, b"PONG\r\n")).await.is_err() {
                        seen.closed = Some("PONG failed".into());
                        break 'read;
                    }
                }
                // The answer to the PING after SUB: the subscription is in place.
                Op::Pong if !subscribed => {
                    subscribed = true;
                    ready.fetch_add(1, Ordering::Relaxed);
                }
                Op::Err(e) => {
                    seen.closed = Some(e);
                    break 'read;
                }
                Op::Pong | Op::Other => {}
            }
            used += len;
        }
        proto.drain(..used);
        if let Err(why) = super::read_more(&mut tcp, &mut buf, &stop).await {
            seen.closed = why;
            break;
        }
    }
    let _ = tcp.write_all(&masked_frame(8, &1000u16.to_be_bytes())).await;
    seen
}
