//! Synthetic histories that are linearizable by construction: operations of
//! concurrent processes take effect at a random point inside their time window, in
//! the order of those points, under a reference implementation of the semantics that
//! shares no code with [`crate::model`]. For tests and for the checker's benchmark.

use crate::history::{to_json_line, Event, EventType, F};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

/// JunoDB semantics on `(value, version)`, without TTLs: what `f` returns and does.
pub fn reference(
    state: &mut Option<(String, u32)>,
    f: F,
    value: &str,
    if_version: Option<u32>,
) -> (EventType, Option<u32>, Option<String>, Option<&'static str>) {
    match (f, state.clone()) {
        (F::Create, Some(_)) => (EventType::Fail, None, None, Some("DupKey")),
        (F::Create, None) | (F::Set, None) => {
            *state = Some((value.into(), 1));
            (EventType::Ok, Some(1), None, None)
        }
        (F::Get, None) | (F::Update, None) => (EventType::Fail, None, None, Some("NoKey")),
        (F::Get, Some((v, ver))) => (EventType::Ok, Some(ver), Some(v), None),
        (F::Update, Some((_, ver))) if if_version.is_some_and(|i| i != ver) => {
            (EventType::Fail, None, None, Some("VersionConflict"))
        }
        (F::Update | F::Set, Some((_, ver))) => {
            *state = Some((value.into(), ver + 1));
            (EventType::Ok, Some(ver + 1), None, None)
        }
        (F::Destroy, _) => {
            *state = None;
            (EventType::Ok, None, None, None)
        }
    }
}

/// One operation to generate: process, key, kind (0..5: create get update set
/// destroy), conditional version, earliest start, window length, where in the window
/// it takes effect, and whether its outcome is lost (then it takes effect only if its
/// index is odd, and its process never invokes again).
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub process: u64,
    pub key: u32,
    pub kind: u8,
    pub if_version: Option<u32>,
    pub start: u64,
    pub len: u64,
    pub at: u64,
    pub lost: bool,
}

/// The history (JSON Lines) of the operations `specs` describe.
pub fn generate(specs: &[Spec]) -> String {
    struct Planned {
        i: usize,
        s: Spec,
        f: F,
        start: u64,
        end: u64,
        point: u64,
    }
    let mut busy_until: HashMap<u64, u64> = HashMap::new();
    let mut ops = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        let start = s.start.max(*busy_until.get(&s.process).unwrap_or(&0));
        if start == u64::MAX {
            continue; // the process's last operation was lost: it never invokes again
        }
        let end = start + s.len + 1;
        busy_until.insert(s.process, if s.lost { u64::MAX } else { end + 1 });
        let f = [F::Create, F::Get, F::Update, F::Set, F::Destroy][s.kind as usize % 5];
        ops.push(Planned {
            i,
            s: *s,
            f,
            start,
            end,
            point: start + s.at % (end - start),
        });
    }
    let mut order: Vec<usize> = (0..ops.len()).collect();
    order.sort_by_key(|&o| ops[o].point);
    let mut states: HashMap<u32, Option<(String, u32)>> = HashMap::new();
    let mut results = HashMap::new();
    for o in order {
        let p = &ops[o];
        if p.s.lost && p.i % 2 == 0 {
            continue;
        }
        let if_version = p.s.if_version.filter(|_| p.f == F::Update);
        results.insert(
            p.i,
            reference(
                states.entry(p.s.key).or_default(),
                p.f,
                &format!("v{}", p.i),
                if_version,
            ),
        );
    }
    let mut events: Vec<(u64, u8, Event)> = Vec::new();
    for p in &ops {
        let key = format!("k{}", p.s.key);
        let value = matches!(p.f, F::Create | F::Update | F::Set).then(|| format!("v{}", p.i));
        let if_version = p.s.if_version.filter(|_| p.f == F::Update);
        events.push((
            p.start,
            1,
            Event {
                process: p.s.process,
                kind: EventType::Invoke,
                f: p.f,
                key: key.clone(),
                value,
                ttl: None,
                if_version,
                version: None,
                error: None,
                time: p.start,
            },
        ));
        let (kind, version, value, error) = match (p.s.lost, results.get(&p.i)) {
            (true, _) | (_, None) => (EventType::Info, None, None, Some("timeout")),
            (false, Some(r)) => r.clone(),
        };
        if p.s.lost {
            // Reported as info right away; it may still take effect later.
            events.push((
                p.start,
                2,
                Event {
                    process: p.s.process,
                    kind,
                    f: p.f,
                    key,
                    value: None,
                    ttl: None,
                    if_version: None,
                    version: None,
                    error: error.map(String::from),
                    time: p.start,
                },
            ));
            continue;
        }
        events.push((
            p.end,
            0,
            Event {
                process: p.s.process,
                kind,
                f: p.f,
                key,
                value,
                ttl: None,
                if_version: None,
                version,
                error: error.map(String::from),
                time: p.end,
            },
        ));
    }
    events.sort_by_key(|(t, order, e)| (*t, *order, e.process));
    events
        .iter()
        .map(|(.., e)| to_json_line(e) + "\n")
        .collect()
}

/// A random history: `ops` operations by `processes` concurrent processes over `keys`
/// keys, a fraction `info` of them indeterminate (each such one retires its process,
/// which a fresh process id replaces).
pub fn random(ops: usize, keys: u32, processes: u64, info: f64, seed: u64) -> String {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut ids: Vec<u64> = (0..processes).collect();
    let mut next_id = processes;
    let mut specs = Vec::with_capacity(ops);
    for i in 0..ops {
        let slot = rng.gen_range(0..ids.len());
        let lost = rng.gen_bool(info);
        specs.push(Spec {
            process: ids[slot],
            key: rng.gen_range(0..keys),
            kind: rng.gen_range(0..5),
            if_version: rng.gen_bool(0.5).then(|| rng.gen_range(1..4)),
            start: (i as u64) * 10 / processes.max(1),
            len: rng.gen_range(0..30),
            at: rng.gen(),
            lost,
        });
        if lost {
            ids[slot] = next_id;
            next_id += 1;
        }
    }
    generate(&specs)
}

/// The history (one [`generate`]d) with one recorded result changed (completion
/// `which`, modulo their number): a version raised, a read's value replaced, or success and failure
/// swapped. Often no longer linearizable, not always: for testing the checker both ways.
pub fn mutate(text: &str, which: usize, how: u8) -> String {
    let mut lines: Vec<Event> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a history this module generated"))
        .collect();
    let completions: Vec<usize> = (0..lines.len())
        .filter(|&i| matches!(lines[i].kind, EventType::Ok | EventType::Fail))
        .collect();
    if completions.is_empty() {
        return text.to_string();
    }
    let e = &mut lines[completions[which % completions.len()]];
    match how % 3 {
        0 => e.version = Some(e.version.unwrap_or(0) + 1),
        1 if e.kind == EventType::Ok && e.f == F::Get => e.value = Some("v999".into()),
        _ => {
            if e.kind == EventType::Ok {
                e.kind = EventType::Fail;
                e.error = Some(if e.f == F::Create { "DupKey" } else { "NoKey" }.into());
                e.version = None;
                e.value = None;
            } else {
                e.kind = EventType::Ok;
                e.error = None;
            }
        }
    }
    lines.iter().map(|e| to_json_line(e) + "\n").collect()
}
