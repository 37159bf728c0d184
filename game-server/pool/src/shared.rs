//! State shared by the pool handle, its workers and its housekeeping thread.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use prometheus::IntCounter;
use tokio::sync::Notify;

use crate::breaker::{Admission, Breaker};
use crate::config::PoolConfig;
use crate::error::Rejected;
use crate::job::{CANCELLED, Job, QUEUE_TIMEOUT, Signal};
use crate::metrics::{GaugeSource, Gauges, KindMetrics, Metrics, Outcome};
use crate::queue::Queue;
use crate::worker;

pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) cfg: PoolConfig,
    pub(crate) pid: i32,
    pub(crate) queue: Queue,
    pub(crate) breaker: Breaker,
    pub(crate) metrics: Metrics,
    pub(crate) rejections: [IntCounter; 3],
    pub(crate) counters: Counters,
    /// Workers counted against min/max: reserved before a thread is spawned, released when it
    /// decides to retire or exit.
    pub(crate) live: AtomicUsize,
    pub(crate) busy: AtomicUsize,
    /// Worker threads that have not finished yet (shutdown waits for zero).
    pub(crate) alive: AtomicUsize,
    pub(crate) exited: Notify,
    pub(crate) next_worker: AtomicUsize,
    pub(crate) threads: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) housekeeper: Mutex<Option<JoinHandle<()>>>,
    pub(crate) pool_cancel: Arc<Signal>,
    pub(crate) closing: AtomicBool,
    /// Wakes the housekeeping thread early on close.
    pub(crate) stop: (Mutex<bool>, Condvar),
}

/// Pool-wide totals behind `PoolStats` and the breaker's samples.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) submitted: AtomicU64,
    outcomes: [AtomicU64; 7],
}

impl Counters {
    pub(crate) fn get(&self, o: Outcome) -> u64 {
        self.outcomes[o as usize].load(Ordering::Relaxed)
    }

    /// Tasks that reached a final outcome after being accepted (everything but rejections).
    pub(crate) fn finished(&self) -> u64 {
        let all = self.outcomes.iter().enumerate();
        all.filter(|(i, _)| *i != Outcome::Rejected as usize)
            .map(|(_, c)| c.load(Ordering::Relaxed))
            .sum()
    }
}

