//! Run-queue latency: how long a runnable thread waited for a CPU. A wait starts at wakeup
//! (`sched_wakeup`, `sched_wakeup_new`) or when a running thread is preempted and stays runnable
//! (`sched_switch` with prev still TASK_RUNNING); it ends when `sched_switch` puts the thread on a
//! CPU. Only watched processes pay more than one map lookup.
use agent_common::{Counter, RUNQ_SLOTS, RunqConfig, RunqEvent, RunqHist, RunqTotals, TaskLayout};
use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{btf_tracepoint, map},
    maps::{Array, HashMap, LruPerCpuHashMap, PerCpuHashMap, RingBuf},
    programs::BtfTracePointContext,
};

use crate::maps::{count, global};

#[unsafe(no_mangle)]
static TASK_LAYOUT: TaskLayout = TaskLayout::EMPTY;

#[map]
pub static RUNQ_CONFIG: Array<RunqConfig> = Array::with_max_entries(1, 0);
/// Watched processes (tgid → 1), kept up to date by the agent.
#[map]
pub static RUNQ_WATCH: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);
/// When a thread's current wait began, and which process it belonged to then.
#[derive(Clone, Copy)]
#[repr(C)]
struct Start {
    ts_ns: u64,
    tgid: u32,
    _pad: u32,
}

/// tid → its pending wait. A plain hash (cheaper than LRU on this hot path). Entries of threads
/// that exit are deleted at exit; the tgid guards against the rest (a reused tid belongs to
/// another process, so an entry left by the old thread is ignored).
#[map]
static RUNQ_START: HashMap<u32, Start> = HashMap::with_max_entries(16384, 0);
#[map]
pub static RUNQ_HIST: PerCpuHashMap<u32, RunqHist> = PerCpuHashMap::with_max_entries(4096, 0);
/// All zeros: the initial value for a new histogram, copied from the map instead of built on
/// the 512-byte BPF stack.
#[map]
static ZERO_HIST: Array<RunqHist> = Array::with_max_entries(1, 0);
#[map]
pub static RUNQ_TID: LruPerCpuHashMap<u32, RunqTotals> =
    LruPerCpuHashMap::with_max_entries(16384, 0);
#[map]
pub static RUNQ_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

const TASK_RUNNING: u64 = 0;

#[inline(always)]
fn layout() -> TaskLayout {
    global(&TASK_LAYOUT)
}

/// Reads a `task_struct` field. tp_btf arguments are trusted BTF pointers and `off` comes from
/// read-only .rodata, so the verifier sees a constant offset, checks the load against the
/// kernel's own task_struct layout, and lets us load directly: no helper call on the hottest
/// path in the kernel.
#[inline(always)]
fn field<T: Copy>(task: *const u8, off: u32) -> Option<T> {
    Some(unsafe { core::ptr::read(task.add(off as usize) as *const T) })
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

/// Starts the clock on `task` if its process is watched.
#[inline(always)]
fn enqueue(task: *const u8, l: &TaskLayout, cfg: &RunqConfig) {
    let Some(tgid) = field::<u32>(task, l.tgid) else {
        return;
    };
    if cfg.watch_all == 0 && unsafe { RUNQ_WATCH.get(&tgid) }.is_none() {
        return;
    }
    let Some(tid) = field::<u32>(task, l.pid) else {
        return;
    };
    if tid == 0 {
        return; // the idle task never waits
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = RUNQ_START.insert(
        &tid,
        &Start {
            ts_ns: now,
            tgid,
            _pad: 0,
        },
        0,
    );
}

/// `sched_process_exit(struct task_struct *p, ...)`: a thread that exits never waits again.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    let l = layout();
    if let Some(tid) = field::<u32>(ctx.arg::<*const u8>(0), l.pid) {
        let _ = RUNQ_START.remove(&tid);
    }
    0
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    if let Some(cfg) = config() {
        enqueue(ctx.arg::<*const u8>(0), &layout(), cfg);
    }
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    if let Some(cfg) = config() {
        enqueue(ctx.arg::<*const u8>(0), &layout(), cfg);
    }
    0
}

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next, ...)`.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let Some(cfg) = config() else { return 0 };
    let l = layout();
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);

    // Preempted but still runnable: its wait starts now.
    let prev_state = if l.state_size == 8 {
        field::<u64>(prev, l.state)
    } else {
        field::<u32>(prev, l.state).map(u64::from)
    };
    if prev_state == Some(TASK_RUNNING) {
        enqueue(prev, &l, cfg);
    }

    let Some(tid) = field::<u32>(next, l.pid) else {
        return 0;
    };
    let Some(&start) = (unsafe { RUNQ_START.get(&tid) }) else {
        return 0;
    };
    let _ = RUNQ_START.remove(&tid);
    let tgid = field::<u32>(next, l.tgid).unwrap_or(0);
    if start.tgid != tgid {
        return 0; // left behind by an earlier thread with this tid
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let delay = now.saturating_sub(start.ts_ns);

    record_hist(tgid, delay);
    record_totals(tid, delay);
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
    let h = match RUNQ_HIST.get_ptr_mut(&tgid) {
        Some(h) => h,
        None => {
            let Some(zero) = ZERO_HIST.get(0) else { return };
            let _ = RUNQ_HIST.insert(&tgid, zero, 0);
            let Some(h) = RUNQ_HIST.get_ptr_mut(&tgid) else {
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
fn record_totals(tid: u32, delay: u64) {
    match RUNQ_TID.get_ptr_mut(&tid) {
        Some(t) => unsafe {
            (*t).total_ns += delay;
            (*t).count += 1;
            if delay > (*t).max_ns {
                (*t).max_ns = delay;
            }
        },
        None => {
            let _ = RUNQ_TID.insert(
                &tid,
                &RunqTotals {
                    total_ns: delay,
                    count: 1,
                    max_ns: delay,
                },
                0,
            );
        }
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
    entry.submit(0);
}
