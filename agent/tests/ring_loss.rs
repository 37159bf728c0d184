//! A deliberately tiny ring under a flood: what does not fit is counted, never hidden, and the
//! books balance exactly (delivered + lost = attempted).
mod common;

use std::time::Duration;

use agent::{
    shared::event::KernelEvent,
    sources::kernel::{ProbeConfig, Probes},
};
use agent_common::Counter;
use common::{drain, require_root};

#[test]
fn tiny_runq_ring_counts_what_it_loses() {
    require_root();
    let cfg = ProbeConfig {
        runq_ring_bytes: 4096,
        runq_watch_all: true,
        runq_event_threshold_ns: 0,
        ..ProbeConfig::default()
    };
    let mut probes = Probes::load(&cfg).unwrap();
    let mut ring = probes.take_runq_ring().unwrap();

    // Nobody reads while every context switch on the machine reports an event.
    let flood: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                let deadline = std::time::Instant::now() + Duration::from_millis(500);
                while std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_micros(50));
                }
            })
        })
        .collect();
    for t in flood {
        t.join().unwrap();
    }
    // Stop reporting, let in-flight waits finish, then count.
    probes.set_runq_config(false, 0).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let attempted = probes.counter(Counter::RunqEvents).unwrap();
    let lost = probes.counter(Counter::RunqEventsLost).unwrap();
    let delivered = drain(&mut ring, KernelEvent::decode_runq).len() as u64;

    assert!(
        lost > 0,
        "a 4 KiB ring cannot hold a 500 ms flood ({attempted} attempted)"
    );
    assert!(delivered > 0);
    assert_eq!(
        delivered + lost,
        attempted,
        "delivered {delivered} + lost {lost} vs attempted {attempted}"
    );
}
