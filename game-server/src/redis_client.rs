//! The server's Redis client: `redis` (multiplexed async connections) behind a bounded
//! `deadpool` pool, one client span per command and Prometheus pool metrics.
//!
//! Why deadpool and our own 40-line `Manager` instead of `deadpool-redis`'s or `bb8-redis`'s:
//! deadpool's pool reports waiters (`Status::waiting`, bb8's `State` does not) and has separate
//! wait / create / recycle timeouts, which is exactly the "clean error after the configured wait"
//! the pool must give; and only our own manager sees the TCP socket before `redis` takes it, so
//! every span can carry the connection's local address: the kernel agent joins client spans
//! with TCP resets on the 4-tuple, and `deadpool-redis` hides the socket.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use deadpool::managed::{self, Metrics as PoolObjMetrics, Pool, PoolError, RecycleResult};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    core::{Collector, Desc},
    proto::MetricFamily,
};
use redis::{
    AsyncConnectionConfig, FromRedisValue, RedisConnectionInfo, RedisError,
    aio::MultiplexedConnection,
};
use tokio::net::TcpStream;
use tracing::{Instrument as _, Span, field::Empty, info_span};

#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// `host:port` (a name is resolved at every connect, so a restarted Redis pod is found).
    pub addr: String,
    pub pool_size: usize,
    /// How long a command waits for a free pooled connection before it fails.
    pub wait_timeout: Duration,
    /// Connect (TCP + handshake) timeout of a new connection.
    pub connect_timeout: Duration,
    /// How long a command waits for its reply.
    pub response_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RedisCallError {
    /// Every pooled connection stayed busy for the whole wait timeout.
    #[error("redis pool exhausted: no connection free within {0:?}")]
    PoolExhausted(Duration),
    #[error("redis connect: {0}")]
    Connect(String),
    #[error("redis: {0}")]
    Command(#[from] RedisError),
    #[error("redis pool closed")]
    Closed,
}

impl RedisCallError {
    /// The span's `error.type`: the io error kind for socket failures (ConnectionReset, ...).
    pub fn error_type(&self) -> String {
        match self {
            RedisCallError::PoolExhausted(_) => "pool_exhausted".into(),
            RedisCallError::Connect(_) => "connect".into(),
            RedisCallError::Closed => "pool_closed".into(),
            RedisCallError::Command(e) => io_kind(e)
                .map(|k| format!("{k:?}"))
                .unwrap_or_else(|| format!("{:?}", e.kind())),
        }
    }
}

fn io_kind(e: &RedisError) -> Option<std::io::ErrorKind> {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        src = s.source();
    }
    // The multiplexed driver reports a dead socket to waiting requests as text.
    let text = e.to_string();
    if text.contains("reset by peer") {
        Some(std::io::ErrorKind::ConnectionReset)
    } else if text.contains("roken pipe") {
        Some(std::io::ErrorKind::BrokenPipe)
    } else {
        None
    }
}

fn record_addrs(span: &Span, local: SocketAddr, peer: SocketAddr) {
    span.record("network.peer.address", peer.ip().to_string());
    span.record("network.peer.port", peer.port() as i64);
    span.record("network.local.address", local.ip().to_string());
    span.record("network.local.port", local.port() as i64);
}

/// One pooled connection and both ends of its socket.
pub struct Conn {
    inner: MultiplexedConnection,
    local: SocketAddr,
    peer: SocketAddr,
    /// Set when a command failed at the socket level: the pool drops it instead of reusing it.
    broken: bool,
}

