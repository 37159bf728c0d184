//! Decoded kernel events, in the agent's own types; what the kernel aggregates in place, and the
//! read handles through which stages ask for it (and for who a pid is) without importing the
//! stage that answers.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

pub use super::culprit::CulpritTotal;
use super::origin::Origin;
use agent_common::{AF_INET, AF_INET6, COUNTER_MAX, RunqEvent, SockOwner, TcpEvent, TcpEventKind};

/// The process that owns a socket (or ran a thread), as the kernel saw it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
}

impl Owner {
    fn from_raw(o: &SockOwner) -> Option<Self> {
        (o.tgid != 0).then(|| Self {
            pid: o.tgid,
            tid: o.tid,
            comm: comm_str(&o.comm),
            cgroup_id: o.cgroup_id,
        })
    }
}

pub fn comm_str(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpRecord {
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub kind: TcpEventKind,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: u8,
    pub owner: Option<Owner>,
    pub current_pid: u32,
    pub socket: u64,
    pub cookie: u64,
    /// Inode of the socket's file when the kernel did not know its owner (0 otherwise).
    pub sock_ino: u64,
    pub segs: u32,
    pub reason: u32,
    /// The socket's network namespace, from its owner (attribution fills it in; 0: unknown).
    pub netns: u64,
}

impl TcpRecord {
    /// Decodes a ring-buffer record; `None` for a record of the wrong size or kind (counted by
    /// the caller, never silently dropped).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<TcpEvent>() {
            return None;
        }
        // SAFETY: length checked; TcpEvent is plain old data; read_unaligned tolerates any
        // alignment of the ring's bytes.
        let ev: TcpEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let kind = TcpEventKind::from_u8(ev.kind)?;
        let ip = |raw: &[u8; 16]| -> Option<IpAddr> {
            match ev.family {
                AF_INET => Some(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]).into()),
                AF_INET6 => Some(Ipv6Addr::from(*raw).into()),
                _ => None,
            }
        };
        Some(Self {
            ts_ns: ev.ts_ns,
            kind,
            local: SocketAddr::new(ip(&ev.saddr)?, ev.sport),
            remote: SocketAddr::new(ip(&ev.daddr)?, ev.dport),
            state: ev.state,
            owner: Owner::from_raw(&ev.owner),
            current_pid: ev.current_tgid,
            socket: ev.skaddr,
            cookie: ev.cookie,
            sock_ino: ev.sock_ino,
            segs: ev.segs,
            reason: ev.reason,
            netns: 0,
        })
    }
}

/// One run-queue delay: a thread of a watched process waited `delay_ns` between becoming
/// runnable (wakeup, or preemption while still runnable) and getting on a CPU at `ts_ns`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunqRecord {
    /// CLOCK_MONOTONIC nanoseconds when the thread got on the CPU (end of the wait).
    pub ts_ns: u64,
    pub delay_ns: u64,
    /// Process (tgid) and thread (tid) ids, as `process.pid` and `thread.id` in spans.
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub cpu: u32,
}

impl RunqRecord {
    /// Decodes a `RUNQ_EVENTS` record. The cgroup is not known in the kernel at that point (the
    /// thread being switched in is not `current`); attribution fills it in.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < size_of::<RunqEvent>() {
            return None;
        }
        // SAFETY: as in TcpRecord::decode.
        let ev: RunqEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        Some(Self {
            ts_ns: ev.ts_ns,
            delay_ns: ev.delay_ns,
            pid: ev.tgid,
            tid: ev.tid,
            comm: comm_str(&ev.comm),
            cgroup_id: 0,
            cpu: ev.cpu,
        })
    }
}

impl KernelEvent {
    pub fn decode_tcp(bytes: &[u8]) -> Option<Self> {
        TcpRecord::decode(bytes).map(Self::Tcp)
    }

    pub fn decode_runq(bytes: &[u8]) -> Option<Self> {
        RunqRecord::decode(bytes).map(Self::Runq)
    }
}

