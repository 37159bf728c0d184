//! The test driver inside the guest (PID 1's child): starts the agent, provokes real kernel
//! events, and compares what the agent counted with the guest kernel's own counters. Each check
//! prints one `KSRESULT {json}` line on the console; the host turns them into the matrix.
//! The guest is a whole machine of its own: its loopback carries only this traffic, so the
//! kernel's MIB counters are exact ground truth.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde_json::json;

use super::Status;
use crate::util::{Proc, http};

#[derive(Args)]
pub struct GuestArgs {
    /// The agent binary under test.
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Run as a busy process named NAME (two threads that compute and briefly sleep) until
    /// killed: the run-queue check's workload.
    #[arg(long)]
    pub hog: Option<String>,
}

const AGENT_ADDR: &str = "127.0.0.1:9464";
/// Budget for the agent to load and attach under TCG (the verifier is slow there).
const READY_TIMEOUT: Duration = Duration::from_secs(45);

pub fn run(args: GuestArgs) -> Result<()> {
    if let Some(name) = args.hog {
        hog(&name);
    }
    let agent = args.agent.context("--agent is required")?;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_owned();
    let memlock = std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max locked memory"))
        .map(|l| {
            l.split_whitespace()
                .skip(3)
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    emit(
        "kernel",
        Status::Pass,
        &release,
        json!({"memlock_soft_hard_bytes": memlock}),
    );
    let hogs = Hogs::start()?;
    match Agent::start(&agent, "main", &["--comm", "ks-victim"]) {
        Ok(a) => {
            emit(
                "agent",
                Status::Pass,
                &format!("ready in {:.1} s", a.ready_secs),
                json!({}),
            );
            for (name, o) in [
                ("programs", programs(&a)),
                ("resets", unless_down(&a, RST_PROBES, resets(&a))),
                (
                    "retransmits",
                    unless_down(
                        &a,
                        &["tcp_retransmit", "sock_owner_connect"],
                        retransmits(&a),
                    ),
                ),
                ("runq", unless_down(&a, &["runq"], runq(&a, &hogs))),
            ] {
                emit(name, o.status, &o.text, o.data);
            }
            let warnings = a.log_lines(|l| l.contains(" WARN ") || l.contains(" ERROR "));
            drop(a); // SIGTERM, then SIGKILL (Proc)
            emit_log("main", &warnings);
        }
        Err(failure) => {
            let why = format!("agent exited: {}", failure.line);
            emit("agent", Status::Fail, &why, json!({}));
            for name in ["programs", "resets", "retransmits", "runq"] {
                emit(name, Status::Fail, &why, json!({}));
            }
            emit_log("main", &failure.log);
        }
    }
    drop(hogs);
    let o = no_btf(&agent);
    emit("no_btf", o.status, &o.text, o.data);
    Ok(())
}

fn emit(check: &str, status: Status, text: &str, data: serde_json::Value) {
    let line = json!({"check": check, "status": status.as_str(), "text": text, "data": data});
    // One write per line: the console must not interleave two results.
    let _ = std::io::stdout().write_all(format!("KSRESULT {line}\n").as_bytes());
    let _ = std::io::stdout().flush();
}

fn emit_log(run: &str, lines: &[String]) {
    let mut out = String::new();
    for l in lines.iter().rev().take(40).rev() {
        out.push_str(&format!("KSAGENT[{run}] {l}\n"));
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
}

struct Outcome {
    status: Status,
    text: String,
    data: serde_json::Value,
}

fn pass(text: String, data: serde_json::Value) -> Outcome {
    Outcome {
        status: Status::Pass,
        text,
        data,
    }
}

fn fail(text: String, data: serde_json::Value) -> Outcome {
    Outcome {
        status: Status::Fail,
        text,
        data,
    }
}

/// A running agent, stopped (SIGTERM) on drop, with its log in a file.
struct Agent {
    proc: Proc,
    log: PathBuf,
    addr: SocketAddr,
    ready_secs: f64,
}

/// Why an agent is not running: its last error line, and its whole log.
struct Failure {
    line: String,
    log: Vec<String>,
}

impl Agent {
    fn start(bin: &Path, tag: &str, args: &[&str]) -> std::result::Result<Agent, Failure> {
        let addr: SocketAddr = AGENT_ADDR.parse().expect("valid address");
        let log = PathBuf::from(format!("/tmp/agent-{tag}.log"));
        let spawned = std::fs::File::create(&log).and_then(|f| {
            Command::new(bin)
                .args(["--http-addr", AGENT_ADDR])
                .args(args)
                .env("RUST_LOG", "info")
                .env("NO_COLOR", "1")
                .env("KERNELSIGHT_OTLP_GRPC_ADDR", "127.0.0.1:0")
                .env("KERNELSIGHT_OTLP_HTTP_ADDR", "127.0.0.1:0")
                .stdout(Stdio::null())
                .stderr(f)
                .spawn()
        });
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                return Err(Failure {
                    line: format!("cannot start {}: {e}", bin.display()),
                    log: Vec::new(),
                });
            }
        };
        let mut agent = Agent {
            proc: Proc(child),
            log,
            addr,
            ready_secs: 0.0,
        };
        let start = Instant::now();
        while start.elapsed() < READY_TIMEOUT {
            if let Ok(Some(status)) = agent.proc.0.try_wait() {
                let log = agent.log_lines(|_| true);
                let line = log
                    .iter()
                    .rev()
                    .find(|l| l.contains("error"))
                    .or(log.last())
                    .cloned()
                    .unwrap_or_else(|| format!("exited ({status}) without a word"));
                return Err(Failure { line, log });
            }
            if crate::util::listening(addr)
                && let Ok((200, _)) = http(addr, "GET", "/readyz", None)
            {
                agent.ready_secs = start.elapsed().as_secs_f64();
                return Ok(agent);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let log = agent.log_lines(|_| true);
        Err(Failure {
            line: format!(
                "not ready within {} s (last log line: {})",
                READY_TIMEOUT.as_secs(),
                log.last().map(String::as_str).unwrap_or("none")
            ),
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    fn metrics(&self) -> Result<Metrics> {
        let (status, body) = http(self.addr, "GET", "/metrics", None)?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(Metrics::parse(&body))
    }

    fn log_lines(&self, keep: impl Fn(&str) -> bool) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(strip_ansi)
            .filter(|l| keep(l))
            .collect()
    }
}

/// The message of a `tracing` fmt line: without timestamp, level and target.
fn log_message(line: &str) -> &str {
    let Some(rest) = [" ERROR ", " WARN ", " INFO ", " DEBUG "]
        .iter()
        .find_map(|lvl| line.find(lvl).map(|at| line[at + lvl.len()..].trim_start()))
    else {
        return line;
    };
    match rest.split_once(": ") {
        Some((target, msg)) if !target.contains(' ') => msg,
        _ => rest,
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Prometheus text, keyed by full series.
struct Metrics(HashMap<String, f64>);

impl Metrics {
    fn parse(text: &str) -> Self {
        Self(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (k, v) = l.rsplit_once(' ')?;
                    Some((k.to_owned(), v.parse().ok()?))
                })
                .collect(),
        )
    }
    fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }
    fn has(&self, series: &str) -> bool {
        self.0.contains_key(series)
    }
    /// Series of `name` whose labels include every `k="v"`.
    fn series<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k.split('{').next() == Some(name))
            .filter(move |(k, _)| {
                labels
                    .iter()
                    .all(|(l, v)| k.contains(&format!("{l}=\"{v}\"")))
            })
            .map(|(k, v)| (k.as_str(), *v))
    }
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series(name, labels).map(|(_, v)| v).sum()
    }
}

fn label<'a>(series: &'a str, name: &str) -> Option<&'a str> {
    let at = series.find(&format!("{name}=\""))? + name.len() + 2;
    let rest = &series[at..];
    Some(&rest[..rest.find('"')?])
}

