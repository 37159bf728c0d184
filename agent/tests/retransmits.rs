//! Retransmits: nftables drops a connection's segments on the *input* hook of loopback for a
//! bounded moment (an output-hook drop is a local send error TCP never retransmits), inside a
//! network namespace of the test's own so the kernel's TcpRetransSegs counts only this traffic.
mod common;

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use agent::{
    shared::event::KernelEvent,
    sources::kernel::{ProbeConfig, Probes},
};
use agent_common::TcpEventKind;
use common::{Netns, drain, require_root, tcp_mib};

#[test]
fn retransmits_equal_the_kernels_count_and_name_the_owner() {
    require_root();
    let mut probes = Probes::load(&ProbeConfig::default()).unwrap();
    let mut ring = probes.take_tcp_ring().unwrap();
    let netns = Netns::new("rtx");

    const MESSAGES: usize = 20;
    let ns = netns.name.clone();
    let worker = std::thread::spawn(move || {
        let netns = Netns { name: ns };
        netns.enter();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server_addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(server_addr).unwrap();
        client.set_nodelay(true).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let client_addr = client.local_addr().unwrap();
        let before = tcp_mib();

        netns.nft(&format!(
            "add table inet ks_rtx\n\
             add chain inet ks_rtx input {{ type filter hook input priority 0; policy accept; }}\n\
             add rule inet ks_rtx input tcp dport {} drop\n",
            server_addr.port()
        ));
        for i in 0..MESSAGES {
            client.write_all(&[i as u8; 100]).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(800));
        netns.nft("delete table inet ks_rtx\n");

        // Recovery: the next retransmission gets through and everything arrives.
        server
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut got = vec![0u8; MESSAGES * 100];
        server.read_exact(&mut got).unwrap();
        let after = tcp_mib();
        std::mem::forget(netns); // the outer handle deletes it
        (
            client_addr,
            server_addr,
            after["RetransSegs"] - before["RetransSegs"],
        )
    });
    let (client_addr, server_addr, kernel_retrans) = worker.join().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let events = drain(&mut ring, KernelEvent::decode_tcp);

    let ours: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            KernelEvent::Tcp(r)
                if r.kind == TcpEventKind::Retransmit
                    && r.local == client_addr
                    && r.remote == server_addr =>
            {
                Some(r)
            }
            _ => None,
        })
        .collect();
    assert!(kernel_retrans > 0, "the drop window must cause retransmits");
    let segs: u64 = ours.iter().map(|r| u64::from(r.segs)).sum();
    assert_eq!(
        segs, kernel_retrans,
        "retransmitted segments on this 4-tuple vs the kernel's TcpRetransSegs delta"
    );

    // Retransmits fire from the RTO timer in softirq context: `current` is whatever ran there,
    // yet every event names this process, the socket's owner.
    let me = std::process::id();
    for r in &ours {
        let owner = r.owner.as_ref().expect("owner known");
        assert_eq!(owner.pid, me, "{r:?}");
        assert!(
            r.state == 1,
            "retransmits of an established connection: {r:?}"
        );
    }
    let foreign_current = ours.iter().filter(|r| r.current_pid != me).count();
    eprintln!(
        "{} retransmit events = kernel {kernel_retrans}; {foreign_current} fired while another task was current",
        ours.len()
    );
    assert_eq!(
        probes
            .counter(agent_common::Counter::TcpEventsLost)
            .unwrap(),
        0
    );
}
