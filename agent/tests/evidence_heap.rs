//! A reset storm makes thousands of new evidence keys at once. Each must not take a small
//! long-lived allocation of its own: scattered among the burst's short-lived allocations, those
//! kept the heap's pages resident after the burst (the agent's RSS stayed ~6 MiB above what it
//! held). Counted here by a global allocator: the windows' allocations during a storm of the
//! size the bounds allow, and what is left once the evidence has expired. No sockets, no eBPF:
//! well under a second.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::SocketAddr,
    sync::atomic::{AtomicIsize, AtomicUsize, Ordering},
};

use agent::{
    shared::{
        evidence::TcpEntry,
        netkey::{ConnKey, Endpoint},
    },
    transforms::correlate::{TCP_BOUNDS, evidence::Windows},
};
use agent_common::TcpEventKind;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same layout, as the caller promised.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: p was allocated by System with l.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn entry(ts_ns: u64, kind: TcpEventKind, local: Endpoint, peer: Endpoint) -> TcpEntry {
    TcpEntry {
        ts_ns,
        kind,
        local,
        peer,
        segs: 1,
        state: 1,
        netns: 1,
        owner_pid: 7,
        owner_comm: "game-server".into(),
    }
}

#[test]
fn a_reset_storm_takes_no_allocation_per_connection_and_gives_the_room_back() {
    let server: Endpoint = "127.0.0.1:7000".parse::<SocketAddr>().unwrap().into();
    // The bounds' worth of connections, each reset: an RST sent by the client and received by
    // the server, on one key per connection (as the correlator keys them).
    let conns = TCP_BOUNDS.max_keys;
    let (calls0, live0) = (CALLS.load(Ordering::SeqCst), LIVE.load(Ordering::SeqCst));
    let mut w: Windows<(u64, ConnKey), TcpEntry> = Windows::new(TCP_BOUNDS);
    for i in 0..conns {
        let client = Endpoint::new([127, 0, 0, 2].into(), 10_000 + i as u16);
        let ts = 1_000_000_000 + i as u64;
        w.push(
            (1, ConnKey::new(client, server)),
            entry(ts, TcpEventKind::RstSent, client, server),
        );
        w.push(
            (1, ConnKey::new(client, server)),
            entry(ts + 1, TcpEventKind::RstReceived, server, client),
        );
    }
    let calls = CALLS.load(Ordering::SeqCst) - calls0;
    assert_eq!(w.len(), conns);
    assert_eq!(w.entries(), 2 * conns);
    // The map's table doubles as it grows (and the slab is reserved once); one allocation per
    // connection was 8,192 more.
    assert!(
        calls <= 64,
        "{calls} allocations for {conns} connections' evidence"
    );
    // Every connection's two entries are there, in order.
    let client: Endpoint = "127.0.0.2:10005".parse::<SocketAddr>().unwrap().into();
    let kinds: Vec<TcpEventKind> = w
        .get(&(1, ConnKey::new(client, server)))
        .unwrap()
        .items()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, [TcpEventKind::RstSent, TcpEventKind::RstReceived]);

    // Once everything has expired, what the storm touched is given back (the slab and the map
    // keep no more than an empty store's reservation).
    w.prune(u64::MAX);
    assert_eq!((w.len(), w.entries(), w.slots()), (0, 0, 0));
    let held = LIVE.load(Ordering::SeqCst) - live0;
    let empty = {
        let before = LIVE.load(Ordering::SeqCst);
        let e: Windows<(u64, ConnKey), TcpEntry> = Windows::new(TCP_BOUNDS);
        let n = LIVE.load(Ordering::SeqCst) - before;
        drop(e);
        n
    };
    assert!(
        held <= empty + 64 * 1024,
        "{held} bytes held after the storm expired; an empty store reserves {empty}"
    );
}
