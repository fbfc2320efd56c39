//! Heap allocations per proxied request through the real server and
//! gateway, counted by a global allocator, against a budget.
//!
//! The issue: "Count allocations per proxied request with the counting
//! allocator in a test that fails if they grow past the budget you reach".
//!
//! What runs, in this process:
//!
//! * two upstream HTTP/1.1 servers (hyper, keep-alive) answering `blue\n`
//!   and `green\n`, on a thread and runtime of their own;
//! * the gateway: [`Gateway::from_config`] served by
//!   [`switchyard::server::Server`] with its default limits (the
//!   hardening: header read, idle and body timeouts, head and header
//!   limits, connection cap) on a current-thread tokio runtime on one
//!   dedicated thread, the *measured* thread;
//! * clients on other threads: plain blocking keep-alive HTTP/1.1 over
//!   `std::net::TcpStream`.
//!
//! What is counted: every call into the allocator (`alloc`,
//! `alloc_zeroed`, `realloc`) and every `dealloc` made on the measured
//! thread, which is everything the gateway does for a request: the
//! server's connection task (parsing the head, the timeouts, writing the
//! response), the gateway's pipeline and the proxy's client side (its
//! pooled upstream connections are tasks of the same runtime). The
//! upstreams and the clients run on unmarked threads and are not counted.
//! Each case warms up first (pools filled, per-thread state and buffers
//! grown), then counts over [`REQUESTS`] requests: allocations per request
//! is the difference over the window divided by the number of requests.
//!
//! The cases:
//!
//! * `split`: `benches/vs_proxies/switchyard.toml`, the configuration the
//!   `vs_proxies` bench measures against nginx and haproxy: one route, a
//!   random 90/10 split between the two upstreams, nothing else;
//! * `pipeline`: a route like the demo's (`examples/gateway.toml`): API
//!   key authentication (the key in `x-api-key`), a rate limit per caller
//!   that never refuses here, a transform adding request headers (a
//!   request id, the caller's id) and echoing the id on the response, a
//!   sticky split (by `x-user`, with an override header for testers), the
//!   proxy;
//!
//! each one request at a time on one connection, then over 8 connections
//! at once (8 client threads): the per-request figure must not grow with
//! concurrency.
//!
//! Each case fails when allocations per request exceed its budget
//! ([`SPLIT_BUDGET`], [`PIPELINE_BUDGET`]: the figure measured when the
//! budget was set, rounded up to the next integer), and when the window
//! leaves memory behind (blocks or bytes still live growing with the
//! requests). When the path allocates less, lower the budget.
//!
//! `ALLOC_PROXY_TRACE=N` also captures a backtrace for every allocation of
//! the measured thread during `N` more requests of each case, right after
//! its one-connection window, and prints where they come from, most
//! frequent first (slow; a diagnostic, nothing is asserted on it). Debug
//! builds name the inlined frames too:
//!
//! ```text
//! ALLOC_PROXY_TRACE=20 cargo test --all-features --test alloc_proxy -- --nocapture --test-threads 1
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use switchyard::gateway::{Gateway, GatewayConfig};
use switchyard::server::{Server, ServerHandle};

/// Allocations per request of the `split` case: 16.00 when set (debug
/// and release alike, give or take 0 to 3 allocations over a whole
/// window), so the next integer up. Lower it when the path allocates less.
/// (31 before the lean upstream pool and the one-allocation traceparent;
/// 22 before the route's split was called in place instead of cloned; 21
/// before a request without a body went on without a boxed one and the
/// peer's address header was shared; 18 before the response timeout's
/// timer was kept in place and the connection's extensions were cloned
/// into a table with room for the split's `Target`.)
const SPLIT_BUDGET: u32 = 17;
/// Allocations per request of the `pipeline` case: 34.00 when set (debug
/// and release alike), so the next integer up. Lower it when the path
/// allocates less. (58, then 49 and 48, before: a layer's pass-through
/// body was boxed again by each layer of the route; 43 before the bodiless
/// request and the shared peer header, 40 before the timer in place and
/// the extensions' room, 38 before the transform's rendered values became
/// header values without a copy and the `RateLimit` value was written on
/// the stack.)
const PIPELINE_BUDGET: u32 = 35;

