//! The page's timeline: a bounded ring of one-second samples.
//!
//! - TCP resets and retransmits per service endpoint: counted as the pipeline hands events on
//!   (one short lock per event, into a map bounded per second).
//! - Everything else (run-queue latency, spans, task arrivals and queue depth per pool) comes
//!   from the sampler once a second (`sources::sampler`), as a [`Second`].
//!
//! Percentiles and everything visual are computed only when the page asks.
use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use agent_common::TcpEventKind;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::shared::{
    event::{KernelEvent, ProbeStatus},
    netkey::{Endpoint, EphemeralPorts, Oriented},
    sample::{Inputs, Sample, Second, TcpCounts, TcpPoint},
};

/// Endpoints tracked per second; the rest are summed under [`OTHER`].
pub const MAX_ENDPOINTS_PER_SAMPLE: usize = 32;
pub const OTHER: &str = "other";

/// Where each input of the page stands, for /api/status and the page's banners.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SourceState {
    /// The last second a kernel event of any kind arrived.
    pub last_kernel_event_unix_s: Option<u64>,
    pub last_span_unix_s: Option<u64>,
    pub spans_total: u64,
    pub watched_processes: i64,
    pub pool_metrics_ok: Option<bool>,
    pub pool_metrics_error: Option<String>,
    pub probes_error: Option<String>,
    /// Per kernel feature: loaded or not, and why (the page's probe chips).
    pub probe_status: Vec<ProbeStatus>,
}

/// What the pipeline accumulates for the current second (keyed by endpoint, not its text: a
/// string per kernel event was an allocation per event in a burst).
#[derive(Default)]
struct Current {
    tcp: HashMap<Endpoint, TcpCounts>,
    other: TcpCounts,
    events: u64,
}

pub struct Timeline {
    cap: usize,
    eph: EphemeralPorts,
    current: Mutex<Current>,
    ring: Mutex<VecDeque<Sample>>,
    sources: Mutex<SourceState>,
}

