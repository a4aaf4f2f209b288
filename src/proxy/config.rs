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
    /// The cluster map; with `[map_source]`, only what seeds an empty source.
    pub cluster: ShardMap,
    /// Where the map lives and changes (etcd): the proxy follows it.
    #[serde(default)]
    pub map_source: Option<crate::map_change::MapSourceConfig>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub connections: ConnectionLimits,
    #[serde(default)]
    pub leases: LeaseConfig,
    /// The admin HTTP port (metrics, health, readiness), if any.
    #[serde(default)]
    pub admin: Option<crate::admin::AdminConfig>,
}

/// Fails with the first setting out of range, named as in the file.
fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

impl ProxyConfig {
    /// Everything a proxy checks before it starts, but for the certificate files
    /// (loaded as it starts): ports, the cluster map, and every limit and timeout.
    pub fn validate(&self) -> Result<(), String> {
        check(self.listen.is_some() == self.tls.is_some(), || {
            "`listen` (the TLS client port) and [tls] go together; a plain-text port is \
             `plain_listen`"
                .into()
        })?;
        check(self.listen.is_some() || self.plain_listen.is_some(), || {
            "no client port: set `listen` with [tls], or `plain_listen`".into()
        })?;
        self.cluster
            .validate()
            .map_err(|e| format!("[cluster]: {e}"))?;
        self.limits.validate()?;
        self.timeouts.validate()?;
        self.connections.validate()
    }

    /// A proxy for `cluster`, in plain text, with default limits and timeouts.
    pub fn new(cluster: ShardMap) -> Self {
        ProxyConfig {
            listen: None,
            plain_listen: None,
            tls: None,
            cluster_tls: None,
            cluster,
            map_source: None,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            connections: ConnectionLimits::default(),
            leases: LeaseConfig::default(),
            admin: None,
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

impl Limits {
    pub fn validate(&self) -> Result<(), String> {
        let most = crate::protocol::MAX_FRAME as usize / 2;
        check(self.max_key_length >= 1, || {
            "limits.max_key_length must be at least 1".into()
        })?;
        // (JunoDB's wire protocol gives a namespace one byte of length.)
        check(self.max_namespace_length <= 255, || {
            "limits.max_namespace_length must be at most 255".into()
        })?;
        check(self.max_payload_length <= most, || {
            format!(
                "limits.max_payload_length ({}) must be at most {most}",
                self.max_payload_length
            )
        })?;
        check(
            self.default_ttl >= 1 && self.default_ttl <= self.max_ttl,
            || {
                format!(
                    "limits.default_ttl ({}) must be between 1 and limits.max_ttl ({})",
                    self.default_ttl, self.max_ttl
                )
            },
        )
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
    pub fn validate(&self) -> Result<(), String> {
        check(self.request_ms >= 1 && self.connect_ms >= 1, || {
            "timeouts.request_ms and timeouts.connect_ms must be at least 1".into()
        })?;
        check((1..=self.request_ms).contains(&self.round_ms), || {
            format!(
                "timeouts.round_ms ({}) must be between 1 and timeouts.request_ms ({})",
                self.round_ms, self.request_ms
            )
        })?;
        // A tombstone must outlast every request that may still be looking for it.
        check(
            u64::from(self.purge_grace_secs) * 1000 > 2 * self.request_ms,
            || {
                format!(
                    "timeouts.purge_grace_secs ({}) must be more than twice timeouts.request_ms \
                 ({} ms)",
                    self.purge_grace_secs, self.request_ms
                )
            },
        )
    }

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

/// What one client, or all of them, may hold of a proxy: beyond these the proxy stops
/// reading (back-pressure), answers Busy, or closes the connection, so that its memory
/// stays bounded and one client cannot deny service to the others.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Client connections at once, over all the proxy's client ports; more are closed
    /// as they are accepted. (The process needs a file-descriptor limit above it.)
    pub max_connections: usize,
    /// Requests being handled at once, over every connection; beyond it a request is
    /// answered Busy without being started.
    pub max_in_flight: usize,
    /// Requests one connection may have unanswered; beyond it the proxy reads no
    /// further from that connection until responses are written.
    pub max_in_flight_per_connection: usize,
    /// Bytes of requests and responses one connection may hold in the proxy (read
    /// and not yet answered, or answered and not yet written); beyond it, as above.
    pub max_buffered_bytes_per_connection: usize,
    /// The same bound over every connection.
    pub max_buffered_bytes: usize,
    /// A connection with nothing received for this long is closed.
    pub idle_timeout_secs: u64,
    /// A frame must arrive whole within this once it has begun, and a response must be
    /// taken by the client within this once written (a client that sends a byte a
    /// second, or never reads, is closed).
    pub stall_timeout_ms: u64,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 16_384,
            max_in_flight: 10_000,
            max_in_flight_per_connection: 1024,
            max_buffered_bytes_per_connection: 16 << 20,
            max_buffered_bytes: 512 << 20,
            idle_timeout_secs: 600,
            stall_timeout_ms: 10_000,
        }
    }
}

impl ConnectionLimits {
    pub fn validate(&self) -> Result<(), String> {
        let counts = [
            ("max_connections", self.max_connections),
            ("max_in_flight", self.max_in_flight),
            (
                "max_in_flight_per_connection",
                self.max_in_flight_per_connection,
            ),
            ("idle_timeout_secs", self.idle_timeout_secs as usize),
            ("stall_timeout_ms", self.stall_timeout_ms as usize),
            (
                "max_buffered_bytes_per_connection",
                self.max_buffered_bytes_per_connection,
            ),
            ("max_buffered_bytes", self.max_buffered_bytes),
        ];
        for (name, n) in counts {
            check(n >= 1, || format!("connections.{name} must be at least 1"))?;
        }
        Ok(())
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
    pub fn stall_timeout(&self) -> Duration {
        Duration::from_millis(self.stall_timeout_ms)
    }
}

/// `[leases]`: one-round-trip writes (DESIGN §3). A proxy that wrote a key last holds a
/// lease on it (its record and a ballot a quorum promised), so its next write to the
/// key skips phase 1.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaseConfig {
    /// Memory for leases, records included (the oldest go first); 0 turns
    /// one-round-trip writes off.
    pub memory_bytes: usize,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            memory_bytes: 64 << 20,
        }
    }
}
