//! The storage server's replica: one task that owns every key's slot, applies
//! messages in arrival order with [`crate::replica::step`], and releases each reply
//! only once everything it depends on is durable.

use super::durability_check::{self, Expect};
use super::group_commit::{Changes, GroupCommit};
use super::shard_digest::{digest_of, ShardDigests};
use crate::at_rest::{Fingerprint, KeyId, Keyring, SlotCodec, Unreadable};
use crate::bounded::BoundedMap;
use crate::engine::{Change, Engine, EngineKey};
use crate::fault::{bug, Bug};
use crate::key::StoreKey;
use crate::protocol::RequestId;
use crate::record::{Accepted, Ballot, Slot};
use crate::replica::{
    promise_at_most, step, Bounds, NodeInfo, NodeRequest, ReplicaReply, ReplicaRequest, Stored,
    Write,
};
use crate::rpc::encode_frame;
use smallvec::smallvec;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Engine keys of the replica's own state start with this (shards use the first two
/// bytes, and never reach 0xFFFF). An in-memory engine keeps these on disk.
pub const META_PREFIX: &[u8] = b"\xff\xff\x00";
/// Engine key of the replica-wide ballot floor.
const FLOOR_KEY: &[u8] = b"\xff\xff\x00floor";
/// Engine key of the replica-wide ballot ceiling.
const CEILING_KEY: &[u8] = b"\xff\xff\x00ceiling";
/// Engine key present once an in-memory replica has started: a later start has lost
/// whatever records it held.
const STARTED_KEY: &[u8] = b"\xff\xff\x00started";
/// Engine key of the fingerprints of every data key this store has sealed with.
const DATA_KEYS_KEY: &[u8] = b"\xff\xff\x00datakeys";
/// Engine key of the epoch of the newest map the server has served.
const ADOPTED_KEY: &[u8] = b"\xff\xff\x00adopted";
/// Memory for decoded durable slots: a hot key's read skips the engine's lookup (a
/// memtable search through every version of it) and the unsealing.
const SLOT_CACHE_BYTES: usize = 64 << 20;
/// How far the persisted ceiling runs ahead of the highest ballot stored, so that it
/// is rewritten once in this many ballots rather than with every write.
const CEILING_STEP: u64 = 1 << 16;

/// Whether an engine key holds a key's slot (rather than the replica's own state).
pub fn is_record_key(key: &[u8]) -> bool {
    !key.starts_with(META_PREFIX)
}

/// Where a reply goes: the request's id and its connection's outgoing frames.
pub struct ReplyTo {
    pub id: u64,
    pub out: mpsc::UnboundedSender<Vec<u8>>,
}

impl ReplyTo {
    fn send(self, reply: &ReplicaReply) {
        // A closed connection has nobody left to tell.
        let _ = self.out.send(encode_frame(self.id, reply));
    }
}

/// What the replica task is asked to do.
// (Nearly every envelope is a request: boxing it would cost an allocation each.)
#[allow(clippy::large_enum_variant)]
pub enum Envelope {
    /// A protocol message, the client request it serves (for log lines) and the epoch
    /// of the sender's map (none: this server's own sweeper), and where its reply goes.
    Request(ReplicaRequest, (Option<[u8; 16]>, Option<u64>), ReplyTo),
    /// Write these keys' slots again, unchanged, so that they are sealed with the
    /// newest data key (sent by the sweeper after a key rotation, a page at a time);
    /// the sender hears once they are on their way to disk.
    Reseal(Vec<Vec<u8>>, tokio::sync::oneshot::Sender<()>),
    /// Whether the replica counts this key's slot as damaged (has forgotten it, or
    /// holds bytes that fail their checksum): asked by the recovery of a restarted
    /// in-memory replica.
    IsDamaged(Vec<u8>, tokio::sync::oneshot::Sender<bool>),
    /// Recovery is done (see `recovery.rs`): a missing slot is absent again, behind a
    /// floor above every ballot this replica may have promised before it restarted.
    Recovered,
    /// The sweeper found this key's slot damaged on disk: the replica reads it from
    /// disk again (and answers as a damaged slot, which the read path repairs) rather
    /// than from what it decoded before the damage.
    Uncache(Vec<u8>),
    /// From now on, serve only senders on this map, and only about the shards it
    /// places here; drop whatever is held of the others.
    Own(Ownership),
}

/// The shards a server holds in the map of one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    pub epoch: u64,
    /// By shard number.
    pub shards: Vec<bool>,
    /// The shards it joins in this map (a joint map naming it as a new acceptor of
    /// them, not an old one), by shard number.
    pub joining: Vec<bool>,
}

/// A reply waiting for a write to be durable: about a key of `shard`, or (none) about
/// the copies of a map change.
struct Held {
    shard: Option<u16>,
    reply_to: ReplyTo,
    reply: ReplicaReply,
    expect: Option<Expect>,
}

