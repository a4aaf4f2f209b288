//! When a read that asked only a quorum of replicas asks the rest: once it has waited
//! a few times as long as the proxy's reads usually take. Too soon and reads cost as
//! much as asking every replica; too late and a replica that hangs (a partition, a
//! stopped process) stalls every read routed to it for that long.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A hedged read waits this many mean round trips.
const MEANS: u32 = 4;
/// Never sooner: below this, scheduling noise alone would trigger hedges.
const FLOOR: Duration = Duration::from_millis(1);

/// The mean round trip of the proxy's reads to a replica, smoothed over the last few
/// dozen (an exponentially weighted moving average, in nanoseconds).
#[derive(Default)]
pub struct ReadRoundTrips {
    mean_ns: AtomicU64,
}

impl ReadRoundTrips {
    /// One read's round trip to one replica.
    pub fn observe(&self, took: Duration) {
        let took = took.as_nanos().min(u64::MAX as u128) as u64;
        // A lost update under a race only drops one sample.
        let mean = self.mean_ns.load(Ordering::Relaxed);
        let next = match mean {
            0 => took,
            _ => mean - mean / 32 + took / 32,
        };
        self.mean_ns.store(next.max(1), Ordering::Relaxed);
    }

    /// How long a read waits for its quorum before asking the other replicas, at most
    /// `cap` (the round timeout, after which it would retry anyway).
    pub fn hedge_after(&self, cap: Duration) -> Duration {
        let mean = Duration::from_nanos(self.mean_ns.load(Ordering::Relaxed));
        (mean * MEANS).clamp(FLOOR, cap.max(FLOOR))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hedges_after_a_few_usual_round_trips_within_bounds() {
        let cap = Duration::from_millis(250);
        let trips = ReadRoundTrips::default();
        assert_eq!(trips.hedge_after(cap), FLOOR, "nothing seen yet");
        trips.observe(Duration::from_millis(2));
        assert_eq!(trips.hedge_after(cap), Duration::from_millis(8));
        for _ in 0..200 {
            trips.observe(Duration::from_millis(10));
        }
        let after = trips.hedge_after(cap);
        assert!(after > Duration::from_millis(38) && after <= Duration::from_millis(40));
        for _ in 0..200 {
            trips.observe(Duration::from_secs(1));
        }
        assert_eq!(trips.hedge_after(cap), cap);
        for _ in 0..500 {
            trips.observe(Duration::from_micros(10));
        }
        assert_eq!(trips.hedge_after(cap), FLOOR);
    }
}
