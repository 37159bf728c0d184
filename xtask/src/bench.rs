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
    },
    /// The worker pool against tokio baselines (`cargo bench -p game-pool`).
    Pool,
    /// Sessions held at 20 Hz, messages/s, RSS per session, delta latency (`bots bench`).
    Server {
        /// Extra arguments for `bots bench` (e.g. `--steps 250,500,1000`).
        #[arg(last = true)]
        rest: Vec<String>,
    },
}

pub fn run(env: &Env, args: BenchArgs) -> Result<()> {
    match args.what {
        What::Probes { seconds } => probes(env, seconds),
        What::Pool => run_cmd(env.cargo().args(["bench", "-p", "game-pool"])),
        What::Server { rest } => {
            // bots bench spawns the release server binary next to it: build both.
            run_cmd(
                env.cargo()
                    .args(["build", "--release", "-p", "game-server"]),
            )?;
            run_cmd(
                Command::new(env.root.join("target/release/bots"))
                    .arg("bench")
                    .args(rest),
            )
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
fn probes(env: &Env, seconds: u64) -> Result<()> {
    run_cmd(env.cargo().args(["build", "--release", "-p", "agent"]))?;
    let agent = env.root.join("target/release/kernelsight-agent");
    let xtask = std::env::current_exe()?;
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
    for (mode, mut v) in ratios {
        v.sort_by(f64::total_cmp);
        println!(
            "median sched_switch cost ratio ours/runqlat, {mode}: {:.2}×",
            v[v.len() / 2]
        );
    }
}
