//! Pod mode end to end: the game server in its own pid, mount, network and cgroup namespaces
//! (a veth to the host), the agent with only the DaemonSet's capabilities. Two of the five
//! scenarios, to keep CI cheap (~2 min): `surge` (pool task spans with namespace-local pid/tid
//! must get run-queue evidence: the pid-namespace translation) and `rst-storm` (a real Redis
//! on the pod's own 127.0.0.1: connection spans must get the resets: the network-namespace
//! key). The other three add nothing pod-specific to the joins (packet-loss and noisy-neighbour
//! are judged from kernel events alone); `cargo xtask scenario --pod --all` runs them.
use std::process::Command;

use serde_json::Value;

const MAX_TIME_TO_DETECT_S: f64 = 10.0;

fn run(kind: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["scenario", kind, "--pod", "--no-build", "--json"])
        .args([
            "--warmup",
            "35",
            "--fault",
            "8",
            "--after",
            "6",
            "--sessions",
            "30",
        ])
        .output()
        .expect("run xtask scenario");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "xtask scenario --pod {kind} failed:\n{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut reports: Vec<Value> =
        serde_json::from_str(stdout.lines().last().unwrap_or("[]")).expect("JSON report");
    assert_eq!(reports.len(), 1, "{stdout}");
    let r = reports.remove(0);
    eprintln!("{}", serde_json::to_string(&r).unwrap());
    assert_eq!(r["mode"], "pod");
    assert!(
        r["false_alarms"].as_array().unwrap().is_empty(),
        "{kind}: false alarms {}",
        r["false_alarms"]
    );
    let bots = &r["bots"];
    assert_eq!(bots["connected"], bots["sessions"], "{kind}: bots {bots}");
    let detected = &r["detected"];
    assert!(!detected.is_null(), "{kind}: nothing detected");
    assert_eq!(detected["class"], r["expected_class"], "{kind}");
    let subject = detected["subject"].as_str().unwrap();
    assert!(
        subject.starts_with(r["expected_subject"].as_str().unwrap()),
        "{kind}: subject {subject}"
    );
    let ttd = r["time_to_detect_s"].as_f64().unwrap();
    assert!(
        ttd <= MAX_TIME_TO_DETECT_S,
        "{kind}: detected after {ttd:.1} s"
    );
    assert_eq!(
        r["spans"]["ids_unresolved"].as_f64(),
        Some(0.0),
        "{kind}: every span's ids were put in host terms: {}",
        r["spans"]
    );
    r
}

fn leftovers() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("ks-pod-"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn pod_mode_surge_and_rst_storm_join_and_detect_as_on_the_host() {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc_geteuid() },
        0,
        "scenarios load eBPF programs and make namespaces: run as root (CI does)"
    );
    let before = leftovers();
    let surge = run("surge");
    // The incident names the pod its pool runs in (the UID from the cgroup: no API here).
    assert_eq!(
        surge["detected"]["pod"]["uid"], surge["pod_uid"],
        "the surge's pod: {}",
        surge["detected"]
    );
    assert!(
        surge["spans"]["joined_runq"].as_f64().unwrap_or(0.0) > 0.0,
        "pool spans from the pod got run-queue evidence: {}",
        surge["spans"]
    );
    let storm = run("rst-storm");
    assert!(
        storm["spans"]["joined_tcp"].as_f64().unwrap_or(0.0) > 0.0,
        "connection spans from the pod got the resets: {}",
        storm["spans"]
    );
    // Ground truth: the pod's own Redis really refused (and reset) the server's connections.
    assert!(
        storm["redis_rejected_connections"].as_u64().unwrap_or(0) > 0,
        "Redis in the pod rejected connections: {storm}"
    );
    assert_eq!(leftovers(), before, "the runs' network namespaces are gone");
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
