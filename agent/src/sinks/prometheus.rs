//! Prometheus metrics. Totals that the kernel keeps losslessly (per-CPU counters) are synced at
//! scrape time; per-owner detail comes from the event stream, whose losses are exported beside it.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use agent_common::{COUNTER_MAX, Counter, TcpEventKind};
use prometheus::{
    CounterVec, Encoder as _, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
    proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType},
};

/// Distinct (namespace, pod) label pairs on per-process metrics.
pub const MAX_POD_LABELS: usize = 256;

use crate::shared::{
    culprit::{CulpritStep, OTHER},
    event::{Identify, KernelEvent, KernelMaps, ProbeStatus, RunqHistogram},
    telemetry::{NS, RingStats},
};

pub struct Metrics {
    pub registry: Registry,
    tcp_resets: IntCounterVec,
    tcp_retransmits: IntCounter,
    tcp_retransmit_failures: IntCounter,
    events_lost: IntCounterVec,
    owner_unknown: IntCounter,
    tcp_events_by_owner: IntCounterVec,
    runq_slow_events: IntCounterVec,
    /// Who a pid is (pod UID labels; comm for the histograms).
    identify: Option<Arc<dyn Identify>>,
    /// (namespace, pod) label values handed out so far: at most [`MAX_POD_LABELS`].
    pod_labels: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    /// Read at scrape time: the kernel's lossless counters and run-queue histograms.
    kernel: Option<Arc<dyn KernelMaps>>,
    pub runq_watched: IntGauge,
    probe_up: IntGaugeVec,
    runq_events: IntCounter,
    ring_records: IntCounterVec,
    ring_malformed: IntCounterVec,
    pipeline_dropped: IntCounterVec,
    last_kernel: Mutex<[u64; COUNTER_MAX as usize]>,
    runq_culprit_seconds: CounterVec,
    runq_culprits_lost: IntCounter,
    /// Label values handed out: victim comm → its culprit comms (bounded, see
    /// [`MAX_CULPRIT_VICTIMS`] and [`MAX_CULPRITS_PER_VICTIM`]).
    culprit_labels: Mutex<HashMap<String, std::collections::HashSet<String>>>,
}

