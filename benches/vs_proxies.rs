//! The whole gateway against nginx and haproxy doing the same job on the
//! same machine: DESIGN.md's budget "whole gateway over loopback (proxying
//! to upstreams): throughput ≥ nginx and haproxy doing the same split".
//!
//! ```text
//! cargo bench --bench vs_proxies                              # mode pinned, the split rows
//! cargo bench --bench vs_proxies -- --rounds 5 --secs 8 --connections 64
//! cargo bench --bench vs_proxies -- --mode shipped            # as shipped: nothing pinned
//! cargo bench --bench vs_proxies -- --mode latency            # one request at a time
//! cargo bench --bench vs_proxies -- --pipeline                # + the full-pipeline rows
//! ```
//!
//! Needs `nginx`, `haproxy`, `wrk` and (but for `--mode shipped`)
//! `taskset` (`apt-get install -y nginx haproxy wrk`) and two CPUs; without
//! them it says so and exits 0 (CI only builds this file).
//!
//! # Modes (`--mode`)
//!
//! * **`pinned`** (the default): the front under test has CPU 1 to itself
//!   and one thread of work (nginx `worker_processes 1`, haproxy `nbthread
//!   1`, switchyard `[server] threads = 1`, the hyper floor one
//!   current-thread tokio runtime);
//!   every front of a table is started once under `taskset -c 1` and sits
//!   idle while another is measured. This process (upstreams, checks, bookkeeping)
//!   re-executes itself under `taskset -c 0`, and wrk (`-t1 -c32`) runs
//!   under `taskset -c 0`: client and upstreams share CPU 0. The tables
//!   give how busy each CPU was: if CPU 0 is saturated while CPU 1 is not,
//!   the client side is the limit and requests/s understate the gap, so CPU
//!   per request is the sharper comparison.
//! * **`shipped`** ("as shipped"): nothing pinned (no `taskset` for the
//!   fronts, wrk or this process), every front with as many workers as
//!   CPUs (`available_parallelism`: nginx `worker_processes`, haproxy
//!   `nbthread`, switchyard `[server] threads`, the hyper floor as many
//!   threads as switchyard, each a current-thread runtime on its own
//!   `SO_REUSEPORT` listener, as switchyard's). wrk `-t2 -c64`. The upstreams stay one
//!   current-thread runtime, unpinned. The busy column is the mean over
//!   all CPUs.
//!
//! In every mode switchyard is the release `gateway` example binary, what
//! a user runs (`<target>/release/examples/gateway --config FILE --listen
//! ADDR --admin-listen 127.0.0.1:0 --no-access-log`, under `taskset -c 1`
//! when pinned), built with `cargo build --release --example gateway
//! --all-features` when missing or older than this bench binary. Its
//! `--no-access-log` is nginx's and haproxy's `access_log off`/no `log`
//! line; `--example-arg ARG` (repeatable) passes more arguments.
//! `--gateway PATH` serves switchyard's row with the build at PATH
//! instead (built by nothing here: `benches/vs_proxies/pgo.sh` trains a
//! profile-guided build with it). `--compare PATH` adds a row,
//! `switchyard B`, served by another build of the example at PATH
//! (started the same way, with the same arguments):
//! two builds of the gateway (a change against the build before it, a
//! profile-guided build against the plain one) measured in the same
//! interleaved rounds as the peers, so their ratio is taken within rounds
//! rather than across runs of this bench on a machine that drifts.
//! * **`latency`**: pinned as `pinned`, but `wrk -t1 -c1`: one request in
//!   flight, so p50 and p99 are one request's round trip through each
//!   front.
//!
//! # Rows
//!
//! The **split** table (always, unless `--pipeline-only`): each front a
//! random 90/10 split of `GET /` between blue and green, adding
//! `X-Forwarded-For`/`-Proto`/`-Host`, logging nothing (but the shipped
//! example's access log):
//!
//! * `switchyard`: `Gateway::from_config` (`vs_proxies/switchyard.toml`:
//!   one route, one split, blue 90 / green 10, pooled keep-alive upstream
//!   connections), served by `switchyard::server::Server` built from the
//!   config's `[server]` (defaults: header-read and idle timeouts, the
//!   connection cap, head and header-count limits, as in production), in
//!   the `gateway` example (see above).
//! * `nginx` (`vs_proxies/nginx.conf`): `split_clients` on the random
//!   `$request_id`, an `upstream` per colour with `keepalive`,
//!   `keepalive_requests` unbounded on both sides (nginx's default of 1000
//!   would reconnect every 1000 requests; the others do not).
//! * `haproxy` (`vs_proxies/haproxy.cfg`): `balance random(1)` with weights
//!   90/10, `http-reuse always`, `option http-keep-alive`.
//! * `hyper floor` (this binary with `--role floor`): the leanest proxy
//!   hyper allows, for reference: a bare `hyper::server::conn::http1`
//!   server; per client connection, one `hyper::client::conn::http1`
//!   connection to blue and one to green, opened on first use; per request
//!   a xorshift draw 90/10, the URI in origin form, the three
//!   `X-Forwarded-*` headers, the upstream's response passed through. No
//!   pool, no timeouts, no limits, hop-by-hop headers untouched: **not
//!   hardened**, the floor for anything built on hyper, not a product.
//! * `direct`: wrk straight at the blue upstream: not a proxy, a reference
//!   for what the client side can push.
//!
//! The **pipeline** table (`--pipeline` adds it after the split table,
//! `--pipeline-only` runs it alone; it takes about 3/5 of the split
//! table's time): the demo route's pipeline, with limits that never bite,
//! in front of the same 90/10 split. wrk sends `x-api-key: bench-key`.
//! It has no `hyper floor` or `direct` row: neither does that work (the
//! split table has them). Each table starts its fronts and stops them
//! when it is done.
//!
//! * `switchyard` (`vs_proxies/switchyard_pipeline.toml`): API-key auth, a
//!   rate limit keyed by the caller's identity (10,000,000 a second),
//!   `x-gateway: vs-proxies` set by the transform, the split, the proxy.
//! * `nginx` (`vs_proxies/nginx_pipeline.conf`): a `map` of
//!   `$http_x_api_key` and `return 401`, `limit_req` keyed by the key at
//!   10,000,000 r/s, `proxy_set_header X-Gateway`.
//! * `haproxy` (`vs_proxies/haproxy_pipeline.cfg`): `http-request deny
//!   deny_status 401` without the key, a stick table's `http_req_rate`
//!   keyed by the key (deny over 10,000,000/s), `http-request set-header`.
//!
//! # Checks
//!
//! Before measuring, each front must split 1000 sequential requests (one
//! keep-alive client connection) about 90/10 (green between 60 and 140,
//! ±4 σ), every answer a 200 with `blue` or `green`, and every request
//! must reach the upstream with `X-Forwarded-For: 127.0.0.1`,
//! `X-Forwarded-Proto: http` and an `X-Forwarded-Host`. Pipeline fronts
//! get the key on those requests, must deliver `x-gateway: vs-proxies` on
//! each, and must answer a request without the key with a 401. Otherwise
//! the bench stops with an error.
//!
//! # Measuring
//!
//! `wrk -d5s --latency` against each front, after a 2 s warm-up each, in 5
//! rounds (`--rounds`, `--secs`, `--warmup-secs`, `--connections`,
//! `--threads` change that); round `r` starts at front `r mod n`, so no
//! front always runs first or last. The tables give the median over
//! rounds per front of requests/s, p50, p99, the front's CPU time per
//! request (utime + stime of all its processes and threads over the run —
//! nginx's master and workers — divided by wrk's request count), its
//! user-space part (utime alone: the kernel's share, sockets and wakeups,
//! differs little between fronts that make the same syscalls a request)
//! and how busy the CPUs were. The ratios to switchyard (`vs sy`) are the
//! medians of each round's ratio, a front's run over switchyard's run of
//! the same round (within a minute of it), with their range over the
//! rounds: on a shared machine the speed of every front drifts between
//! rounds by more than the fronts differ, which a ratio of two medians
//! taken over different rounds would mix into the comparison. Under each table,
//! each front's best run (its highest requests/s, its lowest CPU a
//! request) and its ratio to switchyard's best: the speed drifts between
//! whole runs (two speeds, 15-25 % apart, on the reference machine), so a
//! round compares two fronts fairly only when both ran at the same speed,
//! and the best of several runs is each front's undisturbed figure.
//!
//! Other builds on the machine disturb the numbers: before each round the
//! bench waits until no `rustc`, `cargo` or `clippy-driver` (other than
//! the `cargo` running it) has been seen for 10 s (`--quiet-secs`; at most
//! 120 s, `--max-wait-secs`, then it goes on and says so), and marks every
//! run during which one appeared.
//!
//! Every child (fronts, nginx, haproxy, the example) is stopped when the
//! bench ends, on error too; the `--role` children also exit when their
//! stdin closes (the bench went away).

