//! Correlation: kernel evidence joined to OTLP spans, then detection, then export.
//!
//! ```text
//! receiver (gRPC 4317, HTTP 4318) ─ Intake ─┐ bounded (spans)          ┌─► Forwarder (OTLP/gRPC, bounded retry queue)
//!                                           ├─► Correlator task ───────┤
//! pipeline (kernel events) ─── KernelFeed ──┘   store → joins → detect └─► Board (/incidents, last N)
//! ```
//!
//! One task owns the span store, the evidence windows and the detector, so none of them needs a
//! lock. Everything it holds is bounded; when spans come faster than it can hold them for the
//! join, they are passed on unenriched and counted (`kernelsight_spans_unenriched_total`); the
//! sender is never blocked and never refused for it.
pub mod clock;
pub mod evidence;
pub mod join;
pub mod metrics;
pub mod netkey;
pub mod span;
pub mod store;

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{KeyValue, any_value::Value},
    trace::v1::ResourceSpans,
};
use prometheus::Registry;
use tokio::sync::mpsc;

use self::{
    clock::Clock,
    evidence::{Bounds, Evidence, RunqEntry, TcpEntry, Windows},
    join::{JoinConfig, apply_runq, apply_tcp, join_runq, join_tcp},
    metrics::CorrelationMetrics,
    netkey::EphemeralPorts,
    span::{SpanFacts, SpanRef, hex, kv_i, kv_s},
    store::{Batch, SpanBudget, SpanStore},
};
use crate::{
    detect::{DetectConfig, Detector, incident::Incident},
    export::{
        incidents::{Board, SharedBoard, SpanSummary},
        otlp::{ForwardConfig, Forwarder, span_count},
    },
    probes::events::KernelEvent,
    receiver,
};

/// Command-line options of the correlation half (flattened into the agent's [`Config`]).
///
/// [`Config`]: crate::config::Config
#[derive(Clone, Debug, clap::Args)]
pub struct CorrelationArgs {
    /// OTLP/gRPC trace receiver address.
    #[arg(
        long,
        env = "KERNELSIGHT_OTLP_GRPC_ADDR",
        default_value = "127.0.0.1:4317"
    )]
    pub otlp_grpc_addr: SocketAddr,

    /// OTLP/HTTP trace receiver address (POST /v1/traces, protobuf or JSON).
    #[arg(
        long,
        env = "KERNELSIGHT_OTLP_HTTP_ADDR",
        default_value = "127.0.0.1:4318"
    )]
    pub otlp_http_addr: SocketAddr,

    /// Forward spans (enriched, passed-through and incident spans) to this OTLP/gRPC endpoint,
    /// e.g. http://jaeger:4317. Without it the agent keeps the last incidents and enriched spans
    /// in memory for /incidents.
    #[arg(long, env = "KERNELSIGHT_OTLP_FORWARD")]
    pub otlp_forward: Option<String>,

    /// Spans the forwarder's retry queue holds before it drops the oldest.
    #[arg(long, env = "KERNELSIGHT_FORWARD_QUEUE_SPANS", default_value_t = 65536)]
    pub forward_queue_spans: usize,

    /// Spans held for joining at most (queued plus waiting); beyond it spans pass unenriched.
    #[arg(long, env = "KERNELSIGHT_SPAN_STORE_CAP", default_value_t = 65536)]
    pub span_store_cap: usize,

    /// How long after a span ends the agent waits for kernel evidence before joining (also the
    /// tail of a connection span's window).
    #[arg(long, env = "KERNELSIGHT_SPAN_WAIT_MS", default_value_t = 1000)]
    pub span_wait_ms: u64,

    /// Largest OTLP request accepted, in bytes.
    #[arg(long, env = "KERNELSIGHT_OTLP_MAX_REQUEST_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub otlp_max_request_bytes: usize,

    /// Re-measure the monotonic → Unix clock offset this often (seconds).
    #[arg(long, env = "KERNELSIGHT_CLOCK_RESYNC_SECS", default_value_t = 10)]
    pub clock_resync_secs: u64,

    /// Run-queue waits at least this long (µs) become span events on the task spans.
    #[arg(long, env = "KERNELSIGHT_SLOW_WAKEUP_US", default_value_t = 1000)]
    pub slow_wakeup_us: u64,

    /// Incidents kept for /incidents.
    #[arg(long, env = "KERNELSIGHT_INCIDENTS_KEEP", default_value_t = 200)]
    pub incidents_keep: usize,

    /// Enriched spans kept in memory for /incidents.
    #[arg(long, env = "KERNELSIGHT_ENRICHED_SPANS_KEEP", default_value_t = 1000)]
    pub enriched_spans_keep: usize,

    /// Span links per incident span (the rest are counted).
    #[arg(long, env = "KERNELSIGHT_INCIDENT_MAX_LINKS", default_value_t = 32)]
    pub incident_max_links: usize,

    /// connection_fault: fewest connections reset toward one endpoint in a second.
    #[arg(long, env = "KERNELSIGHT_FAULT_MIN_RESETS", default_value_t = 5.0)]
    pub fault_min_resets: f64,

    /// task_surge: fewest task arrivals per second in a pool.
    #[arg(long, env = "KERNELSIGHT_SURGE_MIN_RATE", default_value_t = 20.0)]
    pub surge_min_rate: f64,

    /// cpu_contention: least run-queue delay (ms per second) in a process.
    #[arg(long, env = "KERNELSIGHT_CONTENTION_MIN_MS", default_value_t = 50.0)]
    pub contention_min_ms: f64,
}

