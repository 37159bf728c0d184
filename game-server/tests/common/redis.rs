//! A private, real `redis-server` per test (Debian's, installed by `cargo xtask setup`): a free
//! loopback port, its data dir under the test's temp dir, AOF with fsync on every write.
//! Killed when dropped, also when the test panics.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub addr: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start(dir: &Path) -> Self {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut r = Self {
            addr,
            dir: dir.join("redis"),
            child: None,
        };
        std::fs::create_dir_all(&r.dir).unwrap();
        r.spawn();
        r
    }

    /// Start (again) on the same port and data dir.
    pub fn spawn(&mut self) {
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
            .expect("redis-server (installed by `cargo xtask setup`)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        // LISTEN first (read from /proc: connecting too early would make the kernel answer
        // with an RST), then a real round trip.
        while !listening(self.addr) || self.cli(&["PING"]).as_deref() != Some("PONG") {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr_arg(&self) -> String {
        self.addr.to_string()
    }

    /// `redis-cli` reply, or None if it failed.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.addr.port().to_string()])
            .args(args)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    /// SIGKILL: a crash, no shutdown save (the AOF has every acknowledged write).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port and data dir.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn listening(addr: SocketAddr) -> bool {
    let SocketAddr::V4(v4) = addr else {
        return false;
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<_> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
    })
}
