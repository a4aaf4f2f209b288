//! The accept loop shared by the proxy and the storage server.

use std::future::Future;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Accepts connections and serves each on its own task until `stopped` changes; then
/// ends every connection task and returns.
pub async fn serve_until_stopped<F, Fut>(
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
    mut serve: F,
) where
    F: FnMut(TcpStream) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    connections.retain(|c| !c.is_finished());
                    connections.push(tokio::spawn(serve(stream)));
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
            _ = stopped.changed() => break,
        }
    }
    for c in connections {
        c.abort();
        let _ = c.await;
    }
}
