//! `engine = "memory"`: cache clusters whose storage servers keep records in RAM.

mod common;

use common::{eventually, Store, TestCluster};
use junokv::admin::Health;
use junokv::client::ClientError;
use junokv::clock::Clock;
use junokv::protocol::Status;
use junokv::proxy::Proxy;
use junokv::storage::{StorageServer, SweepConfig};
use std::time::Duration;

/// How long a restarted replica waits before recovering in these tests: longer than
/// the proxies' 1 s request timeout, as the setting requires.
const RECOVERY_DELAY_MS: u64 = 1200;

fn status<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Status {
    r.expect_err("expected an error status")
        .status()
        .expect("a status from the store")
}

async fn memory_cluster(dir: &std::path::Path, limit: u64) -> TestCluster {
    let stores = (0..3)
        .map(|z| Store::Volatile(dir.join(format!("zone-{z}")), limit))
        .collect();
    TestCluster::start(stores).await
}

/// `zones` zones, zone 0 keeping records in memory, the others keeping everything
/// (so that only zone 0 forgets); and the directory of zone 0's state.
async fn zone_0_in_memory(zones: usize) -> (tempfile::TempDir, TestCluster) {
    let dir = tempfile::tempdir().unwrap();
    let mut stores = vec![Store::Volatile(dir.path().join("zone-0"), 1 << 30)];
    stores.extend((1..zones).map(|_| Store::Memory(Default::default())));
    (dir, TestCluster::start(stores).await)
}

/// What zone `i` says of itself through a proxy: whether it is still recovering.
async fn recovering(cluster: &TestCluster, i: usize) -> bool {
    let proxy = StorageServer::sweeping_proxy(
        cluster.map(),
        &SweepConfig::default(),
        None,
        Clock::default(),
    )
    .unwrap();
    let status = Proxy::status(&proxy).await;
    let node = &status.nodes[i];
    node.info.as_ref().expect("up").recovering
}

/// Restarts zone `i` (losing its records) and waits until it has recovered them.
async fn restart_and_recover(cluster: &mut TestCluster, i: usize) {
    cluster.kill(i).await;
    cluster.restart(i).await;
    let server = cluster.storages[i].as_ref().unwrap();
    assert!(server.needs_recovery());
    // Its `/readyz` says so, for rolling restarts and disruption budgets to wait on.
    let health = server.health();
    assert!(health.ready().await.unwrap_err().contains("recovering"));
    assert!(recovering(cluster, i).await);
    cluster.start_background(i, RECOVERY_DELAY_MS);
    recovered(cluster, i).await;
    assert_eq!(health.ready().await, Ok(String::new()));
}

/// Waits until zone `i` has recovered (at most 20 s).
async fn recovered(cluster: &TestCluster, i: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while recovering(cluster, i).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "zone {i} never recovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn restarted_replicas_recover_every_key_from_their_peers() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = memory_cluster(dir.path(), 1 << 30).await;
    let c = cluster.client().await;
    for i in 0..100u32 {
        c.set(format!("k{i}").as_bytes(), format!("v{i}").as_bytes(), 0)
            .await
            .unwrap();
    }
    for i in 0..10u32 {
        c.destroy(format!("k{i}").as_bytes()).await.unwrap();
    }
    // Each zone in turn loses every record and recovers it before the next goes: the
    // cluster never holds a key on fewer than a quorum of replicas that remember it.
    for zone in 0..3 {
        restart_and_recover(&mut cluster, zone).await;
        assert!(
            cluster.stored(zone, b"k50").is_some(),
            "zone {zone} recovered k50"
        );
        assert!(cluster.stored(zone, b"k5").is_some(), "and k5's tombstone");
    }
    // With zone 2 down, only the two replicas that lost everything answer.
    cluster.kill(2).await;
    for i in 10..100u32 {
        let got = c.get(format!("k{i}").as_bytes()).await.unwrap();
        assert_eq!(got.value, format!("v{i}").as_bytes());
    }
    assert_eq!(status(c.get(b"k5").await), Status::NoKey);
    cluster.stop().await;
}

#[tokio::test]
async fn a_recovering_replica_never_takes_a_key_it_lacks_for_absent() {
    let (_dir, mut cluster) = zone_0_in_memory(3).await;
    let c = cluster.client().await.with_timeout(Duration::from_secs(5));
    // Written while zone 1 is down: only zones 0 and 2 hold it.
    cluster.kill(1).await;
    c.set(b"x", b"acknowledged", 0).await.unwrap();
    cluster.kill(0).await;
    cluster.restart(0).await;
    cluster.restart(1).await;
    assert!(recovering(&cluster, 0).await);
    // Writes go on (zones 1 and 2 take them)...
    c.set(b"y", b"new", 0).await.unwrap();
    // ...but not x: zone 1 never saw it, and zone 0 must not call it absent.
    cluster.kill(2).await;
    match c.get(b"x").await {
        Err(e) => assert_eq!(e.status(), Some(Status::NoStorageServer)),
        Ok(r) => panic!("read {r:?} without a replica that holds it"),
    }
    // Once zone 2 is back, x is read, and the read repairs zone 0.
    cluster.restart(2).await;
    assert_eq!(c.get(b"x").await.unwrap().value, b"acknowledged");
    eventually("the read repairs zone 0", || {
        cluster.stored(0, b"x").is_some()
    })
    .await;
    cluster.stop().await;
}

