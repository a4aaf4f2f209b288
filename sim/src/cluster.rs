//! One seed: build the cluster on simulated nodes, run the workload under the
//! nemesis, heal, read every key back, and check the history and the replicas.

use crate::engine::SimEngine;
use crate::nemesis::{Nemesis, ProxyNode, StorageNode, Swarm, Targets};
use crate::recovery_oracle::RecoveryOracle;
use crate::topology::{Latency, Topology};
use jepsen_like::history::{parse, to_json_line, Event};
use jepsen_like::runner::{read_back, run, Workload};
use jepsen_like::{checker, model::Model, report};
use junokv::at_rest::{SlotCodec, StaticKeys, KEY_LEN};
use junokv::clock::Clock;
use junokv::key::StoreKey;
use junokv::proxy::{Proxy, ProxyConfig};
use junokv::record::Slot;
use junokv::storage::{is_record_key, MemoryConfig, StorageServer, SweepConfig};
use junokv::transport::Acceptor;
use madsim::rand::Rng;
use madsim::runtime::{Handle, Runtime};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Read-back passes before replicas that still differ count as diverged.
const READ_BACK_PASSES: usize = 3;

/// How long dead records are kept: short, so that purging happens within a run, but
/// longer than a request lives (the deadline) plus twice the clock skew.
const PURGE_GRACE_SECS: u32 = 4;

/// The storage servers' sweeper: a pass every second.
fn sweep_config() -> SweepConfig {
    SweepConfig {
        interval_ms: 1000,
        purge_grace_secs: PURGE_GRACE_SECS,
        concurrency: 8,
    }
}

/// Odd seeds seal every slot (encryption at rest), even ones store them in clear: both
/// ways of storing run under every fault, and a tampered or torn sealed slot must be
/// found and repaired like a damaged clear one.
fn codec(seed: u64) -> SlotCodec {
    match seed % 2 {
        1 => {
            let key = StaticKeys([(1, [0x5e; KEY_LEN])].into());
            SlotCodec::sealed(Box::new(key)).expect("a fixed key loads")
        }
        _ => SlotCodec::clear(),
    }
}

/// The least workload time after the heal has settled, over which availability is
/// judged. A share measured over a few seconds swings with one burst of contention on
/// a hot key (about 250 operations in 12 s): over 12 s, fresh seeds went over a 6%
/// bound about once in 1,300 (up to 7.8%, contention on the hottest keys); over 24 s,
/// 2,000 seeds leave at most 4.9% (`liveness::MAX_UNAVAILABLE_SHARE`).
pub const LIVENESS_WINDOW: Duration = Duration::from_secs(24);