impl Timeline {
    pub fn new(seconds: usize, eph: EphemeralPorts) -> Self {
        Self {
            cap: seconds.max(1),
            eph,
            current: Mutex::default(),
            ring: Mutex::new(VecDeque::new()),
            sources: Mutex::default(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Called by the pipeline for every kernel event.
    pub fn observe(&self, ev: &KernelEvent) {
        let KernelEvent::Tcp(rec) = ev else { return };
        let (service, _) = self.eph.service(&Oriented {
            local: rec.local.into(),
            peer: rec.remote.into(),
        });
        let mut c = self.current.lock().expect("timeline lock");
        c.events += 1;
        let full = c.tcp.len() >= MAX_ENDPOINTS_PER_SAMPLE && !c.tcp.contains_key(&service);
        let slot = if full {
            &mut c.other
        } else {
            c.tcp.entry(service).or_default()
        };
        match rec.kind {
            TcpEventKind::RstSent => slot.rst_sent += 1,
            TcpEventKind::RstReceived => slot.rst_received += 1,
            TcpEventKind::Retransmit => slot.retransmits += rec.segs.max(1),
        }
    }

    /// Takes the sampler's seconds until it stops.
    pub async fn run(&self, mut seconds: mpsc::Receiver<Second>) {
        while let Some(s) = seconds.recv().await {
            self.close_second(s.sample, &s.inputs);
        }
    }

    pub fn sources(&self) -> SourceState {
        self.sources.lock().expect("timeline lock").clone()
    }

    /// Closes second `sample.t`: the TCP counts gathered so far go into `sample`, which joins the
    /// ring; `inputs` updates where each input stands.
    pub fn close_second(&self, mut sample: Sample, inputs: &Inputs) {
        let cur = std::mem::take(&mut *self.current.lock().expect("timeline lock"));
        self.note_inputs(&sample, cur.events, inputs);
        let mut tcp: Vec<TcpPoint> = cur
            .tcp
            .into_iter()
            .map(|(ep, counts)| TcpPoint {
                ep: ep.to_string(),
                counts,
            })
            .collect();
        tcp.sort_by(|a, b| {
            b.counts
                .total()
                .cmp(&a.counts.total())
                .then_with(|| a.ep.cmp(&b.ep))
        });
        if cur.other.total() > 0 {
            tcp.push(TcpPoint {
                ep: OTHER.into(),
                counts: cur.other,
            });
        }
        sample.tcp = tcp;
        let mut ring = self.ring.lock().expect("timeline lock");
        // A second sampled twice (a clock step backwards) replaces, never duplicates.
        if let Some(last) = ring.back_mut()
            && last.t >= sample.t
        {
            let mut merged = std::mem::take(last);
            for p in sample.tcp.drain(..) {
                match merged.tcp.iter_mut().find(|m| m.ep == p.ep) {
                    Some(m) => m.counts.add(&p.counts),
                    None => merged.tcp.push(p),
                }
            }
            *last = Sample {
                t: merged.t,
                tcp: merged.tcp,
                ..sample
            };
            return;
        }
        ring.push_back(sample);
        while ring.len() > self.cap {
            ring.pop_front();
        }
    }

    fn note_inputs(&self, sample: &Sample, kernel_events: u64, inputs: &Inputs) {
        let t = sample.t;
        let mut s = self.sources.lock().expect("timeline lock");
        if kernel_events > 0 || sample.runq.as_ref().is_some_and(|r| r.count > 0) {
            s.last_kernel_event_unix_s = Some(t);
        }
        if sample.spans.unwrap_or(0) > 0 {
            s.last_span_unix_s = Some(t);
        }
        s.spans_total = inputs.spans_total;
        s.watched_processes = inputs.watched_processes;
        s.probes_error.clone_from(&inputs.probes_error);
        s.probe_status.clone_from(&inputs.probe_status);
        match &inputs.pool {
            Some(Ok(())) => {
                s.pool_metrics_ok = Some(true);
                s.pool_metrics_error = None;
            }
            Some(Err(e)) => {
                s.pool_metrics_ok = Some(false);
                s.pool_metrics_error = Some(e.clone());
            }
            None => {}
        }
    }

    /// Samples after second `since`, at most the last `max` of them.
    pub fn since(&self, since: u64, max: usize) -> Vec<Sample> {
        let ring = self.ring.lock().expect("timeline lock");
        let skip = ring.len().saturating_sub(max);
        ring.iter()
            .skip(skip)
            .filter(|s| s.t > since)
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.ring.lock().expect("timeline lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::shared::event::TcpRecord;

    fn tcp(kind: TcpEventKind, local: &str, remote: &str) -> KernelEvent {
        KernelEvent::Tcp(TcpRecord {
            ts_ns: 0,
            kind,
            local: local.parse::<SocketAddr>().unwrap(),
            remote: remote.parse().unwrap(),
            state: 1,
            owner: None,
            current_pid: 0,
            socket: 0,
            cookie: 0,
            sock_ino: 0,
            segs: 3,
            reason: 0,
            netns: 0,
        })
    }

    #[test]
    fn tcp_events_are_grouped_by_service_endpoint_and_bounded() {
        let t = Timeline::new(3, EphemeralPorts(32768..=60999));
        // Both sides of one reset: the server's socket sent it, the client's received it.
        t.observe(&tcp(
            TcpEventKind::RstSent,
            "127.0.0.1:6379",
            "127.0.0.1:40000",
        ));
        t.observe(&tcp(
            TcpEventKind::RstReceived,
            "127.0.0.1:40000",
            "127.0.0.1:6379",
        ));
        t.observe(&tcp(
            TcpEventKind::Retransmit,
            "10.0.0.1:40001",
            "10.0.0.2:443",
        ));
        for i in 0..100 {
            t.observe(&tcp(
                TcpEventKind::RstSent,
                "10.0.0.1:40001",
                &format!("10.0.1.{i}:80"),
            ));
        }
        t.close_second(
            Sample {
                t: 10,
                ..Default::default()
            },
            &Inputs::default(),
        );
        let s = &t.since(0, 10)[0];
        let redis = s.tcp.iter().find(|p| p.ep == "127.0.0.1:6379").unwrap();
        assert_eq!(
            redis.counts,
            TcpCounts {
                rst_sent: 1,
                rst_received: 1,
                retransmits: 0
            }
        );
        assert_eq!(
            s.tcp
                .iter()
                .find(|p| p.ep == "10.0.0.2:443")
                .unwrap()
                .counts
                .retransmits,
            3
        );
        assert_eq!(s.tcp.len(), MAX_ENDPOINTS_PER_SAMPLE + 1);
        let other = s.tcp.last().unwrap();
        assert_eq!(other.ep, OTHER);
        let all: u32 = s.tcp.iter().map(|p| p.counts.total()).sum();
        assert_eq!(all, 2 + 3 + 100, "nothing lost to the bound");
        // The ring keeps the last `cap` seconds; a repeated second merges.
        for sec in 11..15 {
            t.close_second(
                Sample {
                    t: sec,
                    ..Default::default()
                },
                &Inputs::default(),
            );
        }
        t.observe(&tcp(
            TcpEventKind::RstSent,
            "127.0.0.1:6379",
            "127.0.0.1:40000",
        ));
        t.close_second(
            Sample {
                t: 14,
                ..Default::default()
            },
            &Inputs::default(),
        );
        let all = t.since(0, 100);
        assert_eq!(all.iter().map(|s| s.t).collect::<Vec<_>>(), [12, 13, 14]);
        assert_eq!(all[2].tcp.len(), 1);
        assert_eq!(t.since(12, 100).len(), 2);
        assert_eq!(t.since(0, 1).len(), 1);
    }
}
