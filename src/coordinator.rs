//! The proxy's per-request state machine: one client operation on one key, run as
//! single-decree Paxos over the key's N replicas (the CASPaxos construction). Sans-IO:
//! the caller delivers replies and timer expiries and carries out the returned actions.

use crate::fault::{bug, Bug};
use crate::key::StoreKey;
use crate::protocol::{RequestId, Status};
use crate::record::{Accepted, Ballot, Record};
use crate::replica::{ReplicaReply, ReplicaRequest};
use crate::semantics::{apply, Context, Effect, Op};
use smallvec::{smallvec, SmallVec};
use std::sync::Arc;

/// One flag per replica of the key (asked, acked, refused): on the stack for up to
/// eight replicas, so that a request's rounds allocate none.
type Flags = SmallVec<[bool; 8]>;

/// Hands out ballots that no other request, on this proxy or any other, will use.
pub trait BallotSource {
    /// A fresh ballot whose counter is above `counter`.
    fn next_above(&self, counter: u64) -> Ballot;
}

/// The answer to the client: the record the operation leaves (none after a destroy),
/// or the status it failed with. The record of a write may come without its value and
/// lineage ([`Record::meta_only`]): only a get answers with a value.
pub type Outcome = Result<Option<Record>, Status>;

/// What the caller must do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `msg` to replica `to`; deliver its reply with this `round`. (Shared: a
    /// message to every replica is one message, its record not copied per replica.)
    Send {
        round: u32,
        to: usize,
        msg: Arc<ReplicaRequest>,
    },
    /// Wait a randomised delay growing with `attempt`, then call [`Coordinator::retry`].
    Backoff { attempt: u32 },
    /// Answer the client. Comes exactly once; the coordinator may still want replies
    /// afterwards (to repair or clean up) until [`Coordinator::is_finished`].
    Reply(Outcome),
    /// A read asked only a quorum: if `round` is still unanswered after a short while
    /// (a few of the proxy's usual read round trips), call [`Coordinator::hedge`], so
    /// that a replica that hangs costs a read that much and not a round timeout.
    Hedge { round: u32 },
}

/// Which replicas a plain read asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// Every replica: what the sweeper and a recovering replica need, since the
    /// replica they read for (to purge or repair it) must be among those answering.
    Every,
    /// A quorum only, the `first` replica of the layout (modulo its size) and those
    /// after it, so that a proxy spreads its reads; the rest are asked only if one of
    /// those fails, the read is slow ([`Action::Hedge`]), or the record is dead long
    /// enough to be purged (which needs every replica's word). A third less work per
    /// read in three zones; a lagging replica is repaired by the reads that reach it.
    Quorum { first: usize },
}

/// Replication parameters.
#[derive(Clone, Debug)]
pub struct Quorum {
    pub replicas: usize,
    /// The layouts of the replicas, as their places (one; two while the map changes,
    /// see [`crate::cluster::Placement`]): a quorum holds a majority of each.
    /// (Shared: a proxy works out each shard's quorums once per map.)
    pub layouts: Arc<[Vec<usize>]>,
    /// An expired record is removed only this long after its expiry, so that a proxy
    /// whose clock runs ahead cannot remove what other clocks still call live.
    pub purge_grace_secs: u32,
    /// The most two proxies' clocks may disagree, rounded up to whole seconds (the
    /// unit of expiry). A record that expired less than this long ago may still be
    /// live by another proxy's clock: before anyone is told it is gone, its expiry is
    /// made durable (a tombstone), so nobody can see it live afterwards.
    pub expiry_fence_secs: u32,
}

impl Quorum {
    /// A majority of `replicas`.
    pub fn majority(replicas: usize) -> Self {
        Quorum {
            replicas,
            layouts: Arc::new([(0..replicas).collect()]),
            purge_grace_secs: 3600,
            expiry_fence_secs: 2,
        }
    }

    /// The quorums of a shard's placement (one layout, or two while the map changes),
    /// with the timing parameters of `self`.
    pub fn of(&self, placement: &crate::cluster::Placement) -> Self {
        Quorum {
            replicas: placement.nodes.len(),
            layouts: placement.layouts.clone().into(),
            ..self.clone()
        }
    }

    /// How many of a layout of `n` replicas a quorum holds: a majority.
    pub fn needed(n: usize) -> usize {
        n / 2 + 1 - usize::from(bug(Bug::QuorumOneShort))
    }

    /// Whether the replicas `has` picks (by place) make a quorum.
    pub fn met(&self, has: impl Fn(usize) -> bool) -> bool {
        let held = |l: &Vec<usize>| l.iter().filter(|&&i| has(i)).count();
        self.layouts
            .iter()
            .all(|l| held(l) >= Self::needed(l.len()))
    }

    /// Whether no quorum is left once the replicas `lost` picks are out.
    pub fn out_of_reach(&self, lost: impl Fn(usize) -> bool) -> bool {
        let gone = |l: &Vec<usize>| l.iter().filter(|&&i| lost(i)).count();
        (self.layouts.iter()).any(|l| gone(l) > l.len() - Self::needed(l.len()))
    }
}

/// Phase 1 already done for a proxy's next write to a key: a quorum of its replicas
/// promised `ballot` (reserved for this use from the proxy's counter) as they accepted
/// `record`, so that record is what a prepare of `ballot` would have found. A write may
/// go straight to phase 2 at `ballot`; if another proposer prepared since, a replica
/// refuses and the write falls back to both phases.
///
/// Why that is safe: a replica that accepts `(b, r)` with `next = n` promises `n` in the
/// same durable write, leaving it exactly as a prepare of `n` arriving just after would,
/// and that prepare's answer would have been `(b, r)`. So a quorum of acks is a
/// completed phase 1 of `n` in which every promise reports `r`: `r` is what the
/// proposer must build on. `n` came from the counter and the lease is used once, so `n`
/// is sent with one record only. Any other proposer that writes in between must first
/// win promises above `n` from a quorum, which shares a replica with the lease's
/// quorum: that replica refuses the accept at `n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub ballot: Ballot,
    pub record: Arc<Record>,
}

/// A record of its own a request sent.
struct Sent {
    record: Arc<Record>,
    /// The originator of the version it was built on.
    base: Option<[u8; 16]>,
    ballot: Ballot,
}

impl Sent {
    /// Whether `current`'s history provably lacks this record: the version it was
    /// built on is in `current`'s lineage and it is not. (Lineage is bounded: a record
    /// too far back cannot be told either way.)
    fn provably_not_in(&self, current: &Record) -> bool {
        let base_in_history = match &self.base {
            Some(b) => current.descends_from(b),
            None => current.lineage.len() < crate::record::LINEAGE,
        };
        base_in_history && !current.descends_from(&self.record.originator)
    }
}

/// What became of a request's earlier attempt.
enum Attempt {
    Applied(Arc<Record>),
    NotApplied,
    Unknown,
}

/// A replica's answer to a read: the record it accepted, or, asked only to compare,
/// that record's ballot and originator.
#[derive(Debug)]
enum ReadAnswer {
    Record(Option<Accepted>),
    Ballot(Option<(Ballot, [u8; 16])>),
}

impl ReadAnswer {
    fn ballot(&self) -> Option<Ballot> {
        self.identity().map(|(b, _)| b)
    }

    /// The ballot and originator of the record answered with: one record per ballot.
    fn identity(&self) -> Option<(Ballot, [u8; 16])> {
        match self {
            ReadAnswer::Record(accepted) => identity(accepted),
            ReadAnswer::Ballot(accepted) => *accepted,
        }
    }

    fn record(&self) -> Option<&Option<Accepted>> {
        match self {
            ReadAnswer::Record(accepted) => Some(accepted),
            ReadAnswer::Ballot(_) => None,
        }
    }
}

#[derive(Debug)]
enum Phase {
    Reading {
        seen: Vec<Option<ReadAnswer>>,
        /// The ballot of what a quorum agreed on (`None` inside: no record), once it
        /// did. The record itself stays where it arrived, in `seen`.
        chosen: Option<Option<Ballot>>,
        /// The replicas asked so far.
        asked: Flags,
    },
    Preparing {
        promises: Vec<Option<Option<Accepted>>>,
        refused: Flags,
    },
    Accepting {
        acks: Flags,
        refused: Flags,
        /// Refusals from replicas at their size cap ([`ReplicaReply::Full`]).
        full: usize,
        /// The round sends the request's own record, and no round before it did: if
        /// every replica refuses it as full, the request certainly took no effect.
        first_write: bool,
        /// What a quorum of acks to this round grants.
        grants: Option<Lease>,
    },
    BackingOff,
    Finished,
}

