use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clap::Parser;
use game_server::config::Config;

/// Records the first SIGTERM/SIGINT (the server's own handler, in `server::run`, acts on it).
async fn stop_signal(at: Arc<OnceLock<Instant>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = at.set(Instant::now());
}

fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("game-rt")
        .build()?;
    let grace = Duration::from_millis(cfg.shutdown_grace_ms);
    let result = rt.block_on(async {
        let telemetry = game_server::telemetry::init("game-server", cfg.log_format)?;
        // When the stop was asked for: the span flush gets what is left of the grace.
        let stop_asked = Arc::new(OnceLock::new());
        tokio::spawn(stop_signal(stop_asked.clone()));
        let r = game_server::server::run(cfg).await;
        let since = stop_asked.get().map_or(Duration::ZERO, Instant::elapsed);
        let left = grace.saturating_sub(since).max(Duration::from_millis(100));
        // The batch exporter blocks while flushing; keep it off the async workers.
        tokio::task::spawn_blocking(move || telemetry.shutdown(left)).await?;
        r
    });
    if let Err(e) = &result {
        eprintln!("game-server: {e:#}");
    }
    result
}
