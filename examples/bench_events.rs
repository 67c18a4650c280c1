//! Event benchmarks against real `smartbot serve` processes over real sockets.
//!
//!     cargo build --release && cargo build --release --example bench_events
//!     target/release/examples/bench_events fanout  [subscribers=10000] [events=5]
//!     target/release/examples/bench_events fanout-distinct [subscribers=10000] [events=5]
//!     target/release/examples/bench_events latency [subscribers=100] [rate=1000] [seconds=10]
//!     target/release/examples/bench_events latency-redis [subscribers=100] [rate=1000] [seconds=10]
//!     target/release/examples/bench_events emit|emit-postgres [writers=8] [seconds=5]
//!
//! * `fanout`: N graphql-transport-ws subscribers on one instance (embedded SQLite, local bus).
//!   It reports the server's resident memory per idle subscriber, then emits events one at a
//!   time and reports, for each, the delay from the emit request until each subscriber has it
//!   (p50, p99, max over all subscribers), and the CPU time per delivery of the server and of
//!   the clients while events were on their way, and the share of the machine's CPU time that
//!   the hypervisor stole meanwhile (`steal_pct`). All subscribers send the same subscription, so
//!   the server runs it once (`graphql::shared`).
//! * `fanout-distinct`: the same, but each subscription under its own operation name: nothing
//!   is shared, every subscriber has an execution of its own (the server's worst case).
//! * `latency`: `rate` events per second for `seconds`, emitted over REST, with 100 subscribers
//!   on the same instance. It reports emit-to-subscriber p50 and p99. A first second at the same
//!   rate warms up and is reported apart (`warmup_p99_ms`; `cold_p99_ms` covers both). Second by
//!   second it also reports the p99 of the emit requests (`emit_p99_ms_by_second`) and of the
//!   frames' arrival in the sockets (`arrival_p99_ms_by_second`), and the machine's idle, I/O
//!   wait and stolen time (`machine`): a slow second shows whether the emit path, the receiving
//!   side or the host (steal, on a virtual machine) was slow.
//! * `latency-redis`: the same with two instances sharing PostgreSQL (`TEST_POSTGRES_URL`) and Redis
//!   (`TEST_REDIS_URL`). Events are emitted through A and received on B.
//! * `emit` / `emit-postgres`: emit throughput, `writers` HTTP emitters each sending its next
//!   event when the last returns, on the embedded SQLite or a scratch PostgreSQL database
//!   (`TEST_POSTGRES_URL`). Reports events per second and the emit p50 and p99.
//!
//! The server binary is `target/release/smartbot` (override it with `SMARTBOT_BIN`). The clients
//! run in this process, on the same 2 cores: each connection is opened and subscribed with
//! tokio-tungstenite, then one thread reads every socket with `epoll` ([`raw`]). Each line printed
//! is one JSON measurement.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

mod common;

use futures::{SinkExt, StreamExt};
use serde_json::json;
use smartbot::auth::{Role, token::TokenKeys};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};

const SECRET: &str = "bench-events-secret-0123456789abcdef";
const SUB: &str = "subscription { events(types: [BOT_CONNECTED]) { id payload } }";

struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn server_bin() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("SMARTBOT_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join("smartbot")
}

