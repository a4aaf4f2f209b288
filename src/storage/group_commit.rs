//! Group commit: many concurrent writes share one durable engine write (one fsync).
//! While one batch is being synced, the next one collects.

use crate::engine::{Change, Engine};
use crate::fault::{bug, Bug};
use smallvec::SmallVec;
use std::io;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// The changes of one write, made durable together: nearly always one or two (a slot,
/// and now and then a ballot bound), which travel to the committer without an
/// allocation of their own.
pub type Changes = SmallVec<[Change; 2]>;

/// Where the writes of a storage server go to become durable.
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::UnboundedSender<(u64, Changes)>,
    durable: watch::Receiver<Durable>,
}

/// How far writes have become durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durable {
    /// Every write with a sequence number up to this one is durable.
    UpTo(u64),
    /// A durable write failed: nothing after it can be trusted, the server must stop.
    Failed,
}

impl GroupCommit {
    /// Starts the committing task, which ends (releasing the engine) once every
    /// handle is dropped. `max_batch` bounds the changes synced at once; `server` names
    /// the storage server (for logs and the simulator's crash points).
    pub fn start(
        engine: Arc<dyn Engine>,
        max_batch: usize,
        server: String,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Changes)>();
        let (durable_tx, durable) = watch::channel(Durable::UpTo(0));
        // In production the committer is a thread of its own: a batch that finishes
        // syncing starts the next at once, with no hop through the async workers
        // (which left the disk idle a third of the time under load), after waiting
        // for company as `linger_after` says (measured in docs/benchmarks.md).
        #[cfg(not(madsim))]
        let task = tokio::task::spawn_blocking(move || {
            let mut linger = std::time::Duration::ZERO;
            let mut batch = Vec::new();
            while let Some(first) = rx.blocking_recv() {
                std::thread::sleep(linger);
                let first_seq = first.0;
                let last = collect(first, &mut rx, max_batch, &mut batch);
                // (A replica numbers its writes one by one.)
                let concurrent = last > first_seq;
                let started = std::time::Instant::now();
                let written = engine.write(&batch, true);
                let took = started.elapsed();
                if !publish(&durable_tx, last, written, took, &server) {
                    return;
                }
                batch.clear();
                linger = linger_after(concurrent, took);
            }
        });
        #[cfg(madsim)]
        let task = tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(first) = rx.recv().await {
                // The tasks ready to run go first: under load the replica has more
                // writes to queue, which then share this batch's fsync.
                tokio::task::yield_now().await;
                let last = collect(first, &mut rx, max_batch, &mut batch);
                if bug(Bug::AckBeforeFsync) {
                    let _ = durable_tx.send(Durable::UpTo(last));
                }
                let started = tokio::time::Instant::now();
                let written = write_durably(engine.clone(), &batch, &server).await;
                if !publish(&durable_tx, last, written, started.elapsed(), &server) {
                    return;
                }
                batch.clear();
            }
        });
        (GroupCommit { tx, durable }, task)
    }

    /// Queues `changes` under sequence number `seq` (strictly increasing per caller).
    pub fn submit(&self, seq: u64, changes: Changes) {
        // A closed channel means the committer failed; `wait` reports that.
        let _ = self.tx.send((seq, changes));
    }

    /// A receiver that wakes whenever durability progresses (or fails).
    pub fn subscribe(&self) -> watch::Receiver<Durable> {
        self.durable.clone()
    }

    /// Whether a durable write failed, after which nothing may be served.
    pub fn has_failed(&self) -> bool {
        *self.durable.borrow() == Durable::Failed
    }

    /// The highest durable sequence number (0 after a failure).
    pub fn durable(&self) -> u64 {
        match *self.durable.borrow() {
            Durable::UpTo(s) => s,
            Durable::Failed => 0,
        }
    }
}

/// How long the committer waits for more writes before its next sync, after one that
/// took `took`: a quarter of it (at most 1 ms) while others are writing (the last batch
/// held more than one write), so that they share the sync; nothing for a write alone.
#[cfg(not(madsim))]
fn linger_after(concurrent: bool, took: std::time::Duration) -> std::time::Duration {
    match concurrent {
        true => (took / 4).min(std::time::Duration::from_millis(1)),
        false => std::time::Duration::ZERO,
    }
}

/// Moves the first queued write and those queued behind it, up to `max_batch` changes,
/// into `batch` (empty, and kept from one batch to the next: allocated once); returns
/// the sequence number of the last.
fn collect(
    (mut last, first): (u64, Changes),
    rx: &mut mpsc::UnboundedReceiver<(u64, Changes)>,
    max_batch: usize,
    batch: &mut Vec<Change>,
) -> u64 {
    batch.extend(first);
    while batch.len() < max_batch {
        match rx.try_recv() {
            Ok((seq, more)) => {
                last = seq;
                batch.extend(more);
            }
            Err(_) => break,
        }
    }
    if bug(Bug::BatchLosesLastChange) && batch.len() > 1 {
        batch.pop();
    }
    crate::metrics::metrics()
        .commit_batch_changes
        .observe(batch.len() as f64);
    last
}

/// Tells the replica how far its writes are durable; false once nothing more may be
/// written (the write failed, or nobody listens).
fn publish(
    durable_tx: &watch::Sender<Durable>,
    last: u64,
    written: io::Result<()>,
    took: std::time::Duration,
    server: &str,
) -> bool {
    crate::metrics::metrics()
        .fsync_seconds
        .observe(took.as_secs_f64());
    let state = match written {
        Ok(()) => Durable::UpTo(last),
        Err(e) => {
            tracing::error!(%server, error = %e, "durable write failed; replica stops serving");
            Durable::Failed
        }
    };
    durable_tx.send(state).is_ok() && state != Durable::Failed
}

