use std::{process::ExitCode, sync::Arc, time::Duration};

use agent::{
    attribution::CgroupCache,
    config::Config,
    export::{
        http::{self, AppState},
        metrics::Metrics,
    },
    probes::{Probes, events::KernelEvent, ring, watch},
};
use clap::Parser as _;
use tokio::sync::{Mutex, mpsc};

fn main() -> ExitCode {
    let cfg = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line that says what is missing; the chain is joined with ": ".
            eprintln!("kernelsight-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let mut probes = Probes::load(&cfg.probe_config())?;
    metrics.set_probe_status(probes.status());
    let (tx, mut rx) = mpsc::channel(65536);
    let mut owners = probes.take_owner_resolver()?;
    spawn_ring(
        "tcp",
        probes.take_tcp_ring()?,
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
        tx.clone(),
        metrics.ring("tcp"),
    );
    spawn_ring(
        "runq",
        probes.take_runq_ring()?,
        KernelEvent::decode_runq,
        tx,
        metrics.ring("runq"),
    );
    let probes = Arc::new(Mutex::new(probes));
    tokio::spawn(watch::keep_current(
        probes.clone(),
        cfg.selectors(),
        Duration::from_secs(1),
        metrics.runq_watched.clone(),
    ));
    let correlation = agent::correlator::start(&cfg.correlation, &metrics.registry).await?;
    let feed = correlation.feed.clone();
    let forwarding = cfg.correlation.otlp_forward.is_some();
    let ui = agent::export::ui::start(
        &cfg.ui,
        Some(probes.clone()),
        Some(&correlation),
        forwarding,
        metrics.clone(),
    )?;
    let timeline = ui.timeline.clone();
    let pipeline_metrics = metrics.clone();
    tokio::spawn(async move {
        let mut cgroups = CgroupCache::default();
        while let Some(mut ev) = rx.recv().await {
            if let KernelEvent::Runq(rec) = &mut ev {
                rec.cgroup_id = cgroups.get(rec.pid);
            }
            pipeline_metrics.observe(&ev);
            feed.push(&ev);
            timeline.observe(&ev);
        }
    });
    let state = Arc::new(AppState {
        metrics,
        probes: Some(probes),
        incidents: Some(correlation.board.clone()),
        ui: Some(ui),
    });
    let served = http::serve(cfg.http_addr, state, shutdown_signal()).await;
    // The kernel wakes the ring readers in batches; let them drain once more so that evidence
    // the kernel already recorded reaches the spans flushed below.
    tokio::time::sleep(2 * ring::DRAIN_EVERY).await;
    correlation.shutdown(Duration::from_secs(3)).await;
    served
}

fn spawn_ring(
    name: &'static str,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    decode: impl FnMut(&[u8]) -> Option<KernelEvent> + Send + 'static,
    tx: mpsc::Sender<KernelEvent>,
    stats: ring::RingStats,
) {
    tokio::spawn(async move {
        if let Err(e) = ring::run(ring, decode, tx, stats).await {
            tracing::error!(ring = name, error = %e, "ring reader stopped");
        }
    });
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
