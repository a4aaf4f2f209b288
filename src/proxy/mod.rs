//! The proxy: speaks JunoDB's protocol to clients and runs each request's
//! [`Coordinator`] against the key's replicas. Holds no data.

mod admission;
pub mod config;
mod hedging;
mod key_turns;
mod leases;
mod translate;

pub use config::{ConnectionLimits, LeaseConfig, Limits, ProxyConfig, Timeouts};

use crate::clock::Clock;
use crate::cluster::ShardMap;
use crate::coordinator::{Action, BallotSource, Coordinator, Outcome, Quorum, ReadFrom};
use crate::key::StoreKey;
use crate::listener::serve_until_stopped;
use crate::protocol::{read_body, read_header, Direction, OpCode, OpMessage, RequestId, Status};
use crate::record::Ballot;
use crate::replica::{NodeInfo, NodeRequest, ReplicaReply, ReplicaRequest};
use crate::rpc::{write_frames, CallError, Deliver, Inbox, Peer, Reply};
use crate::semantics::{Context, Op};
use crate::transport::{Acceptor, BoxStream, Connector};
use smallvec::SmallVec;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant};

/// Ballots `(counter, proposer)`: one counter per proxy, the proposer id drawn at
/// start-up so that a restarted proxy never reissues a ballot of its former life.
struct Ballots {
    proposer: u64,
    counter: AtomicU64,
}

impl BallotSource for Ballots {
    fn next_above(&self, floor: u64) -> Ballot {
        let mut cur = self.counter.load(Ordering::Relaxed);
        loop {
            let next = cur.max(floor) + 1;
            match self.counter.compare_exchange_weak(
                cur,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Ballot {
                        counter: next,
                        proposer: self.proposer,
                    }
                }
                Err(seen) => cur = seen,
            }
        }
    }
}

/// A shard's replicas under one map, in their places: shared by every request on the
/// shard rather than copied for each.
type Replicas = Arc<[Arc<Peer>]>;

/// What a proxy routes by: a map, a peer for each storage node in it, and each
/// shard's replicas and quorums, worked out once per map rather than per request.
/// Replaced whole when the map changes: a round of a request goes out under one map.
struct Routing {
    map: Arc<ShardMap>,
    peers: HashMap<String, Arc<Peer>>,
    /// By shard number.
    shards: Vec<(Replicas, Quorum)>,
}

impl Routing {
    /// Routes by `map` through `peers` (one for each of its nodes), with the quorums'
    /// timing taken from `base`.
    fn new(map: Arc<ShardMap>, peers: HashMap<String, Arc<Peer>>, base: &Quorum) -> Self {
        let shards = (0..map.num_shards)
            .map(|shard| {
                let placement = map.placement(shard);
                let replicas = (placement.nodes.iter())
                    .map(|n| peers[&n.addr].clone())
                    .collect();
                (replicas, base.of(&placement))
            })
            .collect();
        Routing { map, peers, shards }
    }

    /// The replicas of `shard` and their quorums.
    fn replicas(&self, shard: u16) -> (Replicas, Quorum) {
        self.shards[usize::from(shard)].clone()
    }
}

/// Shared state of a proxy.
pub struct Proxy {
    config: ProxyConfig,
    connector: Connector,
    /// The map routed by now; requests in flight watch it for changes.
    routing: watch::Sender<Arc<Routing>>,
    ballots: Ballots,
    clock: Clock,
    /// The timing parameters of every request's quorums.
    quorum: Quorum,
    turns: key_turns::KeyTurns,
    leases: leases::Leases,
    admission: admission::Admission,
    /// Where the next client read starts among a key's replicas: each read asks a
    /// quorum, and turn by turn every replica serves its share.
    next_reader: AtomicUsize,
    read_round_trips: hedging::ReadRoundTrips,
}

/// A running proxy listener.
pub struct ProxyServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ProxyServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and closes every client connection.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

