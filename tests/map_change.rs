//! Changing the map of a running cluster (real tokio, loopback): three zones of one
//! node grow to two nodes each and shrink back while a client writes, through the
//! driver an operator runs (`junokv::map_change`) and a map source every node follows.

mod common;

use common::eventually;
use junokv::clock::Clock;
use junokv::cluster::{Node, ShardMap, Zone};
use junokv::engine::{Engine, MemoryEngine};
use junokv::key::StoreKey;
use junokv::proxy::{Proxy, ProxyConfig};
use junokv::storage::{is_record_key, StorageServer};
use junokv::transport::Acceptor;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Six storage servers following `store` (two per zone: `n` in zone `n % 3`).
struct Nodes {
    engines: Vec<Arc<MemoryEngine>>,
    addrs: Vec<String>,
    _servers: Vec<StorageServer>,
}

async fn start_nodes(store: &watch::Sender<ShardMap>, addrs: Vec<TcpListener>) -> Nodes {
    let mut nodes = Nodes {
        engines: Vec::new(),
        addrs: Vec::new(),
        _servers: Vec::new(),
    };
    for listener in addrs {
        let engine = Arc::new(MemoryEngine::default());
        let addr = listener.local_addr().unwrap().to_string();
        let codec = junokv::at_rest::SlotCodec::clear();
        let mut server =
            StorageServer::start(listener, engine.clone(), codec, Acceptor::Plain).unwrap();
        server.follow(store.subscribe(), &addr);
        nodes.engines.push(engine);
        nodes.addrs.push(addr);
        nodes._servers.push(server);
    }
    nodes
}

/// Three zones of `per_zone` of `addrs` each (zone `z`: `z`, `z + 3`).
fn zones(addrs: &[String], per_zone: usize) -> Vec<Zone> {
    (0..3)
        .map(|z| Zone {
            datacenter: format!("dc{z}"),
            nodes: (0..per_zone)
                .map(|i| Node::at(addrs[z + 3 * i].clone()))
                .collect(),
        })
        .collect()
}

