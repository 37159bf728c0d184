//! TCP retransmits and RSTs, from the kernel's classic `tcp:*` tracepoints. Those records already
//! carry the 4-tuple (also for an RST answering a segment to a closed port, where there is no
//! socket), so no kernel struct layouts are needed; the record layouts come from tracefs.
use agent_common::{AF_INET, Counter, SockOwner, TcpEvent, TcpEventKind, TcpTpLayout};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, helpers::bpf_ktime_get_ns, macros::tracepoint,
    programs::TracePointContext,
};

use crate::{
    maps::{SOCK_OWNERS, TCP_EVENTS, count, global},
    owner::current_owner,
};

#[unsafe(no_mangle)]
static SEND_RESET_LAYOUT: TcpTpLayout = TcpTpLayout::EMPTY;
#[unsafe(no_mangle)]
static RECEIVE_RESET_LAYOUT: TcpTpLayout = TcpTpLayout::EMPTY;
#[unsafe(no_mangle)]
static RETRANSMIT_LAYOUT: TcpTpLayout = TcpTpLayout::EMPTY;

const NONE: u16 = TcpTpLayout::NONE;
/// `common_flags` bits set by the tracing core when the event fired in interrupt context.
const TRACE_FLAG_HARDIRQ: u8 = 0x08;
const TRACE_FLAG_SOFTIRQ: u8 = 0x10;
const COMMON_FLAGS_OFFSET: usize = 2;

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let l = global(&SEND_RESET_LAYOUT);
    count(Counter::RstSent, 1);
    emit(&ctx, &l, TcpEventKind::RstSent, 1);
    0
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let l = global(&RECEIVE_RESET_LAYOUT);
    count(Counter::RstReceived, 1);
    emit(&ctx, &l, TcpEventKind::RstReceived, 1);
    0
}

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let l = global(&RETRANSMIT_LAYOUT);
    // Since 6.13 the tracepoint also fires for failed attempts, which the kernel does not count
    // in RetransSegs; neither do we.
    if l.err != NONE {
        if let Ok(err) = unsafe { ctx.read_at::<i32>(l.err as usize) } {
            if err != 0 {
                count(Counter::RetransmitFailed, 1);
                return 0;
            }
        }
    }
    count(Counter::RetransmitSegs, 1);
    emit(&ctx, &l, TcpEventKind::Retransmit, 1);
    0
}

#[inline(always)]
fn read<T>(ctx: &TracePointContext, off: u16) -> Option<T> {
    if off == NONE {
        return None;
    }
    unsafe { ctx.read_at::<T>(off as usize) }.ok()
}

#[inline(always)]
fn emit(ctx: &TracePointContext, l: &TcpTpLayout, kind: TcpEventKind, segs: u32) {
    let Some(mut entry) = TCP_EVENTS.reserve::<TcpEvent>(0) else {
        count(Counter::TcpEventsLost, 1);
        return;
    };
    let mut ev = TcpEvent {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        skaddr: read::<u64>(ctx, l.skaddr).unwrap_or(0),
        cookie: read::<u64>(ctx, l.cookie).unwrap_or(0),
        owner: SockOwner {
            cgroup_id: 0,
            tgid: 0,
            tid: 0,
            comm: [0; 16],
        },
        current_tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        segs,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        family: 0,
        kind: kind as u8,
        state: read::<i32>(ctx, l.state).unwrap_or(0) as u8,
        reason: read::<u32>(ctx, l.reason).unwrap_or(0),
        _pad: 0,
    };
    if l.sockaddr != 0 {
        // struct sockaddr_in / sockaddr_in6: family, then the big-endian port, then the address
        // (at 4 for v4, after flowinfo at 8 for v6).
        ev.family = read::<u16>(ctx, l.saddr).unwrap_or(0);
        ev.sport = u16::from_be(read::<u16>(ctx, l.saddr + 2).unwrap_or(0));
        ev.dport = u16::from_be(read::<u16>(ctx, l.daddr + 2).unwrap_or(0));
        if ev.family == AF_INET {
            ev.saddr[..4].copy_from_slice(&read::<[u8; 4]>(ctx, l.saddr + 4).unwrap_or([0; 4]));
            ev.daddr[..4].copy_from_slice(&read::<[u8; 4]>(ctx, l.daddr + 4).unwrap_or([0; 4]));
        } else {
            ev.saddr = read::<[u8; 16]>(ctx, l.saddr + 8).unwrap_or([0; 16]);
            ev.daddr = read::<[u8; 16]>(ctx, l.daddr + 8).unwrap_or([0; 16]);
        }
    } else {
        ev.family = read::<u16>(ctx, l.family).unwrap_or(0);
        ev.sport = read::<u16>(ctx, l.sport).unwrap_or(0);
        ev.dport = read::<u16>(ctx, l.dport).unwrap_or(0);
        if ev.family == AF_INET {
            ev.saddr[..4].copy_from_slice(&read::<[u8; 4]>(ctx, l.saddr).unwrap_or([0; 4]));
            ev.daddr[..4].copy_from_slice(&read::<[u8; 4]>(ctx, l.daddr).unwrap_or([0; 4]));
        } else {
            ev.saddr = read::<[u8; 16]>(ctx, l.saddr_v6).unwrap_or([0; 16]);
            ev.daddr = read::<[u8; 16]>(ctx, l.daddr_v6).unwrap_or([0; 16]);
        }
    }
    ev.owner = owner_of(ctx, ev.skaddr);
    entry.write(ev);
    entry.submit(0);
}

/// The socket's owner from the table. If the table does not know it and we are in process
/// context (e.g. close() with SO_LINGER 0 sending an RST), `current` is the owner; in interrupt
/// context it is not, and we say "unknown" rather than guess.
#[inline(always)]
fn owner_of(ctx: &TracePointContext, sk: u64) -> SockOwner {
    if sk != 0 {
        if let Some(owner) = unsafe { SOCK_OWNERS.get(&sk) } {
            return *owner;
        }
    }
    let flags = unsafe { ctx.read_at::<u8>(COMMON_FLAGS_OFFSET) }.unwrap_or(TRACE_FLAG_SOFTIRQ);
    if sk != 0 && flags & (TRACE_FLAG_HARDIRQ | TRACE_FLAG_SOFTIRQ) == 0 {
        return current_owner();
    }
    count(Counter::OwnerUnknown, 1);
    SockOwner {
        cgroup_id: 0,
        tgid: 0,
        tid: 0,
        comm: [0; 16],
    }
}
