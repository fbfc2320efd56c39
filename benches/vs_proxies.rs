//! The whole gateway against nginx and haproxy doing the same job on the
//! same machine: DESIGN.md's budget "whole gateway over loopback (proxying
//! to upstreams): throughput ≥ nginx and haproxy doing the same split".
//!
//! ```text
//! cargo bench --bench vs_proxies
//! cargo bench --bench vs_proxies -- --rounds 5 --secs 8 --connections 64
//! ```
//!
//! Needs `nginx`, `haproxy`, `wrk` and `taskset` (`apt-get install -y nginx
//! haproxy wrk`) and two CPUs; without them it says so and exits 0 (CI only
//! builds this file).
//!
//! What runs:
//!
//! * Two upstream HTTP/1.1 servers (hyper, keep-alive, `TCP_NODELAY`) on
//!   `127.0.0.1:0`, in this process on one current-thread tokio runtime:
//!   `GET /` answers `blue\n` on one and `green\n` on the other.
//! * Three fronts, each a random 90/10 split of `GET /` between blue and
//!   green over pooled keep-alive HTTP/1.1 connections, adding
//!   `X-Forwarded-For`/`-Proto`/`-Host`, logging nothing. Their
//!   configurations are in `benches/vs_proxies/`:
//!   - switchyard: `Gateway::from_config` (`switchyard.toml`: one route,
//!     one split, blue 90 / green 10) served by hyper's HTTP/1.1 server
//!     (`TCP_NODELAY`, the peer address in the request extensions as a
//!     server puts it) on a current-thread tokio runtime, in a child
//!     process (this binary with `--role front`);
//!   - nginx (`nginx.conf`): `worker_processes 1`, `split_clients` on the
//!     random `$request_id`, an `upstream` per colour with `keepalive`,
//!     `keepalive_requests` unbounded on both sides (nginx's default of
//!     1000 would reconnect every 1000 requests; the others do not);
//!   - haproxy (`haproxy.cfg`): `nbthread 1`, `balance random(1)` with
//!     weights 90/10, `http-reuse always`, `option http-keep-alive`.
//! * Before measuring, each front must split 1000 sequential requests
//!   (one keep-alive client connection) about 90/10: green between 60 and
//!   140 (±4 σ), every answer a 200 with `blue` or `green`; otherwise the
//!   bench stops with an error.
//! * `wrk -t1 -c32 -d5s --latency` against each front, after a 2 s warm-up
//!   each, in 5 rounds (`--rounds`, `--secs`, `--connections` change
//!   that); round `r` starts at front `r mod 4`, so no front always runs
//!   first or last. A fourth entry, `direct`, is wrk straight
//!   at the blue upstream: not a proxy, a reference for what the client
//!   side can push. The table gives the median over rounds per front.
//!
//! Fairness (2 CPUs): the front under test has CPU 1 to itself and one
//! thread of work (nginx one worker, haproxy one thread, switchyard one
//! current-thread runtime); all three are started once under `taskset -c
//! 1` and sit idle while another is measured. This process (upstreams,
//! the split check, the bookkeeping) re-executes itself under `taskset -c
//! 0`, and wrk runs under `taskset -c 0`: client and upstreams share CPU 0.
//! The table also gives each front's CPU time per request (utime + stime
//! of the front's processes over the run, divided by wrk's request count)
//! and how busy each CPU was: if CPU 0 is saturated while CPU 1 is not, the
//! client side is the limit and requests/s understate the gap, so CPU per
//! request is the sharper comparison.
//!
//! Other builds on the machine disturb the numbers: before each round the
//! bench waits until no `rustc`, `cargo` or `clippy-driver` (other than
//! the `cargo` running it) has been seen for 10 s (at most 120 s, then it
//! goes on and says so), and marks every run during which one appeared.

use std::collections::HashSet;
use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchyard::gateway::{Gateway, GatewayConfig};
use tower::Service;

const SWITCHYARD_TOML: &str = include_str!("vs_proxies/switchyard.toml");
const NGINX_CONF: &str = include_str!("vs_proxies/nginx.conf");
const HAPROXY_CFG: &str = include_str!("vs_proxies/haproxy.cfg");

const BLUE: &[u8] = b"blue\n";
const GREEN: &[u8] = b"green\n";

/// Requests of the split check, and the accepted range of green answers
/// (90/10 over 1000: 100 expected, σ ≈ 9.5).
const CHECK_REQUESTS: usize = 1000;
const CHECK_GREEN: std::ops::RangeInclusive<usize> = 60..=140;

const PINNED_ENV: &str = "VS_PROXIES_PINNED";
const INSTALL: &str = "apt-get install -y nginx haproxy wrk";

