//! Wing–Gong/Lowe linearizability search with a memo cache of (linearized set,
//! state), one key at a time (single-key operations compose), keys in parallel.

use crate::history::{Op, Outcome, F};
use crate::model::{KeyOp, KeyState, Model, Observed, State};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why one key's history is not linearizable.
#[derive(Clone, Debug)]
pub struct KeyFailure {
    pub key: String,
    /// Operation ids (see [`Op::id`]) of the longest linearizable prefix found, in
    /// linearization order.
    pub prefix: Vec<usize>,
    /// The operation that could not be placed after that prefix.
    pub stuck: usize,
    /// States the key could have been in when it had to be placed.
    pub states: Vec<String>,
    /// Number of operations on the key.
    pub ops: usize,
    /// When an anomaly proves it without a search ([`crate::anomaly`]): what it is.
    /// The prefix then holds the operations that must precede the stuck one.
    pub why: Option<String>,
}

/// The checker's answer.
#[derive(Clone, Debug)]
pub enum Verdict {
    Valid,
    /// The smallest failing key (fewest operations).
    Invalid(KeyFailure),
    /// The time limit (or the memo's memory bound) ran out before every key was
    /// decided; never a guess.
    Unknown {
        undecided: Vec<String>,
    },
}

/// Checks a whole history.
pub fn check(ops: &[Op], model: Model, time_limit: Duration) -> Verdict {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops.iter().filter(|op| !inert(op)) {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let keys: Vec<(&str, Vec<&Op>)> = by_key.into_iter().collect();
    let deadline = Instant::now() + time_limit;
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let results: Mutex<Vec<(usize, KeyResult)>> = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(keys.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys.len() || stop.load(Ordering::Relaxed) {
                    return;
                }
                let r = check_one_key(keys[i].0, &keys[i].1, model, deadline);
                if matches!(r, KeyResult::TimedOut) {
                    stop.store(true, Ordering::Relaxed);
                }
                results.lock().unwrap().push((i, r));
            });
        }
    });
    let results = results.into_inner().unwrap();
    let smallest_failure = results
        .iter()
        .filter_map(|(_, r)| match r {
            KeyResult::Invalid(f) => Some(f),
            _ => None,
        })
        .min_by_key(|f| (f.ops, f.key.clone()));
    if let Some(f) = smallest_failure {
        return Verdict::Invalid(f.clone());
    }
    let decided: FxHashSet<usize> = results
        .iter()
        .filter(|(_, r)| matches!(r, KeyResult::Valid))
        .map(|(i, _)| *i)
        .collect();
    if decided.len() == keys.len() {
        Verdict::Valid
    } else {
        Verdict::Unknown {
            undecided: (0..keys.len())
                .filter(|i| !decided.contains(i))
                .map(|i| keys[i].0.to_string())
                .collect(),
        }
    }
}

/// An operation that changed nothing and observed nothing (an unknown plain get, a
/// failure other than NoKey/DupKey/VersionConflict): it can be placed anywhere, so the
/// search leaves it out.
fn inert(op: &Op) -> bool {
    match &op.outcome {
        Outcome::Info => op.f == F::Get && op.ttl == 0,
        Outcome::Fail(e) => !matches!(e.as_str(), "NoKey" | "DupKey" | "VersionConflict"),
        Outcome::Ok { .. } => false,
    }
}

/// One key: first its anomalies ([`crate::anomaly`]), which decide at once when they
/// prove it invalid; then the search. An unknown operation may also never have taken
/// effect. So, alongside the full search, a second one leaves out every unknown write
/// whose value no read returned: if the rest is linearizable, so is the whole (each
/// left-out operation simply never took effect). Many unknown writes on one key make
/// the full search space explode; but when the history needs one of them to have taken
/// effect (an unread set that explains a version), the reduced search can only end by
/// exhausting its space, which the full one may never have to. So both run at once and the first answer that
/// decides wins: either's `Valid`, the full one's `Invalid`.
fn check_one_key(key: &str, ops: &[&Op], model: Model, deadline: Instant) -> KeyResult {
    if let Some(a) = crate::anomaly::find(ops) {
        return KeyResult::Invalid(KeyFailure {
            key: key.to_string(),
            prefix: a.before.iter().map(|&i| ops[i].id).collect(),
            stuck: ops[a.culprit].id,
            states: Vec::new(),
            ops: ops.len(),
            why: Some(a.why),
        });
    }
    if let Some(i) = unexplained(ops, model) {
        return KeyResult::Invalid(KeyFailure {
            key: key.to_string(),
            prefix: Vec::new(),
            stuck: ops[i].id,
            states: Vec::new(),
            ops: ops.len(),
            why: Some(format!(
                "the operation invoked on line {} returned what it cannot in any state",
                ops[i].invoke_line
            )),
        });
    }
    let seen = read_values(ops);
    let unobserved = |op: &&&Op| {
        op.outcome == Outcome::Info
            && op.f != F::Get
            && op.value.as_deref().is_none_or(|v| !seen.contains(v))
    };
    let never_stop = AtomicBool::new(false);
    if !ops.iter().any(|op| unobserved(&op)) {
        return check_key(key, ops, model, deadline, &never_stop);
    }
    let observed: Vec<&Op> = ops.iter().filter(|op| !unobserved(op)).copied().collect();
    let decided = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let reduced = scope.spawn(|| {
            let r = check_key(key, &observed, model, deadline, &decided);
            if matches!(r, KeyResult::Valid) {
                decided.store(true, Ordering::Relaxed);
            }
            r
        });
        let full = check_key(key, ops, model, deadline, &decided);
        if !matches!(full, KeyResult::TimedOut) {
            decided.store(true, Ordering::Relaxed);
        }
        match (
            full,
            reduced.join().expect("the reduced search does not panic"),
        ) {
            (_, KeyResult::Valid) => KeyResult::Valid,
            (full, _) => full,
        }
    })
}

