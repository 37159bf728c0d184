//! Wiring: shared state, startup, and an orderly shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::background::{Background, PoolSizing};
use crate::config::Config;
use crate::directory::Directory;
use crate::gateway::{self, admission::Admission};
use crate::metrics::Metrics;
use crate::persistence::Persistence;
use crate::redis_client::{RedisClient, RedisOptions};
use crate::room::Rooms;

pub struct App {
    pub cfg: Config,
    pub metrics: Arc<Metrics>,
    pub rooms: Rooms,
    pub persistence: Arc<Persistence>,
    pub bg: Background,
    /// Redis (with --redis-addr): leaderboard, resume tokens, and the room directory.
    pub redis: Option<RedisClient>,
    pub directory: Option<Directory>,
    pub secret: Vec<u8>,
    pub shutdown: CancellationToken,
    pub sessions: TaskTracker,
    session_seq: AtomicU64,
    session_base: u64,
}

impl App {
    /// Unique, unguessable-enough session id (random base + counter).
    pub fn new_session_id(&self) -> u64 {
        let n = self.session_seq.fetch_add(1, Ordering::Relaxed);
        self.session_base ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("getrandom");
    u64::from_le_bytes(b)
}

/// Resolve the token secret: required in production, random in dev mode.
fn token_secret(cfg: &Config) -> anyhow::Result<Vec<u8>> {
    match &cfg.token_secret {
        Some(s) if s.len() >= 16 => Ok(s.as_bytes().to_vec()),
        Some(_) => anyhow::bail!("--token-secret must be at least 16 bytes"),
        None if cfg.dev => {
            let mut b = vec![0u8; 32];
            getrandom::fill(&mut b)?;
            tracing::warn!("dev mode: using a random token secret (tokens die with the process)");
            Ok(b)
        }
        None => anyhow::bail!("--token-secret (GAME_TOKEN_SECRET) is required unless --dev"),
    }
}

async fn shutdown_signal(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = token.cancelled() => {}
    }
    tracing::info!("shutting down");
    token.cancel();
}

/// Renews the directory leases of the rooms this server runs, every third of the lease.
async fn renew_leases(app: Arc<App>, dir: Directory) {
    let mut t = tokio::time::interval(dir.lease() / 3);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = t.tick() => {}
        }
        let rooms: Vec<Arc<str>> = app.rooms.list().into_iter().map(|(n, _)| n).collect();
        dir.renew(&rooms).await;
    }
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let secret = token_secret(&cfg)?;
    let metrics = Arc::new(Metrics::new());
    let bg = Background::new(
        PoolSizing {
            min_workers: cfg.pool_min_workers,
            max_workers: cfg.pool_max_workers,
            queue_capacity: cfg.pool_queue,
        },
        &metrics.registry,
    )?;
    let persistence = Persistence::open(&cfg.data_dir, bg.clone(), metrics.clone())?;
    let shutdown = CancellationToken::new();
    let rooms = Rooms::new(
        cfg.clone(),
        metrics.clone(),
        persistence.clone(),
        shutdown.clone(),
    );
    let listener = TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let redis = match &cfg.redis_addr {
        Some(a) => Some(RedisClient::new(
            RedisOptions {
                addr: a.clone(),
                pool_size: cfg.redis_pool_size,
                wait_timeout: Duration::from_millis(cfg.redis_wait_timeout_ms),
                connect_timeout: Duration::from_millis(cfg.redis_connect_timeout_ms),
                response_timeout: Duration::from_millis(cfg.redis_response_timeout_ms),
            },
            &metrics.registry,
        )?),
        None => None,
    };
    let directory = match &redis {
        Some(r) => Some(Directory::new(
            r.clone(),
            cfg.advertise_url
                .clone()
                .unwrap_or_else(|| format!("ws://{addr}/ws")),
            Duration::from_millis(cfg.room_lease_ms.max(300)),
            &metrics.registry,
        )?),
        None => None,
    };
    let app = Arc::new(App {
        cfg: cfg.clone(),
        redis,
        directory,
        metrics,
        rooms,
        persistence: persistence.clone(),
        bg: bg.clone(),
        secret,
        shutdown: shutdown.clone(),
        sessions: TaskTracker::new(),
        session_seq: AtomicU64::new(1),
        session_base: random_u64(),
    });

    let admission = Admission::new(
        cfg.max_connections,
        Duration::from_millis(cfg.handshake_timeout_ms.max(1)),
    );
    tracing::info!(
        max_connections = admission.max_connections,
        "connection cap (beyond it: 503)"
    );
    // Tests and tools read this line to learn the bound port.
    println!("game-server listening on {addr}");
    tracing::info!(%addr, dev = cfg.dev, "listening");

    let flush_stop = CancellationToken::new();
    let flusher = persistence.spawn_flusher(cfg.flush_interval(), flush_stop.clone());
    crate::batch::spawn_schedule(
        app.clone(),
        Duration::from_secs(cfg.batch_every_secs),
        cfg.batch_tasks,
    );

    if let Some(redis) = app.redis.clone() {
        tracing::info!(redis = redis.addr(), "using Redis");
        tokio::spawn(crate::cache::run_leaderboard_reads(
            app.clone(),
            redis,
            cfg.leaderboard_read_rate,
        ));
    }
    if let Some(dir) = app.directory.clone() {
        tokio::spawn(renew_leases(app.clone(), dir));
    }

    tokio::spawn(shutdown_signal(shutdown.clone()));
    let router = gateway::router(app.clone());
    gateway::admission::serve(
        listener,
        router,
        admission,
        app.metrics.clone(),
        shutdown.clone(),
    )
    .await;

    // Order matters: sessions send their close frames, rooms stage every player,
    // then the store is flushed, then the pool drains.
    let grace = Duration::from_millis(cfg.shutdown_grace_ms);
    if let Some(dir) = &app.directory {
        // Free our rooms in the directory first: players reconnecting to another replica
        // place them there at once instead of after the lease.
        let rooms: Vec<Arc<str>> = app.rooms.list().into_iter().map(|(n, _)| n).collect();
        let _ = tokio::time::timeout(grace, dir.release(&rooms)).await;
    }
    app.sessions.close();
    if tokio::time::timeout(grace, app.sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!("sessions still open after the shutdown grace");
    }
    if tokio::time::timeout(grace, app.rooms.wait_closed())
        .await
        .is_err()
    {
        tracing::warn!("rooms still running after the shutdown grace");
    }
    flush_stop.cancel();
    let _ = flusher.await;
    match app.persistence.flush().await {
        Ok(n) => tracing::info!(records = n, "final flush done"),
        Err(e) => tracing::error!("final flush failed: {e:#}"),
    }
    bg.shutdown(grace).await;
    Ok(())
}
