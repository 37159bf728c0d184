//! Plain HTTP endpoints: metrics, health, dev login, admin batch trigger.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::server::App;
use crate::token;

pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready while accepting sessions and the worker pool takes work.
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if !app.bg.ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "worker pool unavailable").into_response()
    } else {
        "ready".into_response()
    }
}

/// The rooms this server runs and their players (operators, and the multi-server test).
pub async fn rooms(State(app): State<Arc<App>>) -> Response {
    let rooms: Vec<_> = app
        .rooms
        .list()
        .into_iter()
        .map(|(name, members)| serde_json::json!({"room": &*name, "members": members}))
        .collect();
    Json(serde_json::json!({
        "server": app.directory.as_ref().map(|d| d.me().to_owned()),
        "rooms": rooms,
    }))
    .into_response()
}

/// The leaderboard's top 10 from Redis (503 without Redis or when it is unreachable).
pub async fn leaderboard(State(app): State<Arc<App>>) -> Response {
    let Some(redis) = &app.redis else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no Redis configured").into_response();
    };
    match crate::cache::leaderboard_top(redis, 10).await {
        Ok(top) => Json(serde_json::json!({
            "top": top.into_iter().map(|(p, g)| serde_json::json!({"player": p, "gold": g})).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}")).into_response(),
    }
}

#[derive(Deserialize, Default)]
pub struct LoginReq {
    player: Option<String>,
}

/// Dev-mode login: issues a signed session token for any valid player id.
pub async fn login(State(app): State<Arc<App>>, body: Option<Json<LoginReq>>) -> Response {
    let player = body
        .and_then(|Json(b)| b.player)
        .unwrap_or_else(|| format!("guest-{:08x}", app.new_session_id() as u32));
    if !token::valid_player_id(&player) {
        return (
            StatusCode::BAD_REQUEST,
            "player must match [A-Za-z0-9_-]{1,32}",
        )
            .into_response();
    }
    let t = token::issue(&app.secret, &player, app.cfg.token_ttl_secs);
    Json(serde_json::json!({
        "player": player,
        "token": t,
        "expires_in": app.cfg.token_ttl_secs,
    }))
    .into_response()
}

#[derive(Deserialize)]
pub struct BatchReq {
    kind: String,
    tasks: u32,
}

fn admin_allowed(app: &App, headers: &HeaderMap) -> bool {
    if app.cfg.dev {
        return true;
    }
    let Some(want) = app.cfg.admin_token.as_deref() else {
        return false;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|got| constant_time_eq(got.as_bytes(), want.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Trigger the scheduled batch job on demand (reproduces a task surge).
pub async fn admin_batch(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(req): Json<BatchReq>,
) -> Response {
    if !admin_allowed(&app, &headers) {
        return (StatusCode::UNAUTHORIZED, "admin token required").into_response();
    }
    if req.kind != crate::batch::FULL_SYNC {
        return (
            StatusCode::BAD_REQUEST,
            "unknown batch kind (supported: full_sync)",
        )
            .into_response();
    }
    let tasks = req.tasks.min(1_000_000);
    let r = crate::batch::full_sync(&app, tasks, "admin");
    Json(serde_json::json!({
        "kind": req.kind,
        "submitted": r.submitted,
        "rejected": r.rejected,
    }))
    .into_response()
}
