//! `bots bench`: spawn the real server, sweep the session count at a fixed input
//! rate, and print one table row per step (server-side tick p99 from its histogram,
//! messages out per second, RSS per session; client-side delta latency).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::http::{sample, scrape};
use super::load::{self, Hook, LoadOpts, Phase};

#[derive(clap::Args, Clone, Debug)]
pub struct BenchOpts {
    /// The server binary (default: `game-server` next to this executable).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Session counts to sweep.
    #[arg(long, value_delimiter = ',', default_value = "100,250,500,1000")]
    pub steps: Vec<usize>,
    /// Players per room (rooms = ceil(sessions / per_room)).
    #[arg(long, default_value_t = 50)]
    pub per_room: usize,
    /// Seconds of steady load per step.
    #[arg(long, default_value_t = 15)]
    pub duration: u64,
    /// Inputs per second per bot (also the server tick rate).
    #[arg(long, default_value_t = 20)]
    pub rate: u32,
    #[arg(long, default_value = "binary", value_parser = ["json", "binary"])]
    pub encoding: String,
    /// NPCs per room on the benchmarked server.
    #[arg(long, default_value_t = 8)]
    pub npcs_per_room: u32,
    /// Print the rows as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Pin the server to this CPU (its runtime then has one worker), so that its CPU time and
    /// the bots' are measured apart.
    #[arg(long)]
    pub server_cpu: Option<usize>,
    /// Pin the bots (this process) to this CPU; with one CPU they run on a current-thread runtime.
    #[arg(long)]
    pub bots_cpu: Option<usize>,
    /// Instead of the sweep: open this many idle sessions (joined, answering only the server's
    /// heartbeat pings) in rooms without NPCs, hold them for --duration seconds, and report
    /// the server's RSS per idle session. Several comma-separated counts run in one server.
    #[arg(long, value_delimiter = ',')]
    pub idle: Vec<usize>,
    /// The server's RUST_LOG (its spans live as long as the sessions: `info` keeps the
    /// `ws.session` span of every session, `warn` disables it).
    #[arg(long, default_value = "warn")]
    pub server_log: String,
}

/// Restrict the calling thread (and the threads and processes it creates later) to one CPU.
pub fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only
    // read and write that local set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

type Scrape = Vec<(String, f64)>;

#[derive(Serialize, Debug, Clone)]
pub struct Row {
    pub sessions: usize,
    pub connected: u64,
    pub rooms: usize,
    pub held: bool,
    pub tick_budget_ms: f64,
    pub tick_p99_ms_le: f64,
    pub tick_overruns: f64,
    pub ticks_dropped: f64,
    /// Deltas received by the bots per second ÷ (sessions × rate).
    pub delivered_ratio: f64,
    /// Inputs the bots managed to send per second ÷ (sessions × rate).
    pub inputs_ratio: f64,
    /// Server process CPU over the steady window (100 = one core).
    pub server_cpu_pct: f64,
    /// Server CPU per 1,000 sessions (percent of one core).
    pub server_cpu_pct_per_1k: f64,
    /// The bots' own CPU over the steady window (100 = one core).
    pub bots_cpu_pct: f64,
    pub msgs_in_per_sec: f64,
    /// Bytes the bots received per session per second (WebSocket payload).
    pub bytes_in_per_session_per_sec: f64,
    pub msgs_out_per_sec: f64,
    pub bytes_out_per_sec: f64,
    pub rss_per_session_kib: f64,
    pub delta_latency_p99_ms: f64,
    pub input_to_ack_p99_ms: f64,
    pub rtt_p99_ms: f64,
    pub closed_early: u64,
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

fn rss_kib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0.0)
}

