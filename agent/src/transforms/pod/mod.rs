//! Pod mode: the agent runs with hostPID beside pods that have their own pid and network
//! namespaces. Everything the kernel reports is in host terms (host tgid/tid, the socket's own
//! addresses in its netns); a span from a pod is in the pod's terms (namespace-local
//! `process.pid`/`thread.id`, the pod's addresses). This module translates once, at the edge,
//! so that the correlator only ever compares like with like:
//!
//! - [`scope`]: which processes a span's ids are numbers among, from what its resource says
//!   about its origin (`container.id`, `k8s.pod.uid`, `k8s.container.name`: OTel resource
//!   attributes the pod sets from the downward API; see `shared::origin`).
//! - [`pidns`]: (origin, ns-local pid/tid) → host tgid/tid, from `NStgid`/`NSpid` in
//!   `/proc/<pid>/status` of the processes in the origin's cgroups.
//! - [`netns`]: the network namespace of a process (span side) or of a socket's owner (kernel
//!   side), which is part of every connection key.
//! - [`k8s`]: cgroup → container id → pod, from one watch of this node's pods.
//!
//! Why not `/proc/<pid>/ns/{pid,net}`: reading those links needs ptrace access to the target,
//! which the agent does not have with the DaemonSet's capabilities (BPF, PERFMON, SYS_RESOURCE:
//! no SYS_PTRACE, and the target's capabilities are not a subset of ours). `status`, `cgroup`
//! and the per-netns `/proc/<pid>/net/*` entries need no such access.
pub mod k8s;
pub mod netns;
pub mod pidns;
pub mod scope;

use std::path::Path;

/// The ids in `NStgid:` or `NSpid:` of a `/proc/<pid>/status` text, outermost namespace first
/// (the first is the id in the reader's namespace, the last in the task's own).
pub fn ns_ids(status: &str, key: &str) -> Option<Vec<u32>> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
    let ids: Option<Vec<u32>> = line.split_whitespace().map(|s| s.parse().ok()).collect();
    ids.filter(|v| !v.is_empty())
}

/// The cgroup v2 path of a process (the `0::` line of `/proc/<pid>/cgroup`), as the reader's
/// cgroup namespace shows it.
pub fn cgroup_path(proc: &Path, pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(proc.join(pid.to_string()).join("cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

/// Where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup on a unified system,
/// /sys/fs/cgroup/unified on a hybrid one (as on this project's CI machine).
pub fn cgroup2_root() -> std::path::PathBuf {
    std::fs::read_to_string("/proc/self/mounts")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                let mut f = l.split_whitespace();
                let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
                (fstype == "cgroup2").then(|| std::path::PathBuf::from(dir))
            })
        })
        .unwrap_or_else(|| "/sys/fs/cgroup".into())
}

/// Numeric entries of a /proc-like directory (processes, or a process's threads).
pub fn numeric_entries(dir: &Path) -> impl Iterator<Item = u32> + use<> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_ids_parse_outermost_first() {
        let status = "Name:\tpython3\nTgid:\t24404\nNStgid:\t24404\t1\nNSpid:\t24410\t7\n";
        assert_eq!(ns_ids(status, "NStgid"), Some(vec![24404, 1]));
        assert_eq!(ns_ids(status, "NSpid"), Some(vec![24410, 7]));
        assert_eq!(ns_ids("NSpid:\t\n", "NSpid"), None);
        assert_eq!(ns_ids("Tgid:\t5\n", "NSpid"), None);
        // Our own: one level in the test's namespace at least, and the last id is ours.
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        let ids = ns_ids(&own, "NStgid").unwrap();
        assert_eq!(*ids.last().unwrap(), std::process::id());
    }
}