/// The kernel's TCP MIB.
fn tcp_mib() -> Result<HashMap<String, u64>> {
    let text = std::fs::read_to_string("/proc/net/snmp")?;
    let lines: Vec<_> = text.lines().filter(|l| l.starts_with("Tcp:")).collect();
    if lines.len() < 2 {
        bail!("/proc/net/snmp has no Tcp lines");
    }
    Ok(lines[0]
        .split_whitespace()
        .zip(lines[1].split_whitespace())
        .skip(1)
        .map(|(n, v)| (n.to_owned(), v.parse().unwrap_or(0)))
        .collect())
}

fn bpftool(args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new("/sbin/bpftool")
        .arg("-j")
        .args(args)
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Every program the agent holds is attached (a tracepoint perf event or a BPF link points at
/// it); probes the agent reports down (`kernelsight_probe_up{probe} 0`) are listed with the
/// agent's own log line about them.
fn programs(agent: &Agent) -> Outcome {
    match programs_inner(agent) {
        Ok(o) => o,
        Err(e) => fail(format!("{e:#}"), json!({})),
    }
}

const NO_REASON: &str = "the agent gave no reason";

/// The agent's features behind the RST counts.
const RST_PROBES: &[&str] = &["tcp_rst_sent", "tcp_rst_received", "tcp_rst_sent_no_socket"];

/// Features the agent reports down, with its reason: from /api/status `features` when the agent
/// serves it, else `kernelsight_probe_up{probe} 0` and the agent's log line naming the probe.
fn probes_down(agent: &Agent) -> Result<BTreeMap<String, String>> {
    if let Ok((200, body)) = http(agent.addr, "GET", "/api/status", None)
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
        && let Some(features) = v["features"].as_array()
    {
        return Ok(features
            .iter()
            .filter(|f| f["up"].as_bool() == Some(false))
            .filter_map(|f| {
                let reason = f["reason"]
                    .as_str()
                    .filter(|r| !r.is_empty())
                    .unwrap_or(NO_REASON);
                Some((f["probe"].as_str()?.to_owned(), reason.to_owned()))
            })
            .collect());
    }
    let log = agent.log_lines(|l| l.contains(" WARN ") || l.contains(" ERROR "));
    Ok(agent
        .metrics()?
        .series("kernelsight_probe_up", &[])
        .filter(|(_, v)| *v == 0.0)
        .filter_map(|(k, _)| label(k, "probe").map(str::to_owned))
        .map(|p| {
            let why = log
                .iter()
                .find(|l| l.contains(p.as_str()))
                .map(|l| log_message(l).to_owned())
                .unwrap_or_else(|| NO_REASON.to_owned());
            (p, why)
        })
        .collect())
}

/// A failed check whose feature the agent itself reports unavailable (with a reason) becomes
/// "degraded": the cell then says which feature is off on this kernel and why. The host decides
/// whether that is acceptable for the kernel.
fn unless_down(agent: &Agent, probes: &[&str], mut o: Outcome) -> Outcome {
    // A check can say that even its partial answer is wrong; then no reason excuses it.
    if o.status != Status::Fail || o.data["degradable"] == json!(false) {
        return o;
    }
    let Ok(down) = probes_down(agent) else {
        return o;
    };
    let off: Vec<(&String, &String)> = down
        .iter()
        .filter(|(p, why)| probes.contains(&p.as_str()) && *why != NO_REASON)
        .collect();
    if off.is_empty() {
        return o;
    }
    let said: Vec<String> = off.iter().map(|(p, why)| format!("{p}: {why}")).collect();
    o.text = format!(
        "off on this kernel: {} (measured: {})",
        said.join("; "),
        o.text
    );
    o.status = Status::Degraded;
    o.data["down"] = json!(off.iter().map(|(p, _)| p).collect::<Vec<_>>());
    o
}

/// Ids of the BPF programs process `pid` holds open.
fn prog_ids_of(pid: u32) -> Result<BTreeSet<u64>> {
    let mut ids = BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        let is_prog = std::fs::read_link(fd.path())
            .is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|v| v.trim().parse().ok())
        {
            ids.insert(id);
        }
    }
    Ok(ids)
}

