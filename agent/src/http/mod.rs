//! The agent's one HTTP listener: /metrics, /healthz, /readyz (and later /incidents and the UI).
use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use tokio::sync::Mutex;

use super::metrics::Metrics;
use crate::probes::Probes;

pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub probes: Option<Arc<Mutex<Probes>>>,
    /// The incident listing (None when correlation is not running).
    pub incidents: Option<super::incidents::SharedBoard>,
    /// The page and its timeline (None: only the JSON endpoints above).
    pub ui: Option<Arc<super::ui::Ui>>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/incidents", get(super::incidents::handler))
        .merge(super::ui::routes())
        .with_state(state)
}

async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let mut extra = Vec::new();
    if let Some(probes) = &st.probes {
        let p = probes.lock().await;
        match p.counters() {
            Ok(now) => st.metrics.sync_kernel(&now),
            Err(e) => tracing::warn!(error = %e, "reading kernel counters failed"),
        }
        match p.runq_histograms() {
            Ok(h) => extra.push(super::metrics::runq_histograms(&h, comm_of)),
            Err(e) => tracing::warn!(error = %e, "reading run-queue histograms failed"),
        }
    }
    match st.metrics.encode(&extra) {
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

fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_owned())
        .unwrap_or_else(|_| "exited".into())
}

async fn ready(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    if st.probes.is_some() {
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
