//! A span's `process.pid` and `thread.id` → the host tgid and tid the kernel reports.
//!
//! The agent runs with hostPID, so `/proc` lists every process of the node under its host pid,
//! and `/proc/<pid>/status` gives each task's ids in every pid namespace it is visible in
//! (`NStgid`, `NSpid`; the last is the id in the task's own namespace, the one it reports in its
//! spans). The span's origin (container or pod, see [`super::origin`]) selects the processes by
//! cgroup; among them, the one whose innermost tgid is the span's `process.pid` is the sender,
//! and among its threads the one whose innermost tid is the span's `thread.id`.
//!
//! Never a guess: an id two processes of the scope share (two containers of a pod, each with a
//! pid 1) resolves to nothing; a span without an origin only names a process that lives in the
//! agent's own pid namespace (a pod's pid 7 is not the host's pid 7).
//!
//! Cost: per span a hash lookup. A scope's process list is read from /proc at most every
//! `rescan` (and at once when it is older and a span names an id it lacks); a process's thread
//! list is re-read on a miss, at most every `thread_rescan`. Threads that exited keep their
//! mapping for `keep_exited` (their spans arrive after they are gone), unless the namespace-local
//! tid is taken by a new thread. Everything is bounded; a scope whose processes are all gone
//! (a pod deleted, a pid namespace that vanished) is dropped at its next rescan.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{cgroup_path, ns_ids, numeric_entries, scope::Scope};

/// Host ids of a span's thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostIds {
    pub pid: u32,
    pub tid: Option<u32>,
}

/// Why a span's ids were not translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Miss {
    /// No process of the scope lives on this node (a span from elsewhere, a deleted pod).
    NoScope,
    /// The scope has processes, none with this pid.
    NoProcess,
    /// Two processes of the scope have this pid (different pid namespaces).
    Ambiguous,
    /// The process has no thread with this tid.
    NoThread,
    /// A span without an origin names a pid that is a process in a child pid namespace (a
    /// pod's process, seen by its host pid, which the pod itself never reports).
    NotHostPid,
    /// A span without an origin names a pid that is not (or no longer) a process here.
    Gone,
}

impl Miss {
    pub fn as_str(self) -> &'static str {
        match self {
            Miss::NoScope => "no_scope",
            Miss::NoProcess => "no_process",
            Miss::Ambiguous => "ambiguous",
            Miss::NoThread => "no_thread",
            Miss::NotHostPid => "not_host_pid",
            Miss::Gone => "gone",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub rescan: Duration,
    pub thread_rescan: Duration,
    pub keep_exited: Duration,
    pub max_scopes: usize,
    pub max_processes: usize,
    pub max_threads_per_process: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rescan: Duration::from_secs(2),
            thread_rescan: Duration::from_millis(100),
            keep_exited: Duration::from_secs(60),
            max_scopes: 1024,
            max_processes: 4096,
            max_threads_per_process: 4096,
        }
    }
}

struct ScopeEntry {
    scanned: Instant,
    /// ns-local tgid → host tgid (`None`: two processes share it).
    tgids: HashMap<u32, Option<u32>>,
}

struct Threads {
    scanned: Instant,
    /// The process's innermost tgid when read: a host pid reused by another process is seen.
    ns_tgid: u32,
    /// ns-local tid → (host tid, last seen alive).
    tids: HashMap<u32, (u32, Instant)>,
}

pub struct PidTranslator {
    proc: PathBuf,
    limits: Limits,
    /// Length of our own `NStgid`: a process in our pid namespace has one as long.
    own_depth: usize,
    scopes: HashMap<Scope, ScopeEntry>,
    threads: HashMap<u32, Threads>,
}

impl PidTranslator {
    pub fn new(proc: impl Into<PathBuf>, limits: Limits) -> Self {
        let proc = proc.into();
        let own_depth = std::fs::read_to_string(proc.join("self/status"))
            .ok()
            .and_then(|s| ns_ids(&s, "NStgid"))
            .map_or(1, |v| v.len());
        Self {
            proc,
            limits,
            own_depth,
            scopes: HashMap::new(),
            threads: HashMap::new(),
        }
    }