fn programs_inner(agent: &Agent) -> Result<Outcome> {
    let pid = agent.pid();
    // The programs the agent holds: its bpf-prog file descriptors (fdinfo names the id).
    let held = prog_ids_of(pid)?;
    let progs: BTreeMap<u64, String> = bpftool(&["prog", "show"])?
        .as_array()
        .context("bpftool prog show: not a list")?
        .iter()
        .filter_map(|p| {
            Some((
                p["id"].as_u64()?,
                p["name"].as_str().unwrap_or("?").to_owned(),
            ))
        })
        .filter(|(id, _)| held.contains(id))
        .collect();
    let mut attached: BTreeMap<u64, String> = BTreeMap::new();
    for p in bpftool(&["perf", "show"])?.as_array().into_iter().flatten() {
        if p["pid"].as_u64() == Some(u64::from(pid))
            && let Some(id) = p["prog_id"].as_u64()
        {
            let tp = p["tracepoint"].as_str().unwrap_or("perf event");
            attached.insert(id, tp.to_owned());
        }
    }
    for l in bpftool(&["link", "show"])?.as_array().into_iter().flatten() {
        if let Some(id) = l["prog_id"].as_u64()
            && progs.contains_key(&id)
        {
            let what = l["tp_name"]
                .as_str()
                .or(l["attach_type"].as_str())
                .or(l["type"].as_str())
                .unwrap_or("link");
            attached.insert(id, what.to_owned());
        }
    }
    let unattached: Vec<&str> = progs
        .iter()
        .filter(|(id, _)| !attached.contains_key(id))
        .map(|(_, n)| n.as_str())
        .collect();
    let down = probes_down(agent)?;
    let up = agent
        .metrics()?
        .series("kernelsight_probe_up", &[])
        .filter(|(_, v)| *v == 1.0)
        .count();
    let reasons: Vec<String> = down.iter().map(|(p, why)| format!("{p}: {why}")).collect();
    let names: Vec<String> = progs
        .iter()
        .map(|(id, n)| format!("{n}@{}", attached.get(id).map_or("-", String::as_str)))
        .collect();
    let data = json!({"loaded": progs.len(), "attached": progs.len() - unattached.len(),
        "names": names, "probes_up": up, "down": down.keys().collect::<Vec<_>>(), "reasons": reasons});
    if progs.is_empty() {
        return Ok(fail("the agent holds no eBPF programs".into(), data));
    }
    if !unattached.is_empty() {
        return Ok(fail(
            format!(
                "{}/{} attached; not attached: {}",
                progs.len() - unattached.len(),
                progs.len(),
                unattached.join(", ")
            ),
            data,
        ));
    }
    let text = format!("{n}/{n} attached", n = progs.len());
    if down.is_empty() {
        Ok(pass(text, data))
    } else {
        let no_reason = reasons
            .iter()
            .any(|r| r.ends_with("the agent logged no reason"));
        Ok(Outcome {
            status: if no_reason {
                Status::Fail
            } else {
                Status::Degraded
            },
            text: format!("{text}; off: {}", reasons.join("; ")),
            data,
        })
    }
}

