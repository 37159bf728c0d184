//! The real binaries, driven and scraped: their metrics pass promtool and cover every query.
use super::*;

/// Every metric name a dashboard query, template variable, alert rule or adapter rule selects.
pub(crate) fn referenced_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let mut refs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut add = |name: String, from: &str| {
        refs.entry(name).or_default().insert(from.to_owned());
    };
    for (file, d) in dashboards() {
        let (exprs, vars) = dashboard_queries(&d);
        for e in exprs {
            for m in promql_metric_names(&e) {
                add(m, &file);
            }
        }
        for v in vars {
            for m in promql_metric_names(&variable_selector(&file, &v)) {
                add(m, &file);
            }
        }
    }
    let rules = yaml_one(&read(
        k8s().join("components/demo-backends/prometheus/rules.yml"),
    ));
    for g in rules["groups"].arr() {
        for r in g["rules"].arr() {
            for m in promql_metric_names(r["expr"].str().unwrap()) {
                add(m, "prometheus/rules.yml");
            }
        }
    }
    let adapter = yaml_one(&read(
        k8s().join("components/demo-backends/prometheus-adapter/config.yaml"),
    ));
    for r in adapter["rules"].arr() {
        for m in promql_metric_names(r["seriesQuery"].str().unwrap()) {
            add(m, "prometheus-adapter/config.yaml");
        }
    }
    refs
}

/// Sample and family names in a text exposition.
pub(crate) fn exposition_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            names.insert(rest.split_whitespace().next().unwrap().to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// The value of one series (`name{labels}` exactly as exposed), 0 if absent.
pub(crate) fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

pub(crate) fn promtool_check_metrics(what: &str, scrape: &str) {
    let out = run_with(
        Command::new("promtool").args(["check", "metrics"]),
        Some(scrape),
    );
    assert!(
        out.trim().is_empty(),
        "promtool check metrics on {what}: {out}"
    );
}

/// Opens a WebSocket (RFC 6455 handshake by hand), sends one masked text frame, reads a little
/// and closes. Returns the HTTP status of the upgrade.
pub(crate) fn websocket(addr: SocketAddr, path: &str, messages: &[&str]) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if status != 101 {
        return status;
    }
    let frame = |opcode: u8, payload: &[u8]| {
        assert!(payload.len() < 126);
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    };
    for m in messages {
        s.write_all(&frame(0x1, m.as_bytes())).unwrap();
    }
    // Let a few ticks go by (snapshot, deltas), then close cleanly.
    let deadline = Instant::now() + Duration::from_millis(700);
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while Instant::now() < deadline {
        let _ = s.read(&mut buf);
    }
    let _ = s.write_all(&frame(0x8, &[0x03, 0xe8]));
    std::thread::sleep(Duration::from_millis(100));
    status
}

pub(crate) fn require_root() {
    let status = read("/proc/self/status");
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap();
    assert_eq!(
        uid, "0",
        "the live-scrape test runs the agent, which loads eBPF programs: run as root (CI does), e.g. `sudo -E cargo xtask test`"
    );
}

