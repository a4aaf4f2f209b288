//! The acceptor of the per-key protocol, as a pure function from (stored slot, message)
//! to (write, reply). The storage server loads the slot, calls [`step`], persists the
//! write durably and only then sends the reply.
//!
//! A slot whose bytes fail their checksum is *damaged*: the replica no longer knows
//! what it promised or accepted for that key. It must neither promise (its answer
//! would hide an accepted record a chosen value may depend on) nor accept below any
//! promise it may have made. It knows a bound on the latter — the replica-wide
//! [`Bounds::ceiling`] — so it accepts only above that bound; such an accept comes from
//! a proposer that completed phase 1 with a quorum of sound replicas, and leaves the
//! slot in a state a sound acceptor could be in. That is how a read repairs it.

use crate::fault::{bug, Bug};
use crate::key::StoreKey;
use crate::record::{Accepted, Ballot, Record, Slot};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A proxy's message to one replica of a key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ReplicaRequest {
    /// One-round-trip read: report the accepted record, promise nothing.
    Read { key: StoreKey },
    /// Phase 1.
    Prepare { key: StoreKey, ballot: Ballot },
    /// Phase 2. With `next` (above `ballot`), accepting also promises `next`: the
    /// proposer's phase 1 for its next write to the key, done in the same round trip
    /// (one-round-trip writes, DESIGN §3).
    Accept {
        key: StoreKey,
        ballot: Ballot,
        /// (Shared by the proxy with its other replicas' messages and its lease; a
        /// replica's own, decoded, moves into its slot.)
        #[serde(deserialize_with = "shared")]
        record: Arc<Record>,
        next: Option<Ballot>,
    },
    /// Every replica holds the dead record accepted at `ballot`: it may be removed.
    Purge { key: StoreKey, ballot: Ballot },
    /// The slot holds nothing but the promise of `promised` (a key prepared, never
    /// written): fold that promise into the floor and drop the slot. Sent by the
    /// replica's own sweeper.
    Forget { key: StoreKey, promised: Ballot },
    /// Records another acceptor of their shards accepted, each taken as a late
    /// Accept of its ballot would be (so never below a promise): how a move fills a
    /// joining node before its catch-up (DESIGN §12). Served only to senders on the
    /// server's own map, which is the joint map while a move copies. Answered with
    /// [`ReplicaReply::Copied`] once what was taken is durable.
    Copy { records: Vec<(StoreKey, Accepted)> },
    /// About the storage server itself, not a key: answered by the server, before
    /// any key's replica sees it.
    Node(NodeRequest),
    /// A read that only compares: report the accepted record's ballot and originator,
    /// not the record. A plain read asks one replica of its quorum for the record and
    /// the others for this, so that a get carries the value between servers once.
    ReadBallot { key: StoreKey },
}

/// A record decoded straight into its shared place (serde's own `Arc` decodes into a
/// box first, then moves it: two allocations a message instead of one).
fn shared<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Arc<Record>, D::Error> {
    Record::deserialize(d).map(Arc::new)
}

/// What a storage server is asked about itself rather than about a key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum NodeRequest {
    /// For `junokv status`: answered with [`ReplicaReply::Node`].
    Status,
    /// Up to `limit` keys this server holds a slot for, in store order, after `after`
    /// (of `shard` only, if named), with the ballot of the record each durably
    /// accepted (none if none, or if a write to it is on its way): how a restarted
    /// in-memory replica learns which keys it may have forgotten, and how a move finds
    /// the keys its joining nodes still lack. Answered with [`ReplicaReply::Keys`].
    ListKeys {
        after: Option<StoreKey>,
        shard: Option<u16>,
        limit: u32,
    },
    /// The records this server durably accepted of `shard` (those with no write on
    /// its way), in store order, after `after`, up to about `limit_bytes`: what a move
    /// copies to a joining node.
    /// Answered with [`ReplicaReply::Records`].
    ReadShard {
        shard: u16,
        after: Option<StoreKey>,
        limit_bytes: u32,
    },
    /// The digest of the keys this server holds of `shard` at the ballots it accepted
    /// them (see `storage::shard_digest`): replicas with equal digests agree, and the
    /// anti-entropy pass skips listing the shard. Answered with [`ReplicaReply::Digest`].
    ShardDigest { shard: u16 },
}

