//! Who held the CPU while a watched process waited for one: the kernel's cumulative
//! (victim, culprit) CPU time turned into per-interval deltas ([`CulpritDeltas`]), kept for a
//! bounded window per victim ([`CulpritWindow`]), and ranked over any stretch of it.
//!
//! The kernel charges a culprit with the time it ran on a CPU while at least one thread of the
//! victim was queued on that CPU (see agent-ebpf's `runq.rs`). A culprit's share is its part of
//! all the time charged for that victim in the stretch: with one waiting thread, the part of
//! that thread's wait the culprit was on the CPU.
use std::collections::{HashMap, VecDeque};

use serde::Serialize;

/// Cumulative CPU time of `culprit` while `victim` waited, as the kernel keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CulpritTotal {
    pub victim: u32,
    pub culprit: u32,
    pub ns: u64,
    /// The culprit's cgroup v2 id and the comm of its thread that ran, as the kernel last read
    /// them (at most 10 ms of charging old).
    pub cgroup_id: u64,
    pub comm: String,
}

/// Who a culprit is, as the agent resolved it (from /proc while it lives, else what the
/// kernel recorded).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CulpritId {
    /// Host tgid.
    pub pid: u32,
    pub comm: String,
    /// The cgroup v2 path (`/noisy`) where known, else `id:<cgroup id>`.
    pub cgroup: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pod_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub pod_namespace: String,
}

/// CPU time one culprit ran while the victim waited, in one interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CulpritSample {
    pub victim: u32,
    pub id: CulpritId,
    pub ns: u64,
    /// From the kernel, for resolving `id.cgroup` when /proc no longer knows the pid.
    pub cgroup_id: u64,
}

/// One read of the kernel's table: what each culprit added since the previous read, for the
/// interval ending at `t_unix_ns`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CulpritStep {
    pub t_unix_ns: u64,
    pub interval_ns: u64,
    pub samples: Vec<CulpritSample>,
    /// The processes watched at this read, waiting or not: a victim that never waited is
    /// still a series to judge (its calm is a measurement).
    pub watched: Vec<u32>,
}

/// Turns cumulative totals into the change since the last call. A total below what was seen
/// before adds nothing until it passes that mark: the kernel reads are not atomic, and a pair
/// moving from its per-CPU slot into the table between two reads is missing from one read,
/// then back. (A pair the kernel's LRU table really dropped and re-added is undercounted by
/// its old total; with the slots in front of it, the table holds only the rare spills.) Pairs
/// missing from the reads for [`FORGET_AFTER`] steps are forgotten.
#[derive(Default)]
pub struct CulpritDeltas {
    /// (victim, culprit) → (highest total seen, step it was last present).
    prev: HashMap<(u32, u32), (u64, u64)>,
    steps: u64,
    last_t: Option<u64>,
}

/// Steps a pair may be missing from the kernel's reads before its mark is forgotten.
pub const FORGET_AFTER: u64 = 60;

impl CulpritDeltas {
    pub fn step(&mut self, now: Vec<CulpritTotal>, t_unix_ns: u64) -> CulpritStep {
        self.steps += 1;
        let mut samples = Vec::new();
        for t in now {
            let key = (t.victim, t.culprit);
            let e = self.prev.entry(key).or_insert((0, self.steps));
            let d = t.ns.saturating_sub(e.0);
            *e = (e.0.max(t.ns), self.steps);
            if d > 0 {
                samples.push(CulpritSample {
                    victim: t.victim,
                    id: CulpritId {
                        pid: t.culprit,
                        comm: t.comm,
                        cgroup: format!("id:{}", t.cgroup_id),
                        ..CulpritId::default()
                    },
                    ns: d,
                    cgroup_id: t.cgroup_id,
                });
            }
        }
        let steps = self.steps;
        self.prev
            .retain(|_, (_, seen)| steps.saturating_sub(*seen) < FORGET_AFTER);
        let interval_ns = self.last_t.map_or(0, |l| t_unix_ns.saturating_sub(l));
        self.last_t = Some(t_unix_ns);
        CulpritStep {
            t_unix_ns,
            interval_ns,
            samples,
            watched: Vec::new(),
        }
    }
}

/// A culprit's part of a victim's waiting over a stretch of time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CulpritShare {
    #[serde(flatten)]
    pub id: CulpritId,
    /// CPU time it ran while the victim waited.
    pub ns: u64,
    /// `ns` over all the time charged for the victim in the stretch (0..1).
    pub share: f64,
    /// The victim's own other threads: they held the CPU too, but they are not who the
    /// victim waits *behind* in the sense an operator asks about, so they are never the top
    /// culprit; they are shown after the others, under their own name.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub own_threads: bool,
}

