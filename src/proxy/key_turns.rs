//! One request at a time per key on a proxy. A proxy's own concurrent requests on one
//! key would otherwise pre-empt each other's ballots round after round (seen in the
//! simulator: two clients of one proxy on a hot key duelling until both time out);
//! taking turns, each completes in one or two round trips. Proxies still compete with
//! each other, which the protocol resolves.

use crate::key::StoreKey;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

type Turns = Arc<Mutex<BTreeMap<StoreKey, Arc<tokio::sync::Mutex<()>>>>>;

/// The queues of requests waiting for their key, one per key in use.
#[derive(Default)]
pub struct KeyTurns {
    turns: Turns,
}

/// A request's turn on its key; the next request's turn comes when it is dropped.
pub struct Turn {
    key: StoreKey,
    turns: Turns,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyTurns {
    /// Waits (in arrival order) until no other request of this proxy works on `key`.
    pub async fn wait(&self, key: &StoreKey) -> Turn {
        let lock = self
            .turns
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone();
        Turn {
            key: key.clone(),
            turns: self.turns.clone(),
            guard: Some(lock.lock_owned().await),
        }
    }

    /// Keys with a request in progress or waiting.
    #[cfg(test)]
    fn in_use(&self) -> usize {
        self.turns.lock().unwrap().len()
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.guard.take();
        let mut turns = self.turns.lock().unwrap();
        // Nobody else holds or waits for this key's lock: forget the key.
        if turns
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            turns.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_on_one_key_take_turns_and_other_keys_do_not_wait() {
        let turns = Arc::new(KeyTurns::default());
        let (a, b) = (StoreKey::new(b"n", b"a", 8), StoreKey::new(b"n", b"b", 8));
        let first = turns.wait(&a).await;
        let _other = turns.wait(&b).await; // another key: no wait
        let (t, k) = (turns.clone(), a.clone());
        let second = tokio::spawn(async move { t.wait(&k).await });
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "the second request on a key waits");
        drop(first);
        let second = second.await.unwrap();
        assert_eq!(turns.in_use(), 2);
        drop(second);
        assert_eq!(turns.in_use(), 1, "a key nobody uses is forgotten");
    }
}
