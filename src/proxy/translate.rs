//! Between JunoDB messages and the store's operations: request validation against the
//! limits, and responses carrying the meta fields JunoDB's proxy returns.

use super::config::Limits;
use crate::coordinator::Outcome;
use crate::protocol::{OpCode, OpMessage, Payload, Status};
use crate::semantics::{Condition, Op, Value};

/// Turns a client request into an operation, or the status to refuse it with.
pub fn to_op(msg: &OpMessage, limits: &Limits) -> Result<Op, Status> {
    let bad = |cond: bool| if cond { Err(Status::BadParam) } else { Ok(()) };
    bad(msg.key.is_empty() || msg.key.len() > limits.max_key_length)?;
    bad(msg.namespace.is_empty() || msg.namespace.len() > limits.max_namespace_length)?;
    bad(msg.payload.data.len() > limits.max_payload_length)?;
    let ttl = msg.meta.ttl.unwrap_or(0);
    bad(ttl > limits.max_ttl)?;
    let value = || Value {
        kind: msg.payload.kind,
        data: msg.payload.data.clone(),
    };
    Ok(match OpCode::from_byte(msg.opcode) {
        OpCode::Get => Op::Get { extend_ttl: ttl },
        OpCode::Create => Op::Create {
            value: value(),
            ttl,
        },
        OpCode::Set => Op::Set {
            value: value(),
            ttl,
        },
        OpCode::Destroy => Op::Destroy,
        OpCode::Update => Op::Update {
            value: value(),
            ttl,
            condition: Condition {
                version: msg.meta.version,
                creation_time: msg.meta.creation_time,
                originator: msg.meta.originator,
            },
        },
        _ => return Err(Status::NotSupported),
    })
}

/// The response to `req` for `outcome`, with the record's meta fields on success (and
/// a get's value, moved rather than copied).
pub fn response(req: &OpMessage, outcome: Outcome, now_secs: u32, handling_us: u32) -> OpMessage {
    let status = match outcome {
        Ok(_) => Status::Ok,
        Err(s) => s,
    };
    let mut resp = OpMessage::response_to(req, status.to_byte());
    resp.meta.request_handling_time = Some(handling_us.max(1));
    if let Ok(Some(rec)) = outcome {
        resp.meta.version = Some(rec.version);
        resp.meta.creation_time = Some(rec.creation_time);
        resp.meta.ttl = Some(rec.ttl_left(now_secs));
        resp.meta.last_modification = Some(rec.last_modified_ns);
        resp.meta.originator = Some(rec.originator);
        if OpCode::from_byte(req.opcode) == OpCode::Get {
            resp.payload = Payload {
                kind: rec.payload_kind,
                data: rec.value,
            };
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(op: OpCode) -> OpMessage {
        let mut m = OpMessage::request(op.to_byte());
        m.namespace = b"ns".to_vec();
        m.key = b"k".to_vec();
        m
    }

    #[test]
    fn limits_give_bad_param() {
        let l = Limits::default();
        assert!(to_op(&req(OpCode::Get), &l).is_ok());
        let mut m = req(OpCode::Set);
        m.key = vec![b'k'; 129];
        assert_eq!(to_op(&m, &l), Err(Status::BadParam));
        let mut m = req(OpCode::Set);
        m.namespace = vec![b'n'; 65];
        assert_eq!(to_op(&m, &l), Err(Status::BadParam));
        let mut m = req(OpCode::Set);
        m.payload.data = vec![0; 204_801];
        assert_eq!(to_op(&m, &l), Err(Status::BadParam));
        let mut m = req(OpCode::Create);
        m.meta.ttl = Some(l.max_ttl + 1);
        assert_eq!(to_op(&m, &l), Err(Status::BadParam));
        let mut m = req(OpCode::Get);
        m.key.clear();
        assert_eq!(to_op(&m, &l), Err(Status::BadParam));
        assert_eq!(to_op(&req(OpCode::UdfGet), &l), Err(Status::NotSupported));
    }
}
