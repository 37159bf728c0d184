//! Test harness: runs the real `game-server` binary on 127.0.0.1 and talks to it
//! over real sockets.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

pub mod redis;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use game_server::protocol::{ClientMsg, Encoding, ServerMsg};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-0123456789abcdef";
/// Hang guard only: no test asserts on timing.
pub const GUARD: Duration = Duration::from_secs(20);

static SEQ: AtomicU32 = AtomicU32::new(0);

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "gs-test-{}-{}-{}",
        tag,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
}

impl Server {
    /// Start with `--dev`, a known token secret, a fresh data dir and `extra` flags.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_in(&temp_dir("srv"), extra)
    }

    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_with_env(data_dir, extra, &[])
    }

    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::spawn(data_dir, true, extra, env)
    }

    /// Production mode (no --dev): no /login, /admin needs the admin token.
    pub fn start_prod(extra: &[&str]) -> Server {
        Self::spawn(&temp_dir("prod"), false, extra, &[])
    }

    pub fn spawn(data_dir: &Path, dev: bool, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_game-server"));
        cmd.args(["--listen", "127.0.0.1:0", "--token-secret", SECRET])
            .env_remove("GAME_DEV");
        if dev {
            cmd.arg("--dev");
        }
        cmd.arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn game-server");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).expect("read listen line");
        let addr = line
            .trim()
            .strip_prefix("game-server listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = out.read_to_end(&mut sink);
        });
        Server {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn token(&self, player: &str) -> String {
        game_server::token::issue(SECRET.as_bytes(), player, 600)
    }

    pub fn sigterm(&self) {
        // SAFETY: signalling our own child, not yet waited for.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait for exit (hang-guarded) and return the exit status code.
    pub fn wait(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + GUARD;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(std::time::Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn metrics(&self) -> String {
        http(self.addr, "GET", "/metrics", None, &[]).1
    }

    /// Value of one sample line (name including labels), 0 if absent.
    pub fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics(), sample)
    }

    /// Poll /metrics until `pred(value)` holds (hang-guarded).
    pub async fn wait_metric(&self, sample: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let v = self.metric(sample);
            if pred(v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "metric {sample} stuck at {v}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            (name == sample).then(|| v.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// Minimal HTTP/1.1 client (one request per connection).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(GUARD)).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).to_string();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // Chunked bodies are fine for substring checks; metrics are Content-Length.
    (status, body)
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct ConnectOpts<'a> {
    pub token: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub encoding: Encoding,
}

/// Open a WebSocket; Err carries the HTTP status of a refused upgrade.
pub async fn connect_raw(url: &str, o: ConnectOpts<'_>) -> Result<(Ws, Option<String>), u16> {
    let url = match o.token {
        Some(t) => format!("{url}?token={t}"),
        None => url.to_string(),
    };
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(o.encoding.subprotocol()),
    );
    if let Some(origin) = o.origin {
        req.headers_mut()
            .insert("Origin", HeaderValue::from_str(origin).unwrap());
    }
    match tokio::time::timeout(GUARD, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect hang")
    {
        Ok((ws, resp)) => {
            let proto = resp
                .headers()
                .get("Sec-WebSocket-Protocol")
                .map(|v| v.to_str().unwrap().to_string());
            Ok((ws, proto))
        }
        Err(tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("connect failed: {e}"),
    }
}

/// A protocol-speaking test client.
pub struct Client {
    pub ws: Ws,
    pub enc: Encoding,
    /// Answer server app-level pings automatically in `recv`.
    pub auto_pong: bool,
}

#[derive(Debug)]
pub enum Closed {
    Frame(u16, String),
    NoFrame(String),
}

impl Client {
    pub async fn connect(srv: &Server, player: &str, enc: Encoding) -> Client {
        let tok = srv.token(player);
        let (ws, proto) = connect_raw(
            &srv.ws_url(),
            ConnectOpts {
                token: Some(&tok),
                origin: None,
                encoding: enc,
            },
        )
        .await
        .expect("upgrade refused");
        assert_eq!(proto.as_deref(), Some(enc.subprotocol()));
        let mut c = Client {
            ws,
            enc,
            auto_pong: true,
        };
        match c.recv().await {
            ServerMsg::Welcome { player: p, .. } => assert_eq!(p, player),
            m => panic!("expected welcome, got {m:?}"),
        }
        c
    }

    pub async fn send(&mut self, m: &ClientMsg) {
        let mut b = BytesMut::new();
        self.enc.encode_client(m, &mut b);
        let msg = match self.enc {
            Encoding::Json => Message::Text(String::from_utf8(b.to_vec()).unwrap().into()),
            Encoding::Binary => Message::Binary(b.freeze()),
        };
        self.ws.send(msg).await.expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) -> Result<(), tungstenite::Error> {
        self.ws.send(m).await
    }

    /// Next protocol message, or the close outcome.
    pub async fn next(&mut self) -> Result<ServerMsg, Closed> {
        loop {
            let m = tokio::time::timeout(GUARD, self.ws.next())
                .await
                .expect("recv hang");
            let data = match m {
                None => return Err(Closed::NoFrame("eof".into())),
                Some(Err(e)) => return Err(Closed::NoFrame(e.to_string())),
                Some(Ok(Message::Close(Some(f)))) => {
                    return Err(Closed::Frame(u16::from(f.code), f.reason.to_string()));
                }
                Some(Ok(Message::Close(None))) => {
                    return Err(Closed::Frame(u16::from(CloseCode::Status), String::new()));
                }
                Some(Ok(Message::Text(t))) => {
                    assert_eq!(self.enc, Encoding::Json, "text frame on binary session");
                    bytes::Bytes::from(t)
                }
                Some(Ok(Message::Binary(b))) => {
                    assert_eq!(self.enc, Encoding::Binary, "binary frame on json session");
                    b
                }
                Some(Ok(_)) => continue,
            };
            let msg = self
                .enc
                .decode_server(&data)
                .expect("decode server message");
            if let (true, ServerMsg::Ping { id, .. }) = (self.auto_pong, &msg) {
                let id = *id;
                self.send(&ClientMsg::Pong { id }).await;
                continue;
            }
            return Ok(msg);
        }
    }

    pub async fn recv(&mut self) -> ServerMsg {
        match self.next().await {
            Ok(m) => m,
            Err(c) => panic!("connection closed: {c:?}"),
        }
    }

    /// Read until the close; returns (code, reason).
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            match self.next().await {
                Ok(_) => continue,
                Err(Closed::Frame(c, r)) => return (c, r),
                Err(Closed::NoFrame(e)) => panic!("connection ended without a close frame: {e}"),
            }
        }
    }

    /// Join and return (entity id, resumed, snapshot).
    pub async fn join(
        &mut self,
        room: &str,
    ) -> (u32, bool, Vec<game_server::protocol::Entity>, i64) {
        self.send(&ClientMsg::Join { room: room.into() }).await;
        loop {
            match self.recv().await {
                ServerMsg::Joined {
                    you,
                    resumed,
                    ents,
                    gold,
                    ..
                } => return (you, resumed, ents, gold),
                ServerMsg::Delta { .. } => continue,
                m => panic!("expected joined, got {m:?}"),
            }
        }
    }

    /// Read deltas until `pred` holds for one; returns it.
    pub async fn delta_until(&mut self, mut pred: impl FnMut(&ServerMsg) -> bool) -> ServerMsg {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            assert!(tokio::time::Instant::now() < deadline, "no matching delta");
            let m = self.recv().await;
            if matches!(m, ServerMsg::Delta { .. }) && pred(&m) {
                return m;
            }
        }
    }

    /// Liveness probe: an app ping gets its pong.
    pub async fn ping(&mut self, id: u32) {
        self.send(&ClientMsg::Ping { id, ts: 7 }).await;
        loop {
            if let ServerMsg::Pong { id: got, ts } = self.recv().await
                && got == id
            {
                assert_eq!(ts, 7);
                return;
            }
        }
    }
}
