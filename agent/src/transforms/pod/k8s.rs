//! Pod identity from the Kubernetes API: one watch of this node's pods (`spec.nodeName`), kept
//! in a reflector cache, and an index over it: pod UID → name, namespace, node and containers
//! (name ↔ container id, the id the runtime puts in the container's cgroup path).
//!
//! Without an API (`--no-k8s`, no service account or kubeconfig, outside a cluster) the agent
//! says so in one log line and pods are known by the UID in their cgroup path only. When the API
//! goes away, the last answer stays in use; that, and its return, are one log line each.
//! Pods deleted stay known for [`GONE_KEEP`] (spans and incidents about them arrive late).
use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, reflector, watcher},
};

use crate::shared::origin::normalise_container_id;

/// How long a deleted pod stays known.
pub const GONE_KEEP: Duration = Duration::from_secs(300);
/// At most this many deleted pods are remembered.
const GONE_MAX: usize = 1024;

#[derive(Clone, Debug, clap::Args)]
pub struct K8sArgs {
    /// Do not use the Kubernetes API: pods are known by the UID in their cgroup path only.
    #[arg(long, env = "KERNELSIGHT_NO_K8S")]
    pub no_k8s: bool,

    /// This node's name, for the watch of its pods (`spec.nodeName`); set it from the downward
    /// API. Default: the host name.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
}

/// What the agent tells about a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub node: String,
    /// (container name, container id without the runtime prefix; `None` before it started).
    pub containers: Vec<(String, Option<String>)>,
}

impl PodMeta {
    fn of(pod: &Pod) -> Option<Self> {
        let md = &pod.metadata;
        let status = pod.status.as_ref();
        let mut containers: Vec<(String, Option<String>)> = Vec::new();
        for cs in status.into_iter().flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        }) {
            let id = cs.container_id.as_deref().and_then(normalise_container_id);
            containers.push((cs.name.clone(), id));
        }
        // Containers of the spec that have no status yet are still named.
        for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            if !containers.iter().any(|(n, _)| n == &c.name) {
                containers.push((c.name.clone(), None));
            }
        }
        Some(Self {
            uid: md.uid.clone()?.to_ascii_lowercase(),
            name: md.name.clone()?,
            namespace: md.namespace.clone().unwrap_or_default(),
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            containers,
        })
    }

    pub fn container_id(&self, name: &str) -> Option<&str> {
        self.containers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, id)| id.as_deref())
    }

    /// The container whose id is a component of this cgroup path.
    pub fn container_in(&self, cgroup_path: &str) -> Option<&str> {
        self.containers.iter().find_map(|(name, id)| {
            let id = id.as_deref()?;
            super::scope::Scope::Container(id.to_owned())
                .matches(cgroup_path)
                .then_some(name.as_str())
        })
    }
}

/// The pod a process (by its cgroup path) belongs to, and its container when known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodOf {
    pub pod: Arc<PodMeta>,
    pub container: Option<String>,
}

#[derive(Default)]
struct Index {
    by_uid: HashMap<String, Arc<PodMeta>>,
    /// Deleted pods, and when they went.
    gone: HashMap<String, (Arc<PodMeta>, Instant)>,
}

/// Lookups over the watched pods; cheap to clone. Empty without an API.
#[derive(Clone, Default)]
pub struct PodDirectory {
    index: Option<Arc<RwLock<Index>>>,
    /// Whether the watch's last attempt reached the API (false before the first answer).
    up: Arc<std::sync::atomic::AtomicBool>,
}

