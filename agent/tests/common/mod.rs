//! Shared pieces of the agent's integration tests: a running agent, its metrics, and the
//! kernel's own TCP counters to check them against.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// These tests load real eBPF programs: they need root (CI runs as root). Say so plainly
/// instead of passing vacuously.
pub fn require_root() {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "the agent's integration tests load eBPF programs and must run as root (CI does); run `sudo -E cargo xtask test`"
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `kernelsight-agent`, killed on drop.
pub struct Agent {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Agent {
    pub fn start(extra: &[&str]) -> Agent {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kernelsight-agent"))
            .arg("--http-addr")
            .arg(addr.to_string())
            .args(extra)
            .env("RUST_LOG", "warn")
            // Any free port for the OTLP receivers, so agents started side by side (and a dev
            // agent on 4317/4318) do not collide; tests that send spans pass explicit addresses.
            .env("KERNELSIGHT_OTLP_GRPC_ADDR", "127.0.0.1:0")
            .env("KERNELSIGHT_OTLP_HTTP_ADDR", "127.0.0.1:0")
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn agent");
        let agent = Agent { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((200, _)) = http_get(addr, "/readyz") {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not become ready within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn metrics(&self) -> Metrics {
        let (status, body) = http_get(self.addr, "/metrics").expect("scrape /metrics");
        assert_eq!(status, 200);
        Metrics::parse(&body)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal HTTP/1.0 GET: enough for our own endpoints, and no client library in the way.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A Prometheus text exposition, keyed by the full series (`name{labels}`).
#[derive(Debug, Default)]
pub struct Metrics(pub HashMap<String, f64>);

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let mut m = HashMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            if let Some((series, value)) = line.rsplit_once(' ') {
                m.insert(series.to_owned(), value.parse().unwrap_or(f64::NAN));
            }
        }
        Self(m)
    }

    pub fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// Sum over all series of `name` whose labels contain every `k="v"` in `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name))
            .filter(|(k, _)| {
                labels
                    .iter()
                    .all(|(l, v)| k.contains(&format!("{l}=\"{v}\"")))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

/// The kernel's TCP MIB ("Tcp:" lines of net/snmp) for the calling thread's network namespace.
pub fn tcp_mib() -> HashMap<String, u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap();
    let lines: Vec<_> = text.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let names = lines[0].split_whitespace().skip(1);
    let values = lines[1].split_whitespace().skip(1);
    names
        .zip(values)
        .map(|(n, v)| (n.to_owned(), v.parse().unwrap_or(0)))
        .collect()
}

/// Polls `f` until it returns true or `timeout` passes; returns the last answer.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A network namespace of the test's own, with loopback up; deleted on drop. Kernel counters
/// read from inside it count only the test's traffic.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("ks-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        sh(Command::new("ip").args(["netns", "add", &name]));
        sh(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        Netns { name }
    }

    /// Moves the calling thread (only) into the namespace.
    pub fn enter(&self) {
        use std::os::fd::AsRawFd as _;
        let f = std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap();
        assert_eq!(
            // SAFETY: `f` is an open namespace file for the duration of the call.
            unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
            0,
            "setns"
        );
    }

    /// Runs an nft script inside the namespace.
    pub fn nft(&self, script: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft (nftables) must be installed; `cargo xtask setup` installs it");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(
            child.wait().unwrap().success(),
            "nft script failed:\n{script}"
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn sh(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed");
}

/// Everything currently in a ring, decoded.
pub fn drain(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    decode: fn(&[u8]) -> Option<agent::shared::event::KernelEvent>,
) -> Vec<agent::shared::event::KernelEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(decode(&item).expect("every record decodes"));
    }
    out
}