struct Replica {
    /// The server's address (in logs, and to the simulator's hooks).
    name: String,
    engine: Arc<dyn Engine>,
    codec: SlotCodec,
    commit: GroupCommit,
    bounds: Bounds,
    /// Set while an in-memory replica that restarted without its records has not
    /// recovered them: a missing slot may be one it forgot, so it counts as damaged
    /// (shared with the server, whose readiness tells it).
    recovering: Arc<AtomicBool>,
    /// The ceiling at the start: what a forgotten slot may have promised at most
    /// (the live ceiling rises as repairs land, and a forgotten slot must not refuse
    /// them for it).
    start_ceiling: u64,
    /// Slots written but maybe not yet durable, with the sequence number of the write.
    dirty: HashMap<EngineKey, (Option<Arc<Slot>>, u64)>,
    /// The digests of shards asked for so far, kept up to date by every write.
    digests: ShardDigests,
    /// Durable slots recently read or written, decoded (none while an in-memory
    /// replica recovers, whose missing slots are not absent).
    cache: BoundedMap<EngineKey, Option<Arc<Slot>>>,
    seq: u64,
    /// Replies held until the write they depend on is durable, by its sequence number
    /// and then the order they came in (with what the simulator checks is on disk as
    /// they leave).
    held: BTreeMap<(u64, u64), Held>,
    /// How many replies have been held: the second half of the next one's place.
    holds: u64,
    /// The shards this server holds, once it knows (see [`Envelope::Own`]); until
    /// then it serves any.
    owns: Option<Ownership>,
    /// Shards it no longer holds whose slots are being dropped: the key to go on after
    /// and the slots dropped so far.
    dropping: BTreeMap<u16, (Vec<u8>, usize)>,
    /// The epoch of the newest map it has served (as persisted: it survives restarts),
    /// and the sequence number of the write that persists it.
    adopted: (Option<u64>, u64),
}

/// The replica task as started.
pub struct Started {
    /// Where its [`Envelope`]s go. The task ends, having released the engine, once
    /// every sender is dropped.
    pub inbox: mpsc::UnboundedSender<Envelope>,
    pub task: tokio::task::JoinHandle<()>,
    /// While set, it is an in-memory replica that ran before and lost its records: it
    /// needs a recovery (see `recovery.rs`) before it serves missing keys as absent.
    /// Cleared once recovered.
    pub recovering: Arc<AtomicBool>,
}

/// Starts the replica task.
pub fn start(engine: Arc<dyn Engine>, codec: SlotCodec, name: String) -> std::io::Result<Started> {
    if let Some(keys) = codec.keyring() {
        record_data_keys(&*engine, &keys).map_err(std::io::Error::other)?;
    }
    let bounds = load_bounds(&*engine, &codec)?;
    let adopted = (engine.get(ADOPTED_KEY)?)
        .map(|b| bincode::deserialize(&b).map_err(std::io::Error::other))
        .transpose()?;
    let recovering = engine.volatile() && engine.get(STARTED_KEY)?.is_some();
    if engine.volatile() && !recovering {
        engine.write(&[(STARTED_KEY.into(), Some(Vec::new()))], true)?;
    }
    if recovering {
        tracing::warn!(server = %name, "in-memory replica restarted without its records: keys it lacks count as damaged until it has recovered");
    }
    let recovering = Arc::new(AtomicBool::new(recovering));
    let (commit, committer) = GroupCommit::start(engine.clone(), 4096, name.clone());
    let mut durable = commit.subscribe();
    let mut replica = Replica {
        name,
        engine,
        codec,
        commit,
        bounds,
        recovering: recovering.clone(),
        start_ceiling: bounds.ceiling,
        dirty: HashMap::new(),
        digests: ShardDigests::default(),
        cache: BoundedMap::new(SLOT_CACHE_BYTES),
        seq: 0,
        held: BTreeMap::new(),
        holds: 0,
        owns: None,
        dropping: BTreeMap::new(),
        adopted: (adopted, 0),
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Envelope>();
    let task = tokio::spawn(async move {
        // A page of a dropped shard every 25 ms (about 10,000 slots a second): removing
        // them competes with client writes for the disk.
        let mut dropping = tokio::time::interval(std::time::Duration::from_millis(25));
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Envelope::Request(req, (request_id, epoch), reply_to)) => {
                        replica.handle(req, (RequestId(request_id), epoch), reply_to)
                    }
                    Some(Envelope::Reseal(keys, done)) => {
                        keys.into_iter().for_each(|key| replica.reseal(key));
                        let _ = done.send(());
                    }
                    Some(Envelope::IsDamaged(key, answer)) => {
                        let damaged = matches!(
                            replica.lookup(&key),
                            Ok(Found::Slot(Stored::Damaged { .. }, _) | Found::Corrupt(..))
                        );
                        let _ = answer.send(damaged);
                    }
                    Some(Envelope::Recovered) => replica.recovered(),
                    Some(Envelope::Uncache(key)) => {
                        replica.cache.remove(key.as_slice());
                    }
                    Some(Envelope::Own(owns)) => replica.own(owns),
                    None => break,
                },
                changed = durable.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    replica.release();
                }
                _ = dropping.tick(), if !replica.dropping.is_empty() => replica.drop_some(),
            }
        }
        drop(replica);
        let _ = committer.await;
    });
    Ok(Started {
        inbox: tx,
        task,
        recovering,
    })
}

impl Ownership {
    /// What `map` places on the node `me` (its address or id in the map, or of no
    /// node in it: then nothing), counting the shards it is leaving or joining while
    /// the map changes.
    pub fn of(map: &crate::cluster::ShardMap, me: &str) -> Self {
        let is_me = |n: &crate::cluster::Node| n.addr == me || n.id == me;
        let (mut shards, mut joining) = (Vec::new(), Vec::new());
        for shard in 0..map.num_shards {
            let p = map.placement(shard);
            let in_layout =
                |l: usize| (p.layouts.get(l)).is_some_and(|l| l.iter().any(|i| is_me(p.nodes[*i])));
            shards.push(p.nodes.iter().any(|n| is_me(n)));
            joining.push(p.layouts.len() > 1 && in_layout(0) && !in_layout(1));
        }
        Ownership {
            epoch: map.epoch,
            shards,
            joining,
        }
    }