async fn start(env: &[(&str, String)]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = Command::new(server_bin());
    cmd.arg("serve")
        .env("PORT", port.to_string())
        .env("BIND_ADDR", "127.0.0.1")
        .env("DATA_DIR", dir.path())
        .env("JWT_SECRET", SECRET)
        .env("RATE_LIMIT", "off")
        .env("WS_MAX_OPERATIONS", "100")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .expect("start target/release/smartbot (cargo build --release)");
    let server = Server {
        child,
        port,
        _dir: dir,
    };
    let health = format!("http://127.0.0.1:{port}/health");
    let client = reqwest::Client::new();
    for _ in 0..600 {
        if client
            .get(&health)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return server;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server did not come up on {port}");
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) that a process (a pid, or `self`) has used so far, in ms. The
/// fields of `/proc/<pid>/stat` count in USER_HZ, 100 a second on Linux.
fn cpu_ms(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name is in parentheses and may hold spaces; utime and stime are the 12th and
    // 13th fields after it.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 * 10.0
}

/// The whole machine's CPU while the benchmark emits, from the `cpu` line of `/proc/stat`:
/// per second, the ms that were idle, waiting for I/O, and stolen by the hypervisor (of 1,000 per
/// core a second). On a virtual machine a tail can come from the host taking the CPU away;
/// `steal` tells such a run from one where this machine's own processes were slow.
struct Machine {
    by_second: Vec<[u64; 3]>,
}

impl Machine {
    /// Samples every second until `stop`.
    fn sample(stop: &AtomicBool) -> Self {
        let mut by_second = Vec::new();
        let mut last = Self::read();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(1));
            let now = Self::read();
            by_second.push(Self::between(&last, &now));
            last = now;
        }
        Self { by_second }
    }

    /// The `cpu` line's counters: user nice system idle iowait irq softirq steal …, in USER_HZ
    /// (100 a second).
    fn read() -> Vec<u64> {
        std::fs::read_to_string("/proc/stat")
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect()
    }

    /// Idle, I/O wait and stolen ms between two readings.
    fn between(from: &[u64], to: &[u64]) -> [u64; 3] {
        let ms = |i: usize| {
            let at = |v: &[u64]| v.get(i).copied().unwrap_or(0);
            at(to).saturating_sub(at(from)) * 10
        };
        [ms(3), ms(4), ms(7)]
    }

    /// The share of all the cores' time that the hypervisor stole, in %, over `secs` seconds
    /// that had `stolen_ms` stolen.
    fn pct_of_cores(stolen_ms: u64, secs: f64) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let total = secs * cores * 1000.0;
        if total <= 0.0 {
            return 0.0;
        }
        (stolen_ms as f64 / total * 1000.0).round() / 10.0
    }

    fn steal_pct(&self) -> f64 {
        let stolen: u64 = self.by_second.iter().map(|s| s[2]).sum();
        Self::pct_of_cores(stolen, self.by_second.len() as f64)
    }

    fn json(&self) -> serde_json::Value {
        let column = |i: usize| self.by_second.iter().map(|s| s[i]).collect::<Vec<_>>();
        json!({
            "steal_pct": self.steal_pct(),
            "idle_ms_by_second": column(0),
            "iowait_ms_by_second": column(1),
            "steal_ms_by_second": column(2),
        })
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn token() -> String {
    TokenKeys::new(SECRET.as_bytes())
        .issue("bench", Role::Admin, None, Duration::from_secs(3600))
        .unwrap()
}

/// `{"payload":{"data":{"events":{"payload":{"reason": …}}}}}` of a `next` frame.
#[derive(serde::Deserialize)]
struct Next<'a> {
    #[serde(borrow)]
    payload: NextPayload<'a>,
}
#[derive(serde::Deserialize)]
struct NextPayload<'a> {
    #[serde(borrow)]
    data: NextData<'a>,
}
#[derive(serde::Deserialize)]
struct NextData<'a> {
    #[serde(borrow)]
    events: NextEvent<'a>,
}
#[derive(serde::Deserialize)]
struct NextEvent<'a> {
    #[serde(borrow)]
    payload: Reason<'a>,
}
#[derive(serde::Deserialize)]
struct Reason<'a> {
    reason: &'a str,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects, initialises with `token` and subscribes with `query`; returns once the server
/// acknowledged the connection and the subscribe frame is sent.
async fn handshake(port: u16, token: &str, query: String) -> Socket {
    let mut req = format!("ws://127.0.0.1:{port}/graphql/ws")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    // tungstenite's default client reads into a zeroed 128 KiB buffer per socket: with 10,000
    // sockets that memset took most of this process's CPU and measured the client, not the
    // server. Frames here are small; the buffer grows when one is not.
    let config =
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) = loop {
        match tokio_tungstenite::connect_async_with_config(req.clone(), Some(config), true).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let init = json!({ "type": "connection_init", "payload": { "token": token } });
    ws.send(Message::text(init.to_string())).await.unwrap();
    loop {
        if let Some(Ok(Message::Text(t))) = ws.next().await
            && t.contains("connection_ack")
        {
            break;
        }
    }
    let sub = json!({ "type": "subscribe", "id": "1", "payload": { "query": query } });
    ws.send(Message::text(sub.to_string())).await.unwrap();
    ws
}

