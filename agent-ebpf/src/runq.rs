//! Run-queue latency: how long a runnable thread waited for a CPU. A wait starts at wakeup
//! (`sched_wakeup`, `sched_wakeup_new`) or when a running thread is preempted and stays runnable
//! (`sched_switch` with prev still TASK_RUNNING); it ends when `sched_switch` puts the thread on a
//! CPU. Per context switch the work is constant and hash-free for unwatched tasks: array slots
//! indexed by id (inlined by the verifier), one per-CPU histogram lookup for a watched one.
//!
//! Culprits: while a watched thread is queued on a CPU (`RUNQ_CPUS[cpu].waiting > 0`), each
//! switch on that CPU charges the task switched out with the time it ran since the last mark,
//! keyed by (victim tgid, culprit tgid): one per-CPU array slot update per switch only on CPUs
//! where a watched thread waits (`RUNQ_CULPRITS`, a hash, only when two pairs collide in a
//! slot; the culprit's cgroup id and comm re-read at most every `CULPRIT_RENAME_NS`), one array
//! load on all others, and no ring event ever.
use agent_common::{
    CULPRIT_SLOT_COUNT, Counter, CulpritKey, CulpritSlot, CulpritVal, RUNQ_CPU_SLOTS, RUNQ_SLOTS,
    RUNQ_TASK_SLOTS, RunqConfig, RunqCpu, RunqEvent, RunqHist, RunqTask, TaskLayout, culprit_slot,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_smp_processor_id,
        bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::BtfTracePointContext,
};

use crate::maps::{count, global, wake_flags};

#[unsafe(no_mangle)]
static TASK_LAYOUT: TaskLayout = TaskLayout::EMPTY;
/// See `TCP_WAKE_BYTES`.
#[unsafe(no_mangle)]
static RUNQ_WAKE_BYTES: u64 = 0;

#[map]
pub static RUNQ_CONFIG: Array<RunqConfig> = Array::with_max_entries(1, 0);
/// Watched processes, direct-mapped: slot `tgid % RUNQ_WATCH_SLOTS` holds the watched tgid, 0
/// for none, or `WATCH_SHARED` when two watched tgids share the slot (then `RUNQ_WATCH`
/// decides). Kept by the agent; one inlined array load per enqueue instead of a hash lookup.
#[map]
pub static RUNQ_WATCH_SLOTS: Array<u32> = Array::with_max_entries(RUNQ_WATCH_SLOT_COUNT, 0);
const RUNQ_WATCH_SLOT_COUNT: u32 = 65536;
const WATCH_SHARED: u32 = u32::MAX;
/// Every watched tgid (→ 1): the authority behind the slots.
#[map]
pub static RUNQ_WATCH: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);
/// Per-thread state (`tid % RUNQ_TASK_SLOTS`): pending wait and totals. The slot names its
/// thread (tid and tgid), so a reused or colliding tid never inherits another thread's wait.
#[map]
pub static RUNQ_TASKS: Array<RunqTask> = Array::with_max_entries(RUNQ_TASK_SLOTS, 0);
#[map]
pub static RUNQ_HIST: PerCpuHashMap<u32, RunqHist> = PerCpuHashMap::with_max_entries(4096, 0);
/// All zeros: the initial value for a new histogram, copied from the map instead of built on
/// the 512-byte BPF stack.
#[map]
static ZERO_HIST: Array<RunqHist> = Array::with_max_entries(1, 0);
#[map]
pub static RUNQ_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);
/// Per CPU: how many watched threads wait in its queue, and since when the running task is
/// charged. A plain array (not per-CPU): wakeups onto a CPU run on the waker's CPU, under the
/// target's run-queue lock.
#[map]
pub static RUNQ_CPUS: Array<RunqCpu> = Array::with_max_entries(RUNQ_CPU_SLOTS, 0);
/// Per CPU, direct-mapped by (victim, culprit): where a switch adds the time it charges. An
/// array slot, not a hash: per switch while a watched thread waits, the common case (the same
/// few culprits again) is one array load.
#[map]
pub static RUNQ_CULPRIT_SLOTS: PerCpuArray<CulpritSlot> =
    PerCpuArray::with_max_entries(CULPRIT_SLOT_COUNT, 0);
/// (victim tgid, culprit tgid) → CPU time the culprit ran while the victim waited, for pairs
/// moved out of their slot by another pair (rare). LRU: pairs that stopped mattering (exited
/// hogs) age out instead of filling the table.
#[map]
pub static RUNQ_CULPRITS: LruPerCpuHashMap<CulpritKey, CulpritVal> =
    LruPerCpuHashMap::with_max_entries(8192, 0);
