//! The internal proxy-to-storage protocol: bincode frames `[u32 length][u64 id][body]`
//! over TCP, many requests in flight per connection, replies matched by id and
//! allowed out of order. A request's body is the client's request id (if any), the
//! epoch of the sender's map (a storage server serves only senders on its own) and the
//! [`ReplicaRequest`]; a reply's, the [`ReplicaReply`].

use crate::replica::{ReplicaReply, ReplicaRequest};
use crate::transport::Connector;
use serde::{de::DeserializeOwned, Serialize};
use smallvec::SmallVec;
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

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

/// Reads one frame from a [`frame_reader`]; `Ok(None)` on a clean end of stream.
pub async fn read_frame<T: DeserializeOwned, R: AsyncBufRead + Unpin>(
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
    // Under load the buffer nearly always holds the whole frame: it is decoded where
    // it lies, with no buffer of its own to allocate, zero and copy into.
    let buffered = r.fill_buf().await?;
    if buffered.len() >= len {
        let frame = decode_frame(&buffered[..len]);
        r.consume(len);
        return frame.map(Some);
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    decode_frame(&buf).map(Some)
}

/// A frame's id and body, from its bytes after the length.
fn decode_frame<T: DeserializeOwned>(frame: &[u8]) -> io::Result<(u64, T)> {
    let id = u64::from_be_bytes(frame[..8].try_into().unwrap());
    let body = bincode::deserialize(&frame[8..])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok((id, body))
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

/// A call's reply, or why there is none.
pub type Reply = Result<ReplicaReply, CallError>;

/// Where a call's reply goes (a plain value, not a boxed closure: one allocation less
/// a call, on every request's path).
pub enum Deliver {
    /// To [`Peer::call`]'s waiting caller.
    Caller(oneshot::Sender<Reply>),
    /// To the inbox of a request that has several calls out, tagged with the call.
    Queue(u64, Arc<Inbox>),
}

impl Deliver {
    fn deliver(self, reply: Reply) {
        // (A caller or request that has gone no longer wants it.)
        match self {
            Deliver::Caller(tx) => drop(tx.send(reply)),
            Deliver::Queue(tag, inbox) => inbox.put(tag, reply),
        }
    }
}

/// The replies to one request's calls, in the order they arrive, each with its call's
/// tag: filled by the connections' readers, read by the request's task. One allocation
/// a request, where a channel made two (one a block of 32 replies); a request has a
/// few calls out at a time, whose replies it takes as they come.
#[derive(Default)]
pub struct Inbox {
    replies: Mutex<SmallVec<[(u64, Reply); 3]>>,
    arrived: tokio::sync::Notify,
}

impl Inbox {
    fn put(&self, tag: u64, reply: Reply) {
        self.replies.lock().unwrap().push((tag, reply));
        self.arrived.notify_one();
    }

    /// The reply that came first of those not yet taken, if any.
    pub fn take(&self) -> Option<(u64, Reply)> {
        let mut replies = self.replies.lock().unwrap();
        (!replies.is_empty()).then(|| replies.remove(0))
    }

    /// The next reply, once there is one. (Dropped while it waits, it loses nothing:
    /// the reply stays for the next call.)
    pub async fn next(&self) -> (u64, Reply) {
        loop {
            if let Some(reply) = self.take() {
                return reply;
            }
            // (One reader: a reply put since `take` left its permit for this wait.)
            self.arrived.notified().await;
        }
    }
}

type Pending = Arc<Mutex<BTreeMap<u64, Deliver>>>;

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

/// A call on its way: dropping it withdraws the call, so that a reply that never
/// comes leaves nothing behind (a reply after that is dropped).
pub struct Sent {
    id: u64,
    at: Instant,
    via: Via,
}

/// Where a call's frame went.
enum Via {
    /// Queued on this connection as it was sent.
    Open(Weak<Connection>),
    /// To the task that connects first, which fills this in.
    Connecting(Arc<Mutex<Connecting>>),
}

/// A call sent before its connection was open.
enum Connecting {
    Waiting,
    /// Withdrawn before the connect ended: it is not sent at all.
    Withdrawn,
    /// Queued on this connection at this time, once it was open.
    Queued(Weak<Connection>, Instant),
}

impl Sent {
    /// When it was sent.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// When its frame was queued on a connection; none while a connect for it is
    /// still under way (the connect has a timeout of its own). A reply is owed from
    /// then, not from the send: a call to a peer coming back is not given up on for
    /// the time its connect took.
    pub fn queued_at(&self) -> Option<Instant> {
        match &self.via {
            Via::Open(_) => Some(self.at),
            Via::Connecting(state) => match &*state.lock().unwrap() {
                Connecting::Queued(_, at) => Some(*at),
                Connecting::Waiting | Connecting::Withdrawn => None,
            },
        }
    }
}

impl Drop for Sent {
    fn drop(&mut self) {
        let withdraw = |conn: &Weak<Connection>| {
            if let Some(conn) = conn.upgrade() {
                conn.pending.lock().unwrap().remove(&self.id);
            }
        };
        match &self.via {
            Via::Open(conn) => withdraw(conn),
            Via::Connecting(state) => {
                let mut state = state.lock().unwrap();
                match &*state {
                    Connecting::Queued(conn, _) => withdraw(conn),
                    _ => *state = Connecting::Withdrawn,
                }
            }
        }
    }
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
        self: &Arc<Self>,
        req: &ReplicaRequest,
        meta: (Option<[u8; 16]>, u64),
        timeout: Duration,
    ) -> Reply {
        let (tx, rx) = oneshot::channel();
        let _sent = self.send(req, meta, Deliver::Caller(tx));
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(CallError::Lost),
            Err(_) => Err(CallError::Timeout),
        }
    }

    /// Sends `req` as [`Peer::call`] does, without waiting: its reply, or why there is
    /// none, goes to `deliver`, whenever it comes (no timeout: that is the caller's,
    /// who withdraws the call by dropping what this returns). Without an open
    /// connection, a task connects and then sends, so that the caller never waits on
    /// a connect.
    pub fn send(
        self: &Arc<Self>,
        req: &ReplicaRequest,
        (request_id, epoch): (Option<[u8; 16]>, u64),
        deliver: Deliver,
    ) -> Sent {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_frame(id, &(request_id, epoch, req));
        let at = Instant::now();
        let Some(conn) = self.open() else {
            let state = Arc::new(Mutex::new(Connecting::Waiting));
            let (peer, task_state) = (self.clone(), state.clone());
            tokio::spawn(async move {
                match peer.connection().await {
                    Ok(conn) => {
                        // Registered under the lock, so that a withdrawal finds it.
                        let mut state = task_state.lock().unwrap();
                        if !matches!(*state, Connecting::Withdrawn) {
                            *state = Connecting::Queued(Arc::downgrade(&conn), Instant::now());
                            peer.start(&conn, id, frame, deliver);
                        }
                    }
                    Err(e) => deliver.deliver(Err(e)),
                }
            });
            return Sent {
                id,
                at,
                via: Via::Connecting(state),
            };
        };
        self.start(&conn, id, frame, deliver);
        Sent {
            id,
            at,
            via: Via::Open(Arc::downgrade(&conn)),
        }
    }

    /// Registers call `id` on `conn` and queues its frame.
    fn start(&self, conn: &Arc<Connection>, id: u64, frame: Vec<u8>, deliver: Deliver) {
        conn.pending.lock().unwrap().insert(id, deliver);
        if conn.tx.send(frame).is_err() {
            let deliver = conn.pending.lock().unwrap().remove(&id);
            self.forget(conn);
            if let Some(deliver) = deliver {
                deliver.deliver(Err(CallError::Lost));
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
                let deliver = pending.lock().unwrap().remove(&id);
                if let Some(deliver) = deliver {
                    deliver.deliver(Ok(reply));
                }
            }
            // Every call still waiting on this connection fails.
            let waiting = std::mem::take(&mut *pending.lock().unwrap());
            for deliver in waiting.into_values() {
                deliver.deliver(Err(CallError::Lost));
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::StoreKey;
    use tokio::net::TcpListener;

    /// A storage server stand-in: answers each request with `Accepted` once told to
    /// (one message on `go` per reply), or closes the connection if `go` closes.
    async fn server(go: mpsc::UnboundedReceiver<()>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (rd, mut wr) = tokio::io::split(stream);
            let mut rd = frame_reader(rd);
            let mut go = go;
            type Body = (Option<[u8; 16]>, u64, ReplicaRequest);
            while let Ok(Some((id, _))) = read_frame::<Body, _>(&mut rd).await {
                if go.recv().await.is_none() {
                    return; // dropping the stream closes the connection
                }
                let frame = encode_frame(id, &ReplicaReply::Accepted);
                wr.write_all(&frame).await.unwrap();
            }
        });
        addr
    }

    /// A peer of a stand-in server (see [`server`]) whose first call was answered: it
    /// has its connection, so the next call is sent at once.
    async fn connected() -> (Arc<Peer>, mpsc::UnboundedSender<()>) {
        let (go, told) = mpsc::unbounded_channel();
        let peer = peer(server(told).await);
        go.send(()).unwrap();
        let reply = peer.call(&read(), (None, 1), Duration::from_secs(5)).await;
        assert!(matches!(reply, Ok(ReplicaReply::Accepted)), "{reply:?}");
        (peer, go)
    }

    fn peer(addr: String) -> Arc<Peer> {
        Arc::new(Peer::new(addr, Connector::Plain, Duration::from_secs(5)))
    }

    fn read() -> ReplicaRequest {
        ReplicaRequest::Read {
            key: StoreKey::new(b"ns", b"k", 16),
        }
    }

    /// A `Deliver` to the test's inbox, tagged `tag`.
    fn to(inbox: &Arc<Inbox>, tag: u64) -> Deliver {
        Deliver::Queue(tag, inbox.clone())
    }

    fn waiting(peer: &Peer) -> usize {
        peer.open().map_or(0, |c| c.pending.lock().unwrap().len())
    }

    #[tokio::test]
    async fn frames_decode_whole_in_the_buffer_split_across_reads_or_larger_than_it() {
        let (mut w, r) = tokio::io::duplex(1 << 20);
        let mut rd = frame_reader(r);
        let big = vec![7u8; 100 << 10]; // more than the reader's buffer holds
        let frames: Vec<Vec<u8>> = (0..3u64)
            .map(|id| encode_frame(id, &(id, vec![id as u8; 10])))
            .collect();
        // Two frames in one write; the third in two writes, the reader waiting between
        // them with part of it buffered; then the big one.
        w.write_all(&[&frames[0][..], &frames[1][..]].concat())
            .await
            .unwrap();
        let (head, tail) = frames[2].split_at(7);
        w.write_all(head).await.unwrap();
        for id in 0..2u64 {
            let got = read_frame::<(u64, Vec<u8>), _>(&mut rd).await.unwrap();
            assert_eq!(got, Some((id, (id, vec![id as u8; 10]))));
        }
        let third = tokio::spawn(async move {
            let got = read_frame::<(u64, Vec<u8>), _>(&mut rd).await.unwrap();
            (got, rd)
        });
        tokio::task::yield_now().await;
        w.write_all(tail).await.unwrap();
        let (got, mut rd) = third.await.unwrap();
        assert_eq!(got, Some((2, (2, vec![2; 10]))));
        w.write_all(&encode_frame(9, &big)).await.unwrap();
        drop(w);
        let got = read_frame::<Vec<u8>, _>(&mut rd).await.unwrap();
        assert_eq!(got, Some((9, big)));
        assert_eq!(read_frame::<Vec<u8>, _>(&mut rd).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_call_gets_its_reply_and_leaves_nothing_behind() {
        let (peer, _go) = connected().await;
        assert_eq!(waiting(&peer), 0);
    }

    #[tokio::test]
    async fn a_withdrawn_call_leaves_nothing_behind_and_its_late_reply_is_dropped() {
        let (peer, go) = connected().await;
        let inbox = Arc::new(Inbox::default());
        let sent = peer.send(&read(), (None, 1), to(&inbox, 1));
        assert_eq!(waiting(&peer), 1);
        drop(sent);
        assert_eq!(waiting(&peer), 0, "withdrawn");
        // Its reply comes after all, then a later call's: only the later one arrives.
        go.send(()).unwrap();
        go.send(()).unwrap();
        let _kept = peer.send(&read(), (None, 1), to(&inbox, 2));
        let (tag, reply) = inbox.next().await;
        assert_eq!(tag, 2, "the withdrawn call's reply, first, was dropped");
        assert!(matches!(reply, Ok(ReplicaReply::Accepted)));
        assert!(inbox.take().is_none());
    }

    #[tokio::test]
    async fn calls_waiting_on_a_lost_connection_fail() {
        let (peer, go) = connected().await;
        let inbox = Arc::new(Inbox::default());
        let _sent = peer.send(&read(), (None, 1), to(&inbox, 1));
        drop(go); // the server closes the connection instead of answering
        let (_, reply) = inbox.next().await;
        assert!(matches!(reply, Err(CallError::Lost)), "{reply:?}");
    }

    #[tokio::test]
    async fn a_call_withdrawn_while_its_connect_is_under_way_is_not_sent() {
        let (go, told) = mpsc::unbounded_channel();
        let peer = peer(server(told).await);
        let inbox = Arc::new(Inbox::default());
        let withdrawn = peer.send(&read(), (None, 1), to(&inbox, 1));
        assert!(withdrawn.queued_at().is_none(), "its connect is under way");
        drop(withdrawn);
        let kept = peer.send(&read(), (None, 1), to(&inbox, 2));
        // Enough for both, were both sent.
        go.send(()).unwrap();
        go.send(()).unwrap();
        let (tag, reply) = inbox.next().await;
        assert_eq!(tag, 2);
        assert!(matches!(reply, Ok(ReplicaReply::Accepted)));
        assert!(kept.queued_at().is_some_and(|at| at >= kept.at()));
        drop(kept);
        assert!(inbox.take().is_none(), "one call was sent");
        assert_eq!(waiting(&peer), 0);
    }

    #[tokio::test]
    async fn a_send_without_a_connection_connects_and_a_failed_connect_is_delivered() {
        let (go, told) = mpsc::unbounded_channel();
        let peer = peer(server(told).await);
        go.send(()).unwrap();
        let inbox = Arc::new(Inbox::default());
        let _sent = peer.send(&read(), (None, 1), to(&inbox, 1));
        assert!(matches!(
            inbox.next().await,
            (1, Ok(ReplicaReply::Accepted))
        ));

        // Nothing listens at this address any more.
        let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = gone.local_addr().unwrap().to_string();
        drop(gone);
        let _sent = self::peer(addr).send(&read(), (None, 1), to(&inbox, 2));
        let (_, reply) = inbox.next().await;
        assert!(matches!(reply, Err(CallError::Connect(..))), "{reply:?}");
    }
}
