//! The acceptor of the per-key protocol, as a pure function from (stored slot, message)
//! to (write, reply). The storage server loads the slot, calls [`step`], persists the
//! write durably and only then sends the reply.

use crate::fault::{bug, Bug};
use crate::key::StoreKey;
use crate::record::{Accepted, Ballot, Record, Slot};
use serde::{Deserialize, Serialize};

/// A proxy's message to one replica of a key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ReplicaRequest {
    /// One-round-trip read: report the accepted record, promise nothing.
    Read { key: StoreKey },
    /// Phase 1.
    Prepare { key: StoreKey, ballot: Ballot },
    /// Phase 2.
    Accept {
        key: StoreKey,
        ballot: Ballot,
        record: Record,
    },
    /// Every replica holds the dead record accepted at `ballot`: it may be removed.
    Purge { key: StoreKey, ballot: Ballot },
}

impl ReplicaRequest {
    pub fn key(&self) -> &StoreKey {
        match self {
            ReplicaRequest::Read { key }
            | ReplicaRequest::Prepare { key, .. }
            | ReplicaRequest::Accept { key, .. }
            | ReplicaRequest::Purge { key, .. } => key,
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
    /// Answer to Purge, whether or not the record was removed.
    Purged,
    /// The replica could not serve the key (engine error, corrupt record).
    Failed { reason: String },
}

/// What [`step`] asks the storage server to persist before replying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Put(Slot),
    /// Remove the key, and raise the replica-wide ballot floor to the given ballot so
    /// that no ballot at or below it is ever accepted for the now-forgotten key.
    Purge(Ballot),
}

/// Applies one message to a key's stored slot. `floor` is the replica-wide lowest
/// ballot still allowed (raised by purges); a missing slot behaves as promised at it.
pub fn step(
    slot: Option<&Slot>,
    floor: Ballot,
    req: &ReplicaRequest,
) -> (Option<Write>, ReplicaReply) {
    let current = slot.cloned().unwrap_or_default();
    let promised = current.promised.max(floor);
    match req {
        ReplicaRequest::Read { .. } => (
            None,
            ReplicaReply::Value {
                accepted: current.accepted,
            },
        ),
        ReplicaRequest::Prepare { ballot, .. } => {
            if *ballot <= promised {
                return (None, ReplicaReply::Rejected { promised });
            }
            let reply = ReplicaReply::Promise {
                accepted: current.accepted.clone(),
            };
            let slot = Slot {
                promised: *ballot,
                accepted: current.accepted,
            };
            (Some(Write::Put(slot)), reply)
        }
        ReplicaRequest::Accept { ballot, record, .. } => {
            if *ballot < promised && !bug(Bug::AcceptLowerBallot) {
                return (None, ReplicaReply::Rejected { promised });
            }
            let slot = Slot {
                promised: (*ballot).max(current.promised),
                accepted: Some((*ballot, record.clone())),
            };
            (Some(Write::Put(slot)), ReplicaReply::Accepted)
        }
        ReplicaRequest::Purge { ballot, .. } => {
            // Only the exact state every replica was seen to hold may go: nothing
            // promised since, nothing accepted since.
            let removable = matches!(&current.accepted, Some((b, _)) if b == ballot)
                && current.promised == *ballot;
            let write = removable.then_some(Write::Purge(*ballot));
            (write, ReplicaReply::Purged)
        }
    }
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
            lineage: Vec::new(),
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
        let (w, reply) = step(slot.as_ref(), *floor, req);
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
                    record: rec(1)
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
                    record: rec(1)
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
                record: dead,
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
                    record: rec(9)
                }
            ),
            ReplicaReply::Rejected { promised: b(5) }
        );
    }

    fn arb_req() -> impl Strategy<Value = ReplicaRequest> {
        prop_oneof![
            Just(ReplicaRequest::Read { key: key() }),
            (0u64..8).prop_map(|c| ReplicaRequest::Prepare {
                key: key(),
                ballot: b(c)
            }),
            (0u64..8, 0u32..4).prop_map(|(c, v)| ReplicaRequest::Accept {
                key: key(),
                ballot: b(c),
                record: rec(v)
            }),
            (0u64..8).prop_map(|c| ReplicaRequest::Purge {
                key: key(),
                ballot: b(c)
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
                let reply = apply(&mut s, &mut f, req);
                let after = s.as_ref().map(|x| x.promised).unwrap_or_default().max(f);
                prop_assert!(after >= before);
                max_promise = max_promise.max(after);
                if let (ReplicaRequest::Accept { ballot, .. }, ReplicaReply::Accepted) = (req, &reply) {
                    prop_assert!(*ballot >= before);
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
