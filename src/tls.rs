//! TLS (rustls, TLS 1.2 and 1.3, its safe default cipher suites) for the client port
//! and mutual TLS inside the cluster. Certificates come from PEM files and are read
//! again on [`ServerTls::reload`] / [`ClientTls::reload`] (SIGHUP): new connections
//! use the new files, established ones go on undisturbed.

use crate::transport::{BoxStream, TlsFiles, HANDSHAKE_TIMEOUT};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpStream;

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let builder = ServerConfig::builder();
    let builder = match &files.ca {
        Some(ca) => {
            let mut verifier = WebPkiClientVerifier::builder(read_roots(ca)?);
            if let Some(crl) = &files.crl {
                verifier = verifier.with_crls(read_crls(crl)?);
            }
            let verifier = verifier
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(read_certs(&files.cert)?, read_key(&files.key)?)
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    Ok(Arc::new(config))
}

/// The TLS side of a listener.
#[derive(Clone)]
pub struct ServerTls {
    files: TlsFiles,
    config: Arc<RwLock<Arc<ServerConfig>>>,
}

impl ServerTls {
    /// Reads the files; fails with a message naming the file at fault.
    pub fn load(files: TlsFiles) -> Result<Self, String> {
        let config = Arc::new(RwLock::new(server_config(&files)?));
        Ok(ServerTls { files, config })
    }

    /// Reads the files again; on error the old certificates stay in use.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = server_config(&self.files)?;
        *self.config.write().unwrap() = fresh;
        Ok(())
    }

    /// Completes the server side of a handshake; a peer that fails it (no or a bad
    /// certificate, not TLS at all, too slow) is logged and gets the error.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<BoxStream> {
        let peer = tcp.peer_addr().ok();
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.read().unwrap().clone());
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => Ok(Box::new(stream)),
            Ok(Err(e)) => {
                tracing::warn!(?peer, error = %e, "TLS handshake failed: connection refused");
                Err(e)
            }
            Err(_) => {
                tracing::warn!(?peer, "TLS handshake timed out: connection closed");
                Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake"))
            }
        }
    }
}

/// The TLS side of a connecting client (a proxy to storage servers, the CLI to a
/// proxy).
#[derive(Clone)]
pub struct ClientTls {
    files: Arc<ClientFiles>,
    config: Arc<RwLock<Arc<ClientConfig>>>,
}

/// A client's files: the CA always, an identity when it must present one.
#[derive(Debug)]
struct ClientFiles {
    ca: PathBuf,
    identity: Option<TlsFiles>,
}

impl ClientFiles {
    fn config(&self) -> Result<Arc<ClientConfig>, String> {
        let builder = ClientConfig::builder().with_root_certificates(read_roots(&self.ca)?);
        let config = match &self.identity {
            Some(files) => builder
                .with_client_auth_cert(read_certs(&files.cert)?, read_key(&files.key)?)
                .map_err(|e| format!("{}: {e}", files.cert.display()))?,
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

impl ClientTls {
    /// Trusts servers certified by `ca`, presenting `identity` (cert and key) when
    /// given.
    pub fn load(ca: PathBuf, identity: Option<TlsFiles>) -> Result<Self, String> {
        let files = ClientFiles { ca, identity };
        let config = Arc::new(RwLock::new(files.config()?));
        Ok(ClientTls {
            files: Arc::new(files),
            config,
        })
    }

    /// A cluster member's client side: its own certificate, the cluster CA.
    pub fn for_member(files: &TlsFiles) -> Result<Self, String> {
        let ca = files
            .ca
            .clone()
            .ok_or("mutual TLS needs the cluster CA (ca)")?;
        Self::load(ca, Some(files.clone()))
    }

    /// Reads the files again; on error the old ones stay in use.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = self.files.config()?;
        *self.config.write().unwrap() = fresh;
        Ok(())
    }

    /// The client side of a handshake with `addr` (host:port), whose certificate must
    /// name that host (a DNS name or an IP address).
    pub async fn connect(
        &self,
        tcp: TcpStream,
        addr: &str,
        timeout: Duration,
    ) -> io::Result<BoxStream> {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let connector = tokio_rustls::TlsConnector::from(self.config.read().unwrap().clone());
        match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
            Ok(Ok(stream)) => Ok(Box::new(stream)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake")),
        }
    }
}
