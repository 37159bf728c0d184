//! The load generator: one task per bot session, all in one runtime.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::BytesMut;
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;

use super::percentile;
use crate::protocol::{ClientMsg, Encoding, Input, ServerMsg, unix_micros};

/// Each bot pings once a second and asks to collect gold on every 10th input (the workload the
/// Colyseus peer reproduces: game-server/peer/workload.json).
pub const PING_EVERY: Duration = Duration::from_secs(1);
pub const COLLECT_EVERY_INPUTS: u32 = 10;

#[derive(clap::Args, Clone, Debug)]
pub struct LoadOpts {
    /// WebSocket URL of the server; several (comma-separated) spread the bots over them as
    /// entry points.
    #[arg(long, env = "BOTS_URL", default_value = "ws://127.0.0.1:7000/ws")]
    pub url: String,
    /// Bot sessions to open.
    #[arg(long, default_value_t = 100)]
    pub sessions: usize,
    /// Rooms to spread them over (bot i joins room i % M).
    #[arg(long, default_value_t = 4)]
    pub rooms: usize,
    /// Inputs per second per bot.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds of steady load after every bot connected.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    #[arg(long, default_value = "binary", value_parser = ["json", "binary"])]
    pub encoding: String,
    /// Mint tokens locally with the server's secret; without it, bots use the dev /login.
    #[arg(long, env = "GAME_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// New sessions per second while ramping up.
    #[arg(long, default_value_t = 500.0)]
    pub connect_rate: f64,
    /// Player id prefix (bot ids are PREFIX-<i>).
    #[arg(long, default_value = "bot")]
    pub player_prefix: String,
    /// Print a machine-readable JSON summary instead of the text report.
    #[arg(long)]
    pub json: bool,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
    /// When the server closes a session or goes away, reconnect (to the next of the
    /// comma-separated --url entries) and join the room again, until the run ends.
    #[arg(long)]
    pub reconnect: bool,
    /// Idle sessions: join the room, then send nothing but the answers to the server's
    /// heartbeat pings (no inputs, no pings of our own), as an idle client does.
    #[arg(long)]
    pub idle: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Every bot has connected (or failed to): measurement starts.
    Steady,
    /// Measurement ends; bots are still connected until the hook returns.
    Done,
}

pub type Hook = Arc<dyn Fn(Phase) -> BoxFuture<'static, ()> + Send + Sync>;

