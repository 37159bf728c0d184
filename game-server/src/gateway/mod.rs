//! HTTP gateway: the WebSocket endpoint and the plain HTTP endpoints.

pub mod admission;
mod http;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get, post};

use crate::server::App;

/// Both ends of an accepted TCP connection (the kernel agent joins on the 4-tuple).
#[derive(Clone, Copy, Debug)]
pub struct ConnAddrs {
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

pub fn router(app: Arc<App>) -> Router {
    let mut r = Router::new()
        .route("/ws", any(ws::upgrade))
        .route("/metrics", get(http::metrics))
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/rooms", get(http::rooms))
        .route("/leaderboard", get(http::leaderboard))
        .route("/admin/batch", post(http::admin_batch));
    if app.cfg.dev {
        r = r.route("/login", post(http::login));
    }
    r.with_state(app)
}
