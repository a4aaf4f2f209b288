//! The admin port's HTTP server (hyper), outside the simulator.

use super::Health;
use crate::listener::serve_until_stopped;
use crate::transport::Acceptor;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A running admin port.
pub struct AdminServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Serves the admin endpoints on `listener` until stopped, asking `health`.
    pub fn start(
        listener: TcpListener,
        acceptor: Acceptor,
        health: Arc<dyn Health>,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve_until_stopped(listener, stopped, move |stream| {
            let (acceptor, health) = (acceptor.clone(), health.clone());
            async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| answer(req, health.clone()));
                let io = hyper_util::rt::TokioIo::new(stream);
                let served = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(error = %e, "admin connection");
                }
            }
        }));
        tracing::info!(%addr, "admin port listening");
        Ok(AdminServer { addr, stop, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn answer(
    req: Request<Incoming>,
    health: Arc<dyn Health>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            crate::metrics::metrics().encode(),
        ),
        "/healthz" => (StatusCode::OK, TEXT, "ok\n".to_string()),
        "/readyz" => match health.ready().await {
            Ok(how) => (StatusCode::OK, TEXT, format!("ready{how}\n")),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
        "/status" => match health.status().await {
            Some(json) => (StatusCode::OK, "application/json", json),
            None => (
                StatusCode::NOT_FOUND,
                TEXT,
                "no cluster status here\n".into(),
            ),
        },
        _ => (StatusCode::NOT_FOUND, TEXT, "not found\n".to_string()),
    };
    let response = Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response");
    Ok(response)
}