impl Proxy {
    pub fn new(config: ProxyConfig, clock: Clock) -> Result<Arc<Self>, String> {
        config.cluster.validate()?;
        let connector = Connector::member(config.cluster_tls.as_ref())?;
        // (Replaced by `route_by` below, before anything routes by it.)
        let routing = Routing {
            map: Arc::new(config.cluster.clone()),
            peers: HashMap::new(),
            shards: Vec::new(),
        };
        let routing = watch::Sender::new(Arc::new(routing));
        let quorum = Quorum {
            purge_grace_secs: config.timeouts.purge_grace_secs,
            ..Quorum::majority(config.cluster.zones.len())
        };
        let ballots = Ballots {
            proposer: madsim::rand::random(),
            counter: AtomicU64::new(0),
        };
        let proxy = Proxy {
            admission: admission::Admission::new(config.connections.clone()),
            leases: leases::Leases::new(config.leases.memory_bytes),
            config,
            connector,
            routing,
            ballots,
            clock,
            quorum,
            turns: key_turns::KeyTurns::default(),
            next_reader: AtomicUsize::new(0),
            read_round_trips: hedging::ReadRoundTrips::default(),
        };
        proxy.route_by(proxy.config.cluster.clone(), true)?;
        Ok(Arc::new(proxy))
    }

    /// Routes by `map` from now on, if it is newer than the map routed by (an older one
    /// is ignored: maps only move forward). Requests in flight move to it at once,
    /// starting their round again on the key's replicas under it.
    pub fn install(&self, map: ShardMap) -> Result<(), String> {
        self.route_by(map, false)
    }

    fn route_by(&self, map: ShardMap, first: bool) -> Result<(), String> {
        map.validate()?;
        let current = self.routing.borrow().clone();
        if !first && map.epoch <= current.map.epoch {
            return Ok(());
        }
        if map.num_shards != current.map.num_shards {
            return Err("a map cannot change the number of shards".into());
        }
        let peers = (map.nodes().into_iter())
            .map(|a| {
                let peer = current.peers.get(a).cloned().unwrap_or_else(|| {
                    let timeout = self.config.timeouts.connect();
                    Arc::new(Peer::new(a.to_string(), self.connector.clone(), timeout))
                });
                (a.to_string(), peer)
            })
            .collect();
        if !first {
            tracing::info!(
                epoch = map.epoch,
                was = current.map.epoch,
                changing = map.previous.is_some(),
                "proxy routes by a new map"
            );
        }
        let map = Arc::new(map);
        let routing = Routing::new(map, peers, &self.quorum);
        self.routing.send_replace(Arc::new(routing));
        Ok(())
    }

    /// Installs every map `maps` brings (see [`Proxy::install`]), as long as the proxy
    /// lives: how a proxy follows the cluster's map source.
    pub fn follow(self: &Arc<Self>, mut maps: watch::Receiver<ShardMap>) {
        let proxy = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let map = maps.borrow_and_update().clone();
                let Some(proxy) = proxy.upgrade() else { return };
                if let Err(e) = proxy.install(map) {
                    tracing::error!(error = %e, "a map from the map source was refused");
                }
                drop(proxy);
                if maps.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Reads its cluster certificate files again: connections opened from now on use
    /// them.
    pub fn reload_tls(&self) -> Result<(), String> {
        self.connector.reload()
    }

    /// Every storage node as this proxy sees it: asked now, with its zone, shard
    /// count, engine size and version, and how many shards lack a quorum of
    /// answering replicas.
    pub async fn status(&self) -> ClusterStatus {
        let map = self.map();
        // Each shard's replicas, worked out once.
        let placement: Vec<Vec<&str>> = (0..map.num_shards).map(|s| map.replicas(s)).collect();
        let placed = map.zones.iter().enumerate().flat_map(|(z, zone)| {
            zone.nodes
                .iter()
                .map(move |node| (z, &zone.datacenter, &node.addr))
        });
        let asks = placed.map(|(zone, datacenter, node)| {
            let shards = placement.iter().filter(|r| r[zone] == node).count();
            async move {
                let info = match self.ask_node(node, NodeRequest::Status).await {
                    Ok(ReplicaReply::Node(info)) => Some(info),
                    _ => None,
                };
                NodeStatus {
                    addr: node.clone(),
                    zone,
                    datacenter: datacenter.clone(),
                    shards,
                    up: info.is_some(),
                    info,
                }
            }
        });
        let nodes = futures::future::join_all(asks).await;
        let up = |addr: &str| nodes.iter().any(|n| n.serving() && n.addr == addr);
        let shards_without_quorum = (0..map.num_shards)
            .filter(|s| {
                let placement = map.placement(*s);
                let q = self.quorum.of(&placement);
                !q.met(|i| up(&placement.nodes[i].addr))
            })
            .count();
        ClusterStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            epoch: map.epoch,
            shards: map.num_shards,
            quorum: Quorum::needed(map.zones.len()),
            nodes,
            shards_without_quorum,
        }
    }