#[derive(Default)]
struct Progress {
    connected: AtomicU64,
    failed: AtomicU64,
    closed: AtomicU64,
    inputs: AtomicU64,
    deltas: AtomicU64,
    bytes: AtomicU64,
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct Pct {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Pct {
    fn from(mut v: Vec<u32>) -> Self {
        v.sort_unstable();
        let ms = |p: f64| percentile(&v, p).map(|x| x as f64 / 1000.0).unwrap_or(0.0);
        Pct {
            count: v.len(),
            p50_ms: ms(50.0),
            p90_ms: ms(90.0),
            p99_ms: ms(99.0),
            p999_ms: ms(99.9),
            max_ms: ms(100.0),
        }
    }
}

#[derive(Serialize, Debug, Clone, Default)]
pub struct Summary {
    pub sessions: usize,
    pub rooms: usize,
    pub rate_hz: f64,
    pub encoding: String,
    pub connected: u64,
    pub connect_failed: u64,
    /// Sessions the server closed before the end, by reason.
    pub closed_early: BTreeMap<String, u64>,
    /// `redirect` messages followed (the room lived on another server).
    pub redirects: u64,
    /// Reconnects after a lost server (with --reconnect).
    pub reconnects: u64,
    pub steady_secs: f64,
    pub inputs_per_sec: f64,
    pub deltas_per_sec: f64,
    pub bytes_in_per_sec: f64,
    /// App-level ping → pong.
    pub rtt: Pct,
    /// Input sent → delta acknowledging it received.
    pub input_to_ack: Pct,
    /// Delta sent by the server (its `ts`) → received by the bot (same host clock).
    pub delta_latency: Pct,
}

#[derive(Default)]
struct BotResult {
    rtt: Vec<u32>,
    ack: Vec<u32>,
    delta: Vec<u32>,
    closed: Option<String>,
    redirects: u64,
    reconnects: u64,
}

fn host_port(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("ws://")
        .context("only ws:// URLs are supported")?;
    Ok(rest.split('/').next().unwrap_or(rest).to_string())
}

async fn token(opts: &LoadOpts, addr: SocketAddr, player: &str) -> anyhow::Result<String> {
    match &opts.token_secret {
        Some(s) => Ok(crate::token::issue(s.as_bytes(), player, 24 * 3600)),
        None => super::http::login(addr, player).await,
    }
}

struct BotCtx {
    opts: LoadOpts,
    enc: Encoding,
    progress: Arc<Progress>,
    measuring: CancellationToken,
    stop: CancellationToken,
}

/// How one connection of a bot ended.
enum End {
    /// The run is over.
    Stopped,
    /// The server sent `redirect`: the room lives on `url`.
    Redirect(String),
    /// The server closed it or the connection failed (reason).
    Lost(String),
}

async fn bot(i: usize, ctx: Arc<BotCtx>) -> anyhow::Result<BotResult> {
    let o = &ctx.opts;
    let entries: Vec<&str> = o.url.split(',').map(str::trim).collect();
    // Spread each room's bots over the entry servers (bot i joins room i mod rooms), so
    // that with several servers most joins start somewhere other than the room's owner.
    let mut entry = (i + i / o.rooms.max(1)) % entries.len();
    let mut url = entries[entry].to_owned();
    let room = format!("{}-room-{}", o.player_prefix, i % o.rooms.max(1));
    let mut r = BotResult::default();
    let mut ever_connected = false;
    loop {
        let end = session(i, &ctx, &url, &room, &mut r, &mut ever_connected).await;
        let reason = match end {
            Ok(End::Stopped) => return Ok(r),
            Ok(End::Redirect(to)) => {
                // Redirects are part of joining, always followed (a bounded number of times).
                r.redirects += 1;
                if r.redirects > 1000 {
                    anyhow::bail!("redirect loop for room {room}");
                }
                url = to;
                continue;
            }
            Ok(End::Lost(reason)) => reason,
            Err(e) if ever_connected && o.reconnect => format!("error: {e:#}"),
            Err(e) => return Err(e),
        };
        if !o.reconnect || ctx.stop.is_cancelled() {
            ctx.progress.closed.fetch_add(1, Ordering::Relaxed);
            r.closed = Some(reason);
            return Ok(r);
        }
        // The server went away: try the next entry server after a pause; joining there
        // redirects to the room's (possibly new) owner.
        r.reconnects += 1;
        entry = (entry + 1) % entries.len();
        url = entries[entry].to_owned();
        tokio::select! {
            _ = ctx.stop.cancelled() => return Ok(r),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

async fn session(
    i: usize,
    ctx: &BotCtx,
    url: &str,
    room: &str,
    r: &mut BotResult,
    ever_connected: &mut bool,
) -> anyhow::Result<End> {
    let o = &ctx.opts;
    let player = format!("{}-{i}", o.player_prefix);
    let hp = host_port(url)?;
    let addr = tokio::net::lookup_host(&hp)
        .await?
        .next()
        .with_context(|| format!("resolve {hp}"))?;
    let tok = token(o, addr, &player).await?;
    let mut req = format!("{url}?token={tok}").into_client_request()?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(ctx.enc.subprotocol()),
    );
    // tungstenite zero-fills the free part of its read buffer (128 KiB by default) before
    // every read; deltas are < 1 KiB, so 4 KiB keeps that memset from dominating the bots.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), true).await?;
    if !*ever_connected {
        *ever_connected = true;
        ctx.progress.connected.fetch_add(1, Ordering::Relaxed);
    }
    // One stream for reading and writing (no split: select! drops the read future before a
    // branch writes, so no lock between a read half and a write half is needed).
    let mut buf = BytesMut::with_capacity(64);
    let enc = ctx.enc;
    send(
        &mut ws,
        enc,
        &mut buf,
        &ClientMsg::Join {
            room: room.to_owned(),
        },
    )
    .await?;

    let mut inputs = tokio::time::interval(Duration::from_secs_f64(1.0 / o.rate.max(0.1)));
    // A bot that falls behind does not burst to catch up: it would distort the rate.
    inputs.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut next_ping = Instant::now() + PING_EVERY;
    let mut sent_at = [Instant::now(); 128];
    let mut seq: u32 = 0;
    let mut last_ack: u32 = 0;
    let mut ping_id: u32 = 0;
    let (mut dx, mut dy) = (1i8, 0i8);
    let mut joined = false;
    let mut redirect = None;
    // Counted locally and added to the shared counters in batches (fewer atomic writes).
    let (mut n_inputs, mut n_deltas, mut n_bytes) = (0u64, 0u64, 0u64);
    let end = loop {
        // Every bot wakes at least at the input rate once joined: checking the flag here
        // costs less than a cancellation future per wake-up.
        if ctx.stop.is_cancelled() {
            break End::Stopped;
        }
        tokio::select! {
            biased;
            // Idle bots wake only for the server's pings: end them when the run does.
            _ = ctx.stop.cancelled(), if o.idle => break End::Stopped,
            m = ws.next() => {
                let data = match m {
                    None => break End::Lost("eof".into()),
                    Some(Err(e)) => break End::Lost(format!("error: {e}")),
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Text(t))) => bytes::Bytes::from(t),
                    Some(Ok(Message::Close(f))) => {
                        if let Some(to) = redirect.take() {
                            break End::Redirect(to);
                        }
                        break End::Lost(f.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_else(|| "close".into()));
                    }
                    Some(Ok(_)) => continue,
                };
                n_bytes += data.len() as u64;
                let measuring = ctx.measuring.is_cancelled();
                // Deltas are most of the traffic: only their ack and ts are measured, so the
                // entities are not decoded.
                let delta = match enc {
                    Encoding::Binary => crate::protocol::binary::peek_delta(&data),
                    Encoding::Json => None,
                };
                let msg = match delta {
                    Some(d) => Ok(d),
                    None => match enc.decode_server(&data)? {
                        ServerMsg::Delta { ack, ts, .. } => Ok((ack, ts)),
                        other => Err(other),
                    },
                };
                match msg {
                    Ok((ack, ts)) => {
                        n_deltas += 1;
                        if n_deltas.is_multiple_of(16) {
                            flush_counts(&ctx.progress, &mut n_inputs, &mut n_deltas, &mut n_bytes);
                        }
                        if measuring {
                            r.delta.push(unix_micros().saturating_sub(ts) as u32);
                        }
                        if ack > last_ack {
                            if measuring && seq.wrapping_sub(ack) < 128 {
                                r.ack.push(sent_at[ack as usize % 128].elapsed().as_micros() as u32);
                            }
                            last_ack = ack;
                        }
                    }
                    Err(ServerMsg::Pong { ts, .. }) if measuring => r.rtt.push(unix_micros().saturating_sub(ts) as u32),
                    Err(ServerMsg::Ping { id, .. }) => send(&mut ws, enc, &mut buf, &ClientMsg::Pong { id }).await?,
                    Err(ServerMsg::Joined { .. }) => joined = true,
                    Err(ServerMsg::Redirect { url, .. }) => redirect = Some(url),
                    Err(ServerMsg::Error { code, msg }) => anyhow::bail!("server error {code}: {msg}"),
                    Err(_) => {}
                }
            }
            _ = inputs.tick(), if joined && !o.idle => {
                seq += 1;
                if seq.is_multiple_of(20) {
                    // Wander: a new direction every second or so.
                    dx = ((seq / 20 + i as u32) % 3) as i8 - 1;
                    dy = ((seq / 60 + i as u32) % 3) as i8 - 1;
                }
                let now = Instant::now();
                sent_at[seq as usize % 128] = now;
                send(&mut ws, enc, &mut buf, &ClientMsg::Input(Input { seq, dx, dy, collect: seq.is_multiple_of(COLLECT_EVERY_INPUTS) })).await?;
                n_inputs += 1;
                if n_inputs.is_multiple_of(16) {
                    flush_counts(&ctx.progress, &mut n_inputs, &mut n_deltas, &mut n_bytes);
                }
                // The once-a-second ping rides on an input wake-up (no timer of its own).
                if now >= next_ping {
                    next_ping += PING_EVERY;
                    if next_ping < now {
                        next_ping = now + PING_EVERY;
                    }
                    ping_id += 1;
                    send(&mut ws, enc, &mut buf, &ClientMsg::Ping { id: ping_id, ts: unix_micros() }).await?;
                }
            }
        }
    };
    flush_counts(&ctx.progress, &mut n_inputs, &mut n_deltas, &mut n_bytes);
    if matches!(end, End::Stopped) {
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.send(Message::Close(None))).await;
    }
    Ok(end)
}

fn flush_counts(p: &Progress, inputs: &mut u64, deltas: &mut u64, bytes: &mut u64) {
    p.inputs
        .fetch_add(std::mem::take(inputs), Ordering::Relaxed);
    p.deltas
        .fetch_add(std::mem::take(deltas), Ordering::Relaxed);
    p.bytes.fetch_add(std::mem::take(bytes), Ordering::Relaxed);
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(
    ws: &mut Ws,
    enc: Encoding,
    buf: &mut BytesMut,
    m: &ClientMsg,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    enc.encode_client(m, buf);
    let b = buf.split().freeze();
    let msg = match enc {
        Encoding::Binary => Message::Binary(b),
        Encoding::Json => Message::Text(String::from_utf8_lossy(&b).into_owned().into()),
    };
    ws.send(msg).await
}

/// Run the load and return its summary. `hook` is awaited at each phase (bench scrapes there).
pub async fn run(opts: LoadOpts, hook: Option<Hook>) -> anyhow::Result<Summary> {
    let enc = Encoding::parse(&opts.encoding).context("encoding")?;
    let progress = Arc::new(Progress::default());
    let ctx = Arc::new(BotCtx {
        opts: opts.clone(),
        enc,
        progress: progress.clone(),
        measuring: CancellationToken::new(),
        stop: CancellationToken::new(),
    });
    let started = Instant::now();
    let printer = (!opts.quiet).then(|| {
        let p = progress.clone();
        let n = opts.sessions;
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            t.tick().await;
            let (mut li, mut ld, mut lb) = (0, 0, 0);
            loop {
                t.tick().await;
                let (i, d, b) = (
                    p.inputs.load(Ordering::Relaxed),
                    p.deltas.load(Ordering::Relaxed),
                    p.bytes.load(Ordering::Relaxed),
                );
                eprintln!(
                    "[{:>4.0}s] sessions {}/{n} (failed {}, closed {})  inputs/s {}  deltas/s {}  KiB/s in {}",
                    started.elapsed().as_secs_f64(),
                    p.connected.load(Ordering::Relaxed),
                    p.failed.load(Ordering::Relaxed),
                    p.closed.load(Ordering::Relaxed),
                    i - li,
                    d - ld,
                    (b - lb) / 1024,
                );
                (li, ld, lb) = (i, d, b);
            }
        })
    });

