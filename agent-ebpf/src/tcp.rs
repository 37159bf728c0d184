//! TCP retransmits and RSTs, from the kernel's classic `tcp:*` tracepoints. Those records already
//! carry the 4-tuple (also for an RST answering a segment to a closed port, where there is no
//! socket), so no kernel struct layouts are needed; the record layouts come from tracefs.
use agent_common::{AF_INET, AF_INET6, Counter, SockOwner, TcpEvent, TcpEventKind, TcpTpLayout};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, helpers::bpf_ktime_get_ns, macros::tracepoint,
    programs::TracePointContext,
};

use crate::{
    maps::{SOCK_OWNERS, TCP_EVENTS, count, global, wake_flags},
    owner::{listener_owner, sock_ino},
};

#[unsafe(no_mangle)]
static SEND_RESET_LAYOUT: TcpTpLayout = TcpTpLayout::EMPTY;
#[unsafe(no_mangle)]
static RECEIVE_RESET_LAYOUT: TcpTpLayout = TcpTpLayout::EMPTY;
#[unsafe(no_mangle)]
static RETRANSMIT_LAYOUT: TcpTpLayout = TcpTpLayout::EMPTY;
/// Wake the reader only when this many bytes are waiting (it also drains on a timer): a woken
/// consumer costs far more per submit than a quiet one, and RSTs come in storms.
#[unsafe(no_mangle)]
static TCP_WAKE_BYTES: u64 = 0;

const NONE: u16 = TcpTpLayout::NONE;

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
        sock_ino: 0,
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
        ev.family = match read::<u16>(ctx, l.family) {
            Some(f) => f,
            // No `family` field (tcp_event_sk_skb on 5.10): the kernel stores IPv4
            // addresses v4-mapped in the v6 fields (TP_STORE_V4MAPPED), so tell them apart there.
            None => {
                let v6 = read::<[u8; 12]>(ctx, l.saddr_v6).unwrap_or([0; 12]);
                if v6 == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
                    AF_INET
                } else {
                    AF_INET6
                }
            }
        };
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
    ev.owner = owner_of(ev.skaddr, ev.sport);
    if ev.owner.tgid == 0 {
        ev.sock_ino = sock_ino(ev.skaddr);
    }
    entry.write(ev);
    entry.submit(wake_flags(&TCP_EVENTS, global(&TCP_WAKE_BYTES)));
}

/// The socket's owner: from the table (connect), else the process listening on the socket's
/// local port (an accepted connection). `current` is never trusted: these events run in softirq
/// or timer context, or in whichever task's context the stack processed the packet, and the
/// record's `common_flags` cannot tell them apart (for BPF programs the kernel overwrites the
/// record's first 8 bytes with a `pt_regs` pointer before the flags are filled in). Unknown
/// owners are resolved by the agent from `sock_ino`.
#[inline(always)]
fn owner_of(sk: u64, sport: u16) -> SockOwner {
    if sk != 0 {
        if let Some(owner) = unsafe { SOCK_OWNERS.get(&sk) } {
            return *owner;
        }
        if let Some(owner) = listener_owner(sk, sport) {
            return owner;
        }
    }
    count(Counter::OwnerUnknown, 1);
    SockOwner {
        cgroup_id: 0,
        tgid: 0,
        tid: 0,
        comm: [0; 16],
    }
}