fn closed_port(ip: IpAddr) -> Result<SocketAddr> {
    Ok(TcpListener::bind(SocketAddr::new(ip, 0))?.local_addr()?)
}

/// connect() to a closed port: the kernel answers the SYN with an RST the client receives.
fn refused(ip: IpAddr) -> Result<()> {
    match TcpStream::connect(closed_port(ip)?) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
        other => bail!("connect to a closed port on {ip}: {other:?}"),
    }
}

/// The server closes with SO_LINGER 0 after data: it sends an RST the client receives.
fn linger_abort(ip: IpAddr) -> Result<()> {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0))?;
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    client.write_all(b"hello")?;
    let mut buf = [0u8; 5];
    server.read_exact(&mut buf)?;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a linger struct that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            server.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("SO_LINGER: {}", std::io::Error::last_os_error());
    }
    drop(server);
    client.set_read_timeout(Some(Duration::from_secs(5)))?;
    match client.read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        other => bail!("abort on {ip}: the client read {other:?}, not a reset"),
    }
}

/// RSTs both ways on 127.0.0.1 and ::1, against the guest kernel's OutRsts and AttemptFails.
fn resets(agent: &Agent) -> Outcome {
    match resets_inner(agent, 4, 3) {
        Ok(o) => o,
        Err(e) => fail(format!("{e:#}"), json!({})),
    }
}