    /// Whether this proxy can serve every shard (a quorum of each shard's replicas
    /// answers). Ok names the nodes down, if any.
    pub async fn ready(&self) -> Result<String, String> {
        let status = self.status().await;
        let down: Vec<String> = (status.nodes.iter())
            .filter(|n| !n.serving())
            .map(|n| match n.up {
                true => format!("{} (recovering)", n.addr),
                false => n.addr.clone(),
            })
            .collect();
        match (status.shards_without_quorum, down.is_empty()) {
            (0, true) => Ok(String::new()),
            (0, false) => Ok(format!(" (down: {})", down.join(", "))),
            (n, _) => Err(format!(
                "{n} of {} shards reach fewer than {} replicas (down: {})",
                status.shards,
                status.quorum,
                down.join(", ")
            )),
        }
    }

    /// The clock that judges expiry for this proxy's requests.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The cluster map this proxy routes by now.
    pub fn map(&self) -> Arc<ShardMap> {
        self.routing.borrow().map.clone()
    }

    /// Asks the storage node at `addr` (one in the map) about itself, waiting at most
    /// one round's timeout.
    pub async fn ask_node(&self, addr: &str, req: NodeRequest) -> Result<ReplicaReply, String> {
        let epoch = self.routing.borrow().map.epoch;
        self.send(addr, &ReplicaRequest::Node(req), epoch).await
    }

    /// Sends `req` to the storage node at `addr` (one in the map) as a sender on the
    /// map of `epoch`, whichever this proxy is on now (a move's copy is made on the
    /// joint map only), waiting at most one round's timeout.
    pub async fn send(
        &self,
        addr: &str,
        req: &ReplicaRequest,
        epoch: u64,
    ) -> Result<ReplicaReply, String> {
        let peer = self.routing.borrow().peers.get(addr).cloned();
        let peer = peer.ok_or_else(|| format!("{addr} is not in the map"))?;
        let timeout = self.config.timeouts.round();
        let reply = peer.call(req, (None, epoch), timeout).await;
        reply.map_err(|e| format!("{addr}: {e}"))
    }