/// What one seed runs.
#[derive(Clone, Debug)]
pub struct Plan {
    pub seed: u64,
    pub topology: Topology,
    /// Faults on at all (off: a fault-free run).
    pub faults: bool,
    /// Every fault kind, often, instead of the seed's own swarm draw.
    pub all_faults: bool,
    /// Simulated seconds of workload; the nemesis stops at 60% of it, and the
    /// workload runs on for at least [`LIVENESS_WINDOW`] after the heal has settled.
    pub duration: Duration,
    pub clients_per_node: u64,
    pub keys: u64,
    /// The proxies' request deadline.
    pub request_ms: u64,
    /// One-round-trip writes on.
    pub leases: bool,
    /// The share of operations after the heal allowed to end without an answer.
    pub max_unavailable: f64,
    /// Storage nodes keep records in memory (`engine = "memory"`): a crash loses them.
    pub memory: bool,
    /// The map changes while the faults go on (see `mover.rs`).
    pub moves: bool,
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
    // Record expiry is judged by proxies' clocks in whole seconds, rounded down: the
    // checker allows for the rounding and for the skew the nemesis actually applied
    // (a record written by one proxy and read by another: twice it), and no more.
    let model = Model {
        clock_uncertainty_ns: 2 * run.max_skew.as_nanos() as u64,
        expiry_rounding_ns: 1_000_000_000,
        ..Model::default()
    };
    problems.extend(crate::liveness::check(&ops, &run.availability));
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
    /// The largest clock skew the nemesis applied.
    max_skew: Duration,
    availability: crate::liveness::Expect,
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
    // The map source every node follows (etcd's part in a real cluster).
    let store = Arc::new(tokio::sync::watch::Sender::new(map.clone()));
    let codec = codec(plan.seed);
    let mut storage = Vec::new();
    for spot in topo.storage() {
        let engine = Arc::new(match plan.memory {
            true => SimEngine::volatile(),
            false => SimEngine::default(),
        });
        let disk = engine.clone();
        let node_store = store.clone();
        let map_lag = draw_map_lag(&mut rng, plan.moves);
        let node_codec = codec.clone();
        // Longer than any proxy request lasts (see `junokv::storage`'s recovery).
        let memory = MemoryConfig {
            recovery_delay_ms: (2 * plan.request_ms).max(5000),
            ..MemoryConfig::default()
        };
        let node = handle
            .create_node()
            .name(format!("storage-z{}-{}", spot.zone, spot.addr.ip()))
            .ip(spot.addr.ip())
            .init(move || {
                let (engine, store, codec) = (disk.clone(), node_store.clone(), node_codec.clone());
                let memory = memory.clone();
                async move {
                    engine.crash(); // a (re)start after a crash finds only synced data
                    let maps = lagging(&store, map_lag);
                    serve_storage(spot.addr, engine, codec, maps, memory).await;
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
            let mut config = ProxyConfig::new(map.clone());
            config.timeouts.purge_grace_secs = PURGE_GRACE_SECS;
            config.timeouts.request_ms = plan.request_ms;
            if !plan.leases {
                config.leases.memory_bytes = 0;
            }
            let node_clock = clock.clone();
            let node_store = store.clone();
            let map_lag = draw_map_lag(&mut rng, plan.moves);
            let node = handle
                .create_node()
                .name(format!("proxy-dc{dc}-{}", addr.ip()))
                .ip(addr.ip())
                .init(move || {
                    let maps = lagging(&node_store, map_lag);
                    serve_proxy(addr, config.clone(), node_clock.clone(), maps)
                })
                .build();
            proxies.push(ProxyNode {
                id: node.id(),
                dc,
                clock,
            });
        }
    }
    // Faults for 60% of the run; after them (and once requests caught in them have
    // run out) operations must succeed, over a window long enough to judge by.
    let fault_period = plan.duration.mul_f64(0.6);
    let settle = 2 * Duration::from_millis(plan.request_ms);
    let duration = plan.duration.max(fault_period + settle + LIVENESS_WINDOW);
    let workload = Workload {
        proxy: Vec::new(),
        clients: plan.clients_per_node,
        keys: plan.keys,
        duration: duration.as_secs_f64(),
        seed: plan.seed,
        namespace: Some("sim".into()),
        first_process: 0,
        tls_ca: None,
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
        Swarm::everything(plan.memory)
    } else {
        Swarm::draw(&mut rng, plan.memory)
    };
    let zones = map.zones.len();
    let targets = Targets {
        storage,
        proxies,
        clients: clients.clone(),
        corruptible_zone: rng.gen_range(0..zones),
        zones,
        memory: plan.memory,
    };
    // The durability oracle: every storage server's replies are checked against what
    // its simulated disk durably holds (`junokv::storage`'s durability check).
    let disks: BTreeMap<String, Arc<SimEngine>> = (targets.storage.iter())
        .map(|s| (s.addr.to_string(), s.engine.clone()))
        .collect();
    let recovery = RecoveryOracle::new(disks.clone(), codec.clone(), store.subscribe());
    let nemesis = Nemesis::new(targets, swarm.clone(), recovery.clone());
    // The purge oracle: a replica removing a record while another replica of the key
    // holds an older one (which would then win a quorum it meets) fails the seed.
    // (Not while the map changes: a joining node holds what the catch-up has not
    // settled yet, and servers on the new map refuse purges from the old one.)
    let (holders, maps, decoder) = (disks.clone(), store.subscribe(), codec.clone());
    let purges = recovery.clone();
    junokv::fault::set_purge_hook(Arc::new(move |server, key, ballot| {
        purges.purged(server, key);
        let map = maps.borrow().clone();
        let shard = StoreKey::shard_in(key).filter(|_| map.previous.is_none())?;
        let others = map.replicas(shard).into_iter().filter(|a| *a != server);
        others.into_iter().find_map(|addr| {
            let bytes = holders.get(addr)?.durable_get(key)?;
            let (older, _) = (decoder.decode(key, &bytes).ok()?.slot.accepted)
                .filter(|(b, _)| *b < ballot)?;
            Some(format!(
                "{server} purged the record of {:?} at {ballot:?} while {addr} holds an older one at {older:?}",
                String::from_utf8_lossy(key)
            ))
        })
    }));
    junokv::fault::set_durable_hook(Arc::new(move |server, key| {
        disks.get(server).map(|disk| disk.durable_get(key))
    }));
    if plan.faults {
        let n = nemesis.clone();
        junokv::fault::set_crash_hook(Arc::new(move |server, point| n.crash_point(server, point)));
        let n = nemesis.clone();
        junokv::fault::set_recovered_hook(Arc::new(move |server, holds| {
            for problem in recovery.recovered(server, holds) {
                junokv::fault::invariant_violated(format_args!("{problem}"));
            }
            n.recovered(server)
        }));
    }
    let nemesis_task = plan
        .faults
        .then(|| tokio::spawn(nemesis.clone().run(fault_period)));
    let moves = Arc::new(crate::mover::Moves::default());
    let driver_crashes = plan.moves.then(|| {
        let (store, all, moves) = (store.clone(), map.zones.clone(), moves.clone());
        let until = tokio::time::Instant::now() + fault_period;
        let driver = handle
            .create_node()
            .name("map-driver")
            .ip([10, 5, 0, 1].into())
            .init(move || {
                let (store, all, moves) = (store.clone(), all.clone(), moves.clone());
                async move {
                    let mut config = ProxyConfig::new(store.borrow().clone());
                    config.timeouts.purge_grace_secs = PURGE_GRACE_SECS;
                    let proxy = Proxy::new(config, Clock::default()).expect("a valid map");
                    proxy.follow(store.subscribe());
                    crate::mover::run(store, proxy, all, until, moves).await
                }
            })
            .build();
        // The driver crashes now and then, mid-change or not, and comes back.
        let (id, handle) = (driver.id(), handle.clone());
        let faults = plan.faults;
        tokio::spawn(async move {
            let mut rng = madsim::rand::thread_rng();
            while faults && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..8000))).await;
                handle.kill(id);
                tracing::info!("map driver crashed");
                tokio::time::sleep(Duration::from_millis(rng.gen_range(100..2000))).await;
                handle.restart(id);
            }
        })
    });

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
    if let Some(t) = driver_crashes {
        t.await.expect("driver crashes");
        // The change under way when the faults stopped finishes on the healed cluster.
        let mut maps = store.subscribe();
        let done = async move { maps.wait_for(|m| m.previous.is_none()).await.is_ok() };
        match tokio::time::timeout(Duration::from_secs(60), done).await {
            Ok(_) => tracing::info!(?moves, "map changes made"),
            Err(_) => problems.push("a change of the map did not finish after the heal".into()),
        }
    }
    let map = store.borrow().clone();
    if map.previous.is_some() {
        problems.push(format!("the map (epoch {}) is left mid-change", map.epoch));
    }
    // Every fault has healed (and the workload's last seconds ran on a healed
    // cluster): every key must be readable, and its replicas must come to agree: a
    // read repairs the replicas it asks (a quorum), the sweepers' anti-entropy the
    // rest. A read that raced with others' last retries may leave a repair half done:
    // a few passes, a second (a sweep) apart, until the replicas agree.
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
        diverged = divergent_replicas(&nemesis, &map, &codec);
        if diverged.is_empty() {
            break;
        }
    }
    problems.extend(diverged);
    problems.extend(foreign_records(&nemesis, &map));
    // Wait out the grace period and a few sweeps: nothing that should be gone may
    // remain on any replica, and nothing damaged may be left unrepaired.
    // (Sweepers of different replicas race on a key, so a slot may come and go; only
    // one that stays through three more sweeps counts.)
    tokio::time::sleep(Duration::from_secs(u64::from(PURGE_GRACE_SECS) + 3)).await;
    let first = unswept_records(&nemesis, &codec);
    tokio::time::sleep(Duration::from_secs(3)).await;
    problems.extend(
        unswept_records(&nemesis, &codec)
            .into_iter()
            .filter(|p| first.contains(p)),
    );
    // A restarted in-memory node must have recovered by now (tens of seconds after
    // the heal): one that never does counts every key it lacks as damaged for ever.
    problems.extend(
        (nemesis.unrecovered().iter())
            .map(|addr| format!("in-memory storage node {addr} never recovered its records")),
    );
    // The first few violations (one broken rule is usually broken many times over).
    let violations = junokv::fault::take_violations();
    problems
        .extend((violations.iter().take(3)).map(|v| format!("protocol invariant violated: {v}")));
    if violations.len() > 3 {
        problems.push(format!("... and {} more violations", violations.len() - 3));
    }
    let simulated = std::time::Instant::now() - origin;
    let availability = crate::liveness::Expect {
        from_ns: (fault_period + settle).as_nanos() as u64,
        deadline: Duration::from_millis(plan.request_ms),
        faults: plan.faults,
        max_unavailable: plan.max_unavailable,
    };
    Run {
        events,
        problems,
        simulated,
        swarm,
        max_skew: nemesis.max_skew(),
        availability,
    }
}