/// A waiting count that has not changed for this long is a lost decrement, not a wait (the
/// scheduler runs a queued thread long before that): it is reset and counted.
const RUNQ_STALE_NS: u64 = 5_000_000_000;
/// More watched threads than this waiting on one CPU means the count wrapped: reset.
const RUNQ_MAX_WAITING: u64 = 1 << 20;

const TASK_RUNNING: u64 = 0;

/// How often a culprit's slot re-reads the cgroup id and comm of the task it charges (at most
/// once per this much time, and when a pair takes the slot). Two helper calls on every charged
/// switch cost more than the rest of the charge; a process that moves to its cgroup or execs
/// after its first slice (runc's children do) is named right within this long of its running.
const CULPRIT_RENAME_NS: u64 = 10_000_000;

/// `bpf_ktime_get_ns()`, called at most once per program run: a switch needs the time for
/// up to four things (the charge, a dropped wait, a new wait, an ended wait), and each helper
/// call is a real call on the hottest path in the kernel.
struct Clock(u64);

impl Clock {
    #[inline(always)]
    fn new() -> Self {
        Self(0)
    }

    #[inline(always)]
    fn now(&mut self) -> u64 {
        if self.0 == 0 {
            self.0 = unsafe { bpf_ktime_get_ns() };
        }
        self.0
    }
}

#[inline(always)]
fn layout() -> TaskLayout {
    global(&TASK_LAYOUT)
}

/// Reads a `task_struct` field. tp_btf arguments are trusted BTF pointers and `off` comes from
/// read-only .rodata, so the verifier sees a constant offset, checks the load against the
/// kernel's own task_struct layout, and lets us load directly: no helper call on the hottest
/// path in the kernel.
#[inline(always)]
fn field<T: Copy>(task: *const u8, off: u32) -> T {
    unsafe { core::ptr::read(task.add(off as usize) as *const T) }
}

/// Copies with the helper, for values that are not scalars (`comm`).
#[inline(always)]
fn copy<T>(task: *const u8, off: u32) -> Option<T> {
    unsafe { bpf_probe_read_kernel(task.add(off as usize) as *const T) }.ok()
}

#[inline(always)]
fn config() -> Option<&'static RunqConfig> {
    RUNQ_CONFIG.get(0)
}

#[inline(always)]
fn watched(tgid: u32, cfg: &RunqConfig) -> bool {
    if cfg.watch_all != 0 {
        return true;
    }
    match RUNQ_WATCH_SLOTS.get(tgid % RUNQ_WATCH_SLOT_COUNT) {
        Some(&t) if t == tgid => true,
        Some(&WATCH_SHARED) => unsafe { RUNQ_WATCH.get(tgid) }.is_some(),
        _ => false,
    }
}

#[inline(always)]
fn slot(tid: u32) -> Option<*mut RunqTask> {
    RUNQ_TASKS.get_ptr_mut(tid % RUNQ_TASK_SLOTS)
}

/// Starts the clock on `task` if its process is watched.
#[inline(always)]
fn enqueue(task: *const u8, l: &TaskLayout, cfg: &RunqConfig, clock: &mut Clock) {
    let tgid: u32 = field(task, l.tgid);
    if !watched(tgid, cfg) {
        return;
    }
    let tid: u32 = field(task, l.pid);
    if tid == 0 {
        return; // the idle task never waits
    }
    let Some(s) = slot(tid) else { return };
    let now = clock.now();
    let cpu: u32 = if l.cpu != 0 { field(task, l.cpu) } else { 0 };
    unsafe {
        if (*s).tid != tid || (*s).tgid != tgid {
            if (*s).start_ns != 0 {
                // Another live thread's wait is in this slot: it is lost, and counted.
                count(Counter::RunqSlotCollisions, 1);
                cpu_wait_end(l, (*s).cpu, now);
            }
            *s = RunqTask {
                start_ns: now,
                tgid,
                tid,
                total_ns: 0,
                count: 0,
                max_ns: 0,
                cpu,
                _pad: 0,
            };
            cpu_wait_begin(l, cpu, tgid, now);
        } else {
            if (*s).start_ns == 0 {
                cpu_wait_begin(l, cpu, tgid, now);
            } else if (*s).cpu != cpu {
                cpu_wait_end(l, (*s).cpu, now);
                cpu_wait_begin(l, cpu, tgid, now);
            }
            (*s).start_ns = now;
            (*s).cpu = cpu;
        }
    }
}

