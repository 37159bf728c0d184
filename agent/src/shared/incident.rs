//! An incident, as listed at /incidents and as a span of its own trace.
use opentelemetry_proto::tonic::{
    common::v1::{InstrumentationScope, KeyValue},
    resource::v1::Resource,
    trace::v1::{
        ResourceSpans, ScopeSpans, Span, Status, span::Link, span::SpanKind, status::StatusCode,
    },
};
use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    clock::Clock,
    culprit::CulpritShare,
    event::PodLabels,
    span::{SpanRef, SpanSummary, hex, kv_b, kv_f, kv_i, kv_s},
};

/// Where correlate hands what it found: incidents as they open, grow and close, and the spans
/// that got kernel evidence (the incident board implements it).
pub trait IncidentOutput: Send + Sync {
    /// Adds an incident or replaces the one with the same id.
    fn incident(&self, inc: Incident);
    fn enriched_span(&self, s: SpanSummary);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    TaskSurge,
    ConnectionFault,
    CpuContention,
}

impl Class {
    pub const ALL: [Class; 3] = [
        Class::TaskSurge,
        Class::ConnectionFault,
        Class::CpuContention,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Class::TaskSurge => "task_surge",
            Class::ConnectionFault => "connection_fault",
            Class::CpuContention => "cpu_contention",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    Open,
    Closed,
}

/// What a value was compared with: reported with every incident.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub observed: f64,
    pub mean: f64,
    pub stddev: f64,
    pub threshold: f64,
    pub samples: u64,
    pub anomalous: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct LinkRef {
    pub trace_id: String,
    pub span_id: String,
    /// How much this span was hurt (the ordering key when links are capped).
    pub weight: f64,
    #[serde(skip)]
    pub r: SpanRef,
}

#[derive(Clone, Debug, Serialize)]
pub struct Incident {
    /// `<class>-<n>`, unique within one agent run.
    pub id: String,
    pub class: Class,
    /// `pool:<name>`, `pid:<pid>` or `ep:<address:port>`.
    pub subject: String,
    pub state: IncidentState,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// Anomalous buckets so far.
    pub buckets: u32,
    pub summary: String,
    /// The worst bucket's value against the baseline it beat.
    pub baseline: Verdict,
    pub evidence: serde_json::Value,
    /// The incident span's identity (its own trace).
    pub trace_id: String,
    pub span_id: String,
    pub links: Vec<LinkRef>,
    /// Spans that matched, linked or not.
    pub links_total: usize,
    /// The pod the subject runs in, when known (a process's or a pool's pod).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodLabels>,
    /// `cpu_contention`: who ran on the CPU while the subject waited, largest first (the
    /// rest as one `other` entry, pid 0).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub culprits: Vec<CulpritShare>,
    /// Attributes under their own (OTel semantic-convention or `kernelsight.*`) names, set
    /// verbatim on the incident span and listed as they are: `server.address`, `server.port`,
    /// `peer.service`, `kernelsight.fault.kind`, `kernelsight.culprit.pid`, ...
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, serde_json::Value>,
    /// When the detector raised it (Unix ns), and whether from a bucket not yet settled
    /// (`early`: kernel evidence and spans so far already beat the threshold) or a settled one.
    pub raised_unix_ns: u64,
    pub raised_by: &'static str,
}

fn random_id<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // An id is not a secret: if the OS cannot give randomness, time and a counter are unique
    // enough for one agent.
    if getrandom::fill(&mut b).is_err() || b.iter().all(|&x| x == 0) {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let t = Clock::now_unix_ns()
            ^ SEQ
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .rotate_left(32);
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> ((i % 8) * 8)) as u8 ^ (i as u8).wrapping_mul(0x9d);
        }
    }
    b
}

/// `kernelsight.culprit.*` for the top culprit of a `cpu_contention` incident.
pub fn culprit_attributes(c: &CulpritShare) -> Vec<KeyValue> {
    let mut v = vec![
        kv_i("kernelsight.culprit.pid", i64::from(c.id.pid)),
        kv_s("kernelsight.culprit.comm", c.id.comm.clone()),
        kv_s("kernelsight.culprit.cgroup", c.id.cgroup.clone()),
        kv_f("kernelsight.culprit.share", c.share),
    ];
    if !c.id.pod_name.is_empty() {
        v.push(kv_s(
            "kernelsight.culprit.k8s.pod.name",
            c.id.pod_name.clone(),
        ));
        v.push(kv_s(
            "kernelsight.culprit.k8s.namespace.name",
            c.id.pod_namespace.clone(),
        ));
    }
    v
}

