//! The cluster under test: real `junokv storage` and `junokv proxy` processes on
//! loopback, each with its own config, data directory and log, and a relay in front of
//! every link — each proxy reaches each storage node through a relay of its own, and
//! clients reach each proxy through one — so that any link can be cut or slowed.

use crate::relay::{Link, Relay};
use junokv::at_rest::KeyFile;
use junokv::certs::DevCerts;
use junokv::cluster::{Node, ShardMap, Zone};
use junokv::transport::TlsFiles;
use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// One `junokv` process.
pub struct Process {
    pub name: String,
    pub addr: SocketAddr,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Process {
    pub fn start(&mut self, bin: &Path) -> std::io::Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        let child = Command::new(bin)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `kill -9`: no clean shutdown, whatever was not synced is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// SIGTERM, then (bounded) wait for a clean exit; SIGKILL if there is none.
    /// Returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        signal(&child, "-CONT");
        signal(&child, "-TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// SIGSTOP (`stop`) or SIGCONT.
    pub fn pause(&mut self, stop: bool) {
        if let Some(child) = &self.child {
            signal(child, if stop { "-STOP" } else { "-CONT" });
            self.paused = stop;
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }
}

/// Sends `sig` (as `kill` spells it) to `child`; a process already gone is no error.
fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}

impl Drop for Process {
    fn drop(&mut self) {
        self.pause(false);
        self.kill();
    }
}

/// The shape of the cluster.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub zones: usize,
    pub nodes_per_zone: usize,
    pub proxies: usize,
    /// The map lives in an etcd the harness starts, and starts with the first node of
    /// each zone only (the others run, in no map, until a change adds them).
    pub map_in_etcd: bool,
}

/// Where the map lives in a run with `map_in_etcd`.
pub const MAP_KEY: &str = "/junokv/chaos-map";

/// A running cluster and the relays in front of it.
pub struct Cluster {
    pub storage: Vec<Process>,
    pub proxies: Vec<Process>,
    /// `links[p][s]`: proxy `p`'s way to storage node `s`.
    pub links: Vec<Vec<Relay>>,
    /// Clients' way to each proxy.
    pub entries: Vec<Relay>,
    /// The map with the storage nodes' own addresses (for checking replicas directly).
    pub map: ShardMap,
    /// The cluster's certificate (as every member has it) and CA: TLS everywhere,
    /// through the relays.
    pub tls: TlsFiles,
    /// With the map in etcd: the etcd process and its client URL.
    pub etcd: Option<(Process, String)>,
    bin: PathBuf,
}

/// How long dead records are kept before purging: short, so that purges (by reads and
/// by the storage servers' sweepers) happen during a run, under its faults.
const PURGE_GRACE_SECS: i64 = 8;

/// Writes a config file.
fn write_toml(path: &Path, table: &toml::Table) -> std::io::Result<()> {
    fs::write(path, toml::to_string(table).map_err(std::io::Error::other)?)
}

/// A free loopback port (bound, then released for the process that will use it).
fn free_addr() -> std::io::Result<SocketAddr> {
    StdListener::bind("127.0.0.1:0")?.local_addr()
}

/// A `[tls]`-style table of `files`.
fn tls_table(files: &TlsFiles) -> std::io::Result<toml::Value> {
    toml::Value::try_from(files).map_err(std::io::Error::other)
}

impl Cluster {
    /// Writes every config under `dir` and starts every process and relay.
    pub async fn start(bin: &Path, dir: &Path, shape: Shape) -> std::io::Result<Cluster> {
        let tls = DevCerts::ensure(&dir.join("tls"))
            .map_err(std::io::Error::other)?
            .member();
        let client_port = TlsFiles {
            ca: None,
            ..tls.clone()
        };
        // Every record sealed at rest, as in `junokv dev`.
        let key_file = dir.join("data-keys.toml");
        if !key_file.exists() {
            KeyFile::add_key(&key_file).map_err(std::io::Error::other)?;
        }
        let mut encryption = toml::Table::new();
        let key_path = toml::Value::String(key_file.display().to_string());
        encryption.insert("key_file".into(), key_path);
        let mut zones = Vec::new();
        for z in 0..shape.zones {
            let nodes = (0..shape.nodes_per_zone)
                .map(|_| free_addr().map(|a| Node::at(a.to_string())))
                .collect::<std::io::Result<Vec<Node>>>()?;
            zones.push(Zone {
                datacenter: format!("dc{}", z % 3),
                nodes,
            });
        }
        let mut map = ShardMap {
            epoch: 1,
            num_shards: 64,
            zones,
            previous: None,
        };
        // With the map in etcd, one map serves every proxy: each storage node has one
        // relay, shared by all who reach it, and the map names the node by it.
        let mut shared = Vec::new();
        let etcd = match shape.map_in_etcd {
            false => None,
            true => {
                for node in map.zones.iter_mut().flat_map(|z| &mut z.nodes) {
                    let target: SocketAddr = node.addr.parse().expect("written above");
                    let relay = Relay::start(TcpListener::bind("127.0.0.1:0").await?, target)?;
                    *node = Node::at(relay.listen.to_string());
                    shared.push((relay, target));
                }
                Some(start_etcd(dir).await?)
            }
        };
        let map_source = |file: &mut toml::Table, seed: &ShardMap| -> std::io::Result<()> {
            let Some((_, url)) = &etcd else { return Ok(()) };
            let mut source = toml::Table::new();
            source.insert("etcd".into(), vec![toml::Value::String(url.clone())].into());
            source.insert("key".into(), MAP_KEY.into());
            file.insert("map_source".into(), source.into());
            let first = ShardMap {
                zones: (seed.zones.iter())
                    .map(|z| Zone {
                        nodes: z.nodes[..1].to_vec(),
                        ..z.clone()
                    })
                    .collect(),
                ..seed.clone()
            };
            let cluster = toml::Value::try_from(&first).map_err(std::io::Error::other)?;
            file.insert("cluster".into(), cluster);
            Ok(())
        };
        // Storage servers get the map (their own addresses, past the relays) so that
        // their sweepers run, with a grace period short enough to purge within a run.
        let mut storage = Vec::new();
        let mut listens = shared.iter().map(|(_, target)| target.to_string());
        for (z, zone) in map.zones.iter().enumerate() {
            for (n, addr) in zone.nodes.iter().map(|node| &node.addr).enumerate() {
                let name = format!("storage-z{z}-{n}");
                let config = dir.join(format!("{name}.toml"));
                let mut file = toml::Table::new();
                // Behind a shared relay, a server listens elsewhere and is named by it.
                let listen = listens.next().unwrap_or_else(|| addr.clone());
                file.insert("listen".into(), toml::Value::String(listen.clone()));
                let data = dir.join(&name).display().to_string();
                file.insert("data_dir".into(), toml::Value::String(data));
                let cluster = toml::Value::try_from(&map).map_err(std::io::Error::other)?;
                file.insert("cluster".into(), cluster);
                if etcd.is_some() {
                    file.insert("id".into(), toml::Value::String(addr.clone()));
                    map_source(&mut file, &map)?;
                }
                let mut sweeper = toml::Table::new();
                sweeper.insert("interval_ms".into(), toml::Value::Integer(2000));
                sweeper.insert("purge_grace_secs".into(), PURGE_GRACE_SECS.into());
                file.insert("sweeper".into(), toml::Value::Table(sweeper));
                file.insert("tls".into(), tls_table(&tls)?);
                file.insert("encryption".into(), encryption.clone().into());
                write_toml(&config, &file)?;
                let addr = listen.parse().expect("a free address");
                storage.push(process(&name, addr, "storage", &config, dir));
            }
        }
        let mut proxies = Vec::new();
        let mut links = Vec::new();
        let mut entries = Vec::new();
        for p in 0..shape.proxies {
            let name = format!("proxy-{p}");
            // This proxy's own relays to every storage node, in the map's place (the
            // nodes keep their ids, so that shards are placed as everywhere else).
            let mut relays = Vec::new();
            let mut own = map.clone();
            for zone in own.zones.iter_mut().filter(|_| etcd.is_none()) {
                for node in &mut zone.nodes {
                    let target: SocketAddr = node.addr.parse().expect("written above");
                    let relay = Relay::start(TcpListener::bind("127.0.0.1:0").await?, target)?;
                    node.addr = relay.listen.to_string();
                    relays.push(relay);
                }
            }
            let addr = free_addr()?;
            let config = dir.join(format!("{name}.toml"));
            let mut file = toml::Table::new();
            file.insert("listen".into(), toml::Value::String(addr.to_string()));
            let own = toml::Value::try_from(&own).map_err(std::io::Error::other)?;
            file.insert("cluster".into(), own);
            let mut timeouts = toml::Table::new();
            timeouts.insert("purge_grace_secs".into(), PURGE_GRACE_SECS.into());
            file.insert("timeouts".into(), toml::Value::Table(timeouts));
            file.insert("tls".into(), tls_table(&client_port)?);
            file.insert("cluster_tls".into(), tls_table(&tls)?);
            map_source(&mut file, &map)?;
            write_toml(&config, &file)?;
            proxies.push(process(&name, addr, "proxy", &config, dir));
            entries.push(Relay::start(TcpListener::bind("127.0.0.1:0").await?, addr)?);
            if etcd.is_none() {
                links.push(relays);
            }
        }
        // With the map in etcd, the shared relays are the only way to each node.
        if etcd.is_some() {
            links.push(shared.into_iter().map(|(relay, _)| relay).collect());
        }
        let mut cluster = Cluster {
            storage,
            proxies,
            links,
            entries,
            map,
            tls,
            etcd,
            bin: bin.to_path_buf(),
        };
        for p in cluster.storage.iter_mut().chain(cluster.proxies.iter_mut()) {
            p.start(bin)?;
        }
        for p in cluster.storage.iter().chain(cluster.proxies.iter()) {
            wait_listening(p.addr, Duration::from_secs(60)).await?;
        }
        Ok(cluster)
    }