    /// Serves clients on `listener` (through `acceptor`: plain or TLS) until the
    /// returned server is stopped.
    pub fn serve(
        self: &Arc<Self>,
        listener: TcpListener,
        acceptor: Acceptor,
    ) -> std::io::Result<ProxyServer> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let proxy = self.clone();
        let transport = match acceptor {
            Acceptor::Plain => "plain text",
            #[cfg(not(madsim))]
            Acceptor::Tls(_) => "TLS",
        };
        let task = tokio::spawn(serve_until_stopped(listener, stopped, move |stream| {
            let proxy = proxy.clone();
            let acceptor = acceptor.clone();
            async move {
                // At the cap, closed before any handshake is spent on it.
                let metrics = crate::metrics::metrics();
                let Some(budget) = proxy.admission.connection() else {
                    tracing::debug!(%addr, "connection refused: the proxy is at max_connections");
                    metrics.connections_refused.inc();
                    return;
                };
                if let Ok(stream) = acceptor.accept(stream).await {
                    metrics.client_connections.inc();
                    proxy.serve_client(stream, budget).await;
                    metrics.client_connections.dec();
                }
            }
        }));
        tracing::info!(%addr, transport, "proxy listening");
        Ok(ProxyServer { addr, stop, task })
    }

    /// One client connection: requests are handled concurrently and answered as they
    /// complete, each carrying its request's opaque, within the connection's budget.
    /// The connection closes when the client does, when its stream cannot be framed,
    /// when it is idle or stalls mid-frame, or when it stops taking its responses.
    async fn serve_client(self: Arc<Self>, stream: BoxStream, budget: admission::ConnectionBudget) {
        let (rd, wr) = tokio::io::split(stream);
        let (tx, rx) = mpsc::unbounded_channel::<Response>();
        let stall = self.config.connections.stall_timeout();
        let mut writer = tokio::spawn(write_frames(wr, rx, Some(stall)));
        tokio::select! {
            () = self.read_requests(rd, tx, budget) => {
                // Requests still in flight finish and are answered; then the writer ends.
                let _ = (&mut writer).await;
            }
            written = &mut writer => {
                if let Ok(Err(e)) = written {
                    tracing::debug!(error = %e, "closing client connection");
                }
            }
        }
    }

    /// Reads and starts requests until the client closes, misbehaves or idles.
    async fn read_requests(
        self: &Arc<Self>,
        rd: tokio::io::ReadHalf<BoxStream>,
        tx: mpsc::UnboundedSender<Response>,
        budget: admission::ConnectionBudget,
    ) {
        use tokio::io::AsyncBufReadExt;
        use tokio::time::timeout;
        let limits = &self.config.connections;
        // A small buffer: idle connections may be many.
        let mut rd = tokio::io::BufReader::with_capacity(1024, rd);
        let closing = |why: &dyn std::fmt::Display| {
            tracing::debug!(reason = %why, "closing client connection");
        };
        loop {
            match timeout(limits.idle_timeout(), rd.fill_buf()).await {
                Ok(Ok([])) => return,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return closing(&e),
                Err(_) => return closing(&"idle"),
            }
            let (header, head) = match timeout(limits.stall_timeout(), read_header(&mut rd)).await {
                Ok(Ok(Some(h))) => h,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => return closing(&e),
                Err(_) => return closing(&"frame header stalled"),
            };
            // Room for the frame before its body is buffered.
            let held = budget.admit(header.size as usize).await;
            let bytes =
                match timeout(limits.stall_timeout(), read_body(&mut rd, &header, head)).await {
                    Ok(Ok(b)) => b,
                    Ok(Err(e)) => return closing(&e),
                    Err(_) => return closing(&"frame stalled"),
                };
            let answer_now = |request: OpMessage, status: Status, held| {
                let reply = request.into_response(status.to_byte()).to_bytes();
                let _ = tx.send(Response {
                    bytes: reply,
                    _held: held,
                });
            };
            let msg = match OpMessage::decode(&bytes) {
                Ok(m) if m.direction != Direction::Response => m,
                _ => {
                    let mut bad = OpMessage::request(bytes.get(12).copied().unwrap_or(0));
                    bad.opaque = header.opaque;
                    answer_now(bad, Status::BadMsg, held);
                    continue;
                }
            };
            drop(bytes);
            let Some(started) = self.admission.start() else {
                answer_now(msg, Status::Busy, held);
                continue;
            };
            let (proxy, tx, budget) = (self.clone(), tx.clone(), budget.clone());
            tokio::spawn(async move {
                let request = msg.direction == Direction::Request;
                let resp = proxy.handle(msg).await;
                drop(started);
                if request {
                    let bytes = resp.to_bytes();
                    let held = budget.resize(held, bytes.len()).await;
                    let _ = tx.send(Response { bytes, _held: held });
                }
            });
        }
    }

    /// Answers one decoded request. Log lines about the request carry its JunoDB
    /// request id (`-` when it has none).
    pub async fn handle(self: &Arc<Self>, msg: OpMessage) -> OpMessage {
        use tracing::Instrument;
        let op = OpCode::from_byte(msg.opcode);
        let span = tracing::debug_span!("request", id = %RequestId(msg.meta.request_id), ?op);
        self.answer(msg, op).instrument(span).await
    }

    async fn answer(self: &Arc<Self>, mut msg: OpMessage, opcode: OpCode) -> OpMessage {
        let metrics = crate::metrics::metrics();
        let op = crate::metrics::op_name(opcode);
        metrics.requests_in_flight.inc();
        let started = Instant::now();
        let now_ns = self.clock.now_ns();
        let outcome = match opcode {
            OpCode::Nop => Ok(None),
            _ => match translate::to_op(&mut msg, &self.config.limits) {
                Ok(op) => {
                    let key =
                        StoreKey::new(&msg.namespace, &msg.key, self.config.cluster.num_shards);
                    // (The number of shards never changes with the map.)
                    self.execute(key, op, now_ns, msg.meta.request_id).await
                }
                Err(status) => Err(status),
            },
        };
        let took = started.elapsed();
        let us = took.as_micros().min(u32::MAX as u128) as u32;
        let status = outcome.as_ref().err().copied().unwrap_or(Status::Ok);
        tracing::debug!(%status, micros = us, "answered");
        metrics.requests_in_flight.dec();
        let labels = crate::metrics::OpStatus {
            op,
            status: status.name(),
        };
        metrics.requests.get_or_create(&labels).inc();
        (metrics
            .request_seconds
            .get_or_create(&crate::metrics::OpLabel { op }))
        .observe(took.as_secs_f64());
        // The TTL left is told as of the answer: the record's expiry was fixed when a
        // quorum answered, which may be a second after the request began.
        let answered_secs = (self.clock.now_ns() / 1_000_000_000) as u32;
        translate::response(msg, outcome, answered_secs, us)
    }

    /// Runs one operation, as of wall-clock time `now_ns`, to its outcome (or Timeout
    /// at the deadline). A plain read asks a quorum of the key's replicas.
    pub async fn execute(
        self: &Arc<Self>,
        key: StoreKey,
        op: Op,
        now_ns: u64,
        request_id: Option<[u8; 16]>,
    ) -> Outcome {
        let from = match op.may_write() {
            true => ReadFrom::Every, // (a write asks every replica in any case)
            false => ReadFrom::Quorum {
                first: self.next_reader.fetch_add(1, Ordering::Relaxed),
            },
        };
        self.run(key, op, now_ns, request_id, from).await
    }

    /// Reads `key` from every one of its replicas, settling it on them all (see
    /// [`ReadFrom::Every`]): how a storage server has its own replica of a key purged
    /// or repaired, and how a move settles a key on the new replicas.
    pub async fn read_everywhere(self: &Arc<Self>, key: StoreKey, now_ns: u64) -> Outcome {
        let read = Op::Get { extend_ttl: 0 };
        self.run(key, read, now_ns, None, ReadFrom::Every).await
    }

    async fn run(
        self: &Arc<Self>,
        key: StoreKey,
        op: Op,
        now_ns: u64,
        request_id: Option<[u8; 16]>,
        from: ReadFrom,
    ) -> Outcome {
        let (tx, rx) = oneshot::channel();
        let mut maps = self.routing.subscribe();
        let routing = maps.borrow_and_update().clone();
        let ctx = Context {
            now_ns,
            request_id: madsim::rand::random(),
            default_ttl: self.config.limits.default_ttl,
        };
        let deadline = Instant::now() + self.config.timeouts.request();
        let wait = deadline.saturating_duration_since(Instant::now());
        let turn = match tokio::time::timeout(wait, self.turns.wait(&key)).await {
            Ok(turn) => turn,
            // Its turn never came: it sent nothing, so it certainly did not happen.
            Err(_) => return Err(Status::NoStorageServer),
        };
        let epoch = routing.map.epoch;
        let lease = op
            .may_write()
            .then(|| self.leases.take(&key, epoch))
            .flatten();
        let (peers, quorum) = routing.replicas(key.shard());
        let coordinator = Coordinator::new(key.clone(), op, ctx, quorum).reading_from(from);
        let answer = Answer {
            tx,
            turn,
            key,
            epoch,
        };
        let driving = drive(
            coordinator,
            (lease, peers, maps),
            self.clone(),
            (deadline, request_id),
            Some(answer),
        );
        // Driven here until it answers (a task of its own would cost every request a
        // spawn and a wake-up). The coordinator may linger after answering (to repair
        // a replica or remove a tombstone): it does so in a task of its own, without
        // holding up the client or the next request on the key.
        let mut driving = Box::pin(tracing::Instrument::in_current_span(driving));
        let mut rx = rx;
        tokio::select! {
            biased;
            answered = &mut rx => {
                tokio::spawn(driving);
                answered.unwrap_or(Err(Status::Timeout))
            }
            () = &mut driving => rx.await.unwrap_or(Err(Status::Timeout)),
        }
    }
}

