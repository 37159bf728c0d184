//! Who held the CPU, with the real programs and real hogs: a watched victim shares CPU 0 with
//! hog processes, one of them in a cgroup v2 of its own (made here, removed after).
//!
//! - `two_hogs_one_in_a_cgroup_and_a_hog_that_stops_halfway`: the kernel's (victim, culprit)
//!   table through the agent's aggregation: both hogs charged, each with its own cgroup id;
//!   after one hog stops, only the other is charged.
//! - `a_hog_charged_as_a_fork_is_named_as_it_runs_after_moving_and_exec`: a hog first charged
//!   while it still runs as our fork (our comm, our cgroup) is named by the kernel with its own
//!   cgroup and comm once it moved and exec'd (the kernel re-reads them while it charges).
//! - `the_incident_names_the_hog_that_held_the_cpu`: the agent binary raises cpu_contention for
//!   the victim, names the heavier hog (pid and cgroup path) at /incidents, and forwards the
//!   incident span with `kernelsight.culprit.*`.
mod common;
mod correlation_support;

use std::{
    os::unix::fs::MetadataExt as _,
    os::unix::{ffi::OsStringExt as _, process::CommandExt as _},
    path::PathBuf,
    process::{Child, Command},
    time::Duration,
};

use agent::{
    shared::culprit::{CulpritDeltas, CulpritWindow, WindowBounds},
    sources::kernel::{ProbeConfig, Probes},
};
use common::{eventually, free_port, http_get, require_root};
use correlation_support::*;

/// A Python process pinned to CPU 0 at `nice`, killed on drop. Pinned and reniced before
/// exec, so the kernel never sees it run under another name or elsewhere.
struct Pinned(Child);

impl Pinned {
    fn python(code: &str, nice: i32, cgroup: Option<&Cgroup>) -> Self {
        let mut cmd = Command::new(python());
        cmd.args(["-c", code]);
        let procs = cgroup.map(|c| {
            std::ffi::CString::new(c.0.join("cgroup.procs").into_os_string().into_vec()).unwrap()
        });
        // SAFETY: only async-signal-safe calls between fork and exec; `procs` is built before.
        unsafe {
            cmd.pre_exec(move || {
                // Off CPU 0 (where the victim waits) until it is in its cgroup, so the kernel
                // never charges it under the parent's cgroup ("0": the writer itself).
                let mut other: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(1, &mut other);
                libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &other);
                if let Some(p) = &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY);
                    if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                }
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(0, &mut set);
                if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0
                    || libc::setpriority(libc::PRIO_PROCESS, 0, nice) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self(cmd.spawn().expect("python3"))
    }

