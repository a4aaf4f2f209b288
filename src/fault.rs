//! Fault-injection points inside the production code, FoundationDB style: the
//! simulator (`sim/`) drives them; in every build without `--cfg madsim` they are
//! constants that the compiler removes.
//!
//! Three kinds: *link delay*, which gives each proxy↔storage connection the latency of
//! the datacentres it joins (madsim's network has one latency range for every link);
//! *crash points*, places inside the storage server where the simulator may crash the
//! node (mid group commit); and *bugs*, deliberately broken protocol variants that
//! exist only so that a test can show the simulator catches them.

/// A deliberately broken variant of the protocol. Only a simulator build can switch
/// one on ([`set_bugs`]); production builds never can.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// A plain get is answered from the first replica that replies.
    ReadOneReplica,
    /// A replica accepts a ballot lower than the one it promised.
    AcceptLowerBallot,
    /// A dead record is purged as soon as a quorum holds it: not every replica has
    /// it yet, and the grace period is not waited out.
    PurgeBeforeAllReplicas,
    /// An expired record is reported gone without making its expiry durable, so a
    /// proxy whose clock is behind can still see it live.
    ExpiryUnfenced,
    /// The proxy waits for one reply fewer than a majority.
    QuorumOneShort,
    /// A retried write does not look for its earlier attempt and may apply twice.
    RetryReapplies,
    /// Group commit tells the replies waiting on a batch that it is durable before
    /// its fsync has happened.
    AckBeforeFsync,
    /// A promise is answered before it is durable.
    PromiseBeforeDurable,
    /// A proxy does not raise its ballot above the one a rejection names.
    BallotNotRaised,
    /// A record is still live in the second it expires.
    ExpiryOffByOne,
    /// A purge raises the replica-wide ballot floor in memory only.
    FloorNotPersisted,
    /// The sweeper purges a long-dead record it holds without asking the other
    /// replicas whether they hold the same one.
    SweeperPurgesAlone,
    /// Read repair forces the agreed record onto a straggler at a fresh ballot above
    /// the straggler's own, skipping phase 1, overwriting whatever newer record it held.
    RepairOverwritesNewer,
    /// A damaged slot accepts a repair at any ballot, below promises it may have made.
    RepairBelowCeiling,
    /// A proxy's lease stays in its table while a request uses it: a write that fails
    /// leaves its ballot to be sent again with another record.
    LeaseReused,
    /// A write on a lease that is refused retries phase 2 alone at a higher ballot, as
    /// if the lease's record were still the newest (another proxy prepared and wrote).
    LeaseOutlivesRejection,
    /// Group commit writes a batch of several changes without its last one (a torn
    /// batch), and reports the whole batch durable.
    BatchLosesLastChange,
    /// A read takes a damaged replica's answer for "nothing accepted here".
    ReadTakesDamagedAsAbsent,
    /// A restarted in-memory replica serves the keys it lost as absent at once.
    ForgottenAsAbsent,
    /// A restarted in-memory replica recovers at once, without waiting out the
    /// requests that may still count its forgotten accepts.
    RecoveryWithoutWait,
    /// A restarted in-memory replica recovers from the keys of one peer only.
    RecoveryAsksOnePeer,
    /// A recovering in-memory replica that purged a key since its restart treats it as
    /// lost again, forgetting the promise the purge moved into its floor.
    RecoveryForgetsPurgedPromise,
    /// A storage server serves senders on an older map than its own: a change of the
    /// map is not fenced, and quorums of maps two changes apart can miss each other.
    ServesOlderMaps,
    /// A move of shards skips the catch-up: records chosen before the change, on a
    /// majority that included the leaving node, never reach the joining one.
    MoveWithoutCatchUp,
    /// A move publishes the final map at once, without the joint one: the old node
    /// leaves before the new one has caught up or been part of any quorum.
    MoveSkipsJoint,
    /// A joining node takes a copied record over whatever it holds, even over a newer
    /// record accepted through the joint map.
    CopyOverPromise,
    /// A move takes its copy from one old node as the catch-up: records that node
    /// missed (chosen on the others) are never read through the joint quorums.
    CatchUpTrustsCopy,
    /// A quorum read answers with the record one replica sent without comparing the
    /// ballots the others reported (they were asked to compare only).
    ReadIgnoresBallots,
}

