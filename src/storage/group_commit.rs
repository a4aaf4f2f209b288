//! Group commit: many concurrent writes share one durable engine write (one fsync).
//! While one batch is being synced, the next one collects.

use crate::engine::{Change, Engine};
use crate::fault::{bug, Bug};
use std::io;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};

/// Where the writes of a storage server go to become durable.
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::UnboundedSender<(u64, Vec<Change>)>,
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

/// Waits for the committer to end: once every handle is dropped it finishes the
/// batch in hand and releases the engine.
pub struct Committer(oneshot::Receiver<()>);

impl Committer {
    pub async fn finished(self) {
        let _ = self.0.await;
    }
}

/// The committer's loop, shared by its thread (production) and its task (simulator).
struct Committing {
    engine: Arc<dyn Engine>,
    max_batch: usize,
    server: String,
    durable_tx: watch::Sender<Durable>,
}

impl Committing {
    /// Adds to the first batch what else is queued, up to `max_batch` changes.
    fn gather(
        &self,
        rx: &mut mpsc::UnboundedReceiver<(u64, Vec<Change>)>,
        (mut last, mut batch): (u64, Vec<Change>),
    ) -> (u64, Vec<Change>) {
        while batch.len() < self.max_batch {
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
        if bug(Bug::AckBeforeFsync) {
            let _ = self.durable_tx.send(Durable::UpTo(last));
        }
        crate::metrics::metrics()
            .commit_batch_changes
            .observe(batch.len() as f64);
        (last, batch)
    }

    /// Tells the waiting replies how the write of the batch up to `last` went; false
    /// when nothing more may be committed.
    fn written(&self, last: u64, written: io::Result<()>, started: tokio::time::Instant) -> bool {
        crate::metrics::metrics()
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        let state = match written {
            Ok(()) => Durable::UpTo(last),
            Err(e) => {
                let server = &self.server;
                tracing::error!(%server, error = %e, "durable write failed; replica stops serving");
                Durable::Failed
            }
        };
        self.durable_tx.send(state).is_ok() && state != Durable::Failed
    }
}

impl GroupCommit {
    /// Starts the committer, which ends (releasing the engine) once every handle is
    /// dropped. `max_batch` bounds the changes synced at once; `server` names the
    /// storage server (for logs and the simulator's crash points).
    pub fn start(engine: Arc<dyn Engine>, max_batch: usize, server: String) -> (Self, Committer) {
        let (tx, rx) = mpsc::unbounded_channel::<(u64, Vec<Change>)>();
        let (durable_tx, durable) = watch::channel(Durable::UpTo(0));
        let (done_tx, done) = oneshot::channel();
        let committing = Committing {
            engine,
            max_batch,
            server,
            durable_tx,
        };
        run(committing, rx, done_tx);
        (GroupCommit { tx, durable }, Committer(done))
    }

    /// Queues `changes` under sequence number `seq` (strictly increasing per caller).
    pub fn submit(&self, seq: u64, changes: Vec<Change>) {
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

/// In production the committer is a thread of its own: the fsync blocks, and a
/// thread that waits on the queue itself saves two hand-offs a batch over a task that
/// hands each batch to the blocking pool.
#[cfg(not(madsim))]
fn run(
    c: Committing,
    mut rx: mpsc::UnboundedReceiver<(u64, Vec<Change>)>,
    done: oneshot::Sender<()>,
) {
    let name = format!("commit {}", c.server);
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let (last, batch) = c.gather(&mut rx, first);
                let started = tokio::time::Instant::now();
                let written = c.engine.write(&batch, true);
                if !c.written(last, written, started) {
                    break;
                }
            }
            drop(c);
            let _ = done.send(());
        })
        .expect("starting a commit thread");
}

/// In the simulator a sync takes simulated time; a crash meanwhile loses the batch,
/// as a real crash loses writes that were not yet synced. Two crash points: while the
/// batch is being synced (its replies computed, none sent: the batch is lost whole, as
/// RocksDB drops a torn WAL record), and just after it is durable (kept, but nobody
/// was told).
#[cfg(madsim)]
fn run(
    c: Committing,
    mut rx: mpsc::UnboundedReceiver<(u64, Vec<Change>)>,
    done: oneshot::Sender<()>,
) {
    use crate::fault::{crash_point, CrashPoint};
    use madsim::rand::Rng;
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let (last, batch) = c.gather(&mut rx, first);
            let started = tokio::time::Instant::now();
            let sync = madsim::rand::thread_rng().gen_range(1000..10_000);
            crash_point(&c.server, CrashPoint::DuringSync);
            tokio::time::sleep(std::time::Duration::from_micros(sync)).await;
            let written = c.engine.write(&batch, true);
            if written.is_ok() && crash_point(&c.server, CrashPoint::AfterSync) {
                // The node is dead: let the runtime drop this task before anyone hears of it.
                tokio::task::yield_now().await;
            }
            if !c.written(last, written, started) {
                break;
            }
        }
        drop(c);
        let _ = done.send(());
    });
}