/// One client operation in flight.
pub struct Coordinator {
    key: StoreKey,
    op: Op,
    ctx: Context,
    q: Quorum,
    phase: Phase,
    round: u32,
    attempt: u32,
    ballot: Ballot,
    highest_seen: u64,
    outcome: Option<Outcome>,
    replied: bool,
    /// Every record of its own this request sent (any may have taken effect, at most
    /// one can), each with the originator of the version it was built on. Each attempt
    /// has an originator of its own, so that the one that took effect can be told.
    wrote: SmallVec<[Sent; 1]>,
    /// Records of its own this request made so far (their originators are numbered).
    attempts: u32,
    /// Replicas that definitely refused (rejected) the accept round that sent it; if
    /// all did, it took no effect after all.
    write_refusals: usize,
    /// The round that sent this request's own new record.
    write_round: u32,
    /// Whether any round sent a record this request made (so it may have taken effect).
    sent_own_write: bool,
    /// A replica answered that its slot is damaged: a full round must write the key
    /// back to it (above the ballot it named) before this request is done.
    damaged_seen: bool,
    /// The lease the last accept round to reach a quorum granted.
    granted: Option<Lease>,
    /// Whether the accept round in progress went ahead on a lease (no phase 1).
    on_lease: bool,
    /// The record of the lease this request started on.
    lease_record: Option<Arc<Record>>,
    /// What became of a write on a lease: taken by a quorum, or refused (another
    /// proposer prepared since); `None` while unknown or when there was no lease.
    lease_outcome: Option<bool>,
    /// Which replicas a plain read asks first.
    read_from: ReadFrom,
}

impl Coordinator {
    pub fn new(key: StoreKey, op: Op, ctx: Context, q: Quorum) -> Self {
        assert!(
            (q.layouts.iter()).all(|l| !l.is_empty() && l.iter().all(|&i| i < q.replicas)),
            "every layout names replicas the request has"
        );
        Coordinator {
            key,
            op,
            ctx,
            q,
            phase: Phase::Finished,
            round: 0,
            attempt: 0,
            ballot: Ballot::default(),
            highest_seen: 0,
            outcome: None,
            replied: false,
            wrote: SmallVec::new(),
            attempts: 0,
            write_refusals: 0,
            write_round: 0,
            sent_own_write: false,
            damaged_seen: false,
            granted: None,
            on_lease: false,
            lease_outcome: None,
            lease_record: None,
            read_from: ReadFrom::Every,
        }
    }

    /// Which replicas a plain read asks first (every one unless told).
    pub fn reading_from(mut self, from: ReadFrom) -> Self {
        self.read_from = from;
        self
    }

    /// The key the request is about.
    pub fn key(&self) -> &StoreKey {
        &self.key
    }

    /// The answer when the request runs out of time: it may have taken effect only if
    /// it sent a record of its own; otherwise it certainly did not.
    pub fn timeout_status(&self) -> Status {
        if self.sent_own_write {
            Status::Timeout
        } else {
            Status::NoStorageServer
        }
    }

    /// First actions: a one-round-trip read for plain gets; phase 2 straight away for a
    /// write on a `lease` (one-round-trip write); phase 1 otherwise.
    pub fn start(&mut self, ballots: &dyn BallotSource, lease: Option<Lease>) -> Vec<Action> {
        if self.op.may_write() {
            match lease {
                Some(lease) if self.writes_on(&lease.record) => {
                    self.ballot = lease.ballot;
                    self.highest_seen = self.highest_seen.max(lease.ballot.counter);
                    self.on_lease = true;
                    if bug(Bug::LeaseOutlivesRejection) {
                        self.lease_record = Some(lease.record.clone());
                    }
                    self.decide(ballots, Some(Arc::unwrap_or_clone(lease.record)), true)
                }
                // An answer found without asking a quorum could be stale: only a write,
                // whose accept a quorum must take, may use the lease.
                _ => self.prepare(ballots),
            }
        } else {
            self.round += 1;
            let (asked, record_from) = self.first_readers();
            let partial = asked.contains(&false);
            self.phase = Phase::Reading {
                seen: (0..self.q.replicas).map(|_| None).collect(),
                chosen: None,
                asked: smallvec![false; self.q.replicas],
            };
            let compare_only = |i| record_from.is_some_and(|r| r != i);
            let mut actions = self.ask_for(|i| asked[i], compare_only);
            if partial {
                actions.push(Action::Hedge { round: self.round });
            }
            actions
        }
    }

    /// The replicas a plain read asks first: a quorum of the layout, from the place
    /// [`ReadFrom::Quorum`] names; every replica while the map changes (a quorum of
    /// two layouts at once is not worth working out for a moment's reads) or when told.
    /// Also names, for a quorum, the one replica asked for its record: the others only
    /// compare ballots with it. When every replica is asked, each sends its record.
    fn first_readers(&self) -> (Flags, Option<usize>) {
        let mut asked: Flags = smallvec![true; self.q.replicas];
        if let (ReadFrom::Quorum { first }, [layout]) = (self.read_from, &self.q.layouts[..]) {
            asked.fill(false);
            for k in 0..Quorum::needed(layout.len()) {
                asked[layout[(first + k) % layout.len()]] = true;
            }
            return (asked, Some(layout[first % layout.len()]));
        }
        (asked, None)
    }

    /// The read of `round` is slow to reach a quorum: ask the replicas it has not.
    pub fn hedge(&mut self, round: u32) -> Vec<Action> {
        match &self.phase {
            Phase::Reading { chosen: None, .. } if round == self.round => self.ask(|_| true),
            _ => Vec::new(),
        }
    }

    /// Asks the replicas `wanted` picks that it has not asked yet for their records.
    fn ask(&mut self, wanted: impl Fn(usize) -> bool) -> Vec<Action> {
        self.ask_for(wanted, |_| false)
    }

    /// Sends the read to the replicas `wanted` picks that it has not asked yet: those
    /// `compare_only` picks are asked for their record's ballot only.
    fn ask_for(
        &mut self,
        wanted: impl Fn(usize) -> bool,
        compare_only: impl Fn(usize) -> bool,
    ) -> Vec<Action> {
        let Phase::Reading { asked, .. } = &mut self.phase else {
            unreachable!("only a read asks")
        };
        let (round, key) = (self.round, &self.key);
        (0..self.q.replicas)
            .filter(|&i| wanted(i) && !std::mem::replace(&mut asked[i], true))
            .map(|to| {
                let key = key.clone();
                let msg = match compare_only(to) {
                    true => ReplicaRequest::ReadBallot { key },
                    false => ReplicaRequest::Read { key },
                };
                let msg = Arc::new(msg);
                Action::Send { round, to, msg }
            })
            .collect()
    }

    /// After a backoff, at wall-clock `now_ns`: a new phase 1 with a higher ballot.
    /// (A repair round after the answer retries too; the caller's deadline bounds it.)
    pub fn retry(&mut self, ballots: &dyn BallotSource, now_ns: u64) -> Vec<Action> {
        self.advance_clock(now_ns);
        if self.write_refusals == self.q.replicas {
            self.wrote.pop(); // every replica rejected it: it never took effect
        }
        self.attempt += 1;
        if let (Some(false), Some(record)) = (self.lease_outcome, self.lease_record.take()) {
            // Bug::LeaseOutlivesRejection: phase 2 again as if nobody had written since.
            self.ballot = ballots.next_above(self.highest_seen);
            return self.decide(ballots, Some(Arc::unwrap_or_clone(record)), true);
        }
        self.prepare(ballots)
    }

    /// The map changed under the request: `q` describes the key's replicas now (the
    /// caller sends to them by their new places). Whatever is in flight is dropped (its
    /// replies carry an old round); an unanswered request starts a new round with both
    /// phases on the new replicas, exactly as after being pre-empted, so an attempt it
    /// made before is looked for as in any retry. One already answered stops its
    /// clean-up: the new map's reads and sweepers will do it.
    pub fn reconfigure(&mut self, q: Quorum, ballots: &dyn BallotSource) -> Vec<Action> {
        self.q = q;
        self.round += 1;
        // Refusals of the old replicas say nothing about the new ones.
        (self.write_refusals, self.write_round) = (0, u32::MAX);
        self.lease_record = None;
        if self.replied || self.is_finished() {
            self.phase = Phase::Finished;
            return Vec::new();
        }
        self.attempt += 1;
        self.prepare(ballots)
    }

    /// The current round took too long: retry it (or, once answered, give up on the
    /// clean-up).
    pub fn on_round_timeout(&mut self, round: u32) -> Vec<Action> {
        if round != self.round || matches!(self.phase, Phase::BackingOff | Phase::Finished) {
            return Vec::new();
        }
        if self.replied {
            self.phase = Phase::Finished;
            return Vec::new();
        }
        self.back_off()
    }

    /// Decisions (expiry above all) are taken at the time of the reply that completes a
    /// quorum, not at the request's start: a request that retried for a while must not
    /// find live a record that expired while it waited, and that others saw expire.
    fn advance_clock(&mut self, now_ns: u64) {
        self.ctx.now_ns = self.ctx.now_ns.max(now_ns);
    }

