//! Which network namespace a process is in: part of every connection key, so that two pods
//! that each talk to their own 127.0.0.1:6379 never share evidence.
//!
//! The id is the inode number of `/proc/<pid>/net/dev`. Each network namespace has its own
//! `/proc/net` entries, with inode numbers from the same allocator as namespace inodes, unique
//! among the namespaces alive; and unlike `/proc/<pid>/ns/net`, reading them needs no ptrace
//! access to the process, which the agent lacks with the DaemonSet's capabilities.
//!
//! The kernel side names a socket's owner (host tgid, cgroup id), learnt in process context;
//! the owner's namespace is the socket's (a socket stays in the namespace it was created in,
//! and a process that moves namespaces keeps its sockets in the old one: rare, and then the
//! key is wrong: the kernel side would have to record `sock_net(sk)`'s inode to close that gap).
use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// A network namespace, as [`netns_of`] identifies it. 0: unknown.
pub type NetNs = u64;

/// The network namespace of `pid` (host pid), or `None` if the process is gone.
pub fn netns_of(proc: &Path, pid: u32) -> Option<NetNs> {
    Some(
        std::fs::metadata(proc.join(pid.to_string()).join("net/dev"))
            .ok()?
            .ino(),
    )
}

/// pid → network namespace, bounded, with the owner's cgroup as a fallback for processes that
/// are gone by the time their socket's event is read (a pod's cgroup is in one namespace).
pub struct NetNsCache {
    proc: PathBuf,
    by_pid: HashMap<u32, NetNs>,
    by_cgroup: HashMap<u64, NetNs>,
    max: usize,
    /// The agent's own namespace (the host's, with hostNetwork).
    pub own: NetNs,
}

impl NetNsCache {
    pub fn new(proc: impl Into<PathBuf>, max: usize) -> Self {
        let proc = proc.into();
        let own = std::fs::metadata(proc.join("self/net/dev")).map_or(0, |m| m.ino());
        Self {
            proc,
            by_pid: HashMap::new(),
            by_cgroup: HashMap::new(),
            max,
            own,
        }
    }

    /// The namespace of a socket owner (`pid`, and its `cgroup_id` if known, 0 if not); 0 when
    /// neither is known. Pids are reused, so a cached answer is only used while the cache has
    /// not been cleared (it is, whenever it reaches its bound) and is re-read when the pid is
    /// first seen again after that.
    pub fn of_owner(&mut self, pid: u32, cgroup_id: u64) -> NetNs {
        if pid == 0 {
            return self.by_cgroup.get(&cgroup_id).copied().unwrap_or(0);
        }
        if let Some(&ns) = self.by_pid.get(&pid) {
            return ns;
        }
        match netns_of(&self.proc, pid) {
            Some(ns) => {
                if self.by_pid.len() >= self.max {
                    self.by_pid.clear();
                }
                self.by_pid.insert(pid, ns);
                if cgroup_id != 0 {
                    if self.by_cgroup.len() >= self.max {
                        self.by_cgroup.clear();
                    }
                    self.by_cgroup.insert(cgroup_id, ns);
                }
                ns
            }
            None => self.by_cgroup.get(&cgroup_id).copied().unwrap_or(0),
        }
    }

    /// Forget what is known of `pid` (it exited, or its namespace may have changed).
    pub fn forget(&mut self, pid: u32) {
        self.by_pid.remove(&pid);
    }
}

impl Default for NetNsCache {
    fn default() -> Self {
        Self::new("/proc", 65536)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_namespace_is_our_parents_and_gone_pids_have_none() {
        let proc = Path::new("/proc");
        let me = netns_of(proc, std::process::id()).unwrap();
        assert_ne!(me, 0);
        assert_eq!(
            Some(me),
            netns_of(proc, std::os::unix::process::parent_id())
        );
        assert_eq!(netns_of(proc, u32::MAX - 1), None);
        let mut c = NetNsCache::default();
        assert_eq!(c.own, me);
        assert_eq!(c.of_owner(std::process::id(), 77), me);
        // Gone, but its cgroup is known.
        assert_eq!(c.of_owner(u32::MAX - 1, 77), me);
        assert_eq!(c.of_owner(u32::MAX - 1, 78), 0);
        assert_eq!(c.of_owner(0, 0), 0);
    }
}
