//! The admin HTTP port of a proxy or storage server: `/metrics` (Prometheus' text
//! format), `/healthz` (the process answers) and `/readyz` (it can serve: a proxy
//! reaches a quorum of every shard's replicas; a storage server has opened its engine,
//! and recovered its records if it keeps them in memory).
//! Plain HTTP or HTTPS, through the same acceptor as the other ports.

#[cfg(not(madsim))]
mod server;

#[cfg(not(madsim))]
pub use server::AdminServer;

use futures::future::BoxFuture;
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the admin port asks of the server it belongs to.
pub trait Health: Send + Sync + 'static {
    /// `/readyz`: Ok (with a note, possibly empty) when the server can serve, Err why
    /// not.
    fn ready(&self) -> BoxFuture<'_, Result<String, String>>;

    /// `/status`: the server's view of the cluster as JSON, where it has one.
    fn status(&self) -> BoxFuture<'_, Option<String>> {
        Box::pin(async { None })
    }
}

/// A storage server: ready once it serves (its engine is open), but for an in-memory
/// replica still recovering the records it lost in a restart (so that a rolling
/// restart, or a disruption budget, waits for it before taking the next zone).
#[derive(Clone, Default)]
pub struct Serving {
    pub recovering: Arc<AtomicBool>,
}

impl Health for Serving {
    fn ready(&self) -> BoxFuture<'_, Result<String, String>> {
        let recovering = self.recovering.load(Ordering::Relaxed);
        Box::pin(async move {
            match recovering {
                false => Ok(String::new()),
                true => Err("recovering the records it lost in a restart".into()),
            }
        })
    }
}

/// `[admin]` in a proxy's or storage server's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: String,
    /// Serve plain HTTP. Otherwise the port is HTTPS with the server's own certificate
    /// (its `[tls]`), without asking scrapers for one.
    #[serde(default)]
    pub plaintext: bool,
}

impl AdminConfig {
    /// An HTTPS admin port needs the server's certificate (`has_tls`).
    pub fn validate(&self, has_tls: bool) -> Result<(), String> {
        if self.plaintext || has_tls {
            Ok(())
        } else {
            Err(
                "[admin] is HTTPS with the server's [tls] certificate: add [tls], or set \
                 plaintext = true in [admin]"
                    .into(),
            )
        }
    }
}
