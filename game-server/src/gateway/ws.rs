//! WebSocket upgrade: origin allowlist, session token, encoding negotiation, limits.

use std::sync::Arc;

use axum::Extension;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tracing::{Instrument, info_span};

use super::ConnAddrs;
use super::admission::ConnSlot;
use crate::protocol::Encoding;
use crate::server::App;
use crate::session::{self, SessionParams};
use crate::token;

#[derive(Deserialize, Default)]
pub struct WsQuery {
    token: Option<String>,
    encoding: Option<String>,
    resume: Option<String>,
}

fn reject(app: &App, status: StatusCode, reason: &'static str) -> Response {
    app.metrics
        .handshake_rejected_total
        .with_label_values(&[reason])
        .inc();
    tracing::info!(reason, "websocket upgrade rejected");
    (status, reason).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Pick the encoding: the client's first supported subprotocol, else `?encoding=`, else JSON.
fn negotiate<'a>(
    protocols: impl IntoIterator<Item = &'a HeaderValue>,
    q: &WsQuery,
) -> Result<(Encoding, Option<HeaderValue>), ()> {
    for p in protocols {
        if let Some(e) = p.to_str().ok().and_then(Encoding::from_subprotocol) {
            // Our own static name, not a clone of the request's: a request header value is a
            // slice of hyper's 8 KiB read buffer, and the WebSocket keeps the selected
            // protocol for the whole session, which kept that buffer alive per session.
            return Ok((e, Some(HeaderValue::from_static(e.subprotocol()))));
        }
    }
    match q.encoding.as_deref() {
        None => Ok((Encoding::Json, None)),
        Some(s) => Encoding::parse(s).map(|e| (e, None)).ok_or(()),
    }
}

/// What the upgrade admits: the token's player, the encoding, and the subprotocol to echo.
#[derive(Debug)]
pub struct Admitted {
    pub player: String,
    pub encoding: Encoding,
    pub protocol: Option<HeaderValue>,
}

/// The upgrade's checks (origin allowlist, token, encoding), pure so they can be fuzzed
/// (fuzz/fuzz_targets/ws_handshake.rs). Err is the status and the metric's reason label.
pub fn admit<'a>(
    allowed_origins: &[String],
    secret: &[u8],
    headers: &HeaderMap,
    q: &WsQuery,
    protocols: impl IntoIterator<Item = &'a HeaderValue>,
) -> Result<Admitted, (StatusCode, &'static str)> {
    // Browsers always send Origin; it must be on the allowlist. Non-browser clients
    // (no Origin) cannot be driven by a hostile page, and still need a valid token.
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ok = origin
            .to_str()
            .is_ok_and(|o| allowed_origins.iter().any(|a| a == o));
        if !ok {
            return Err((StatusCode::FORBIDDEN, "origin"));
        }
    }
    let Some(tok) = q.token.as_deref().or_else(|| bearer(headers)) else {
        return Err((StatusCode::UNAUTHORIZED, "token_missing"));
    };
    let player =
        token::verify(secret, tok).map_err(|_| (StatusCode::UNAUTHORIZED, "token_invalid"))?;
    let Ok((encoding, protocol)) = negotiate(protocols, q) else {
        return Err((StatusCode::BAD_REQUEST, "encoding"));
    };
    Ok(Admitted {
        player,
        encoding,
        protocol,
    })
}

