//! Kernel → agent: loading the eBPF object, attaching its programs, and reading what they report.
pub mod events;
pub mod layout;
pub mod preflight;
pub mod ring;
pub mod tracefs;

use std::path::PathBuf;

use agent_common::{COUNTER_MAX, Counter};
use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};

use self::tracefs::Tracefs;

/// The eBPF object built by build.rs from `agent-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Bytes in the TCP event ring (a power of two, at least one page).
    pub tcp_ring_bytes: u32,
    /// Entries in the socket → owner table.
    pub sock_owner_entries: u32,
    /// Use this tracefs mount instead of looking in the standard places.
    pub tracefs: Option<PathBuf>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self { tcp_ring_bytes: 256 * 1024, sock_owner_entries: 65536, tracefs: None }
    }
}

/// (category, tracepoint, program) — the classic tracepoints the object attaches to.
const TRACEPOINTS: [(&str, &str, &str); 7] = [
    ("tcp", "tcp_send_reset", "tcp_send_reset"),
    ("tcp", "tcp_receive_reset", "tcp_receive_reset"),
    ("tcp", "tcp_retransmit_skb", "tcp_retransmit_skb"),
    ("tcp", "tcp_destroy_sock", "tcp_destroy_sock"),
    ("sock", "sock_send_length", "sock_send_length"),
    ("sock", "sock_recv_length", "sock_recv_length"),
    ("sock", "inet_sock_set_state", "inet_sock_set_state"),
];

/// Loaded and attached probes. Dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
}

impl Probes {
    pub fn load(cfg: &ProbeConfig) -> Result<Self> {
        preflight::check_privileges()?;
        let tracefs = Tracefs::locate(cfg.tracefs.as_deref())?;
        if !cfg.tcp_ring_bytes.is_power_of_two() || cfg.tcp_ring_bytes < 4096 {
            anyhow::bail!("--tcp-ring-bytes must be a power of two ≥ 4096, got {}", cfg.tcp_ring_bytes);
        }

        // Record layouts first: a missing tracepoint is reported before anything is loaded.
        let send_reset = layout::tcp("tcp:tcp_send_reset", &tracefs.format("tcp", "tcp_send_reset")?)?;
        let receive_reset =
            layout::tcp("tcp:tcp_receive_reset", &tracefs.format("tcp", "tcp_receive_reset")?)?;
        let retransmit =
            layout::tcp("tcp:tcp_retransmit_skb", &tracefs.format("tcp", "tcp_retransmit_skb")?)?;
        let destroy = layout::tcp("tcp:tcp_destroy_sock", &tracefs.format("tcp", "tcp_destroy_sock")?)?;
        let sock_length =
            layout::sock("sock:sock_send_length", &tracefs.format("sock", "sock_send_length")?)?;
        let set_state =
            layout::sock("sock:inet_sock_set_state", &tracefs.format("sock", "inet_sock_set_state")?)?;

        let mut ebpf = EbpfLoader::new()
            .override_global("SEND_RESET_LAYOUT", &send_reset, true)
            .override_global("RECEIVE_RESET_LAYOUT", &receive_reset, true)
            .override_global("RETRANSMIT_LAYOUT", &retransmit, true)
            .override_global("DESTROY_LAYOUT", &destroy, true)
            .override_global("SOCK_LENGTH_LAYOUT", &sock_length, true)
            .override_global("SET_STATE_LAYOUT", &set_state, true)
            .map_max_entries("TCP_EVENTS", cfg.tcp_ring_bytes)
            .map_max_entries("SOCK_OWNERS", cfg.sock_owner_entries)
            .load(OBJECT)
            .context("loading the eBPF object failed")?;

        for (category, name, program) in TRACEPOINTS {
            let prog: &mut TracePoint = ebpf
                .program_mut(program)
                .with_context(|| format!("program {program} missing from the object"))?
                .try_into()?;
            prog.load().with_context(|| format!("the verifier rejected {program}"))?;
            prog.attach(category, name)
                .with_context(|| format!("attaching to tracepoint {category}:{name} failed"))?;
        }
        let counters = PerCpuArray::try_from(ebpf.take_map("COUNTERS").context("COUNTERS map")?)?;
        tracing::info!(tracefs = %tracefs.root().display(), programs = TRACEPOINTS.len(), "probes attached");
        Ok(Self { ebpf, counters })
    }

    /// The in-kernel lossless counters, summed over CPUs, indexed by [`Counter`].
    pub fn counters(&self) -> Result<[u64; COUNTER_MAX as usize]> {
        let mut out = [0u64; COUNTER_MAX as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = self.counters.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    pub fn counter(&self, c: Counter) -> Result<u64> {
        Ok(self.counters.get(&(c as u32), 0)?.iter().sum())
    }

    /// Takes the TCP event ring (once) for a [`ring::RingReader`].
    pub fn take_tcp_ring(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map("TCP_EVENTS").context("TCP_EVENTS already taken")?;
        Ok(RingBuf::try_from(map)?)
    }
}