use std::cell::Cell;
use std::collections::HashSet;
use std::convert::Infallible;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

const SWITCHYARD_TOML: &str = include_str!("vs_proxies/switchyard.toml");
const NGINX_CONF: &str = include_str!("vs_proxies/nginx.conf");
const HAPROXY_CFG: &str = include_str!("vs_proxies/haproxy.cfg");
const SWITCHYARD_PIPELINE_TOML: &str = include_str!("vs_proxies/switchyard_pipeline.toml");
const NGINX_PIPELINE_CONF: &str = include_str!("vs_proxies/nginx_pipeline.conf");
const HAPROXY_PIPELINE_CFG: &str = include_str!("vs_proxies/haproxy_pipeline.cfg");

const BLUE: &[u8] = b"blue\n";
const GREEN: &[u8] = b"green\n";

/// What the pipeline fronts check, and the header they set (the templates
/// spell the same values).
const API_KEY_HEADER: &str = "x-api-key";
const API_KEY: &str = "bench-key";
const TAG_HEADER: &str = "x-gateway";
const TAG_VALUE: &str = "vs-proxies";

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Requests of the split check, and the accepted range of green answers
/// (90/10 over 1000: 100 expected, σ ≈ 9.5).
const CHECK_REQUESTS: usize = 1000;
const CHECK_GREEN: std::ops::RangeInclusive<usize> = 60..=140;

/// The row of `--compare`'s build.
const COMPARED: &str = "switchyard B";

const PINNED_ENV: &str = "VS_PROXIES_PINNED";
const INSTALL: &str = "apt-get install -y nginx haproxy wrk";
const USAGE: &str = "usage: cargo bench --bench vs_proxies -- [--mode pinned|shipped|latency] \
     [--pipeline | --pipeline-only] [--rounds N] [--secs S] [--connections C] [--threads T] \
     [--warmup-secs S] [--quiet-secs S] [--max-wait-secs S] [--example-arg ARG]... \
     [--gateway PATH] [--compare PATH]";

type Error = Box<dyn std::error::Error>;

// === options ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pinned,
    Shipped,
    Latency,
}

impl Mode {
    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "pinned" => Ok(Mode::Pinned),
            "shipped" => Ok(Mode::Shipped),
            "latency" => Ok(Mode::Latency),
            other => Err(format!(
                "unknown mode `{other}` (pinned, shipped or latency)"
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Pinned => "pinned",
            Mode::Shipped => "shipped",
            Mode::Latency => "latency",
        }
    }

    /// Fronts on CPU 1, everything else on CPU 0.
    fn pinned(self) -> bool {
        self != Mode::Shipped
    }

    /// wrk's `-t` and `-c` unless given.
    fn wrk_defaults(self) -> (usize, usize) {
        match self {
            Mode::Pinned => (1, 32),
            Mode::Shipped => (2, 64),
            Mode::Latency => (1, 1),
        }
    }

    /// Workers of each front: one in the pinned modes, one per CPU as
    /// shipped.
    fn workers(self) -> usize {
        if self.pinned() {
            1
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// A table of rows: the fronts doing the same job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowSet {
    /// The 90/10 split alone.
    Split,
    /// API key, rate limit, a request header, then the split.
    Pipeline,
}

impl RowSet {
    fn slug(self) -> &'static str {
        match self {
            RowSet::Split => "split",
            RowSet::Pipeline => "pipeline",
        }
    }

    fn title(self) -> &'static str {
        match self {
            RowSet::Split => "split: a random 90/10 split of GET / between blue and green",
            RowSet::Pipeline => {
                "pipeline: API key, rate limit (never refusing), a request header, the 90/10 split"
            }
        }
    }

    fn templates(self) -> [&'static str; 3] {
        match self {
            RowSet::Split => [SWITCHYARD_TOML, NGINX_CONF, HAPROXY_CFG],
            RowSet::Pipeline => [
                SWITCHYARD_PIPELINE_TOML,
                NGINX_PIPELINE_CONF,
                HAPROXY_PIPELINE_CFG,
            ],
        }
    }

    /// The header every request of this table carries (wrk's `-H`).
    fn key(self) -> Option<(&'static str, &'static str)> {
        match self {
            RowSet::Split => None,
            RowSet::Pipeline => Some((API_KEY_HEADER, API_KEY)),
        }
    }
}

