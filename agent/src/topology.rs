//! The one place that builds the pipeline: it creates every channel between the stages, spawns
//! every task, and orders shutdown. The stages know only the handles they are given (see
//! `lib.rs` for the picture).
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use crate::{
    config::Config,
    http::{self, AppState, ui::Page},
    shared::{
        clock::Clock,
        culprit::CulpritStep,
        event::{Identify, KernelEvent, KernelMaps},
        netkey::EphemeralPorts,
        span::{SpanIntake, SpanOutput},
        telemetry::{CorrelationMetrics, RingStats},
    },
    sinks::{board::Board, forward::Forwarder, prometheus::Metrics, timeline::Timeline},
    sources::{
        kernel::{Probes, ring, watch},
        otlp::{self, Listeners},
        pool::Scraper,
        sampler::Sampler,
    },
    transforms::{
        attribution::Attribution,
        correlate::{
            Correlator, Drain, Ingested, Intake, KernelFeed, Outputs,
            store::{SpanBudget, StoreCap},
        },
        pod,
    },
};

/// Bytes of events each kernel-event channel holds at most (ring readers → attribution, and
/// the fan-out → correlator): several ring-fulls (the rings are 256 KiB by default), enough for
/// the scheduling jitter between stages; a full channel drops and counts
/// (`kernelsight_pipeline_dropped_total`, `kernelsight_correlator_kernel_events_dropped_total`).
/// Sized in slots, 65,536 of each could hold ~16 MB during a burst.
pub const CHANNEL_BYTES: usize = 1 << 20;
/// How often freed heap is handed back to the OS.
const HEAP_TRIM_EVERY: Duration = Duration::from_secs(5);
/// How long shutdown waits for the correlator to drain and the forwarder to deliver.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Runs the agent until `shutdown` resolves, then shuts down in order: the listener stops, the
/// correlator joins what it holds and closes open incidents, and the forwarder delivers.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Sources first: a missing privilege or kernel feature is reported before anything binds.
    let mut probes = Probes::load(&cfg.probe_config())?;
    let (tcp_ring, runq_ring) = (probes.take_tcp_ring()?, probes.take_runq_ring()?);
    let mut owners = probes.take_owner_resolver()?;
    let probe_status = probes.status().to_vec();
    let probes = Arc::new(Mutex::new(probes));
    let kernel: Arc<dyn KernelMaps> = probes.clone();
    // Pods of this node from the API (or, without one, from cgroup paths alone: one log line).
    let pods = pod::k8s::start(&cfg.k8s).await;
    let attribution = Arc::new(Attribution::with_pods(pods));
    let identify: Arc<dyn Identify> = attribution.clone();

    let metrics = Metrics::new().reading(Some(kernel.clone()), identify.clone());
    let cm = CorrelationMetrics::new(&metrics.registry);
    metrics.set_probe_status(&probe_status);
    let metrics = Arc::new(metrics);

    // kernel rings → attribution → (prometheus, correlate, timeline)
    let (kernel_tx, mut kernel_rx) =
        mpsc::channel::<KernelEvent>(CHANNEL_BYTES / size_of::<KernelEvent>());
    spawn_ring(
        "tcp",
        tcp_ring,
        move |bytes| {
            let mut ev = KernelEvent::decode_tcp(bytes)?;
            if let KernelEvent::Tcp(rec) = &mut ev
                && rec.owner.is_none()
                && rec.sock_ino != 0
            {
                // Rare (sockets older than the agent) and bounded, but may walk /proc.
                tokio::task::block_in_place(|| owners.resolve(rec));
            }
            Some(ev)
        },
        kernel_tx.clone(),
        metrics.ring("tcp"),
    );
    spawn_ring(
        "runq",
        runq_ring,
        KernelEvent::decode_runq,
        kernel_tx,
        metrics.ring("runq"),
    );
    tokio::spawn(watch::keep_current(
        probes,
        cfg.selectors(),
        Duration::from_secs(1),
        metrics.runq_watched.clone(),
    ));

    // Sinks the correlator writes to.
    let args = &cfg.correlation;
    let forwarder = match args.forward_config() {
        Some(fc) => {
            let (f, task) = Forwarder::new(fc, cm.forward.clone())?;
            tokio::spawn(task);
            Some(f)
        }
        None => None,
    };
    let spans_out = forwarder
        .clone()
        .map(|f| Arc::new(f) as Arc<dyn SpanOutput>);
    let board = Board::shared(args.incidents_keep, args.enriched_spans_keep);

    // OTLP receivers → intake → correlator (joins, detect) → forwarder, board
    let clock = Clock::new();
    let budget = SpanBudget::new(
        StoreCap {
            spans: args.span_store_cap,
            bytes: args.span_store_bytes,
        },
        cm.clone(),
    );
    // The budget bounds what the channel holds in spans; the channel's own bound only limits
    // requests (a request can be one span).
    let (span_tx, span_rx) = mpsc::channel(args.span_store_cap.clamp(1, 65536));
    let (feed_tx, feed_rx) = mpsc::channel(CHANNEL_BYTES / size_of::<Ingested>());
    let (drain_tx, drain_rx) = mpsc::channel(1);
    let intake: Arc<dyn SpanIntake> = Arc::new(Intake::new(
        span_tx,
        budget.clone(),
        spans_out.clone(),
        cm.clone(),
    ));
    let listeners = Listeners::bind(args.otlp_grpc_addr, args.otlp_http_addr).await?;
    let otlp_addrs = listeners.addrs()?;
    let max = args.otlp_max_request_bytes;
    let (grpc_intake, rejected) = (intake.clone(), cm.requests_rejected.clone());
    tokio::spawn(async move {
        if let Err(e) = otlp::grpc::serve(listeners.grpc, grpc_intake, max).await {
            tracing::error!(error = %e, "OTLP/gRPC receiver stopped");
        }
    });
    tokio::spawn(async move {
        if let Err(e) = otlp::http::serve(listeners.http, intake, rejected, max).await {
            tracing::error!(error = %e, "OTLP/HTTP receiver stopped");
        }
    });
    let correlate = args.correlate_config();
    let correlator = Correlator::new(
        &correlate,
        clock.clone(),
        budget,
        Outputs {
            spans: spans_out,
            incidents: board.clone(),
        },
        identify,
        cm.clone(),
    );
    tokio::spawn(correlator.run(span_rx, feed_rx, drain_rx, correlate.clock_resync));
    let feed = KernelFeed::new(feed_tx, clock, cm.clone());

    // The page: sampler → timeline.
    cfg.ui.validate()?;
    let timeline = Arc::new(Timeline::new(
        cfg.ui.timeline_seconds,
        EphemeralPorts::from_sysctl(),
    ));
    let (second_tx, second_rx) = mpsc::channel(4);
    let (culprit_tx, mut culprit_rx) = mpsc::channel::<CulpritStep>(4);
    let sampler = Sampler {
        kernel: Some(kernel),
        spans: Some(cm),
        watched: metrics.runq_watched.clone(),
        pool: cfg.ui.pool_url()?.map(Scraper::new),
        culprits: Some(culprit_tx),
    };
    tokio::spawn(sampler.run(second_tx));
    let t = timeline.clone();
    tokio::spawn(async move { t.run(second_rx).await });

    // Culprits, once a second: attributed (named from /proc), then to metrics and correlate.
    let (m, a, f) = (metrics.clone(), attribution.clone(), feed.clone());
    tokio::spawn(async move {
        while let Some(mut step) = culprit_rx.recv().await {
            a.apply_culprits(&mut step);
            m.observe_culprits(&step);
            f.push_culprits(step);
        }
    });

    // The fan-out: every kernel event, attributed, to each stage that takes it.
    let (m, t) = (metrics.clone(), timeline.clone());
    tokio::spawn(async move {
        while let Some(mut ev) = kernel_rx.recv().await {
            attribution.apply(&mut ev);
            m.observe(&ev);
            feed.push(&ev);
            t.observe(&ev);
        }
    });

    let heap = prometheus::IntGaugeVec::new(
        prometheus::Opts::new(
            "heap_bytes",
            "The agent's malloc heap after the last trim (glibc mallinfo2): in_use is live data, free is held by the allocator (fragmentation).",
        )
        .namespace(crate::shared::telemetry::NS),
        &["state"],
    )
    .expect("valid metric");
    metrics
        .registry
        .register(Box::new(heap.clone()))
        .expect("unique metric");
    tokio::spawn(release_freed_heap(HEAP_TRIM_EVERY, heap));

    let state = Arc::new(AppState {
        metrics,
        probes_loaded: true,
        incidents: Some(board),
        ui: Some(Page {
            timeline,
            trace_url_template: cfg.ui.trace_url_template.clone(),
            pool_metrics_url: cfg.ui.pool_metrics_url.clone(),
            started: Instant::now(),
            otlp: Some(otlp_addrs),
            forwarding: forwarder.is_some(),
        }),
    });
    let served = http::serve(cfg.http_addr, state, shutdown).await;
    // The kernel wakes the ring readers in batches; let them drain once more so that evidence
    // the kernel already recorded reaches the spans joined below.
    tokio::time::sleep(2 * ring::DRAIN_EVERY).await;

    // Shutdown: join what is held (with the evidence there is), close open incidents, and
    // give the forwarder what is left of the grace to deliver everything queued.
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    Drain(drain_tx).drain(deadline).await;
    if let Some(f) = &forwarder
        && !f.flush(deadline).await
    {
        tracing::warn!(
            spans = f.queued_spans(),
            "shutting down with spans not yet forwarded"
        );
    }
    served
}

