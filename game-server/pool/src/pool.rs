//! The public pool handle: submission, stats, shutdown.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

use crate::breaker::{Admission, Breaker, BreakerState};
use crate::config::PoolConfig;
use crate::context::TaskContext;
use crate::error::{PoolError, Rejected};
use crate::handle::TaskHandle;
use crate::job::{self, Job, JobShared, Signal};
use crate::metrics::{GaugeSource, Metrics, Outcome};
use crate::queue::Queue;
use crate::shared::{Counters, Shared};
use crate::{housekeeper, metrics::KindMetrics};

/// A managed pool of OS-thread workers. Cheap to clone; dropping the last clone without
/// [`Pool::shutdown`] lets queued work finish in the background and then the threads exit.
#[derive(Clone)]
pub struct Pool {
    owner: Arc<Owner>,
}

/// Closes the pool when the last `Pool` clone goes away (workers hold `Shared`, not this).
struct Owner {
    shared: Arc<Shared>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shared.close();
        self.shared.metrics.unregister();
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name())
            .field("stats", &self.stats())
            .finish()
    }
}

/// A snapshot of the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolStats {
    /// Live worker threads (busy + idle).
    pub workers: usize,
    /// Workers running a task.
    pub active: usize,
    pub idle: usize,
    /// Tasks in the queue (including ones cancelled in place and not yet removed).
    pub queued: usize,
    pub queue_capacity: usize,
    /// See `pool_watermark_ratio`: (active + queued) / (max_workers + queue_capacity).
    pub watermark: f64,
    pub breaker: BreakerState,
    /// Submission attempts, including rejected ones.
    pub submitted: u64,
    pub ok: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub queue_timed_out: u64,
    pub cancelled: u64,
    pub panicked: u64,
    pub rejected: u64,
}

impl Pool {
    /// Validates `cfg`, registers the pool's metrics in `registry`, and starts `min_workers`
    /// workers plus the housekeeping thread.
    pub fn new(cfg: PoolConfig, registry: &prometheus::Registry) -> Result<Pool, PoolError> {
        cfg.validate()?;
        let metrics = Metrics::new(&cfg.name, registry)?;
        let name: Arc<str> = cfg.name.as_str().into();
        let transitions = metrics.breaker_transitions.clone();
        let log_name = name.clone();
        let breaker = Breaker::new(
            cfg.breaker.clone(),
            Box::new(move |s| {
                transitions.with_label_values(&[s.as_str()]).inc();
                tracing::warn!(pool = %log_name, state = s.as_str(), "pool circuit breaker changed state");
            }),
        );
        let rejections = [
            Rejected::PoolBusy,
            Rejected::QueueFull,
            Rejected::ShuttingDown,
        ]
        .map(|r| metrics.rejections.with_label_values(&[r.as_str()]));
        let shared = Arc::new(Shared {
            name,
            pid: std::process::id() as i32,
            queue: Queue::new(cfg.queue_capacity),
            breaker,
            metrics,
            rejections,
            counters: Counters::default(),
            live: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            alive: AtomicUsize::new(0),
            exited: Notify::new(),
            next_worker: AtomicUsize::new(0),
            threads: Mutex::new(Vec::new()),
            housekeeper: Mutex::new(None),
            pool_cancel: Arc::new(Signal::default()),
            closing: AtomicBool::new(false),
            stop: (Mutex::new(false), Condvar::new()),
            cfg,
        });
        let source: Arc<dyn GaugeSource> = shared.clone();
        shared.metrics.set_source(Arc::downgrade(&source));
        // From here on, dropping `pool` on an error path closes and unregisters everything.
        let pool = Pool {
            owner: Arc::new(Owner {
                shared: shared.clone(),
            }),
        };
        housekeeper::spawn(&shared)?;
        shared.spawn_workers(shared.cfg.min_workers);
        if shared.live.load(Ordering::Acquire) < shared.cfg.min_workers {
            return Err(PoolError::Spawn(std::io::Error::other(
                "could not start min_workers threads",
            )));
        }
        Ok(pool)
    }