struct Options {
    mode: Mode,
    sets: Vec<RowSet>,
    rounds: usize,
    secs: u64,
    connections: usize,
    threads: usize,
    warmup_secs: u64,
    quiet_secs: u64,
    max_wait_secs: u64,
    /// More arguments for the `gateway` example (`--mode shipped`).
    example_args: Vec<String>,
    /// A build of the `gateway` example serving switchyard's row instead
    /// of the release example next to this binary.
    gateway: Option<PathBuf>,
    /// Another build of the `gateway` example, measured as `switchyard B`.
    compare: Option<PathBuf>,
}

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        mode: Mode::Pinned,
        sets: vec![RowSet::Split],
        rounds: 5,
        secs: 5,
        connections: 0,
        threads: 0,
        warmup_secs: 2,
        quiet_secs: 10,
        max_wait_secs: 120,
        example_args: Vec::new(),
        gateway: None,
        compare: None,
    };
    let (mut connections, mut threads) = (None, None);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--pipeline" => {
                o.sets = vec![RowSet::Split, RowSet::Pipeline];
                continue;
            }
            "--pipeline-only" => {
                o.sets = vec![RowSet::Pipeline];
                continue;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => {}
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--mode" => {
                o.mode = Mode::parse(value)?;
                continue;
            }
            "--example-arg" => {
                o.example_args.push(value.clone());
                continue;
            }
            "--gateway" => {
                o.gateway = Some(PathBuf::from(value));
                continue;
            }
            "--compare" => {
                o.compare = Some(PathBuf::from(value));
                continue;
            }
            _ => {}
        }
        let value = value.parse::<u64>().map_err(|e| format!("{flag}: {e}"))?;
        match flag.as_str() {
            "--rounds" => o.rounds = value.max(1) as usize,
            "--secs" => o.secs = value.max(1),
            "--connections" => connections = Some(value.max(1) as usize),
            "--threads" => threads = Some(value.max(1) as usize),
            "--warmup-secs" => o.warmup_secs = value,
            "--quiet-secs" => o.quiet_secs = value,
            "--max-wait-secs" => o.max_wait_secs = value,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    let (t, c) = o.mode.wrk_defaults();
    o.threads = threads.unwrap_or(t);
    o.connections = connections.unwrap_or(c).max(o.threads);
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--role") {
        match args.get(1).map(String::as_str) {
            Some("floor") => floor(&args[2..]),
            other => {
                eprintln!("vs_proxies: unknown role {other:?}");
                std::process::exit(2);
            }
        }
    }
    let options = match parse_options(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("vs_proxies: {e}");
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let Some(tools) = Tools::find(options.mode.pinned()) else {
        std::process::exit(0);
    };
    if let Some(taskset) = &tools.taskset
        && std::env::var_os(PINNED_ENV).is_none()
    {
        // Re-run this whole process on CPU 0; the fronts go to CPU 1.
        for cpu in ["0", "1"] {
            let ok = Command::new(taskset)
                .args(["-c", cpu, "true"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                println!("vs_proxies: skipped: cannot pin to CPU {cpu} (needs two CPUs, 0 and 1)");
                std::process::exit(0);
            }
        }
        let status = Command::new(taskset)
            .args(["-c", "0"])
            .arg(std::env::current_exe().expect("current_exe"))
            .args(&args)
            .env(PINNED_ENV, "1")
            .status()
            .expect("taskset");
        std::process::exit(status.code().unwrap_or(1));
    }
    if let Err(e) = run(&tools, &options) {
        eprintln!("\nvs_proxies: FAILED: {e}");
        std::process::exit(1);
    }
}

// === tools ===

struct Tools {
    nginx: PathBuf,
    haproxy: PathBuf,
    wrk: PathBuf,
    /// `None` when nothing is pinned (`--mode shipped`).
    taskset: Option<PathBuf>,
}

impl Tools {
    /// The binaries, or `None` after saying how to install the missing ones.
    fn find(pinned: bool) -> Option<Self> {
        let find = |name: &str| -> Option<PathBuf> {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .chain(["/usr/sbin", "/sbin", "/usr/bin", "/usr/local/sbin"].map(PathBuf::from))
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        };
        let names: &[&str] = if pinned {
            &["nginx", "haproxy", "wrk", "taskset"]
        } else {
            &["nginx", "haproxy", "wrk"]
        };
        let found: Vec<Option<PathBuf>> = names.iter().map(|n| find(n)).collect();
        let missing: Vec<&str> = names
            .iter()
            .zip(&found)
            .filter(|(_, p)| p.is_none())
            .map(|(n, _)| *n)
            .collect();
        if !missing.is_empty() {
            println!(
                "vs_proxies: skipped: {} not found. Install with:\n    {INSTALL}\n\
                 (taskset is in util-linux)",
                missing.join(", ")
            );
            return None;
        }
        let mut found = found.into_iter().flatten();
        Some(Tools {
            nginx: found.next()?,
            haproxy: found.next()?,
            wrk: found.next()?,
            taskset: found.next(),
        })
    }

    /// `program` on `cpu` when pinning, else as it is.
    fn on_cpu(&self, cpu: &str, program: impl AsRef<OsStr>) -> Command {
        match &self.taskset {
            Some(taskset) => {
                let mut cmd = Command::new(taskset);
                cmd.args(["-c", cpu]).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    /// A front's command: on CPU 1 when pinning.
    fn front(&self, program: impl AsRef<OsStr>) -> Command {
        self.on_cpu("1", program)
    }

    /// The client's (wrk's) command: on CPU 0 when pinning.
    fn client(&self, program: impl AsRef<OsStr>) -> Command {
        self.on_cpu("0", program)
    }
}

/// The release `gateway` example next to this bench binary
/// (`<target>/release/deps/vs_proxies-HASH` → `<target>/release/examples/gateway`),
/// built first when missing or older than this binary.
fn gateway_example() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .ok_or("cannot find the target directory from the bench's path")?;
    let bin = target.join("release").join("examples").join("gateway");
    let bench_built = std::fs::metadata(&exe)?.modified()?;
    let why = match std::fs::metadata(&bin).and_then(|m| m.modified()) {
        Err(_) => Some("missing"),
        Ok(built) if built < bench_built => Some("older than this bench binary"),
        Ok(_) => None,
    };
    if let Some(why) = why {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        println!(
            "the gateway example ({}) is {why}: building it with `{} build --release --example \
             gateway --all-features` (CARGO_TARGET_DIR={})",
            bin.display(),
            cargo.to_string_lossy(),
            target.display()
        );
        let status = Command::new(&cargo)
            .args([
                "build",
                "--release",
                "--example",
                "gateway",
                "--all-features",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", target)
            .stdin(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run {}: {e}", cargo.to_string_lossy()))?;
        if !status.success() {
            return Err(format!("building the gateway example failed ({status})").into());
        }
        match std::fs::metadata(&bin).and_then(|m| m.modified()) {
            Err(_) => {
                return Err(format!("{} still missing after the build", bin.display()).into());
            }
            // Nothing of it changed since it was built.
            Ok(built) if built < bench_built => println!("cargo found it up to date"),
            Ok(_) => {}
        }
    }
    Ok(bin)
}

// === upstreams (in this process) ===

/// What the upstreams saw, over both.
#[derive(Default)]
struct Counters {
    /// Connections accepted: a front that keeps its pool opens none while
    /// it is measured.
    accepted: AtomicUsize,
    /// Requests with `X-Forwarded-For: …127.0.0.1`, `X-Forwarded-Proto:
    /// http` and an `X-Forwarded-Host`.
    forwarded: AtomicUsize,
    /// Requests with the pipeline's `x-gateway: vs-proxies`.
    tagged: AtomicUsize,
}

impl Counters {
    fn snapshot(&self) -> [usize; 3] {
        [&self.accepted, &self.forwarded, &self.tagged].map(|c| c.load(Ordering::Relaxed))
    }
}

fn count(counters: &Counters, headers: &http::HeaderMap) {
    let forwarded = headers
        .get(X_FORWARDED_FOR)
        .is_some_and(|v| v.as_bytes().ends_with(b"127.0.0.1"))
        && headers
            .get(X_FORWARDED_PROTO)
            .is_some_and(|v| v.as_bytes() == b"http")
        && headers.contains_key(X_FORWARDED_HOST);
    if forwarded {
        counters.forwarded.fetch_add(1, Ordering::Relaxed);
    }
    if headers
        .get(TAG_HEADER)
        .is_some_and(|v| v.as_bytes() == TAG_VALUE.as_bytes())
    {
        counters.tagged.fetch_add(1, Ordering::Relaxed);
    }
}

async fn upstream(body: &'static [u8], counters: Arc<Counters>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            counters.accepted.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            let counters = counters.clone();
            let answer = service_fn(move |req: Request<Incoming>| {
                count(&counters, req.headers());
                async move {
                    let mut res = Response::new(Full::new(Bytes::from_static(body)));
                    if req.uri().path() != "/" {
                        *res.status_mut() = StatusCode::NOT_FOUND;
                    }
                    Ok::<_, Infallible>(res)
                }
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), answer));
        }
    });
    Ok(addr)
}

/// Starts both upstreams on their own thread and current-thread runtime.
fn start_upstreams(counters: Arc<Counters>) -> Result<(SocketAddr, SocketAddr), Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("upstreams".into())
        .spawn(move || {
            let rt = runtime(1);
            rt.block_on(async move {
                let addrs = async {
                    Ok::<_, std::io::Error>((
                        upstream(BLUE, counters.clone()).await?,
                        upstream(GREEN, counters).await?,
                    ))
                }
                .await;
                let _ = tx.send(addrs.map_err(|e| e.to_string()));
                std::future::pending::<()>().await;
            });
        })?;
    Ok(rx.recv()??)
}

// === fronts of our own (child processes: `--role …`) ===

/// A current-thread runtime for one worker, else a multi-thread one.
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.enable_all().build().expect("runtime")
}

