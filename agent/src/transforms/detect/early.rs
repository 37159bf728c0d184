//! Early verdicts: the buckets not yet settled, judged again on every tick with what they
//! hold so far.
//!
//! A bucket is judged for good only after its spans have had time to arrive (the settle time,
//! ≥ 1.5 s after its end). Kernel evidence is in within about a ring-buffer drain (≤ 100 ms),
//! and the detector's series are sums that only grow as a bucket fills (resets, retransmitted
//! segments, run-queue delay, task arrivals). So a partial bucket whose sum already beats the
//! threshold would be anomalous when settled too: the incident opens at once, and the settled
//! judgment then confirms and updates it (its evidence replaces the early one). The baselines
//! learn only from settled buckets.
//!
//! Per class (each in its module): `connection_fault` on resets and retransmits; `task_surge`
//! on arrivals and the mean pressure of the tasks so far (a mean, not a sum: see `surge`);
//! `cpu_contention` below, which also needs the consecutive buckets its settled rule needs and
//! no surge of the process's own pools in them.
use serde_json::json;

use super::{Changes, Detector, Report, baseline::Rule};
use crate::shared::incident::Class;

impl Detector {
    /// Early verdicts for every unsettled bucket that has begun by `now_ns`.
    pub(super) fn judge_early(&mut self, now_ns: u64, ch: &mut Changes) {
        let idxs: Vec<u64> = self
            .buckets
            .keys()
            .copied()
            .take_while(|&i| i * self.cfg.bucket_ns <= now_ns)
            .collect();
        for idx in idxs {
            self.early_faults(idx, ch);
            self.early_surges(idx, ch);
            self.early_contention(idx, now_ns, ch);
        }
    }

    /// Opens (or extends) each incident found on the unsettled bucket `start..end` and marks
    /// it early: what every class's early verdict ends with.
    pub(super) fn raise_early(
        &mut self,
        raised: Vec<((Class, String), Report)>,
        start: u64,
        end: u64,
        ch: &mut Changes,
    ) {
        for (key, r) in raised {
            Self::raise_report(
                &mut self.open,
                &mut self.next_id,
                key.clone(),
                start,
                end,
                r,
                ch,
            );
            self.mark_early(&key, start, ch);
        }
    }

    /// Marks the incident just opened for `key` as opened early on the bucket starting at
    /// `start`: its settled judgment confirms that bucket, and replaces the early evidence.
    pub(super) fn mark_early(&mut self, key: &(Class, String), start: u64, ch: &mut Changes) {
        if let Some(o) = self.open.get_mut(key) {
            o.early_bucket = Some(start);
            o.peak_score = 0.0;
            o.inc.raised_by = "early";
            if let Some(i) = ch.opened.iter_mut().rev().find(|i| i.id == o.inc.id) {
                i.raised_by = "early";
            }
        }
    }

    /// `cpu_contention` for bucket `idx` so far: run-queue delay anomalous in it and in the
    /// buckets before it, `contention_min_buckets` in a row (settled ones count by their
    /// streak), while no pool of the process had anomalous arrivals in them. Spans arrive
    /// late, so the buckets before `idx` must be older than the observed span lateness (their
    /// task arrivals are in); the current one is checked on what has arrived.
    fn early_contention(&mut self, idx: u64, now_ns: u64, ch: &mut Changes) {
        let c = self.cfg.clone();
        let rule = Rule {
            sigma: c.sigma,
            ratio: c.contention_ratio,
            floor: c.contention_min_ms,
            warmup: c.warmup_buckets,
        };
        let need = c.contention_min_buckets.max(1);
        let (start, end) = self.bounds(idx);
        let Some(b) = self.buckets.get(&idx) else {
            return;
        };
        let prev_end = start;
        if need > 1 && now_ns < prev_end + self.lateness_hw_ns as u64 {
            return;
        }
        let surging_pools_open = |pid: u32| {
            self.open.keys().any(|(class, subject)| {
                *class == Class::TaskSurge
                    && subject.strip_prefix("pool:").is_some_and(|p| {
                        self.pools
                            .get(p)
                            .is_none_or(|base| base.pid.is_none_or(|x| x == pid))
                    })
            })
        };
        let mut raised = Vec::new();
        for (pid, p) in &b.procs {
            let key = (Class::CpuContention, format!("pid:{pid}"));
            if self.open.contains_key(&key) || surging_pools_open(*pid) {
                continue;
            }
            let Some(base) = self.procs.get(pid) else {
                continue;
            };
            let ms = p.delay_ns as f64 / 1e6;
            let v = base.a.judge(ms, &rule);
            if !v.anomalous || self.arrivals_anomalous(idx, *pid) {
                continue;
            }
            // Count the anomalous buckets in a row that end with this one.
            let mut streak = 1;
            let mut j = idx;
            while streak < need && j > 0 {
                j -= 1;
                if j < self.next_eval {
                    streak += base.streak;
                    break;
                }
                let prev = self
                    .buckets
                    .get(&j)
                    .and_then(|b| b.procs.get(pid))
                    .map_or(0.0, |p| p.delay_ns as f64 / 1e6);
                if !base.a.judge(prev, &rule).anomalous || self.arrivals_anomalous(j, *pid) {
                    break;
                }
                streak += 1;
            }
            if streak < need {
                continue;
            }
            let summary = format!(
                "pid {pid}: {ms:.1} ms of run-queue delay in 1 s so far against a baseline of {:.1} ms (threshold {:.1}) while task arrivals are normal",
                v.mean, v.threshold
            );
            let evidence = json!({
                "pid": pid,
                "runq_delay_ms": ms,
                "waits": p.waits,
                "max_wait_ms": p.max_ns as f64 / 1e6,
                "task_arrivals": "normal",
                "verdict": "early",
            });
            let r = Report {
                v,
                summary,
                evidence,
                attributes: Default::default(),
            };
            raised.push((key, r));
        }
        self.raise_early(raised, start, end, ch);
    }
}
