//! `cpu_contention`, per process: run-queue delay anomalous for consecutive buckets while no
//! pool of that process is surging (a noisy neighbour or CPU limits, not our own load).
use std::collections::HashSet;

use serde_json::json;

use super::{
    Bucket, Changes, Detector, IDLE_FORGET_NS, MAX_PIDS, ProcAgg, SeriesBase, baseline::Rule,
};
use crate::shared::incident::Class;

impl Detector {
    /// Judges every process in bucket `idx`.
    pub(super) fn judge_contention(
        &mut self,
        idx: u64,
        b: &Bucket,
        surging_pids: &HashSet<Option<u32>>,
        anomalous: &mut HashSet<(Class, String)>,
        ch: &mut Changes,
    ) {
        let c = self.cfg.clone();
        let (start, end) = self.bounds(idx);
        let h = c.half_life_buckets;
        let keep_idle = IDLE_FORGET_NS / c.bucket_ns;
        let contention_rule = Rule {
            sigma: c.sigma,
            ratio: c.contention_ratio,
            floor: c.contention_min_ms,
            warmup: c.warmup_buckets,
        };
        for pid in b.procs.keys().chain(self.watched.iter()) {
            if !self.procs.contains_key(pid) && self.procs.len() < MAX_PIDS {
                self.procs.insert(*pid, SeriesBase::new(h, idx));
            }
        }
        let empty = ProcAgg::default();
        for (pid, base) in self.procs.iter_mut() {
            let p = b.procs.get(pid).unwrap_or(&empty);
            if p.waits > 0 || self.watched.contains(pid) {
                base.seen = idx;
            }
            let ms = p.delay_ns as f64 / 1e6;
            let v = base.a.observe(ms, &contention_rule);
            let own_surge = surging_pids.contains(&Some(*pid)) || surging_pids.contains(&None);
            base.streak = if v.anomalous && !own_surge {
                base.streak + 1
            } else {
                0
            };
            if base.streak >= c.contention_min_buckets {
                let mut tids: Vec<(&u32, &u64)> = p.tids.iter().collect();
                tids.sort_by(|x, y| y.1.cmp(x.1));
                let top: Vec<_> = tids
                    .iter()
                    .take(5)
                    .map(|(t, ns)| json!({"tid": t, "thread_name": self.thread_names.get(t), "delay_ms": **ns as f64 / 1e6}))
                    .collect();
                let summary = format!(
                    "pid {pid}: {ms:.1} ms of run-queue delay in 1 s against a baseline of {:.1} ms (threshold {:.1}) while task arrivals are normal",
                    v.mean, v.threshold
                );
                let evidence = json!({
                    "pid": pid,
                    "runq_delay_ms": ms,
                    "waits": p.waits,
                    "max_wait_ms": p.max_ns as f64 / 1e6,
                    "top_threads": top,
                    "task_arrivals": "normal",
                });
                let key = (Class::CpuContention, format!("pid:{pid}"));
                anomalous.insert(key.clone());
                Self::raise(
                    &mut self.open,
                    &mut self.next_id,
                    key,
                    start,
                    end,
                    v,
                    summary,
                    evidence,
                    ch,
                );
            }
        }
        self.procs
            .retain(|_, p| idx.saturating_sub(p.seen) < keep_idle);
    }
}