/// How far behind the map source a node may learn of a new map: each node's own
/// bound, drawn per seed (a real node hears of a change through a watch on etcd that
/// a slow link or a partition delays; a node behind must be refused, not obeyed).
/// (Without changes of the map, nothing is drawn: the other runs' schedules stay.)
fn draw_map_lag(rng: &mut impl Rng, moves: bool) -> Duration {
    match moves {
        true => Duration::from_millis(rng.gen_range(0..3000)),
        false => Duration::ZERO,
    }
}

/// The maps of `store` as a node `lag` behind it sees them: each change arrives after
/// a random delay up to `lag` (several changes meanwhile arrive as the newest).
fn lagging(
    store: &tokio::sync::watch::Sender<junokv::cluster::ShardMap>,
    lag: Duration,
) -> tokio::sync::watch::Receiver<junokv::cluster::ShardMap> {
    let mut source = store.subscribe();
    let (tx, rx) = tokio::sync::watch::channel(source.borrow_and_update().clone());
    tokio::spawn(async move {
        while source.changed().await.is_ok() {
            let micros = madsim::rand::thread_rng().gen_range(0..=lag.as_micros() as u64);
            tokio::time::sleep(Duration::from_micros(micros)).await;
            if tx.send(source.borrow_and_update().clone()).is_err() {
                return;
            }
        }
    });
    rx
}