type Error = Box<dyn std::error::Error>;

struct Options {
    rounds: usize,
    secs: u64,
    connections: usize,
    warmup_secs: u64,
    quiet_secs: u64,
    max_wait_secs: u64,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--role") {
        match args.get(1).map(String::as_str) {
            Some("front") => front(&args[2..]),
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
            eprintln!(
                "usage: cargo bench --bench vs_proxies -- [--rounds N] [--secs S] [--connections C] \
                 [--warmup-secs S] [--quiet-secs S] [--max-wait-secs S]"
            );
            std::process::exit(2);
        }
    };
    let Some(tools) = Tools::find() else {
        std::process::exit(0);
    };
    if std::env::var_os(PINNED_ENV).is_none() {
        // Re-run this whole process on CPU 0; the fronts go to CPU 1.
        for cpu in ["0", "1"] {
            let ok = Command::new(&tools.taskset)
                .args(["-c", cpu, "true"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                println!("vs_proxies: skipped: cannot pin to CPU {cpu} (needs two CPUs, 0 and 1)");
                std::process::exit(0);
            }
        }
        let status = Command::new(&tools.taskset)
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

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        rounds: 5,
        secs: 5,
        connections: 32,
        warmup_secs: 2,
        quiet_secs: 10,
        max_wait_secs: 120,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .parse::<u64>()
            .map_err(|e| format!("{flag}: {e}"))?;
        match flag.as_str() {
            "--rounds" => o.rounds = value.max(1) as usize,
            "--secs" => o.secs = value.max(1),
            "--connections" => o.connections = value.max(1) as usize,
            "--warmup-secs" => o.warmup_secs = value,
            "--quiet-secs" => o.quiet_secs = value,
            "--max-wait-secs" => o.max_wait_secs = value,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(o)
}

// === tools ===

struct Tools {
    nginx: PathBuf,
    haproxy: PathBuf,
    wrk: PathBuf,
    taskset: PathBuf,
}

impl Tools {
    /// The binaries, or `None` after saying how to install the missing ones.
    fn find() -> Option<Self> {
        let find = |name: &str| -> Option<PathBuf> {
            let path = std::env::var_os("PATH").unwrap_or_default();
            std::env::split_paths(&path)
                .chain(["/usr/sbin", "/sbin", "/usr/bin", "/usr/local/sbin"].map(PathBuf::from))
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        };
        let names = ["nginx", "haproxy", "wrk", "taskset"];
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
        let mut next = || found.next().expect("found");
        Some(Tools {
            nginx: next(),
            haproxy: next(),
            wrk: next(),
            taskset: next(),
        })
    }
}

// === upstreams (in this process, CPU 0) ===

/// Connections accepted by both upstreams: a front that keeps its pool
/// opens none while it is measured.
#[derive(Clone, Default)]
struct Accepted(Arc<AtomicUsize>);

async fn upstream(body: &'static [u8], accepted: Accepted) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            accepted.0.fetch_add(1, Ordering::Relaxed);
            let _ = stream.set_nodelay(true);
            let answer = service_fn(move |req: Request<Incoming>| async move {
                let mut res = Response::new(Full::new(Bytes::from_static(body)));
                if req.uri().path() != "/" {
                    *res.status_mut() = StatusCode::NOT_FOUND;
                }
                Ok::<_, Infallible>(res)
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), answer));
        }
    });
    Ok(addr)
}

/// Starts both upstreams on their own thread and current-thread runtime.
fn start_upstreams(accepted: Accepted) -> Result<(SocketAddr, SocketAddr), Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("upstreams".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let addrs = async {
                    Ok::<_, std::io::Error>((
                        upstream(BLUE, accepted.clone()).await?,
                        upstream(GREEN, accepted).await?,
                    ))
                }
                .await;
                let _ = tx.send(addrs.map_err(|e| e.to_string()));
                std::future::pending::<()>().await;
            });
        })?;
    Ok(rx.recv()??)
}

// === switchyard front (child process, CPU 1) ===

/// `--role front --blue ADDR --green ADDR`: the gateway on a current-thread
/// runtime; prints `listening ADDR`, exits when its stdin closes (the
/// bench went away).
fn front(args: &[String]) -> ! {
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .unwrap_or_else(|| panic!("front: {name} ADDR missing"))
            .clone()
    };
    let toml = SWITCHYARD_TOML
        .replace("BLUE_ADDR", &arg("--blue"))
        .replace("GREEN_ADDR", &arg("--green"));
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result: Result<(), Error> = rt.block_on(async move {
        let gateway = Gateway::from_config(GatewayConfig::from_toml(&toml)?)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        loop {
            let (stream, peer) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let gateway = gateway.clone();
            let svc = service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(peer);
                gateway.clone().call(req)
            });
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    if let Err(e) = result {
        eprintln!("front: {e}");
    }
    std::process::exit(1);
}