fn role_arg(args: &[String], name: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .unwrap_or_else(|| panic!("{name} VALUE missing"))
        .clone()
}

/// A role child exits when its stdin closes: the bench went away.
fn exit_with_stdin() {
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
}

/// What the bench waits for on a role child's stdout.
fn announce(addr: SocketAddr) -> std::io::Result<()> {
    println!("listening {addr}");
    std::io::stdout().flush()
}

/// `--role floor --blue ADDR --green ADDR --workers N`: the hyper floor
/// (see the module docs) on `N` threads, each a current-thread runtime
/// accepting on its own `SO_REUSEPORT` listener of one port (switchyard's
/// serving model, `[server] threads`, so that the floor differs from it
/// only in what a request costs); prints `listening ADDR`.
fn floor(args: &[String]) -> ! {
    let blue: SocketAddr = role_arg(args, "--blue").parse().expect("--blue");
    let green: SocketAddr = role_arg(args, "--green").parse().expect("--green");
    let workers: usize = role_arg(args, "--workers").parse().expect("--workers");
    exit_with_stdin();
    let (bound_tx, bound_rx) = std::sync::mpsc::channel::<std::io::Result<SocketAddr>>();
    let mut addr: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let mut threads = Vec::new();
    for _ in 0..workers.max(1) {
        let bound = bound_tx.clone();
        threads.push(std::thread::spawn(move || {
            runtime(1).block_on(async move {
                let listener = match reuseport_listener(addr) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = bound.send(Err(e));
                        return;
                    }
                };
                let _ = bound.send(listener.local_addr());
                floor_accept(listener, [blue, green]).await;
            });
        }));
        // The first thread's port is the others' too.
        match bound_rx.recv() {
            Ok(Ok(a)) => addr = a,
            Ok(Err(e)) => {
                eprintln!("floor: {e}");
                std::process::exit(1);
            }
            Err(_) => std::process::exit(1),
        }
    }
    if let Err(e) = announce(addr) {
        eprintln!("floor: {e}");
        std::process::exit(1);
    }
    for t in threads {
        let _ = t.join();
    }
    std::process::exit(1);
}

/// A listener on `addr` that other threads can bind too (`SO_REUSEPORT`:
/// the kernel spreads new connections over them).
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// One floor thread's accept loop: each connection served on this thread.
async fn floor_accept(listener: tokio::net::TcpListener, upstreams: [SocketAddr; 2]) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok(peer) = HeaderValue::from_str(&peer.ip().to_string()) else {
            continue;
        };
        let conn = Arc::new(FloorConn {
            upstreams,
            senders: Default::default(),
            peer,
        });
        let svc = service_fn(move |req| floor_forward(conn.clone(), req));
        tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
    }
}

/// One client connection of the floor: its upstream connections, opened
/// on first use (blue, green).
struct FloorConn {
    upstreams: [SocketAddr; 2],
    senders: [Mutex<Option<SendRequest<Incoming>>>; 2],
    peer: HeaderValue,
}

type FloorBody = Either<Incoming, Empty<Bytes>>;

async fn floor_forward(
    conn: Arc<FloorConn>,
    mut req: Request<Incoming>,
) -> Result<Response<FloorBody>, Infallible> {
    let i = usize::from(!blue_draw());
    if req.uri().scheme().is_some() {
        let origin = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(origin);
    }
    let headers = req.headers_mut();
    let xff = match headers.get(X_FORWARDED_FOR) {
        Some(prev) => {
            let mut v = prev.as_bytes().to_vec();
            v.extend_from_slice(b", ");
            v.extend_from_slice(conn.peer.as_bytes());
            HeaderValue::from_bytes(&v).unwrap_or_else(|_| conn.peer.clone())
        }
        None => conn.peer.clone(),
    };
    headers.insert(X_FORWARDED_FOR, xff);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(host) = headers.get(HOST).cloned() {
        headers.insert(X_FORWARDED_HOST, host);
    }
    let cached = conn.senders[i]
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let mut sender = match cached {
        Some(s) => s,
        None => match floor_connect(conn.upstreams[i]).await {
            Some(s) => s,
            None => return Ok(bad_gateway()),
        },
    };
    if sender.ready().await.is_err() {
        // Closed by the upstream: open another.
        sender = match floor_connect(conn.upstreams[i]).await {
            Some(s) => s,
            None => return Ok(bad_gateway()),
        };
        if sender.ready().await.is_err() {
            return Ok(bad_gateway());
        }
    }
    let res = sender.send_request(req).await;
    *conn.senders[i]
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(sender);
    Ok(match res {
        Ok(res) => res.map(Either::Left),
        Err(_) => bad_gateway(),
    })
}

async fn floor_connect(addr: SocketAddr) -> Option<SendRequest<Incoming>> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

fn bad_gateway() -> Response<FloorBody> {
    let mut res = Response::new(Either::Right(Empty::new()));
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    res
}

/// Blue 90 times in 100: a per-thread xorshift64.
fn blue_draw() -> bool {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(Instant::now()) | 1
        });
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x % 100 < 90
    })
}

// === processes ===

/// A child process, stopped (TERM, then KILL) when dropped. Its stdout and
/// stderr go to files in the run directory.
struct Proc {
    name: &'static str,
    child: Child,
    stdout: PathBuf,
    /// Shown when it fails: its stderr, and nginx's error log.
    logs: Vec<PathBuf>,
}

