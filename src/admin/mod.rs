//! The admin HTTP port of a proxy or storage server: `/metrics` (Prometheus' text
//! format), `/healthz` (the process answers) and `/readyz` (it can serve: a proxy
//! reaches a quorum of every shard's replicas; a storage server has opened its engine).
//! Plain HTTP or HTTPS, through the same acceptor as the other ports.

#[cfg(not(madsim))]
mod server;

#[cfg(not(madsim))]
pub use server::{AdminServer, Readiness};

use serde::Deserialize;

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