impl ReplicaRequest {
    /// The key the message is about (none for [`ReplicaRequest::Node`]).
    pub fn key(&self) -> Option<&StoreKey> {
        match self {
            ReplicaRequest::Read { key }
            | ReplicaRequest::ReadBallot { key }
            | ReplicaRequest::Prepare { key, .. }
            | ReplicaRequest::Accept { key, .. }
            | ReplicaRequest::Purge { key, .. }
            | ReplicaRequest::Forget { key, .. } => Some(key),
            ReplicaRequest::Copy { .. } | ReplicaRequest::Node(_) => None,
        }
    }
}

/// A replica's answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ReplicaReply {
    /// Answer to Read.
    Value { accepted: Option<Accepted> },
    /// Answer to Prepare: promised, here is what I accepted before.
    Promise { accepted: Option<Accepted> },
    /// Answer to Accept.
    Accepted,
    /// A Prepare or Accept below what this replica promised.
    Rejected { promised: Ballot },
    /// Answer to Purge and Forget, whether or not the slot was removed.
    Purged,
    /// The replica could not serve the key (engine error).
    Failed { reason: String },
    /// Answer to an Accept of a new record by an in-memory replica at its size cap:
    /// nothing was written (eviction is making room).
    Full,
    /// The key's slot is damaged (see the module doc): the replica accepts a repair
    /// only at a ballot above `promised`, and promises nothing until then.
    Damaged { promised: Ballot },
    /// Answer to [`NodeRequest::Status`].
    Node(NodeInfo),
    /// Answer to [`NodeRequest::ListKeys`]: fewer than asked for means the end.
    Keys {
        keys: Vec<(StoreKey, Option<Ballot>)>,
    },
    /// Answer to [`NodeRequest::ShardDigest`].
    Digest { digest: [u8; 16] },
    /// Answer to [`NodeRequest::ReadShard`]: none means the end.
    Records { records: Vec<(StoreKey, Accepted)> },
    /// Answer to [`ReplicaRequest::Copy`]: how many of the records the replica took
    /// (the others were below what it had promised, or it is full).
    Copied { taken: u32 },
    /// The server serves the map of `epoch`, and the sender is on another (behind or
    /// ahead of a change of the map), or the key's shard is not this server's in it.
    /// Nothing was done.
    NotOwner { epoch: u64 },
    /// Answer to ReadBallot: the accepted record's ballot and originator.
    Ballot {
        accepted: Option<(Ballot, [u8; 16])>,
    },
}

/// What a storage server says of itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its JunoKV version.
    pub version: String,
    /// What its engine holds (RocksDB: SST files and memtables), and what compactions
    /// still have to rewrite.
    pub engine_bytes: u64,
    pub pending_compaction_bytes: u64,
    /// An in-memory replica that restarted and has not yet recovered the records it
    /// lost from its peers.
    pub recovering: bool,
    /// The epoch of the map it serves (none until it knows itself in one): a change of
    /// the map waits for the nodes it fences to serve it.
    pub epoch: Option<u64>,
}

/// What [`step`] asks the storage server to persist before replying.
// (A slot is moved once, from `step` to the write; boxing it would cost every write an
// allocation.)
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Put(Slot),
    /// Remove the key, and raise the replica-wide ballot floor to the given ballot so
    /// that no ballot at or below it is ever accepted for the now-forgotten key.
    Purge(Ballot),
}

/// Replica-wide ballot bounds, persisted beside the slots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bounds {
    /// The lowest ballot still allowed for any key (raised by purges): a missing slot
    /// behaves as promised at it.
    pub floor: Ballot,
    /// No ballot this replica ever promised or accepted has a higher counter: what a
    /// damaged slot must assume it promised.
    pub ceiling: u64,
}

