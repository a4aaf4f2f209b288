//! A three-zone cluster with one proxy and one client node, on simulated nodes.

use jepsen_like::history::{parse, to_json_line};
use jepsen_like::runner::{run, Workload};
use jepsen_like::{checker, model::Model, report};
use junokv::clock::Clock;
use junokv::cluster::{ShardMap, Zone};
use junokv::engine::MemoryEngine;
use junokv::proxy::{Proxy, ProxyConfig};
use junokv::storage::StorageServer;
use madsim::net::NetSim;
use madsim::rand::Rng;
use madsim::runtime::{Handle, Runtime};
use madsim::task::NodeId;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Injects faults until `until` has passed, then leaves the cluster to heal: storage
/// servers crash and restart (in-memory engines: nothing is lost yet), storage servers
/// are cut off from everyone, or only from the proxy.
async fn nemesis(storage: Vec<NodeId>, proxy: NodeId, until: Duration) {
    let handle = Handle::current();
    let net = NetSim::current();
    let mut rng = madsim::rand::thread_rng();
    let end = tokio::time::Instant::now() + until;
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..2000))).await;
        let target = storage[rng.gen_range(0..storage.len())];
        let length = Duration::from_millis(rng.gen_range(100..3000));
        match rng.gen_range(0..3) {
            0 => {
                handle.kill(target);
                tokio::time::sleep(length).await;
                handle.restart(target);
            }
            1 => {
                net.clog_node(target);
                tokio::time::sleep(length).await;
                net.unclog_node(target);
            }
            _ => {
                net.clog_link(proxy, target);
                net.clog_link(target, proxy);
                tokio::time::sleep(length).await;
                net.unclog_link(proxy, target);
                net.unclog_link(target, proxy);
            }
        }
    }
}

/// What one seed produced.
pub struct SeedRun {
    /// The checker's report; its first line is the verdict.
    pub report: String,
    pub operations: usize,
    /// A hash of the whole history: the same seed must give the same one.
    pub history_hash: u64,
}

/// Runs one seed, with the nemesis if `faults`; writes the history to `history_dir`.
pub fn run_seed(seed: u64, faults: bool, history_dir: Option<&str>) -> SeedRun {
    let rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
    let events = rt.block_on(async move {
        let handle = Handle::current();
        let mut zones = Vec::new();
        let mut storage_nodes = Vec::new();
        for z in 0..3u8 {
            let ip: IpAddr = [10, 0, z, 1].into();
            let addr = SocketAddr::new(ip, 7000);
            // The engine outlives restarts of the node: what was written stays.
            let engine = Arc::new(MemoryEngine::default());
            let node = handle
                .create_node()
                .name(format!("storage-{z}"))
                .ip(ip)
                .init(move || {
                    let engine = engine.clone();
                    async move {
                        let listener = TcpListener::bind(addr).await.expect("bind storage");
                        let _server =
                            StorageServer::start(listener, engine).expect("start storage");
                        std::future::pending::<()>().await;
                    }
                })
                .build();
            storage_nodes.push(node.id());
            zones.push(Zone {
                datacenter: format!("dc{z}"),
                nodes: vec![addr.to_string()],
            });
        }
        let proxy_addr = SocketAddr::new([10, 1, 0, 1].into(), 8080);
        let config = ProxyConfig::new(
            proxy_addr.to_string(),
            ShardMap {
                epoch: 1,
                num_shards: 64,
                zones,
            },
        );
        let proxy_node = handle
            .create_node()
            .name("proxy")
            .ip(proxy_addr.ip())
            .init(move || {
                let config = config.clone();
                async move {
                    let listener = TcpListener::bind(proxy_addr).await.expect("bind proxy");
                    let proxy = Proxy::new(config, Clock::default()).expect("proxy config");
                    let _server = proxy.serve(listener).expect("serve");
                    std::future::pending::<()>().await;
                }
            })
            .build();
        let client = handle
            .create_node()
            .name("client")
            .ip([10, 2, 0, 1].into())
            .build();
        let nemesis = faults.then(|| {
            tokio::spawn(nemesis(
                storage_nodes,
                proxy_node.id(),
                Duration::from_secs(14),
            ))
        });
        let history = client
            .spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let workload = Workload {
                    proxy: proxy_addr.to_string(),
                    clients: 6,
                    keys: 4,
                    duration: 20.0,
                    seed,
                    namespace: Some("sim".into()),
                };
                run(&workload).await
            })
            .await
            .expect("client task");
        if let Some(n) = nemesis {
            n.await.expect("nemesis task");
        }
        history
    });
    let events = match events {
        Ok(e) => e,
        Err(e) => {
            return SeedRun {
                report: format!("error\n{e}\n"),
                operations: 0,
                history_hash: 0,
            }
        }
    };
    let text: String = events.iter().map(|e| to_json_line(e) + "\n").collect();
    if let Some(dir) = history_dir {
        let _ = std::fs::write(format!("{dir}/seed-{seed}.jsonl"), &text);
    }
    let ops = parse(&text).expect("the workload writes well-formed histories");
    let verdict = checker::check(&ops, Model::default(), Duration::from_secs(60));
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&text, &mut hasher);
    SeedRun {
        report: report::text(&verdict, &ops),
        operations: ops.len(),
        history_hash: std::hash::Hasher::finish(&hasher),
    }
}