    /// The lease the request's last accept round to reach a quorum granted (taken once,
    /// when the client is answered, before the proxy's next request on the key starts).
    pub fn take_lease(&mut self) -> Option<Lease> {
        self.granted.take()
    }

    /// Whether a write on a lease was taken by a quorum (`Some(true)`) or refused
    /// because another proposer prepared since (`Some(false)`).
    pub fn lease_outcome(&self) -> Option<bool> {
        self.lease_outcome
    }

    /// True once nothing more will come of this request.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// The round the caller is waiting on.
    pub fn round(&self) -> u32 {
        self.round
    }

    /// A replica's reply, arriving at wall-clock `now_ns`. Replies from earlier rounds
    /// are ignored.
    pub fn on_reply(
        &mut self,
        round: u32,
        from: usize,
        reply: ReplicaReply,
        ballots: &dyn BallotSource,
        now_ns: u64,
    ) -> Vec<Action> {
        self.advance_clock(now_ns);
        if round != self.round || from >= self.q.replicas {
            return Vec::new();
        }
        if let ReplicaReply::Rejected { promised } | ReplicaReply::Damaged { promised } = &reply {
            if !bug(Bug::BallotNotRaised) {
                self.highest_seen = self.highest_seen.max(promised.counter);
            }
        }
        if matches!(reply, ReplicaReply::Damaged { .. }) {
            self.damaged_seen = true;
        }
        let reply = match reply {
            ReplicaReply::Damaged { .. }
                if bug(Bug::ReadTakesDamagedAsAbsent)
                    && matches!(self.phase, Phase::Reading { .. }) =>
            {
                self.damaged_seen = false;
                ReplicaReply::Value { accepted: None }
            }
            other => other,
        };
        match &mut self.phase {
            Phase::Reading {
                seen,
                chosen,
                asked,
            } => {
                let answer = match reply {
                    ReplicaReply::Value { accepted } => ReadAnswer::Record(accepted),
                    ReplicaReply::Ballot { accepted } => ReadAnswer::Ballot(accepted),
                    _ if self.damaged_seen && chosen.is_some() => {
                        return self.prepare(ballots); // the client has its answer: repair
                    }
                    // A failed replica: ask any not asked yet for their records, and
                    // wait for the others or time out.
                    _ => return self.ask(|_| true),
                };
                if seen[from].is_some() {
                    return Vec::new();
                }
                let held = seen.iter().flatten().filter_map(ReadAnswer::identity);
                check_one_record_per_ballot(held, answer.identity());
                let accepted_ballot = answer.ballot();
                seen[from] = Some(answer);
                // The answers are compared where they lie, and none is copied (a read
                // used to copy every answer per reply, then the chosen one).
                let got = || seen.iter().flatten();
                let everyone = got().count() == self.q.replicas;
                let compared =
                    |a: &&ReadAnswer| !bug(Bug::ReadIgnoresBallots) || a.record().is_some();
                let agreed = all_same_ballot(got().filter(compared).map(ReadAnswer::ballot));
                // The record of the replica asked for it (of any, if several were).
                let record = got().find_map(ReadAnswer::record);
                // What the answers need done once all are in, if they agree.
                let long_dead_at = |a: &Option<Accepted>| match a {
                    Some((b, r)) if r.long_dead(self.ctx.now_secs(), self.q.purge_grace_secs) => {
                        Some(*b)
                    }
                    _ => None,
                };
                let settled = agreed.then(|| record.and_then(long_dead_at));
                // Every replica asked has answered, and those not asked never will.
                let all_asked_answered =
                    (asked.iter().zip(seen.iter())).all(|(a, s)| !a || s.is_some());
                if let Some(decided) = *chosen {
                    if accepted_ballot != decided {
                        if let (true, Some(b), Some(theirs)) =
                            (bug(Bug::RepairOverwritesNewer), decided, accepted_ballot)
                        {
                            // Above the straggler's accepted ballot and the lease it
                            // promised with it, skipping phase 1.
                            let above = b.max(theirs).counter + 1;
                            let ballot = ballots.next_above(above);
                            let (_, r) = (got().filter_map(|a| a.record()?.as_ref()))
                                .find(|(x, _)| *x == b)
                                .expect("the chosen record is among the answers");
                            let record = Arc::new(r.clone());
                            self.phase = Phase::Finished;
                            let key = self.key.clone();
                            let msg = ReplicaRequest::Accept {
                                key,
                                ballot,
                                record,
                                next: None,
                            };
                            let round = self.round;
                            return vec![Action::Send {
                                round,
                                to: from,
                                msg: Arc::new(msg),
                            }];
                        }
                        // A replica that answered after the quorum differs: it lags, or
                        // holds a write that reached too few replicas. The client has
                        // its answer; a full round now settles the key everywhere.
                        return self.prepare(ballots);
                    }
                    if everyone {
                        return self.finish_read(settled);
                    }
                    if all_asked_answered {
                        self.phase = Phase::Finished;
                    }
                    return Vec::new();
                }
                let enough = match bug(Bug::ReadOneReplica) {
                    true => got().next().is_some(),
                    false => self.q.met(|i| seen[i].is_some()),
                };
                // (A quorum that only compared waits for the record: the replica asked
                // for it answers, fails, and then others are asked, or is hedged.)
                let Some(record) = record.filter(|_| enough) else {
                    return Vec::new();
                };
                let current = record.as_ref().map(|(_, r)| r);
                let fence = expiry_fence(current, &self.ctx, &self.q);
                if !agreed || fence.is_some() {
                    // Replicas disagree, or the record has only just expired: make the
                    // newest record (or its expiry) chosen before answering.
                    return self.prepare(ballots);
                }
                let outcome = match apply(&self.op, current, &self.ctx) {
                    Ok(Effect::Unchanged(r)) => Ok(r),
                    Ok(Effect::Write(_)) => unreachable!("a plain get never writes"),
                    Err(s) => Err(s),
                };
                let long_dead = long_dead_at(record).is_some();
                let dead_at = match record {
                    Some((ballot, r)) if r.tombstone || !r.is_live(self.ctx.now_secs()) => {
                        Some(*ballot)
                    }
                    _ => None,
                };
                *chosen = Some(ballot_of(record));
                let mut actions = vec![self.reply(outcome)];
                if everyone {
                    actions.extend(self.finish_read(settled));
                } else if self.damaged_seen {
                    actions.extend(self.prepare(ballots));
                } else if bug(Bug::PurgeBeforeAllReplicas) {
                    if let Some(ballot) = dead_at {
                        let key = self.key.clone();
                        actions.extend(self.broadcast(ReplicaRequest::Purge { key, ballot }));
                    }
                } else if long_dead {
                    // Purged only once every replica is known to hold it.
                    actions.extend(self.ask(|_| true));
                } else if all_asked_answered {
                    self.phase = Phase::Finished;
                }
                actions
            }
            Phase::Preparing { promises, refused } => {
                if promises[from].is_some() || refused[from] {
                    return Vec::new();
                }
                match reply {
                    ReplicaReply::Promise { accepted } => {
                        let held = promises.iter().flatten().filter_map(identity);
                        check_one_record_per_ballot(held, identity(&accepted));
                        promises[from] = Some(accepted);
                    }
                    _ => refused[from] = true,
                }
                if self.q.out_of_reach(|i| refused[i]) {
                    return self.back_off();
                }
                if !self.q.met(|i| promises[i].is_some()) {
                    return Vec::new();
                }
                let got: Vec<&Option<Accepted>> = promises.iter().flatten().collect();
                let agreed = all_same_ballot(got.iter().map(|a| ballot_of(a)));
                let highest = got
                    .iter()
                    .filter_map(|a| a.as_ref())
                    .max_by_key(|(b, _)| *b)
                    .cloned();
                if agreed {
                    self.forget_lost_attempts(highest.as_ref());
                }
                self.decide(ballots, highest.map(|(_, r)| r), agreed)
            }
            Phase::Accepting {
                acks,
                refused,
                full,
                first_write,
                grants,
            } => {
                if acks[from] || refused[from] {
                    return Vec::new();
                }
                match reply {
                    ReplicaReply::Accepted => acks[from] = true,
                    ReplicaReply::Full => (refused[from], *full) = (true, *full + 1),
                    _ => refused[from] = true,
                }
                let count = |v: &[bool]| v.iter().filter(|b| **b).count();
                let (acked, lost) = (count(acks), count(refused));
                // Every replica is full: a cache with no room, told as such at once.
                let out_of_room = *first_write && *full == lost && acked == 0;
                if !self.replied && out_of_room && lost == self.q.replicas {
                    self.wrote.pop();
                    self.phase = Phase::Finished;
                    return vec![self.reply(Err(Status::SSOutofResource))];
                }
                let met = self.q.met(|i| acks[i]);
                if met && grants.is_some() {
                    self.granted = grants.take();
                    if self.on_lease {
                        self.lease_outcome = Some(true);
                    }
                }
                if !self.replied && self.q.out_of_reach(|i| refused[i]) && !out_of_room {
                    if self.on_lease {
                        self.lease_outcome = Some(false);
                    }
                    return self.back_off();
                }
                let mut actions = Vec::new();
                if !self.replied && met {
                    let outcome = self
                        .outcome
                        .take()
                        .expect("an accept always has an outcome");
                    actions.push(self.reply(outcome));
                }
                // Once answered, nothing more comes of this round after a quorum took
                // it: the replicas still to answer have the accept all the same.
                if self.replied && (met || acked + lost == self.q.replicas) {
                    self.phase = Phase::Finished;
                }
                actions
            }
            Phase::BackingOff => {
                // Late answers to the accept round that just failed still tell whether
                // this request's record reached any replica.
                if round == self.write_round && matches!(reply, ReplicaReply::Rejected { .. }) {
                    self.write_refusals += 1;
                }
                Vec::new()
            }
            Phase::Finished => Vec::new(),
        }
    }

