//! The wire format between kernelsight's eBPF programs and the agent.
//!
//! Every type here is `#[repr(C)]`, `Copy` and free of padding surprises, because the kernel side
//! writes it into maps and ring buffers and the user side reads the bytes back. Both sides are
//! compiled from this one definition so they cannot drift apart.
#![no_std]

pub const COMM_LEN: usize = 16;

/// Kinds of TCP events the kernel side reports.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpEventKind {
    Retransmit = 1,
    RstSent = 2,
    RstReceived = 3,
}

impl TcpEventKind {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Retransmit),
            2 => Some(Self::RstSent),
            3 => Some(Self::RstReceived),
            _ => None,
        }
    }
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Who owns a socket, learnt once per connection in process context (connect, accept), where
/// `current` really is the owner. Softirq-context events (retransmits, received RSTs) look the
/// owner up here instead of trusting `current`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockOwner {
    pub cgroup_id: u64,
    pub tgid: u32,
    pub tid: u32,
    pub comm: [u8; COMM_LEN],
}

/// One TCP event (retransmit, RST sent, RST received), as written to the `TCP_EVENTS` ring.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TcpEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Kernel address of the socket: its identity while it lives. 0 when there is no socket
    /// (an RST answering a segment to a closed port).
    pub skaddr: u64,
    /// Socket cookie where the tracepoint gives it (received RSTs), else 0.
    pub cookie: u64,
    /// Inode number of the socket's file when the owner is unknown in the kernel (a socket born
    /// before the agent started): the agent finds the process holding `socket:[ino]` in /proc.
    /// 0 when the owner is known, there is no socket, or the kernel layout is unknown.
    pub sock_ino: u64,
    /// The owner, from the socket-owner table; `owner.tgid == 0` when unknown.
    pub owner: SockOwner,
    /// The task that was current when the event fired (often unrelated, in softirq).
    pub current_tgid: u32,
    /// Retransmitted segments (1 for RSTs).
    pub segs: u32,
    /// Addresses in network byte order; IPv4 uses the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Ports in host byte order. "s" is the local side of the socket (for a sent RST without a
    /// socket, the side that sent it).
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub kind: u8,
    /// TCP state (`TCP_ESTABLISHED` = 1 ...), 0 when unknown.
    pub state: u8,
    /// For sent RSTs, the kernel's `enum sk_rst_reason`; else 0.
    pub reason: u32,
    pub _pad: u32,
}

/// Indexes into the `COUNTERS` per-CPU array. These in-kernel counters are lossless, unlike the
/// event ring: the agent exports both, and the difference is what the ring dropped.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    RstSent = 0,
    RstReceived = 1,
    RetransmitSegs = 2,
    /// Ring reservations that failed because the TCP ring was full.
    TcpEventsLost = 3,
    /// Events whose socket had no known owner at the time.
    OwnerUnknown = 4,
    RunqEventsLost = 5,
    /// Retransmit attempts the kernel reported as failed (err != 0): not counted as retransmits.
    RetransmitFailed = 6,
    /// Run-queue events the kernel tried to report (delivered + lost).
    RunqEvents = 7,
    /// Run-queue waits lost because another thread took the thread's slot (tid collision in
    /// the per-thread array) between wakeup and switch-in.
    RunqSlotCollisions = 8,
    /// Culprit CPU time not accounted because `RUNQ_CULPRITS` refused a pair moved out of
    /// its slot.
    RunqCulpritsLost = 9,
    /// Per-CPU "victim waiting" counts found stale (a decrement was lost) and reset.
    RunqCpuStale = 10,
}

pub const COUNTER_MAX: u32 = 11;

/// Byte offsets of the fields we read from a classic TCP tracepoint record. Read at load time
/// from tracefs `format` files, so one object works across kernels whose layouts differ. A field
/// the running kernel lacks has offset `NONE`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TcpTpLayout {
    pub skaddr: u16,
    pub state: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub saddr: u16,
    pub daddr: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    /// `struct sockaddr_in6`-style `saddr`/`daddr` (tcp_send_reset since 6.10): family and port
    /// live inside the address fields.
    pub sockaddr: u16,
    pub cookie: u16,
    pub err: u16,
    pub reason: u16,
    pub _pad: u16,
}