/// The emit time carried by a `next` frame.
fn sent_at(frame: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Next>(frame)
        .ok()
        .and_then(|n| n.payload.data.events.payload.reason.parse::<u64>().ok())
}

/// The benchmark's clients, read by one thread with level-triggered `epoll`.
///
/// The connections are opened and subscribed with tokio-tungstenite ([`handshake`]); then their
/// sockets are taken out of it and read here: one `recvmsg` per ready socket, the WebSocket frame
/// header parsed in place, one typed parse per `next` frame, a pong for a ping. Ten thousand tokio
/// tasks with a tungstenite reader each, a mutex per frame and two runtime threads cost the
/// clients 5.8–6.6 µs of CPU per delivery in the fan-out; this reader costs 3.0–4.2 µs. The
/// clients still share the server's two cores, but the figures measure less of the load generator.
///
/// Each read also carries the kernel's receive timestamp (`SO_TIMESTAMPNS`): the moment the
/// frame was in the client's socket, which on loopback is inside the server's own `send`. A
/// delivery records both delays from the emit: to that arrival, and to the read here.
mod raw {
    use std::{
        net::TcpStream,
        os::fd::AsRawFd,
        sync::{
            Arc, Mutex,
            atomic::{AtomicBool, Ordering},
        },
    };

    /// One delivery: when it was emitted (µs since the epoch), and µs from the emit to the
    /// frame's arrival in the socket and to its read.
    #[derive(Clone, Copy)]
    pub struct Delivery {
        pub sent_us: u64,
        pub arrival_us: u64,
        pub read_us: u64,
    }

    pub type Seen = Arc<Mutex<Vec<Delivery>>>;

