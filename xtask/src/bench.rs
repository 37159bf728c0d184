//! Benchmarks that print a table. `probes`: the kernel-side cost of our scheduler programs beside
//! libbpf-tools runqlat on the same fixed workload, from the kernel's own bpf_stats.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};

use crate::{
    setup::Env,
    util::{Proc, run as run_cmd, step, wait_ready},
};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Our sched_* programs vs runqlat: run count and ns per run, from kernel.bpf_stats_enabled.
    Probes {
        /// Seconds of workload per configuration.
        #[arg(long, default_value_t = 4)]
        seconds: u64,
        /// Agent binary to measure (default: this tree's release build), e.g. an older build
        /// for a before/after comparison against the same runqlat in the same hour.
        #[arg(long)]
        agent: Option<std::path::PathBuf>,
    },
    /// The agent's cost on the real workload: the game server under bots, agent off/on
    /// alternating, server CPU and latency plus per-program BPF cost (bpf_stats).
    Overhead(OverheadArgs),
    /// The worker pool against tokio baselines (`cargo bench -p game-pool`).
    Pool,
    /// Our game server beside a Colyseus server doing the same work, same session counts,
    /// alternating in one run (server and load pinned to different CPUs).
    Peer(crate::peer::PeerArgs),
    /// The game server at 10× its held sessions (connection storm past its fd limit, slowloris,
    /// non-readers) and the agent under 10× OTLP intake, a kernel-event burst and 20k sockets.
    Overload(crate::overload::OverloadArgs),
    /// Sessions held at 20 Hz, messages/s, RSS per session, delta latency (`bots bench`).
    Server {
        /// Extra arguments for `bots bench` (e.g. `--steps 250,500,1000`).
        #[arg(last = true)]
        rest: Vec<String>,
    },
}

#[derive(Args)]
pub struct OverheadArgs {
    /// Session counts (each is one `bots bench` step at 20 Hz).
    #[arg(long, value_delimiter = ',', default_value = "1000,2000")]
    sessions: Vec<usize>,
    /// Off/on pairs (the order alternates from pair to pair).
    #[arg(long, default_value_t = 3)]
    pairs: usize,
    /// Seconds of steady load per step.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Agent binary to measure (default: this tree's release build), e.g. an older build for a
    /// before/after comparison.
    #[arg(long)]
    agent: Option<std::path::PathBuf>,
}

pub fn run(env: &Env, args: BenchArgs) -> Result<()> {
    match args.what {
        What::Probes { seconds, agent } => probes(env, seconds, agent),
        What::Overhead(a) => overhead(env, a),
        What::Peer(a) => crate::peer::run(env, a),
        What::Pool => run_cmd(env.cargo().args(["bench", "-p", "game-pool"])),
        What::Overload(a) => crate::overload::run(env, a),
        What::Server { rest } => {
            // bots bench spawns the release server binary next to it: build both.
            crate::tasks::build(env)?;
            let mut cmd = Command::new(env.root.join("target/release/bots"));
            cmd.arg("bench");
            // Server and bots on different CPUs, so the server's CPU is measured apart.
            if !rest.iter().any(|a| a.starts_with("--server-cpu"))
                && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
            {
                cmd.args(["--server-cpu", "1", "--bots-cpu", "0"]);
            }
            run_cmd(cmd.args(rest))
        }
    }
}

/// The fixed scheduling workload: pairs of threads ping-ponging through pipes, so every
/// message is a wakeup and a context switch. Runs in a child process (its own pid to watch)
/// and starts when a line arrives on stdin.
pub fn sched_workload(seconds: u64) -> Result<()> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let pairs: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let (tx1, rx1) = std::sync::mpsc::sync_channel::<u8>(0);
                let (tx2, rx2) = std::sync::mpsc::sync_channel::<u8>(0);
                let echo = std::thread::spawn(move || {
                    while let Ok(b) = rx1.recv() {
                        if tx2.send(b).is_err() {
                            break;
                        }
                    }
                });
                let mut n = 0u64;
                while Instant::now() < deadline {
                    tx1.send(1).unwrap();
                    rx2.recv().unwrap();
                    n += 1;
                }
                drop(tx1);
                echo.join().unwrap();
                n
            })
        })
        .collect();
    let total: u64 = pairs.into_iter().map(|p| p.join().unwrap()).sum();
    println!("{total}");
    Ok(())
}

