//! Document service benchmark. The service runs as its own process (the `cim-document` binary)
//! against a database created for this run, the local NATS and a fresh object directory; the
//! gateway (for REST) and the load run in this process. Prints one JSON document:
//! - a `CIM_BENCH_DOC_BYTES` (default 1 GiB) upload and download over gRPC (client and server
//!   streaming, 1 MiB chunks made on the fly) and over REST through an in-process gateway (a
//!   streamed `Content-Length` body in 1 MiB writes; a streamed download), each next to a raw
//!   `object_store` put (`put_multipart` + `WriteMultipart`, 8 MiB parts, as the service writes)
//!   or get (as a stream) of as many bytes to the same directory, measured just before it. Each
//!   transport runs `CIM_BENCH_DOC_ROUNDS` (default 3) such rounds and reports the median ratio.
//!   The service's RSS (`VmRSS`, sampled every 50 ms) is compared with its idle after start-up;
//!   every transfer reports its MiB-by-MiB p50/p99 and the CPU that the service, this process and
//!   the machine spent meanwhile;
//! - 4 KiB documents, CreateDocument + UploadContent over gRPC at concurrency 1, 16, 64, next to
//!   the raw Postgres transaction rate (a single-row INSERT + COMMIT into a copy of `events`) at
//!   the same concurrency, in the same run.
//!
//! `cargo bench -p cim-document --bench document` (CIM_BENCH_SECONDS per rate point, default 5).
//! Everything it makes (database, stream, directory under /var/tmp) is named after the run and
//! dropped at the end, also after a panic.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cim_auth::{Claims, issue_hs256, now_secs};
use cim_core::TenantId;
use cim_proto::document as pb;
use cim_proto::document::document_service_client::DocumentServiceClient;
use cim_proto::document::upload_content_request::Part;
use cim_runtime::Shutdown;
use cim_runtime::config::Config;
use cim_testkit::domain::req;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tonic::transport::Channel;

/// The allocator the service binaries use.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MIB: u64 = 1 << 20;
/// The service's part size (`crates/document/src/content.rs`).
const PART_BYTES: usize = 8 << 20;
/// Parts in flight, as the service allows.
const PARTS_IN_FLIGHT: usize = 2;
const SECRET: &str = "bench-secret-bench-secret-bench-secret";
/// Targets of the issue.
const MIN_RATIO: f64 = 0.8;
const MAX_RSS_DELTA_MB: f64 = 64.0;

type Client = DocumentServiceClient<Channel>;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Megabytes (10^6 bytes).
fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Content made on the fly, never held whole: one pseudo-random MiB, copied per chunk with the
/// run, the transfer and the chunk's index stamped into its first 24 bytes, so every transfer of
/// every run has its own bytes (no deduplication) at the cost of a memcpy per MiB.
#[derive(Clone)]
struct Content {
    base: Arc<Vec<u8>>,
    run: u64,
    transfer: u64,
    total: u64,
}

impl Content {
    fn new(base: &Arc<Vec<u8>>, run: u64, transfer: u64, total: u64) -> Self {
        Self { base: base.clone(), run, transfer, total }
    }

    fn chunks(&self) -> u64 {
        self.total.div_ceil(MIB)
    }

    fn chunk(&self, k: u64) -> Vec<u8> {
        let len = (self.total - k * MIB).min(MIB) as usize;
        let mut chunk = self.base[..len].to_vec();
        let stamp: Vec<u8> = [self.run, self.transfer, k].iter().flat_map(|x| x.to_le_bytes()).collect();
        let n = stamp.len().min(len);
        chunk[..n].copy_from_slice(&stamp[..n]);
        chunk
    }
}

/// Samples a process's resident set (`VmRSS`) every 50 ms on its own thread.
struct RssSampler {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// `VmRSS` of `pid` in bytes.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU seconds (user + system, every thread) `pid` has used: `/proc/<pid>/stat` fields 14 and
/// 15, in clock ticks of 1/100 s (`getconf CLK_TCK` on Linux).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The machine's CPU ticks from `/proc/stat`: (busy, stolen by the hypervisor, all).
fn machine_ticks() -> [f64; 3] {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let t: Vec<f64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).take(8).filter_map(|f| f.parse().ok()).collect();
    if t.len() < 8 {
        return [0.0; 3];
    }
    // user nice system idle iowait irq softirq steal
    let all: f64 = t.iter().sum();
    [all - t[3] - t[4] - t[7], t[7], all]
}

