//! Who a pid is: its command name and cgroup (and, in Kubernetes, the pod the cgroup belongs
//! to). Kernel events name pids; people think in services and pods.
//!
//! Every /proc look-up of the pipeline is here, behind one bounded cache ([`Attribution`]): the
//! transform fills in what the kernel could not know, and the other stages ask through
//! [`Identify`].
use std::{
    collections::HashMap,
    path::Path,
    sync::{Mutex, PoisonError},
};

use std::time::Instant;

use super::pod::{
    k8s::PodDirectory,
    netns::NetNsCache,
    pidns::{Miss, PidTranslator},
    scope::Scope,
};
use crate::shared::{
    culprit::CulpritStep,
    event::{Identify, KernelEvent, PodLabels},
    origin::Origin,
};

/// The cgroup v2 id of `pid`: the inode number of its cgroup directory, which is what the
/// kernel's `bpf_get_current_cgroup_id()` reports.
pub fn cgroup_id_of(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    // The v2 hierarchy's mount (/sys/fs/cgroup/unified on a hybrid host, where
    // /sys/fs/cgroup itself is a tmpfs whose inodes are no cgroup ids), found once.
    static ROOT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let root = ROOT.get_or_init(super::pod::cgroup2_root);
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = root.join(rel.trim_start_matches('/'));
    Some(std::fs::metadata(dir).ok()?.ino())
}

// Pure and shared with the pod directory; kept reachable here for the pipeline and the fuzzer.
pub use crate::shared::origin::pod_uid_from_cgroup_path;

/// The pod UID of `pid`, when it runs in a Kubernetes pod.
pub fn pod_uid_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    pod_uid_from_cgroup_path(text.lines().find_map(|l| l.strip_prefix("0::"))?)
}

/// A small cache of something read from /proc per pid; cleared when it grows past its bound,
/// since pids are reused and a stale entry is worse than a re-read.
pub struct PidCache<V> {
    map: HashMap<u32, V>,
    read: fn(u32) -> V,
}

impl<V: Clone> PidCache<V> {
    const MAX: usize = 4096;

    pub fn new(read: fn(u32) -> V) -> Self {
        Self {
            map: HashMap::new(),
            read,
        }
    }

    pub fn get(&mut self, pid: u32) -> V {
        if let Some(v) = self.map.get(&pid) {
            return v.clone();
        }
        if self.map.len() >= Self::MAX {
            self.map.clear();
        }
        let v = (self.read)(pid);
        self.map.insert(pid, v.clone());
        v
    }
}

/// (pid, tid) verdicts kept between /proc checks; cleared when full (a thread's answer does
/// not change while it lives, and re-checking is one stat).
const THREADS_MAX: usize = 65536;

/// The pipeline's one /proc cache.
pub struct Attribution {
    /// pid → cgroup id (0 when unknown).
    cgroups: Mutex<PidCache<u64>>,
    /// pid → pod UID ("" outside Kubernetes), so the cgroup file is read once per process.
    pods: Mutex<PidCache<String>>,
    /// (pid, tid) → is that a thread of that process.
    threads: Mutex<HashMap<(u32, u32), bool>>,
    /// pid → cgroup path ("" when unknown): the pod and container of a process.
    paths: Mutex<PidCache<String>>,
    /// Pod mode: spans' namespace-local ids → host ids; network namespaces; pods by the API.
    ids: Mutex<PidTranslator>,
    netns: Mutex<NetNsCache>,
    directory: PodDirectory,
}

impl Default for Attribution {
    fn default() -> Self {
        Self::new()
    }
}

impl Attribution {
    pub fn new() -> Self {
        Self::with_pods(PodDirectory::none())
    }

    /// With the pods of this node from the Kubernetes API (see `pod::k8s`).
    pub fn with_pods(pods: PodDirectory) -> Self {
        Self {
            paths: Mutex::new(PidCache::new(|pid| {
                super::pod::cgroup_path(Path::new("/proc"), pid).unwrap_or_default()
            })),
            ids: Mutex::new(PidTranslator::default()),
            netns: Mutex::new(NetNsCache::default()),
            cgroups: Mutex::new(PidCache::new(|pid| cgroup_id_of(pid).unwrap_or(0))),
            pods: Mutex::new(PidCache::new(|pid| pod_uid_of(pid).unwrap_or_default())),
            threads: Mutex::new(HashMap::new()),
            directory: pods,
        }
    }

    /// The transform: a run-queue event names the thread switched in, which is not `current`,
    /// so the kernel could not read its cgroup; it comes from /proc (cached) here.
    pub fn apply(&self, ev: &mut KernelEvent) {
        match ev {
            KernelEvent::Runq(rec) => rec.cgroup_id = self.cgroup_id(rec.pid),
            // The socket's namespace is its owner's (learnt in process context); without an
            // owner it stays unknown and the event joins no span (see pod::netns).
            KernelEvent::Tcp(rec) => {
                rec.netns = rec.owner.as_ref().map_or(0, |o| {
                    self.netns
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .of_owner(o.pid, o.cgroup_id)
                })
            }
        }
    }