#[derive(Clone, Copy, Default)]
struct Stat {
    cnt: u64,
    ns: u64,
}

fn loaded_progs() -> Result<Vec<serde_json::Value>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()
        .context("bpftool")?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool JSON")?;
    Ok(progs.as_array().cloned().unwrap_or_default())
}

fn prog_ids() -> Result<std::collections::BTreeSet<u64>> {
    Ok(loaded_progs()?
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .collect())
}

/// run_cnt / run_time_ns of every loaded program, by id (with its name). Debian's bpftool
/// cannot name a program's owner, so tracers are told apart by which ids appeared when.
fn prog_stats() -> Result<BTreeMap<u64, (String, Stat)>> {
    let mut stats = BTreeMap::new();
    for p in loaded_progs()? {
        let Some(id) = p["id"].as_u64() else { continue };
        let name = p["name"].as_str().unwrap_or("?").to_owned();
        let stat = Stat {
            cnt: p["run_cnt"].as_u64().unwrap_or(0),
            ns: p["run_time_ns"].as_u64().unwrap_or(0),
        };
        stats.insert(id, (name, stat));
    }
    Ok(stats)
}

struct Row {
    mode: &'static str,
    round: usize,
    ours: BTreeMap<String, Stat>,
    theirs: BTreeMap<String, Stat>,
    round_trips: u64,
    ours_first: bool,
}

fn delta(
    before: &BTreeMap<String, Stat>,
    after: &BTreeMap<String, Stat>,
) -> BTreeMap<String, Stat> {
    after
        .iter()
        .map(|(n, a)| {
            let b = before.get(n).copied().unwrap_or_default();
            (
                n.clone(),
                Stat {
                    cnt: a.cnt - b.cnt,
                    ns: a.ns - b.ns,
                },
            )
        })
        .collect()
}