/// CPU used over an interval: the service's and this process's seconds, and the share of the
/// machine's two cores that was busy (and stolen).
#[derive(Debug, Clone, Copy, Default)]
struct CpuUse {
    service: f64,
    bench: f64,
    busy: f64,
    steal: f64,
}

impl CpuUse {
    fn json(&self) -> serde_json::Value {
        json!({
            "service_s": round(self.service, 2),
            "bench_process_s": round(self.bench, 2),
            "machine_busy": round(self.busy, 2),
            "machine_steal": round(self.steal, 3),
        })
    }
}

/// Where the CPU counters stood.
struct CpuMark {
    pid: String,
    service: f64,
    bench: f64,
    machine: [f64; 3],
}

impl CpuMark {
    fn now(pid: u32) -> Self {
        let pid = pid.to_string();
        Self { service: cpu_seconds(&pid), bench: cpu_seconds("self"), machine: machine_ticks(), pid }
    }

    fn since(&self) -> CpuUse {
        let m = machine_ticks();
        let all = (m[2] - self.machine[2]).max(1.0);
        CpuUse {
            service: cpu_seconds(&self.pid) - self.service,
            bench: cpu_seconds("self") - self.bench,
            busy: (m[0] - self.machine[0]) / all,
            steal: (m[1] - self.machine[1]) / all,
        }
    }
}

/// Runs `op`, adding the CPU used meanwhile to its transfer.
async fn with_cpu(pid: u32, op: impl Future<Output = Transfer>) -> Transfer {
    let mark = CpuMark::now(pid);
    let mut t = op.await;
    t.cpu = mark.since();
    t
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (samples, stop) = (samples.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss) = rss_bytes(pid) {
                        samples.lock().expect("samples").push((Instant::now(), rss));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Self { samples, stop, thread: Some(thread) }
    }

    fn between(&self, from: Instant, to: Instant) -> Vec<u64> {
        let samples = self.samples.lock().expect("samples");
        samples.iter().filter(|(at, _)| *at >= from && *at <= to).map(|(_, rss)| *rss).collect()
    }

    /// The median of the samples in the last `over` (the process at rest).
    fn idle(&self, over: Duration) -> u64 {
        let now = Instant::now();
        let mut window = self.between(now - over, now);
        window.sort_unstable();
        window.get(window.len() / 2).copied().unwrap_or(0)
    }

    fn peak(&self, from: Instant, to: Instant) -> u64 {
        self.between(from, to).into_iter().max().unwrap_or(0)
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One measured transfer: its bytes, how long it took, and when each MiB went through.
struct Transfer {
    bytes: u64,
    secs: f64,
    /// The time each MiB took (successive intervals).
    per_mib: Vec<f64>,
    /// The CPU used meanwhile.
    cpu: CpuUse,
}

impl Transfer {
    fn mb_per_s(&self) -> f64 {
        mb(self.bytes) / self.secs
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "bytes": self.bytes,
            "seconds": round(self.secs, 3),
            "mb_per_s": round(self.mb_per_s(), 1),
            "per_mib": cim_testkit::bench::percentiles(self.per_mib.clone()),
            "cpu": self.cpu.json(),
        })
    }
}

/// Successive intervals between `began`, the marks, and `ended`, in seconds.
fn intervals(began: Instant, marks: &[Instant], ended: Instant) -> Vec<f64> {
    let mut all = vec![began];
    all.extend_from_slice(marks);
    all.push(ended);
    all.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect()
}

/// Counts bytes as they arrive and marks the instant each MiB boundary is crossed.
struct Counter {
    bytes: u64,
    next: u64,
    marks: Vec<Instant>,
}

impl Counter {
    fn new() -> Self {
        Self { bytes: 0, next: MIB, marks: Vec::new() }
    }

    fn add(&mut self, n: usize) {
        self.bytes += n as u64;
        while self.bytes >= self.next {
            self.marks.push(Instant::now());
            self.next += MIB;
        }
    }
}

async fn raw_put(store: &dyn ObjectStore, path: &Path, content: &Content) -> Transfer {
    let began = Instant::now();
    let mut marks = Vec::new();
    let upload = store.put_multipart(path).await.expect("raw put_multipart");
    let mut parts = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    for k in 0..content.chunks() {
        parts.wait_for_capacity(PARTS_IN_FLIGHT).await.expect("raw part");
        // The cheapest way in through object_store: the chunk handed over, not copied.
        parts.put(bytes::Bytes::from(content.chunk(k)));
        marks.push(Instant::now());
    }
    parts.finish().await.expect("raw finish");
    let ended = Instant::now();
    Transfer {
        bytes: content.total,
        secs: (ended - began).as_secs_f64(),
        per_mib: intervals(began, &marks, ended),
        cpu: CpuUse::default(),
    }
}

