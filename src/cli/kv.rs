//! `junokv create|get|update|set|destroy`: each takes only the arguments that apply
//! to it; `--output json` prints one JSON object for scripts.

use super::CliResult;
use junokv::client::{Client, ClientError, RecordInfo};
use std::process::ExitCode;

/// What every client command takes.
#[derive(clap::Args)]
pub struct Common {
    #[command(flatten)]
    proxy: super::ProxyArgs,
    #[arg(long, short, default_value = "default")]
    namespace: String,
    /// `text`: one `name value` line each; `json`: one object
    /// (`{"status":"Ok","version":1,...}`; the value as `value`, or as `value_hex` when
    /// it is not UTF-8).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(clap::Args)]
pub struct WriteArgs {
    key: String,
    value: String,
    /// Seconds to live (0: the proxy's default).
    #[arg(long, default_value_t = 0)]
    ttl: u32,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    write: WriteArgs,
    /// Update only if the key is at this version (a conditional update).
    #[arg(long)]
    version: Option<u32>,
}

#[derive(clap::Args)]
pub struct GetArgs {
    key: String,
    /// Extend the record's time to live to at least this many seconds.
    #[arg(long, default_value_t = 0)]
    ttl: u32,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
pub struct KeyArgs {
    key: String,
    #[command(flatten)]
    common: Common,
}

pub async fn create(a: WriteArgs) -> CliResult {
    let c = connect(&a.common).await?;
    let r = c.create(a.key.as_bytes(), a.value.as_bytes(), a.ttl).await;
    print(&a.common, r.map(Some), false)
}

pub async fn set(a: WriteArgs) -> CliResult {
    let c = connect(&a.common).await?;
    let r = c.set(a.key.as_bytes(), a.value.as_bytes(), a.ttl).await;
    print(&a.common, r.map(Some), false)
}

pub async fn update(a: UpdateArgs) -> CliResult {
    let w = &a.write;
    let c = connect(&w.common).await?;
    let (key, value) = (w.key.as_bytes(), w.value.as_bytes());
    let r = match a.version {
        Some(v) => c.update_if(key, value, w.ttl, v).await,
        None => c.update(key, value, w.ttl).await,
    };
    print(&w.common, r.map(Some), false)
}

pub async fn get(a: GetArgs) -> CliResult {
    let c = connect(&a.common).await?;
    let r = match a.ttl {
        0 => c.get(a.key.as_bytes()).await,
        ttl => c.get_extend(a.key.as_bytes(), ttl).await,
    };
    print(&a.common, r.map(Some), true)
}

pub async fn destroy(a: KeyArgs) -> CliResult {
    let c = connect(&a.common).await?;
    let r = c.destroy(a.key.as_bytes()).await;
    print(&a.common, r.map(|_| None), false)
}

async fn connect(c: &Common) -> Result<Client, String> {
    c.proxy.connect(&c.namespace).await
}

/// Prints the answer; exit status 1 for a status other than Ok, 2 for no answer.
fn print(c: &Common, result: Result<Option<RecordInfo>, ClientError>, value: bool) -> CliResult {
    let (status, info) = match result {
        Ok(info) => ("Ok".to_string(), info),
        Err(ClientError::Status(s)) => (s.to_string(), None),
        Err(e) => return Err(e.to_string()),
    };
    let mut fields: Vec<(&str, serde_json::Value)> = vec![("status", status.clone().into())];
    if let Some(r) = &info {
        fields.push(("version", r.version.into()));
        fields.push(("ttl", r.ttl.into()));
        if value {
            fields.push(match std::str::from_utf8(&r.value) {
                Ok(text) => ("value", text.into()),
                Err(_) => ("value_hex", hex(&r.value).into()),
            });
        }
    }
    match c.output {
        Output::Json => {
            let object: serde_json::Map<String, serde_json::Value> = fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            println!("{}", serde_json::Value::Object(object));
        }
        // As before: the status alone, or the record's fields.
        Output::Text if info.is_none() => println!("{status}"),
        Output::Text => {
            for (name, v) in fields.into_iter().skip(1) {
                match v {
                    serde_json::Value::String(s) => println!("{name} {s}"),
                    other => println!("{name} {other}"),
                }
            }
        }
    }
    Ok(ExitCode::from(if status == "Ok" { 0 } else { 1 }))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
