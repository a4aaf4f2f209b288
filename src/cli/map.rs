//! `junokv map`: the cluster map as placement sees it, and what changing it would
//! move (a dry run for growing, shrinking or replacing storage nodes).

use clap::Subcommand;
use junokv::cluster::{Node, ShardMap, Zone};
use junokv::map_change::Totals;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum MapCommand {
    /// Each zone's nodes and how many shards each holds. FILE: a proxy's or storage
    /// server's config (its `[cluster]` table, or with `[map_source]` the map in etcd),
    /// or a map on its own.
    Show { file: PathBuf },
    /// What changing the map from OLD to NEW moves: the shards each node gains and
    /// loses, zone by zone. Nothing is contacted; exits 1 if NEW is no valid successor
    /// of OLD (another shard count or zone count, or an epoch not above OLD's).
    Plan { old: PathBuf, new: PathBuf },
    /// Changes the map in the cluster's map source (etcd) to NEW's zones (nodes added,
    /// removed or replaced), while the cluster serves: prints the plan, then moves the
    /// shards, step by step. Interrupted, it is run again (with any NEW) to finish.
    Change {
        /// The zones to change to (a map, or a config with `[cluster]`; its epoch and
        /// shard count are the source's).
        new: PathBuf,
        #[command(flatten)]
        driver: Driver,
    },
    /// Adds the storage node ID (listening at ADDR) to zone ZONE, online: it takes
    /// about 1/(n+1) of that zone's shards, from the others.
    Add {
        id: String,
        #[arg(long)]
        addr: String,
        /// The zone's place in the map (0 for the first).
        #[arg(long)]
        zone: usize,
        #[command(flatten)]
        driver: Driver,
    },
    /// Drains the storage node ID and removes it from the map, online: its shards go
    /// to the other nodes of its zone (which must have one).
    Remove {
        id: String,
        #[command(flatten)]
        driver: Driver,
    },
    /// Replaces the storage node OLD by a new one, ID at ADDR, online: exactly OLD's
    /// shards move, onto the new node.
    Replace {
        old: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        addr: String,
        #[command(flatten)]
        driver: Driver,
    },
    /// Rolls back the change of the map under way (one whose driver was stopped, or
    /// that waits for a joining node that is gone): the map returns to the zones before
    /// it, online, and the joining nodes drop what they took.
    Abort {
        #[command(flatten)]
        driver: Driver,
    },
}

