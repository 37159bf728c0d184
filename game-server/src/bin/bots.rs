//! Load generator for the game server; `bots bench` runs the reproducible benchmark.

use clap::{Parser, Subcommand};
use game_server::bots::{bench, load};

#[derive(Parser)]
#[command(name = "bots", about = "Game server load generator and benchmark")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    load: load::LoadOpts,
}

#[derive(Subcommand)]
enum Cmd {
    /// Spawn the server, sweep session counts, print the benchmark table.
    Bench(bench::BenchOpts),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Cmd::Bench(bench::BenchOpts {
        bots_cpu: Some(cpu),
        ..
    })) = &cli.cmd
    {
        bench::pin_to_cpu(*cpu)?;
    }
    // On one CPU (pinned, or a 1-CPU machine) a current-thread runtime: no work stealing and
    // no cross-thread wake-ups, which is what lets one core drive the most sessions.
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let rt = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("bots")
            .build()?
    };
    rt.block_on(async move {
        match cli.cmd {
            Some(Cmd::Bench(o)) if !o.idle.is_empty() => {
                let rows = bench::run_idle(o.clone()).await?;
                if o.json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    bench::print_idle_table(&rows);
                }
            }
            Some(Cmd::Bench(o)) => {
                let rows = bench::run(o.clone()).await?;
                if o.json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    bench::print_table(&rows, &o);
                }
            }
            None => {
                let json = cli.load.json;
                let s = load::run(cli.load, None).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&s)?);
                } else {
                    load::print_report(&s);
                }
            }
        }
        Ok(())
    })
}
