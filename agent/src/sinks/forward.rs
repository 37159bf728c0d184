//! Forwarding spans (enriched, passed through, and incident spans) over OTLP/gRPC to a trace
//! backend, through a retry queue bounded in spans and in bytes: when the backend is slow or
//! down, the oldest queued spans are dropped and counted; the agent never blocks its receivers
//! on it.
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, trace_service_client::TraceServiceClient,
};
use tokio::sync::Notify;
use tonic::{Code, transport::Endpoint};

use crate::shared::{
    span::{SpanOutput, heap_bytes, span_count},
    telemetry::ForwardMetrics,
};

#[derive(Clone, Debug)]
pub struct ForwardConfig {
    /// `http://host:4317`.
    pub endpoint: String,
    /// Spans the retry queue holds before dropping the oldest.
    pub queue_spans: usize,
    /// Heap bytes (decoded size) the retry queue holds before dropping the oldest: spans vary
    /// in size far more than in number.
    pub queue_bytes: usize,
    /// Per-export deadline.
    pub timeout: Duration,
    /// Attempts per request before it is dropped (with backoff, ~30 s in all).
    pub max_attempts: u32,
}

struct Queue {
    /// (request, spans, heap bytes)
    items: VecDeque<(ExportTraceServiceRequest, usize, usize)>,
    spans: usize,
    bytes: usize,
}

struct Inner {
    q: Mutex<Queue>,
    /// Spans taken off the queue and not yet delivered or dropped.
    inflight: std::sync::atomic::AtomicUsize,
    notify: Notify,
    cap: usize,
    cap_bytes: usize,
    m: ForwardMetrics,
}

/// A handle to the forwarding task. Cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    inner: Arc<Inner>,
}

impl Forwarder {
    /// The forwarder's handle and its task, for the caller to spawn (the connection is made
    /// lazily, and re-made as needed).
    pub fn new(
        cfg: ForwardConfig,
        m: ForwardMetrics,
    ) -> anyhow::Result<(Self, impl Future<Output = ()> + Send + 'static)> {
        let endpoint = Endpoint::from_shared(cfg.endpoint.clone())
            .map_err(|e| anyhow::anyhow!("--otlp-forward {}: {e}", cfg.endpoint))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(cfg.timeout);
        let client = TraceServiceClient::new(endpoint.connect_lazy());
        let inner = Arc::new(Inner {
            q: Mutex::new(Queue {
                items: VecDeque::new(),
                spans: 0,
                bytes: 0,
            }),
            inflight: std::sync::atomic::AtomicUsize::new(0),
            notify: Notify::new(),
            cap: cfg.queue_spans.max(1),
            cap_bytes: cfg.queue_bytes.max(1),
            m,
        });
        Ok((
            Self {
                inner: inner.clone(),
            },
            run(inner, client, cfg),
        ))
    }

    pub fn queued_spans(&self) -> usize {
        self.inner.q.lock().expect("forward queue lock").spans
            + self
                .inner
                .inflight
                .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until everything queued has been delivered (or dropped), or `deadline`; true if
    /// nothing is left.
    pub async fn flush(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            if self.queued_spans() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl SpanOutput for Forwarder {
    /// Queues a request; never blocks. Drops the oldest queued spans if the queue is full.
    fn push(&self, req: ExportTraceServiceRequest) {
        let n = span_count(&req);
        if n == 0 {
            return;
        }
        let bytes = heap_bytes(&req);
        let mut q = self.inner.q.lock().expect("forward queue lock");
        if n > self.inner.cap || bytes > self.inner.cap_bytes {
            self.inner
                .m
                .dropped
                .with_label_values(&["queue_full"])
                .inc_by(n as u64);
            return;
        }
        while q.spans + n > self.inner.cap || q.bytes + bytes > self.inner.cap_bytes {
            let Some((_, old, old_bytes)) = q.items.pop_front() else {
                break;
            };
            q.spans -= old;
            q.bytes -= old_bytes;
            self.inner
                .m
                .dropped
                .with_label_values(&["queue_full"])
                .inc_by(old as u64);
        }
        q.items.push_back((req, n, bytes));
        q.spans += n;
        q.bytes += bytes;
        self.inner.m.queued.set(q.spans as i64);
        drop(q);
        self.inner.notify.notify_one();
    }
}

/// Per the OTLP spec, these codes are worth retrying; anything else is a permanent rejection.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unavailable
            | Code::DataLoss
            | Code::ResourceExhausted
            | Code::Unknown
    )
}

async fn run(
    inner: Arc<Inner>,
    mut client: TraceServiceClient<tonic::transport::Channel>,
    cfg: ForwardConfig,
) {
    loop {
        let next = {
            let mut q = inner.q.lock().expect("forward queue lock");
            let item = q.items.pop_front();
            if let Some((_, n, bytes)) = &item {
                q.spans -= n;
                q.bytes -= bytes;
                inner
                    .inflight
                    .store(*n, std::sync::atomic::Ordering::Release);
            }
            inner.m.queued.set(q.spans as i64);
            item
        };
        let Some((req, n, _)) = next else {
            inner.notify.notified().await;
            continue;
        };
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match client.export(req.clone()).await {
                Ok(_) => {
                    inner.m.forwarded.inc_by(n as u64);
                    break;
                }
                Err(status) => {
                    inner.m.errors.inc();
                    if !retryable(status.code()) {
                        tracing::warn!(code = ?status.code(), message = status.message(), "trace backend rejected spans");
                        inner
                            .m
                            .dropped
                            .with_label_values(&["rejected"])
                            .inc_by(n as u64);
                        break;
                    }
                    if attempt >= cfg.max_attempts {
                        tracing::warn!(code = ?status.code(), message = status.message(), "giving up on spans after {attempt} attempts");
                        inner
                            .m
                            .dropped
                            .with_label_values(&["retries_exhausted"])
                            .inc_by(n as u64);
                        break;
                    }
                    tracing::debug!(code = ?status.code(), "forwarding failed, retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        inner
            .inflight
            .store(0, std::sync::atomic::Ordering::Release);
    }
}