/// In the simulator a sync takes simulated time; a crash meanwhile loses the batch,
/// as a real crash loses writes that were not yet synced. Two crash points: while the
/// batch is being synced (its replies computed, none sent: the batch is lost whole, as
/// RocksDB drops a torn WAL record), and just after it is durable (kept, but nobody
/// was told).
#[cfg(madsim)]
async fn write_durably(engine: Arc<dyn Engine>, batch: &[Change], server: &str) -> io::Result<()> {
    use crate::fault::{crash_point, CrashPoint};
    use madsim::rand::Rng;
    let sync = madsim::rand::thread_rng().gen_range(1000..10_000);
    crash_point(server, CrashPoint::DuringSync);
    tokio::time::sleep(std::time::Duration::from_micros(sync)).await;
    engine.write(batch, true)?;
    if crash_point(server, CrashPoint::AfterSync) {
        // The node is dead: let the runtime drop this task before anyone hears of it.
        tokio::task::yield_now().await;
    }
    Ok(())
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;
    use crate::engine::{Entry, MemoryEngine};
    use std::sync::mpsc as std_mpsc;
    use std::sync::Mutex;

    /// An engine whose first write waits for the test's word: the writes queued
    /// meanwhile show how the committer batches.
    struct Gated {
        inner: MemoryEngine,
        started: Mutex<Option<std_mpsc::Sender<()>>>,
        release: Mutex<std_mpsc::Receiver<()>>,
        writes: Mutex<Vec<usize>>,
        fail: bool,
    }

    impl Engine for Gated {
        fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
            self.inner.get(key)
        }
        fn write(&self, batch: &[Change], sync: bool) -> io::Result<()> {
            assert!(sync, "group commit writes durably");
            if let Some(started) = self.started.lock().unwrap().take() {
                started.send(()).unwrap();
                self.release.lock().unwrap().recv().unwrap();
            }
            self.writes.lock().unwrap().push(batch.len());
            match self.fail {
                true => Err(io::Error::other("disk gone")),
                false => self.inner.write(batch, sync),
            }
        }
        fn scan(&self, a: Option<&[u8]>, b: Option<&[u8]>, n: usize) -> io::Result<Vec<Entry>> {
            self.inner.scan(a, b, n)
        }
    }

    /// A committer whose first write (seq 1) is syncing, held there until the test
    /// sends on the returned sender; its engine fails every write with `fail`.
    async fn syncing_its_first_write(
        fail: bool,
    ) -> (
        Arc<Gated>,
        GroupCommit,
        tokio::task::JoinHandle<()>,
        std_mpsc::Sender<()>,
    ) {
        let (started_tx, started) = std_mpsc::channel();
        let (release, release_rx) = std_mpsc::channel();
        let engine = Arc::new(Gated {
            inner: MemoryEngine::default(),
            started: Mutex::new(Some(started_tx)),
            release: Mutex::new(release_rx),
            writes: Mutex::new(Vec::new()),
            fail,
        });
        let (commit, task) = GroupCommit::start(engine.clone(), 4096, "s".into());
        commit.submit(1, change(1));
        tokio::task::spawn_blocking(move || started.recv().unwrap())
            .await
            .unwrap();
        (engine, commit, task, release)
    }

    fn change(i: u64) -> Changes {
        smallvec::smallvec![(i.to_be_bytes()[..].into(), Some(vec![1]))]
    }

    async fn until(commit: &GroupCommit, done: impl Fn(Durable) -> bool) {
        let mut durable = commit.subscribe();
        while !done(*durable.borrow_and_update()) {
            durable.changed().await.unwrap();
        }
    }

    #[test]
    fn the_committer_waits_for_company_only_while_others_write() {
        use std::time::Duration;
        let ms = Duration::from_millis;
        assert_eq!(linger_after(false, ms(2)), Duration::ZERO);
        assert_eq!(
            linger_after(true, Duration::from_micros(600)),
            Duration::from_micros(150)
        );
        assert_eq!(linger_after(true, ms(40)), ms(1));
    }

    #[tokio::test]
    async fn writes_queued_while_one_syncs_share_the_next_sync() {
        let (engine, commit, _task, release) = syncing_its_first_write(false).await;
        for seq in 2..=100 {
            commit.submit(seq, change(seq));
        }
        assert_eq!(
            commit.durable(),
            0,
            "nothing is durable before its sync ends"
        );
        release.send(()).unwrap();
        until(&commit, |d| d == Durable::UpTo(100)).await;
        assert_eq!(*engine.writes.lock().unwrap(), vec![1, 99]);
        assert!((1..=100u64).all(|i| engine.get(&i.to_be_bytes()).unwrap().is_some()));
    }

    #[tokio::test]
    async fn a_failed_sync_stops_the_committer_and_nothing_is_acknowledged() {
        let (engine, commit, task, release) = syncing_its_first_write(true).await;
        commit.submit(2, change(2));
        release.send(()).unwrap();
        until(&commit, |d| d == Durable::Failed).await;
        assert!(commit.has_failed());
        assert_eq!(commit.durable(), 0);
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
        assert!(stopped.is_ok(), "the committer stops after a failed sync");
        assert_eq!(
            *engine.writes.lock().unwrap(),
            vec![1],
            "no write after a failed one"
        );
    }
}
