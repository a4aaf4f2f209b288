//! The real-cluster runner: concurrent clients run a mixed workload on a small key
//! space (so operations collide), every invocation and completion is recorded in the
//! history format, and the history is checked at the end.

use crate::history::{to_json_line, Event, EventType, F};
use crate::{checker, model::Model, report};
use junokv::client::{Client, ClientError, RecordInfo};
use junokv::protocol::Status;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `jepsen-like run`: the workload, and where its history goes.
#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub workload: Workload,
    /// Where to write the history (JSON Lines).
    #[arg(long, default_value = "history.jsonl")]
    pub history: PathBuf,
    /// Also write an HTML report.
    #[arg(long)]
    pub html: Option<PathBuf>,
}

/// The mixed workload; the simulator runs the same one.
#[derive(clap::Args, Clone, Debug)]
pub struct Workload {
    /// Proxy client address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub proxy: String,
    /// Concurrent client processes.
    #[arg(long, default_value_t = 8)]
    pub clients: u64,
    /// Distinct keys (small, so that operations collide).
    #[arg(long, default_value_t = 8)]
    pub keys: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seed of the workload's choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Namespace to work in (by default a fresh one per run, keeping runs apart).
    #[arg(long)]
    pub namespace: Option<String>,
}

/// The history being recorded: one clock, one order.
#[derive(Clone)]
struct Recorder {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Recorder {
    fn record(&self, mut e: Event) {
        let mut events = self.events.lock().unwrap();
        e.time = self.start.elapsed().as_nanos() as u64;
        events.push(e);
    }
}

fn event(process: u64, kind: EventType, f: F, key: &str) -> Event {
    Event {
        process,
        kind,
        f,
        key: key.to_string(),
        value: None,
        ttl: None,
        if_version: None,
        version: None,
        error: None,
        time: 0,
    }
}

pub fn main(args: RunArgs) -> ExitCode {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let events = match rt.block_on(run(&args.workload)) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("jepsen-like run: {e}");
            return ExitCode::from(3);
        }
    };
    let text: String = events.iter().map(|e| to_json_line(e) + "\n").collect();
    if let Err(e) = std::fs::write(&args.history, &text) {
        eprintln!("{}: {e}", args.history.display());
        return ExitCode::from(3);
    }
    let invokes = events
        .iter()
        .filter(|e| e.kind == EventType::Invoke)
        .count();
    let infos = events.iter().filter(|e| e.kind == EventType::Info).count();
    eprintln!(
        "recorded {invokes} operations ({infos} indeterminate) in {}",
        args.history.display()
    );
    let ops = crate::history::parse(&text).expect("the runner writes well-formed histories");
    let verdict = checker::check(&ops, Model::default(), Duration::from_secs(60));
    print!("{}", report::text(&verdict, &ops));
    if let Some(path) = &args.html {
        let _ = std::fs::write(path, report::html(&verdict, &ops));
    }
    ExitCode::from(match verdict {
        checker::Verdict::Valid => 0,
        checker::Verdict::Invalid(_) => 1,
        checker::Verdict::Unknown { .. } => 2,
    })
}

/// Runs the workload against `args.proxy` and returns its history.
pub async fn run(args: &Workload) -> Result<Vec<Event>, String> {
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| format!("jl-{}", std::process::id()));
    let recorder = Recorder {
        start: Instant::now(),
        events: Arc::default(),
    };
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let mut workers = Vec::new();
    for c in 0..args.clients {
        let client = Client::connect(&args.proxy, &ns)
            .await
            .map_err(|e| format!("connect {}: {e}", args.proxy))?;
        let client = client.with_timeout(Duration::from_secs(3));
        let (recorder, keys, seed) = (recorder.clone(), args.keys.max(1), args.seed);
        let clients = args.clients;
        let ns = ns.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(c));
            let mut process = c;
            let mut seen: HashMap<String, u32> = HashMap::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let key = format!("k{}", rng.gen_range(0..keys));
                let history_key = format!("{ns}/{key}");
                let value = format!("p{process}-{n}");
                let ttl = match rng.gen_range(0..10) {
                    0 => rng.gen_range(1..4),
                    1 => 600,
                    _ => 0,
                };
                let roll = rng.gen_range(0..100);
                let f = match roll {
                    0..=34 => F::Get,
                    35..=49 => F::Create,
                    50..=77 => F::Update,
                    78..=89 => F::Set,
                    _ => F::Destroy,
                };
                let mut inv = event(process, EventType::Invoke, f, &history_key);
                let conditional = (63..=77).contains(&roll);
                if f != F::Get && f != F::Destroy {
                    inv.value = Some(value.clone());
                }
                let get_ttl = f == F::Get && rng.gen_range(0..10) == 0;
                if (f != F::Get && f != F::Destroy && ttl > 0) || get_ttl {
                    inv.ttl = Some(ttl);
                }
                let if_version = if conditional {
                    Some(seen.get(&key).copied().unwrap_or(1))
                } else {
                    None
                };
                inv.if_version = if_version;
                let ttl32 = inv.ttl.unwrap_or(0) as u32;
                recorder.record(inv);
                let result: Result<Option<RecordInfo>, ClientError> = match f {
                    F::Get if ttl32 > 0 => client.get_extend(key.as_bytes(), ttl32).await.map(Some),
                    F::Get => client.get(key.as_bytes()).await.map(Some),
                    F::Create => client
                        .create(key.as_bytes(), value.as_bytes(), ttl32)
                        .await
                        .map(Some),
                    F::Update => match if_version {
                        Some(v) => client
                            .update_if(key.as_bytes(), value.as_bytes(), ttl32, v)
                            .await
                            .map(Some),
                        None => client
                            .update(key.as_bytes(), value.as_bytes(), ttl32)
                            .await
                            .map(Some),
                    },
                    F::Set => client
                        .set(key.as_bytes(), value.as_bytes(), ttl32)
                        .await
                        .map(Some),
                    F::Destroy => client.destroy(key.as_bytes()).await.map(|_| None),
                };
                let mut done = event(process, EventType::Ok, f, &history_key);
                match result {
                    Ok(info) => {
                        if let Some(info) = info {
                            done.version = Some(info.version);
                            seen.insert(key, info.version);
                            if f == F::Get {
                                done.value =
                                    Some(String::from_utf8_lossy(&info.value).into_owned());
                            }
                        }
                    }
                    Err(e) if !e.is_indeterminate() => {
                        done.kind = EventType::Fail;
                        done.error =
                            Some(e.status().unwrap_or(Status::Internal).name().to_string());
                    }
                    Err(e) => {
                        done.kind = EventType::Info;
                        done.error = Some(e.to_string());
                    }
                }
                let crashed = done.kind == EventType::Info;
                recorder.record(done);
                if crashed {
                    // After an info a process never invokes again: go on as a new one.
                    process += clients;
                }
            }
        }));
    }
    for w in workers {
        w.await.map_err(|e| e.to_string())?;
    }
    let events = recorder.events.lock().unwrap().clone();
    Ok(events)
}