fn resets_inner(agent: &Agent, refusals: u64, aborts: u64) -> Result<Outcome> {
    let sent = |m: &Metrics| m.get("kernelsight_tcp_resets_total{direction=\"sent\"}");
    let received = |m: &Metrics| m.get("kernelsight_tcp_resets_total{direction=\"received\"}");
    let before = agent.metrics()?;
    if !before.has("kernelsight_tcp_resets_total{direction=\"sent\"}") {
        return Ok(fail(
            "the agent serves no kernelsight_tcp_resets_total".into(),
            json!({}),
        ));
    }
    let mib0 = tcp_mib()?;
    // The kernel's own view, beside its counters: how often the tracepoints fired.
    let tp = FtraceCount::start(&["tcp_send_reset", "tcp_receive_reset"]);
    let ips: [IpAddr; 2] = [Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
    for ip in ips {
        for _ in 0..refusals {
            refused(ip)?;
        }
        for _ in 0..aborts {
            linger_abort(ip)?;
        }
    }
    let mib1 = tcp_mib()?;
    let fired = tp.finish();
    let out_rsts = mib1["OutRsts"] - mib0["OutRsts"];
    let attempt_fails = mib1["AttemptFails"] - mib0["AttemptFails"];
    // The agent's totals are per-CPU map reads at scrape time; poll only as a hang guard.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = agent.metrics()?;
    while (sent(&after) - sent(&before)) < out_rsts as f64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        after = agent.metrics()?;
    }
    let got_sent = (sent(&after) - sent(&before)) as u64;
    let got_received = (received(&after) - received(&before)) as u64;
    // The kernel has no InRsts: every refusal fails in SYN_SENT (AttemptFails) and every abort
    // resets one established client.
    let want_received = attempt_fails + 2 * aborts;
    let data = json!({"sent": got_sent, "out_rsts": out_rsts, "received": got_received,
        "want_received": want_received, "provoked": 2 * (refusals + aborts),
        "tracepoint_fired": fired});
    let mut text = format!(
        "sent {got_sent} (kernel OutRsts {out_rsts}), received {got_received} (kernel {want_received})"
    );
    if got_sent != out_rsts || got_received != want_received {
        let n = |name: &str| fired.get(name).map_or("?".to_owned(), u64::to_string);
        text.push_str(&format!(
            "; the kernel's tracepoints fired tcp_send_reset {}, tcp_receive_reset {}",
            n("tcp_send_reset"),
            n("tcp_receive_reset")
        ));
    }
    if got_sent == out_rsts && got_received == want_received && out_rsts == 2 * (refusals + aborts)
    {
        Ok(pass(text, data))
    } else {
        // Short of the kernel's counter, a cell may still be ⚠️ (a feature the agent reports off
        // on this kernel), but only if the agent counted every RST the kernel's own tracepoints
        // did report: received exact, sent equal to tcp_send_reset's hits.
        let mut o = fail(text, data);
        let partial_exact = got_received == want_received
            && fired.get("tcp_send_reset") == Some(&got_sent)
            && got_sent < out_rsts;
        o.data["degradable"] = json!(partial_exact);
        Ok(o)
    }
}

/// Counts hits of tcp:* tracepoints through ftrace itself (independent of any BPF program),
/// so a cell can tell "the agent missed it" from "the kernel never reported it".
struct FtraceCount {
    events: Vec<&'static str>,
    enabled: bool,
}

const TRACEFS: &str = "/sys/kernel/tracing";

