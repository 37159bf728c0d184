//! Prometheus metrics of one pool. Every metric carries a constant `pool` label, so several pools
//! can share one registry. State gauges are filled at scrape time from the pool's atomics (no cost
//! on the task path); counters and histograms are resolved once per task kind and cached.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use crate::breaker::BreakerState;

/// Final outcome of a submission; the `outcome` label of `pool_tasks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Error,
    Timeout,
    QueueTimeout,
    Cancelled,
    Panicked,
    Rejected,
}

impl Outcome {
    const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::Error,
        Outcome::Timeout,
        Outcome::QueueTimeout,
        Outcome::Cancelled,
        Outcome::Panicked,
        Outcome::Rejected,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::QueueTimeout => "queue_timeout",
            Outcome::Cancelled => "cancelled",
            Outcome::Panicked => "panicked",
            Outcome::Rejected => "rejected",
        }
    }
}

/// Wait and run times of game tasks span ~50 µs to seconds.
const TIME_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Metric handles of one task kind, resolved once so the task path does no label hashing.
pub(crate) struct KindMetrics {
    pub(crate) submitted: IntCounter,
    pub(crate) wait: Histogram,
    pub(crate) run: Histogram,
    outcomes: [IntCounter; 7],
}

impl KindMetrics {
    pub(crate) fn outcome(&self, o: Outcome) -> &IntCounter {
        &self.outcomes[o as usize]
    }
}

/// Instantaneous values the scrape-time collector reads from the pool.
pub(crate) struct Gauges {
    pub(crate) busy: usize,
    pub(crate) idle: usize,
    pub(crate) queued: usize,
    pub(crate) capacity: usize,
    pub(crate) watermark: f64,
    pub(crate) breaker: BreakerState,
}

pub(crate) trait GaugeSource: Send + Sync {
    fn gauges(&self) -> Gauges;
}

pub(crate) struct Metrics {
    submitted: IntCounterVec,
    tasks: IntCounterVec,
    wait: HistogramVec,
    run: HistogramVec,
    pub(crate) rejections: IntCounterVec,
    pub(crate) breaker_transitions: IntCounterVec,
    pub(crate) worker_spawns: IntCounter,
    pub(crate) worker_retires: IntCounter,
    state: StateCollector,
    kinds: RwLock<HashMap<&'static str, Arc<KindMetrics>>>,
    registry: Registry,
    /// How many of `collectors()` are registered (atomic so the last `Pool` drop can unregister via `&self`).
    registered: AtomicUsize,
}

impl Metrics {
    pub(crate) fn new(pool: &str, registry: &Registry) -> prometheus::Result<Metrics> {
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("pool", pool);
        let hopts = |name: &str, help: &str| {
            HistogramOpts::new(name, help)
                .const_label("pool", pool)
                .buckets(TIME_BUCKETS.to_vec())
        };
        let state = StateCollector {
            workers: IntGaugeVec::new(
                opts("pool_workers", "Worker threads by state (busy|idle)."),
                &["state"],
            )?,
            queue_depth: IntGauge::with_opts(opts(
                "pool_queue_depth",
                "Tasks waiting in the queue.",
            ))?,
            queue_capacity: IntGauge::with_opts(opts(
                "pool_queue_capacity",
                "Bound of the task queue.",
            ))?,
            watermark: Gauge::with_opts(opts(
                "pool_watermark_ratio",
                "(busy workers + queued tasks) / (max_workers + queue_capacity); 1 means saturated.",
            ))?,
            breaker: IntGauge::with_opts(opts(
                "pool_breaker_state",
                "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
            ))?,
            source: Arc::new(RwLock::new(None)),
        };
        let m = Metrics {
            submitted: IntCounterVec::new(
                opts("pool_submitted_total", "Submission attempts by kind."),
                &["kind"],
            )?,
            tasks: IntCounterVec::new(
                opts(
                    "pool_tasks_total",
                    "Finished submissions by kind and outcome.",
                ),
                &["kind", "outcome"],
            )?,
            wait: HistogramVec::new(
                hopts(
                    "pool_task_wait_seconds",
                    "Time from submission to start on a worker.",
                ),
                &["kind"],
            )?,
            run: HistogramVec::new(
                hopts("pool_task_run_seconds", "Time a task ran on its worker."),
                &["kind"],
            )?,
            rejections: IntCounterVec::new(
                opts("pool_rejections_total", "Refused submissions by reason."),
                &["reason"],
            )?,
            breaker_transitions: IntCounterVec::new(
                opts(
                    "pool_breaker_transitions_total",
                    "Circuit breaker transitions by new state.",
                ),
                &["to"],
            )?,
            worker_spawns: IntCounter::with_opts(opts(
                "pool_worker_spawns_total",
                "Worker threads started.",
            ))?,
            worker_retires: IntCounter::with_opts(opts(
                "pool_worker_retires_total",
                "Worker threads retired after idling.",
            ))?,
            state,
            kinds: RwLock::new(HashMap::new()),
            registry: registry.clone(),
            registered: AtomicUsize::new(0),
        };
        m.register_all()
    }

