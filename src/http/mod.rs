//! The HTTP surface of SPEC 9 served by `run` and `demo`: `/metrics` (Prometheus text),
//! `/healthz`, `/readyz`, the read-only JSON API under `/api/v1` and the `/calibration`
//! dashboard.
//!
//! The API and the dashboard read the storage documents from the storage directory, which the
//! processor keeps current, rather than asking the processor's engines: the HTTP side shares no
//! lock with the fold and serves the same bytes an operator would find on disk.

pub mod api;
pub mod auth;
pub mod dashboard;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::kafka::processor::Handles;
use crate::storage::Storage;

pub use auth::ApiToken;

/// What the server needs besides the processor's handles.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// The storage directory the processor writes the documents to.
    pub storage_dir: PathBuf,
    /// When set, `/api/v1/*` needs `Authorization: Bearer <token>`.
    pub api_token: Option<ApiToken>,
}

/// The state every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub handles: Handles,
    pub storage: Storage,
    pub token: Option<Arc<ApiToken>>,
}

/// The router; `serve` binds it. `/metrics`, `/healthz`, `/readyz` and the dashboard's page and
/// assets are open; the API (the dashboard's data) needs the token when one is set.
pub fn router(handles: Handles, options: HttpOptions) -> Router {
    let state = AppState {
        handles,
        storage: Storage::new(options.storage_dir),
        token: options.api_token.map(Arc::new),
    };
    let api = api::routes().route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::require_token,
    ));
    Router::new()
        .merge(api)
        .merge(dashboard::routes())
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .with_state(state)
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.handles.metrics.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.handles.ready.load(Ordering::Relaxed) {
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
    options: HttpOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<Server> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let app = router(handles, options);
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok(Server { addr, task })
}