async fn serve_storage(
    addr: SocketAddr,
    engine: Arc<SimEngine>,
    codec: SlotCodec,
    maps: tokio::sync::watch::Receiver<junokv::cluster::ShardMap>,
    memory: MemoryConfig,
) {
    match TcpListener::bind(addr).await {
        Ok(listener) => match StorageServer::start(listener, engine, codec, Acceptor::Plain) {
            Ok(mut server) => {
                let clock = Clock::default();
                let map = maps.borrow().clone();
                match StorageServer::sweeping_proxy(map, &sweep_config(), None, clock.clone()) {
                    Ok(proxy) => {
                        let me = server.addr().to_string();
                        server.follow(maps.clone(), &me);
                        proxy.follow(maps);
                        server.start_background(&me, proxy, clock, sweep_config(), &memory)
                    }
                    Err(e) => tracing::error!(error = %e, "sweeper did not start"),
                }
                std::future::pending::<()>().await
            }
            Err(e) => tracing::error!(error = %e, "storage server did not start"),
        },
        Err(e) => tracing::error!(error = %e, "storage bind"),
    }
}

/// Slots the sweeper should have removed or repaired by now: records dead for longer
/// than the grace period plus two sweeps, slots holding only a promise, damaged slots.
fn unswept_records(nemesis: &Nemesis, codec: &SlotCodec) -> Vec<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as u32;
    let mut problems = Vec::new();
    for s in &nemesis.targets().storage {
        for (key, bytes) in s.engine.durable().iter().filter(|(k, _)| is_record_key(k)) {
            let slot = codec.decode(key, bytes).map(|d| d.slot);
            let what = match &slot {
                Err(_) => "a damaged slot",
                Ok(Slot { accepted: None, .. }) => "a slot holding only a promise",
                Ok(Slot {
                    accepted: Some((_, r)),
                    ..
                }) if r.long_dead(now, PURGE_GRACE_SECS + 2) => "a long-dead record",
                Ok(_) => continue,
            };
            let held = slot.map(|s| {
                (
                    s.promised,
                    s.accepted.map(|(b, r)| (b, r.version, r.tombstone)),
                )
            });
            problems.push(format!(
                "{} still holds {what} for {:?} after the sweeps: {held:?}",
                s.addr,
                String::from_utf8_lossy(key),
            ));
        }
    }
    problems
}