/// glibc keeps what a burst freed (in the arena of whichever thread allocated it, where the
/// heap top cannot shrink past live blocks) instead of handing it back, so without this the
/// agent's RSS after a burst is its high-water mark, not what it holds. `malloc_trim` returns
/// the free pages of every arena; on a heap of tens of MB it takes well under a millisecond.
/// What is left is reported (`kernelsight_heap_bytes{state}`): live data against what the
/// allocator holds free, to tell what the agent keeps from fragmentation.
async fn release_freed_heap(every: Duration, heap: prometheus::IntGaugeVec) {
    let mut t = tokio::time::interval(every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        t.tick().await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim and mallinfo2 have no preconditions.
        unsafe {
            libc::malloc_trim(0);
            let mi = libc::mallinfo2();
            // uordblks: in use (arena); hblkhd: in use (mmapped); fordblks: free in the arena.
            heap.with_label_values(&["in_use"])
                .set((mi.uordblks + mi.hblkhd) as i64);
            heap.with_label_values(&["free"]).set(mi.fordblks as i64);
        }
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        let _ = &heap;
    }
}

fn spawn_ring(
    name: &'static str,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    decode: impl FnMut(&[u8]) -> Option<KernelEvent> + Send + 'static,
    tx: mpsc::Sender<KernelEvent>,
    stats: RingStats,
) {
    tokio::spawn(async move {
        if let Err(e) = ring::run(ring, decode, tx, stats).await {
            tracing::error!(ring = name, error = %e, "ring reader stopped");
        }
    });
}
