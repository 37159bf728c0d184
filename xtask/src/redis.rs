//! A private `redis-server` (Debian's, installed by `cargo xtask setup`) for one run: a free
//! loopback port, its data directory under the run's directory, append-only file with fsync on
//! every write (an acknowledged write survives a restart), stopped when dropped, also when the
//! run fails.
use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{Proc, listening};

pub struct Redis {
    pub addr: SocketAddr,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Redis {
    pub fn start(dir: &Path) -> Result<Self> {
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        std::fs::create_dir_all(dir)?;
        let mut r = Self {
            addr,
            dir: dir.to_owned(),
            proc: None,
        };
        r.spawn()?;
        Ok(r)
    }

    fn spawn(&mut self) -> Result<()> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.addr.port().to_string(),
                "--bind",
                "127.0.0.1",
            ])
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
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server (run `cargo xtask setup`: it installs redis-server)")?;
        let mut p = Proc(child);
        // Wait for LISTEN in /proc/net/tcp: a connect attempt too early would be answered with
        // an RST, which the agent rightly reports.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listening(self.addr) {
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
            .args(["-h", "127.0.0.1", "-p", &self.addr.port().to_string()])
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