    fn holds(&self, shard: u16) -> bool {
        self.shards
            .get(usize::from(shard))
            .copied()
            .unwrap_or(false)
    }

    fn joins(&self, shard: u16) -> bool {
        (self.joining.get(usize::from(shard)).copied()).unwrap_or(false)
    }
}

/// A slot as [`Replica::lookup`] found it.
enum Found {
    /// Stored, forgotten in a restart, or not yet durable up to the sequence number.
    Slot(Stored, u64),
    /// Its bytes failed their checksum (or decryption), for this reason: damaged.
    Corrupt(Stored, String),
}

/// Why [`Replica::lookup`] found nothing to go on.
enum Unfound {
    /// The slot's bytes name a data key this server does not have.
    Unreadable(String),
    /// The replica or its engine failed.
    Failed(String),
}

/// The replica-wide bounds as persisted. A store without a ceiling (written before
/// there was one) gets one from the highest ballot it holds.
fn load_bounds(engine: &dyn Engine, codec: &SlotCodec) -> std::io::Result<Bounds> {
    let ballot = |key| -> std::io::Result<Option<Ballot>> {
        engine
            .get(key)?
            .map(|b| bincode::deserialize(&b).map_err(std::io::Error::other))
            .transpose()
    };
    let floor = ballot(FLOOR_KEY)?.unwrap_or_default();
    let ceiling = match ballot(CEILING_KEY)? {
        Some(c) => c.counter,
        None => {
            let mut highest = floor.counter;
            crate::engine::for_each(engine, |key, value| {
                if let (true, Ok(d)) = (is_record_key(key), codec.decode(key, value)) {
                    highest = highest.max(d.slot.promised.counter);
                }
            })?;
            highest.saturating_add(CEILING_STEP)
        }
    };
    Ok(Bounds { floor, ceiling })
}

/// Checks `keys` against the fingerprints of the data keys this store was sealed with,
/// and records the new ones before they seal anything: a different key under an id
/// the store knows would make every record it sealed look tampered with (and be
/// "repaired" away), so it is refused here, at start or reload.
pub fn record_data_keys(engine: &dyn Engine, keys: &Keyring) -> Result<(), String> {
    let mut known: BTreeMap<KeyId, Fingerprint> = match engine.get(DATA_KEYS_KEY) {
        Ok(None) => BTreeMap::new(),
        Ok(Some(b)) => {
            bincode::deserialize(&b).map_err(|e| format!("stored data key fingerprints: {e}"))?
        }
        Err(e) => return Err(format!("reading data key fingerprints: {e}")),
    };
    let mut new = false;
    for (id, print) in keys.fingerprints() {
        match known.insert(id, print) {
            Some(old) if old != print => {
                return Err(format!(
                    "data key {id} is not the key {id} this store was sealed with: \
                     records sealed with it could not be opened"
                ))
            }
            Some(_) => {}
            None => new = true,
        }
    }
    if new {
        let bytes = bincode::serialize(&known).expect("fingerprints serialise");
        engine
            .write(&[(DATA_KEYS_KEY.into(), Some(bytes))], true)
            .map_err(|e| format!("recording data key fingerprints: {e}"))?;
    }
    Ok(())
}

impl Replica {
    /// Writes the slot of `key` again with the newest data key, unless a write to it
    /// is already on its way (which seals with the newest key anyway).
    fn reseal(&mut self, key: Vec<u8>) {
        if self.dirty.contains_key(key.as_slice()) || self.commit.has_failed() {
            return;
        }
        let Ok((stored, _)) = self.load(&key, &RequestId(None)) else {
            return;
        };
        if let Stored::Slot(Some(slot)) = &stored {
            crate::metrics::metrics().slots_resealed.inc();
            self.persist(key.into(), Write::Put(Slot::clone(slot)), &stored);
        }
    }