async fn raw_get(store: &dyn ObjectStore, path: &Path) -> Transfer {
    let began = Instant::now();
    // The cheapest way out through object_store for a local file: 1 MiB ranged reads (its
    // `into_stream` reads 8 KiB per blocking hop), as the service reads.
    let size = store.head(path).await.expect("raw head").size;
    let mut count = Counter::new();
    let mut at = 0;
    while at < size {
        let upto = (at + MIB).min(size);
        count.add(store.get_range(path, at..upto).await.expect("raw get range").len());
        at = upto;
    }
    let ended = Instant::now();
    Transfer {
        bytes: count.bytes,
        secs: (ended - began).as_secs_f64(),
        per_mib: intervals(began, &count.marks, ended),
        cpu: CpuUse::default(),
    }
}

async fn create(client: &mut Client, tenant: TenantId, title: &str) -> String {
    let r = pb::CreateDocumentRequest { title: title.into(), ..Default::default() };
    client.create_document(req(tenant, r)).await.expect("create document").into_inner().document_id
}

/// Client streaming: `start`, then 1 MiB chunks made as the transport asks for them.
async fn grpc_upload(client: &mut Client, tenant: TenantId, id: &str, content: &Content) -> Transfer {
    let marks = Arc::new(Mutex::new(Vec::new()));
    let start = pb::UploadContentRequest {
        part: Some(Part::Start(pb::UploadStart {
            document_id: id.to_owned(),
            content_type: "application/octet-stream".into(),
            ..Default::default()
        })),
    };
    let chunks = {
        let (content, marks) = (content.clone(), marks.clone());
        futures::stream::iter(0..content.chunks()).map(move |k| {
            marks.lock().expect("marks").push(Instant::now());
            pb::UploadContentRequest { part: Some(Part::Chunk(content.chunk(k))) }
        })
    };
    let messages = futures::stream::once(std::future::ready(start)).chain(chunks);
    let began = Instant::now();
    let done = client.upload_content(req(tenant, messages)).await.expect("gRPC upload").into_inner();
    let ended = Instant::now();
    assert_eq!(done.content_version, 1, "{done:?}");
    // Mark k is when chunk k was asked for: the intervals after the first are the MiB times.
    let marks = marks.lock().expect("marks").clone();
    let per_mib = intervals(began, &marks, ended).into_iter().skip(1).collect();
    Transfer { bytes: content.total, secs: (ended - began).as_secs_f64(), per_mib, cpu: CpuUse::default() }
}

/// Server streaming, the bytes counted and dropped.
async fn grpc_download(client: &mut Client, tenant: TenantId, id: &str) -> Transfer {
    let began = Instant::now();
    let r = pb::DownloadContentRequest { document_id: id.to_owned(), ..Default::default() };
    let mut stream = client.download_content(req(tenant, r)).await.expect("gRPC download").into_inner();
    let mut count = Counter::new();
    while let Some(message) = stream.message().await.expect("gRPC download message") {
        count.add(message.data.len());
    }
    let ended = Instant::now();
    Transfer {
        bytes: count.bytes,
        secs: (ended - began).as_secs_f64(),
        per_mib: intervals(began, &count.marks, ended),
        cpu: CpuUse::default(),
    }
}

/// The status line's code and the headers (lower-case names) of a response on `r`.
async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> (u16, HashMap<String, String>) {
    let mut line = String::new();
    r.read_line(&mut line).await.expect("status line");
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status: {line:?}"));
    let mut headers = HashMap::new();
    loop {
        line.clear();
        r.read_line(&mut line).await.expect("header line");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    (status, headers)
}

/// Reads and counts exactly `n` bytes.
async fn drain<R: AsyncReadExt + Unpin>(r: &mut R, mut n: u64, buf: &mut [u8], count: &mut Counter) {
    while n > 0 {
        let want = n.min(buf.len() as u64) as usize;
        let got = r.read(&mut buf[..want]).await.expect("body");
        assert!(got > 0, "the body ended {n} bytes early");
        count.add(got);
        n -= got as u64;
    }
}

fn http_head(method: &str, path: &str, token: &str, extra: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: cim\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n{extra}\r\n"
    )
}

