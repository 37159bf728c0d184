//! `cargo xtask scenario <name>`: the game server, the agent and bots on loopback, one injected
//! fault with known ground truth (what, when, toward which endpoint), and a comparison of what
//! the agent detected against it: time to detect, right class and subject, false alarms.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex, atomic::AtomicBool, atomic::Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

mod pod;

use crate::{
    redis::Redis,
    setup::Env,
    util::{Proc, http, run as run_cmd, step, wait_ready},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Load without a fault: nothing should be raised.
    Calm,
    /// The scheduled batch job floods the worker pool.
    Surge,
    /// Redis runs out of client slots (maxclients) and resets every new connection of the
    /// server's pool.
    RstStorm,
    /// nftables drops segments to the game server's port for a bounded time.
    PacketLoss,
    /// CPU hogs outside the server oversubscribe the cores.
    NoisyNeighbour,
    /// Attribution: another process (not the server) has its connections refused while the
    /// server runs calmly. The incident must name that process's dependency and the process;
    /// nothing may be pinned on the server (no incident about it, no evidence on its spans).
    Bystander,
    /// Attribution: one bot session's packets are dropped (nftables, input hook, that client's
    /// port) among many sessions. Only that session's span may carry the retransmits.
    OneSession,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Calm,
        Kind::Surge,
        Kind::RstStorm,
        Kind::PacketLoss,
        Kind::NoisyNeighbour,
        Kind::Bystander,
        Kind::OneSession,
    ];

    /// The attribution scenarios: their ground truth is checked beyond the incident's class,
    /// and they need no baseline warm-up (connection faults judge against a zero prior).
    fn attribution(self) -> bool {
        matches!(self, Kind::Bystander | Kind::OneSession)
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Calm => "calm",
            Kind::Surge => "surge",
            Kind::RstStorm => "rst-storm",
            Kind::PacketLoss => "packet-loss",
            Kind::NoisyNeighbour => "noisy-neighbour",
            Kind::Bystander => "bystander",
            Kind::OneSession => "one-session",
        }
    }

    /// The incident class the fault must raise (None: nothing may be raised).
    fn expected_class(self) -> Option<&'static str> {
        match self {
            // One session's retransmits are below any endpoint's threshold: the evidence must
            // be on its span, and no incident is expected.
            Kind::Calm | Kind::OneSession => None,
            Kind::Surge => Some("task_surge"),
            Kind::RstStorm | Kind::PacketLoss | Kind::Bystander => Some("connection_fault"),
            Kind::NoisyNeighbour => Some("cpu_contention"),
        }
    }
}

#[derive(Args, Clone)]
pub struct ScenarioArgs {
    /// Which fault to inject.
    #[arg(value_enum)]
    pub kind: Option<Kind>,
    /// Run every scenario.
    #[arg(long, conflicts_with = "kind")]
    pub all: bool,
    /// Runs per scenario (precision, recall and time to detect are reported over all of them).
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    /// Use the debug binaries in target/debug (what the test suite builds) instead of release.
    #[arg(long)]
    pub debug: bool,
    /// Use the binaries as they are, without building them first (the test suite's cargo has
    /// built them already and holds the build lock).
    #[arg(long)]
    pub no_build: bool,
    /// Print the report as JSON (for tests) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Bot sessions and rooms.
    #[arg(long, default_value_t = 40)]
    pub sessions: u32,
    #[arg(long, default_value_t = 4)]
    pub rooms: u32,
    /// Seconds of normal load before the fault: the detectors trust a task or CPU baseline
    /// after 30 one-second buckets of history.
    #[arg(long, default_value_t = 35)]
    pub warmup: u64,
    /// Seconds the fault lasts.
    #[arg(long, default_value_t = 10)]
    pub fault: u64,
    /// Seconds of normal load after the fault.
    #[arg(long, default_value_t = 10)]
    pub after: u64,
    /// Pod mode: the game server and its Redis run like a container (own pid, mount,
    /// network and cgroup namespaces, a veth to the host), the agent with only the DaemonSet's
    /// capabilities and `--cgroup` selection.
    #[arg(long)]
    pub pod: bool,
}

struct Bins {
    agent: PathBuf,
    server: PathBuf,
    bots: PathBuf,
}

fn bins(env: &Env, debug: bool, no_build: bool) -> Result<Bins> {
    let profile = if debug { "debug" } else { "release" };
    if !no_build {
        let mut cmd = env.cargo();
        cmd.args(["build", "-p", "agent", "-p", "game-server"]);
        if !debug {
            cmd.arg("--release");
        }
        run_cmd(&mut cmd)?;
    }
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env.root.join("target"))
        .join(profile);
    let bins = Bins {
        agent: dir.join("kernelsight-agent"),
        server: dir.join("game-server"),
        bots: dir.join("bots"),
    };
    for b in [&bins.agent, &bins.server, &bins.bots] {
        if !b.exists() {
            bail!(
                "{} is missing; build it (cargo build -p agent -p game-server)",
                b.display()
            );
        }
    }
    Ok(bins)
}

fn free_addr() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64
}

/// An incident as first seen in the agent's listing.
#[derive(Clone, Debug)]
struct Seen {
    id: String,
    class: String,
    subject: String,
    summary: String,
    first_seen_unix_ns: u64,
    /// The evidence's count of failed spans and the spans the incident links, as last seen
    /// (links are gathered while the incident is open).
    failed_spans: u64,
    affected: Vec<Value>,
    /// The subject's pod as the agent names it (`uid`, `namespace/name`), when it does.
    pod: Value,
    /// cpu_contention: the top culprit the agent named (pid, comm, cgroup, share), as last
    /// seen.
    culprit: Value,
    /// The incident's named attributes (`server.address`, `kernelsight.fault.*`,
    /// `kernelsight.culprit.*`), as last seen.
    attributes: Value,
    /// The incident's evidence, as last seen.
    evidence: Value,
    /// `early` (an unsettled bucket already beat the threshold) or `settled`.
    raised_by: String,
}

