//! The nemesis: faults injected into a running simulated cluster. Every kind has its
//! own switch; each seed enables a random subset with random rates (swarm testing), so
//! that some seeds hammer one weakness and others mix many.
//!
//! Faults that hold a resource (a link cut, a crashed or paused node) are reference
//! counted, so that overlapping faults compose and healing one does not heal another.
//! [`Nemesis::heal`] undoes everything at the end of the fault period.

use crate::engine::SimEngine;
use crate::recovery_oracle::RecoveryOracle;
use junokv::clock::Clock;
use junokv::fault::CrashPoint;
use madsim::net::NetSim;
use madsim::rand::Rng;
use madsim::runtime::Handle;
use madsim::task::NodeId;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The kinds of fault. To add one: a variant here, its name in [`Kind::name`], its
/// injection in [`Nemesis::inject`] (returning how to heal it), and a line in the
/// README's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One node cut off from every other.
    PartitionNode,
    /// Every storage node of one zone cut off.
    PartitionZone,
    /// A whole datacentre (storage, proxies, clients) cut off from the others.
    PartitionDatacenter,
    /// One node can send but not receive, or receive but not send.
    PartitionAsymmetric,
    /// Each proxy reaches a different majority of zones.
    MajoritiesRing,
    /// Packets lost everywhere (TCP retransmits: long, uneven delays).
    PacketLoss,
    /// Every link slow for a while.
    DelayBurst,
    /// A storage server crashes (losing unsynced writes) and restarts later.
    CrashStorage,
    /// A proxy crashes and restarts later.
    CrashProxy,
    /// A node stops running (a long GC pause, a stopped VM) and resumes later.
    Pause,
    /// A proxy's clock is set off by up to the skew bound, or jumps within it.
    ClockSkew,
    /// A storage node's disk fails reads now and then, or fails every write (the
    /// server stops serving until it is restarted).
    DiskErrors,
    /// A stored record on one zone's nodes is damaged (detected by its checksum).
    Corruption,
    /// Every storage node of one zone crashes at once (losing unsynced writes).
    CrashZone,
    /// Every storage node of one datacentre crashes at once.
    CrashDatacenter,
    /// Every storage node crashes at once: a power loss.
    PowerLoss,
    /// Up to a quorum of storage nodes crash at a crash point inside group commit:
    /// while a batch is being synced (its replies computed, none sent), or just after.
    CrashMidCommit,
}

impl Kind {
    pub const ALL: [Kind; 17] = [
        Kind::PartitionNode,
        Kind::PartitionZone,
        Kind::PartitionDatacenter,
        Kind::PartitionAsymmetric,
        Kind::MajoritiesRing,
        Kind::PacketLoss,
        Kind::DelayBurst,
        Kind::CrashStorage,
        Kind::CrashProxy,
        Kind::Pause,
        Kind::ClockSkew,
        Kind::DiskErrors,
        Kind::Corruption,
        Kind::CrashZone,
        Kind::CrashDatacenter,
        Kind::PowerLoss,
        Kind::CrashMidCommit,
    ];

    /// Whether the kind runs against in-memory storage nodes. Not those that take down
    /// nodes of several zones at once (their records would be lost: what a cache
    /// cluster does not survive), nor disk faults, nor corruption (a corrupted slot on
    /// one zone and a forgotten one on another leave a 3-zone key without a quorum
    /// that knows it, until an operator restarts a node).
    fn in_memory(self) -> bool {
        !matches!(
            self,
            Kind::CrashDatacenter | Kind::PowerLoss | Kind::DiskErrors | Kind::Corruption
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::PartitionNode => "partition-node",
            Kind::PartitionZone => "partition-zone",
            Kind::PartitionDatacenter => "partition-dc",
            Kind::PartitionAsymmetric => "partition-asymmetric",
            Kind::MajoritiesRing => "majorities-ring",
            Kind::PacketLoss => "packet-loss",
            Kind::DelayBurst => "delay-burst",
            Kind::CrashStorage => "crash-storage",
            Kind::CrashProxy => "crash-proxy",
            Kind::Pause => "pause",
            Kind::ClockSkew => "clock-skew",
            Kind::DiskErrors => "disk-errors",
            Kind::Corruption => "corruption",
            Kind::CrashZone => "crash-zone",
            Kind::CrashDatacenter => "crash-dc",
            Kind::PowerLoss => "power-loss",
            Kind::CrashMidCommit => "crash-mid-commit",
        }
    }
}

