//! A remote dependency the server calls from its worker pool, the way a game backend calls
//! Redis for session cache or leaderboards: a small pool of persistent TCP connections, one
//! request/response line per call. When the dependency is exhausted and resets connections (the
//! seed's "RST burst from an exhausted Redis pool"), the calls fail here with ECONNRESET and the
//! kernel sees the RSTs: the agent joins the two through the spans' network attributes.
//!
//! Wire protocol (line based, like Redis' inline commands): the client sends `GET <key>\n`, the
//! server answers one line (`+<value>\n`, or `-ERR ...\n`).
use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use tracing::{Span, field::Empty, info_span};

use crate::{background::TaskInfo, server::App};

/// Pool task kind of a dependency call.
pub const KIND: &str = "cache_get";

/// Idle connections to the dependency, reused across calls (and across worker threads: these
/// are blocking std sockets, not bound to any runtime).
pub struct Dependency {
    addr: SocketAddr,
    idle: Mutex<Vec<BufReader<TcpStream>>>,
    max_idle: usize,
    timeout: Duration,
}

impl Dependency {
    pub fn new(addr: SocketAddr, max_idle: usize, timeout: Duration) -> Self {
        Self {
            addr,
            idle: Mutex::new(Vec::new()),
            max_idle,
            timeout,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn checkout(&self) -> Result<BufReader<TcpStream>> {
        if let Some(c) = self.idle.lock().expect("not poisoned").pop() {
            return Ok(c);
        }
        let s = TcpStream::connect_timeout(&self.addr, self.timeout)
            .with_context(|| format!("connect {}", self.addr))?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        s.set_nodelay(true)?;
        Ok(BufReader::new(s))
    }

    fn checkin(&self, c: BufReader<TcpStream>) {
        let mut idle = self.idle.lock().expect("not poisoned");
        if idle.len() < self.max_idle {
            idle.push(c);
        }
    }

    /// One `GET key` round trip, inside a client span that carries the connection's 4-tuple.
    pub fn get(&self, key: &str, task: &TaskInfo) -> Result<String> {
        let span = info_span!(
            "dependency.get",
            "otel.kind" = "client",
            "peer.service" = "cache",
            "network.transport" = "tcp",
            "network.peer.address" = %self.addr.ip(),
            "network.peer.port" = self.addr.port() as i64,
            "network.local.address" = Empty,
            "network.local.port" = Empty,
            "thread.id" = task.thread_id,
            "thread.name" = %task.thread_name,
            "process.pid" = std::process::id() as i64,
            "otel.status_code" = Empty,
            "error.type" = Empty,
        );
        let _entered = span.enter();
        let result = self.checkout().and_then(|mut c| {
            if let Ok(local) = c.get_ref().local_addr() {
                span.record("network.local.address", local.ip().to_string());
                span.record("network.local.port", local.port() as i64);
            }
            let reply = round_trip(&mut c, key)?;
            self.checkin(c);
            Ok(reply)
        });
        if let Err(e) = &result {
            record_error(&span, e);
        }
        result
    }
}

fn round_trip(c: &mut BufReader<TcpStream>, key: &str) -> Result<String> {
    writeln!(c.get_mut(), "GET {key}").context("send")?;
    let mut line = String::new();
    if c.read_line(&mut line).context("receive")? == 0 {
        bail!("connection closed by the dependency");
    }
    match line.strip_prefix('+') {
        Some(v) => Ok(v.trim_end().to_owned()),
        None => bail!("dependency error: {}", line.trim_end()),
    }
}

fn record_error(span: &Span, e: &anyhow::Error) {
    let kind = e
        .chain()
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .map(|io| format!("{:?}", io.kind()))
        .unwrap_or_else(|| "protocol".into());
    span.record("otel.status_code", "ERROR");
    span.record("error.type", kind);
}

/// Calls the dependency `rate` times a second through the worker pool until shutdown, like a
/// session-cache lookup per request.
pub async fn run_calls(app: Arc<App>, dep: Arc<Dependency>, rate: u32) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    // Calls that could not start on time are skipped, not bunched: a backlog of lookups would
    // be a load pattern of our own making.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        n += 1;
        let dep = dep.clone();
        let key = format!("player:{}", n % 1000);
        match app.bg.try_run(KIND, Duration::from_secs(1), move |info| {
            dep.get(&key, &info)
        }) {
            Ok(call) => {
                let metrics = app.metrics.clone();
                tokio::spawn(async move {
                    let outcome = if call.await.is_ok() { "ok" } else { "error" };
                    metrics
                        .dependency_calls_total
                        .with_label_values(&[outcome])
                        .inc();
                });
            }
            Err(_) => app
                .metrics
                .dependency_calls_total
                .with_label_values(&["rejected"])
                .inc(),
        }
    }
}
