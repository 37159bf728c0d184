//! Processes run like containers for the pod-mode tests: each in its own cgroup (named the way
//! kubelet names them: `pod<uid>/<container id>` under a parent this test owns) and its own pid
//! namespace (`unshare --pid --fork --mount-proc`), optionally in a network namespace. Inside,
//! a small Python program starts named threads and reports its namespace-local ids; the host
//! ids are found by thread name (`comm`), independently of the agent's NSpid reading.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

/// A cgroup subtree removed (with its processes killed) on drop.
pub struct CgroupParent(pub PathBuf);

impl CgroupParent {
    pub fn new(name: &str) -> Self {
        let dir =
            agent::transforms::pod::cgroup2_root().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        assert!(
            dir.join("cgroup.procs").exists(),
            "a cgroup v2 hierarchy is needed"
        );
        Self(dir)
    }

    /// `pod<uid>/<container id>` under the parent.
    pub fn container(&self, pod_uid: &str, container_id: &str) -> PathBuf {
        let dir = self.0.join(format!("pod{pod_uid}")).join(container_id);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

impl Drop for CgroupParent {
    fn drop(&mut self) {
        kill_tree(&self.0);
        remove_tree(&self.0);
    }
}

fn kill_tree(dir: &Path) {
    // cgroup.kill (5.14+) ends every process of the subtree.
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let busy = std::fs::read_to_string(dir.join("cgroup.events"))
            .map(|s| s.contains("populated 1"))
            .unwrap_or(false);
        if !busy {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

const SCRIPT: &str = r#"
import ctypes, os, socket, struct, sys, threading, time
libc = ctypes.CDLL(None)
spin = len(sys.argv) > 2 and sys.argv[2] == "spin"
def worker(i, ready, stop):
    libc.prctl(15, b"ks-w%d" % i, 0, 0, 0)
    ready.append((i, threading.get_native_id()))
    if spin:
        while not stop.is_set():
            pass
    stop.wait()
def tcp(how):
    # One connection on this namespace's own 127.0.0.1:6379, from a fixed client port, so
    # that two namespaces make the very same 4-tuple; aborted (RST) or closed cleanly.
    SO = socket.SOL_SOCKET
    l = socket.socket(); l.setsockopt(SO, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", 6379)); l.listen(1)
    c = socket.socket(); c.setsockopt(SO, socket.SO_REUSEADDR, 1)
    c.bind(("127.0.0.1", 40000)); c.connect(("127.0.0.1", 6379))
    s, _ = l.accept()
    c.sendall(b"PING\r\n"); s.recv(16); s.sendall(b"+PONG\r\n"); c.recv(16)
    if how == "abort":
        s.setsockopt(SO, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    time.sleep(0.2)
    try:
        c.recv(16)
    except OSError:
        pass
    c.close(); l.close()
stops = {}
def start(i):
    ready = []
    stops[i] = threading.Event()
    threading.Thread(target=worker, args=(i, ready, stops[i]), daemon=True).start()
    while not ready:
        pass
    return ready[0][1]
tids = [start(i) for i in range(int(sys.argv[1]))]
print(os.getpid(), *tids, flush=True)
for line in sys.stdin:
    cmd, i = line.split()
    if cmd == "tcp":
        tcp(i)
        print("done", flush=True)
    elif cmd == "start":
        print(start(int(i)), flush=True)
    elif cmd == "stop":
        stops[int(i)].set()
        print("stopped", flush=True)
"#;

pub fn python() -> String {
    std::env::var("KS_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A "container": a process in its own pid namespace and cgroup with named threads.
pub struct PodProc {
    pub unshare: Child,
    pub stdin: ChildStdin,
    pub stdout: BufReader<ChildStdout>,
    /// Namespace-local pid and thread ids (as the process would put in its spans).
    pub ns_pid: u32,
    pub ns_tids: Vec<u32>,
    /// The process's host pid.
    pub host_pid: u32,
}

impl PodProc {
    /// Starts `threads` named threads in a new pid namespace in `cgroup`; with `netns`, inside
    /// that network namespace (`ip netns` name).
    pub fn start(cgroup: &Path, threads: usize, netns: Option<&str>) -> Self {
        Self::start_with(cgroup, threads, netns, false)
    }

    /// As [`PodProc::start`]; with `spin`, the workers burn CPU instead of sleeping.
    pub fn start_with(cgroup: &Path, threads: usize, netns: Option<&str>, spin: bool) -> Self {
        let procs = cgroup.join("cgroup.procs");
        let prefix = netns
            .map(|n| format!("ip netns exec {n} "))
            .unwrap_or_default();
        let mut unshare = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {} && exec {prefix}unshare --pid --fork --mount-proc {} -c \"$0\" {threads} {}",
                procs.display(),
                python(),
                if spin { "spin" } else { "idle" }
            ))
            .arg(SCRIPT)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sh/unshare/python3");
        let stdin = unshare.stdin.take().unwrap();
        let mut stdout = BufReader::new(unshare.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let ids: Vec<u32> = line
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect();
        assert!(ids.len() == threads + 1, "child said {line:?}");
        // The host pid: the process of the cgroup that is not unshare itself.
        let host_pid = std::fs::read_to_string(&procs)
            .unwrap()
            .lines()
            .map(|l| l.parse::<u32>().unwrap())
            .find(|&p| p != unshare.id())
            .expect("the namespaced process");
        Self {
            unshare,
            stdin,
            stdout,
            ns_pid: ids[0],
            ns_tids: ids[1..].to_vec(),
            host_pid,
        }
    }

    /// The host tid of worker `i`, found by its thread name.
    pub fn host_tid(&self, i: usize) -> Option<u32> {
        let want = format!("ks-w{i}");
        let dir = format!("/proc/{}/task", self.host_pid);
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim_end() == want).then_some(tid)
        })
    }

    fn command(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_owned()
    }

    /// Starts worker `i`; its namespace-local tid.
    pub fn start_thread(&mut self, i: usize) -> u32 {
        self.command(&format!("start {i}")).parse().unwrap()
    }

    /// One connection on the namespace's own 127.0.0.1:6379 from 127.0.0.1:40000, aborted
    /// with an RST (`abort`) or closed cleanly (`close`).
    pub fn tcp(&mut self, how: &str) {
        assert_eq!(self.command(&format!("tcp {how}")), "done");
    }

    /// Ends worker `i` (and waits until it is gone from /proc).
    pub fn stop_thread(&mut self, i: usize) {
        let host = self.host_tid(i);
        assert_eq!(self.command(&format!("stop {i}")), "stopped");
        if let Some(t) = host {
            let path = format!("/proc/{}/task/{t}", self.host_pid);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Path::new(&path).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    pub fn kill(&mut self) {
        // Killing the namespace's init ends everything in it.
        let _ = Command::new("kill")
            .args(["-9", &self.host_pid.to_string()])
            .status();
        let _ = self.unshare.wait();
    }
}

impl Drop for PodProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A pod UID and a container id, unique to this test process and `n`.
pub fn pod_ids(n: u32) -> (String, String) {
    let p = std::process::id();
    (
        format!("{p:08x}-0000-4000-8000-{n:012x}"),
        format!("{p:08x}{n:08x}c0ffee00c0ffee00"),
    )
}

/// A network namespace (`ip netns`), with its loopback up; deleted on drop.
pub struct NetNs(pub String);

impl NetNs {
    pub fn new(name: &str) -> Self {
        let name = format!("{name}-{}", std::process::id());
        let ok = |args: &[&str]| {
            assert!(
                Command::new("ip").args(args).status().unwrap().success(),
                "ip {args:?}"
            )
        };
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        ok(&["netns", "add", &name]);
        ok(&["-n", &name, "link", "set", "lo", "up"]);
        Self(name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