/// Both tracers are attached at once to the same workload, so they see exactly the same
/// scheduler events (a machine busy with other work changes the mix of events, and with it
/// the average cost, between runs; within a run it is the same for both).
fn probes(env: &Env, seconds: u64, agent: Option<std::path::PathBuf>) -> Result<()> {
    let agent = match agent {
        Some(a) => a,
        None => {
            // The same package set as every release build (no re-unified dependency rebuild).
            crate::tasks::build(env)?;
            env.root.join("target/release/kernelsight-agent")
        }
    };
    let xtask = crate::util::self_exe();
    let stats_path = "/proc/sys/kernel/bpf_stats_enabled";
    let old = std::fs::read_to_string(stats_path).context("kernel.bpf_stats_enabled")?;
    std::fs::write(stats_path, "1").context("enabling kernel.bpf_stats_enabled (needs root)")?;
    let result = (|| -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        for round in 1..=4 {
            for mode in [
                "one process (--pid / -p)",
                "every task (--watch-all / no filter)",
            ] {
                let filtered = mode.starts_with("one");
                step(format!("bench probes: round {round}, {mode}"));
                let mut workload = Proc(
                    Command::new(&xtask)
                        .args(["sched-workload", "--seconds", &seconds.to_string()])
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .spawn()?,
                );
                let pid = workload.0.id().to_string();

                // Programs on one tracepoint run in attach order, and the first one pays the
                // cache misses on task_struct; alternate who goes first.
                let ours_first = round % 2 == 1;
                let start_ours = || -> Result<Proc> {
                    let port = 19464;
                    let mut cmd = Command::new(&agent);
                    cmd.args(["--http-addr", &format!("127.0.0.1:{port}")])
                        .args([
                            "--otlp-grpc-addr",
                            "127.0.0.1:0",
                            "--otlp-http-addr",
                            "127.0.0.1:0",
                        ])
                        .env("RUST_LOG", "warn");
                    if filtered {
                        cmd.args(["--pid", &pid]);
                    } else {
                        cmd.arg("--watch-all");
                    }
                    let mut p = Proc(cmd.spawn()?);
                    wait_ready(([127, 0, 0, 1], port).into(), "the agent", &mut p)?;
                    // The watch set is reconciled every second.
                    std::thread::sleep(Duration::from_millis(1500));
                    Ok(p)
                };
                let start_theirs = || -> Result<Proc> {
                    let mut cmd = Command::new("stdbuf");
                    cmd.args(["-oL", "runqlat"]);
                    if filtered {
                        cmd.args(["-p", &pid]);
                    }
                    let mut p = Proc(
                        cmd.arg("99")
                            .stdout(Stdio::piped())
                            .spawn()
                            .context("runqlat (libbpf-tools)")?,
                    );
                    let mut lines = BufReader::new(p.0.stdout.take().unwrap()).lines();
                    while let Some(Ok(l)) = lines.next() {
                        if l.starts_with("Tracing") {
                            break;
                        }
                    }
                    Ok(p)
                };
                let ids0 = prog_ids()?;
                let first = if ours_first {
                    start_ours()?
                } else {
                    start_theirs()?
                };
                let ids1 = prog_ids()?;
                let second = if ours_first {
                    start_theirs()?
                } else {
                    start_ours()?
                };
                let ids2 = prog_ids()?;
                let first_ids: std::collections::BTreeSet<u64> =
                    ids1.difference(&ids0).copied().collect();
                let second_ids: std::collections::BTreeSet<u64> =
                    ids2.difference(&ids1).copied().collect();
                let (ours_ids, theirs_ids) = if ours_first {
                    (first_ids, second_ids)
                } else {
                    (second_ids, first_ids)
                };
                let pick = |all: &BTreeMap<u64, (String, Stat)>,
                            ids: &std::collections::BTreeSet<u64>|
                 -> BTreeMap<String, Stat> {
                    all.iter()
                        .filter(|(id, _)| ids.contains(id))
                        .map(|(_, v)| v.clone())
                        .collect()
                };
                let b = prog_stats()?;
                writeln!(workload.0.stdin.take().unwrap(), "go")?;
                let mut out = String::new();
                std::io::Read::read_to_string(workload.0.stdout.as_mut().unwrap(), &mut out)?;
                let a = prog_stats()?;
                rows.push(Row {
                    mode,
                    round,
                    ours: delta(&pick(&b, &ours_ids), &pick(&a, &ours_ids)),
                    theirs: delta(&pick(&b, &theirs_ids), &pick(&a, &theirs_ids)),
                    ours_first,
                    round_trips: out.trim().parse().unwrap_or(0),
                });
                drop((first, second));
            }
        }
        Ok(rows)
    })();
    std::fs::write(stats_path, old.trim())?;
    let rows = result?;
    print_table(&rows);
    Ok(())
}