impl Proc {
    /// Starts `cmd` with its output in `DIR/STEM.stdout` and `.stderr`;
    /// its stdin is a pipe (the `--role` children exit when it closes) or
    /// nothing.
    fn spawn(
        name: &'static str,
        stem: &str,
        mut cmd: Command,
        dir: &Path,
        stdin_pipe: bool,
    ) -> Result<Proc, Error> {
        let stdout = dir.join(format!("{stem}.stdout"));
        let stderr = dir.join(format!("{stem}.stderr"));
        let child = cmd
            .stdin(if stdin_pipe {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Proc {
            name,
            child,
            stdout,
            logs: vec![stderr],
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Result<(), Error> {
        match self.child.try_wait()? {
            Some(status) => {
                Err(format!("{} exited ({status}){}", self.name, self.log_tail()).into())
            }
            None => Ok(()),
        }
    }

    /// Waits for a line `PREFIX ADDR` on its stdout, then until `ADDR`
    /// accepts connections.
    fn wait_announced(&mut self, prefix: &str) -> Result<SocketAddr, Error> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.exited()?;
            let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
            if let Some(rest) = out.lines().find_map(|l| l.strip_prefix(prefix)) {
                let addr: SocketAddr = rest
                    .trim()
                    .parse()
                    .map_err(|e| format!("{} announced {rest:?}: {e}", self.name))?;
                self.wait_listening(addr)?;
                return Ok(addr);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not print `{prefix}ADDR`{}",
                    self.name,
                    self.log_tail()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `addr` accepts connections.
    fn wait_listening(&mut self, addr: SocketAddr) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.exited()?;
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} is not listening on {addr}{}",
                    self.name,
                    self.log_tail()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let mut out = String::new();
        for path in &self.logs {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            out += &format!("; {}:\n{}", path.display(), tail.join("\n"));
        }
        out
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> Result<SocketAddr, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A row: a front (or `direct`) and where wrk sends its requests.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    /// The front's process (`None` for `direct`), stopped when dropped.
    proc: Option<Proc>,
}

/// Starts the fronts of a table, as the mode wants them.
struct Launch<'a> {
    tools: &'a Tools,
    dir: &'a Path,
    blue: SocketAddr,
    green: SocketAddr,
    /// Workers per front.
    workers: usize,
    /// `--mode shipped`: the `gateway` example serves switchyard's row,
    /// with these further arguments.
    example: (PathBuf, Vec<String>),
    /// `--compare`: another build, serving `switchyard B`.
    compare: Option<PathBuf>,
}

impl Launch<'_> {
    /// The table's rows: its fronts, then the references.
    fn targets(&self, set: RowSet) -> Result<Vec<Target>, Error> {
        let [switchyard, nginx, haproxy] = set.templates();
        let mut targets = vec![self.switchyard(set, switchyard, &self.example.0, "switchyard")?];
        if let Some(other) = &self.compare {
            targets.push(self.switchyard(set, switchyard, other, COMPARED)?);
        }
        targets.push(self.nginx(set, nginx)?);
        targets.push(self.haproxy(set, haproxy)?);
        if set == RowSet::Split {
            targets.push(self.floor()?);
            targets.push(Target {
                name: "direct",
                addr: self.blue,
                proc: None,
            });
        }
        Ok(targets)
    }

    fn render(&self, template: &str, listen: Option<SocketAddr>) -> String {
        let text = template
            .replace("RUN_DIR", &self.dir.display().to_string())
            .replace("BLUE_ADDR", &self.blue.to_string())
            .replace("GREEN_ADDR", &self.green.to_string())
            .replace("WORKERS", &self.workers.to_string());
        match listen {
            Some(addr) => text.replace("LISTEN_ADDR", &addr.to_string()),
            None => text,
        }
    }

    /// A row served by `example`, a build of the `gateway` example.
    fn switchyard(
        &self,
        set: RowSet,
        template: &str,
        example: &Path,
        name: &'static str,
    ) -> Result<Target, Error> {
        let stem = format!("{}-{}", name.replace(' ', "-"), set.slug());
        let config = self.dir.join(format!("{stem}.toml"));
        let toml = self.render(template, None);
        // The release `gateway` example, as a user runs it: `threads` of
        // its own (one pinned, else one per CPU), no access log (nginx's
        // and haproxy's log nothing either).
        let args = &self.example.1;
        std::fs::write(
            &config,
            format!("{toml}\n[server]\nthreads = {}\n", self.workers),
        )?;
        let mut cmd = self.tools.front(example);
        cmd.arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(free_addr()?.to_string())
            .args(["--admin-listen", "127.0.0.1:0", "--no-access-log"])
            .args(args);
        let mut proc = Proc::spawn(name, &stem, cmd, self.dir, false)?;
        let prefix = "gateway: http://";
        let addr = proc.wait_announced(prefix)?;
        Ok(Target {
            name,
            addr,
            proc: Some(proc),
        })
    }

    fn nginx(&self, set: RowSet, template: &str) -> Result<Target, Error> {
        let stem = format!("nginx-{}", set.slug());
        let listen = free_addr()?;
        let conf = self.dir.join(format!("{stem}.conf"));
        std::fs::write(&conf, self.render(template, Some(listen)))?;
        let error_log = self.dir.join(format!("{stem}-error.log"));
        let mut cmd = self.tools.front(&self.tools.nginx);
        cmd.arg("-p")
            .arg(self.dir)
            .arg("-e")
            .arg(&error_log)
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"]);
        let mut proc = Proc::spawn("nginx", &stem, cmd, self.dir, false)?;
        proc.logs.push(error_log);
        proc.wait_listening(listen)?;
        Ok(Target {
            name: "nginx",
            addr: listen,
            proc: Some(proc),
        })
    }

    fn haproxy(&self, set: RowSet, template: &str) -> Result<Target, Error> {
        let stem = format!("haproxy-{}", set.slug());
        let listen = free_addr()?;
        let cfg = self.dir.join(format!("{stem}.cfg"));
        std::fs::write(&cfg, self.render(template, Some(listen)))?;
        let mut cmd = self.tools.front(&self.tools.haproxy);
        cmd.arg("-db").arg("-f").arg(&cfg);
        let mut proc = Proc::spawn("haproxy", &stem, cmd, self.dir, false)?;
        proc.wait_listening(listen)?;
        Ok(Target {
            name: "haproxy",
            addr: listen,
            proc: Some(proc),
        })
    }

    fn floor(&self) -> Result<Target, Error> {
        let mut cmd = self.tools.front(std::env::current_exe()?);
        cmd.args(["--role", "floor", "--blue", &self.blue.to_string()])
            .args(["--green", &self.green.to_string()])
            .args(["--workers", &self.workers.to_string()]);
        let mut proc = Proc::spawn("hyper floor", "floor", cmd, self.dir, true)?;
        let addr = proc.wait_announced("listening ")?;
        Ok(Target {
            name: "hyper floor",
            addr,
            proc: Some(proc),
        })
    }
}

// === checks ===

/// `GET /` on one keep-alive connection, `n` times, with `header`: the
/// status and body of each answer, in order, to `each`.
fn get_n(
    addr: SocketAddr,
    n: usize,
    header: Option<(&str, &str)>,
    mut each: impl FnMut(StatusCode, &[u8]) -> Result<(), Error>,
) -> Result<(), Error> {
    let rt = runtime(1);
    rt.block_on(async move {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let uri: Uri = format!("http://{addr}/").parse()?;
        for _ in 0..n {
            let mut req = Request::get(uri.clone());
            if let Some((name, value)) = header {
                req = req.header(name, value);
            }
            let res = client.request(req.body(Empty::new())?).await?;
            let status = res.status();
            let body = res.into_body().collect().await?.to_bytes();
            each(status, &body)?;
        }
        Ok(())
    })
}

/// Every front of the table splits about 90/10, forwards with the
/// `X-Forwarded-*` headers, and, in the pipeline table, sets `x-gateway`
/// and refuses a request without the key.
fn check_fronts(targets: &[Target], set: RowSet, counters: &Counters) -> Result<(), Error> {
    println!(
        "checks: {CHECK_REQUESTS} sequential requests{} on one connection, green in \
         {CHECK_GREEN:?}, each upstream request with X-Forwarded-For/-Proto/-Host{}",
        if set.key().is_some() {
            " with the API key"
        } else {
            ""
        },
        if set == RowSet::Pipeline {
            " and x-gateway; a request without the key must get 401"
        } else {
            ""
        }
    );
    for t in targets.iter().filter(|t| t.proc.is_some()) {
        let before = counters.snapshot();
        let (mut blue, mut green) = (0, 0);
        get_n(t.addr, CHECK_REQUESTS, set.key(), |status, body| {
            match (status, body) {
                (StatusCode::OK, BLUE) => blue += 1,
                (StatusCode::OK, GREEN) => green += 1,
                _ => {
                    return Err(format!(
                        "{} answered {status} {:?}",
                        t.name,
                        String::from_utf8_lossy(body)
                    )
                    .into());
                }
            }
            Ok(())
        })
        .map_err(|e| format!("{}: {e}", t.name))?;
        let after = counters.snapshot();
        let (forwarded, tagged) = (after[1] - before[1], after[2] - before[2]);
        let mut line = format!(
            "  {:<12} blue {blue:>4}  green {green:>4}  forwarded {forwarded:>4}",
            t.name
        );
        let mut wrong = Vec::new();
        if !CHECK_GREEN.contains(&green) {
            wrong.push(format!("does not split 90/10 (green {green})"));
        }
        if forwarded != CHECK_REQUESTS {
            wrong.push(format!(
                "forwarded {forwarded} of {CHECK_REQUESTS} requests with the X-Forwarded headers"
            ));
        }
        if set == RowSet::Pipeline {
            let mut refused = StatusCode::OK;
            get_n(t.addr, 1, None, |status, _| {
                refused = status;
                Ok(())
            })?;
            line += &format!("  x-gateway {tagged:>4}  no key: {}", refused.as_u16());
            if tagged != CHECK_REQUESTS {
                wrong.push(format!("set x-gateway on {tagged} of {CHECK_REQUESTS}"));
            }
            if refused != StatusCode::UNAUTHORIZED {
                wrong.push(format!("answered {refused} without the key"));
            }
        }
        println!("{line}");
        if !wrong.is_empty() {
            return Err(format!("{}: {}", t.name, wrong.join("; ")).into());
        }
    }
    Ok(())
}

// === measurement ===

/// Busy and total jiffies of each CPU (`cpu0`, `cpu1`, … in order), from
/// `/proc/stat`.
fn cpu_jiffies() -> Vec<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|line| {
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal ...
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

/// CPU time in clock ticks: user and system.
#[derive(Clone, Copy, Default)]
struct Ticks {
    user: u64,
    system: u64,
}

impl Ticks {
    fn total(self) -> u64 {
        self.user + self.system
    }
}

impl std::ops::AddAssign for Ticks {
    fn add_assign(&mut self, other: Ticks) {
        self.user += other.user;
        self.system += other.system;
    }
}

/// `(ppid, utime and stime)` of a process (all its threads).
fn proc_stat(pid: u32) -> Option<(u32, Ticks)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ppid = f.get(1)?.parse().ok()?;
    let ticks = Ticks {
        user: f.get(11)?.parse().ok()?,
        system: f.get(12)?.parse().ok()?,
    };
    Some((ppid, ticks))
}

/// CPU ticks of a process and its direct children (nginx's workers).
fn tree_ticks(pid: u32) -> Ticks {
    let mut total = proc_stat(pid).map_or(Ticks::default(), |(_, t)| t);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            if let Some(child) = entry.file_name().to_str().and_then(|s| s.parse().ok())
                && let Some((ppid, t)) = proc_stat(child)
                && ppid == pid
            {
                total += t;
            }
        }
    }
    total
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// This process and its ancestors (the `cargo bench` running it).
fn ancestors() -> HashSet<u32> {
    let mut set = HashSet::new();
    let mut pid = std::process::id();
    while pid > 1 && set.insert(pid) {
        match proc_stat(pid) {
            Some((ppid, _)) => pid = ppid,
            None => break,
        }
    }
    set
}

/// A compiler or cargo at work, other than our own ancestors.
fn compiling(exclude: &HashSet<u32>) -> Option<String> {
    let dir = std::fs::read_dir("/proc").ok()?;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if exclude.contains(&pid) {
            continue;
        }
        if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
            let comm = comm.trim();
            if matches!(comm, "rustc" | "cargo" | "clippy-driver") {
                return Some(format!("{comm} ({pid})"));
            }
        }
    }
    None
}

