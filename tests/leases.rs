//! One-round-trip writes on real tokio: a proxy that wrote a key last writes it again
//! without phase 1, and falls back to both phases when another proxy wrote it since.
//! (One test in this file: the metrics it reads are the process's.)

mod common;

use common::TestCluster;
use junokv::client::Client;
use junokv::clock::Clock;
use junokv::proxy::{Proxy, ProxyConfig};

/// A proxy on `cluster` (leases on or off) and a client of it.
async fn proxy(cluster: &TestCluster, leases: bool) -> (Client, junokv::proxy::ProxyServer) {
    let mut config = ProxyConfig::new(cluster.map());
    if !leases {
        config.leases.memory_bytes = 0;
    }
    let proxy = Proxy::new(config, Clock::default()).unwrap();
    let (server, client) = common::serve_and_connect(&proxy, "leases").await;
    (client, server)
}

/// (prepares the storage servers handled, lease writes taken, refused) so far.
fn counts() -> (u64, u64, u64) {
    let m = junokv::metrics::metrics();
    let (taken, refused) = m.lease_writes();
    (m.replica_requests.count("prepare"), taken, refused)
}

#[tokio::test]
async fn a_proxy_rewrites_its_own_keys_in_one_round_trip() {
    let cluster = TestCluster::memory(3).await;
    let (a, _sa) = proxy(&cluster, true).await;
    let (b, _sb) = proxy(&cluster, true).await;
    let (off, _so) = proxy(&cluster, false).await;

    a.set(b"k", b"v1", 0).await.unwrap(); // both phases: no lease yet
    let before = counts();
    for i in 2..=11 {
        let r = a.set(b"k", format!("v{i}").as_bytes(), 0).await.unwrap();
        assert_eq!(r.version, i);
    }
    let after = counts();
    assert_eq!(after.0, before.0, "no prepare reached a storage server");
    assert_eq!(after.1 - before.1, 10, "ten writes on leases taken");

    // Another proxy writes the key: the next write on the old lease is refused by the
    // replicas and goes through both phases, on top of the other proxy's write.
    b.set(b"k", b"from b", 0).await.unwrap();
    let r = a.set(b"k", b"v13", 0).await.unwrap();
    assert_eq!(r.version, 13);
    assert_eq!(counts().2 - after.2, 1, "one lease refused");
    let got = b.get(b"k").await.unwrap();
    assert_eq!((got.version, got.value.as_slice()), (13, &b"v13"[..]));

    // A proxy without leases prepares every time.
    let before = counts();
    for _ in 0..3 {
        off.set(b"k", b"w", 0).await.unwrap();
    }
    // (The third replica's prepare may still be on its way when the answer comes.)
    assert!(
        counts().0 - before.0 >= 3 * 2,
        "each write prepared a quorum"
    );
}