    pub fn restart(&mut self, which: Which) -> std::io::Result<()> {
        let bin = self.bin.clone();
        self.process(which).start(&bin)
    }

    pub fn process(&mut self, which: Which) -> &mut Process {
        match which {
            Which::Storage(i) => &mut self.storage[i],
            Which::Proxy(i) => &mut self.proxies[i],
        }
    }

    /// Undoes every fault: relays up, paused processes resumed, dead ones restarted.
    pub fn heal(&mut self) -> std::io::Result<()> {
        for relay in self.links.iter().flatten().chain(&self.entries) {
            relay.set(Link::Up);
        }
        let bin = self.bin.clone();
        for p in self.storage.iter_mut().chain(self.proxies.iter_mut()) {
            if p.is_paused() {
                p.pause(false);
            }
            if !p.is_running() {
                p.start(&bin)?;
            }
        }
        Ok(())
    }

    /// Stops every process cleanly (SIGTERM); names those that did not exit cleanly
    /// within 10 s (they are killed).
    pub fn stop(&mut self) -> Vec<String> {
        self.proxies
            .iter_mut()
            .chain(self.storage.iter_mut())
            .filter_map(|p| (!p.terminate()).then(|| p.name.clone()))
            .collect()
    }
}

/// A one-member etcd under `dir`, serving: the process and its client URL.
async fn start_etcd(dir: &Path) -> std::io::Result<(Process, String)> {
    let (child, url) = junokv::etcd_map::start_local(dir)?;
    let port = url.rsplit(':').next().and_then(|p| p.parse().ok());
    let addr = SocketAddr::from(([127, 0, 0, 1], port.unwrap_or(0)));
    let mut etcd = Process {
        name: "etcd".into(),
        addr,
        args: Vec::new(),
        log: dir.join("etcd.log"),
        child: Some(child),
        paused: false,
    };
    if let Err(e) = wait_listening(addr, Duration::from_secs(30)).await {
        etcd.kill();
        return Err(e);
    }
    Ok((etcd, url))
}

/// A process of the cluster.
#[derive(Clone, Copy, Debug)]
pub enum Which {
    Storage(usize),
    Proxy(usize),
}

fn process(name: &str, addr: SocketAddr, role: &str, config: &Path, dir: &Path) -> Process {
    Process {
        name: name.to_string(),
        addr,
        args: vec![
            role.to_string(),
            "--config".to_string(),
            config.display().to_string(),
        ],
        log: dir.join(format!("{name}.log")),
        child: None,
        paused: false,
    }
}

/// Waits (bounded) until something accepts connections on `addr`.
pub async fn wait_listening(addr: SocketAddr, limit: Duration) -> std::io::Result<()> {
    let start = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if start.elapsed() > limit {
            return Err(std::io::Error::other(format!("nothing listens on {addr}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
