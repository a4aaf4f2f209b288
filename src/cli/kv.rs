//! `junokv create|get|update|set|destroy`.

use super::CliResult;
use junokv::client::{ClientError, RecordInfo};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct KvArgs {
    key: String,
    value: Option<String>,
    #[command(flatten)]
    proxy: super::ProxyArgs,
    #[arg(long, short, default_value = "default")]
    namespace: String,
    /// Seconds to live (get: extend to at least this).
    #[arg(long, default_value_t = 0)]
    ttl: u32,
    /// Update only if the key is at this version.
    #[arg(long)]
    version: Option<u32>,
}

pub enum Kind {
    Create,
    Get,
    Update,
    Set,
    Destroy,
}

pub async fn run(kind: Kind, a: KvArgs) -> CliResult {
    let client = a.proxy.connect(&a.namespace).await?;
    let value = || {
        a.value
            .clone()
            .ok_or("this command needs a VALUE")
            .map(String::into_bytes)
    };
    let key = a.key.as_bytes();
    let result: Result<Option<RecordInfo>, ClientError> = match kind {
        Kind::Create => client.create(key, &value()?, a.ttl).await.map(Some),
        Kind::Get if a.ttl > 0 => client.get_extend(key, a.ttl).await.map(Some),
        Kind::Get => client.get(key).await.map(Some),
        Kind::Update => match a.version {
            Some(v) => client.update_if(key, &value()?, a.ttl, v).await.map(Some),
            None => client.update(key, &value()?, a.ttl).await.map(Some),
        },
        Kind::Set => client.set(key, &value()?, a.ttl).await.map(Some),
        Kind::Destroy => client.destroy(key).await.map(|_| None),
    };
    match result {
        Ok(info) => {
            if let Some(r) = info {
                println!("version {}", r.version);
                println!("ttl {}", r.ttl);
                if matches!(kind, Kind::Get) {
                    println!("value {}", String::from_utf8_lossy(&r.value));
                }
            } else {
                println!("Ok");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(ClientError::Status(s)) => {
            println!("{s}");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.to_string()),
    }
}
