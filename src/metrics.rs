//! The process's metrics, in Prometheus' text format on the admin port (`/metrics`).
//! One set per process: a proxy's process shows its proxy metrics, a storage server's
//! its storage metrics (`junokv dev` both). Names follow Prometheus' conventions:
//! `junokv_` prefix, base units (seconds, bytes), `_total` on counters.

use crate::engine::Engine;
use crate::protocol::OpCode;
use crate::replica::{NodeRequest, ReplicaRequest};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::{Arc, LazyLock, Mutex, Weak};

/// A client request's operation and answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpStatus {
    pub op: &'static str,
    pub status: &'static str,
}

/// A client request's operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

/// A message of the internal protocol.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// What became of something tried.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<OpStatus, Counter>,
    pub request_seconds: Family<OpLabel, Histogram>,
    pub requests_in_flight: Gauge,
    pub client_connections: Gauge,
    pub connections_refused: Counter,
    pub replica_messages: ByKind,
    pub backoffs: Counter,
    pub read_hedges: Counter,
    pub lease_writes: Family<OutcomeLabel, Counter>,
    pub replica_requests: ByKind,
    pub damaged_slots: Counter,
    pub slots_removed: Counter,
    pub slots_resealed: Counter,
    pub replica_sync_repairs: Counter,
    pub commit_batch_changes: Histogram,
    pub fsync_seconds: Histogram,
    engine_bytes: Gauge,
    pending_compaction_bytes: Gauge,
    resident_memory_bytes: Gauge,
    /// The engines whose size is reported at each scrape.
    engines: Mutex<Vec<Weak<dyn Engine>>>,
}

fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16)) // 100 µs .. 3.3 s
}