    /// Takes the map of `owns` (never one older than the map it has), dropping every
    /// shard it does not place here: a node that is no acceptor of a shard holds
    /// nothing of it, so that it joins again, if ever, as a new acceptor (with nothing
    /// accepted, which joint quorums and the catch-up of a move allow), never with
    /// records that missed the removal of a key meanwhile.
    fn own(&mut self, owns: Ownership) {
        if self.owns.as_ref().is_some_and(|o| o.epoch > owns.epoch) {
            return;
        }
        let shards = owns.shards.len() as u16;
        // A shard it joins in a map it has never served before: whatever it holds of it
        // is from an earlier tenure (a drop still under way, or one a crash cut short)
        // and goes now, before the map is served. The epoch is persisted behind the
        // removals, so a restart into the same map keeps what was accepted in it since.
        let first = self.adopted.0.is_none_or(|e| e < owns.epoch);
        let stale =
            |s: u16| owns.holds(s) && ((first && owns.joins(s)) || self.dropping.contains_key(&s));
        let wiped: Vec<u16> = (0..shards).filter(|s| stale(*s)).collect();
        for &shard in &wiped {
            durability_check::forget_shard(&self.name, shard);
            (self.dropping).insert(shard, (shard.to_be_bytes().to_vec(), 0));
            // (Until a page removes nothing: then the entry is gone, or the engine
            // failed a scan, which is logged.)
            while self.drop_page(shard) {}
            self.dropping.remove(&shard);
        }
        if first {
            self.seq += 1;
            let epoch = bincode::serialize(&owns.epoch).expect("an epoch serialises");
            (self.commit).submit(self.seq, smallvec![(ADOPTED_KEY.into(), Some(epoch))]);
            self.adopted = (Some(owns.epoch), self.seq);
        }
        // Slots exist only of shards held before (or, on the first map, whatever this
        // server kept from before it started).
        let held_before = |s: u16| self.owns.as_ref().is_none_or(|o| o.holds(s));
        let left: Vec<u16> = (0..shards)
            .filter(|s| !owns.holds(*s) && held_before(*s))
            .collect();
        for shard in left {
            durability_check::forget_shard(&self.name, shard);
            self.dropping
                .entry(shard)
                .or_insert((shard.to_be_bytes().to_vec(), 0));
        }
        // Replies still waiting for a write to a shard no longer served, or dropped just
        // now, will not tell of it: its slots are gone, or going, behind it.
        let epoch = owns.epoch;
        let gone = |s: u16| !owns.holds(s) || wiped.contains(&s);
        for held in self.held.values_mut() {
            if held.shard.is_some_and(gone) {
                (held.reply, held.expect) = (ReplicaReply::NotOwner { epoch }, None);
            }
        }
        tracing::info!(server = %self.name, epoch, shards = owns.shards.iter().filter(|h| **h).count(), "serving the map");
        self.owns = Some(owns);
        self.digests.clear();
    }

    /// Removes the next page of slots of a shard this server no longer holds (through
    /// group commit, behind every write already on its way), leaving the floor as it
    /// is. A page at a time, between requests: a node that leaves half its shards
    /// must go on serving the other half meanwhile. Returns whether it removed any.
    fn drop_page(&mut self, shard: u16) -> bool {
        const PAGE: usize = 256;
        let Some((after, dropped)) = self.dropping.get(&shard).cloned() else {
            return false;
        };
        let prefix = shard.to_be_bytes();
        let end = StoreKey::end_of_shard(shard);
        let page = match self.engine.scan(Some(&after), end.as_deref(), PAGE) {
            Ok(page) => page,
            Err(e) => {
                tracing::error!(server = %self.name, shard, error = %e, "dropping a shard this server no longer holds");
                return false;
            }
        };
        // (Keys of the shard sort together: the shard is their first two bytes.)
        let mut keys: Vec<EngineKey> = (page.into_iter().map(|(k, _)| k))
            .take_while(|k| k.starts_with(&prefix))
            .map(EngineKey::from)
            .collect();
        let more = keys.len() == PAGE;
        let next = keys.last().cloned();
        let written = self
            .dirty
            .iter()
            .filter(|(k, (slot, _))| k.starts_with(&prefix) && slot.is_some());
        keys.extend(written.map(|(k, _)| k.clone()));
        let removed = !keys.is_empty();
        let dropped = dropped + keys.len();
        if removed {
            self.seq += 1;
            let changes = keys.iter().map(|k| (k.clone(), None)).collect();
            self.commit.submit(self.seq, changes);
            for key in keys {
                self.dirty.insert(key, (None, self.seq));
            }
        }
        match (more, next) {
            (true, Some(next)) => {
                self.dropping.insert(shard, (next.to_vec(), dropped));
            }
            _ => {
                self.dropping.remove(&shard);
                if dropped > 0 {
                    tracing::info!(server = %self.name, shard, slots = dropped, "dropped a shard this server no longer holds");
                }
            }
        }
        removed
    }

    /// One page of slots of the shards being dropped (see [`Replica::drop_page`]),
    /// passing over up to a few dozen shards that turn out to hold none.
    fn drop_some(&mut self) {
        for _ in 0..64 {
            let first = self.dropping.keys().next().copied();
            match first {
                Some(shard) if !self.drop_page(shard) => continue,
                _ => return,
            }
        }
    }