/// The most a proxy's clock is set off from true time. The expiry fence and the
/// checker's clock uncertainty are sized for it.
pub const MAX_SKEW: Duration = Duration::from_millis(450);

/// The faults a seed enables and how often it injects them.
#[derive(Clone, Debug)]
pub struct Swarm {
    pub kinds: Vec<Kind>,
    /// Mean pause between faults, per concurrent nemesis loop.
    pub mean_gap: Duration,
    /// Longest a fault lasts.
    pub max_length: Duration,
    /// Concurrent nemesis loops (overlapping faults).
    pub loops: usize,
}

impl Swarm {
    /// Each kind on with probability 1/2 (at least one), rates drawn too; only the
    /// kinds that run against in-memory nodes if `memory`.
    pub fn draw(rng: &mut impl Rng, memory: bool) -> Self {
        let mut kinds: Vec<Kind> = Kind::ALL
            .into_iter()
            .filter(|_| rng.gen_bool(0.5))
            .filter(|k| !memory || k.in_memory())
            .collect();
        if kinds.is_empty() {
            let possible = Self::everything(memory).kinds;
            kinds.push(possible[rng.gen_range(0..possible.len())]);
        }
        Swarm {
            kinds,
            mean_gap: Duration::from_millis(rng.gen_range(100..1500)),
            max_length: Duration::from_millis(rng.gen_range(500..4000)),
            loops: rng.gen_range(1..=3),
        }
    }

    /// Every kind (that runs against in-memory nodes if `memory`), often: what the
    /// bug-catching runs use.
    pub fn everything(memory: bool) -> Self {
        Swarm {
            kinds: (Kind::ALL.into_iter())
                .filter(|k| !memory || k.in_memory())
                .collect(),
            mean_gap: Duration::from_millis(300),
            max_length: Duration::from_millis(2500),
            loops: 2,
        }
    }

    pub fn describe(&self) -> String {
        let kinds: Vec<&str> = self.kinds.iter().map(|k| k.name()).collect();
        format!(
            "{} (gap ~{:?}, up to {:?}, {} at once)",
            kinds.join(","),
            self.mean_gap,
            self.max_length,
            self.loops
        )
    }
}

/// A storage node as the nemesis sees it.
pub struct StorageNode {
    pub id: NodeId,
    pub zone: usize,
    pub dc: usize,
    pub addr: std::net::SocketAddr,
    pub engine: Arc<SimEngine>,
}

/// A proxy as the nemesis sees it.
pub struct ProxyNode {
    pub id: NodeId,
    pub dc: usize,
    pub clock: Clock,
}

/// Everything the nemesis can touch.
pub struct Targets {
    pub storage: Vec<StorageNode>,
    pub proxies: Vec<ProxyNode>,
    /// Client nodes, with their datacentre.
    pub clients: Vec<(NodeId, usize)>,
    /// The only zone whose records may be corrupted: a minority, so every key keeps a
    /// quorum of sound replicas.
    pub corruptible_zone: usize,
    pub zones: usize,
    /// Storage nodes lose their records when they crash (`--memory`).
    pub memory: bool,
}

/// How to undo one injected fault.
enum Heal {
    Links(Vec<(NodeId, NodeId)>),
    /// Nodes taken down together, restarted together.
    Restart(Vec<NodeId>),
    /// Crash points disarmed; the nodes that crashed at one restart.
    Disarm(Vec<NodeId>),
    Resume(NodeId),
    NetConfig,
    Clock(usize),
    Disk(usize),
    /// A corruption storm, stopped by clearing its flag.
    Storm(Arc<std::sync::atomic::AtomicBool>),
    Nothing,
}

#[derive(Default)]
struct Held {
    links: BTreeMap<(NodeId, NodeId), u32>,
    down: BTreeMap<NodeId, u32>,
    paused: BTreeMap<NodeId, u32>,
    /// Storage nodes that crash at their next crash point of this kind.
    armed: BTreeMap<NodeId, CrashPoint>,
    /// Nodes that crashed at a crash point and are still down for it.
    crashed_at_point: Vec<NodeId>,
    /// In-memory storage nodes that crashed and have not yet recovered their records
    /// (down, or up and recovering).
    amnesic: std::collections::BTreeSet<NodeId>,
}