/// How much higher the per-request figure over 8 connections may be than
/// the figure over one.
const CONCURRENCY_SLACK: f64 = 2.0;

/// Requests before a window, so pools, buffers and per-thread state are
/// established.
const WARMUP: usize = 500;
/// Requests counted in a window.
const REQUESTS: usize = 2000;
/// Client connections of the concurrent cases; each sends
/// `REQUESTS / CONNECTIONS` requests in the window after
/// `WARMUP / CONNECTIONS` of warm-up.
const CONNECTIONS: usize = 8;

const BLUE: &[u8] = b"blue\n";
const GREEN: &[u8] = b"green\n";

const SPLIT_TOML: &str = include_str!("../benches/vs_proxies/switchyard.toml");

/// The demo route (`examples/gateway.toml`) without its rollout, split
/// 90/10 so that both upstreams are used. The key is inline (a plain key,
/// as in the demo); the rate limit's burst is far above what the test
/// sends.
const PIPELINE_TOML: &str = r#"
[upstreams.blue]
url = "http://BLUE_ADDR"
response_timeout_ms = 30000

[upstreams.green]
url = "http://GREEN_ADDR"
response_timeout_ms = 30000

[[api_keys]]
key = "alloc-proxy-key"
id = "alloc"
tenant = "demo"
scopes = ["api", "tester"]

[[routes]]
name = "api"
path_prefix = "/"
auth = { scopes = ["api"] }
rate_limit = { key = "identity", quotas = [{ limit = 1000000, period = "1s", burst = 1000000, name = "per-key" }] }

[[routes.transform.sets]]
name = "request id"
request.headers.remove = ["x-request-id", "x-caller"]
request.headers.add = [
  { name = "x-request-id", value = "{uuid}" },
  { name = "x-caller", value = "{identity.id}" },
]
response.headers.add = [{ name = "x-request-id", value = "{header.x-request-id}" }]

[routes.split]
sticky = { header = "x-user" }
override_header = "x-switchyard-target"
override_scope = "tester"
echo_header = "x-switchyard-target"
targets = [
  { name = "blue", upstream = "blue", weight = 90 },
  { name = "green", upstream = "green", weight = 10 },
]
"#;

// === counting allocator ===

struct Counting;

