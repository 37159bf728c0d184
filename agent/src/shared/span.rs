//! What the correlator reads from an OTLP span, and helpers to write attributes and events.
//! Spans stay in their wire types (`opentelemetry-proto`) from receipt to forwarding: the agent
//! adds to them, it never rebuilds them.
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{Span, span::Event, status::StatusCode},
};

use super::netkey::{Endpoint, Oriented};

/// The value of `key`; when a key repeats, the last one wins (as the OpenTelemetry API's
/// `set_attribute` does). This matters: `tracing-opentelemetry` adds its own `thread.id` (a
/// Rust `ThreadId` counter) first, and a span's explicit `thread.id` field (the Linux tid)
/// comes after it.
pub fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .rev()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

pub fn attr_i64(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key)? {
        Value::IntValue(i) => Some(*i),
        Value::DoubleValue(d) if d.fract() == 0.0 => Some(*d as i64),
        Value::StringValue(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub fn attr_f64(attrs: &[KeyValue], key: &str) -> Option<f64> {
    match attr(attrs, key)? {
        Value::IntValue(i) => Some(*i as f64),
        Value::DoubleValue(d) => Some(*d),
        Value::StringValue(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key)? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

pub fn kv(key: &str, v: Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(v) }),
    }
}

pub fn kv_i(key: &str, v: i64) -> KeyValue {
    kv(key, Value::IntValue(v))
}

pub fn kv_f(key: &str, v: f64) -> KeyValue {
    kv(key, Value::DoubleValue(v))
}

pub fn kv_s(key: &str, v: impl Into<String>) -> KeyValue {
    kv(key, Value::StringValue(v.into()))
}

pub fn kv_b(key: &str, v: bool) -> KeyValue {
    kv(key, Value::BoolValue(v))
}

pub fn event(name: &str, time_unix_nano: u64, attributes: Vec<KeyValue>) -> Event {
    Event {
        time_unix_nano,
        name: name.to_owned(),
        attributes,
        dropped_attributes_count: 0,
    }
}

/// A span's identity, as used for links.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SpanRef {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
}

