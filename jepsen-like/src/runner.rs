//! The real-cluster runner: concurrent clients run a mixed workload on a small key
//! space (so operations collide), every invocation and completion is recorded in the
//! history format, and the history is checked at the end.

use crate::history::{to_json_line, Event, EventType, F};
use crate::{checker, model::Model, report};
use junokv::client::{Client, ClientError, RecordInfo};
use junokv::protocol::Status;
use junokv::transport::Connector;
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
    /// Proxy client address; repeat it to spread the clients over several proxies.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub proxy: Vec<String>,
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
    /// Number of the first client process (several runners share one history).
    #[arg(long, default_value_t = 0)]
    pub first_process: u64,
    /// Connect to the proxies' TLS port, trusting this CA certificate (PEM).
    #[arg(long)]
    pub tls_ca: Option<std::path::PathBuf>,
}

impl Workload {
    fn connection(&self, proxy: String, ns: &str) -> Result<Connection, String> {
        Ok(Connection {
            proxy,
            ns: ns.to_string(),
            connector: Connector::client(self.tls_ca.as_deref(), None)?,
            client: None,
        })
    }
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
    let events = match rt.block_on(run(&args.workload, Instant::now())) {
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

/// One operation a client process issues.
struct Request {
    f: F,
    key: String,
    value: Option<String>,
    ttl: u32,
    if_version: Option<u32>,
}

/// Issues `req` on `client` as `process`, recording its invocation and completion.
/// Returns the completion.
async fn perform(
    client: &Client,
    recorder: &Recorder,
    ns: &str,
    process: u64,
    req: &Request,
) -> Event {
    let history_key = format!("{ns}/{}", req.key);
    let mut inv = event(process, EventType::Invoke, req.f, &history_key);
    inv.value = req.value.clone();
    inv.ttl = (req.ttl > 0).then_some(u64::from(req.ttl));
    inv.if_version = req.if_version;
    recorder.record(inv);
    let (key, value, ttl) = (
        req.key.as_bytes(),
        req.value.as_deref().unwrap_or("").as_bytes(),
        req.ttl,
    );
    let result: Result<Option<RecordInfo>, ClientError> = match req.f {
        F::Get if ttl > 0 => client.get_extend(key, ttl).await.map(Some),
        F::Get => client.get(key).await.map(Some),
        F::Create => client.create(key, value, ttl).await.map(Some),
        F::Update => match req.if_version {
            Some(v) => client.update_if(key, value, ttl, v).await.map(Some),
            None => client.update(key, value, ttl).await.map(Some),
        },
        F::Set => client.set(key, value, ttl).await.map(Some),
        F::Destroy => client.destroy(key).await.map(|_| None),
    };
    let mut done = event(process, EventType::Ok, req.f, &history_key);
    match result {
        Ok(Some(info)) => {
            done.version = Some(info.version);
            if req.f == F::Get {
                done.value = Some(String::from_utf8_lossy(&info.value).into_owned());
            }
        }
        Ok(None) => {}
        Err(e) if !e.is_indeterminate() => {
            done.kind = EventType::Fail;
            done.error = Some(e.status().unwrap_or(Status::Internal).name().to_string());
        }
        Err(e) => {
            done.kind = EventType::Info;
            done.error = Some(e.to_string());
        }
    }
    recorder.record(done.clone());
    done
}

/// A client connection that is re-established (after a pause) when it breaks, as a
/// real application would when its proxy restarts.
struct Connection {
    proxy: String,
    ns: String,
    connector: Connector,
    client: Option<Client>,
}

impl Connection {
    /// The live client, or `None` after a failed attempt to connect (which waited).
    async fn get(&mut self) -> Option<Client> {
        if self.client.is_none() {
            let connect = tokio::time::timeout(
                OP_TIMEOUT,
                Client::connect_with(&self.proxy, &self.ns, &self.connector),
            );
            match connect.await {
                Ok(Ok(c)) => self.client = Some(c.with_timeout(OP_TIMEOUT)),
                _ => tokio::time::sleep(RECONNECT_PAUSE).await,
            }
        }
        self.client.clone()
    }
}

const OP_TIMEOUT: Duration = Duration::from_secs(3);
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

/// Runs the workload (histories' times count from `origin`) and returns its history.
pub async fn run(args: &Workload, origin: Instant) -> Result<Vec<Event>, String> {
    if args.proxy.is_empty() {
        return Err("no proxy to run against".into());
    }
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| format!("jl-{}", std::process::id()));
    let recorder = Recorder {
        start: origin,
        events: Arc::default(),
    };
    let deadline = Instant::now() + Duration::from_secs_f64(args.duration);
    let mut workers = Vec::new();
    for c in 0..args.clients {
        let mut conn = args.connection(args.proxy[c as usize % args.proxy.len()].clone(), &ns)?;
        let (recorder, keys, seed) = (recorder.clone(), args.keys.max(1), args.seed);
        let clients = args.clients;
        let ns = ns.clone();
        let mut process = args.first_process + c;
        workers.push(tokio::spawn(async move {
            let mut rng =
                SmallRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(process));
            let mut seen: HashMap<String, u32> = HashMap::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let Some(client) = conn.get().await else {
                    continue;
                };
                n += 1;
                // Skewed popularity (the least of two draws): hot keys collide all
                // the time; cold ones sit long enough to expire and be purged.
                let k = rng.gen_range(0..keys).min(rng.gen_range(0..keys));
                let key = format!("k{k}");
                // Short TTLs often, so that records expire while others use them.
                let ttl = match rng.gen_range(0..10) {
                    0..=2 => rng.gen_range(1..4),
                    3 => 600,
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
                let get_ttl = f == F::Get && rng.gen_range(0..10) == 0;
                let writes_value = f != F::Get && f != F::Destroy;
                let req = Request {
                    value: writes_value.then(|| format!("p{process}-{n}")),
                    ttl: if (writes_value && ttl > 0) || get_ttl {
                        ttl
                    } else {
                        0
                    },
                    if_version: (63..=77)
                        .contains(&roll)
                        .then(|| seen.get(&key).copied().unwrap_or(1)),
                    key,
                    f,
                };
                let done = perform(&client, &recorder, &ns, process, &req).await;
                if let Some(v) = done.version {
                    seen.insert(req.key, v);
                }
                if done.kind == EventType::Info {
                    // After an info a process never invokes again: go on as a new one,
                    // on a fresh connection (this one may be broken or stuck), after a
                    // pause (a proxy that is down must not turn into a busy loop).
                    process += clients;
                    conn.client = None;
                    tokio::time::sleep(RECONNECT_PAUSE).await;
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

/// After the faults have healed: reads every key of the workload through `proxy`
/// (as processes from `first_process` on), retrying each until it is answered, so
/// that the checker sees the final state of every key — every acknowledged write must
/// still be there unless a later operation replaced or removed it. An error names a
/// key that stayed unreadable.
pub async fn read_back(
    args: &Workload,
    first_process: u64,
    origin: Instant,
) -> Result<Vec<Event>, String> {
    let ns = args
        .namespace
        .clone()
        .ok_or("read_back needs the namespace")?;
    let recorder = Recorder {
        start: origin,
        events: Arc::default(),
    };
    let first = args.proxy.first().ok_or("no proxy to read back from")?;
    let mut conn = args.connection(first.clone(), &ns)?;
    let mut process = first_process;
    for k in 0..args.keys.max(1) {
        let req = Request {
            f: F::Get,
            key: format!("k{k}"),
            value: None,
            ttl: 0,
            if_version: None,
        };
        let mut answered = false;
        for _ in 0..20 {
            let Some(client) = conn.get().await else {
                continue;
            };
            let done = perform(&client, &recorder, &ns, process, &req).await;
            let no_key = done.error.as_deref() == Some(Status::NoKey.name());
            if done.kind == EventType::Ok || no_key {
                answered = true;
                break;
            }
            if done.kind == EventType::Info {
                process += 1_000_000;
                conn.client = None;
            }
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
        if !answered {
            return Err(format!(
                "key {ns}/k{k} was not readable after the faults healed"
            ));
        }
    }
    let events = recorder.events.lock().unwrap().clone();
    Ok(events)
}
