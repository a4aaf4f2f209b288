//! The store through its client library, on real tokio and real sockets.

mod common;

use common::{assert_read_and_sweep_repair, eventually, within, Store, TestCluster};
use junokv::client::ClientError;
use junokv::clock::Clock;
use junokv::key::StoreKey;
use junokv::protocol::Status;
use junokv::proxy::{Proxy, ProxyConfig};
use junokv::record::Slot;

fn status<T: std::fmt::Debug>(r: Result<T, ClientError>) -> Status {
    r.expect_err("expected an error status")
        .status()
        .expect("a status from the store")
}

#[tokio::test]
async fn every_operation_behaves_as_junodb_clients_expect() {
    for zones in [3, 5] {
        let cluster = TestCluster::memory(zones).await;
        let c = cluster.client().await;
        c.ping().await.unwrap();
        let r = c.create(b"k", b"v1", 0).await.unwrap();
        assert_eq!(r.version, 1);
        assert!((3599..=3600).contains(&r.ttl), "{}", r.ttl);
        assert!(r.creation_time > 0 && r.last_modified_ns > 0 && r.originator.is_some());
        assert_eq!(status(c.create(b"k", b"again", 0).await), Status::DupKey);
        let g = c.get(b"k").await.unwrap();
        assert_eq!(
            (g.version, g.value.as_slice(), g.creation_time),
            (1, &b"v1"[..], r.creation_time)
        );
        assert_eq!(c.update(b"k", b"v2", 0).await.unwrap().version, 2);
        assert_eq!(
            status(c.update_if(b"k", b"v3", 0, 1).await),
            Status::VersionConflict
        );
        assert_eq!(c.update_if(b"k", b"v3", 0, 2).await.unwrap().version, 3);
        assert_eq!(c.set(b"k", b"v4", 100).await.unwrap().version, 4);
        // TTL only grows: a shorter TTL on get changes nothing, a longer one extends.
        // (Seconds tick between requests: allow one.)
        assert!((3599..=3600).contains(&c.get_extend(b"k", 10).await.unwrap().ttl));
        assert!((7199..=7200).contains(&c.get_extend(b"k", 7200).await.unwrap().ttl));
        c.destroy(b"k").await.unwrap();
        c.destroy(b"k").await.unwrap();
        assert_eq!(status(c.get(b"k").await), Status::NoKey);
        assert_eq!(status(c.update(b"k", b"x", 0).await), Status::NoKey);
        assert_eq!(c.set(b"k", b"v5", 0).await.unwrap().version, 1);
        // Namespaces are separate key spaces.
        let other = c.clone().with_namespace("other");
        assert_eq!(status(other.get(b"k").await), Status::NoKey);
        other.create(b"k", b"o", 0).await.unwrap();
        assert_eq!(c.get(b"k").await.unwrap().value, b"v5");
        cluster.stop().await;
    }
}

#[tokio::test]
async fn a_record_expires_after_its_ttl() {
    let cluster = TestCluster::memory(3).await;
    let c = cluster.client().await;
    c.create(b"short", b"v", 1).await.unwrap();
    c.create(b"long", b"v", 10).await.unwrap();
    // Expiry is judged by the proxy's clock: move it rather than wait.
    cluster.clock.set_skew_ns(2_000_000_000);
    assert_eq!(status(c.get(b"short").await), Status::NoKey);
    assert!((7..=8).contains(&c.get(b"long").await.unwrap().ttl));
    assert_eq!(c.create(b"short", b"again", 0).await.unwrap().version, 1);
}

fn stored_version(store: &Store, key: &[u8]) -> Option<u32> {
    let Store::Memory(engine) = store else {
        panic!("memory store expected")
    };
    use junokv::engine::Engine;
    let bytes = engine
        .get(&StoreKey::new(b"test", key, 64).to_bytes())
        .unwrap()?;
    Slot::decode(&bytes)
        .unwrap()
        .accepted
        .map(|(_, r)| r.version)
}

