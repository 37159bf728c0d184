//! Clock alignment against a real kernel event: an RST provoked on loopback, its
//! `bpf_ktime_get_ns` timestamp converted to Unix time, must fall between wall-clock readings
//! taken just before and just after the close() that sent it.
mod common;
mod correlation_support;

use std::{
    net::TcpListener,
    time::{Duration, Instant},
};

use agent::{
    shared::{
        clock::Clock,
        event::{KernelEvent, TcpRecord},
    },
    sources::kernel::{ProbeConfig, Probes},
};
use agent_common::TcpEventKind;
use common::{drain, require_root};
use correlation_support::aborted_connection;

#[test]
fn a_real_rst_converts_to_a_unix_time_between_readings_taken_around_it() {
    require_root();
    let mut probes = Probes::load(&ProbeConfig::default()).unwrap();
    let mut ring = probes.take_tcp_ring().unwrap();
    let clock = Clock::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut checked = 0;
    let mut worst_margin = u64::MAX;
    // Several times: each RST is an independent check of the conversion.
    for _ in 0..5 {
        let (srv, cli, before, after) = aborted_connection(&listener);
        let deadline = Instant::now() + Duration::from_secs(5);
        let rec: TcpRecord = loop {
            let found = drain(&mut ring, KernelEvent::decode_tcp)
                .into_iter()
                .find_map(|e| match e {
                    KernelEvent::Tcp(t)
                        if t.kind == TcpEventKind::RstSent && t.local == srv && t.remote == cli =>
                    {
                        Some(t)
                    }
                    _ => None,
                });
            if let Some(t) = found {
                break t;
            }
            assert!(
                Instant::now() < deadline,
                "the RST sent on {srv} → {cli} never reached the ring"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let unix = clock.to_unix_ns(rec.ts_ns);
        let u = clock.offset().uncertainty_ns;
        assert!(
            before <= unix + u && unix <= after + u,
            "converted RST time {unix} outside [{before}, {after}] (±{u} ns); offset {:?}",
            clock.offset()
        );
        worst_margin = worst_margin.min((unix + u - before).min(after + u - unix));
        checked += 1;
    }
    eprintln!(
        "clock: {checked} RSTs inside their close() windows; offset uncertainty ±{} ns; tightest margin {} ns",
        clock.offset().uncertainty_ns,
        worst_margin
    );
}