impl SpanRef {
    pub fn of(span: &Span) -> Option<Self> {
        Some(Self {
            trace_id: span.trace_id.as_slice().try_into().ok()?,
            span_id: span.span_id.as_slice().try_into().ok()?,
        })
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The facts the joins and detectors use, read once per span.
#[derive(Clone, Debug, Default)]
pub struct SpanFacts {
    pub name: String,
    pub service: String,
    pub start_ns: u64,
    pub end_ns: u64,
    /// `thread.id` and `process.pid` (span, else resource): the run-queue join key.
    pub tid: Option<u32>,
    pub pid: Option<u32>,
    pub thread_name: Option<String>,
    /// Pool task fields.
    pub pool: Option<String>,
    pub task_kind: Option<String>,
    pub queue_wait_ms: Option<f64>,
    pub outcome: Option<String>,
    /// The connection this span is about, seen from the span's side.
    pub conn: Option<Oriented>,
    pub session_id: Option<String>,
    /// Status ERROR, an `error.type`, or a task outcome that is an error or timeout.
    pub failed: bool,
    /// What a client span says about the service it called (OTel `server.address`,
    /// `server.port`, `peer.service`): names a dependency's address in an incident.
    pub server_address: Option<String>,
    pub server_port: Option<u16>,
    pub peer_service: Option<String>,
}

impl SpanFacts {
    pub fn read(span: &Span, resource: &[KeyValue]) -> Self {
        let a = &span.attributes;
        let u32_of = |key: &str| {
            attr_i64(a, key)
                .or_else(|| attr_i64(resource, key))
                .and_then(|v| u32::try_from(v).ok())
        };
        let endpoint = |addr: &str, port: &str| {
            let p = u16::try_from(attr_i64(a, port)?).ok()?;
            Endpoint::parse(attr_str(a, addr)?, p)
        };
        let transport_ok =
            attr_str(a, "network.transport").is_none_or(|t| t.eq_ignore_ascii_case("tcp"));
        let conn = match (
            endpoint("network.local.address", "network.local.port"),
            endpoint("network.peer.address", "network.peer.port"),
        ) {
            (Some(local), Some(peer)) if transport_ok => Some(Oriented { local, peer }),
            _ => None,
        };
        let outcome = attr_str(a, "task.outcome").map(str::to_owned);
        let bad_outcome = outcome.as_deref().is_some_and(|o| {
            let o = o.to_ascii_lowercase();
            [
                "error",
                "timeout",
                "timed_out",
                "timedout",
                "failed",
                "panicked",
                "cancelled",
                "rejected",
            ]
            .iter()
            .any(|b| o.contains(b))
        });
        let status_error = span
            .status
            .as_ref()
            .is_some_and(|s| s.code == StatusCode::Error as i32);
        Self {
            name: span.name.clone(),
            service: attr_str(resource, "service.name")
                .unwrap_or_default()
                .to_owned(),
            start_ns: span.start_time_unix_nano,
            end_ns: span.end_time_unix_nano.max(span.start_time_unix_nano),
            tid: u32_of("thread.id"),
            pid: u32_of("process.pid"),
            thread_name: attr_str(a, "thread.name").map(str::to_owned),
            pool: attr_str(a, "pool.name").map(str::to_owned),
            task_kind: attr_str(a, "task.kind").map(str::to_owned),
            queue_wait_ms: attr_f64(a, "pool.queue_wait_ms"),
            outcome,
            conn,
            session_id: attr_str(a, "session.id").map(str::to_owned),
            failed: status_error || bad_outcome || attr(a, "error.type").is_some(),
            server_address: attr_str(a, "server.address").map(str::to_owned),
            server_port: attr_i64(a, "server.port").and_then(|p| u16::try_from(p).ok()),
            peer_service: attr_str(a, "peer.service").map(str::to_owned),
        }
    }

    pub fn is_pool_task(&self) -> bool {
        self.name == "pool.task"
    }
}

/// A span the agent enriched, as shown beside the incidents that link to it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SpanSummary {
    pub trace_id: String,
    pub span_id: String,
    pub name: String,
    pub service: String,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// The join keys and everything the agent added (`kernelsight.*`).
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// The kernel events added as span events: (name, time).
    pub events: Vec<(String, u64)>,
}

/// Where a receiver hands each decoded export request. Never blocks the sender: when the agent
/// cannot keep up, spans go on unenriched (and counted), never back as an error.
pub trait SpanIntake: Send + Sync {
    fn submit(&self, req: ExportTraceServiceRequest, transport: &'static str);
}

/// Where spans go on to (joined, passed through, or an incident's own); never blocks.
pub trait SpanOutput: Send + Sync {
    fn push(&self, req: ExportTraceServiceRequest);
}

/// Spans in an export request.
pub fn span_count(req: &ExportTraceServiceRequest) -> usize {
    req.resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len())
        .sum()
}

/// Heap bytes a decoded request holds, approximately: the structs, the capacity of every
/// string, id and list, and [`ALLOC_OVERHEAD`] per allocation. Decoded spans take ~5× their
/// wire size (every attribute is a `KeyValue` with its own key and value allocations;
/// `tests/span_heap.rs` measures it), so memory is bounded by this, not by the encoded length.
/// Linear in the request, no allocation.
pub fn heap_bytes(req: &ExportTraceServiceRequest) -> usize {
    use opentelemetry_proto::tonic::{
        common::v1::InstrumentationScope,
        trace::v1::{ResourceSpans, ScopeSpans, span::Link},
    };
    fn buf(cap: usize) -> usize {
        if cap == 0 { 0 } else { cap + ALLOC_OVERHEAD }
    }
    fn list<T>(v: &[T], cap: usize, each: impl Fn(&T) -> usize) -> usize {
        buf(cap * size_of::<T>()) + v.iter().map(each).sum::<usize>()
    }
    fn value(v: &AnyValue) -> usize {
        match &v.value {
            Some(Value::StringValue(s)) => buf(s.capacity()),
            Some(Value::BytesValue(b)) => buf(b.capacity()),
            Some(Value::ArrayValue(a)) => list(&a.values, a.values.capacity(), value),
            Some(Value::KvlistValue(l)) => list(&l.values, l.values.capacity(), kv_heap),
            _ => 0,
        }
    }
    fn kv_heap(kv: &KeyValue) -> usize {
        // The `Option<AnyValue>` is inline in the KeyValue; only what it points to is extra.
        buf(kv.key.capacity()) + kv.value.as_ref().map_or(0, value)
    }
    fn attrs(a: &Vec<KeyValue>) -> usize {
        list(a, a.capacity(), kv_heap)
    }
    fn scope(s: &Option<InstrumentationScope>) -> usize {
        s.as_ref().map_or(0, |s| {
            buf(s.name.capacity()) + buf(s.version.capacity()) + attrs(&s.attributes)
        })
    }
    fn span(s: &Span) -> usize {
        buf(s.trace_id.capacity())
            + buf(s.span_id.capacity())
            + buf(s.parent_span_id.capacity())
            + buf(s.trace_state.capacity())
            + buf(s.name.capacity())
            + attrs(&s.attributes)
            + list(&s.events, s.events.capacity(), |e: &Event| {
                buf(e.name.capacity()) + attrs(&e.attributes)
            })
            + list(&s.links, s.links.capacity(), |l: &Link| {
                buf(l.trace_id.capacity())
                    + buf(l.span_id.capacity())
                    + buf(l.trace_state.capacity())
                    + attrs(&l.attributes)
            })
            + s.status.as_ref().map_or(0, |st| buf(st.message.capacity()))
    }
    let rs = &req.resource_spans;
    list(rs, rs.capacity(), |r: &ResourceSpans| {
        r.resource.as_ref().map_or(0, |r| attrs(&r.attributes))
            + buf(r.schema_url.capacity())
            + list(
                &r.scope_spans,
                r.scope_spans.capacity(),
                |ss: &ScopeSpans| {
                    scope(&ss.scope)
                        + buf(ss.schema_url.capacity())
                        + list(&ss.spans, ss.spans.capacity(), span)
                },
            )
    })
}

/// What glibc's malloc adds to each allocation (header and rounding to 16 bytes), on average.
pub const ALLOC_OVERHEAD: usize = 16;

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1::Status;