pub struct Manager {
    addr: String,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl managed::Manager for Manager {
    type Type = Conn;
    type Error = RedisError;

    async fn create(&self) -> Result<Conn, RedisError> {
        let io = |e: std::io::Error| RedisError::from(e);
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| io(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
            .map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        let (local, peer) = (
            stream.local_addr().map_err(io)?,
            stream.peer_addr().map_err(io)?,
        );
        // Creation runs inside the command's span: a connection that is reset during its
        // handshake is joined with the kernel's RSTs by this 4-tuple too.
        record_addrs(&Span::current(), local, peer);
        let cfg = AsyncConnectionConfig::new().set_response_timeout(Some(self.response_timeout));
        let info = RedisConnectionInfo::default();
        let (inner, driver) = tokio::time::timeout(
            self.connect_timeout,
            MultiplexedConnection::new_with_config(&info, stream, cfg),
        )
        .await
        .map_err(|_| io(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
        tokio::spawn(driver);
        Ok(Conn {
            inner,
            local,
            peer,
            broken: false,
        })
    }

    async fn recycle(&self, c: &mut Conn, _: &PoolObjMetrics) -> RecycleResult<RedisError> {
        // No PING per checkout (a round trip per command); a socket error marks the
        // connection broken and the next checkout replaces it.
        if c.broken {
            Err(managed::RecycleError::message("connection failed"))
        } else {
            Ok(())
        }
    }
}

/// Pool gauges read from `Pool::status()` at scrape time, so they are never stale.
struct PoolGauges {
    pool: Pool<Manager>,
    connections: IntGaugeVec,
    max: IntGauge,
    waiters: IntGauge,
}

impl Collector for PoolGauges {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.connections.desc();
        d.extend(self.max.desc());
        d.extend(self.waiters.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = self.pool.status();
        self.connections
            .with_label_values(&["idle"])
            .set(s.available as i64);
        self.connections
            .with_label_values(&["used"])
            .set(s.size.saturating_sub(s.available) as i64);
        self.max.set(s.max_size as i64);
        self.waiters.set(s.waiting as i64);
        let mut m = self.connections.collect();
        m.extend(self.max.collect());
        m.extend(self.waiters.collect());
        m
    }
}

struct PoolMetrics {
    wait_seconds: Histogram,
    timeouts: IntCounterVec,
    commands: IntCounterVec,
    duration: HistogramVec,
}

impl PoolMetrics {
    fn new(r: &Registry, pool: Pool<Manager>) -> anyhow::Result<Self> {
        let gauges = PoolGauges {
            pool,
            connections: IntGaugeVec::new(
                Opts::new(
                    "game_redis_pool_connections",
                    "Redis pool connections by state (idle, used).",
                ),
                &["state"],
            )?,
            max: IntGauge::new(
                "game_redis_pool_max_connections",
                "Most connections the Redis pool opens.",
            )?,
            waiters: IntGauge::new(
                "game_redis_pool_pending_requests",
                "Commands waiting for a free Redis connection.",
            )?,
        };
        r.register(Box::new(gauges))?;
        let m = Self {
            wait_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "game_redis_pool_wait_seconds",
                    "Time a command waited for a pooled Redis connection (creation included).",
                )
                .buckets(vec![
                    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )?,
            timeouts: IntCounterVec::new(
                Opts::new(
                    "game_redis_pool_timeouts_total",
                    "Redis pool timeouts by phase (wait: no free connection; create: connect; recycle).",
                ),
                &["phase"],
            )?,
            commands: IntCounterVec::new(
                Opts::new(
                    "game_redis_commands_total",
                    "Redis commands by operation and outcome (ok, error, pool_exhausted).",
                ),
                &["operation", "outcome"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "game_redis_command_duration_seconds",
                    "Redis command time including the pool wait, by operation.",
                )
                .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5]),
                &["operation"],
            )?,
        };
        r.register(Box::new(m.wait_seconds.clone()))?;
        r.register(Box::new(m.timeouts.clone()))?;
        r.register(Box::new(m.commands.clone()))?;
        r.register(Box::new(m.duration.clone()))?;
        Ok(m)
    }
}

#[derive(Clone)]
pub struct RedisClient {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool<Manager>,
    opts: RedisOptions,
    server_address: String,
    server_port: i64,
    metrics: PoolMetrics,
}

impl RedisClient {
    pub fn new(opts: RedisOptions, registry: &Registry) -> anyhow::Result<Self> {
        let (host, port) = opts
            .addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("--redis-addr must be host:port, got {}", opts.addr))?;
        let manager = Manager {
            addr: opts.addr.clone(),
            connect_timeout: opts.connect_timeout,
            response_timeout: opts.response_timeout,
        };
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size.max(1))
            .wait_timeout(Some(opts.wait_timeout))
            .create_timeout(Some(opts.connect_timeout + opts.connect_timeout))
            .recycle_timeout(Some(opts.connect_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()?;
        let metrics = PoolMetrics::new(registry, pool.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                opts,
                server_address: host,
                server_port: port as i64,
                metrics,
            }),
        })
    }

    pub fn addr(&self) -> &str {
        &self.inner.opts.addr
    }

    /// Run one command inside a client span named after the operation (OTel database
    /// conventions), with the pooled connection's 4-tuple. `operation` is a literal at every
    /// call site (GET, SET, EVAL, ZADD, ZREVRANGE): the `operation` label stays bounded.
    pub async fn query<T: FromRedisValue + Send>(
        &self,
        operation: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisCallError> {
        let span = info_span!(
            "redis",
            "otel.name" = operation,
            "otel.kind" = "client",
            "db.system.name" = "redis",
            "db.operation.name" = operation,
            "db.namespace" = "0",
            // The dependency's logical name (OTel `peer.service`): what an incident about its
            // address calls it.
            "peer.service" = "redis",
            "server.address" = %self.inner.server_address,
            "server.port" = self.inner.server_port,
            "network.transport" = "tcp",
            "network.peer.address" = Empty,
            "network.peer.port" = Empty,
            "network.local.address" = Empty,
            "network.local.port" = Empty,
            "otel.status_code" = Empty,
            "error.type" = Empty,
        );
        let started = Instant::now();
        let result = self.run(cmd).instrument(span.clone()).await;
        let m = &self.inner.metrics;
        m.duration
            .with_label_values(&[operation])
            .observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(_) => "ok",
            Err(RedisCallError::PoolExhausted(_)) => "pool_exhausted",
            Err(_) => "error",
        };
        m.commands.with_label_values(&[operation, outcome]).inc();
        if let Err(e) = &result {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", e.error_type());
            tracing::debug!(parent: &span, "redis {operation} failed: {e}");
        }
        result
    }

    async fn run<T: FromRedisValue + Send>(&self, cmd: &redis::Cmd) -> Result<T, RedisCallError> {
        let m = &self.inner.metrics;
        let waited = Instant::now();
        let mut conn = self.inner.pool.get().await.map_err(|e| match e {
            PoolError::Timeout(t) => {
                let phase = match t {
                    managed::TimeoutType::Wait => "wait",
                    managed::TimeoutType::Create => "create",
                    managed::TimeoutType::Recycle => "recycle",
                };
                m.timeouts.with_label_values(&[phase]).inc();
                match t {
                    managed::TimeoutType::Wait => {
                        RedisCallError::PoolExhausted(self.inner.opts.wait_timeout)
                    }
                    _ => RedisCallError::Connect(format!("{phase} timed out")),
                }
            }
            PoolError::Backend(e) => RedisCallError::Command(e),
            PoolError::Closed => RedisCallError::Closed,
            other => RedisCallError::Connect(other.to_string()),
        })?;
        m.wait_seconds.observe(waited.elapsed().as_secs_f64());
        record_addrs(&Span::current(), conn.local, conn.peer);
        let r: Result<T, RedisError> = cmd.query_async(&mut conn.inner).await;
        if let Err(e) = &r
            && (e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
                || e.is_unrecoverable_error())
        {
            conn.broken = true;
        }
        Ok(r?)
    }
}
