//! The storage server's replica: one task that owns every key's slot, applies
//! messages in arrival order with [`crate::replica::step`], and releases each reply
//! only once everything it depends on is durable.

use super::group_commit::GroupCommit;
use crate::engine::{Change, Engine};
use crate::record::{Ballot, Slot};
use crate::replica::{step, ReplicaReply, ReplicaRequest, Write};
use crate::rpc::encode_frame;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Engine key of the replica-wide ballot floor (shards use the first two bytes, and
/// never reach 0xFFFF).
const FLOOR_KEY: &[u8] = b"\xff\xff\x00floor";

/// Whether an engine key holds a key's slot (rather than the replica's own state).
pub fn is_record_key(key: &[u8]) -> bool {
    key != FLOOR_KEY
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

/// A message for the replica and where its reply goes.
pub type Envelope = (ReplicaRequest, ReplyTo);

struct Replica {
    engine: Arc<dyn Engine>,
    commit: GroupCommit,
    floor: Ballot,
    /// Slots written but maybe not yet durable, with the sequence number of the write.
    dirty: HashMap<Vec<u8>, (Option<Slot>, u64)>,
    seq: u64,
    /// Replies held until the write they depend on is durable, by its sequence number.
    held: BTreeMap<u64, Vec<(ReplyTo, ReplicaReply)>>,
}

/// Starts the replica task; send it [`Envelope`]s. The task ends, having released the
/// engine, once every sender is dropped.
pub fn start(
    engine: Arc<dyn Engine>,
) -> std::io::Result<(mpsc::UnboundedSender<Envelope>, tokio::task::JoinHandle<()>)> {
    let floor = match engine.get(FLOOR_KEY)? {
        Some(b) => bincode::deserialize(&b).map_err(std::io::Error::other)?,
        None => Ballot::default(),
    };
    let (commit, committer) = GroupCommit::start(engine.clone(), 4096);
    let mut durable = commit.subscribe();
    let mut replica = Replica {
        engine,
        commit,
        floor,
        dirty: HashMap::new(),
        seq: 0,
        held: BTreeMap::new(),
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Envelope>();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some((req, reply_to)) => replica.handle(req, reply_to),
                    None => break,
                },
                changed = durable.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    replica.release();
                }
            }
        }
        drop(replica);
        let _ = committer.await;
    });
    Ok((tx, task))
}

impl Replica {
    fn handle(&mut self, req: ReplicaRequest, reply_to: ReplyTo) {
        let key = req.key().to_bytes();
        let loaded = match self.load(&key) {
            Ok(slot) => slot,
            Err(reason) => return reply_to.send(&ReplicaReply::Failed { reason }),
        };
        let (write, reply) = step(loaded.0.as_ref(), self.floor, &req);
        tracing::trace!(key = ?String::from_utf8_lossy(&req.key().key), ?req, ?reply, before = ?loaded.0.as_ref().map(|s| (s.promised, s.accepted.as_ref().map(|(b, r)| (*b, r.version, r.tombstone)))), "replica step");
        let wait_for = match write {
            Some(w) => self.persist(key, w),
            None => loaded.1, // the reply may describe a write not yet durable
        };
        if wait_for <= self.commit.durable() {
            reply_to.send(&reply);
        } else {
            self.held
                .entry(wait_for)
                .or_default()
                .push((reply_to, reply));
        }
    }

    /// Sends the replies whose writes are now durable (or, after a failed write, a
    /// failure to every held reply).
    fn release(&mut self) {
        let failed = self.commit.has_failed();
        let durable = self.commit.durable();
        let still_held = if failed {
            BTreeMap::new()
        } else {
            self.held.split_off(&(durable + 1))
        };
        for (reply_to, reply) in std::mem::replace(&mut self.held, still_held)
            .into_values()
            .flatten()
        {
            if failed {
                reply_to.send(&ReplicaReply::Failed {
                    reason: "durable write failed".into(),
                });
            } else {
                reply_to.send(&reply);
            }
        }
    }

    /// The slot for `key` and the sequence number it must be durable up to.
    fn load(&mut self, key: &[u8]) -> Result<(Option<Slot>, u64), String> {
        if self.commit.has_failed() {
            return Err("replica stopped after a failed durable write".into());
        }
        if let Some((slot, seq)) = self.dirty.get(key) {
            return Ok((slot.clone(), *seq));
        }
        match self.engine.get(key) {
            Ok(None) => Ok((None, 0)),
            Ok(Some(bytes)) => Slot::decode(&bytes)
                .map(|s| (Some(s), 0))
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("engine read: {e}")),
        }
    }

    fn persist(&mut self, key: Vec<u8>, write: Write) -> u64 {
        self.seq += 1;
        let (slot, changes): (Option<Slot>, Vec<Change>) = match write {
            Write::Put(slot) => {
                let bytes = slot.encode();
                (Some(slot), vec![(key.clone(), Some(bytes))])
            }
            Write::Purge(ballot) => {
                self.floor = self.floor.max(ballot);
                let floor = bincode::serialize(&self.floor).expect("a ballot serialises");
                (
                    None,
                    vec![(key.clone(), None), (FLOOR_KEY.to_vec(), Some(floor))],
                )
            }
        };
        self.commit.submit(self.seq, changes);
        self.dirty.insert(key, (slot, self.seq));
        if self.dirty.len() > 4096 {
            let durable = self.commit.durable();
            self.dirty.retain(|_, (_, seq)| *seq > durable);
        }
        self.seq
    }
}