impl Shared {
    pub(crate) fn record(&self, km: &KindMetrics, o: Outcome) {
        km.outcome(o).inc();
        self.counters.outcomes[o as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reject(&self, km: &KindMetrics, why: Rejected) -> Rejected {
        self.record(km, Outcome::Rejected);
        let i = match why {
            Rejected::PoolBusy => 0,
            Rejected::QueueFull => 1,
            Rejected::ShuttingDown => 2,
        };
        self.rejections[i].inc();
        why
    }

    /// `(busy + queued) / (max_workers + queue_capacity)`: the share of the pool's whole capacity
    /// (every worker it may have plus every queue slot) in use. It reaches 0.9 only when the pool
    /// is at or near max workers *and* its queue is nearly full, which is what the breaker is for.
    pub(crate) fn watermark(&self) -> f64 {
        let used = self.busy.load(Ordering::Relaxed) + self.queue.len();
        let total = self.cfg.max_workers + self.queue.capacity();
        (used as f64 / total as f64).min(1.0)
    }

    /// Accounts for a job removed from the queue without running, then drops it, which wakes its
    /// handle. `shutting_down` cancels jobs that are neither expired nor already cancelled.
    pub(crate) fn finish_unstarted(&self, job: Job, now: Instant, shutting_down: bool) {
        let js = &job.shared;
        let outcome = if js.deadline <= now && js.leave_queue(QUEUE_TIMEOUT) {
            Outcome::QueueTimeout
        } else {
            // Either already cancelled by its handle, or cancelled now.
            let _ = js.leave_queue(CANCELLED);
            debug_assert!(shutting_down || js.state() == CANCELLED);
            Outcome::Cancelled
        };
        self.record(&js.metrics, outcome);
        if let Admission::Probe(epoch) = js.admission {
            match outcome {
                Outcome::QueueTimeout => self.breaker.probe_finished(epoch, false, now),
                _ => self.breaker.probe_abandoned(epoch),
            }
        }
        // Drops the user's closure (and wakes the handle); its captures' Drop impls are user code.
        crate::job::drop_contained(job);
    }

    /// Adds workers when the pool is busy relative to its live workers (`prewarm_at`), so that
    /// the next burst finds threads already running, never beyond `max_workers`.
    pub(crate) fn maybe_scale_up(self: &Arc<Self>, queued: usize) {
        let live = self.live.load(Ordering::Relaxed);
        if live >= self.cfg.max_workers {
            return;
        }
        let demand = self.busy.load(Ordering::Relaxed) + queued;
        if live == 0 || demand as f64 >= self.cfg.prewarm_at * live as f64 {
            self.spawn_workers(self.cfg.prewarm_step);
        }
    }

    pub(crate) fn spawn_workers(self: &Arc<Self>, n: usize) {
        for _ in 0..n {
            let reserved = self
                .live
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |l| {
                    (l < self.cfg.max_workers).then_some(l + 1)
                });
            if reserved.is_err() {
                return;
            }
            if self.closing.load(Ordering::Acquire) {
                self.live.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            if let Err(e) = worker::spawn(self) {
                self.live.fetch_sub(1, Ordering::AcqRel);
                tracing::error!(pool = %self.name, error = %e, "cannot spawn pool worker");
                return;
            }
        }
    }

    /// Called by an idle worker under the queue lock: leave if that keeps `min_workers`.
    pub(crate) fn try_retire(&self) -> bool {
        let retired = self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |l| {
                (l > self.cfg.min_workers).then(|| l - 1)
            })
            .is_ok();
        if retired {
            self.metrics.worker_retires.inc();
        }
        retired
    }

    /// Stops intake; workers finish what is queued and exit. Idempotent.
    pub(crate) fn close(&self) {
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.queue.close();
        *self.stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stop.1.notify_all();
    }

    /// Cancels running tasks and every queued job.
    pub(crate) fn cancel_all(&self) {
        // Queue first, so a worker freed by the cancellation finds nothing left to start.
        self.cancel_queued();
        self.pool_cancel.fire();
    }

    pub(crate) fn cancel_queued(&self) {
        let now = Instant::now();
        for job in self.queue.drain() {
            self.finish_unstarted(job, now, true);
        }
    }

    /// Waits until every worker thread has finished, or until `deadline`; true if all did.
    pub(crate) async fn wait_workers(&self, deadline: Option<Instant>) -> bool {
        loop {
            // Created before the check so a notification between check and await is not lost.
            let exited = self.exited.notified();
            if self.alive.load(Ordering::Acquire) == 0 {
                return true;
            }
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d.into(), exited).await.is_err() {
                        return self.alive.load(Ordering::Acquire) == 0;
                    }
                }
                None => exited.await,
            }
        }
    }

    /// Joins every thread; called once they have all finished, so it does not block for long.
    pub(crate) fn join_threads(&self) {
        if let Some(h) = self
            .housekeeper
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = h.join();
        }
        let handles = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles {
            let _ = h.join();
        }
    }

    pub(crate) fn worker_exited(&self) {
        self.alive.fetch_sub(1, Ordering::AcqRel);
        self.exited.notify_waiters();
    }
}

impl GaugeSource for Shared {
    fn gauges(&self) -> Gauges {
        let busy = self.busy.load(Ordering::Relaxed);
        let live = self.live.load(Ordering::Relaxed);
        Gauges {
            busy,
            idle: live.saturating_sub(busy),
            queued: self.queue.len(),
            capacity: self.queue.capacity(),
            watermark: self.watermark(),
            breaker: self.breaker.state(),
        }
    }
}
