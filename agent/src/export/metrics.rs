//! Prometheus metrics. Totals that the kernel keeps losslessly (per-CPU counters) are synced at
//! scrape time; per-owner detail comes from the event stream, whose losses are exported beside it.
use std::sync::Mutex;

use agent_common::{COUNTER_MAX, Counter, TcpEventKind};
use prometheus::{Encoder as _, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

use crate::probes::{events::KernelEvent, ring::RingStats};

const NS: &str = "kernelsight";

pub struct Metrics {
    pub registry: Registry,
    tcp_resets: IntCounterVec,
    tcp_retransmits: IntCounter,
    tcp_retransmit_failures: IntCounter,
    events_lost: IntCounterVec,
    owner_unknown: IntCounter,
    tcp_events_by_owner: IntCounterVec,
    pub ring: RingStats,
    last_kernel: Mutex<[u64; COUNTER_MAX as usize]>,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name, help).namespace(NS)).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help).namespace(NS), labels).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            tcp_resets: counter_vec(&r, "tcp_resets_total", "TCP RST segments sent or received, counted in the kernel (lossless).", &["direction"]),
            tcp_retransmits: counter(&r, "tcp_retransmits_total", "TCP segments retransmitted, counted in the kernel (lossless)."),
            tcp_retransmit_failures: counter(&r, "tcp_retransmit_failures_total", "Retransmit attempts the kernel reported as failed (not counted as retransmits)."),
            events_lost: counter_vec(&r, "ebpf_events_lost_total", "Events the kernel could not put in a full ring buffer.", &["ring"]),
            owner_unknown: counter(&r, "tcp_owner_unknown_total", "TCP events whose socket had no known owning process."),
            tcp_events_by_owner: counter_vec(&r, "tcp_events_by_owner_total", "TCP events by owning process (from the event stream; see ebpf_events_lost_total).", &["event", "comm", "pid"]),
            ring: RingStats {
                decoded: counter(&r, "ring_records_total", "Ring-buffer records decoded by the agent."),
                malformed: counter(&r, "ring_records_malformed_total", "Ring-buffer records the agent could not decode."),
                pipeline_full: counter(&r, "pipeline_dropped_total", "Decoded events dropped because the agent's pipeline was full."),
            },
            last_kernel: Mutex::new([0; COUNTER_MAX as usize]),
            registry: r,
        }
    }

    /// Adds what the kernel counted since the last sync.
    pub fn sync_kernel(&self, now: &[u64; COUNTER_MAX as usize]) {
        let mut last = self.last_kernel.lock().expect("not poisoned");
        let delta = |c: Counter| now[c as usize].saturating_sub(last[c as usize]);
        self.tcp_resets.with_label_values(&["sent"]).inc_by(delta(Counter::RstSent));
        self.tcp_resets.with_label_values(&["received"]).inc_by(delta(Counter::RstReceived));
        self.tcp_retransmits.inc_by(delta(Counter::RetransmitSegs));
        self.tcp_retransmit_failures.inc_by(delta(Counter::RetransmitFailed));
        self.events_lost.with_label_values(&["tcp"]).inc_by(delta(Counter::TcpEventsLost));
        self.events_lost.with_label_values(&["runq"]).inc_by(delta(Counter::RunqEventsLost));
        self.owner_unknown.inc_by(delta(Counter::OwnerUnknown));
        *last = *now;
    }

    pub fn observe(&self, ev: &KernelEvent) {
        match ev {
            KernelEvent::Tcp(rec) => {
                let event = match rec.kind {
                    TcpEventKind::Retransmit => "retransmit",
                    TcpEventKind::RstSent => "rst_sent",
                    TcpEventKind::RstReceived => "rst_received",
                };
                let (comm, pid) = match &rec.owner {
                    Some(o) => (o.comm.as_str(), o.pid.to_string()),
                    None => ("unknown", "0".to_owned()),
                };
                self.tcp_events_by_owner.with_label_values(&[event, comm, &pid]).inc_by(u64::from(rec.segs));
            }
            KernelEvent::Runq(_) => {}
        }
    }

    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}