/// The first operation whose outcome no state of the key explains (a set that found
/// no key, a destroy that failed, …): the search would learn it only by trying every
/// linearization.
fn unexplained(ops: &[&Op], model: Model) -> Option<usize> {
    let (kops, _) = prepare(ops);
    let vmax = highest_version(&kops);
    kops.iter().position(|k| {
        let value = match k.observed {
            Observed::Unknown => return false,
            Observed::Ok { value: Some(v), .. } => v,
            _ => UNREAD,
        };
        let live = (1..=vmax + 1).map(|version| KeyState::Live {
            value,
            version,
            exp_lo: u64::MAX,
            exp_hi: u64::MAX,
        });
        std::iter::once(KeyState::Absent)
            .chain(live)
            .all(|key| model.step(State { key, not_before: 0 }, k).is_empty())
    })
}

/// The highest version the key's operations name (at least 1).
fn highest_version(kops: &[KeyOp]) -> u32 {
    kops.iter()
        .filter_map(|k| match k.observed {
            Observed::Ok { version, .. } => version.max(k.if_version),
            _ => k.if_version,
        })
        .max()
        .unwrap_or(0)
        .max(1)
}

enum KeyResult {
    Valid,
    Invalid(KeyFailure),
    TimedOut,
}

/// An entry of the search's doubly linked list: an operation's call or return.
#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    call: bool,
}

struct Frame {
    entry: usize,
    before: State,
    /// Each state the operation may leave, after the run of pooled unknown writes
    /// placed before it (see [`runs`]).
    candidates: Vec<(State, Vec<usize>)>,
    tried: usize,
    /// Taken without alternatives (see `read_only`): undoing it undoes the frame
    /// below too.
    forced: bool,
}

/// The most memory one search's memo may take (about; on two cores two keys are
/// checked at once, each by two searches): past it the key is undecided, as past the
/// time limit, rather than the process running out of memory (a 16-client chaos soak
/// on 8 keys once reached 24 GB).
const MEMO_BYTES: usize = 3 << 30;

/// What makes two unknown writes alike: kind, condition and (unread) value. Not the
/// TTL: only writes whose record outlives the history are alike, and for those the
/// search's states do not tell TTLs apart.
type Alike = (F, Option<u32>, u32);

/// The interned value standing for every value of an unknown write that no read
/// returned: such values cannot be told apart by any operation of the history, so
/// states that differ only in them are one state to the search (and its memo).
const UNREAD: u32 = u32::MAX;

/// The values some operation returned.
fn read_values<'a>(ops: &[&'a Op]) -> FxHashSet<&'a str> {
    ops.iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Ok { value, .. } => value.as_deref(),
            _ => None,
        })
        .collect()
}