impl Seen {
    /// A named attribute; else the evidence's entry of that name (where a detector may put
    /// `kernelsight.culprit.*` instead).
    fn attr(&self, k: &str) -> Option<&Value> {
        self.attributes
            .get(k)
            .or_else(|| self.evidence.get(k))
            .filter(|v| !v.is_null())
    }

    /// Who the incident blames: the culprit process when it names one, else for a connection
    /// fault the dependency and the kind of failure.
    fn culprit_or_peer(&self) -> String {
        if let Some(pid) = self.attr("kernelsight.culprit.pid") {
            let comm = self
                .attr("kernelsight.culprit.comm")
                .and_then(Value::as_str)
                .unwrap_or("?");
            return format!("{comm} ({pid})");
        }
        // The incident's culprit list (what `/incidents` shows), when the span's attributes
        // were not among the ones seen.
        if let (Some(pid), Some(comm)) = (
            self.culprit["pid"].as_u64().filter(|p| *p != 0),
            self.culprit["comm"].as_str(),
        ) {
            return format!("{comm} ({pid})");
        }
        if self.class != "connection_fault" {
            return "-".into();
        }
        let Some(kind) = self.attr("kernelsight.fault.kind").and_then(Value::as_str) else {
            return "-".into();
        };
        let addr = self
            .attr("server.address")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let port = self.attr("server.port").cloned().unwrap_or(Value::Null);
        let svc = self
            .attr("peer.service")
            .and_then(Value::as_str)
            .map(|s| format!("{s} "))
            .unwrap_or_default();
        let count = self
            .attr("kernelsight.fault.count")
            .cloned()
            .unwrap_or(Value::Null);
        let client = match (
            self.attr("kernelsight.fault.client.comm")
                .and_then(Value::as_str),
            self.attr("kernelsight.fault.client.pid"),
        ) {
            (Some(c), Some(p)) => format!(", client {c} ({p})"),
            _ => String::new(),
        };
        format!("{svc}{addr}:{port} {kind} ×{count}{client}")
    }
}

/// Polls /incidents and remembers when each incident first appeared.
fn watch_incidents(
    agent: SocketAddr,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            if let Ok((200, body)) = http(agent, "GET", "/incidents", None)
                && let Ok(v) = serde_json::from_str::<Value>(&body)
            {
                let now = now_unix_ns();
                let mut seen = seen.lock().expect("not poisoned");
                for inc in v["incidents"].as_array().into_iter().flatten() {
                    let id = inc["id"].as_str().unwrap_or_default().to_owned();
                    let failed_spans = inc["evidence"]["failed_spans"].as_u64().unwrap_or(0);
                    let affected: Vec<Value> = inc["affected_spans"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|s| {
                            json!({
                                "name": s["name"],
                                "peer": format!("{}:{}",
                                    s["attributes"]["network.peer.address"].as_str().unwrap_or("?"),
                                    s["attributes"]["network.peer.port"]),
                            })
                        })
                        .collect();
                    let culprit = inc["culprits"][0].clone();
                    if let Some(s) = seen.iter_mut().find(|s| s.id == id) {
                        if !culprit.is_null() {
                            s.culprit = culprit;
                            s.summary = inc["summary"].as_str().unwrap_or_default().to_owned();
                        }
                        if inc["attributes"].is_object() {
                            s.attributes = inc["attributes"].clone();
                        }
                        s.evidence = inc["evidence"].clone();
                        s.failed_spans = s.failed_spans.max(failed_spans);
                        if affected.len() > s.affected.len() {
                            s.affected = affected;
                        }
                    } else {
                        seen.push(Seen {
                            failed_spans,
                            affected,
                            id,
                            class: inc["class"].as_str().unwrap_or_default().to_owned(),
                            subject: inc["subject"].as_str().unwrap_or_default().to_owned(),
                            summary: inc["summary"].as_str().unwrap_or_default().to_owned(),
                            first_seen_unix_ns: now,
                            pod: inc["pod"].clone(),
                            culprit,
                            attributes: inc["attributes"].clone(),
                            evidence: inc["evidence"].clone(),
                            raised_by: inc["raised_by"].as_str().unwrap_or("").to_owned(),
                        });
                    }
                }
            }
            // The poll's period is the measurement's resolution (time to detect is taken when
            // the listing first shows the incident): 100 ms of loopback HTTP is cheap.
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// The fault, while it lasts; undone on drop even if the run fails.
enum Fault {
    None,
    RedisFull(RedisFull),
    Nft,
    /// nft table in the pod's network namespace (named).
    NftIn(String),
    /// Held so that ending the fault (drop) stops them; then their cgroup is removed.
    Hogs(
        Vec<Proc>,
        #[expect(
            dead_code,
            reason = "held for its drop, which removes the cgroup once the hogs are gone"
        )]
        HogCgroup,
    ),
    /// Held so that ending the fault (drop) stops them (hogs, the bystander).
    Procs(#[expect(dead_code, reason = "held only for its drop, which stops the hogs")] Vec<Proc>),
}

/// The noisy neighbour's own cgroup v2 (`<cgroup2 root>/ks-scenario-noisy-<xtask pid>`):
/// ground truth the agent is not told. Removed when its processes are gone.
struct HogCgroup(PathBuf);