/// `PUT /api/v1/documents/{id}/content` with a `Content-Length` body written 1 MiB at a time.
async fn rest_upload(gateway: SocketAddr, token: &str, id: &str, content: &Content) -> Transfer {
    let began = Instant::now();
    let mut s = tokio::net::TcpStream::connect(gateway).await.expect("connect to the gateway");
    s.set_nodelay(true).expect("nodelay");
    let extra = format!("Content-Type: application/octet-stream\r\nContent-Length: {}\r\n", content.total);
    s.write_all(http_head("PUT", &format!("/api/v1/documents/{id}/content"), token, &extra).as_bytes())
        .await
        .expect("request head");
    let mut marks = Vec::new();
    for k in 0..content.chunks() {
        s.write_all(&content.chunk(k)).await.expect("request body");
        marks.push(Instant::now());
    }
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await.expect("reply");
    let ended = Instant::now();
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("HTTP/1.1 200"), "REST upload: {text}");
    assert!(text.contains(r#""content_version":1"#), "REST upload: {text}");
    Transfer {
        bytes: content.total,
        secs: (ended - began).as_secs_f64(),
        per_mib: intervals(began, &marks, ended),
        cpu: CpuUse::default(),
    }
}

/// `GET /api/v1/documents/{id}/content`, the body (sized or chunked) counted and dropped.
async fn rest_download(gateway: SocketAddr, token: &str, id: &str) -> Transfer {
    let began = Instant::now();
    let mut s = tokio::net::TcpStream::connect(gateway).await.expect("connect to the gateway");
    s.set_nodelay(true).expect("nodelay");
    s.write_all(http_head("GET", &format!("/api/v1/documents/{id}/content"), token, "").as_bytes())
        .await
        .expect("request");
    let mut r = BufReader::with_capacity(256 * 1024, s);
    let (status, headers) = read_head(&mut r).await;
    assert_eq!(status, 200, "REST download: {headers:?}");
    let mut count = Counter::new();
    let mut buf = vec![0u8; 256 * 1024];
    if let Some(len) = headers.get("content-length") {
        drain(&mut r, len.parse().expect("content-length"), &mut buf, &mut count).await;
    } else {
        assert_eq!(headers.get("transfer-encoding").map(String::as_str), Some("chunked"), "{headers:?}");
        let mut line = String::new();
        loop {
            line.clear();
            r.read_line(&mut line).await.expect("chunk size");
            let size = line.trim().split(';').next().unwrap_or("");
            let n = u64::from_str_radix(size, 16).unwrap_or_else(|_| panic!("chunk size {line:?}"));
            if n == 0 {
                break;
            }
            drain(&mut r, n, &mut buf, &mut Counter::new()).await;
            count.add(n as usize);
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf).await.expect("chunk end");
        }
    }
    let ended = Instant::now();
    Transfer {
        bytes: count.bytes,
        secs: (ended - began).as_secs_f64(),
        per_mib: intervals(began, &count.marks, ended),
        cpu: CpuUse::default(),
    }
}

/// A line on stderr (the report alone goes to stdout).
fn progress(what: &str) {
    let _ = writeln!(std::io::stderr().lock(), "document bench: {what}");
}