impl CorrelationArgs {
    pub fn join_config(&self) -> JoinConfig {
        JoinConfig {
            conn_tail_ns: self.span_wait_ms * 1_000_000,
            slow_wakeup_ns: self.slow_wakeup_us * 1_000,
            ..JoinConfig::default()
        }
    }

    pub fn detect_config(&self) -> DetectConfig {
        DetectConfig {
            // Joined spans reach the detector `span_wait` after they end; half a second more
            // covers the ring-buffer latency and the correlator's tick.
            settle_min_ns: (self.span_wait_ms + 500) * 1_000_000,
            max_links: self.incident_max_links,
            fault_min_resets: self.fault_min_resets,
            surge_min_rate: self.surge_min_rate,
            contention_min_ms: self.contention_min_ms,
            ..DetectConfig::default()
        }
    }
}

// Evidence bounds. A TCP entry is ~64 bytes and a run-queue entry 24: these cap evidence at
// ~35 MB and ~25 MB in the worst case.
/// Connections with TCP evidence, the last 32 events each, for ten minutes: a session that
/// was reset or retransmitting has its story in far fewer; longer sessions are flagged
/// `kernelsight.tcp.evidence_truncated`.
const TCP_BOUNDS: Bounds = Bounds {
    max_keys: 16384,
    per_key: 32,
    retention_ns: 600_000_000_000,
};
/// Threads with run-queue waits, the last 128 each, for one minute (task spans arrive seconds
/// after they end, even through a batching SDK).
const RUNQ_BOUNDS: Bounds = Bounds {
    max_keys: 8192,
    per_key: 128,
    retention_ns: 60_000_000_000,
};
/// (pid, tid) verdicts cached between /proc checks; cleared when full (a thread's answer
/// does not change while it lives, and re-checking is one stat).
const TID_CACHE: usize = 65536;
/// Correlator tick: how often held spans are checked for readiness.
const TICK: Duration = Duration::from_millis(50);

/// A kernel event, converted to the agent's clock and evidence types at ingestion.
#[derive(Clone, Debug)]
pub enum Ingested {
    Runq { tid: u32, entry: RunqEntry },
    Tcp(TcpEntry),
}

impl Ingested {
    pub fn from_kernel(ev: &KernelEvent, clock: &Clock) -> Self {
        match ev {
            KernelEvent::Runq(r) => Self::Runq {
                tid: r.tid,
                entry: RunqEntry {
                    end_ns: clock.to_unix_ns(r.ts_ns),
                    delay_ns: r.delay_ns,
                    pid: r.pid,
                    cpu: r.cpu,
                },
            },
            KernelEvent::Tcp(t) => Self::Tcp(TcpEntry {
                ts_ns: clock.to_unix_ns(t.ts_ns),
                kind: t.kind,
                local: t.local.into(),
                peer: t.remote.into(),
                segs: t.segs,
                state: t.state,
            }),
        }
    }
}