impl HogCgroup {
    fn create() -> Result<Self> {
        let dir = pod::cgroup2_root().join(format!("ks-scenario-noisy-{}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir)
            .with_context(|| format!("creating {} (cgroup v2)", dir.display()))?;
        Ok(Self(dir))
    }

    fn add(&self, pid: u32) -> Result<()> {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving pid {pid} into {}", self.0.display()))
    }

    /// The path as /proc/PID/cgroup (and so the agent) names it.
    fn path(&self) -> String {
        format!(
            "/{}",
            self.0
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
        )
    }
}

impl Drop for HogCgroup {
    fn drop(&mut self) {
        // The hogs were killed just before; the kernel frees the cgroup once they are reaped.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        step(format!("could not remove {}", self.0.display()));
    }
}

impl Drop for Fault {
    fn drop(&mut self) {
        match self {
            Fault::RedisFull(f) => f.end(),
            Fault::Nft => {
                let _ = nft("delete table inet ks_scenario\n");
            }
            Fault::NftIn(netns) => {
                let _ = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        netns,
                        "nft",
                        "delete",
                        "table",
                        "inet",
                        "ks_scenario",
                    ])
                    .status();
            }
            Fault::Hogs(hogs, _) => hogs.clear(),
            Fault::None | Fault::Procs(_) => {}
        }
    }
}

/// The seed's incident with a real Redis, in two steps. First Redis stalls (`CLIENT PAUSE` for
/// 1.5 s): the server's commands wait for replies until their response timeout, all pooled
/// connections are busy and further commands fail with "pool exhausted" after the pool's wait.
/// Then Redis runs out of client slots: `maxclients` lowered to 1 with that one slot held by this
/// connection, the server's pooled connections killed (CLIENT KILL). Every connection the pool
/// opens now is accepted and closed at once by Redis ("max number of clients reached") with the
/// client's handshake unread, so the kernel closes it with an RST (TCP_ABORT_ON_CLOSE, or
/// TCP_ABORT_ON_DATA for data after the close), which the tcp:tcp_send_reset and
/// tcp:tcp_receive_reset tracepoints count, and the client's commands fail with ECONNRESET.
/// (CLIENT KILL alone closes with a FIN; an nftables `reject with tcp reset` is built by
/// netfilter, so only the receiving side's tracepoint would fire.) The commands go as Redis
/// inline commands on the held connection.
struct RedisFull {
    conn: Arc<Mutex<std::net::TcpStream>>,
    slots: Option<std::thread::JoinHandle<Result<()>>>,
}

const REDIS_STALL: Duration = Duration::from_millis(1500);

impl RedisFull {
    fn start(redis: &Redis) -> Result<Self> {
        let conn = std::net::TcpStream::connect(redis.control)?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let conn = Arc::new(Mutex::new(conn));
        command(
            &conn,
            &format!("CLIENT PAUSE {} ALL", REDIS_STALL.as_millis()),
        )?;
        let c = conn.clone();
        let slots = std::thread::spawn(move || {
            std::thread::sleep(REDIS_STALL);
            command(&c, "CONFIG SET maxclients 1")?;
            command(&c, "CLIENT KILL TYPE normal SKIPME yes")?;
            Ok(())
        });
        Ok(Self {
            conn,
            slots: Some(slots),
        })
    }

    fn end(&mut self) {
        if let Some(t) = self.slots.take() {
            match t.join() {
                Ok(Err(e)) => step(format!("rst-storm: {e:#}")),
                Err(_) => step("rst-storm: the injector thread panicked"),
                Ok(Ok(())) => {}
            }
        }
        let _ = command(&self.conn, "CONFIG SET maxclients 10000");
    }
}

fn command(conn: &Mutex<std::net::TcpStream>, line: &str) -> Result<String> {
    let mut conn = conn.lock().expect("not poisoned");
    conn.write_all(format!("{line}\r\n").as_bytes())?;
    let mut buf = [0u8; 256];
    let n = conn.read(&mut buf)?;
    let reply = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
    if reply.starts_with('-') || n == 0 {
        bail!("redis: {line}: {reply}");
    }
    Ok(reply)
}

fn nft(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .context("nft (nftables)")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(script.as_bytes())?;
    if !child.wait()?.success() {
        bail!("nft failed on:\n{script}");
    }
    Ok(())
}

/// What one run found, against its ground truth.
#[derive(Debug)]
struct RunReport {
    kind: Kind,
    fault_start_unix_ns: u64,
    /// The subject the right incident must name (`ep:addr:port`, `pool:name`, `pid:n`), or a
    /// prefix of it.
    expected_subject: Option<String>,
    detected: Option<Seen>,
    false_alarms: Vec<Seen>,
    /// Incidents about endpoints and processes that are not part of the scenario (other
    /// traffic on this machine): shown, not scored.
    unrelated: Vec<Seen>,
    bots: Value,
    /// Connections Redis refused for want of client slots (INFO stats rejected_connections;
    /// ground truth for rst-storm).
    redis_rejected_connections: u64,
    /// The server's Redis commands by outcome (ok, error, pool_exhausted).
    redis_commands: Value,
    /// Whether the server ran in a pod (`--pod`), and the pod's UID.
    pod: bool,
    pod_uid: Option<String>,
    /// The agent's span counters at the end: received, joined by runq / tcp.
    spans: Value,
    /// noisy-neighbour: the culprit the agent named against the ground truth (the hogs' pids
    /// and cgroup): `{named, right, hog_pids, hog_cgroup}`.
    culprit: Option<Value>,
    /// What only the scenario knows (the bystander's pid and target, the disturbed session's
    /// port), and how the agent's attribution compared with it (`ok`, and why not).
    ground_truth: Value,
    attribution: Option<Attribution>,
}

#[derive(Debug)]
struct Attribution {
    ok: bool,
    detail: String,
}

impl RunReport {
    fn ttd_s(&self) -> Option<f64> {
        self.detected.as_ref().map(|d| {
            d.first_seen_unix_ns
                .saturating_sub(self.fault_start_unix_ns) as f64
                / 1e9
        })
    }

