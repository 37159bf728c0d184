//! What a burst leaves behind must not be many small long-lived allocations: scattered among
//! the burst's short-lived ones, they keep the heap's pages resident after it (`malloc_trim`
//! returns only whole free pages), and the agent's RSS stayed far above what it held after
//! ~19k sockets were reset at once. Counted here by a global allocator: the evidence windows
//! during a storm of new connections, and the enriched spans the board keeps. No sockets, no
//! eBPF: well under a second.
use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    net::SocketAddr,
};

use agent::{
    shared::{
        evidence::TcpEntry,
        netkey::{ConnKey, Endpoint},
        span::SpanSummary,
    },
    sinks::board::Board,
    transforms::correlate::{TCP_BOUNDS, evidence::Windows},
};
use agent_common::TcpEventKind;

/// Counts per thread (the tests run in parallel): live bytes, live allocations, calls.
struct Counting;
thread_local! {
    static COUNTS: Cell<(isize, isize, usize)> = const { Cell::new((0, 0, 0)) };
}

fn count(bytes: isize, allocs: isize, calls: usize) {
    // A thread being torn down has no counts left to keep.
    let _ = COUNTS.try_with(|c| {
        let (b, a, n) = c.get();
        c.set((b + bytes, a + allocs, n + calls));
    });
}

/// (live bytes, live allocations, allocation calls) of this thread so far.
fn counts() -> (isize, isize, usize) {
    COUNTS.with(Cell::get)
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count(l.size() as isize, 1, 1);
        // SAFETY: same layout, as the caller promised.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        count(-(l.size() as isize), -1, 0);
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
    let (live0, _, calls0) = counts();
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
    let calls = counts().2 - calls0;
    assert_eq!(w.len(), conns);
    assert_eq!(w.entries(), 2 * conns);
    // The map's table and the slab double as they grow; one allocation per connection was
    // 8,192 more.
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
    // keep no more than an empty store).
    w.prune(u64::MAX);
    assert_eq!((w.len(), w.entries(), w.slots()), (0, 0, 0));
    let held = counts().0 - live0;
    let empty = {
        let before = counts().0;
        let e: Windows<(u64, ConnKey), TcpEntry> = Windows::new(TCP_BOUNDS);
        let n = counts().0 - before;
        drop(e);
        n
    };
    assert!(
        held <= empty + 64 * 1024,
        "{held} bytes held after the storm expired; an empty store holds {empty}"
    );
}

/// What the correlator hands the board for a session span reset by its peer.
fn session_summary(i: u64) -> SpanSummary {
    let attributes = serde_json::json!({
        "session.id": format!("3f2c9a7e-{i:08}"),
        "network.peer.address": "127.0.0.1",
        "network.peer.port": 40_000 + i % 20_000,
        "network.local.address": "127.0.0.1",
        "network.local.port": 7000,
        "network.transport": "tcp",
        "thread.id": 4242,
        "kernelsight.tcp.resets_sent": 0,
        "kernelsight.tcp.resets_received": 1,
        "kernelsight.tcp.retransmits": 0,
    });
    SpanSummary {
        trace_id: format!("{i:032x}"),
        span_id: format!("{i:016x}"),
        name: "ws.session".into(),
        service: "game-server".into(),
        start_unix_ns: 1_000 + i,
        end_unix_ns: 2_000 + i,
        attributes: attributes.as_object().unwrap().clone(),
        events: vec![("kernelsight.tcp.reset".into(), 2_000 + i)],
    }
}

#[test]
fn the_board_keeps_its_enriched_spans_in_a_few_allocations() {
    let keep = 1000;
    let mut b = Board::new(200, keep);
    // Warm up to the bound first (the ring and index reach their size), then measure what the
    // next `keep` spans leave held: each replaces one kept span.
    for i in 0..keep as u64 {
        b.record_span(session_summary(i));
    }
    let (live0, n0, _) = counts();
    for i in keep as u64..2 * keep as u64 {
        b.record_span(session_summary(i));
    }
    let held_allocs = counts().1 - n0;
    let held_bytes = counts().0 - live0;
    assert!(
        held_allocs.unsigned_abs() <= 16,
        "{held_allocs} more allocations held after replacing {keep} spans"
    );
    assert!(
        held_bytes.unsigned_abs() <= 64 * 1024,
        "{held_bytes} bytes more"
    );
    // And in all: a few (the byte ring and the index growing), where a `SpanSummary` kept as it
    // is takes ~25 per span, and even one per span lands wherever the heap has a hole.
    let (b2, allocs) = {
        let a0 = counts().1;
        let mut b2 = Board::new(200, keep);
        for i in 0..keep as u64 {
            b2.record_span(session_summary(i));
        }
        (b2, counts().1 - a0)
    };
    assert!(
        allocs <= 16,
        "{allocs} allocations held for {keep} enriched spans"
    );
    let last = b2
        .span(&format!("{:032x}", keep - 1), &format!("{:016x}", keep - 1))
        .expect("the newest span is found by its ids");
    assert_eq!(last.attributes["kernelsight.tcp.resets_received"], 1);
}
