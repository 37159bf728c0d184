//! Session liveness over real sockets: heartbeat kicks, slow consumers, shutdown.

mod common;

use common::{Client, GUARD, Server};
use game_server::protocol::{Encoding, ServerMsg};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

#[tokio::test]
async fn silent_client_is_kicked_by_heartbeat() {
    let srv = Server::start(&[
        "--heartbeat-interval-ms",
        "250",
        "--heartbeat-timeout-ms",
        "1500",
    ]);
    // A live client answers pings (tungstenite answers WebSocket pings, Client answers app pings).
    let mut live = Client::connect(&srv, "alive", Encoding::Json).await;
    live.join("hb").await;
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let live_task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => return live,
                m = live.next() => { m.expect("the live session stays open"); }
            }
        }
    });

    let mut silent = Client::connect(&srv, "silent", Encoding::Binary).await;
    silent.auto_pong = false;
    // Read nothing and send nothing until the server gives up on it.
    srv.wait_metric("game_kicks_total{reason=\"heartbeat_timeout\"}", |v| {
        v >= 1.0
    })
    .await;
    let mut saw_ping = false;
    let (code, reason) = loop {
        match silent.next().await {
            Ok(ServerMsg::Ping { .. }) => saw_ping = true,
            Ok(_) => {}
            Err(common::Closed::Frame(c, r)) => break (c, r),
            Err(e) => panic!("no close frame: {e:?}"),
        }
    };
    assert!(saw_ping, "the server pinged before kicking");
    assert_eq!((code, reason.as_str()), (4000, "heartbeat_timeout"));

    // Several heartbeat timeouts later the live session is still there.
    stop.send(()).unwrap();
    let mut live = live_task.await.unwrap();
    live.ping(1).await;
    assert_eq!(
        srv.metric("game_kicks_total{reason=\"heartbeat_timeout\"}"),
        1.0
    );
}

#[tokio::test]
async fn slow_consumer_is_disconnected_not_buffered() {
    let srv = Server::start(&[
        "--npcs-per-room",
        "300",
        "--outbound-queue",
        "8",
        "--heartbeat-timeout-ms",
        "60000",
    ]);
    let mut by = Client::connect(&srv, "fast", Encoding::Binary).await;
    by.join("busy").await;

    // A client with a tiny receive buffer that stops reading after joining.
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(sock.connect(srv.addr).await.unwrap());
    let mut req = format!("{}?token={}", srv.ws_url(), srv.token("sloth"))
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("ks.json.v1"),
    );
    let (ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    let mut slow = Client {
        ws,
        enc: Encoding::Json,
        auto_pong: false,
    };
    assert!(matches!(slow.recv().await, ServerMsg::Welcome { .. }));
    slow.join("busy").await;

    srv.wait_metric("game_kicks_total{reason=\"slow_consumer\"}", |v| v >= 1.0)
        .await;
    assert!(srv.metric("game_outbound_dropped_total") >= 1.0);
    // Once it reads again it finds the clear close code after the stale frames.
    assert_eq!(slow.expect_close().await, (4001, "slow_consumer".into()));

    // The fast member keeps getting deltas and answers.
    by.ping(1).await;
    by.delta_until(|_| true).await;
    srv.wait_metric("game_sessions_active", |v| v == 1.0).await;
}

#[tokio::test]
async fn sigterm_closes_sessions_with_1001_and_exits_cleanly() {
    let mut srv = Server::start(&[]);
    let mut a = Client::connect(&srv, "a", Encoding::Json).await;
    a.join("bye").await;
    let mut b = Client::connect(&srv, "b", Encoding::Binary).await;
    srv.sigterm();
    assert_eq!(a.expect_close().await, (1001, "server_shutdown".into()));
    assert_eq!(b.expect_close().await, (1001, "server_shutdown".into()));
    let code = tokio::task::spawn_blocking(move || srv.wait())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    let _ = GUARD;
}