/// The key's operations in the model's terms, and the interned values (value `i` is
/// `values[i - 1]`; 0 is no value, [`UNREAD`] a value no read returned).
fn prepare<'a>(ops: &[&'a Op]) -> (Vec<KeyOp>, Vec<&'a str>) {
    let read = read_values(ops);
    let mut interned: FxHashMap<&str, u32> = FxHashMap::default();
    let mut values: Vec<&str> = Vec::new();
    let mut intern = |v: Option<&'a String>, unknown: bool| -> u32 {
        match v {
            None => 0,
            Some(s) if unknown && !read.contains(s.as_str()) => UNREAD,
            Some(s) => *interned.entry(s.as_str()).or_insert_with(|| {
                values.push(s.as_str());
                values.len() as u32
            }),
        }
    };
    // Values are unique per write, and a value keeps the version its write gave it:
    // a read of (value, version) tells the version an unknown write produced, if it
    // took effect at all (and that it did). The search then places it only where the
    // key is at the version before — as Elle infers version orders — instead of
    // anywhere after its invocation.
    let read_version: FxHashMap<&str, u32> = ops
        .iter()
        .filter_map(|op| match &op.outcome {
            Outcome::Ok {
                version: Some(v),
                value: Some(x),
            } => Some((x.as_str(), *v)),
            _ => None,
        })
        .collect();
    let kops = ops
        .iter()
        .map(|op| {
            let observed = match &op.outcome {
                Outcome::Ok { version, value } => Observed::Ok {
                    version: *version,
                    value: value.as_ref().map(|v| intern(Some(v), false)),
                },
                Outcome::Fail(e) => match e.as_str() {
                    "NoKey" => Observed::NoKey,
                    "DupKey" => Observed::DupKey,
                    "VersionConflict" => Observed::VersionConflict,
                    _ => Observed::OtherFailure,
                },
                Outcome::Info => match op.value.as_deref().and_then(|v| read_version.get(v)) {
                    Some(&v) if op.f != F::Get => Observed::Ok {
                        version: Some(v),
                        value: None,
                    },
                    _ => Observed::Unknown,
                },
            };
            KeyOp {
                f: op.f,
                value: intern(op.value.as_ref(), op.outcome == Outcome::Info),
                ttl_ns: op.ttl.saturating_mul(1_000_000_000),
                if_version: op.if_version.filter(|_| op.f == F::Update),
                observed,
                start: op.invoke_time,
                end: op.complete_time.unwrap_or(u64::MAX),
            }
        })
        .collect();
    (kops, values)
}

/// Where the search stands, for its memo, in two parts. The exact part: every
/// completed operation before the first one not linearized is, so only that position
/// and the completed ones from there on are kept (a completed operation is linearized
/// only while those invoked before it returned are open: a window the size of the
/// concurrency, not of the history), then the linearized operations of unknown outcome
/// that must take effect (a read told their version). The rest is the `Usage` of the
/// optional ones.
fn memo_key(
    linearized: &[u64],
    completed: &[u64],
    observers: &[u64],
    unknown: &Unknowns,
) -> (Box<[u64]>, Usage) {
    let first_open = (0..linearized.len())
        .find(|&w| completed[w] & !linearized[w] != 0)
        .map_or(linearized.len() * 64, |w| {
            w * 64 + (completed[w] & !linearized[w]).trailing_zeros() as usize
        });
    let from = first_open / 64;
    let last = |mask: &dyn Fn(usize) -> u64| {
        (from..linearized.len())
            .rev()
            .find(|&w| mask(w) != 0)
            .map_or(from, |w| w + 1)
    };
    let changers = |w: usize| linearized[w] & completed[w] & !observers[w];
    let placed = |w: usize| linearized[w] & observers[w];
    let to = last(&changers);
    let mut key = Vec::with_capacity(2 + (to - from) + 4);
    key.push(first_open as u64);
    key.push((to - from) as u64);
    key.extend((from..to).map(changers));
    let counts_at = unknown.optional.div_ceil(64);
    let mut usage = vec![0u64; counts_at + unknown.upsets.len()];
    let mut taken = vec![0u64; unknown.classes.len()];
    for &(i, kind) in &unknown.ops {
        if linearized[i / 64] & (1 << (i % 64)) != 0 {
            match kind {
                UnknownKind::Required => key.push(i as u64),
                UnknownKind::Optional(b) => usage[b / 64] |= 1 << (b % 64),
                UnknownKind::Class(c) => taken[c] += 1,
            }
        }
    }
    for (sum, &upset) in usage[counts_at..].iter_mut().zip(&unknown.upsets) {
        *sum = (0..unknown.classes.len())
            .filter(|c| upset & 1 << c != 0)
            .map(|c| taken[c])
            .sum();
    }
    (
        key.into_boxed_slice(),
        Usage {
            words: usage.into_boxed_slice(),
            counts_at,
            observed: (from..last(&placed)).map(placed).collect(),
        },
    )
}

/// What a search has spent and done that the memo compares by inclusion rather than
/// equality. Spent: which of the unknown operations that may never have taken effect
/// it has taken, a bit each or a count per class of interchangeable ones. A search
/// that failed with some taken fails with more taken too (any way on from there is a
/// way on from the fewer, the rest never taking effect). Done: which completed
/// operations that change nothing (see [`read_only`]) it has placed. A search that
/// failed with some placed fails with fewer placed too (any way on from the fewer is
/// one from the more, without them). So the memo prunes every state that took at
/// least and placed at most what a failed one did.
struct Usage {
    words: Box<[u64]>,
    counts_at: usize,
    /// The read-only operations placed, from the memo key's first word on.
    observed: Box<[u64]>,
}

