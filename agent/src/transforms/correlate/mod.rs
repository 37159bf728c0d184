//! Correlation: kernel evidence joined to OTLP spans, and detection run on what was joined.
//!
//! ```text
//! OTLP receivers ──── Intake ─────┐ bounded (spans)          ┌─► Outputs::spans (forwarder)
//!                                 ├─► Correlator task ───────┤
//! attributed kernel events ─ KernelFeed ┘ store → joins → detect └─► Outputs::incidents (board)
//! ```
//!
//! One task owns the span store, the evidence windows and the detector, so none of them needs a
//! lock. Everything it holds is bounded (spans in spans and bytes); when spans come faster than
//! it can hold them for the join, they are passed on unenriched and counted (`kernelsight_spans_unenriched_total`); the
//! sender is never blocked and never refused for it.
pub mod evidence;
pub mod join;
pub mod store;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{KeyValue, any_value::Value},
    trace::v1::ResourceSpans,
};
use tokio::sync::{mpsc, oneshot};

use self::{
    evidence::{Bounds, Evidence, Windows},
    join::{JoinConfig, apply_culprit, apply_runq, apply_tcp, join_runq, join_tcp},
    store::{Batch, SpanBudget, SpanStore},
};
use super::detect::{DetectConfig, Detector};
use crate::shared::{
    clock::Clock,
    culprit::{CulpritStep, CulpritWindow, WindowBounds, describe},
    event::{Identify, KernelEvent, PodLabels},
    evidence::{RunqEntry, TcpEntry},
    incident::{Class, Incident, IncidentOutput},
    netkey::{self, EphemeralPorts},
    origin::Origin,
    span::{
        SpanFacts, SpanIntake, SpanOutput, SpanRef, SpanSummary, heap_bytes, hex, kv_i, kv_s,
        span_count,
    },
    telemetry::CorrelationMetrics,
};

/// What the correlator is told at start.
#[derive(Clone, Debug)]
pub struct CorrelateConfig {
    pub join: JoinConfig,
    pub detect: DetectConfig,
    /// How long after a span ends the correlator waits for kernel evidence before joining.
    pub span_wait_ms: u64,
    /// Re-measure the monotonic → Unix clock offset this often.
    pub clock_resync: Duration,
}

/// Where the correlator's results go.
#[derive(Clone)]
pub struct Outputs {
    /// Every span (joined, or passed through unenriched) and every closed incident's own span;
    /// `None` without a trace backend.
    pub spans: Option<Arc<dyn SpanOutput>>,
    pub incidents: Arc<dyn IncidentOutput>,
}

// Evidence bounds. What sizes the memory is the entry bound (`Bounds::max_bytes`: ~5 MB for
// TCP, ~4 MB for run-queue waits, at most, together with their keys); the per-key rings and
// key counts only shape it. Before the entry bound, keys × per-key allowed ~35 MB and ~25 MB.
/// Connections with TCP evidence, the last 32 events each, for ten minutes, 16,384 events in
/// all: a session that was reset or retransmitting has its story in far fewer; longer
/// sessions are flagged `kernelsight.tcp.evidence_truncated`. A storm of resets on new
/// connections (one key each) turns the oldest keys over, counted as `key_cap`; 8,192
/// connections in trouble at once is four times the sessions a server here holds.
pub const TCP_BOUNDS: Bounds = Bounds {
    max_keys: 8192,
    per_key: 32,
    max_entries: 16384,
    retention_ns: 600_000_000_000,
};
/// Threads with run-queue waits, the last 128 each, for one minute (task spans arrive seconds
/// after they end, even through a batching SDK), 65,536 waits in all: 2,000 sessions' worth of
/// worker threads at a few slow wake-ups per second each.
pub const RUNQ_BOUNDS: Bounds = Bounds {
    max_keys: 8192,
    per_key: 128,
    max_entries: 65536,
    retention_ns: 60_000_000_000,
};
/// Culprits named per incident (the rest summed as "other").
const CULPRIT_TOP: usize = 5;
const CULPRIT_MARGIN_NS: u64 = 1_000_000_000;
/// Correlator tick: how often held spans are checked for readiness.
const TICK: Duration = Duration::from_millis(50);

