//! `task_surge`, per pool: arrivals anomalous, together with queue wait or the run-queue delay
//! the pool's tasks suffered. Names the kinds that grew most over their own baselines.
use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::{
    Bucket, Changes, Detector, IDLE_FORGET_NS, MAX_KINDS, MAX_POOLS, PoolAgg, PoolBase, Report,
    baseline::{Ewma, Rule},
};
use crate::shared::incident::{Class, Verdict};

impl Detector {
    /// Judges every pool in bucket `idx`; returns the processes (by pid, `None`: unknown) whose
    /// pools' arrivals were anomalous, for `cpu_contention` to leave alone.
    pub(super) fn judge_surges(
        &mut self,
        idx: u64,
        b: &Bucket,
        anomalous: &mut HashSet<(Class, String)>,
        ch: &mut Changes,
    ) -> HashSet<Option<u32>> {
        let c = self.cfg.clone();
        let (start, end) = self.bounds(idx);
        let keep_idle = IDLE_FORGET_NS / c.bucket_ns;
        let mut surging_pids: HashSet<Option<u32>> = HashSet::new();
        let (arrivals_rule, pressure_rule) = self.surge_rules();
        for (name, a) in &b.pools {
            if !self.pools.contains_key(name) && self.pools.len() < MAX_POOLS {
                let h = c.half_life_buckets;
                self.pools.insert(
                    name.clone(),
                    PoolBase {
                        arrivals: Ewma::new(h),
                        qwait: Ewma::new(h),
                        runq: Ewma::new(h),
                        kinds: HashMap::new(),
                        pid: a.pid,
                        seen: idx,
                    },
                );
            }
        }
        let empty = PoolAgg::default();
        let mut raised = Vec::new();
        for (name, base) in self.pools.iter_mut() {
            let a = b.pools.get(name).unwrap_or(&empty);
            if a.arrivals > 0 {
                base.seen = idx;
                base.pid = base.pid.or(a.pid);
            }
            let va = base.arrivals.judge(a.arrivals as f64, &arrivals_rule);
            let q = (a.qwait_n > 0).then(|| a.qwait_ms / a.qwait_n as f64);
            let r = (a.runq_n > 0).then(|| a.runq_ms / a.runq_n as f64);
            let vq = q.map(|q| base.qwait.judge(q, &pressure_rule));
            let vr = r.map(|r| base.runq.judge(r, &pressure_rule));
            let pressure = vq.is_some_and(|v| v.anomalous) || vr.is_some_and(|v| v.anomalous);
            let surge = va.anomalous && pressure;
            if va.anomalous {
                surging_pids.insert(base.pid);
            }
            let report = surge.then(|| surge_report(name, a, base, va, (q, vq), (r, vr)));
            for k in a.kinds.keys() {
                if !base.kinds.contains_key(k) && base.kinds.len() < MAX_KINDS {
                    base.kinds.insert(k.clone(), Ewma::new(c.half_life_buckets));
                }
            }
            for (k, kb) in base.kinds.iter_mut() {
                let n = a.kinds.get(k).copied().unwrap_or(0);
                kb.learn(n as f64, surge);
            }
            base.arrivals.learn(a.arrivals as f64, va.anomalous);
            if let (Some(q), Some(v)) = (q, vq) {
                base.qwait.learn(q, v.anomalous);
            }
            if let (Some(r), Some(v)) = (r, vr) {
                base.runq.learn(r, v.anomalous);
            }
            if let Some(report) = report {
                let key = (Class::TaskSurge, format!("pool:{name}"));
                anomalous.insert(key.clone());
                raised.push((key, report));
            }
        }
        for (key, r) in raised {
            Self::raise_report(&mut self.open, &mut self.next_id, key, start, end, r, ch);
        }
        self.pools
            .retain(|_, p| idx.saturating_sub(p.seen) < keep_idle);
        surging_pids
    }
}

impl Detector {
    fn surge_rules(&self) -> (Rule, Rule) {
        let c = &self.cfg;
        (
            Rule {
                sigma: c.sigma,
                ratio: c.surge_ratio,
                floor: c.surge_min_rate,
                warmup: c.warmup_buckets,
            },
            Rule {
                sigma: c.sigma,
                ratio: c.pressure_ratio,
                floor: c.pressure_min_ms,
                warmup: c.warmup_buckets,
            },
        )
    }

