//! The span store's byte budget is only as good as its size estimate: `heap_bytes` must match
//! what decoding a request really allocates (counted here by a global allocator), and the
//! decoded size must be what is budgeted, not the wire size (~5× smaller for the game server's spans). No
//! sockets, no eBPF: a pure measurement, well under a second.
mod correlation_support;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    net::SocketAddr,
    sync::atomic::{AtomicIsize, AtomicUsize, Ordering},
};

use agent::shared::span::{ALLOC_OVERHEAD, heap_bytes};
use correlation_support::{conn_span, request, task_span};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;

/// Live bytes and allocations (what was asked for; malloc's own overhead is not seen here).
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicIsize = AtomicIsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same layout, as the caller promised.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        ALLOCS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: p was allocated by System with l.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// (live bytes, live allocations) that `f`'s result holds.
fn held_by<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let (b0, a0) = (LIVE.load(Ordering::SeqCst), ALLOCS.load(Ordering::SeqCst));
    let t = f();
    let (b1, a1) = (LIVE.load(Ordering::SeqCst), ALLOCS.load(Ordering::SeqCst));
    (t, (b1 - b0) as usize, (a1 - a0) as usize)
}

#[test]
fn heap_bytes_matches_what_decoding_allocates() {
    let local: SocketAddr = "10.0.0.7:7000".parse().unwrap();
    // What the game server sends: session spans (connection attributes) and pool task spans,
    // some failed (a status message), in batches of 1 and 512 (the SDK's batch size).
    for n in [1u64, 512] {
        let spans = (0..n)
            .map(|i| {
                let peer: SocketAddr = format!("10.0.1.{}:{}", i % 250, 40000 + i).parse().unwrap();
                if i % 2 == 0 {
                    conn_span("ws.session", i, 1_000, 2_000, local, peer, i % 4 == 0)
                } else {
                    task_span(i, 1_000, 2_000, 4242, 4200, "save")
                }
            })
            .collect();
        let wire = request(spans).encode_to_vec();
        let (req, bytes, allocs) =
            held_by(|| ExportTraceServiceRequest::decode(&wire[..]).unwrap());
        let actual = bytes + allocs * ALLOC_OVERHEAD;
        let estimate = heap_bytes(&req);
        eprintln!(
            "{n} spans: wire {} B, decoded {bytes} B in {allocs} allocations (+{ALLOC_OVERHEAD} B each: {actual} B), estimate {estimate} B ({:.2}× wire)",
            wire.len(),
            estimate as f64 / wire.len() as f64
        );
        let ratio = estimate as f64 / actual as f64;
        assert!(
            (0.95..=1.05).contains(&ratio),
            "estimate {estimate} B vs {actual} B allocated ({ratio:.3}×)"
        );
        // Why the budget counts decoded bytes: the wire size would undercount by half or more.
        assert!(
            estimate >= 2 * wire.len(),
            "{estimate} vs wire {}",
            wire.len()
        );
        drop(req);
    }
    assert!(
        CALLS.load(Ordering::Relaxed) > 0,
        "the allocator counted nothing"
    );
}
