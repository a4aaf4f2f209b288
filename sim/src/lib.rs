//! The deterministic simulator of the whole cluster (see the simulation issue); the
//! same proxy and storage code as production runs here under madsim.
