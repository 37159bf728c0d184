//! build, run, test.
use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    setup::Env,
    util::{Proc, run as run_cmd, step},
};

pub fn build(env: &Env) -> Result<()> {
    run_cmd(
        env.cargo()
            .args(["build", "--release", "-p", "agent", "-p", "game-server"]),
    )
}

#[derive(Args)]
pub struct RunArgs {
    /// Game server listen address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub game_addr: String,
    /// Agent HTTP address (/metrics, /incidents, UI).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub agent_addr: String,
    /// Bot sessions that play while it runs (0: none).
    #[arg(long, default_value_t = 20)]
    pub bots: u32,
}

pub fn run(env: &Env, args: RunArgs) -> Result<()> {
    build(env)?;
    let bin = env.root.join("target/release");
    let data = env.root.join("target/run-data");
    std::fs::create_dir_all(&data)?;
    // A private Redis on a free loopback port, data (AOF) under target/run-data/redis, stopped
    // with the run.
    let redis = crate::redis::Redis::start(&data.join("redis"))?;
    // The agent first: its OTLP receiver (4317/4318) must be up before the server exports.
    let agent = Command::new(bin.join("kernelsight-agent"))
        .args(["--http-addr", &args.agent_addr, "--comm", "game-server"])
        // The page's task lane (arrivals, queue depth) reads the pool's metrics from the server.
        .args(["--pool-metrics-url", &format!("http://{}/metrics", args.game_addr)])
        .spawn()
        .context("starting kernelsight-agent")?;
    let mut agent = Proc(agent);
    std::thread::sleep(Duration::from_secs(2));
    if let Some(status) = agent.0.try_wait()? {
        bail!("kernelsight-agent exited ({status}); it needs root or CAP_BPF + CAP_PERFMON");
    }
    let server = Command::new(bin.join("game-server"))
        .args(["--listen", &args.game_addr, "--dev", "--data-dir"])
        .arg(&data)
        .args(["--redis-addr", &redis.addr.to_string()])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        .env("OTEL_BSP_SCHEDULE_DELAY", "1000")
        .spawn()
        .context("starting game-server")?;
    let _server = Proc(server);
    let _bots = if args.bots > 0 {
        std::thread::sleep(Duration::from_secs(1));
        let bots = Command::new(bin.join("bots"))
            .args(["--url", &format!("ws://{}/ws", args.game_addr)])
            .args([
                "--sessions",
                &args.bots.to_string(),
                "--rooms",
                "4",
                "--rate",
                "10",
            ])
            .args(["--duration", "86400"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting bots")?;
        Some(Proc(bots))
    } else {
        None
    };
    step(format!(
        "game server: ws://{}/ws   metrics http://{}/metrics",
        args.game_addr, args.game_addr
    ));
    step(format!(
        "redis:       {} (private, stopped with the run)",
        redis.addr
    ));
    step(format!(
        "agent:       http://{}/   (incidents, timeline)  metrics http://{}/metrics",
        args.agent_addr, args.agent_addr
    ));
    step(format!(
        "bots:        {} sessions; try `curl -XPOST -d '{{\"kind\":\"full_sync\",\"tasks\":3000}}' -H 'content-type: application/json' http://{}/admin/batch` for a task surge",
        args.bots, args.game_addr
    ));
    step("press Ctrl-C to stop");
    // The agent is the part that needs privileges; if it exits, say so and stop.
    let status = agent.0.wait()?;
    bail!("kernelsight-agent exited ({status})")
}

#[derive(Args)]
pub struct TestArgs {
    /// Extra arguments for `cargo test` (after `--`).
    #[arg(last = true)]
    pub rest: Vec<String>,
}

/// The house style CI holds every change to: rustfmt.toml's formatting, and the workspace lints
/// with every warning an error. agent-ebpf is built for the BPF target only (agent/build.rs).
pub fn lint(env: &Env) -> Result<()> {
    step("checking formatting and lints");
    run_cmd(env.cargo().args(["fmt", "--all", "--check"]))?;
    run_cmd(env.cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "agent-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
}

pub fn test(env: &Env, args: TestArgs) -> Result<()> {
    lint(env)?;
    // The scenario tests run the release binaries: debug builds of server, agent and bots
    // together saturate two cores, which is itself real CPU contention the agent reports.
    build(env)?;
    step("running the test suite");
    // --no-fail-fast: one failing test binary must not hide the results of the others.
    let tests = run_cmd(
        env.cargo()
            .args([
                "test",
                "--workspace",
                "--exclude",
                "agent-ebpf",
                "--no-fail-fast",
            ])
            .args(&args.rest),
    );
    if !args.rest.is_empty() {
        step("kernel matrix skipped: cargo test arguments were given");
        return tests;
    }
    // The host kernel is covered above; the kernels users' nodes run, each in a qemu guest.
    step("running the kernel matrix (5.10, 6.1, 6.12 under qemu)");
    let kernels = crate::kernels::run(env, crate::kernels::KernelsArgs::ci());
    match (tests, kernels) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(t), Ok(())) => Err(t),
        (Ok(()), Err(k)) => Err(k),
        (Err(t), Err(k)) => bail!("{t:#}\n{k:#}"),
    }
}
