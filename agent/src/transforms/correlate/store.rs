//! The span store: received batches held until their kernel evidence is in, bounded in spans
//! and in bytes.
//!
//! The bound is a budget shared with the receivers: a batch takes its spans and its heap bytes
//! from the budget before it is queued for the correlator and gives them back when it leaves
//! the store, so what is held anywhere between receipt and join never exceeds either cap.
use std::{
    cmp::Ordering,
    collections::BinaryHeap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering as AtomicOrdering},
    },
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

use crate::shared::{clock::Clock, telemetry::CorrelationMetrics};

pub struct Batch {
    pub req: ExportTraceServiceRequest,
    pub spans: usize,
    /// Its heap size as taken from the budget (`heap_bytes` at receipt: the joins add a few
    /// attributes later, which the budget does not follow).
    pub bytes: usize,
    pub received_unix_ns: u64,
    pub received_at: Instant,
}

impl Batch {
    pub fn new(req: ExportTraceServiceRequest, spans: usize, bytes: usize) -> Self {
        Self {
            req,
            spans,
            bytes,
            received_unix_ns: Clock::now_unix_ns(),
            received_at: Instant::now(),
        }
    }

    /// The latest end time of the batch's spans (Unix ns).
    pub fn max_end_ns(&self) -> u64 {
        self.req
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| s.end_time_unix_nano.max(s.start_time_unix_nano))
            .max()
            .unwrap_or(0)
    }
}

/// What the store may hold at most: spans, and the heap bytes their decoded requests take
/// ([`heap_bytes`]). The span bound alone let 65,536 spans of ~1 KB each hold ~64 MB.
///
/// [`heap_bytes`]: crate::shared::span::heap_bytes
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreCap {
    pub spans: usize,
    pub bytes: usize,
}

#[derive(Default)]
struct Used {
    spans: AtomicUsize,
    bytes: AtomicUsize,
    high_spans: AtomicUsize,
    high_bytes: AtomicUsize,
}

#[derive(Clone)]
pub struct SpanBudget {
    used: Arc<Used>,
    cap: StoreCap,
    m: Option<CorrelationMetrics>,
}

/// Takes `n` from `used` unless that would pass `cap`; the total after, if taken.
fn take(used: &AtomicUsize, n: usize, cap: usize) -> Option<usize> {
    used.fetch_update(AtomicOrdering::AcqRel, AtomicOrdering::Relaxed, |cur| {
        (cur + n <= cap).then_some(cur + n)
    })
    .ok()
    .map(|prev| prev + n)
}

impl SpanBudget {
    pub fn new(cap: StoreCap, m: CorrelationMetrics) -> Self {
        m.store_capacity.set(cap.spans as i64);
        m.store_capacity_bytes.set(cap.bytes as i64);
        Self {
            used: Arc::default(),
            cap,
            m: Some(m),
        }
    }

    pub fn unmetered(cap: StoreCap) -> Self {
        Self {
            used: Arc::default(),
            cap,
            m: None,
        }
    }

    /// Takes `n` spans of `bytes` heap from the budget, or nothing if either does not fit.
    pub fn try_acquire(&self, n: usize, bytes: usize) -> bool {
        let Some(spans) = take(&self.used.spans, n, self.cap.spans) else {
            return false;
        };
        let Some(total_bytes) = take(&self.used.bytes, bytes, self.cap.bytes) else {
            self.used.spans.fetch_sub(n, AtomicOrdering::AcqRel);
            return false;
        };
        let high = self
            .used
            .high_spans
            .fetch_max(spans, AtomicOrdering::AcqRel)
            .max(spans);
        let high_bytes = self
            .used
            .high_bytes
            .fetch_max(total_bytes, AtomicOrdering::AcqRel)
            .max(total_bytes);
        if let Some(m) = &self.m {
            m.store_spans.set(spans as i64);
            m.store_high_water.set(high as i64);
            m.store_bytes.set(total_bytes as i64);
            m.store_bytes_high_water.set(high_bytes as i64);
        }
        true
    }

