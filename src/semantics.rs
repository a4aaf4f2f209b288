//! JunoDB's single-key semantics: what each client operation does to the current
//! record. Pure; the coordinator calls it once it knows the current state.

use crate::protocol::Status;
use crate::record::Record;

/// A value as the client sent it: JunoDB payload type and opaque bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Value {
    pub kind: u8,
    pub data: Vec<u8>,
}

/// What a conditional update must match; `None` fields are not checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Condition {
    pub version: Option<u32>,
    pub creation_time: Option<u32>,
    pub originator: Option<[u8; 16]>,
}

/// A client operation, already checked against the proxy's limits. A TTL of 0 means
/// "the default" for a new record and "unchanged" for an existing one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Get {
        extend_ttl: u32,
    },
    Create {
        value: Value,
        ttl: u32,
    },
    Update {
        value: Value,
        ttl: u32,
        condition: Condition,
    },
    Set {
        value: Value,
        ttl: u32,
    },
    Destroy,
}

impl Op {
    /// Whether the operation may change the record (and so needs two phases).
    pub fn may_write(&self) -> bool {
        !matches!(self, Op::Get { extend_ttl: 0 })
    }

    /// Whether a record carrying this request's id as originator means the operation
    /// already took effect.
    pub fn writes_originator(&self) -> bool {
        !matches!(self, Op::Get { .. })
    }
}

/// The request-independent facts an operation is applied with.
#[derive(Clone, Copy, Debug)]
pub struct Context {
    pub now_ns: u64,
    pub request_id: [u8; 16],
    pub default_ttl: u32,
}

impl Context {
    pub fn now_secs(&self) -> u32 {
        (self.now_ns / 1_000_000_000) as u32
    }
}

/// What the operation does when it succeeds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing to write; answer with this record (or no record).
    Unchanged(Option<Record>),
    /// Write this record, then answer with it.
    Write(Record),
}

