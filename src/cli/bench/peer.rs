//! Other stores `junokv bench` drives with the very same workload (workers, keys, value
//! size, mix, latency histogram), so that `scripts/bench` compares like with like:
//! Redis over RESP, and etcd over its v3 JSON gateway (HTTP/1.1). Each worker has a
//! connection of its own, as the stores' own benchmark tools do.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A store other than JunoKV, named by a URL: `redis://HOST:PORT` or `etcd://HOST:PORT`.
#[derive(Clone, Debug)]
pub enum Peer {
    Redis(String),
    Etcd(String),
}

impl Peer {
    pub fn parse(url: &str) -> Result<Peer, String> {
        match url.split_once("://") {
            Some(("redis", addr)) => Ok(Peer::Redis(addr.into())),
            Some(("etcd", addr)) => Ok(Peer::Etcd(addr.into())),
            _ => Err(format!(
                "--peer {url:?}: expected redis://HOST:PORT or etcd://HOST:PORT"
            )),
        }
    }

    pub async fn connect(&self) -> Result<Connection, String> {
        let addr = match self {
            Peer::Redis(a) | Peer::Etcd(a) => a,
        };
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        Ok(match self {
            Peer::Redis(_) => Connection::Redis(BufReader::new(tcp)),
            Peer::Etcd(_) => {
                let io = hyper_util::rt::TokioIo::new(tcp);
                let (send, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| format!("HTTP to {addr}: {e}"))?;
                tokio::spawn(conn);
                Connection::Etcd(send)
            }
        })
    }
}

/// One worker's connection to a peer.
pub enum Connection {
    Redis(BufReader<TcpStream>),
    Etcd(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
}

/// What a read found.
pub enum Found {
    Value,
    Missing,
}

impl Connection {
    pub async fn get(&mut self, key: &[u8]) -> Result<Found, String> {
        match self {
            Connection::Redis(c) => match resp(c, &[b"GET", key]).await? {
                Resp::Nil => Ok(Found::Missing),
                _ => Ok(Found::Value),
            },
            Connection::Etcd(c) => {
                let body = etcd(c, "/v3/kv/range", &[("key", key)]).await?;
                Ok(match body.contains("\"kvs\"") {
                    true => Found::Value,
                    false => Found::Missing,
                })
            }
        }
    }

    pub async fn set(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        match self {
            Connection::Redis(c) => resp(c, &[b"SET", key, value]).await.map(drop),
            Connection::Etcd(c) => etcd(c, "/v3/kv/put", &[("key", key), ("value", value)])
                .await
                .map(drop),
        }
    }

    pub async fn destroy(&mut self, key: &[u8]) -> Result<(), String> {
        match self {
            Connection::Redis(c) => resp(c, &[b"DEL", key]).await.map(drop),
            Connection::Etcd(c) => etcd(c, "/v3/kv/deleterange", &[("key", key)])
                .await
                .map(drop),
        }
    }
}

/// A RESP reply, as far as the benchmark cares.
enum Resp {
    Nil,
    Some,
}

/// Sends one command and reads its reply.
async fn resp(c: &mut BufReader<TcpStream>, args: &[&[u8]]) -> Result<Resp, String> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    let io = |e: std::io::Error| format!("redis: {e}");
    c.get_mut().write_all(&out).await.map_err(io)?;
    let mut line = String::new();
    c.read_line(&mut line).await.map_err(io)?;
    let (kind, rest) = line.trim_end().split_at(line.len().min(1));
    match kind {
        "+" | ":" => Ok(Resp::Some),
        "-" => Err(format!("redis: {rest}")),
        "$" => {
            let len: i64 = rest
                .parse()
                .map_err(|_| format!("redis: bad reply {line:?}"))?;
            if len < 0 {
                return Ok(Resp::Nil);
            }
            let mut bulk = vec![0; len as usize + 2];
            c.read_exact(&mut bulk).await.map_err(io)?;
            Ok(Resp::Some)
        }
        _ => Err(format!("redis: unexpected reply {line:?}")),
    }
}

/// POSTs a request of etcd's v3 JSON gateway (bytes fields in base64); the body.
async fn etcd(
    c: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
    fields: &[(&str, &[u8])],
) -> Result<String, String> {
    use base64::Engine;
    let json: serde_json::Map<String, serde_json::Value> = fields
        .iter()
        .map(|(k, v)| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(v);
            (k.to_string(), serde_json::Value::String(b64))
        })
        .collect();
    let request = hyper::Request::post(path)
        .header("host", "etcd")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(&json).unwrap())))
        .map_err(|e| e.to_string())?;
    // A connection takes its next request only once done with the last one.
    c.ready().await.map_err(|e| format!("etcd: {e}"))?;
    let response = c
        .send_request(request)
        .await
        .map_err(|e| format!("etcd: {e}"))?;
    let status = response.status();
    let body = (response.into_body().collect().await)
        .map_err(|e| format!("etcd: {e}"))?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        return Err(format!("etcd: {status}: {body}"));
    }
    Ok(body)
}
