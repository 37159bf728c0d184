//! `connection_fault`, per service endpoint: connections reset, or segments retransmitted,
//! anomalous for that endpoint. Names the dependency (its address as its clients' spans call
//! it: `server.address`, `server.port`, `peer.service`) and the kind of failure, with counts:
//!
//! - `refused`: an RST answered the client's SYN (nobody listening, or the listener refused);
//! - `reset_by_peer`: the service reset established connections (its clients received RSTs);
//! - `reset_by_us`: the clients reset their connections to the service (they sent the RSTs);
//! - `retransmit_storm`: segments toward or from the service were lost and retransmitted.
//!
//! "Peer" is the service the incident names, "us" its clients on this node. The spans that
//! were hurt (failed, or carrying the kernel evidence) are linked.
use std::collections::{BTreeMap, HashSet};

use serde_json::json;

use super::{
    Bucket, Changes, Detector, EpAgg, IDLE_FORGET_NS, MAX_ENDPOINTS, PeerName, Report, SeriesBase,
    baseline::Rule,
};
use crate::shared::{
    incident::{Class, Verdict},
    netkey::{ConnKey, Endpoint},
};

/// Connections per reset kind in one bucket (a connection counts once per kind).
#[derive(Debug, Default, PartialEq, Eq)]
struct ResetCounts {
    refused: usize,
    reset_by_peer: usize,
    reset_by_us: usize,
    /// Distinct connections reset, whatever the kind.
    connections: usize,
}

fn reset_counts(a: &EpAgg) -> ResetCounts {
    let conns: HashSet<&ConnKey> = a.resets.iter().map(|(k, _)| k).collect();
    let mut by_peer: HashSet<&ConnKey> = HashSet::new();
    let mut by_us: HashSet<&ConnKey> = HashSet::new();
    for (k, by_service) in &a.resets {
        if a.refused.contains(k) {
            continue;
        }
        if *by_service {
            by_peer.insert(k);
        } else {
            by_us.insert(k);
        }
    }
    ResetCounts {
        refused: a.refused.iter().filter(|k| conns.contains(k)).count(),
        reset_by_peer: by_peer.len(),
        reset_by_us: by_us.len(),
        connections: conns.len(),
    }
}

impl Detector {
    fn fault_rules(&self) -> (Rule, Rule) {
        let c = &self.cfg;
        (
            Rule {
                sigma: c.sigma,
                ratio: c.fault_ratio,
                floor: c.fault_min_resets,
                warmup: 0,
            },
            Rule {
                sigma: c.sigma,
                ratio: c.fault_ratio,
                floor: c.fault_min_retransmits,
                warmup: 0,
            },
        )
    }

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
        let (reset_rule, retrans_rule) = self.fault_rules();
        for ep in b.eps.keys() {
            if !self.eps.contains_key(ep) && self.eps.len() < MAX_ENDPOINTS {
                self.eps.insert(*ep, SeriesBase::new(h, idx));
            }
        }
        let empty = EpAgg::default();
        let mut raised = Vec::new();
        for (ep, base) in self.eps.iter_mut() {
            let a = b.eps.get(ep).unwrap_or(&empty);
            if !a.resets.is_empty() || a.retrans_segs > 0 || a.failed_spans > 0 {
                base.seen = idx;
            }
            let counts = reset_counts(a);
            let vr = base.a.observe(counts.connections as f64, &reset_rule);
            let vx = base.b.observe(a.retrans_segs as f64, &retrans_rule);
            if vr.anomalous || vx.anomalous {
                raised.push((*ep, vr, vx));
            }
        }
        for (ep, vr, vx) in raised {
            let a = b.eps.get(&ep).unwrap_or(&empty);
            let r = fault_report(ep, a, vr, vx, self.peer_names.get(&ep));
            let key = (Class::ConnectionFault, format!("ep:{ep}"));
            anomalous.insert(key.clone());
            Self::raise_report(&mut self.open, &mut self.next_id, key, start, end, r, ch);
        }
        self.eps
            .retain(|_, p| idx.saturating_sub(p.seen) < keep_idle);
    }

    /// Early verdicts on bucket `idx`, not yet settled: resets and retransmits only grow as
    /// a bucket fills, so a partial count that beats the threshold is a settled verdict too.
    /// Opens only (the settled judgment extends and updates).
    pub(super) fn early_faults(&mut self, idx: u64, ch: &mut Changes) {
        let (start, end) = self.bounds(idx);
        let (reset_rule, retrans_rule) = self.fault_rules();
        let Some(b) = self.buckets.get(&idx) else {
            return;
        };
        let fresh = SeriesBase::new(self.cfg.half_life_buckets, idx);
        let mut raised = Vec::new();
        for (ep, a) in &b.eps {
            let key = (Class::ConnectionFault, format!("ep:{ep}"));
            if self.open.contains_key(&key) {
                continue;
            }
            let base = self.eps.get(ep).unwrap_or(&fresh);
            let vr = base
                .a
                .judge(reset_counts(a).connections as f64, &reset_rule);
            let vx = base.b.judge(a.retrans_segs as f64, &retrans_rule);
            if vr.anomalous || vx.anomalous {
                raised.push((key, fault_report(*ep, a, vr, vx, self.peer_names.get(ep))));
            }
        }
        self.raise_early(raised, start, end, ch);
    }
}