/// Applies `op` to the current record (which may be a tombstone or expired).
pub fn apply(op: &Op, current: Option<&Record>, ctx: &Context) -> Result<Effect, Status> {
    let now = ctx.now_secs();
    let live = current.filter(|r| r.is_live(now));
    let fresh = |value: &Value, ttl: u32| Record {
        version: 1,
        creation_time: now,
        expires_at: now.saturating_add(if ttl == 0 { ctx.default_ttl } else { ttl }),
        last_modified_ns: ctx.now_ns,
        originator: ctx.request_id,
        lineage: Record::lineage_after(current),
        tombstone: false,
        payload_kind: value.kind,
        value: value.data.clone(),
    };
    let next = |old: &Record, value: &Value, ttl: u32| Record {
        version: old.version.wrapping_add(1).max(1),
        creation_time: old.creation_time,
        expires_at: old.expires_at.max(now.saturating_add(ttl)),
        last_modified_ns: ctx.now_ns,
        originator: ctx.request_id,
        lineage: Record::lineage_after(Some(old)),
        tombstone: false,
        payload_kind: value.kind,
        value: value.data.clone(),
    };
    match (op, live) {
        (Op::Get { .. }, None) => Err(Status::NoKey),
        (Op::Get { extend_ttl }, Some(r)) => {
            let wanted = now.saturating_add(*extend_ttl);
            if *extend_ttl > 0 && wanted > r.expires_at {
                Ok(Effect::Write(Record {
                    expires_at: wanted,
                    ..r.clone()
                }))
            } else {
                Ok(Effect::Unchanged(Some(r.clone())))
            }
        }
        (Op::Create { .. }, Some(_)) => Err(Status::DupKey),
        (Op::Create { value, ttl }, None) | (Op::Set { value, ttl }, None) => {
            Ok(Effect::Write(fresh(value, *ttl)))
        }
        (Op::Update { .. }, None) => Err(Status::NoKey),
        (
            Op::Update {
                value,
                ttl,
                condition,
            },
            Some(r),
        ) => {
            let mismatch = condition.version.is_some_and(|v| v != 0 && v != r.version)
                || condition
                    .creation_time
                    .is_some_and(|c| c != 0 && c != r.creation_time)
                || condition
                    .originator
                    .is_some_and(|o| o != [0; 16] && o != r.originator);
            if mismatch {
                Err(Status::VersionConflict)
            } else {
                Ok(Effect::Write(next(r, value, *ttl)))
            }
        }
        (Op::Set { value, ttl }, Some(r)) => Ok(Effect::Write(next(r, value, *ttl))),
        (Op::Destroy, None) => Ok(Effect::Unchanged(None)),
        (Op::Destroy, Some(r)) => Ok(Effect::Write(r.buried(
            r.version.wrapping_add(1),
            ctx.now_ns,
            ctx.request_id,
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(now_secs: u64, id: u8) -> Context {
        Context {
            now_ns: now_secs * 1_000_000_000,
            request_id: [id; 16],
            default_ttl: 3600,
        }
    }

    fn val(s: &str) -> Value {
        Value {
            kind: 0,
            data: s.as_bytes().to_vec(),
        }
    }

    fn written(e: Result<Effect, Status>) -> Record {
        match e {
            Ok(Effect::Write(r)) => r,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn create_update_set_destroy_lifecycle() {
        let c = written(apply(
            &Op::Create {
                value: val("a"),
                ttl: 0,
            },
            None,
            &ctx(100, 1),
        ));
        assert_eq!((c.version, c.creation_time, c.expires_at), (1, 100, 3700));
        assert_eq!(
            apply(
                &Op::Create {
                    value: val("b"),
                    ttl: 0
                },
                Some(&c),
                &ctx(101, 2)
            ),
            Err(Status::DupKey)
        );
        let u = written(apply(
            &Op::Update {
                value: val("b"),
                ttl: 10,
                condition: Condition::default(),
            },
            Some(&c),
            &ctx(102, 3),
        ));
        assert_eq!(
            (u.version, u.creation_time, u.expires_at, u.value.as_slice()),
            (2, 100, 3700, &b"b"[..])
        );
        let cond = Condition {
            version: Some(1),
            ..Condition::default()
        };
        assert_eq!(
            apply(
                &Op::Update {
                    value: val("c"),
                    ttl: 0,
                    condition: cond
                },
                Some(&u),
                &ctx(103, 4)
            ),
            Err(Status::VersionConflict)
        );
        let s = written(apply(
            &Op::Set {
                value: val("d"),
                ttl: 5000,
            },
            Some(&u),
            &ctx(104, 5),
        ));
        assert_eq!((s.version, s.expires_at), (3, 5104));
        let d = written(apply(&Op::Destroy, Some(&s), &ctx(105, 6)));
        assert!(d.tombstone);
        assert_eq!(
            apply(&Op::Get { extend_ttl: 0 }, Some(&d), &ctx(106, 7)),
            Err(Status::NoKey)
        );
        assert_eq!(
            apply(&Op::Destroy, Some(&d), &ctx(106, 7)),
            Ok(Effect::Unchanged(None))
        );
        let again = written(apply(
            &Op::Set {
                value: val("e"),
                ttl: 0,
            },
            Some(&d),
            &ctx(107, 8),
        ));
        assert_eq!(again.version, 1);
    }

    #[test]
    fn expired_records_are_absent_and_ttl_only_grows_on_get() {
        let c = written(apply(
            &Op::Create {
                value: val("a"),
                ttl: 10,
            },
            None,
            &ctx(100, 1),
        ));
        assert_eq!(
            apply(&Op::Get { extend_ttl: 0 }, Some(&c), &ctx(110, 2)),
            Err(Status::NoKey)
        );
        assert_eq!(
            apply(
                &Op::Update {
                    value: val("b"),
                    ttl: 0,
                    condition: Condition::default()
                },
                Some(&c),
                &ctx(110, 2)
            ),
            Err(Status::NoKey)
        );
        assert!(matches!(
            apply(
                &Op::Create {
                    value: val("b"),
                    ttl: 0
                },
                Some(&c),
                &ctx(110, 2)
            ),
            Ok(Effect::Write(_))
        ));
        assert_eq!(
            apply(&Op::Get { extend_ttl: 5 }, Some(&c), &ctx(101, 2)),
            Ok(Effect::Unchanged(Some(c.clone())))
        );
        let g = written(apply(&Op::Get { extend_ttl: 50 }, Some(&c), &ctx(101, 2)));
        assert_eq!(
            (g.expires_at, g.version, g.originator),
            (151, 1, c.originator)
        );
    }
}
