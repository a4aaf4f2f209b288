//! JunoKV: a distributed key-value store that speaks JunoDB's wire protocol, with every
//! single-key operation linearizable. See `README.md` and `../shared/DESIGN.md`.

pub mod admin;
pub mod at_rest;
pub mod bounded;
#[cfg(not(madsim))]
pub mod certs;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod coordinator;
pub mod engine;
#[cfg(not(madsim))]
pub mod etcd_map;
pub mod fault;
pub mod key;
pub mod listener;
pub mod map_change;
pub mod metrics;
pub mod protocol;
pub mod proxy;
pub mod record;
pub mod replica;
pub mod rpc;
pub mod secret_file;
pub mod semantics;
pub mod storage;
#[cfg(not(madsim))]
pub mod tls;
pub mod transport;