/// Bounds of a [`CulpritWindow`].
#[derive(Clone, Copy, Debug)]
pub struct WindowBounds {
    /// Steps older than this are dropped.
    pub retention_ns: u64,
    /// Victims tracked at once (others are not, until one ages out).
    pub max_victims: usize,
    /// Culprits kept per victim per step: the largest; the rest are summed as "other".
    pub per_step: usize,
}

impl Default for WindowBounds {
    fn default() -> Self {
        Self {
            retention_ns: 600_000_000_000,
            max_victims: 256,
            per_step: 16,
        }
    }
}

/// One victim's step: its largest culprits and the rest summed.
struct Kept {
    t_unix_ns: u64,
    top: Vec<(CulpritId, u64)>,
    other_ns: u64,
}

/// Per victim, the last steps of culprit time (bounded: victims, steps by age, culprits per
/// step).
pub struct CulpritWindow {
    bounds: WindowBounds,
    victims: HashMap<u32, VecDeque<Kept>>,
}

/// The name given to the culprits summed beyond the kept ones.
pub const OTHER: &str = "other";

impl CulpritWindow {
    pub fn new(bounds: WindowBounds) -> Self {
        Self {
            bounds,
            victims: HashMap::new(),
        }
    }

    pub fn push(&mut self, step: &CulpritStep) {
        let mut by_victim: HashMap<u32, Vec<(CulpritId, u64)>> = HashMap::new();
        for s in &step.samples {
            by_victim
                .entry(s.victim)
                .or_default()
                .push((s.id.clone(), s.ns));
        }
        for (victim, mut all) in by_victim {
            if !self.victims.contains_key(&victim) && self.victims.len() >= self.bounds.max_victims
            {
                continue;
            }
            all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.pid.cmp(&b.0.pid)));
            let other_ns = all.iter().skip(self.bounds.per_step).map(|x| x.1).sum();
            all.truncate(self.bounds.per_step);
            self.victims.entry(victim).or_default().push_back(Kept {
                t_unix_ns: step.t_unix_ns,
                top: all,
                other_ns,
            });
        }
        self.prune(step.t_unix_ns);
    }

    fn prune(&mut self, now_unix_ns: u64) {
        let horizon = now_unix_ns.saturating_sub(self.bounds.retention_ns);
        for q in self.victims.values_mut() {
            while q.front().is_some_and(|k| k.t_unix_ns < horizon) {
                q.pop_front();
            }
        }
        self.victims.retain(|_, q| !q.is_empty());
    }

    /// The `n` culprits that ran longest while `victim` waited, in steps ending within
    /// `[from, to]`, with their shares; then the victim's own threads (`own_threads`) when
    /// they ran; the rest (ranked lower, or not kept) as one `other` entry (pid 0) at the end
    /// when non-zero. Shares are of all the time charged, own threads included.
    pub fn top(
        &self,
        victim: u32,
        from_unix_ns: u64,
        to_unix_ns: u64,
        n: usize,
    ) -> Vec<CulpritShare> {
        let Some(q) = self.victims.get(&victim) else {
            return Vec::new();
        };
        let mut sum: HashMap<u32, (CulpritId, u64)> = HashMap::new();
        let mut other = 0u64;
        for k in q
            .iter()
            .filter(|k| k.t_unix_ns >= from_unix_ns && k.t_unix_ns <= to_unix_ns)
        {
            other += k.other_ns;
            for (id, ns) in &k.top {
                let e = sum.entry(id.pid).or_insert_with(|| (id.clone(), 0));
                // The newest name wins (a process may exec or be resolved better later).
                e.0 = id.clone();
                e.1 += ns;
            }
        }
        let total: u64 = other + sum.values().map(|x| x.1).sum::<u64>();
        if total == 0 {
            return Vec::new();
        }
        // A process whose threads outnumber the CPUs queues behind itself; that is worth
        // saying, but apart: the question is who *else* held the CPU.
        let own = sum.remove(&victim);
        let mut all: Vec<(CulpritId, u64)> = sum.into_values().collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.pid.cmp(&b.0.pid)));
        other += all.iter().skip(n).map(|x| x.1).sum::<u64>();
        all.truncate(n);
        let share = |ns: u64| ns as f64 / total as f64;
        let mut out: Vec<CulpritShare> = all
            .into_iter()
            .map(|(id, ns)| CulpritShare {
                id,
                ns,
                share: share(ns),
                own_threads: false,
            })
            .collect();
        if let Some((id, ns)) = own {
            out.push(CulpritShare {
                id,
                ns,
                share: share(ns),
                own_threads: true,
            });
        }
        if other > 0 {
            out.push(CulpritShare {
                id: CulpritId {
                    comm: OTHER.into(),
                    ..CulpritId::default()
                },
                ns: other,
                share: share(other),
                own_threads: false,
            });
        }
        out
    }

    pub fn victims(&self) -> usize {
        self.victims.len()
    }
}