/// Summary, evidence and attributes of an anomalous endpoint.
fn fault_report(
    ep: Endpoint,
    a: &EpAgg,
    vr: Verdict,
    vx: Verdict,
    name: Option<&PeerName>,
) -> Report {
    let counts = reset_counts(a);
    let by_service = counts.reset_by_peer;
    let by_peers = a.resets.iter().filter(|(_, s)| !*s).count();
    let reset_by = match (by_service + counts.refused, by_peers) {
        (0, 0) => "none",
        (_, 0) => "service",
        (0, _) => "peers",
        _ => "both",
    };
    // The primary kind: the most connections among the reset kinds when resets are
    // anomalous, else the retransmit storm.
    let (kind, count) = if vr.anomalous {
        [
            ("refused", counts.refused),
            ("reset_by_peer", counts.reset_by_peer),
            ("reset_by_us", counts.reset_by_us),
        ]
        .into_iter()
        .fold(
            ("refused", 0),
            |best, k| if k.1 > best.1 { k } else { best },
        )
    } else {
        ("retransmit_storm", a.retrans_segs as usize)
    };
    let service = name.and_then(|n| n.peer_service.clone());
    let address = name
        .and_then(|n| n.server_address.clone())
        .unwrap_or_else(|| ep.ip.to_string());
    let port = name.and_then(|n| n.server_port).unwrap_or(ep.port);
    // Always with the endpoint itself (what the incident's subject says).
    let named = address != ep.ip.to_string() || port != ep.port;
    let display = match (&service, named) {
        (Some(s), false) => format!("{s} ({ep})"),
        (Some(s), true) => format!("{s} {address}:{port} ({ep})"),
        (None, true) => format!("{address}:{port} ({ep})"),
        (None, false) => ep.to_string(),
    };
    let what = match kind {
        "refused" => format!("{count} connections refused (RST answering the SYN)"),
        "reset_by_peer" => format!("{count} connections reset by {display}"),
        "reset_by_us" => format!("{count} connections to it reset by its clients"),
        _ => format!(
            "{count} segments retransmitted on {} connections",
            a.retrans_conns.len()
        ),
    };
    let v = if vr.anomalous { vr } else { vx };
    let summary = format!(
        "{display}: {what} in 1 s against a baseline of {:.1} (threshold {:.1})",
        v.mean, v.threshold
    );
    let mut sessions: Vec<&String> = a.sessions.iter().collect();
    sessions.sort();
    let mut clients: Vec<(&u32, &(String, u64))> = a.clients.iter().collect();
    clients.sort_by(|x, y| y.1.1.cmp(&x.1.1).then(x.0.cmp(y.0)));
    let clients_json: Vec<_> = clients
        .iter()
        .map(|(pid, (comm, n))| json!({"pid": pid, "comm": comm, "events": n}))
        .collect();
    let evidence = json!({
        "endpoint": ep.to_string(),
        "fault_kind": kind,
        "fault_counts": {
            "refused": counts.refused,
            "reset_by_peer": counts.reset_by_peer,
            "reset_by_us": counts.reset_by_us,
            "retransmitted_segments": a.retrans_segs,
            "retransmitting_connections": a.retrans_conns.len(),
        },
        "connections_reset": counts.connections,
        "reset_by": reset_by,
        "connections_reset_by_service": by_service + counts.refused,
        "connections_reset_by_peers": by_peers,
        "retransmitted_segments": a.retrans_segs,
        "retransmits": vx,
        "states_at_reset": a.states,
        "failed_spans": a.failed_spans,
        "sessions": sessions,
        "clients": clients_json,
    });
    let mut attributes: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    attributes.insert("server.address".into(), address.into());
    attributes.insert("server.port".into(), port.into());
    if let Some(s) = service {
        attributes.insert("peer.service".into(), s.into());
    }
    attributes.insert("network.peer.address".into(), ep.ip.to_string().into());
    attributes.insert("network.peer.port".into(), ep.port.into());
    attributes.insert("kernelsight.fault.kind".into(), kind.into());
    attributes.insert("kernelsight.fault.count".into(), count.into());
    for (k, n) in [
        ("refused", counts.refused),
        ("reset_by_peer", counts.reset_by_peer),
        ("reset_by_us", counts.reset_by_us),
    ] {
        attributes.insert(format!("kernelsight.fault.{k}"), n.into());
    }
    attributes.insert(
        "kernelsight.fault.retransmitted_segments".into(),
        a.retrans_segs.into(),
    );
    if let Some((pid, (comm, _))) = clients.first() {
        attributes.insert("kernelsight.fault.client.pid".into(), (**pid).into());
        attributes.insert("kernelsight.fault.client.comm".into(), comm.clone().into());
    }
    Report {
        v,
        summary,
        evidence,
        attributes,
    }
}