/// Waits until no compile has been seen for `quiet`; gives up after `max`.
/// Returns whether it had to give up.
fn wait_quiet(exclude: &HashSet<u32>, quiet: Duration, max: Duration) -> bool {
    let start = Instant::now();
    let mut quiet_since = Instant::now();
    let mut said = false;
    loop {
        if let Some(what) = compiling(exclude) {
            if !said {
                println!("  waiting: {what} is running");
                said = true;
            }
            quiet_since = Instant::now();
        }
        if quiet_since.elapsed() >= quiet {
            return false;
        }
        if start.elapsed() >= max {
            println!("  gave up waiting for a quiet machine after {max:?}");
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[derive(Default, Clone)]
struct Run {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    requests: u64,
    socket_errors: Option<String>,
    non_2xx: u64,
    /// Front CPU time per request, µs (`None` for `direct`).
    cpu_us_per_req: Option<f64>,
    /// The user-space part of it.
    user_us_per_req: Option<f64>,
    /// How busy each CPU was, %.
    busy: Vec<f64>,
    /// How busy all CPUs were together, %.
    busy_all: f64,
    new_upstream_conns: usize,
    compile_seen: bool,
}

/// A busy column of the tables.
#[derive(Clone, Copy)]
enum Busy {
    Cpu(usize),
    All,
}

impl Busy {
    fn of(self, run: &Run) -> f64 {
        match self {
            Busy::Cpu(i) => run.busy.get(i).copied().unwrap_or(f64::NAN),
            Busy::All => run.busy_all,
        }
    }

    /// The front's CPU then the client's when pinned; all CPUs otherwise.
    fn columns(mode: Mode) -> &'static [(&'static str, Busy)] {
        if mode.pinned() {
            &[("cpu1%", Busy::Cpu(1)), ("cpu0%", Busy::Cpu(0))]
        } else {
            &[("cpu%", Busy::All)]
        }
    }
}

fn parse_latency(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        "m" => n * 60e6,
        _ => return None,
    })
}

fn parse_wrk(out: &str) -> Result<Run, Error> {
    let mut run = Run::default();
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("50%") {
            run.p50_us = parse_latency(v.trim()).ok_or("p50")?;
        } else if let Some(v) = line.strip_prefix("99%") {
            run.p99_us = parse_latency(v.trim()).ok_or("p99")?;
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            run.rps = v.trim().parse()?;
        } else if line.contains(" requests in ") {
            run.requests = line.split_whitespace().next().unwrap_or("0").parse()?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            run.socket_errors = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.non_2xx = v.trim().parse()?;
        }
    }
    if run.rps == 0.0 || run.requests == 0 {
        return Err(format!("could not read wrk's output:\n{out}").into());
    }
    Ok(run)
}

/// The runs of a table: per target, in round order.
struct Measured {
    runs: Vec<Vec<Run>>,
    compiles: usize,
    gave_up: bool,
}

struct Bench<'a> {
    tools: &'a Tools,
    options: &'a Options,
    counters: Arc<Counters>,
    exclude: HashSet<u32>,
    ticks: f64,
}