// === processes ===

/// A front process, stopped (TERM, then KILL) when dropped.
struct Proc {
    name: &'static str,
    child: Child,
    log: Option<PathBuf>,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `addr` accepts connections.
    fn wait_listening(&mut self, addr: SocketAddr) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("{} exited ({status}){}", self.name, self.log_tail()).into());
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
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
        match &self.log {
            Some(path) => format!(
                "; {}:\n{}",
                path.display(),
                std::fs::read_to_string(path).unwrap_or_default()
            ),
            None => String::new(),
        }
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

fn start_switchyard(
    tools: &Tools,
    blue: SocketAddr,
    green: SocketAddr,
) -> Result<(Proc, SocketAddr), Error> {
    let mut child = Command::new(&tools.taskset)
        .args(["-c", "1"])
        .arg(std::env::current_exe()?)
        .args([
            "--role",
            "front",
            "--blue",
            &blue.to_string(),
            "--green",
            &green.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("stdout");
    let mut proc = Proc {
        name: "switchyard",
        child,
        log: None,
    };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening ")
        .ok_or_else(|| format!("switchyard front said {line:?}"))?
        .parse()?;
    proc.wait_listening(addr)?;
    Ok((proc, addr))
}

fn render(
    template: &str,
    dir: &Path,
    listen: SocketAddr,
    blue: SocketAddr,
    green: SocketAddr,
) -> String {
    template
        .replace("RUN_DIR", &dir.display().to_string())
        .replace("LISTEN_ADDR", &listen.to_string())
        .replace("BLUE_ADDR", &blue.to_string())
        .replace("GREEN_ADDR", &green.to_string())
}

fn start_nginx(
    tools: &Tools,
    dir: &Path,
    blue: SocketAddr,
    green: SocketAddr,
) -> Result<(Proc, SocketAddr), Error> {
    let listen = free_addr()?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, render(NGINX_CONF, dir, listen, blue, green))?;
    let log = dir.join("nginx-error.log");
    let child = Command::new(&tools.taskset)
        .args(["-c", "1"])
        .arg(&tools.nginx)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(&log)
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("nginx-stderr.log"))?)
        .spawn()?;
    let mut proc = Proc {
        name: "nginx",
        child,
        log: Some(log),
    };
    proc.wait_listening(listen)?;
    Ok((proc, listen))
}

fn start_haproxy(
    tools: &Tools,
    dir: &Path,
    blue: SocketAddr,
    green: SocketAddr,
) -> Result<(Proc, SocketAddr), Error> {
    let listen = free_addr()?;
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, render(HAPROXY_CFG, dir, listen, blue, green))?;
    let log = dir.join("haproxy-stderr.log");
    let child = Command::new(&tools.taskset)
        .args(["-c", "1"])
        .arg(&tools.haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let mut proc = Proc {
        name: "haproxy",
        child,
        log: Some(log),
    };
    proc.wait_listening(listen)?;
    Ok((proc, listen))
}

// === split check ===

/// Counts blue and green answers over `CHECK_REQUESTS` sequential requests
/// on one keep-alive connection.
fn split_check(addr: SocketAddr) -> Result<(usize, usize), Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let uri: http::Uri = format!("http://{addr}/").parse()?;
        let (mut blue, mut green) = (0, 0);
        for _ in 0..CHECK_REQUESTS {
            let res = client.get(uri.clone()).await?;
            let status = res.status();
            let body = res.into_body().collect().await?.to_bytes();
            match (status, &body[..]) {
                (StatusCode::OK, BLUE) => blue += 1,
                (StatusCode::OK, GREEN) => green += 1,
                _ => return Err(format!("{addr} answered {status} {body:?}").into()),
            }
        }
        Ok((blue, green))
    })
}

// === measurement ===

/// Busy and total jiffies of CPUs 0 and 1, from `/proc/stat`.
fn cpu_jiffies() -> [(u64, u64); 2] {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut out = [(0, 0); 2];
    for (i, name) in ["cpu0 ", "cpu1 "].iter().enumerate() {
        if let Some(line) = stat.lines().find(|l| l.starts_with(name)) {
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal ...
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            out[i] = (total - idle, total);
        }
    }
    out
}

/// `(ppid, utime + stime)` of a process, in clock ticks.
fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ppid = f.get(1)?.parse().ok()?;
    let cpu = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((ppid, cpu))
}