thread_local! {
    // `const` and without a destructor: reading them never allocates or
    // registers anything, so the allocator can use them.
    /// Set on the gateway's thread: only its allocations are counted.
    static MEASURED: Cell<bool> = const { Cell::new(false) };
    /// Set while this thread records a backtrace (whose own allocations
    /// are neither counted nor traced).
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

/// Calls to `alloc`, `alloc_zeroed` and `realloc` on measured threads.
static ALLOCS: AtomicU64 = AtomicU64::new(0);
/// Of those, calls to `realloc` (which make no new block).
static REALLOCS: AtomicU64 = AtomicU64::new(0);
/// Bytes asked for by those calls (a `realloc`'s new size).
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Calls to `dealloc` on measured threads.
static FREES: AtomicU64 = AtomicU64::new(0);
/// Bytes given back by `dealloc`, and by `realloc` (the old size).
static FREED_BYTES: AtomicU64 = AtomicU64::new(0);

/// Whether to capture a backtrace for each allocation of a measured thread.
static TRACING: AtomicBool = AtomicBool::new(false);
/// The backtraces captured: the allocation's size and where it was made.
static TRACES: Mutex<Vec<(usize, Backtrace)>> = Mutex::new(Vec::new());

/// Whether this call is counted: on a measured thread, outside a trace.
/// `try_with`: the allocator also runs while a thread is torn down.
fn counted() -> bool {
    MEASURED.try_with(Cell::get).unwrap_or(false) && !IN_TRACE.try_with(Cell::get).unwrap_or(true)
}

fn record_alloc(size: usize) {
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    BYTES.fetch_add(size as u64, Ordering::Relaxed);
    if TRACING.load(Ordering::Relaxed) {
        IN_TRACE.set(true);
        let trace = Backtrace::force_capture();
        TRACES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((size, trace));
        IN_TRACE.set(false);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the counters are atomics and `const` thread-locals, and the
// tracing path does not re-enter it (`IN_TRACE`).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted() {
            record_alloc(layout.size());
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if counted() {
            record_alloc(layout.size());
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counted() {
            REALLOCS.fetch_add(1, Ordering::Relaxed);
            FREED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
            record_alloc(new_size);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counted() {
            FREES.fetch_add(1, Ordering::Relaxed);
            FREED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Count {
    allocs: u64,
    reallocs: u64,
    bytes: u64,
    frees: u64,
    freed_bytes: u64,
}

impl Count {
    fn now() -> Self {
        Count {
            allocs: ALLOCS.load(Ordering::SeqCst),
            reallocs: REALLOCS.load(Ordering::SeqCst),
            bytes: BYTES.load(Ordering::SeqCst),
            frees: FREES.load(Ordering::SeqCst),
            freed_bytes: FREED_BYTES.load(Ordering::SeqCst),
        }
    }

    /// The counters once the measured thread has gone quiet: read until
    /// two reads 10 ms apart agree, so that the tail of the last request
    /// (what the gateway does after the client has its response) is in.
    fn settled() -> Self {
        let mut last = Count::now();
        loop {
            std::thread::sleep(Duration::from_millis(10));
            let now = Count::now();
            if now == last {
                return now;
            }
            last = now;
        }
    }

    fn since(self, before: Count) -> Window {
        Window {
            allocs: self.allocs - before.allocs,
            reallocs: self.reallocs - before.reallocs,
            bytes: self.bytes - before.bytes,
            frees: self.frees - before.frees,
            freed_bytes: self.freed_bytes - before.freed_bytes,
        }
    }
}

/// What the measured thread did over a window.
#[derive(Clone, Copy, Debug)]
struct Window {
    allocs: u64,
    reallocs: u64,
    bytes: u64,
    frees: u64,
    freed_bytes: u64,
}

impl Window {
    /// Blocks made (not counting reallocations) minus blocks freed.
    fn live_blocks(&self) -> i64 {
        (self.allocs - self.reallocs) as i64 - self.frees as i64
    }

    /// Bytes made minus bytes given back.
    fn live_bytes(&self) -> i64 {
        self.bytes as i64 - self.freed_bytes as i64
    }
}

/// Runs `f` (which sends `requests` requests) between two settled reads
/// of the counters.
fn window(requests: usize, f: impl FnOnce()) -> Figures {
    let before = Count::settled();
    f();
    let after = Count::settled();
    Figures::new(after.since(before), requests)
}

/// A window's figures per request.
#[derive(Clone, Copy, Debug)]
struct Figures {
    window: Window,
    requests: usize,
}

impl Figures {
    fn new(window: Window, requests: usize) -> Self {
        Figures { window, requests }
    }

    fn per_request(&self, n: u64) -> f64 {
        n as f64 / self.requests as f64
    }

    fn allocs(&self) -> f64 {
        self.per_request(self.window.allocs)
    }

    fn report(&self, case: &str) {
        let w = &self.window;
        eprintln!(
            "alloc_proxy: {case}: {:.2} allocations/request ({:.0} bytes/request, \
             {:.2} of them reallocs), frees {:.2}; over {} requests: {} allocations, {} frees, \
             {} blocks and {} bytes still live",
            self.allocs(),
            self.per_request(w.bytes),
            self.per_request(w.reallocs),
            self.per_request(w.frees),
            self.requests,
            w.allocs,
            w.frees,
            w.live_blocks(),
            w.live_bytes(),
        );
    }

    /// Nothing left behind per request: every block made in the window
    /// was freed in it, and the bytes still live do not grow with the
    /// requests, give or take pool and buffer changes (hyper's 8 KiB read
    /// buffers may be in a different state at the end of the window). A
    /// leak of one block per request would leave `requests` blocks; of 32
    /// bytes per request, 64000 bytes.
    fn assert_no_leak(&self, case: &str) {
        let w = &self.window;
        let slack = (self.requests / 20) as i64;
        assert!(
            w.live_blocks() <= slack,
            "{case}: {} blocks made and not freed over {} requests ({} made, {} reallocs, \
             {} freed): more than {slack}, a per-request leak?",
            w.live_blocks(),
            self.requests,
            w.allocs,
            w.reallocs,
            w.frees,
        );
        assert!(
            w.live_bytes() < 32 * self.requests as i64,
            "{case}: {} bytes still live after {} requests: a per-request leak?",
            w.live_bytes(),
            self.requests,
        );
    }

    fn assert_budget(&self, case: &str, budget: u32) {
        let budget = f64::from(budget);
        assert!(
            self.allocs() <= budget,
            "{case}: {:.2} allocations per request, over the budget of {budget} (the figure \
             when it was set, rounded up): find what allocates more (ALLOC_PROXY_TRACE=5 \
             lists where they come from); when the figure drops, lower the budget to it",
            self.allocs(),
        );
        if self.allocs() + 1.0 < budget {
            eprintln!(
                "alloc_proxy: {case}: {:.2} allocations per request, a whole allocation under \
                 the budget of {budget}: lower the budget in tests/alloc_proxy.rs",
                self.allocs()
            );
        }
    }
}

// === upstreams ===

/// Requests the upstreams saw with the headers the pipeline's transform
/// adds (`x-request-id`, and `x-caller` naming the key's id).
#[derive(Clone, Default)]
struct Seen(Arc<AtomicUsize>);

struct Upstreams {
    blue: SocketAddr,
    green: SocketAddr,
    seen: Seen,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstreams {
    /// Both upstreams, on a thread and current-thread runtime of their own.
    fn start() -> Self {
        let seen = Seen::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let counter = seen.clone();
        let thread = std::thread::Builder::new()
            .name("upstreams".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let blue = upstream(BLUE, counter.clone()).await;
                    let green = upstream(GREEN, counter).await;
                    tx.send((blue, green)).expect("send");
                    let _ = stopped.await;
                });
            })
            .expect("spawn");
        let (blue, green) = rx.recv().expect("upstreams started");
        Upstreams {
            blue,
            green,
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `toml` with `BLUE_ADDR` and `GREEN_ADDR` filled in.
    fn fill(&self, toml: &str) -> String {
        toml.replace("BLUE_ADDR", &self.blue.to_string())
            .replace("GREEN_ADDR", &self.green.to_string())
    }
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `GET /` answers `body`, on keep-alive HTTP/1.1 connections.
async fn upstream(body: &'static [u8], seen: Seen) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let seen = seen.clone();
            let answer = service_fn(move |req: Request<Incoming>| {
                let headers = req.headers();
                if headers.contains_key("x-request-id")
                    && headers.get("x-caller").is_some_and(|v| v == "alloc")
                {
                    seen.0.fetch_add(1, Ordering::Relaxed);
                }
                let mut res = Response::new(Full::new(Bytes::from_static(body)));
                if req.uri().path() != "/" {
                    *res.status_mut() = StatusCode::NOT_FOUND;
                }
                async move { Ok::<_, Infallible>(res) }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), answer));
        }
    });
    addr
}

// === the gateway, on the measured thread ===

struct GatewayThread {
    addr: SocketAddr,
    handle: ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl GatewayThread {
    /// `Gateway::from_config(toml)` served by a `Server` with the default
    /// limits, on a current-thread runtime on a new thread, the measured
    /// one.
    fn start(toml: String) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("gateway".into())
            .spawn(move || {
                MEASURED.set(true);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let config = GatewayConfig::from_toml(&toml).expect("config");
                    let gateway = Gateway::from_config(config).expect("gateway");
                    let server = Server::bind("127.0.0.1:0").await.expect("bind");
                    tx.send((server.local_addr(), server.handle()))
                        .expect("send");
                    server.serve(gateway).await.expect("serve");
                });
            })
            .expect("spawn");
        let (addr, handle) = rx.recv().expect("gateway started");
        GatewayThread {
            addr,
            handle,
            thread: Some(thread),
        }
    }
}

impl Drop for GatewayThread {
    fn drop(&mut self) {
        self.handle.shutdown(Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            // A panic there is reported by the thread itself; do not
            // panic again while a failed assertion unwinds.
            let _ = thread.join();
        }
    }
}

// === client ===

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Colour {
    Blue,
    Green,
}

/// Blue and green answers.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    blue: usize,
    green: usize,
}

