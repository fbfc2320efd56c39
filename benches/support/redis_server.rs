//! A `redis-server` of a bench's own on a free loopback port, for the
//! benches that need Redis (included by path: the other benches build
//! without the `redis` feature).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` of the bench's own, killed on drop.
pub struct RedisServer {
    child: Child,
    /// The port it listens on (loopback).
    pub port: u16,
}

impl RedisServer {
    /// Starts one, or says on stderr why not (no `redis-server` on the
    /// `PATH`, or it did not listen within 5 s).
    pub fn start() -> Option<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| eprintln!("redis-server not started ({e})"))
            .ok()?;
        let server = RedisServer { child, port };
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        eprintln!("redis-server did not listen within 5 s");
        None
    }

    /// `redis://127.0.0.1:PORT/`.
    #[allow(dead_code, reason = "not every bench connects by URL")]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
