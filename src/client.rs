//! An async JunoDB-protocol client: one connection, many requests in flight
//! (pipelined), responses matched by opaque.

use crate::protocol::{read_frame, Frame, OpCode, OpMessage, Payload, Status};
use crate::rpc::write_frames;
use crate::transport::Connector;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long connecting (and a TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an operation did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The store answered with this status (`NoKey`, `DupKey`, `VersionConflict`, …).
    #[error("{0}")]
    Status(Status),
    /// No answer within the client's timeout: the outcome is unknown.
    #[error("client timeout")]
    Timeout,
    /// The connection broke; the outcome of requests in flight is unknown.
    #[error("connection: {0}")]
    Connection(String),
}

impl ClientError {
    /// The store's status, if the store answered.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Status(s) => Some(*s),
            _ => None,
        }
    }

    /// Whether the operation may have taken effect despite the error.
    pub fn is_indeterminate(&self) -> bool {
        match self {
            ClientError::Status(s) => s.is_indeterminate(),
            _ => true,
        }
    }
}

/// A record as a successful operation reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordInfo {
    pub version: u32,
    pub creation_time: u32,
    /// Seconds left to live.
    pub ttl: u32,
    pub last_modified_ns: u64,
    /// Request id of the write that made this version.
    pub originator: Option<[u8; 16]>,
    /// The value (on get).
    pub value: Vec<u8>,
}

type Pending = Arc<Mutex<BTreeMap<u32, oneshot::Sender<OpMessage>>>>;

/// A connection to a proxy, cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    next_opaque: Arc<AtomicU32>,
    namespace: Vec<u8>,
    timeout: Duration,
}

impl Client {
    /// Connects to a proxy's plain-text port; operations use namespace `ns` and a 5 s
    /// timeout.
    pub async fn connect(addr: &str, ns: &str) -> std::io::Result<Client> {
        Self::connect_with(addr, ns, &Connector::Plain).await
    }

    /// Connects through `connector` (TLS to a proxy's TLS port).
    pub async fn connect_with(
        addr: &str,
        ns: &str,
        connector: &Connector,
    ) -> std::io::Result<Client> {
        let (stream, _) = connector.connect(addr, CONNECT_TIMEOUT).await?;
        let (rd, wr) = tokio::io::split(stream);
        let mut rd = crate::rpc::frame_reader(rd);
        let (tx, rx) = mpsc::unbounded_channel();
        let pending: Pending = Arc::default();
        let writer = tokio::spawn(write_frames(wr, rx, None));
        let reader_pending = pending.clone();
        tokio::spawn(async move {
            while let Ok(Frame::Message(_, bytes)) = read_frame(&mut rd).await {
                let Ok(msg) = OpMessage::decode(&bytes) else {
                    break;
                };
                if let Some(tx) = reader_pending.lock().unwrap().remove(&msg.opaque) {
                    let _ = tx.send(msg);
                }
            }
            reader_pending.lock().unwrap().clear();
            writer.abort();
        });
        Ok(Client {
            tx,
            pending,
            next_opaque: Arc::new(AtomicU32::new(1)),
            namespace: ns.as_bytes().to_vec(),
            timeout: Duration::from_secs(5),
        })
    }

    /// The same connection with another per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same connection with another namespace.
    pub fn with_namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.as_bytes().to_vec();
        self
    }

    /// Sends any request (its opaque is overwritten) and waits for its response.
    pub async fn send(&self, mut msg: OpMessage) -> Result<OpMessage, ClientError> {
        let opaque = self.next_opaque.fetch_add(1, Ordering::Relaxed);
        msg.opaque = opaque;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(opaque, tx);
        if self.tx.send(msg.to_bytes()).is_err() {
            self.pending.lock().unwrap().remove(&opaque);
            return Err(ClientError::Connection("closed".into()));
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => Err(ClientError::Connection("closed".into())),
            Err(_) => {
                self.pending.lock().unwrap().remove(&opaque);
                Err(ClientError::Timeout)
            }
        }
    }

    async fn op(
        &self,
        opcode: OpCode,
        key: &[u8],
        value: Option<&[u8]>,
        ttl: u32,
        version: u32,
    ) -> Result<RecordInfo, ClientError> {
        let mut msg = OpMessage::request(opcode.to_byte());
        msg.namespace = self.namespace.clone();
        msg.key = key.to_vec();
        msg.meta.request_id = Some(madsim::rand::random());
        if ttl > 0 {
            msg.meta.ttl = Some(ttl);
        }
        if version > 0 {
            msg.meta.version = Some(version);
        }
        if let Some(v) = value {
            msg.payload = Payload {
                kind: 0,
                data: v.to_vec(),
            };
        }
        let resp = self.send(msg).await?;
        match Status::from_byte(resp.status) {
            Status::Ok => Ok(RecordInfo {
                version: resp.meta.version.unwrap_or(0),
                creation_time: resp.meta.creation_time.unwrap_or(0),
                ttl: resp.meta.ttl.unwrap_or(0),
                last_modified_ns: resp.meta.last_modification.unwrap_or(0),
                originator: resp.meta.originator,
                value: resp.payload.data,
            }),
            s => Err(ClientError::Status(s)),
        }
    }

    /// Inserts a new key; `DupKey` if it exists. TTL 0 = the proxy's default.
    pub async fn create(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: u32,
    ) -> Result<RecordInfo, ClientError> {
        self.op(OpCode::Create, key, Some(value), ttl, 0).await
    }

    /// Reads a key; `NoKey` if absent or expired.
    pub async fn get(&self, key: &[u8]) -> Result<RecordInfo, ClientError> {
        self.op(OpCode::Get, key, None, 0, 0).await
    }

    /// Reads a key and extends its TTL to at least `ttl` seconds from now.
    pub async fn get_extend(&self, key: &[u8], ttl: u32) -> Result<RecordInfo, ClientError> {
        self.op(OpCode::Get, key, None, ttl, 0).await
    }

    /// Replaces an existing key's value; `NoKey` if absent.
    pub async fn update(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: u32,
    ) -> Result<RecordInfo, ClientError> {
        self.op(OpCode::Update, key, Some(value), ttl, 0).await
    }

    /// Replaces the value only if the key is at `version`; else `VersionConflict`.
    pub async fn update_if(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: u32,
        version: u32,
    ) -> Result<RecordInfo, ClientError> {
        self.op(OpCode::Update, key, Some(value), ttl, version.max(1))
            .await
    }

    /// Creates or replaces.
    pub async fn set(&self, key: &[u8], value: &[u8], ttl: u32) -> Result<RecordInfo, ClientError> {
        self.op(OpCode::Set, key, Some(value), ttl, 0).await
    }

    /// Removes a key; succeeds whether or not it existed.
    pub async fn destroy(&self, key: &[u8]) -> Result<(), ClientError> {
        self.op(OpCode::Destroy, key, None, 0, 0).await.map(|_| ())
    }

    /// Nop: checks that the proxy answers.
    pub async fn ping(&self) -> Result<(), ClientError> {
        let resp = self.send(OpMessage::request(OpCode::Nop.to_byte())).await?;
        match Status::from_byte(resp.status) {
            Status::Ok => Ok(()),
            s => Err(ClientError::Status(s)),
        }
    }
}
