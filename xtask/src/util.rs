use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::atomic::{AtomicI32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_owned()
}

/// This very binary, for re-running it (hogs, probes) or packing it into a guest. Not
/// `current_exe()`: `cargo test` relinks `target/debug/xtask` while `cargo xtask test` runs (the
/// test build unifies other features), and the old path then names a deleted file; the running
/// image stays readable and executable through /proc.
pub fn self_exe() -> PathBuf {
    PathBuf::from("/proc/self/exe")
}

pub fn step(msg: impl AsRef<str>) {
    eprintln!("xtask: {}", msg.as_ref());
}

/// Runs a command, echoing it, and fails with its status if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    step(format!("$ {}", describe(cmd)));
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout, or None if it could not run or failed.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// A child in its own process group, stopped with the whole group (SIGTERM, then SIGKILL)
/// when dropped. Spawned through [`Proc::spawn`] it also gets SIGTERM from the kernel if xtask
/// dies without dropping it (SIGKILL, a panic that aborts): nothing outlives xtask.
pub struct Proc(pub Child);

impl Proc {
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Self> {
        let parent = std::process::id() as i32;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Own group: a terminal's Ctrl-C reaches xtask only, which stops the children
                // in order (bots, server, agent) instead of all at once.
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // xtask died between fork and prctl: the signal will never come.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            })
        };
        cmd.spawn().map(Proc)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.0.id() as i32;
        // The group if it has one (children spawned by `spawn`), else the process.
        // SAFETY: getpgid/kill on our own child, not yet waited for.
        let target = if unsafe { libc::getpgid(pid) } == pid {
            -pid
        } else {
            pid
        };
        // SAFETY: as above.
        unsafe { libc::kill(target, libc::SIGTERM) };
        // The agent detaches its programs and the server flushes player data: give them time.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                // Anything the child left in its group goes too.
                // SAFETY: signalling our own child's process group.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: our own child (or its group), not yet waited for.
        unsafe { libc::kill(target, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// The signal that asked xtask to stop (SIGINT, SIGTERM or SIGHUP), once
/// [`stop_on_signals`] is in place; 0 while none came.
static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_stop(sig: libc::c_int) {
    STOP.store(sig, Ordering::SeqCst);
}

/// From now on SIGINT, SIGTERM and SIGHUP set a flag (see [`stop_requested`]) instead of
/// killing xtask outright, so that its children are stopped before it exits.
pub fn stop_on_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(
                sig,
                on_stop as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

pub fn stop_requested() -> Option<i32> {
    match STOP.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("bad HTTP response")?;
    Ok((
        status,
        buf.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    ))
}

/// True once something listens on `addr` (IPv4), read from /proc/net/tcp: unlike a connect
/// attempt, looking does not make the kernel answer with an RST, which the agent would
/// rightly report.
pub fn listening(addr: SocketAddr) -> bool {
    listening_at("/proc/net/tcp", addr)
}

/// Whether `addr` is in LISTEN in the network namespace of process `pid`.
pub fn listening_in(pid: u32, addr: SocketAddr) -> bool {
    listening_at(&format!("/proc/{pid}/net/tcp"), addr)
}

fn listening_at(table: &str, addr: SocketAddr) -> bool {
    let SocketAddr::V4(v4) = addr else {
        return false;
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(v4.ip().octets()),
        v4.port()
    );
    std::fs::read_to_string(table).is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<_> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
    })
}

pub fn wait_ready(addr: SocketAddr, what: &str, child: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if listening(addr)
            && let Ok((200, _)) = http(addr, "GET", "/readyz", None)
        {
            return Ok(());
        }
        if let Some(status) = child.0.try_wait()? {
            bail!("{what} exited before it was ready ({status})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} was not ready within 60 s")
}

/// Names this process in the kernel (`comm`): helpers re-run `/proc/self/exe`, so they would all
/// be called `exe` in the agent's incidents and culprit lists.
pub fn set_comm(name: &std::ffi::CStr) {
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes (longer is cut).
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
    }
}
