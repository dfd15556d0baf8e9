//! The HTTP surface of SPEC 9 served by `run` and `demo`: `/metrics` (Prometheus text),
//! `/healthz` (the process answers) and `/readyz` (the assigned partitions are restored).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::kafka::processor::Handles;

/// The router; `serve` binds it.
pub fn router(handles: Handles) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(handles)
}

async fn metrics(State(h): State<Handles>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        h.metrics.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(h): State<Handles>) -> (StatusCode, &'static str) {
    if h.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: partitions not assigned or state not restored yet\n",
        )
    }
}

/// A running server: where it listens, and its task.
pub struct Server {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Binds `addr` (port 0: any free port) and serves until `shutdown` resolves. Binding errors
/// come back at once.
pub async fn serve(
    addr: SocketAddr,
    handles: Handles,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<Server> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let app = router(handles);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok(Server { addr, task })
}