impl Bug {
    pub const ALL: [Bug; 28] = [
        Bug::ReadOneReplica,
        Bug::AcceptLowerBallot,
        Bug::PurgeBeforeAllReplicas,
        Bug::ExpiryUnfenced,
        Bug::QuorumOneShort,
        Bug::RetryReapplies,
        Bug::AckBeforeFsync,
        Bug::PromiseBeforeDurable,
        Bug::BallotNotRaised,
        Bug::ExpiryOffByOne,
        Bug::FloorNotPersisted,
        Bug::SweeperPurgesAlone,
        Bug::RepairOverwritesNewer,
        Bug::RepairBelowCeiling,
        Bug::LeaseReused,
        Bug::LeaseOutlivesRejection,
        Bug::BatchLosesLastChange,
        Bug::ReadTakesDamagedAsAbsent,
        Bug::ForgottenAsAbsent,
        Bug::RecoveryWithoutWait,
        Bug::RecoveryAsksOnePeer,
        Bug::RecoveryForgetsPurgedPromise,
        Bug::ServesOlderMaps,
        Bug::MoveWithoutCatchUp,
        Bug::MoveSkipsJoint,
        Bug::CopyOverPromise,
        Bug::CatchUpTrustsCopy,
        Bug::ReadIgnoresBallots,
    ];

    /// The name the simulator's `--bug` flag takes.
    pub fn name(self) -> &'static str {
        match self {
            Bug::ReadOneReplica => "read-one-replica",
            Bug::AcceptLowerBallot => "accept-lower-ballot",
            Bug::PurgeBeforeAllReplicas => "purge-before-all-replicas",
            Bug::ExpiryUnfenced => "expiry-unfenced",
            Bug::QuorumOneShort => "quorum-one-short",
            Bug::RetryReapplies => "retry-reapplies",
            Bug::AckBeforeFsync => "ack-before-fsync",
            Bug::PromiseBeforeDurable => "promise-before-durable",
            Bug::BallotNotRaised => "ballot-not-raised",
            Bug::ExpiryOffByOne => "expiry-off-by-one",
            Bug::FloorNotPersisted => "floor-not-persisted",
            Bug::SweeperPurgesAlone => "sweeper-purges-alone",
            Bug::RepairOverwritesNewer => "repair-overwrites-newer",
            Bug::RepairBelowCeiling => "repair-below-ceiling",
            Bug::LeaseReused => "lease-reused",
            Bug::LeaseOutlivesRejection => "lease-outlives-rejection",
            Bug::BatchLosesLastChange => "batch-loses-last-change",
            Bug::ReadTakesDamagedAsAbsent => "read-takes-damaged-as-absent",
            Bug::ForgottenAsAbsent => "forgotten-as-absent",
            Bug::RecoveryWithoutWait => "recovery-without-wait",
            Bug::RecoveryAsksOnePeer => "recovery-asks-one-peer",
            Bug::RecoveryForgetsPurgedPromise => "recovery-forgets-purged-promise",
            Bug::ServesOlderMaps => "serves-older-maps",
            Bug::MoveWithoutCatchUp => "move-without-catch-up",
            Bug::MoveSkipsJoint => "move-skips-joint",
            Bug::CopyOverPromise => "copy-over-promise",
            Bug::CatchUpTrustsCopy => "catch-up-trusts-copy",
            Bug::ReadIgnoresBallots => "read-ignores-ballots",
        }
    }

    /// Whether the variant breaks only in-memory replicas' recovery (the simulator's
    /// `--memory` runs), rather than the protocol on durable engines.
    pub fn in_memory_recovery(self) -> bool {
        matches!(
            self,
            Bug::ForgottenAsAbsent
                | Bug::RecoveryWithoutWait
                | Bug::RecoveryAsksOnePeer
                | Bug::RecoveryForgetsPurgedPromise
        )
    }

    /// Whether the variant breaks only changes of the map (the simulator's `--moves`
    /// runs).
    pub fn map_change(self) -> bool {
        matches!(
            self,
            Bug::ServesOlderMaps
                | Bug::MoveWithoutCatchUp
                | Bug::MoveSkipsJoint
                | Bug::CopyOverPromise
                | Bug::CatchUpTrustsCopy
        )
    }

    pub fn from_name(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// Where inside a storage server the simulator may crash it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// A group-commit batch is being synced: its replies are computed, none is sent.
    DuringSync,
    /// A batch is durable, its replies not yet released.
    AfterSync,
}

