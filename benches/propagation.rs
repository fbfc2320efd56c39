//! How long a weight change made on one replica takes to show on every
//! other, with [`WeightSync`] over one Redis: three replicas in this
//! process (each its own split, connection, pub/sub subscription and
//! sync task, the gateway's defaults: a round every second, a check every
//! 100 ms, announcements on), a `redis-server` of the bench's own on a
//! free loopback port. Each of `--changes` changes (100 by default) is
//! made on the next replica in turn; the time is from `set_weights`
//! returning there to the last of the other two answering with the new
//! weights (their handles looked at every 50 µs).
//!
//! ```text
//! cargo bench --bench propagation --features redis -- [--changes N]
//! ```
//!
//! Not criterion: the figure is a distribution (median, 90th percentile,
//! max) of a latency that spans tasks and a server, not a function's
//! time. No budget is asserted here; issue 23's goal is ≤ 20 ms, and the
//! figure before changes were published when made was 95–97 ms (the
//! 100 ms check).

use std::time::{Duration, Instant};

use switchyard::split::{Split, SplitHandle};
use switchyard::sync::WeightSync;

#[path = "support/redis_server.rs"]
mod redis_server;
use redis_server::RedisServer;

type Svc = tower::util::BoxCloneSyncService<
    http::Request<()>,
    http::Response<()>,
    std::convert::Infallible,
>;

fn replica() -> SplitHandle {
    let svc: Svc =
        tower::util::BoxCloneSyncService::new(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        }));
    let split = Split::builder()
        .target("blue", svc.clone(), 100)
        .target("green", svc, 0)
        .build()
        .expect("a split");
    split.handle()
}

fn main() {
    let mut changes = 100usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--changes" {
            changes = args.next().and_then(|n| n.parse().ok()).unwrap_or(changes);
        }
    }
    let Some(redis) = RedisServer::start() else {
        eprintln!("propagation: no redis-server on the PATH; nothing measured");
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let client = redis::Client::open(redis.url()).expect("a client");
        let handles: Vec<SplitHandle> = (0..3).map(|_| replica()).collect();
        let mut syncs = Vec::new();
        let mut tasks = Vec::new();
        for h in &handles {
            let manager = client.get_connection_manager().await.expect("a connection");
            let sync = WeightSync::builder(manager)
                .split("api", h.clone())
                .notify(client.clone())
                .build()
                .expect("a sync");
            tasks.push(sync.spawn());
            syncs.push(sync);
        }
        while syncs.iter().any(|s| s.stats().rounds < 1) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut times = Vec::with_capacity(changes);
        for i in 0..changes {
            let green = u32::try_from(1 + i % 99).unwrap_or(1);
            let on = i % 3;
            // Apart from the last change's rounds.
            tokio::time::sleep(Duration::from_millis(20)).await;
            handles[on]
                .set_weights([("blue", 100 - green), ("green", green)])
                .expect("weights");
            let made = Instant::now();
            loop {
                let all = handles
                    .iter()
                    .all(|h| h.weights().get("green") == Some(green));
                if all {
                    break;
                }
                if made.elapsed() > Duration::from_secs(10) {
                    eprintln!("change {i} not everywhere after 10 s");
                    break;
                }
                tokio::time::sleep(Duration::from_micros(50)).await;
            }
            times.push(made.elapsed());
        }
        drop(tasks);
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "propagation over {} changes, 3 replicas: median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
            times.len(),
            ms(at(0.5)),
            ms(at(0.9)),
            ms(at(1.0)),
        );
    });
}
