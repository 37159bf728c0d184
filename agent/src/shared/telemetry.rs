//! The agent's own metrics that several stages write or read (Vector calls them internal
//! events): each stage is handed its counters; all of them live in the one registry that the
//! Prometheus sink serves.
use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use super::incident::Class;

/// Counts of what happened to ring-buffer records after they left the kernel.
#[derive(Clone)]
pub struct RingStats {
    pub decoded: prometheus::IntCounter,
    pub malformed: prometheus::IntCounter,
    /// Records dropped because the agent's pipeline was full.
    pub pipeline_full: prometheus::IntCounter,
}

/// The OTLP forwarder's counters.
#[derive(Clone)]
pub struct ForwardMetrics {
    pub forwarded: IntCounter,
    pub dropped: IntCounterVec,
    pub errors: IntCounter,
    pub queued: IntGauge,
}

pub const NS: &str = "kernelsight";

#[derive(Clone)]
pub struct CorrelationMetrics {
    pub spans_received: IntCounterVec,
    pub spans_unenriched: IntCounterVec,
    pub spans_joined: IntCounterVec,
    pub spans_joined_early: IntCounter,
    pub span_ids_unresolved: IntCounterVec,
    pub requests_rejected: IntCounterVec,
    pub store_spans: IntGauge,
    pub store_high_water: IntGauge,
    pub store_capacity: IntGauge,
    pub store_bytes: IntGauge,
    pub store_bytes_high_water: IntGauge,
    pub store_capacity_bytes: IntGauge,
    pub kernel_dropped: IntCounter,
    pub evidence_keys: IntGaugeVec,
    pub evidence_evicted: IntCounterVec,
    pub clock_offset: Gauge,
    pub clock_uncertainty: Gauge,
    pub settle: Gauge,
    pub late_inputs: IntCounter,
    /// How late evidence reaches the correlator, by input (`kernel`: event → correlator;
    /// `span`: span end → receipt): the parts of the time to detect that precede detection.
    pub input_lag: HistogramVec,
    pub incidents: IntCounterVec,
    pub incidents_open: IntGaugeVec,
    pub forward: ForwardMetrics,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NS)
}

impl CorrelationMetrics {
    pub fn new(r: &Registry) -> Self {
        let cv = |name, help, labels: &[&str]| {
            reg(
                r,
                IntCounterVec::new(opts(name, help), labels).expect("valid metric"),
            )
        };
        let c = |name, help| {
            reg(
                r,
                IntCounter::with_opts(opts(name, help)).expect("valid metric"),
            )
        };
        let g = |name, help| {
            reg(
                r,
                IntGauge::with_opts(opts(name, help)).expect("valid metric"),
            )
        };
        let gf = |name, help| reg(r, Gauge::with_opts(opts(name, help)).expect("valid metric"));
        let gv = |name, help, labels: &[&str]| {
            reg(
                r,
                IntGaugeVec::new(opts(name, help), labels).expect("valid metric"),
            )
        };
        let m = Self {
            spans_received: cv(
                "spans_received_total",
                "Spans received over OTLP.",
                &["transport"],
            ),
            spans_unenriched: cv(
                "spans_unenriched_total",
                "Spans passed on without kernel evidence because the agent could not keep up.",
                &["reason"],
            ),
            spans_joined: cv(
                "spans_joined_total",
                "Spans that got kernel evidence attached, by join.",
                &["join"],
            ),
            spans_joined_early: c(
                "spans_joined_early_total",
                "Spans joined before their wait for kernel evidence was over, because the span store was near its bound (in spans or bytes).",
            ),
            span_ids_unresolved: cv(
                "span_ids_unresolved_total",
                "Spans whose process.pid/thread.id could not be put in host terms (no join), by reason: no_scope (origin not on this node), no_process, ambiguous, no_thread, not_host_pid.",
                &["reason"],
            ),
            requests_rejected: cv(
                "otlp_requests_rejected_total",
                "OTLP export requests the agent could not decode.",
                &["transport"],
            ),
            store_spans: g(
                "span_store_spans",
                "Spans held for joining (queued and waiting for kernel evidence).",
            ),
            store_high_water: g(
                "span_store_spans_high_water",
                "Most spans ever held for joining at once.",
            ),
            store_capacity: g(
                "span_store_capacity",
                "Spans the agent holds for joining at most.",
            ),
            store_bytes: g(
                "span_store_bytes",
                "Heap bytes of the spans held for joining (decoded size, approximate).",
            ),
            store_bytes_high_water: g(
                "span_store_bytes_high_water",
                "Most heap bytes of spans ever held for joining at once.",
            ),
            store_capacity_bytes: g(
                "span_store_capacity_bytes",
                "Heap bytes of spans the agent holds for joining at most.",
            ),
            kernel_dropped: c(
                "correlator_kernel_events_dropped_total",
                "Kernel events the correlator was too busy to take.",
            ),
            evidence_keys: gv(
                "evidence_keys",
                "Threads and connections with kernel evidence held for joins.",
                &["kind"],
            ),
            evidence_evicted: cv(
                "evidence_evicted_total",
                "Kernel evidence entries removed by a bound.",
                &["kind", "reason"],
            ),
            clock_offset: gf(
                "clock_offset_seconds",
                "CLOCK_REALTIME − CLOCK_MONOTONIC, as last measured.",
            ),
            clock_uncertainty: gf(
                "clock_offset_uncertainty_seconds",
                "Error bound of the last clock offset measurement.",
            ),
            settle: gf(
                "detect_settle_seconds",
                "How long detection waits for late spans before judging a second.",
            ),
            late_inputs: c(
                "detect_late_inputs_total",
                "Evidence that arrived after its second had been judged.",
            ),
            input_lag: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "detect_input_lag_seconds",
                        "How late evidence reaches the correlator, by input: kernel (event time to the correlator: ring drain and attribution) or span (span end to receipt: the SDK's batch delay and export).",
                    )
                    .namespace(NS)
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0,
                    ]),
                    &["input"],
                )
                .expect("valid metric"),
            ),
            incidents: cv(
                "incidents_total",
                "Incidents detected, by class.",
                &["class"],
            ),
            incidents_open: gv(
                "incidents_open",
                "Incidents open now, by class.",
                &["class"],
            ),
            forward: ForwardMetrics {
                forwarded: c(
                    "otlp_forwarded_spans_total",
                    "Spans forwarded to the trace backend.",
                ),
                dropped: cv(
                    "otlp_forward_dropped_spans_total",
                    "Spans the forwarder dropped.",
                    &["reason"],
                ),
                errors: c(
                    "otlp_forward_errors_total",
                    "Failed export attempts to the trace backend.",
                ),
                queued: g(
                    "otlp_forward_queue_spans",
                    "Spans waiting in the forwarder's retry queue.",
                ),
            },
        };
        // Make every labelled series visible at zero from the start, so rates work at once.
        for class in Class::ALL {
            m.incidents.with_label_values(&[class.as_str()]);
            m.incidents_open.with_label_values(&[class.as_str()]);
        }
        for reason in ["store_full", "correlator_gone"] {
            m.spans_unenriched.with_label_values(&[reason]);
        }
        for t in ["grpc", "http"] {
            m.spans_received.with_label_values(&[t]);
        }
        for i in ["kernel", "span"] {
            m.input_lag.with_label_values(&[i]);
        }
        m
    }
}