/// Feeds kernel events to the correlator; never blocks (a full channel is counted).
#[derive(Clone)]
pub struct KernelFeed {
    tx: mpsc::Sender<Ingested>,
    clock: Clock,
    m: CorrelationMetrics,
}

impl KernelFeed {
    pub fn push(&self, ev: &KernelEvent) {
        if self
            .tx
            .try_send(Ingested::from_kernel(ev, &self.clock))
            .is_err()
        {
            self.m.kernel_dropped.inc();
        }
    }
}

/// Where receivers hand span batches; never blocks the sender.
#[derive(Clone)]
pub struct Intake {
    tx: mpsc::Sender<Batch>,
    budget: SpanBudget,
    fwd: Option<Forwarder>,
    m: CorrelationMetrics,
}

impl Intake {
    pub fn submit(&self, req: ExportTraceServiceRequest, transport: &str) {
        let n = span_count(&req);
        if n == 0 {
            return;
        }
        self.m
            .spans_received
            .with_label_values(&[transport])
            .inc_by(n as u64);
        if !self.budget.try_acquire(n) {
            return self.pass(req, n, "store_full");
        }
        let batch = Batch::new(req, n);
        if let Err(e) = self.tx.try_send(batch) {
            self.budget.release(n);
            let (reason, batch) = match e {
                mpsc::error::TrySendError::Full(b) => ("store_full", b),
                mpsc::error::TrySendError::Closed(b) => ("correlator_gone", b),
            };
            self.pass(batch.req, n, reason);
        }
    }

    fn pass(&self, req: ExportTraceServiceRequest, n: usize, reason: &str) {
        self.m
            .spans_unenriched
            .with_label_values(&[reason])
            .inc_by(n as u64);
        if let Some(f) = &self.fwd {
            f.push(req);
        }
    }

    pub fn budget(&self) -> &SpanBudget {
        &self.budget
    }

    pub fn metrics(&self) -> &CorrelationMetrics {
        &self.m
    }
}

/// Handles for the rest of the agent.
pub struct Correlation {
    pub feed: KernelFeed,
    pub board: SharedBoard,
    pub intake: Intake,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    drain: mpsc::Sender<tokio::sync::oneshot::Sender<()>>,
    fwd: Option<Forwarder>,
}

impl Correlation {
    /// Clean shutdown: joins what is held now (with the evidence there is), closes open
    /// incidents, and gives the forwarder up to `grace` to deliver everything queued.
    pub async fn shutdown(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        let (done, drained) = tokio::sync::oneshot::channel();
        if self.drain.send(done).await.is_ok() {
            let _ = tokio::time::timeout_at(deadline, drained).await;
        }
        if let Some(f) = &self.fwd
            && !f.flush(deadline).await
        {
            tracing::warn!(
                spans = f.queued_spans(),
                "shutting down with spans not yet forwarded"
            );
        }
    }
}

/// Binds the receivers, starts the forwarder (if configured) and the correlator task.
pub async fn start(args: &CorrelationArgs, registry: &Registry) -> anyhow::Result<Correlation> {
    let m = CorrelationMetrics::new(registry);
    let clock = Clock::new();
    let fwd = match &args.otlp_forward {
        Some(endpoint) => Some(Forwarder::start(
            ForwardConfig {
                endpoint: endpoint.clone(),
                queue_spans: args.forward_queue_spans,
                timeout: Duration::from_secs(10),
                max_attempts: 10,
            },
            m.forward.clone(),
        )?),
        None => None,
    };
    let board = Board::shared(args.incidents_keep, args.enriched_spans_keep);
    let budget = SpanBudget::new(args.span_store_cap, m.clone());
    // The budget bounds what the channel holds in spans; the channel's own bound only limits
    // requests (a request can be one span).
    let (span_tx, span_rx) = mpsc::channel(args.span_store_cap.clamp(1, 65536));
    let (kernel_tx, kernel_rx) = mpsc::channel(65536);
    let intake = Intake {
        tx: span_tx,
        budget: budget.clone(),
        fwd: fwd.clone(),
        m: m.clone(),
    };
    let (grpc_addr, http_addr) = receiver::start(args, intake.clone()).await?;
    let intake_fwd = fwd.clone();
    let correlator = Correlator::new(args, clock.clone(), budget, fwd, board.clone(), m.clone());
    let (drain_tx, drain_rx) = mpsc::channel(1);
    tokio::spawn(correlator.run(
        span_rx,
        kernel_rx,
        drain_rx,
        Duration::from_secs(args.clock_resync_secs.max(1)),
    ));
    Ok(Correlation {
        feed: KernelFeed {
            tx: kernel_tx,
            clock,
            m,
        },
        board,
        intake,
        grpc_addr,
        http_addr,
        drain: drain_tx,
        fwd: intake_fwd,
    })
}