    /// With a quorum of promises: apply the operation to the newest record and write
    /// the result; when the operation changes nothing, write back the newest record if
    /// the quorum did not agree on it, or its expiry if that is not yet durable.
    fn decide(
        &mut self,
        ballots: &dyn BallotSource,
        current: Option<Record>,
        agreed: bool,
    ) -> Vec<Action> {
        let effect = match self.earlier_attempt(current.as_ref()) {
            // It took effect: never apply twice.
            Attempt::Applied(mine) => Ok(Effect::Unchanged(
                (!mine.tombstone).then(|| Arc::unwrap_or_clone(mine)),
            )),
            Attempt::Unknown => Err(Status::CommitFailure),
            // Not yet, at least: `current` is only the newest record a quorum holds,
            // not necessarily the chosen one, so an earlier attempt of ours may still
            // win. Keep looking for it in later rounds until a round is accepted.
            Attempt::NotApplied => {
                self.attempts += 1;
                let mut ctx = self.ctx;
                ctx.request_id = attempt_originator(self.ctx.request_id, self.attempts);
                apply(&self.op, current.as_ref(), &ctx)
            }
        };
        let sent_before = self.sent_own_write;
        let (outcome, write) = match effect {
            Ok(Effect::Write(new)) => {
                // One copy, shared by the accepts, the attempt kept and the lease.
                let new = Arc::new(new);
                self.sent_own_write = true;
                if self.op.writes_originator() {
                    let base = current.as_ref().map(|r| r.originator);
                    self.wrote.push(Sent {
                        record: new.clone(),
                        base,
                        ballot: self.ballot,
                    });
                    self.write_refusals = 0;
                    self.write_round = self.round + 1;
                }
                // (A get that extends the key's time to live writes, and answers with
                // the value.)
                let shown = (!new.tombstone).then(|| match self.op {
                    Op::Get { .. } => Record::clone(&new),
                    _ => new.meta_only(),
                });
                (Ok(shown), Some(new))
            }
            Ok(Effect::Unchanged(r)) => (Ok(r), self.write_back(current, agreed).map(Arc::new)),
            Err(s) => (Err(s), self.write_back(current, agreed).map(Arc::new)),
        };
        match write {
            None if self.replied => {
                self.phase = Phase::Finished; // a repair round that found nothing to do
                Vec::new()
            }
            None => vec![self.reply(outcome)],
            Some(record) => {
                self.outcome = Some(outcome);
                let ballot = self.ballot;
                // Reserved from the counter, so no other round of this proxy uses it.
                let next = ballots.next_above(ballot.counter);
                assert!(next > ballot, "a lease's ballot is above the accepted one");
                self.round += 1; // late promises must not count as accept replies
                self.phase = Phase::Accepting {
                    acks: smallvec![false; self.q.replicas],
                    refused: smallvec![false; self.q.replicas],
                    full: 0,
                    first_write: !sent_before && self.sent_own_write,
                    grants: Some(Lease {
                        ballot: next,
                        record: record.clone(),
                    }),
                };
                self.broadcast(ReplicaRequest::Accept {
                    key: self.key.clone(),
                    ballot,
                    record,
                    next: Some(next),
                })
            }
        }
    }

    /// Whether a record this request sent in an earlier round is in the history of
    /// `current`, the newest record a quorum reported. One that took effect is in
    /// `current`'s lineage; one whose base is in the lineage while it is not never took
    /// effect (before `current`, at least: `current` may not be chosen yet, so the
    /// question is asked again every round until one is accepted). Otherwise (the
    /// lineage is too short to tell) the outcome is unknown.
    fn earlier_attempt(&self, current: Option<&Record>) -> Attempt {
        if self.wrote.is_empty() || bug(Bug::RetryReapplies) {
            return Attempt::NotApplied;
        }
        let Some(current) = current else {
            // Nothing at all: ours did not take effect (tombstones are kept far longer
            // than a request lives, so it cannot have come and gone).
            return Attempt::NotApplied;
        };
        if let Some(mine) = self
            .wrote
            .iter()
            .find(|sent| current.descends_from(&sent.record.originator))
        {
            return Attempt::Applied(mine.record.clone());
        }
        if self.wrote.iter().all(|sent| sent.provably_not_in(current)) {
            Attempt::NotApplied
        } else {
            Attempt::Unknown
        }
    }

    /// A quorum agreeing on `chosen` means it is chosen: an attempt of ours sent at a
    /// lower ballot and not in its history can never take effect any more.
    fn forget_lost_attempts(&mut self, chosen: Option<&Accepted>) {
        let Some((ballot, record)) = chosen else {
            return;
        };
        self.wrote
            .retain(|sent| sent.ballot > *ballot || !sent.provably_not_in(record));
    }

    /// Whether the operation, applied to `current`, writes (rather than answering
    /// from it alone).
    fn writes_on(&self, current: &Record) -> bool {
        matches!(
            apply(&self.op, Some(current), &self.ctx),
            Ok(Effect::Write(_))
        )
    }

    fn prepare(&mut self, ballots: &dyn BallotSource) -> Vec<Action> {
        self.on_lease = false;
        self.granted = None; // a higher ballot of ours supersedes it
        self.round += 1;
        self.ballot = ballots.next_above(self.highest_seen);
        self.highest_seen = self.highest_seen.max(self.ballot.counter);
        self.phase = Phase::Preparing {
            promises: vec![None; self.q.replicas],
            refused: smallvec![false; self.q.replicas],
        };
        let ballot = self.ballot;
        self.broadcast(ReplicaRequest::Prepare {
            key: self.key.clone(),
            ballot,
        })
    }

    fn back_off(&mut self) -> Vec<Action> {
        self.phase = Phase::BackingOff;
        vec![Action::Backoff {
            attempt: self.attempt,
        }]
    }

    fn reply(&mut self, outcome: Outcome) -> Action {
        assert!(!self.replied, "a request is answered once");
        self.replied = true;
        if matches!(self.phase, Phase::Preparing { .. }) {
            self.phase = Phase::Finished;
        }
        Action::Reply(outcome)
    }

    /// What an operation that changes nothing still writes (see [`Self::decide`]). A
    /// repair round (after the answer, or for a damaged replica) writes back even when
    /// its quorum agreed: the replica it was started for need not be in that quorum. A
    /// damaged replica of a key nobody holds is repaired with a tombstone.
    fn write_back(&self, current: Option<Record>, agreed: bool) -> Option<Record> {
        let repairing = self.replied || self.damaged_seen;
        expiry_fence(current.as_ref(), &self.ctx, &self.q)
            .or_else(|| current.filter(|_| !agreed || repairing))
            .or_else(|| {
                self.damaged_seen
                    .then(|| Record::absence(self.ctx.now_ns, self.ctx.request_id))
            })
    }

    /// Every replica answered the read. If all hold the same record, long dead, it is
    /// removed everywhere.
    /// Ends a read every replica answered. `settled` is `None` when the answers
    /// disagree (a full round was started instead), else the ballot to purge the
    /// record at if it is long dead.
    fn finish_read(&mut self, settled: Option<Option<Ballot>>) -> Vec<Action> {
        self.phase = Phase::Finished;
        match settled {
            Some(Some(ballot)) => self.broadcast(ReplicaRequest::Purge {
                key: self.key.clone(),
                ballot,
            }),
            _ => Vec::new(),
        }
    }

    fn broadcast(&self, msg: ReplicaRequest) -> Vec<Action> {
        let msg = Arc::new(msg);
        (0..self.q.replicas)
            .map(|to| Action::Send {
                round: self.round,
                to,
                msg: msg.clone(),
            })
            .collect()
    }
}

