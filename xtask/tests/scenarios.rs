//! End to end, per scenario: the real game server, the real agent (root, real kernel) and real
//! bots on loopback, one injected fault with known ground truth. The right incident class must
//! be raised within a stated time, naming the right endpoint / task pool / process, and `calm`
//! must raise nothing. Uses the release binaries `cargo xtask test` builds before the suite
//! (debug builds of server, agent and bots together saturate two cores: real CPU contention,
//! which the agent rightly reports and which would drown the scenarios' own faults).
use std::process::Command;

use serde_json::Value;

/// Detection must land within this many seconds of the fault's start. The detector decides on
/// one-second buckets after a settle time of at least 1.5 s plus observed span lateness (the
/// server exports spans every 500 ms here); 10 s leaves room for a loaded 2-core CI machine.
const MAX_TIME_TO_DETECT_S: f64 = 10.0;

#[test]
fn every_scenario_raises_the_right_incident_and_calm_raises_none() {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc_geteuid() },
        0,
        "scenarios load eBPF programs and change nftables: run as root (CI does)"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["scenario", "--all", "--no-build", "--json"])
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
    assert!(out.status.success(), "xtask scenario failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reports: Vec<Value> =
        serde_json::from_str(stdout.lines().last().unwrap_or("[]")).expect("JSON report");
    assert_eq!(reports.len(), 5, "{stdout}");
    for r in &reports {
        let name = r["scenario"].as_str().unwrap();
        eprintln!("{}", serde_json::to_string(r).unwrap());
        assert!(
            r["false_alarms"].as_array().unwrap().is_empty(),
            "{name}: false alarms {}",
            r["false_alarms"]
        );
        // The bots really played: every session connected and deltas arrived.
        let bots = &r["bots"];
        assert_eq!(bots["connected"], bots["sessions"], "{name}: bots {bots}");
        assert!(
            bots["deltas_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
            "{name}: bots {bots}"
        );

        if r["expected_class"].is_null() {
            assert!(r["detected"].is_null(), "{name}: {}", r["detected"]);
            continue;
        }
        let detected = &r["detected"];
        assert!(!detected.is_null(), "{name}: nothing detected");
        assert_eq!(detected["class"], r["expected_class"], "{name}");
        let subject = detected["subject"].as_str().unwrap();
        assert!(
            subject.starts_with(r["expected_subject"].as_str().unwrap()),
            "{name}: subject {subject}"
        );
        let ttd = r["time_to_detect_s"].as_f64().unwrap();
        assert!(
            ttd <= MAX_TIME_TO_DETECT_S,
            "{name}: detected after {ttd:.1} s"
        );
    }
    let by = |n: &str| reports.iter().find(|r| r["scenario"] == n).unwrap();
    // The noisy neighbour is named: one of the hogs' pids, in the hogs' own cgroup (ground
    // truth the agent is not told).
    let culprit = &by("noisy-neighbour")["culprit"];
    assert_eq!(culprit["right"], true, "noisy-neighbour culprit: {culprit}");
    let rst = by("rst-storm");
    assert!(
        rst["redis_rejected_connections"].as_u64().unwrap() > 0,
        "Redis refused connections (maxclients)"
    );
    // The server's pool ran dry while Redis stalled, and its commands failed once Redis reset.
    let cmds = &rst["redis_commands"];
    assert!(
        cmds["pool_exhausted"].as_u64().unwrap() > 0,
        "pool never exhausted: {cmds}"
    );
    assert!(
        cmds["error"].as_u64().unwrap() > 0,
        "no failed Redis command: {cmds}"
    );
    // The incident names Redis's endpoint and carries the server's failed Redis client spans
    // (their 4-tuples are the reset connections').
    let d = &rst["detected"];
    assert!(
        d["failed_spans"].as_u64().unwrap() > 0,
        "no failed spans: {d}"
    );
    let redis_port = rst["expected_subject"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    assert!(
        d["affected_sample"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["peer"]
                .as_str()
                .unwrap()
                .ends_with(&format!(":{redis_port}"))),
        "no linked span toward Redis: {d}"
    );
    let surge = &by("surge")["detected"]["summary"];
    assert!(
        surge.as_str().unwrap().contains("full_sync"),
        "the surge names the dominant task kind: {surge}"
    );
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