    fn handle(
        &mut self,
        req: ReplicaRequest,
        (request, epoch): (RequestId, Option<u64>),
        reply_to: ReplyTo,
    ) {
        crate::metrics::metrics().replica_requests.of(&req).inc();
        let (key, shard) = match req {
            ReplicaRequest::Node(node) => {
                let reply = self.about_node(&node);
                return reply_to.send(&reply);
            }
            ReplicaRequest::Copy { records } => return self.copy(records, epoch, reply_to),
            ReplicaRequest::Accept { ref record, .. } if !record.tombstone && self.full() => {
                return reply_to.send(&ReplicaReply::Full)
            }
            ref req => {
                let key = req.key().expect("about a key");
                if let Some(epoch) = self.refuses(epoch, key.shard()) {
                    return reply_to.send(&ReplicaReply::NotOwner { epoch });
                }
                (key.shared_engine_key(), Some(key.shard()))
            }
        };
        let loaded = match self.load(&key, &request) {
            Ok(slot) => slot,
            Err(reason) => return reply_to.send(&ReplicaReply::Failed { reason }),
        };
        tracing::trace!(%request, ?req, before = ?match &loaded.0 { Stored::Slot(s) => Some(s.as_ref().map(|s| (s.promised, s.accepted.as_ref().map(|(b, r)| (*b, r.version, r.tombstone))))), Stored::Damaged { .. } => None }, "replica step");
        // (`step` takes the request: an accepted record moves into the slot.)
        let accept = matches!(req, ReplicaRequest::Accept { .. });
        let purge = match req {
            ReplicaRequest::Purge { ballot, .. } => Some(ballot),
            _ => None,
        };
        let (write, reply) = step(&loaded.0, self.bounds, req);
        tracing::trace!(%request, ?reply, "replica stepped");
        match (&write, purge) {
            (Some(put @ Write::Put(_)), _) if accept => {
                durability_check::check_accept(&self.name, &key, put)
            }
            (Some(Write::Purge(_)), Some(ballot)) => {
                crate::fault::check_purge(&self.name, &key, ballot)
            }
            _ => {}
        }
        let expect = match (&write, &loaded.0) {
            (Some(w), _) => durability_check::of_write(&key, w),
            // The reply may describe a write still in flight.
            (None, Stored::Slot(Some(slot))) if loaded.1 > 0 => {
                durability_check::of_slot(&key, slot)
            }
            (None, _) => None,
        };
        let wait_for = match write {
            Some(w) => self.persist(key, w, &loaded.0),
            None => loaded.1, // the reply may describe a write not yet durable
        };
        let promise = matches!(reply, ReplicaReply::Promise { .. });
        if wait_for <= self.commit.durable() || (promise && bug(Bug::PromiseBeforeDurable)) {
            self.send(reply_to, &reply, expect.as_ref());
        } else {
            let held = Held {
                shard,
                reply_to,
                reply,
                expect,
            };
            self.hold(wait_for, held);
        }
    }

    /// The answer to a request about the server itself.
    fn about_node(&mut self, req: &NodeRequest) -> ReplicaReply {
        match req {
            NodeRequest::Status => {
                let stats = self.engine.stats();
                ReplicaReply::Node(NodeInfo {
                    version: env!("CARGO_PKG_VERSION").into(),
                    engine_bytes: stats.size_bytes,
                    pending_compaction_bytes: stats.pending_compaction_bytes,
                    recovering: self.recovering(),
                    epoch: self.owns.as_ref().map(|o| o.epoch),
                })
            }
            NodeRequest::ListKeys {
                after,
                shard,
                limit,
            } => {
                let limit = (*limit).clamp(1, 4096) as usize;
                match self.slots_after(after.as_ref(), *shard, limit) {
                    Ok(page) => ReplicaReply::Keys {
                        keys: (page.into_iter())
                            .map(|(k, slot)| (k, slot.and_then(|s| s.accepted_ballot())))
                            .collect(),
                    },
                    Err(e) => ReplicaReply::Failed { reason: e },
                }
            }
            NodeRequest::ReadShard {
                shard,
                after,
                limit_bytes,
            } => match self.read_shard(*shard, after.clone(), *limit_bytes as usize) {
                Ok(records) => ReplicaReply::Records { records },
                Err(e) => ReplicaReply::Failed { reason: e },
            },
            NodeRequest::ShardDigest { shard } => match self.shard_digest(*shard) {
                Ok(digest) => ReplicaReply::Digest {
                    digest: digest.to_be_bytes(),
                },
                Err(e) => ReplicaReply::Failed { reason: e },
            },
        }
    }

    /// The digest of `shard` (see [`ShardDigests`]): kept, or computed now.
    fn shard_digest(&mut self, shard: u16) -> Result<u128, String> {
        if let Some(kept) = self.digests.get(shard) {
            #[cfg(madsim)]
            self.check_digest(shard, kept);
            return Ok(kept);
        }
        let (digest, readable) = self.compute_digest(shard)?;
        // Not kept for a shard being dropped (its pages go without a write to update
        // it), nor past a damaged slot: it counted for nothing, and the digest differs
        // from the other replicas' until a repair (which the write path may not see as
        // one: the slot's cached copy may still be sound) has rewritten it.
        if readable && !self.dropping.contains_key(&shard) {
            self.digests.insert(shard, digest);
        }
        Ok(digest)
    }

    /// The digest of `shard` from its slots, each as written (durable or on its way),
    /// and whether every one of them could be read (a damaged slot counts for none).
    fn compute_digest(&self, shard: u16) -> Result<(u128, bool), String> {
        const PAGE: usize = 1024;
        let ballot_of = |slot: Option<&Slot>| slot?.accepted_ballot();
        let mut written: BTreeMap<EngineKey, Option<Ballot>> = (self.dirty.iter())
            .filter(|(k, _)| StoreKey::shard_in(k) == Some(shard))
            .map(|(k, (slot, _))| (k.clone(), ballot_of(slot.as_deref())))
            .collect();
        let (mut held, mut after, mut readable) = (Vec::new(), None, true);
        loop {
            let page = self.slots_after(after.as_ref(), Some(shard), PAGE)?;
            let end = page.len() < PAGE;
            after = page.last().map(|(k, _)| k.clone());
            for (key, slot) in page {
                let key = key.shared_engine_key();
                let ballot = match written.remove(&key) {
                    Some(ballot) => ballot,
                    None => {
                        // (A stored slot that is not on its way decodes, or is damaged.)
                        readable &= slot.is_some();
                        ballot_of(slot.as_ref())
                    }
                };
                held.extend(ballot.map(|b| (key, b)));
            }
            if end {
                break;
            }
        }
        held.extend(written.into_iter().filter_map(|(k, b)| Some((k, b?))));
        let digest = digest_of(held.iter().map(|(k, b)| (&**k, *b)));
        Ok((digest, readable))
    }

