//! The schedule of faults, drawn from the run's seed: `kill -9` and restart of storage
//! servers and proxies, SIGSTOP/SIGCONT pauses, partitions (a storage node cut off from
//! every proxy, or a proxy from some storage nodes) and slow links. One fault at a
//! time, each undone before the next; every one is logged with its time.

use crate::cluster::{Cluster, Which};
use crate::relay::Link;
use rand::rngs::SmallRng;
use rand::Rng;
use std::time::{Duration, Instant};

/// What was done, and when (seconds since the run began).
pub type FaultLog = Vec<(f64, String)>;

/// Injects faults until `until`, then returns what it did. Every loop is bounded by
/// time; the cluster is left healed.
pub async fn run(
    cluster: &tokio::sync::Mutex<Cluster>,
    rng: &mut SmallRng,
    origin: Instant,
    until: Instant,
) -> std::io::Result<FaultLog> {
    let mut log = FaultLog::new();
    let note = |log: &mut FaultLog, what: String| log.push((origin.elapsed().as_secs_f64(), what));
    loop {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1000))).await;
        let length = Duration::from_millis(rng.gen_range(300..3000));
        if Instant::now() + length >= until {
            return Ok(log);
        }
        let mut c = cluster.lock().await;
        let (storage, proxies) = (c.storage.len(), c.proxies.len());
        let target = if rng.gen_bool(0.7) {
            Which::Storage(rng.gen_range(0..storage))
        } else {
            Which::Proxy(rng.gen_range(0..proxies))
        };
        let name = c.process(target).name.clone();
        match rng.gen_range(0..5) {
            0 => {
                c.process(target).kill();
                note(&mut log, format!("kill -9 {name}"));
                drop(c);
                tokio::time::sleep(length).await;
                cluster.lock().await.restart(target)?;
                note(&mut log, format!("restart {name}"));
            }
            1 => {
                c.process(target).pause(true);
                note(&mut log, format!("SIGSTOP {name}"));
                drop(c);
                tokio::time::sleep(length).await;
                cluster.lock().await.process(target).pause(false);
                note(&mut log, format!("SIGCONT {name}"));
            }
            2 => {
                let s = rng.gen_range(0..storage);
                for links in &c.links {
                    links[s].set(Link::Partitioned);
                }
                let name = &c.storage[s].name;
                note(&mut log, format!("partition {name} from every proxy"));
                drop(c);
                tokio::time::sleep(length).await;
                heal_links(cluster, &mut log, origin).await;
            }
            3 => {
                // (With one relay per storage node, shared by every proxy, a cut
                // partitions those nodes from all.)
                let p = rng.gen_range(0..c.links.len());
                let cut: Vec<usize> = (0..storage).filter(|_| rng.gen_bool(0.5)).collect();
                for &s in &cut {
                    c.links[p][s].set(Link::Partitioned);
                }
                let names: Vec<&str> = cut.iter().map(|&s| c.storage[s].name.as_str()).collect();
                let who = match c.links.len() == proxies {
                    true => format!("proxy-{p}"),
                    false => "every proxy".into(),
                };
                note(
                    &mut log,
                    format!("partition {who} from [{}]", names.join(", ")),
                );
                drop(c);
                tokio::time::sleep(length).await;
                heal_links(cluster, &mut log, origin).await;
            }
            _ => {
                let delay = Duration::from_millis(rng.gen_range(20..300));
                let p = rng.gen_range(0..c.links.len());
                for link in &c.links[p] {
                    link.set(Link::Slow(delay));
                }
                let who = match c.links.len() == proxies {
                    true => format!("from proxy-{p}"),
                    false => "to every storage node".into(),
                };
                note(&mut log, format!("slow links ({delay:?}) {who}"));
                drop(c);
                tokio::time::sleep(length).await;
                heal_links(cluster, &mut log, origin).await;
            }
        }
    }
}

async fn heal_links(cluster: &tokio::sync::Mutex<Cluster>, log: &mut FaultLog, origin: Instant) {
    for link in cluster.lock().await.links.iter().flatten() {
        link.set(Link::Up);
    }
    log.push((origin.elapsed().as_secs_f64(), "links healed".into()));
}