impl Metrics {
    fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("junokv"),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(seconds),
            requests_in_flight: Gauge::default(),
            client_connections: Gauge::default(),
            connections_refused: Counter::default(),
            replica_messages: ByKind::default(),
            backoffs: Counter::default(),
            read_hedges: Counter::default(),
            lease_writes: Family::default(),
            replica_requests: ByKind::default(),
            damaged_slots: Counter::default(),
            slots_removed: Counter::default(),
            slots_resealed: Counter::default(),
            replica_sync_repairs: Counter::default(),
            commit_batch_changes: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            fsync_seconds: seconds(),
            engine_bytes: Gauge::default(),
            pending_compaction_bytes: Gauge::default(),
            resident_memory_bytes: Gauge::default(),
            engines: Mutex::new(Vec::new()),
        };
        let r = &mut m.registry;
        r.register(
            "proxy_requests",
            "Client requests answered, by operation and status",
            m.requests.clone(),
        );
        r.register_with_unit(
            "proxy_request_duration",
            "Time from a request's arrival to its answer",
            Unit::Seconds,
            m.request_seconds.clone(),
        );
        r.register(
            "proxy_requests_in_flight",
            "Client requests being handled",
            m.requests_in_flight.clone(),
        );
        r.register(
            "proxy_client_connections",
            "Open client connections",
            m.client_connections.clone(),
        );
        r.register(
            "proxy_connections_refused",
            "Client connections closed on arrival: the proxy was at max_connections",
            m.connections_refused.clone(),
        );
        r.register(
            "proxy_replica_messages",
            "Protocol messages sent to storage servers, by kind (read, prepare, accept, purge)",
            m.replica_messages.family.clone(),
        );
        r.register(
            "proxy_backoffs",
            "Rounds pre-empted by another proxy's ballot and retried after a back-off",
            m.backoffs.clone(),
        );
        r.register(
            "proxy_read_hedges",
            "Reads that asked a quorum of replicas and, finding them slow to answer, asked \
             the rest",
            m.read_hedges.clone(),
        );
        r.register(
            "proxy_lease_writes",
            "One-round-trip writes (on a lease), by outcome: taken by a quorum, or refused \
             because another proxy wrote the key since (then retried through both phases)",
            m.lease_writes.clone(),
        );
        r.register(
            "storage_requests",
            "Protocol messages a storage server handled, by kind",
            m.replica_requests.family.clone(),
        );
        r.register(
            "storage_damaged_slots",
            "Stored slots found damaged or tampered with (repaired by reads and the sweeper)",
            m.damaged_slots.clone(),
        );
        r.register(
            "storage_slots_removed",
            "Slots removed: dead records purged and promise-only slots forgotten",
            m.slots_removed.clone(),
        );
        r.register(
            "storage_slots_resealed",
            "Slots written again to be sealed with the newest data key",
            m.slots_resealed.clone(),
        );
        r.register(
            "storage_replica_sync_repairs",
            "Keys whose replicas disagreed, found by comparing the replicas' key lists after \
             a sweep, and read from every replica to repair them",
            m.replica_sync_repairs.clone(),
        );
        r.register(
            "storage_commit_batch_changes",
            "Changes written by one group commit (one fsync)",
            m.commit_batch_changes.clone(),
        );
        r.register_with_unit(
            "storage_fsync_duration",
            "Time of one durable engine write",
            Unit::Seconds,
            m.fsync_seconds.clone(),
        );
        r.register_with_unit(
            "storage_engine_size",
            "Bytes the storage engines hold (RocksDB: SST files and memtables)",
            Unit::Bytes,
            m.engine_bytes.clone(),
        );
        r.register_with_unit(
            "storage_pending_compaction",
            "Bytes RocksDB estimates its compactions still have to rewrite",
            Unit::Bytes,
            m.pending_compaction_bytes.clone(),
        );
        r.register_with_unit(
            "process_resident_memory",
            "Resident memory of the process",
            Unit::Bytes,
            m.resident_memory_bytes.clone(),
        );
        m
    }

    /// One-round-trip writes so far: (taken by a quorum, refused).
    pub fn lease_writes(&self) -> (u64, u64) {
        let count = |outcome| {
            self.lease_writes
                .get_or_create(&OutcomeLabel { outcome })
                .get()
        };
        (count("taken"), count("refused"))
    }

    /// Reports `engine`'s size at every scrape while it is open.
    pub fn watch_engine(&self, engine: &Arc<dyn Engine>) {
        let mut engines = self.engines.lock().unwrap();
        engines.retain(|e| e.strong_count() > 0);
        engines.push(Arc::downgrade(engine));
    }

    /// Every metric in Prometheus' text format, the gauges read at scrape time
    /// refreshed first.
    pub fn encode(&self) -> String {
        let (mut size, mut pending) = (0u64, 0u64);
        for engine in self
            .engines
            .lock()
            .unwrap()
            .iter()
            .filter_map(Weak::upgrade)
        {
            let stats = engine.stats();
            size += stats.size_bytes;
            pending += stats.pending_compaction_bytes;
        }
        self.engine_bytes.set(size as i64);
        self.pending_compaction_bytes.set(pending as i64);
        self.resident_memory_bytes
            .set(resident_memory_bytes() as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// A client operation's label.
pub fn op_name(op: OpCode) -> &'static str {
    match op {
        OpCode::Nop => "nop",
        OpCode::Create => "create",
        OpCode::Get => "get",
        OpCode::Update => "update",
        OpCode::Set => "set",
        OpCode::Destroy => "destroy",
        OpCode::UdfGet | OpCode::UdfSet | OpCode::Other(_) => "other",
    }
}

/// The labels of the internal messages, in [`kind_index`]'s order.
const KINDS: [&str; 11] = [
    "read",
    "read_ballot",
    "prepare",
    "accept",
    "purge",
    "forget",
    "node_status",
    "copy",
    "list_keys",
    "read_shard",
    "shard_digest",
];

fn kind_index(req: &ReplicaRequest) -> usize {
    match req {
        ReplicaRequest::Read { .. } => 0,
        ReplicaRequest::ReadBallot { .. } => 1,
        ReplicaRequest::Prepare { .. } => 2,
        ReplicaRequest::Accept { .. } => 3,
        ReplicaRequest::Purge { .. } => 4,
        ReplicaRequest::Forget { .. } => 5,
        ReplicaRequest::Node(NodeRequest::Status) => 6,
        ReplicaRequest::Copy { .. } => 7,
        ReplicaRequest::Node(NodeRequest::ListKeys { .. }) => 8,
        ReplicaRequest::Node(NodeRequest::ReadShard { .. }) => 9,
        ReplicaRequest::Node(NodeRequest::ShardDigest { .. }) => 10,
    }
}

/// An internal message's label.
pub fn kind_name(req: &ReplicaRequest) -> &'static str {
    KINDS[kind_index(req)]
}

/// A counter per kind of internal message, each looked up in its family once: a
/// family's lookup (a lock and a hash of the label) cost more than the count, and a
/// set counts six messages.
pub struct ByKind {
    family: Family<KindLabel, Counter>,
    counters: [Counter; KINDS.len()],
}

impl Default for ByKind {
    fn default() -> Self {
        let family = Family::<KindLabel, Counter>::default();
        let counters = KINDS.map(|kind| family.get_or_create(&KindLabel { kind }).clone());
        ByKind { family, counters }
    }
}

impl ByKind {
    /// The counter of `req`'s kind.
    pub fn of(&self, req: &ReplicaRequest) -> &Counter {
        &self.counters[kind_index(req)]
    }

    /// The count of the kind labelled `kind` (0 for a label no message has).
    pub fn count(&self, kind: &str) -> u64 {
        KINDS
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.counters[i].get())
    }
}

/// From `/proc/self/statm` (0 where there is none).
fn resident_memory_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}
