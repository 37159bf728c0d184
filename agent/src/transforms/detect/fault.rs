//! `connection_fault`, per service endpoint: connections reset, or segments retransmitted,
//! anomalous for that endpoint; says which side sent the resets and links the spans that were
//! hurt (failed, or carrying the kernel evidence).
use std::collections::HashSet;

use serde_json::json;

use super::{
    Bucket, Changes, Detector, EpAgg, IDLE_FORGET_NS, MAX_ENDPOINTS, SeriesBase, baseline::Rule,
};
use crate::shared::{incident::Class, netkey::ConnKey};

impl Detector {
    /// Judges every endpoint in bucket `idx`.
    pub(super) fn judge_faults(
        &mut self,
        idx: u64,
        b: &Bucket,
        anomalous: &mut HashSet<(Class, String)>,
        ch: &mut Changes,
    ) {
        let c = self.cfg.clone();
        let (start, end) = self.bounds(idx);
        let h = c.half_life_buckets;
        let keep_idle = IDLE_FORGET_NS / c.bucket_ns;
        let reset_rule = Rule {
            sigma: c.sigma,
            ratio: c.fault_ratio,
            floor: c.fault_min_resets,
            warmup: 0,
        };
        let retrans_rule = Rule {
            sigma: c.sigma,
            ratio: c.fault_ratio,
            floor: c.fault_min_retransmits,
            warmup: 0,
        };
        for ep in b.eps.keys() {
            if !self.eps.contains_key(ep) && self.eps.len() < MAX_ENDPOINTS {
                self.eps.insert(*ep, SeriesBase::new(h, idx));
            }
        }
        let empty = EpAgg::default();
        for (ep, base) in self.eps.iter_mut() {
            let a = b.eps.get(ep).unwrap_or(&empty);
            if !a.resets.is_empty() || a.retrans_segs > 0 || a.failed_spans > 0 {
                base.seen = idx;
            }
            let conns: HashSet<&ConnKey> = a.resets.iter().map(|(k, _)| k).collect();
            let by_service: HashSet<&ConnKey> = a
                .resets
                .iter()
                .filter(|(_, s)| *s)
                .map(|(k, _)| k)
                .collect();
            let by_peer = conns.len() - by_service.len().min(conns.len());
            let vr = base.a.observe(conns.len() as f64, &reset_rule);
            let vx = base.b.observe(a.retrans_segs as f64, &retrans_rule);
            if vr.anomalous || vx.anomalous {
                let reset_by = match (
                    by_service.len(),
                    a.resets.iter().filter(|(_, s)| !*s).count(),
                ) {
                    (0, 0) => "none",
                    (_, 0) => "service",
                    (0, _) => "peers",
                    _ => "both",
                };
                let what = if vr.anomalous {
                    format!(
                        "{} connections reset ({})",
                        conns.len(),
                        match reset_by {
                            "service" => format!("{ep} sent the resets"),
                            "peers" => format!("its peers reset {ep}"),
                            _ => "resets from both sides".to_owned(),
                        }
                    )
                } else {
                    format!("{} segments retransmitted", a.retrans_segs)
                };
                let v = if vr.anomalous { vr } else { vx };
                let summary = format!(
                    "{ep}: {what} in 1 s against a baseline of {:.1} (threshold {:.1})",
                    v.mean, v.threshold
                );
                let mut sessions: Vec<&String> = a.sessions.iter().collect();
                sessions.sort();
                let evidence = json!({
                    "endpoint": ep.to_string(),
                    "connections_reset": conns.len(),
                    "reset_by": reset_by,
                    "connections_reset_by_service": by_service.len(),
                    "connections_reset_by_peers": by_peer,
                    "retransmitted_segments": a.retrans_segs,
                    "retransmits": vx,
                    "states_at_reset": a.states,
                    "failed_spans": a.failed_spans,
                    "sessions": sessions,
                });
                let key = (Class::ConnectionFault, format!("ep:{ep}"));
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
        self.eps
            .retain(|_, p| idx.saturating_sub(p.seen) < keep_idle);
    }
}
