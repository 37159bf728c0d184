//! Gateway hardening over real sockets: origin allowlist, tokens, size limits,
//! malformed input, rate limits; each failure is a clear close that leaves other
//! sessions alone.

mod common;

use common::{Client, ConnectOpts, Server, connect_raw, http};
use game_server::protocol::{ClientMsg, Encoding, Input, ServerMsg};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn origin_and_token_are_enforced() {
    let srv = Server::start(&["--allowed-origin", "https://play.example"]);
    let url = srv.ws_url();
    let good = srv.token("erin");
    let opts = |token, origin| ConnectOpts {
        token,
        origin,
        encoding: Encoding::Json,
    };
    // Hostile page: valid token, wrong origin.
    assert_eq!(
        connect_raw(&url, opts(Some(&good), Some("https://evil.example")))
            .await
            .err(),
        Some(403)
    );
    // No token / forged token / token signed with another secret.
    assert_eq!(connect_raw(&url, opts(None, None)).await.err(), Some(401));
    let forged = good.replacen("erin", "root", 1);
    assert_eq!(
        connect_raw(&url, opts(Some(&forged), None)).await.err(),
        Some(401)
    );
    let other = game_server::token::issue(b"another-secret-xxxxxxxx", "erin", 60);
    assert_eq!(
        connect_raw(&url, opts(Some(&other), None)).await.err(),
        Some(401)
    );
    // Allowed origin with a good token, and a non-browser client (no Origin) with a good token.
    assert!(
        connect_raw(&url, opts(Some(&good), Some("https://play.example")))
            .await
            .is_ok()
    );
    assert!(connect_raw(&url, opts(Some(&good), None)).await.is_ok());

    let m = srv.metrics();
    assert_eq!(
        common::metric_value(&m, "game_handshake_rejected_total{reason=\"origin\"}"),
        1.0
    );
    assert_eq!(
        common::metric_value(
            &m,
            "game_handshake_rejected_total{reason=\"token_missing\"}"
        ),
        1.0
    );
    assert_eq!(
        common::metric_value(
            &m,
            "game_handshake_rejected_total{reason=\"token_invalid\"}"
        ),
        2.0
    );
}

#[tokio::test]
async fn dev_login_issues_a_working_token_and_is_absent_otherwise() {
    let srv = Server::start(&[]);
    let (status, body) = http(
        srv.addr,
        "POST",
        "/login",
        Some(r#"{"player":"frank"}"#),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    let tok = v["token"].as_str().unwrap();
    let (status, _) = http(
        srv.addr,
        "POST",
        "/login",
        Some(r#"{"player":"bad id!"}"#),
        &[],
    );
    assert_eq!(status, 400);
    let (mut ws, _) = connect_raw(
        &srv.ws_url(),
        ConnectOpts {
            token: Some(tok),
            origin: None,
            encoding: Encoding::Binary,
        },
    )
    .await
    .unwrap();
    use futures_util::StreamExt;
    let first = ws.next().await.unwrap().unwrap();
    let Message::Binary(b) = first else {
        panic!("binary welcome expected")
    };
    assert!(matches!(
        Encoding::Binary.decode_server(&b).unwrap(),
        ServerMsg::Welcome { player, .. } if player == "frank"
    ));

    // Without --dev there is no login endpoint, and a token secret is mandatory.
    let dir = common::temp_dir("prod");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_game-server"));
    let out = cmd
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env_remove("GAME_TOKEN_SECRET")
        .env_remove("GAME_DEV")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token-secret"));
}

#[tokio::test]
async fn health_ready_and_metrics_endpoints() {
    let srv = Server::start(&[]);
    assert_eq!(
        http(srv.addr, "GET", "/healthz", None, &[]),
        (200, "ok".into())
    );
    assert_eq!(http(srv.addr, "GET", "/readyz", None, &[]).0, 200);
    let m = srv.metrics();
    for name in [
        "game_sessions_active",
        "game_tick_overruns_total",
        "game_outbound_dropped_total",
        "game_received_bytes_total",
        "game_sent_bytes_total",
        "pool_",
    ] {
        assert!(m.contains(name), "metrics lack {name}");
    }
}

/// A healthy bystander session in the same room, to show failures stay isolated.
async fn bystander(srv: &Server) -> Client {
    let mut b = Client::connect(srv, "bystander", Encoding::Binary).await;
    b.join("shared").await;
    b
}

#[tokio::test]
async fn oversize_message_gets_1009_and_others_unaffected() {
    let srv = Server::start(&["--max-message-bytes", "1024"]);
    let mut by = bystander(&srv).await;
    let mut c = Client::connect(&srv, "big", Encoding::Json).await;
    c.join("shared").await;
    let huge = format!(r#"{{"t":"join","room":"{}"}}"#, "x".repeat(4096));
    c.send_raw(Message::Text(huge.into())).await.unwrap();
    let (code, reason) = c.expect_close().await;
    assert_eq!((code, reason.as_str()), (1009, "message_too_big"));
    by.ping(1).await;
    by.delta_until(|_| true).await;
    assert_eq!(
        srv.metric("game_kicks_total{reason=\"message_too_big\"}"),
        1.0
    );
}

#[tokio::test]
async fn malformed_messages_get_1007_and_others_unaffected() {
    let srv = Server::start(&[]);
    let mut by = bystander(&srv).await;

    let mut j = Client::connect(&srv, "badjson", Encoding::Json).await;
    j.send_raw(Message::Text(r#"{"t":"teleport","x":1}"#.into()))
        .await
        .unwrap();
    assert_eq!(j.expect_close().await, (1007, "malformed_message".into()));

    let mut b = Client::connect(&srv, "badbin", Encoding::Binary).await;
    b.join("shared").await;
    b.send_raw(Message::Binary(vec![0x03, 0x01].into()))
        .await
        .unwrap(); // truncated input
    assert_eq!(b.expect_close().await, (1007, "malformed_message".into()));

    // A text frame on a binary session is a different, equally clear, failure.
    let mut w = Client::connect(&srv, "wrongtype", Encoding::Binary).await;
    w.send_raw(Message::Text("{}".into())).await.unwrap();
    assert_eq!(w.expect_close().await, (1007, "wrong_frame_type".into()));

    by.ping(5).await;
    by.send(&ClientMsg::Input(Input {
        seq: 1,
        collect: true,
        ..Default::default()
    }))
    .await;
    by.delta_until(|m| matches!(m, ServerMsg::Delta { ack: 1, .. }))
        .await;
    assert_eq!(
        srv.metric("game_kicks_total{reason=\"malformed_message\"}"),
        2.0
    );
}

#[tokio::test]
async fn message_flood_is_rate_limited() {
    let srv = Server::start(&["--msg-rate", "20", "--msg-burst", "10"]);
    let mut by = bystander(&srv).await;
    let mut c = Client::connect(&srv, "flood", Encoding::Binary).await;
    c.auto_pong = false;
    for id in 0..200 {
        if c.send_raw(Message::Binary(
            vec![0x04, id, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0].into(),
        ))
        .await
        .is_err()
        {
            break;
        }
    }
    assert_eq!(c.expect_close().await, (4002, "rate_limited".into()));
    by.ping(3).await;
}
