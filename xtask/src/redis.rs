//! A private `redis-server` (Debian's, installed by `cargo xtask setup`) for one run: a free
//! loopback port, its data directory under the run's directory, append-only file with fsync on
//! every write (an acknowledged write survives a restart), stopped when dropped, also when the
//! run fails.
use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use std::os::unix::process::CommandExt as _;

use anyhow::{Context as _, Result, bail};

use crate::util::{Proc, listening_in};

pub struct Redis {
    /// Where the game server reaches it.
    pub addr: SocketAddr,
    /// Where this tool reaches it (`redis-cli`, the fault injector): `addr`, or in pod mode the
    /// pod's own address through its veth.
    pub control: SocketAddr,
    /// Pod mode: the network namespace it runs in.
    netns: Option<(String, Ipv4Addr)>,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Redis {
    pub fn start(dir: &Path) -> Result<Self> {
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        std::fs::create_dir_all(dir)?;
        let mut r = Self {
            addr,
            control: addr,
            netns: None,
            dir: dir.to_owned(),
            proc: None,
        };
        r.spawn()?;
        Ok(r)
    }

    /// Pod mode: Redis in the pod's network namespace (`ip netns exec`), listening on the pod's
    /// 127.0.0.1 for the game server and on `pod_ip` for this tool on the host.
    pub fn start_in_netns(dir: &Path, netns: &str, pod_ip: Ipv4Addr) -> Result<Self> {
        // A new network namespace has every port free.
        let port = 6379;
        std::fs::create_dir_all(dir)?;
        let mut r = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            control: SocketAddr::from((pod_ip, port)),
            netns: Some((netns.to_owned(), pod_ip)),
            dir: dir.to_owned(),
            proc: None,
        };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = match &self.netns {
            Some((netns, _)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns, "redis-server"]);
                c
            }
            None => Command::new("redis-server"),
        };
        let bind = match &self.netns {
            Some((_, pod_ip)) => format!("127.0.0.1 {pod_ip}"),
            None => "127.0.0.1".to_owned(),
        };
        let child = cmd
            .args(["--port", &self.addr.port().to_string(), "--bind", &bind])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdout(Stdio::null());
        // A parent-death signal, so Redis never outlives an xtask that was killed (it stays in
        // xtask's process group: a terminal's Ctrl-C reaches it with everything else).
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            child.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let mut p = Proc(child.spawn().context(
            "starting redis-server (run `cargo xtask setup`: it installs redis-server)",
        )?);
        // Wait for LISTEN in /proc/net/tcp: a connect attempt too early would be answered with
        // an RST, which the agent rightly reports.
        let deadline = Instant::now() + Duration::from_secs(10);
        // `ip netns exec` execs redis-server in place, so the child's pid is Redis's, and its
        // /proc/PID/net/tcp shows its own namespace's sockets.
        let pid = p.0.id();
        while !listening_in(pid, self.addr) {
            if let Some(status) = p.0.try_wait()? {
                bail!(
                    "redis-server exited ({status}); see {}",
                    self.dir.join("redis.log").display()
                );
            }
            if Instant::now() > deadline {
                bail!("redis-server did not listen on {} within 10 s", self.addr);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.proc = Some(p);
        Ok(())
    }

    /// One `redis-cli` command; its reply as text.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("redis-cli")
            .args(["-h", &self.control.ip().to_string()])
            .args(["-p", &self.control.port().to_string()])
            .args(args)
            .output()
            .context("redis-cli")?;
        if !out.status.success() {
            bail!(
                "redis-cli {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// A counter from `INFO stats` (e.g. `rejected_connections`).
    pub fn stat(&self, name: &str) -> Result<u64> {
        let info = self.cli(&["INFO", "stats"])?;
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("INFO stats has no {name}"))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // Proc's drop: SIGTERM (Redis flushes the AOF and exits), SIGKILL after 3 s.
        self.proc.take();
    }
}