impl PodDirectory {
    /// No API: every lookup answers `None`.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn enabled(&self) -> bool {
        self.index.is_some()
    }

    pub fn api_up(&self) -> bool {
        self.up.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn by_uid(&self, uid: &str) -> Option<Arc<PodMeta>> {
        let idx = self.index.as_ref()?.read().ok()?;
        let uid = uid.to_ascii_lowercase();
        idx.by_uid
            .get(&uid)
            .or_else(|| idx.gone.get(&uid).map(|(p, _)| p))
            .cloned()
    }

    /// The id of container `name` of pod `uid`.
    pub fn container_id(&self, uid: &str, name: &str) -> Option<String> {
        self.by_uid(uid)?.container_id(name).map(str::to_owned)
    }

    /// The pod (and container) of a process, from its cgroup path.
    pub fn by_cgroup_path(&self, path: &str) -> Option<PodOf> {
        let uid = crate::shared::origin::pod_uid_from_cgroup_path(path)?;
        let pod = self.by_uid(&uid)?;
        let container = pod.container_in(path).map(str::to_owned);
        Some(PodOf { pod, container })
    }

    /// Pods currently known (not counting deleted ones).
    pub fn len(&self) -> usize {
        self.index
            .as_ref()
            .and_then(|i| i.read().ok().map(|i| i.by_uid.len()))
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn rebuild(&self, store: &reflector::Store<Pod>, now: Instant) {
        let Some(index) = &self.index else { return };
        let fresh: HashMap<String, Arc<PodMeta>> = store
            .state()
            .iter()
            .filter_map(|p| PodMeta::of(p))
            .map(|m| (m.uid.clone(), Arc::new(m)))
            .collect();
        let mut idx = index.write().expect("pod index lock");
        let old = std::mem::replace(&mut idx.by_uid, fresh);
        for (uid, meta) in old {
            if !idx.by_uid.contains_key(&uid) {
                idx.gone.insert(uid, (meta, now));
            }
        }
        let Index { by_uid, gone } = &mut *idx;
        gone.retain(|uid, (_, at)| {
            !by_uid.contains_key(uid) && now.saturating_duration_since(*at) < GONE_KEEP
        });
        if gone.len() > GONE_MAX {
            let mut ages: Vec<(String, Instant)> =
                gone.iter().map(|(k, (_, at))| (k.clone(), *at)).collect();
            ages.sort_by_key(|(_, at)| *at);
            for (k, _) in ages.into_iter().take(gone.len() - GONE_MAX) {
                gone.remove(&k);
            }
        }
    }
}

/// Starts the watch as configured; without an API, logs why in one line and returns an empty
/// directory.
pub async fn start(args: &K8sArgs) -> PodDirectory {
    if args.no_k8s {
        tracing::info!(
            "Kubernetes API not used (--no-k8s): pods are known by the UID in their cgroup path"
        );
        return PodDirectory::none();
    }
    let config = match kube::Config::infer().await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(reason = %e, "no Kubernetes API (no service account or kubeconfig): pods are known by the UID in their cgroup path");
            return PodDirectory::none();
        }
    };
    let client = match Client::try_from(config) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "Kubernetes client not usable: pods are known by the UID in their cgroup path");
            return PodDirectory::none();
        }
    };
    let node = args.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap_or_default()
            .trim()
            .to_owned()
    });
    watch_node(client, &node)
}

/// Watches the pods of `node` through `client`; the directory fills in as answers arrive.
pub fn watch_node(client: Client, node: &str) -> PodDirectory {
    let dir = PodDirectory {
        index: Some(Arc::default()),
        up: Arc::default(),
    };
    let api: Api<Pod> = Api::all(client);
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let (store, writer) = reflector::store();
    let stream = watcher(api, cfg).default_backoff().reflect(writer);
    let d = dir.clone();
    let node = node.to_owned();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        // One line when the API goes away, one when it is back (not one per retry).
        let mut failing = false;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => {
                    d.up.store(true, std::sync::atomic::Ordering::Relaxed);
                    if failing {
                        failing = false;
                        tracing::info!(node, "Kubernetes API reachable again");
                    }
                    if matches!(
                        ev,
                        watcher::Event::Apply(_)
                            | watcher::Event::Delete(_)
                            | watcher::Event::InitDone
                    ) {
                        d.rebuild(&store, Instant::now());
                    }
                }
                Err(e) => {
                    d.up.store(false, std::sync::atomic::Ordering::Relaxed);
                    if !failing {
                        failing = true;
                        tracing::warn!(node, error = %e, "Kubernetes API unreachable: keeping the last pod list, retrying with backoff");
                    }
                }
            }
        }
    });
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_meta_from_a_pod_with_statuses() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "game-0", "namespace": "games", "uid": "0F8C2A54-6A7E-4D3B-9A1E-2B3C4D5E6F70"},
            "spec": {"nodeName": "node-a", "containers": [{"name": "game-server"}, {"name": "sidecar"}]},
            "status": {"containerStatuses": [{"name": "game-server", "containerID": "containerd://4c1f0e9a7b3d2c1f0e9a7b3d", "image": "x", "imageID": "y", "ready": true, "restartCount": 0}]}
        }))
        .unwrap();
        let m = PodMeta::of(&pod).unwrap();
        assert_eq!(m.uid, "0f8c2a54-6a7e-4d3b-9a1e-2b3c4d5e6f70");
        assert_eq!(
            (m.name.as_str(), m.namespace.as_str(), m.node.as_str()),
            ("game-0", "games", "node-a")
        );
        assert_eq!(
            m.container_id("game-server"),
            Some("4c1f0e9a7b3d2c1f0e9a7b3d")
        );
        assert_eq!(m.container_id("sidecar"), None);
        assert_eq!(
            m.container_in("/kubepods/pod0f8c2a54-6a7e-4d3b-9a1e-2b3c4d5e6f70/cri-containerd-4c1f0e9a7b3d2c1f0e9a7b3d.scope"),
            Some("game-server")
        );
        // Without the API nothing is known.
        assert_eq!(PodDirectory::none().by_uid(&m.uid), None);
    }
}
