//! Circuit breaker state machine (closed → open → half-open → closed).
//!
//! Pure logic: time comes in as arguments so it can be tested without sleeping. The pool feeds it
//! one sample per `sample_interval` from the housekeeping thread and asks it for admission on every
//! submission. The closed-state admission check is a single atomic load.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use crate::config::BreakerConfig;
use crate::error::Rejected;

/// Breaker state; the gauge `pool_breaker_state` reports [`BreakerState::as_gauge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        self as i64
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    fn from_u8(v: u8) -> BreakerState {
        match v {
            1 => BreakerState::Open,
            2 => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

/// How a submission was admitted. Probes report back so the half-open state can decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Normal,
    /// Carries the half-open epoch, so a late probe from an earlier half-open period is ignored.
    Probe(u64),
}

type OnTransition = Box<dyn Fn(BreakerState) + Send + Sync>;

pub(crate) struct Breaker {
    cfg: BreakerConfig,
    state: AtomicU8,
    inner: Mutex<Inner>,
    on_transition: OnTransition,
}

#[derive(Default)]
struct Inner {
    /// Consecutive samples with the watermark at or above the threshold.
    streak: u32,
    /// (queue timeouts, finished tasks) of the last `consecutive_samples` samples.
    window: VecDeque<(u64, u64)>,
    opened_at: Option<Instant>,
    epoch: u64,
    probes_admitted: u32,
    probes_healthy: u32,
}

impl Breaker {
    pub(crate) fn new(cfg: BreakerConfig, on_transition: OnTransition) -> Breaker {
        Breaker {
            cfg,
            state: AtomicU8::new(BreakerState::Closed as u8),
            inner: Mutex::new(Inner::default()),
            on_transition,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        BreakerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Decide whether a submission may proceed.
    pub(crate) fn admit(&self, now: Instant) -> Result<Admission, Rejected> {
        if self.state() == BreakerState::Closed {
            return Ok(Admission::Normal);
        }
        let mut inner = self.lock();
        if self.state() == BreakerState::Open {
            // Turn half-open lazily too, so admission does not depend on the sampler's phase.
            if !self.cool_down_over(&inner, now) {
                return Err(Rejected::PoolBusy);
            }
            self.half_open(&mut inner);
        }
        match self.state() {
            BreakerState::Closed => Ok(Admission::Normal),
            BreakerState::Open => Err(Rejected::PoolBusy),
            BreakerState::HalfOpen => {
                if inner.probes_admitted < self.cfg.half_open_probes {
                    inner.probes_admitted += 1;
                    Ok(Admission::Probe(inner.epoch))
                } else {
                    Err(Rejected::PoolBusy)
                }
            }
        }
    }

    /// A probe was admitted but then not queued (e.g. the queue was full): free its slot.
    pub(crate) fn probe_abandoned(&self, epoch: u64) {
        let mut inner = self.lock();
        if self.state() == BreakerState::HalfOpen && inner.epoch == epoch {
            inner.probes_admitted = inner.probes_admitted.saturating_sub(1);
        }
    }

    /// A probe finished. `healthy` is false for timeouts and queue timeouts: load symptoms.
    pub(crate) fn probe_finished(&self, epoch: u64, healthy: bool, now: Instant) {
        let mut inner = self.lock();
        if self.state() != BreakerState::HalfOpen || inner.epoch != epoch {
            return;
        }
        if !healthy {
            self.open(&mut inner, now);
            return;
        }
        inner.probes_healthy += 1;
        if inner.probes_healthy >= self.cfg.half_open_probes {
            *inner = Inner {
                epoch: inner.epoch,
                ..Inner::default()
            };
            self.set(BreakerState::Closed);
        }
    }

    /// One periodic sample: the watermark now, and queue timeouts / finished tasks since the last one.
    pub(crate) fn on_sample(
        &self,
        now: Instant,
        watermark: f64,
        queue_timeouts: u64,
        finished: u64,
    ) {
        let mut inner = self.lock();
        inner.window.push_back((queue_timeouts, finished));
        while inner.window.len() > self.cfg.consecutive_samples as usize {
            inner.window.pop_front();
        }
        match self.state() {
            BreakerState::Closed => {
                if !self.cfg.enabled {
                    return;
                }
                inner.streak = if watermark >= self.cfg.open_watermark {
                    inner.streak + 1
                } else {
                    0
                };
                if inner.streak >= self.cfg.consecutive_samples {
                    let (qt, fin) = inner
                        .window
                        .iter()
                        .fold((0, 0), |a, s| (a.0 + s.0, a.1 + s.1));
                    let rate = if fin == 0 {
                        0.0
                    } else {
                        qt as f64 / fin as f64
                    };
                    if rate > self.cfg.queue_timeout_rate {
                        self.open(&mut inner, now);
                    }
                }
            }
            BreakerState::Open => {
                if self.cool_down_over(&inner, now) {
                    self.half_open(&mut inner);
                }
            }
            // Half-open is decided by probe outcomes, not samples.
            BreakerState::HalfOpen => {}
        }
    }

    fn cool_down_over(&self, inner: &Inner, now: Instant) -> bool {
        inner
            .opened_at
            .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.cool_down)
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        *inner = Inner {
            epoch: inner.epoch,
            opened_at: Some(now),
            ..Inner::default()
        };
        self.set(BreakerState::Open);
    }

    fn half_open(&self, inner: &mut Inner) {
        inner.epoch += 1;
        inner.probes_admitted = 0;
        inner.probes_healthy = 0;
        self.set(BreakerState::HalfOpen);
    }

    fn set(&self, s: BreakerState) {
        self.state.store(s as u8, Ordering::Release);
        (self.on_transition)(s);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The breaker's invariants hold between statements, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn breaker() -> (Breaker, Arc<Mutex<Vec<BreakerState>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let cfg = BreakerConfig {
            cool_down: Duration::from_secs(60),
            half_open_probes: 2,
            ..Default::default()
        };
        (
            Breaker::new(cfg, Box::new(move |st| s.lock().unwrap().push(st))),
            seen,
        )
    }

    #[test]
    fn opens_only_with_three_hot_samples_and_queue_timeouts() {
        let (b, _) = breaker();
        let t = Instant::now();
        // Hot but no queue timeouts: stays closed however long.
        for i in 0..5 {
            b.on_sample(t + Duration::from_secs(i), 0.95, 0, 100);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        // Queue timeouts but a cool watermark in between resets the streak.
        b.on_sample(t, 0.95, 10, 100);
        b.on_sample(t, 0.50, 10, 100);
        b.on_sample(t, 0.95, 10, 100);
        b.on_sample(t, 0.95, 10, 100);
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_sample(t, 0.95, 10, 100);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(t), Err(Rejected::PoolBusy));
    }

    #[test]
    fn rate_at_exactly_threshold_does_not_open() {
        let (b, _) = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.on_sample(t, 0.90, 5, 100);
        }
        assert_eq!(b.state(), BreakerState::Closed, "5% is not > 5%");
        b.on_sample(t, 0.90, 7, 100);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn half_open_probes_close_or_reopen() {
        let (b, seen) = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.on_sample(t, 1.0, 50, 100);
        }
        assert_eq!(
            b.admit(t + Duration::from_secs(59)),
            Err(Rejected::PoolBusy)
        );
        let later = t + Duration::from_secs(60);
        let Ok(Admission::Probe(e1)) = b.admit(later) else {
            panic!("expected a probe")
        };
        let Ok(Admission::Probe(_)) = b.admit(later) else {
            panic!("expected a probe")
        };
        assert_eq!(
            b.admit(later),
            Err(Rejected::PoolBusy),
            "only two probe slots"
        );
        // A probe that timed out reopens the breaker.
        b.probe_finished(e1, false, later);
        assert_eq!(b.state(), BreakerState::Open);
        // Next half-open period: a late report from the old epoch is ignored.
        let again = later + Duration::from_secs(60);
        b.on_sample(again, 0.1, 0, 0);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let Ok(Admission::Probe(e2)) = b.admit(again) else {
            panic!("expected a probe")
        };
        b.probe_finished(e1, false, again);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.probe_finished(e2, true, again);
        b.probe_finished(e2, true, again);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(again), Ok(Admission::Normal));
        use BreakerState::*;
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Open, HalfOpen, Open, HalfOpen, Closed]
        );
    }

    #[test]
    fn disabled_never_opens() {
        let cfg = BreakerConfig {
            enabled: false,
            ..Default::default()
        };
        let b = Breaker::new(cfg, Box::new(|_| {}));
        for _ in 0..10 {
            b.on_sample(Instant::now(), 1.0, 100, 100);
        }
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