impl crate::admin::Health for Proxy {
    fn ready(&self) -> futures::future::BoxFuture<'_, Result<String, String>> {
        Box::pin(Proxy::ready(self))
    }

    fn status(&self) -> futures::future::BoxFuture<'_, Option<String>> {
        Box::pin(async {
            let status = Proxy::status(self).await;
            Some(serde_json::to_string(&status).expect("a status serialises"))
        })
    }
}

/// The cluster as a proxy sees it (`/status` on its admin port, `junokv status`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ClusterStatus {
    /// The proxy's JunoKV version.
    pub version: String,
    pub epoch: u64,
    pub shards: u16,
    /// Replicas a shard needs answering.
    pub quorum: usize,
    pub nodes: Vec<NodeStatus>,
    pub shards_without_quorum: usize,
}

/// One storage node in [`ClusterStatus`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    pub addr: String,
    /// Its zone's place in the map.
    pub zone: usize,
    pub datacenter: String,
    /// Shards it holds a replica of.
    pub shards: usize,
    /// Whether it answered.
    pub up: bool,
    /// What it said of itself, when up.
    pub info: Option<NodeInfo>,
}

impl NodeStatus {
    /// Whether it serves its shards: it answers, and is not an in-memory replica still
    /// recovering (which serves only the keys it has recovered so far).
    pub fn serving(&self) -> bool {
        self.info.as_ref().is_some_and(|i| !i.recovering)
    }
}

