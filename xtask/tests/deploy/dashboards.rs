//! The dashboards: generated, valid, on provisioned datasources, linked to traces; PromQL names.
use super::*;

pub(crate) fn dashboards_dir() -> PathBuf {
    k8s().join("components/dashboards/dashboards")
}

pub(crate) fn dashboards() -> Vec<(String, Json)> {
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
pub(crate) fn dashboard_queries(d: &Json) -> (Vec<String>, Vec<String>) {
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

pub(crate) fn provisioned_datasources() -> BTreeMap<String, String> {
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
pub(crate) fn dashboards_are_generated_valid_json_on_provisioned_datasources_with_links_to_traces()
{
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
pub(crate) fn variable_selector(file: &str, q: &str) -> String {
    let inner = q
        .strip_prefix("label_values(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{file}: variable query {q} is not label_values(...)"));
    inner
        .rsplit_once(',')
        .map(|(s, _)| s.trim().to_owned())
        .unwrap_or_else(|| panic!("{file}: {q} names no metric"))
}

pub(crate) fn percent_decode(s: &str) -> String {
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

pub(crate) fn json_string(s: &str) -> String {
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
pub(crate) fn grafana_to_promql(q: &str) -> String {
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
pub(crate) fn promql_metric_names(expr: &str) -> BTreeSet<String> {
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
pub(crate) fn promql_metric_names_finds_metrics_only() {
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