#[cfg(madsim)]
mod sim {
    use super::{Bug, CrashPoint};
    use std::net::IpAddr;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, RwLock};
    use std::time::Duration;

    static BUGS: AtomicU32 = AtomicU32::new(0);

    /// Extra one-way delay of a link, by the IPs of its two ends.
    pub type LinkDelay = Arc<dyn Fn(IpAddr, IpAddr) -> Duration + Send + Sync>;

    static LINK_DELAY: RwLock<Option<LinkDelay>> = RwLock::new(None);

    /// Switches on exactly `bugs` (the simulator runs one seed per process).
    pub fn set_bugs(bugs: &[Bug]) {
        let mask = bugs.iter().fold(0, |m, b| m | 1 << *b as u32);
        BUGS.store(mask, Ordering::Relaxed);
    }

    pub fn bug(b: Bug) -> bool {
        BUGS.load(Ordering::Relaxed) & (1 << b as u32) != 0
    }

    /// Installs the function that gives every proxy↔storage link its extra delay.
    pub fn set_link_delay(f: LinkDelay) {
        *LINK_DELAY.write().unwrap() = Some(f);
    }

    pub(crate) fn link_delay() -> Option<LinkDelay> {
        LINK_DELAY.read().unwrap().clone()
    }

    /// Decides whether the storage server named by the first argument crashes at a
    /// crash point, and if so crashes it (the node's tasks stop at their next await).
    pub type CrashHook = Arc<dyn Fn(&str, CrashPoint) -> bool + Send + Sync>;

    static CRASH_HOOK: RwLock<Option<CrashHook>> = RwLock::new(None);

    pub fn set_crash_hook(f: CrashHook) {
        *CRASH_HOOK.write().unwrap() = Some(f);
    }

    /// A crash point: true if the simulator crashed this server here.
    pub fn crash_point(server: &str, point: CrashPoint) -> bool {
        let hook = CRASH_HOOK.read().unwrap().clone();
        hook.is_some_and(|h| h(server, point))
    }

    /// What the simulated disk of a storage server (named by its address) durably
    /// holds under an engine key; `None` for a server it does not know.
    pub type DurableHook = Arc<dyn Fn(&str, &[u8]) -> Option<Option<Vec<u8>>> + Send + Sync>;

    static DURABLE_HOOK: RwLock<Option<DurableHook>> = RwLock::new(None);

    pub fn set_durable_hook(f: DurableHook) {
        *DURABLE_HOOK.write().unwrap() = Some(f);
    }

    /// See [`DurableHook`].
    pub fn durable_bytes(server: &str, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let hook = DURABLE_HOOK.read().unwrap().clone();
        hook.and_then(|h| h(server, key))
    }

    /// Told when the storage server named by its address has recovered what it lost
    /// in a restart (an in-memory replica), with what it now holds: the accepted
    /// ballot of its record of an engine key.
    pub type RecoveredHook =
        Arc<dyn Fn(&str, &dyn Fn(&[u8]) -> Option<crate::record::Ballot>) + Send + Sync>;

    static RECOVERED_HOOK: RwLock<Option<RecoveredHook>> = RwLock::new(None);

    pub fn set_recovered_hook(f: RecoveredHook) {
        *RECOVERED_HOOK.write().unwrap() = Some(f);
    }

    /// See [`RecoveredHook`].
    pub fn recovered(server: &str, holds: &dyn Fn(&[u8]) -> Option<crate::record::Ballot>) {
        let hook = RECOVERED_HOOK.read().unwrap().clone();
        if let Some(h) = hook {
            h(server, holds)
        }
    }

    /// What is wrong, if anything, with the storage server named by its address
    /// removing the record of an engine key accepted at a ballot: the simulator, which
    /// sees every replica's disk, names another replica of the key holding an older
    /// record, which the removal would let win (a resurrection waiting to happen, seen
    /// whether or not a later read happens to meet it).
    pub type PurgeHook =
        Arc<dyn Fn(&str, &[u8], crate::record::Ballot) -> Option<String> + Send + Sync>;

    static PURGE_HOOK: RwLock<Option<PurgeHook>> = RwLock::new(None);

    pub fn set_purge_hook(f: PurgeHook) {
        *PURGE_HOOK.write().unwrap() = Some(f);
    }

    /// See [`PurgeHook`]; a problem fails the seed.
    pub fn check_purge(server: &str, key: &[u8], ballot: crate::record::Ballot) {
        let hook = PURGE_HOOK.read().unwrap().clone();
        if let Some(problem) = hook.and_then(|h| h(server, key, ballot)) {
            record_violation(problem);
        }
    }

    static VIOLATIONS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

    pub(super) fn record_violation(what: String) {
        VIOLATIONS.lock().unwrap().push(what);
    }

    /// The invariant violations seen since the last call: each fails the seed.
    pub fn take_violations() -> Vec<String> {
        std::mem::take(&mut VIOLATIONS.lock().unwrap())
    }
}