/// The fault injector of one run.
pub struct Nemesis {
    targets: Targets,
    swarm: Swarm,
    held: Mutex<Held>,
    /// The largest clock offset set on any proxy, in ns: what the checker must allow.
    max_skew_ns: AtomicU64,
    /// Told of every in-memory storage node's crash.
    oracle: Arc<RecoveryOracle>,
}

impl Nemesis {
    pub fn new(targets: Targets, swarm: Swarm, oracle: Arc<RecoveryOracle>) -> Arc<Self> {
        Arc::new(Nemesis {
            targets,
            swarm,
            held: Mutex::default(),
            max_skew_ns: AtomicU64::new(0),
            oracle,
        })
    }

    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// The largest clock offset any proxy had during the run (zero without skew).
    pub fn max_skew(&self) -> Duration {
        Duration::from_nanos(self.max_skew_ns.load(Ordering::Relaxed))
    }

    /// The simulator's crash hook (see `junokv::fault::crash_point`): crashes an armed
    /// storage node when it reaches the point it is armed for.
    pub fn crash_point(&self, server: &str, point: CrashPoint) -> bool {
        if self.held.lock().unwrap().armed.is_empty() {
            return false; // (the common case, checked at every sync)
        }
        let Some(node) = self
            .targets
            .storage
            .iter()
            .find(|s| s.addr.to_string() == server)
        else {
            return false;
        };
        let mut held = self.held.lock().unwrap();
        if held.armed.get(&node.id) != Some(&point) || !self.may_lose(&held, &[node.id]) {
            return false;
        }
        held.armed.remove(&node.id);
        held.crashed_at_point.push(node.id);
        drop(held);
        tracing::info!(node = ?node.id, ?point, "crash at a crash point");
        self.take_down(node.id, &Handle::current());
        true
    }

    /// Takes down every one of `nodes` at the same instant (unless in-memory nodes
    /// would then lose records no other replica keeps).
    fn crash_together(&self, nodes: Vec<NodeId>, handle: &Handle) -> Heal {
        if !self.may_lose(&self.held.lock().unwrap(), &nodes) {
            tracing::info!(
                ?nodes,
                "not crashed: another zone's in-memory node has not recovered"
            );
            return Heal::Nothing;
        }
        for &n in &nodes {
            self.take_down(n, handle);
        }
        Heal::Restart(nodes)
    }

    /// Whether `nodes` may crash now. In-memory storage nodes lose their records in a
    /// crash; a key survives as long as one replica that remembers it is left, which
    /// holds while no two zones have a node that forgot (each key has one replica per
    /// zone). So: not while a node of another zone is down or recovering.
    fn may_lose(&self, held: &Held, nodes: &[NodeId]) -> bool {
        let t = &self.targets;
        let zone_of = |n: &NodeId| t.storage.iter().find(|s| s.id == *n).map(|s| s.zone);
        let zones: Vec<usize> = nodes.iter().filter_map(zone_of).collect();
        !t.memory
            || held
                .amnesic
                .iter()
                .all(|n| zone_of(n).is_none_or(|z| zones.contains(&z)))
    }

    /// In-memory storage nodes that crashed and have not recovered since.
    pub fn unrecovered(&self) -> Vec<std::net::SocketAddr> {
        let held = self.held.lock().unwrap();
        let t = &self.targets.storage;
        t.iter()
            .filter(|s| held.amnesic.contains(&s.id))
            .map(|s| s.addr)
            .collect()
    }

    /// The simulator's recovered hook: an in-memory storage node has its records back.
    pub fn recovered(&self, server: &str) {
        let t = &self.targets;
        if let Some(node) = t.storage.iter().find(|s| s.addr.to_string() == server) {
            self.held.lock().unwrap().amnesic.remove(&node.id);
        }
    }

