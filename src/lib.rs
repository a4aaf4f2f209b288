//! JunoKV: a distributed key-value store that speaks JunoDB's wire protocol, with every
//! single-key operation linearizable. See `README.md` and `../shared/DESIGN.md`.

pub mod coordinator;
pub mod key;
pub mod protocol;
pub mod record;
pub mod replica;
pub mod semantics;