impl Usage {
    /// Whether `self` took no more and placed no fewer than `other` (then it can do
    /// whatever `other` can).
    fn within(&self, other: &Usage) -> bool {
        let (bits, counts) = self.words.split_at(self.counts_at);
        let (other_bits, other_counts) = other.words.split_at(self.counts_at);
        let placed = |u: &Usage, w: usize| u.observed.get(w).copied().unwrap_or(0);
        bits.iter().zip(other_bits).all(|(a, b)| a & !b == 0)
            && counts.iter().zip(other_counts).all(|(a, b)| a <= b)
            && (0..other.observed.len()).all(|w| placed(other, w) & !placed(self, w) == 0)
    }
}

/// The operations of unknown outcome.
struct Unknowns {
    ops: Vec<(usize, UnknownKind)>,
    /// How many are [`UnknownKind::Optional`].
    optional: usize,
    /// What the operations of each class (by number) have alike.
    classes: Vec<Alike>,
    /// Sets of classes (bit per class) closed under [`weaker`]'s converse: a search
    /// that took no more from each of these than another can do whatever the other
    /// can, for an operation of a class can stand in for one of a weaker class (Hall's
    /// condition). Each class alone when there are too many classes to list them.
    upsets: Vec<u64>,
}

#[derive(Clone, Copy)]
enum UnknownKind {
    /// It must take effect (a read told its version): part of the exact key.
    Required,
    /// It may never take effect: bit `n` of the usage.
    Optional(usize),
    /// Alike (see [`Alike`]) with others, in a history where no record can expire:
    /// the model never looks at their invocation times, every invoked one of a class
    /// does the same, and only how many took effect matters (the usage counts them),
    /// not which: the memo does not tell apart the many ways of picking them.
    Class(usize),
}

