//! Byte streams between clients, proxies and storage servers: plain TCP, or TLS
//! around it. TLS is only a wrapper applied as a connection opens: everything above
//! it reads and writes a [`BoxStream`], so the simulated build (which has no TLS:
//! rustls draws randomness madsim cannot replay) runs the same code on plain streams.

use serde::{Deserialize, Serialize};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// A connection's bytes, whatever carries them.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// An open connection, plain or TLS.
pub type BoxStream = Box<dyn Stream>;

/// How long a peer may take over its TLS handshake before the connection is closed (a
/// stalled handshake must not hold a task forever).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// One side's TLS identity and what it trusts, as PEM files (`[tls]` and
/// `[cluster_tls]` in the config files).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// This side's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that peers' certificates must chain to. On a listener it makes client
    /// certificates mandatory (mutual TLS); a client always needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Revoked certificates (PEM CRLs issued by `ca`): refused at the handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl: Option<PathBuf>,
}

#[cfg(madsim)]
const NO_TLS: &str = "TLS is not available in the simulator";

/// What a listener does with each accepted connection before serving it.
#[derive(Clone)]
pub enum Acceptor {
    Plain,
    #[cfg(not(madsim))]
    Tls(crate::tls::ServerTls),
}

impl Acceptor {
    /// Plain text without `files`, TLS with them.
    pub fn new(files: Option<&TlsFiles>) -> Result<Acceptor, String> {
        match files {
            None => Ok(Acceptor::Plain),
            #[cfg(not(madsim))]
            Some(f) => Ok(Acceptor::Tls(crate::tls::ServerTls::load(f.clone())?)),
            #[cfg(madsim)]
            Some(_) => Err(NO_TLS.into()),
        }
    }

    /// Reads the certificate files again (SIGHUP); plain text has none.
    pub fn reload(&self) -> Result<(), String> {
        match self {
            Acceptor::Plain => Ok(()),
            #[cfg(not(madsim))]
            Acceptor::Tls(tls) => tls.reload(),
        }
    }

    /// The stream to serve, or an error (already logged) when the peer failed the
    /// handshake: the caller just drops the connection.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<BoxStream> {
        match self {
            Acceptor::Plain => Ok(Box::new(tcp)),
            #[cfg(not(madsim))]
            Acceptor::Tls(tls) => tls.accept(tcp).await,
        }
    }
}

/// How a client side opens its connections.
#[derive(Clone)]
pub enum Connector {
    Plain,
    #[cfg(not(madsim))]
    Tls(crate::tls::ClientTls),
}

impl Connector {
    /// A cluster member's connections to other members: plain text without `files`,
    /// mutual TLS with them.
    pub fn member(files: Option<&TlsFiles>) -> Result<Connector, String> {
        match files {
            None => Ok(Connector::Plain),
            #[cfg(not(madsim))]
            Some(f) => Ok(Connector::Tls(crate::tls::ClientTls::for_member(f)?)),
            #[cfg(madsim)]
            Some(_) => Err(NO_TLS.into()),
        }
    }

    /// A client's connections to a proxy: plain text without `ca`; with it, TLS
    /// trusting `ca`, presenting `identity` (cert and key) when given.
    pub fn client(ca: Option<&Path>, identity: Option<TlsFiles>) -> Result<Connector, String> {
        match ca {
            None => Ok(Connector::Plain),
            #[cfg(not(madsim))]
            Some(ca) => Ok(Connector::Tls(crate::tls::ClientTls::load(
                ca.into(),
                identity,
            )?)),
            #[cfg(madsim)]
            Some(_) => {
                let _ = identity;
                Err(NO_TLS.into())
            }
        }
    }

    /// Reads the certificate files again (SIGHUP); plain text has none.
    pub fn reload(&self) -> Result<(), String> {
        match self {
            Connector::Plain => Ok(()),
            #[cfg(not(madsim))]
            Connector::Tls(tls) => tls.reload(),
        }
    }

    /// Connects to `addr` (host:port), within `timeout` for TCP and handshake each;
    /// returns the stream and its (local, peer) addresses.
    pub async fn connect(
        &self,
        addr: &str,
        timeout: Duration,
    ) -> io::Result<(BoxStream, (SocketAddr, SocketAddr))> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        let _ = tcp.set_nodelay(true);
        let ends = (tcp.local_addr()?, tcp.peer_addr()?);
        let stream: BoxStream = match self {
            Connector::Plain => Box::new(tcp),
            #[cfg(not(madsim))]
            Connector::Tls(tls) => tls.connect(tcp, addr, timeout).await?,
        };
        Ok((stream, ends))
    }
}