/// A watched thread of `victim` is now queued on `cpu`.
#[inline(always)]
fn cpu_wait_begin(l: &TaskLayout, cpu: u32, victim: u32, now: u64) {
    if l.cpu == 0 {
        return; // the kernel's layout has no cpu field we know: no culprits, waits still counted
    }
    let Some(c) = RUNQ_CPUS.get_ptr_mut(cpu) else {
        return;
    };
    unsafe {
        if (*c).waiting == 0 || (*c).waiting > RUNQ_MAX_WAITING {
            // The stretch starts: whoever runs now is charged from now on.
            (*c).waiting = 0;
            (*c).victim = victim;
            (*c).mark_ns = now;
        }
        (*c).progress_ns = now;
        (*c).waiting += 1;
    }
}

/// A watched thread that was queued on `cpu` stopped waiting (it got a CPU, maybe another one
/// after a migration, or its wait was dropped).
#[inline(always)]
fn cpu_wait_end(l: &TaskLayout, cpu: u32, now: u64) {
    if l.cpu == 0 {
        return;
    }
    let Some(c) = RUNQ_CPUS.get_ptr_mut(cpu) else {
        return;
    };
    unsafe {
        if (*c).waiting > 0 {
            (*c).progress_ns = now;
            // Not atomic: the BPF target has no atomic RMW in core. Every change is made under
            // this CPU's run-queue lock but one: a thread that migrated while it waited ends
            // its wait on another CPU. A lost update there leaves a count that stops moving,
            // which `charge` resets after RUNQ_STALE_NS (and counts).
            (*c).waiting -= 1;
        }
    }
}

/// At a switch: if a watched thread waits in this CPU's queue, the task switched out (`prev`,
/// which is `current` here) is charged with the time it ran since the last mark. When none
/// waits (most switches on a node) this is one load from `prev` and one inlined array load.
#[inline(always)]
fn charge(l: &TaskLayout, prev: *const u8, clock: &mut Clock) {
    if l.cpu == 0 {
        return;
    }
    // `prev` is on this CPU: its cpu field is ours, without a helper call.
    let cpu: u32 = field(prev, l.cpu);
    let Some(c) = RUNQ_CPUS.get_ptr_mut(cpu) else {
        return;
    };
    unsafe {
        if (*c).waiting == 0 {
            return;
        }
        let now = clock.now();
        if now.saturating_sub((*c).progress_ns) > RUNQ_STALE_NS || (*c).waiting > RUNQ_MAX_WAITING {
            (*c).waiting = 0;
            count(Counter::RunqCpuStale, 1);
            return;
        }
        let ran = now.saturating_sub((*c).mark_ns);
        (*c).mark_ns = now;
        if ran == 0 || field::<u32>(prev, l.pid) == 0 {
            return; // the idle task holds no one up
        }
        let key = CulpritKey {
            victim: (*c).victim,
            culprit: field(prev, l.tgid),
        };
        let Some(slot) = RUNQ_CULPRIT_SLOTS.get_ptr_mut(culprit_slot(key.victim, key.culprit))
        else {
            return;
        };
        // Per-CPU slot: this CPU is its only writer.
        if (*slot).key == key {
            (*slot).val.ns += ran;
            if now.saturating_sub((*slot).named_ns) < CULPRIT_RENAME_NS {
                return; // the common case: no helper call
            }
        } else {
            if (*slot).val.ns != 0 {
                spill(&*slot);
            }
            (*slot).key = key;
            (*slot).val.ns = ran;
        }
        // The cgroup and name it runs under now, when a pair takes the slot and then at most
        // every CULPRIT_RENAME_NS: a process moves after fork (runc puts a container's first
        // process into its cgroup) and execs, and its first slice, still the parent's, must not
        // name it for good.
        (*slot).named_ns = now;
        (*slot).val.cgroup_id = bpf_get_current_cgroup_id();
        (*slot).val.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    }
}

/// Moves a slot's pair into the table (its slot is about to hold another pair).
#[inline(always)]
fn spill(s: &CulpritSlot) {
    match RUNQ_CULPRITS.get_ptr_mut(s.key) {
        // Per-CPU value: this CPU is its only writer.
        Some(v) => unsafe {
            (*v).ns += s.val.ns;
            (*v).cgroup_id = s.val.cgroup_id;
            (*v).comm = s.val.comm;
        },
        None => {
            if RUNQ_CULPRITS.insert(s.key, s.val, 0).is_err() {
                count(Counter::RunqCulpritsLost, 1);
            }
        }
    }
}