pub async fn upgrade(
    State(app): State<Arc<App>>,
    ConnectInfo(addrs): ConnectInfo<ConnAddrs>,
    slot: Option<Extension<ConnSlot>>,
    headers: HeaderMap,
    Query(q): Query<WsQuery>,
    mut ws: WebSocketUpgrade,
) -> Response {
    if app.shutdown.is_cancelled() {
        return reject(&app, StatusCode::SERVICE_UNAVAILABLE, "shutting_down");
    }
    let admitted = admit(
        &app.cfg.allowed_origins,
        &app.secret,
        &headers,
        &q,
        ws.requested_protocols(),
    );
    let Admitted {
        player,
        encoding,
        protocol,
    } = match admitted {
        Ok(a) => a,
        Err((status, reason)) => return reject(&app, status, reason),
    };
    if let Some(p) = protocol {
        ws.set_selected_protocol(p);
    }
    let session_id = app.new_session_id();
    let sid = format!("{session_id:016x}");
    // Short span covering the handshake: the agent learns the 4-tuple while the session lives.
    let accept = info_span!("ws.accept", "otel.kind" = "server",
        "network.peer.address" = %addrs.peer.ip(), "network.peer.port" = addrs.peer.port(),
        "network.local.address" = %addrs.local.ip(), "network.local.port" = addrs.local.port(),
        "network.transport" = "tcp", "network.protocol.name" = "websocket",
        "session.id" = %sid, "player.id" = %player, "game.encoding" = encoding.as_str());
    let session = info_span!(parent: None, "ws.session", "otel.kind" = "server",
        "network.peer.address" = %addrs.peer.ip(), "network.peer.port" = addrs.peer.port(),
        "network.local.address" = %addrs.local.ip(), "network.local.port" = addrs.local.port(),
        "network.transport" = "tcp", "network.protocol.name" = "websocket",
        "session.id" = %sid, "player.id" = %player, "game.encoding" = encoding.as_str(),
        "ws.close.code" = tracing::field::Empty, "ws.close.reason" = tracing::field::Empty);
    session.follows_from(&accept);
    let max = app.cfg.max_message_bytes;
    let tracker = app.sessions.clone();
    // tungstenite defaults to 128 KiB read and write buffers per connection; our frames
    // are small, so smaller buffers cut per-session memory. The write buffer cap bounds
    // what a stalled peer can pin (the outbound queue bound does the rest).
    ws.max_message_size(max)
        .max_frame_size(max)
        // tungstenite zero-fills the free part of its read buffer before every read: 1 KiB
        // (inputs are ~10 bytes) instead of 8 KiB made that memset cheap; longer messages
        // (up to --max-message-bytes) grow it as needed.
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(1024 * 1024)
        // The failure callback lives as long as the session task, so it must not hold the span.
        .on_failed_upgrade(
            move |e| tracing::info!(session.id = %sid, "websocket upgrade failed: {e}"),
        )
        .on_upgrade(move |socket| {
            // Handshake done: end ws.accept now.
            drop(accept);
            let params = SessionParams {
                session_id,
                player,
                encoding,
                resume: q.resume,
            };
            // Built outside the async block, so the socket is not also kept in it.
            let run = session::run(socket, app, params);
            tracker.track_future(
                async move {
                    run.await;
                    // The connection's place under the cap is held until the session ends.
                    drop(slot);
                }
                .instrument(session),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The selected protocol lives as long as the session; it must not be a slice of the
    /// request's read buffer (hyper parses header values as slices of it), or every session
    /// keeps that whole buffer.
    #[test]
    fn selected_protocol_does_not_borrow_the_request_buffer() {
        let buf = bytes::Bytes::from(vec![b'x'; 8192]);
        let mut raw = bytes::BytesMut::from(&buf[..]);
        raw[100..109].copy_from_slice(b"ks.bin.v1");
        let raw = raw.freeze();
        let requested = HeaderValue::from_maybe_shared(raw.slice(100..109)).unwrap();
        let range = raw.as_ptr_range();
        assert!(
            range.contains(&requested.as_bytes().as_ptr()),
            "test setup: a slice"
        );
        let (enc, selected) = negotiate([&requested], &WsQuery::default()).unwrap();
        let selected = selected.unwrap();
        assert_eq!(enc, Encoding::Binary);
        assert_eq!(selected, requested);
        assert!(
            !range.contains(&selected.as_bytes().as_ptr()),
            "the selected protocol points into the request's buffer"
        );
    }
}
