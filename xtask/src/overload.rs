//! `cargo xtask bench overload`: the game server and the agent beyond what they are sized for,
//! in one run, with figures.
//!
//! 1. Server: well-behaved bot sessions alone (baseline), then the same number of bots while
//!    10× as many hostile clients arrive: a connection storm past the server's fd limit (set
//!    low for the run), slowloris handshakes and clients that join a room and never read.
//!    Figures: server RSS, what each hostile client got back, the bots' deltas and latency,
//!    the server's tick p99, both phases side by side.
//! 2. Agent: OTLP/HTTP protobuf spans at 10× the intake it saw from the server in phase 1 and
//!    as fast as the sender goes, then a burst of kernel events (RSTs from connects to a
//!    closed port). Figures: agent RSS (peak and after), what was received, dropped, lost.
//! 3. A fresh agent with the server holding ~20k open sockets, then all of them reset at once.
//!
//! Everything runs on loopback; the hostile clients are written here with std sockets (they
//! only need to open, write a request head and hold, which no library does on purpose).
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    setup::Env,
    util::{Proc, http, step, wait_ready},
};

#[derive(Args)]
pub struct OverloadArgs {
    /// Well-behaved bot sessions the server holds.
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// Hostile clients per held session (storm + slowloris + non-readers).
    #[arg(long, default_value_t = 10)]
    factor: usize,
    /// The server's RLIMIT_NOFILE in phase 1 (low, so that the storm passes it cheaply).
    #[arg(long, default_value_t = 512)]
    server_fds: u64,
    /// Seconds of each measured phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Open sockets the server holds in phase 3 (at most the fd hard limit less 1,024: the
    /// client side of each is in this process).
    #[arg(long, default_value_t = 20_000)]
    idle_sockets: usize,
    /// Threads making refused connects for the kernel-event burst.
    #[arg(long, default_value_t = 6)]
    burst_threads: usize,
}

const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

/// Samples a process's RSS every 50 ms until stopped; the peak.
struct RssPeak {
    stop: Arc<AtomicBool>,
    h: JoinHandle<u64>,
}

impl RssPeak {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let h = std::thread::spawn(move || {
            let mut peak = 0;
            while !s.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak.max(rss_kib(pid))
        });
        Self { stop, h }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.h.join().unwrap_or(0)
    }
}

/// Prometheus text → sample → value (sums are taken by the caller).
fn scrape(addr: SocketAddr) -> Result<BTreeMap<String, f64>> {
    let (status, body) = http(addr, "GET", "/metrics", None)?;
    if status != 200 {
        bail!("/metrics on {addr}: {status}");
    }
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect())
}

fn sum(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| v)
        .sum()
}

fn get(m: &BTreeMap<String, f64>, sample: &str) -> f64 {
    m.get(sample).copied().unwrap_or(0.0)
}

/// p99 of a Prometheus histogram between two scrapes (upper bound of the bucket).
fn hist_p99(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>, name: &str) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = b
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v - get(a, k)))
        })
        .collect();
    buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, c)| *c >= 0.99 * total)
        .map(|(le, _)| *le)
}

/// Raises the soft fd limit to the hard one (raising the hard one needs CAP_SYS_RESOURCE, which
/// this VM's bounding set lacks: its hard limit is 20,000); returns it.
fn raise_own_fd_limit() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            bail!("getrlimit: {}", std::io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            bail!("setrlimit: {}", std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_max)
}

struct Server {
    proc: Proc,
    addr: SocketAddr,
}

fn start_server(
    env: &Env,
    dir: &Path,
    fds: u64,
    otlp: SocketAddr,
    extra: &[&str],
) -> Result<Server> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let mut cmd = Command::new(env.root.join("target/release/game-server"));
    cmd.args(["--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: fds,
                rlim_max: fds,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut proc = Proc::spawn(&mut cmd).context("starting the game server")?;
    let mut out = BufReader::new(proc.0.stdout.take().context("stdout")?);
    let mut line = String::new();
    out.read_line(&mut line)?;
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("game-server listening on ")
        .with_context(|| format!("unexpected first line {line:?}"))?
        .parse()?;
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Ok(Server { proc, addr })
}

fn login(addr: SocketAddr, player: &str) -> Result<String> {
    let (status, body) = http(
        addr,
        "POST",
        "/login",
        Some(&format!("{{\"player\":\"{player}\"}}")),
    )?;
    if status != 200 {
        bail!("/login: {status}");
    }
    let v: serde_json::Value = serde_json::from_str(&body)?;
    v["token"]
        .as_str()
        .map(str::to_owned)
        .context("no token in /login answer")
}

/// What a hostile client got back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Got {
    /// 101: admitted.
    Upgraded,
    /// 503 with the close.
    Refused503,
    OtherStatus,
    /// Closed without an answer.
    Closed,
    Reset,
    /// Nothing within the wait (left in the backlog: not a clean refusal).
    Silent,
    ConnectFailed,
}