impl Bench<'_> {
    fn wait_quiet(&self) -> bool {
        wait_quiet(
            &self.exclude,
            Duration::from_secs(self.options.quiet_secs),
            Duration::from_secs(self.options.max_wait_secs),
        )
    }

    fn wrk(&self, target: &Target, secs: u64, set: RowSet) -> Result<Run, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (stop, seen, exclude) = (stop.clone(), seen.clone(), self.exclude.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if compiling(&exclude).is_some() {
                        seen.store(true, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            })
        };
        let mut cmd = self.tools.client(&self.tools.wrk);
        cmd.arg(format!("-t{}", self.options.threads))
            .arg(format!("-c{}", self.options.connections))
            .arg(format!("-d{secs}s"))
            .arg("--latency");
        if let Some((name, value)) = set.key() {
            cmd.arg("-H").arg(format!("{name}: {value}"));
        }
        cmd.arg(format!("http://{}/", target.addr));
        let pid = target.proc.as_ref().map(Proc::pid);
        let conns_before = self.counters.accepted.load(Ordering::Relaxed);
        let ticks_before = pid.map(tree_ticks);
        let cpu_before = cpu_jiffies();
        let out = cmd.output();
        let cpu_after = cpu_jiffies();
        let ticks_after = pid.map(tree_ticks);
        let conns_after = self.counters.accepted.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        let _ = watcher.join();
        let out = out?;
        if !out.status.success() {
            return Err(format!(
                "wrk against {} failed: {}",
                target.name,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let mut run = parse_wrk(&String::from_utf8_lossy(&out.stdout))?;
        let pct = |busy: u64, total: u64| 100.0 * busy as f64 / total.max(1) as f64;
        let deltas: Vec<(u64, u64)> = cpu_before
            .iter()
            .zip(&cpu_after)
            .map(|(&(b0, t0), &(b1, t1))| (b1.saturating_sub(b0), t1.saturating_sub(t0)))
            .collect();
        run.busy = deltas.iter().map(|&(b, t)| pct(b, t)).collect();
        run.busy_all = pct(
            deltas.iter().map(|d| d.0).sum(),
            deltas.iter().map(|d| d.1).sum(),
        );
        let per_req = |ticks: u64| ticks as f64 / self.ticks * 1e6 / run.requests as f64;
        if let (Some(a), Some(b)) = (ticks_before, ticks_after) {
            run.cpu_us_per_req = Some(per_req(b.total().saturating_sub(a.total())));
            run.user_us_per_req = Some(per_req(b.user.saturating_sub(a.user)));
        }
        run.new_upstream_conns = conns_after - conns_before;
        run.compile_seen = seen.load(Ordering::Relaxed);
        Ok(run)
    }

    /// Warm-up, then interleaved rounds over `targets`, each run printed.
    fn measure(&self, targets: &[Target], set: RowSet) -> Result<Measured, Error> {
        let options = self.options;
        let busy = Busy::columns(options.mode);
        let mut gave_up = self.wait_quiet();
        if options.warmup_secs > 0 {
            println!("warm-up: {} s each", options.warmup_secs);
            for t in targets {
                self.wrk(t, options.warmup_secs, set)?;
            }
        }
        print!(
            "{:<5} {:<12} {:>9} {:>9} {:>9} {:>10} {:>7}",
            "round", "front", "req/s", "p50", "p99", "CPU us/req", "user"
        );
        for (name, _) in busy {
            print!(" {name:>6}");
        }
        println!(" {:>6} {:>8}  notes", "conns", "non-2xx");
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
        let mut compiles = 0;
        for round in 0..options.rounds {
            gave_up |= self.wait_quiet();
            for k in 0..targets.len() {
                let i = (round + k) % targets.len();
                let t = &targets[i];
                let r = self.wrk(t, options.secs, set)?;
                let mut notes = Vec::new();
                if let Some(e) = r.socket_errors.as_ref() {
                    notes.push(format!("socket errors: {e}"));
                }
                if r.compile_seen {
                    notes.push("a compile ran".to_string());
                    compiles += 1;
                }
                print!(
                    "{:<5} {:<12} {:>9.0} {:>9} {:>9} {:>10} {:>7}",
                    round + 1,
                    t.name,
                    r.rps,
                    fmt_latency(r.p50_us),
                    fmt_latency(r.p99_us),
                    fmt_cpu(r.cpu_us_per_req.unwrap_or(f64::NAN)),
                    fmt_cpu(r.user_us_per_req.unwrap_or(f64::NAN)),
                );
                for (_, b) in busy {
                    print!(" {:>6.0}", b.of(&r));
                }
                println!(
                    " {:>6} {:>8}  {}",
                    r.new_upstream_conns,
                    r.non_2xx,
                    notes.join("; ")
                );
                runs[i].push(r);
            }
        }
        Ok(Measured {
            runs,
            compiles,
            gave_up,
        })
    }

    /// The medians table of a measured row set, and what to read it with.
    fn report(&self, targets: &[Target], measured: &Measured, set: RowSet) {
        let options = self.options;
        let busy = Busy::columns(options.mode);
        let runs = &measured.runs;
        let med = |i: usize, f: &dyn Fn(&Run) -> f64| median(runs[i].iter().map(f).collect());
        // Each round's ratio to switchyard's run of that round (see the
        // module docs), then their median and range.
        let ratios = |i: usize, f: &dyn Fn(&Run) -> f64| -> Vec<f64> {
            runs[i]
                .iter()
                .zip(&runs[0])
                .map(|(r, sy)| f(r) / f(sy))
                .collect()
        };
        let cpu = |r: &Run| r.cpu_us_per_req.unwrap_or(f64::NAN);
        let user = |r: &Run| r.user_us_per_req.unwrap_or(f64::NAN);
        println!(
            "\n{} — mode {}: medians over {} rounds ({} s each, wrk -t{} -c{}):",
            set.slug(),
            options.mode.name(),
            options.rounds,
            options.secs,
            options.threads,
            options.connections
        );
        print!(
            "{:<22} {:>9} {:>8} {:>11} {:>9} {:>9} {:>10} {:>10} {:>7}",
            "front", "req/s", "vs sy", "range", "p50", "p99", "CPU us/req", "vs sy", "user"
        );
        for (name, _) in busy {
            print!(" {name:>6}");
        }
        println!();
        for (i, t) in targets.iter().enumerate() {
            let rps = med(i, &|r| r.rps);
            let c = med(i, &cpu);
            let rps_ratios = ratios(i, &|r| r.rps);
            let (lo, hi) = rps_ratios
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                    (lo.min(x), hi.max(x))
                });
            let name = match t.name {
                "direct" => "direct (no proxy, ref)",
                "hyper floor" => "hyper floor (ref)",
                other => other,
            };
            print!(
                "{:<22} {:>9.0} {:>8.2} {:>11} {:>9} {:>9} {:>10} {:>10} {:>7}",
                name,
                rps,
                median(rps_ratios),
                format!("{lo:.2}-{hi:.2}"),
                fmt_latency(med(i, &|r| r.p50_us)),
                fmt_latency(med(i, &|r| r.p99_us)),
                fmt_cpu(c),
                if c.is_nan() {
                    "-".into()
                } else {
                    format!("{:.2}", median(ratios(i, &cpu)))
                },
                fmt_cpu(med(i, &user)),
            );
            for (_, b) in busy {
                print!(" {:>6.0}", med(i, &|r| b.of(r)));
            }
            println!();
        }
        // Each front's least disturbed run: this machine's speed drifts
        // between runs by more than the fronts differ (whole runs at two
        // speeds, 15-25 % apart), and a round's ratio compares two fronts
        // only when both ran at the same speed. The best of several runs
        // is each front's undisturbed speed, if it had one.
        println!(
            "best of the {} rounds: {:<22} {:>9} {:>8} {:>10} {:>10}",
            options.rounds, "front", "req/s", "vs sy", "CPU us/req", "vs sy"
        );
        let best_rps = |i: usize| runs[i].iter().map(|r| r.rps).fold(f64::NAN, f64::max);
        let best_cpu = |i: usize| runs[i].iter().map(cpu).fold(f64::NAN, f64::min);
        for (i, t) in targets.iter().enumerate() {
            let (rps, c) = (best_rps(i), best_cpu(i));
            println!(
                "{:<22} {:<22} {:>9.0} {:>8.2} {:>10} {:>10}",
                "",
                t.name,
                rps,
                rps / best_rps(0),
                fmt_cpu(c),
                if c.is_nan() {
                    "-".into()
                } else {
                    format!("{:.2}", c / best_cpu(0))
                },
            );
        }
        let non_2xx: u64 = runs.iter().flatten().map(|r| r.non_2xx).sum();
        let errors = runs
            .iter()
            .flatten()
            .filter(|r| r.socket_errors.is_some())
            .count();
        println!(
            "non-2xx answers: {non_2xx}; runs with socket errors: {errors}; runs during which a \
             compile ran: {}{}",
            measured.compiles,
            if measured.gave_up {
                " (gave up waiting for a quiet machine at least once)"
            } else {
                ""
            }
        );
        println!(
            "vs sy: ratio to switchyard (req/s: higher is better; CPU us/req: lower is better), \
             the median of each round's ratio to switchyard's run of the same round; range: the \
             lowest and highest of those for req/s. CPU us/req: the front's processes and threads \
             (nginx's master and workers), user + system; user: the user-space part of it (the \
             rest is the kernel's: sockets, wakeups)."
        );
        if options.mode.pinned() {
            println!("cpu1%: the fronts' CPU; cpu0%: wrk's and the upstreams'.");
        } else {
            println!("cpu%: all CPUs together (nothing pinned).");
        }
        println!(
            "conns: upstream connections opened during the run (0 = the front kept its pool{}).",
            if set == RowSet::Split {
                "; the hyper floor opens one per colour per new client connection, so it shows up \
                 to 2 × wrk's connections"
            } else {
                ""
            }
        );
        println!(
            "switchyard: the {} --no-access-log{} (switchyard::server::Server \
             with the default [server] limits: header-read and idle timeouts, connection cap, head \
             and header limits; [server] threads = {}, each a current-thread runtime with its own \
             listener; mimalloc).",
            match &options.gateway {
                Some(bin) => format!("gateway example built as {}", bin.display()),
                None => "release gateway example".to_string(),
            },
            if options.example_args.is_empty() {
                String::new()
            } else {
                format!(" {}", options.example_args.join(" "))
            },
            options.mode.workers(),
        );
        if let Some(other) = &options.compare {
            println!(
                "{COMPARED}: the same, served by the build at {}.",
                other.display()
            );
        }
        match set {
            RowSet::Split => println!(
                "hyper floor: bare hyper HTTP/1.1 server and client connections, NOT hardened (no \
                 timeouts, no limits, no pool, hop-by-hop headers untouched): the least any \
                 hyper-based proxy can cost, for reference."
            ),
            RowSet::Pipeline => println!(
                "pipeline: wrk sends {API_KEY_HEADER}: {API_KEY}; switchyard also answers with \
                 RateLimit and RateLimit-Policy headers (its default), nginx and haproxy with none."
            ),
        }
    }
}