/// A response on its way to the client, holding its share of the connection's budget
/// until the writer takes it.
struct Response {
    bytes: Vec<u8>,
    _held: admission::Held,
}

impl AsRef<[u8]> for Response {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// How long a request waits before retrying with a higher ballot: random, up to a
/// quarter of the longest round trip to any replica it has seen (how long a competing
/// proposer's round may take) doubled with every attempt, to twice that round trip. A
/// back-off measured in round trips, not fixed milliseconds, lets one of several
/// proposers that pre-empt each other complete both phases even across datacentres.
fn backoff_delay(attempt: u32, round_trip: Duration) -> Duration {
    let unit = round_trip.clamp(Duration::from_millis(1), Duration::from_millis(250)) / 4;
    let cap = unit * (1u32 << attempt.min(3));
    let micros = cap.as_micros() as u64;
    Duration::from_micros(madsim::rand::random::<u64>() % (micros + 1))
}

/// Where a request's answer goes, and what ends with it: its turn on its key.
struct Answer {
    tx: oneshot::Sender<Outcome>,
    turn: key_turns::Turn,
    key: StoreKey,
    /// The map the request's replicas are of now (a lease it won is good under it).
    epoch: u64,
}

impl Answer {
    /// Answers the client; the lease the request won (if any) is the proxy's before the
    /// next request on the key starts.
    fn send(self, outcome: Outcome, co: &mut Coordinator, proxy: &Proxy) {
        if let Some(taken) = co.lease_outcome() {
            let outcome = if taken { "taken" } else { "refused" };
            let label = crate::metrics::OutcomeLabel { outcome };
            crate::metrics::metrics()
                .lease_writes
                .get_or_create(&label)
                .inc();
            if !taken {
                proxy.leases.refused(&self.key);
            }
        }
        if let Some(lease) = co.take_lease() {
            let taken = co.lease_outcome() == Some(true);
            proxy.leases.grant(&self.key, lease, taken, self.epoch);
        }
        let _ = self.tx.send(outcome);
        drop(self.turn);
    }
}

/// A request's call to one replica, waiting for its reply.
struct Call {
    /// Matches the reply to the call.
    tag: u64,
    round: u32,
    /// The replica, by its place in the request's list.
    to: usize,
    /// The map the call was sent on.
    epoch: u64,
    peer: Arc<Peer>,
    /// Dropped with the call (answered, timed out, or the request done): withdraws it.
    sent: crate::rpc::Sent,
}

impl Call {
    /// When it is given up on: a round's time after it was queued on a connection
    /// (none while its connect is under way).
    fn expiry(&self, round_timeout: Duration) -> Option<Instant> {
        self.sent.queued_at().map(|at| at + round_timeout)
    }

