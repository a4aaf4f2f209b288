//! The linearizability checker and real-cluster workload runner (see the checker
//! issue).
