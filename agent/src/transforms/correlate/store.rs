//! The span store: received batches held until their kernel evidence is in, bounded in spans.
//!
//! The bound is a budget shared with the receivers: a batch takes its spans from the budget
//! before it is queued for the correlator and gives them back when it leaves the store, so the
//! spans held anywhere between receipt and join never exceed the cap.
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
    pub received_unix_ns: u64,
    pub received_at: Instant,
}

impl Batch {
    pub fn new(req: ExportTraceServiceRequest, spans: usize) -> Self {
        Self {
            req,
            spans,
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

#[derive(Clone)]
pub struct SpanBudget {
    inner: Arc<(AtomicUsize, AtomicUsize)>,
    cap: usize,
    m: Option<CorrelationMetrics>,
}

impl SpanBudget {
    pub fn new(cap: usize, m: CorrelationMetrics) -> Self {
        m.store_capacity.set(cap as i64);
        Self {
            inner: Arc::new((AtomicUsize::new(0), AtomicUsize::new(0))),
            cap,
            m: Some(m),
        }
    }

    pub fn unmetered(cap: usize) -> Self {
        Self {
            inner: Arc::new((AtomicUsize::new(0), AtomicUsize::new(0))),
            cap,
            m: None,
        }
    }

    /// Takes `n` spans from the budget, or nothing if they do not fit.
    pub fn try_acquire(&self, n: usize) -> bool {
        let used = &self.inner.0;
        let mut cur = used.load(AtomicOrdering::Relaxed);
        loop {
            if cur + n > self.cap {
                return false;
            }
            match used.compare_exchange_weak(
                cur,
                cur + n,
                AtomicOrdering::AcqRel,
                AtomicOrdering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        let high = self
            .inner
            .1
            .fetch_max(cur + n, AtomicOrdering::AcqRel)
            .max(cur + n);
        if let Some(m) = &self.m {
            m.store_spans.set((cur + n) as i64);
            m.store_high_water.set(high as i64);
        }
        true
    }

    pub fn release(&self, n: usize) {
        let prev = self.inner.0.fetch_sub(n, AtomicOrdering::AcqRel);
        debug_assert!(prev >= n);
        if let Some(m) = &self.m {
            m.store_spans.set(prev.saturating_sub(n) as i64);
        }
    }

    pub fn used(&self) -> usize {
        self.inner.0.load(AtomicOrdering::Relaxed)
    }

    pub fn high_water(&self) -> usize {
        self.inner.1.load(AtomicOrdering::Relaxed)
    }

    pub fn cap(&self) -> usize {
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
    budget: SpanBudget,
}

impl SpanStore {
    pub fn new(budget: SpanBudget) -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
            spans: 0,
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
        Some(b)
    }

    /// Gives a processed batch's spans back to the budget.
    pub fn release(&self, spans: usize) {
        self.budget.release(spans);
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
            received_unix_ns,
            received_at,
        }
    }

    #[test]
    fn holds_fresh_spans_for_the_wait_and_old_ones_not_at_all() {
        let t0 = Instant::now();
        let now_unix = 1_000_000_000_000u64;
        let wait = 1_000_000_000;
        let mut s = SpanStore::new(SpanBudget::unmetered(10));
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

    #[test]
    fn budget_never_exceeds_its_cap() {
        let b = SpanBudget::unmetered(100);
        assert!(b.try_acquire(60));
        assert!(!b.try_acquire(41));
        assert!(b.try_acquire(40));
        assert!(!b.try_acquire(1));
        b.release(50);
        assert!(b.try_acquire(50));
        assert_eq!((b.used(), b.high_water()), (100, 100));
        // Concurrent takers cannot overshoot either.
        let b = SpanBudget::unmetered(1000);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        if b.try_acquire(7) {
                            b.release(7);
                        }
                    }
                });
            }
        });
        assert!(b.high_water() <= 1000);
        assert_eq!(b.used(), 0);
    }
}