/// CPU ticks of a process and its direct children (nginx's worker).
fn tree_ticks(pid: u32) -> u64 {
    let mut total = proc_stat(pid).map_or(0, |(_, t)| t);
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
    cpu0_busy: f64,
    cpu1_busy: f64,
    new_upstream_conns: usize,
    compile_seen: bool,
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

struct Target {
    name: &'static str,
    addr: SocketAddr,
    /// The front's process (`None` for `direct`).
    pid: Option<u32>,
}

struct Bench<'a> {
    tools: &'a Tools,
    options: &'a Options,
    accepted: Accepted,
    exclude: HashSet<u32>,
    ticks: f64,
}

impl Bench<'_> {
    fn wrk(&self, target: &Target, secs: u64) -> Result<Run, Error> {
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
        let conns_before = self.accepted.0.load(Ordering::Relaxed);
        let ticks_before = target.pid.map(tree_ticks);
        let cpu_before = cpu_jiffies();
        let out = Command::new(&self.tools.taskset)
            .args(["-c", "0"])
            .arg(&self.tools.wrk)
            .args(["-t1", &format!("-c{}", self.options.connections)])
            .arg(format!("-d{secs}s"))
            .arg("--latency")
            .arg(format!("http://{}/", target.addr))
            .output()?;
        let cpu_after = cpu_jiffies();
        let ticks_after = target.pid.map(tree_ticks);
        let conns_after = self.accepted.0.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        let _ = watcher.join();
        if !out.status.success() {
            return Err(format!(
                "wrk against {} failed: {}",
                target.name,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let mut run = parse_wrk(&String::from_utf8_lossy(&out.stdout))?;
        let busy = |i: usize| {
            let (b0, t0) = cpu_before[i];
            let (b1, t1) = cpu_after[i];
            100.0 * (b1 - b0) as f64 / (t1 - t0).max(1) as f64
        };
        run.cpu0_busy = busy(0);
        run.cpu1_busy = busy(1);
        run.cpu_us_per_req = match (ticks_before, ticks_after) {
            (Some(a), Some(b)) => Some((b - a) as f64 / self.ticks * 1e6 / run.requests as f64),
            _ => None,
        };
        run.new_upstream_conns = conns_after - conns_before;
        run.compile_seen = seen.load(Ordering::Relaxed);
        Ok(run)
    }
}

fn fmt_latency(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{us:.0}us")
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

fn run(tools: &Tools, options: &Options) -> Result<(), Error> {
    let dir = std::env::temp_dir().join(format!("switchyard-vs-proxies-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(tools, options, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(tools: &Tools, options: &Options, dir: &Path) -> Result<(), Error> {
    let version = |bin: &Path, arg: &str| -> String {
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
    };
    println!(
        "vs_proxies: switchyard Gateway vs nginx vs haproxy, random 90/10 split over loopback"
    );
    println!("  {}", version(&tools.nginx, "-v"));
    println!("  {}", version(&tools.haproxy, "-v"));
    println!("  {}", version(&tools.wrk, "-v"));
    println!(
        "fairness: each front on CPU 1 alone with one thread of work (switchyard current-thread \
         tokio runtime, nginx worker_processes 1, haproxy nbthread 1); wrk -t1 -c{} and both \
         upstreams (one current-thread runtime) on CPU 0; {} rounds of {} s per front, order \
         rotated each round, medians reported",
        options.connections, options.rounds, options.secs
    );

    let accepted = Accepted::default();
    let (blue, green) = start_upstreams(accepted.clone())?;
    println!("upstreams: blue {blue}, green {green}");

    let (switchyard, sy_addr) = start_switchyard(tools, blue, green)?;
    let (nginx, nginx_addr) = start_nginx(tools, dir, blue, green)?;
    let (haproxy, haproxy_addr) = start_haproxy(tools, dir, blue, green)?;
    let targets = [
        Target {
            name: "switchyard",
            addr: sy_addr,
            pid: Some(switchyard.pid()),
        },
        Target {
            name: "nginx",
            addr: nginx_addr,
            pid: Some(nginx.pid()),
        },
        Target {
            name: "haproxy",
            addr: haproxy_addr,
            pid: Some(haproxy.pid()),
        },
        Target {
            name: "direct",
            addr: blue,
            pid: None,
        },
    ];

    println!(
        "split check ({CHECK_REQUESTS} sequential requests, green must be in {CHECK_GREEN:?}):"
    );
    for t in &targets[..3] {
        let (b, g) = split_check(t.addr)?;
        println!("  {:<10} blue {b:>4}  green {g:>4}", t.name);
        if !CHECK_GREEN.contains(&g) {
            return Err(format!("{} does not split 90/10: blue {b}, green {g}", t.name).into());
        }
    }

    let bench = Bench {
        tools,
        options,
        accepted,
        exclude: ancestors(),
        ticks: clock_ticks(),
    };
    let mut gave_up = wait_quiet(
        &bench.exclude,
        Duration::from_secs(options.quiet_secs),
        Duration::from_secs(options.max_wait_secs),
    );
    if options.warmup_secs > 0 {
        println!("warm-up: {} s each", options.warmup_secs);
        for t in &targets {
            bench.wrk(t, options.warmup_secs)?;
        }
    }

    println!(
        "{:<5} {:<10} {:>9} {:>9} {:>9} {:>10} {:>6} {:>6} {:>6} {:>8}  notes",
        "round", "front", "req/s", "p50", "p99", "CPU us/req", "cpu1%", "cpu0%", "conns", "non-2xx"
    );
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
    let mut compiles = 0;
    for round in 0..options.rounds {
        gave_up |= wait_quiet(
            &bench.exclude,
            Duration::from_secs(options.quiet_secs),
            Duration::from_secs(options.max_wait_secs),
        );
        for k in 0..targets.len() {
            let i = (round + k) % targets.len();
            let t = &targets[i];
            let r = bench.wrk(t, options.secs)?;
            let mut notes = Vec::new();
            if let Some(e) = r.socket_errors.as_ref() {
                notes.push(format!("socket errors: {e}"));
            }
            if r.compile_seen {
                notes.push("a compile ran".to_string());
                compiles += 1;
            }
            println!(
                "{:<5} {:<10} {:>9.0} {:>9} {:>9} {:>10} {:>6.0} {:>6.0} {:>6} {:>8}  {}",
                round + 1,
                t.name,
                r.rps,
                fmt_latency(r.p50_us),
                fmt_latency(r.p99_us),
                r.cpu_us_per_req.map_or("-".into(), |c| format!("{c:.1}")),
                r.cpu1_busy,
                r.cpu0_busy,
                r.new_upstream_conns,
                r.non_2xx,
                notes.join("; ")
            );
            runs[i].push(r);
        }
    }

    let med = |i: usize, f: fn(&Run) -> f64| median(runs[i].iter().map(f).collect());
    let base_rps = med(0, |r| r.rps);
    let base_cpu = med(0, |r| r.cpu_us_per_req.unwrap_or(f64::NAN));
    println!(
        "\nmedians over {} rounds ({} s each, wrk -t1 -c{}):",
        options.rounds, options.secs, options.connections
    );
    println!(
        "{:<22} {:>9} {:>8} {:>9} {:>9} {:>10} {:>10} {:>6} {:>6}",
        "front", "req/s", "vs sy", "p50", "p99", "CPU us/req", "vs sy", "cpu1%", "cpu0%"
    );
    for (i, t) in targets.iter().enumerate() {
        let rps = med(i, |r| r.rps);
        let cpu = med(i, |r| r.cpu_us_per_req.unwrap_or(f64::NAN));
        let name = if t.pid.is_some() {
            t.name.to_string()
        } else {
            "direct (no proxy, ref)".to_string()
        };
        println!(
            "{:<22} {:>9.0} {:>8.2} {:>9} {:>9} {:>10} {:>10} {:>6.0} {:>6.0}",
            name,
            rps,
            rps / base_rps,
            fmt_latency(med(i, |r| r.p50_us)),
            fmt_latency(med(i, |r| r.p99_us)),
            if cpu.is_nan() {
                "-".into()
            } else {
                format!("{cpu:.1}")
            },
            if cpu.is_nan() {
                "-".into()
            } else {
                format!("{:.2}", cpu / base_cpu)
            },
            med(i, |r| r.cpu1_busy),
            med(i, |r| r.cpu0_busy),
        );
    }
    let non_2xx: u64 = runs.iter().flatten().map(|r| r.non_2xx).sum();
    let errors = runs
        .iter()
        .flatten()
        .filter(|r| r.socket_errors.is_some())
        .count();
    println!(
        "non-2xx answers: {non_2xx}; runs with socket errors: {errors}; runs during which a compile \
         ran: {compiles}{}",
        if gave_up {
            " (gave up waiting for a quiet machine at least once)"
        } else {
            ""
        }
    );
    println!(
        "vs sy: ratio to switchyard (req/s: higher is better; CPU us/req: lower is better). \
         conns: upstream connections opened during the run (0 = pools kept)."
    );
    drop((switchyard, nginx, haproxy));
    Ok(())
}