    fn json(&self) -> Value {
        let seen = |s: &Seen| {
            let at = (s.first_seen_unix_ns as f64 - self.fault_start_unix_ns as f64) / 1e9;
            json!({"id": s.id, "class": s.class, "subject": s.subject, "summary": s.summary, "seen_after_fault_start_s": at,
                "failed_spans": s.failed_spans, "affected_spans": s.affected.len(),
                "affected_sample": s.affected.iter().take(5).collect::<Vec<_>>(), "pod": s.pod, "attributes": s.attributes, "culprit_or_peer": s.culprit_or_peer(), "raised_by": s.raised_by})
        };
        json!({
            "scenario": self.kind.name(),
            "expected_class": self.kind.expected_class(),
            "expected_subject": self.expected_subject,
            "detected": self.detected.as_ref().map(seen),
            "time_to_detect_s": self.ttd_s(),
            "false_alarms": self.false_alarms.iter().map(seen).collect::<Vec<_>>(),
            "unrelated": self.unrelated.iter().map(seen).collect::<Vec<_>>(),
            "bots": self.bots,
            "redis_rejected_connections": self.redis_rejected_connections,
            "redis_commands": self.redis_commands,
            "mode": if self.pod { "pod" } else { "host" },
            "pod_uid": self.pod_uid,
            "spans": self.spans,
            "culprit": self.culprit,
            "ground_truth": self.ground_truth,
            "attribution_ok": self.attribution.as_ref().map(|a| a.ok),
            "attribution": self.attribution.as_ref().map(|a| a.detail.clone()),
        })
    }
}