impl Tally {
    fn add(&mut self, colour: Colour) {
        match colour {
            Colour::Blue => self.blue += 1,
            Colour::Green => self.green += 1,
        }
    }

    fn merge(&mut self, other: Tally) {
        self.blue += other.blue;
        self.green += other.green;
    }

    /// About 10 % green: 90/10 over 2000 requests is 200 green, σ ≈ 13.4
    /// (a sticky split over 2000 distinct users hashes about as evenly).
    fn assert_split(&self, case: &str) {
        let total = self.blue + self.green;
        let expected = total / 10;
        assert!(
            (expected / 2..=expected * 3 / 2).contains(&self.green),
            "{case}: {} green answers out of {total}, expected about {expected}",
            self.green
        );
    }
}

/// One keep-alive HTTP/1.1 connection, blocking.
struct Client {
    reader: BufReader<TcpStream>,
    host: String,
    /// Extra request headers, each line ending in `\r\n`; `{i}` is
    /// replaced by the request's number.
    headers: &'static str,
    /// Prefix of the `{i}` numbers, so that clients send different ones.
    prefix: String,
    sent: usize,
    /// Response header every answer must carry, if any.
    expect_header: Option<&'static str>,
    line: String,
    body: Vec<u8>,
    request: String,
}

impl Client {
    fn connect(case: &Case, addr: SocketAddr, prefix: String) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        // Only so that a stuck gateway fails the test instead of hanging it.
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("timeout");
        Client {
            reader: BufReader::new(stream),
            host: addr.to_string(),
            headers: case.headers,
            prefix,
            sent: 0,
            expect_header: case.expect_header,
            line: String::new(),
            body: Vec::new(),
            request: String::new(),
        }
    }

    /// `GET /`: must be a 200 answering `blue\n` or `green\n`.
    fn get(&mut self) -> Colour {
        self.sent += 1;
        self.request.clear();
        let number = format!("{}{}", self.prefix, self.sent);
        write!(
            self.request,
            "GET / HTTP/1.1\r\nHost: {}\r\n{}\r\n",
            self.host,
            self.headers.replace("{i}", &number)
        )
        .expect("format");
        self.reader
            .get_mut()
            .write_all(self.request.as_bytes())
            .expect("write request");

        let mut status = None;
        let mut length = None;
        let mut chunked = false;
        let mut expected_seen = self.expect_header.is_none();
        loop {
            self.line.clear();
            let n = self.reader.read_line(&mut self.line).expect("read head");
            assert!(n > 0, "connection closed in a response head");
            let line = self.line.trim_end();
            if line.is_empty() {
                break;
            }
            if status.is_none() {
                let code = line.split(' ').nth(1).expect("status line");
                status = Some(code.parse::<u16>().expect("status code"));
                continue;
            }
            let (name, value) = line.split_once(':').expect("header line");
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().expect("content-length"));
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            }
            if self
                .expect_header
                .is_some_and(|h| name.eq_ignore_ascii_case(h))
            {
                expected_seen = true;
            }
        }
        self.body.clear();
        if chunked {
            self.read_chunked();
        } else {
            let length = length.expect("a content-length or a chunked body");
            self.body.resize(length, 0);
            self.reader.read_exact(&mut self.body).expect("read body");
        }
        let status = status.expect("status");
        assert_eq!(
            status,
            200,
            "answer: {:?}",
            String::from_utf8_lossy(&self.body)
        );
        assert!(
            expected_seen,
            "no `{}` on the response",
            self.expect_header.unwrap_or_default()
        );
        match &self.body[..] {
            BLUE => Colour::Blue,
            GREEN => Colour::Green,
            other => panic!("unexpected body {:?}", String::from_utf8_lossy(other)),
        }
    }

    fn read_chunked(&mut self) {
        loop {
            self.line.clear();
            self.reader.read_line(&mut self.line).expect("chunk size");
            let size = self.line.trim_end().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size, 16).expect("chunk size");
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    self.line.clear();
                    self.reader.read_line(&mut self.line).expect("trailer");
                    if self.line.trim_end().is_empty() {
                        return;
                    }
                }
            }
            let start = self.body.len();
            self.body.resize(start + size, 0);
            self.reader
                .read_exact(&mut self.body[start..])
                .expect("chunk");
            self.line.clear();
            self.reader.read_line(&mut self.line).expect("chunk end");
        }
    }

    fn run(&mut self, requests: usize) -> Tally {
        let mut tally = Tally::default();
        for _ in 0..requests {
            tally.add(self.get());
        }
        tally
    }
}