/// One key's search; gives up (`TimedOut`) at the deadline, past the memo's memory
/// bound, or once `stop` is set.
fn check_key(
    key: &str,
    ops: &[&Op],
    model: Model,
    deadline: Instant,
    stop: &AtomicBool,
) -> KeyResult {
    let (kops, values) = prepare(ops);
    let n = ops.len();
    // Every finite time of the history is before `after`. Expiry times and
    // linearization bounds past it are all alike ("after the history": only
    // operations of unknown outcome can be placed there, and they always can), so they
    // are clamped to it, and states that differ only there are one to the memo.
    let after = kops
        .iter()
        .map(|k| if k.end == u64::MAX { k.start } else { k.end })
        .max()
        .unwrap_or(0)
        + 1;
    let slack = model.clock_uncertainty_ns + model.expiry_rounding_ns;
    let clamp = |s: State| State {
        key: match s.key {
            KeyState::Live {
                value,
                version,
                exp_lo,
                exp_hi,
            } => KeyState::Live {
                value,
                version,
                exp_lo: exp_lo.min(after + slack),
                exp_hi: exp_hi.min(after + slack),
            },
            absent => absent,
        },
        not_before: s.not_before.min(after),
    };
    // Calls and returns in history order; unknown operations return after everything.
    let mut events: Vec<(usize, Entry)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoke_line, Entry { op: i, call: true }));
        events.push((
            op.complete_line.unwrap_or(usize::MAX - n + i),
            Entry { op: i, call: false },
        ));
    }
    events.sort_by_key(|(pos, _)| *pos);
    let entries: Vec<Entry> = events.into_iter().map(|(_, e)| e).collect();
    let head = entries.len();
    const NONE: usize = usize::MAX;
    let mut next: Vec<usize> = (1..=entries.len())
        .map(|i| if i == entries.len() { NONE } else { i })
        .collect();
    let mut prev: Vec<usize> = (0..entries.len())
        .map(|i| if i == 0 { head } else { i - 1 })
        .collect();
    next.push(if entries.is_empty() { NONE } else { 0 });
    prev.push(NONE);
    let mut ret_of = vec![0usize; n];
    let mut call_of = vec![0usize; n];
    for (i, e) in entries.iter().enumerate() {
        if e.call {
            call_of[e.op] = i;
        } else {
            ret_of[e.op] = i;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = nx;
        if nx != NONE {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = i;
        if nx != NONE {
            prev[nx] = i;
        }
    };

    // Symmetry: unknown writes whose value nobody read, whose own record outlives the
    // history, and that agree in kind and condition are alike; see `twin_ahead`.
    let class: Vec<Option<Alike>> = kops
        .iter()
        .map(|k| {
            let ttl = if k.ttl_ns == 0 {
                model.default_ttl_ns
            } else {
                k.ttl_ns
            };
            let outlives = k.f == F::Destroy || k.start.saturating_add(ttl) >= after + slack;
            let alike = k.observed == Observed::Unknown
                && k.f != F::Get
                && matches!(k.value, 0 | UNREAD)
                && outlives;
            alike.then_some((k.f, k.if_version, k.value))
        })
        .collect();
    // A state no operation of the history can see expire.
    let stable = |s: &State| match s.key {
        KeyState::Absent => s.not_before < after,
        KeyState::Live { exp_lo, .. } => s.not_before < after && exp_lo >= after + slack,
    };
    let words = n.div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    // Per exact key and state, the usages explored (none within another).
    let mut cache: FxHashMap<(Box<[u64]>, State), Vec<Usage>> = FxHashMap::default();
    let mut cache_bytes = 0usize;
    let completed: Vec<u64> = (0..words)
        .map(|w| {
            (0..64)
                .filter(|b| kops.get(w * 64 + b).is_some_and(|k| k.end != u64::MAX))
                .fold(0u64, |m, b| m | 1 << b)
        })
        .collect();
    // No record of the history can expire within it: every state is stable.
    let expiry_free = kops.iter().all(|k| {
        let ttl = match k.f {
            F::Create | F::Set if k.ttl_ns == 0 => model.default_ttl_ns,
            F::Destroy => return true,
            _ if k.ttl_ns == 0 => return true,
            _ => k.ttl_ns,
        };
        k.start.saturating_add(ttl) >= after + slack
    });
    // Completed operations that change nothing wherever they are placed, when
    // nothing expires (see `Usage`).
    let observers: Vec<u64> = (0..words)
        .map(|w| {
            (0..64)
                .filter(|b| {
                    kops.get(w * 64 + b)
                        .is_some_and(|k| expiry_free && k.end != u64::MAX && read_only(k))
                })
                .fold(0u64, |m, b| m | 1 << b)
        })
        .collect();
    let unknown = {
        let mut classes: Vec<Alike> = Vec::new();
        let mut optional = 0;
        let ops = (0..n)
            .filter(|&i| kops[i].end == u64::MAX)
            .map(|i| {
                let kind = match class[i].filter(|_| expiry_free) {
                    Some(c) => UnknownKind::Class(match classes.iter().position(|&a| a == c) {
                        Some(known) => known,
                        None => {
                            classes.push(c);
                            classes.len() - 1
                        }
                    }),
                    None if kops[i].observed == Observed::Unknown => {
                        optional += 1;
                        UnknownKind::Optional(optional - 1)
                    }
                    None => UnknownKind::Required,
                };
                (i, kind)
            })
            .collect();
        Unknowns {
            ops,
            optional,
            upsets: upsets(&classes),
            classes,
        }
    };
    // The pooled unknown writes leave the list: they are placed only in the runs
    // before the operations that need them (see `runs`).
    let mut pools: Vec<Pool> = (unknown.classes.iter())
        .map(|&alike| Pool {
            alike,
            calls: Vec::new(),
            taken: 0,
        })
        .collect();
    for &(op, kind) in &unknown.ops {
        let UnknownKind::Class(c) = kind else {
            continue;
        };
        pools[c].calls.push((call_of[op], op));
        unlink(&mut next, &mut prev, call_of[op]);
        unlink(&mut next, &mut prev, ret_of[op]);
    }
    for pool in &mut pools {
        pool.calls.sort_unstable();
    }
    let walk = RunWalk {
        model,
        kops: &kops,
        clamp: &clamp,
        vmax: highest_version(&kops),
    };
    // The reads of each value one write alone wrote: once the key leaves that value
    // it never has it again, so a read of it not placed by then never can be (a
    // step that strands one is not taken: the search would learn it only at that
    // read's return, after exploring everything in between).
    let mut writes_of: FxHashMap<u32, usize> = FxHashMap::default();
    for k in &kops {
        if matches!(k.f, F::Create | F::Set | F::Update) && !matches!(k.value, 0 | UNREAD) {
            *writes_of.entry(k.value).or_default() += 1;
        }
    }
    let mut readers: FxHashMap<u32, Vec<usize>> = FxHashMap::default();
    for (i, k) in kops.iter().enumerate() {
        if let (F::Get, Observed::Ok { value: Some(v), .. }) = (k.f, k.observed) {
            if writes_of.get(&v) == Some(&1) {
                readers.entry(v).or_default().push(i);
            }
        }
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut state = State::INITIAL;
    let mut cur = next[head];
    let mut best: (usize, Vec<usize>, usize, Vec<State>) = (0, Vec::new(), NONE, Vec::new());
    let mut steps: u64 = 0;

    // Operations not yet linearized that completed (they must take effect before
    // `after`), and that observed something (an unknown operation observed nothing,
    // unless a read told its version, and can always be placed last).
    let mut finite_left = kops.iter().filter(|k| k.end != u64::MAX).count();
    let mut constrained_left = kops
        .iter()
        .filter(|k| k.observed != Observed::Unknown)
        .count();
    let count = |op: usize, sign: isize, finite: &mut usize, constrained: &mut usize| {
        if kops[op].end != u64::MAX {
            *finite = finite.wrapping_add_signed(sign);
        }
        if kops[op].observed != Observed::Unknown {
            *constrained = constrained.wrapping_add_signed(sign);
        }
    };

    // Tries the candidates of a frame from `tried` on; true if one was taken.
    macro_rules! take_candidate {
        ($frame:expr) => {{
            let mut frame = $frame;
            let op = entries[frame.entry].op;
            let mut taken = false;
            count(op, -1, &mut finite_left, &mut constrained_left);
            while frame.tried < frame.candidates.len() {
                let (cand, ref run) = frame.candidates[frame.tried];
                frame.tried += 1;
                // Past the end of the history nothing that completed can be placed.
                if cand.not_before >= after && finite_left > 0 {
                    continue;
                }
                for &c in run {
                    let pooled = pools[c].take();
                    linearized[pooled / 64] |= 1 << (pooled % 64);
                }
                linearized[op / 64] |= 1 << (op % 64);
                let abandons = |v: u32| {
                    readers.get(&v).is_some_and(|rs| {
                        rs.iter().any(|&r| linearized[r / 64] & 1 << (r % 64) == 0)
                    })
                };
                let stranded = value_of(&frame.before) != value_of(&cand)
                    && value_of(&frame.before).is_some_and(abandons);
                let (exact, usage) = memo_key(&linearized, &completed, &observers, &unknown);
                let key_bytes = (exact.len() + usage.words.len() + usage.observed.len()) * 8 + 96;
                let seen = cache.entry((exact, cand)).or_default();
                if !stranded && !seen.iter().any(|u| u.within(&usage)) {
                    seen.retain(|u| !usage.within(u));
                    seen.push(usage);
                    cache_bytes += key_bytes;
                    state = cand;
                    unlink(&mut next, &mut prev, frame.entry);
                    unlink(&mut next, &mut prev, ret_of[op]);
                    taken = true;
                    break;
                }
                linearized[op / 64] &= !(1 << (op % 64));
                for &c in run.iter().rev() {
                    let pooled = pools[c].put_back();
                    linearized[pooled / 64] &= !(1 << (pooled % 64));
                }
            }
            if taken {
                stack.push(frame);
            } else {
                count(op, 1, &mut finite_left, &mut constrained_left);
            }
            taken
        }};
    }

    // Undoes the last step taken and tries what is left of it (undoing a forced step
    // undoes the one below it as well); the position to go on from.
    macro_rules! backtrack {
        () => {
            loop {
                let Some(frame) = stack.pop() else {
                    return KeyResult::Invalid(KeyFailure {
                        key: key.to_string(),
                        prefix: best.1,
                        stuck: ops[best.2].id,
                        states: {
                            let mut seen: Vec<String> =
                                best.3.iter().map(|s| describe(s, &values)).collect();
                            seen.dedup();
                            seen
                        },
                        ops: n,
                        why: None,
                    });
                };
                let op = entries[frame.entry].op;
                state = frame.before;
                count(op, 1, &mut finite_left, &mut constrained_left);
                linearized[op / 64] &= !(1 << (op % 64));
                for &c in frame.candidates[frame.tried - 1].1.iter().rev() {
                    let pooled = pools[c].put_back();
                    linearized[pooled / 64] &= !(1 << (pooled % 64));
                }
                relink(&mut next, &mut prev, ret_of[op]);
                relink(&mut next, &mut prev, frame.entry);
                if frame.forced {
                    continue;
                }
                let entry = frame.entry;
                break if take_candidate!(frame) {
                    next[head]
                } else {
                    next[entry]
                };
            }
        };
    }

    loop {
        steps += 1;
        if steps.is_multiple_of(4096)
            && (Instant::now() > deadline
                || cache_bytes > MEMO_BYTES
                || stop.load(Ordering::Relaxed))
        {
            return KeyResult::TimedOut;
        }
        // What is left observed nothing: each can be placed last, in any order.
        if next[head] == NONE || constrained_left == 0 {
            return KeyResult::Valid;
        }
        if cur == NONE {
            // Cannot happen: a call's return always follows it in the list.
            unreachable!("ran off the end of the history");
        }
        let e = entries[cur];
        // In a stable state, of alike operations that may all take effect now only the
        // last invoked is tried: from a stable state they lead to the same state, and
        // the one kept for later, invoked earlier, can do there whatever the other
        // could (an earlier start only widens what it may see).
        if e.call && stable(&state) && class[e.op].is_some() {
            let mut ahead = next[cur];
            let mut twin_ahead = false;
            while ahead != NONE && entries[ahead].call {
                if class[entries[ahead].op] == class[e.op] {
                    twin_ahead = true;
                    break;
                }
                ahead = next[ahead];
            }
            if twin_ahead {
                cur = next[cur];
                continue;
            }
        }
        if e.call {
            let op = &kops[e.op];
            let direct: Vec<State> = model.step(state, op).into_iter().map(clamp).collect();
            // A read-only operation that fits the state now is placed now, and not
            // anywhere else: wherever else a linearization places it, it changes
            // nothing there, and it may as well be here (everything that returned
            // before it was invoked already is), so no alternative needs trying.
            let forced = expiry_free && read_only(op) && direct.contains(&state);
            let candidates = if forced {
                vec![(state, Vec::new())]
            } else {
                let mut candidates: Vec<(State, Vec<usize>)> =
                    direct.iter().map(|&s| (s, Vec::new())).collect();
                if !pools.is_empty() && op.observed != Observed::Unknown {
                    let mut frontier = next[head];
                    while frontier != NONE && entries[frontier].call {
                        frontier = next[frontier];
                    }
                    for (run, states) in runs(&walk, &mut pools, frontier, state, op) {
                        for s in states.into_iter().map(clamp) {
                            if !direct.contains(&s) {
                                candidates.push((s, run.clone()));
                            }
                        }
                    }
                }
                candidates
            };
            let frame = Frame {
                entry: cur,
                before: state,
                candidates,
                tried: 0,
                forced,
            };
            cur = if take_candidate!(frame) {
                next[head]
            } else if forced {
                backtrack!()
            } else {
                next[cur]
            };
            continue;
        }
        // A return whose call is not linearized: record how far we got, then backtrack.
        if stack.len() > best.0 || best.2 == NONE {
            best = (
                stack.len(),
                stack.iter().map(|f| ops[entries[f.entry].op].id).collect(),
                e.op,
                vec![state],
            );
        } else if stack.len() == best.0
            && e.op == best.2
            && best.3.len() < 4
            && !best.3.contains(&state)
        {
            best.3.push(state);
        }
        cur = backtrack!();
    }
}

/// The unknown writes of one class (see [`UnknownKind::Class`]): interchangeable, so
/// the search takes them by count, the earliest invoked first, and only in the runs
/// that [`runs`] puts before an operation that needs them.
struct Pool {
    alike: Alike,
    /// (list entry of the call, operation), by invocation.
    calls: Vec<(usize, usize)>,
    taken: usize,
}

impl Pool {
    /// The next one to take, if it was invoked before list entry `at`.
    fn next_before(&self, at: usize) -> Option<usize> {
        self.calls
            .get(self.taken)
            .filter(|&&(call, _)| call < at)
            .map(|&(_, op)| op)
    }

    fn take(&mut self) -> usize {
        self.taken += 1;
        self.calls[self.taken - 1].1
    }

    fn put_back(&mut self) -> usize {
        self.taken -= 1;
        self.calls[self.taken].1
    }
}

/// The runs of pooled unknown writes worth placing right before `op` in state `s`,
/// each with the states `op` leaves after it (pools as they are, and invoked before
/// list entry `frontier`).
///
/// Why these suffice: a pooled write may always take effect later than a
/// linearization places it (it never returned), so every run can be moved up to the
/// next operation that observes something; one that changes nothing can be dropped,
/// and so can a part of it that comes back to a state it passed (what is left uses
/// fewer). What is left raises the version one step at a time, or destroys the record
/// and then creates and raises it: the walks below. Of those, `op` needs only the
/// shortest prefix after which it fits, when the states it leaves do not depend on
/// more than that (it reads, or the version it wrote is known): the remainder can move
/// after `op`, to the next one. Of the classes that can make a step, the weakest is
/// taken (one of a stronger class can do anything it can, later, so it is the better
/// one to keep). Versions above every version the history names are all alike, so
/// the walks stop there.
fn runs(
    walk: &RunWalk,
    pools: &mut [Pool],
    frontier: usize,
    s: State,
    op: &KeyOp,
) -> Vec<(Vec<usize>, Vec<State>)> {
    // No run writes a value any read returned.
    if op.f == F::Get && matches!(op.observed, Observed::Ok { value: Some(v), .. } if v != UNREAD) {
        return Vec::new();
    }
    // The states `op` leaves depend on the version before it only through what it
    // reports.
    let pinned = read_only(op)
        || op.f == F::Destroy
        || matches!(
            op.observed,
            Observed::Ok {
                version: Some(_),
                ..
            }
        );
    let mut found = Vec::new();
    let live = matches!(s.key, KeyState::Live { .. });
    let plans: [&[Step]; 3] = [
        &[Step::Raise],
        &[Step::Destroy, Step::Create, Step::Raise],
        &[Step::Create, Step::Raise],
    ];
    for (i, plan) in plans.into_iter().enumerate() {
        if (i < 2) != live {
            continue;
        }
        let mut taken: Vec<usize> = Vec::new();
        let mut here = s;
        'plan: for (k, &step) in plan.iter().enumerate() {
            // The last step of a plan (raising the version) repeats.
            let repeats = k + 1 == plan.len();
            loop {
                let high =
                    matches!(here.key, KeyState::Live { version, .. } if version > walk.vmax);
                if step == Step::Raise && high {
                    break 'plan;
                }
                let Some((c, next)) = walk.weakest(pools, frontier, here, step) else {
                    break 'plan;
                };
                pools[c].take();
                taken.push(c);
                here = next;
                let after = walk.model.step(here, op);
                if !after.is_empty() {
                    found.push((taken.clone(), after));
                    if pinned {
                        break 'plan;
                    }
                }
                if !repeats {
                    break;
                }
            }
        }
        for &c in taken.iter().rev() {
            pools[c].put_back();
        }
    }
    found
}

/// A step of a run of pooled unknown writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Destroy,
    Create,
    /// Raise the version by one.
    Raise,
}