async fn serve_proxy(
    addr: SocketAddr,
    config: ProxyConfig,
    clock: Clock,
    maps: tokio::sync::watch::Receiver<junokv::cluster::ShardMap>,
) {
    let proxy = Proxy::new(config, clock).expect("the simulator's shard map is valid");
    proxy.follow(maps);
    match TcpListener::bind(addr).await {
        Ok(listener) => match proxy.serve(listener, Acceptor::Plain) {
            Ok(_server) => std::future::pending::<()>().await,
            Err(e) => tracing::error!(error = %e, "proxy did not start"),
        },
        Err(e) => tracing::error!(error = %e, "proxy bind"),
    }
}

/// Slots a storage node holds of shards the final map does not place on it: a node
/// drops a shard as soon as it serves a map without it there.
fn foreign_records(nemesis: &Nemesis, map: &junokv::cluster::ShardMap) -> Vec<String> {
    let mut problems = Vec::new();
    for s in &nemesis.targets().storage {
        let me = s.addr.to_string();
        let disk = s.engine.durable();
        let foreign = (disk.keys().filter(|k| is_record_key(k)))
            .filter_map(|k| StoreKey::shard_in(k))
            .filter(|shard| !map.placement(*shard).nodes.iter().any(|n| n.addr == me))
            .count();
        if foreign > 0 {
            problems.push(format!(
                "{me} holds {foreign} slots of shards the final map places elsewhere"
            ));
        }
    }
    problems
}

/// Keys whose replicas hold different accepted records (a damaged replica differs
/// from every sound one: read repair must have fixed it).
fn divergent_replicas(
    nemesis: &Nemesis,
    map: &junokv::cluster::ShardMap,
    codec: &SlotCodec,
) -> Vec<String> {
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
        let Some(shard) = StoreKey::shard_in(key) else {
            continue;
        };
        let mut states = Vec::new();
        for addr in map.replicas(shard) {
            let disk = &disks[by_addr[addr]];
            states.push(
                match disk.get(key).map(|b| codec.decode(key, b).map(|d| d.slot)) {
                    // (A slot holding only a promise holds no record either.)
                    None | Some(Ok(Slot { accepted: None, .. })) => "none".to_string(),
                    // The record's originator too: two records under one ballot differ.
                    Some(Ok(slot)) => format!(
                        "{:?}",
                        slot.accepted.map(|(b, r)| (
                            b,
                            r.version,
                            r.tombstone,
                            u32::from_be_bytes(r.originator[..4].try_into().unwrap())
                        ))
                    ),
                    Some(Err(_)) => "damaged".to_string(),
                },
            );
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
