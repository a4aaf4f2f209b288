//! Quick proofs of invalidity that need no search, as Elle finds anomalies from the
//! order of versions: tried on each key before the search, they decide at once the
//! histories the search would have to exhaust every linearization of (many unknown
//! operations make that space astronomical).
//!
//! One anomaly so far, the **read of an overwritten value**. Values are unique per
//! write, so a read that returned `x` took effect after the one write of `x` and before
//! anything else wrote the key. The write of `x` took effect by the time it completed,
//! or (of unknown outcome) by the time the first read of `x` completed. If another
//! write (or a destroy) that succeeded was invoked after that and completed before the
//! read was invoked, it took effect in between, and `x` can never be read again. (A
//! stale read, and a lost write: the overwriting write was acknowledged.) Sound: it
//! reports only what no linearization can explain; not complete: the search decides
//! the rest.

use crate::history::{Op, Outcome, F};
use rustc_hash::FxHashMap;

/// A read that returned a value after it was overwritten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverwrittenRead {
    /// The one write of the value.
    pub write: usize,
    /// A write or destroy that succeeded, strictly between the two in real time.
    pub overwrite: usize,
    /// The read.
    pub read: usize,
}

/// The first read (in completion order) of one key's operations that returned an
/// overwritten value; indices are into `ops`.
pub fn overwritten_read(ops: &[&Op]) -> Option<OverwrittenRead> {
    // Each value's writers; only a value written once says which write a read saw.
    let mut writers: FxHashMap<&str, Vec<usize>> = FxHashMap::default();
    for (i, op) in ops.iter().enumerate() {
        if let (F::Create | F::Set | F::Update, Some(v)) = (op.f, op.value.as_deref()) {
            writers.entry(v).or_default().push(i);
        }
    }
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
    let mut reads: Vec<usize> = (0..ops.len())
        .filter(|&i| ops[i].f == F::Get && ops[i].complete_line.is_some())
        .collect();
    reads.sort_unstable_by_key(|&i| ops[i].complete_line);
    // The line by which each value was certainly written: its first read's completion.
    let mut first_read: FxHashMap<&str, usize> = FxHashMap::default();
    for &i in &reads {
        if let (Outcome::Ok { value: Some(x), .. }, Some(done)) =
            (&ops[i].outcome, ops[i].complete_line)
        {
            first_read.entry(x.as_str()).or_insert(done);
        }
    }
    reads.into_iter().find_map(|read| {
        let Outcome::Ok { value: Some(x), .. } = &ops[read].outcome else {
            return None;
        };
        let &[write] = writers.get(x.as_str())?.as_slice() else {
            return None;
        };
        let written = (ops[write].complete_line.unwrap_or(usize::MAX)).min(first_read[x.as_str()]);
        let from = changes.partition_point(|&(invoked, ..)| invoked <= written);
        let (end, overwrite) = earliest_end[from];
        (end < ops[read].invoke_line).then_some(OverwrittenRead {
            write,
            overwrite,
            read,
        })
    })
}
