//! Abusive clients against a real proxy: one that never reads its responses, one that
//! sends a byte at a time, many idle connections, and more requests than the proxy
//! takes at once. Each time another client keeps being served, and the proxy's memory
//! stays bounded. (Figures are printed; run with `--nocapture` to see them, and with
//! `JUNOKV_IDLE_CONNECTIONS=10000` and a raised `ulimit -n` for the full-size run.)

mod common;

use common::TestCluster;
use junokv::client::Client;
use junokv::clock::Clock;
use junokv::protocol::{read_frame, Frame, OpCode, OpMessage, Status};
use junokv::proxy::{ConnectionLimits, Proxy, ProxyConfig, ProxyServer};
use junokv::transport::Acceptor;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn proxy(cluster: &TestCluster, connections: ConnectionLimits) -> ProxyServer {
    let mut config = ProxyConfig::new(cluster.map());
    config.connections = connections;
    Proxy::new(config, Clock::default())
        .unwrap()
        .serve(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            Acceptor::Plain,
        )
        .unwrap()
}

fn get_frame(key: &str) -> Vec<u8> {
    let mut m = OpMessage::request(OpCode::Get.to_byte());
    m.namespace = b"abuse".to_vec();
    m.key = key.as_bytes().to_vec();
    m.to_bytes()
}

/// Resident memory of this process (the proxy and storage servers run in it).
fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb / 1024.0
}

/// Another client's sets and gets while the abuse goes on: every one must succeed.
/// Returns its latencies' median and worst, in milliseconds.
async fn bystander(addr: SocketAddr, ops: usize) -> (f64, f64) {
    let c = Client::connect(&addr.to_string(), "bystander")
        .await
        .unwrap();
    let mut took = Vec::new();
    for i in 0..ops {
        let key = format!("k{}", i % 10);
        let start = Instant::now();
        c.set(key.as_bytes(), b"v", 0).await.unwrap();
        assert_eq!(c.get(key.as_bytes()).await.unwrap().value, b"v");
        took.push(start.elapsed().as_secs_f64() * 1000.0 / 2.0);
    }
    took.sort_by(f64::total_cmp);
    (took[took.len() / 2], took[took.len() - 1])
}

/// Whether the proxy closes `s` within `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = vec![0u8; 1 << 16];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // responses it was still owed
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_starve_others_or_grow_the_proxy() {
    let cluster = TestCluster::memory(3).await;
    let limits = ConnectionLimits {
        stall_timeout_ms: 2000,
        ..ConnectionLimits::default()
    };
    let server = proxy(&cluster, limits).await;
    let addr = server.addr();
    let (baseline, _) = bystander(addr, 50).await;
    let before = rss_mb();

    // Gets as fast as the socket takes them, responses never read, until the proxy
    // hangs up (a write fails).
    let mut flood = TcpStream::connect(addr).await.unwrap();
    let burst: Vec<u8> = (0..1000)
        .flat_map(|i| get_frame(&format!("f{i}")))
        .collect();
    let flooding = tokio::spawn(async move {
        let (mut sent, started) = (0u64, Instant::now());
        while started.elapsed() < Duration::from_secs(30) {
            match tokio::time::timeout(Duration::from_millis(100), flood.write_all(&burst)).await {
                Ok(Ok(())) => sent += 1000,
                Ok(Err(_)) => return (sent, Some(started.elapsed())),
                Err(_) => {} // the proxy reads no further: back-pressure
            }
        }
        (sent, None)
    });
    let (median, worst) = bystander(addr, 200).await;
    let grown = rss_mb() - before;
    let (sent, closed) = flooding.await.unwrap();
    println!(
        "never-reading client: {sent} gets written, disconnected after {closed:?}; bystander \
         median {median:.2} ms (alone {baseline:.2} ms), worst {worst:.1} ms; resident \
         memory +{grown:.0} MB"
    );
    assert!(grown < 100.0, "the proxy grew by {grown:.0} MB");
    assert!(
        closed.is_some(),
        "a client that stops taking its responses is disconnected"
    );
    server.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dripping_bytes_is_cut_off_and_others_are_served() {
    let cluster = TestCluster::memory(3).await;
    let limits = ConnectionLimits {
        stall_timeout_ms: 1000,
        ..ConnectionLimits::default()
    };
    let server = proxy(&cluster, limits).await;
    let mut slow = TcpStream::connect(server.addr()).await.unwrap();
    let frame = get_frame("slow");
    let started = Instant::now();
    let dripping = tokio::spawn(async move {
        for b in frame {
            if slow.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        slow
    });
    let (median, worst) = bystander(server.addr(), 100).await;
    let mut slow = dripping.await.unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(5)).await);
    let after = started.elapsed();
    println!(
        "slow sender: closed after {:.1} s; bystander median {median:.2} ms, worst {worst:.1} ms",
        after.as_secs_f64()
    );
    assert!(after < Duration::from_secs(8), "{after:?}");
    server.stop().await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_capped_and_timed_out() {
    let idle: usize = std::env::var("JUNOKV_IDLE_CONNECTIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let cluster = TestCluster::memory(3).await;
    let limits = ConnectionLimits {
        max_connections: idle + 1,
        idle_timeout_secs: 3,
        ..ConnectionLimits::default()
    };
    let server = proxy(&cluster, limits).await;
    let addr = server.addr();
    let before = rss_mb();
    let mut held = Vec::new();
    for _ in 0..idle {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // The proxy has them all once one more request round trip has gone through.
    let (median, worst) = bystander(addr, 100).await;
    let grown = rss_mb() - before;
    println!(
        "{idle} idle connections: resident memory +{grown:.0} MB; \
         bystander median {median:.2} ms, worst {worst:.1} ms"
    );
    // One more than the cap is closed at once.
    let mut extra = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(&mut extra, Duration::from_secs(2)).await);
    // The idle ones are closed after the idle timeout, and the places come back.
    assert!(closed_within(&mut held[0], Duration::from_secs(10)).await);
    drop(held);
    let (median, _) = bystander(addr, 10).await;
    println!("after the idle timeout: bystander median {median:.2} ms");
    server.stop().await;
    cluster.stop().await;
}

#[tokio::test]
async fn requests_beyond_the_proxy_cap_are_answered_busy() {
    let cluster = TestCluster::memory(3).await;
    let limits = ConnectionLimits {
        max_in_flight: 4,
        ..ConnectionLimits::default()
    };
    let server = proxy(&cluster, limits).await;
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    let burst: Vec<u8> = (0..200)
        .flat_map(|i| {
            let mut m = OpMessage::decode(&get_frame(&format!("b{i}"))).unwrap();
            m.opaque = i;
            m.to_bytes()
        })
        .collect();
    s.write_all(&burst).await.unwrap();
    let mut busy = 0;
    let mut opaques = Vec::new();
    for _ in 0..200 {
        let Ok(Frame::Message(_, bytes)) = read_frame(&mut s).await else {
            panic!("every request is answered")
        };
        let resp = OpMessage::decode(&bytes).unwrap();
        opaques.push(resp.opaque);
        match Status::from_byte(resp.status) {
            Status::Busy => busy += 1,
            Status::NoKey => {}
            other => panic!("unexpected {other}"),
        }
    }
    opaques.sort();
    assert_eq!(opaques, (0..200).collect::<Vec<_>>());
    assert!(busy > 0 && busy < 200, "{busy} of 200 busy");
    server.stop().await;
    cluster.stop().await;
}