/// A kernel event, converted to the agent's clock and evidence types at ingestion.
#[derive(Clone, Debug)]
pub enum Ingested {
    Runq {
        tid: u32,
        entry: RunqEntry,
    },
    Tcp(TcpEntry),
    /// One read of who ran while watched processes waited (attributed).
    Culprits(CulpritStep),
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
                netns: t.netns,
                owner_pid: t.owner.as_ref().map_or(0, |o| o.pid),
                owner_comm: t
                    .owner
                    .as_ref()
                    .map(|o| o.comm.as_str().into())
                    .unwrap_or_default(),
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
    pub fn new(tx: mpsc::Sender<Ingested>, clock: Clock, m: CorrelationMetrics) -> Self {
        Self { tx, clock, m }
    }

    pub fn push_culprits(&self, step: CulpritStep) {
        if self.tx.try_send(Ingested::Culprits(step)).is_err() {
            self.m.kernel_dropped.inc();
        }
    }

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
    /// Spans the correlator cannot take go straight on.
    pass_to: Option<Arc<dyn SpanOutput>>,
    m: CorrelationMetrics,
}

impl Intake {
    pub fn new(
        tx: mpsc::Sender<Batch>,
        budget: SpanBudget,
        pass_to: Option<Arc<dyn SpanOutput>>,
        m: CorrelationMetrics,
    ) -> Self {
        Self {
            tx,
            budget,
            pass_to,
            m,
        }
    }

    fn pass(&self, req: ExportTraceServiceRequest, n: usize, reason: &str) {
        self.m
            .spans_unenriched
            .with_label_values(&[reason])
            .inc_by(n as u64);
        if let Some(f) = &self.pass_to {
            f.push(req);
        }
    }

    pub fn budget(&self) -> &SpanBudget {
        &self.budget
    }
}

impl SpanIntake for Intake {
    fn submit(&self, req: ExportTraceServiceRequest, transport: &'static str) {
        let n = span_count(&req);
        if n == 0 {
            return;
        }
        self.m
            .spans_received
            .with_label_values(&[transport])
            .inc_by(n as u64);
        let bytes = heap_bytes(&req);
        if !self.budget.try_acquire(n, bytes) {
            return self.pass(req, n, "store_full");
        }
        let batch = Batch::new(req, n, bytes);
        if let Err(e) = self.tx.try_send(batch) {
            self.budget.release(n, bytes);
            let (reason, batch) = match e {
                mpsc::error::TrySendError::Full(b) => ("store_full", b),
                mpsc::error::TrySendError::Closed(b) => ("correlator_gone", b),
            };
            self.pass(batch.req, n, reason);
        }
    }
}

/// Asks the correlator task to join what it holds and close open incidents (shutdown).
#[derive(Clone)]
pub struct Drain(pub mpsc::Sender<oneshot::Sender<()>>);

impl Drain {
    /// Waits until the correlator has drained, or `deadline`.
    pub async fn drain(&self, deadline: tokio::time::Instant) {
        let (done, drained) = oneshot::channel();
        if self.0.send(done).await.is_ok() {
            let _ = tokio::time::timeout_at(deadline, drained).await;
        }
    }
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
    /// Pool name → the host pid of its last span (to name a pool incident's pod). Bounded by
    /// the detector's own bound on pools.
    pool_pids: HashMap<String, u32>,
    /// The agent's network namespace: that of spans that name neither a process nor an origin.
    own_netns: u64,
    /// Who ran while each watched process waited, per second (bounded).
    culprits: CulpritWindow,
    identify: Arc<dyn Identify>,
    out: Outputs,
    resource: Vec<KeyValue>,
    m: CorrelationMetrics,
    last_prune: Instant,
}

