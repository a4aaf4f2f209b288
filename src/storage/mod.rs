//! The storage server: hosts one replica of every shard the map gives it, answers the
//! internal protocol, and persists through group commit.

mod group_commit;
mod replica_actor;

pub use replica_actor::is_record_key;

use crate::engine::Engine;
use crate::listener::serve_until_stopped;
use crate::replica::ReplicaRequest;
use crate::rpc::{read_frame, write_frames};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// `junokv storage --config F`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Address the internal protocol listens on.
    pub listen: String,
    /// Where RocksDB keeps its files.
    pub data_dir: PathBuf,
}

/// A running storage server.
pub struct StorageServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    accepting: tokio::task::JoinHandle<()>,
    replica: tokio::task::JoinHandle<()>,
}

impl StorageServer {
    /// Serves `engine` on `listener` until [`StorageServer::stop`].
    pub fn start(listener: TcpListener, engine: Arc<dyn Engine>) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (inbox, replica) = replica_actor::start(engine)?;
        let (stop, stopped) = watch::channel(false);
        let accepting = tokio::spawn(serve_until_stopped(listener, stopped, move |stream| {
            serve_connection(stream, inbox.clone())
        }));
        tracing::info!(%addr, "storage server listening");
        Ok(StorageServer {
            addr,
            stop,
            accepting,
            replica,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, closes every connection and waits until the engine is
    /// released (so that its files can be reopened).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.accepting.await;
        let _ = self.replica.await;
    }
}

async fn serve_connection(
    stream: TcpStream,
    replica: mpsc::UnboundedSender<replica_actor::Envelope>,
) {
    let ends = (stream.local_addr(), stream.peer_addr());
    let (mut rd, wr) = tokio::io::split(stream);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    if let (Ok(local), Ok(peer)) = ends {
        out_rx = crate::fault::delayed(out_rx, local, peer);
    }
    let writer = tokio::spawn(write_frames(wr, out_rx));
    loop {
        let (id, req) = match read_frame::<ReplicaRequest, _>(&mut rd).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "closing internal connection");
                break;
            }
        };
        let reply_to = replica_actor::ReplyTo {
            id,
            out: out_tx.clone(),
        };
        if replica.send((req, reply_to)).is_err() {
            break;
        }
    }
    writer.abort();
}