    use super::*;

    #[test]
    fn reads_task_and_connection_facts() {
        let span = Span {
            name: "pool.task".into(),
            start_time_unix_nano: 10,
            end_time_unix_nano: 20,
            attributes: vec![
                kv_i("thread.id", 4242),
                kv_s("pool.name", "db"),
                kv_s("task.kind", "save"),
                kv_f("pool.queue_wait_ms", 1.5),
                kv_s("task.outcome", "timeout"),
            ],
            ..Default::default()
        };
        let resource = vec![kv_i("process.pid", 4200), kv_s("service.name", "game")];
        let f = SpanFacts::read(&span, &resource);
        assert_eq!((f.tid, f.pid), (Some(4242), Some(4200)));
        // tracing-opentelemetry's own thread.id comes first; the explicit field wins.
        let mut dup = span.clone();
        dup.attributes.insert(0, kv_i("thread.id", 3));
        assert_eq!(SpanFacts::read(&dup, &resource).tid, Some(4242));
        assert!(f.is_pool_task() && f.failed);
        assert_eq!(f.queue_wait_ms, Some(1.5));
        assert_eq!(f.service, "game");
        assert!(f.conn.is_none());

        let span = Span {
            name: "ws.session".into(),
            attributes: vec![
                kv_s("network.peer.address", "::ffff:127.0.0.1"),
                kv_i("network.peer.port", 50000),
                kv_s("network.local.address", "127.0.0.1"),
                kv_s("network.local.port", "7000"),
                kv_s("network.transport", "tcp"),
            ],
            status: Some(Status {
                code: StatusCode::Ok as i32,
                message: String::new(),
            }),
            ..Default::default()
        };
        let f = SpanFacts::read(&span, &[]);
        let c = f.conn.unwrap();
        assert_eq!(c.peer.to_string(), "127.0.0.1:50000");
        assert_eq!(c.local.to_string(), "127.0.0.1:7000");
        assert!(!f.failed);
    }

    #[test]
    fn udp_spans_are_not_tcp_connections() {
        let span = Span {
            attributes: vec![
                kv_s("network.peer.address", "10.0.0.1"),
                kv_i("network.peer.port", 53),
                kv_s("network.local.address", "10.0.0.2"),
                kv_i("network.local.port", 40000),
                kv_s("network.transport", "udp"),
            ],
            ..Default::default()
        };
        assert!(SpanFacts::read(&span, &[]).conn.is_none());
    }
}