/// Victim comms with their own culprit series; the rest are `victim_comm="other"`.
pub const MAX_CULPRIT_VICTIMS: usize = 16;
/// Culprit comms per victim with their own series (the first ones seen, which under
/// contention are the largest: a step's samples come largest first); the rest are
/// `culprit_comm="other"`.
pub const MAX_CULPRITS_PER_VICTIM: usize = 10;

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name, help).namespace(NS)).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help).namespace(NS), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
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
            tcp_resets: counter_vec(
                &r,
                "tcp_resets_total",
                "TCP RST segments sent or received, counted in the kernel (lossless).",
                &["direction"],
            ),
            tcp_retransmits: counter(
                &r,
                "tcp_retransmits_total",
                "TCP segments retransmitted, counted in the kernel (lossless).",
            ),
            tcp_retransmit_failures: counter(
                &r,
                "tcp_retransmit_failures_total",
                "Retransmit attempts the kernel reported as failed (not counted as retransmits).",
            ),
            events_lost: counter_vec(
                &r,
                "ebpf_events_lost_total",
                "Events the kernel could not put in a full ring buffer.",
                &["ring"],
            ),
            owner_unknown: counter(
                &r,
                "tcp_owner_unknown_total",
                "TCP events whose socket had no known owning process.",
            ),
            tcp_events_by_owner: counter_vec(
                &r,
                "tcp_events_by_owner_total",
                "TCP events by owning process (from the event stream; see ebpf_events_lost_total).",
                &["event", "comm", "pid", "pod_uid", "namespace", "pod"],
            ),
            runq_slow_events: counter_vec(
                &r,
                "runq_slow_events_total",
                "Run-queue delays at or above the event threshold, by process.",
                &["comm", "pid", "pod_uid", "namespace", "pod"],
            ),
            identify: None,
            pod_labels: Default::default(),
            kernel: None,
            runq_watched: {
                let g = IntGauge::with_opts(
                    Opts::new(
                        "runq_watched_processes",
                        "Processes whose run-queue latency is measured.",
                    )
                    .namespace(NS),
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            probe_up: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "probe_up",
                        "1 if the kernel feature loaded on this kernel, 0 if not (the agent's log says why).",
                    )
                    .namespace(NS),
                    &["probe"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            runq_events: counter(
                &r,
                "runq_events_total",
                "Run-queue events the kernel tried to report (delivered plus lost).",
            ),
            ring_records: counter_vec(
                &r,
                "ring_records_total",
                "Ring-buffer records decoded by the agent.",
                &["ring"],
            ),
            ring_malformed: counter_vec(
                &r,
                "ring_records_malformed_total",
                "Ring-buffer records the agent could not decode.",
                &["ring"],
            ),
            pipeline_dropped: counter_vec(
                &r,
                "pipeline_dropped_total",
                "Decoded events dropped because the agent's pipeline was full.",
                &["ring"],
            ),
            last_kernel: Mutex::new([0; COUNTER_MAX as usize]),
            runq_culprit_seconds: {
                let c = CounterVec::new(
                    Opts::new(
                        "runq_culprit_seconds_total",
                        "CPU time other processes ran on a CPU while a watched process's thread waited in its run queue (top culprits per victim; the rest as \"other\").",
                    )
                    .namespace(NS),
                    &["victim_comm", "culprit_comm"],
                )
                .expect("valid metric");
                r.register(Box::new(c.clone())).expect("unique metric");
                c
            },
            runq_culprits_lost: counter(
                &r,
                "runq_culprits_lost_total",
                "Culprit CPU time the kernel could not account for lack of room in its table.",
            ),
            culprit_labels: Mutex::new(HashMap::new()),
            registry: r,
        }
    }

    /// Labels from `identify`; the kernel's aggregates read from `kernel` at every scrape.
    pub fn reading(
        mut self,
        kernel: Option<Arc<dyn KernelMaps>>,
        identify: Arc<dyn Identify>,
    ) -> Self {
        self.kernel = kernel;
        self.identify = Some(identify);
        self
    }

    pub fn set_probe_status(&self, status: &[ProbeStatus]) {
        for s in status {
            self.probe_up
                .with_label_values(&[s.probe])
                .set(i64::from(s.up));
        }
    }

    /// Counters for one ring's reader.
    pub fn ring(&self, ring: &str) -> RingStats {
        RingStats {
            decoded: self.ring_records.with_label_values(&[ring]),
            malformed: self.ring_malformed.with_label_values(&[ring]),
            pipeline_full: self.pipeline_dropped.with_label_values(&[ring]),
        }
    }

    /// Adds what the kernel counted since the last sync.
    pub fn sync_kernel(&self, now: &[u64; COUNTER_MAX as usize]) {
        let mut last = self.last_kernel.lock().expect("not poisoned");
        let delta = |c: Counter| now[c as usize].saturating_sub(last[c as usize]);
        self.tcp_resets
            .with_label_values(&["sent"])
            .inc_by(delta(Counter::RstSent));
        self.tcp_resets
            .with_label_values(&["received"])
            .inc_by(delta(Counter::RstReceived));
        self.tcp_retransmits.inc_by(delta(Counter::RetransmitSegs));
        self.tcp_retransmit_failures
            .inc_by(delta(Counter::RetransmitFailed));
        self.events_lost
            .with_label_values(&["tcp"])
            .inc_by(delta(Counter::TcpEventsLost));
        self.events_lost
            .with_label_values(&["runq"])
            .inc_by(delta(Counter::RunqEventsLost));
        self.owner_unknown.inc_by(delta(Counter::OwnerUnknown));
        self.runq_events.inc_by(delta(Counter::RunqEvents));
        self.runq_culprits_lost
            .inc_by(delta(Counter::RunqCulpritsLost));
        *last = *now;
    }

    /// Adds one step of culprit CPU time, largest first, under bounded label values.
    pub fn observe_culprits(&self, step: &CulpritStep) {
        let mut samples: Vec<_> = step.samples.iter().collect();
        samples.sort_by_key(|s| std::cmp::Reverse(s.ns));
        let mut labels = self.culprit_labels.lock().expect("not poisoned");
        for s in samples {
            let victim = self
                .identify
                .as_ref()
                .map_or_else(|| s.victim.to_string(), |i| i.comm(s.victim));
            let victim = if labels.contains_key(&victim) || labels.len() < MAX_CULPRIT_VICTIMS {
                victim
            } else {
                OTHER.to_owned()
            };
            let culprits = labels.entry(victim.clone()).or_default();
            let culprit =
                if culprits.contains(&s.id.comm) || culprits.len() < MAX_CULPRITS_PER_VICTIM {
                    culprits.insert(s.id.comm.clone());
                    s.id.comm.as_str()
                } else {
                    OTHER
                };
            self.runq_culprit_seconds
                .with_label_values(&[victim.as_str(), culprit])
                .inc_by(s.ns as f64 / 1e9);
        }
    }

    fn pod_of(&self, pid: u32) -> String {
        self.identify
            .as_ref()
            .map(|i| i.pod_uid(pid))
            .unwrap_or_default()
    }

    /// `namespace` and `pod` label values of a process ("" outside a pod or without the API).
    /// Bounded: per-process series are already bounded by the watched processes, and these
    /// labels add at most [`MAX_POD_LABELS`] distinct pairs (a node runs ~110 pods at most);
    /// past that, new pods are labelled `pod="_other"` instead of growing the label set.
    fn pod_labels(&self, pid: u32) -> (String, String) {
        let Some(p) = self.identify.as_ref().and_then(|i| i.pod(pid)) else {
            return Default::default();
        };
        if p.name.is_empty() {
            return Default::default();
        }
        let pair = (p.namespace, p.name);
        let mut seen = self
            .pod_labels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains(&pair) || seen.len() < MAX_POD_LABELS {
            seen.insert(pair.clone());
            pair
        } else {
            (String::new(), "_other".into())
        }
    }

    /// The exposition text of everything, the kernel's aggregates read now.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut extra = Vec::new();
        if let Some(k) = &self.kernel {
            match k.counters() {
                Ok(now) => self.sync_kernel(&now),
                Err(e) => tracing::warn!(error = %e, "reading kernel counters failed"),
            }
            match k.runq_histograms() {
                Ok(h) => extra.push(self.runq_histograms(&h)),
                Err(e) => tracing::warn!(error = %e, "reading run-queue histograms failed"),
            }
        }
        self.encode(&extra)
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
                let pod = rec
                    .owner
                    .as_ref()
                    .map(|o| self.pod_of(o.pid))
                    .unwrap_or_default();
                let (ns, name) = rec
                    .owner
                    .as_ref()
                    .map(|o| self.pod_labels(o.pid))
                    .unwrap_or_default();
                self.tcp_events_by_owner
                    .with_label_values(&[event, comm, &pid, &pod, &ns, &name])
                    .inc_by(u64::from(rec.segs));
            }
            KernelEvent::Runq(rec) => {
                let pod = self.pod_of(rec.pid);
                let (ns, name) = self.pod_labels(rec.pid);
                self.runq_slow_events
                    .with_label_values(&[&rec.comm, &rec.pid.to_string(), &pod, &ns, &name])
                    .inc();
            }
        }
    }

    /// The exposition text. `extra` families with no series are left out (an empty family is
    /// not valid exposition).
    pub fn encode(&self, extra: &[MetricFamily]) -> Result<String, prometheus::Error> {
        let mut families = self.registry.gather();
        families.extend(extra.iter().filter(|f| !f.get_metric().is_empty()).cloned());
        let mut buf = Vec::new();
        TextEncoder::new().encode(&families, &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// `kernelsight_runq_latency_seconds`, one histogram per process, straight from the kernel's
    /// log2 slots: slot `i` counts delays in [2^i, 2^(i+1)) µs, so its upper bound is 2^(i+1)
    /// µs. (Prometheus buckets are `le`; a delay of exactly 2^(i+1) µs lands one bucket higher —
    /// a nanosecond-wide edge we accept to keep runqlat's slots.)
    fn runq_histograms(&self, hists: &HashMap<u32, RunqHistogram>) -> MetricFamily {
        let mut family = MetricFamily::default();
        family.set_name(format!("{NS}_runq_latency_seconds"));
        family.set_help("Run-queue latency (wakeup or preemption to on-CPU) of watched processes, measured in the kernel.".into());
        family.set_field_type(MetricType::HISTOGRAM);
        let mut pids: Vec<_> = hists.keys().copied().collect();
        pids.sort_unstable();
        let mut metrics = Vec::new();
        for pid in pids {
            let h = &hists[&pid];
            let mut buckets = Vec::new();
            let mut cumulative = 0;
            for (i, n) in h.slots.iter().enumerate() {
                cumulative += n;
                let mut b = Bucket::default();
                b.set_upper_bound((1u64 << (i + 1)) as f64 * 1e-6);
                b.set_cumulative_count(cumulative);
                buckets.push(b);
            }
            let mut hist = Histogram::default();
            hist.set_sample_count(cumulative);
            hist.set_sample_sum(h.sum_ns as f64 * 1e-9);
            hist.set_bucket(buckets);
            let label = |name: &str, value: String| {
                let mut l = LabelPair::default();
                l.set_name(name.into());
                l.set_value(value);
                l
            };
            let mut m = Metric::default();
            let comm = self
                .identify
                .as_ref()
                .map_or_else(|| "exited".to_owned(), |i| i.comm(pid));
            let mut labels = vec![label("comm", comm), label("pid", pid.to_string())];
            let uid = self.pod_of(pid);
            if !uid.is_empty() {
                labels.push(label("pod_uid", uid));
            }
            let (ns, name) = self.pod_labels(pid);
            if !name.is_empty() {
                labels.push(label("namespace", ns));
                labels.push(label("pod", name));
            }
            m.set_label(labels);
            m.set_histogram(hist);
            metrics.push(m);
        }
        family.set_metric(metrics);
        family
    }
}
