//! Admission: what a client may hold of a proxy (`[connections]` in its config). A
//! connection beyond the cap is closed at once; a connection's requests beyond its
//! share of requests or buffered bytes wait, unread, in the client's socket
//! (back-pressure, not queues); a request beyond the proxy-wide cap on requests in
//! flight is answered Busy without being started. Every request's bytes, and then its
//! response's, are counted until the response has been handed to the socket writer.

use super::config::ConnectionLimits;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The proxy-wide budgets, shared by every client port of a proxy.
pub struct Admission {
    connections: Arc<Semaphore>,
    in_flight: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    limits: ConnectionLimits,
}

/// One connection's budget (clones share it): its requests and bytes, and its place
/// among the proxy's connections, given back when the last clone goes.
#[derive(Clone)]
pub struct ConnectionBudget {
    _place: Arc<OwnedSemaphorePermit>,
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    shared_bytes: Arc<Semaphore>,
    limits: ConnectionLimits,
}

/// What one request holds until its response is written: a request slot of its
/// connection, and bytes of its connection's and the proxy's budgets.
pub struct Held {
    _slot: OwnedSemaphorePermit,
    bytes: Bytes,
}

/// Bytes of both budgets, given back together.
struct Bytes {
    _own: OwnedSemaphorePermit,
    _shared: OwnedSemaphorePermit,
}

/// A request counted against the proxy-wide cap on requests in flight, until dropped.
pub struct Started {
    _permit: OwnedSemaphorePermit,
}

fn permits(n: usize, cap: usize) -> u32 {
    n.clamp(1, cap.max(1)).min(u32::MAX as usize) as u32
}

impl Admission {
    pub fn new(limits: ConnectionLimits) -> Self {
        let semaphore = |n: usize| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)));
        Admission {
            connections: semaphore(limits.max_connections),
            in_flight: semaphore(limits.max_in_flight),
            bytes: semaphore(limits.max_buffered_bytes),
            limits,
        }
    }

    /// A new connection's budget, or `None` when the proxy has as many as it may.
    pub fn connection(&self) -> Option<ConnectionBudget> {
        let place = self.connections.clone().try_acquire_owned().ok()?;
        let l = &self.limits;
        Some(ConnectionBudget {
            _place: Arc::new(place),
            requests: Arc::new(Semaphore::new(l.max_in_flight_per_connection.max(1))),
            bytes: Arc::new(Semaphore::new(l.max_buffered_bytes_per_connection.max(1))),
            shared_bytes: self.bytes.clone(),
            limits: l.clone(),
        })
    }

    /// Counts a request as in flight, or `None` when the proxy is at its cap (the
    /// request must be answered Busy, not started).
    pub fn start(&self) -> Option<Started> {
        let permit = self.in_flight.clone().try_acquire_owned().ok()?;
        Some(Started { _permit: permit })
    }
}

impl ConnectionBudget {
    /// Waits for a request slot and `n` bytes (a frame's size, before its body is read).
    pub async fn admit(&self, n: usize) -> Held {
        let slot = self
            .requests
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        Held {
            _slot: slot,
            bytes: self.bytes(n).await,
        }
    }

    /// Trades the bytes `held` for `n` (its response's size). The request's bytes go
    /// back first, so that requests waiting for room for their responses can never
    /// hold all the room between them.
    pub async fn resize(&self, held: Held, n: usize) -> Held {
        let Held { _slot, bytes } = held;
        drop(bytes);
        Held {
            _slot,
            bytes: self.bytes(n).await,
        }
    }

    async fn bytes(&self, n: usize) -> Bytes {
        let l = &self.limits;
        let own = permits(n, l.max_buffered_bytes_per_connection);
        let shared = permits(n, l.max_buffered_bytes);
        Bytes {
            _own: self
                .bytes
                .clone()
                .acquire_many_owned(own)
                .await
                .expect("never closed"),
            _shared: (self.shared_bytes.clone().acquire_many_owned(shared).await)
                .expect("never closed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 2,
            max_in_flight: 3,
            max_in_flight_per_connection: 2,
            max_buffered_bytes_per_connection: 100,
            max_buffered_bytes: 150,
            ..ConnectionLimits::default()
        }
    }

    async fn waits<T>(f: impl std::future::Future<Output = T>) -> bool {
        tokio::time::timeout(Duration::from_millis(20), f)
            .await
            .is_err()
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_refused_until_one_goes() {
        let a = Admission::new(limits());
        let first = a.connection().unwrap();
        let _second = a.connection().unwrap();
        assert!(a.connection().is_none());
        let clone = first.clone();
        drop(first);
        assert!(a.connection().is_none(), "a clone keeps the place");
        drop(clone);
        assert!(a.connection().is_some());
    }

    #[tokio::test]
    async fn a_connection_waits_beyond_its_requests_or_bytes() {
        let a = Admission::new(limits());
        let c = a.connection().unwrap();
        let one = c.admit(10).await;
        let _two = c.admit(10).await;
        assert!(waits(c.admit(10)).await, "a third request must wait");
        drop(one);
        let three = c.admit(70).await;
        assert!(
            waits(c.resize(three, 95)).await,
            "10 bytes held: no room for 95"
        );
    }

    #[tokio::test]
    async fn the_proxy_wide_bytes_bound_every_connection_together() {
        let a = Admission::new(limits());
        let (c1, c2) = (a.connection().unwrap(), a.connection().unwrap());
        let _big = c1.admit(100).await;
        assert!(waits(c2.admit(60)).await, "150 bytes in all");
        let _fits = c2.admit(50).await;
    }

    #[tokio::test]
    async fn requests_beyond_the_proxy_cap_are_not_started() {
        let a = Admission::new(limits());
        let started: Vec<_> = (0..3).map(|_| a.start().unwrap()).collect();
        assert!(a.start().is_none());
        drop(started);
        assert!(a.start().is_some());
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_budget_still_gets_in_alone() {
        let a = Admission::new(limits());
        let c = a.connection().unwrap();
        let huge = c.admit(1 << 20).await;
        assert!(waits(c.admit(1)).await);
        drop(huge);
        let _ = c.admit(1).await;
    }
}
