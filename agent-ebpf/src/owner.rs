//! The socket-owner table. Retransmits and received RSTs fire in softirq or timer context, where
//! `current` is whatever task the interrupt landed on. So we learn a socket's owner where the
//! owner itself is running — connect(), send and receive calls — and look it up later.
use agent_common::{SockOwner, SockTpLayout, TcpTpLayout};
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::tracepoint,
    programs::TracePointContext,
};

use crate::maps::{SOCK_OWNERS, global as layout};

const IPPROTO_TCP: u16 = 6;
const TCP_SYN_SENT: i32 = 2;

#[unsafe(no_mangle)]
static SOCK_LENGTH_LAYOUT: SockTpLayout = SockTpLayout::EMPTY;
#[unsafe(no_mangle)]
static SET_STATE_LAYOUT: SockTpLayout = SockTpLayout::EMPTY;
#[unsafe(no_mangle)]
static DESTROY_LAYOUT: TcpTpLayout = TcpTpLayout::EMPTY;

/// The calling task, as an owner.
#[inline(always)]
pub fn current_owner() -> SockOwner {
    let pid_tgid = bpf_get_current_pid_tgid();
    SockOwner {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// Records `current` as the owner of `sk`, unless it already is (keeps the hot send path to one
/// lookup).
#[inline(always)]
pub fn claim(sk: u64) {
    if sk == 0 {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == 0 {
        return;
    }
    if let Some(known) = unsafe { SOCK_OWNERS.get(&sk) } {
        if known.tgid == tgid {
            return;
        }
    }
    let _ = SOCK_OWNERS.insert(&sk, &current_owner(), 0);
}

#[tracepoint]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    claim_from_length(&ctx);
    0
}

#[tracepoint]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    claim_from_length(&ctx);
    0
}

#[inline(always)]
fn claim_from_length(ctx: &TracePointContext) {
    let l = layout(&SOCK_LENGTH_LAYOUT);
    let Ok(protocol) = (unsafe { ctx.read_at::<u16>(l.protocol as usize) }) else {
        return;
    };
    if protocol != IPPROTO_TCP {
        return;
    }
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(l.sk as usize) } {
        claim(sk);
    }
}

/// connect() moves a socket to SYN_SENT in the caller's context: the earliest moment we know the
/// owner of an outgoing connection.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let l = layout(&SET_STATE_LAYOUT);
    let (Ok(protocol), Ok(newstate)) =
        (unsafe { ctx.read_at::<u16>(l.protocol as usize) }, unsafe {
            ctx.read_at::<i32>(l.newstate as usize)
        })
    else {
        return 0;
    };
    if protocol == IPPROTO_TCP && newstate == TCP_SYN_SENT {
        if let Ok(sk) = unsafe { ctx.read_at::<u64>(l.sk as usize) } {
            claim(sk);
        }
    }
    0
}

#[tracepoint]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    let l = layout(&DESTROY_LAYOUT);
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(l.skaddr as usize) } {
        let _ = SOCK_OWNERS.remove(&sk);
    }
    0
}