    /// Injects faults for `period`, from `swarm.loops` concurrent loops, then heals
    /// everything.
    pub async fn run(self: Arc<Self>, period: Duration) {
        let end = tokio::time::Instant::now() + period;
        let loops: Vec<_> = (0..self.swarm.loops)
            .map(|_| {
                let me = self.clone();
                tokio::spawn(async move { me.fault_loop(end).await })
            })
            .collect();
        for l in loops {
            l.await.expect("nemesis loop");
        }
        self.heal_all();
    }

    async fn fault_loop(&self, end: tokio::time::Instant) {
        let mut rng = madsim::rand::thread_rng();
        loop {
            let gap = self.swarm.mean_gap.mul_f64(rng.gen_range(0.2..1.8));
            tokio::time::sleep(gap).await;
            let length = self.swarm.max_length.mul_f64(rng.gen_range(0.05..1.0));
            if tokio::time::Instant::now() + length >= end {
                return;
            }
            let kind = self.swarm.kinds[rng.gen_range(0..self.swarm.kinds.len())];
            // A process that dies at a crash point is restarted at once (as a
            // supervisor would), while requests it was part of are still in flight.
            let length = match kind {
                Kind::CrashMidCommit => Duration::from_millis(rng.gen_range(20..300)),
                _ => length,
            };
            let heal = self.inject(kind, &mut rng);
            tokio::time::sleep(length).await;
            self.heal(heal);
        }
    }

    fn all_nodes(&self) -> Vec<NodeId> {
        let t = &self.targets;
        t.storage
            .iter()
            .map(|s| s.id)
            .chain(t.proxies.iter().map(|p| p.id))
            .chain(t.clients.iter().map(|c| c.0))
            .collect()
    }

