//! JunoDB's key-value semantics for one key, as a nondeterministic state machine: where
//! an expiry may or may not have happened within an operation's time window, both are
//! explored.

use crate::history::F;

/// The model's state: the key, and the earliest time the next operation can take
/// effect (raised when an operation sees a record expire: linearization points never
/// go back in time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub key: KeyState,
    pub not_before: u64,
}

impl State {
    pub const INITIAL: State = State {
        key: KeyState::Absent,
        not_before: 0,
    };
}

/// The state of one key. Values are interned per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyState {
    Absent,
    Live {
        value: u32,
        version: u32,
        /// Earliest and latest time (history clock, ns) the record may expire.
        exp_lo: u64,
        exp_hi: u64,
    },
}

/// What an operation observed, in the model's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    Ok {
        version: Option<u32>,
        value: Option<u32>,
    },
    NoKey,
    DupKey,
    VersionConflict,
    /// A failure that says nothing about the state (e.g. BadParam).
    OtherFailure,
    Unknown,
}

/// One operation on the key, prepared for the search.
#[derive(Clone, Debug)]
pub struct KeyOp {
    pub f: F,
    pub value: u32,
    pub ttl_ns: u64,
    pub if_version: Option<u32>,
    pub observed: Observed,
    /// The window its linearization point lies in; `end` is `u64::MAX` for unknown.
    pub start: u64,
    pub end: u64,
}

/// Model parameters.
#[derive(Clone, Copy, Debug)]
pub struct Model {
    /// TTL given to a new record whose request carried none (JunoDB's default, 1 h).
    pub default_ttl_ns: u64,
    /// How far the store's expiry clock may be from the history's clock.
    pub clock_uncertainty_ns: u64,
    /// How much earlier than its TTL a record may expire because the store keeps
    /// expiry times in whole seconds, rounded down (JunoKV: 1 s).
    pub expiry_rounding_ns: u64,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            default_ttl_ns: 3600 * 1_000_000_000,
            clock_uncertainty_ns: 1_500_000_000,
            expiry_rounding_ns: 0,
        }
    }
}

enum Result {
    Ok { version: u32, value: Option<u32> },
    NoKey,
    DupKey,
    VersionConflict,
}

impl Model {
    /// Every state the key may be in after `op` takes effect in state `s` and observes
    /// what the history says it observed. Empty: `op` cannot be placed here.
    pub fn step(&self, s: State, op: &KeyOp) -> Vec<State> {
        if op.end < s.not_before {
            return Vec::new();
        }
        let u = self.clock_uncertainty_ns;
        let earliest = op.start.max(s.not_before);
        // (what the operation sees, the earliest time it can see it)
        let views: Vec<(KeyState, u64)> = match s.key {
            KeyState::Absent => vec![(KeyState::Absent, s.not_before)],
            KeyState::Live { exp_lo, exp_hi, .. } => {
                let mut v = Vec::with_capacity(2);
                if earliest < exp_hi.saturating_add(u) {
                    v.push((s.key, s.not_before));
                }
                let expired_from = exp_lo.saturating_sub(u + self.expiry_rounding_ns);
                if op.end >= expired_from {
                    v.push((
                        KeyState::Absent,
                        s.not_before.max(expired_from).max(op.start),
                    ));
                }
                v
            }
        };
        let mut next = Vec::new();
        for (view, not_before) in views {
            if op.observed == Observed::OtherFailure {
                push_unique(
                    &mut next,
                    State {
                        key: view,
                        not_before,
                    },
                );
                continue;
            }
            let (result, after) = self.apply(view, op);
            let after = State {
                key: after,
                not_before,
            };
            let fits = match (op.observed, &result) {
                (Observed::Unknown, _) => true,
                (
                    Observed::Ok { version, value },
                    Result::Ok {
                        version: v,
                        value: val,
                    },
                ) => {
                    version.is_none_or(|x| x == *v)
                        && (op.f != F::Get || value.is_none() || value == *val)
                }
                (Observed::NoKey, Result::NoKey) => true,
                (Observed::DupKey, Result::DupKey) => true,
                (Observed::VersionConflict, Result::VersionConflict) => true,
                _ => false,
            };
            if fits {
                push_unique(&mut next, after);
            }
        }
        next
    }

    fn apply(&self, s: KeyState, op: &KeyOp) -> (Result, KeyState) {
        let ttl = if op.ttl_ns == 0 {
            self.default_ttl_ns
        } else {
            op.ttl_ns
        };
        let fresh = KeyState::Live {
            value: op.value,
            version: 1,
            exp_lo: op.start.saturating_add(ttl),
            exp_hi: op.end.saturating_add(ttl),
        };
        let extend = |lo: u64, hi: u64| {
            if op.ttl_ns == 0 {
                (lo, hi)
            } else {
                (
                    lo.max(op.start.saturating_add(op.ttl_ns)),
                    hi.max(op.end.saturating_add(op.ttl_ns)),
                )
            }
        };
        match (op.f, s) {
            (F::Create, KeyState::Absent) | (F::Set, KeyState::Absent) => (
                Result::Ok {
                    version: 1,
                    value: None,
                },
                fresh,
            ),
            (F::Create, live) => (Result::DupKey, live),
            (F::Get, KeyState::Absent) | (F::Update, KeyState::Absent) => {
                (Result::NoKey, KeyState::Absent)
            }
            (
                F::Get,
                KeyState::Live {
                    value,
                    version,
                    exp_lo,
                    exp_hi,
                },
            ) => {
                let (exp_lo, exp_hi) = extend(exp_lo, exp_hi);
                (
                    Result::Ok {
                        version,
                        value: Some(value),
                    },
                    KeyState::Live {
                        value,
                        version,
                        exp_lo,
                        exp_hi,
                    },
                )
            }
            (F::Update, KeyState::Live { version, .. })
                if op.if_version.is_some_and(|v| v != version) =>
            {
                (Result::VersionConflict, s)
            }
            (
                F::Update | F::Set,
                KeyState::Live {
                    version,
                    exp_lo,
                    exp_hi,
                    ..
                },
            ) => {
                let (exp_lo, exp_hi) = extend(exp_lo, exp_hi);
                let version = version.wrapping_add(1);
                (
                    Result::Ok {
                        version,
                        value: None,
                    },
                    KeyState::Live {
                        value: op.value,
                        version,
                        exp_lo,
                        exp_hi,
                    },
                )
            }
            (F::Destroy, _) => (
                Result::Ok {
                    version: 0,
                    value: None,
                },
                KeyState::Absent,
            ),
        }
    }
}

fn push_unique(v: &mut Vec<State>, s: State) {
    if !v.contains(&s) {
        v.push(s);
    }
}
