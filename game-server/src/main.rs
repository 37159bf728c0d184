use clap::Parser;
use game_server::config::Config;

fn main() -> anyhow::Result<()> {
    let cfg = Config::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("game-rt")
        .build()?;
    let result = rt.block_on(async {
        let telemetry = game_server::telemetry::init("game-server", cfg.log_format)?;
        let r = game_server::server::run(cfg).await;
        // The batch exporter blocks while flushing; keep it off the async workers.
        tokio::task::spawn_blocking(move || telemetry.shutdown()).await?;
        r
    });
    if let Err(e) = &result {
        eprintln!("game-server: {e:#}");
    }
    result
}