    /// Host ids for a span's (`scope`, `pid`, `tid`); `scope` `None` means the span names no
    /// origin, and its ids are host ids if the process lives in our pid namespace.
    pub fn translate(
        &mut self,
        scope: Option<&Scope>,
        pid: u32,
        tid: Option<u32>,
        now: Instant,
    ) -> Result<HostIds, Miss> {
        let host_pid = match scope {
            None => {
                let ids = self
                    .status(pid, None)
                    .and_then(|s| ns_ids(&s, "NStgid"))
                    .ok_or(Miss::Gone)?;
                if ids.len() != self.own_depth || ids[0] != pid {
                    return Err(Miss::NotHostPid);
                }
                pid
            }
            Some(scope) => self.host_tgid(scope, pid, now)?,
        };
        let Some(tid) = tid else {
            return Ok(HostIds {
                pid: host_pid,
                tid: None,
            });
        };
        if scope.is_none() {
            // Host ids already: the thread only has to be one of this process's.
            return if self.proc.join(format!("{pid}/task/{tid}")).exists() {
                Ok(HostIds {
                    pid,
                    tid: Some(tid),
                })
            } else {
                Err(Miss::NoThread)
            };
        }
        let host_tid = self.host_tid(host_pid, pid, tid, now)?;
        Ok(HostIds {
            pid: host_pid,
            tid: Some(host_tid),
        })
    }

    fn status(&self, pid: u32, tid: Option<u32>) -> Option<String> {
        let path = match tid {
            None => self.proc.join(format!("{pid}/status")),
            Some(t) => self.proc.join(format!("{pid}/task/{t}/status")),
        };
        std::fs::read_to_string(path).ok()
    }

    fn host_tgid(&mut self, scope: &Scope, ns_pid: u32, now: Instant) -> Result<u32, Miss> {
        let stale = self.scopes.get(scope).is_none_or(|e| {
            let age = now.saturating_duration_since(e.scanned);
            age >= self.limits.rescan
                || (!e.tgids.contains_key(&ns_pid) && age >= self.limits.thread_rescan)
        });
        if stale {
            self.rescan_scope(scope, now);
        }
        let entry = self.scopes.get(scope).ok_or(Miss::NoScope)?;
        match entry.tgids.get(&ns_pid) {
            Some(Some(host)) => Ok(*host),
            Some(None) => Err(Miss::Ambiguous),
            None => Err(Miss::NoProcess),
        }
    }

    fn rescan_scope(&mut self, scope: &Scope, now: Instant) {
        let mut tgids: HashMap<u32, Option<u32>> = HashMap::new();
        for pid in numeric_entries(&self.proc) {
            if tgids.len() >= self.limits.max_processes {
                break;
            }
            let Some(path) = cgroup_path(&self.proc, pid) else {
                continue;
            };
            if !scope.matches(&path) {
                continue;
            }
            let Some(ns_tgid) = self
                .status(pid, None)
                .and_then(|s| ns_ids(&s, "NStgid"))
                .and_then(|v| v.last().copied())
            else {
                continue;
            };
            tgids
                .entry(ns_tgid)
                .and_modify(|h| {
                    if *h != Some(pid) {
                        *h = None;
                    }
                })
                .or_insert(Some(pid));
        }
        if tgids.is_empty() {
            // Nothing of it lives here (any more): forget it and what we knew of its threads.
            if let Some(old) = self.scopes.remove(scope) {
                for host in old.tgids.values().flatten() {
                    self.threads.remove(host);
                }
            }
            return;
        }
        if !self.scopes.contains_key(scope) && self.scopes.len() >= self.limits.max_scopes {
            // Bounded: forget the least recently scanned scope.
            if let Some(oldest) = self
                .scopes
                .iter()
                .min_by_key(|(_, e)| e.scanned)
                .map(|(k, _)| k.clone())
            {
                self.scopes.remove(&oldest);
            }
        }
        // Processes of the scope that are gone take their thread maps with them.
        if let Some(old) = self.scopes.get(scope) {
            for host in old.tgids.values().flatten() {
                if !tgids.values().any(|h| h == &Some(*host)) {
                    self.threads.remove(host);
                }
            }
        }
        self.scopes.insert(
            scope.clone(),
            ScopeEntry {
                scanned: now,
                tgids,
            },
        );
    }