// === cases ===

struct Case {
    name: &'static str,
    toml: &'static str,
    headers: &'static str,
    expect_header: Option<&'static str>,
    budget: u32,
    /// Whether the upstreams must see the transform's headers.
    transformed: bool,
}

/// One gateway at a time: the counters are process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

fn run(case: &Case) {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let upstreams = Upstreams::start();
    let gateway = GatewayThread::start(upstreams.fill(case.toml));

    // One connection, one request at a time.
    let mut client = Client::connect(case, gateway.addr, String::new());
    client.run(WARMUP);
    let mut tally = Tally::default();
    let sequential = window(REQUESTS, || tally = client.run(REQUESTS));
    let name = case.name;
    sequential.report(name);
    tally.assert_split(name);
    sequential.assert_no_leak(name);
    sequential.assert_budget(name, case.budget);
    // In the state the sequential figure was taken in (with 8 connections
    // the proxy's pool keeps more idle connections per upstream, which
    // changes its own allocations).
    if let Some(requests) = trace_requests() {
        trace(name, &mut client, requests);
    }

    // 8 connections at once, each one request at a time.
    let concurrent = concurrent(case, gateway.addr);
    let label = format!("{name}, {CONNECTIONS} connections");
    concurrent.report(&label);
    concurrent.assert_no_leak(&label);
    // One-sided: with several connections the figure is lower (by about
    // 1 to 2): the proxy's pool keeps several idle connections per
    // upstream, so its idle list is never emptied and made again, and
    // hyper's read buffers are more often free to be reused.
    assert!(
        concurrent.allocs() <= sequential.allocs() + CONCURRENCY_SLACK,
        "{label}: {:.2} allocations per request, {:.2} over one connection: \
         the count grows with concurrency",
        concurrent.allocs(),
        sequential.allocs(),
    );

    if case.transformed {
        let seen = upstreams.seen.0.load(Ordering::Relaxed);
        let sent = client.sent + (WARMUP / CONNECTIONS + REQUESTS / CONNECTIONS) * CONNECTIONS;
        assert_eq!(
            seen, sent,
            "{name}: requests without the transform's headers"
        );
    }

    drop(client);
}

