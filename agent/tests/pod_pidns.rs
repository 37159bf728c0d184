//! Pid-namespace translation against real processes run like containers: two "pods" whose
//! processes are both pid 1 with threads 2, 3, 4 in their own namespaces; the span's ids plus
//! its origin must name each pod's own host thread, never the other's.
mod common;
mod pod_support;

use std::time::{Duration, Instant};

use agent::transforms::pod::{
    pidns::{HostIds, Limits, Miss, PidTranslator},
    scope::Scope,
};
use common::require_root;
use pod_support::{CgroupParent, PodProc, pod_ids};

fn translator() -> PidTranslator {
    PidTranslator::new(
        "/proc",
        Limits {
            // Rescan at every query, so the test sees changes at once.
            rescan: Duration::ZERO,
            thread_rescan: Duration::ZERO,
            ..Limits::default()
        },
    )
}

#[test]
fn colliding_namespace_ids_map_to_each_pods_own_threads() {
    require_root();
    let parent = CgroupParent::new("ks-test-pidns");
    let (uid_a, cid_a) = pod_ids(1);
    let (uid_b, cid_b) = pod_ids(2);
    let a = PodProc::start(&parent.container(&uid_a, &cid_a), 3, None);
    let b = PodProc::start(&parent.container(&uid_b, &cid_b), 3, None);
    // The premise: both pods report the same ids in their spans.
    assert_eq!(a.ns_pid, 1);
    assert_eq!((a.ns_pid, &a.ns_tids), (b.ns_pid, &b.ns_tids));
    assert_ne!(a.host_pid, b.host_pid);

    let mut t = translator();
    let now = Instant::now();
    for (p, scope) in [
        (&a, Scope::Pod(uid_a.clone())),
        (&b, Scope::Pod(uid_b.clone())),
        (&a, Scope::Container(cid_a.clone())),
        (&b, Scope::Container(cid_b.clone())),
    ] {
        for (i, &ns_tid) in p.ns_tids.iter().enumerate() {
            let want = p.host_tid(i).expect("host tid by thread name");
            assert_eq!(
                t.translate(Some(&scope), p.ns_pid, Some(ns_tid), now),
                Ok(HostIds {
                    pid: p.host_pid,
                    tid: Some(want)
                }),
                "{scope:?} tid {ns_tid}"
            );
        }
    }
    // Read as host ids, the same numbers name the host's pid 1, which has no thread 2.
    assert_eq!(
        t.translate(None, a.ns_pid, Some(a.ns_tids[0]), now),
        Err(Miss::NoThread)
    );
    // A pod's host pid, named without an origin, is not a process of our namespace: a span
    // can only name it from inside the pod, in the pod's numbers.
    assert_eq!(
        t.translate(None, a.host_pid, None, now),
        Err(Miss::NotHostPid)
    );
    // A pid the pod does not have.
    assert_eq!(
        t.translate(Some(&Scope::Pod(uid_a.clone())), 4242, Some(1), now),
        Err(Miss::NoProcess)
    );
}

#[test]
fn two_containers_of_one_pod_with_their_own_pid_1_are_ambiguous_by_pod() {
    require_root();
    let parent = CgroupParent::new("ks-test-pidns-amb");
    let (uid, cid_1) = pod_ids(3);
    let (_, cid_2) = pod_ids(4);
    let one = PodProc::start(&parent.container(&uid, &cid_1), 1, None);
    let two = PodProc::start(&parent.container(&uid, &cid_2), 1, None);
    let mut t = translator();
    let now = Instant::now();
    // By pod alone the span could be either container's: no join.
    assert_eq!(
        t.translate(Some(&Scope::Pod(uid.clone())), 1, Some(one.ns_tids[0]), now),
        Err(Miss::Ambiguous)
    );
    // With the container (container.id, or the API's container name → id) it is certain.
    let by_container = t
        .translate(
            Some(&Scope::Container(cid_2.clone())),
            1,
            Some(two.ns_tids[0]),
            now,
        )
        .unwrap();
    assert_eq!(by_container.tid, two.host_tid(0));
    assert_ne!(by_container.tid, one.host_tid(0));
}

#[test]
fn threads_that_come_and_go_and_a_namespace_that_vanishes() {
    require_root();
    let parent = CgroupParent::new("ks-test-pidns-life");
    let (uid, cid) = pod_ids(5);
    let (uid_b, cid_b) = pod_ids(6);
    let mut p = PodProc::start(&parent.container(&uid, &cid), 1, None);
    let b = PodProc::start(&parent.container(&uid_b, &cid_b), 1, None);
    let scope = Scope::Pod(uid.clone());
    // Default limits: the scope is read once and then served from the cache.
    let mut t = PidTranslator::new("/proc", Limits::default());
    let now = Instant::now();
    let first = t
        .translate(Some(&scope), 1, Some(p.ns_tids[0]), now)
        .unwrap();
    assert_eq!(first.tid, p.host_tid(0));
    // A thread started after the cache was filled is found on the miss.
    let ns_new = p.start_thread(1);
    let later = now + Duration::from_millis(150);
    assert_eq!(
        t.translate(Some(&scope), 1, Some(ns_new), later)
            .unwrap()
            .tid,
        p.host_tid(1)
    );
    // A thread that ended keeps its mapping: its spans arrive after it is gone.
    p.stop_thread(0);
    assert_eq!(p.host_tid(0), None);
    assert_eq!(
        t.translate(Some(&scope), 1, Some(p.ns_tids[0]), later)
            .unwrap()
            .tid,
        first.tid
    );
    // The namespace vanishes (its init killed): the pod's ids resolve to nothing once the
    // cache is due, and nothing else is disturbed.
    p.kill();
    let due = later + Limits::default().rescan;
    assert_eq!(
        t.translate(Some(&scope), 1, Some(p.ns_tids[0]), due),
        Err(Miss::NoScope)
    );
    assert_eq!(
        t.translate(Some(&Scope::Pod(uid_b)), 1, Some(b.ns_tids[0]), due)
            .unwrap()
            .tid,
        b.host_tid(0)
    );
    assert_eq!(t.held().0, 1, "the vanished pod's scope is forgotten");
}