/// Three replicas (in memory) holding 40 keys at version 1, the third one stopped.
async fn forty_keys_and_a_replica_down() -> (TestCluster, junokv::client::Client, Vec<Vec<u8>>) {
    let mut cluster = TestCluster::memory(3).await;
    let c = cluster.client().await;
    let keys: Vec<Vec<u8>> = (0..40).map(|i| format!("key{i}").into_bytes()).collect();
    for k in &keys {
        c.create(k, b"v1", 0).await.unwrap();
    }
    cluster.kill(2).await;
    (cluster, c, keys)
}

#[tokio::test]
async fn losing_one_of_three_storage_nodes_loses_nothing_and_it_catches_up() {
    let (mut cluster, c, keys) = forty_keys_and_a_replica_down().await;
    for k in &keys {
        assert_eq!(c.update(k, b"v2", 0).await.unwrap().version, 2);
        assert_eq!(c.get(k).await.unwrap().value, b"v2");
    }
    assert!(keys
        .iter()
        .all(|k| stored_version(&cluster.stores[2], k) == Some(1)));
    cluster.restart(2).await;
    // Reads that ask the restarted replica bring it up to date (two of three do).
    for k in &keys {
        assert_eq!(c.get(k).await.unwrap().value, b"v2");
    }
    // The read answers as soon as a quorum agrees; its repair of the lagging replica
    // may land just after. Writes to every key afterwards go to all three replicas.
    for k in &keys {
        assert_eq!(c.update(k, b"v3", 0).await.unwrap().version, 3);
    }
    cluster.kill(0).await;
    for k in &keys {
        assert_eq!(c.get(k).await.unwrap().value, b"v3");
    }
    let caught_up = keys
        .iter()
        .filter(|k| stored_version(&cluster.stores[2], k) == Some(3))
        .count();
    assert!(
        caught_up >= keys.len() / 2,
        "only {caught_up} keys reached the restarted replica"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn all_data_survives_a_restart_of_the_whole_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::rocks(3, dir.path()).await;
    let c = cluster.client().await;
    for i in 0..100 {
        c.set(
            format!("k{i}").as_bytes(),
            format!("value-{i}").as_bytes(),
            0,
        )
        .await
        .unwrap();
    }
    c.destroy(b"k7").await.unwrap();
    drop(c);
    let stores = cluster.stop().await;
    let cluster = TestCluster::start(stores).await;
    let c = cluster.client().await;
    for i in 0..100 {
        let r = c.get(format!("k{i}").as_bytes()).await;
        if i == 7 {
            assert_eq!(status(r), Status::NoKey);
        } else {
            assert_eq!(r.unwrap().value, format!("value-{i}").into_bytes());
        }
    }
    cluster.stop().await;
}

#[tokio::test]
async fn a_conditional_update_race_has_exactly_one_winner() {
    let cluster = TestCluster::memory(3).await;
    let (a, b) = (cluster.client().await, cluster.client().await);
    for round in 0..30 {
        let key = format!("race{round}").into_bytes();
        let v = a.create(&key, b"start", 0).await.unwrap().version;
        let (ra, rb) = tokio::join!(a.update_if(&key, b"a", 0, v), b.update_if(&key, b"b", 0, v));
        let winners: Vec<&[u8]> = [(&ra, &b"a"[..]), (&rb, &b"b"[..])]
            .iter()
            .filter(|(r, _)| r.is_ok())
            .map(|(_, w)| *w)
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {ra:?} {rb:?}");
        for r in [&ra, &rb] {
            if let Err(e) = r {
                assert_eq!(e.status(), Some(Status::VersionConflict));
            }
        }
        let now = a.get(&key).await.unwrap();
        assert_eq!((now.version, now.value.as_slice()), (v + 1, winners[0]));
    }
    cluster.stop().await;
}

/// A clock three hours ahead: past twice the default grace period of every record
/// that died in the test (when any replica's sweeper takes over).
fn three_hours_on() -> junokv::clock::Clock {
    let clock = junokv::clock::Clock::default();
    clock.set_skew_ns(3 * 3600 * 1_000_000_000);
    clock
}

#[tokio::test]
async fn dead_records_are_purged_by_reads_and_by_the_sweeper() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = TestCluster::rocks(3, dir.path()).await;
    let c = cluster.client().await;
    for k in [&b"read"[..], b"unread"] {
        c.create(k, b"v", 0).await.unwrap();
    }
    // Live through the test's three hours on (with the default TTL of an hour it would
    // be dead two hours then: just at the sweepers' takeover, by a second either way).
    c.create(b"live", b"v", 10 * 3600).await.unwrap();
    c.destroy(b"read").await.unwrap();
    c.destroy(b"unread").await.unwrap();
    // An update of a key nobody ever wrote leaves only promises behind.
    assert_eq!(status(c.update(b"never", b"x", 0).await), Status::NoKey);
    let everywhere =
        |key: &[u8], present: bool| (0..3).all(|z| cluster.stored(z, key).is_some() == present);
    eventually("every replica has the tombstone and the promise", || {
        everywhere(b"read", true) && everywhere(b"never", true)
    })
    .await;

    // A read, long after the destroy, removes the tombstone from every replica.
    cluster.clock.set_skew_ns(2 * 3600 * 1_000_000_000);
    assert_eq!(status(c.get(b"read").await), Status::NoKey);
    eventually("the read purges the tombstone", || {
        everywhere(b"read", false)
    })
    .await;
    assert!(everywhere(b"unread", true), "nobody read it");

    // The sweeper finds what nobody reads: the other tombstone and the bare promises.
    let swept = cluster.sweep(0, three_hours_on()).await;
    assert_eq!((swept.resolved, swept.forgotten), (1, 1), "{swept:?}");
    eventually("the sweeper purges the tombstone", || {
        everywhere(b"unread", false)
    })
    .await;
    eventually("the promise-only slot goes", || {
        cluster.stored(0, b"never").is_none()
    })
    .await;
    assert!(everywhere(b"live", true));
    cluster.clock.set_skew_ns(0);
    assert_eq!(c.get(b"live").await.unwrap().value, b"v");
    // A purged key is an absent key: it can be created afresh.
    assert_eq!(c.create(b"unread", b"again", 0).await.unwrap().version, 1);
    cluster.stop().await;
}