    fn inject(&self, kind: Kind, rng: &mut impl Rng) -> Heal {
        let t = &self.targets;
        let net = NetSim::current();
        let handle = Handle::current();
        let all = self.all_nodes();
        let heal = match kind {
            Kind::PartitionNode => {
                let n = all[rng.gen_range(0..all.len())];
                Heal::Links(self.cut(&[n], &all, true))
            }
            Kind::PartitionZone => {
                let z = rng.gen_range(0..t.zones);
                let zone: Vec<NodeId> = t
                    .storage
                    .iter()
                    .filter(|s| s.zone == z)
                    .map(|s| s.id)
                    .collect();
                Heal::Links(self.cut(&zone, &all, true))
            }
            Kind::PartitionDatacenter => {
                let dc = rng.gen_range(0..t.proxies.iter().map(|p| p.dc + 1).max().unwrap_or(1));
                let inside: Vec<NodeId> = t
                    .storage
                    .iter()
                    .filter(|s| s.dc == dc)
                    .map(|s| s.id)
                    .chain(t.proxies.iter().filter(|p| p.dc == dc).map(|p| p.id))
                    .chain(t.clients.iter().filter(|c| c.1 == dc).map(|c| c.0))
                    .collect();
                Heal::Links(self.cut(&inside, &all, true))
            }
            Kind::PartitionAsymmetric => {
                let n = all[rng.gen_range(0..all.len())];
                let links = if rng.gen_bool(0.5) {
                    self.cut(&[n], &all, false)
                } else {
                    let others: Vec<NodeId> = all.iter().copied().filter(|o| *o != n).collect();
                    self.cut(&others, &[n], false)
                };
                Heal::Links(links)
            }
            Kind::MajoritiesRing => {
                let majority = t.zones / 2 + 1;
                let mut links = Vec::new();
                for (i, p) in t.proxies.iter().enumerate() {
                    let reach = |z: usize| (z + t.zones - i % t.zones) % t.zones < majority;
                    let cut_off: Vec<NodeId> = t
                        .storage
                        .iter()
                        .filter(|s| !reach(s.zone))
                        .map(|s| s.id)
                        .collect();
                    links.extend(self.cut(&[p.id], &cut_off, true));
                }
                Heal::Links(links)
            }
            Kind::PacketLoss => {
                let rate = rng.gen_range(0.01..0.3);
                net.update_config(|c| c.packet_loss_rate = rate);
                Heal::NetConfig
            }
            Kind::DelayBurst => {
                let ms = rng.gen_range(5..100);
                net.update_config(|c| {
                    c.send_latency = Duration::from_millis(ms)..Duration::from_millis(ms * 3)
                });
                Heal::NetConfig
            }
            Kind::CrashStorage => {
                let s = &t.storage[rng.gen_range(0..t.storage.len())];
                self.crash_together(vec![s.id], &handle)
            }
            Kind::CrashProxy => {
                let p = &t.proxies[rng.gen_range(0..t.proxies.len())];
                self.crash_together(vec![p.id], &handle)
            }
            Kind::Pause => {
                let n = all[rng.gen_range(0..all.len())];
                let mut held = self.held.lock().unwrap();
                let count = held.paused.entry(n).or_default();
                *count += 1;
                if *count == 1 {
                    handle.pause(n);
                }
                Heal::Resume(n)
            }
            Kind::ClockSkew => {
                let i = rng.gen_range(0..t.proxies.len());
                let max = MAX_SKEW.as_nanos() as i64;
                let skew = rng.gen_range(-max..=max);
                t.proxies[i].clock.set_skew_ns(skew);
                self.max_skew_ns
                    .fetch_max(skew.unsigned_abs(), Ordering::Relaxed);
                Heal::Clock(i)
            }
            Kind::CrashZone => {
                let z = rng.gen_range(0..t.zones);
                let zone = t.storage.iter().filter(|s| s.zone == z).map(|s| s.id);
                self.crash_together(zone.collect(), &handle)
            }
            Kind::CrashDatacenter => {
                let dc = rng.gen_range(0..=t.storage.iter().map(|s| s.dc).max().unwrap_or(0));
                let inside = t.storage.iter().filter(|s| s.dc == dc).map(|s| s.id);
                self.crash_together(inside.collect(), &handle)
            }
            Kind::PowerLoss => {
                self.crash_together(t.storage.iter().map(|s| s.id).collect(), &handle)
            }
            Kind::CrashMidCommit => {
                let point = if rng.gen_bool(0.7) {
                    CrashPoint::DuringSync
                } else {
                    CrashPoint::AfterSync
                };
                let count = rng.gen_range(1..=t.zones / 2 + 1);
                let mut nodes: Vec<NodeId> = Vec::new();
                let mut held = self.held.lock().unwrap();
                for _ in 0..count {
                    let s = &t.storage[rng.gen_range(0..t.storage.len())];
                    if let std::collections::btree_map::Entry::Vacant(e) = held.armed.entry(s.id) {
                        e.insert(point);
                        nodes.push(s.id);
                    }
                }
                Heal::Disarm(nodes)
            }
            Kind::DiskErrors => {
                let i = rng.gen_range(0..t.storage.len());
                if rng.gen_bool(0.5) {
                    t.storage[i]
                        .engine
                        .set_read_error_rate(rng.gen_range(0.01..0.5));
                } else {
                    t.storage[i].engine.set_writes_fail(true);
                }
                Heal::Disk(i)
            }
            Kind::Corruption => {
                let zone: Vec<&StorageNode> = t
                    .storage
                    .iter()
                    .filter(|s| s.zone == t.corruptible_zone)
                    .collect();
                if rng.gen_bool(0.5) {
                    // A failing disk: records of the zone go bad every few milliseconds
                    // while the fault lasts, so that some go bad mid-request.
                    tracing::info!(zone = t.corruptible_zone, "corruption storm");
                    let storming = Arc::new(std::sync::atomic::AtomicBool::new(true));
                    let engines: Vec<Arc<SimEngine>> =
                        zone.iter().map(|s| s.engine.clone()).collect();
                    let on = storming.clone();
                    tokio::spawn(async move {
                        let mut rng = madsim::rand::thread_rng();
                        while on.load(Ordering::Relaxed) {
                            let ms = rng.gen_range(2..20);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            let e = &engines[rng.gen_range(0..engines.len())];
                            e.corrupt(junokv::storage::is_record_key, &mut rng);
                        }
                    });
                    Heal::Storm(storming)
                } else {
                    let s = zone[rng.gen_range(0..zone.len())];
                    let damaged = s.engine.corrupt(junokv::storage::is_record_key, rng);
                    tracing::info!(node = ?s.id, key = ?damaged, "corrupted a record");
                    Heal::Nothing
                }
            }
        };
        tracing::info!(fault = kind.name(), "inject");
        heal
    }