    pub fn release(&self, n: usize, bytes: usize) {
        let prev = self.used.spans.fetch_sub(n, AtomicOrdering::AcqRel);
        let prev_bytes = self.used.bytes.fetch_sub(bytes, AtomicOrdering::AcqRel);
        debug_assert!(prev >= n && prev_bytes >= bytes);
        if let Some(m) = &self.m {
            m.store_spans.set(prev.saturating_sub(n) as i64);
            m.store_bytes.set(prev_bytes.saturating_sub(bytes) as i64);
        }
    }

    /// (spans, bytes) held now.
    pub fn used(&self) -> (usize, usize) {
        (
            self.used.spans.load(AtomicOrdering::Relaxed),
            self.used.bytes.load(AtomicOrdering::Relaxed),
        )
    }

    /// Most (spans, bytes) ever held at once.
    pub fn high_water(&self) -> (usize, usize) {
        (
            self.used.high_spans.load(AtomicOrdering::Relaxed),
            self.used.high_bytes.load(AtomicOrdering::Relaxed),
        )
    }

    pub fn cap(&self) -> StoreCap {
        self.cap
    }
}

struct Held {
    ready_at: Instant,
    seq: u64,
    batch: Batch,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.ready_at, self.seq) == (o.ready_at, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    /// Reversed: the heap pops the earliest `ready_at` first.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.ready_at, o.seq).cmp(&(self.ready_at, self.seq))
    }
}

pub struct SpanStore {
    heap: BinaryHeap<Held>,
    seq: u64,
    spans: usize,
    bytes: usize,
    budget: SpanBudget,
}