impl FtraceCount {
    fn start(events: &[&'static str]) -> Self {
        let _ = std::fs::write(format!("{TRACEFS}/trace"), "");
        let _ = std::fs::write(format!("{TRACEFS}/buffer_size_kb"), "1024");
        let enabled = events
            .iter()
            .all(|e| std::fs::write(format!("{TRACEFS}/events/tcp/{e}/enable"), "1").is_ok());
        Self {
            events: events.to_vec(),
            enabled,
        }
    }

    fn finish(self) -> BTreeMap<String, u64> {
        for e in &self.events {
            let _ = std::fs::write(format!("{TRACEFS}/events/tcp/{e}/enable"), "0");
        }
        if !self.enabled {
            return BTreeMap::new();
        }
        let trace = std::fs::read_to_string(format!("{TRACEFS}/trace")).unwrap_or_default();
        let _ = std::fs::write(format!("{TRACEFS}/trace"), "");
        self.events
            .iter()
            .map(|e| {
                let needle = format!(" {e}:");
                let n = trace.lines().filter(|l| l.contains(&needle)).count() as u64;
                ((*e).to_owned(), n)
            })
            .collect()
    }
}

fn nft(script: &str) -> Result<()> {
    let mut child = Command::new("/sbin/nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nft")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Retransmits from real loss: nftables drops a connection's segments on the input hook for a
/// bounded moment; the agent's total must equal the kernel's RetransSegs delta.
fn retransmits(agent: &Agent) -> Outcome {
    match retransmits_inner(agent) {
        Ok(o) => o,
        Err(e) => fail(format!("{e:#}"), json!({})),
    }
}

fn retransmits_inner(agent: &Agent) -> Result<Outcome> {
    const MESSAGES: usize = 20;
    let total = |m: &Metrics| m.get("kernelsight_tcp_retransmits_total");
    let me = std::process::id().to_string();
    let by_owner = |m: &Metrics| {
        m.sum(
            "kernelsight_tcp_events_by_owner_total",
            &[("event", "retransmit"), ("pid", &me)],
        )
    };
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let server_addr = listener.local_addr()?;
    let mut client = TcpStream::connect(server_addr)?;
    client.set_nodelay(true)?;
    let (mut server, _) = listener.accept()?;
    let before = agent.metrics()?;
    let mib0 = tcp_mib()?;
    nft(&format!(
        "add table inet ks_rtx\n\
         add chain inet ks_rtx input {{ type filter hook input priority 0; policy accept; }}\n\
         add rule inet ks_rtx input tcp dport {} drop\n",
        server_addr.port()
    ))?;
    for i in 0..MESSAGES {
        client.write_all(&[i as u8; 100])?;
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(800));
    nft("delete table inet ks_rtx\n")?;
    server.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut got = vec![0u8; MESSAGES * 100];
    server.read_exact(&mut got)?;
    let mib1 = tcp_mib()?;
    let kernel = mib1["RetransSegs"] - mib0["RetransSegs"];
    // Owner attribution comes from the event stream: give the ring reader a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = agent.metrics()?;
    while ((by_owner(&after) - by_owner(&before)) as u64) < kernel && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        after = agent.metrics()?;
    }
    let counted = (total(&after) - total(&before)) as u64;
    let owned = (by_owner(&after) - by_owner(&before)) as u64;
    let data = json!({"agent": counted, "kernel": kernel, "owned_by_driver": owned});
    let text = format!("{counted} (kernel RetransSegs {kernel}), {owned} attributed to the sender");
    if kernel > 0 && counted == kernel && owned == kernel {
        Ok(pass(text, data))
    } else if kernel == 0 {
        Ok(fail(
            format!("the drop window caused no retransmits: {text}"),
            data,
        ))
    } else {
        Ok(fail(text, data))
    }
}

/// Two busy processes: `ks-victim` (watched by comm) and `ks-bystander` (not watched).
struct Hogs {
    victim: Proc,
    bystander: Proc,
}

impl Hogs {
    fn start() -> Result<Self> {
        let spawn = |name: &str| -> Result<Proc> {
            Ok(Proc(
                Command::new(std::env::current_exe()?)
                    .args(["kernel-guest", "--hog", name])
                    .spawn()
                    .with_context(|| format!("starting {name}"))?,
            ))
        };
        Ok(Self {
            victim: spawn("ks-victim")?,
            bystander: spawn("ks-bystander")?,
        })
    }
}

/// A busy pair of threads: each computes ~3 ms and sleeps 1 ms, so on one CPU they keep waking
/// up into a run queue someone else holds.
fn hog(name: &str) -> ! {
    let cname = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: a NUL-terminated name that outlives the call.
    unsafe { libc::prctl(libc::PR_SET_NAME, cname.as_ptr()) };
    let work = || {
        loop {
            let t = Instant::now();
            let mut x = 0u64;
            while t.elapsed() < Duration::from_millis(3) {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    std::thread::spawn(work);
    work()
}

/// Run-queue histogram non-empty for the watched busy pair, and nothing for the busy process
/// outside the watch set.
fn runq(agent: &Agent, hogs: &Hogs) -> Outcome {
    match runq_inner(agent, hogs) {
        Ok(o) => o,
        Err(e) => fail(format!("{e:#}"), json!({})),
    }
}

fn runq_inner(agent: &Agent, hogs: &Hogs) -> Result<Outcome> {
    let victim = hogs.victim.0.id().to_string();
    let bystander = hogs.bystander.0.id().to_string();
    const HIST: &str = "kernelsight_runq_latency_seconds_count";
    // The agent re-reads its selectors every second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut m = agent.metrics()?;
    while m.get("kernelsight_runq_watched_processes") < 1.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        m = agent.metrics()?;
    }
    let count = |m: &Metrics, pid: &str| m.sum(HIST, &[("pid", pid)]) as u64;
    let v0 = count(&m, &victim);
    std::thread::sleep(Duration::from_secs(2));
    let m1 = agent.metrics()?;
    let victim_n = count(&m1, &victim) - v0;
    let bystander_n = count(&m1, &bystander);
    let slow = |pid: &str| m1.sum("kernelsight_runq_slow_events_total", &[("pid", pid)]) as u64;
    let pids: BTreeSet<String> = m1
        .series(HIST, &[])
        .filter_map(|(k, _)| label(k, "pid").map(str::to_owned))
        .collect();
    let watched = m1.get("kernelsight_runq_watched_processes") as u64;
    // Who held the CPU: the bystander ran while the victim's threads waited.
    let culprit_s = m1.sum(
        "kernelsight_runq_culprit_seconds_total",
        &[
            ("victim_comm", "ks-victim"),
            ("culprit_comm", "ks-bystander"),
        ],
    );
    let data = json!({"victim": victim_n, "bystander": bystander_n, "watched": watched,
        "victim_slow_events": slow(&victim), "bystander_slow_events": slow(&bystander),
        "histogram_pids": pids.len(), "bystander_culprit_s": culprit_s});
    let text = format!(
        "victim {victim_n} waits in 2 s ({} slow-wait events in all), bystander {bystander_n}, watched {watched}, bystander ran {culprit_s:.3} s while the victim waited",
        slow(&victim)
    );
    let only_victim = pids.iter().all(|p| *p == victim);
    if victim_n > 0
        && bystander_n == 0
        && slow(&bystander) == 0
        && watched == 1
        && only_victim
        && culprit_s > 0.0
    {
        Ok(pass(text, data))
    } else if !only_victim {
        Ok(fail(
            format!("{text}; histograms for pids outside the watch set: {pids:?}"),
            data,
        ))
    } else {
        Ok(fail(text, data))
    }
}

/// No BTF: /sys/kernel/btf is hidden under an empty tmpfs. The agent must say in a line what is
/// missing and, since the TCP probes are classic tracepoints read from tracefs, still count RSTs.
fn no_btf(bin: &Path) -> Outcome {
    let hide = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs", "/sys/kernel/btf"])
        .status();
    if !hide.is_ok_and(|s| s.success()) || Path::new("/sys/kernel/btf/vmlinux").exists() {
        return fail("could not hide /sys/kernel/btf/vmlinux".into(), json!({}));
    }
    let outcome = match Agent::start(bin, "nobtf", &[]) {
        Err(failure) => {
            let btf_lines = failure
                .log
                .iter()
                .filter(|l| l.to_lowercase().contains("btf"))
                .count();
            emit_log("nobtf", &failure.log);
            fail(
                format!("agent exited, no TCP counters: {}", failure.line),
                json!({"btf_lines": btf_lines}),
            )
        }
        Ok(agent) => {
            let lines = agent.log_lines(|l| {
                (l.contains(" WARN ") || l.contains(" ERROR ")) && l.to_lowercase().contains("btf")
            });
            let tcp = resets_inner(&agent, 1, 1).map(|o| unless_down(&agent, RST_PROBES, o));
            let log = agent.log_lines(|_| true);
            drop(agent);
            emit_log("nobtf", &log);
            let said = lines.first().map(|l| log_message(l).to_owned());
            match (said, tcp) {
                (None, _) => fail(
                    "agent up, but no warning names the missing BTF".into(),
                    json!({"btf_lines": 0}),
                ),
                (Some(said), Ok(o)) if o.status == Status::Pass => pass(
                    format!(
                        "{} line(s): \"{said}\"; TCP still served: {}",
                        lines.len(),
                        o.text
                    ),
                    json!({"btf_lines": lines.len(), "resets": o.data}),
                ),
                (Some(said), Ok(o)) if o.status == Status::Degraded => Outcome {
                    status: Status::Degraded,
                    text: format!("said \"{said}\"; TCP: {}", o.text),
                    data: json!({"btf_lines": lines.len(), "resets": o.data, "down": o.data["down"]}),
                },
                (Some(said), Ok(o)) => fail(
                    format!("said \"{said}\", but TCP counters wrong: {}", o.text),
                    json!({"btf_lines": lines.len(), "resets": o.data}),
                ),
                (Some(said), Err(e)) => fail(
                    format!("said \"{said}\", but the TCP check failed: {e:#}"),
                    json!({"btf_lines": lines.len()}),
                ),
            }
        }
    };
    let _ = Command::new("umount").arg("/sys/kernel/btf").status();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_message_drops_timestamp_level_and_target() {
        assert_eq!(
            log_message("2026-12-01T09:00:00.1Z  WARN agent::probes: kernel BTF is missing: x"),
            "kernel BTF is missing: x"
        );
        assert_eq!(
            log_message("kernelsight-agent: error: no tracefs"),
            "kernelsight-agent: error: no tracefs"
        );
    }
}
