//! Kernel → agent: loading the eBPF object, attaching its programs, and reading what they report.
pub mod btf;
pub mod layout;
pub mod maps;
pub mod preflight;
pub mod ring;
pub mod tracefs;
pub mod watch;

use std::{collections::HashMap, path::PathBuf};

use agent_common::{COUNTER_MAX, Counter, RunqConfig, RunqHist, RunqTotals, TaskLayout};
use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePoint, TracePoint},
};

use self::tracefs::Tracefs;
pub use crate::shared::event::RunqHistogram;

/// The eBPF object built by build.rs from `agent-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Bytes in the TCP event ring (a power of two, at least one page).
    pub tcp_ring_bytes: u32,
    /// Bytes in the run-queue event ring.
    pub runq_ring_bytes: u32,
    /// Entries in the socket → owner table.
    pub sock_owner_entries: u32,
    /// Use this tracefs mount instead of looking in the standard places.
    pub tracefs: Option<PathBuf>,
    /// Measure run-queue latency of every task, not only watched processes.
    pub runq_watch_all: bool,
    /// Run-queue delays at or above this (ns) are reported one by one.
    pub runq_event_threshold_ns: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            tcp_ring_bytes: 256 * 1024,
            runq_ring_bytes: 256 * 1024,
            sock_owner_entries: 65536,
            tracefs: None,
            runq_watch_all: false,
            runq_event_threshold_ns: 50_000,
        }
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

/// BTF tracepoints (program = tracepoint name): the scheduler path is hot, so these take typed
/// arguments directly instead of a formatted trace record.
const BTF_TRACEPOINTS: [&str; 4] = [
    "sched_wakeup",
    "sched_wakeup_new",
    "sched_switch",
    "sched_process_exit",
];

/// Loaded and attached probes. Dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    runq_config: Array<MapData, RunqConfig>,
    runq_watch: BpfHashMap<MapData, u32, u8>,
    runq_hist: PerCpuHashMap<MapData, u32, RunqHist>,
    runq_tid: PerCpuHashMap<MapData, u32, RunqTotals>,
}

fn task_layout() -> Result<TaskLayout> {
    let btf = btf::Btf::from_sys_fs()?;
    let field = |name: &str| {
        btf.member("task_struct", name).with_context(|| {
            format!("kernel BTF has no task_struct.{name}; this kernel is not supported")
        })
    };
    let (pid, _) = field("pid")?;
    let (tgid, _) = field("tgid")?;
    let (comm, _) = field("comm")?;
    // `state` became `__state` (unsigned int) in 5.14.
    let (state, state_size) = field("__state").or_else(|_| field("state"))?;
    Ok(TaskLayout {
        pid,
        tgid,
        state,
        state_size,
        comm,
        _pad: 0,
    })
}

fn check_ring_size(flag: &str, bytes: u32) -> Result<()> {
    if !bytes.is_power_of_two() || bytes < 4096 {
        bail!("--{flag} must be a power of two ≥ 4096, got {bytes}");
    }
    Ok(())
}

