//! Command line and environment.
use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

use crate::probes::ProbeConfig;

#[derive(Debug, Parser)]
#[command(name = "kernelsight-agent", version, about = "Watches a game server from the kernel with eBPF and joins what it sees to the server's spans.")]
pub struct Config {
    /// Address of the HTTP listener (/metrics, /healthz, /readyz).
    #[arg(long, env = "KERNELSIGHT_HTTP_ADDR", default_value = "127.0.0.1:9464")]
    pub http_addr: SocketAddr,

    /// Size of the TCP event ring buffer in bytes (power of two, ≥ 4096).
    #[arg(long, env = "KERNELSIGHT_TCP_RING_BYTES", default_value_t = 256 * 1024)]
    pub tcp_ring_bytes: u32,

    /// Capacity of the socket → owner table.
    #[arg(long, env = "KERNELSIGHT_SOCK_OWNER_ENTRIES", default_value_t = 65536)]
    pub sock_owner_entries: u32,

    /// tracefs mount point (default: /sys/kernel/tracing, then /sys/kernel/debug/tracing).
    #[arg(long, env = "KERNELSIGHT_TRACEFS")]
    pub tracefs: Option<PathBuf>,
}

impl Config {
    pub fn probe_config(&self) -> ProbeConfig {
        ProbeConfig {
            tcp_ring_bytes: self.tcp_ring_bytes,
            sock_owner_entries: self.sock_owner_entries,
            tracefs: self.tracefs.clone(),
        }
    }
}