    /// Takes the socket out of a subscribed connection (nothing is buffered in it: the server
    /// sends nothing between the ack and the first event) and asks for receive timestamps.
    pub fn detach(ws: super::Socket) -> TcpStream {
        let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.into_inner() else {
            unreachable!("ws:// is plain TCP")
        };
        let tcp = tcp.into_std().unwrap();
        let on: libc::c_int = 1;
        // SAFETY: a valid socket and a c_int option value of the given size.
        let rc = unsafe {
            libc::setsockopt(
                tcp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&raw const on).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_TIMESTAMPNS: {}", std::io::Error::last_os_error());
        tcp
    }

    /// Reads every socket until `stop`; deliveries go to `seen` once per `epoll_wait` round.
    pub fn read_all(sockets: Vec<TcpStream>, seen: Seen, stop: Arc<AtomicBool>) {
        // SAFETY: plain system calls on descriptors this function owns or borrows for its run.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(
            epoll >= 0,
            "epoll_create1: {}",
            std::io::Error::last_os_error()
        );
        for (i, s) in sockets.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: as above.
            let rc = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
            assert_eq!(rc, 0, "epoll_ctl: {}", std::io::Error::last_os_error());
        }
        let mut ready = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut buf = vec![0u8; 64 * 1024];
        // A frame split across reads waits here for its rest.
        let mut partial: Vec<Vec<u8>> = vec![Vec::new(); sockets.len()];
        let mut local = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: `ready` holds 1024 entries.
            let n = unsafe { libc::epoll_wait(epoll, ready.as_mut_ptr(), 1024, 50) };
            for ev in ready.iter().take(n.max(0) as usize) {
                let i = { ev.u64 } as usize;
                let socket = &sockets[i];
                let Some((len, arrival)) = recv(socket, &mut buf) else {
                    continue;
                };
                if len == 0 {
                    // Closed by the server (or failed): stop watching it.
                    // SAFETY: as above.
                    unsafe {
                        libc::epoll_ctl(
                            epoll,
                            libc::EPOLL_CTL_DEL,
                            socket.as_raw_fd(),
                            std::ptr::null_mut(),
                        )
                    };
                    continue;
                }
                let read = super::now_us();
                let mut data = std::mem::take(&mut partial[i]);
                let bytes: &[u8] = if data.is_empty() {
                    &buf[..len]
                } else {
                    data.extend_from_slice(&buf[..len]);
                    &data
                };
                let mut at = 0;
                while let Some((opcode, payload, next)) = frame(&bytes[at..]) {
                    let payload = &bytes[at + payload.start..at + payload.end];
                    match opcode {
                        0x1 => {
                            if let Some(sent) = super::sent_at(payload) {
                                local.push(Delivery {
                                    sent_us: sent,
                                    arrival_us: arrival.unwrap_or(read).saturating_sub(sent),
                                    read_us: read.saturating_sub(sent),
                                });
                            }
                        }
                        0x9 => pong(socket, payload),
                        _ => {}
                    }
                    at += next;
                }
                let rest = bytes[at..].to_vec();
                partial[i] = rest;
            }
            if !local.is_empty() {
                seen.lock().unwrap().append(&mut local);
            }
        }
        // SAFETY: closes the descriptor created above.
        unsafe { libc::close(epoll) };
    }

    /// One `recvmsg`: the bytes read (0 at end of stream or on an error) and the kernel's
    /// receive time (µs since the epoch). `None` when there was nothing to read.
    fn recv(socket: &TcpStream, buf: &mut [u8]) -> Option<(usize, Option<u64>)> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u64; 16];
        // SAFETY: an all-zero msghdr is a valid empty one; the fields set point at live buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control) as _;
        // SAFETY: as above.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => None,
                // A reset or failed socket stays readable under level-triggered epoll: read it
                // as closed, so it is dropped instead of reported at every wait.
                _ => Some((0, None)),
            };
        }
        let mut arrival = None;
        // SAFETY: walks the control messages the kernel wrote into `control`.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET
                    && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
                {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    arrival = Some(ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000);
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        Some((n as usize, arrival))
    }

    /// The next whole server frame in `bytes`: opcode, payload range and length in all.
    fn frame(bytes: &[u8]) -> Option<(u8, std::ops::Range<usize>, usize)> {
        let (&b0, &b1) = (bytes.first()?, bytes.get(1)?);
        let (len, mut start): (usize, usize) = match b1 & 0x7f {
            126 => (
                u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as usize,
                4,
            ),
            127 => (
                u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        if b1 & 0x80 != 0 {
            start += 4;
        }
        let end = start.checked_add(len)?;
        (bytes.len() >= end).then_some((b0 & 0x0f, start..end, end))
    }

    /// Answers a ping: a masked pong (the mask key is zero, so the payload goes as it is).
    fn pong(socket: &TcpStream, payload: &[u8]) {
        use std::io::Write;
        let mut out = vec![0x8a, 0x80 | payload.len().min(125) as u8, 0, 0, 0, 0];
        out.extend_from_slice(&payload[..payload.len().min(125)]);
        let mut socket = socket;
        let _ = socket.write_all(&out);
    }
}

/// Emits one event over REST; returns when the request started (µs since the epoch) and how
/// long it took (µs).
async fn emit(client: &reqwest::Client, port: u16, token: &str) -> (u64, u64) {
    let t = now_us();
    let body = json!({
        "event_type": "bot_connected",
        "merchant_id": "m-bench",
        "payload": { "reason": now_us().to_string() },
    });
    let r = client
        .post(format!("http://127.0.0.1:{port}/api/events"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "emit: {}", r.status());
    (t, now_us().saturating_sub(t))
}

/// The latency benchmarks' first, separately reported, seconds.
const WARMUP_SECS: u64 = 1;

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

/// The subscription of subscriber `i`: all the same (the server shares one execution), or each
/// under its own operation name (same events, nothing shared: the server's worst case).
fn query(i: usize, distinct: bool) -> String {
    if distinct {
        format!("subscription S{i} {}", &SUB["subscription ".len()..])
    } else {
        SUB.to_owned()
    }
}

/// Subscribed clients, read by one thread (`raw::read_all`) until dropped.
struct Clients {
    seen: raw::Seen,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Clients {
    /// Opens `n` subscribers, a few hundred handshakes in flight at a time.
    async fn connect(port: u16, n: usize, token: &str, distinct: bool) -> Self {
        let sockets: Vec<_> = futures::stream::iter(0..n)
            .map(|i| handshake(port, token, query(i, distinct)))
            .buffer_unordered(256)
            .map(raw::detach)
            .collect()
            .await;
        let seen: raw::Seen = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || raw::read_all(sockets, seen, stop))
        };
        Self {
            seen,
            stop,
            reader: Some(reader),
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Waits until every subscriber saw `count` events (or the deadline).
async fn wait_for<T>(seen: &Arc<Mutex<Vec<T>>>, count: usize, deadline: Duration) {
    let start = Instant::now();
    while seen.lock().unwrap().len() < count && start.elapsed() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn fanout(subscribers: usize, events: usize, distinct: bool) {
    let server = start(&[]).await;
    let pid = server.child.id();
    let token = token();
    let client = reqwest::Client::new();
    // Warm the server (first emit, first socket) before taking the baseline.
    let warm = Clients::connect(server.port, 1, &token, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    emit(&client, server.port, &token).await;
    wait_for(&warm.seen, 1, Duration::from_secs(5)).await;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kb(pid);
    let t = Instant::now();
    let clients = Clients::connect(server.port, subscribers, &token, distinct).await;
    let connect_s = t.elapsed().as_secs_f64();
    let seen = &clients.seen;
    // No frame says "subscribed": give the server a moment to register the last ones.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kb(pid);
    println!(
        "{}",
        json!({
            "bench": "fanout_idle", "distinct": distinct,
            "subscribers": subscribers,
            "connect_s": (connect_s * 10.0).round() / 10.0,
            "server_rss_before_mb": before / 1024,
            "server_rss_after_mb": after / 1024,
            "kb_per_idle_subscriber": ((after.saturating_sub(before)) as f64 / subscribers as f64 * 10.0).round() / 10.0,
        })
    );
    let (mut arrivals, mut reads) = (Vec::new(), Vec::new());
    // CPU used while events are on their way (not in the pauses between them): the server's,
    // which on loopback includes the kernel's receive path of every client socket it sends to,
    // and this process's (the 10,000 clients).
    let (mut server_cpu, mut client_cpu) = (0.0, 0.0);
    // And the time the hypervisor stole from the machine meanwhile (see [`Machine`]).
    let (mut stolen_ms, mut on_the_way) = (0, Duration::ZERO);
    for i in 0..events {
        seen.lock().unwrap().clear();
        let (s0, c0) = (cpu_ms(&pid.to_string()), cpu_ms("self"));
        let (m0, t0) = (Machine::read(), Instant::now());
        emit(&client, server.port, &token).await;
        wait_for(seen, subscribers, Duration::from_secs(30)).await;
        server_cpu += cpu_ms(&pid.to_string()) - s0;
        client_cpu += cpu_ms("self") - c0;
        let stolen = Machine::between(&m0, &Machine::read())[2];
        stolen_ms += stolen;
        on_the_way += t0.elapsed();
        let got = seen.lock().unwrap().clone();
        let mut arrival: Vec<u64> = got.iter().map(|d| d.arrival_us).collect();
        let mut read: Vec<u64> = got.iter().map(|d| d.read_us).collect();
        arrival.sort_unstable();
        read.sort_unstable();
        println!(
            "{}",
            json!({
                "bench": "fanout_event", "event": i, "received": read.len(), "subscribers": subscribers,
                "p50_ms": pct(&read, 0.5), "p99_ms": pct(&read, 0.99), "max_ms": pct(&read, 1.0),
                "arrival_p50_ms": pct(&arrival, 0.5), "arrival_p99_ms": pct(&arrival, 0.99),
                "steal_ms": stolen,
            })
        );
        arrivals.extend(arrival);
        reads.extend(read);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(clients);
    arrivals.sort_unstable();
    reads.sort_unstable();
    println!(
        "{}",
        json!({
            "bench": "fanout", "distinct": distinct, "subscribers": subscribers, "events": events,
            "deliveries": reads.len(), "expected": subscribers * events,
            "p50_ms": pct(&reads, 0.5), "p99_ms": pct(&reads, 0.99), "max_ms": pct(&reads, 1.0),
            "arrival_p50_ms": pct(&arrivals, 0.5), "arrival_p99_ms": pct(&arrivals, 0.99),
            "kb_per_idle_subscriber": ((after.saturating_sub(before)) as f64 / subscribers as f64 * 10.0).round() / 10.0,
            "server_cpu_us_per_delivery": (server_cpu * 1000.0 / reads.len().max(1) as f64 * 100.0).round() / 100.0,
            "client_cpu_us_per_delivery": (client_cpu * 1000.0 / reads.len().max(1) as f64 * 100.0).round() / 100.0,
            "steal_pct": Machine::pct_of_cores(stolen_ms, on_the_way.as_secs_f64()),
        })
    );
}

async fn latency(subscribers: usize, rate: u64, seconds: u64, redis: bool) {
    let scratch = if redis {
        Some(common::ScratchDb::create("bench_events").await)
    } else {
        None
    };
    let (a, b) = if let Some(db) = &scratch {
        let redis =
            std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("bench-events-{}:", std::process::id());
        let env = [
            ("DATABASE_URL", db.url.clone()),
            ("REDIS_URL", redis),
            ("REDIS_PREFIX", prefix),
        ];
        let a = start(&env).await;
        let b = start(&env).await;
        (a, Some(b))
    } else {
        (start(&[]).await, None)
    };
    let token = token();
    let port_sub = b.as_ref().map_or(a.port, |b| b.port);
    let clients = Clients::connect(port_sub, subscribers, &token, false).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let client = reqwest::Client::new();
    // A first second at the same rate, reported apart (`warmup_p99_ms`, and `cold_p99_ms` over
    // the whole run): it opens the benchmark's HTTP connections and the servers' pools, a
    // start-up cost that a long-running service pays once.
    let warm = rate * WARMUP_SECS;
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut emits: Vec<(u64, u64)> = Vec::with_capacity(total as usize);
    let stop_cpu = Arc::new(AtomicBool::new(false));
    let machine = {
        let stop = stop_cpu.clone();
        std::thread::spawn(move || Machine::sample(&stop))
    };
    let (mut start_t, mut start_us) = (Instant::now(), now_us());
    // The warm-up's emits all return before the measured ones start, so the two sets split
    // exactly at `start_us`.
    for (n, measured) in [(warm, false), (total, true)] {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        (start_t, start_us) = (Instant::now(), now_us());
        let mut inflight = futures::stream::FuturesUnordered::new();
        let mut done = |e| {
            if measured {
                emits.push(e);
            }
        };
        for _ in 0..n {
            tick.tick().await;
            let c = client.clone();
            let t = token.clone();
            let port = a.port;
            inflight.push(tokio::spawn(async move { emit(&c, port, &t).await }));
            while inflight.len() > 256 {
                if let Some(Ok(e)) = inflight.next().await {
                    done(e);
                }
            }
        }
        while let Some(r) = inflight.next().await {
            if let Ok(e) = r {
                done(e);
            }
        }
    }
    // Before the sampler is joined: it finishes its current second first, which is not the
    // emitters' time (it made a 10 s run read 909 events/s).
    let achieved = total as f64 / start_t.elapsed().as_secs_f64();
    stop_cpu.store(true, Ordering::Relaxed);
    let machine = machine.join().unwrap();
    wait_for(
        &clients.seen,
        (warm + total) as usize * subscribers,
        Duration::from_secs(30),
    )
    .await;
    let seen = clients.seen.lock().unwrap().clone();
    let sorted = |it: &mut dyn Iterator<Item = u64>| {
        let mut v: Vec<u64> = it.collect();
        v.sort_unstable();
        v
    };
    let lat = sorted(
        &mut seen
            .iter()
            .filter(|d| d.sent_us >= start_us)
            .map(|d| d.read_us),
    );
    let warm_lat = sorted(
        &mut seen
            .iter()
            .filter(|d| d.sent_us < start_us)
            .map(|d| d.read_us),
    );
    let all_lat = sorted(&mut seen.iter().map(|d| d.read_us));
    // The p99 of the events emitted in each second of the measured run: a tail from one bad
    // second and one spread over the run read the same in the overall p99, and differently here.
    // Beside the delivery's: the emit request's own, and the frame's arrival in the socket, to
    // tell a slow second of A and PostgreSQL from one of B or of this reader.
    let by_second = |it: &mut dyn Iterator<Item = (u64, u64)>| -> Vec<f64> {
        let mut per_second = vec![Vec::new(); seconds as usize];
        for (sent, us) in it.filter(|(sent, _)| *sent >= start_us) {
            let s = (sent - start_us) / 1_000_000;
            per_second[s.min(seconds.max(1) - 1) as usize].push(us);
        }
        per_second
            .iter_mut()
            .map(|l| {
                l.sort_unstable();
                pct(l, 0.99)
            })
            .collect()
    };
    let per_second = by_second(&mut seen.iter().map(|d| (d.sent_us, d.read_us)));
    let arrival_by_second = by_second(&mut seen.iter().map(|d| (d.sent_us, d.arrival_us)));
    let emit_by_second = by_second(&mut emits.iter().copied());
    let mut emits: Vec<u64> = emits.iter().map(|(_, us)| *us).collect();
    emits.sort_unstable();
    let arrival = sorted(
        &mut seen
            .iter()
            .filter(|d| d.sent_us >= start_us)
            .map(|d| d.arrival_us),
    );
    println!(
        "{}",
        json!({
            "bench": if redis { "latency_redis_two_instances" } else { "latency_in_process" },
            "subscribers": subscribers, "target_rate": rate, "achieved_rate": achieved.round(),
            "deliveries": lat.len(), "expected": total as usize * subscribers,
            "p50_ms": pct(&lat, 0.5), "p99_ms": pct(&lat, 0.99), "max_ms": pct(&lat, 1.0),
            "emit_p50_ms": pct(&emits, 0.5), "emit_p99_ms": pct(&emits, 0.99),
            "p99_ms_by_second": per_second,
            "arrival_p99_ms": pct(&arrival, 0.99),
            "arrival_p99_ms_by_second": arrival_by_second,
            "emit_p99_ms_by_second": emit_by_second,
            "machine": machine.json(),
            "measured_from_us": start_us,
            "warmup_deliveries": warm_lat.len(), "warmup_p99_ms": pct(&warm_lat, 0.99),
            "cold_p99_ms": pct(&all_lat, 0.99),
        })
    );
    drop(clients);
    drop((a, b));
    if let Some(db) = scratch {
        db.drop().await;
    }
}

/// Emit throughput: `writers` concurrent HTTP emitters (`POST /api/events`), each sending its
/// next event when the last one returns, for `seconds`, against one instance on a scratch
/// PostgreSQL database (`postgres`) or the embedded SQLite. Events are durable when their emit
/// returns, so this is the rate the history takes them at, with the commit order kept (migration
/// 000011).
async fn emit_rate(writers: usize, seconds: u64, postgres: bool) {
    let scratch = if postgres {
        Some(common::ScratchDb::create("bench_events").await)
    } else {
        None
    };
    let env: Vec<(&str, String)> = scratch
        .iter()
        .map(|db| ("DATABASE_URL", db.url.clone()))
        .collect();
    let a = start(&env).await;
    let token = token();
    let client = reqwest::Client::new();
    // A warm-up second: HTTP connections and the server's pools.
    let warm_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < warm_until {
        emit(&client, a.port, &token).await;
    }
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (c, t, port) = (client.clone(), token.clone(), a.port);
            tokio::spawn(async move {
                let mut took = vec![];
                while Instant::now() < until {
                    took.push(emit(&c, port, &t).await.1);
                }
                took
            })
        })
        .collect();
    let mut took: Vec<u64> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    took.sort_unstable();
    println!(
        "{}",
        json!({
            "bench": "emit", "database": if postgres { "postgres" } else { "sqlite" },
            "writers": writers, "seconds": seconds, "events": took.len(),
            "events_per_s": (took.len() as f64 / elapsed).round(),
            "emit_p50_ms": pct(&took, 0.5), "emit_p99_ms": pct(&took, 0.99),
        })
    );
    drop(a);
    if let Some(db) = scratch {
        db.drop().await;
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    match args.first().map(String::as_str) {
        Some("fanout") => fanout(num(1, 10_000) as usize, num(2, 5) as usize, false).await,
        Some("fanout-distinct") => fanout(num(1, 10_000) as usize, num(2, 5) as usize, true).await,
        Some("latency") => latency(num(1, 100) as usize, num(2, 1000), num(3, 10), false).await,
        Some("latency-redis") => {
            latency(num(1, 100) as usize, num(2, 1000), num(3, 10), true).await
        }
        Some("emit") => emit_rate(num(1, 8) as usize, num(2, 5), false).await,
        Some("emit-postgres") => emit_rate(num(1, 8) as usize, num(2, 5), true).await,
        _ => {
            eprintln!(
                "usage: bench_events fanout|fanout-distinct|latency|latency-redis|emit|emit-postgres [...]"
            );
            std::process::exit(2);
        }
    }
}
