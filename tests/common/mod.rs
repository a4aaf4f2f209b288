//! A whole cluster in the test process, on loopback, on real tokio.
#![allow(dead_code)] // each test file uses a different part

pub mod dev;

use junokv::at_rest::{KeyFile, SlotCodec};
use junokv::client::Client;
use junokv::clock::Clock;
use junokv::cluster::{Node, ShardMap, Zone};
use junokv::engine::{Engine, MemoryEngine, RocksEngine, VolatileEngine};
use junokv::proxy::{Proxy, ProxyConfig, ProxyServer};
use junokv::storage::{MemoryConfig, StorageServer, SweepConfig, Swept, META_PREFIX};
use junokv::transport::Acceptor;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Where a zone's storage server keeps its data across restarts.
pub enum Store {
    /// Every write kept, across restarts too (the test's stand-in for a disk).
    Memory(Arc<MemoryEngine>),
    Rocks(PathBuf),
    /// `engine = "memory"`: records lost in a restart; the replica's state in the
    /// directory; capped at the given bytes.
    Volatile(PathBuf, u64),
}

impl Store {
    fn open(&self) -> Arc<dyn Engine> {
        match self {
            Store::Memory(m) => m.clone(),
            Store::Rocks(dir) => Arc::new(RocksEngine::open(dir).expect("open rocksdb")),
            Store::Volatile(dir, limit) => {
                Arc::new(VolatileEngine::open(dir, META_PREFIX, *limit).expect("open state"))
            }
        }
    }
}

pub struct TestCluster {
    pub stores: Vec<Store>,
    /// Each zone's open engine (replaced on restart), to look at what replicas hold.
    pub engines: Vec<Arc<dyn Engine>>,
    pub addrs: Vec<SocketAddr>,
    pub storages: Vec<Option<StorageServer>>,
    pub proxy: Option<ProxyServer>,
    pub proxy_addr: SocketAddr,
    /// The proxy's clock, which tests may move.
    pub clock: Clock,
    /// The data keys the storage servers seal slots with (in clear without).
    pub key_file: Option<PathBuf>,
}

impl TestCluster {
    /// `zones` storage servers on in-memory engines, one proxy.
    pub async fn memory(zones: usize) -> Self {
        Self::start((0..zones).map(|_| Store::Memory(Arc::default())).collect()).await
    }

    /// `zones` storage servers on RocksDB under `dir`, one proxy.
    pub async fn rocks(zones: usize, dir: &std::path::Path) -> Self {
        Self::start(
            (0..zones)
                .map(|z| Store::Rocks(dir.join(format!("zone-{z}"))))
                .collect(),
        )
        .await
    }

    pub async fn start(stores: Vec<Store>) -> Self {
        Self::start_with(stores, None).await
    }

    /// Storage servers over `stores` that seal slots with the keys in `key_file`
    /// (or store them in clear), one proxy.
    pub async fn start_with(stores: Vec<Store>, key_file: Option<PathBuf>) -> Self {
        let mut storages = Vec::new();
        let mut addrs = Vec::new();
        let mut engines = Vec::new();
        for s in &stores {
            let engine = s.open();
            let server = StorageServer::start(
                TcpListener::bind("127.0.0.1:0").await.unwrap(),
                engine.clone(),
                codec(key_file.as_ref()),
                Acceptor::Plain,
            )
            .unwrap();
            addrs.push(server.addr());
            storages.push(Some(server));
            engines.push(engine);
        }
        let mut cluster = TestCluster {
            stores,
            engines,
            addrs,
            storages,
            proxy: None,
            proxy_addr: "127.0.0.1:0".parse().unwrap(),
            clock: Clock::default(),
            key_file,
        };
        cluster.start_proxy().await;
        cluster
    }

    /// The cluster's map: one node per zone.
    pub fn map(&self) -> ShardMap {
        let zones = self
            .addrs
            .iter()
            .map(|a| Zone {
                datacenter: "dc1".into(),
                nodes: vec![Node::at(a.to_string())],
            })
            .collect();
        ShardMap {
            epoch: 1,
            num_shards: 64,
            zones,
            previous: None,
        }
    }

    /// What zone `i`'s replica holds for `key` (in the client's namespace).
    pub fn stored(&self, i: usize, key: &[u8]) -> Option<Vec<u8>> {
        let k = junokv::key::StoreKey::new(b"test", key, 64);
        self.engines[i].get(&k.to_bytes()).unwrap()
    }

    /// Waits until every replica stores `key`: a write is answered once a quorum holds
    /// it, and the other replicas may still be writing it.
    pub async fn stored_everywhere(&self, key: &[u8]) {
        let zones = self.engines.len();
        eventually("every replica stores the key", || {
            (0..zones).all(|z| self.stored(z, key).is_some())
        })
        .await;
    }

    /// Starts zone `i`'s background work (sweeper, eviction, recovery) through a
    /// proxy of its own, recovering (if it must) after `recovery_delay_ms`.
    pub fn start_background(&mut self, i: usize, recovery_delay_ms: u64) {
        let config = SweepConfig::default();
        let clock = Clock::default();
        let proxy =
            StorageServer::sweeping_proxy(self.map(), &config, None, clock.clone()).unwrap();
        let memory = MemoryConfig {
            recovery_delay_ms,
            ..MemoryConfig::default()
        };
        let server = self.storages[i].as_mut().expect("running");
        let me = server.addr().to_string();
        server.start_background(&me, proxy, clock, config, &memory);
    }

    /// One sweep of zone `i`'s storage server, judging death by `clock`.
    pub async fn sweep(&self, i: usize, clock: Clock) -> Swept {
        let config = SweepConfig::default();
        let proxy =
            StorageServer::sweeping_proxy(self.map(), &config, None, clock.clone()).unwrap();
        let server = self.storages[i].as_ref().expect("running");
        server.sweep_once(proxy, clock, config).await.unwrap()
    }