/// Writes dirty pages back (`sync`) and lets the machine calm down for a second.
async fn settle() {
    let _ = tokio::process::Command::new("sync").status().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A loopback port that was free a moment ago (the child binds it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// `GET /health/ready` on the admin listener: the status code.
async fn ready(admin: SocketAddr) -> Option<u16> {
    let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
    s.write_all(b"GET /health/ready HTTP/1.1\r\nHost: cim\r\nConnection: close\r\n\r\n").await.ok()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).await.ok()?;
    line.split(' ').nth(1)?.parse().ok()
}

/// `base` (a postgres:// URL) naming database `db` instead.
fn with_database(base: &str, db: &str) -> String {
    let (url, query) = base.split_once('?').map_or((base, None), |(u, q)| (u, Some(q)));
    let (server, _) = url.rsplit_once('/').expect("a postgres:// URL with a database");
    match query {
        Some(q) => format!("{server}/{db}?{q}"),
        None => format!("{server}/{db}"),
    }
}

/// Upload then download of one size over one transport, each next to the raw operation made just
/// before it, with the service's RSS.
struct Pair {
    raw_put: Transfer,
    upload: Transfer,
    raw_get: Transfer,
    download: Transfer,
    /// Before the upload and the download: the median RSS of the second before (what the
    /// allocator kept from the step before, not necessarily the idle of a fresh process).
    before: [u64; 2],
    /// During the upload and the download.
    peak: [u64; 2],
}

impl Pair {
    fn upload_ratio(&self) -> f64 {
        round(self.upload.mb_per_s() / self.raw_put.mb_per_s(), 3)
    }

    fn download_ratio(&self) -> f64 {
        round(self.download.mb_per_s() / self.raw_get.mb_per_s(), 3)
    }

    /// The largest RSS above the service's idle after start-up, in MB.
    fn peak_over(&self, idle: u64) -> f64 {
        round(mb(self.peak.iter().max().copied().unwrap_or(0).saturating_sub(idle)), 1)
    }

    fn json(&self, startup_idle: u64) -> serde_json::Value {
        let rss = |i: usize| {
            json!({
                "idle_mb": round(mb(startup_idle), 1),
                "before_mb": round(mb(self.before[i]), 1),
                "peak_mb": round(mb(self.peak[i]), 1),
                "peak_minus_idle_mb": round(mb(self.peak[i]) - mb(startup_idle), 1),
            })
        };
        json!({
            "upload": {"service": self.upload.json(), "raw_put": self.raw_put.json(), "rss": rss(0)},
            "download": {"service": self.download.json(), "raw_get": self.raw_get.json(), "rss": rss(1)},
            "upload_over_raw_put": self.upload_ratio(),
            "download_over_raw_get": self.download_ratio(),
        })
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The rounds of one transport: each pair compared with its own raw operations; the median
/// ratio is the result (single pairs swing with the machine's other work).
struct Rounds(Vec<Pair>);

impl Rounds {
    fn upload_ratio(&self) -> f64 {
        median(self.0.iter().map(Pair::upload_ratio).collect())
    }

    fn download_ratio(&self) -> f64 {
        median(self.0.iter().map(Pair::download_ratio).collect())
    }

    /// The highest RSS of every round above the idle after start-up, in MB.
    fn peak_over(&self, idle: u64) -> f64 {
        self.0.iter().map(|p| p.peak_over(idle)).fold(0.0, f64::max)
    }

    fn json(&self, startup_idle: u64) -> serde_json::Value {
        let rate = |f: fn(&Pair) -> &Transfer| round(median(self.0.iter().map(|p| f(p).mb_per_s()).collect()), 1);
        json!({
            "median": {
                "upload_mb_per_s": rate(|p| &p.upload),
                "raw_put_mb_per_s": rate(|p| &p.raw_put),
                "upload_over_raw_put": self.upload_ratio(),
                "download_mb_per_s": rate(|p| &p.download),
                "raw_get_mb_per_s": rate(|p| &p.raw_get),
                "download_over_raw_get": self.download_ratio(),
            },
            "peak_rss_minus_idle_mb": self.peak_over(startup_idle),
            "rounds": self.0.iter().map(|p| p.json(startup_idle)).collect::<Vec<_>>(),
        })
    }
}

/// What this run creates and must drop: its database, stream prefix and object directory.
struct Run {
    tag: String,
    database: String,
    prefix: String,
    objects: std::path::PathBuf,
    base_url: String,
    database_url: String,
    nats_url: String,
}

#[tokio::main]
async fn main() {
    let started = Instant::now();
    let secs: f64 = env("CIM_BENCH_SECONDS", "5").parse().expect("CIM_BENCH_SECONDS");
    let size: u64 = env("CIM_BENCH_DOC_BYTES", "1073741824").parse().expect("CIM_BENCH_DOC_BYTES");
    let rounds: usize = env("CIM_BENCH_DOC_ROUNDS", "3").parse().expect("CIM_BENCH_DOC_ROUNDS");
    assert!(rounds > 0, "CIM_BENCH_DOC_ROUNDS must be at least 1");
    let tag = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    let base_url = env("CIM_TEST_DATABASE_URL", "postgres://postgres:postgres@127.0.0.1:5432/postgres");
    let database = format!("bench_doc_{tag}");
    let run = Arc::new(Run {
        database_url: with_database(&base_url, &database),
        database,
        prefix: format!("benchd{tag}"),
        objects: std::path::PathBuf::from("/var/tmp").join(format!("cim-bench-doc-{tag}")),
        base_url,
        nats_url: env("CIM_TEST_NATS_URL", "nats://127.0.0.1:4222"),
        tag,
    });

    // A database of this run's own: the binary uses schema `document`.
    let admin_pool =
        sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&run.base_url).await.expect("postgres");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {}", run.database)))
        .execute(&admin_pool)
        .await
        .expect("create database");
    admin_pool.close().await;

    // Whatever happens in the bench (a panic included), what it made is dropped after.
    let outcome = tokio::spawn(bench(run.clone(), secs, size, rounds)).await;
    clean_up(&run).await;
    match outcome {
        Ok(mut report) => {
            report["run_seconds"]["total"] = json!(round(started.elapsed().as_secs_f64(), 1));
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        }
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("bench: {e}"),
        },
    }
}

/// The run's stream(s), database and object directory.
async fn clean_up(run: &Run) {
    if let Ok(nats) = cim_runtime::nats::connect(&cim_runtime::nats::NatsSettings {
        url: run.nats_url.clone(),
        client_name: "bench".into(),
        connect_timeout: Duration::from_secs(5),
        security: Default::default(),
    })
    .await
    {
        let js = cim_runtime::nats::jetstream(nats);
        let stem = format!("{}_", run.prefix.to_ascii_uppercase());
        let names: Vec<String> = js.stream_names().filter_map(|n| std::future::ready(n.ok())).collect().await;
        for name in names.iter().filter(|n| n.starts_with(&stem)) {
            let _ = js.delete_stream(name).await;
        }
    }
    if let Ok(admin_pool) = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&run.base_url).await {
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", run.database);
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin_pool).await;
        admin_pool.close().await;
    }
    let _ = std::fs::remove_dir_all(&run.objects);
}

