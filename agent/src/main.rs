use std::{process::ExitCode, sync::Arc};

use agent::{
    config::Config,
    export::{
        http::{self, AppState},
        metrics::Metrics,
    },
    probes::{Probes, ring},
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
    let (tx, mut rx) = mpsc::channel(65536);
    let tcp_ring = probes.take_tcp_ring()?;
    let ring_stats = metrics.ring.clone();
    tokio::spawn(async move {
        if let Err(e) = ring::run_tcp(tcp_ring, tx, ring_stats).await {
            tracing::error!(error = %e, "tcp ring reader stopped");
        }
    });
    let pipeline_metrics = metrics.clone();
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            pipeline_metrics.observe(&ev);
        }
    });
    let state = Arc::new(AppState { metrics, probes: Some(Arc::new(Mutex::new(probes))) });
    http::serve(cfg.http_addr, state, shutdown_signal()).await
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
