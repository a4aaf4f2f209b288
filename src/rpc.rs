//! The internal proxy-to-storage protocol: bincode frames `[u32 length][u64 id][body]`
//! over TCP, many requests in flight per connection, replies matched by id and
//! allowed out of order. A request's body is the client's request id (if any), the
//! epoch of the sender's map (a storage server serves only senders on its own) and the
//! [`ReplicaRequest`]; a reply's, the [`ReplicaReply`].

use crate::replica::{ReplicaReply, ReplicaRequest};
use crate::transport::Connector;
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// Internal frames above this size are refused: no legitimate record comes near it.
const MAX_RPC_FRAME: usize = 16 << 20;

/// Encodes one frame.
pub fn encode_frame<T: Serialize>(id: u64, body: &T) -> Vec<u8> {
    // Sized first: growing the buffer as bincode writes copied a record's frame about
    // ten times over.
    let size = bincode::serialized_size(body).expect("a frame body serialises") as usize;
    let mut out = Vec::with_capacity(12 + size);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&id.to_be_bytes());
    bincode::serialize_into(&mut out, body).expect("serialising to a Vec cannot fail");
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

/// Reads one frame; `Ok(None)` on a clean end of stream.
pub async fn read_frame<T: DeserializeOwned, R: AsyncRead + Unpin>(
    r: &mut R,
) -> io::Result<Option<(u64, T)>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if !(8..=MAX_RPC_FRAME).contains(&len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad internal frame length",
        ));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    let id = u64::from_be_bytes(buf[..8].try_into().unwrap());
    let body = bincode::deserialize(&buf[8..])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some((id, body)))
}

/// A reader for a stream of frames: under load many frames arrive together, and each
/// frame takes two reads (length, then body), so unbuffered that is two system calls a
/// frame where one call can take dozens.
pub fn frame_reader<R: AsyncRead>(r: R) -> tokio::io::BufReader<R> {
    tokio::io::BufReader::with_capacity(64 << 10, r)
}

/// Writes every frame queued on `rx`, coalescing what is ready into one flush (a
/// simulated socket delivers only on flush). Each frame is dropped once copied for
/// writing (what it carries besides its bytes goes with it). With `stall`, a write the
/// peer does not take within that long ends the writer with `TimedOut`.
pub async fn write_frames<W: AsyncWrite + Unpin, F: AsRef<[u8]>>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<F>,
    stall: Option<Duration>,
) -> io::Result<()> {
    let mut buf = Vec::new();
    while let Some(frame) = rx.recv().await {
        buf.extend_from_slice(frame.as_ref());
        drop(frame);
        // The tasks ready to run go first: under load they queue more frames, which
        // then share this write's system call and the peer's wake-up.
        tokio::task::yield_now().await;
        while buf.len() < 256 << 10 {
            match rx.try_recv() {
                Ok(more) => buf.extend_from_slice(more.as_ref()),
                Err(_) => break,
            }
        }
        let write = async {
            w.write_all(&buf).await?;
            w.flush().await
        };
        match stall {
            Some(limit) => tokio::time::timeout(limit, write)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading"))??,
            None => write.await?,
        }
        buf.clear();
    }
    Ok(())
}

type Pending = Arc<Mutex<BTreeMap<u64, oneshot::Sender<ReplicaReply>>>>;

struct Connection {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
}

/// A storage server as the proxy sees it: one lazily (re)connected, multiplexed
/// connection, shared by every request. A call takes the open connection under a plain
/// mutex held for a pointer copy; only (re)connecting waits on an async one, so that
/// one connect is made for many callers.
pub struct Peer {
    addr: String,
    connector: Connector,
    connect_timeout: Duration,
    next_id: AtomicU64,
    conn: Mutex<Option<Arc<Connection>>>,
    connecting: tokio::sync::Mutex<()>,
}

/// Why a call produced no reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("connect to {0}: {1}")]
    Connect(String, String),
    #[error("connection lost")]
    Lost,
    #[error("timed out")]
    Timeout,
}

impl Peer {
    /// The address it reaches.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn new(addr: String, connector: Connector, connect_timeout: Duration) -> Self {
        Peer {
            addr,
            connector,
            connect_timeout,
            next_id: AtomicU64::new(1),
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// Sends `req` (on behalf of the client request `request_id`, which the storage
    /// server's log lines about it name), as a sender on the map of `epoch`, and waits
    /// for its reply, at most `timeout`.
    pub async fn call(
        &self,
        req: &ReplicaRequest,
        (request_id, epoch): (Option<[u8; 16]>, u64),
        timeout: Duration,
    ) -> Result<ReplicaReply, CallError> {
        let conn = self.connection().await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().unwrap().insert(id, tx);
        if conn
            .tx
            .send(encode_frame(id, &(request_id, epoch, req)))
            .is_err()
        {
            conn.pending.lock().unwrap().remove(&id);
            self.forget(&conn);
            return Err(CallError::Lost);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(CallError::Lost),
            Err(_) => {
                conn.pending.lock().unwrap().remove(&id);
                Err(CallError::Timeout)
            }
        }
    }

    /// The open connection, if there is one.
    fn open(&self) -> Option<Arc<Connection>> {
        let slot = self.conn.lock().unwrap();
        slot.as_ref().filter(|c| !c.tx.is_closed()).cloned()
    }

    async fn connection(&self) -> Result<Arc<Connection>, CallError> {
        if let Some(c) = self.open() {
            return Ok(c);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(c) = self.open() {
            return Ok(c); // another caller connected meanwhile
        }
        let (stream, (local, peer)) = self
            .connector
            .connect(&self.addr, self.connect_timeout)
            .await
            .map_err(|e| CallError::Connect(self.addr.clone(), e.to_string()))?;
        let (rd, wr) = tokio::io::split(stream);
        let mut rd = frame_reader(rd);
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = crate::fault::delayed(rx, local, peer);
        let pending: Pending = Arc::default();
        let conn = Arc::new(Connection {
            tx,
            pending: pending.clone(),
        });
        let writer = tokio::spawn(write_frames(wr, rx, None));
        tokio::spawn(async move {
            while let Ok(Some((id, reply))) = read_frame::<ReplicaReply, _>(&mut rd).await {
                if let Some(tx) = pending.lock().unwrap().remove(&id) {
                    let _ = tx.send(reply);
                }
            }
            // Dropping the senders fails every call still waiting on this connection.
            pending.lock().unwrap().clear();
            writer.abort();
        });
        *self.conn.lock().unwrap() = Some(conn.clone());
        Ok(conn)
    }

    fn forget(&self, dead: &Arc<Connection>) {
        let mut slot = self.conn.lock().unwrap();
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, dead)) {
            *slot = None;
        }
    }
}