impl Probes {
    pub fn load(cfg: &ProbeConfig) -> Result<Self> {
        check_ring_size("tcp-ring-bytes", cfg.tcp_ring_bytes)?;
        check_ring_size("runq-ring-bytes", cfg.runq_ring_bytes)?;
        preflight::check_privileges()?;
        preflight::check_btf()?;
        let tracefs = Tracefs::locate(cfg.tracefs.as_deref())?;

        // Layouts first: a missing tracepoint or field is reported before anything is loaded.
        let tcp = |name: &str| -> Result<_> {
            layout::tcp(&format!("tcp:{name}"), &tracefs.format("tcp", name)?)
        };
        let sock = |name: &str| -> Result<_> {
            layout::sock(&format!("sock:{name}"), &tracefs.format("sock", name)?)
        };
        let (send_reset, receive_reset) = (tcp("tcp_send_reset")?, tcp("tcp_receive_reset")?);
        let (retransmit, destroy) = (tcp("tcp_retransmit_skb")?, tcp("tcp_destroy_sock")?);
        let (sock_length, set_state) = (sock("sock_send_length")?, sock("inet_sock_set_state")?);
        let task = task_layout()?;

        let mut ebpf = EbpfLoader::new()
            .override_global("SEND_RESET_LAYOUT", &send_reset, true)
            .override_global("RECEIVE_RESET_LAYOUT", &receive_reset, true)
            .override_global("RETRANSMIT_LAYOUT", &retransmit, true)
            .override_global("DESTROY_LAYOUT", &destroy, true)
            .override_global("SOCK_LENGTH_LAYOUT", &sock_length, true)
            .override_global("SET_STATE_LAYOUT", &set_state, true)
            .override_global("TASK_LAYOUT", &task, true)
            .map_max_entries("TCP_EVENTS", cfg.tcp_ring_bytes)
            .map_max_entries("RUNQ_EVENTS", cfg.runq_ring_bytes)
            .map_max_entries("SOCK_OWNERS", cfg.sock_owner_entries)
            .load(OBJECT)
            .context("loading the eBPF object failed")?;

        // Configure before attaching, so the first event already sees the settings.
        let mut runq_config: Array<_, RunqConfig> =
            Array::try_from(ebpf.take_map("RUNQ_CONFIG").context("RUNQ_CONFIG map")?)?;
        runq_config.set(
            0,
            RunqConfig {
                watch_all: u32::from(cfg.runq_watch_all),
                _pad: 0,
                event_threshold_ns: cfg.runq_event_threshold_ns,
            },
            0,
        )?;

        for (category, name, program) in TRACEPOINTS {
            let prog: &mut TracePoint = ebpf
                .program_mut(program)
                .with_context(|| format!("program {program} missing from the object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("the verifier rejected {program}"))?;
            prog.attach(category, name)
                .with_context(|| format!("attaching to tracepoint {category}:{name} failed"))?;
        }
        let kernel_btf = aya::Btf::from_sys_fs().context("reading kernel BTF")?;
        for name in BTF_TRACEPOINTS {
            let prog: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            prog.load(name, &kernel_btf)
                .with_context(|| format!("loading BTF tracepoint {name} failed"))?;
            prog.attach()
                .with_context(|| format!("attaching BTF tracepoint {name} failed"))?;
        }

        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name).with_context(|| format!("{name} map"))
        };
        let counters = PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?)?;
        let runq_watch = BpfHashMap::try_from(take(&mut ebpf, "RUNQ_WATCH")?)?;
        let runq_hist = PerCpuHashMap::try_from(take(&mut ebpf, "RUNQ_HIST")?)?;
        let runq_tid = PerCpuHashMap::try_from(take(&mut ebpf, "RUNQ_TID")?)?;
        tracing::info!(
            tracefs = %tracefs.root().display(),
            programs = TRACEPOINTS.len() + BTF_TRACEPOINTS.len(),
            "probes attached"
        );
        Ok(Self {
            ebpf,
            counters,
            runq_config,
            runq_watch,
            runq_hist,
            runq_tid,
        })
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

    /// Takes the TCP event ring (once) for a [`ring`] reader.
    pub fn take_tcp_ring(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("TCP_EVENTS")
            .context("TCP_EVENTS already taken")?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Takes the run-queue event ring (once).
    pub fn take_runq_ring(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("RUNQ_EVENTS")
            .context("RUNQ_EVENTS already taken")?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Starts measuring run-queue latency for process `tgid`.
    pub fn watch(&mut self, tgid: u32) -> Result<()> {
        self.runq_watch
            .insert(tgid, 1, 0)
            .with_context(|| format!("watching pid {tgid}"))
    }

    pub fn unwatch(&mut self, tgid: u32) -> Result<()> {
        match self.runq_watch.remove(&tgid) {
            Ok(()) => Ok(()),
            // Already gone is fine: the goal is "not watched".
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub fn watched(&self) -> Vec<u32> {
        self.runq_watch.keys().filter_map(|k| k.ok()).collect()
    }

    pub fn set_runq_config(&mut self, watch_all: bool, event_threshold_ns: u64) -> Result<()> {
        let cfg = RunqConfig {
            watch_all: u32::from(watch_all),
            _pad: 0,
            event_threshold_ns,
        };
        Ok(self.runq_config.set(0, cfg, 0)?)
    }

    /// Per-process run-queue histograms, summed over CPUs.
    pub fn runq_histograms(&self) -> Result<HashMap<u32, RunqHistogram>> {
        let mut out = HashMap::new();
        for item in self.runq_hist.iter() {
            let (tgid, per_cpu) = item?;
            let mut h = RunqHistogram {
                slots: vec![0; RunqHist::ZERO.slots.len()],
                sum_ns: 0,
            };
            for v in per_cpu.iter() {
                for (acc, n) in h.slots.iter_mut().zip(v.slots) {
                    *acc += n;
                }
                h.sum_ns += v.sum_ns;
            }
            out.insert(tgid, h);
        }
        Ok(out)
    }

    /// Cumulative run-queue delay of one thread, summed over CPUs (max over CPUs).
    pub fn runq_totals(&self, tid: u32) -> Result<Option<RunqTotals>> {
        match self.runq_tid.get(&tid, 0) {
            Ok(values) => Ok(Some(values.iter().fold(RunqTotals::default(), |acc, v| {
                RunqTotals {
                    total_ns: acc.total_ns + v.total_ns,
                    count: acc.count + v.count,
                    max_ns: acc.max_ns.max(v.max_ns),
                }
            }))),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