/// `CONNECTIONS` client threads, warmed up together, then counted over
/// `REQUESTS` requests in all.
fn concurrent(case: &Case, addr: SocketAddr) -> Figures {
    let warmed = Arc::new(Barrier::new(CONNECTIONS + 1));
    let go = Arc::new(Barrier::new(CONNECTIONS + 1));
    let per_client = REQUESTS / CONNECTIONS;
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let mut client = Client::connect(case, addr, format!("c{c}-"));
            let (warmed, go) = (Arc::clone(&warmed), Arc::clone(&go));
            std::thread::spawn(move || {
                client.run(WARMUP / CONNECTIONS);
                warmed.wait();
                go.wait();
                client.run(per_client)
            })
        })
        .collect();
    warmed.wait();
    let mut tally = Tally::default();
    let figures = window(per_client * CONNECTIONS, || {
        go.wait();
        for client in clients {
            tally.merge(client.join().expect("client thread"));
        }
    });
    tally.assert_split(&format!("{}, {CONNECTIONS} connections", case.name));
    figures
}

// === where allocations come from (ALLOC_PROXY_TRACE) ===

fn trace_requests() -> Option<usize> {
    std::env::var("ALLOC_PROXY_TRACE")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
}

/// One frame of a backtrace: the function and, when known, where.
struct Frame {
    function: String,
    at: Option<String>,
}

impl Frame {
    /// The allocator, the standard library (its containers, `format!`,
    /// the hash map behind `http::Extensions`) and this test's own
    /// frames: not where an allocation comes from.
    fn plumbing(&self) -> bool {
        if let Some(at) = &self.at {
            return at.contains("/rustc/")
                || at.contains("/rust/deps/")
                || at.contains("tests/alloc_proxy.rs");
        }
        let function = self.function.trim_start_matches('<');
        [
            "std::",
            "core::",
            "alloc::",
            "alloc_proxy::",
            "__rust",
            "__rdl",
            "hashbrown::",
            "rust_",
        ]
        .iter()
        .any(|p| function.starts_with(p))
    }

