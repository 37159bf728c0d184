//! `cargo xtask bench peer`: our game server and a Colyseus server doing the same work
//! (game-server/peer/workload.json), at the same session counts, alternating in one run.
//! Each side runs as one process pair: the server pinned to CPU 1, its load generator to
//! CPU 0, so the server's CPU time is measured apart from the load's.
use std::{os::unix::process::CommandExt as _, process::Command};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Args;
use serde_json::Value;

use crate::{setup::Env, util::step};

#[derive(Args)]
pub struct PeerArgs {
    /// Session counts (rooms of 50 with 8 NPCs, 20 Hz, 20 inputs/s per session).
    #[arg(long, value_delimiter = ',', default_value = "1000,2000,5000,10000")]
    steps: Vec<usize>,
    /// Seconds of steady load per step and side.
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Run without raising the benchmark's scheduling weight (see `raise_weight`).
    #[arg(long)]
    no_priority: bool,
}

/// One side's result for one step, in the columns both harnesses print.
struct Side {
    held: bool,
    connected: f64,
    server_cpu: f64,
    load_cpu: f64,
    tick_p99_ms: f64,
    tick_is_bucket: bool,
    delta_p99_ms: f64,
    delivered: f64,
    inputs: f64,
    rss_kib: f64,
    bytes_per_session: f64,
}

/// On a shared machine the pinned processes compete with everyone else's work on their CPU;
/// with autogroup scheduling, nice only matters within a session. A new session whose
/// autogroup has nice -10 gets most of a contended CPU for the few minutes of the run (best
/// effort: without root it stays as it is).
fn raise_weight(cmd: &mut Command) {
    // SAFETY: setsid and a write(2) to /proc are async-signal-safe enough for pre_exec: no
    // allocation happens between fork and exec here beyond the static path.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            let fd = libc::open(c"/proc/self/autogroup".as_ptr(), libc::O_WRONLY);
            if fd >= 0 {
                libc::write(fd, b"-10".as_ptr().cast(), 3);
                libc::close(fd);
            }
            Ok(())
        });
    }
}

fn json_line(out: &[u8], what: &str) -> Result<Value> {
    let text = String::from_utf8_lossy(out);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with(['{', '[']))
        .with_context(|| format!("{what} printed no JSON"))?;
    serde_json::from_str(line).with_context(|| format!("{what}: {line}"))
}

fn ours(env: &Env, n: usize, a: &PeerArgs) -> Result<Side> {
    let mut cmd = Command::new(env.root.join("target/release/bots"));
    cmd.args(["bench", "--json", "--server-cpu", "1", "--bots-cpu", "0"])
        .args([
            "--steps",
            &n.to_string(),
            "--duration",
            &a.duration.to_string(),
        ]);
    if !a.no_priority {
        raise_weight(&mut cmd);
    }
    let out = cmd.output().context("bots bench")?;
    ensure!(out.status.success(), "bots bench failed: {}", out.status);
    // The table is pretty-printed JSON over several lines.
    let v: Value = serde_json::from_slice(&out.stdout).context("bots bench JSON")?;
    let r = &v[0];
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    Ok(Side {
        held: r["held"].as_bool().unwrap_or(false),
        connected: f("connected"),
        server_cpu: f("server_cpu_pct"),
        load_cpu: f("bots_cpu_pct"),
        tick_p99_ms: f("tick_p99_ms_le"),
        tick_is_bucket: true,
        delta_p99_ms: f("delta_latency_p99_ms"),
        delivered: f("delivered_ratio"),
        inputs: f("inputs_ratio"),
        rss_kib: f("rss_per_session_kib"),
        bytes_per_session: f("bytes_in_per_session_per_sec"),
    })
}