/// The originator of a request's `attempt`-th record (from 1): the request id, made
/// distinct per attempt. The request id itself is left to the expiry fences it writes,
/// which must never pass for one of its attempts.
fn attempt_originator(request_id: [u8; 16], attempt: u32) -> [u8; 16] {
    let mut id = request_id;
    for (b, a) in id[12..].iter_mut().zip(attempt.to_be_bytes()) {
        *b ^= a;
    }
    id
}

/// The tombstone that makes `current`'s expiry durable, if it expired so recently that
/// another proxy's clock may still call it live.
fn expiry_fence(current: Option<&Record>, ctx: &Context, q: &Quorum) -> Option<Record> {
    let r = current?;
    let now = ctx.now_secs();
    let fresh = !r.tombstone
        && r.expires_at <= now
        && now < r.expires_at.saturating_add(q.expiry_fence_secs);
    (fresh && !bug(Bug::ExpiryUnfenced)).then(|| {
        r.buried(
            r.version,
            u64::from(r.expires_at) * 1_000_000_000,
            ctx.request_id,
        )
    })
}

fn ballot_of(accepted: &Option<Accepted>) -> Option<Ballot> {
    accepted.as_ref().map(|(b, _)| *b)
}

/// What tells an accepted record from another: its ballot and its originator.
fn identity(accepted: &Option<Accepted>) -> Option<(Ballot, [u8; 16])> {
    accepted.as_ref().map(|(b, r)| (*b, r.originator))
}

/// Paxos accepts at most one record per ballot (each ballot's proposer sends one): two
/// replicas holding different records under one ballot mean a ballot was reused.
fn check_one_record_per_ballot(
    held: impl IntoIterator<Item = (Ballot, [u8; 16])>,
    new: Option<(Ballot, [u8; 16])>,
) {
    let Some((ballot, originator)) = new else {
        return;
    };
    for (b, o) in held {
        if b == ballot && o != originator {
            crate::fault::invariant_violated(format_args!(
                "two records accepted under ballot {ballot:?} (originators {} and {})",
                RequestId(Some(o)),
                RequestId(Some(originator))
            ));
        }
    }
}

