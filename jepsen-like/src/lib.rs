//! The linearizability checker for JunoDB key-value histories (Wing–Gong/Lowe search
//! with memoisation, per key, in parallel), its reports, and the real-cluster workload
//! runner that produces histories.

pub mod anomaly;
pub mod checker;
pub mod history;
pub mod model;
pub mod report;
pub mod runner;
pub mod synth;