/// What [`runs`] needs of the key's history.
struct RunWalk<'a> {
    model: Model,
    kops: &'a [KeyOp],
    clamp: &'a dyn Fn(State) -> State,
    /// The highest version the history names.
    vmax: u32,
}

impl RunWalk<'_> {
    /// The weakest class with an operation available that makes `step` from `here`,
    /// and the state it leads to.
    fn weakest(
        &self,
        pools: &[Pool],
        frontier: usize,
        here: State,
        step: Step,
    ) -> Option<(usize, State)> {
        let mut best: Option<(usize, State)> = None;
        for (c, pool) in pools.iter().enumerate() {
            let Some(w) = pool.next_before(frontier) else {
                continue;
            };
            for next in self.model.step(here, &self.kops[w]) {
                let makes = match (step, here.key, next.key) {
                    (Step::Destroy, KeyState::Live { .. }, KeyState::Absent) => true,
                    (Step::Create, KeyState::Absent, KeyState::Live { version: 1, .. }) => true,
                    (
                        Step::Raise,
                        KeyState::Live { version: a, .. },
                        KeyState::Live { version: b, .. },
                    ) => b == a + 1,
                    _ => false,
                };
                // (Not a record seen to expire after the history: a run comes before
                // an operation of it.)
                let makes = makes && next.not_before == here.not_before;
                if makes && best.is_none_or(|(b, _)| weaker(pool.alike, pools[b].alike)) {
                    best = Some((c, (self.clamp)(next)));
                }
            }
        }
        best
    }
}