fn all_same_ballot(mut ballots: impl Iterator<Item = Option<Ballot>>) -> bool {
    let first = ballots.next();
    ballots.all(|b| Some(b) == first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Slot;
    use crate::replica::{step, Bounds, Stored, Write};
    use crate::semantics::{Condition, Value};
    use proptest::prelude::*;
    use std::cell::Cell;

    struct Counter(Cell<u64>, u64);
    impl BallotSource for Counter {
        fn next_above(&self, counter: u64) -> Ballot {
            self.0.set(self.0.get().max(counter) + 1);
            Ballot {
                counter: self.0.get(),
                proposer: self.1,
            }
        }
    }

    #[allow(clippy::large_enum_variant)] // (a test's messages: their size is no matter)
    enum Msg {
        Request {
            c: usize,
            round: u32,
            to: usize,
            req: Arc<ReplicaRequest>,
        },
        Reply {
            c: usize,
            round: u32,
            from: usize,
            reply: ReplicaReply,
        },
        /// A read's hedge timer, firing whenever the schedule delivers it.
        Hedge { c: usize, round: u32 },
    }

    /// Three in-memory replicas and some coordinators, with messages delivered in an
    /// order (and with losses) chosen by `choices`.
    struct Cluster {
        replicas: Vec<(Option<Slot>, Ballot)>,
        coords: Vec<(Coordinator, Counter)>,
        /// Each coordinator's replicas, as places in `replicas`.
        routes: Vec<Vec<usize>>,
        /// The replicas and quorums of the coordinators added next.
        map: (Vec<usize>, Quorum),
        outcomes: Vec<Option<Outcome>>,
        net: Vec<Msg>,
        /// Wall clock as replies arrive (0: each coordinator's own start time).
        now_ns: u64,
        /// Which replicas reads ask first (unless set: a quorum from the replica
        /// numbered as the request, so that reads start all round the replicas).
        read_from: Option<ReadFrom>,
    }

    impl Cluster {
        fn new(n: usize) -> Self {
            Cluster {
                replicas: vec![(None, Ballot::default()); n],
                coords: Vec::new(),
                routes: Vec::new(),
                map: ((0..n).collect(), Quorum::majority(n)),
                outcomes: Vec::new(),
                net: Vec::new(),
                now_ns: 0,
                read_from: None,
            }
        }

        fn add(&mut self, op: Op, id: u8) -> usize {
            self.add_at(op, id, 1000)
        }

        fn add_at(&mut self, op: Op, id: u8, now_secs: u64) -> usize {
            let proposer = Counter(Cell::new(0), self.coords.len() as u64);
            self.start(op, id, now_secs, proposer, None)
        }

        /// A request of the proposer that ran request `from`, on the lease it won.
        fn add_on_lease(&mut self, op: Op, id: u8, from: usize) -> usize {
            let (co, b) = &mut self.coords[from];
            let lease = co.take_lease();
            assert!(lease.is_some(), "request {from} won no lease");
            let proposer = Counter(Cell::new(b.0.get()), b.1);
            self.start(op, id, 1000, proposer, lease)
        }

        /// Three replicas of a key that request 0 created, and a set of the same
        /// proposer on the lease the create won, started (its accepts on their way):
        /// the set's request is the number returned.
        fn set_on_a_lease() -> (Self, usize) {
            let mut cl = Cluster::new(3);
            let first = cl.add(
                Op::Create {
                    value: val(1),
                    ttl: 0,
                },
                1,
            );
            cl.run(&[(0, false)]);
            let set = Op::Set {
                value: val(2),
                ttl: 0,
            };
            let second = cl.add_on_lease(set, 2, first);
            (cl, second)
        }

        /// A request of a proposer of its own whose counter starts at `counter`.
        fn add_counting_from(&mut self, op: Op, id: u8, counter: u64) -> usize {
            let proposer = Counter(Cell::new(counter), 1000 + self.coords.len() as u64);
            self.start(op, id, 1000, proposer, None)
        }

        fn start(
            &mut self,
            op: Op,
            id: u8,
            now_secs: u64,
            proposer: Counter,
            lease: Option<Lease>,
        ) -> usize {
            let ctx = Context {
                now_ns: now_secs * 1_000_000_000,
                request_id: [id; 16],
                default_ttl: 3600,
            };
            let key = StoreKey::new(b"ns", b"k", 16);
            let c = self.coords.len();
            let (route, q) = self.map.clone();
            let from = self.read_from.unwrap_or(ReadFrom::Quorum { first: c });
            let co = Coordinator::new(key, op, ctx, q).reading_from(from);
            self.coords.push((co, proposer));
            self.routes.push(route);
            self.outcomes.push(None);
            let actions = {
                let (co, b) = &mut self.coords[c];
                co.start(b, lease)
            };
            self.perform(c, actions);
            c
        }

        fn perform(&mut self, c: usize, actions: Vec<Action>) {
            for a in actions {
                match a {
                    Action::Send { round, to, msg } => self.net.push(Msg::Request {
                        c,
                        round,
                        to,
                        req: msg,
                    }),
                    Action::Backoff { .. } => {
                        let more = {
                            let (co, b) = &mut self.coords[c];
                            co.retry(b, self.now_ns)
                        };
                        self.perform(c, more);
                    }
                    Action::Reply(o) => {
                        assert!(self.outcomes[c].is_none());
                        self.outcomes[c] = Some(o);
                    }
                    Action::Hedge { round } => self.net.push(Msg::Hedge { c, round }),
                }
            }
        }

        fn deliver(&mut self, i: usize, drop: bool) {
            let msg = self.net.swap_remove(i);
            if drop {
                return;
            }
            match msg {
                Msg::Request { c, round, to, req } => {
                    let (slot, floor) = &mut self.replicas[self.routes[c][to]];
                    let bounds = Bounds {
                        floor: *floor,
                        ceiling: u64::MAX,
                    };
                    let (w, reply) = step(
                        &Stored::Slot(slot.clone().map(Arc::new)),
                        bounds,
                        (*req).clone(),
                    );
                    match w {
                        Some(Write::Put(s)) => *slot = Some(s),
                        Some(Write::Purge(b)) => {
                            *slot = None;
                            *floor = (*floor).max(b);
                        }
                        None => {}
                    }
                    self.net.push(Msg::Reply {
                        c,
                        round,
                        from: to,
                        reply,
                    });
                }
                Msg::Reply {
                    c,
                    round,
                    from,
                    reply,
                } => {
                    let actions = {
                        let (co, b) = &mut self.coords[c];
                        co.on_reply(round, from, reply, b, self.now_ns)
                    };
                    self.perform(c, actions);
                }
                Msg::Hedge { c, round } => {
                    let actions = self.coords[c].0.hedge(round);
                    self.perform(c, actions);
                }
            }
        }

        /// Runs until every coordinator answered and the network is quiet, using
        /// `choices` to pick deliveries (and losses), then delivering in order.
        fn run(&mut self, choices: &[(usize, bool)]) {
            let mut choices = choices.iter().chain(std::iter::repeat(&(0, false)));
            for _ in 0..20_000 {
                if self.net.is_empty() {
                    let waiting: Vec<usize> = (0..self.coords.len())
                        .filter(|&c| self.outcomes[c].is_none())
                        .collect();
                    if waiting.is_empty() {
                        return;
                    }
                    for c in waiting {
                        let round = self.coords[c].0.round();
                        let actions = self.coords[c].0.on_round_timeout(round);
                        self.perform(c, actions);
                    }
                    continue;
                }
                let &(i, drop) = choices.next().unwrap();
                let len = self.net.len();
                self.deliver(i % len, drop);
            }
        }

        /// Creates the key and runs until it is done.
        fn create_now(&mut self, value: Value, ttl: u32, id: u8) {
            self.add(Op::Create { value, ttl }, id);
            self.run(&[(0, false)]);
        }

        fn read(&mut self) -> Outcome {
            self.read_at(1000)
        }

        /// Once every one of `sets` sets was answered (a run only ends then): each Ok
        /// took effect exactly once, each CommitFailure at most once, and the version
        /// counts them.
        fn sets_applied_once(&mut self, sets: u32) -> Result<(), TestCaseError> {
            let count = |status: Result<(), Status>| {
                let same = |o: &&Option<Outcome>| match (o, status) {
                    (Some(Ok(_)), Ok(())) => true,
                    (Some(Err(s)), Err(want)) => *s == want,
                    _ => false,
                };
                self.outcomes.iter().filter(same).count() as u32
            };
            let (ok, unknown) = (count(Ok(())), count(Err(Status::CommitFailure)));
            prop_assert_eq!(ok + unknown, sets);
            let version = match self.read() {
                Ok(r) => r.unwrap().version,
                Err(s) => {
                    prop_assert_eq!(s, Status::NoKey);
                    0
                }
            };
            prop_assert!(
                ok <= version && version <= ok + unknown,
                "version {} ok {} unknown {}",
                version,
                ok,
                unknown
            );
            Ok(())
        }

        fn read_at(&mut self, now_secs: u64) -> Outcome {
            let c = self.add_at(Op::Get { extend_ttl: 0 }, 200, now_secs);
            self.run(&[(0, false)]);
            self.outcomes[c].clone().unwrap()
        }
    }

    fn val(s: u8) -> Value {
        Value {
            kind: 0,
            data: vec![s],
        }
    }

    fn schedule() -> impl Strategy<Value = Vec<(usize, bool)>> {
        proptest::collection::vec((any::<usize>(), proptest::bool::weighted(0.15)), 1..200)
    }

    proptest! {
        #[test]
        fn concurrent_creates_at_most_one_wins(sched in schedule(), n in prop_oneof![Just(3usize), Just(5)]) {
            let mut cl = Cluster::new(n);
            for i in 0..3u8 {
                cl.add(Op::Create { value: val(i), ttl: 0 }, i + 1);
            }
            cl.run(&sched);
            let winners: Vec<usize> = (0..3).filter(|&c| matches!(cl.outcomes[c], Some(Ok(_)))).collect();
            prop_assert!(winners.len() <= 1, "{:?}", cl.outcomes);
            for c in 0..3 {
                if let Some(Err(s)) = &cl.outcomes[c] {
                    prop_assert!(matches!(s, Status::DupKey | Status::CommitFailure), "{:?}", s);
                }
            }
            let got = cl.read();
            if let [w] = winners[..] {
                let r = got.unwrap().unwrap();
                prop_assert_eq!(r.value, vec![w as u8]);
                prop_assert_eq!(r.version, 1);
            }
        }

        #[test]
        fn conditional_updates_at_most_one_wins(sched in schedule()) {
            let mut cl = Cluster::new(3);
            cl.add(Op::Create { value: val(9), ttl: 0 }, 100);
            cl.run(&[(0, false)]);
            let start = cl.coords.len();
            for i in 0..3u8 {
                let condition = Condition { version: Some(1), ..Condition::default() };
                cl.add(Op::Update { value: val(i), ttl: 0, condition }, i + 1);
            }
            cl.run(&sched);
            let winners: Vec<usize> = (start..start + 3).filter(|&c| matches!(cl.outcomes[c], Some(Ok(_)))).collect();
            prop_assert!(winners.len() <= 1, "{:?}", cl.outcomes);
            let r = cl.read().unwrap().unwrap();
            prop_assert!(r.version <= 2);
            if let [w] = winners[..] {
                prop_assert_eq!(r.value, vec![(w - start) as u8]);
                prop_assert_eq!(r.version, 2);
            }
        }

        #[test]
        fn sets_are_applied_exactly_once(sched in schedule()) {
            let mut cl = Cluster::new(3);
            for i in 0..4u8 {
                cl.add(Op::Set { value: val(i), ttl: 0 }, i + 1);
            }
            cl.run(&sched);
            cl.sets_applied_once(4)?;
        }
    }

    /// Replicas A, X, Y (places 0–2) and B (3), and a change of the map from {A, X, Y}
    /// to {B, X, Y} through the joint map: the three maps as (route, quorum).
    fn maps_of_a_move() -> [(Vec<usize>, Quorum); 3] {
        let joint = Quorum {
            replicas: 4,
            layouts: Arc::new([vec![0, 1, 2], vec![3, 1, 2]]),
            ..Quorum::majority(4)
        };
        [
            (vec![0, 1, 2], Quorum::majority(3)),
            (vec![3, 1, 2, 0], joint),
            (vec![3, 1, 2], Quorum::majority(3)),
        ]
    }

    /// Four requests, `op(i)` each, from proxies on the maps `later - 1` and `later` of a
    /// move as `mix` says (false: the earlier map); then the cluster is left on the
    /// later map, for a read.
    fn on_adjacent_maps(later: usize, mix: &[bool], op: impl Fn(u8) -> Op) -> Cluster {
        let maps = maps_of_a_move();
        let mut cl = Cluster::new(4);
        for (i, on_later) in mix.iter().enumerate() {
            cl.map = maps[later - 1 + usize::from(*on_later)].clone();
            cl.add(op(i as u8), i as u8 + 1);
        }
        cl.map = maps[later].clone();
        cl
    }

    proptest! {
        /// Creates from proxies on two adjacent maps of a move (before and joint, or
        /// joint and after) at once: at most one wins, and a read on the later map
        /// finds it. Maps two apart never serve at once (servers fence older maps),
        /// and what the map before chose reaches the one after by the catch-up.
        #[test]
        fn creates_on_adjacent_maps_of_a_move_at_most_one_wins(sched in schedule(), later in 1usize..3, mix in proptest::collection::vec(any::<bool>(), 4)) {
            let mut cl = on_adjacent_maps(later, &mix, |i| Op::Create { value: val(i), ttl: 0 });
            cl.run(&sched);
            let winners: Vec<usize> = (0..4).filter(|&c| matches!(cl.outcomes[c], Some(Ok(_)))).collect();
            prop_assert!(winners.len() <= 1, "{:?}", cl.outcomes);
            let got = cl.read();
            if let [w] = winners[..] {
                prop_assert_eq!(got.unwrap().unwrap().value, vec![w as u8]);
            }
        }

        #[test]
        fn sets_on_adjacent_maps_of_a_move_are_applied_exactly_once(sched in schedule(), later in 1usize..3, mix in proptest::collection::vec(any::<bool>(), 4)) {
            let mut cl = on_adjacent_maps(later, &mix, |i| Op::Set { value: val(i), ttl: 0 });
            cl.run(&sched);
            cl.sets_applied_once(4)?;
        }
    }

    /// Why maps two apart must never serve at once: a create on the map before a move
    /// chosen by {A, X}, and one on the map after by {B, Y}, both win.
    #[test]
    fn maps_two_apart_can_both_win() {
        let [before, _, after] = maps_of_a_move();
        let mut cl = Cluster::new(4);
        cl.map = before;
        cl.add(
            Op::Create {
                value: val(1),
                ttl: 0,
            },
            1,
        );
        cl.map = after;
        cl.add(
            Op::Create {
                value: val(2),
                ttl: 0,
            },
            2,
        );
        // Deliver only what goes to A and X (0, 1) for the first, B and Y for the
        // second; drop the rest.
        let mut guard = 0;
        while !cl.net.is_empty() && guard < 1000 {
            guard += 1;
            let wanted = |m: &Msg| match m {
                Msg::Request { c: 0, to, .. } => *to < 2,
                Msg::Request { c: 1, to, .. } => *to != 1,
                _ => true,
            };
            let i = (0..cl.net.len()).find(|&i| wanted(&cl.net[i]));
            match i {
                Some(i) => cl.deliver(i, false),
                None => cl.deliver(0, true),
            }
        }
        assert!(matches!(cl.outcomes[0], Some(Ok(_))), "{:?}", cl.outcomes);
        assert!(matches!(cl.outcomes[1], Some(Ok(_))), "{:?}", cl.outcomes);
    }

    proptest! {
        #[test]
        fn a_write_on_a_lease_and_a_rival_write_at_most_one_wins(sched in schedule(), rival in 0u64..12) {
            let mut cl = Cluster::new(3);
            let first = cl.add(Op::Create { value: val(9), ttl: 0 }, 100);
            cl.run(&[(0, false)]);
            let condition = Condition { version: Some(1), ..Condition::default() };
            let leased = cl.add_on_lease(Op::Update { value: val(0), ttl: 0, condition: condition.clone() }, 1, first);
            let other = cl.add_counting_from(Op::Update { value: val(1), ttl: 0, condition }, 2, rival);
            cl.run(&sched);
            let winners: Vec<usize> = [leased, other].into_iter().filter(|&c| matches!(cl.outcomes[c], Some(Ok(_)))).collect();
            prop_assert!(winners.len() <= 1, "{:?}", cl.outcomes);
            let r = cl.read().unwrap().unwrap();
            if let [w] = winners[..] {
                prop_assert_eq!(r.value, vec![u8::from(w == other)]);
                prop_assert_eq!(r.version, 2);
            }
        }

        #[test]
        fn sets_on_leases_among_rival_sets_are_applied_exactly_once(sched in schedule(), rival in 0u64..12) {
            let mut cl = Cluster::new(3);
            let mut last = cl.add(Op::Set { value: val(0), ttl: 0 }, 1);
            cl.run(&[(0, false)]);
            for i in 1..4u8 {
                let next = match cl.coords[last].0.granted.is_some() {
                    true => cl.add_on_lease(Op::Set { value: val(i), ttl: 0 }, i + 1, last),
                    false => cl.add(Op::Set { value: val(i), ttl: 0 }, i + 1),
                };
                cl.add_counting_from(Op::Set { value: val(100 + i), ttl: 0 }, 100 + i, rival);
                cl.run(&sched);
                last = next;
            }
            let ok = cl.outcomes.iter().filter(|o| matches!(o, Some(Ok(_)))).count() as u32;
            let unknown = cl.outcomes.iter().filter(|o| matches!(o, Some(Err(Status::CommitFailure)))).count() as u32;
            prop_assert_eq!(ok + unknown, 7);
            let version = cl.read().unwrap().unwrap().version;
            prop_assert!(ok <= version && version <= ok + unknown, "version {} ok {} unknown {}", version, ok, unknown);
        }
    }

    #[test]
    fn a_write_on_a_lease_skips_phase_one() {
        let (mut cl, second) = Cluster::set_on_a_lease();
        assert_eq!(cl.net.len(), 3);
        for m in &cl.net {
            assert!(
                matches!(
                    m,
                    Msg::Request { req, .. }
                        if matches!(**req, ReplicaRequest::Accept { next: Some(_), .. })
                ),
                "a write on a lease goes straight to phase 2"
            );
        }
        cl.run(&[(0, false)]);
        assert_eq!(cl.coords[second].0.lease_outcome(), Some(true));
        assert_eq!(cl.read().unwrap().unwrap().version, 2);
        // A rival writes in between: the next write on the lease is refused, and
        // falls back to both phases.
        cl.add_counting_from(
            Op::Set {
                value: val(3),
                ttl: 0,
            },
            3,
            1 << 20,
        );
        cl.run(&[(0, false)]);
        let fourth = cl.add_on_lease(
            Op::Set {
                value: val(4),
                ttl: 0,
            },
            4,
            second,
        );
        cl.run(&[(0, false)]);
        assert_eq!(cl.coords[fourth].0.lease_outcome(), Some(false));
        assert!(matches!(cl.outcomes[fourth], Some(Ok(_))));
        let r = cl.read().unwrap().unwrap();
        assert_eq!((r.version, r.value), (4, vec![4]));
    }

    #[test]
    fn a_write_is_finished_once_answered_and_taken_by_a_quorum() {
        let (mut cl, second) = Cluster::set_on_a_lease();
        let to = |m: &Msg| match m {
            Msg::Request { to, .. } => Some(*to),
            _ => None,
        };
        // Replicas 0 and 1 take the accept and answer; replica 2's accept is on its way.
        for replica in [0, 1] {
            let i = cl.net.iter().position(|m| to(m) == Some(replica)).unwrap();
            cl.deliver(i, false);
        }
        while let Some(i) = cl.net.iter().position(|m| to(m).is_none()) {
            cl.deliver(i, false);
        }
        assert!(matches!(cl.outcomes[second], Some(Ok(_))));
        // Nothing more comes of this request: the driver may stop (the third replica
        // still gets its accept).
        assert!(cl.coords[second].0.is_finished());
        assert_eq!(cl.net.len(), 1);
        cl.deliver(0, false);
        let replies = cl.net.drain(..).collect::<Vec<_>>();
        assert_eq!(replies.len(), 1);
        let stored = cl.replicas[2].0.as_ref().and_then(Slot::accepted_ballot);
        assert_eq!(
            stored,
            cl.replicas[0].0.as_ref().and_then(Slot::accepted_ballot)
        );
    }

    #[test]
    fn expiry_is_judged_when_the_quorum_answers_not_when_the_request_began() {
        let mut cl = Cluster::new(3);
        cl.create_now(val(1), 2, 1);
        // An update that began while the record was live but whose promises come back
        // after it expired must not bring it back.
        cl.now_ns = 1005 * 1_000_000_000;
        let u = cl.add(
            Op::Update {
                value: val(2),
                ttl: 600,
                condition: Condition::default(),
            },
            2,
        );
        cl.run(&[(0, false)]);
        assert_eq!(cl.outcomes[u], Some(Err(Status::NoKey)));
    }

    /// A write answers with its record's meta fields, not a copy of its value; a get
    /// that extends the key's time to live writes too, and answers with the value.
    #[test]
    fn a_write_answers_without_its_value_and_a_get_with_it() {
        let mut cl = Cluster::new(3);
        cl.create_now(val(7), 10, 1); // at 1000: expires at 1010
        let created = cl.outcomes[0].clone().unwrap().unwrap().unwrap();
        assert_eq!(created.version, 1);
        assert!(created.value.is_empty() && created.lineage.is_empty());
        assert_eq!(cl.read().unwrap().unwrap().value, vec![7], "stored whole");
        let extend = cl.add(Op::Get { extend_ttl: 100 }, 2);
        cl.run(&[(0, false)]);
        let got = cl.outcomes[extend].clone().unwrap().unwrap().unwrap();
        assert_eq!((got.value, got.expires_at), (vec![7], 1100));
        assert_eq!(cl.read().unwrap().unwrap().expires_at, 1100, "a write");
    }

    #[test]
    fn a_fresh_expiry_is_made_durable_before_anyone_hears_of_it() {
        let mut cl = Cluster::new(3);
        cl.create_now(val(1), 2, 1); // created at 1000, expires at 1002
                                     // A proxy whose clock is ahead sees it expired...
        assert_eq!(cl.read_at(1002), Err(Status::NoKey));
        // ...so every replica now holds a tombstone, and a proxy whose clock is behind
        // cannot see the record live again.
        assert!(cl.replicas.iter().all(|(s, _)| s
            .as_ref()
            .and_then(|s| s.accepted.as_ref())
            .is_some_and(|(_, r)| r.tombstone)));
        assert_eq!(cl.read_at(1001), Err(Status::NoKey));
        // Long after expiry no fence is written: every clock agrees by then.
        let mut cl = Cluster::new(3);
        cl.create_now(val(1), 2, 1);
        assert_eq!(cl.read_at(1010), Err(Status::NoKey));
        assert!(cl.replicas.iter().all(|(s, _)| s
            .as_ref()
            .and_then(|s| s.accepted.as_ref())
            .is_some_and(|(_, r)| !r.tombstone)));
    }

    #[test]
    fn a_request_that_sent_no_record_of_its_own_fails_definitely() {
        let mut cl = Cluster::new(3);
        let c = cl.add(Op::Destroy, 1);
        while !cl.net.is_empty() {
            cl.deliver(0, true); // every prepare lost
        }
        assert_eq!(cl.coords[c].0.timeout_status(), Status::NoStorageServer);
        let c = cl.add(
            Op::Create {
                value: val(1),
                ttl: 0,
            },
            2,
        );
        for _ in 0..6 {
            cl.deliver(0, false); // prepares and promises get through
        }
        while !cl.net.is_empty() {
            cl.deliver(0, true); // accepts lost: it may have taken effect
        }
        assert_eq!(cl.coords[c].0.timeout_status(), Status::Timeout);
    }

    #[test]
    fn a_read_from_every_replica_repairs_a_lagging_one() {
        let mut cl = Cluster::new(3);
        cl.read_from = Some(ReadFrom::Every);
        cl.create_now(val(1), 0, 1);
        let lost = cl.replicas[2].0.take();
        assert!(lost.is_some());
        assert_eq!(cl.read().unwrap().unwrap().value, vec![1]);
        while !cl.net.is_empty() {
            cl.deliver(0, false);
        }
        let record = |s: &Slot| s.accepted.clone().map(|(_, r)| r);
        assert_eq!(
            record(cl.replicas[2].0.as_ref().unwrap()),
            record(&lost.unwrap())
        );
    }

    #[test]
    fn a_quorum_read_repairs_a_lagging_replica_only_if_it_asks_it() {
        for (first, repaired) in [(0, false), (1, true), (2, true)] {
            let mut cl = Cluster::new(3);
            cl.create_now(val(1), 0, 1);
            assert!(cl.replicas[2].0.take().is_some());
            cl.read_from = Some(ReadFrom::Quorum { first });
            let c = cl.add(Op::Get { extend_ttl: 0 }, 200);
            // The replicas it asked answer in time: no hedge.
            cl.net.retain(|m| !matches!(m, Msg::Hedge { .. }));
            cl.run(&[(0, false)]);
            assert_eq!(
                cl.outcomes[c].clone().unwrap().unwrap().unwrap().value,
                vec![1]
            );
            assert_eq!(cl.replicas[2].0.is_some(), repaired, "first {first}");
        }
    }

    /// A request's context at second 1000, as a coordinator made by hand takes it.
    fn context_at_1000s() -> Context {
        Context {
            now_ns: 1000 * 1_000_000_000,
            request_id: [9; 16],
            default_ttl: 3600,
        }
    }

    #[test]
    fn a_quorum_read_asks_the_rest_when_hedged_or_when_a_replica_fails() {
        let ctx = context_at_1000s();
        let ballots = Counter(Cell::new(0), 1);
        let record = |ballot: u64| {
            let r = Record::absence(1, [1; 16]);
            Some((
                Ballot {
                    counter: ballot,
                    proposer: 0,
                },
                r,
            ))
        };
        let key = StoreKey::new(b"ns", b"k", 16);
        // The replicas asked for their records, then those asked to compare.
        let reads_to = |actions: &[Action]| -> (Vec<usize>, Vec<usize>) {
            let sent = |record: bool| {
                (actions.iter())
                    .filter_map(|a| match a {
                        Action::Send { to, msg, .. } => match **msg {
                            ReplicaRequest::Read { .. } if record => Some(*to),
                            ReplicaRequest::ReadBallot { .. } if !record => Some(*to),
                            _ => None,
                        },
                        _ => None,
                    })
                    .collect()
            };
            (sent(true), sent(false))
        };
        let read = Op::Get { extend_ttl: 0 };
        let new = || {
            let co = Coordinator::new(key.clone(), read.clone(), ctx, Quorum::majority(3));
            co.reading_from(ReadFrom::Quorum { first: 2 })
        };

        // The quorum's first replica (2) sends its record, the next (0) compares.
        // Hedged: the third replica is asked for its record, and completes the quorum.
        let mut co = new();
        let first = co.start(&ballots, None);
        assert_eq!(reads_to(&first), (vec![2], vec![0]));
        let round = co.round();
        assert!(first.contains(&Action::Hedge { round }));
        let value = |a| ReplicaReply::Value { accepted: a };
        let ballot = |a: Option<(Ballot, Record)>| ReplicaReply::Ballot {
            accepted: a.map(|(b, r)| (b, r.originator)),
        };
        assert!(co
            .on_reply(round, 2, value(record(4)), &ballots, 0)
            .is_empty());
        assert_eq!(reads_to(&co.hedge(round)), (vec![1], vec![]));
        assert!(co.hedge(round).is_empty(), "asked once");
        let done = co.on_reply(round, 1, value(record(4)), &ballots, 0);
        assert!(matches!(done[..], [Action::Reply(_)]), "{done:?}");
        assert!(co.hedge(round).is_empty(), "answered: nothing to hedge");

        // The replica asked for its record fails: the third is asked for its own at
        // once, and a quorum that only compared waits for it.
        let mut co = new();
        co.start(&ballots, None);
        let failed = ReplicaReply::Failed {
            reason: "down".into(),
        };
        assert_eq!(
            reads_to(&co.on_reply(round, 2, failed, &ballots, 0)),
            (vec![1], vec![])
        );
        assert!(co
            .on_reply(round, 0, ballot(record(4)), &ballots, 0)
            .is_empty());
        let done = co.on_reply(round, 1, value(record(4)), &ballots, 0);
        assert!(matches!(done[..], [Action::Reply(_)]), "{done:?}");

        // A ballot and a record that agree: done, nobody else asked.
        let mut co = new();
        co.start(&ballots, None);
        assert!(co
            .on_reply(round, 0, ballot(record(4)), &ballots, 0)
            .is_empty());
        let done = co.on_reply(round, 2, value(record(4)), &ballots, 0);
        assert!(matches!(done[..], [Action::Reply(_)]), "{done:?}");
        assert!(co.is_finished());

        // They differ: a full round (phase 1 to every replica) before any answer.
        let mut co = new();
        co.start(&ballots, None);
        co.on_reply(round, 2, value(record(4)), &ballots, 0);
        let round_two = co.on_reply(round, 0, ballot(record(5)), &ballots, 0);
        assert!(
            (round_two.iter()).all(|a| matches!(a, Action::Send { msg, .. }
                if matches!(**msg, ReplicaRequest::Prepare { .. }))),
            "{round_two:?}"
        );
        assert_eq!(round_two.len(), 3);
    }

    #[test]
    fn destroy_purges_the_tombstone_everywhere() {
        let mut cl = Cluster::new(5);
        cl.create_now(val(1), 0, 1);
        let d = cl.add(Op::Destroy, 2);
        cl.run(&[(0, false)]);
        while !cl.net.is_empty() {
            cl.deliver(0, false);
        }
        assert_eq!(cl.outcomes[d], Some(Ok(None)));
        // A fresh tombstone stays (a retrying request may still need the history)...
        assert_eq!(cl.read(), Err(Status::NoKey));
        while !cl.net.is_empty() {
            cl.deliver(0, false);
        }
        assert!(cl.replicas.iter().all(|(s, _)| s.is_some()));
        // ...and is removed by a read once it is older than the grace period.
        assert_eq!(cl.read_at(1000 + 3601), Err(Status::NoKey));
        while !cl.net.is_empty() {
            cl.deliver(0, false);
        }
        assert!(
            cl.replicas
                .iter()
                .all(|(s, f)| s.is_none() && f.counter > 0),
            "{:?}",
            cl.replicas
        );
        assert_eq!(cl.read(), Err(Status::NoKey));
        cl.create_now(val(3), 0, 3);
        assert_eq!(cl.read().unwrap().unwrap().value, vec![3]);
    }

    #[test]
    fn a_write_every_replica_is_too_full_for_fails_at_once_and_certainly() {
        let ctx = context_at_1000s();
        let set = || Op::Set {
            value: Value {
                kind: 0,
                data: b"v".to_vec(),
            },
            ttl: 0,
        };
        for accepted_by_one in [false, true] {
            let key = StoreKey::new(b"ns", b"k", 16);
            let mut co = Coordinator::new(key, set(), ctx, Quorum::majority(3));
            let ballots = Counter(Cell::new(0), 1);
            co.start(&ballots, None);
            let (mut actions, prepared) = (Vec::new(), co.round());
            for from in 0..3 {
                let promise = ReplicaReply::Promise { accepted: None };
                actions.extend(co.on_reply(prepared, from, promise, &ballots, ctx.now_ns));
            }
            assert!(matches!(
                &actions[..],
                [Action::Send { msg, .. }, ..] if matches!(**msg, ReplicaRequest::Accept { .. })
            ));
            let round = co.round();
            let mut last = Vec::new();
            for from in 0..3 {
                let reply = match (from, accepted_by_one) {
                    (0, true) => ReplicaReply::Accepted,
                    _ => ReplicaReply::Full,
                };
                last.extend(co.on_reply(round, from, reply, &ballots, ctx.now_ns));
            }
            let failed = last
                .iter()
                .any(|a| matches!(a, Action::Reply(Err(Status::SSOutofResource))));
            // A record one replica took may yet be chosen: then it is not a failure.
            assert_eq!(failed, !accepted_by_one, "{last:?}");
        }
    }
}