/// How a change of the map is driven.
#[derive(clap::Args)]
pub struct Driver {
    /// A proxy's config: its `[map_source]` and cluster certificate are used.
    #[arg(long)]
    config: PathBuf,
    /// Print the plan, change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// A change of the map, by what an operator asks for.
#[derive(Debug)]
enum Edit {
    To(Vec<Zone>),
    Add {
        zone: usize,
        node: Node,
    },
    Remove {
        id: String,
    },
    Replace {
        old: String,
        node: Node,
    },
    /// Back to the zones before the change under way.
    Back,
}

impl Edit {
    /// The zones of `map` (as they will be once any change under way is done) once
    /// edited.
    fn apply(self, map: &ShardMap) -> Result<Vec<Zone>, String> {
        let mut zones = map.zones.clone();
        let find = |zones: &[Zone], id: &str| {
            (zones.iter().enumerate())
                .find_map(|(z, zone)| Some((z, zone.nodes.iter().position(|n| n.id == id)?)))
        };
        let unused = |zones: &[Zone], node: &Node| match find(zones, &node.id) {
            Some(_) => Err(format!("{} is in the map already", node.id)),
            None => Ok(()),
        };
        let missing = |id: &str| format!("no node {id} in the map");
        match self {
            Edit::To(to) => return Ok(to),
            Edit::Back => {
                return (map.previous.clone())
                    .ok_or_else(|| "no change of the map is under way".to_string())
            }
            Edit::Add { zone, node } => {
                unused(&zones, &node)?;
                let count = zones.len();
                let at = (zones.get_mut(zone))
                    .ok_or_else(|| format!("no zone {zone}: the map has {count} (from 0)"))?;
                at.nodes.push(node);
            }
            Edit::Remove { id } => {
                let (z, i) = find(&zones, &id).ok_or_else(|| missing(&id))?;
                if zones[z].nodes.len() == 1 {
                    return Err(format!(
                        "{id} is zone {z}'s only node: replace it, or add another first"
                    ));
                }
                zones[z].nodes.remove(i);
            }
            Edit::Replace { old, node } => {
                unused(&zones, &node)?;
                let (z, i) = find(&zones, &old).ok_or_else(|| missing(&old))?;
                zones[z].nodes[i] = node;
            }
        }
        Ok(zones)
    }
}

pub async fn run(command: MapCommand) -> Result<ExitCode, String> {
    let node = |id, addr| Node { id, addr };
    match command {
        MapCommand::Change { new, driver } => change(&driver, Edit::To(load(&new)?.zones)).await,
        MapCommand::Add {
            id,
            addr,
            zone,
            driver,
        } => {
            let node = node(id, addr);
            change(&driver, Edit::Add { zone, node }).await
        }
        MapCommand::Remove { id, driver } => change(&driver, Edit::Remove { id }).await,
        MapCommand::Replace {
            old,
            id,
            addr,
            driver,
        } => {
            change(
                &driver,
                Edit::Replace {
                    old,
                    node: node(id, addr),
                },
            )
            .await
        }
        MapCommand::Abort { driver } => change(&driver, Edit::Back).await,
        MapCommand::Show { file } => {
            let map = match source_of(&file)? {
                Some(source) => {
                    let etcd = junokv::etcd_map::EtcdMaps::connect(&source).await?;
                    let map = junokv::map_change::MapStore::current(&etcd).await?;
                    println!("from etcd {} ({})", source.key, source.etcd.join(","));
                    if map.previous.is_some() {
                        println!("a change of the map is under way: shown as it will end");
                    }
                    map
                }
                None => load(&file)?,
            };
            print!("{}", show(&map));
            Ok(ExitCode::SUCCESS)
        }
        MapCommand::Plan { old, new } => {
            let (before, after) = (load(&old)?, load(&new)?);
            match plan(&before, &after) {
                Ok(moves) => {
                    print!("{}", describe(&before, &after, &moves));
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{}: {e}", new.display());
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

/// Drives a change of the map in the map source of the proxy config in `driver` (see
/// `junokv::map_change`) to the zones `edit` makes of the map's (as they will be once
/// any change under way is done): a change under way to other zones is redirected.
async fn change(driver: &Driver, edit: Edit) -> Result<ExitCode, String> {
    use junokv::map_change::MapStore;
    let config = &driver.config;
    let mut cfg = super::dev::proxy_config(config)?;
    let source = (cfg.map_source.clone()).ok_or_else(|| {
        format!(
            "{}: no [map_source]: the map lives in its [cluster]",
            config.display()
        )
    })?;
    let etcd = junokv::etcd_map::EtcdMaps::connect(&source).await?;
    let now = etcd.current().await?;
    let zones = edit.apply(&now)?;
    // What moves is counted from the zones before any change under way.
    let from = ShardMap {
        previous: None,
        zones: now.previous.clone().unwrap_or(now.zones.clone()),
        ..now.clone()
    };
    let after = ShardMap {
        epoch: now.epoch + 2,
        zones: zones.clone(),
        ..from.clone()
    };
    after.validate()?;
    if now.previous.is_some() {
        let what = match now.zones == zones {
            true => "finished",
            false => "redirected: what moves is counted from the zones before it",
        };
        println!(
            "a change of the map is under way (epoch {}): it is {what}",
            now.epoch
        );
    }
    let moves = plan(&from, &after)?;
    print!("{}", describe(&from, &after, &moves));
    cfg.cluster = now;
    let follow = etcd.clone().follow(cfg.cluster.clone());
    let proxy = junokv::proxy::Proxy::new(cfg, junokv::clock::Clock::default())?;
    proxy.follow(follow);
    println!("{}", bytes_moving(&proxy, &from, &moves).await);
    if driver.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    let progress = Progress::default();
    let report = |step| progress.report(step);
    let done = junokv::map_change::change(&etcd, &proxy, zones, &report).await?;
    progress.bar.finish_and_clear();
    println!("map epoch {}: done; {}", done.epoch, progress.totals);
    Ok(ExitCode::SUCCESS)
}

/// A change's progress as an operator sees it: a bar on a terminal, and totals.
struct Progress {
    bar: indicatif::ProgressBar,
    totals: Totals,
}

impl Default for Progress {
    fn default() -> Self {
        let style = indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} shards moved, eta {eta} {msg}",
        )
        .expect("a valid template");
        Progress {
            bar: indicatif::ProgressBar::new(0).with_style(style),
            totals: Totals::default(),
        }
    }
}

impl Progress {
    fn report(&self, step: junokv::map_change::Progress) {
        use junokv::map_change::Progress as Step;
        match step {
            Step::Fenced { shards } => {
                self.bar.reset();
                self.bar.set_length(shards as u64);
            }
            Step::Moved(moved) => {
                self.totals.add(&moved);
                self.bar.inc(1);
                self.bar.set_message(self.totals.to_string());
            }
        }
    }
}

/// What the shard replicas that move hold, estimated from each giving node's engine
/// size (asked now) spread evenly over the shards it holds.
async fn bytes_moving(proxy: &junokv::proxy::Proxy, map: &ShardMap, moves: &[Move]) -> String {
    use junokv::replica::{NodeRequest, ReplicaReply};
    let held = counts(map);
    let mut bytes = 0.0;
    let mut unknown = Vec::new();
    for (z, zone) in map.zones.iter().enumerate() {
        for node in &zone.nodes {
            let giving = moves
                .iter()
                .filter(|m| m.zone == z && m.from == node.id)
                .count();
            if giving == 0 {
                continue;
            }
            match proxy.ask_node(&node.addr, NodeRequest::Status).await {
                Ok(ReplicaReply::Node(info)) => {
                    let shards = held[z][node.id.as_str()].max(1);
                    bytes += info.engine_bytes as f64 * giving as f64 / shards as f64;
                }
                _ => unknown.push(node.id.clone()),
            }
        }
    }
    let mib = bytes / f64::from(1 << 20);
    match unknown.is_empty() {
        true => format!("data to move: about {mib:.1} MiB (from the giving nodes' sizes)"),
        false => format!(
            "data to move: about {mib:.1} MiB, and what {} hold (not answering)",
            unknown.join(", ")
        ),
    }
}

/// The `[map_source]` of the config `file`, if it has one.
fn source_of(file: &Path) -> Result<Option<junokv::map_change::MapSourceConfig>, String> {
    (read_table(file)?.remove("map_source"))
        .map(|t| {
            t.try_into()
                .map_err(|e| format!("{}: [map_source]: {e}", file.display()))
        })
        .transpose()
}

/// The TOML file `file`, parsed.
fn read_table(file: &Path) -> Result<toml::Table, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    text.parse().map_err(|e| format!("{}: {e}", file.display()))
}

/// The map in `file`: its `[cluster]` table, or the whole file.
fn load(file: &Path) -> Result<ShardMap, String> {
    let mut table = read_table(file)?;
    let map: ShardMap = match table.remove("cluster") {
        Some(cluster) => cluster.try_into(),
        None => toml::Value::Table(table).try_into(),
    }
    .map_err(|e| format!("{}: no cluster map: {e}", file.display()))?;
    map.validate()
        .map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(map)
}

/// How many shards each node of each zone holds, by node id.
fn counts(map: &ShardMap) -> Vec<BTreeMap<&str, usize>> {
    map.zones
        .iter()
        .map(|z| {
            let mut held: BTreeMap<&str, usize> =
                z.nodes.iter().map(|n| (n.id.as_str(), 0)).collect();
            for shard in 0..map.num_shards {
                *held.entry(z.owner(shard).id.as_str()).or_default() += 1;
            }
            held
        })
        .collect()
}

fn show(map: &ShardMap) -> String {
    let mut out = format!(
        "map epoch {}, {} shards, {} zones (a replica of every shard in each)\n",
        map.epoch,
        map.num_shards,
        map.zones.len()
    );
    for (z, (zone, held)) in map.zones.iter().zip(counts(map)).enumerate() {
        out += &format!("zone {z} ({}):\n", zone.datacenter);
        for node in &zone.nodes {
            let name = if node.id == node.addr {
                node.id.clone()
            } else {
                format!("{} at {}", node.id, node.addr)
            };
            out += &format!("  {name}: {} shards\n", held[node.id.as_str()]);
        }
    }
    out
}

/// One shard replica that changes node.
#[derive(Debug, PartialEq, Eq)]
struct Move {
    zone: usize,
    shard: u16,
    from: String,
    to: String,
}

/// The replicas that change node from `old` to `new`: the moves a change of the
/// map implies.
fn plan(old: &ShardMap, new: &ShardMap) -> Result<Vec<Move>, String> {
    if new.num_shards != old.num_shards {
        return Err(format!(
            "the shard count is fixed for the life of a cluster ({} here, {} before)",
            new.num_shards, old.num_shards
        ));
    }
    if new.zones.len() != old.zones.len() {
        return Err(format!(
            "{} zones here, {} before: moving shards between nodes keeps the zones (the \
             replication factor)",
            new.zones.len(),
            old.zones.len()
        ));
    }
    if new.epoch <= old.epoch {
        return Err(format!(
            "epoch {} is not above the current map's {}: every change of the map needs a \
             higher epoch",
            new.epoch, old.epoch
        ));
    }
    let mut moves = Vec::new();
    for (zone, (before, after)) in old.zones.iter().zip(&new.zones).enumerate() {
        for shard in 0..old.num_shards {
            let (from, to) = (&before.owner(shard).id, &after.owner(shard).id);
            if from != to {
                moves.push(Move {
                    zone,
                    shard,
                    from: from.clone(),
                    to: to.clone(),
                });
            }
        }
    }
    Ok(moves)
}

fn describe(old: &ShardMap, new: &ShardMap, moves: &[Move]) -> String {
    let replicas = usize::from(old.num_shards) * old.zones.len();
    let percent = |n: usize, of: usize| 100.0 * n as f64 / of.max(1) as f64;
    let mut out = format!(
        "epoch {} -> {}: {} of {replicas} shard replicas move ({:.1}%)\n",
        old.epoch,
        new.epoch,
        moves.len(),
        percent(moves.len(), replicas)
    );
    let (before, after) = (counts(old), counts(new));
    for z in 0..old.zones.len() {
        let here = moves.iter().filter(|m| m.zone == z).count();
        if here == 0 {
            out += &format!("zone {z} ({}): nothing moves\n", new.zones[z].datacenter);
            continue;
        }
        out += &format!(
            "zone {z} ({}): {here} of {} shards move ({:.1}%; one node's share is {:.1}%)\n",
            new.zones[z].datacenter,
            old.num_shards,
            percent(here, old.num_shards.into()),
            100.0 / new.zones[z].nodes.len() as f64,
        );
        let ids: std::collections::BTreeSet<&str> =
            before[z].keys().chain(after[z].keys()).copied().collect();
        for id in ids {
            let (was, is) = (before[z].get(id), after[z].get(id));
            let gains = moves.iter().filter(|m| m.zone == z && m.to == id).count();
            let loses = moves.iter().filter(|m| m.zone == z && m.from == id).count();
            let role = match (was, is) {
                (None, _) => " (added)",
                (_, None) => " (removed)",
                _ => "",
            };
            out += &format!(
                "  {id}{role}: {} -> {} shards (+{gains} -{loses})\n",
                was.copied().unwrap_or(0),
                is.copied().unwrap_or(0)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(epoch: u64, zones: &[&[&str]]) -> ShardMap {
        ShardMap {
            epoch,
            num_shards: 1024,
            zones: zones
                .iter()
                .enumerate()
                .map(|(z, ids)| Zone {
                    datacenter: format!("dc{z}"),
                    nodes: ids.iter().map(|id| Node::at(*id)).collect(),
                })
                .collect(),
            previous: None,
        }
    }

    #[test]
    fn adding_a_node_to_a_zone_of_two_moves_about_a_third_of_it_onto_the_new_node() {
        let old = map(1, &[&["a", "b"], &["c", "d"], &["e", "f"]]);
        let new = map(2, &[&["a", "b", "g"], &["c", "d"], &["e", "f"]]);
        let moves = plan(&old, &new).unwrap();
        assert!(
            moves.iter().all(|m| m.zone == 0 && m.to == "g"),
            "{moves:?}"
        );
        // A third of 1,024 is 341; rendezvous hashing is within a few percent of it.
        assert!((300..=385).contains(&moves.len()), "{} moved", moves.len());
        let text = describe(&old, &new, &moves);
        assert!(text.contains("zone 1 (dc1): nothing moves"), "{text}");
        assert!(text.contains("g (added): 0 -> "), "{text}");
    }

    #[test]
    fn replacing_a_node_moves_exactly_its_shards_to_the_new_one() {
        let old = map(1, &[&["a", "b"], &["c"], &["e"]]);
        let new = map(2, &[&["a", "x"], &["c"], &["e"]]);
        let moves = plan(&old, &new).unwrap();
        let held_by_b = counts(&old)[0]["b"];
        // Every shard of b goes somewhere, and nothing else moves except what the new
        // id wins from a.
        assert!(moves.iter().filter(|m| m.from == "b").count() == held_by_b);
        assert!(moves
            .iter()
            .all(|m| m.zone == 0 && (m.from == "b" || m.to == "x")));
    }

    #[test]
    fn named_changes_edit_one_zone_and_refuse_what_would_break_the_map() {
        let before = map(1, &[&["a", "b"], &["c"], &["e"]]);
        let zones = before.zones.clone();
        let node = |id: &str| Node::at(id);
        let added = Edit::Add {
            zone: 1,
            node: node("d"),
        }
        .apply(&before)
        .unwrap();
        assert_eq!(added[1].nodes, [node("c"), node("d")]);
        assert_eq!((&added[0], &added[2]), (&zones[0], &zones[2]));
        let removed = Edit::Remove { id: "a".into() }.apply(&before).unwrap();
        assert_eq!(removed[0].nodes, [node("b")]);
        let replaced = (Edit::Replace {
            old: "c".into(),
            node: node("x"),
        })
        .apply(&before);
        assert_eq!(replaced.unwrap()[1].nodes, [node("x")]);
        let err = |edit: Edit| edit.apply(&before).unwrap_err();
        assert!(err(Edit::Back).contains("no change"));
        let under_way = ShardMap {
            previous: Some(removed.clone()),
            ..before.clone()
        };
        assert_eq!(Edit::Back.apply(&under_way).unwrap(), removed);
        assert!(err(Edit::Remove { id: "c".into() }).contains("only node"));
        assert!(err(Edit::Remove { id: "z".into() }).contains("no node z"));
        assert!(err(Edit::Add {
            zone: 0,
            node: node("e")
        })
        .contains("in the map already"));
        assert!(err(Edit::Add {
            zone: 3,
            node: node("f")
        })
        .contains("no zone 3"));
        let taken = Edit::Replace {
            old: "a".into(),
            node: node("b"),
        };
        assert!(err(taken).contains("in the map already"));
    }

    #[test]
    fn a_plan_needs_a_higher_epoch_and_the_same_zones() {
        let old = map(3, &[&["a"], &["b"], &["c"]]);
        let same_epoch = map(3, &[&["a", "d"], &["b"], &["c"]]);
        assert!(plan(&old, &same_epoch).unwrap_err().contains("epoch"));
        let fewer_zones = map(4, &[&["a"], &["b"]]);
        assert!(plan(&old, &fewer_zones).unwrap_err().contains("zones"));
        let mut other_shards = map(4, &[&["a"], &["b"], &["c"]]);
        other_shards.num_shards = 512;
        assert!(plan(&old, &other_shards)
            .unwrap_err()
            .contains("shard count"));
    }
}
