//! Owners of sockets the kernel side could not name: those born before the agent started (the
//! owner table learns owners at connect and accept, once per connection). The event carries the
//! socket's inode; the process holding `socket:[inode]` in its fd table owns it. That /proc walk
//! is far too slow for a per-message path and fine for a rare event, and it is bounded: the
//! inode index is rebuilt at most once per `REBUILD_EVERY`, and the answer is written back to the
//! kernel's table so later events on the same socket are attributed in the kernel.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use agent_common::{COMM_LEN, SockOwner};
use aya::maps::{HashMap as BpfHashMap, MapData};

use crate::shared::event::{Owner, TcpRecord};

const REBUILD_EVERY: Duration = Duration::from_secs(1);
/// The index is a snapshot: after this long it is dropped rather than trusted (and its memory
/// returned; at 20k sockets it is a few hundred KiB).
const INDEX_TTL: Duration = Duration::from_secs(10);

pub struct OwnerResolver {
    table: Option<BpfHashMap<MapData, u64, SockOwner>>,
    /// The kernel layout is known, so events carry inodes at all.
    enabled: bool,
    proc: PathBuf,
    index: HashMap<u64, u32>,
    built: Option<Instant>,
    pub resolved: u64,
    pub unresolved: u64,
}

impl OwnerResolver {
    pub fn new(table: Option<BpfHashMap<MapData, u64, SockOwner>>, enabled: bool) -> Self {
        Self {
            table,
            enabled,
            proc: PathBuf::from("/proc"),
            index: HashMap::new(),
            built: None,
            resolved: 0,
            unresolved: 0,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Fills in `rec.owner` if the kernel did not know it and a process holds the socket.
    pub fn resolve(&mut self, rec: &mut TcpRecord) {
        if rec.owner.is_some() || rec.sock_ino == 0 {
            return;
        }
        if self.built.is_some_and(|b| b.elapsed() > INDEX_TTL) {
            self.index = HashMap::new();
            self.built = None;
        }
        let mut pid = self.index.get(&rec.sock_ino).copied();
        if pid.is_none() && self.built.is_none_or(|b| b.elapsed() >= REBUILD_EVERY) {
            self.index = socket_inodes(&self.proc);
            self.built = Some(Instant::now());
            pid = self.index.get(&rec.sock_ino).copied();
        }
        let Some(pid) = pid else {
            self.unresolved += 1;
            return;
        };
        let comm = std::fs::read_to_string(self.proc.join(pid.to_string()).join("comm"))
            .map(|c| c.trim_end().to_owned())
            .unwrap_or_default();
        let owner = Owner {
            pid,
            // The thread is not known from /proc; the process is what attribution needs.
            tid: pid,
            comm,
            cgroup_id: 0,
        };
        if let (Some(table), true) = (&mut self.table, rec.socket != 0) {
            let mut raw = SockOwner {
                cgroup_id: 0,
                tgid: pid,
                tid: pid,
                comm: [0; COMM_LEN],
            };
            let n = owner.comm.len().min(COMM_LEN - 1);
            raw.comm[..n].copy_from_slice(&owner.comm.as_bytes()[..n]);
            if let Err(e) = table.insert(rec.socket, raw, 0) {
                tracing::debug!(error = %e, "writing a resolved owner back failed");
            }
        }
        rec.owner = Some(owner);
        self.resolved += 1;
    }
}

/// socket inode → the process holding it, over every process in `proc`.
pub fn socket_inodes(proc: &Path) -> HashMap<u64, u32> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir(proc) else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue; // exited, or a kernel thread
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(ino) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            out.entry(ino).or_insert(pid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn finds_our_own_socket_by_inode() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsRawFd as _;
        let ino = std::fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd()))
            .unwrap()
            .ino();
        let index = socket_inodes(Path::new("/proc"));
        assert_eq!(index.get(&ino), Some(&std::process::id()));
    }
}
