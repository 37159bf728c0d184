//! The server stops within its shutdown grace even when its OTLP endpoint vanished mid-run,
//! with spans still queued in the exporter, and flushes player data on the way out.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Client, Server, temp_dir};
use game_server::protocol::{ClientMsg, Encoding, Input, ServerMsg};

const GRACE_MS: u64 = 1500;

/// An OTLP/HTTP endpoint that answers until `vanish` is set, then either stops answering while
/// keeping its port (a frozen agent: `kill -STOP`, a partition) or closes it (a killed agent).
struct Endpoint {
    url: String,
    posts: Arc<AtomicUsize>,
    vanish: Arc<AtomicBool>,
}

fn endpoint(close_port: bool) -> Endpoint {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let posts = Arc::new(AtomicUsize::new(0));
    let vanish = Arc::new(AtomicBool::new(false));
    let (p, v) = (posts.clone(), vanish.clone());
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        loop {
            if v.load(Ordering::SeqCst) && close_port {
                // Killed: listener and every connection closed.
                drop(held);
                return;
            }
            match l.accept() {
                Ok((conn, _)) => {
                    conn.set_nonblocking(false).unwrap();
                    if v.load(Ordering::SeqCst) {
                        // Frozen: the connection is held open and never read.
                        held.push(conn);
                        continue;
                    }
                    held.push(conn.try_clone().unwrap());
                    let (p, v) = (p.clone(), v.clone());
                    std::thread::spawn(move || serve(conn, &p, &v, close_port));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    Endpoint { url, posts, vanish }
}

fn serve(conn: std::net::TcpStream, posts: &AtomicUsize, vanish: &AtomicBool, close_port: bool) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut len = 0usize;
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
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
        if r.read_exact(&mut body).is_err() {
            return;
        }
        if vanish.load(Ordering::SeqCst) {
            if close_port {
                return;
            }
            // Frozen mid-request: never answer.
            std::thread::sleep(Duration::from_secs(3600));
        }
        posts.fetch_add(1, Ordering::SeqCst);
        let _ = w.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
        );
    }
}

async fn collect(c: &mut Client, seqs: std::ops::RangeInclusive<u32>) -> i64 {
    let mut gold = 0;
    for seq in seqs {
        c.send(&ClientMsg::Input(Input {
            seq,
            dx: 1,
            dy: 0,
            collect: true,
        }))
        .await;
        if let ServerMsg::Delta { gold: g, .. } = c
            .delta_until(|m| matches!(m, ServerMsg::Delta { ack, .. } if *ack == seq))
            .await
        {
            gold = g;
        }
    }
    gold
}

async fn stops_within_grace(close_port: bool) {
    let ep = endpoint(close_port);
    let dir = temp_dir("stop");
    let grace = GRACE_MS.to_string();
    let mut srv = Server::start_with_env(
        &dir,
        // Only the shutdown flush can write the player's data.
        &[
            "--flush-interval-ms",
            "600000",
            "--shutdown-grace-ms",
            &grace,
        ],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &ep.url),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    );
    let mut c = Client::connect(&srv, "stayer", Encoding::Binary).await;
    c.join("mine").await;
    assert_eq!(collect(&mut c, 1..=3).await, 3);
    // The endpoint worked: spans were exported.
    let t = Instant::now();
    while ep.posts.load(Ordering::SeqCst) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no export reached the endpoint"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ep.vanish.store(true, Ordering::SeqCst);
    // More play after the endpoint vanished: these spans queue in the exporter.
    assert_eq!(collect(&mut c, 4..=6).await, 6);
    tokio::time::sleep(Duration::from_millis(600)).await;

    let t = Instant::now();
    srv.sigterm();
    assert_eq!(c.expect_close().await.0, 1001);
    drop(c);
    let code = tokio::task::spawn_blocking(move || srv.wait())
        .await
        .unwrap();
    let took = t.elapsed();
    assert_eq!(code, Some(0));
    // Grace plus a margin for process start-up noise on a shared machine.
    assert!(
        took < Duration::from_millis(GRACE_MS + 700),
        "exit took {took:?}, grace is {GRACE_MS} ms"
    );

    // The player's data was flushed on the way out.
    let srv = Server::start_in(&dir, &[]);
    let mut c = Client::connect(&srv, "stayer", Encoding::Json).await;
    c.send(&ClientMsg::Join {
        room: "mine".into(),
    })
    .await;
    loop {
        if let ServerMsg::Joined { gold, .. } = c.recv().await {
            assert_eq!(gold, 6);
            break;
        }
    }
}

#[tokio::test]
async fn stops_within_grace_when_the_otlp_endpoint_froze() {
    stops_within_grace(false).await;
}

#[tokio::test]
async fn stops_within_grace_when_the_otlp_endpoint_was_killed() {
    stops_within_grace(true).await;
}