/// The state the correlator task owns.
pub struct Correlator {
    clock: Clock,
    join: JoinConfig,
    wait_ns: u64,
    store: SpanStore,
    evidence: Evidence,
    detector: Detector,
    /// Processes with run-queue evidence, and when last seen: their threads' spans get
    /// run-queue attributes even when zero (zero is then a measurement, not an absence).
    runq_pids: HashMap<u32, u64>,
    /// (pid, tid) → is that a thread of that process (see `is_linux_tid`).
    tid_cache: HashMap<(u32, u32), bool>,
    fwd: Option<Forwarder>,
    board: SharedBoard,
    resource: Vec<KeyValue>,
    m: CorrelationMetrics,
    last_prune: Instant,
}

impl Correlator {
    pub fn new(
        args: &CorrelationArgs,
        clock: Clock,
        budget: SpanBudget,
        fwd: Option<Forwarder>,
        board: SharedBoard,
        m: CorrelationMetrics,
    ) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let o = clock.offset();
        m.clock_offset.set(o.offset_ns as f64 / 1e9);
        m.clock_uncertainty.set(o.uncertainty_ns as f64 / 1e9);
        Self {
            join: args.join_config(),
            wait_ns: args.span_wait_ms * 1_000_000,
            store: SpanStore::new(budget),
            evidence: Evidence {
                runq: Windows::new(RUNQ_BOUNDS),
                tcp: Windows::new(TCP_BOUNDS),
            },
            detector: Detector::new(
                args.detect_config(),
                EphemeralPorts::from_sysctl(),
                Clock::now_unix_ns(),
            ),
            runq_pids: HashMap::new(),
            tid_cache: HashMap::new(),
            fwd,
            board,
            resource: vec![
                kv_s("service.name", "kernelsight-agent"),
                kv_s("host.name", host.trim()),
                kv_i("process.pid", i64::from(std::process::id())),
            ],
            m,
            clock,
            last_prune: Instant::now(),
        }
    }

    pub async fn run(
        mut self,
        mut spans: mpsc::Receiver<Batch>,
        mut kernel: mpsc::Receiver<Ingested>,
        mut drain: mpsc::Receiver<tokio::sync::oneshot::Sender<()>>,
        resync: Duration,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // A stepped wall clock is caught within one period; between steps the offset drifts
        // by nanoseconds per second at most (NTP slews both clocks alike).
        let mut resync_tick = tokio::time::interval(resync);
        resync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(ev) = kernel.recv() => self.on_kernel(ev),
                Some(b) = spans.recv() => self.on_batch(b),
                _ = tick.tick() => self.on_tick(Instant::now(), Clock::now_unix_ns()),
                Some(done) = drain.recv() => {
                    // Take in what the receivers already accepted, then let go of everything.
                    while let Ok(ev) = kernel.try_recv() {
                        self.on_kernel(ev);
                    }
                    while let Ok(b) = spans.try_recv() {
                        self.on_batch(b);
                    }
                    self.drain();
                    let _ = done.send(());
                }
                _ = resync_tick.tick() => {
                    let o = self.clock.remeasure();
                    self.m.clock_offset.set(o.offset_ns as f64 / 1e9);
                    self.m.clock_uncertainty.set(o.uncertainty_ns as f64 / 1e9);
                }
            }
        }
    }

    pub fn on_kernel(&mut self, ev: Ingested) {
        match ev {
            Ingested::Runq { tid, entry } => {
                self.runq_pids.insert(entry.pid, entry.end_ns);
                self.detector.on_runq(tid, &entry);
                self.evidence.runq.push(tid, entry);
            }
            Ingested::Tcp(e) => {
                self.detector.on_tcp(&e);
                self.evidence.tcp.push(
                    netkey::Oriented {
                        local: e.local,
                        peer: e.peer,
                    }
                    .key(),
                    e,
                );
            }
        }
    }

    pub fn on_batch(&mut self, b: Batch) {
        self.store.push(b, self.wait_ns);
    }

    pub fn on_tick(&mut self, now: Instant, now_unix: u64) {
        while let Some(b) = self.store.pop_ready(now) {
            self.process(b);
        }
        if now.duration_since(self.last_prune) >= Duration::from_secs(1) {
            self.last_prune = now;
            self.prune(now_unix);
        }
        let ch = self.detector.tick(now_unix);
        for inc in ch.opened {
            self.m
                .incidents
                .with_label_values(&[inc.class.as_str()])
                .inc();
            self.m
                .incidents_open
                .with_label_values(&[inc.class.as_str()])
                .inc();
            tracing::warn!(incident = %inc.id, class = inc.class.as_str(), "{}", inc.summary);
            self.board.lock().expect("board lock").upsert(inc);
        }
        for inc in ch.updated {
            self.board.lock().expect("board lock").upsert(inc);
        }
        for inc in ch.closed {
            self.emit_closed(inc);
        }
        self.m.settle.set(self.detector.settle_ns() as f64 / 1e9);
        self.m
            .late_inputs
            .inc_by(std::mem::take(&mut self.detector.late));
    }

    fn emit_closed(&mut self, inc: Incident) {
        self.m
            .incidents_open
            .with_label_values(&[inc.class.as_str()])
            .dec();
        tracing::info!(incident = %inc.id, links = inc.links.len(), of = inc.links_total, "incident closed");
        if let Some(f) = &self.fwd {
            f.push(ExportTraceServiceRequest {
                resource_spans: vec![inc.to_otlp(&self.resource)],
            });
        }
        self.board.lock().expect("board lock").upsert(inc);
    }

    /// Closes every open incident and hands everything held on (shutdown).
    pub fn drain(&mut self) {
        while let Some(b) = self.store.pop_any() {
            self.process(b);
        }
        for inc in self.detector.close_all() {
            self.emit_closed(inc);
        }
    }

    fn prune(&mut self, now_unix: u64) {
        self.evidence.runq.prune(now_unix);
        self.evidence.tcp.prune(now_unix);
        let horizon = now_unix.saturating_sub(RUNQ_BOUNDS.retention_ns);
        self.runq_pids.retain(|_, &mut seen| seen >= horizon);
        for (kind, w) in [
            ("runq", self.evidence.runq.take_evictions()),
            ("tcp", self.evidence.tcp.take_evictions()),
        ] {
            for (reason, n) in [
                ("ring_full", w.ring_full),
                ("key_cap", w.key_cap),
                ("expired", w.expired),
            ] {
                self.m
                    .evidence_evicted
                    .with_label_values(&[kind, reason])
                    .inc_by(n);
            }
        }
        self.m
            .evidence_keys
            .with_label_values(&["runq"])
            .set(self.evidence.runq.len() as i64);
        self.m
            .evidence_keys
            .with_label_values(&["tcp"])
            .set(self.evidence.tcp.len() as i64);
    }

    /// Joins, annotates, feeds the detector and hands the batch on.
    fn process(&mut self, b: Batch) {
        let Batch {
            mut req,
            spans,
            received_unix_ns,
            ..
        } = b;
        for rs in &mut req.resource_spans {
            let ResourceSpans {
                resource,
                scope_spans,
                ..
            } = rs;
            let res: &[KeyValue] = resource
                .as_ref()
                .map(|r| r.attributes.as_slice())
                .unwrap_or(&[]);
            for ss in scope_spans.iter_mut() {
                for span in ss.spans.iter_mut() {
                    let facts = SpanFacts::read(span, res);
                    let r = SpanRef::of(span);
                    let tid = facts.tid.filter(|&t| self.is_linux_tid(facts.pid, t));
                    let runq = tid.map(|tid| {
                        join_runq(
                            &self.evidence.runq,
                            tid,
                            facts.start_ns,
                            facts.end_ns,
                            &self.join,
                        )
                    });
                    let runq = runq.filter(|j| {
                        j.count > 0 || facts.pid.is_some_and(|p| self.runq_pids.contains_key(&p))
                    });
                    if let Some(j) = &runq {
                        apply_runq(span, j, &self.join);
                        if j.count > 0 {
                            self.m.spans_joined.with_label_values(&["runq"]).inc();
                        }
                    }
                    let tcp = facts.conn.map(|c| {
                        join_tcp(
                            &self.evidence.tcp,
                            c,
                            facts.start_ns,
                            facts.end_ns,
                            &self.join,
                        )
                    });
                    if let Some(j) = &tcp {
                        apply_tcp(span, j, &self.join);
                        if !j.hits.is_empty() {
                            self.m.spans_joined.with_label_values(&["tcp"]).inc();
                        }
                    }
                    let evidence = runq.as_ref().is_some_and(|j| j.count > 0)
                        || tcp.as_ref().is_some_and(|j| !j.hits.is_empty());
                    if evidence {
                        self.board
                            .lock()
                            .expect("board lock")
                            .record_span(summary(span, &facts));
                    }
                    self.detector
                        .on_span(&facts, r, runq.as_ref(), tcp.as_ref(), received_unix_ns);
                }
            }
        }
        self.store.release(spans);
        if let Some(f) = &self.fwd {
            f.push(req);
        }
    }

    /// Whether a span's `thread.id` really is a Linux thread of its `process.pid`. Libraries
    /// put other numbers there (tracing-opentelemetry: a Rust `ThreadId` counter), and joining
    /// on one of those would attach another thread's delays, or a "measured" zero. The kernel's
    /// own evidence decides when it names the thread; otherwise /proc does (cached, bounded).
    /// Without a pid only evidence the kernel reported for that tid is trusted.
    fn is_linux_tid(&mut self, pid: Option<u32>, tid: u32) -> bool {
        let seen: Option<bool> = self
            .evidence
            .runq
            .get(&tid)
            .and_then(|w| w.items().last())
            .map(|e| pid.is_none_or(|p| e.pid == p));
        if let Some(ok) = seen {
            return ok;
        }
        let Some(pid) = pid else { return false };
        if self.tid_cache.len() >= TID_CACHE {
            self.tid_cache.clear();
        }
        *self
            .tid_cache
            .entry((pid, tid))
            .or_insert_with(|| std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists())
    }

    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    pub fn held_spans(&self) -> usize {
        self.store.len_spans()
    }
}

