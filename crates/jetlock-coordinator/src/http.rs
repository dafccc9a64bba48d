//! The coordinator's HTTP endpoint: `GET /metrics` (Prometheus),
//! `GET /healthz` (the process answers: 200) and `GET /readyz` (200 once
//! it serves, 503 with the reason otherwise). `jetlock serve` binds it
//! before it connects to NATS, so a probe gets an answer from the start.

use crate::health::Health;
use crate::metrics::Metrics;
use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A bound endpoint, serving until dropped (or its coordinator stops).
pub struct Endpoint {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: CancellationToken,
}

impl Endpoint {
    /// Binds `addr` (`host:port`; port 0 picks one) and serves on it.
    pub async fn bind(addr: &str) -> std::io::Result<Endpoint> {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::default());
        let stop = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let app = routes(metrics.clone(), health.clone());
        let stopped = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await;
        });
        Ok(Endpoint {
            addr: bound,
            metrics,
            health,
            stop,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub(crate) fn health(&self) -> Arc<Health> {
        self.health.clone()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn routes(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let health = health.clone();
                async move {
                    match health.readiness() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                    }
                }
            }),
        )
}