    let mut tasks = Vec::with_capacity(opts.sessions);
    let gap = Duration::from_secs_f64(1.0 / opts.connect_rate.max(1.0));
    for i in 0..opts.sessions {
        let c = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let r = bot(i, c.clone()).await;
            if r.is_err() && c.stop.is_cancelled() {
                return Ok(BotResult::default());
            }
            if r.is_err() {
                c.progress.failed.fetch_add(1, Ordering::Relaxed);
            }
            r
        }));
        tokio::time::sleep(gap).await;
    }
    // Steady state: every bot connected or failed (hang guard: 60 s).
    let ramp_deadline = Instant::now() + Duration::from_secs(60);
    while (progress.connected.load(Ordering::Relaxed) + progress.failed.load(Ordering::Relaxed))
        < opts.sessions as u64
        && Instant::now() < ramp_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(h) = &hook {
        h(Phase::Steady).await;
    }
    let (i0, d0, b0) = (
        progress.inputs.load(Ordering::Relaxed),
        progress.deltas.load(Ordering::Relaxed),
        progress.bytes.load(Ordering::Relaxed),
    );
    ctx.measuring.cancel();
    let steady = Instant::now();
    tokio::time::sleep(Duration::from_secs(opts.duration)).await;
    let secs = steady.elapsed().as_secs_f64();
    let (i1, d1, b1) = (
        progress.inputs.load(Ordering::Relaxed),
        progress.deltas.load(Ordering::Relaxed),
        progress.bytes.load(Ordering::Relaxed),
    );
    if let Some(h) = &hook {
        h(Phase::Done).await;
    }
    ctx.stop.cancel();
    if let Some(p) = printer {
        p.abort();
    }

    let mut s = Summary {
        sessions: opts.sessions,
        rooms: opts.rooms,
        rate_hz: opts.rate,
        encoding: enc.as_str().into(),
        connected: progress.connected.load(Ordering::Relaxed),
        connect_failed: progress.failed.load(Ordering::Relaxed),
        steady_secs: secs,
        inputs_per_sec: (i1 - i0) as f64 / secs,
        deltas_per_sec: (d1 - d0) as f64 / secs,
        bytes_in_per_sec: (b1 - b0) as f64 / secs,
        ..Default::default()
    };
    let (mut rtt, mut ack, mut delta) = (Vec::new(), Vec::new(), Vec::new());
    let mut first_err = None;
    for t in tasks {
        match t.await? {
            Ok(r) => {
                rtt.extend(r.rtt);
                ack.extend(r.ack);
                delta.extend(r.delta);
                if let Some(c) = r.closed {
                    *s.closed_early.entry(c).or_default() += 1;
                }
                s.redirects += r.redirects;
                s.reconnects += r.reconnects;
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        eprintln!("first bot error: {e:#}");
    }
    s.rtt = Pct::from(rtt);
    s.input_to_ack = Pct::from(ack);
    s.delta_latency = Pct::from(delta);
    Ok(s)
}

pub fn print_report(s: &Summary) {
    println!(
        "sessions {}/{} connected ({} failed) in {} rooms, {} Hz inputs, {} encoding, {:.0} s steady",
        s.connected, s.sessions, s.connect_failed, s.rooms, s.rate_hz, s.encoding, s.steady_secs
    );
    println!(
        "inputs/s {:.0}   deltas/s {:.0}",
        s.inputs_per_sec, s.deltas_per_sec
    );
    if !s.closed_early.is_empty() {
        println!("closed by server early: {:?}", s.closed_early);
    }
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    for (name, p) in [
        ("ping rtt", &s.rtt),
        ("input -> ack delta", &s.input_to_ack),
        ("delta send -> recv", &s.delta_latency),
    ] {
        println!(
            "{:<22} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            name, p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms
        );
    }
}