/// `n` listeners on loopback, and their addresses.
async fn listen(n: usize) -> (Vec<TcpListener>, Vec<String>) {
    let mut listeners = Vec::new();
    for _ in 0..n {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let addrs = (listeners.iter())
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    (listeners, addrs)
}

/// A map source whose map holds the first three of `addrs`: three zones of one node.
fn source_of_three_zones_of_one(addrs: &[String]) -> watch::Sender<ShardMap> {
    watch::Sender::new(ShardMap {
        epoch: 1,
        num_shards: 64,
        zones: zones(addrs, 1),
        previous: None,
    })
}

/// Six storage servers following a map source whose map holds the first of each
/// zone's two: three zones of one node.
async fn three_zones_of_one() -> (watch::Sender<ShardMap>, Nodes) {
    let (listeners, addrs) = listen(6).await;
    let store = source_of_three_zones_of_one(&addrs);
    let nodes = start_nodes(&store, listeners).await;
    (store, nodes)
}

fn proxy_on(store: &watch::Sender<ShardMap>) -> Arc<Proxy> {
    let mut config = ProxyConfig::new(store.borrow().clone());
    config.timeouts.request_ms = 2000;
    let proxy = Proxy::new(config, Clock::default()).unwrap();
    proxy.follow(store.subscribe());
    proxy
}

/// Waits until the server at `addr` lists `n` records as durable (it lists, and reads
/// out for a copy, only what it knows is durable, which it may hear a moment after).
async fn durably_held(proxy: &Proxy, addr: &str, n: usize) {
    use junokv::replica::{NodeRequest, ReplicaReply};
    for _ in 0..500 {
        let ask = NodeRequest::ListKeys {
            after: None,
            shard: None,
            limit: 4096,
        };
        if let Ok(ReplicaReply::Keys { keys }) = proxy.ask_node(addr, ask).await {
            if keys.iter().filter(|(_, ballot)| ballot.is_some()).count() >= n {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{addr} never listed {n} records as durable");
}

/// Slots a node holds of shards `map` does not place on it.
fn foreign_slots(nodes: &Nodes, map: &ShardMap) -> Vec<String> {
    let mut found = Vec::new();
    for (engine, addr) in nodes.engines.iter().zip(&nodes.addrs) {
        let mut n = 0;
        junokv::engine::for_each(&**engine as &dyn Engine, |k, _| {
            let placed = |s| map.placement(s).nodes.iter().any(|p| &p.addr == addr);
            n += usize::from(is_record_key(k) && StoreKey::shard_in(k).is_some_and(|s| !placed(s)));
        })
        .unwrap();
        if n > 0 {
            found.push(format!("{addr}: {n} slots"));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_grows_and_shrinks_under_writes_without_losing_one() {
    let (store, nodes) = three_zones_of_one().await;
    let proxy = proxy_on(&store);
    let (_server, client) = common::serve_and_connect(&proxy, "test").await;

    let writer = common::Writer::start(client, 200);

    let driver = proxy_on(&store);
    let grown = junokv::map_change::change(&store, &driver, zones(&nodes.addrs, 2), &|_| {})
        .await
        .unwrap();
    assert_eq!((grown.epoch, grown.previous.is_none()), (3, true));
    let shrunk = junokv::map_change::change(&store, &driver, zones(&nodes.addrs, 1), &|_| {})
        .await
        .unwrap();
    assert_eq!(shrunk.epoch, 5);
    writer.stop_and_check().await;
    // Every key is on each of its replicas under the final map (the reads repaired a
    // replica that was a joiner's old node), and the nodes that left hold nothing.
    eventually("every replica holds every key", || {
        (0..200).all(|k| {
            let key = StoreKey::new(b"test", format!("k{k}").as_bytes(), 64).to_bytes();
            (0..3).all(|z| nodes.engines[z].get(&key).unwrap().is_some())
        })
    })
    .await;
    eventually("the nodes that left hold nothing", || {
        foreign_slots(&nodes, &shrunk).is_empty()
    })
    .await;
}

/// A record chosen before a change on a majority that includes the leaving node (the
/// third replica missed it) must be on a majority of the new layout once the change is
/// done, before anyone reads it: the catch-up's promise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_node_hands_on_what_only_it_and_one_other_hold() {
    let (store, nodes) = three_zones_of_one().await;
    let (first, addrs) = (store.borrow().clone(), nodes.addrs.clone());
    // Written through a proxy that cannot reach zone 2: on zones 0 and 1 only.
    let mut blind = first.clone();
    blind.zones[2].nodes = vec![Node::at("127.0.0.1:1")];
    let writer = Proxy::new(ProxyConfig::new(blind), Clock::default()).unwrap();
    let (_server, client) = common::serve_and_connect(&writer, "test").await;
    for k in 0..50 {
        client
            .set(format!("k{k}").as_bytes(), b"v", 0)
            .await
            .unwrap();
    }
    let key = |k: usize| StoreKey::new(b"test", format!("k{k}").as_bytes(), 64).to_bytes();
    eventually("zones 0 and 1 hold every key", || {
        (0..50).all(|k| (0..2).all(|z| nodes.engines[z].get(&key(k)).unwrap().is_some()))
    })
    .await;

    // Zone 0's node is replaced by the spare of zone 0.
    let mut zones = zones(&addrs, 1);
    zones[0].nodes = vec![Node::at(addrs[3].clone())];
    let driver = proxy_on(&store);
    let done = junokv::map_change::change(&store, &driver, zones, &|_| {})
        .await
        .unwrap();
    let on_new_majority = |k: usize| {
        let replicas =
            done.placement(StoreKey::new(b"test", format!("k{k}").as_bytes(), 64).shard());
        let holders = (replicas.nodes.iter())
            .filter(|n| {
                let i = addrs.iter().position(|a| *a == n.addr).unwrap();
                nodes.engines[i].get(&key(k)).unwrap().is_some()
            })
            .count();
        holders >= 2
    };
    let short: Vec<usize> = (0..50).filter(|k| !on_new_majority(*k)).collect();
    assert!(
        short.is_empty(),
        "keys on fewer than two replicas after the change: {short:?}"
    );
}

/// A quiet cluster's move copies every record of a moving shard to its joining node
/// and reads none through the protocol: the joining node and the two that stay agree
/// on every key's ballot once the copy is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_copies_the_records_and_reads_nothing_the_copy_brought() {
    let (store, nodes) = three_zones_of_one().await;
    let proxy = proxy_on(&store);
    let (_server, client) = common::serve_and_connect(&proxy, "test").await;
    for k in 0..100 {
        let value = vec![b'v'; 100];
        client
            .set(format!("k{k}").as_bytes(), &value, 0)
            .await
            .unwrap();
    }
    let key = |k: usize| StoreKey::new(b"test", format!("k{k}").as_bytes(), 64).to_bytes();
    for addr in &nodes.addrs[..3] {
        durably_held(&proxy, addr, 100).await;
    }

    let mut zones = zones(&nodes.addrs, 1);
    zones[0].nodes = vec![Node::at(nodes.addrs[3].clone())];
    let moved = junokv::map_change::Totals::default();
    let report = |step| {
        if let junokv::map_change::Progress::Moved(m) = step {
            moved.add(&m);
        }
    };
    junokv::map_change::change(&store, &proxy_on(&store), zones, &report)
        .await
        .unwrap();
    assert_eq!(moved.get(), (100, 100 * 100, 0));
    assert!((0..100).all(|k| nodes.engines[3].get(&key(k)).unwrap().is_some()));
}

/// A joining node takes a copied record as a late Accept of its ballot: never below
/// what it accepted or promised, and only from a sender on its own map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_taken_as_a_late_accept_and_only_on_the_senders_map() {
    use junokv::record::Ballot;
    use junokv::replica::{NodeRequest, ReplicaReply, ReplicaRequest};
    let (store, nodes) = three_zones_of_one().await;
    let proxy = proxy_on(&store);
    let (_server, client) = common::serve_and_connect(&proxy, "test").await;
    client.set(b"k", b"new", 0).await.unwrap();
    let (key, node) = (StoreKey::new(b"test", b"k", 64), nodes.addrs[0].as_str());
    let shard = |key: &StoreKey| NodeRequest::ReadShard {
        shard: key.shard(),
        after: None,
        limit_bytes: 1 << 20,
    };
    durably_held(&proxy, node, 1).await;
    let Ok(ReplicaReply::Records { records }) = proxy.ask_node(node, shard(&key)).await else {
        panic!("no records")
    };
    let [(_, (ballot, record))] = &records[..] else {
        panic!("{records:?}")
    };
    let copy = |key: &StoreKey, ballot, value: &[u8]| {
        let mut record = record.clone();
        record.value = value.to_vec();
        ReplicaRequest::Copy {
            records: vec![(key.clone(), (ballot, record))],
        }
    };
    let older = Ballot {
        counter: ballot.counter - 1,
        ..*ballot
    };
    let taken = |n| Ok(ReplicaReply::Copied { taken: n });
    assert_eq!(
        proxy.send(node, &copy(&key, older, b"old"), 1).await,
        taken(0)
    );
    let other = StoreKey::new(b"test", b"other", 64);
    assert_eq!(
        proxy.send(node, &copy(&other, older, b"o"), 1).await,
        taken(1)
    );
    let refused = Ok(ReplicaReply::NotOwner { epoch: 1 });
    let newer = Ballot {
        counter: ballot.counter + 1,
        ..*ballot
    };
    assert_eq!(proxy.send(node, &copy(&key, newer, b"x"), 2).await, refused);
    // Even with nothing to copy: the driver asks so whether a joining node serves the
    // joint map yet.
    let nothing = ReplicaRequest::Copy {
        records: Vec::new(),
    };
    assert_eq!(proxy.send(node, &nothing, 2).await, refused);
    assert_eq!(proxy.send(node, &nothing, 1).await, taken(0));
    let value_of = |records: Vec<(StoreKey, junokv::record::Accepted)>, key: &StoreKey| {
        let found = records.into_iter().find(|(k, _)| k == key);
        found.map(|(_, (_, r))| r.value)
    };
    let Ok(ReplicaReply::Records { records }) = proxy.ask_node(node, shard(&key)).await else {
        panic!("no records")
    };
    assert_eq!(value_of(records, &key), Some(b"new".to_vec()));
    let Ok(ReplicaReply::Records { records }) = proxy.ask_node(node, shard(&other)).await else {
        panic!("no records")
    };
    assert_eq!(value_of(records, &other), Some(b"o".to_vec()));
}

/// A change that waits for a joining node that never comes (here an address nobody
/// listens on) is rolled back by another driver while a client writes: the map returns
/// to the zones before it, and the waiting driver's final map is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stuck_on_a_dead_joining_node_is_rolled_back() {
    let (store, nodes) = three_zones_of_one().await;
    let before = store.borrow().zones.clone();
    let proxy = proxy_on(&store);
    let (_server, client) = common::serve_and_connect(&proxy, "test").await;
    let writer = common::Writer::start(client, 100);

    let mut zones = before.clone();
    zones[0].nodes = vec![Node::at("127.0.0.1:1")];
    let (stuck_store, stuck_driver) = (store.clone(), proxy_on(&store));
    let stuck = tokio::spawn(async move {
        junokv::map_change::change(&stuck_store, &stuck_driver, zones, &|_| {}).await
    });
    eventually("the joint map is out", || store.borrow().previous.is_some()).await;
    let back = junokv::map_change::change(&store, &proxy_on(&store), before.clone(), &|_| {})
        .await
        .unwrap();
    assert_eq!((back.epoch, back.previous.is_none()), (4, true));
    assert_eq!(back.zones, before);
    let refused = stuck.await.unwrap().unwrap_err();
    assert!(refused.contains("another change went first"), "{refused}");
    writer.stop_and_check().await;
    assert!(foreign_slots(&nodes, &back).is_empty());
}

/// A node that joins a shard drops whatever it still held of it from an earlier
/// tenure (a drop that a crash cut short) before it serves the joint map: a record of a
/// key deleted and purged everywhere else since must not come back through it. Here
/// the joining node starts (as after such a crash) only once the joint map is out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_drops_what_it_held_of_its_shards_before() {
    use junokv::record::{Ballot, Record, Slot};
    let (mut listeners, addrs) = listen(4).await;
    let store = source_of_three_zones_of_one(&addrs);
    let spare = listeners.pop().unwrap();
    let _nodes = start_nodes(&store, listeners).await;

    // Zone 0's node is replaced by the spare, which is not up yet: the driver waits.
    let mut to = zones(&addrs, 1);
    to[0].nodes = vec![Node::at(addrs[3].clone())];
    let (driver_store, driver) = (store.clone(), proxy_on(&store));
    let change = tokio::spawn(async move {
        junokv::map_change::change(&driver_store, &driver, to, &|_| {}).await
    });
    eventually("the joint map is out", || store.borrow().previous.is_some()).await;

    // The spare comes up holding a live record of a key no other node has.
    let key = StoreKey::new(b"test", b"gone", 64);
    let record = Record {
        version: 1,
        creation_time: 1,
        expires_at: u32::MAX,
        last_modified_ns: 0,
        originator: [0; 16],
        lineage: Default::default(),
        tombstone: false,
        payload_kind: 0,
        value: b"stale".to_vec(),
    };
    let ballot = Ballot {
        counter: 1,
        proposer: 1,
    };
    let slot = Slot {
        promised: ballot,
        accepted: Some((ballot, record)),
    };
    let codec = junokv::at_rest::SlotCodec::clear();
    let engine = Arc::new(MemoryEngine::default());
    let stale = codec.encode(&key.to_bytes(), &slot);
    engine
        .write(&[(key.shared_engine_key(), Some(stale))], true)
        .unwrap();
    let mut server = StorageServer::start(spare, engine.clone(), codec, Acceptor::Plain).unwrap();
    server.follow(store.subscribe(), &addrs[3]);

    change.await.unwrap().unwrap();
    assert_eq!(engine.get(&key.to_bytes()).unwrap(), None);
    let (_server, client) = common::serve_and_connect(&proxy_on(&store), "test").await;
    assert!(
        client.get(b"gone").await.is_err(),
        "the stale record came back"
    );
}