fn summary(span: &opentelemetry_proto::tonic::trace::v1::Span, f: &SpanFacts) -> SpanSummary {
    let keep = |k: &str| {
        k.starts_with("kernelsight.")
            || k.starts_with("network.")
            || k.starts_with("thread.")
            || k.starts_with("pool.")
            || k.starts_with("task.")
            || k == "session.id"
    };
    let attributes = span
        .attributes
        .iter()
        .filter(|kv| keep(&kv.key))
        .filter_map(|kv| {
            let v = match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => serde_json::Value::from(s.clone()),
                Value::IntValue(i) => serde_json::Value::from(*i),
                Value::DoubleValue(d) => serde_json::Value::from(*d),
                Value::BoolValue(b) => serde_json::Value::from(*b),
                _ => return None,
            };
            Some((kv.key.clone(), v))
        })
        .collect();
    SpanSummary {
        trace_id: hex(&span.trace_id),
        span_id: hex(&span.span_id),
        name: span.name.clone(),
        service: f.service.clone(),
        start_unix_ns: span.start_time_unix_nano,
        end_unix_ns: span.end_time_unix_nano,
        attributes,
        events: span
            .events
            .iter()
            .filter(|e| e.name.starts_with("kernelsight."))
            .map(|e| (e.name.clone(), e.time_unix_nano))
            .collect(),
    }
}