    /// In the simulator, every kept digest served is compared with one computed
    /// afresh: the updates write by write must add up to what is held (unless a slot
    /// went bad on the disk under it since, which no write told it of).
    #[cfg(madsim)]
    fn check_digest(&self, shard: u16, kept: u128) {
        if let Ok((fresh, true)) = self.compute_digest(shard) {
            if fresh != kept {
                crate::fault::invariant_violated(format_args!(
                    "{} kept digest {kept:032x} of shard {shard} but its slots give {fresh:032x}",
                    self.name
                ));
            }
        }
    }

    /// The server's epoch, if it must refuse a sender on the map of `epoch` (none: its
    /// own sweeper) about `shard`: only senders on this very map, since quorums of
    /// maps two changes apart may miss each other (DESIGN §12), and only its shards.
    fn refuses(&self, epoch: Option<u64>, shard: u16) -> Option<u64> {
        let owns = self.owns.as_ref()?;
        let older_let_in = |e: u64| e < owns.epoch && bug(Bug::ServesOlderMaps);
        let other_map = epoch.is_some_and(|e| e != owns.epoch && !older_let_in(e));
        (other_map || !owns.holds(shard)).then_some(owns.epoch)
    }

    /// Takes copied records as late Accepts of their ballots (see
    /// [`ReplicaRequest::Copy`]), replying once they are durable. A late Accept of a
    /// real proposal, under the acceptor's own promise, is a delivery the protocol
    /// already allows; only the joint map's senders may make it (the sender is refused
    /// once this server serves the final map, whose quorums need not meet the old
    /// proposer's).
    fn copy(&mut self, records: Vec<(StoreKey, Accepted)>, epoch: Option<u64>, reply_to: ReplyTo) {
        // Even an empty copy: it tells the driver this server serves the joint map.
        let other_map = (self.owns.as_ref()).filter(|o| epoch != Some(o.epoch));
        if let Some(owns) = other_map {
            let epoch = owns.epoch;
            return reply_to.send(&ReplicaReply::NotOwner { epoch });
        }
        // (Not before the map is durably this server's: see `own`.)
        let (mut taken, mut wait_for) = (0, self.adopted.1);
        for (key, (ballot, record)) in records {
            if let Some(epoch) = self.refuses(epoch, key.shard()) {
                return reply_to.send(&ReplicaReply::NotOwner { epoch });
            }
            if !record.tombstone && self.full() {
                break;
            }
            let bytes = key.shared_engine_key();
            let Ok((stored, seq)) = self.load(&bytes, &RequestId(None)) else {
                continue;
            };
            wait_for = wait_for.max(seq);
            let write = if bug(Bug::CopyOverPromise) {
                let promised = match &stored {
                    Stored::Slot(Some(slot)) => slot.promised.max(ballot),
                    _ => ballot,
                };
                let accepted = Some((ballot, record));
                Some(Write::Put(Slot { promised, accepted }))
            } else {
                let accept = ReplicaRequest::Accept {
                    key,
                    ballot,
                    record: Arc::new(record),
                    next: None,
                };
                step(&stored, self.bounds, accept).0
            };
            if let Some(write) = write {
                durability_check::check_accept(&self.name, &bytes, &write);
                taken += 1;
                wait_for = self.persist(bytes, write, &stored);
            }
        }
        let reply = ReplicaReply::Copied { taken };
        if wait_for <= self.commit.durable() {
            return reply_to.send(&reply);
        }
        let held = Held {
            shard: None,
            reply_to,
            reply,
            expect: None,
        };
        self.hold(wait_for, held);
    }

    /// Keeps `held` until writes up to `wait_for` are durable.
    fn hold(&mut self, wait_for: u64, held: Held) {
        self.holds += 1;
        self.held.insert((wait_for, self.holds), held);
    }

    /// Up to `limit` slots after `after` (of `shard` only, if named) as they are
    /// durable: `None` for one with a write on its way (a put or a removal: in flux)
    /// or failing its checksum. A move counts only durable records on the nodes it
    /// fills, and reads every key in flux.
    fn slots_after(
        &self,
        after: Option<&StoreKey>,
        shard: Option<u16>,
        limit: usize,
    ) -> Result<Vec<(StoreKey, Option<Slot>)>, String> {
        // (Two bytes sort before every key of their shard, and after the one before.)
        let after = (after.map(StoreKey::to_bytes)).or(shard.map(|s| s.to_be_bytes().to_vec()));
        let end = shard.and_then(StoreKey::end_of_shard);
        let page = (self.engine.scan(after.as_deref(), end.as_deref(), limit))
            .map_err(|e| format!("engine scan: {e}"))?;
        let in_range =
            |k: &[u8]| is_record_key(k) && shard.is_none_or(|s| StoreKey::shard_in(k) == Some(s));
        Ok((page.into_iter())
            .take_while(|(k, _)| in_range(k))
            .filter_map(|(k, bytes)| {
                let slot = match self.dirty.contains_key(k.as_slice()) {
                    true => None,
                    false => self.codec.decode(&k, &bytes).ok().map(|d| d.slot),
                };
                Some((StoreKey::from_bytes(&k)?, slot))
            })
            .collect())
    }

