//! Which processes the run-queue probe watches. The kernel filters by tgid (one lookup per
//! scheduler event); this module turns the user's selectors (pids, command names, cgroups) into
//! that set and keeps it current as processes come and go.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use super::Probes;

#[derive(Clone, Debug, Default)]
pub struct Selectors {
    pub pids: Vec<u32>,
    /// Exact `comm` names (as in /proc/PID/comm, at most 15 bytes).
    pub comms: Vec<String>,
    /// cgroup v2 directories (absolute, or relative to /sys/fs/cgroup); processes in their
    /// subtrees are watched.
    pub cgroups: Vec<PathBuf>,
}

impl Selectors {
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty() && self.comms.is_empty() && self.cgroups.is_empty()
    }

    /// The tgids that match now, read from `proc` (normally /proc) and the cgroup fs.
    pub fn resolve(&self, proc: &Path) -> BTreeSet<u32> {
        let mut out: BTreeSet<u32> = self
            .pids
            .iter()
            .copied()
            .filter(|p| proc.join(p.to_string()).exists())
            .collect();
        if !self.comms.is_empty() {
            for pid in list_pids(proc) {
                if let Ok(comm) = std::fs::read_to_string(proc.join(pid.to_string()).join("comm"))
                    && self.comms.iter().any(|c| c == comm.trim_end())
                {
                    out.insert(pid);
                }
            }
        }
        for cg in &self.cgroups {
            let dir = if cg.is_absolute() {
                cg.clone()
            } else {
                Path::new("/sys/fs/cgroup").join(cg)
            };
            collect_cgroup_procs(&dir, &mut out, 0);
        }
        out
    }
}

fn list_pids(proc: &Path) -> impl Iterator<Item = u32> {
    std::fs::read_dir(proc)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
}

fn collect_cgroup_procs(dir: &Path, out: &mut BTreeSet<u32>, depth: usize) {
    // cgroup trees are shallow; the bound only guards against a pathological mount.
    if depth > 32 {
        return;
    }
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_cgroup_procs(&e.path(), out, depth + 1);
        }
    }
}

/// Brings the kernel's watch set to what the selectors match, every `every`.
pub async fn keep_current(
    probes: Arc<Mutex<Probes>>,
    sel: Selectors,
    every: Duration,
    gauge: prometheus::IntGauge,
) {
    let mut tick = tokio::time::interval(every);
    // A late reconcile is as good as an on-time one; don't burst to catch up.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let wanted = {
            let sel = sel.clone();
            tokio::task::spawn_blocking(move || sel.resolve(Path::new("/proc")))
                .await
                .unwrap_or_default()
        };
        let mut p = probes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current: BTreeSet<u32> = p.watched().into_iter().collect();
        for &pid in wanted.difference(&current) {
            match p.watch(pid) {
                Ok(()) => tracing::debug!(pid, "watching"),
                Err(e) => tracing::warn!(pid, error = %e, "cannot watch"),
            }
        }
        for &pid in current.difference(&wanted) {
            if let Err(e) = p.unwatch(pid) {
                tracing::warn!(pid, error = %e, "cannot unwatch");
            }
        }
        gauge.set(wanted.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_pids_and_comms_from_proc() {
        let me = std::process::id();
        let comm = std::fs::read_to_string(format!("/proc/{me}/comm"))
            .unwrap()
            .trim_end()
            .to_owned();
        let by_pid = Selectors {
            pids: vec![me, u32::MAX - 1],
            ..Default::default()
        };
        assert_eq!(
            by_pid.resolve(Path::new("/proc")),
            BTreeSet::from([me]),
            "dead pids are dropped"
        );
        let by_comm = Selectors {
            comms: vec![comm],
            ..Default::default()
        };
        assert!(by_comm.resolve(Path::new("/proc")).contains(&me));
    }

    #[test]
    fn resolves_our_own_cgroup() {
        let me = std::process::id();
        let line = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = line
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap()
            .trim_start_matches('/')
            .to_owned();
        let sel = Selectors {
            cgroups: vec![PathBuf::from(path)],
            ..Default::default()
        };
        assert!(sel.resolve(Path::new("/proc")).contains(&me));
    }
}