    /// What the coordinator makes of the call's outcome.
    fn reply(&self, reply: Reply) -> ReplicaReply {
        match reply {
            // A replica on another map counts as none. While a change of the map
            // spreads, that is a moment: whoever is behind gets the new map from the
            // map source. On the same map, the replica does not hold the shard: the
            // operator must bring the maps together.
            Ok(ReplicaReply::NotOwner { epoch }) => {
                let peer = self.peer.addr();
                if epoch == self.epoch {
                    tracing::warn!(%peer, epoch, "the storage server does not hold this shard in its map: the maps differ");
                } else {
                    tracing::debug!(%peer, epoch, ours = self.epoch, "the storage server is on another map");
                }
                ReplicaReply::Failed {
                    reason: format!("on map epoch {epoch}, not {}", self.epoch),
                }
            }
            Ok(reply) => reply,
            Err(e) => ReplicaReply::Failed {
                reason: e.to_string(),
            },
        }
    }
}

/// Carries out a coordinator's actions (from its start on `lease`, if any, sending to
/// `peers`, the key's replicas under the map `maps` saw last) until it is finished,
/// sending its answer (or Timeout at `deadline`) on `answer`. Its messages name the
/// client's `request_id`, for the storage servers' logs. When the map changes, the
/// request moves to the key's replicas under the new one.
async fn drive(
    mut co: Coordinator,
    (lease, mut peers, mut maps): (
        Option<crate::coordinator::Lease>,
        Replicas,
        watch::Receiver<Arc<Routing>>,
    ),
    proxy: Arc<Proxy>,
    (deadline, request_id): (Instant, Option<[u8; 16]>),
    mut answer: Option<Answer>,
) {
    let ballots = &proxy.ballots;
    let round_timeout = proxy.config.timeouts.round();
    let mut epoch = answer.as_ref().map_or(0, |a| a.epoch);
    // Every reply to this request's calls comes through one inbox, each call's timeout
    // from the one timer below: no task, future or timer of its own per call. (A
    // request has a call out to each replica at most, nearly always: held inline.)
    let inbox = Arc::new(Inbox::default());
    let mut calls: SmallVec<[Call; 3]> = SmallVec::new();
    let mut next_call = 0u64;
    let mut round_deadline = Instant::now() + round_timeout;
    let mut backoff: Option<Instant> = None;
    // When to call `hedge` for the read round it names.
    let mut hedge: Option<(Instant, u32)> = None;
    // One timer for whichever of the above comes first (a timer set and cleared for
    // each of them on every reply costs a request more than its replies do).
    let timer = sleep_until(deadline);
    tokio::pin!(timer);
    // The longest any replica took to answer this request so far: how long a round
    // of a proposer competing for the key may take.
    let mut slowest = Duration::ZERO;
    let mut actions = co.start(ballots, lease);
    loop {
        for action in actions.drain(..) {
            match action {
                Action::Send { round, to, msg } => {
                    crate::metrics::metrics().replica_messages.of(&msg).inc();
                    let tag = next_call;
                    next_call += 1;
                    let deliver = Deliver::Queue(tag, inbox.clone());
                    let sent = peers[to].send(&msg, (request_id, epoch), deliver);
                    round_deadline = sent.at() + round_timeout;
                    calls.push(Call {
                        tag,
                        round,
                        to,
                        epoch,
                        peer: peers[to].clone(),
                        sent,
                    });
                }
                Action::Backoff { attempt } => {
                    tracing::trace!(attempt, "pre-empted by another ballot: backing off");
                    crate::metrics::metrics().backoffs.inc();
                    backoff = Some(Instant::now() + backoff_delay(attempt, slowest));
                }
                Action::Hedge { round } => {
                    let after = proxy.read_round_trips.hedge_after(round_timeout);
                    hedge = Some((Instant::now() + after, round));
                }
                Action::Reply(outcome) => {
                    if let Some(answer) = answer.take() {
                        answer.send(outcome, &mut co, &proxy);
                    }
                }
            }
        }
        if co.is_finished() {
            // What the coordinator sent as it finished (purges, a last repair) has gone
            // out; nothing more comes of its replies.
            return;
        }
        let mut next = deadline.min(backoff.unwrap_or(round_deadline));
        if let Some((at, _)) = hedge {
            next = next.min(at);
        }
        if let Some(first) = calls.iter().filter_map(|c| c.expiry(round_timeout)).min() {
            next = next.min(first);
        }
        if timer.deadline() != next {
            timer.as_mut().reset(next);
        }
        tokio::select! {
            (tag, reply) = inbox.next() => {
                // A call that timed out was withdrawn: a reply may still have been
                // on its way.
                let Some(i) = calls.iter().position(|c| c.tag == tag) else {
                    continue;
                };
                let call = calls.swap_remove(i);
                let took = call.sent.at().elapsed();
                let reply = call.reply(reply);
                if !matches!(reply, ReplicaReply::Failed { .. }) {
                    slowest = slowest.max(took);
                }
                if matches!(reply, ReplicaReply::Value { .. } | ReplicaReply::Ballot { .. }) {
                    proxy.read_round_trips.observe(took);
                }
                actions = co.on_reply(call.round, call.to, reply, ballots, proxy.clock.now_ns());
            }
            () = &mut timer => {
                // It was set for the earliest of these: at least one is due.
                let now = Instant::now();
                if now >= deadline {
                    tracing::debug!(status = %co.timeout_status(), "deadline passed");
                    if let Some(answer) = answer.take() {
                        let status = co.timeout_status();
                        answer.send(Err(status), &mut co, &proxy);
                    }
                    return;
                }
                let expired = calls
                    .iter()
                    .position(|c| c.expiry(round_timeout).is_some_and(|at| now >= at));
                if let Some(i) = expired {
                    // One at a time, as replies come: the timer fires again at once.
                    let call = calls.swap_remove(i);
                    let reply = call.reply(Err(CallError::Timeout));
                    actions = co.on_reply(call.round, call.to, reply, ballots, proxy.clock.now_ns());
                } else if let Some((_, round)) = hedge.filter(|(at, _)| now >= *at) {
                    hedge = None;
                    actions = co.hedge(round);
                    if !actions.is_empty() {
                        crate::metrics::metrics().read_hedges.inc();
                    }
                } else if backoff.is_some_and(|at| now >= at) {
                    backoff = None;
                    actions = co.retry(ballots, proxy.clock.now_ns());
                } else if backoff.is_none() && now >= round_deadline {
                    round_deadline = now + round_timeout;
                    actions = co.on_round_timeout(co.round());
                }
            }
            Ok(()) = maps.changed() => {
                let routing = maps.borrow_and_update().clone();
                if routing.map.epoch != epoch {
                    let quorum;
                    (peers, quorum) = routing.replicas(co.key().shard());
                    epoch = routing.map.epoch;
                    if let Some(answer) = answer.as_mut() {
                        answer.epoch = epoch;
                    }
                    backoff = None;
                    round_deadline = Instant::now() + round_timeout;
                    actions = co.reconfigure(quorum, ballots);
                }
            }
        }
    }
}