    pub async fn start_proxy(&mut self) {
        let config = ProxyConfig::new(self.map());
        let server = Proxy::new(config, self.clock.clone())
            .unwrap()
            .serve(
                TcpListener::bind("127.0.0.1:0").await.unwrap(),
                Acceptor::Plain,
            )
            .unwrap();
        self.proxy_addr = server.addr();
        self.proxy = Some(server);
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.proxy_addr.to_string(), "test")
            .await
            .unwrap()
    }

    /// Stops storage server `i`: its connections close and its engine is released.
    pub async fn kill(&mut self, i: usize) {
        let server = self.storages[i].take().expect("running");
        // Let go of the engine first: RocksDB's files unlock when its last user goes.
        self.engines[i] = Arc::new(MemoryEngine::default());
        server.stop().await;
    }

    /// Starts storage server `i` again, on its old address, over its old data.
    pub async fn restart(&mut self, i: usize) {
        self.try_restart(i).await.unwrap();
    }

    /// [`TestCluster::restart`], reporting why the server would not start.
    pub async fn try_restart(&mut self, i: usize) -> std::io::Result<()> {
        let listener = TcpListener::bind(self.addrs[i]).await.unwrap();
        self.engines[i] = self.stores[i].open();
        let engine = self.engines[i].clone();
        let codec = codec(self.key_file.as_ref());
        let server = StorageServer::start(listener, engine, codec, Acceptor::Plain)?;
        self.storages[i] = Some(server);
        Ok(())
    }

    /// Stops everything, releasing every engine.
    pub async fn stop(mut self) -> Vec<Store> {
        self.engines.clear();
        if let Some(p) = self.proxy.take() {
            p.stop().await;
        }
        for s in self.storages.iter_mut().filter_map(Option::take) {
            s.stop().await;
        }
        self.stores
    }
}

/// Zone 0's copies of `read` (holding "one") and `unread` ("two") are damaged, which
/// `sound` tells: a read repairs the first, a sweep the second, and the repaired
/// replica then serves (with zone 2 down, it and zone 1 answer). Stops the cluster.
pub async fn assert_read_and_sweep_repair(
    mut cluster: TestCluster,
    sound: impl Fn(&TestCluster, &[u8]) -> bool,
) {
    assert!(!sound(&cluster, b"read") && !sound(&cluster, b"unread"));
    let c = cluster.client().await;
    // A read asks two of the three replicas, one further round each time: of three
    // reads in a row, two ask the damaged one.
    for _ in 0..3 {
        assert_eq!(c.get(b"read").await.unwrap().value, b"one");
    }
    eventually("a read repairs the damaged replica", || {
        sound(&cluster, b"read")
    })
    .await;
    let swept = cluster.sweep(0, Clock::default()).await;
    assert_eq!(swept.resolved, 1, "{swept:?}");
    eventually("the sweeper repairs the damaged replica", || {
        sound(&cluster, b"unread")
    })
    .await;
    cluster.kill(2).await;
    assert_eq!(c.get(b"unread").await.unwrap().value, b"two");
    cluster.stop().await;
}

/// Each storage server reads its own keys, as separate processes would.
fn codec(key_file: Option<&PathBuf>) -> SlotCodec {
    match key_file {
        Some(path) => SlotCodec::sealed(Box::new(KeyFile { path: path.clone() })).unwrap(),
        None => SlotCodec::clear(),
    }
}

/// Waits until `cond` holds, for at most five seconds (for effects that land after
/// the request that caused them has been answered, such as purges and repairs).
pub async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    let held = within(std::time::Duration::from_secs(5), cond).await;
    assert!(held, "never happened: {what}");
}

/// Whether `cond` comes to hold within `limit` (looked at every 10 ms).
pub async fn within(limit: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    true
}

/// A client setting keys `k0`… round after round (each round's number as the value)
/// until stopped, at least two rounds: each key's last acknowledged round is what a
/// read must find at least. (An error leaves a set's outcome unknown: a later round
/// settles it.)
pub struct Writer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(Client, Vec<u32>)>,
}

impl Writer {
    pub fn start(client: Client, keys: usize) -> Self {
        use std::sync::atomic::Ordering;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut acked = vec![0u32; keys];
            let mut round = 0;
            while !stopped.load(Ordering::Relaxed) || round < 2 {
                round += 1;
                for (k, last) in acked.iter_mut().enumerate() {
                    let key = format!("k{k}");
                    let value = round.to_string();
                    if client
                        .set(key.as_bytes(), value.as_bytes(), 0)
                        .await
                        .is_ok()
                    {
                        *last = round;
                    }
                }
            }
            (client, acked)
        });
        Writer { stop, task }
    }

    /// Stops writing; then every key must read back at least its last acknowledged
    /// round.
    pub async fn stop_and_check(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (client, acked) = self.task.await.unwrap();
        for (k, last) in acked.iter().enumerate() {
            let got = client.get(format!("k{k}").as_bytes()).await.unwrap();
            let round: u32 = String::from_utf8(got.value).unwrap().parse().unwrap();
            assert!(
                round >= *last,
                "k{k}: read round {round}, acknowledged {last}"
            );
        }
    }
}

/// `proxy` serving plain-text clients on a free loopback port, and a client of it in
/// namespace `ns` (the server stops when dropped).
pub async fn serve_and_connect(proxy: &Arc<Proxy>, ns: &str) -> (ProxyServer, Client) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = proxy.serve(listener, Acceptor::Plain).unwrap();
    let client = Client::connect(&server.addr().to_string(), ns)
        .await
        .unwrap();
    (server, client)
}
