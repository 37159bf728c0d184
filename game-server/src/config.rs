//! Command-line / environment configuration of the game server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Parser, Debug, Clone)]
#[command(name = "game-server", about = "Real-time WebSocket game server")]
pub struct Config {
    /// Address serving /ws, /metrics, /healthz, /readyz (and /login, /admin/batch).
    #[arg(long, env = "GAME_LISTEN", default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,
    /// Directory holding the SQLite player store.
    #[arg(long, env = "GAME_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Log lines on stderr as text (coloured only on a terminal) or as one JSON object per
    /// line, for a log pipeline. RUST_LOG sets the level (default info).
    #[arg(long, env = "GAME_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Allowed browser Origins (repeatable or comma-separated). Requests without an
    /// Origin header (non-browser clients) are accepted if their token is valid.
    #[arg(
        long = "allowed-origin",
        env = "GAME_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
    /// HMAC secret for session tokens. Required unless --dev (then a random one is used).
    #[arg(long, env = "GAME_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// Bearer token for /admin endpoints (without it, /admin is only open in --dev).
    #[arg(long, env = "GAME_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Development mode: enables POST /login and unauthenticated /admin.
    #[arg(long, env = "GAME_DEV")]
    pub dev: bool,
    /// Lifetime of tokens issued by /login.
    #[arg(long, env = "GAME_TOKEN_TTL_SECS", default_value_t = 3600)]
    pub token_ttl_secs: u64,

    /// Simulation rate of every room.
    #[arg(long, env = "GAME_TICK_HZ", default_value_t = 20)]
    pub tick_hz: u32,
    /// Most ticks a room runs back to back to catch up after a stall; the rest is dropped.
    #[arg(long, env = "GAME_MAX_CATCHUP_TICKS", default_value_t = 4)]
    pub max_catchup_ticks: u32,
    /// Wandering NPCs per room (they make deltas non-trivial).
    #[arg(long, env = "GAME_NPCS_PER_ROOM", default_value_t = 8)]
    pub npcs_per_room: u32,
    /// Most members per room.
    #[arg(long, env = "GAME_MAX_ROOM_MEMBERS", default_value_t = 200)]
    pub max_room_members: usize,
    /// How long a disconnected player stays in its room, resumable by reconnecting.
    #[arg(long, env = "GAME_RECONNECT_GRACE_MS", default_value_t = 10_000)]
    pub reconnect_grace_ms: u64,

    /// Most open connections (WebSocket sessions and plain HTTP); beyond it a new connection
    /// gets `503` and is closed. 0: the fd limit (soft RLIMIT_NOFILE) less 64.
    #[arg(long, env = "GAME_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,
    /// Time a new connection has to send its complete HTTP request head (the WebSocket
    /// upgrade included); slower ones are closed (slowloris).
    #[arg(long, env = "GAME_HANDSHAKE_TIMEOUT_MS", default_value_t = 5_000)]
    pub handshake_timeout_ms: u64,
    /// Largest accepted WebSocket message (and frame), bytes.
    #[arg(long, env = "GAME_MAX_MESSAGE_BYTES", default_value_t = 4096)]
    pub max_message_bytes: usize,
    /// Sustained client messages per second per connection.
    #[arg(long, env = "GAME_MSG_RATE", default_value_t = 60)]
    pub msg_rate: u32,
    /// Burst allowance on top of --msg-rate.
    #[arg(long, env = "GAME_MSG_BURST", default_value_t = 120)]
    pub msg_burst: u32,
    /// Idle time after which the server pings a session.
    #[arg(long, env = "GAME_HEARTBEAT_INTERVAL_MS", default_value_t = 5_000)]
    pub heartbeat_interval_ms: u64,
    /// Idle time after which a silent session is kicked.
    #[arg(long, env = "GAME_HEARTBEAT_TIMEOUT_MS", default_value_t = 15_000)]
    pub heartbeat_timeout_ms: u64,
    /// Frames queued towards one client before it counts as a slow consumer.
    #[arg(long, env = "GAME_OUTBOUND_QUEUE", default_value_t = 128)]
    pub outbound_queue: usize,

    /// Write-behind interval of the player store (the crash-loss window, see README).
    #[arg(long, env = "GAME_FLUSH_INTERVAL_MS", default_value_t = 1_000)]
    pub flush_interval_ms: u64,

    /// Worker pool: minimum (pre-warmed) OS worker threads.
    #[arg(long, env = "GAME_POOL_MIN_WORKERS", default_value_t = 2)]
    pub pool_min_workers: usize,
    /// Worker pool: maximum OS worker threads.
    #[arg(long, env = "GAME_POOL_MAX_WORKERS", default_value_t = 8)]
    pub pool_max_workers: usize,
    /// Worker pool: bounded queue capacity.
    #[arg(long, env = "GAME_POOL_QUEUE", default_value_t = 1024)]
    pub pool_queue: usize,

    /// Scheduled full-sync batch job period in seconds (0 = only on demand via /admin/batch).
    #[arg(long, env = "GAME_BATCH_EVERY_SECS", default_value_t = 0)]
    pub batch_every_secs: u64,
    /// Tasks submitted by each scheduled full sync.
    #[arg(long, env = "GAME_BATCH_TASKS", default_value_t = 500)]
    pub batch_tasks: u32,

    /// Redis `host:port`: session resume tokens, the leaderboard and the room directory live
    /// there. Unset = a single server without Redis (every room is local).
    #[arg(long, env = "GAME_REDIS_ADDR")]
    pub redis_addr: Option<String>,
    /// Most connections the Redis pool opens.
    #[arg(long, env = "GAME_REDIS_POOL_SIZE", default_value_t = 8)]
    pub redis_pool_size: usize,
    /// How long a Redis command waits for a free pooled connection before it fails.
    #[arg(long, env = "GAME_REDIS_WAIT_TIMEOUT_MS", default_value_t = 500)]
    pub redis_wait_timeout_ms: u64,
    /// Connect timeout of a new Redis connection.
    #[arg(long, env = "GAME_REDIS_CONNECT_TIMEOUT_MS", default_value_t = 1_000)]
    pub redis_connect_timeout_ms: u64,
    /// How long a Redis command waits for its reply.
    #[arg(long, env = "GAME_REDIS_RESPONSE_TIMEOUT_MS", default_value_t = 1_000)]
    pub redis_response_timeout_ms: u64,
    /// Leaderboard top-10 reads per second (what a lobby screen polls).
    #[arg(long, env = "GAME_LEADERBOARD_READ_RATE", default_value_t = 20)]
    pub leaderboard_read_rate: u32,
    /// The WebSocket URL other servers send this server's rooms' players to (in Kubernetes the
    /// pod's DNS name under the headless Service). Default: ws://<--listen>/ws.
    #[arg(long, env = "GAME_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// Room ownership lease in the directory; the owner renews it every third of it. A dead
    /// server's rooms move after at most this long.
    #[arg(long, env = "GAME_ROOM_LEASE_MS", default_value_t = 6_000)]
    pub room_lease_ms: u64,

    /// How long shutdown waits for sessions to close and the store to flush.
    #[arg(long, env = "GAME_SHUTDOWN_GRACE_MS", default_value_t = 5_000)]
    pub shutdown_grace_ms: u64,
}

impl Config {
    pub fn tick_dt(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.tick_hz.max(1) as f64)
    }
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms.max(self.heartbeat_interval_ms))
    }
    pub fn reconnect_grace(&self) -> Duration {
        Duration::from_millis(self.reconnect_grace_ms)
    }
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms.max(10))
    }
}