impl Incident {
    #[expect(
        clippy::too_many_arguments,
        reason = "an incident's fields, named at its one construction site in detect"
    )]
    pub fn new(
        n: u64,
        class: Class,
        subject: String,
        start_unix_ns: u64,
        end_unix_ns: u64,
        summary: String,
        baseline: Verdict,
        evidence: serde_json::Value,
    ) -> Self {
        Self {
            id: format!("{}-{n}", class.as_str()),
            class,
            subject,
            state: IncidentState::Open,
            start_unix_ns,
            end_unix_ns,
            buckets: 1,
            summary,
            baseline,
            evidence,
            trace_id: hex(&random_id::<16>()),
            span_id: hex(&random_id::<8>()),
            links: Vec::new(),
            links_total: 0,
            pod: None,
            culprits: Vec::new(),
            attributes: BTreeMap::new(),
            raised_unix_ns: 0,
            raised_by: "settled",
        }
    }

    /// The incident as a span of its own trace, linked to the spans it affected.
    pub fn to_otlp(&self, resource: &[KeyValue]) -> ResourceSpans {
        let unhex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .filter_map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
                .collect()
        };
        let mut attributes = vec![
            kv_s("kernelsight.incident.id", &self.id),
            kv_s("kernelsight.incident.class", self.class.as_str()),
            kv_s("kernelsight.incident.subject", &self.subject),
            kv_s("kernelsight.incident.summary", &self.summary),
            kv_f("kernelsight.incident.observed", self.baseline.observed),
            kv_f("kernelsight.incident.baseline.mean", self.baseline.mean),
            kv_f("kernelsight.incident.baseline.stddev", self.baseline.stddev),
            kv_f(
                "kernelsight.incident.baseline.threshold",
                self.baseline.threshold,
            ),
            kv_i(
                "kernelsight.incident.baseline.samples",
                self.baseline.samples as i64,
            ),
            kv_i("kernelsight.incident.buckets", i64::from(self.buckets)),
            kv_i("kernelsight.incident.links_total", self.links_total as i64),
            kv_i(
                "kernelsight.incident.links_dropped",
                self.links_total.saturating_sub(self.links.len()) as i64,
            ),
            kv_s("kernelsight.incident.evidence", self.evidence.to_string()),
        ];
        attributes.extend(self.pod.iter().flat_map(PodLabels::attributes));
        if let Some(c) = self
            .culprits
            .iter()
            .find(|c| c.id.pid != 0 && !c.own_threads)
        {
            attributes.extend(culprit_attributes(c));
        }
        for (k, v) in &self.attributes {
            match v {
                serde_json::Value::String(s) => attributes.push(kv_s(k, s.clone())),
                serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => {
                    attributes.push(kv_i(k, n.as_i64().unwrap_or(i64::MAX)))
                }
                serde_json::Value::Number(n) => attributes.push(kv_f(k, n.as_f64().unwrap_or(0.0))),
                serde_json::Value::Bool(b) => attributes.push(kv_b(k, *b)),
                _ => attributes.push(kv_s(k, v.to_string())),
            }
        }
        if let Some(o) = self.evidence.as_object() {
            for (k, v) in o {
                match v {
                    serde_json::Value::String(s) => {
                        attributes.push(kv_s(&format!("kernelsight.incident.{k}"), s.clone()))
                    }
                    serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => {
                        attributes.push(kv_i(
                            &format!("kernelsight.incident.{k}"),
                            n.as_i64().unwrap_or(i64::MAX),
                        ))
                    }
                    serde_json::Value::Number(n) => attributes.push(kv_f(
                        &format!("kernelsight.incident.{k}"),
                        n.as_f64().unwrap_or(0.0),
                    )),
                    _ => {}
                }
            }
        }
        let span = Span {
            trace_id: unhex(&self.trace_id),
            span_id: unhex(&self.span_id),
            name: format!("kernelsight.incident.{}", self.class.as_str()),
            kind: SpanKind::Internal as i32,
            start_time_unix_nano: self.start_unix_ns,
            end_time_unix_nano: self.end_unix_ns,
            attributes,
            links: self
                .links
                .iter()
                .map(|l| Link {
                    trace_id: l.r.trace_id.to_vec(),
                    span_id: l.r.span_id.to_vec(),
                    attributes: vec![kv_f("kernelsight.link.weight", l.weight)],
                    ..Default::default()
                })
                .collect(),
            dropped_links_count: self.links_total.saturating_sub(self.links.len()) as u32,
            status: Some(Status {
                code: StatusCode::Error as i32,
                message: self.summary.clone(),
            }),
            ..Default::default()
        };
        ResourceSpans {
            resource: Some(Resource {
                attributes: resource.to_vec(),
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "kernelsight.detect".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: vec![span],
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }
    }
}