    /// The records accepted of `shard` after `after`, up to about `limit` bytes.
    fn read_shard(
        &self,
        shard: u16,
        mut after: Option<StoreKey>,
        limit: usize,
    ) -> Result<Vec<(StoreKey, Accepted)>, String> {
        const PAGE: usize = 256;
        let (mut records, mut bytes) = (Vec::new(), 0);
        loop {
            let page = self.slots_after(after.as_ref(), Some(shard), PAGE)?;
            let end = page.len() < PAGE;
            after = page.last().map(|(k, _)| k.clone());
            for (key, slot) in page {
                if bytes >= limit {
                    return Ok(records);
                }
                if let Some((ballot, record)) = slot.and_then(|s| s.accepted) {
                    bytes += key.key().len() + record.value.len() + 64;
                    records.push((key, (ballot, record)));
                }
            }
            if end || bytes >= limit {
                return Ok(records);
            }
        }
    }

    /// Whether the engine is at its size limit (an in-memory engine's cap), where
    /// new records are refused until eviction makes room.
    fn full(&self) -> bool {
        (self.engine.size_limit()).is_some_and(|limit| self.engine.stats().size_bytes >= limit)
    }

    /// Ends the recovery of a restarted in-memory replica: every ballot it may have
    /// promised before is at most its ceiling, which becomes the floor.
    fn recovered(&mut self) {
        if !self.recovering.swap(false, Ordering::Relaxed) {
            return;
        }
        self.bounds.floor = (self.bounds.floor).max(promise_at_most(self.start_ceiling));
        self.seq += 1;
        (self.commit).submit(
            self.seq,
            smallvec![ballot_entry(FLOOR_KEY, self.bounds.floor)],
        );
        tracing::info!(server = %self.name, floor = ?self.bounds.floor, "in-memory replica recovered: keys it lacks are absent again");
        #[cfg(madsim)]
        crate::fault::recovered(&self.name, &|key| self.accepted_ballot(key));
    }

    /// The ballot this replica accepted for `key`, written or on its way to the
    /// engine (what the simulator's recovery oracle checks).
    #[cfg(madsim)]
    fn accepted_ballot(&self, key: &[u8]) -> Option<crate::record::Ballot> {
        match self.dirty.get(key) {
            Some((slot, _)) => slot.as_ref()?.accepted_ballot(),
            None => (self.codec.decode(key, &self.engine.get(key).ok()??).ok()?)
                .slot
                .accepted_ballot(),
        }
    }

    fn recovering(&self) -> bool {
        self.recovering.load(Ordering::Relaxed)
    }

    /// Sends a reply (the simulator first checks that what it says is on disk).
    fn send(&self, reply_to: ReplyTo, reply: &ReplicaReply, expect: Option<&Expect>) {
        if let Some(expect) = expect {
            durability_check::verify(&self.name, &self.codec, FLOOR_KEY, expect);
        }
        reply_to.send(reply);
    }

    /// Sends the replies whose writes are now durable (or, after a failed write, a
    /// failure to every held reply), and stops caching slots that are durable (reads
    /// of them go to the engine, so that what is on disk is what is served).
    fn release(&mut self) {
        let failed = self.commit.has_failed();
        let durable = self.commit.durable();
        let written: Vec<_> = (self.dirty)
            .extract_if(|_, (_, seq)| *seq <= durable)
            .collect();
        if !failed {
            for (key, (slot, _)) in written {
                self.cache_slot(key, slot);
            }
        }
        let still_held = if failed {
            BTreeMap::new()
        } else {
            self.held.split_off(&(durable + 1, 0))
        };
        for Held {
            reply_to,
            reply,
            expect,
            ..
        } in std::mem::replace(&mut self.held, still_held).into_values()
        {
            if failed {
                reply_to.send(&ReplicaReply::Failed {
                    reason: "durable write failed".into(),
                });
            } else {
                self.send(reply_to, &reply, expect.as_ref());
            }
        }
    }

    /// What is stored for `key` and the sequence number it must be durable up to, for
    /// `request` (named in the log lines about what was found).
    fn load(&mut self, key: &[u8], request: &RequestId) -> Result<(Stored, u64), String> {
        let shown = || String::from_utf8_lossy(key).into_owned();
        match self.lookup(key) {
            Ok(Found::Slot(stored, seq)) => Ok((stored, seq)),
            Ok(Found::Corrupt(stored, e)) => {
                crate::metrics::metrics().damaged_slots.inc();
                tracing::warn!(%request, key = ?shown(), error = %e, "damaged slot: awaiting repair");
                Ok((stored, 0))
            }
            Err(Unfound::Unreadable(e)) => {
                tracing::error!(%request, key = ?shown(), error = %e, "unreadable slot");
                Err(e)
            }
            Err(Unfound::Failed(e)) => Err(e),
        }
    }

