//! Rendered manifests: each kustomize overlay once, and readers for what the tests look at.
use super::*;

pub(crate) struct Render {
    pub(crate) name: String,
    pub(crate) yaml: String,
    pub(crate) docs: Vec<Json>,
}

/// base and every overlay, rendered once.
pub(crate) fn renders() -> &'static [Render] {
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

pub(crate) fn overlay(name: &str) -> &'static Render {
    let full = format!("overlays/{name}");
    renders()
        .iter()
        .find(|r| r.name == full)
        .unwrap_or_else(|| panic!("no overlay {name}"))
}

impl Render {
    pub(crate) fn find(&self, kind: &str, name: &str) -> Option<&Json> {
        self.docs
            .iter()
            .find(|d| d["kind"].str() == Some(kind) && d["metadata"]["name"].str() == Some(name))
    }

    pub(crate) fn get(&self, kind: &str, name: &str) -> &Json {
        self.find(kind, name)
            .unwrap_or_else(|| panic!("{}: no {kind}/{name}", self.name))
    }

    /// A generated ConfigMap (name-hash suffix) by its generator name.
    pub(crate) fn config_map(&self, prefix: &str) -> &Json {
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

    pub(crate) fn workloads(&self) -> impl Iterator<Item = &Json> {
        self.docs.iter().filter(|d| {
            matches!(
                d["kind"].str(),
                Some("Deployment" | "DaemonSet" | "StatefulSet" | "Job")
            )
        })
    }
}

pub(crate) fn pod_spec(workload: &Json) -> &Json {
    &workload["spec"]["template"]["spec"]
}

pub(crate) fn env_value<'a>(container: &'a Json, name: &str) -> Option<&'a Json> {
    container["env"]
        .arr()
        .iter()
        .find(|e| e["name"].str() == Some(name))
}

pub(crate) fn env_index(container: &Json, name: &str) -> Option<usize> {
    container["env"]
        .arr()
        .iter()
        .position(|e| e["name"].str() == Some(name))
}

pub(crate) fn port_number(container: &Json, port: &Json) -> f64 {
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
