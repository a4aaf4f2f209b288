//! Wall-clock time for record timestamps and TTLs, with a skew that the simulator
//! can set per node. Under madsim the underlying clock is virtual.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A node's view of the wall clock.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    skew_ns: Arc<AtomicI64>,
}

impl Clock {
    /// Unix nanoseconds as this node believes them.
    pub fn now_ns(&self) -> u64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        real.saturating_add(self.skew_ns.load(Ordering::Relaxed))
            .max(0) as u64
    }

    /// Shifts this node's clock (a fault the simulator injects).
    pub fn set_skew_ns(&self, skew: i64) {
        self.skew_ns.store(skew, Ordering::Relaxed);
    }
}