    /// Names each culprit of a step: comm and cgroup path from /proc while the process lives
    /// (cached, bounded), else what the kernel recorded; its pod when it runs in one.
    pub fn apply_culprits(&self, step: &mut CulpritStep) {
        for s in &mut step.samples {
            let pid = s.id.pid;
            // While it lives, /proc is right where the kernel's first sight may not be: a
            // process renamed by exec, or moved into its cgroup after it first ran. (A pid
            // reused within the last second would be misnamed: rare, and not worth a check.)
            let live = self.cgroup_id(pid);
            if live != 0 {
                s.cgroup_id = live;
                let comm = self.comm(pid);
                if comm != "exited" {
                    s.id.comm = comm;
                }
                let path = self.cgroup_path(pid);
                if !path.is_empty() {
                    s.id.cgroup = path;
                }
                if let Some(p) = self.pod(pid) {
                    s.id.pod_name = p.name;
                    s.id.pod_namespace = p.namespace;
                }
            }
        }
    }

    pub fn directory(&self) -> &PodDirectory {
        &self.directory
    }
}

impl Identify for Attribution {
    /// Not cached: a comm is one small read, a process may rename itself, and a cached name
    /// would outlive its pid.
    fn comm(&self, pid: u32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim_end().to_owned())
            .unwrap_or_else(|_| "exited".into())
    }

    fn cgroup_id(&self, pid: u32) -> u64 {
        self.cgroups
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(pid)
    }

    fn cgroup_path(&self, pid: u32) -> String {
        self.paths
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(pid)
    }

    fn pod_uid(&self, pid: u32) -> String {
        self.pods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(pid)
    }

    fn is_thread(&self, pid: u32, tid: u32) -> bool {
        let mut threads = self.threads.lock().unwrap_or_else(PoisonError::into_inner);
        if threads.len() >= THREADS_MAX {
            threads.clear();
        }
        *threads
            .entry((pid, tid))
            .or_insert_with(|| Path::new(&format!("/proc/{pid}/task/{tid}")).exists())
    }

    fn host_ids(
        &self,
        origin: Option<&Origin>,
        pid: u32,
        tid: Option<u32>,
    ) -> Result<(u32, Option<u32>), &'static str> {
        let scope = match origin {
            None => None,
            Some(o) => Some(
                Scope::of(o, |uid, name| self.directory.container_id(uid, name))
                    .ok_or(Miss::NoScope.as_str())?,
            ),
        };
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .translate(scope.as_ref(), pid, tid, Instant::now())
            .map(|h| (h.pid, h.tid))
            .map_err(Miss::as_str)
    }

    fn netns(&self, pid: u32) -> u64 {
        self.netns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .of_owner(pid, 0)
    }

    fn pod(&self, pid: u32) -> Option<PodLabels> {
        let path = self
            .paths
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(pid);
        let uid = pod_uid_from_cgroup_path(&path)?;
        let mut labels = PodLabels {
            uid,
            ..PodLabels::default()
        };
        if let Some(of) = self.directory.by_cgroup_path(&path) {
            labels.name = of.pod.name.clone();
            labels.namespace = of.pod.namespace.clone();
            labels.node = of.pod.node.clone();
            labels.container = of.container.unwrap_or_default();
        }
        Some(labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_uids_from_both_cgroup_drivers() {
        let uid = "0f8c2a54-6a7e-4d3b-9a1e-2b3c4d5e6f70";
        assert_eq!(
            pod_uid_from_cgroup_path(&format!("/kubepods/burstable/pod{uid}/4c1f0e9a7b"))
                .as_deref(),
            Some(uid)
        );
        let systemd = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-4c1f.scope",
            uid.replace('-', "_")
        );
        assert_eq!(pod_uid_from_cgroup_path(&systemd).as_deref(), Some(uid));
        assert_eq!(
            pod_uid_from_cgroup_path("/user.slice/user-0.slice/session-1.scope"),
            None
        );
        assert_eq!(
            pod_uid_from_cgroup_path("/system.slice/podman.service"),
            None
        );
        // This machine runs no pods: our own process has none.
        assert_eq!(pod_uid_of(std::process::id()), None);
    }

    #[test]
    fn our_cgroup_id_is_the_kernels() {
        // The same inode the kernel reports for us; non-zero on any cgroup v2 system.
        let id = cgroup_id_of(std::process::id()).unwrap();
        assert!(id > 0);
        assert_eq!(Attribution::new().cgroup_id(std::process::id()), id);
    }
}