fn colyseus(env: &Env, n: usize, a: &PeerArgs) -> Result<Side> {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0", "node"])
        .arg(env.root.join("game-server/peer/colyseus/bench.cjs"))
        .args(["--sessions", &n.to_string(), "--duration", &a.duration.to_string()])
        .args(["--server-cpu", "1"])
        .env("NODE_PATH", env.root.join(".tools/colyseus-peer/node_modules"))
        // The load holds 10,000 clients' decoded states.
        .env("NODE_OPTIONS", "--max-old-space-size=8192");
    if !a.no_priority {
        raise_weight(&mut cmd);
    }
    let out = cmd.output().context("node bench.cjs")?;
    ensure!(
        out.status.success(),
        "colyseus bench failed: {}",
        out.status
    );
    let r = json_line(&out.stdout, "colyseus bench")?;
    let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
    Ok(Side {
        held: r["held"].as_bool().unwrap_or(false),
        connected: f("connected"),
        server_cpu: f("server_cpu_pct"),
        load_cpu: f("load_cpu_pct"),
        tick_p99_ms: f("tick_p99_ms"),
        tick_is_bucket: false,
        delta_p99_ms: f("delta_latency_p99_ms"),
        delivered: f("delivered_ratio"),
        inputs: f("inputs_ratio"),
        rss_kib: f("rss_per_session_kib"),
        bytes_per_session: f("bytes_in_per_sec") / n.max(1) as f64,
    })
}

pub fn run(env: &Env, a: PeerArgs) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        bail!(
            "bench peer pins the server to CPU 1 and the load to CPU 0: it needs 2 CPUs, this has {cpus}"
        );
    }
    crate::tasks::build(env)?;
    ensure!(
        env.root
            .join(".tools/colyseus-peer/node_modules/@colyseus/core")
            .is_dir(),
        "the Colyseus peer is not installed (cargo xtask setup)"
    );
    let mut rows = Vec::new();
    for (i, &n) in a.steps.iter().enumerate() {
        // Alternate who goes first, so drift in the machine's load does not favour one side.
        let ours_first = i % 2 == 0;
        let mut ran: Vec<(&str, Result<Side>)> = Vec::new();
        for k in 0..2 {
            if (k == 0) == ours_first {
                step(format!("bench peer: {n} sessions, game-server"));
                ran.push(("game-server", ours(env, n, &a)));
            } else {
                step(format!("bench peer: {n} sessions, Colyseus"));
                ran.push(("Colyseus 0.16", colyseus(env, n, &a)));
            }
        }
        ran.sort_by_key(|(name, _)| *name != "game-server");
        rows.push((n, ran));
    }
    println!(
        "\n| sessions | server | held | server CPU (1 core = 100%) | CPU per 1k sessions | tick p99 | delta/patch p99 | delivered | inputs sent | RSS/session | KiB/session/s | load CPU |"
    );
    println!("|---:|---|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (n, ran) in &rows {
        for (name, r) in ran {
            match r {
                Ok(s) => println!(
                    "| {n} | {name} | {} | {:.0}% | {:.1}% | {}{:.2} ms | {:.1} ms | {:.1}% | {:.1}% | {:.1} KiB | {:.1} | {:.0}% |",
                    if s.held {
                        "yes".to_string()
                    } else {
                        format!("no ({:.0} connected)", s.connected)
                    },
                    s.server_cpu,
                    s.server_cpu / *n as f64 * 1000.0,
                    if s.tick_is_bucket { "≤ " } else { "" },
                    s.tick_p99_ms,
                    s.delta_p99_ms,
                    s.delivered * 100.0,
                    s.inputs * 100.0,
                    s.rss_kib,
                    s.bytes_per_session / 1024.0,
                    s.load_cpu,
                ),
                Err(e) => println!("| {n} | {name} | error: {e:#} | | | | | | | | | |"),
            }
        }
    }
    // Ratios only from steps both held (same run, same machine state).
    for (n, ran) in &rows {
        if let [(_, Ok(o)), (_, Ok(c))] = &ran[..]
            && o.held
            && c.held
        {
            println!(
                "{n} sessions: Colyseus used {:.1}× our server's CPU",
                c.server_cpu / o.server_cpu.max(0.01)
            );
        }
    }
    Ok(())
}
