//! The incident page, end to end in headless Chromium (Debian's `/usr/bin/chromium`, driven by
//! playwright-core from `tests/ui/`), against the real agent binary with real kernel events on
//! 127.0.0.1: a burst of resets toward one endpoint becomes a connection_fault, the page shows
//! it on the timeline, a click shows why it was raised and the spans it hurt (with links into
//! the trace backend), and a screenshot is saved under `target/ui-artifacts/`. Also: the page
//! without spans, pool metrics or watched processes, and with the agent gone.
mod common;
mod correlation_support;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use common::{Agent, eventually, free_port, http_get, require_root};
use correlation_support::*;

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui")
}

/// `target/ui-artifacts` (of whichever target dir this test was built in).
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("ui-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn require_browser() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium missing: `cargo xtask setup` installs Debian's chromium"
    );
    assert!(
        ui_dir()
            .join("node_modules/playwright-core/package.json")
            .exists(),
        "{}/node_modules missing: `cargo xtask setup` runs `npm ci` there",
        ui_dir().display()
    );
}

fn node(args: &[&str]) -> Command {
    let mut c = Command::new("node");
    c.current_dir(ui_dir())
        .arg("drive.mjs")
        .args(args)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1");
    c
}

/// Runs the driver to completion; its last stdout line is a JSON report.
fn drive(args: &[&str]) -> serde_json::Value {
    let out = node(args)
        .output()
        .expect("run node (Node.js 20 must be installed)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser driver failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("driver report: {e}\n{stdout}"))
}

fn agent_with_otlp(extra: &[&str]) -> (Agent, SocketAddr) {
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut args = vec![
        "--otlp-grpc-addr".to_owned(),
        grpc.to_string(),
        "--otlp-http-addr".to_owned(),
        http.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Agent::start(&args), grpc)
}

/// A stand-in for the game server's /metrics: its pool's submission counter and queue depth in
/// the pool crate's exposition format, growing at ~30 tasks/s with a queue that breathes.
fn pool_metrics_server(stop: Arc<AtomicBool>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    let submitted = Arc::new(AtomicU64::new(0));
    let t0 = std::time::Instant::now();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            let _ = s.set_nonblocking(false);
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let secs = t0.elapsed().as_secs_f64();
            let n = submitted.fetch_add(25 + (secs as u64 % 7) * 3, Ordering::Relaxed);
            let depth = ((secs / 4.0).sin() * 6.0 + 7.0).round();
            let body = format!(
                "# TYPE pool_submitted_total counter\npool_submitted_total{{kind=\"save\",pool=\"game\"}} {}\npool_submitted_total{{kind=\"path\",pool=\"game\"}} {}\n# TYPE pool_queue_depth gauge\npool_queue_depth{{pool=\"game\"}} {depth}\n",
                n * 2 / 3,
                n - n * 2 / 3
            );
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

fn timeline(agent: &Agent) -> serde_json::Value {
    let (status, body) = http_get(agent.addr, "/api/timeline").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// RST events the timeline counted for one endpoint: (sent, received).
fn resets_for(tl: &serde_json::Value, ep: &str) -> (u64, u64) {
    let mut sum = (0, 0);
    for s in tl["samples"].as_array().unwrap() {
        for p in s["tcp"].as_array().unwrap() {
            if p["ep"] == ep {
                sum.0 += p["rst_sent"].as_u64().unwrap();
                sum.1 += p["rst_received"].as_u64().unwrap();
            }
        }
    }
    sum
}

#[test]
fn a_connection_fault_on_the_page_click_shows_its_evidence_and_a_screenshot_is_saved() {
    require_root();
    require_browser();
    let stop = Arc::new(AtomicBool::new(false));
    let pool = pool_metrics_server(stop.clone());
    let me = std::process::id().to_string();
    let template = "http://jaeger.example.test:16686/trace/{trace_id}";
    let (agent, grpc) = agent_with_otlp(&[
        "--span-wait-ms",
        "300",
        "--pid",
        &me,
        "--pool-metrics-url",
        &format!("http://{pool}/metrics"),
        "--trace-url-template",
        template,
    ]);
    let listener = service_listener();
    let service = listener.local_addr().unwrap();
    let subject = format!("ep:{service}");

    // A steady trickle of task spans from this process, so the page has something normal to
    // show before the fault.
    let trickle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 10_000u64;
            while !stop.load(Ordering::Relaxed) {
                let start = now_ns();
                std::thread::sleep(Duration::from_millis(40));
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() } as u32;
                let spans = (0..3)
                    .map(|i| task_span(n + i, start, now_ns(), tid, std::process::id(), "save"))
                    .collect();
                n += 3;
                send_grpc(grpc, request(spans));
                std::thread::sleep(Duration::from_millis(400));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(20));

    // The fault: twelve connections aborted by the service within a second, each with a session
    // span; then one more a bit later.
    let mut burst = Vec::new();
    for i in 0..12 {
        let start = now_ns();
        let (s, c, _, _) = aborted_connection(&listener);
        burst.push(conn_span(
            "ws.session",
            100 + i,
            start,
            now_ns(),
            s,
            c,
            i % 2 == 0,
        ));
    }
    send_grpc(grpc, request(burst));

    // Wait until it is listed and closed (its span links are final then).
    assert!(
        eventually(Duration::from_secs(30), || {
            let (_, body) =
                http_get(agent.addr, "/incidents?class=connection_fault&state=closed").unwrap();
            body.contains(&subject)
        }),
        "no closed connection_fault for {subject} at /incidents"
    );

    // The data behind the pictures: every RST of the burst, both sides, under the endpoint.
    let tl = timeline(&agent);
    // (The agent watches the whole node: another test's resets toward this port before we bound
    // it could add to the count, never take from it.)
    let (sent, received) = resets_for(&tl, &service.to_string());
    assert!(
        sent >= 12 && received >= 12,
        "resets per endpoint on the timeline: {sent} sent, {received} received"
    );
    let samples = tl["samples"].as_array().unwrap();
    assert!(
        samples.len() >= 12,
        "one sample a second: {}",
        samples.len()
    );
    assert!(
        samples
            .iter()
            .any(|s| s["pools"][0]["arrivals"].as_f64().unwrap_or(0.0) >= 20.0),
        "task arrivals from the pool metrics"
    );
    assert!(
        samples.iter().any(|s| s["spans"].as_u64().unwrap_or(0) > 0),
        "spans per second"
    );
    assert!(
        samples
            .iter()
            .any(|s| s["runq"]["count"].as_u64().unwrap_or(0) > 0),
        "run-queue waits of this process"
    );
    assert!(
        tl["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["subject"] == subject.as_str()),
        "the incident marker"
    );

    let dir = artifacts();
    let report = drive(&[
        "incident",
        &format!("http://{}", agent.addr),
        dir.to_str().unwrap(),
        &subject,
        "http://jaeger.example.test:16686/trace/",
    ]);
    eprintln!("browser: {report}");
    stop.store(true, Ordering::Relaxed);
    trickle.join().unwrap();
    let png = dir.join("incident.png");
    let bytes = std::fs::read(&png).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000,
        "{} is a real screenshot",
        png.display()
    );
    eprintln!("screenshot: {}", png.display());
}

#[test]
fn without_spans_pool_metrics_or_watched_processes_the_page_says_what_is_missing() {
    require_root();
    require_browser();
    let (agent, _) = agent_with_otlp(&[]);
    let report = drive(&[
        "degraded",
        &format!("http://{}", agent.addr),
        artifacts().to_str().unwrap(),
    ]);
    eprintln!("browser: {report}");
    let banner = report["banner"].as_str().unwrap();
    assert!(
        banner.contains("gRPC 127.0.0.1:"),
        "the banner says where to send spans: {banner}"
    );
}

#[test]
fn when_the_agent_goes_away_the_page_says_so_and_keeps_what_it_had() {
    require_root();
    require_browser();
    let (mut agent, _) = agent_with_otlp(&[]);
    let mut child = node(&[
        "unreachable",
        &format!("http://{}", agent.addr),
        artifacts().to_str().unwrap(),
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .expect("run node");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 && line.trim() != "READY" {
        line.clear();
    }
    assert_eq!(line.trim(), "READY", "the driver never got the page live");
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    // Closing stdin after the word lets the driver's reader finish.
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "stopped").unwrap();
    drop(stdin);
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "browser driver failed: {rest}");
    let report: serde_json::Value = serde_json::from_str(rest.lines().last().unwrap()).unwrap();
    eprintln!("browser: {report}");
}