#[cfg(madsim)]
pub use sim::{
    bug, check_purge, crash_point, durable_bytes, recovered, set_bugs, set_crash_hook,
    set_durable_hook, set_link_delay, set_purge_hook, set_recovered_hook, take_violations,
    CrashHook, DurableHook, LinkDelay, PurgeHook, RecoveredHook,
};

/// A storage server removes a record: only the simulator checks it (see `PurgeHook`).
#[cfg(not(madsim))]
#[inline(always)]
pub fn check_purge(_server: &str, _key: &[u8], _ballot: crate::record::Ballot) {}

/// A protocol invariant that holds whatever the faults failed: the code is wrong. Logged
/// as an error (a process keeps serving: one request's view is not worth every other
/// request in flight); in the simulator it fails the seed.
pub fn invariant_violated(what: std::fmt::Arguments) {
    tracing::error!(violation = %what, "protocol invariant violated");
    #[cfg(madsim)]
    sim::record_violation(what.to_string());
}

/// Whether a deliberately broken variant is on: never, outside the simulator.
#[cfg(not(madsim))]
#[inline(always)]
pub fn bug(_: Bug) -> bool {
    false
}

/// Frames queued on `rx` for the connection `local`→`peer`, released after the link's
/// delay (in order). Outside the simulator, `rx` itself.
#[cfg(madsim)]
pub fn delayed(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    local: std::net::SocketAddr,
    peer: std::net::SocketAddr,
) -> tokio::sync::mpsc::UnboundedReceiver<Vec<u8>> {
    use tokio::sync::mpsc::unbounded_channel;
    use tokio::time::Instant;
    let Some(delay) = sim::link_delay() else {
        return rx;
    };
    // One task stamps each frame with its arrival time as it is sent (never earlier
    // than the frame before it: a TCP stream stays in order); another releases it then.
    let (stamped_tx, mut stamped) = unbounded_channel::<(Instant, Vec<u8>)>();
    let (out_tx, out) = unbounded_channel();
    tokio::spawn(async move {
        let mut last = Instant::now();
        while let Some(frame) = rx.recv().await {
            last = last.max(Instant::now() + delay(local.ip(), peer.ip()));
            if stamped_tx.send((last, frame)).is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        while let Some((at, frame)) = stamped.recv().await {
            tokio::time::sleep_until(at).await;
            if out_tx.send(frame).is_err() {
                break;
            }
        }
    });
    out
}

#[cfg(not(madsim))]
#[inline(always)]
pub fn delayed(
    rx: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    _local: std::net::SocketAddr,
    _peer: std::net::SocketAddr,
) -> tokio::sync::mpsc::UnboundedReceiver<Vec<u8>> {
    rx
}
