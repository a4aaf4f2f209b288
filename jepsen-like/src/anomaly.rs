//! Quick proofs of invalidity that need no search, as Elle finds anomalies from the
//! order of versions: tried on each key before the search, they decide at once the
//! histories the search would have to exhaust every linearization of (many unknown
//! operations make that space astronomical). Each rests on values being unique per
//! write. Sound: they report only what no linearization can explain; not complete: the
//! search decides the rest.
//!
//! - **A read of an overwritten value.** A read that returned `x` took effect after the
//!   one write of `x` and before anything else wrote the key. The write of `x` took
//!   effect by the time it completed, or (of unknown outcome) by the time the first
//!   read of `x` completed. If another write (or a destroy) that succeeded was invoked
//!   after that and completed before the read was invoked, it took effect in between,
//!   and `x` can never be read again. (A stale read; or a lost write: the overwriting
//!   write was acknowledged.)
//! - **A read of a value never written** by the time the read returned (no write of
//!   the key wrote it, only writes that failed did, or none had been invoked yet).
//! - **A value at two versions.** A value keeps the version its write gave it (only a
//!   write changes the version, and it writes a new value), so a write and the reads
//!   of its value report one version between them.

use crate::history::{Op, Outcome, F};
use rustc_hash::FxHashMap;

/// Operations of one key that no linearization explains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anomaly {
    /// Operations that take effect before `culprit`, in this order (indices into the
    /// key's operations).
    pub before: Vec<usize>,
    /// The operation that cannot take effect after them.
    pub culprit: usize,
    /// Why, in the history's terms (its line numbers).
    pub why: String,
}

/// The first anomaly of one key's operations, if any.
pub fn find(ops: &[&Op]) -> Option<Anomaly> {
    // Each value's writers; only a value written once says which write a read saw.
    let mut writers: FxHashMap<&str, Vec<usize>> = FxHashMap::default();
    for (i, op) in ops.iter().enumerate() {
        if let (F::Create | F::Set | F::Update, Some(v)) = (op.f, op.value.as_deref()) {
            writers.entry(v).or_default().push(i);
        }
    }
    let mut reads: Vec<usize> = (0..ops.len())
        .filter(|&i| ops[i].f == F::Get && ops[i].complete_line.is_some())
        .collect();
    reads.sort_unstable_by_key(|&i| ops[i].complete_line);
    let written_once = |x: &str| match writers.get(x).map(Vec::as_slice) {
        Some(&[write]) => Some(write),
        _ => None,
    };
    unwritten_read(ops, &reads, &writers)
        .or_else(|| two_versions(ops, &reads, &written_once))
        .or_else(|| overwritten_read(ops, &reads, &written_once))
}

/// The first read (in completion order) of a value no write of the key wrote, only
/// failed ones did, or that returned before every write of its value was invoked.
fn unwritten_read(
    ops: &[&Op],
    reads: &[usize],
    writers: &FxHashMap<&str, Vec<usize>>,
) -> Option<Anomaly> {
    reads.iter().find_map(|&read| {
        let Outcome::Ok { value: Some(x), .. } = &ops[read].outcome else {
            return None;
        };
        let returned = ops[read].complete_line?;
        let why = match writers.get(x.as_str()) {
            None => format!(
                "the read invoked on line {} returned {x:?}, which no write of the key wrote",
                ops[read].invoke_line
            ),
            Some(ws)
                if ws
                    .iter()
                    .all(|&w| matches!(ops[w].outcome, Outcome::Fail(_))) =>
            {
                format!(
                    "the read invoked on line {} returned {x:?}, which only a write that \
                     failed (line {}) wrote",
                    ops[read].invoke_line, ops[ws[0]].invoke_line
                )
            }
            Some(ws) if ws.iter().all(|&w| ops[w].invoke_line > returned) => format!(
                "the read invoked on line {} returned {x:?} on line {returned}, before the \
                 write of it (line {}) was invoked",
                ops[read].invoke_line, ops[ws[0]].invoke_line
            ),
            Some(_) => return None,
        };
        Some(Anomaly {
            before: Vec::new(),
            culprit: read,
            why,
        })
    })
}

/// The first read (in completion order) that reports its value at another version
/// than the value's write or an earlier read did.
fn two_versions(
    ops: &[&Op],
    reads: &[usize],
    written_once: &dyn Fn(&str) -> Option<usize>,
) -> Option<Anomaly> {
    let mut seen: FxHashMap<&str, (u32, usize)> = FxHashMap::default();
    for &read in reads {
        let Outcome::Ok {
            value: Some(x),
            version: Some(v),
        } = &ops[read].outcome
        else {
            continue;
        };
        let Some(write) = written_once(x) else {
            continue;
        };
        let first = match (&ops[write].outcome, seen.get(x.as_str())) {
            (
                Outcome::Ok {
                    version: Some(w), ..
                },
                _,
            ) => (*w, write),
            (_, Some(&earlier)) => earlier,
            _ => {
                seen.insert(x, (*v, read));
                continue;
            }
        };
        if first.0 != *v {
            return Some(Anomaly {
                before: vec![first.1],
                culprit: read,
                why: format!(
                    "value {x:?} is at version {} by line {} and at version {v} by the read \
                     invoked on line {}: a value keeps the version its write gave it",
                    first.0,
                    ops[first.1]
                        .complete_line
                        .unwrap_or(ops[first.1].invoke_line),
                    ops[read].invoke_line
                ),
            });
        }
    }
    None
}

/// The first read (in completion order) that returned an overwritten value.
fn overwritten_read(
    ops: &[&Op],
    reads: &[usize],
    written_once: &dyn Fn(&str) -> Option<usize>,
) -> Option<Anomaly> {
    // Operations that certainly changed the key, by invocation; for those invoked
    // from position `k` on, the earliest completion.
    let mut changes: Vec<(usize, usize, usize)> = (ops.iter().enumerate())
        .filter(|(_, op)| matches!(op.outcome, Outcome::Ok { .. }) && op.f != F::Get)
        .filter_map(|(i, op)| Some((op.invoke_line, op.complete_line?, i)))
        .collect();
    changes.sort_unstable();
    let mut earliest_end: Vec<(usize, usize)> = vec![(usize::MAX, usize::MAX); changes.len() + 1];
    for k in (0..changes.len()).rev() {
        let (_, end, i) = changes[k];
        earliest_end[k] = earliest_end[k + 1].min((end, i));
    }
    // The line by which each value was certainly written: its first read's completion.
    let mut first_read: FxHashMap<&str, usize> = FxHashMap::default();
    for &i in reads {
        if let (Outcome::Ok { value: Some(x), .. }, Some(done)) =
            (&ops[i].outcome, ops[i].complete_line)
        {
            first_read.entry(x.as_str()).or_insert(done);
        }
    }
    reads.iter().find_map(|&read| {
        let Outcome::Ok { value: Some(x), .. } = &ops[read].outcome else {
            return None;
        };
        let write = written_once(x)?;
        let written = (ops[write].complete_line.unwrap_or(usize::MAX)).min(first_read[x.as_str()]);
        let from = changes.partition_point(|&(invoked, ..)| invoked <= written);
        let (end, overwrite) = earliest_end[from];
        (end < ops[read].invoke_line).then(|| Anomaly {
            before: vec![write, overwrite],
            culprit: read,
            why: format!(
                "the read (invoked on line {}) returned the value the write invoked on line \
                 {} wrote, which the operation completed on line {end} had overwritten by then",
                ops[read].invoke_line, ops[write].invoke_line,
            ),
        })
    })
}
