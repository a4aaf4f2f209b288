//! The fault-injecting TCP relay in front of every link the harness controls: it
//! forwards bytes between a listening port and a target, and can hold them (a
//! partition: nothing passes, connections stay open, the far side sees timeouts) or
//! delay them (a slow link).

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What a link does with the bytes it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Up,
    /// Nothing passes in either direction (new connections wait too).
    Partitioned,
    /// Every chunk waits this long.
    Slow(Duration),
}

/// A running relay; dropping it stops accepting (connections die with the runtime).
pub struct Relay {
    pub listen: SocketAddr,
    state: watch::Sender<Link>,
}

impl Relay {
    /// Relays connections to `listener` on to `target`.
    pub fn start(listener: TcpListener, target: SocketAddr) -> std::io::Result<Relay> {
        let listen = listener.local_addr()?;
        let (state, watcher) = watch::channel(Link::Up);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay_connection(client, target, watcher.clone()));
            }
        });
        Ok(Relay { listen, state })
    }

    pub fn set(&self, link: Link) {
        let _ = self.state.send(link);
    }
}

async fn relay_connection(client: TcpStream, target: SocketAddr, mut state: watch::Receiver<Link>) {
    if wait_until_passable(&mut state).await.is_err() {
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return; // the target is down: the client sees the connection close
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_rd, client_wr) = client.into_split();
    let (server_rd, server_wr) = server.into_split();
    let mut up = tokio::spawn(pump(client_rd, server_wr, state.clone()));
    let mut down = tokio::spawn(pump(server_rd, client_wr, state));
    // When either direction ends, so does the other (as when a process dies).
    tokio::select! {
        _ = &mut up => {}
        _ = &mut down => {}
    }
    up.abort();
    down.abort();
}

/// Waits while the link is partitioned; `Err` when the relay is gone.
async fn wait_until_passable(state: &mut watch::Receiver<Link>) -> Result<Link, ()> {
    loop {
        let link = *state.borrow_and_update();
        if link != Link::Partitioned {
            return Ok(link);
        }
        state.changed().await.map_err(|_| ())?;
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<Link>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match wait_until_passable(&mut state).await {
            Ok(Link::Slow(d)) => tokio::time::sleep(d).await,
            Ok(_) => {}
            Err(()) => return,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