impl TcpTpLayout {
    pub const NONE: u16 = u16::MAX;
    pub const EMPTY: Self = Self {
        skaddr: Self::NONE,
        state: Self::NONE,
        sport: Self::NONE,
        dport: Self::NONE,
        family: Self::NONE,
        saddr: Self::NONE,
        daddr: Self::NONE,
        saddr_v6: Self::NONE,
        daddr_v6: Self::NONE,
        sockaddr: 0,
        cookie: Self::NONE,
        err: Self::NONE,
        reason: Self::NONE,
        _pad: 0,
    };
}

/// Offsets in the `sock:inet_sock_set_state` record that the owner tables need.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockTpLayout {
    pub sk: u16,
    pub oldstate: u16,
    pub newstate: u16,
    pub protocol: u16,
    pub sport: u16,
    pub _pad: u16,
}

impl SockTpLayout {
    pub const EMPTY: Self = Self {
        sk: TcpTpLayout::NONE,
        oldstate: TcpTpLayout::NONE,
        newstate: TcpTpLayout::NONE,
        protocol: TcpTpLayout::NONE,
        sport: TcpTpLayout::NONE,
        _pad: 0,
    };
}

/// Key of the listener table: a listening port in one network namespace, identified by the
/// address of its `struct net` (unique while it lives). x86-64 kernel addresses have their top
/// 16 bits all set (canonical form), so those carry the port instead.
#[inline(always)]
pub const fn listen_key(net: u64, port: u16) -> u64 {
    (net & 0x0000_ffff_ffff_ffff) | ((port as u64) << 48)
}

/// Offsets in `struct task_struct`, read from the kernel's BTF at load time (CO-RE by hand: the
/// object carries no compiled-in kernel layout).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TaskLayout {
    pub pid: u32,
    pub tgid: u32,
    /// `__state` (5.14+) or `state`; `state_size` says how many bytes to read (4 or 8).
    pub state: u32,
    pub state_size: u32,
    pub comm: u32,
    /// The CPU whose run queue the task is on: `task_struct.cpu` before 5.16,
    /// `task_struct.thread_info.cpu` after (x86).
    pub cpu: u32,
}

impl TaskLayout {
    pub const EMPTY: Self = Self {
        pid: 0,
        tgid: 0,
        state: 0,
        state_size: 0,
        comm: 0,
        cpu: 0,
    };
}

/// Offsets in kernel socket structs, read from BTF at load time. `valid == 0`: unknown (no BTF),
/// and what needs them is off.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockLayout {
    /// `struct sock.__sk_common.skc_net` (the `struct net *` inside `possible_net_t`).
    pub sock_net: u32,
    /// `struct sock.sk_socket`
    pub sock_socket: u32,
    /// From a `struct socket` to its inode's `i_ino`: `socket_alloc.vfs_inode` + `inode.i_ino`
    /// (the socket and its inode are allocated together).
    pub socket_ino: u32,
    pub valid: u32,
}

impl SockLayout {
    pub const EMPTY: Self = Self {
        sock_net: 0,
        sock_socket: 0,
        socket_ino: 0,
        valid: 0,
    };
}

/// Run-queue settings the agent may change while running (one entry in `RUNQ_CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RunqConfig {
    /// Watch every task instead of the tgids in `RUNQ_WATCH`.
    pub watch_all: u32,
    pub _pad: u32,
    /// Delays at or above this go to the event ring (runqslower-style); below, only the
    /// histograms and per-thread totals see them.
    pub event_threshold_ns: u64,
}

/// Log2 histogram slots: slot `i` holds delays in [2^i, 2^(i+1)) microseconds (slot 0: < 2 µs),
/// the same buckets as libbpf-tools' runqlat so the two compare slot by slot.
pub const RUNQ_SLOTS: u32 = 27;

/// One process's run-queue histogram (`RUNQ_HIST`, per-CPU, keyed by tgid): one map lookup
/// per delay updates both the slot and the sum.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RunqHist {
    pub slots: [u64; RUNQ_SLOTS as usize],
    pub sum_ns: u64,
}

impl RunqHist {
    pub const ZERO: Self = Self {
        slots: [0; RUNQ_SLOTS as usize],
        sum_ns: 0,
    };
}

/// Slots in `RUNQ_TASKS`, the per-thread array indexed by `tid % RUNQ_TASK_SLOTS` (a power of
/// two). aya-ebpf 0.2.1 has no task-local storage map, and task storage in tracing programs
/// needs Linux 5.11+; an array slot with the owner's tid/tgid checked is as cheap and runs on 5.8.
pub const RUNQ_TASK_SLOTS: u32 = 65536;

