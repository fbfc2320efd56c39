//! A `redis-server` of a test's own on a free loopback port, for the tests
//! of the Redis-backed features.
//!
//! `.ci/run` installs `redis-server` (Debian's package) and sets
//! `SWITCHYARD_REQUIRE_REDIS=1`, so that these tests fail there when it is
//! missing; elsewhere, without `redis-server` on the `PATH`, each test
//! says so on stderr and returns.

#![allow(dead_code, reason = "each test file uses a part")]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `redis-server`, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    /// The port it listens on (plain or TLS).
    pub port: u16,
    args: Vec<String>,
    /// A client for it (over TLS for a TLS server).
    client: redis::Client,
}

impl RedisServer {
    /// `None` (with a note) when `redis-server` is not installed and not
    /// required.
    pub async fn start() -> Option<Self> {
        Self::spawn(
            |port| vec!["--port".into(), port.to_string()],
            |port| redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap(),
        )
        .await
    }

    /// Starts `redis-server` listening as `listen(port)` says on a free
    /// port, and waits until `client(port)` gets an answer to PING.
    pub async fn spawn(
        listen: impl Fn(u16) -> Vec<String>,
        client: impl Fn(u16) -> redis::Client,
    ) -> Option<Self> {
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let mut args = listen(port);
        args.extend(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].map(String::from));
        let mut server = RedisServer {
            child: None,
            port,
            args,
            client: client(port),
        };
        match server.run() {
            Ok(()) => {}
            Err(e) if std::env::var_os("SWITCHYARD_REQUIRE_REDIS").is_none() => {
                eprintln!("redis-server not started ({e}): Redis tests skipped");
                return None;
            }
            Err(e) => panic!("redis-server is required (SWITCHYARD_REQUIRE_REDIS): {e}"),
        }
        server.wait_ready().await;
        Some(server)
    }

    fn run(&mut self) -> std::io::Result<()> {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(mut c) = self.client().get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Stops the server (its data is lost: it keeps none on disk).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.run().expect("redis-server restarts");
        self.wait_ready().await;
    }

    /// A client for it.
    pub fn client(&self) -> redis::Client {
        self.client.clone()
    }

    /// A connection manager (reconnecting by itself) to it.
    pub async fn manager(&self) -> redis::aio::ConnectionManager {
        self.client().get_connection_manager().await.unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