#[tokio::test]
async fn replicas_that_missed_writes_are_brought_up_to_date_by_the_sweepers_without_reads() {
    let (mut cluster, c, keys) = forty_keys_and_a_replica_down().await;
    for k in &keys {
        c.update(k, b"v2", 0).await.unwrap();
    }
    cluster.restart(2).await;
    let behind = || {
        (keys.iter())
            .filter(|k| stored_version(&cluster.stores[2], k) != Some(2))
            .count()
    };
    assert_eq!(behind(), keys.len());
    // Each storage server compares the replicas of the shards it is responsible for:
    // the digests of the shards holding the keys differ, and only those are listed.
    let (mut out_of_sync, mut listed) = (0, 0);
    for z in 0..3 {
        let swept = cluster.sweep(z, Clock::default()).await;
        (out_of_sync, listed) = (
            out_of_sync + swept.out_of_sync,
            listed + swept.shards_listed,
        );
    }
    assert_eq!(out_of_sync, keys.len() as u64);
    let shards: std::collections::BTreeSet<u16> = (keys.iter())
        .map(|k| StoreKey::new(b"test", k, cluster.map().num_shards).shard())
        .collect();
    assert_eq!(listed, shards.len() as u64);
    // A repair that fails (under load, one that times out) is dropped and left to the
    // sweepers' next pass, as their periodic passes do in production: a few more
    // passes, each given five seconds to land, must bring every key up to date (on a
    // busy machine a second pass was needed in 6 runs of 100, never a third).
    for pass in 1.. {
        if within(std::time::Duration::from_secs(5), || behind() == 0).await {
            break;
        }
        assert!(
            pass < 5,
            "{} keys still behind after {pass} passes",
            behind()
        );
        for z in 0..3 {
            cluster.sweep(z, Clock::default()).await;
        }
    }
    // The repairs' last acknowledgements may land a moment later: within a few passes
    // the replicas agree on every key, and the passes find nothing more to do — and
    // list no shard (every digest agrees).
    let (mut again, mut listed) = (0, 0);
    for _ in 0..5 {
        (again, listed) = (0, 0);
        for z in 0..3 {
            let swept = cluster.sweep(z, Clock::default()).await;
            (again, listed) = (again + swept.out_of_sync, listed + swept.shards_listed);
        }
        if again == 0 && listed == 0 {
            break;
        }
    }
    assert_eq!((again, listed), (0, 0), "the replicas still disagree");
    cluster.stop().await;
}

