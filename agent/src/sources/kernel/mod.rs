//! Kernel → agent: loading the eBPF object, attaching its programs, and reading what they report.
pub mod btf;
pub mod layout;
pub mod maps;
pub mod owners;
pub mod preflight;
pub mod ring;
pub mod tracefs;
pub mod watch;

use std::{collections::HashMap, path::PathBuf};

use agent_common::{
    COUNTER_MAX, CULPRIT_SLOT_COUNT, Counter, CulpritKey, CulpritSlot, CulpritVal, RUNQ_TASK_SLOTS,
    RunqConfig, RunqHist, RunqTask, RunqTotals, SockLayout, TaskLayout, TcpTpLayout,
};
use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePoint, TracePoint},
};

use self::tracefs::Tracefs;
pub use crate::shared::event::{CulpritTotal, RunqHistogram};

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

pub use crate::shared::event::ProbeStatus;

enum Prog {
    /// A classic tracepoint (category, name); the program has the tracepoint's name.
    Tp(&'static str, &'static str),
    /// A BTF tracepoint; the program has the tracepoint's name.
    TpBtf(&'static str),
}

/// The features, in the order their status is reported. `tcp_*` counters need only tracefs;
/// socket owners and run-queue latency need the kernel's BTF as well.
const FEATURES: [(&str, &[Prog]); 7] = [
    ("tcp_rst_sent", &[Prog::Tp("tcp", "tcp_send_reset")]),
    ("tcp_rst_received", &[Prog::Tp("tcp", "tcp_receive_reset")]),
    ("tcp_retransmit", &[Prog::Tp("tcp", "tcp_retransmit_skb")]),
    (
        "sock_owner_connect",
        &[Prog::Tp("sock", "inet_sock_set_state")],
    ),
    // Accepted connections are owned by the listener on their port: the same program as
    // connect, with listen() recorded per network namespace (needs BTF for that).
    ("sock_owner_accept", &[]),
    // Forgets owners of destroyed sockets (without it the LRU table ages them out).
    ("sock_owner_cleanup", &[Prog::Tp("tcp", "tcp_destroy_sock")]),
    (
        "runq",
        &[
            Prog::TpBtf("sched_wakeup"),
            Prog::TpBtf("sched_wakeup_new"),
            Prog::TpBtf("sched_switch"),
            Prog::TpBtf("sched_process_exit"),
        ],
    ),
];

/// Ring bytes waiting before the kernel wakes the reader (the reader also drains every
/// `ring::DRAIN_EVERY`).
fn wake_bytes(ring_bytes: u32) -> u64 {
    u64::from(ring_bytes / 8)
}

/// Loaded and attached probes. Dropping it detaches everything.
pub struct Probes {
    ebpf: Ebpf,
    status: Vec<ProbeStatus>,
    sock_layout: SockLayout,
    counters: PerCpuArray<MapData, u64>,
    runq_config: Array<MapData, RunqConfig>,
    runq_watch: BpfHashMap<MapData, u32, u8>,
    runq_watch_slots: Array<MapData, u32>,
    runq_hist: PerCpuHashMap<MapData, u32, RunqHist>,
    runq_tasks: Array<MapData, RunqTask>,
    runq_culprits: PerCpuHashMap<MapData, CulpritKey, CulpritVal>,
    runq_culprit_slots: PerCpuArray<MapData, CulpritSlot>,
}

const WATCH_SLOTS: u32 = 65536;
const WATCH_SHARED: u32 = u32::MAX;

fn task_layout(btf: &btf::Btf) -> Result<TaskLayout> {
    let field = |name: &str| {
        btf.member("task_struct", name)
            .with_context(|| format!("kernel BTF has no task_struct.{name}"))
    };
    let (pid, _) = field("pid")?;
    let (tgid, _) = field("tgid")?;
    let (comm, _) = field("comm")?;
    // `state` (long) became `__state` (unsigned int) in 5.14.
    let (state, state_size) = field("__state").or_else(|_| field("state"))?;
    // The CPU a task is queued on: `task_struct.cpu` until 5.16 moved it into `thread_info`
    // (embedded in task_struct on x86). Unknown: 0, and culprit accounting stays off.
    let cpu = field("cpu").map(|(off, _)| off).ok().or_else(|| {
        let (ti, _) = btf.member("task_struct", "thread_info")?;
        let (cpu, _) = btf.member("thread_info", "cpu")?;
        Some(ti + cpu)
    });
    if cpu.is_none() {
        tracing::warn!(
            "kernel BTF has neither task_struct.cpu nor thread_info.cpu: run-queue culprits are off"
        );
    }
    Ok(TaskLayout {
        pid,
        tgid,
        state,
        state_size,
        comm,
        cpu: cpu.unwrap_or(0),
    })
}

/// Where the socket structs keep what the owner programs read.
pub fn sock_layout(btf: &btf::Btf) -> Result<SockLayout> {
    let member = |s: &str, m: &str| {
        btf.member(s, m)
            .map(|(off, _)| off)
            .with_context(|| format!("kernel BTF has no {s}.{m}"))
    };
    Ok(SockLayout {
        sock_net: member("sock_common", "skc_net")?,
        sock_socket: member("sock", "sk_socket")?,
        socket_ino: member("socket_alloc", "vfs_inode")? + member("inode", "i_ino")?,
        valid: 1,
    })
}

/// Parsing the kernel's BTF (twice: ours for offsets, aya's for attach ids) leaves tens of MB of
/// small freed allocations that glibc keeps in the heap; hand them back so the agent's RSS is
/// what it uses, not what loading once touched.
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn check_ring_size(flag: &str, bytes: u32) -> Result<()> {
    if !bytes.is_power_of_two() || bytes < 4096 {
        bail!("--{flag} must be a power of two ≥ 4096, got {bytes}");
    }
    Ok(())
}

/// Why a feature cannot load, found before anything is loaded; None when it can be tried.
type Missing = Option<String>;

impl Probes {
    /// Loads every feature this kernel supports. A missing tracepoint, field, function or BTF
    /// turns off the features that need it (one warning each, and `status()` says why); only a
    /// kernel where nothing loads is an error.
    pub fn load(cfg: &ProbeConfig) -> Result<Self> {
        check_ring_size("tcp-ring-bytes", cfg.tcp_ring_bytes)?;
        check_ring_size("runq-ring-bytes", cfg.runq_ring_bytes)?;
        preflight::check_privileges()?;
        preflight::raise_memlock_limit();

        let tracefs = Tracefs::locate(cfg.tracefs.as_deref()).map_err(|e| format!("{e:#}"));
        let btf = btf::Btf::from_sys_fs().map_err(|e| format!("{e:#}"));
        if let Err(e) = &btf {
            tracing::warn!(
                "{e}: run-queue latency and accept-side socket owners are off; TCP counters (classic tracepoints) are still served"
            );
        }
        if let Err(e) = &tracefs {
            tracing::warn!("{e}: TCP counters and connect-side socket owners are off");
        }

        // Layouts first: what is missing is known before anything is loaded.
        let tcp = |name: &str| -> Result<TcpTpLayout, String> {
            let t = tracefs.as_ref().map_err(|e| e.clone())?;
            t.format("tcp", name)
                .and_then(|f| layout::tcp(&format!("tcp:{name}"), &f))
                .map_err(|e| format!("{e:#}"))
        };
        let send_reset = tcp("tcp_send_reset");
        let receive_reset = tcp("tcp_receive_reset");
        let retransmit = tcp("tcp_retransmit_skb");
        let destroy = tcp("tcp_destroy_sock");
        let set_state = tracefs.as_ref().map_err(|e| e.clone()).and_then(|t| {
            t.format("sock", "inet_sock_set_state")
                .and_then(|f| layout::set_state("sock:inet_sock_set_state", &f))
                .map_err(|e| format!("{e:#}"))
        });
        let btf_need = |what: &str| format!("{what} needs the kernel's BTF");
        let task = btf
            .as_ref()
            .map_err(|_| btf_need("run-queue latency"))
            .and_then(|b| task_layout(b).map_err(|e| format!("{e:#}")));
        let sock = btf
            .as_ref()
            .map_err(|_| btf_need("owners of accepted sockets"))
            .and_then(|b| sock_layout(b).map_err(|e| format!("{e:#}")));
        let kernel_btf = aya::Btf::from_sys_fs().ok();

        let mut loader = EbpfLoader::new();
        let wake_tcp = wake_bytes(cfg.tcp_ring_bytes);
        let wake_runq = wake_bytes(cfg.runq_ring_bytes);
        loader
            .override_global("TCP_WAKE_BYTES", &wake_tcp, true)
            .override_global("RUNQ_WAKE_BYTES", &wake_runq, true)
            .map_max_entries("TCP_EVENTS", cfg.tcp_ring_bytes)
            .map_max_entries("RUNQ_EVENTS", cfg.runq_ring_bytes)
            .map_max_entries("SOCK_OWNERS", cfg.sock_owner_entries);
        for (name, l) in [
            ("SEND_RESET_LAYOUT", &send_reset),
            ("RECEIVE_RESET_LAYOUT", &receive_reset),
            ("RETRANSMIT_LAYOUT", &retransmit),
            ("DESTROY_LAYOUT", &destroy),
        ] {
            if let Ok(l) = l {
                loader.override_global(name, l, true);
            }
        }
        if let Ok(l) = &set_state {
            loader.override_global("SET_STATE_LAYOUT", l, true);
        }
        if let Ok(l) = &task {
            loader.override_global("TASK_LAYOUT", l, true);
        }
        if let Ok(l) = &sock {
            loader.override_global("SOCK_LAYOUT", l, true);
        }
        let mut ebpf = loader
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

        fn err<T>(r: &Result<T, String>) -> Missing {
            r.as_ref().err().cloned()
        }
        let mut status = Vec::new();
        for (probe, progs) in FEATURES {
            let missing: Missing = match probe {
                "tcp_rst_sent" => err(&send_reset),
                "tcp_rst_received" => err(&receive_reset),
                "tcp_retransmit" => err(&retransmit),
                "sock_owner_connect" => err(&set_state),
                "sock_owner_accept" => err(&set_state).or(err(&sock)).or((!status
                    .iter()
                    .any(|s: &ProbeStatus| s.probe == "sock_owner_connect" && s.up))
                .then(|| "inet_sock_set_state did not load (see sock_owner_connect)".to_owned())),
                "sock_owner_cleanup" => err(&destroy),
                "runq" => err(&task),
                _ => None,
            };
            let result = match missing {
                Some(reason) => Err(reason),
                None => attach(&mut ebpf, progs, kernel_btf.as_ref()).map_err(|e| format!("{e:#}")),
            };
            match &result {
                Ok(()) => tracing::debug!(probe, "probe up"),
                Err(reason) => tracing::warn!(probe, "probe unavailable: {reason}"),
            }
            status.push(ProbeStatus {
                probe,
                up: result.is_ok(),
                reason: result.err().unwrap_or_default(),
            });
        }
        // Before 6.10 (whose tcp_send_reset records sockaddrs) the kernel traces an RST only
        // when a full socket sends it: `if (sk_fullsock(sk)) trace_tcp_send_reset(sk, skb)` in
        // tcp_v4/v6_send_reset. RSTs answering a closed port or from TIME_WAIT are not seen,
        // so the sent count is below the kernel's OutRsts there; say so instead of hiding it.
        if let Ok(l) = &send_reset
            && l.sockaddr == 0
        {
            let reason = "this kernel traces tcp_send_reset only for full sockets (before 6.10, commit 19822a980e19 \"trace: tcp: fully support trace_tcp_send_reset\"); RSTs answering closed ports or sent from TIME_WAIT are not counted".to_owned();
            tracing::warn!(
                probe = "tcp_rst_sent_no_socket",
                "probe unavailable: {reason}"
            );
            status.push(ProbeStatus {
                probe: "tcp_rst_sent_no_socket",
                up: false,
                reason,
            });
        } else if status.iter().any(|s| s.probe == "tcp_rst_sent" && s.up) {
            status.push(ProbeStatus {
                probe: "tcp_rst_sent_no_socket",
                up: true,
                reason: String::new(),
            });
        }
        if status.iter().all(|s| !s.up) {
            let why: Vec<_> = status
                .iter()
                .map(|s| format!("{}: {}", s.probe, s.reason))
                .collect();
            bail!("no probe could load on this kernel ({})", why.join("; "));
        }

        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name).with_context(|| format!("{name} map"))
        };
        let counters = PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?)?;
        let runq_watch = BpfHashMap::try_from(take(&mut ebpf, "RUNQ_WATCH")?)?;
        let runq_watch_slots = Array::try_from(take(&mut ebpf, "RUNQ_WATCH_SLOTS")?)?;
        let runq_hist = PerCpuHashMap::try_from(take(&mut ebpf, "RUNQ_HIST")?)?;
        let runq_tasks = Array::try_from(take(&mut ebpf, "RUNQ_TASKS")?)?;
        let runq_culprits = PerCpuHashMap::try_from(take(&mut ebpf, "RUNQ_CULPRITS")?)?;
        let runq_culprit_slots = PerCpuArray::try_from(take(&mut ebpf, "RUNQ_CULPRIT_SLOTS")?)?;
        drop((btf, kernel_btf));
        release_freed_heap();
        tracing::info!(
            tracefs = %tracefs.as_ref().map(|t| t.root().display().to_string()).unwrap_or_default(),
            up = status.iter().filter(|s| s.up).count(),
            of = status.len(),
            "probes attached"
        );
        Ok(Self {
            ebpf,
            status,
            sock_layout: sock.unwrap_or(SockLayout::EMPTY),
            counters,
            runq_config,
            runq_watch,
            runq_watch_slots,
            runq_hist,
            runq_tasks,
            runq_culprits,
            runq_culprit_slots,
        })
    }

    /// What loaded and what did not (and why), one entry per feature.
    pub fn status(&self) -> &[ProbeStatus] {
        &self.status
    }

    pub fn is_up(&self, probe: &str) -> bool {
        self.status.iter().any(|s| s.probe == probe && s.up)
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

    /// Takes the socket-owner table (once) for the agent's lazy owner resolver.
    pub fn take_owner_resolver(&mut self) -> Result<owners::OwnerResolver> {
        let map = self
            .ebpf
            .take_map("SOCK_OWNERS")
            .context("SOCK_OWNERS already taken")?;
        Ok(owners::OwnerResolver::new(
            Some(BpfHashMap::try_from(map)?),
            self.sock_layout.valid != 0,
        ))
    }

    /// Starts measuring run-queue latency for process `tgid`.
    pub fn watch(&mut self, tgid: u32) -> Result<()> {
        // The authority first, then the direct-mapped slot the programs look at.
        self.runq_watch
            .insert(tgid, 1, 0)
            .with_context(|| format!("watching pid {tgid}"))?;
        self.sync_watch_slot(tgid)
    }

    pub fn unwatch(&mut self, tgid: u32) -> Result<()> {
        match self.runq_watch.remove(&tgid) {
            // Already gone is fine: the goal is "not watched".
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e.into()),
        }
        self.sync_watch_slot(tgid)
    }

    /// Sets `tgid`'s slot from the watched set: the one tgid that maps there, none, or "shared".
    fn sync_watch_slot(&mut self, tgid: u32) -> Result<()> {
        let index = tgid % WATCH_SLOTS;
        let sharing: Vec<u32> = self
            .watched()
            .into_iter()
            .filter(|t| t % WATCH_SLOTS == index)
            .collect();
        let value = match sharing.as_slice() {
            [] => 0,
            [one] => *one,
            _ => WATCH_SHARED,
        };
        Ok(self.runq_watch_slots.set(index, value, 0)?)
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

    /// Who ran while watched processes waited: cumulative CPU time per (victim, culprit) pair,
    /// summed over CPUs, with the culprit's cgroup id and comm as the kernel saw them.
    pub fn runq_culprits(&self) -> Result<Vec<CulpritTotal>> {
        // (total, when its name was read: 0 for the table's, which are copies from some
        // earlier slot).
        let mut out: HashMap<(u32, u32), (CulpritTotal, u64)> = HashMap::new();
        let mut add = |k: CulpritKey, v: &CulpritVal, named_ns: u64| {
            let (t, named) = out.entry((k.victim, k.culprit)).or_insert_with(|| {
                (
                    CulpritTotal {
                        victim: k.victim,
                        culprit: k.culprit,
                        ..CulpritTotal::default()
                    },
                    0,
                )
            });
            t.ns += v.ns;
            // The name read last wins: a process that moved to its cgroup or exec'd after its
            // first slice is named as it runs now.
            if v.comm[0] != 0 && (t.comm.is_empty() || named_ns > *named) {
                t.comm = crate::shared::event::comm_str(&v.comm);
                t.cgroup_id = v.cgroup_id;
                *named = named_ns;
            }
        };
        // The table first, then the slots: the kernel only moves time from a slot into the
        // table, so a move between the two reads can hide time from this read (the next one
        // sees it) but never count it twice.
        for item in self.runq_culprits.iter() {
            let (k, per_cpu) = item?;
            for v in per_cpu.iter() {
                add(k, v, 0);
            }
        }
        for i in 0..CULPRIT_SLOT_COUNT {
            for s in self.runq_culprit_slots.get(&i, 0)?.iter() {
                if s.val.ns != 0 {
                    add(s.key, &s.val, s.named_ns);
                }
            }
        }
        Ok(out.into_values().map(|(t, _)| t).collect())
    }

    /// Cumulative run-queue delay of one thread of a watched process, while its slot is its own.
    pub fn runq_totals(&self, tid: u32) -> Result<Option<RunqTotals>> {
        let t = self.runq_tasks.get(&(tid % RUNQ_TASK_SLOTS), 0)?;
        Ok((t.tid == tid && t.count > 0).then_some(RunqTotals {
            total_ns: t.total_ns,
            count: t.count,
            max_ns: t.max_ns,
        }))
    }
}

fn attach(ebpf: &mut Ebpf, progs: &[Prog], kernel_btf: Option<&aya::Btf>) -> Result<()> {
    let need_btf = || kernel_btf.context("needs the kernel's BTF");
    for p in progs {
        match *p {
            Prog::Tp(category, name) => {
                let prog: &mut TracePoint = ebpf
                    .program_mut(name)
                    .with_context(|| format!("program {name} missing from the object"))?
                    .try_into()?;
                prog.load()
                    .with_context(|| format!("the verifier rejected {name}"))?;
                prog.attach(category, name)
                    .with_context(|| format!("attaching to tracepoint {category}:{name} failed"))?;
            }
            Prog::TpBtf(name) => {
                let btf = need_btf()?;
                let prog: &mut BtfTracePoint = ebpf
                    .program_mut(name)
                    .with_context(|| format!("program {name} missing from the object"))?
                    .try_into()?;
                prog.load(name, btf)
                    .with_context(|| format!("loading BTF tracepoint {name} failed"))?;
                prog.attach()
                    .with_context(|| format!("attaching BTF tracepoint {name} failed"))?;
            }
        }
    }
    Ok(())
}