#[tokio::test]
async fn recovery_waits_for_every_peer() {
    let (_dir, mut cluster) = zone_0_in_memory(3).await;
    let c = cluster.client().await;
    // Written while zone 2 is down: only zones 0 and 1 hold it.
    cluster.kill(2).await;
    c.set(b"k", b"v", 0).await.unwrap();
    cluster.kill(1).await;
    cluster.kill(0).await;
    cluster.restart(0).await;
    cluster.restart(2).await;
    cluster.start_background(0, RECOVERY_DELAY_MS);
    // Zone 2 lists nothing of k; zone 1, down, is the only other replica that holds
    // it: zone 0 must wait for it. (A recovery that went without zone 1 would end a
    // few milliseconds after its delay: twice the delay is ample to see it wait.)
    tokio::time::sleep(Duration::from_millis(2 * RECOVERY_DELAY_MS)).await;
    assert!(recovering(&cluster, 0).await);
    cluster.restart(1).await;
    recovered(&cluster, 0).await;
    assert!(cluster.stored(0, b"k").is_some());
    cluster.kill(1).await;
    assert_eq!(c.get(b"k").await.unwrap().value, b"v");
    cluster.stop().await;
}

#[tokio::test]
async fn in_five_zones_recovery_does_without_one_peer() {
    let (_dir, mut cluster) = zone_0_in_memory(5).await;
    let c = cluster.client().await;
    // Held by zones 0, 1 and 2 only: a quorum of five.
    cluster.kill(3).await;
    cluster.kill(4).await;
    c.set(b"k", b"v", 0).await.unwrap();
    cluster.restart(3).await;
    cluster.restart(4).await;
    // With zone 1 down, three of zone 0's four peers list their keys; zone 2 is among
    // them, and holds k.
    cluster.kill(1).await;
    cluster.kill(0).await;
    cluster.restart(0).await;
    cluster.start_background(0, RECOVERY_DELAY_MS);
    recovered(&cluster, 0).await;
    assert!(cluster.stored(0, b"k").is_some());
    cluster.stop().await;
}

#[tokio::test]
async fn a_full_memory_engine_refuses_new_records_but_takes_destroys() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = memory_cluster(dir.path(), 64 << 10).await;
    let c = cluster.client().await.with_timeout(Duration::from_secs(5));
    // No eviction running: the first record takes the engines past their cap.
    c.set(b"big", &vec![7; 100 << 10], 0).await.unwrap();
    assert_eq!(
        status(c.set(b"small", b"x", 0).await),
        Status::SSOutofResource
    );
    c.destroy(b"big").await.unwrap();
    assert_eq!(status(c.get(b"big").await), Status::NoKey);
    cluster.stop().await;
}

#[tokio::test]
async fn eviction_destroys_the_soonest_expiring_records() {
    let dir = tempfile::tempdir().unwrap();
    let limit = 1 << 20;
    let mut cluster = memory_cluster(dir.path(), limit).await;
    let c = cluster.client().await;
    let value = vec![1u8; 10 << 10];
    // 85 records of 10 KiB, under the 90% mark; the soonest-expiring first.
    for i in 0..85u32 {
        c.set(format!("k{i:03}").as_bytes(), &value, 1000 + i)
            .await
            .unwrap();
    }
    for z in 0..3 {
        cluster.start_background(z, RECOVERY_DELAY_MS);
    }
    // Ten more, expiring last, take every engine past 90%.
    for i in 85..95u32 {
        c.set(format!("k{i:03}").as_bytes(), &value, 100_000)
            .await
            .unwrap();
    }
    let size = |z: usize| cluster.engines[z].stats().size_bytes;
    assert!(size(0) > limit / 100 * 90, "{}", size(0));
    eventually("eviction brings every engine under 90%", || {
        (0..3).all(|z| size(z) <= limit / 100 * 90)
    })
    .await;
    // The sizes drop once a few destroys have landed; every zone's evictor destroys the
    // same soonest-expiring keys at once, so k000's own destroy may still be contending.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(r) = c.get(b"k000").await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "k000, soonest to expire, never evicted: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        status(c.get(b"k000").await),
        Status::NoKey,
        "soonest to expire"
    );
    for i in 70..95u32 {
        let key = format!("k{i:03}");
        assert_eq!(c.get(key.as_bytes()).await.unwrap().value, value, "{key}");
    }
    cluster.stop().await;
}