fn upgrade_request(addr: SocketAddr, token: &str) -> String {
    format!(
        "GET /ws?token={token}&encoding=json HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Reads the response head (up to the blank line) and classifies it.
fn read_answer(s: &mut TcpStream, wait: Duration) -> Got {
    let _ = s.set_read_timeout(Some(wait));
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(_) => {
                head.push(b[0]);
                if head.ends_with(b"\r\n\r\n") || head.len() > 4096 {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return if head.is_empty() {
                    Got::Silent
                } else {
                    Got::OtherStatus
                };
            }
            Err(_) => {
                return if head.is_empty() {
                    Got::Reset
                } else {
                    Got::OtherStatus
                };
            }
        }
    }
    let text = String::from_utf8_lossy(&head);
    match text.split(' ').nth(1) {
        Some("101") => Got::Upgraded,
        Some("503") => Got::Refused503,
        Some(_) => Got::OtherStatus,
        None => Got::Closed,
    }
}

/// Opens `n` upgrades from `threads` threads; the sockets that were admitted are kept open.
fn storm(
    addr: SocketAddr,
    token: &str,
    n: usize,
    threads: usize,
    wait: Duration,
) -> (Vec<TcpStream>, BTreeMap<Got, usize>) {
    let req = upgrade_request(addr, token);
    let per = n.div_ceil(threads.max(1));
    let results: Vec<(Vec<TcpStream>, Vec<Got>)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let req = &req;
                sc.spawn(move || {
                    let mut held = Vec::new();
                    let mut got = Vec::new();
                    for _ in 0..per.min(n.saturating_sub(t * per)) {
                        let Ok(mut s) = TcpStream::connect_timeout(&addr, wait) else {
                            got.push(Got::ConnectFailed);
                            continue;
                        };
                        if s.write_all(req.as_bytes()).is_err() {
                            got.push(Got::Reset);
                            continue;
                        }
                        let g = read_answer(&mut s, wait);
                        got.push(g);
                        if g == Got::Upgraded {
                            held.push(s);
                        }
                    }
                    (held, got)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut held = Vec::new();
    let mut tally = BTreeMap::new();
    for (h, g) in results {
        held.extend(h);
        for x in g {
            *tally.entry(x).or_insert(0) += 1;
        }
    }
    (held, tally)
}

/// A masked client text frame (RFC 6455 §5.2; payload < 126 bytes).
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Clients that upgrade, join a busy room and never read again (a tiny receive buffer so that
/// the server's side fills in seconds, not minutes).
fn non_readers(addr: SocketAddr, token: &str, n: usize, room: &str) -> Vec<TcpStream> {
    let req = upgrade_request(addr, token);
    let join = text_frame(format!("{{\"t\":\"join\",\"room\":\"{room}\"}}").as_bytes());
    (0..n)
        .filter_map(|_| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
            let small: libc::c_int = 2048;
            // SAFETY: setsockopt on our own socket with a valid int option.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&raw const small).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            s.write_all(req.as_bytes()).ok()?;
            (read_answer(&mut s, Duration::from_secs(3)) == Got::Upgraded).then_some(())?;
            s.write_all(&join).ok()?;
            Some(s)
        })
        .collect()
}

/// Slowloris: the first lines of an upgrade, never finished. Returns how long each took to be
/// closed by the server (None: still open after `limit`).
fn slowloris(addr: SocketAddr, n: usize, limit: Duration) -> JoinHandle<Vec<Option<Duration>>> {
    std::thread::spawn(move || {
        let t0 = Instant::now();
        let mut socks: Vec<Option<TcpStream>> = (0..n)
            .map(|_| {
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
                s.write_all(
                    format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n")
                        .as_bytes(),
                )
                .ok()?;
                s.set_nonblocking(true).ok()?;
                Some(s)
            })
            .collect();
        let mut closed: Vec<Option<Duration>> = vec![None; n];
        let mut buf = [0u8; 256];
        while t0.elapsed() < limit
            && closed
                .iter()
                .zip(&socks)
                .any(|(c, s)| c.is_none() && s.is_some())
        {
            for (i, s) in socks.iter_mut().enumerate() {
                let Some(sock) = s else { continue };
                if closed[i].is_some() {
                    continue;
                }
                match sock.read(&mut buf) {
                    Ok(0) => closed[i] = Some(t0.elapsed()),
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => closed[i] = Some(t0.elapsed()),
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        socks.clear();
        closed
    })
}

fn bots(env: &Env, addr: SocketAddr, sessions: usize, seconds: u64) -> Result<Proc> {
    Proc::spawn(
        Command::new(env.root.join("target/release/bots"))
            .args(["--url", &format!("ws://{addr}/ws")])
            .args(["--sessions", &sessions.to_string(), "--rooms", "4"])
            .args(["--duration", &seconds.to_string(), "--json", "--quiet"])
            .args(["--player-prefix", "good"])
            .stdout(Stdio::piped()),
    )
    .context("starting bots")
}

fn bots_summary(mut p: Proc) -> Result<serde_json::Value> {
    let mut out = String::new();
    p.0.stdout
        .take()
        .context("bots stdout")?
        .read_to_string(&mut out)?;
    let _ = p.0.wait();
    // The summary is one pretty-printed JSON object after any progress lines.
    let start = out
        .find("\n{")
        .map(|i| i + 1)
        .or_else(|| out.starts_with('{').then_some(0))
        .with_context(|| format!("no JSON summary from bots: {out}"))?;
    Ok(serde_json::from_str(&out[start..])?)
}

struct ServerPhase {
    rss_peak_kib: u64,
    deltas_per_sec: f64,
    delta_p99_ms: f64,
    closed_early: u64,
    connected: u64,
    tick_p99_ms: Option<f64>,
    ticks_dropped: f64,
}

fn server_phase(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    bots: &serde_json::Value,
    rss_peak_kib: u64,
) -> ServerPhase {
    ServerPhase {
        rss_peak_kib,
        deltas_per_sec: bots["deltas_per_sec"].as_f64().unwrap_or(0.0),
        delta_p99_ms: bots["delta_latency"]["p99_ms"].as_f64().unwrap_or(0.0),
        closed_early: bots["closed_early"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum()),
        connected: bots["connected"].as_u64().unwrap_or(0),
        tick_p99_ms: hist_p99(before, after, "game_tick_duration_seconds").map(|s| s * 1e3),
        ticks_dropped: get(after, "game_ticks_dropped_total")
            - get(before, "game_ticks_dropped_total"),
    }
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Refused connects to a closed port from `threads` threads for `secs`: every attempt is an RST
/// sent (and one received) that the agent's TCP programs report. Returns the attempts.
fn rst_burst(threads: usize, secs: f64) -> u64 {
    // A port nothing listens on: bind, learn it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(9);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    for _ in 0..64 {
                        let _ = TcpStream::connect(addr);
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    hs.into_iter().map(|h| h.join().unwrap_or(0)).sum()
}

fn out_rsts() -> u64 {
    // /proc/net/snmp: the Tcp: header line, then the values line.
    let t = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let tcp: Vec<&str> = t.lines().filter(|l| l.starts_with("Tcp:")).collect();
    if tcp.len() < 2 {
        return 0;
    }
    let names: Vec<&str> = tcp[0].split_whitespace().collect();
    let vals: Vec<&str> = tcp[1].split_whitespace().collect();
    names
        .iter()
        .position(|n| *n == "OutRsts")
        .and_then(|i| vals.get(i)?.parse().ok())
        .unwrap_or(0)
}

struct AgentRow {
    what: String,
    rate: String,
    rss_before_kib: u64,
    rss_peak_kib: u64,
    rss_after_kib: u64,
    counted: String,
}

pub fn run(env: &Env, a: OverloadArgs) -> Result<()> {
    crate::util::run(env.cargo().args([
        "build",
        "--release",
        "-p",
        "agent",
        "-p",
        "game-server",
        "--bins",
        "--example",
        "otlp_flood",
    ]))?;
    let fd_hard = raise_own_fd_limit()?;
    // Both ends of every idle socket live on this machine, each side under the hard limit.
    let idle_sockets = a.idle_sockets.min((fd_hard as usize).saturating_sub(1024));
    let tmp = env.root.join("target/bench-overload");
    std::fs::create_dir_all(&tmp)?;
    let free_port = || -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let agent_http: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let otlp: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    step("bench overload: starting the agent (release, --comm game-server)");
    // KS_AGENT_WRAP (e.g. "heaptrack -o target/bench-overload/agent"): run the agent under a
    // profiler, to see what holds its memory (its figures then include the profiler's cost).
    let agent_bin = env.root.join("target/release/kernelsight-agent");
    let wrap: Vec<String> = std::env::var("KS_AGENT_WRAP")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let start_agent = || -> Result<(Proc, u32)> {
        let mut cmd = match wrap.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(&agent_bin);
                c
            }
            None => Command::new(&agent_bin),
        };
        let mut agent = Proc::spawn(
            cmd.args(["--http-addr", &agent_http.to_string()])
                .args(["--otlp-grpc-addr", "127.0.0.1:0"])
                .args(["--otlp-http-addr", &otlp.to_string()])
                .args(["--comm", "game-server"])
                .env("RUST_LOG", "warn"),
        )?;
        wait_ready(agent_http, "the agent", &mut agent)?;
        let mut pid = agent.0.id();
        if !wrap.is_empty() {
            // The wrapper's child is the agent (RSS figures then include the profiler's own).
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            if let Some(c) = children.split_whitespace().find_map(|c| c.parse().ok()) {
                pid = c;
            }
        }
        Ok((agent, pid))
    };
    let (mut agent, agent_pid) = start_agent()?;
    let agent_rss_start = rss_kib(agent_pid);

    // ---- 1. the game server at 10× its held sessions ----
    let secs = a.seconds;
    let s = a.sessions;
    let hostile = a.factor * s;
    let (n_read, n_loris) = (s.min(hostile), (2 * s).min(hostile));
    let n_storm = hostile.saturating_sub(n_read + n_loris);
    step(format!(
        "bench overload: server with RLIMIT_NOFILE {} ; {s} bots alone for {secs} s",
        a.server_fds
    ));
    let srv = start_server(env, &tmp.join("data1"), a.server_fds, otlp, &[])?;
    let cap = {
        wait_until(Duration::from_secs(10), || scrape(srv.addr).is_ok());
        get(&scrape(srv.addr)?, "game_connections_max")
    };
    let ag0 = scrape(agent_http)?;
    let m0 = scrape(srv.addr)?;
    let peak = RssPeak::start(srv.proc.0.id());
    let t0 = Instant::now();
    let base_bots = bots_summary(bots(env, srv.addr, s, secs)?)?;
    let base_secs = t0.elapsed().as_secs_f64();
    let base_rss = peak.finish();
    let m1 = scrape(srv.addr)?;
    let ag1 = scrape(agent_http)?;
    let base = server_phase(&m0, &m1, &base_bots, base_rss);
    let normal_spans = (sum(&ag1, "kernelsight_spans_received_total")
        - sum(&ag0, "kernelsight_spans_received_total"))
        / base_secs;

    step(format!(
        "bench overload: {s} bots + {n_storm} storm + {n_loris} slowloris + {n_read} non-readers"
    ));
    let token = login(srv.addr, "hostile")?;
    let peak = RssPeak::start(srv.proc.0.id());
    let bots_run = bots(env, srv.addr, s, secs)?;
    if !wait_until(Duration::from_secs(30), || {
        scrape(srv.addr).is_ok_and(|m| get(&m, "game_sessions_active") >= s as f64)
    }) {
        bail!("the bots did not connect");
    }
    let m2 = scrape(srv.addr)?;
    let readers = non_readers(srv.addr, &token, n_read, "good-room-0");
    let loris = slowloris(srv.addr, n_loris, Duration::from_secs(secs + 10));
    let (storm_held, storm_got) = storm(srv.addr, &token, n_storm, 16, Duration::from_secs(3));
    let over_bots = bots_summary(bots_run)?;
    let over_rss = peak.finish();
    let loris_closed = loris.join().unwrap_or_default();
    let (n_readers_up, n_storm_held) = (readers.len(), storm_held.len());
    drop(storm_held);
    drop(readers);
    std::thread::sleep(Duration::from_millis(500));
    let m3 = scrape(srv.addr)?;
    let over = server_phase(&m2, &m3, &over_bots, over_rss);
    let refused = |r: &str| {
        get(
            &m3,
            &format!("game_connections_refused_total{{reason=\"{r}\"}}"),
        ) - get(
            &m2,
            &format!("game_connections_refused_total{{reason=\"{r}\"}}"),
        )
    };
    let d = |k: &str| get(&m3, k) - get(&m2, k);
    drop(srv);

    // ---- 2. the agent under 10× OTLP intake and a kernel-event burst ----
    let flood = |rate: u64| -> Result<serde_json::Value> {
        let out = Command::new(env.root.join("target/release/examples/otlp_flood"))
            .args(["--addr", &otlp.to_string(), "--rate", &rate.to_string()])
            .args(["--seconds", &secs.to_string(), "--connections", "4"])
            .stderr(Stdio::inherit())
            .output()
            .context("otlp_flood")?;
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let mut agent_rows = Vec::new();
    let spans_counted = |a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>| {
        format!(
            "received {:.0}, joined early (store near its bound) {:.0}, unenriched (store full) {:.0}, rejected requests {:.0}",
            sum(b, "kernelsight_spans_received_total") - sum(a, "kernelsight_spans_received_total"),
            get(b, "kernelsight_spans_joined_early_total")
                - get(a, "kernelsight_spans_joined_early_total"),
            get(
                b,
                "kernelsight_spans_unenriched_total{reason=\"store_full\"}"
            ) - get(
                a,
                "kernelsight_spans_unenriched_total{reason=\"store_full\"}"
            ),
            sum(b, "kernelsight_otlp_requests_rejected_total")
                - sum(a, "kernelsight_otlp_requests_rejected_total"),
        )
    };
    let ten_x = ((normal_spans * 10.0).round() as u64).max(1);
    for (what, rate) in [
        ("OTLP at 10× the server's intake", ten_x),
        ("OTLP as fast as the sender goes", 0),
    ] {
        step(format!("bench overload: agent, {what}"));
        let before = scrape(agent_http)?;
        let rss_before_kib = rss_kib(agent_pid);
        let peak = RssPeak::start(agent_pid);
        let f = flood(rate)?;
        std::thread::sleep(Duration::from_secs(2));
        let p = peak.finish();
        let after = scrape(agent_http)?;
        agent_rows.push(AgentRow {
            what: what.into(),
            rate: format!(
                "{:.0} spans/s sent ({} of {} requests 200)",
                f["spans_per_sec"].as_f64().unwrap_or(0.0),
                f["ok"],
                f["requests"]
            ),
            rss_before_kib,
            rss_peak_kib: p,
            rss_after_kib: rss_kib(agent_pid),
            counted: spans_counted(&before, &after),
        });
    }

    let kernel_counted = |a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>| {
        let dd = |k: &str| get(b, k) - get(a, k);
        let decoded = dd("kernelsight_ring_records_total{ring=\"tcp\"}");
        let lost = dd("kernelsight_ebpf_events_lost_total{ring=\"tcp\"}");
        (
            decoded + lost,
            format!(
                "decoded {decoded:.0}, lost in the ring {lost:.0}, pipeline dropped {:.0}, correlator dropped {:.0}, evidence evicted {:.0}",
                dd("kernelsight_pipeline_dropped_total{ring=\"tcp\"}"),
                dd("kernelsight_correlator_kernel_events_dropped_total"),
                sum(b, "kernelsight_evidence_evicted_total")
                    - sum(a, "kernelsight_evidence_evicted_total"),
            ),
        )
    };
    let burst_secs = 4.0;
    step(format!(
        "bench overload: agent, kernel burst ({} threads of refused connects, {burst_secs} s)",
        a.burst_threads
    ));
    let before = scrape(agent_http)?;
    let rss_before_kib = rss_kib(agent_pid);
    let peak = RssPeak::start(agent_pid);
    let rst0 = out_rsts();
    let t = Instant::now();
    let attempts = rst_burst(a.burst_threads, burst_secs);
    let took = t.elapsed().as_secs_f64();
    let rsts = out_rsts() - rst0;
    std::thread::sleep(Duration::from_secs(2));
    let p = peak.finish();
    // What stays once the burst is over (the agent trims its heap every 5 s).
    std::thread::sleep(Duration::from_secs(8));
    let after = scrape(agent_http)?;
    let (events, counted) = kernel_counted(&before, &after);
    agent_rows.push(AgentRow {
        what: "kernel burst: refused connects".into(),
        rate: format!(
            "{:.0} events/s reported ({:.0} connects/s, {:.0} RSTs/s per /proc/net/snmp)",
            events / took,
            attempts as f64 / took,
            rsts as f64 / took
        ),
        rss_before_kib,
        rss_peak_kib: p,
        rss_after_kib: rss_kib(agent_pid),
        counted: format!(
            "{counted}; heap after: {} MiB in use, {} MiB free in the allocator",
            mib((get(&after, "kernelsight_heap_bytes{state=\"in_use\"}") / 1024.0) as u64),
            mib((get(&after, "kernelsight_heap_bytes{state=\"free\"}") / 1024.0) as u64),
        ),
    });

    // ---- 3. the agent while the server holds ~20k open sockets ----
    // A fresh agent: this row measures open sockets and their reset, not what the flood and
    // the burst left (their rows' "after" column shows that).
    let first_alive = agent.0.try_wait()?.is_none();
    drop(agent);
    step("bench overload: a fresh agent for the open-sockets phase");
    let (mut agent, agent_pid) = start_agent()?;
    step(format!(
        "bench overload: server holding {} open sockets",
        idle_sockets
    ));
    let srv = start_server(
        env,
        &tmp.join("data3"),
        fd_hard,
        otlp,
        &[
            "--heartbeat-interval-ms",
            "600000",
            "--heartbeat-timeout-ms",
            "600000",
        ],
    )?;
    wait_until(Duration::from_secs(10), || scrape(srv.addr).is_ok());
    let token = login(srv.addr, "idle")?;
    let before = scrape(agent_http)?;
    let rss_before_kib = rss_kib(agent_pid);
    let peak = RssPeak::start(agent_pid);
    let (idle, idle_got) = storm(srv.addr, &token, idle_sockets, 16, Duration::from_secs(10));
    let held = idle.len();
    std::thread::sleep(Duration::from_secs(5));
    let rss_held = rss_kib(agent_pid);
    let srv_rss_held = rss_kib(srv.proc.0.id());
    // Reset them all at once: one RST per socket, each owned by the server.
    for s in &idle {
        let l = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on our own socket with a valid linger struct.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const l).cast(),
                size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }
    drop(idle);
    std::thread::sleep(Duration::from_secs(2));
    let p = peak.finish();
    std::thread::sleep(Duration::from_secs(8));
    let after = scrape(agent_http)?;
    let (_, counted) = kernel_counted(&before, &after);
    // The server's session spans end with the sockets: they arrive with the resets.
    let counted = format!(
        "{counted}; {}; heap after: {} MiB in use, {} MiB free in the allocator",
        spans_counted(&before, &after),
        mib((get(&after, "kernelsight_heap_bytes{state=\"in_use\"}") / 1024.0) as u64),
        mib((get(&after, "kernelsight_heap_bytes{state=\"free\"}") / 1024.0) as u64),
    );
    agent_rows.push(AgentRow {
        what: format!(
            "server holding {held} open sockets (agent RSS while held: {} MiB), then all reset",
            mib(rss_held)
        ),
        rate: format!(
            "{held} RSTs at once; server RSS {} MiB while held",
            mib(srv_rss_held)
        ),
        rss_before_kib,
        rss_peak_kib: p,
        rss_after_kib: rss_kib(agent_pid),
        counted,
    });
    drop(srv);
    let agent_alive = first_alive && agent.0.try_wait()?.is_none();
    drop(agent);

    // ---- tables ----
    println!();
    println!(
        "### Game server at {}× its held sessions (RLIMIT_NOFILE {}, connection cap {cap:.0}, {secs} s per phase)",
        a.factor, a.server_fds
    );
    println!();
    println!("| | bots alone | bots + {hostile} hostile clients | ratio |");
    println!("|---|---:|---:|---:|");
    let ratio = |x: f64, y: f64| {
        if x > 0.0 {
            format!("{:.2}", y / x)
        } else {
            "–".into()
        }
    };
    println!(
        "| server RSS peak (MiB) | {} | {} | {} |",
        mib(base.rss_peak_kib),
        mib(over.rss_peak_kib),
        ratio(base.rss_peak_kib as f64, over.rss_peak_kib as f64)
    );
    println!(
        "| bots connected / closed early | {} / {} | {} / {} | |",
        base.connected, base.closed_early, over.connected, over.closed_early
    );
    println!(
        "| deltas delivered to the bots (/s) | {:.0} | {:.0} | {} |",
        base.deltas_per_sec,
        over.deltas_per_sec,
        ratio(base.deltas_per_sec, over.deltas_per_sec)
    );
    println!(
        "| delta latency p99 (ms) | {:.1} | {:.1} | {} |",
        base.delta_p99_ms,
        over.delta_p99_ms,
        ratio(base.delta_p99_ms, over.delta_p99_ms)
    );
    let fmt_ms = |x: Option<f64>| x.map_or("–".into(), |v| format!("≤ {v:.2}"));
    println!(
        "| server tick duration p99 (ms, histogram bucket) | {} | {} | |",
        fmt_ms(base.tick_p99_ms),
        fmt_ms(over.tick_p99_ms)
    );
    println!(
        "| ticks dropped (catch-up bound) | {:.0} | {:.0} | |",
        base.ticks_dropped, over.ticks_dropped
    );
    println!();
    println!("| hostile clients | count | outcome |");
    println!("|---|---:|---|");
    let got = |g: Got| storm_got.get(&g).copied().unwrap_or(0);
    println!(
        "| connection storm (complete upgrades, held open) | {n_storm} | {} admitted (held: {n_storm_held}), {} refused with 503, {} closed, {} reset, {} other, {} unanswered after 3 s, {} connect failed |",
        got(Got::Upgraded),
        got(Got::Refused503),
        got(Got::Closed),
        got(Got::Reset),
        got(Got::OtherStatus),
        got(Got::Silent),
        got(Got::ConnectFailed)
    );
    let mut times: Vec<f64> = loris_closed
        .iter()
        .flatten()
        .map(Duration::as_secs_f64)
        .collect();
    times.sort_by(f64::total_cmp);
    println!(
        "| slowloris (half an upgrade head, never finished) | {n_loris} | {} closed by the server (after {:.1}–{:.1} s), {} still open at the end; server counted {:.0} handshake timeouts |",
        times.len(),
        times.first().copied().unwrap_or(0.0),
        times.last().copied().unwrap_or(0.0),
        n_loris - times.len(),
        d("game_handshake_timeouts_total")
    );
    println!(
        "| non-readers (join a bots' room, 4 KiB receive buffer, never read) | {n_read} | {n_readers_up} upgraded and joined; server kicked {:.0} as slow consumers, dropped {:.0} frames to them |",
        d("game_kicks_total{reason=\"slow_consumer\"}"),
        d("game_outbound_dropped_total")
    );
    println!(
        "| server's own count | | {:.0} admitted, {:.0} refused at the cap, {:.0} refused at the fd limit, {:.0} accept errors backed off |",
        d("game_connections_accepted_total"),
        refused("max_connections"),
        refused("fd_limit"),
        sum(&m3, "game_accept_errors_total") - sum(&m2, "game_accept_errors_total")
    );
    println!();
    println!(
        "### Agent (release, --comm game-server); RSS at start {} MiB; the server's intake in phase 1: {normal_spans:.0} spans/s",
        mib(agent_rss_start)
    );
    println!();
    println!(
        "| load | rate reached | agent RSS before (MiB) | peak | after | counted by the agent |"
    );
    println!("|---|---|---:|---:|---:|---|");
    for r in &agent_rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.what,
            r.rate,
            mib(r.rss_before_kib),
            mib(r.rss_peak_kib),
            mib(r.rss_after_kib),
            r.counted
        );
    }
    println!();
    println!("agent still running at the end: {agent_alive}; 20k phase outcomes: {idle_got:?}");
    if !agent_alive {
        bail!("the agent died during the bench");
    }
    Ok(())
}
