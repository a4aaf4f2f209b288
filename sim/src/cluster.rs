//! One seed: build the cluster on simulated nodes, run the workload under the
//! nemesis, heal, read every key back, and check the history and the replicas.

use crate::engine::SimEngine;
use crate::nemesis::{Nemesis, ProxyNode, StorageNode, Swarm, Targets, MAX_SKEW};
use crate::topology::{Latency, Topology};
use jepsen_like::history::{parse, to_json_line, Event};
use jepsen_like::runner::{read_back, run, Workload};
use jepsen_like::{checker, model::Model, report};
use junokv::clock::Clock;
use junokv::proxy::{Proxy, ProxyConfig};
use junokv::record::Slot;
use junokv::storage::{is_record_key, StorageServer};
use madsim::rand::Rng;
use madsim::runtime::{Handle, Runtime};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Read-back passes before replicas that still differ count as diverged.
const READ_BACK_PASSES: usize = 3;

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub seed: u64,
    pub topology: Topology,
    /// Faults on at all (off: a fault-free run).
    pub faults: bool,
    /// Every fault kind, often, instead of the seed's own swarm draw.
    pub all_faults: bool,
    /// Simulated seconds of workload; the nemesis stops at 60% of it.
    pub duration: Duration,
    pub clients_per_node: u64,
    pub keys: u64,
    /// The proxies' request deadline.
    pub request_ms: u64,
}

/// What one seed produced.
pub struct Outcome {
    /// Problems found; empty when the seed passed.
    pub problems: Vec<String>,
    pub history: String,
    /// The checker's text report, and its HTML page.
    pub report: String,
    pub html: String,
    pub operations: usize,
    pub simulated: Duration,
    /// One line: the faults this seed enabled.
    pub swarm: String,
}

/// madsim's network for every link: 0.2–1 ms (inside a datacentre; crossing one adds
/// the [`Latency`] the link-delay hook applies).
pub fn net_config() -> madsim::net::Config {
    madsim::net::Config {
        packet_loss_rate: 0.0,
        send_latency: Duration::from_micros(200)..Duration::from_micros(1000),
    }
}

