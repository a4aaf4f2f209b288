//! Availability checks: a linearizable store that stops answering is still broken.
//! Once every fault has healed (and requests caught in the faults have run out),
//! operations must succeed: a definite answer (a value, NoKey, DupKey,
//! VersionConflict) within the request deadline. A few contended requests may still
//! lose every round to others within their deadline; the share allowed is derived
//! from fault-free runs (see the README). A key nobody gets a definite answer on, or
//! clients of a proxy that make no progress at all, fail the seed whatever the share.

use jepsen_like::history::{Op, Outcome};
use std::collections::BTreeMap;
use std::time::Duration;

/// The most operations after the heal that may end without a definite answer, by
/// default (`--max-unavailable`). Measured over the window that follows the heal
/// (`cluster::LIVENESS_WINDOW`), all of it contention on the hottest keys, which proxies
/// in three datacentres fight over. It was 6%, from 900 seeds that left at most 5.1%
/// over a 12 s window; but correct runs kept going past it: 6.2–7.8% on 4 of some
/// 5,200 fresh seeds over 12 s (44114042, 45184340, 45184459, 46000099; the first
/// fails identically at a commit before any change of mine that day, and runs without
/// one-round-trip writes fail alike), and 6.4% over 24 s (47047570, in CI, whose 2,000
/// seeds 47000000..47001999 left 1.8% at the median, 3.9% at the 99th percentile, 4.9%
/// at most). Every one is contention spread over the window on the hottest keys. So:
/// a 24 s window (less swing) and 8%, above every correct run seen, below what a
/// proxy that does not raise its ballot above a rejection leaves (7.6–15.8% on seeds
/// 1–3, both topologies: `sim/bugs` still catches it on seed 1). The bound holds for
/// the default workload (two clients per client node); more clients contend more and
/// need a figure of their own: seven zones in four datacentres (`--zones 2,2,2,1
/// --nodes-per-zone 1`) reached 6.2% in 1,200 seeds (seed 421), where the unraised
/// ballot leaves 11–26%.
pub const MAX_UNAVAILABLE_SHARE: f64 = 0.08;

/// Fewest operations on a key, or from a client node, before "none succeeded" means
/// starvation rather than bad luck.
const STARVED_AFTER: usize = 5;

/// What the run promises about availability.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    /// History time (ns) from which every fault has healed and settled.
    pub from_ns: u64,
    /// The proxies' request deadline.
    pub deadline: Duration,
    /// Whether there were faults at all (without, the whole run counts).
    pub faults: bool,
    /// The share of operations after the heal allowed to end without an answer.
    pub max_unavailable: f64,
}

/// Whether an operation got a definite answer.
fn definite(op: &Op) -> bool {
    match &op.outcome {
        Outcome::Ok { .. } => true,
        Outcome::Fail(e) => matches!(e.as_str(), "NoKey" | "DupKey" | "VersionConflict"),
        Outcome::Info => false,
    }
}

/// Problems with availability after the heal; empty when there are none.
pub fn check(ops: &[Op], expect: &Expect) -> Vec<String> {
    let from = if expect.faults { expect.from_ns } else { 0 };
    let after: Vec<&Op> = ops.iter().filter(|op| op.invoke_time >= from).collect();
    let mut problems = Vec::new();
    if after.is_empty() {
        return vec!["no operation ran after the faults healed".into()];
    }
    let failed = after.iter().filter(|op| !definite(op)).count();
    let share = failed as f64 / after.len() as f64;
    if share > expect.max_unavailable {
        problems.push(format!(
            "unavailable after the heal: {failed} of {} operations ({:.1}%, at most {:.1}% allowed) had no definite answer",
            after.len(),
            share * 100.0,
            expect.max_unavailable * 100.0
        ));
    }
    // A proxy answers by its deadline (Timeout at worst); an answer much later means
    // a request was stuck somewhere no deadline covers.
    let bound = (2 * expect.deadline).as_nanos() as u64;
    if let Some(slow) = after.iter().find(|op| {
        op.complete_time
            .is_some_and(|done| done.saturating_sub(op.invoke_time) > bound)
    }) {
        problems.push(format!(
            "operation {} on {} took {:?}, past twice the request deadline",
            slow.id,
            slow.key,
            Duration::from_nanos(slow.complete_time.unwrap_or(0) - slow.invoke_time)
        ));
    }
    let mut by_key: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut by_node: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    for op in &after {
        let ok = usize::from(definite(op));
        let k = by_key.entry(op.key.as_str()).or_default();
        *k = (k.0 + 1, k.1 + ok);
        // Process ids carry their client node in the high half.
        let n = by_node.entry(op.process >> 32).or_default();
        *n = (n.0 + 1, n.1 + ok);
    }
    for (key, (tried, ok)) in by_key {
        if tried >= STARVED_AFTER && ok == 0 {
            problems.push(format!(
                "key {key} starved: {tried} operations after the heal, none answered"
            ));
        }
    }
    for (node, (tried, ok)) in by_node {
        if tried >= STARVED_AFTER && ok == 0 {
            problems.push(format!(
                "client node {node} made no progress: {tried} operations after the heal, none answered"
            ));
        }
    }
    problems
}