impl Correlator {
    pub fn new(
        cfg: &CorrelateConfig,
        clock: Clock,
        budget: SpanBudget,
        out: Outputs,
        identify: Arc<dyn Identify>,
        m: CorrelationMetrics,
    ) -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let o = clock.offset();
        m.clock_offset.set(o.offset_ns as f64 / 1e9);
        m.clock_uncertainty.set(o.uncertainty_ns as f64 / 1e9);
        Self {
            join: cfg.join.clone(),
            wait_ns: cfg.span_wait_ms * 1_000_000,
            store: SpanStore::new(budget),
            evidence: Evidence {
                runq: Windows::new(RUNQ_BOUNDS),
                tcp: Windows::new(TCP_BOUNDS),
            },
            detector: Detector::new(
                cfg.detect.clone(),
                EphemeralPorts::from_sysctl(),
                Clock::now_unix_ns(),
            ),
            runq_pids: HashMap::new(),
            pool_pids: HashMap::new(),
            own_netns: identify.netns(std::process::id()),
            culprits: CulpritWindow::new(WindowBounds::default()),
            identify,
            out,
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
        mut drain: mpsc::Receiver<oneshot::Sender<()>>,
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
        // Culprit steps are the sampler's once-a-second aggregates, not events: no lag to time.
        let ts = match &ev {
            Ingested::Runq { entry, .. } => Some(entry.end_ns),
            Ingested::Tcp(e) => Some(e.ts_ns),
            Ingested::Culprits(_) => None,
        };
        if let Some(ts) = ts {
            self.m
                .input_lag
                .with_label_values(&["kernel"])
                .observe(Clock::now_unix_ns().saturating_sub(ts) as f64 / 1e9);
        }
        match ev {
            Ingested::Runq { tid, entry } => {
                self.runq_pids.insert(entry.pid, entry.end_ns);
                self.detector.on_runq(tid, &entry);
                self.evidence.runq.push(tid, entry);
            }
            Ingested::Culprits(step) => {
                self.detector.on_watched(&step.watched);
                self.culprits.push(&step);
            }
            Ingested::Tcp(e) => {
                self.detector.on_tcp(&e);
                let key = netkey::Oriented {
                    local: e.local,
                    peer: e.peer,
                }
                .key();
                self.evidence.tcp.push((e.netns, key), e);
            }
        }
    }

