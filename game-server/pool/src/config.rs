//! Pool and breaker configuration, with defaults taken from the seed notes.

use std::time::Duration;

use crate::error::PoolError;

/// Configuration of one [`crate::Pool`].
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Value of the `pool` label on every metric and of `pool.name` on every span.
    pub name: String,
    /// Workers kept alive even when idle (pre-spawned by `Pool::new`).
    pub min_workers: usize,
    /// Hard ceiling on worker threads.
    pub max_workers: usize,
    /// Bounded queue size; submissions beyond it wait (`submit`) or are rejected (`try_submit`).
    pub queue_capacity: usize,
    /// An idle worker above `min_workers` retires after this long without work.
    pub idle_timeout: Duration,
    /// How long a worker that ran out of work polls the queue before sleeping. Saves a futex
    /// wake and a context switch per task during bursts; zero disables it.
    pub idle_spin: Duration,
    /// Scale up when `(busy + queued) / live_workers` reaches this ratio (the "pre-warm" watermark).
    pub prewarm_at: f64,
    /// How many workers one pre-warm step adds (never beyond `max_workers`).
    pub prewarm_step: usize,
    /// Period of the housekeeping thread: sweeps queued tasks whose deadline passed, checks scaling.
    /// It bounds how late a queued task's `QueueTimeout` can be reported.
    pub housekeeping_interval: Duration,
    pub breaker: BreakerConfig,
}

impl Default for PoolConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        PoolConfig {
            name: "default".to_string(),
            min_workers: 2,
            max_workers: (cores * 4).max(2),
            queue_capacity: 1024,
            idle_timeout: Duration::from_secs(30),
            idle_spin: Duration::from_micros(20),
            prewarm_at: 0.85,
            prewarm_step: 2,
            housekeeping_interval: Duration::from_millis(20),
            breaker: BreakerConfig::default(),
        }
    }
}

/// Circuit breaker thresholds. The breaker opens when the pool watermark is at or above
/// `open_watermark` for `consecutive_samples` samples in a row *and* the queue-timeout rate over
/// those samples is above `queue_timeout_rate`. While open, submissions get `Rejected::PoolBusy`.
/// After `cool_down` it turns half-open and admits `half_open_probes` tasks; if all of them finish
/// without a timeout or queue timeout it closes, otherwise it opens again.
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    /// `false` keeps the breaker closed forever (metrics still report it).
    pub enabled: bool,
    pub sample_interval: Duration,
    pub open_watermark: f64,
    pub consecutive_samples: u32,
    /// Fraction (0..1) of finished tasks that were queue timeouts over the sampled window.
    pub queue_timeout_rate: f64,
    pub cool_down: Duration,
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            sample_interval: Duration::from_secs(1),
            open_watermark: 0.90,
            consecutive_samples: 3,
            queue_timeout_rate: 0.05,
            cool_down: Duration::from_secs(60),
            half_open_probes: 5,
        }
    }
}

impl PoolConfig {
    pub(crate) fn validate(&self) -> Result<(), PoolError> {
        let bad = |why: &str| Err(PoolError::Config(why.to_string()));
        if self.name.is_empty() {
            return bad("name must not be empty");
        }
        if self.max_workers == 0 || self.min_workers > self.max_workers {
            return bad("need 1 <= max_workers and min_workers <= max_workers");
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity must be at least 1");
        }
        if !(self.prewarm_at > 0.0 && self.prewarm_at.is_finite()) || self.prewarm_step == 0 {
            return bad("prewarm_at must be > 0 and prewarm_step >= 1");
        }
        if self.housekeeping_interval.is_zero() {
            return bad("housekeeping_interval must be > 0");
        }
        let b = &self.breaker;
        if b.sample_interval.is_zero() || b.consecutive_samples == 0 || b.half_open_probes == 0 {
            return bad(
                "breaker: sample_interval, consecutive_samples and half_open_probes must be > 0",
            );
        }
        if !(0.0..=1.0).contains(&b.open_watermark) || !(0.0..=1.0).contains(&b.queue_timeout_rate)
        {
            return bad("breaker: open_watermark and queue_timeout_rate must be within 0..=1");
        }
        Ok(())
    }
}
