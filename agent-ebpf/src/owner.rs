//! Who owns a socket. Retransmits and received RSTs fire in softirq or timer context, where
//! `current` is whatever task the interrupt landed on, so owners are learnt once per connection
//! where the owner itself is running, and looked up at event time. Nothing here runs per message.
//! - connect(): the SYN_SENT transition runs in the caller's context → `SOCK_OWNERS[sk]`.
//! - listen(): the LISTEN transition runs in the caller's context → `LISTENERS[(netns, port)]`;
//!   an accepted connection is owned by the process that listens on its local port. (No hook
//!   runs in the accepting process's context without fentry/kprobes or syscall tracepoints, and
//!   the latter slow down every syscall of every task while enabled.)
//! - sockets born before the agent started: the event carries the socket's inode and the agent
//!   finds the process holding it in /proc (see `sock_ino`).
use agent_common::{SockLayout, SockOwner, SockTpLayout, TcpTpLayout, listen_key};
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_probe_read_kernel,
    },
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};

use crate::maps::{SOCK_OWNERS, global as layout};

const IPPROTO_TCP: u16 = 6;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;
const TCP_LISTEN: i32 = 10;

#[unsafe(no_mangle)]
static SET_STATE_LAYOUT: SockTpLayout = SockTpLayout::EMPTY;
#[unsafe(no_mangle)]
static DESTROY_LAYOUT: TcpTpLayout = TcpTpLayout::EMPTY;
#[unsafe(no_mangle)]
static SOCK_LAYOUT: SockLayout = SockLayout::EMPTY;

/// Listening ports (per network namespace) → the process that called listen().
#[map]
pub static LISTENERS: LruHashMap<u64, SockOwner> = LruHashMap::with_max_entries(8192, 0);

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

/// The network namespace of `sk` (its `struct net` address), 0 if unknown.
#[inline(always)]
fn net_of(sk: u64) -> u64 {
    let l = layout(&SOCK_LAYOUT);
    if sk == 0 || l.valid == 0 {
        return 0;
    }
    unsafe { bpf_probe_read_kernel((sk as *const u8).add(l.sock_net as usize) as *const u64) }
        .unwrap_or(0)
}

/// The owner of the listener on `sk`'s local port `port`, if we saw its listen().
#[inline(always)]
pub fn listener_owner(sk: u64, port: u16) -> Option<SockOwner> {
    let net = net_of(sk);
    if net == 0 {
        return None;
    }
    unsafe { LISTENERS.get(&listen_key(net, port)) }.copied()
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let l = layout(&SET_STATE_LAYOUT);
    let (Ok(protocol), Ok(newstate), Ok(sk)) = (
        unsafe { ctx.read_at::<u16>(l.protocol as usize) },
        unsafe { ctx.read_at::<i32>(l.newstate as usize) },
        unsafe { ctx.read_at::<u64>(l.sk as usize) },
    ) else {
        return 0;
    };
    if protocol != IPPROTO_TCP || sk == 0 {
        return 0;
    }
    if newstate == TCP_SYN_SENT {
        // connect(), in the caller's context.
        if bpf_get_current_pid_tgid() >> 32 != 0 {
            let _ = SOCK_OWNERS.insert(&sk, &current_owner(), 0);
        }
        return 0;
    }
    let oldstate = unsafe { ctx.read_at::<i32>(l.oldstate as usize) }.unwrap_or(0);
    // LISTEN → CLOSE is the listener closing. (An accepted child is cloned from its listener
    // and goes "LISTEN" → SYN_RECV: that is not the listener going away.)
    let closing = oldstate == TCP_LISTEN && newstate == TCP_CLOSE;
    if newstate != TCP_LISTEN && !closing {
        return 0;
    }
    let Ok(port) = (unsafe { ctx.read_at::<u16>(l.sport as usize) }) else {
        return 0;
    };
    let net = net_of(sk);
    if net == 0 {
        return 0;
    }
    let key = listen_key(net, port);
    if newstate == TCP_LISTEN {
        // listen(), in the caller's context.
        let _ = LISTENERS.insert(&key, &current_owner(), 0);
    } else {
        let _ = LISTENERS.remove(&key);
    }
    0
}

/// The inode number of `sk`'s socket file, for the agent to find its owner in /proc. Only
/// called for events whose owner is not known here (rare by construction).
#[inline(always)]
pub fn sock_ino(sk: u64) -> u64 {
    let l = layout(&SOCK_LAYOUT);
    if sk == 0 || l.valid == 0 {
        return 0;
    }
    let Ok(socket) = (unsafe {
        bpf_probe_read_kernel((sk as *const u8).add(l.sock_socket as usize) as *const u64)
    }) else {
        return 0;
    };
    if socket == 0 {
        return 0; // orphaned (closed by its process): no file, no owner to find
    }
    unsafe { bpf_probe_read_kernel((socket as *const u8).add(l.socket_ino as usize) as *const u64) }
        .unwrap_or(0)
}

#[tracepoint]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    let l = layout(&DESTROY_LAYOUT);
    if let Ok(sk) = unsafe { ctx.read_at::<u64>(l.skaddr as usize) } {
        let _ = SOCK_OWNERS.remove(&sk);
    }
    0
}