fn ns_per_run(s: &Stat) -> f64 {
    if s.cnt == 0 {
        0.0
    } else {
        s.ns as f64 / s.cnt as f64
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "\nScheduler probe cost: ours and runqlat attached together to the same ping-pong workload"
    );
    println!("(kernel.bpf_stats_enabled; ns/run = run_time_ns / run_cnt)\n");
    println!(
        "| watching | round | first on the tracepoint | round trips | sched_switch runs | ours ns/run | runqlat ns/run | ratio | sched_wakeup ours | runqlat | ratio |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut ratios: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut by_order: BTreeMap<(&str, bool), Vec<f64>> = BTreeMap::new();
    for r in rows {
        let get = |m: &BTreeMap<String, Stat>, n: &str| m.get(n).copied().unwrap_or_default();
        let (os, ts) = (get(&r.ours, "sched_switch"), get(&r.theirs, "sched_switch"));
        let (ow, tw) = (get(&r.ours, "sched_wakeup"), get(&r.theirs, "sched_wakeup"));
        let ratio = |a: &Stat, b: &Stat| {
            if ns_per_run(b) > 0.0 {
                ns_per_run(a) / ns_per_run(b)
            } else {
                f64::NAN
            }
        };
        ratios.entry(r.mode).or_default().push(ratio(&os, &ts));
        by_order
            .entry((r.mode, r.ours_first))
            .or_default()
            .push(ratio(&os, &ts));
        println!(
            "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.2}× | {:.0} | {:.0} | {:.2}× |",
            r.mode,
            r.round,
            if r.ours_first { "ours" } else { "runqlat" },
            r.round_trips,
            os.cnt,
            ns_per_run(&os),
            ns_per_run(&ts),
            ratio(&os, &ts),
            ns_per_run(&ow),
            ns_per_run(&tw),
            ratio(&ow, &tw)
        );
    }
    println!();
    for (mode, v) in ratios {
        let first = |ours| {
            by_order
                .get(&(mode, ours))
                .map(|v| median(v))
                .unwrap_or(f64::NAN)
        };
        println!(
            "median sched_switch cost ratio ours/runqlat, {mode}: {:.2}× over all rounds (ours first {:.2}×, runqlat first {:.2}×)",
            median(&v),
            first(true),
            first(false)
        );
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// utime + stime of a process, in seconds (0 once it is gone).
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ is 100 on every Linux we target.
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// One `bots bench` step, with or without the agent.
struct Run {
    pair: usize,
    on: bool,
    sessions: usize,
    held: bool,
    server_cpu_pct: f64,
    tick_p99_ms: f64,
    delta_p99_ms: f64,
    /// Agent CPU over the steady window (100 = one core) and RSS at its end.
    agent_cpu_pct: f64,
    agent_rss_mib: f64,
    steady_secs: f64,
    progs: BTreeMap<String, Stat>,
}

/// The game server under the bots, agent off and on alternating in one run: what the agent
/// costs the thing it watches, as a user would measure it.
fn overhead(env: &Env, a: OverheadArgs) -> Result<()> {
    run_cmd(
        env.cargo()
            .args(["build", "--release", "-p", "agent", "-p", "game-server"]),
    )?;
    let agent = a
        .agent
        .clone()
        .unwrap_or_else(|| env.root.join("target/release/kernelsight-agent"));
    let bots = env.root.join("target/release/bots");
    let stats_path = "/proc/sys/kernel/bpf_stats_enabled";
    let old = std::fs::read_to_string(stats_path).context("kernel.bpf_stats_enabled")?;
    std::fs::write(stats_path, "1").context("enabling kernel.bpf_stats_enabled (needs root)")?;
    let result = (|| -> Result<Vec<Run>> {
        let mut runs = Vec::new();
        for pair in 1..=a.pairs {
            let order = if pair % 2 == 1 {
                [false, true]
            } else {
                [true, false]
            };
            for on in order {
                step(format!(
                    "bench overhead: pair {pair}, agent {}",
                    if on { "on" } else { "off" }
                ));
                runs.extend(overhead_run(&a, &agent, &bots, pair, on)?);
            }
        }
        Ok(runs)
    })();
    std::fs::write(stats_path, old.trim())?;
    let runs = result?;
    print_overhead(&runs, &a, &agent);
    Ok(())
}

fn overhead_run(
    a: &OverheadArgs,
    agent_bin: &std::path::Path,
    bots: &std::path::Path,
    pair: usize,
    on: bool,
) -> Result<Vec<Run>> {
    let ids0 = prog_ids()?;
    let mut agent = None;
    if on {
        let port = 19465;
        let mut p = Proc(
            Command::new(agent_bin)
                .args(["--http-addr", &format!("127.0.0.1:{port}")])
                .args(["--otlp-grpc-addr", "127.0.0.1:0"])
                .args(["--otlp-http-addr", "127.0.0.1:0"])
                .args(["--comm", "game-server"])
                .env("RUST_LOG", "warn")
                .spawn()
                .with_context(|| format!("starting {}", agent_bin.display()))?,
        );
        wait_ready(([127, 0, 0, 1], port).into(), "the agent", &mut p)?;
        agent = Some(p);
    }
    let ours: std::collections::BTreeSet<u64> = prog_ids()?.difference(&ids0).copied().collect();
    let agent_pid = agent.as_ref().map(|p| p.0.id());
    let steps: Vec<String> = a.sessions.iter().map(|n| n.to_string()).collect();
    let mut child = Proc(
        Command::new(bots)
            .args(["bench", "--json", "--steps", &steps.join(",")])
            .args(["--duration", &a.seconds.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("bots bench")?,
    );
    // The bots mark each step's steady window on stderr; the kernel's per-program stats and
    // the agent's CPU are read at those marks.
    let stderr = child.0.stderr.take().context("bots stderr")?;
    let pick = |all: &BTreeMap<u64, (String, Stat)>| -> BTreeMap<String, Stat> {
        let mut out: BTreeMap<String, Stat> = BTreeMap::new();
        for (id, (name, st)) in all {
            if ours.contains(id) {
                let e = out.entry(name.clone()).or_default();
                e.cnt += st.cnt;
                e.ns += st.ns;
            }
        }
        out
    };
    let mut windows: BTreeMap<usize, (BTreeMap<String, Stat>, f64, f64, Instant)> = BTreeMap::new();
    let mut measured: BTreeMap<usize, (BTreeMap<String, Stat>, f64, f64, f64)> = BTreeMap::new();
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        let Some(rest) = line.strip_prefix("bench: phase ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(phase), Some(n)) = (words.next(), words.nth(1)) else {
            continue;
        };
        let n: usize = n.parse().unwrap_or(0);
        let stats = pick(&prog_stats()?);
        let cpu = agent_pid.map(cpu_secs).unwrap_or(0.0);
        match phase {
            "Steady" => {
                windows.insert(n, (stats, cpu, 0.0, Instant::now()));
            }
            "Done" => {
                if let Some((b, cpu0, _, t0)) = windows.remove(&n) {
                    let secs = t0.elapsed().as_secs_f64().max(0.001);
                    let rss = agent_pid.map(rss_mib).unwrap_or(0.0);
                    measured.insert(
                        n,
                        (delta(&b, &stats), (cpu - cpu0) / secs * 100.0, rss, secs),
                    );
                }
            }
            _ => {}
        }
    }
    let mut out = String::new();
    std::io::Read::read_to_string(child.0.stdout.as_mut().context("bots stdout")?, &mut out)?;
    let status = child.0.wait()?;
    anyhow::ensure!(status.success(), "bots bench failed ({status})");
    drop(agent);
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&out).context("bots bench --json output")?;
    let mut runs = Vec::new();
    for r in rows {
        let sessions = r["sessions"].as_u64().unwrap_or(0) as usize;
        let (progs, agent_cpu_pct, agent_rss_mib, steady_secs) =
            measured.remove(&sessions).unwrap_or_default();
        runs.push(Run {
            pair,
            on,
            sessions,
            held: r["held"].as_bool().unwrap_or(false),
            server_cpu_pct: r["server_cpu_pct"].as_f64().unwrap_or(f64::NAN),
            tick_p99_ms: r["tick_p99_ms_le"].as_f64().unwrap_or(f64::NAN),
            delta_p99_ms: r["delta_latency_p99_ms"].as_f64().unwrap_or(f64::NAN),
            agent_cpu_pct,
            agent_rss_mib,
            steady_secs,
            progs,
        });
    }
    Ok(runs)
}

fn print_overhead(runs: &[Run], a: &OverheadArgs, agent: &std::path::Path) {
    println!(
        "\nAgent cost on the workload: game server under `bots bench` (20 Hz), agent `--comm game-server` off/on alternating, {} pairs, {} s steady per step",
        a.pairs, a.seconds
    );
    println!("agent: {}\n", agent.display());
    println!(
        "| pair | agent | sessions | held | server CPU | CPU per 1,000 sessions | tick p99 | delta p99 | agent CPU | agent RSS | BPF % of a core |"
    );
    println!("|---:|:---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|");
    let bpf_pct = |r: &Run| {
        r.progs.values().map(|s| s.ns as f64).sum::<f64>() / (r.steady_secs.max(0.001) * 1e9)
            * 100.0
    };
    for r in runs {
        println!(
            "| {} | {} | {} | {} | {:.1}% | {:.1}% | ≤ {} ms | {:.1} ms | {} | {} | {} |",
            r.pair,
            if r.on { "on" } else { "off" },
            r.sessions,
            if r.held { "yes" } else { "no" },
            r.server_cpu_pct,
            r.server_cpu_pct / (r.sessions as f64 / 1000.0),
            r.tick_p99_ms,
            r.delta_p99_ms,
            if r.on {
                format!("{:.2}%", r.agent_cpu_pct)
            } else {
                "–".into()
            },
            if r.on {
                format!("{:.1} MiB", r.agent_rss_mib)
            } else {
                "–".into()
            },
            if r.on {
                format!("{:.3}%", bpf_pct(r))
            } else {
                "–".into()
            },
        );
    }
    let mut sessions: Vec<usize> = runs.iter().map(|r| r.sessions).collect();
    sessions.sort_unstable();
    sessions.dedup();
    println!("\nMedians (server CPU ratio = median over pairs of on ÷ off within the pair):\n");
    println!(
        "| sessions | server CPU off | on | ratio on/off | tick p99 off / on | delta p99 off / on | agent CPU | agent RSS | all BPF, % of a core |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &sessions {
        let sel = |on: bool| -> Vec<&Run> {
            runs.iter()
                .filter(|r| r.sessions == n && r.on == on)
                .collect()
        };
        let med = |on: bool, f: &dyn Fn(&Run) -> f64| {
            median(&sel(on).iter().map(|r| f(r)).collect::<Vec<_>>())
        };
        let ratios: Vec<f64> = (1..=a.pairs)
            .filter_map(|p| {
                let get = |on| {
                    runs.iter()
                        .find(|r| r.pair == p && r.sessions == n && r.on == on)
                        .map(|r| r.server_cpu_pct)
                };
                Some(get(true)? / get(false)?)
            })
            .collect();
        println!(
            "| {n} | {:.1}% | {:.1}% | {:.3}× | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {:.2}% | {:.1} MiB | {:.3}% |",
            med(false, &|r| r.server_cpu_pct),
            med(true, &|r| r.server_cpu_pct),
            median(&ratios),
            med(false, &|r| r.tick_p99_ms),
            med(true, &|r| r.tick_p99_ms),
            med(false, &|r| r.delta_p99_ms),
            med(true, &|r| r.delta_p99_ms),
            med(true, &|r| r.agent_cpu_pct),
            med(true, &|r| r.agent_rss_mib),
            med(true, &bpf_pct),
        );
    }
    for &n in &sessions {
        println!(
            "\nPer program at {n} sessions (kernel.bpf_stats_enabled; median over the agent-on runs):\n"
        );
        println!("| program | runs/s | ns/run | % of a core |");
        println!("|---|---:|---:|---:|");
        let on: Vec<&Run> = runs.iter().filter(|r| r.sessions == n && r.on).collect();
        let mut names: Vec<&String> = on.iter().flat_map(|r| r.progs.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let per = |f: &dyn Fn(&Stat, f64) -> f64| {
                median(
                    &on.iter()
                        .map(|r| {
                            f(
                                &r.progs.get(name).copied().unwrap_or_default(),
                                r.steady_secs.max(0.001),
                            )
                        })
                        .collect::<Vec<_>>(),
                )
            };
            println!(
                "| {name} | {:.0} | {:.0} | {:.3}% |",
                per(&|s, t| s.cnt as f64 / t),
                per(&|s, _| ns_per_run(s)),
                per(&|s, t| s.ns as f64 / (t * 1e9) * 100.0),
            );
        }
    }
}