/// p99 upper bound from the difference of two scrapes of a Prometheus histogram.
fn hist_p99(before: &[(String, f64)], after: &[(String, f64)], name: &str) -> f64 {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter_map(|(n, v)| {
            let le = n.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v - sample(before, n)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    if total <= 0.0 {
        return 0.0;
    }
    buckets
        .iter()
        .find(|(_, c)| *c >= 0.99 * total)
        .map(|(le, _)| *le)
        .unwrap_or(f64::INFINITY)
}

fn sent_total(m: &[(String, f64)]) -> f64 {
    sample(m, "game_messages_sent_total{encoding=\"binary\"}")
        + sample(m, "game_messages_sent_total{encoding=\"json\"}")
}

/// The server under test, spawned with the bench's flags (`npcs` per room).
struct Server {
    child: tokio::process::Child,
    pid: u32,
    addr: std::net::SocketAddr,
    secret: String,
    data: PathBuf,
}

impl Server {
    async fn spawn(o: &BenchOpts, npcs: u32) -> anyhow::Result<Self> {
        let bin = match &o.server_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()?.with_file_name("game-server"),
        };
        anyhow::ensure!(
            bin.exists(),
            "server binary {} not found (build it or pass --server-bin)",
            bin.display()
        );
        let data = std::env::temp_dir().join(format!("gs-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let mut secret = [0u8; 24];
        getrandom::fill(&mut secret)?;
        let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let mut child = tokio::process::Command::new(&bin);
        child
            .args([
                "--listen",
                "127.0.0.1:0",
                "--token-secret",
                &secret,
                "--reconnect-grace-ms",
                "0",
            ])
            .args([
                "--tick-hz",
                &o.rate.to_string(),
                "--npcs-per-room",
                &npcs.to_string(),
            ])
            .args([
                "--max-room-members",
                &o.per_room.max(1).to_string(),
                "--msg-rate",
                &(o.rate * 3).to_string(),
            ])
            .arg("--data-dir")
            .arg(&data)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("RUST_LOG", &o.server_log)
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if let Some(cpu) = o.server_cpu {
            // SAFETY: pin_to_cpu only calls sched_setaffinity, which is async-signal-safe.
            unsafe { child.pre_exec(move || pin_to_cpu(cpu)) };
        }
        let mut child = child
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let pid = child.id().context("server pid")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .context("server did not start")??
            .context("server exited")?;
        let addr: std::net::SocketAddr = first
            .strip_prefix("game-server listening on ")
            .with_context(|| format!("unexpected server output {first:?}"))?
            .parse()?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            child,
            pid,
            addr,
            secret,
            data,
        })
    }

    async fn stop(mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

pub async fn run(o: BenchOpts) -> anyhow::Result<Vec<Row>> {
    let server = Server::spawn(&o, o.npcs_per_room).await?;
    let (pid, addr, secret) = (server.pid, server.addr, server.secret.clone());
    eprintln!(
        "bench: server pid {pid} on {addr}, {} Hz, steps {:?}",
        o.rate, o.steps
    );

    let mut rows = Vec::new();
    for (step, &n) in o.steps.iter().enumerate() {
        let rooms = n.div_ceil(o.per_room.max(1));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let baseline_rss = rss_kib(pid);
        let scrapes: Arc<Mutex<Vec<Scrape>>> = Arc::default();
        let rss_peak = Arc::new(Mutex::new(0.0f64));
        let cpu: Arc<Mutex<Vec<f64>>> = Arc::default();
        let hook: Hook = {
            let scrapes = scrapes.clone();
            let rss_peak = rss_peak.clone();
            let cpu = cpu.clone();
            Arc::new(move |phase: Phase| {
                let scrapes = scrapes.clone();
                let rss_peak = rss_peak.clone();
                let cpu = cpu.clone();
                Box::pin(async move {
                    // Marks the steady window for tools that measure beside us (`xtask bench
                    // overhead` reads the kernel's BPF stats at these lines).
                    eprintln!("bench: phase {phase:?} sessions {n}");
                    cpu.lock().unwrap().push(cpu_secs(pid));
                    cpu.lock().unwrap().push(cpu_secs(std::process::id()));
                    if let Ok(m) = scrape(addr).await {
                        scrapes.lock().unwrap().push(m);
                    }
                    if phase == Phase::Done {
                        *rss_peak.lock().unwrap() = rss_kib(pid);
                    }
                })
            })
        };
        let opts = LoadOpts {
            url: format!("ws://{addr}/ws"),
            sessions: n,
            rooms,
            rate: o.rate as f64,
            duration: o.duration,
            encoding: o.encoding.clone(),
            token_secret: Some(secret.clone()),
            connect_rate: 500.0,
            player_prefix: format!("b{step}"),
            json: false,
            quiet: false,
            reconnect: false,
            idle: false,
        };
        let s = load::run(opts, Some(hook)).await?;
        let sc = scrapes.lock().unwrap().clone();
        anyhow::ensure!(sc.len() == 2, "could not scrape server metrics");
        let (before, after) = (&sc[0], &sc[1]);
        let secs = s.steady_secs.max(0.001);
        let budget_ms = 1000.0 / o.rate as f64;
        let tick_p99_ms = hist_p99(before, after, "game_tick_duration_seconds") * 1000.0;
        let closed_early: u64 = s.closed_early.values().sum();
        let cpu = cpu.lock().unwrap().clone();
        let (server_cpu_pct, bots_cpu_pct) = if cpu.len() == 4 {
            (
                (cpu[2] - cpu[0]) / secs * 100.0,
                (cpu[3] - cpu[1]) / secs * 100.0,
            )
        } else {
            (0.0, 0.0)
        };
        let delivered_ratio = s.deltas_per_sec / (n as f64 * o.rate as f64);
        let inputs_ratio = s.inputs_per_sec / (n as f64 * o.rate as f64);
        let ticks_dropped =
            sample(after, "game_ticks_dropped_total") - sample(before, "game_ticks_dropped_total");
        let row = Row {
            sessions: n,
            connected: s.connected,
            rooms,
            // Held: everyone connected and stayed, ticks within budget, and (nearly)
            // every member got its delta every tick.
            held: s.connected == n as u64
                && closed_early == 0
                && tick_p99_ms < budget_ms
                && delivered_ratio >= 0.95
                && inputs_ratio >= 0.95,
            tick_budget_ms: budget_ms,
            tick_p99_ms_le: tick_p99_ms,
            tick_overruns: sample(after, "game_tick_overruns_total")
                - sample(before, "game_tick_overruns_total"),
            ticks_dropped,
            delivered_ratio,
            inputs_ratio,
            server_cpu_pct,
            server_cpu_pct_per_1k: server_cpu_pct / n.max(1) as f64 * 1000.0,
            bots_cpu_pct,
            msgs_in_per_sec: (sample(after, "game_messages_received_total{encoding=\"binary\"}")
                + sample(after, "game_messages_received_total{encoding=\"json\"}")
                - sample(before, "game_messages_received_total{encoding=\"binary\"}")
                - sample(before, "game_messages_received_total{encoding=\"json\"}"))
                / secs,
            bytes_in_per_session_per_sec: s.bytes_in_per_sec / n.max(1) as f64,
            msgs_out_per_sec: (sent_total(after) - sent_total(before)) / secs,
            bytes_out_per_sec: (sample(after, "game_sent_bytes_total")
                - sample(before, "game_sent_bytes_total"))
                / secs,
            rss_per_session_kib: ((*rss_peak.lock().unwrap() - baseline_rss) / n.max(1) as f64)
                .max(0.0),
            delta_latency_p99_ms: s.delta_latency.p99_ms,
            input_to_ack_p99_ms: s.input_to_ack.p99_ms,
            rtt_p99_ms: s.rtt.p99_ms,
            closed_early,
        };
        eprintln!("bench: step {n} done: {row:?}");
        rows.push(row);
    }
    server.stop().await;
    Ok(rows)
}

pub fn print_table(rows: &[Row], o: &BenchOpts) {
    println!(
        "| sessions | rooms | held @{} Hz | tick p99 (budget {:.0} ms) | overruns | inputs sent | deltas delivered | msgs in+out/s | KiB out/s | server CPU | server CPU / 1k sessions | bots CPU | RSS/session | delta p99 | input→ack p99 |",
        o.rate,
        1000.0 / o.rate as f64
    );
    println!("|---:|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | ≤ {} ms | {} | {:.1}% | {:.1}% | {:.0} | {:.0} | {:.0}% | {:.1}% | {:.0}% | {:.1} KiB | {:.1} ms | {:.1} ms |",
            r.sessions,
            r.rooms,
            if r.held { "yes" } else { "no" },
            fmt_ms(r.tick_p99_ms_le),
            r.tick_overruns,
            r.inputs_ratio * 100.0,
            r.delivered_ratio * 100.0,
            r.msgs_in_per_sec + r.msgs_out_per_sec,
            r.bytes_out_per_sec / 1024.0,
            r.server_cpu_pct,
            r.server_cpu_pct_per_1k,
            r.bots_cpu_pct,
            r.rss_per_session_kib,
            r.delta_latency_p99_ms,
            r.input_to_ack_p99_ms,
        );
    }
    // Held through N: every step up to N held (a later lucky step does not count).
    let held: Vec<&Row> = rows.iter().take_while(|r| r.held).collect();
    match (held.last(), rows.get(held.len())) {
        (Some(h), None) => println!(
            "\nheld at {} Hz through {} sessions (every step)",
            o.rate, h.sessions
        ),
        (Some(h), Some(m)) => println!(
            "\nheld at {} Hz through {} sessions; first miss at {}",
            o.rate, h.sessions, m.sessions
        ),
        (None, _) => println!("\nno step held at {} Hz", o.rate),
    }
}

fn fmt_ms(v: f64) -> String {
    if v.is_infinite() {
        "inf".into()
    } else if v < 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

/// One `--idle` step: N sessions that joined a room and then only answer heartbeats.
#[derive(Serialize, Debug, Clone)]
pub struct IdleRow {
    pub sessions: usize,
    pub connected: u64,
    /// The server's `game_sessions_active` at the end of the hold (every session still open).
    pub server_sessions_active: f64,
    pub closed_early: u64,
    pub hold_secs: f64,
    pub server_rss_before_kib: f64,
    pub server_rss_after_kib: f64,
    /// (RSS after − RSS before) ÷ sessions.
    pub server_rss_per_session_kib: f64,
    pub server_cpu_pct: f64,
    /// The bots' own RSS growth per session (this process).
    pub bots_rss_per_session_kib: f64,
}

/// At the end of an idle hold: server RSS, bots RSS (KiB), server CPU seconds, its metrics.
type EndSample = (f64, f64, f64, Scrape);

/// `--idle`: per count, a fresh server (rooms without NPCs, so an idle room sends nothing but
/// heartbeats), its RSS before and after N idle sessions joined and held.
pub async fn run_idle(o: BenchOpts) -> anyhow::Result<Vec<IdleRow>> {
    let mut rows = Vec::new();
    for (step, &n) in o.idle.iter().enumerate() {
        let server = Server::spawn(&o, 0).await?;
        let (pid, addr) = (server.pid, server.addr);
        eprintln!("bench: idle step {n}: server pid {pid} on {addr}");
        // Let the server finish starting (its pool, store and listener) before the baseline.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let before = (rss_kib(pid), rss_kib(std::process::id()));
        let at_end: Arc<Mutex<Option<EndSample>>> = Arc::default();
        let cpu: Arc<Mutex<f64>> = Arc::default();
        let hook: Hook = {
            let at_end = at_end.clone();
            let cpu = cpu.clone();
            Arc::new(move |phase: Phase| {
                let at_end = at_end.clone();
                let cpu = cpu.clone();
                Box::pin(async move {
                    eprintln!("bench: phase {phase:?} idle sessions {n}");
                    match phase {
                        Phase::Steady => *cpu.lock().unwrap() = cpu_secs(pid),
                        Phase::Done => {
                            let m = scrape(addr).await.unwrap_or_default();
                            *at_end.lock().unwrap() =
                                Some((rss_kib(pid), rss_kib(std::process::id()), cpu_secs(pid), m));
                        }
                    }
                })
            })
        };
        let opts = LoadOpts {
            url: format!("ws://{addr}/ws"),
            sessions: n,
            rooms: n.div_ceil(o.per_room.max(1)),
            rate: o.rate as f64,
            duration: o.duration,
            encoding: o.encoding.clone(),
            token_secret: Some(server.secret.clone()),
            connect_rate: 1000.0,
            player_prefix: format!("i{step}"),
            json: false,
            quiet: true,
            reconnect: false,
            idle: true,
        };
        let s = load::run(opts, Some(hook)).await?;
        let (rss_after, bots_after, cpu_after, m) =
            at_end.lock().unwrap().take().context("no end sample")?;
        let secs = s.steady_secs.max(0.001);
        let row = IdleRow {
            sessions: n,
            connected: s.connected,
            server_sessions_active: sample(&m, "game_sessions_active"),
            closed_early: s.closed_early.values().sum(),
            hold_secs: secs,
            server_rss_before_kib: before.0,
            server_rss_after_kib: rss_after,
            server_rss_per_session_kib: (rss_after - before.0) / n.max(1) as f64,
            server_cpu_pct: (cpu_after - *cpu.lock().unwrap()) / secs * 100.0,
            bots_rss_per_session_kib: (bots_after - before.1) / n.max(1) as f64,
        };
        eprintln!("bench: idle step {n} done: {row:?}");
        rows.push(row);
        server.stop().await;
    }
    Ok(rows)
}

pub fn print_idle_table(rows: &[IdleRow]) {
    println!(
        "| idle sessions | connected | open at end | closed early | server RSS before | after | server RSS / idle session | server CPU (idle) | bots RSS / session |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {:.1} MiB | {:.1} MiB | {:.2} KiB | {:.1}% | {:.1} KiB |",
            r.sessions,
            r.connected,
            r.server_sessions_active,
            r.closed_early,
            r.server_rss_before_kib / 1024.0,
            r.server_rss_after_kib / 1024.0,
            r.server_rss_per_session_kib,
            r.server_cpu_pct,
            r.bots_rss_per_session_kib,
        );
    }
}
