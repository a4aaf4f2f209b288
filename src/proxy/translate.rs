//! Between JunoDB messages and the store's operations: request validation against the
//! limits, and responses carrying the meta fields JunoDB's proxy returns.

use super::config::Limits;
use crate::coordinator::Outcome;
use crate::protocol::{OpCode, OpMessage, Payload, Status};
use crate::semantics::{Condition, Op, Value};

/// Turns a client request into an operation, or the status to refuse it with. (The
/// value moves out of the message into the operation, rather than being copied.)
pub fn to_op(msg: &mut OpMessage, limits: &Limits) -> Result<Op, Status> {
    let bad = |cond: bool| if cond { Err(Status::BadParam) } else { Ok(()) };
    bad(msg.key.is_empty() || msg.key.len() > limits.max_key_length)?;
    bad(msg.namespace.is_empty() || msg.namespace.len() > limits.max_namespace_length)?;
    bad(msg.payload.data.len() > limits.max_payload_length)?;
    let ttl = msg.meta.ttl.unwrap_or(0);
    bad(ttl > limits.max_ttl)?;
    let value = Value {
        kind: msg.payload.kind,
        data: std::mem::take(&mut msg.payload.data),
    };
    Ok(match OpCode::from_byte(msg.opcode) {
        OpCode::Get => Op::Get { extend_ttl: ttl },
        OpCode::Create => Op::Create { value, ttl },
        OpCode::Set => Op::Set { value, ttl },
        OpCode::Destroy => Op::Destroy,
        OpCode::Update => Op::Update {
            value,
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
pub fn response(req: OpMessage, outcome: Outcome, now_secs: u32, handling_us: u32) -> OpMessage {
    let status = match outcome {
        Ok(_) => Status::Ok,
        Err(s) => s,
    };
    let get = OpCode::from_byte(req.opcode) == OpCode::Get;
    let mut resp = req.into_response(status.to_byte());
    resp.meta.request_handling_time = Some(handling_us.max(1));
    if let Ok(Some(rec)) = outcome {
        resp.meta.version = Some(rec.version);
        resp.meta.creation_time = Some(rec.creation_time);
        resp.meta.ttl = Some(rec.ttl_left(now_secs));
        resp.meta.last_modification = Some(rec.last_modified_ns);
        resp.meta.originator = Some(rec.originator);
        if get {
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
    use crate::protocol::Direction;

    fn req(op: OpCode) -> OpMessage {
        let mut m = OpMessage::request(op.to_byte());
        m.namespace = b"ns".to_vec();
        m.key = b"k".to_vec();
        m
    }

    #[test]
    fn limits_give_bad_param() {
        let l = Limits::default();
        assert!(to_op(&mut req(OpCode::Get), &l).is_ok());
        let mut m = req(OpCode::Set);
        m.key = vec![b'k'; 129];
        assert_eq!(to_op(&mut m, &l), Err(Status::BadParam));
        let mut m = req(OpCode::Set);
        m.namespace = vec![b'n'; 65];
        assert_eq!(to_op(&mut m, &l), Err(Status::BadParam));
        let mut m = req(OpCode::Set);
        m.payload.data = vec![0; 204_801];
        assert_eq!(to_op(&mut m, &l), Err(Status::BadParam));
        let mut m = req(OpCode::Create);
        m.meta.ttl = Some(l.max_ttl + 1);
        assert_eq!(to_op(&mut m, &l), Err(Status::BadParam));
        let mut m = req(OpCode::Get);
        m.key.clear();
        assert_eq!(to_op(&mut m, &l), Err(Status::BadParam));
        assert_eq!(
            to_op(&mut req(OpCode::UdfGet), &l),
            Err(Status::NotSupported)
        );
    }

    /// The value reaches the operation whole (it is moved, not copied), and the answer
    /// still names the request it answers.
    #[test]
    fn a_value_moves_into_its_operation_and_the_answer_names_the_request() {
        let mut m = req(OpCode::Set);
        (m.payload.kind, m.payload.data) = (2, b"value".to_vec());
        (m.opaque, m.meta.request_id, m.meta.ttl) = (7, Some([3; 16]), Some(60));
        let value = Value {
            kind: 2,
            data: b"value".to_vec(),
        };
        let op = to_op(&mut m, &Limits::default());
        assert_eq!(op, Ok(Op::Set { value, ttl: 60 }));
        let resp = response(m, Err(Status::NoKey), 0, 1);
        assert_eq!(
            (resp.direction, resp.opcode),
            (Direction::Response, OpCode::Set.to_byte())
        );
        assert_eq!((resp.opaque, resp.meta.request_id), (7, Some([3; 16])));
        assert_eq!(
            (&resp.namespace[..], &resp.key[..]),
            (&b"ns"[..], &b"k"[..])
        );
        assert_eq!(resp.status, Status::NoKey.to_byte());
        assert!(resp.payload.data.is_empty());
    }
}