/// "stress-ng (pid 812, cgroup /noisy) 71%, kworker/0:1 (pid 31, cgroup /) 9%, other 2%".
pub fn describe(top: &[CulpritShare]) -> String {
    top.iter()
        .map(|c| {
            let pct = c.share * 100.0;
            if c.id.pid == 0 {
                return format!("{} {pct:.0}%", c.id.comm);
            }
            if c.own_threads {
                return format!("its own threads {pct:.0}%");
            }
            let pod = if c.id.pod_name.is_empty() {
                String::new()
            } else {
                format!(", pod {}/{}", c.id.pod_namespace, c.id.pod_name)
            };
            format!(
                "{} (pid {}, cgroup {}{pod}) {pct:.0}%",
                c.id.comm, c.id.pid, c.id.cgroup
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn total(victim: u32, culprit: u32, ns: u64, cgroup_id: u64, comm: &str) -> CulpritTotal {
        CulpritTotal {
            victim,
            culprit,
            ns,
            cgroup_id,
            comm: comm.into(),
        }
    }

    /// Two hogs, one in its own cgroup and one not, share the victim's waiting; deltas, not
    /// totals, are what the window ranks, and the cgroup of each stays its own.
    #[test]
    fn two_hogs_one_in_a_cgroup_rank_by_time_and_keep_their_cgroups() {
        let mut d = CulpritDeltas::default();
        let mut w = CulpritWindow::new(WindowBounds::default());
        // Cumulative totals at t = 1..=4 s: the caged hog (pid 20, cgroup 7) runs 600 ms/s
        // while the victim waits, the other (pid 30, root cgroup 1) 200 ms/s.
        for s in 1..=4u64 {
            let step = d.step(
                vec![
                    total(10, 20, 600_000_000 * s, 7, "hog-caged"),
                    total(10, 30, 200_000_000 * s, 1, "hog-free"),
                ],
                s * S,
            );
            assert_eq!(step.samples.len(), 2);
            assert!(
                step.samples
                    .iter()
                    .all(|x| x.ns == 600_000_000 || x.ns == 200_000_000)
            );
            w.push(&step);
        }
        let top = w.top(10, 2 * S, 4 * S, 5);
        assert_eq!(top.len(), 2, "{top:?}");
        assert_eq!(top[0].id.pid, 20);
        assert_eq!(top[0].id.cgroup, "id:7");
        assert_eq!(top[0].ns, 3 * 600_000_000);
        assert!((top[0].share - 0.75).abs() < 1e-9);
        assert_eq!(top[1].id.pid, 30);
        assert_eq!(top[1].id.cgroup, "id:1");
        assert!((top[1].share - 0.25).abs() < 1e-9);
        // Another victim saw nothing.
        assert!(w.top(11, 0, 10 * S, 5).is_empty());
        assert_eq!(
            describe(&top),
            "hog-caged (pid 20, cgroup id:7) 75%, hog-free (pid 30, cgroup id:1) 25%"
        );
    }

    /// A hog that stops halfway stops being charged: over the first half it leads, over the
    /// second half only the other remains, and over the whole it has its half.
    #[test]
    fn a_hog_that_stops_halfway_is_charged_only_while_it_ran() {
        let mut d = CulpritDeltas::default();
        let mut w = CulpritWindow::new(WindowBounds::default());
        let (mut a, mut b) = (0u64, 0u64);
        for s in 1..=8u64 {
            b += 300_000_000;
            let mut now = vec![total(10, 40, b, 1, "steady")];
            if s <= 4 {
                a += 500_000_000;
            }
            // The stopped hog's pair stays in the kernel's table unchanged until the LRU
            // drops it (here at s = 7): no delta either way.
            if s < 7 {
                now.push(total(10, 50, a, 9, "quitter"));
            }
            w.push(&d.step(now, s * S));
        }
        let first = w.top(10, S, 4 * S, 5);
        assert_eq!(first[0].id.pid, 50, "{first:?}");
        assert!((first[0].share - 0.625).abs() < 1e-9);
        let second = w.top(10, 5 * S, 8 * S, 5);
        assert_eq!(second.len(), 1, "{second:?}");
        assert_eq!(second[0].id.pid, 40);
        assert!((second[0].share - 1.0).abs() < 1e-9);
        let whole = w.top(10, S, 8 * S, 5);
        assert_eq!(whole[0].id.pid, 40);
        assert_eq!(whole[0].ns, 8 * 300_000_000);
        assert_eq!(whole[1].ns, 4 * 500_000_000);
    }

    /// A read that missed part of a pair's time (moved between the kernel's slot and table
    /// during the read) adds nothing, and the next full read adds only what is new: never a
    /// negative, wrapped or doubled delta.
    #[test]
    fn a_short_read_neither_goes_negative_nor_counts_twice() {
        let mut d = CulpritDeltas::default();
        d.step(vec![total(1, 2, 5_000, 0, "x")], S);
        let s = d.step(vec![total(1, 2, 700, 0, "x")], 2 * S);
        assert!(s.samples.is_empty(), "{s:?}");
        assert_eq!(s.interval_ns, S);
        // Missing altogether from one read, then back.
        assert!(d.step(vec![], 3 * S).samples.is_empty());
        let s = d.step(vec![total(1, 2, 5_300, 0, "x")], 4 * S);
        assert_eq!(s.samples[0].ns, 300);
    }

    /// Beyond `n` (and beyond what a step keeps) culprits are summed as "other"; victims and
    /// age are bounded.
    #[test]
    fn bounded_top_with_other_and_bounded_victims_and_age() {
        let bounds = WindowBounds {
            retention_ns: 10 * S,
            max_victims: 2,
            per_step: 3,
        };
        let mut w = CulpritWindow::new(bounds);
        let samples = (1..=5u32)
            .map(|p| CulpritSample {
                victim: 1,
                id: CulpritId {
                    pid: p,
                    comm: format!("c{p}"),
                    cgroup: "/".into(),
                    ..Default::default()
                },
                ns: u64::from(p) * 100,
                cgroup_id: 1,
            })
            .collect();
        w.push(&CulpritStep {
            t_unix_ns: S,
            interval_ns: S,
            samples,
            ..CulpritStep::default()
        });
        let top = w.top(1, 0, S, 2);
        assert_eq!(
            top.iter().map(|c| c.id.pid).collect::<Vec<_>>(),
            vec![5, 4, 0]
        );
        assert_eq!(top[2].id.comm, OTHER);
        assert_eq!(top[2].ns, 300 + 200 + 100);
        for v in 2..=4 {
            w.push(&CulpritStep {
                t_unix_ns: 2 * S,
                interval_ns: S,
                samples: vec![CulpritSample {
                    victim: v,
                    id: CulpritId::default(),
                    ns: 1,
                    cgroup_id: 0,
                }],
                ..CulpritStep::default()
            });
        }
        assert_eq!(w.victims(), 2);
        w.push(&CulpritStep {
            t_unix_ns: 30 * S,
            interval_ns: S,
            samples: vec![],
            ..CulpritStep::default()
        });
        assert_eq!(w.victims(), 0);
    }

    /// The victim's own threads ran more than any one hog (a busy multi-threaded server on
    /// two CPUs): the top culprit is still the hog, and the own threads come after the
    /// others with their true share. (CI's noisy-neighbour run named the server itself.)
    #[test]
    fn own_threads_are_shown_apart_and_never_the_top_culprit() {
        let mut d = CulpritDeltas::default();
        let mut w = CulpritWindow::new(WindowBounds::default());
        for s in 1..=3u64 {
            w.push(&d.step(
                vec![
                    total(10, 10, 190_000_000 * s, 1, "game-server"),
                    total(10, 21, 180_000_000 * s, 7, "hog"),
                    total(10, 22, 140_000_000 * s, 7, "hog"),
                ],
                s * S,
            ));
        }
        let top = w.top(10, 0, 3 * S, 5);
        let order: Vec<(u32, bool)> = top.iter().map(|c| (c.id.pid, c.own_threads)).collect();
        assert_eq!(order, vec![(21, false), (22, false), (10, true)], "{top:?}");
        assert!((top[2].share - 190.0 / 510.0).abs() < 1e-9);
        assert_eq!(
            describe(&top),
            "hog (pid 21, cgroup id:7) 35%, hog (pid 22, cgroup id:7) 27%, its own threads 37%"
        );
    }
}
