//! A kernel that lacks something loses only the features that need it: one log line each, a
//! `kernelsight_probe_up{probe=...}` gauge at 0, and the rest keeps working. The agent exits only
//! when nothing can load.
mod common;

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Metrics, eventually, free_port, http_get, require_root, tcp_mib};

/// The agent, optionally with /sys/kernel/btf hidden by an empty tmpfs in a mount namespace of
/// its own (how a kernel without CONFIG_DEBUG_INFO_BTF looks from user space). Its stderr goes
/// to a file the test reads.
struct Run {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Run {
    fn spawn(args: &[&str], hide_btf: bool) -> Run {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::env::temp_dir().join(format!(
            "ks-degrade-{}-{}.log",
            std::process::id(),
            addr.port()
        ));
        let exe = env!("CARGO_BIN_EXE_kernelsight-agent");
        let mut cmd = if hide_btf {
            let mut c = Command::new("unshare");
            c.args([
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount -t tmpfs none /sys/kernel/btf && exec \"$@\"",
                "sh",
                exe,
            ]);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(["--http-addr", &addr.to_string()])
            .args(args)
            .env("RUST_LOG", "warn")
            .env("KERNELSIGHT_OTLP_GRPC_ADDR", "127.0.0.1:0")
            .env("KERNELSIGHT_OTLP_HTTP_ADDR", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        Run {
            child: cmd.spawn().expect("spawn agent"),
            addr,
            log,
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(self.addr, "/readyz").map(|r| r.0) != Some(200) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("agent exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metrics(&self) -> Metrics {
        Metrics::parse(&http_get(self.addr, "/metrics").expect("scrape").1)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The kernel's RST counters are host-wide: tests that compare against them run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn up(m: &Metrics, probe: &str) -> f64 {
    m.get(&format!("kernelsight_probe_up{{probe=\"{probe}\"}}"))
}

/// A tracefs copy holding the real tcp/sock formats except `leave_out` (a kernel without that
/// tracepoint). The programs still attach through the real tracefs; the agent decides from
/// this one what the kernel has.
fn tracefs_without(leave_out: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ks-tracefs-{}-{leave_out}", std::process::id()));
    for cat in ["tcp", "sock"] {
        let src = Path::new("/sys/kernel/tracing/events").join(cat);
        for e in std::fs::read_dir(&src).unwrap().flatten() {
            let name = e.file_name();
            if name == leave_out || !e.path().join("format").exists() {
                continue;
            }
            let to = dir.join("events").join(cat).join(&name);
            std::fs::create_dir_all(&to).unwrap();
            std::fs::copy(e.path().join("format"), to.join("format")).unwrap();
        }
    }
    dir
}

#[test]
fn a_missing_tracepoint_turns_off_that_feature_only() {
    require_root();
    let _serial = serial();
    let dir = tracefs_without("tcp_send_reset");
    let mut agent = Run::spawn(&["--tracefs", dir.to_str().unwrap()], false);
    agent.wait_ready();
    let m = agent.metrics();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(up(&m, "tcp_rst_sent"), 0.0);
    for probe in [
        "tcp_rst_received",
        "tcp_retransmit",
        "sock_owner_connect",
        "sock_owner_accept",
        "sock_owner_cleanup",
        "runq",
    ] {
        assert_eq!(up(&m, probe), 1.0, "{probe}\n{}", agent.log());
    }
    let log = agent.log();
    let lines: Vec<_> = log
        .lines()
        .filter(|l| l.contains("tcp:tcp_send_reset"))
        .collect();
    assert_eq!(lines.len(), 1, "one line names what is missing:\n{log}");
    assert!(lines[0].contains("tcp_rst_sent"), "{log}");

    // The other features work: a refused connect is a received RST, counted.
    let before = agent.metrics();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
    let received = |m: &Metrics| m.get("kernelsight_tcp_resets_total{direction=\"received\"}");
    assert!(eventually(Duration::from_secs(5), || received(
        &agent.metrics()
    ) - received(&before)
        >= 1.0));
}

#[test]
fn without_tracefs_run_queue_latency_still_loads() {
    require_root();
    let _serial = serial();
    let mut agent = Run::spawn(&["--tracefs", "/nonexistent-tracefs"], false);
    agent.wait_ready();
    let m = agent.metrics();
    assert_eq!(up(&m, "runq"), 1.0, "{}", agent.log());
    for probe in [
        "tcp_rst_sent",
        "tcp_rst_received",
        "tcp_retransmit",
        "sock_owner_connect",
        "sock_owner_accept",
    ] {
        assert_eq!(up(&m, probe), 0.0, "{probe}");
    }
    let log = agent.log();
    assert!(
        log.contains("tracefs not found at /nonexistent-tracefs"),
        "{log}"
    );
}

/// Without BTF: one line says so, and the TCP counters (classic tracepoints, layouts from
/// tracefs) are still served, exactly.
#[test]
fn without_btf_tcp_counters_are_still_served() {
    require_root();
    let _serial = serial();
    let mut agent = Run::spawn(&[], true);
    agent.wait_ready();
    let log = agent.log();
    let btf_lines: Vec<_> = log
        .lines()
        .filter(|l| l.contains("kernel BTF is missing"))
        .collect();
    assert_eq!(btf_lines.len(), 1, "{log}");
    assert!(btf_lines[0].contains("TCP counters"), "{log}");
    let m = agent.metrics();
    assert_eq!(up(&m, "runq"), 0.0);
    assert_eq!(up(&m, "sock_owner_accept"), 0.0);
    assert_eq!(up(&m, "sock_owner_connect"), 1.0);
    assert_eq!(up(&m, "tcp_rst_sent"), 1.0);
    assert_eq!(up(&m, "tcp_rst_received"), 1.0);

    let before = agent.metrics();
    let mib0 = tcp_mib();
    for _ in 0..3 {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err());
    }
    let out_rsts = tcp_mib()["OutRsts"] - mib0["OutRsts"];
    let sent = |m: &Metrics| m.get("kernelsight_tcp_resets_total{direction=\"sent\"}");
    assert!(eventually(Duration::from_secs(5), || {
        (sent(&agent.metrics()) - sent(&before)) as u64 >= out_rsts
    }));
    assert_eq!(
        (sent(&agent.metrics()) - sent(&before)) as u64,
        out_rsts,
        "sent RSTs vs the kernel's OutRsts"
    );
    assert!(out_rsts >= 3);
}

#[test]
fn with_nothing_loadable_it_exits_with_one_line() {
    require_root();
    let _serial = serial();
    let out = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs none /sys/kernel/btf && exec \"$@\"",
            "sh",
            env!("CARGO_BIN_EXE_kernelsight-agent"),
            "--http-addr",
            "127.0.0.1:0",
            "--tracefs",
            "/nonexistent-tracefs",
        ])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("kernelsight-agent: error: no probe could load"),
        "{stderr}"
    );
    assert!(
        lines[0].contains("BTF") && lines[0].contains("tracefs"),
        "{stderr}"
    );
}
