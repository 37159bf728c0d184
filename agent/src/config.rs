//! Command line and environment.
use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

use crate::probes::{ProbeConfig, watch::Selectors};

#[derive(Debug, Parser)]
#[command(
    name = "kernelsight-agent",
    version,
    about = "Watches a game server from the kernel with eBPF and joins what it sees to the server's spans."
)]
pub struct Config {
    /// Address of the HTTP listener (/metrics, /healthz, /readyz).
    #[arg(long, env = "KERNELSIGHT_HTTP_ADDR", default_value = "127.0.0.1:9464")]
    pub http_addr: SocketAddr,

    /// Size of the TCP event ring buffer in bytes (power of two, ≥ 4096).
    #[arg(long, env = "KERNELSIGHT_TCP_RING_BYTES", default_value_t = 256 * 1024)]
    pub tcp_ring_bytes: u32,

    /// Size of the run-queue event ring buffer in bytes (power of two, ≥ 4096).
    #[arg(long, env = "KERNELSIGHT_RUNQ_RING_BYTES", default_value_t = 256 * 1024)]
    pub runq_ring_bytes: u32,

    /// Watch the run-queue latency of these processes (repeatable).
    #[arg(long = "pid", env = "KERNELSIGHT_PIDS", value_delimiter = ',')]
    pub pids: Vec<u32>,

    /// Watch processes with this command name, e.g. `game-server` (repeatable).
    #[arg(long = "comm", env = "KERNELSIGHT_COMMS", value_delimiter = ',')]
    pub comms: Vec<String>,

    /// Watch processes in this cgroup v2 subtree (absolute or under /sys/fs/cgroup; repeatable).
    #[arg(long = "cgroup", env = "KERNELSIGHT_CGROUPS", value_delimiter = ',')]
    pub cgroups: Vec<PathBuf>,

    /// Measure run-queue latency for every task on the node (costs more per context switch).
    #[arg(long, env = "KERNELSIGHT_WATCH_ALL")]
    pub watch_all: bool,

    /// Report each run-queue delay at or above this many microseconds as an event (below it,
    /// delays still count in the histograms and per-thread totals).
    #[arg(
        long,
        env = "KERNELSIGHT_RUNQ_EVENT_THRESHOLD_US",
        default_value_t = 50
    )]
    pub runq_event_threshold_us: u64,

    /// Capacity of the socket → owner table.
    #[arg(long, env = "KERNELSIGHT_SOCK_OWNER_ENTRIES", default_value_t = 65536)]
    pub sock_owner_entries: u32,

    /// tracefs mount point (default: /sys/kernel/tracing, then /sys/kernel/debug/tracing).
    #[arg(long, env = "KERNELSIGHT_TRACEFS")]
    pub tracefs: Option<PathBuf>,

    /// OTLP receivers, joins, detection and forwarding.
    #[command(flatten)]
    pub correlation: crate::correlator::CorrelationArgs,

    /// The page at / (timeline, incidents, trace links).
    #[command(flatten)]
    pub ui: crate::export::ui::UiArgs,
}

impl Config {
    pub fn selectors(&self) -> Selectors {
        Selectors {
            pids: self.pids.clone(),
            comms: self.comms.clone(),
            cgroups: self.cgroups.clone(),
        }
    }

    pub fn probe_config(&self) -> ProbeConfig {
        ProbeConfig {
            tcp_ring_bytes: self.tcp_ring_bytes,
            runq_ring_bytes: self.runq_ring_bytes,
            runq_watch_all: self.watch_all,
            runq_event_threshold_ns: self.runq_event_threshold_us.saturating_mul(1000),
            sock_owner_entries: self.sock_owner_entries,
            tracefs: self.tracefs.clone(),
        }
    }
}