#[derive(Clone, Debug)]
pub enum KernelEvent {
    Tcp(TcpRecord),
    Runq(RunqRecord),
}

/// Per-process run-queue histogram: counts per log2 slot, and the sum of delays.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunqHistogram {
    pub slots: Vec<u64>,
    pub sum_ns: u64,
}

/// One feature of the kernel side: a group of programs that is loaded, or not, as a unit. A
/// kernel that lacks what one feature needs loses that feature only.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProbeStatus {
    /// Bounded label value for `kernelsight_probe_up{probe=...}`.
    pub probe: &'static str,
    pub up: bool,
    /// Why it is down (empty when up).
    pub reason: String,
}

/// The in-kernel lossless counters, summed over CPUs, indexed by [`agent_common::Counter`].
pub type KernelCounters = [u64; COUNTER_MAX as usize];

/// What the kernel aggregates in place, read on demand (a scrape, the page's sampler). The
/// kernel source implements it; readers need not know it.
pub trait KernelMaps: Send + Sync {
    fn counters(&self) -> anyhow::Result<KernelCounters>;
    /// Per-process run-queue histograms, summed over CPUs.
    fn runq_histograms(&self) -> anyhow::Result<HashMap<u32, RunqHistogram>>;
    /// Who ran while watched processes waited: cumulative (victim, culprit) CPU time.
    fn runq_culprits(&self) -> anyhow::Result<Vec<CulpritTotal>>;
    /// The processes the run-queue probes watch by pid (empty when they watch every task).
    fn watched(&self) -> Vec<u32>;
    /// Which kernel features loaded on this kernel, and why not.
    fn probe_status(&self) -> Vec<ProbeStatus>;
}

/// Who a pid is. Answered by attribution from its one /proc cache, for every stage that needs
/// it (metric labels, the span joins).
pub trait Identify: Send + Sync {
    /// The command name (`/proc/PID/comm`), `exited` when the process is gone.
    fn comm(&self, pid: u32) -> String;
    /// The cgroup v2 id, as `bpf_get_current_cgroup_id()` reports it (0: unknown).
    fn cgroup_id(&self, pid: u32) -> u64;
    /// The cgroup v2 path (`/noisy`, from `/proc/PID/cgroup`); "" when unknown.
    fn cgroup_path(&self, pid: u32) -> String;
    /// The Kubernetes pod UID ("" outside Kubernetes).
    fn pod_uid(&self, pid: u32) -> String;
    /// Whether `tid` is a thread of process `pid` now.
    fn is_thread(&self, pid: u32, tid: u32) -> bool;
    /// A span's `process.pid` and `thread.id` in host terms. `origin` is what the span's
    /// resource says about the namespace they are numbers in (`None`: the agent's own); the
    /// error says why there is no answer (a label for the metric).
    fn host_ids(
        &self,
        origin: Option<&Origin>,
        pid: u32,
        tid: Option<u32>,
    ) -> Result<(u32, Option<u32>), &'static str>;
    /// The network namespace of host process `pid` (0: unknown).
    fn netns(&self, pid: u32) -> u64;
    /// The pod of host process `pid`, when it runs in one.
    fn pod(&self, pid: u32) -> Option<PodLabels>;
}

/// Which pod something is about (OTel `k8s.*`); fields unknown without the API are empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct PodLabels {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub container: String,
    pub node: String,
}

impl PodLabels {
    /// `k8s.*` attributes for the fields known.
    pub fn attributes(&self) -> Vec<opentelemetry_proto::tonic::common::v1::KeyValue> {
        [
            ("k8s.pod.uid", &self.uid),
            ("k8s.pod.name", &self.name),
            ("k8s.namespace.name", &self.namespace),
            ("k8s.container.name", &self.container),
            ("k8s.node.name", &self.node),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| super::span::kv_s(k, v.clone()))
        .collect()
    }

    /// `namespace/name`, or the UID when the name is not known.
    pub fn display(&self) -> String {
        if self.name.is_empty() {
            format!("pod {}", self.uid)
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }
}