/// The highest ballot with counter `ceiling`: what a damaged slot must assume it
/// promised when no promise it made had a higher counter.
pub fn promise_at_most(ceiling: u64) -> Ballot {
    Ballot {
        counter: ceiling,
        proposer: u64::MAX,
    }
}

/// What the storage server found for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// (Shared with the server's cache of slots: a hit is not a copy.)
    Slot(Option<Arc<Slot>>),
    /// The replica does not know what it promised or accepted for the key (the stored
    /// bytes failed their checksum, or an in-memory replica lost them in a restart),
    /// only that no promise it made had a counter above `ceiling`.
    Damaged { ceiling: u64 },
}

/// Applies one message to a key's stored slot. (The message is taken: an accepted
/// record moves into the slot rather than being copied.)
pub fn step(stored: &Stored, bounds: Bounds, req: ReplicaRequest) -> (Option<Write>, ReplicaReply) {
    let slot = match stored {
        Stored::Slot(slot) => slot.as_deref(),
        Stored::Damaged { ceiling } => return step_damaged(promise_at_most(*ceiling), req),
    };
    // (Borrowed, not cloned: a record is cloned only where a reply or a write needs it.)
    let (slot_promised, accepted) = slot.map_or((Ballot::default(), None), |s| {
        (s.promised, s.accepted.as_ref())
    });
    let promised = slot_promised.max(bounds.floor);
    match req {
        ReplicaRequest::Read { .. } => (
            None,
            ReplicaReply::Value {
                accepted: accepted.cloned(),
            },
        ),
        ReplicaRequest::ReadBallot { .. } => (
            None,
            ReplicaReply::Ballot {
                accepted: accepted.map(|(b, r)| (*b, r.originator)),
            },
        ),
        ReplicaRequest::Prepare { ballot, .. } => {
            if ballot <= promised {
                return (None, ReplicaReply::Rejected { promised });
            }
            let reply = ReplicaReply::Promise {
                accepted: accepted.cloned(),
            };
            let slot = Slot {
                promised: ballot,
                accepted: accepted.cloned(),
            };
            (Some(Write::Put(slot)), reply)
        }
        ReplicaRequest::Accept {
            ballot,
            record,
            next,
            ..
        } => {
            if ballot < promised && !bug(Bug::AcceptLowerBallot) {
                return (None, ReplicaReply::Rejected { promised });
            }
            let slot = Slot {
                promised: promise_with_accept(ballot, next).max(slot_promised),
                accepted: Some((ballot, Arc::unwrap_or_clone(record))),
            };
            (Some(Write::Put(slot)), ReplicaReply::Accepted)
        }
        ReplicaRequest::Purge { ballot, .. } => {
            // Only the exact record every replica was seen to hold may go: nothing
            // accepted since. A promise made since (a request that found the record
            // dead and wrote nothing) lives on in the floor, so the replica refuses
            // exactly what it refused before.
            let removable = matches!(accepted, Some((b, _)) if *b == ballot);
            let write = removable.then_some(Write::Purge(slot_promised.max(ballot)));
            (write, ReplicaReply::Purged)
        }
        ReplicaRequest::Forget { promised, .. } => {
            // Nothing accepted since the sweeper looked: the floor keeps the promise.
            let removable = slot.is_some() && accepted.is_none() && slot_promised == promised;
            (
                removable.then_some(Write::Purge(promised)),
                ReplicaReply::Purged,
            )
        }
        ReplicaRequest::Copy { .. } | ReplicaRequest::Node(_) => (None, not_about_a_key()),
    }
}

/// The answer of a key's replica to [`ReplicaRequest::Node`] and
/// [`ReplicaRequest::Copy`], which the server takes apart itself and never hands on.
fn not_about_a_key() -> ReplicaReply {
    ReplicaReply::Failed {
        reason: "a request about the server, not a key".into(),
    }
}