/// `sched_process_exit(struct task_struct *p, ...)`: a thread that exits never waits again.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    let l = layout();
    let task: *const u8 = ctx.arg(0);
    let tid: u32 = field(task, l.pid);
    if let Some(s) = slot(tid) {
        unsafe {
            if (*s).tid == tid && (*s).start_ns != 0 {
                (*s).start_ns = 0;
                cpu_wait_end(&l, (*s).cpu, bpf_ktime_get_ns());
            }
        }
    }
    0
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    if let Some(cfg) = config() {
        enqueue(ctx.arg::<*const u8>(0), &layout(), cfg, &mut Clock::new());
    }
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    if let Some(cfg) = config() {
        enqueue(ctx.arg::<*const u8>(0), &layout(), cfg, &mut Clock::new());
    }
    0
}

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next, ...)`; the
/// trailing `prev_state` argument (5.18+) is not used: the state is read from `prev` itself.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let l = layout();
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    let mut clock = Clock::new();

    charge(&l, prev, &mut clock);
    // A wait pending on the task that ran is not a wait: it was woken while still on its CPU
    // (about to sleep). Drop it, so the CPU's waiting count does not blame others meanwhile.
    let prev_tid: u32 = field(prev, l.pid);
    if let Some(s) = slot(prev_tid) {
        unsafe {
            if (*s).start_ns != 0 && (*s).tid == prev_tid {
                (*s).start_ns = 0;
                cpu_wait_end(&l, (*s).cpu, clock.now());
            }
        }
    }

    // Preempted but still runnable: its wait starts now. `state` was a long before 5.14.
    let prev_state = if l.state_size == 8 {
        field::<u64>(prev, l.state)
    } else {
        u64::from(field::<u32>(prev, l.state))
    };
    if prev_state == TASK_RUNNING {
        enqueue(prev, &l, cfg, &mut clock);
    }

    let tid: u32 = field(next, l.pid);
    let Some(s) = slot(tid) else { return 0 };
    let (start, tgid) = unsafe { ((*s).start_ns, (*s).tgid) };
    if start == 0 || unsafe { (*s).tid } != tid {
        return 0;
    }
    let now = clock.now();
    unsafe {
        (*s).start_ns = 0;
        cpu_wait_end(&l, (*s).cpu, now);
    }
    if tgid != field::<u32>(next, l.tgid) {
        return 0; // left behind by an earlier thread with this tid
    }
    let delay = now.saturating_sub(start);
    unsafe {
        (*s).total_ns += delay;
        (*s).count += 1;
        if delay > (*s).max_ns {
            (*s).max_ns = delay;
        }
    }
    record_hist(tgid, delay);
    if delay >= cfg.event_threshold_ns {
        emit(now, delay, tgid, tid, next, &l);
    }
    0
}

#[inline(always)]
fn log2_slot(delay_ns: u64) -> u32 {
    let us = delay_ns / 1000;
    let slot = if us == 0 { 0 } else { 63 - us.leading_zeros() };
    if slot >= RUNQ_SLOTS {
        RUNQ_SLOTS - 1
    } else {
        slot
    }
}

#[inline(always)]
fn record_hist(tgid: u32, delay: u64) {
    let slot = log2_slot(delay) as usize;
    let h = match RUNQ_HIST.get_ptr_mut(tgid) {
        Some(h) => h,
        None => {
            let Some(zero) = ZERO_HIST.get(0) else { return };
            let _ = RUNQ_HIST.insert(tgid, zero, 0);
            let Some(h) = RUNQ_HIST.get_ptr_mut(tgid) else {
                return;
            };
            h
        }
    };
    // Per-CPU value: no other CPU writes it. The bound check is for the verifier.
    unsafe {
        if slot < RUNQ_SLOTS as usize {
            (*h).slots[slot] += 1;
        }
        (*h).sum_ns += delay;
    }
}

#[inline(always)]
fn emit(now: u64, delay: u64, tgid: u32, tid: u32, task: *const u8, l: &TaskLayout) {
    count(Counter::RunqEvents, 1);
    let Some(mut entry) = RUNQ_EVENTS.reserve::<RunqEvent>(0) else {
        count(Counter::RunqEventsLost, 1);
        return;
    };
    entry.write(RunqEvent {
        ts_ns: now,
        delay_ns: delay,
        tgid,
        tid,
        cpu: unsafe { bpf_get_smp_processor_id() },
        _pad: 0,
        comm: copy::<[u8; 16]>(task, l.comm).unwrap_or([0; 16]),
    });
    entry.submit(wake_flags(&RUNQ_EVENTS, global(&RUNQ_WAKE_BYTES)));
}
