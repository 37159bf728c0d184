//! Who a pid is: its command name and cgroup (and, in Kubernetes, the pod the cgroup belongs
//! to). Kernel events name pids; people think in services and pods.
use std::{collections::HashMap, path::Path};

/// The cgroup v2 id of `pid`: the inode number of its cgroup directory, which is what the
/// kernel's `bpf_get_current_cgroup_id()` reports.
pub fn cgroup_id_of(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
    Some(std::fs::metadata(dir).ok()?.ino())
}

/// A small cache of pid → cgroup id; cleared when it grows past its bound, since pids are reused.
#[derive(Default)]
pub struct CgroupCache {
    map: HashMap<u32, u64>,
}

impl CgroupCache {
    const MAX: usize = 4096;

    pub fn get(&mut self, pid: u32) -> u64 {
        if let Some(&id) = self.map.get(&pid) {
            return id;
        }
        if self.map.len() >= Self::MAX {
            self.map.clear();
        }
        let id = cgroup_id_of(pid).unwrap_or(0);
        self.map.insert(pid, id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_cgroup_id_is_the_kernels() {
        // The same inode the kernel reports for us; non-zero on any cgroup v2 system.
        let id = cgroup_id_of(std::process::id()).unwrap();
        assert!(id > 0);
        assert_eq!(CgroupCache::default().get(std::process::id()), id);
    }
}