fn fmt_latency(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{us:.0}us")
    }
}

fn fmt_cpu(us: f64) -> String {
    if us.is_nan() {
        "-".into()
    } else {
        format!("{us:.1}")
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

// === the run ===

fn run(tools: &Tools, options: &Options) -> Result<(), Error> {
    let dir = std::env::temp_dir().join(format!("switchyard-vs-proxies-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(tools, options, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn version(bin: &Path, arg: &str) -> String {
    Command::new(bin)
        .arg(arg)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

fn run_in(tools: &Tools, options: &Options, dir: &Path) -> Result<(), Error> {
    let mode = options.mode;
    let workers = mode.workers();
    println!(
        "vs_proxies: mode {} — switchyard vs nginx vs haproxy (and a bare hyper floor), random \
         90/10 split over loopback{}",
        mode.name(),
        if options.sets.contains(&RowSet::Pipeline) {
            ", and the full pipeline"
        } else {
            ""
        }
    );
    println!("  {}", version(&tools.nginx, "-v"));
    println!("  {}", version(&tools.haproxy, "-v"));
    println!("  {}", version(&tools.wrk, "-v"));
    let wrk = format!("wrk -t{} -c{}", options.threads, options.connections);
    match mode {
        Mode::Pinned | Mode::Latency => println!(
            "placement: each front on CPU 1 alone with one thread of work (switchyard and the \
             hyper floor a current-thread tokio runtime, nginx worker_processes 1, haproxy \
             nbthread 1); {wrk} and both upstreams (one current-thread runtime) on CPU 0{}",
            if mode == Mode::Latency {
                "; one request in flight: p50/p99 are a request's round trip through the front"
            } else {
                ""
            }
        ),
        Mode::Shipped => println!(
            "placement: nothing pinned; every front with {workers} workers (switchyard's and the \
             hyper floor's {workers} threads each a current-thread runtime on its own SO_REUSEPORT \
             listener, nginx worker_processes {workers}, \
             haproxy nbthread {workers}); {wrk} and both upstreams (one current-thread runtime) \
             share the same CPUs"
        ),
    }
    let fronts: usize = options
        .sets
        .iter()
        .map(|s| if *s == RowSet::Split { 5 } else { 3 })
        .sum::<usize>()
        + options.sets.len() * usize::from(options.compare.is_some());
    println!(
        "{} rounds of {} s per front (+ {} s warm-up each), order rotated each round, medians \
         reported: about {} s of wrk, plus checks and waits for a quiet machine",
        options.rounds,
        options.secs,
        options.warmup_secs,
        fronts as u64 * (options.warmup_secs + options.rounds as u64 * options.secs)
    );

    let counters = Arc::new(Counters::default());
    let (blue, green) = start_upstreams(counters.clone())?;
    println!("upstreams: blue {blue}, green {green}");
    let example = {
        let bin = match &options.gateway {
            Some(bin) if bin.is_file() => bin.clone(),
            Some(bin) => return Err(format!("--gateway {}: no such file", bin.display()).into()),
            None => gateway_example()?,
        };
        println!(
            "switchyard: {} --no-access-log {}",
            bin.display(),
            options.example_args.join(" ")
        );
        (bin, options.example_args.clone())
    };
    if let Some(other) = &options.compare {
        if !other.is_file() {
            return Err(format!("--compare {}: no such file", other.display()).into());
        }
        println!("switchyard B: {}", other.display());
    }
    let launch = Launch {
        tools,
        dir,
        blue,
        green,
        workers,
        example,
        compare: options.compare.clone(),
    };
    let bench = Bench {
        tools,
        options,
        counters,
        exclude: ancestors(),
        ticks: clock_ticks(),
    };
    for &set in &options.sets {
        println!("\n=== {} ===", set.title());
        let targets = launch.targets(set)?;
        check_fronts(&targets, set, &bench.counters)?;
        let measured = bench.measure(&targets, set)?;
        bench.report(&targets, &measured, set);
        // The fronts stop here, before the next table's start.
    }
    Ok(())
}
