//! The manifests: schema, privileges, the agent DaemonSet, the game server, resources, flags.
use super::*;

#[test]
pub(crate) fn every_overlay_renders_and_validates_against_the_pinned_kubernetes_schema() {
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
pub(crate) fn nothing_is_privileged() {
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

pub(crate) fn ident(d: &Json) -> String {
    format!(
        "{}/{}",
        d["kind"].str().unwrap_or("?"),
        d["metadata"]["name"].str().unwrap_or("?")
    )
}

pub(crate) fn files_under(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
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
pub(crate) fn agent_daemonset_runs_everywhere_with_only_the_capabilities_it_needs() {
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
pub(crate) fn game_server_sends_spans_to_its_own_node_and_scales_on_sessions_and_pool_watermark() {
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
pub(crate) fn workloads_set_resources_probes_pinned_images_and_reference_what_exists() {
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
pub(crate) fn manifests_and_images_set_only_flags_and_variables_the_binaries_know() {
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