    /// Whether pool arrivals so far in bucket `idx` beat their baseline, for the pools of
    /// process `pid` (`None` pools: any process), for `cpu_contention`'s early verdicts.
    pub(super) fn arrivals_anomalous(&self, idx: u64, pid: u32) -> bool {
        let (rule, _) = self.surge_rules();
        let Some(b) = self.buckets.get(&idx) else {
            return false;
        };
        b.pools.iter().any(|(name, a)| {
            self.pools.get(name).is_some_and(|base| {
                base.pid.is_none_or(|p| p == pid)
                    && base.arrivals.judge(a.arrivals as f64, &rule).anomalous
            })
        })
    }

    /// Early verdicts on bucket `idx`, not yet settled: arrivals only grow as spans come in;
    /// the pressure (mean queue wait or run-queue delay of the tasks so far) must beat its
    /// baseline too. Opens only (the settled judgment extends and updates).
    pub(super) fn early_surges(&mut self, idx: u64, ch: &mut Changes) {
        let (start, end) = self.bounds(idx);
        let (arrivals_rule, pressure_rule) = self.surge_rules();
        let Some(b) = self.buckets.get(&idx) else {
            return;
        };
        let mut raised = Vec::new();
        for (name, a) in &b.pools {
            let key = (Class::TaskSurge, format!("pool:{name}"));
            let Some(base) = self.pools.get(name) else {
                continue;
            };
            if self.open.contains_key(&key) {
                continue;
            }
            let va = base.arrivals.judge(a.arrivals as f64, &arrivals_rule);
            if !va.anomalous {
                continue;
            }
            let q = (a.qwait_n > 0).then(|| a.qwait_ms / a.qwait_n as f64);
            let r = (a.runq_n > 0).then(|| a.runq_ms / a.runq_n as f64);
            let vq = q.map(|q| base.qwait.judge(q, &pressure_rule));
            let vr = r.map(|r| base.runq.judge(r, &pressure_rule));
            if vq.is_some_and(|v| v.anomalous) || vr.is_some_and(|v| v.anomalous) {
                raised.push((key, surge_report(name, a, base, va, (q, vq), (r, vr))));
            }
        }
        self.raise_early(raised, start, end, ch);
    }
}

/// Summary and evidence of a surging pool; the kinds that grew most over their own baselines.
fn surge_report(
    name: &str,
    a: &PoolAgg,
    base: &PoolBase,
    va: Verdict,
    (q, vq): (Option<f64>, Option<Verdict>),
    (r, vr): (Option<f64>, Option<Verdict>),
) -> Report {
    let mut growth: Vec<(String, u64, f64)> = a
        .kinds
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| {
            let mean = base.kinds.get(k).map_or(0.0, Ewma::mean);
            (k.clone(), *n, *n as f64 - mean)
        })
        .collect();
    growth.sort_by(|x, y| y.2.total_cmp(&x.2).then(x.0.cmp(&y.0)));
    let dominant: Vec<_> = growth
        .iter()
        .take(3)
        .map(|(k, n, g)| json!({"kind": k, "tasks": n, "share": *n as f64 / a.arrivals.max(1) as f64, "above_baseline": g}))
        .collect();
    let kinds: Vec<&str> = growth.iter().take(3).map(|g| g.0.as_str()).collect();
    let summary = format!(
        "pool {name}: {} tasks/s against a baseline of {:.1}/s (threshold {:.1}); dominant kinds: {}",
        a.arrivals,
        va.mean,
        va.threshold,
        kinds.join(", ")
    );
    let evidence = json!({
        "pool": name,
        "pid": base.pid,
        "arrivals": a.arrivals,
        "dominant_kinds": dominant,
        "queue_wait_ms_mean": q,
        "queue_wait": vq,
        "task_runq_delay_ms_mean": r,
        "task_runq_delay": vr,
    });
    Report {
        v: va,
        summary,
        evidence,
        attributes: Default::default(),
    }
}