    /// Every collector of this pool, in a fixed order (unregistering matches by descriptor, so clones do).
    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.submitted.clone()),
            Box::new(self.tasks.clone()),
            Box::new(self.wait.clone()),
            Box::new(self.run.clone()),
            Box::new(self.rejections.clone()),
            Box::new(self.breaker_transitions.clone()),
            Box::new(self.worker_spawns.clone()),
            Box::new(self.worker_retires.clone()),
            Box::new(self.state.clone()),
        ]
    }

    fn register_all(self) -> prometheus::Result<Metrics> {
        for c in self.collectors() {
            if let Err(e) = self.registry.register(c) {
                // Only undo our own registrations: a clash may be with another pool's collectors.
                self.unregister();
                return Err(e);
            }
            self.registered.fetch_add(1, Ordering::AcqRel);
        }
        Ok(self)
    }

    /// Connects the scrape-time gauges to the pool (a weak link: the registry must not keep the pool alive).
    pub(crate) fn set_source(&self, source: Weak<dyn GaugeSource>) {
        *self.state.source.write().unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    /// Handles for one kind; the first call per kind takes the write lock, later ones a read lock.
    pub(crate) fn kind(&self, kind: &'static str) -> Arc<KindMetrics> {
        if let Some(k) = self
            .kinds
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(kind)
        {
            return k.clone();
        }
        let mut kinds = self.kinds.write().unwrap_or_else(|p| p.into_inner());
        kinds
            .entry(kind)
            .or_insert_with(|| {
                Arc::new(KindMetrics {
                    submitted: self.submitted.with_label_values(&[kind]),
                    wait: self.wait.with_label_values(&[kind]),
                    run: self.run.with_label_values(&[kind]),
                    outcomes: Outcome::ALL
                        .map(|o| self.tasks.with_label_values(&[kind, o.as_str()])),
                })
            })
            .clone()
    }

    /// Removes this pool's collectors, so a pool of the same name can be created again later.
    pub(crate) fn unregister(&self) {
        let n = self.registered.swap(0, Ordering::AcqRel);
        for c in self.collectors().into_iter().take(n) {
            let _ = self.registry.unregister(c);
        }
    }
}

/// Gauges computed when scraped.
#[derive(Clone)]
struct StateCollector {
    workers: IntGaugeVec,
    queue_depth: IntGauge,
    queue_capacity: IntGauge,
    watermark: Gauge,
    breaker: IntGauge,
    source: Arc<RwLock<Option<Weak<dyn GaugeSource>>>>,
}

impl Collector for StateCollector {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.workers.desc();
        d.extend(self.queue_depth.desc());
        d.extend(self.queue_capacity.desc());
        d.extend(self.watermark.desc());
        d.extend(self.breaker.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let source = self
            .source
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(Weak::upgrade);
        if let Some(src) = source {
            let g = src.gauges();
            self.workers.with_label_values(&["busy"]).set(g.busy as i64);
            self.workers.with_label_values(&["idle"]).set(g.idle as i64);
            self.queue_depth.set(g.queued as i64);
            self.queue_capacity.set(g.capacity as i64);
            self.watermark.set(g.watermark);
            self.breaker.set(g.breaker.as_gauge());
        }
        let mut out = self.workers.collect();
        out.extend(self.queue_depth.collect());
        out.extend(self.queue_capacity.collect());
        out.extend(self.watermark.collect());
        out.extend(self.breaker.collect());
        out
    }
}
