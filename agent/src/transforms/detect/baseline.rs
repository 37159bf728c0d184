//! Adaptive baselines: an exponentially weighted mean and variance per series.
//!
//! Each evaluated bucket updates the baseline with weight `alpha`, derived from a half-life in
//! buckets, so the baseline follows daily load changes (a half-life of minutes) but not a
//! burst (seconds). While a series is anomalous its mean still adapts, ten times slower, and its
//! variance not at all: a surge that lasts becomes the new normal eventually (minutes, not
//! seconds), and one that ends has barely moved the baseline.
use crate::shared::incident::Verdict;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ewma {
    mean: f64,
    var: f64,
    n: u64,
    alpha: f64,
}

/// How far above its baseline a value must be to count as anomalous.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rule {
    /// Standard deviations above the mean.
    pub sigma: f64,
    /// And at least this multiple of the mean ("far above", not just noisy).
    pub ratio: f64,
    /// And at least this absolute value (below it nobody would act, whatever the baseline).
    pub floor: f64,
    /// Buckets of history before the baseline is trusted (0: a zero baseline is a fine prior,
    /// as for resets: normally there are none).
    pub warmup: u64,
}

/// Slower adaptation while anomalous (see the module docs).
const ANOMALY_SLOWDOWN: f64 = 10.0;

impl Ewma {
    /// `half_life` in updates: after that many, an old value weighs half as much.
    pub fn new(half_life: f64) -> Self {
        Self {
            mean: 0.0,
            var: 0.0,
            n: 0,
            alpha: 1.0 - 0.5f64.powf(1.0 / half_life.max(1.0)),
        }
    }

    pub fn mean(&self) -> f64 {
        self.mean
    }

    pub fn stddev(&self) -> f64 {
        self.var.max(0.0).sqrt()
    }

    pub fn samples(&self) -> u64 {
        self.n
    }

    /// Compares `x` with the baseline as it stands (before `x` is learnt).
    pub fn judge(&self, x: f64, rule: &Rule) -> Verdict {
        let threshold = (self.mean + rule.sigma * self.stddev())
            .max(rule.ratio * self.mean)
            .max(rule.floor);
        Verdict {
            observed: x,
            mean: self.mean,
            stddev: self.stddev(),
            threshold,
            samples: self.n,
            anomalous: self.n >= rule.warmup && x >= threshold,
        }
    }

    pub fn learn(&mut self, x: f64, anomalous: bool) {
        if self.n == 0 {
            self.mean = x;
            self.var = 0.0;
        } else if anomalous {
            // Only the mean moves, slowly: learning an outlier's deviation into the variance
            // would widen the threshold until the outlier itself looked normal.
            self.mean += self.alpha / ANOMALY_SLOWDOWN * (x - self.mean);
        } else {
            // West's incremental form of the exponentially weighted variance.
            let a = self.alpha;
            let d = x - self.mean;
            self.mean += a * d;
            self.var = (1.0 - a) * (self.var + a * d * d);
        }
        self.n += 1;
    }

    /// Judges `x`, then learns it.
    pub fn observe(&mut self, x: f64, rule: &Rule) -> Verdict {
        let v = self.judge(x, rule);
        self.learn(x, v.anomalous);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: Rule = Rule {
        sigma: 4.0,
        ratio: 3.0,
        floor: 5.0,
        warmup: 10,
    };

    #[test]
    fn steady_noise_is_normal_and_a_jump_is_not() {
        let mut b = Ewma::new(30.0);
        for i in 0..200 {
            // 100 ± 10, deterministic.
            let x = 100.0 + if i % 2 == 0 { 10.0 } else { -10.0 };
            assert!(!b.observe(x, &RULE).anomalous || i < 10, "bucket {i}");
        }
        assert!((b.mean() - 100.0).abs() < 2.0, "{}", b.mean());
        assert!((b.stddev() - 10.0).abs() < 2.0, "{}", b.stddev());
        let v = b.judge(400.0, &RULE);
        assert!(v.anomalous, "{v:?}");
        assert_eq!(
            v.threshold,
            3.0 * b.mean(),
            "here the ratio binds, not sigma"
        );
        assert!(
            !b.judge(250.0, &RULE).anomalous,
            "4σ above but not 3× the mean"
        );
    }

    #[test]
    fn no_verdict_during_warmup() {
        let mut b = Ewma::new(30.0);
        for _ in 0..9 {
            b.observe(1.0, &RULE);
        }
        assert!(!b.judge(1000.0, &RULE).anomalous);
        b.observe(1.0, &RULE);
        assert!(b.judge(1000.0, &RULE).anomalous);
    }

    #[test]
    fn the_floor_guards_a_zero_baseline() {
        let rule = Rule { warmup: 0, ..RULE };
        let b = Ewma::new(30.0);
        assert!(!b.judge(4.0, &rule).anomalous);
        assert!(
            b.judge(5.0, &rule).anomalous,
            "no history, zero prior: the floor decides"
        );
    }

    #[test]
    fn adapts_to_a_new_level_slowly_while_anomalous() {
        let mut b = Ewma::new(10.0);
        for _ in 0..50 {
            b.observe(10.0, &RULE);
        }
        // A sustained 5× level: anomalous at first, then learnt.
        let mut first_normal = None;
        for i in 0..2000 {
            if !b.observe(50.0, &RULE).anomalous {
                first_normal = Some(i);
                break;
            }
        }
        let i = first_normal.expect("the new level becomes normal");
        assert!(i > 10, "not within one half-life ({i})");
        // With normal-speed learning it would take ~half-lives; slowed, about ten times that.
        assert!(i < 500, "{i}");
    }
}