impl SpanStore {
    pub fn new(budget: SpanBudget) -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
            spans: 0,
            bytes: 0,
            budget,
        }
    }

    /// Holds `b` until its spans have been over for `wait_ns` (kernel evidence about them may
    /// still be on its way), but never longer than `wait_ns` after receipt: spans that ended
    /// long ago are joined at once, and a span stamped in the future cannot pin memory.
    pub fn push(&mut self, b: Batch, wait_ns: u64) {
        let due_unix = b.max_end_ns().saturating_add(wait_ns);
        let hold = due_unix.saturating_sub(b.received_unix_ns).min(wait_ns);
        let ready_at = b.received_at + Duration::from_nanos(hold);
        self.seq += 1;
        self.spans += b.spans;
        self.bytes += b.bytes;
        self.heap.push(Held {
            ready_at,
            seq: self.seq,
            batch: b,
        });
    }

    pub fn pop_ready(&mut self, now: Instant) -> Option<Batch> {
        if self.heap.peek()?.ready_at > now {
            return None;
        }
        self.pop_any()
    }

    pub fn pop_any(&mut self) -> Option<Batch> {
        let b = self.heap.pop()?.batch;
        self.spans -= b.spans;
        self.bytes -= b.bytes;
        // After a burst, give back the heap's slots too (it only ever grows otherwise).
        if self.heap.is_empty() && self.heap.capacity() > 1024 {
            self.heap.shrink_to_fit();
        }
        Some(b)
    }

    /// The batch due first, if the store holds more than three quarters of either cap: joining
    /// it now, with the evidence that is in, keeps room for what comes next (a burst of spans
    /// would otherwise fill the store and pass on with no evidence at all).
    pub fn pop_if_pressed(&mut self) -> Option<Batch> {
        let cap = self.budget.cap();
        let pressed = self.spans > cap.spans / 4 * 3 || self.bytes > cap.bytes / 4 * 3;
        if pressed { self.pop_any() } else { None }
    }

    /// Gives a processed batch's spans and bytes back to the budget.
    pub fn release(&self, spans: usize, bytes: usize) {
        self.budget.release(spans, bytes);
    }

    pub fn len_spans(&self) -> usize {
        self.spans
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use super::*;

    fn batch(end_ns: u64, received_unix_ns: u64, received_at: Instant) -> Batch {
        let span = Span {
            start_time_unix_nano: end_ns.saturating_sub(10),
            end_time_unix_nano: end_ns,
            ..Default::default()
        };
        let req = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        Batch {
            req,
            spans: 1,
            bytes: 0,
            received_unix_ns,
            received_at,
        }
    }

    #[test]
    fn holds_fresh_spans_for_the_wait_and_old_ones_not_at_all() {
        let t0 = Instant::now();
        let now_unix = 1_000_000_000_000u64;
        let wait = 1_000_000_000;
        let mut s = SpanStore::new(spans_only(10));
        s.push(batch(now_unix, now_unix, t0), wait); // just ended: held 1 s
        s.push(batch(now_unix - 5 * wait, now_unix, t0), wait); // ended 5 s ago: ready now
        s.push(batch(now_unix + 100 * wait, now_unix, t0), wait); // "ends" in the future: 1 s at most
        assert_eq!(s.len_spans(), 3);
        let first = s.pop_ready(t0).expect("the old batch is ready at once");
        assert_eq!(first.max_end_ns(), now_unix - 5 * wait);
        assert!(s.pop_ready(t0 + Duration::from_millis(999)).is_none());
        assert!(s.pop_ready(t0 + Duration::from_secs(1)).is_some());
        assert!(s.pop_ready(t0 + Duration::from_secs(1)).is_some());
        assert_eq!(s.len_spans(), 0);
    }

    /// A budget bounded in spans only (bytes unlimited).
    fn spans_only(spans: usize) -> SpanBudget {
        SpanBudget::unmetered(StoreCap {
            spans,
            bytes: usize::MAX,
        })
    }

    #[test]
    fn budget_never_exceeds_its_cap() {
        let b = spans_only(100);
        assert!(b.try_acquire(60, 0));
        assert!(!b.try_acquire(41, 0));
        assert!(b.try_acquire(40, 0));
        assert!(!b.try_acquire(1, 0));
        b.release(50, 0);
        assert!(b.try_acquire(50, 0));
        assert_eq!((b.used().0, b.high_water().0), (100, 100));
        // Concurrent takers cannot overshoot either.
        let b = SpanBudget::unmetered(StoreCap {
            spans: 1000,
            bytes: 10_000,
        });
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        if b.try_acquire(7, 90) {
                            b.release(7, 90);
                        }
                    }
                });
            }
        });
        assert!(b.high_water().0 <= 1000 && b.high_water().1 <= 10_000);
        assert_eq!(b.used(), (0, 0));
    }

    /// Few spans can be many bytes: the byte bound refuses what the span bound would let in,
    /// and a refusal takes nothing from either.
    #[test]
    fn budget_is_bounded_in_bytes_too() {
        let b = SpanBudget::unmetered(StoreCap {
            spans: 65_536,
            bytes: 600_000,
        });
        // Ten big spans (a 100 KB attribute each) fit in spans, not in bytes.
        let big = |n: usize| {
            let mut r = batch(1, 1, Instant::now()).req;
            let span = &mut r.resource_spans[0].scope_spans[0].spans;
            let one = span[0].clone();
            span.clear();
            for _ in 0..n {
                let mut s = one.clone();
                s.attributes
                    .push(crate::shared::span::kv_s("payload", "x".repeat(100_000)));
                span.push(s);
            }
            r
        };
        let req = big(10);
        let bytes = crate::shared::span::heap_bytes(&req);
        assert!(bytes > 1_000_000, "10 × 100 KB counted as {bytes} bytes");
        assert!(!b.try_acquire(10, bytes));
        assert_eq!(b.used(), (0, 0));
        let req = big(5);
        let bytes = crate::shared::span::heap_bytes(&req);
        assert!(b.try_acquire(5, bytes));
        assert!(!b.try_acquire(5, bytes));
        assert_eq!(b.used(), (5, bytes));
        b.release(5, bytes);
        assert_eq!(b.used(), (0, 0));
    }
}