pub fn run_seed(plan: &Plan) -> Outcome {
    let config = madsim::Config {
        net: net_config(),
        ..Default::default()
    };
    let (seed, sim_plan) = (plan.seed, plan.clone());
    // On a thread of its own: madsim seeds std's HashMap keys from the seed, which it
    // can only do on a thread that has not made a HashMap yet.
    let run = std::thread::spawn(move || {
        Runtime::with_seed_and_config(seed, config).block_on(simulate(sim_plan))
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    // The checker runs threads: outside the simulation.
    let mut events = run.events;
    let mut problems = run.problems;
    events.sort_by_key(|e| e.time);
    let history: String = events.iter().map(|e| to_json_line(e) + "\n").collect();
    let ops = parse(&history).expect("the workload writes well-formed histories");
    // Record expiry is judged by proxies' clocks (skewed by up to MAX_SKEW each) in
    // whole seconds: the checker allows for both.
    let model = Model {
        clock_uncertainty_ns: (Duration::from_secs(1) + 2 * MAX_SKEW).as_nanos() as u64
            + 100_000_000,
        ..Model::default()
    };
    let verdict = checker::check(&ops, model, Duration::from_secs(60));
    match &verdict {
        checker::Verdict::Valid => {}
        checker::Verdict::Invalid(_) => problems.push("history is not linearizable".into()),
        checker::Verdict::Unknown { .. } => problems.push("checker gave up (unknown)".into()),
    }
    Outcome {
        problems,
        report: report::text(&verdict, &ops),
        html: report::html(&verdict, &ops),
        history,
        operations: ops.len(),
        simulated: run.simulated,
        swarm: if plan.faults {
            run.swarm.describe()
        } else {
            "no faults".into()
        },
    }
}

/// What the simulation itself produced, before checking.
struct Run {
    events: Vec<Event>,
    problems: Vec<String>,
    simulated: Duration,
    swarm: Swarm,
}

async fn simulate(plan: Plan) -> Run {
    let handle = Handle::current();
    let topo = &plan.topology;
    let mut rng = madsim::rand::thread_rng();
    let latency = Latency::draw(topo.datacenters(), &mut rng);
    let dc_of = topo.dc_of();
    junokv::fault::set_link_delay(Arc::new(move |a, b| match (dc_of.get(&a), dc_of.get(&b)) {
        (Some(&x), Some(&y)) => latency.extra(x, y, &mut madsim::rand::thread_rng()),
        _ => Duration::ZERO,
    }));

    let map = topo.shard_map();
    let mut storage = Vec::new();
    for spot in topo.storage() {
        let engine = Arc::new(SimEngine::default());
        let disk = engine.clone();
        let node = handle
            .create_node()
            .name(format!("storage-z{}-{}", spot.zone, spot.addr.ip()))
            .ip(spot.addr.ip())
            .init(move || {
                let engine = disk.clone();
                async move {
                    engine.crash(); // a (re)start after a crash finds only synced data
                    serve_storage(spot.addr, engine).await;
                }
            })
            .build();
        storage.push(StorageNode {
            id: node.id(),
            zone: spot.zone,
            dc: spot.dc,
            addr: spot.addr,
            engine,
        });
    }
    let mut proxies = Vec::new();
    for dc in 0..topo.datacenters() {
        for addr in topo.proxies(dc) {
            let clock = Clock::default();
            let mut config = ProxyConfig::new(addr.to_string(), map.clone());
            // Purge within the run, so that purging is tested: still longer than a
            // request lives (the deadline) plus twice the clock skew.
            config.timeouts.purge_grace_secs = 4;
            config.timeouts.request_ms = plan.request_ms;
            let node_clock = clock.clone();
            let node = handle
                .create_node()
                .name(format!("proxy-dc{dc}-{}", addr.ip()))
                .ip(addr.ip())
                .init(move || serve_proxy(addr, config.clone(), node_clock.clone()))
                .build();
            proxies.push(ProxyNode {
                id: node.id(),
                dc,
                clock,
            });
        }
    }
    let workload = Workload {
        proxy: Vec::new(),
        clients: plan.clients_per_node,
        keys: plan.keys,
        duration: plan.duration.as_secs_f64(),
        seed: plan.seed,
        namespace: Some("sim".into()),
        first_process: 0,
    };
    let origin = std::time::Instant::now();
    let mut clients = Vec::new();
    let mut runs = Vec::new();
    for dc in 0..topo.datacenters() {
        for ip in topo.clients(dc) {
            let node = handle
                .create_node()
                .name(format!("client-dc{dc}-{ip}"))
                .ip(ip)
                .build();
            let mut w = workload.clone();
            w.proxy = topo.proxies(dc).iter().map(|a| a.to_string()).collect();
            w.first_process = (clients.len() as u64) << 32;
            clients.push((node.id(), dc));
            runs.push(node.spawn(async move { run(&w, origin).await }));
        }
    }
    let swarm = if plan.all_faults {
        Swarm::everything()
    } else {
        Swarm::draw(&mut rng)
    };
    let zones = map.zones.len();
    let targets = Targets {
        storage,
        proxies,
        clients: clients.clone(),
        corruptible_zone: rng.gen_range(0..zones),
        zones,
    };
    let nemesis = Nemesis::new(targets, swarm.clone());
    let nemesis_task = plan
        .faults
        .then(|| tokio::spawn(nemesis.clone().run(plan.duration.mul_f64(0.6))));

    let mut problems = Vec::new();
    let mut events: Vec<Event> = Vec::new();
    for r in runs {
        match r.await {
            Ok(Ok(e)) => events.extend(e),
            Ok(Err(e)) => problems.push(format!("workload: {e}")),
            Err(e) => problems.push(format!("workload task: {e}")),
        }
    }
    if let Some(t) = nemesis_task {
        t.await.expect("nemesis");
    }
    // Every fault has healed (and the workload's last seconds ran on a healed
    // cluster): every key must be readable, and reading it repairs its replicas. A
    // read that raced with others' last retries may leave a repair half done: a few
    // passes, until the replicas agree.
    let reader = handle
        .create_node()
        .name("read-back")
        .ip([10, 4, 0, 1].into())
        .build();
    let mut diverged = Vec::new();
    for pass in 0..READ_BACK_PASSES {
        let mut back = workload.clone();
        back.proxy = vec![topo.proxies(pass % topo.datacenters())[0].to_string()];
        let first_reader = ((clients.len() + pass) as u64) << 32;
        match reader
            .spawn(async move { read_back(&back, first_reader, origin).await })
            .await
        {
            Ok(Ok(e)) => events.extend(e),
            Ok(Err(e)) => problems.push(format!("read back: {e}")),
            Err(e) => problems.push(format!("read back task: {e}")),
        }
        // Let repairs land, then compare every key's replicas.
        tokio::time::sleep(Duration::from_secs(1)).await;
        diverged = divergent_replicas(&nemesis, &map);
        if diverged.is_empty() {
            break;
        }
    }
    problems.extend(diverged);
    let simulated = std::time::Instant::now() - origin;
    Run {
        events,
        problems,
        simulated,
        swarm,
    }
}

async fn serve_storage(addr: SocketAddr, engine: Arc<SimEngine>) {
    match TcpListener::bind(addr).await {
        Ok(listener) => match StorageServer::start(listener, engine) {
            Ok(_server) => std::future::pending::<()>().await,
            Err(e) => tracing::error!(error = %e, "storage server did not start"),
        },
        Err(e) => tracing::error!(error = %e, "storage bind"),
    }
}

async fn serve_proxy(addr: SocketAddr, config: ProxyConfig, clock: Clock) {
    let proxy = Proxy::new(config, clock).expect("the simulator's shard map is valid");
    match TcpListener::bind(addr).await {
        Ok(listener) => match proxy.serve(listener) {
            Ok(_server) => std::future::pending::<()>().await,
            Err(e) => tracing::error!(error = %e, "proxy did not start"),
        },
        Err(e) => tracing::error!(error = %e, "proxy bind"),
    }
}

/// Keys whose sound replicas hold different accepted records. Replicas whose record
/// was corrupted are left out (they refuse the key until repaired by an operator).
fn divergent_replicas(nemesis: &Nemesis, map: &junokv::cluster::ShardMap) -> Vec<String> {
    let t = nemesis.targets();
    let by_addr: BTreeMap<String, usize> = t
        .storage
        .iter()
        .enumerate()
        .map(|(i, s)| (s.addr.to_string(), i))
        .collect();
    let disks: Vec<BTreeMap<Vec<u8>, Vec<u8>>> =
        t.storage.iter().map(|s| s.engine.durable()).collect();
    let mut keys: Vec<&Vec<u8>> = disks
        .iter()
        .flat_map(|d| d.keys())
        .filter(|k| is_record_key(k))
        .collect();
    keys.sort();
    keys.dedup();
    let mut problems = Vec::new();
    for key in keys {
        let shard = u16::from_be_bytes([key[0], key[1]]);
        let mut states = Vec::new();
        for addr in map.replicas(shard) {
            let disk = &disks[by_addr[addr]];
            match disk.get(key).map(|b| Slot::decode(b)) {
                None => states.push(None),
                Some(Ok(slot)) => {
                    states.push(slot.accepted.map(|(b, r)| (b, r.version, r.tombstone)))
                }
                Some(Err(_)) => {} // corrupted
            }
        }
        if states.windows(2).any(|w| w[0] != w[1]) {
            problems.push(format!(
                "replicas of {:?} diverge: {states:?}",
                String::from_utf8_lossy(key)
            ));
        }
    }
    problems
}