fn run_one(bins: &Bins, kind: Kind, a: &ScenarioArgs) -> Result<RunReport> {
    // Pod mode: made first, so that it is undone last (after every process is gone).
    let pod = a.pod.then(|| pod::Pod::create(kind as u32)).transpose()?;
    let (agent_http, otlp_grpc, mut otlp_http, mut game) =
        (free_addr()?, free_addr()?, free_addr()?, free_addr()?);
    if let Some(p) = &pod {
        // The pod reaches the agent on the host side of its veth.
        otlp_http = TcpListener::bind((p.host_ip, 0))?.local_addr()?;
        game = p.game_addr();
    }
    let data = std::env::temp_dir().join(format!(
        "ks-scenario-{}-{}",
        std::process::id(),
        kind.name()
    ));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    // In pod mode Redis runs in the pod's network namespace: the server reaches it on the pod's
    // own 127.0.0.1, the injector from the host through the pod's address.
    let redis = match &pod {
        Some(p) => Redis::start_in_netns(&data.join("redis"), &p.netns, p.pod_ip)?,
        None => Redis::start(&data.join("redis"))?,
    };
    let logs = |name: &str| -> Result<std::fs::File> {
        Ok(std::fs::File::create(data.join(format!("{name}.log")))?)
    };

    let mut agent_cmd = match &pod {
        Some(_) => pod::daemonset_caps_command(&bins.agent)?,
        None => Command::new(&bins.agent),
    };
    match &pod {
        Some(p) => agent_cmd.arg("--cgroup").arg(&p.cgroup_parent),
        None => agent_cmd.args(["--comm", "game-server"]),
    };
    let mut agent = Proc::spawn(
        agent_cmd
            .args(["--http-addr", &agent_http.to_string()])
            .args([
                "--otlp-grpc-addr",
                &otlp_grpc.to_string(),
                "--otlp-http-addr",
                &otlp_http.to_string(),
            ])
            .env("RUST_LOG", "info")
            .stderr(logs("agent")?),
    )
    .context("starting the agent")?;
    wait_ready(agent_http, "the agent", &mut agent)?;
    let mut server_cmd = match &pod {
        Some(p) => {
            let mut c = p.container_command(&bins.server);
            c.env("OTEL_RESOURCE_ATTRIBUTES", p.resource_attributes());
            c
        }
        None => Command::new(&bins.server),
    };
    let mut server = Proc::spawn(
        server_cmd
            .args(["--listen", &game.to_string(), "--dev", "--data-dir"])
            .arg(&data)
            .args(["--redis-addr", &redis.addr.to_string()])
            // The game server exports OTLP over HTTP/protobuf (4318-style).
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp_http}"))
            // Export spans five times a second (the SDK's default is 5 s): task spans feed
            // the surge verdict, which cannot come before they do. The batch processor's
            // own cost is per batch, not per span.
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            .env("RUST_LOG", "info")
            .stderr(logs("game-server")?),
    )
    .context("starting the game server")?;
    let server_pid = match &pod {
        // The subject of a cpu_contention incident is the host pid the kernel reports.
        Some(p) => p.wait_ready(&mut server)?,
        None => {
            wait_ready(game, "the game server", &mut server)?;
            server.0.id()
        }
    };

    // Connection faults judge against a zero prior (no baseline to warm up): the attribution
    // scenarios need only the sessions connected, which keeps them cheap in the test suite.
    let (warmup, after) = if kind.attribution() {
        (a.warmup.min(5), a.after.min(4))
    } else {
        (a.warmup, a.after)
    };
    let total = warmup + a.fault + after;
    let bots = Proc::spawn(
        Command::new(&bins.bots)
            .args(["--url", &format!("ws://{game}/ws")])
            .args([
                "--sessions",
                &a.sessions.to_string(),
                "--rooms",
                &a.rooms.to_string(),
            ])
            .args(["--rate", "10", "--duration", &total.to_string(), "--json"])
            .stdout(Stdio::piped())
            .stderr(logs("bots")?),
    )
    .context("starting the bots")?;

    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_incidents(agent_http, stop.clone(), seen.clone());

    std::thread::sleep(Duration::from_secs(warmup));
    let mut ground_truth = Value::Null;
    // The one-session scenario's victim: one established bot connection, picked before the
    // clock starts (the agent is not told).
    let victim = if kind == Kind::OneSession {
        Some(one_session(game, bots.0.id())?)
    } else {
        None
    };
    let fault_start_unix_ns = now_unix_ns();
    step(format!("scenario {}: fault starts", kind.name()));
    // noisy-neighbour: the hogs' pids and their cgroup path.
    let mut hog_truth: Option<(Vec<u32>, String)> = None;
    let (fault, expected_subject) = match kind {
        Kind::Calm => (Fault::None, None),
        Kind::Surge => {
            let body = json!({"kind": "full_sync", "tasks": 3000}).to_string();
            let (status, reply) = http(game, "POST", "/admin/batch", Some(&body))?;
            if status != 200 {
                bail!("POST /admin/batch answered {status}: {reply}");
            }
            (Fault::None, Some("pool:".to_owned()))
        }
        Kind::RstStorm => (
            Fault::RedisFull(RedisFull::start(&redis)?),
            Some(format!("ep:{}", redis.addr)),
        ),
        Kind::PacketLoss if pod.is_some() => {
            let p = pod.as_ref().expect("pod mode");
            p.nft(&format!(
                "add table inet ks_scenario\n\
                 add chain inet ks_scenario input {{ type filter hook input priority 0; policy accept; }}\n\
                 add rule inet ks_scenario input ip daddr {} tcp dport {} drop\n",
                p.pod_ip,
                game.port()
            ))?;
            (
                Fault::NftIn(p.netns.clone()),
                Some(format!("ep:{}", p.pod_ip)),
            )
        }
        Kind::PacketLoss => {
            nft(&format!(
                "add table inet ks_scenario\n\
                 add chain inet ks_scenario input {{ type filter hook input priority 0; policy accept; }}\n\
                 add rule inet ks_scenario input ip daddr 127.0.0.1 tcp dport {} drop\n",
                game.port()
            ))?;
            (Fault::Nft, Some("ep:127.0.0.1".to_owned()))
        }
        Kind::Bystander => {
            let target = closed_service_addr()?;
            let p = Proc::spawn(Command::new(crate::util::self_exe()).args([
                "bystander",
                "--target",
                &target.to_string(),
                "--seconds",
                &a.fault.to_string(),
            ]))?;
            ground_truth = json!({"bystander_pid": p.0.id(), "target": target.to_string()});
            (Fault::Procs(vec![p]), Some(format!("ep:{target}")))
        }
        Kind::OneSession => {
            let port = victim.expect("picked above");
            ground_truth = json!({"session_port": port});
            nft(&format!(
                "add table inet ks_scenario\n\
                 add chain inet ks_scenario input {{ type filter hook input priority 0; policy accept; }}\n\
                 add rule inet ks_scenario input ip daddr 127.0.0.1 tcp dport {port} drop\n"
            ))?;
            (Fault::Nft, None)
        }
        Kind::NoisyNeighbour => {
            let cores = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2);
            let xtask = crate::util::self_exe();
            // Two hogs per core and one more: since the socket-owner hooks no longer run in
            // the server's own send/recv path, its threads need less CPU and cores+1 hogs cost
            // it only ~55-65 ms/s of run-queue delay (measured: 15-20 ms/s baseline), right
            // at the detector's 50 ms/s floor. A neighbour that takes the CPU must be clear.
            // In a cgroup of their own: the incident must name one of them, and that cgroup.
            let cgroup = HogCgroup::create()?;
            let hogs = (0..=2 * cores)
                .map(|_| -> Result<Proc> {
                    let p = Proc::spawn(Command::new(&xtask).args([
                        "hog",
                        "--seconds",
                        &a.fault.to_string(),
                    ]))?;
                    cgroup.add(p.0.id())?;
                    Ok(p)
                })
                .collect::<Result<Vec<_>>>()?;
            hog_truth = Some((hogs.iter().map(|p| p.0.id()).collect(), cgroup.path()));
            (Fault::Hogs(hogs, cgroup), Some(format!("pid:{server_pid}")))
        }
    };
    std::thread::sleep(Duration::from_secs(a.fault));
    drop(fault);
    let fault_end_unix_ns = now_unix_ns();
    step(format!("scenario {}: fault ends", kind.name()));
    std::thread::sleep(Duration::from_secs(after));

    let mut bots = bots;
    let mut bots_out = String::new();
    if let Some(mut out) = bots.0.stdout.take() {
        // The bots stop on their own at the end of the duration.
        let _ = out.read_to_string(&mut bots_out);
    }
    // Session spans end with the bots; give them the exporter's delay and the agent's join wait
    // before reading which spans carry evidence.
    let enriched = if kind.attribution() {
        let fetch = || {
            http(agent_http, "GET", "/incidents?spans=1000", None)
                .ok()
                .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
                .map(|v| v["recent_enriched_spans"].clone())
                .unwrap_or(Value::Null)
        };
        std::thread::sleep(Duration::from_millis(3000));
        let mut spans = fetch();
        // The disturbed session ends last: its connection is still in retransmission back-off
        // when the bots stop (after a fault of F s the next retry can be up to ~F s away), so
        // its span can come seconds after the others. CI once read the spans before it came.
        if let Some(port) = victim {
            let waited = Instant::now();
            let deadline = waited + Duration::from_secs(a.fault + 10);
            while !has_session_span(&spans, port) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(500));
                spans = fetch();
            }
            step(format!(
                "scenario one-session: the disturbed session's span {} {:.1} s after the others'",
                if has_session_span(&spans, port) {
                    "came"
                } else {
                    "had not come"
                },
                waited.elapsed().as_secs_f64()
            ));
        }
        spans
    } else {
        Value::Null
    };
    stop.store(true, Ordering::SeqCst);
    let _ = watcher.join();
    // The server's own count of failed Redis commands, by outcome.
    let spans = pod::span_counts(agent_http);
    let server_metrics = http(game, "GET", "/metrics", None)
        .map(|(_, b)| b)
        .unwrap_or_default();
    let redis_outcome = |outcome: &str| -> u64 {
        server_metrics
            .lines()
            .filter(|l| {
                l.starts_with("game_redis_commands_total{")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    let redis_commands = json!({
        "ok": redis_outcome("ok"),
        "error": redis_outcome("error"),
        "pool_exhausted": redis_outcome("pool_exhausted"),
    });
    drop((bots, server, agent));

    let seen = seen.lock().expect("not poisoned").clone();
    let expected = kind.expected_class();
    // Incidents raised before the fault started are false alarms whatever their class.
    let slack_ns = 1_000_000_000;
    let matches = |s: &Seen| {
        Some(s.class.as_str()) == expected
            && s.first_seen_unix_ns + slack_ns >= fault_start_unix_ns
            && expected_subject
                .as_deref()
                .is_none_or(|p| s.subject.starts_with(p))
    };
    // The culprit is right when the agent's top culprit is one of the hogs, in their cgroup.
    let culprit_right = |s: &Seen| -> bool {
        hog_truth.as_ref().is_some_and(|(pids, cgroup)| {
            s.culprit["pid"]
                .as_u64()
                .is_some_and(|p| pids.iter().any(|&h| u64::from(h) == p))
                && s.culprit["cgroup"].as_str() == Some(cgroup.as_str())
        })
    };
    let detected = seen
        .iter()
        .filter(|s| matches(s))
        .min_by_key(|s| s.first_seen_unix_ns)
        .cloned();
    let culprit = hog_truth.as_ref().map(|(pids, cgroup)| {
        json!({
            "named": detected.as_ref().map(|d| d.culprit.clone()),
            "right": detected.as_ref().is_some_and(culprit_right),
            "hog_pids": pids,
            "hog_cgroup": cgroup,
        })
    });
    let ours = |s: &Seen| -> bool {
        if let Some(ep) = s.subject.strip_prefix("ep:") {
            let port = ep.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
            return port.is_some_and(|p| {
                [game, redis.addr, agent_http, otlp_grpc, otlp_http]
                    .iter()
                    .any(|a| a.port() == p)
            });
        }
        if let Some(pid) = s.subject.strip_prefix("pid:") {
            return pid == server_pid.to_string();
        }
        true
    };
    let false_alarms = seen
        .iter()
        .filter(|s| !matches(s) && ours(s))
        .cloned()
        .collect();
    let unrelated = seen
        .iter()
        .filter(|s| !matches(s) && !ours(s))
        .cloned()
        .collect();
    // The bots print one (pretty) JSON document.
    let bots = serde_json::from_str(bots_out.trim()).unwrap_or(Value::Null);
    let attribution = match kind {
        Kind::Bystander => Some(check_bystander(
            &seen,
            detected.as_ref(),
            &ground_truth,
            server_pid,
            &enriched,
            (fault_start_unix_ns, fault_end_unix_ns),
            [game, redis.addr],
        )),
        Kind::OneSession => Some(check_one_session(&ground_truth, &enriched)),
        _ => None,
    };
    let redis_rejected_connections = redis.stat("rejected_connections")?;
    drop(redis);
    let _ = std::fs::remove_dir_all(&data);
    Ok(RunReport {
        kind,
        culprit,
        fault_start_unix_ns,
        expected_subject,
        detected,
        false_alarms,
        unrelated,
        bots,
        redis_rejected_connections,
        redis_commands,
        pod: pod.is_some(),
        pod_uid: pod.as_ref().map(|p| p.pod_uid.clone()),
        spans,
        ground_truth,
        attribution,
    })
}

pub fn run(env: &Env, a: ScenarioArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } != 0 {
        bail!("scenarios load eBPF programs and change nftables: run them as root");
    }
    let kinds: Vec<Kind> = match (a.kind, a.all) {
        (Some(k), _) => vec![k],
        // The attribution scenarios run on the host only (they pick a host connection and port).
        (None, true) => Kind::ALL
            .into_iter()
            .filter(|k| !(a.pod && k.attribution()))
            .collect(),
        (None, false) => bail!(
            "name a scenario (calm, surge, rst-storm, packet-loss, noisy-neighbour) or pass --all"
        ),
    };
    if a.pod && kinds.iter().any(|k| k.attribution()) {
        bail!("the attribution scenarios (bystander, one-session) run on the host only");
    }
    let bins = bins(env, a.debug, a.no_build)?;
    let mut reports = Vec::new();
    for kind in kinds {
        for i in 0..a.repeat {
            step(format!("scenario {} ({}/{})", kind.name(), i + 1, a.repeat));
            reports.push(run_one(&bins, kind, &a)?);
        }
    }
    if a.json {
        println!(
            "{}",
            Value::Array(reports.iter().map(RunReport::json).collect())
        );
    } else {
        print_table(&reports);
    }
    Ok(())
}

unsafe extern "C" {
    fn geteuid() -> u32;
}

fn print_table(reports: &[RunReport]) {
    println!(
        "\n| scenario | mode | expected | detected | subject | culprit / peer | raised | time to detect | attribution | false alarms | spans received | joined runq | joined tcp | kernel lag | span lag |"
    );
    println!("|---|---|---|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|");
    for r in reports {
        let n = |k: &str| {
            r.spans[k]
                .as_f64()
                .map_or_else(|| "-".into(), |v| format!("{v:.0}"))
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ms | {} ms |",
            r.kind.name(),
            if r.pod { "pod" } else { "host" },
            r.kind.expected_class().unwrap_or("nothing"),
            r.detected.as_ref().map(|d| d.class.as_str()).unwrap_or("-"),
            r.detected
                .as_ref()
                .map(|d| d.subject.as_str())
                .unwrap_or("-"),
            r.detected
                .as_ref()
                .map(Seen::culprit_or_peer)
                .unwrap_or_else(|| "-".into())
                .replace('|', "/"),
            r.detected
                .as_ref()
                .map(|d| d.raised_by.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or("-"),
            r.ttd_s()
                .map(|t| format!("{t:.1} s"))
                .unwrap_or_else(|| "-".into()),
            r.attribution
                .as_ref()
                .map(|a| format!("{}: {}", if a.ok { "ok" } else { "FAIL" }, a.detail))
                .unwrap_or_else(|| "-".into())
                .replace('|', "/"),
            r.false_alarms.len(),
            n("received"),
            n("joined_runq"),
            n("joined_tcp"),
            n("kernel_lag_ms"),
            n("span_lag_ms"),
        );
        for f in &r.false_alarms {
            let at = (f.first_seen_unix_ns as f64 - r.fault_start_unix_ns as f64) / 1e9;
            println!(
                "|   false alarm | | {} | {} | {at:+.1} s | {} |",
                f.class,
                f.subject,
                f.summary.replace('|', "/")
            );
        }
        for f in &r.unrelated {
            println!(
                "|   (unrelated: other traffic) | | {} | {} | | {} |",
                f.class,
                f.subject,
                f.summary.replace('|', "/")
            );
        }
    }
    // Per scenario: every run's time to detect and who was named.
    let mut kinds: Vec<Kind> = Vec::new();
    for r in reports {
        if !kinds.contains(&r.kind) {
            kinds.push(r.kind);
        }
    }
    println!(
        "\n| scenario | runs | right verdicts | culprit / peer (per run) | time to detect per run | median |"
    );
    println!("|---|---:|---:|---|---|---:|");
    for k in kinds {
        let runs: Vec<&RunReport> = reports.iter().filter(|r| r.kind == k).collect();
        let right = runs
            .iter()
            .filter(|r| {
                r.false_alarms.is_empty()
                    && (r.kind.expected_class().is_none() == r.detected.is_none())
                    && r.attribution.as_ref().is_none_or(|a| a.ok)
            })
            .count();
        let who: Vec<String> = runs
            .iter()
            .map(|r| {
                r.detected
                    .as_ref()
                    .map(Seen::culprit_or_peer)
                    .unwrap_or_else(|| "-".into())
                    .replace('|', "/")
            })
            .collect();
        let mut ttd: Vec<f64> = runs.iter().filter_map(|r| r.ttd_s()).collect();
        let per_run: Vec<String> = runs
            .iter()
            .map(|r| r.ttd_s().map_or_else(|| "-".into(), |t| format!("{t:.1}")))
            .collect();
        ttd.sort_by(f64::total_cmp);
        println!(
            "| {} | {} | {right}/{} | {} | {} | {} |",
            k.name(),
            runs.len(),
            runs.len(),
            who.join("; "),
            per_run.join(", "),
            ttd.get(ttd.len() / 2)
                .map_or_else(|| "-".into(), |t| format!("{t:.1} s")),
        );
    }
    // Precision: raised incidents that were right; recall: faults that were found.
    let faults = reports
        .iter()
        .filter(|r| r.kind.expected_class().is_some())
        .count();
    let found = reports.iter().filter(|r| r.detected.is_some()).count();
    let raised: usize = reports
        .iter()
        .map(|r| r.false_alarms.len() + usize::from(r.detected.is_some()))
        .sum();
    // Who held the CPU (noisy-neighbour): the agent's top culprit against the hogs.
    let culprits: Vec<&Value> = reports.iter().filter_map(|r| r.culprit.as_ref()).collect();
    for c in &culprits {
        let n = &c["named"];
        println!(
            "culprit named: {} (pid {}, cgroup {}, {:.0}% of the waiting): {} (hogs {} in {})",
            n["comm"].as_str().unwrap_or("-"),
            n["pid"],
            n["cgroup"].as_str().unwrap_or("-"),
            n["share"].as_f64().unwrap_or(0.0) * 100.0,
            if c["right"] == true { "right" } else { "WRONG" },
            c["hog_pids"],
            c["hog_cgroup"].as_str().unwrap_or("-"),
        );
    }
    let mut ttd: Vec<f64> = reports.iter().filter_map(RunReport::ttd_s).collect();
    ttd.sort_by(f64::total_cmp);
    println!();
    if raised > 0 {
        println!(
            "precision {:.2} ({found} right of {raised} raised)",
            found as f64 / raised as f64
        );
    }
    if faults > 0 {
        println!(
            "recall    {:.2} ({found} of {faults} faults found)",
            found as f64 / faults as f64
        );
    }
    if !culprits.is_empty() {
        println!(
            "culprits right: {} of {}",
            culprits.iter().filter(|c| c["right"] == true).count(),
            culprits.len()
        );
    }
    let checks: Vec<&Attribution> = reports
        .iter()
        .filter_map(|r| r.attribution.as_ref())
        .collect();
    if !checks.is_empty() {
        println!(
            "attribution {} of {} right",
            checks.iter().filter(|a| a.ok).count(),
            checks.len()
        );
    }
    if !ttd.is_empty() {
        println!(
            "time to detect: median {:.1} s, max {:.1} s",
            ttd[ttd.len() / 2],
            ttd[ttd.len() - 1]
        );
    }
}

/// A loopback address below the ephemeral range where nobody listens (so it reads as a
/// service, and every connect to it is refused).
fn closed_service_addr() -> Result<SocketAddr> {
    let start = 20000 + (std::process::id() % 10000) as u16;
    for i in 0..2000u16 {
        let port = 20000 + (start - 20000 + i * 7) % 12000;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            let addr = l.local_addr()?;
            drop(l);
            return Ok(addr);
        }
    }
    bail!("no free port below the ephemeral range")
}

/// One established bot connection to the game server: its client port. From `ss` (iproute2),
/// as an operator would find it.
fn one_session(game: SocketAddr, bots_pid: u32) -> Result<u16> {
    // The bots' own ends of their connections to the server, in two looks a second apart: a
    // look alone can catch a bot's one-request HTTP connection (/login, /metrics) in flight,
    // and dropping packets to that port disturbs no session (CI saw that once: no session
    // slowed, no span with retransmits).
    let look = || -> Result<Vec<u16>> {
        let out = Command::new("ss")
            .args(["-Htnp", "state", "established"])
            .output()
            .context("ss (iproute2)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let owner = format!(",pid={bots_pid},");
        Ok(text
            .lines()
            .filter(|l| l.contains(&owner))
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                let (local, peer) = (cols.get(2)?, cols.get(3)?);
                let local: SocketAddr = local.parse().ok()?;
                let peer: SocketAddr = peer.parse().ok()?;
                (peer == game).then_some(local.port())
            })
            .collect())
    };
    let first = look()?;
    std::thread::sleep(Duration::from_secs(1));
    let second = look()?;
    let mut ports: Vec<u16> = first.into_iter().filter(|p| second.contains(p)).collect();
    ports.sort_unstable();
    if ports.len() < 2 {
        bail!(
            "one-session: {} bot sessions to {game}, need several",
            ports.len()
        );
    }
    // The middle one: neither the first nor the last bot to connect.
    Ok(ports[ports.len() / 2])
}