    /// Cuts the links from each of `from` to each of `to` (both ways if `both`).
    fn cut(&self, from: &[NodeId], to: &[NodeId], both: bool) -> Vec<(NodeId, NodeId)> {
        let mut links = Vec::new();
        for &a in from {
            for &b in to.iter().filter(|b| !from.contains(b)) {
                links.push((a, b));
                if both {
                    links.push((b, a));
                }
            }
        }
        let net = NetSim::current();
        let mut held = self.held.lock().unwrap();
        for &(a, b) in &links {
            let count = held.links.entry((a, b)).or_default();
            *count += 1;
            if *count == 1 {
                net.clog_link(a, b);
            }
        }
        links
    }

    fn take_down(&self, node: NodeId, handle: &Handle) {
        let forgetful = (self.targets.storage.iter())
            .find(|s| s.id == node)
            .filter(|_| self.targets.memory);
        if let Some(s) = forgetful {
            self.oracle.crashed(&s.addr.to_string());
        }
        let mut held = self.held.lock().unwrap();
        if forgetful.is_some() {
            held.amnesic.insert(node);
        }
        let count = held.down.entry(node).or_default();
        *count += 1;
        if *count == 1 {
            handle.kill(node);
        }
    }

    fn heal(&self, heal: Heal) {
        let t = &self.targets;
        let net = NetSim::current();
        let handle = Handle::current();
        let mut held = self.held.lock().unwrap();
        match heal {
            Heal::Links(links) => {
                for link in links {
                    let count = held.links.get_mut(&link).expect("a held link");
                    *count -= 1;
                    if *count == 0 {
                        held.links.remove(&link);
                        net.unclog_link(link.0, link.1);
                    }
                }
            }
            Heal::Restart(nodes) => {
                for node in nodes {
                    Self::bring_up(&mut held, node, &handle);
                }
            }
            Heal::Disarm(nodes) => {
                for node in nodes {
                    held.armed.remove(&node);
                    if let Some(i) = held.crashed_at_point.iter().position(|n| *n == node) {
                        held.crashed_at_point.swap_remove(i);
                        Self::bring_up(&mut held, node, &handle);
                    }
                }
            }
            Heal::Resume(node) => {
                let count = held.paused.get_mut(&node).expect("a paused node");
                *count -= 1;
                if *count == 0 {
                    held.paused.remove(&node);
                    handle.resume(node);
                }
            }
            Heal::NetConfig => net.update_config(|c| *c = crate::cluster::net_config()),
            Heal::Clock(i) => t.proxies[i].clock.set_skew_ns(0),
            Heal::Disk(i) => {
                let s = &t.storage[i];
                s.engine.set_read_error_rate(0.0);
                s.engine.set_writes_fail(false);
                // A server whose durable write failed stopped serving: an operator
                // restarts it. (Restarting it while it is down would revive it early.)
                if !held.down.contains_key(&s.id) {
                    handle.kill(s.id); // (madsim's restart alone keeps the old sockets)
                    handle.restart(s.id);
                }
            }
            Heal::Storm(on) => on.store(false, Ordering::Relaxed),
            Heal::Nothing => {}
        }
        tracing::info!("heal");
    }

    /// Drops one hold on a downed node; the last one restarts it.
    fn bring_up(held: &mut Held, node: NodeId, handle: &Handle) {
        let count = held.down.get_mut(&node).expect("a node taken down");
        *count -= 1;
        if *count == 0 {
            held.down.remove(&node);
            handle.restart(node);
        }
    }

    /// Undoes whatever is still held (every loop has stopped).
    fn heal_all(&self) {
        let held = {
            let mut held = self.held.lock().unwrap();
            let amnesic = held.amnesic.clone(); // (they recover on their own)
            std::mem::replace(
                &mut *held,
                Held {
                    amnesic,
                    ..Held::default()
                },
            )
        };
        let net = NetSim::current();
        let handle = Handle::current();
        for (a, b) in held.links.keys() {
            net.unclog_link(*a, *b);
        }
        for n in held.down.keys() {
            handle.restart(*n);
        }
        for n in held.paused.keys() {
            handle.resume(*n);
        }
        net.update_config(|c| *c = crate::cluster::net_config());
        for p in &self.targets.proxies {
            p.clock.set_skew_ns(0);
        }
        tracing::info!("healed everything");
    }
}
