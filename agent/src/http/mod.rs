//! The agent's one HTTP listener: /metrics, /healthz, /readyz, /incidents and the page. Routes
//! only read the sinks' handles.
pub mod ui;

use std::{net::SocketAddr, sync::Arc};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::header,
    response::IntoResponse,
    routing::get,
};

use crate::sinks::{
    board::{ListQuery, SharedBoard},
    prometheus::Metrics,
};

pub struct AppState {
    pub metrics: Arc<Metrics>,
    /// Whether the kernel probes are loaded (/readyz).
    pub probes_loaded: bool,
    /// The incident listing (None when correlation is not running).
    pub incidents: Option<SharedBoard>,
    /// The page and its timeline (None: only the JSON endpoints above).
    pub ui: Option<ui::Page>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/incidents", get(incidents))
        .merge(ui::routes())
        .with_state(state)
}

async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    match st.metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics: {e}\n"),
        )
            .into_response(),
    }
}

async fn incidents(
    State(st): State<Arc<AppState>>,
    Query(q): Query<ListQuery>,
) -> impl IntoResponse {
    let body = match &st.incidents {
        Some(board) => board.lock().expect("board lock").listing(&q),
        None => serde_json::json!({ "incidents": [], "note": "correlation is not running" }),
    };
    Json(body)
}

async fn ready(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    if st.probes_loaded {
        (axum::http::StatusCode::OK, "ready\n")
    } else {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "probes not loaded\n",
        )
    }
}

pub async fn serve(
    addr: SocketAddr,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    tracing::info!(addr = %listener.local_addr()?, "http listening (/ the incident page, /metrics, /incidents, /healthz, /readyz)");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