    /// Started the way runc starts a container's first process: it runs on CPU 0 at nice 0 as
    /// our fork (our thread's comm, our cgroup) for `as_fork`, then moves itself into `cgroup`
    /// and execs Python.
    fn python_after_fork(code: &str, as_fork: Duration, cgroup: &std::path::Path) -> Self {
        let mut cmd = Command::new(python());
        cmd.args(["-c", code]);
        let procs = std::ffi::CString::new(cgroup.join("cgroup.procs").into_os_string().into_vec())
            .unwrap();
        let spin_ns = as_fork.as_nanos() as i64;
        // SAFETY: only async-signal-safe calls between fork and exec; `procs` is built before.
        unsafe {
            cmd.pre_exec(move || {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(0, &mut set);
                if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let now = || {
                    let mut t: libc::timespec = std::mem::zeroed();
                    libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t);
                    t.tv_sec * 1_000_000_000 + t.tv_nsec
                };
                let start = now();
                while now() - start < spin_ns {}
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
        Self(cmd.spawn().expect("python3"))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A cgroup v2 directory of our own under the v2 root (/sys/fs/cgroup, or
/// /sys/fs/cgroup/unified on a hybrid host like this project's CI), removed on drop (after
/// its processes are gone: drop the processes first).
struct Cgroup(PathBuf);

fn cgroup2_root() -> PathBuf {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .expect("a cgroup v2 hierarchy is mounted")
}

impl Cgroup {
    fn new(tag: &str) -> Self {
        let dir = cgroup2_root().join(format!("ks-culprit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).expect("creating a cgroup v2");
        Self(dir)
    }

    /// The id `bpf_get_current_cgroup_id()` reports: the directory's inode.
    fn id(&self) -> u64 {
        std::fs::metadata(&self.0).unwrap().ino()
    }

    /// As /proc/PID/cgroup names it.
    fn path(&self) -> String {
        format!("/{}", self.0.file_name().unwrap().to_str().unwrap())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn cgroup_id_of(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let rel = text.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    std::fs::metadata(cgroup2_root().join(rel.trim().trim_start_matches('/')))
        .unwrap()
        .ino()
}

const BUSY: &str = "while True: pass";

fn now_unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Both tests pin busy processes to CPU 0: run side by side (the test harness's default), one's
/// hogs become the other's baseline and culprits.
static CPU0: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn two_hogs_one_in_a_cgroup_and_a_hog_that_stops_halfway() {
    let _cpu0 = CPU0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    require_root();
    let cage = Cgroup::new("unit");
    let victim = Pinned::python(BUSY, 0, None);
    let mut probes = Probes::load(&ProbeConfig::default()).unwrap();
    probes.watch(victim.pid()).unwrap();
    // Both hogs at nice -19: together they hold CPU 0 against anything else a shared machine
    // runs there, so the shares below are about them.
    let caged = Pinned::python(BUSY, -19, Some(&cage));
    let free = Pinned::python(BUSY, -19, None);
    let (vpid, cpid, fpid) = (victim.pid(), caged.pid(), free.pid());

    let mut deltas = CulpritDeltas::default();
    let mut window = CulpritWindow::new(WindowBounds::default());
    let mut read = |window: &mut CulpritWindow, t: u64| {
        let step = deltas.step(probes.runq_culprits().unwrap(), t);
        window.push(&step);
        step
    };
    read(&mut window, 0);
    std::thread::sleep(Duration::from_millis(1500));
    let first = read(&mut window, 1);
    let top = window.top(vpid, 1, 1, 5);
    eprintln!("both hogs: {top:#?}");
    let of = |pid: u32| top.iter().find(|c| c.id.pid == pid);
    let (c, f) = (
        of(cpid).expect("the caged hog was charged"),
        of(fpid).expect("the free hog was charged"),
    );
    // While the victim waits, the two hogs hold the CPU more than anyone else, about equally
    // (they share one CPU at one weight); other engineers' compilers on this shared machine
    // take part of the rest.
    assert!(
        top[..2]
            .iter()
            .all(|x| x.id.pid == cpid || x.id.pid == fpid)
            && c.share > 0.15
            && f.share > 0.15
            && c.ns.max(f.ns) < 3 * c.ns.min(f.ns),
        "{top:?}"
    );
    // Each with its own cgroup, as the kernel saw it when it ran.
    let id = |pid: u32| {
        first
            .samples
            .iter()
            .find(|s| s.victim == vpid && s.id.pid == pid)
            .unwrap()
            .cgroup_id
    };
    assert_eq!(id(cpid), cage.id());
    assert_eq!(id(fpid), cgroup_id_of(fpid));
    assert_ne!(id(cpid), id(fpid));
    assert_eq!(
        c.id.comm, "python3",
        "the kernel's comm of the thread that ran"
    );

    // The free hog stops halfway: from then on only the caged one is charged.
    drop(free);
    read(&mut window, 2); // the tail of the free hog's time up to its exit
    std::thread::sleep(Duration::from_millis(1500));
    read(&mut window, 3);
    let after = window.top(vpid, 3, 3, 5);
    eprintln!("after the free hog stopped: {after:#?}");
    assert!(
        after.iter().all(|c| c.id.pid != fpid),
        "a stopped hog is not charged: {after:?}"
    );
    assert_eq!(
        after[0].id.pid, cpid,
        "the caged hog still charged, first: {after:?}"
    );
    // Over the whole run the stopped hog keeps what it took while it ran.
    let whole = window.top(vpid, 0, 3, 5);
    assert!(whole.iter().any(|c| c.id.pid == fpid), "{whole:?}");
    drop((caged, victim));
}

#[test]
fn a_hog_charged_as_a_fork_is_named_as_it_runs_after_moving_and_exec() {
    let _cpu0 = CPU0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    require_root();
    let cage = Cgroup::new("moved");
    let victim = Pinned::python(BUSY, 0, None);
    let vpid = victim.pid();
    let mut probes = Probes::load(&ProbeConfig::default()).unwrap();
    probes.watch(vpid).unwrap();
    // `spawn` returns once the child exec'd: fork from a thread of its own, whose name the
    // child carries until exec.
    let cage_dir = cage.0.clone();
    let forking = std::thread::Builder::new()
        .name("ks-forked-hog".into())
        .spawn(move || Pinned::python_after_fork(BUSY, Duration::from_millis(800), &cage_dir))
        .unwrap();
    let charged = |probes: &Probes,
                   pick: &dyn Fn(&agent::shared::culprit::CulpritTotal) -> bool| {
        probes
            .runq_culprits()
            .unwrap()
            .into_iter()
            .find(|t| t.victim == vpid && pick(t))
    };
    // Still our fork: charged, and named as it runs now (else the check below proves nothing).
    std::thread::sleep(Duration::from_millis(400));
    // (The forking thread itself may be charged too, under our pid.)
    let early = charged(&probes, &|t| {
        t.comm == "ks-forked-hog" && t.culprit != std::process::id()
    })
    .expect("the hog charged while it ran as our fork");
    eprintln!("as a fork: {early:?}");
    assert_eq!(
        early.cgroup_id,
        cgroup_id_of(std::process::id()),
        "{early:?}"
    );
    let hog = forking.join().unwrap();
    let hpid = hog.pid();
    assert_eq!(early.culprit, hpid, "{early:?}");
    // Moved and exec'd: the same pair, now with its own cgroup and name.
    std::thread::sleep(Duration::from_millis(1500));
    let late = charged(&probes, &|t| t.culprit == hpid).unwrap();
    eprintln!("after moving and exec: {late:?}");
    assert!(late.ns > early.ns, "{late:?}");
    assert_eq!(late.cgroup_id, cage.id(), "{late:?}");
    assert_eq!(late.comm, "python3", "{late:?}");
    drop((hog, victim));
}

#[test]
fn the_incident_names_the_hog_that_held_the_cpu() {
    let _cpu0 = CPU0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    require_root();
    let sink = Sink::start(
        &std::env::temp_dir().join(format!("kernelsight-culprit-{}.otlp", std::process::id())),
    );
    let cage = Cgroup::new("e2e");
    let victim = Pinned::python(BUSY, 0, None);
    let vpid = victim.pid();
    let agent = common::Agent::start(&[
        "--pid",
        &vpid.to_string(),
        "--otlp-grpc-addr",
        &format!("127.0.0.1:{}", free_port()),
        "--otlp-http-addr",
        &format!("127.0.0.1:{}", free_port()),
        "--otlp-forward",
        &format!("http://{}", sink.addr),
        "--span-wait-ms",
        "300",
        "--detect-warmup-buckets",
        "3",
    ]);
    // A calm baseline: the victim alone on its CPU. Baselines learn from settled seconds only
    // (1.5 s after their end at the earliest): 3 warm-up buckets need ~5 s.
    std::thread::sleep(Duration::from_secs(6));
    let start = now_unix_ns();
    // The hog that matters, in its own cgroup at nice -19 (it holds CPU 0 against whatever
    // else a shared machine runs there), and a lighter one, busy half the time at nice 0,
    // that must not be named first.
    let heavy = Pinned::python(BUSY, -19, Some(&cage));
    let light = Pinned::python(
        "import time\nwhile True:\n    t = time.time()\n    while time.time() - t < 0.01: pass\n    time.sleep(0.01)\n",
        0,
        None,
    );
    let incident = || -> Option<serde_json::Value> {
        let (_, body) = http_get(agent.addr, "/incidents?class=cpu_contention")?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["incidents"]
            .as_array()?
            .iter()
            .find(|i| {
                i["subject"] == format!("pid:{vpid}")
                    && i["culprits"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["pid"] == heavy.pid()))
            })
            .cloned()
    };
    if !eventually(Duration::from_secs(12), || incident().is_some()) {
        // Say why. CI once saw no incident at all here: the victim, alone on a quiet CPU, never
        // waited 50 µs during the calm, so its baseline began with the hog and learnt it (fixed
        // in the detector: a watched process's baseline starts when it is watched).
        let metrics = http_get(agent.addr, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        let runq: Vec<&str> = metrics
            .lines()
            .filter(|l| l.contains("runq") && !l.starts_with('#'))
            .take(40)
            .collect();
        panic!(
            "no cpu_contention incident naming culprits for pid {vpid} (heavy {}, light {}): {:?}\nagent's run-queue metrics:\n{}",
            heavy.pid(),
            light.pid(),
            http_get(agent.addr, "/incidents"),
            runq.join("\n")
        );
    }
    let inc = incident().unwrap();
    eprintln!(
        "detected {:.1} s after the hogs started: {}",
        (now_unix_ns() - start) as f64 / 1e9,
        inc["summary"]
    );
    let top = &inc["culprits"][0];
    assert_eq!(top["pid"], heavy.pid(), "{inc:#}");
    assert_ne!(top["pid"], light.pid());
    assert_eq!(top["cgroup"], cage.path(), "{inc:#}");
    assert_eq!(top["comm"], "python3");
    // More than anyone else (that is what `culprits[0]` says), though other engineers'
    // compilers on this shared machine take part of the rest.
    assert!(top["share"].as_f64().unwrap() > 0.25, "{inc:#}");
    let summary = inc["summary"].as_str().unwrap();
    assert!(
        summary.contains(&format!(
            "python3 (pid {}, cgroup {})",
            heavy.pid(),
            cage.path()
        )),
        "{summary}"
    );

    // The neighbour leaves; the incident closes and its span names the culprit.
    drop((heavy, light));
    let id = inc["id"].as_str().unwrap().to_owned();
    let closed = || {
        sink.spans().into_iter().find(|s| {
            s.name == "kernelsight.incident.cpu_contention"
                && attr(s, "kernelsight.incident.id")
                    .is_some_and(|v| matches!(v, opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(x) if *x == id))
        })
    };
    assert!(
        eventually(Duration::from_secs(12), || closed().is_some()),
        "incident {id} never closed and forwarded"
    );
    let span = closed().unwrap();
    assert_eq!(
        attr_i(&span, "kernelsight.culprit.pid"),
        top["pid"].as_i64(),
        "{:?}",
        span.attributes
    );
    let cgroup = attr(&span, "kernelsight.culprit.cgroup");
    assert!(
        matches!(cgroup, Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(p)) if *p == cage.path()),
        "{cgroup:?}"
    );
    let share = attr_f(&span, "kernelsight.culprit.share").unwrap();
    assert!((0.25..=1.0).contains(&share), "{share}");
    drop((agent, victim));
}