/// One thread's slot in `RUNQ_TASKS`: its pending wait and its cumulative totals. Only the CPU
/// that wakes or switches in the thread writes it, so no per-CPU copy is needed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RunqTask {
    /// When the current wait began; 0 when the thread is not waiting.
    pub start_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub total_ns: u64,
    pub count: u64,
    pub max_ns: u64,
    /// The CPU whose queue the pending wait is on (its count in `RUNQ_CPUS`).
    pub cpu: u32,
    pub _pad: u32,
}

/// Entries in `RUNQ_CPUS` (indexed by CPU number); CPUs beyond it are not culprit-accounted.
pub const RUNQ_CPU_SLOTS: u32 = 1024;

/// One CPU's "a watched thread is waiting here" mark (`RUNQ_CPUS[cpu]`). Changed under that
/// CPU's run-queue lock (wakeups onto it, switches on it), except the rare decrement for a
/// thread that migrated while it waited (see agent-ebpf's `cpu_wait_end`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RunqCpu {
    /// Watched threads queued on this CPU now.
    pub waiting: u64,
    /// The process whose thread started the current waiting stretch: the victim the CPU time
    /// is charged against (with two watched processes waiting at once, the first one).
    pub victim: u32,
    pub _pad: u32,
    /// Since when the task running now has been charged (its switch-in, or the start of the
    /// waiting stretch if later).
    pub mark_ns: u64,
    /// When `waiting` last changed. A count that has not moved for the kernel's
    /// `RUNQ_STALE_NS` is reset, so a lost decrement cannot blame a CPU forever.
    pub progress_ns: u64,
    /// 128 bytes in all, so no two CPUs' fields share a cache line (or an adjacent-line
    /// prefetch pair) wherever the kernel starts the array's values: every switch on a CPU
    /// writes `mark_ns`, and CPUs whose entries shared a line made each other's switches wait.
    pub _line: [u64; 12],
}

/// Key of `RUNQ_CULPRITS`: CPU time process `culprit` ran while a thread of `victim` waited
/// for that CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CulpritKey {
    pub victim: u32,
    pub culprit: u32,
}

/// Value of `RUNQ_CULPRITS` (per CPU): nanoseconds run, and who the culprit was (its cgroup v2
/// id and the comm of the thread that ran, as last read; see `CulpritSlot::named_ns`), read in
/// the kernel because a hog may be gone by the time the agent looks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CulpritVal {
    pub ns: u64,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// Slots in `RUNQ_CULPRIT_SLOTS`, the per-CPU direct-mapped cache in front of `RUNQ_CULPRITS`
/// (a power of two).
pub const CULPRIT_SLOT_COUNT: u32 = 256;

/// The slot of a (victim, culprit) pair in `RUNQ_CULPRIT_SLOTS`.
#[inline(always)]
pub const fn culprit_slot(victim: u32, culprit: u32) -> u32 {
    (culprit ^ victim.wrapping_mul(0x9e37_79b9)) & (CULPRIT_SLOT_COUNT - 1)
}

/// One slot of `RUNQ_CULPRIT_SLOTS`: the pair it holds and what it accumulated. A pair that
/// needs a taken slot moves the old pair's time into `RUNQ_CULPRITS` first, so a pair's total
/// is its slots plus its table entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CulpritSlot {
    pub key: CulpritKey,
    pub val: CulpritVal,
    /// When `val.cgroup_id` and `val.comm` were last read (`bpf_ktime_get_ns`): the kernel
    /// refreshes them when a pair takes the slot and then at most every 10 ms of charging.
    pub named_ns: u64,
}

/// Cumulative run-queue delay of one thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RunqTotals {
    pub total_ns: u64,
    pub count: u64,
    pub max_ns: u64,
}

/// A run-queue delay at or above the event threshold, as written to `RUNQ_EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RunqEvent {
    /// `bpf_ktime_get_ns()` when the thread got on the CPU.
    pub ts_ns: u64,
    pub delay_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub cpu: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY (each impl): all are repr(C) plain data with explicit padding fields.
    // SAFETY: see above.
    unsafe impl aya::Pod for super::TaskLayout {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::RunqConfig {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::RunqHist {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::RunqTotals {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::RunqTask {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::RunqCpu {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::CulpritKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::CulpritVal {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::CulpritSlot {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::SockLayout {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::RunqEvent {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::SockOwner {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::TcpEvent {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::TcpTpLayout {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::SockTpLayout {}
}