    fn switchyard(&self) -> bool {
        match &self.at {
            Some(at) => at.starts_with("src/"),
            None => self
                .function
                .trim_start_matches('<')
                .starts_with("switchyard::"),
        }
    }
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Generic arguments make the names unreadable: cut them at 100.
        let function: String = self.function.chars().take(100).collect();
        match &self.at {
            Some(at) => write!(f, "{function} ({at})"),
            None => f.write_str(&function),
        }
    }
}

/// A source path, short: `src/…` for switchyard, `crate-x.y.z/src/…` for
/// a dependency.
fn short_path(at: &str) -> String {
    let at = at.trim_start_matches("./");
    if let Some((_, rest)) = at.split_once("/registry/src/") {
        return rest.split_once('/').map_or(rest, |(_, r)| r).to_string();
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    let cwd = format!("{}/", cwd.display());
    at.strip_prefix(&cwd).unwrap_or(at).to_string()
}

/// The frames of a backtrace.
fn frames(trace: &Backtrace) -> Vec<Frame> {
    let text = trace.to_string();
    let mut frames: Vec<Frame> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(at) = line.strip_prefix("at ") {
            if let Some(last) = frames.last_mut() {
                last.at = Some(short_path(at));
            }
        } else if let Some((n, function)) = line.split_once(": ")
            && n.chars().all(|c| c.is_ascii_digit())
        {
            frames.push(Frame {
                function: function.to_string(),
                at: None,
            });
        }
    }
    frames
}

/// Traces `requests` more requests and prints the allocation sites, most
/// frequent first: the first frame outside the allocator and the standard
/// library, then its callers up to the first frame of switchyard (at most
/// 8 frames).
fn trace(case: &str, client: &mut Client, requests: usize) {
    let before = Count::settled();
    TRACING.store(true, Ordering::SeqCst);
    client.run(requests);
    let counted = Count::settled().since(before);
    TRACING.store(false, Ordering::SeqCst);
    let traces = std::mem::take(&mut *TRACES.lock().unwrap_or_else(PoisonError::into_inner));

    let mut sites: HashMap<String, (usize, usize)> = HashMap::new();
    for (size, trace) in &traces {
        let frames = frames(trace);
        let mut chain = Vec::new();
        for frame in frames.iter().skip_while(|f| f.plumbing()) {
            chain.push(frame.to_string());
            if frame.switchyard() || chain.len() == 8 {
                break;
            }
        }
        let key = chain.join("\n      <- ");
        let entry = sites.entry(key).or_default();
        entry.0 += 1;
        entry.1 += size;
    }
    let mut sites: Vec<_> = sites.into_iter().collect();
    sites.sort_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| a.0.cmp(&b.0)));
    let mut out = format!(
        "alloc_proxy: {case}: {} allocations over {requests} traced requests ({} counted), \
         by site:\n",
        traces.len(),
        counted.allocs,
    );
    for (chain, (count, bytes)) in &sites {
        writeln!(
            out,
            "  {:.2}/request, {} bytes each: {chain}",
            *count as f64 / requests as f64,
            bytes / count,
        )
        .expect("format");
    }
    eprintln!("{out}");
}

// === tests ===

#[test]
fn split() {
    run(&Case {
        name: "split",
        toml: SPLIT_TOML,
        headers: "",
        expect_header: None,
        budget: SPLIT_BUDGET,
        transformed: false,
    });
}

#[test]
fn pipeline() {
    run(&Case {
        name: "pipeline",
        toml: PIPELINE_TOML,
        headers: "x-api-key: alloc-proxy-key\r\nx-user: user-{i}\r\n",
        expect_header: Some("x-request-id"),
        budget: PIPELINE_BUDGET,
        transformed: true,
    });
}

/// The counter counts the measured thread, and only it.
#[test]
fn the_counter_counts() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let before = Count::now();
    drop(std::hint::black_box(Box::new(1u64)));
    assert_eq!(Count::now(), before, "an unmarked thread was counted");
    let window = std::thread::spawn(|| {
        MEASURED.set(true);
        let before = Count::now();
        drop(std::hint::black_box(Box::new(1u64)));
        let after = Count::now();
        MEASURED.set(false);
        after.since(before)
    })
    .join()
    .expect("thread");
    assert_eq!(
        (
            window.allocs,
            window.bytes,
            window.frees,
            window.freed_bytes
        ),
        (1, 8, 1, 8)
    );
}