    pub fn on_batch(&mut self, b: Batch) {
        // What a span says by itself reaches the detector now; the kernel joins wait.
        for rs in &b.req.resource_spans {
            let res: &[KeyValue] = rs
                .resource
                .as_ref()
                .map(|r| r.attributes.as_slice())
                .unwrap_or(&[]);
            for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                let f = SpanFacts::read(span, res);
                self.m
                    .input_lag
                    .with_label_values(&["span"])
                    .observe(b.received_unix_ns.saturating_sub(f.end_ns) as f64 / 1e9);
                self.detector.on_span_arrival(&f);
            }
        }
        self.store.push(b, self.wait_ns);
        while let Some(b) = self.store.pop_if_pressed() {
            self.m.spans_joined_early.inc_by(b.spans as u64);
            self.process(b);
        }
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
            let inc = self.with_pod(inc);
            tracing::warn!(incident = %inc.id, class = inc.class.as_str(), pod = inc.pod.as_ref().map(PodLabels::display), "{}", inc.summary);
            self.out.incidents.incident(inc);
        }
        for inc in ch.updated {
            let inc = self.with_pod(inc);
            self.out.incidents.incident(inc);
        }
        for inc in ch.closed {
            let inc = self.with_pod(inc);
            self.emit_closed(inc);
        }
        self.m.settle.set(self.detector.settle_ns() as f64 / 1e9);
        self.m
            .late_inputs
            .inc_by(std::mem::take(&mut self.detector.late));
    }

    /// Names the pod of an incident's subject: a process's, or the process a pool runs in; and
    /// for `cpu_contention`, who ran on the CPU while the process waited.
    fn with_pod(&self, inc: Incident) -> Incident {
        self.with_culprits(self.with_pod_only(inc))
    }

    /// The top culprits over the incident's time (one sample interval of margin before it,
    /// since a sample covers the second before its time stamp; and after, since the last
    /// bucket's sample may be newer than the bucket's end), in its evidence and summary.
    fn with_culprits(&self, mut inc: Incident) -> Incident {
        if inc.class != Class::CpuContention {
            return inc;
        }
        let Some(pid) = inc
            .subject
            .strip_prefix("pid:")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            return inc;
        };
        let top = self.culprits.top(
            pid,
            inc.start_unix_ns.saturating_sub(CULPRIT_MARGIN_NS),
            inc.end_unix_ns + CULPRIT_MARGIN_NS,
            CULPRIT_TOP,
        );
        if top.is_empty() {
            return inc;
        }
        let victim = self.identify.comm(pid);
        let waited_ms = inc.baseline.observed;
        inc.summary = format!(
            "{victim} waited {waited_ms:.0} ms/s for a CPU; during that time the CPU ran: {}. {}",
            describe(&top),
            inc.summary
        );
        inc.culprits = top;
        inc
    }

    fn with_pod_only(&self, mut inc: Incident) -> Incident {
        if inc.pod.is_none() {
            let pid = match inc.subject.split_once(':') {
                Some(("pid", p)) => p.parse().ok(),
                Some(("pool", name)) => self.pool_pids.get(name).copied(),
                _ => None,
            };
            inc.pod = pid.and_then(|p| self.identify.pod(p));
        }
        inc
    }

    fn emit_closed(&mut self, inc: Incident) {
        self.m
            .incidents_open
            .with_label_values(&[inc.class.as_str()])
            .dec();
        tracing::info!(incident = %inc.id, links = inc.links.len(), of = inc.links_total, "incident closed");
        if let Some(f) = &self.out.spans {
            f.push(ExportTraceServiceRequest {
                resource_spans: vec![inc.to_otlp(&self.resource)],
            });
        }
        self.out.incidents.incident(inc);
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
            bytes,
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
            // Where the ids of these spans are numbers (a pod's pid namespace, or ours).
            let origin = Origin::read(res);
            for ss in scope_spans.iter_mut() {
                for span in ss.spans.iter_mut() {
                    let mut facts = SpanFacts::read(span, res);
                    let r = SpanRef::of(span);
                    // Host terms, once, here: the joins and the detector compare like with like.
                    let pod = self.translate_ids(&mut facts, origin.as_ref());
                    if let Some(p) = &pod {
                        add_pod_attributes(span, p);
                    }
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
                            if let Some(pid) = facts.pid {
                                let top = self.culprits.top(
                                    pid,
                                    facts.start_ns.saturating_sub(CULPRIT_MARGIN_NS),
                                    facts.end_ns + CULPRIT_MARGIN_NS,
                                    1,
                                );
                                apply_culprit(span, &top);
                            }
                        }
                    }
                    // The span's side of a connection is in its process's network namespace;
                    // without a process, in ours if it names no origin (unknown otherwise).
                    let netns = match (facts.pid, &origin) {
                        (Some(pid), _) => self.identify.netns(pid),
                        (None, None) => self.own_netns,
                        (None, Some(_)) => 0,
                    };
                    let tcp = facts.conn.map(|c| {
                        join_tcp(
                            &self.evidence.tcp,
                            netns,
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
                        self.out.incidents.enriched_span(summary(span, &facts));
                    }
                    self.detector
                        .on_span(&facts, r, runq.as_ref(), tcp.as_ref(), received_unix_ns);
                }
            }
        }
        self.store.release(spans, bytes);
        if let Some(f) = &self.out.spans {
            f.push(req);
        }
    }

    /// Puts a span's `process.pid`/`thread.id` in host terms (a pod's are namespace-local);
    /// ids that cannot be are dropped from the facts (no join) and counted by reason. Returns
    /// the pod the span's process runs in, when it runs in one.
    fn translate_ids(
        &mut self,
        facts: &mut SpanFacts,
        origin: Option<&Origin>,
    ) -> Option<PodLabels> {
        let pid = facts.pid?;
        match self.identify.host_ids(origin, pid, facts.tid) {
            Ok((host_pid, host_tid)) => {
                facts.pid = Some(host_pid);
                facts.tid = host_tid;
                if let Some(pool) = &facts.pool {
                    self.pool_pids.insert(pool.clone(), host_pid);
                }
                origin.and_then(|_| self.identify.pod(host_pid))
            }
            Err(reason) => {
                // Host spans from a process we cannot see keep today's rule (the kernel's own
                // evidence for the tid decides, in is_linux_tid); a pod's ids never join
                // untranslated.
                self.m
                    .span_ids_unresolved
                    .with_label_values(&[reason])
                    .inc();
                if origin.is_some() || reason == "not_host_pid" {
                    facts.pid = None;
                    facts.tid = None;
                }
                None
            }
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
        pid.is_some_and(|pid| self.identify.is_thread(pid, tid))
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
            || k.starts_with("k8s.")
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

/// The `k8s.*` attributes of the pod the span's thread ran in, as the agent found it (from the
/// cgroup and the API: what the resource claims is not taken on trust).
fn add_pod_attributes(span: &mut opentelemetry_proto::tonic::trace::v1::Span, pod: &PodLabels) {
    for kv in pod.attributes() {
        if !span.attributes.iter().any(|a| a.key == kv.key) {
            span.attributes.push(kv);
        }
    }
}
