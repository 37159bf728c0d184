//! Spans reach an OTLP/HTTP collector with the attributes the kernel agent joins on
//! (4-tuple, session id, thread id). The collector is a tiny in-test HTTP server;
//! the exporter is told to speak `http/json` so the test can read it without protobuf.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use common::{Client, Server, temp_dir};
use game_server::protocol::{ClientMsg, Encoding, Input};
use serde_json::Value;

/// Accept OTLP/HTTP posts, keeping each body.
fn collector() -> (String, Arc<Mutex<Vec<Value>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
    let b = bodies.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { return };
            let b = b.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        r.read_line(&mut line).unwrap();
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = l.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    if let Ok(v) = serde_json::from_slice(&body) {
                        b.lock().unwrap().push(v);
                    }
                    let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
                }
            });
        }
    });
    (url, bodies)
}

fn attr<'a>(attrs: &'a Value, key: &str) -> Option<&'a Value> {
    attrs
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

fn attr_str(attrs: &Value, key: &str) -> Option<String> {
    let v = attr(attrs, key)?;
    v.get("stringValue")
        .and_then(|s| s.as_str().map(String::from))
        .or_else(|| {
            v.get("intValue").map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        })
}

#[tokio::test]
async fn spans_carry_the_four_tuple_and_thread_ids() {
    let (url, bodies) = collector();
    let mut srv = Server::start_with_env(
        &temp_dir("otlp"),
        &["--flush-interval-ms", "100"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ],
    );
    let mut c = Client::connect(&srv, "traced", Encoding::Binary).await;
    c.join("spans").await;
    c.send(&ClientMsg::Input(Input {
        seq: 1,
        collect: true,
        ..Default::default()
    }))
    .await;
    c.ping(1).await;
    srv.wait_metric("game_persistence_records_written_total", |v| v >= 1.0)
        .await;
    drop(c);
    // Clean shutdown flushes the span exporter.
    srv.sigterm();
    let pid = srv.child.id().to_string();
    let server_port = srv.addr.port().to_string();
    tokio::task::spawn_blocking(move || srv.wait())
        .await
        .unwrap();

    let bodies = bodies.lock().unwrap().clone();
    let mut spans = Vec::new();
    for b in &bodies {
        for rs in b["resourceSpans"].as_array().into_iter().flatten() {
            let res = &rs["resource"]["attributes"];
            assert_eq!(
                attr_str(res, "service.name").as_deref(),
                Some("game-server")
            );
            assert_eq!(attr_str(res, "process.pid").as_deref(), Some(pid.as_str()));
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                spans.extend(ss["spans"].as_array().into_iter().flatten().cloned());
            }
        }
    }
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name} span among {}", spans.len()))
    };
    let accept = &find("ws.accept")["attributes"];
    let session = &find("ws.session")["attributes"];
    for a in [accept, session] {
        assert_eq!(attr_str(a, "network.transport").as_deref(), Some("tcp"));
        assert_eq!(
            attr_str(a, "network.peer.address").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            attr_str(a, "network.local.address").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            attr_str(a, "network.local.port").as_deref(),
            Some(server_port.as_str())
        );
        assert!(attr_str(a, "network.peer.port").is_some());
        assert!(attr_str(a, "session.id").is_some());
    }
    assert_eq!(
        attr_str(accept, "session.id"),
        attr_str(session, "session.id"),
        "accept and session spans name the same session"
    );
    assert_eq!(
        attr_str(accept, "network.peer.port"),
        attr_str(session, "network.peer.port")
    );
    assert!(attr_str(session, "ws.close.reason").is_some());
    assert_eq!(
        attr_str(&find("room.join")["attributes"], "room.id").as_deref(),
        Some("spans")
    );
    let flush = &find("persistence.flush")["attributes"];
    assert_eq!(attr_str(flush, "db.system.name").as_deref(), Some("sqlite"));
    let tid: i64 = attr_str(flush, "thread.id").unwrap().parse().unwrap();
    assert!(tid > 0, "flush span carries the worker's Linux tid");
}
