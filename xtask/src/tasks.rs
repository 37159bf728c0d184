//! build, run, test.
use std::{process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{
    setup::Env,
    util::{Proc, run as run_cmd, step, stop_on_signals, stop_requested},
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
    /// The agent's OTLP/gRPC receiver.
    #[arg(long, default_value = "127.0.0.1:4317")]
    pub otlp_grpc_addr: String,
    /// The agent's OTLP/HTTP receiver (the game server exports here).
    #[arg(long, default_value = "127.0.0.1:4318")]
    pub otlp_http_addr: String,
    /// Bot sessions that play while it runs (0: none).
    #[arg(long, default_value_t = 20)]
    pub bots: u32,
}

pub fn run(env: &Env, args: RunArgs) -> Result<()> {
    build(env)?;
    // From here on a signal stops the children before xtask exits (the build above is in our
    // process group and stops with the terminal's Ctrl-C by itself).
    stop_on_signals();
    let bin = env.root.join("target/release");
    let data = env.root.join("target/run-data");
    std::fs::create_dir_all(&data)?;
    // A private Redis on a free loopback port, data (AOF) under target/run-data/redis, stopped
    // with the run.
    let redis = crate::redis::Redis::start(&data.join("redis"))?;
    // The agent first: its OTLP receiver (4317/4318) must be up before the server exports.
    let mut agent = Proc::spawn(
        Command::new(bin.join("kernelsight-agent"))
            .args(["--http-addr", &args.agent_addr, "--comm", "game-server"])
            .args(["--otlp-grpc-addr", &args.otlp_grpc_addr])
            .args(["--otlp-http-addr", &args.otlp_http_addr])
        // The page's task lane (arrivals, queue depth) reads the pool's metrics from the server.
            .args(["--pool-metrics-url", &format!("http://{}/metrics", args.game_addr)]),
    )
    .context("starting kernelsight-agent")?;
    std::thread::sleep(Duration::from_secs(2));
    if let Some(status) = agent.0.try_wait()? {
        bail!("kernelsight-agent exited ({status}); it needs root or CAP_BPF + CAP_PERFMON");
    }
    let _server = Proc::spawn(
        Command::new(bin.join("game-server"))
            .args(["--listen", &args.game_addr, "--dev", "--data-dir"])
            .arg(&data)
            .args(["--redis-addr", &redis.addr.to_string()])
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://{}", args.otlp_http_addr),
            )
            .env("OTEL_BSP_SCHEDULE_DELAY", "1000"),
    )
    .context("starting game-server")?;
    let _bots = if args.bots > 0 {
        std::thread::sleep(Duration::from_secs(1));
        let bots = Proc::spawn(
            Command::new(bin.join("bots"))
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
                .stdout(std::process::Stdio::null()),
        )
        .context("starting bots")?;
        Some(bots)
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
    loop {
        if let Some(sig) = stop_requested() {
            // Dropping the guards stops bots, then the server (it flushes its spans to the
            // agent), then the agent (it detaches its programs).
            step(format!(
                "signal {sig}: stopping bots, game server and agent"
            ));
            return Ok(());
        }
        // The agent is the part that needs privileges; if it exits, say so and stop.
        if let Some(status) = agent.0.try_wait()? {
            bail!("kernelsight-agent exited ({status})")
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[derive(Args)]
pub struct TestArgs {
    /// Seconds each fuzz target runs on its corpus after the tests (0: skip the fuzz smoke).
    #[arg(long, default_value_t = 15)]
    pub fuzz_seconds: u32,
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
    // Where a CI run's time goes, printed at the end (CI keeps a cold run under 30 minutes).
    let mut phases = Phases::default();
    phases.mark("setup", env.started, 0.0);
    lint(env)?;
    phases.lap("fmt + clippy");
    // The scenario tests run the release binaries: debug builds of server, agent and bots
    // together saturate two cores, which is itself real CPU contention the agent reports.
    build(env)?;
    phases.lap("release build");
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
    phases.lap("cargo test (build + run)");
    let kernels = if args.rest.is_empty() {
        // The host kernel is covered above; the kernels users' nodes run, each in a qemu guest.
        step("running the kernel matrix (5.10, 6.1, 6.12 under qemu)");
        crate::kernels::run(env, crate::kernels::KernelsArgs::ci())
    } else {
        step("kernel matrix skipped: cargo test arguments were given");
        Ok(())
    };
    phases.lap("kernel matrix");
    // The fuzz smoke runs even when a test failed: its result is independent.
    let fuzz = fuzz_smoke(env, args.fuzz_seconds);
    phases.lap("fuzz smoke (build + run)");
    phases.print();
    let failed: Vec<String> = [tests, kernels, fuzz]
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{}", failed.join("\n"))
    }
}

/// Wall-clock and CPU time (of the children that ended: compilers, tests) per phase of
/// `test`. The CPU column says what a phase costs on a quiet machine when the wall clock was
/// taken on a busy one.
#[derive(Default)]
struct Phases {
    last: Option<(std::time::Instant, f64)>,
    rows: Vec<(&'static str, f64, f64)>,
}

impl Phases {
    fn children_cpu() -> f64 {
        let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes a full rusage into the pointer it is given.
        let ru = unsafe {
            libc::getrusage(libc::RUSAGE_CHILDREN, ru.as_mut_ptr());
            ru.assume_init()
        };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(ru.ru_utime) + secs(ru.ru_stime)
    }

    fn mark(&mut self, name: &'static str, since: std::time::Instant, cpu_since: f64) {
        let now = std::time::Instant::now();
        let cpu = Self::children_cpu();
        self.rows
            .push((name, (now - since).as_secs_f64(), cpu - cpu_since));
        self.last = Some((now, cpu));
    }

    fn lap(&mut self, name: &'static str) {
        let (since, cpu) = self
            .last
            .unwrap_or_else(|| (std::time::Instant::now(), Self::children_cpu()));
        self.mark(name, since, cpu);
    }

    fn print(&self) {
        let mut table = String::from("phase | wall s | CPU s\n---|---:|---:\n");
        let (mut wall, mut cpu) = (0.0, 0.0);
        for (name, w, c) in &self.rows {
            table.push_str(&format!("{name} | {w:.0} | {c:.0}\n"));
            wall += w;
            cpu += c;
        }
        table.push_str(&format!("total | {wall:.0} | {cpu:.0}"));
        step(format!("time per phase:\n{table}"));
    }
}

/// Every fuzz target for a short while on its committed corpus (fuzz/README.md has the long
/// campaigns). All targets build in one cargo invocation; without a sanitizer (safe Rust: ASan
/// would halve the speed and find nothing a panic or overflow check does not), with debug
/// assertions. New inputs go to a scratch copy under fuzz/target, never into the repository.
pub fn fuzz_smoke(env: &Env, seconds: u32) -> Result<()> {
    if seconds == 0 {
        return Ok(());
    }
    let fuzz = env.root.join("fuzz");
    let cargo_fuzz = |args: &[&str]| {
        // rustup's `cargo` proxy (not $CARGO, which is this toolchain's cargo and takes no
        // `+nightly`): libFuzzer's instrumentation needs nightly.
        let mut c = Command::new("cargo");
        c.current_dir(&fuzz)
            .env("PATH", env.path())
            .args([&format!("+{}", crate::setup::NIGHTLY), "fuzz"])
            .args(args);
        c
    };
    // A dev build (opt-level 0, assertions and overflow checks on, as in the campaigns'
    // release profile): it costs less than half the CPU of the optimised one, the largest
    // part of this smoke on a cold CI machine, and ~15 s per target still runs thousands of
    // inputs. The long campaigns (fuzz/README.md) use `cargo fuzz run`, optimised.
    run_cmd(&mut cargo_fuzz(&["build", "--dev", "-s", "none", "-a"]))?;
    let list = crate::util::output(&mut cargo_fuzz(&["list"])).context("cargo fuzz list")?;
    // The built binaries directly: `cargo fuzz run` would re-check the build once per target.
    // One target per core at a time (each is one single-threaded process); each one's output
    // goes to a log of its own, shown in full only when it fails.
    let bins = fuzz.join("target/x86_64-unknown-linux-gnu/debug");
    let logs = fuzz.join("target/smoke-logs");
    std::fs::create_dir_all(&logs)?;
    let targets: Vec<String> = list.split_whitespace().map(str::to_owned).collect();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    let one = |target: &str| -> Result<String> {
        let scratch = fuzz.join("target/smoke-corpus").join(target);
        let artifacts = fuzz.join("artifacts").join(target);
        std::fs::create_dir_all(&scratch)?;
        std::fs::create_dir_all(&artifacts)?;
        let seeds = fuzz.join("corpus").join(target);
        let log = logs.join(format!("{target}.log"));
        let out = std::fs::File::create(&log)?;
        let status = Command::new(bins.join(target))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg(format!("-max_total_time={seconds}"))
            .args(["-rss_limit_mb=2048", "-timeout=10", "-print_final_stats=1"])
            .arg(&scratch)
            .arg(&seeds)
            .stdout(out.try_clone()?)
            .stderr(out)
            .status()
            .with_context(|| format!("starting fuzz target {target}"))?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let stat = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .map_or("?", str::trim)
                .to_owned()
        };
        if !status.success() {
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "fuzz target {target} failed ({status}); the input is in {}; its log ({}) ends:\n{}",
                artifacts.display(),
                log.display(),
                tail.join("\n")
            );
        }
        Ok(format!(
            "{target}: {} runs, {} new units, peak RSS {} MB",
            stat("stat::number_of_executed_units:"),
            stat("stat::new_units_added:"),
            stat("stat::peak_rss_mb:")
        ))
    };
    step(format!(
        "fuzz smoke: {} targets, {seconds} s each, {cores} at a time (logs in {})",
        targets.len(),
        logs.display()
    ));
    std::thread::scope(|scope| {
        for _ in 0..cores.min(targets.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(target) = targets.get(i) else { break };
                    match one(target) {
                        Ok(line) => step(format!("fuzz smoke: {line}")),
                        Err(e) => failures
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(format!("{e:#}")),
                    }
                }
            });
        }
    });
    let failures = failures
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}