/// Overwrites zone `z`'s stored slot of `key` with bytes that fail their checksum.
async fn damage(cluster: &mut TestCluster, z: usize, key: &[u8]) {
    let bytes = cluster.stored(z, key).expect("stored");
    cluster.kill(z).await;
    let Store::Rocks(dir) = &cluster.stores[z] else {
        unreachable!("a RocksDB cluster")
    };
    let engine = junokv::engine::RocksEngine::open(dir).unwrap();
    let mut bad = bytes;
    bad[2] ^= 0x40;
    let k = StoreKey::new(b"test", key, 64).to_bytes();
    junokv::engine::Engine::write(&engine, &[(k.into(), Some(bad))], true).unwrap();
    drop(engine);
    cluster.restart(z).await;
}

#[tokio::test]
async fn a_damaged_replica_is_repaired_by_a_read_or_by_the_sweeper() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = TestCluster::rocks(3, dir.path()).await;
    let c = cluster.client().await;
    c.create(b"read", b"one", 0).await.unwrap();
    c.create(b"unread", b"two", 0).await.unwrap();
    drop(c);
    cluster.stored_everywhere(b"read").await;
    cluster.stored_everywhere(b"unread").await;
    damage(&mut cluster, 0, b"read").await;
    damage(&mut cluster, 0, b"unread").await;
    let sound = |cluster: &TestCluster, key: &[u8]| {
        cluster.stored(0, key).is_some_and(|b| {
            Slot::decode(&b).is_ok_and(|s| s.accepted.is_some_and(|(_, r)| r.value.len() == 3))
        })
    };
    assert_read_and_sweep_repair(cluster, sound).await;
}

#[tokio::test]
async fn a_storage_server_serves_only_senders_on_its_map_and_only_its_shards() {
    let cluster = TestCluster::memory(3).await;
    // Zone 0's server has a newer map than the proxy: a node added to its zone took
    // some of its shards.
    let mut map = cluster.map();
    map.epoch = 2;
    map.zones[0]
        .nodes
        .push(junokv::cluster::Node::at("added:7001"));
    let me = cluster.addrs[0].to_string();
    cluster.storages[0].as_ref().unwrap().own(&map, &me);
    let moved = |k: &[u8]| {
        let shard = StoreKey::new(b"test", k, map.num_shards).shard();
        map.zones[0].owner(shard).id == "added:7001"
    };
    let keys: Vec<Vec<u8>> = (0..64).map(|i| format!("k{i}").into_bytes()).collect();
    let (gone, kept): (Vec<_>, Vec<_>) = keys.iter().partition(|k| moved(k));
    assert!(!gone.is_empty() && !kept.is_empty());
    let c = cluster.client().await;
    for k in &keys {
        // Two of three replicas are a quorum: every write still succeeds...
        c.set(k, b"v", 0).await.unwrap();
    }
    eventually("zones 1 and 2 hold every key", || {
        keys.iter()
            .all(|k| cluster.stored(1, k).is_some() && cluster.stored(2, k).is_some())
    })
    .await;
    // ...but zone 0 refused the proxy on the older map, every shard of it.
    assert!(keys.iter().all(|k| cluster.stored(0, k).is_none()));

    // A proxy on zone 0's map: zone 0 takes the keys of the shards it kept, and no
    // other (those go to the added node, which is not there).
    let proxy = Proxy::new(ProxyConfig::new(map.clone()), Clock::default()).unwrap();
    let (_server, c) = common::serve_and_connect(&proxy, "test").await;
    for k in &keys {
        c.set(k, b"w", 0).await.unwrap();
    }
    eventually("zone 0 holds the keys of its shards", || {
        kept.iter().all(|k| cluster.stored(0, k).is_some())
    })
    .await;
    assert!(gone.iter().all(|k| cluster.stored(0, k).is_none()));
}