/// [`step`] for a damaged slot: only an accept above every promise it may have made
/// is taken, and it repairs the slot.
fn step_damaged(promised: Ballot, req: ReplicaRequest) -> (Option<Write>, ReplicaReply) {
    match req {
        ReplicaRequest::Accept {
            ballot,
            record,
            next,
            ..
        } if ballot > promised || bug(Bug::RepairBelowCeiling) => {
            let slot = Slot {
                promised: promise_with_accept(ballot, next),
                accepted: Some((ballot, Arc::unwrap_or_clone(record))),
            };
            (Some(Write::Put(slot)), ReplicaReply::Accepted)
        }
        ReplicaRequest::Accept { .. } => (None, ReplicaReply::Rejected { promised }),
        ReplicaRequest::Purge { .. } | ReplicaRequest::Forget { .. } => {
            (None, ReplicaReply::Purged)
        }
        ReplicaRequest::Read { .. }
        | ReplicaRequest::ReadBallot { .. }
        | ReplicaRequest::Prepare { .. } => (None, ReplicaReply::Damaged { promised }),
        ReplicaRequest::Copy { .. } | ReplicaRequest::Node(_) => (None, not_about_a_key()),
    }
}

/// What a replica has promised once it accepts at `ballot`: the proposer's `next`
/// ballot when it asked for one (an accept above every promise may promise anything
/// higher still, exactly as a prepare of `next` arriving just after it would), else
/// `ballot` itself.
fn promise_with_accept(ballot: Ballot, next: Option<Ballot>) -> Ballot {
    next.filter(|n| *n > ballot).unwrap_or(ballot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> StoreKey {
        StoreKey::new(b"ns", b"k", 16)
    }

    fn rec(v: u32) -> Record {
        Record {
            version: v,
            creation_time: 1,
            expires_at: 100,
            last_modified_ns: 0,
            originator: [0; 16],
            lineage: crate::record::Lineage::new(),
            tombstone: false,
            payload_kind: 0,
            value: vec![v as u8],
        }
    }

    fn b(c: u64) -> Ballot {
        Ballot {
            counter: c,
            proposer: 1,
        }
    }

    fn apply(slot: &mut Option<Slot>, floor: &mut Ballot, req: &ReplicaRequest) -> ReplicaReply {
        let bounds = Bounds {
            floor: *floor,
            ceiling: u64::MAX,
        };
        let (w, reply) = step(
            &Stored::Slot(slot.clone().map(Arc::new)),
            bounds,
            req.clone(),
        );
        match w {
            Some(Write::Put(s)) => *slot = Some(s),
            Some(Write::Purge(f)) => {
                *slot = None;
                *floor = (*floor).max(f);
            }
            None => {}
        }
        reply
    }

    #[test]
    fn prepare_then_accept_then_lower_prepare_rejected() {
        let (mut s, mut f) = (None, Ballot::default());
        assert_eq!(
            apply(
                &mut s,
                &mut f,
                &ReplicaRequest::Prepare {
                    key: key(),
                    ballot: b(2)
                }
            ),
            ReplicaReply::Promise { accepted: None }
        );
        assert_eq!(
            apply(
                &mut s,
                &mut f,
                &ReplicaRequest::Accept {
                    key: key(),
                    ballot: b(1),
                    record: rec(1).into(),
                    next: None
                }
            ),
            ReplicaReply::Rejected { promised: b(2) }
        );
        assert_eq!(
            apply(
                &mut s,
                &mut f,
                &ReplicaRequest::Accept {
                    key: key(),
                    ballot: b(2),
                    record: rec(1).into(),
                    next: None
                }
            ),
            ReplicaReply::Accepted
        );
        assert_eq!(
            apply(
                &mut s,
                &mut f,
                &ReplicaRequest::Prepare {
                    key: key(),
                    ballot: b(2)
                }
            ),
            ReplicaReply::Rejected { promised: b(2) }
        );
        assert_eq!(
            apply(
                &mut s,
                &mut f,
                &ReplicaRequest::Prepare {
                    key: key(),
                    ballot: b(3)
                }
            ),
            ReplicaReply::Promise {
                accepted: Some((b(2), rec(1)))
            }
        );
    }

    #[test]
    fn purge_forgets_the_key_but_not_the_ballot() {
        let (mut s, mut f) = (None, Ballot::default());
        let mut dead = rec(1);
        dead.tombstone = true;
        apply(
            &mut s,
            &mut f,
            &ReplicaRequest::Accept {
                key: key(),
                ballot: b(5),
                record: dead.into(),
                next: None,
            },
        );
        // A purge naming another ballot does nothing.
        apply(
            &mut s,
            &mut f,
            &ReplicaRequest::Purge {
                key: key(),
                ballot: b(4),
            },
        );
        assert!(s.is_some());
        apply(
            &mut s,
            &mut f,
            &ReplicaRequest::Purge {
                key: key(),
                ballot: b(5),
            },
        );
        assert!(s.is_none());
        // A stale proposer below the purged ballot cannot resurrect anything.
        assert_eq!(
            apply(
                &mut s,
                &mut f,
                &ReplicaRequest::Accept {
                    key: key(),
                    ballot: b(3),
                    record: rec(9).into(),
                    next: None
                }
            ),
            ReplicaReply::Rejected { promised: b(5) }
        );
    }

    #[test]
    fn a_damaged_slot_promises_nothing_and_is_repaired_only_above_the_ceiling() {
        let bounds = Bounds {
            floor: b(1),
            ceiling: 70,
        };
        // What it may have promised is known to be at most 7 (the ceiling when it lost
        // the slot), not the replica's ceiling now.
        let damaged = Stored::Damaged { ceiling: 7 };
        let above = Ballot {
            counter: 8,
            proposer: 0,
        };
        let prepare = ReplicaRequest::Prepare {
            key: key(),
            ballot: above,
        };
        let (w, reply) = step(&damaged, bounds, prepare);
        assert_eq!(w, None);
        assert_eq!(
            reply,
            ReplicaReply::Damaged {
                promised: promise_at_most(7)
            }
        );
        let accept = |ballot| ReplicaRequest::Accept {
            key: key(),
            ballot,
            record: rec(3).into(),
            next: None,
        };
        // At the ceiling it may have promised (to another proposer): refused.
        let (w, reply) = step(&damaged, bounds, accept(b(7)));
        assert_eq!(w, None);
        assert!(matches!(reply, ReplicaReply::Rejected { .. }));
        let (w, reply) = step(&damaged, bounds, accept(above));
        assert_eq!(reply, ReplicaReply::Accepted);
        assert_eq!(
            w,
            Some(Write::Put(Slot {
                promised: above,
                accepted: Some((above, rec(3)))
            }))
        );
    }

    #[test]
    fn a_slot_holding_only_a_promise_can_be_folded_into_the_floor() {
        let (mut s, mut f) = (None, Ballot::default());
        let prepare = ReplicaRequest::Prepare {
            key: key(),
            ballot: b(4),
        };
        apply(&mut s, &mut f, &prepare);
        let forget = |c| ReplicaRequest::Forget {
            key: key(),
            promised: b(c),
        };
        apply(&mut s, &mut f, &forget(3));
        assert!(s.is_some(), "naming another promise does nothing");
        apply(&mut s, &mut f, &forget(4));
        assert!(s.is_none());
        assert_eq!(f, b(4), "the promise lives on in the floor");
        // Once something is accepted, the slot is no longer the sweeper's to drop.
        apply(&mut s, &mut f, &prepare);
        let accept = ReplicaRequest::Accept {
            key: key(),
            ballot: b(4),
            record: rec(1).into(),
            next: None,
        };
        assert_eq!(apply(&mut s, &mut f, &accept), ReplicaReply::Accepted);
        apply(&mut s, &mut f, &forget(4));
        assert!(s.is_some());
    }

    #[test]
    fn an_accept_promises_the_next_ballot_it_names() {
        let (mut s, mut f) = (None, Ballot::default());
        let accept = |c, next: Option<u64>| ReplicaRequest::Accept {
            key: key(),
            ballot: b(c),
            record: rec(c as u32).into(),
            next: next.map(b),
        };
        let prepare = |c| ReplicaRequest::Prepare {
            key: key(),
            ballot: b(c),
        };
        assert_eq!(
            apply(&mut s, &mut f, &accept(2, Some(5))),
            ReplicaReply::Accepted
        );
        // Between the accepted ballot and the promised one: refused, as after a prepare of 5.
        assert_eq!(
            apply(&mut s, &mut f, &prepare(4)),
            ReplicaReply::Rejected { promised: b(5) }
        );
        // The proposer's next write goes straight to phase 2.
        assert_eq!(
            apply(&mut s, &mut f, &accept(5, Some(6))),
            ReplicaReply::Accepted
        );
        // A `next` not above the ballot promises nothing more than the accept itself.
        assert_eq!(
            apply(&mut s, &mut f, &accept(7, Some(3))),
            ReplicaReply::Accepted
        );
        assert_eq!(s.as_ref().unwrap().promised, b(7));
    }

    fn arb_req() -> impl Strategy<Value = ReplicaRequest> {
        prop_oneof![
            Just(ReplicaRequest::Read { key: key() }),
            Just(ReplicaRequest::ReadBallot { key: key() }),
            (0u64..8).prop_map(|c| ReplicaRequest::Prepare {
                key: key(),
                ballot: b(c)
            }),
            (0u64..8, 0u32..4, proptest::option::of(0u64..10)).prop_map(|(c, v, n)| {
                ReplicaRequest::Accept {
                    key: key(),
                    ballot: b(c),
                    record: rec(v).into(),
                    next: n.map(b),
                }
            }),
            (0u64..8).prop_map(|c| ReplicaRequest::Purge {
                key: key(),
                ballot: b(c)
            }),
            (0u64..8).prop_map(|c| ReplicaRequest::Forget {
                key: key(),
                promised: b(c)
            }),
        ]
    }

    proptest! {
        /// The acceptor invariants: the effective promise never goes down, an accept is
        /// never below a promise made earlier, and accepted ballots only grow.
        #[test]
        fn acceptor_invariants(reqs in proptest::collection::vec(arb_req(), 1..40)) {
            let (mut s, mut f) = (None::<Slot>, Ballot::default());
            let mut max_promise = Ballot::default();
            let mut last_accepted: Option<Ballot> = None;
            for req in &reqs {
                let before = s.as_ref().map(|x| x.promised).unwrap_or_default().max(f);
                let held = s.clone();
                let reply = apply(&mut s, &mut f, req);
                if let ReplicaRequest::ReadBallot { .. } = req {
                    // What a read would report, less the record; nothing changes.
                    let accepted = held.as_ref().and_then(|x| x.accepted.as_ref());
                    let want = accepted.map(|(b, r)| (*b, r.originator));
                    prop_assert_eq!(&reply, &ReplicaReply::Ballot { accepted: want });
                    prop_assert_eq!(&s, &held);
                }
                let after = s.as_ref().map(|x| x.promised).unwrap_or_default().max(f);
                prop_assert!(after >= before);
                max_promise = max_promise.max(after);
                if let (ReplicaRequest::Accept { ballot, next, .. }, ReplicaReply::Accepted) = (req, &reply) {
                    prop_assert!(*ballot >= before);
                    // The promise of the next ballot came with it.
                    if let Some(n) = next { prop_assert!(after >= *n || *n <= *ballot); }
                    if let Some(prev) = last_accepted { prop_assert!(*ballot >= prev); }
                    last_accepted = Some(*ballot);
                }
                if let (ReplicaRequest::Prepare { ballot, .. }, ReplicaReply::Promise { .. }) = (req, &reply) {
                    prop_assert!(*ballot > before);
                }
            }
        }
    }
}
