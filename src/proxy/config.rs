//! Proxy configuration, with JunoDB's shipped defaults.

use crate::cluster::ShardMap;
use crate::transport::TlsFiles;
use serde::Deserialize;
use std::time::Duration;

/// `junokv proxy --config F`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// The client (JunoDB protocol) port, TLS with the certificate in `[tls]`
    /// (JunoDB's convention: 5080).
    #[serde(default)]
    pub listen: Option<String>,
    /// A plain-text client port (JunoDB's 8080): only where it is set.
    #[serde(default)]
    pub plain_listen: Option<String>,
    /// The client port's certificate; with `ca`, clients must present a certificate
    /// from that CA.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// Mutual TLS to the storage servers (this proxy's cluster certificate and the
    /// cluster CA). Without it the proxy talks to them in plain text, which they
    /// refuse unless they are configured `plaintext = true`.
    #[serde(default)]
    pub cluster_tls: Option<TlsFiles>,
    pub cluster: ShardMap,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub timeouts: Timeouts,
}

impl ProxyConfig {
    /// A proxy for `cluster`, in plain text, with default limits and timeouts.
    pub fn new(cluster: ShardMap) -> Self {
        ProxyConfig {
            listen: None,
            plain_listen: None,
            tls: None,
            cluster_tls: None,
            cluster,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
        }
    }
}

/// Request limits; a request beyond them is answered BadParam.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_key_length: usize,
    pub max_namespace_length: usize,
    pub max_payload_length: usize,
    /// Seconds.
    pub max_ttl: u32,
    /// Seconds, used when a request carries no TTL.
    pub default_ttl: u32,
}

impl Default for Limits {
    /// JunoDB proxy defaults.
    fn default() -> Self {
        Limits {
            max_key_length: 128,
            max_namespace_length: 64,
            max_payload_length: 204_800,
            max_ttl: 3 * 24 * 3600,
            default_ttl: 3600,
        }
    }
}

/// How long the proxy waits.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// Whole request; past it the client gets Timeout (outcome unknown).
    pub request_ms: u64,
    /// One protocol round against the replicas, before retrying with a new ballot.
    pub round_ms: u64,
    /// Connecting to a storage server.
    pub connect_ms: u64,
    /// How long a destroyed or expired record is kept (as a tombstone) before it may
    /// be purged. Must outlast any request and any clock skew between proxies.
    pub purge_grace_secs: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request_ms: 1000,
            round_ms: 250,
            connect_ms: 200,
            purge_grace_secs: 3600,
        }
    }
}

impl Timeouts {
    pub fn request(&self) -> Duration {
        Duration::from_millis(self.request_ms)
    }
    pub fn round(&self) -> Duration {
        Duration::from_millis(self.round_ms)
    }
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }
}