async fn bench(run: Arc<Run>, secs: f64, size: u64, rounds: usize) -> serde_json::Value {
    let (tag, prefix, objects, nats_url, database_url) =
        (&run.tag, &run.prefix, &run.objects, &run.nats_url, &run.database_url);
    // The service, as its own process.
    let (grpc, admin) =
        (SocketAddr::from(([127, 0, 0, 1], free_port())), SocketAddr::from(([127, 0, 0, 1], free_port())));
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_cim-document"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CIM_")) {
        command.env_remove(k);
    }
    let stderr = std::os::fd::AsFd::as_fd(&std::io::stderr()).try_clone_to_owned().expect("stderr");
    let mut child = command
        .env("CIM_DATABASE_URL", database_url)
        // The database server is shared: 32 here leaves room for the raw points' 64 connections.
        .env("CIM_DATABASE_MAX_CONNECTIONS", "32")
        .env("CIM_NATS_URL", nats_url)
        .env("CIM_SUBJECT_PREFIX", prefix)
        .env("CIM_DOCUMENT_ADDR", grpc.to_string())
        .env("CIM_DOCUMENT_ADMIN_ADDR", admin.to_string())
        .env("CIM_OBJECT_STORE_URL", objects.display().to_string())
        .env("CIM_DOCUMENT_MAX_CONTENT_BYTES", (size.max(1 << 20) * 2).to_string())
        .env("CIM_SHUTDOWN_GRACE_MS", "2000")
        .env("CIM_LOG", "error")
        // Its log lines must not mix with the report on stdout.
        .stdout(std::process::Stdio::from(stderr))
        .kill_on_drop(true)
        .spawn()
        .expect("start cim-document");
    let pid = child.id().expect("pid");
    let rss = RssSampler::start(pid);
    let boot = Instant::now();
    while ready(admin).await != Some(200) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("cim-document exited before it was ready: {status}");
        }
        assert!(boot.elapsed() < Duration::from_secs(60), "cim-document not ready within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_secs = boot.elapsed().as_secs_f64();

    // The gateway, in this process, in front of it.
    let gateway_vars: HashMap<&str, String> = HashMap::from([
        ("CIM_NATS_URL", nats_url.clone()),
        ("CIM_SUBJECT_PREFIX", prefix.clone()),
        ("CIM_GATEWAY_ADDR", "127.0.0.1:0".into()),
        ("CIM_GATEWAY_ADMIN_ADDR", "127.0.0.1:0".into()),
        ("CIM_GATEWAY_DOCUMENT_URLS", format!("http://{grpc}")),
        // Unused here; named so that the gateway never reaches for a CIM on the default port.
        ("CIM_GATEWAY_GRAPH_URLS", format!("http://{grpc}")),
        ("CIM_JWT_HS256_SECRET", SECRET.into()),
        ("CIM_SHUTDOWN_GRACE_MS", "1000".into()),
        ("CIM_LOG", "error".into()),
    ]);
    let gateway_config = Config::from_lookup(&|k| gateway_vars.get(k).cloned()).expect("gateway config");
    let gateway_stop = Shutdown::new();
    let gateway = cim_gateway::app::prepare(&gateway_config, &gateway_stop).await.expect("gateway");
    let gateway_addr = gateway.addr;
    let gateway_task = tokio::spawn(async move { gateway.run().await.expect("gateway ran") });

    let tenant = TenantId::new();
    let claims = Claims {
        sub: "bench".into(),
        tenant: tenant.to_string(),
        roles: vec!["writer".into(), "reader".into()],
        exp: now_secs() + 3600,
        iss: "cim".into(),
        aud: "cim".into(),
    };
    let token = issue_hs256(SECRET, &claims).expect("token");

    // Several HTTP/2 connections: one per 16 clients.
    let mut channels = Vec::new();
    for _ in 0..4 {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .expect("endpoint")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect");
        channels.push(ch);
    }
    let client = |i: usize| DocumentServiceClient::new(channels[i % channels.len()].clone());

    // The raw baseline: the same object directory, from this process.
    let raw_store = object_store::local::LocalFileSystem::new_with_prefix(objects).expect("raw store");
    let mut rng = cim_testkit::bench::Rng(u64::from_str_radix(tag, 16).unwrap_or(7));
    let base: Arc<Vec<u8>> = Arc::new((0..MIB / 8).flat_map(|_| rng.next().to_le_bytes()).collect());
    let run = rng.next();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let startup_idle = rss.idle(Duration::from_secs(1));
    let transfers_started = Instant::now();
    // Unmeasured: the raw path once, so that the first measured put does not pay for a cold
    // directory and page cache.
    let warm = Path::from(format!("raw-bench/{tag}-warm-up"));
    raw_put(&raw_store, &warm, &Content::new(&base, run, 0, size.min(256 * MIB))).await;
    raw_get(&raw_store, &warm).await;
    raw_store.delete(&warm).await.expect("raw delete");
    let mut transports = Vec::new();
    for (t, transport) in [(1u64, "grpc"), (2, "rest")] {
        let mut pairs = Vec::new();
        for round in 0..rounds as u64 {
            let transfer = t * 100 + round;
            // Each pair starts with no dirty pages of the one before waiting to be written back.
            settle().await;
            let raw_path = Path::from(format!("raw-bench/{tag}-{transfer}"));
            progress(&format!("{transport} round {round}: raw put"));
            let raw_put =
                with_cpu(pid, raw_put(&raw_store, &raw_path, &Content::new(&base, run, 1000 + transfer, size))).await;
            let mut c = client(0);
            let id = create(&mut c, tenant, &format!("bench {transport} {round}")).await;
            let content = Content::new(&base, run, transfer, size);
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before_up = rss.idle(Duration::from_secs(1));
            progress(&format!("{transport} round {round}: upload"));
            let t0 = Instant::now();
            let upload = match transport {
                "grpc" => with_cpu(pid, grpc_upload(&mut c, tenant, &id, &content)).await,
                _ => with_cpu(pid, rest_upload(gateway_addr, &token, &id, &content)).await,
            };
            tokio::time::sleep(Duration::from_millis(100)).await;
            let peak_up = rss.peak(t0, Instant::now());

            progress(&format!("{transport} round {round}: raw get"));
            let raw_get = with_cpu(pid, raw_get(&raw_store, &raw_path)).await;
            assert_eq!(raw_get.bytes, size, "raw get");
            raw_store.delete(&raw_path).await.expect("raw delete");
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before_down = rss.idle(Duration::from_secs(1));
            progress(&format!("{transport} round {round}: download"));
            let t0 = Instant::now();
            let download = match transport {
                "grpc" => with_cpu(pid, grpc_download(&mut c, tenant, &id)).await,
                _ => with_cpu(pid, rest_download(gateway_addr, &token, &id)).await,
            };
            tokio::time::sleep(Duration::from_millis(100)).await;
            let peak_down = rss.peak(t0, Instant::now());
            assert_eq!(download.bytes, size, "{transport} download");
            progress(&format!("{transport} round {round}: done"));
            // The content is not read again: its files go (unwritten pages with them), so that
            // the next pair and the small documents do not wait behind their writeback.
            let _ = std::fs::remove_dir_all(objects.join("blobs"));
            pairs.push(Pair {
                raw_put,
                upload,
                raw_get,
                download,
                before: [before_up, before_down],
                peak: [peak_up, peak_down],
            });
        }
        transports.push(Rounds(pairs));
    }
    let transfers_secs = transfers_started.elapsed().as_secs_f64();

    // 4 KiB documents: create + upload, next to raw transactions.
    settle().await;
    let small_started = Instant::now();
    let raw_pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(database_url).await.expect("pool");
    cim_testkit::bench::RawEvents::create_table(&raw_pool, "public.raw_events", "document.events").await;
    raw_pool.close().await;
    let small = Arc::new(base[..4096].to_vec());
    // The raw points first, all three: this database server is shared (max_connections, other
    // clients), and 64 raw connections fit beside the service's pool only while that is idle.
    let mut raws = Vec::new();
    for c in [1usize, 16, 64] {
        let pool =
            sqlx::postgres::PgPoolOptions::new().max_connections(c as u32).connect(database_url).await.expect("pool");
        progress(&format!("small documents: raw transactions, c={c}"));
        let mark = CpuMark::now(pid);
        let raw_events = cim_testkit::bench::RawEvents {
            table: "public.raw_events",
            shape: ("document", "document_created", r#"{"title":"bench","description":"","tags":[],"metadata":{}}"#),
        };
        let raw = raw_events.rate(&pool, c, Duration::from_millis(500), secs).await;
        raws.push((raw, mark.since()));
    }
    let small_rss_from = Instant::now();
    let mut points = Vec::new();
    for (c, (raw, raw_cpu)) in [1usize, 16, 64].into_iter().zip(raws) {
        progress(&format!("small documents: create + upload, c={c}"));
        let mark = CpuMark::now(pid);
        let clients: Arc<Vec<Client>> = Arc::new((0..c).map(client).collect());
        let small = small.clone();
        let docs = cim_testkit::bench::rate(c, Duration::from_millis(500), secs, move |w, i| {
            let (clients, small) = (clients.clone(), small.clone());
            async move {
                let mut cl = clients[w].clone();
                let id = create(&mut cl, tenant, "small").await;
                let mut bytes = small.to_vec();
                let stamp: Vec<u8> = [run, c as u64, w as u64, i].iter().flat_map(|x| x.to_le_bytes()).collect();
                bytes[..stamp.len()].copy_from_slice(&stamp);
                let start = pb::UploadContentRequest {
                    part: Some(Part::Start(pb::UploadStart { document_id: id, ..Default::default() })),
                };
                let messages = vec![start, pb::UploadContentRequest { part: Some(Part::Chunk(bytes)) }];
                cl.upload_content(req(tenant, futures::stream::iter(messages))).await.expect("small upload");
            }
        })
        .await;
        let docs_cpu = mark.since();
        points.push(json!({
            "concurrency": c,
            "documents_per_s": docs.per_s.round(),
            "raw_tx_per_s": raw.per_s.round(),
            "documents_over_raw_tx": round(docs.per_s / raw.per_s, 3),
            "create_and_upload": docs.json(),
            "raw_tx": raw.json(),
            "cpu": {"create_and_upload": docs_cpu.json(), "raw_tx": raw_cpu.json()},
        }));
    }
    let small_peak = rss.peak(small_rss_from, Instant::now());
    let small_secs = small_started.elapsed().as_secs_f64();

    let (grpc_rounds, rest_rounds) = (&transports[0], &transports[1]);
    let target = |measured: f64| json!({"target": MIN_RATIO, "measured": measured, "met": measured >= MIN_RATIO});
    let rss_target =
        |measured: f64| json!({"target": MAX_RSS_DELTA_MB, "measured": measured, "met": measured <= MAX_RSS_DELTA_MB});
    let report = json!({
        "bench": "document",
        "seconds_per_point": secs,
        "transfer_bytes": size,
        "service": {
            "process": "cim-document (own process)",
            "ready_seconds": round(ready_secs, 2),
            "startup_idle_rss_mb": round(mb(startup_idle), 1),
        },
        "rounds_per_transport": rounds,
        "grpc": grpc_rounds.json(startup_idle),
        "rest": rest_rounds.json(startup_idle),
        "small_documents_4kib": points,
        "small_documents_peak_rss_mb": round(mb(small_peak), 1),
        "run_seconds": {
            "transfers": round(transfers_secs, 1),
            "small_documents": round(small_secs, 1),
        },
        "targets": {
            "grpc_upload_over_raw_put": target(grpc_rounds.upload_ratio()),
            "grpc_download_over_raw_get": target(grpc_rounds.download_ratio()),
            "rest_upload_over_raw_put": target(rest_rounds.upload_ratio()),
            "rest_download_over_raw_get": target(rest_rounds.download_ratio()),
            "grpc_rss_over_idle_mb": rss_target(grpc_rounds.peak_over(startup_idle)),
            "rest_rss_over_idle_mb": rss_target(rest_rounds.peak_over(startup_idle)),
        },
    });

    // Stop the gateway and the service.
    gateway_stop.trigger();
    let _ = gateway_task.await;
    drop(channels);
    let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
    if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
    rss.stop();
    report
}