#[test]
pub(crate) fn live_metrics_pass_promtool_and_cover_every_metric_the_deployment_queries() {
    require_root();
    // As deployed: the agent watches the game server by command name and receives its spans over
    // OTLP/HTTP (the game server's only transport).
    let agent_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let otlp_grpc = format!("127.0.0.1:{}", free_port());
    let otlp_http = format!("127.0.0.1:{}", free_port());
    let mut agent = Running(
        Command::new(binary("agent", "kernelsight-agent"))
            .args(["--http-addr", &agent_addr.to_string()])
            .args(["--comm", "game-server", "--runq-event-threshold-us", "1"])
            .env("KERNELSIGHT_OTLP_GRPC_ADDR", &otlp_grpc)
            .env("KERNELSIGHT_OTLP_HTTP_ADDR", &otlp_http)
            .env_remove("KERNELSIGHT_OTLP_FORWARD")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kernelsight-agent"),
        "kernelsight-agent",
    );
    agent.wait_ready(agent_addr);

    let data = temp_dir("server-data");
    let server_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut server = Running(
        Command::new(binary("game-server", "game-server"))
            .args(["--listen", &server_addr.to_string(), "--dev", "--data-dir"])
            .arg(&data)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp_http}"))
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start game-server"),
        "game-server",
    );
    server.wait_ready(server_addr);

    // A little of everything the dashboards show.
    assert_eq!(
        http(server_addr, "GET", "/healthz", None).map(|r| r.0),
        Some(200)
    );
    let (status, login) = http(
        server_addr,
        "POST",
        "/login",
        Some(r#"{"player":"deploy-test"}"#),
    )
    .expect("login");
    assert_eq!(status, 200, "{login}");
    let token = Json::parse(&login).expect("login JSON")["token"]
        .str()
        .expect("token")
        .to_owned();
    assert_eq!(
        websocket(server_addr, "/ws", &[]),
        401,
        "an upgrade without a token is refused"
    );
    let joined = websocket(
        server_addr,
        &format!("/ws?token={token}"),
        &[
            r#"{"t":"join","room":"deploy-test"}"#,
            r#"{"t":"input","seq":1,"dx":1,"dy":0}"#,
            r#"{"t":"ping","id":7}"#,
        ],
    );
    assert_eq!(joined, 101);
    let (status, body) = http(
        server_addr,
        "POST",
        "/admin/batch",
        Some(r#"{"kind":"full_sync","tasks":50}"#),
    )
    .expect("batch");
    assert_eq!(status, 200, "{body}");
    // One RST each way on loopback: a connect to a port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert!(TcpStream::connect(closed).is_err());

    let needed = referenced_metrics();
    let mut scrapes = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let missing = loop {
        let agent_text = http(agent_addr, "GET", "/metrics", None)
            .map(|(s, b)| {
                assert_eq!(s, 200, "agent /metrics: {b}");
                b
            })
            .unwrap();
        let server_text = http(server_addr, "GET", "/metrics", None)
            .map(|(s, b)| {
                assert_eq!(s, 200, "server /metrics: {b}");
                b
            })
            .unwrap();
        let mut have = exposition_names(&agent_text);
        have.extend(exposition_names(&server_text));
        let spans_in = sample(
            &agent_text,
            "kernelsight_spans_received_total{transport=\"http\"}",
        );
        scrapes.insert("kernelsight-agent", agent_text);
        scrapes.insert("game-server", server_text);
        let missing: Vec<_> = needed
            .keys()
            .filter(|m| !have.contains(*m) && !PROMETHEUS_SYNTHETIC.contains(&m.as_str()))
            .filter(|m| !ABSENT_UNTIL_EVENT.iter().any(|(a, _)| a == m))
            .cloned()
            .collect();
        if (missing.is_empty() && spans_in > 0.0) || Instant::now() > deadline {
            assert!(
                spans_in > 0.0,
                "the game server's OTLP/HTTP spans never reached the agent's receiver"
            );
            break missing;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    for (what, text) in &scrapes {
        promtool_check_metrics(what, text);
    }
    let report: Vec<_> = missing
        .iter()
        .map(|m| {
            format!(
                "{m} (used by {})",
                needed[m].iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    assert!(
        report.is_empty(),
        "metrics the deployment queries but neither binary exports:\n  {}",
        report.join("\n  ")
    );
    assert!(
        exposition_names(&scrapes["kernelsight-agent"])
            .iter()
            .all(|n| n.starts_with("kernelsight_"))
    );

    // The allowlist stays small and honest.
    assert!(ABSENT_UNTIL_EVENT.len() <= 3);
    for (metric, source) in ABSENT_UNTIL_EVENT {
        let stem = metric.strip_prefix("kernelsight_").unwrap_or(metric);
        assert!(
            read(root().join(source)).contains(stem),
            "{metric} is not in {source}"
        );
    }
}