    fn host_tid(
        &mut self,
        host_pid: u32,
        ns_pid: u32,
        ns_tid: u32,
        now: Instant,
    ) -> Result<u32, Miss> {
        let fresh = self.threads.get(&host_pid).is_some_and(|t| {
            t.ns_tgid == ns_pid
                && (t.tids.contains_key(&ns_tid)
                    || now.saturating_duration_since(t.scanned) < self.limits.thread_rescan)
        });
        if !fresh {
            self.rescan_threads(host_pid, now);
        }
        let t = self.threads.get(&host_pid).ok_or(Miss::NoProcess)?;
        if t.ns_tgid != ns_pid {
            return Err(Miss::NoProcess);
        }
        t.tids.get(&ns_tid).map(|&(h, _)| h).ok_or(Miss::NoThread)
    }

    fn rescan_threads(&mut self, host_pid: u32, now: Instant) {
        let Some(ns_tgid) = self
            .status(host_pid, None)
            .and_then(|s| ns_ids(&s, "NStgid"))
            .and_then(|v| v.last().copied())
        else {
            self.threads.remove(&host_pid);
            return;
        };
        if !self.threads.contains_key(&host_pid)
            && self.threads.len() >= self.limits.max_processes
            && let Some(oldest) = self
                .threads
                .iter()
                .min_by_key(|(_, t)| t.scanned)
                .map(|(k, _)| *k)
        {
            self.threads.remove(&oldest);
        }
        let keep_exited = self.limits.keep_exited;
        let max = self.limits.max_threads_per_process;
        let entry = self.threads.entry(host_pid).or_insert_with(|| Threads {
            scanned: now,
            ns_tgid,
            tids: HashMap::new(),
        });
        if entry.ns_tgid != ns_tgid {
            // The host pid now belongs to another process: nothing we knew holds.
            entry.tids.clear();
            entry.ns_tgid = ns_tgid;
        }
        entry.scanned = now;
        let task_dir = self.proc.join(host_pid.to_string()).join("task");
        for tid in numeric_entries(&task_dir) {
            let Some(ns_tid) =
                std::fs::read_to_string(task_dir.join(tid.to_string()).join("status"))
                    .ok()
                    .and_then(|s| ns_ids(&s, "NSpid"))
                    .and_then(|v| v.last().copied())
            else {
                continue;
            };
            // A new thread with a recycled ns tid replaces the exited one.
            entry.tids.insert(ns_tid, (tid, now));
        }
        entry
            .tids
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < keep_exited);
        if entry.tids.len() > max {
            let mut by_age: Vec<(u32, Instant)> =
                entry.tids.iter().map(|(k, (_, s))| (*k, *s)).collect();
            by_age.sort_by_key(|(_, s)| *s);
            for (k, _) in by_age.into_iter().take(entry.tids.len() - max) {
                entry.tids.remove(&k);
            }
        }
    }

    /// Scopes and processes held (for tests and metrics).
    pub fn held(&self) -> (usize, usize) {
        (self.scopes.len(), self.threads.len())
    }

    pub fn proc_root(&self) -> &Path {
        &self.proc
    }
}

impl Default for PidTranslator {
    fn default() -> Self {
        Self::new("/proc", Limits::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_spans_name_processes_of_our_namespace() {
        let mut t = PidTranslator::default();
        let me = std::process::id();
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let now = Instant::now();
        assert_eq!(
            t.translate(None, me, Some(tid), now),
            Ok(HostIds {
                pid: me,
                tid: Some(tid)
            })
        );
        // Not a thread of ours, not a process at all.
        assert_eq!(
            t.translate(None, me, Some(u32::MAX - 1), now),
            Err(Miss::NoThread)
        );
        assert_eq!(t.translate(None, u32::MAX - 1, None, now), Err(Miss::Gone));
        // A pod that is not on this node.
        let nowhere = Scope::Pod("00000000-0000-0000-0000-000000000000".into());
        assert_eq!(
            t.translate(Some(&nowhere), 1, Some(1), now),
            Err(Miss::NoScope)
        );
    }
}