/// The bystander's ground truth against what the agent said: the incident names its target
/// and it (not the server) as the client, and nothing was pinned on the server: no incident
/// about the server's process or endpoints, no span of the server linked, no TCP evidence on
/// the server's spans during the fault.
fn check_bystander(
    seen: &[Seen],
    detected: Option<&Seen>,
    truth: &Value,
    server_pid: u32,
    enriched: &Value,
    (from, to): (u64, u64),
    server_eps: [SocketAddr; 2],
) -> Attribution {
    let mut problems = Vec::new();
    let pid = truth["bystander_pid"].as_u64().unwrap_or(0);
    match detected {
        None => problems.push("not detected".to_owned()),
        Some(d) => {
            let client = d
                .attr("kernelsight.fault.client.pid")
                .and_then(Value::as_u64);
            if client != Some(pid) {
                problems.push(format!("client {client:?}, not the bystander {pid}"));
            }
            let kind = d.attr("kernelsight.fault.kind").and_then(Value::as_str);
            if kind != Some("refused") {
                problems.push(format!("kind {kind:?}, not refused"));
            }
            if !d.affected.is_empty() {
                problems.push(format!("{} spans linked", d.affected.len()));
            }
        }
    }
    for s in seen {
        let names_server = s.subject == format!("pid:{server_pid}")
            || server_eps.iter().any(|e| s.subject == format!("ep:{e}"))
            || s.attr("kernelsight.fault.client.pid")
                .and_then(Value::as_u64)
                == Some(u64::from(server_pid));
        if names_server {
            problems.push(format!("{} names the server ({})", s.id, s.subject));
        }
    }
    // TCP evidence on the server's spans, stamped inside the fault (and a second after).
    let hits = enriched
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|sp| sp["events"].as_array().into_iter().flatten())
        .filter(|e| {
            let name = e[0].as_str().unwrap_or("");
            let at = e[1].as_u64().unwrap_or(0);
            name.starts_with("kernelsight.tcp") && at >= from && at <= to + 1_000_000_000
        })
        .count();
    if hits > 0 {
        problems.push(format!(
            "{hits} TCP events on the server's spans during the fault"
        ));
    }
    Attribution {
        ok: problems.is_empty(),
        detail: if problems.is_empty() {
            format!("names the bystander (pid {pid}); nothing on the server")
        } else {
            problems.join("; ")
        },
    }
}