    /// Queues `task`, waiting for queue room until `deadline` (measured from now). The deadline
    /// also bounds the task: still queued at the deadline → `TaskError::QueueTimeout`; still
    /// running → dropped at its next await with `TaskError::Timeout`.
    pub async fn submit<T, F, Fut>(
        &self,
        kind: &'static str,
        deadline: Duration,
        task: F,
    ) -> Result<TaskHandle<T>, Rejected>
    where
        F: FnOnce(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<T>> + 'static,
        T: Send + 'static,
    {
        let a = self.admit(kind)?;
        let until = deadline_from(a.now, deadline);
        if let Err(why) = self.owner.shared.queue.reserve_until(until).await {
            return Err(a.refuse(why));
        }
        self.enqueue(a, until, task)
    }

    /// Like [`Pool::submit`] but never waits: a full queue is `Rejected::QueueFull` at once.
    pub fn try_submit<T, F, Fut>(
        &self,
        kind: &'static str,
        deadline: Duration,
        task: F,
    ) -> Result<TaskHandle<T>, Rejected>
    where
        F: FnOnce(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<T>> + 'static,
        T: Send + 'static,
    {
        let a = self.admit(kind)?;
        if let Err(why) = self.owner.shared.queue.try_reserve() {
            return Err(a.refuse(why));
        }
        let until = deadline_from(a.now, deadline);
        self.enqueue(a, until, task)
    }

    /// Counts the attempt and asks the breaker.
    fn admit(&self, kind: &'static str) -> Result<Admitted<'_>, Rejected> {
        let s = &*self.owner.shared;
        let km = s.metrics.kind(kind);
        km.submitted.inc();
        s.counters.submitted.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        if s.closing.load(Ordering::Acquire) {
            return Err(s.reject(&km, Rejected::ShuttingDown));
        }
        match s.breaker.admit(now) {
            Ok(admission) => Ok(Admitted {
                shared: s,
                kind,
                km,
                now,
                admission,
                settled: false,
            }),
            Err(why) => Err(s.reject(&km, why)),
        }
    }

    fn enqueue<T, F, Fut>(
        &self,
        mut a: Admitted<'_>,
        deadline: Instant,
        task: F,
    ) -> Result<TaskHandle<T>, Rejected>
    where
        F: FnOnce(TaskContext) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<T>> + 'static,
        T: Send + 'static,
    {
        let s = &self.owner.shared;
        let js = Arc::new(JobShared::new(
            a.kind,
            a.now,
            deadline,
            a.km.clone(),
            a.admission,
            s.pool_cancel.clone(),
        ));
        let (tx, rx) = oneshot::channel();
        // The submitter's span becomes the parent of the task's span on the worker.
        let job = Job {
            shared: js.clone(),
            start: job::erase(task, tx),
            parent: tracing::Span::current(),
        };
        match s.queue.push(job) {
            Ok(queued) => {
                a.settled = true;
                s.maybe_scale_up(queued);
                Ok(TaskHandle::new(rx, js))
            }
            Err(_job) => {
                s.queue.unreserve();
                Err(a.refuse(Rejected::ShuttingDown))
            }
        }
    }

    /// A consistent-enough snapshot (each field is read atomically, not all together).
    pub fn stats(&self) -> PoolStats {
        let s = &self.owner.shared;
        let g = s.gauges();
        let c = &s.counters;
        PoolStats {
            workers: s.live.load(Ordering::Relaxed),
            active: g.busy,
            idle: g.idle,
            queued: g.queued,
            queue_capacity: g.capacity,
            watermark: g.watermark,
            breaker: g.breaker,
            submitted: c.submitted.load(Ordering::Relaxed),
            ok: c.get(Outcome::Ok),
            failed: c.get(Outcome::Error),
            timed_out: c.get(Outcome::Timeout),
            queue_timed_out: c.get(Outcome::QueueTimeout),
            cancelled: c.get(Outcome::Cancelled),
            panicked: c.get(Outcome::Panicked),
            rejected: c.get(Outcome::Rejected),
        }
    }

    /// The pool's name (the `pool` metric label).
    pub fn name(&self) -> &str {
        &self.owner.shared.name
    }

    /// Stops intake (new submissions get `Rejected::ShuttingDown`), lets workers drain the queue
    /// for up to `grace`, then cancels what is still queued or running, and joins every thread.
    /// A task stuck in synchronous code that never awaits cannot be interrupted; shutdown waits
    /// for it. Applies to all clones of this pool.
    pub async fn shutdown(self, grace: Duration) {
        let s = self.owner.shared.clone();
        s.close();
        if !s
            .wait_workers(Some(deadline_from(Instant::now(), grace)))
            .await
        {
            tracing::warn!(pool = %s.name, "pool shutdown grace period over; cancelling remaining tasks");
            s.cancel_all();
            s.wait_workers(None).await;
        }
        // Jobs left with no worker to drain them (e.g. every worker had retired).
        s.cancel_queued();
        s.join_threads();
    }
}

/// A submission the breaker let through, not yet holding a queue slot. If it is dropped
/// unsettled (the caller dropped `submit` while it waited for room), it still ends in an outcome
/// and gives back its probe slot, so the counters add up and a half-open breaker cannot wedge.
struct Admitted<'a> {
    shared: &'a Shared,
    kind: &'static str,
    km: Arc<KindMetrics>,
    now: Instant,
    admission: Admission,
    settled: bool,
}

impl Admitted<'_> {
    fn refuse(mut self, why: Rejected) -> Rejected {
        self.settled = true;
        self.abandon_probe();
        self.shared.reject(&self.km, why)
    }

    fn abandon_probe(&self) {
        if let Admission::Probe(epoch) = self.admission {
            self.shared.breaker.probe_abandoned(epoch);
        }
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.abandon_probe();
            self.shared.record(&self.km, Outcome::Cancelled);
        }
    }
}

fn deadline_from(now: Instant, d: Duration) -> Instant {
    // An absurdly long deadline means "no deadline" rather than an overflow panic.
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}
