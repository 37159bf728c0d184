//! End to end, per scenario: the real game server, the real agent (root, real kernel) and real
//! bots on loopback, one injected fault with known ground truth. The right incident class must
//! be raised within a stated time, naming the right endpoint / task pool / process, and `calm`
//! must raise nothing. Uses the release binaries `cargo xtask test` builds before the suite
//! (debug builds of server, agent and bots together saturate two cores: real CPU contention,
//! which the agent rightly reports and which would drown the scenarios' own faults).
use std::process::Command;

use serde_json::Value;

/// Detection must land within this many seconds of the fault's start. Early verdicts judge the
/// second so far as evidence arrives (kernel events within ~0.1 s, spans every 200 ms here);
/// measured 2 s at most on the shared dev VM (`cargo xtask scenario --all --repeat 3`); 6 s
/// leaves room for a loaded 2-core CI machine. That every detection was an early verdict is
/// asserted separately: the settled path alone cannot be that fast.
const MAX_TIME_TO_DETECT_S: f64 = 6.0;

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
            // 40 sessions, as `--all` runs by default: a retransmit storm is judged against a
            // floor of 50 segments/s, and the dropped connections retransmit at most about
            // twice each in a second of back-off (0.2, 0.6, 1.4 s …), so 30 sessions gave 60
            // at best and once fewer than 50 in any second (CI: packet-loss, nothing detected).
            "--sessions",
            "40",
        ])
        .output()
        .expect("run xtask scenario");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "xtask scenario failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reports: Vec<Value> =
        serde_json::from_str(stdout.lines().last().unwrap_or("[]")).expect("JSON report");
    assert_eq!(reports.len(), 7, "{stdout}");
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
        assert_eq!(
            detected["raised_by"], "early",
            "{name}: raised from a settled second, not as the evidence arrived"
        );
    }
    let by = |n: &str| by_name(&reports, n);
    // The noisy neighbour is named: one of the hogs' pids, in the hogs' own cgroup (ground
    // truth the agent is not told).
    let culprit = &by("noisy-neighbour")["culprit"];
    assert_eq!(culprit["right"], true, "noisy-neighbour culprit: {culprit}");
    // Attribution: the scenario's ground truth, which the agent was not told.
    for name in ["bystander", "one-session"] {
        let r = by(name);
        assert_eq!(
            r["attribution_ok"], true,
            "{name}: {} (ground truth {})",
            r["attribution"], r["ground_truth"]
        );
    }
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
    // Which peer and which failure: Redis as the server's spans name it, reset by it.
    let attrs = &d["attributes"];
    assert_eq!(attrs["peer.service"], "redis", "{attrs}");
    assert_eq!(
        attrs["server.port"]
            .as_u64()
            .map(|p| p.to_string())
            .as_deref(),
        Some(redis_port),
        "{attrs}"
    );
    assert!(
        ["reset_by_peer", "refused"]
            .contains(&attrs["kernelsight.fault.kind"].as_str().unwrap_or("")),
        "{attrs}"
    );
    assert!(
        attrs["kernelsight.fault.count"].as_u64().unwrap_or(0) >= 5,
        "{attrs}"
    );
    let loss = &by("packet-loss")["detected"]["attributes"];
    assert_eq!(loss["kernelsight.fault.kind"], "retransmit_storm", "{loss}");
    let surge = &by("surge")["detected"]["summary"];
    assert!(
        surge.as_str().unwrap().contains("full_sync"),
        "the surge names the dominant task kind: {surge}"
    );
}

fn by_name<'a>(reports: &'a [Value], name: &str) -> &'a Value {
    reports
        .iter()
        .find(|r| r["scenario"] == name)
        .unwrap_or_else(|| panic!("no {name} report"))
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