/// The disturbed session's span carries the retransmits, and no other session's does.
/// Whether the agent has passed on the `ws.session` span of the session on client port `port`.
fn has_session_span(enriched: &Value, port: u16) -> bool {
    enriched.as_array().into_iter().flatten().any(|sp| {
        let p = &sp["attributes"]["network.peer.port"];
        sp["name"] == "ws.session"
            && p.as_u64().or_else(|| p.as_str()?.parse().ok()) == Some(u64::from(port))
    })
}

fn check_one_session(truth: &Value, enriched: &Value) -> Attribution {
    let port = truth["session_port"].as_u64().unwrap_or(0);
    let mut ports: Vec<u64> = enriched
        .as_array()
        .into_iter()
        .flatten()
        .filter(|sp| sp["name"] == "ws.session")
        .filter(|sp| {
            sp["attributes"]["kernelsight.tcp.retransmits"]
                .as_i64()
                .unwrap_or(0)
                > 0
        })
        .filter_map(|sp| {
            // An integer attribute, or a string where the SDK recorded the port as one.
            let p = &sp["attributes"]["network.peer.port"];
            p.as_u64().or_else(|| p.as_str()?.parse().ok())
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    // What did carry TCP evidence, to say why when the check fails.
    let with_tcp: Vec<String> = enriched
        .as_array()
        .into_iter()
        .flatten()
        .filter(|sp| sp["attributes"]["kernelsight.tcp.retransmits"].is_i64())
        .take(8)
        .map(|sp| {
            let a = &sp["attributes"];
            format!(
                "{} :{} retrans {} rst {}/{}",
                sp["name"].as_str().unwrap_or("?"),
                a["network.peer.port"],
                a["kernelsight.tcp.retransmits"],
                a["kernelsight.tcp.resets_sent"],
                a["kernelsight.tcp.resets_received"]
            )
        })
        .collect();
    let ok = ports == [port];
    Attribution {
        ok,
        detail: if ok {
            format!("only session :{port}'s span carries the retransmits")
        } else {
            format!(
                "session :{port}; sessions with retransmits on their span: {ports:?}; spans with TCP evidence: {} ({})",
                enriched.as_array().map_or(0, |a| a.len()),
                with_tcp.join(", ")
            )
        },
    }
}

/// Connects to `target`, where nobody listens, every 20 ms for `seconds`: each connect is
/// answered with an RST (the bystander scenario's process; not the server).
pub fn bystander(target: SocketAddr, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        let _ = std::net::TcpStream::connect_timeout(&target, Duration::from_millis(200));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Burns one CPU for `seconds` (the noisy neighbour).
pub fn hog(seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut x: u64 = 0;
    while Instant::now() < deadline {
        for i in 0..100_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
}