/// An operation that changes the key in no state it can be placed in, when nothing
/// expires: a failure that observed the state, or a read.
fn read_only(k: &KeyOp) -> bool {
    matches!(
        k.observed,
        Observed::NoKey | Observed::DupKey | Observed::VersionConflict
    ) || (k.f == F::Get && matches!(k.observed, Observed::Ok { .. }))
}

/// A state in the history's terms.
fn describe(s: &State, values: &[&str]) -> String {
    match s.key {
        KeyState::Absent => "absent".to_string(),
        KeyState::Live { value, version, .. } => {
            let (value, version) = (&value, version);
            let v = match *value {
                UNREAD => "(an unknown write's, never read)",
                i => values
                    .get((i as usize).wrapping_sub(1))
                    .copied()
                    .unwrap_or("?"),
            };
            format!("value {v:?} version {version}")
        }
    }
}

/// Whether every change an unknown write of class `b` can make, one of class `a` can
/// make too, and not the other way: a set can do what a create or an update can, an
/// unconditional update what a conditional one can. (Where several classes can make a
/// step, they are a chain under this order, so one of them is the weakest.)
fn weaker(b: Alike, a: Alike) -> bool {
    matches!(
        ((b.0, b.1), (a.0, a.1)),
        ((F::Create, _), (F::Set, _))
            | ((F::Update, Some(_)), (F::Update, None))
            | ((F::Update, _), (F::Set, _))
    )
}

/// The nonempty sets of classes that hold every class stronger than one they hold
/// (see [`Unknowns::upsets`]).
fn upsets(classes: &[Alike]) -> Vec<u64> {
    const MOST: usize = 10;
    if classes.len() > MOST {
        return (0..classes.len()).map(|c| 1 << c).collect();
    }
    (1u64..1 << classes.len())
        .filter(|set| {
            (0..classes.len()).all(|b| {
                set & 1 << b == 0
                    || (0..classes.len())
                        .all(|a| !weaker(classes[b], classes[a]) || set & 1 << a != 0)
            })
        })
        .collect()
}

/// The value the key holds in `s`, if any.
fn value_of(s: &State) -> Option<u32> {
    match s.key {
        KeyState::Live { value, .. } => Some(value),
        KeyState::Absent => None,
    }
}
