//! HTTP gateway: the WebSocket endpoint and the plain HTTP endpoints.

mod http;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::routing::{any, get, post};
use axum::serve::{IncomingStream, Listener};
use tokio::net::{TcpListener, TcpStream};

use crate::server::App;

/// Both ends of an accepted TCP connection (the kernel agent joins on the 4-tuple).
#[derive(Clone, Copy, Debug)]
pub struct ConnAddrs {
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

/// TCP listener that sets TCP_NODELAY on every accepted socket: small interactive
/// frames must never wait for Nagle.
pub struct NoDelayListener(pub TcpListener);

impl Listener for NoDelayListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (s, a) = Listener::accept(&mut self.0).await;
        let _ = s.set_nodelay(true);
        (s, a)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl Connected<IncomingStream<'_, NoDelayListener>> for ConnAddrs {
    fn connect_info(s: IncomingStream<'_, NoDelayListener>) -> Self {
        let peer = *s.remote_addr();
        let local = s
            .io()
            .local_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        ConnAddrs { peer, local }
    }
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
