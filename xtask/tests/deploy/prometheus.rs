//! The Prometheus config and rules, through promtool.
use super::*;

/// Whether this promtool knows Kubernetes service discovery. Debian builds Prometheus without it
/// (its client library is not packaged), so `promtool check config` there rejects
/// `kubernetes_sd_configs` as an unknown field.
pub(crate) fn promtool_knows_kubernetes_sd(dir: &Path) -> bool {
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
pub(crate) fn prometheus_config_and_rules_pass_promtool() {
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