    /// What is stored for `key`, without a word about it: [`Replica::load`] logs and
    /// counts what it finds; recovery, asking again and again whether a slot is still
    /// damaged, must not.
    fn lookup(&mut self, key: &[u8]) -> Result<Found, Unfound> {
        if self.commit.has_failed() {
            return Err(Unfound::Failed(
                "replica stopped after a failed durable write".into(),
            ));
        }
        if let Some((slot, seq)) = self.dirty.get(key) {
            return Ok(Found::Slot(Stored::Slot(slot.clone()), *seq));
        }
        if let Some(slot) = self.cache.get(key) {
            #[cfg(madsim)]
            self.check_cached(key, slot);
            return Ok(Found::Slot(Stored::Slot(slot.clone()), 0));
        }
        match self.engine.get(key) {
            Ok(None) if self.recovering() && !bug(Bug::ForgottenAsAbsent) => {
                // A key repaired since the restart may have been promised above the
                // start ceiling, then purged: the purge left that promise in the floor.
                let ceiling = match bug(Bug::RecoveryForgetsPurgedPromise) {
                    true => self.start_ceiling,
                    false => self.start_ceiling.max(self.bounds.floor.counter),
                };
                Ok(Found::Slot(Stored::Damaged { ceiling }, 0))
            }
            Ok(None) => {
                self.cache_slot(key.into(), None);
                Ok(Found::Slot(Stored::Slot(None), 0))
            }
            Ok(Some(bytes)) => match self.codec.decode(key, &bytes) {
                Ok(decoded) => {
                    let slot = Arc::new(decoded.slot);
                    self.cache_slot(key.into(), Some(slot.clone()));
                    Ok(Found::Slot(Stored::Slot(Some(slot)), 0))
                }
                Err(Unreadable::Damaged(e)) => {
                    let ceiling = self.bounds.ceiling;
                    Ok(Found::Corrupt(Stored::Damaged { ceiling }, e.to_string()))
                }
                Err(e @ Unreadable::NoKey(_)) => Err(Unfound::Unreadable(e.to_string())),
            },
            Err(e) => Err(Unfound::Failed(format!("engine read: {e}"))),
        }
    }

    /// Keeps a durable slot decoded, at roughly what it costs in memory (not while an
    /// in-memory replica recovers: a slot it lacks then is not an absent one). A slot
    /// of a shard it no longer holds (being dropped) only leaves the cache: dropping a
    /// shard must not push the hot slots out.
    fn cache_slot(&mut self, key: EngineKey, slot: Option<Arc<Slot>>) {
        let foreign = (self.owns.as_ref())
            .is_some_and(|o| StoreKey::shard_in(&key).is_none_or(|s| !o.holds(s)));
        if foreign {
            self.cache.remove(&key);
            return;
        }
        if self.recovering() {
            return;
        }
        let held = (slot.as_ref().and_then(|s| s.accepted.as_ref()))
            .map_or(0, |(_, r)| r.value.len() + r.lineage.len() * 16);
        let size = 160 + key.len() + held;
        self.cache.insert(key, slot, size);
    }

    /// In the simulator, every cache hit is compared with the disk: the cache may only
    /// serve what the disk holds (unless the disk went bad under it since).
    #[cfg(madsim)]
    fn check_cached(&self, key: &[u8], cached: &Option<Arc<Slot>>) {
        let on_disk = match self.engine.get(key) {
            Ok(None) => None,
            Ok(Some(bytes)) => match self.codec.decode(key, &bytes) {
                Ok(d) => Some(d.slot),
                Err(_) => return, // damaged since: the sweeper has it uncached
            },
            Err(_) => return, // an injected read error
        };
        if on_disk.as_ref() != cached.as_deref() {
            crate::fault::invariant_violated(format_args!(
                "{} cached {:?} for {:?} but its disk holds {:?}",
                self.name,
                cached.as_ref().map(|s| s.promised),
                String::from_utf8_lossy(key),
                on_disk.as_ref().map(|s| s.promised)
            ));
        }
    }

    /// Writes `key`'s slot through group commit; `before` is the slot it replaces.
    fn persist(&mut self, key: EngineKey, write: Write, before: &Stored) -> u64 {
        self.seq += 1;
        let (slot, mut changes): (Option<Arc<Slot>>, Changes) = match write {
            Write::Put(slot) => {
                let bytes = self.codec.encode(&key, &slot);
                (Some(Arc::new(slot)), smallvec![(key.clone(), Some(bytes))])
            }
            Write::Purge(ballot) => {
                crate::metrics::metrics().slots_removed.inc();
                self.bounds.floor = self.bounds.floor.max(ballot);
                let mut changes: Changes = smallvec![(key.clone(), None)];
                if !bug(Bug::FloorNotPersisted) {
                    changes.push(ballot_entry(FLOOR_KEY, self.bounds.floor));
                }
                (None, changes)
            }
        };
        // The ceiling is durable no later than any ballot it must cover.
        let highest = slot.as_ref().map_or(0, |s| s.promised.counter);
        if highest > self.bounds.ceiling {
            self.bounds.ceiling = highest.saturating_add(CEILING_STEP);
            let ceiling = Ballot {
                counter: self.bounds.ceiling,
                proposer: 0,
            };
            changes.push(ballot_entry(CEILING_KEY, ceiling));
        }
        self.commit.submit(self.seq, changes);
        let before = match before {
            Stored::Slot(slot) => Ok(slot.as_deref().and_then(Slot::accepted_ballot)),
            Stored::Damaged { .. } => Err(()),
        };
        let after = slot.as_deref().and_then(Slot::accepted_ballot);
        self.digests.update(&key, before, after);
        self.dirty.insert(key, (slot, self.seq));
        self.seq
    }
}

/// The engine entry of one of the replica's own ballots (its floor or ceiling).
fn ballot_entry(key: &[u8], ballot: Ballot) -> Change {
    let bytes = bincode::serialize(&ballot).expect("a ballot serialises");
    (key.into(), Some(bytes))
}
