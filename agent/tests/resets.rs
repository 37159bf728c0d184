//! RSTs, both directions, IPv4 and IPv6, provoked on loopback and checked against the kernel's
//! own counters over the same window.
mod common;

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use common::{Agent, eventually, require_root, tcp_mib};
use socket2::SockRef;

/// A port nobody listens on: bind, learn the port, close.
fn closed_port(ip: IpAddr) -> SocketAddr {
    TcpListener::bind(SocketAddr::new(ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
}

/// connect() to a closed port: the kernel answers the SYN with an RST (sent, with no socket),
/// which the client receives in SYN_SENT.
fn refused(ip: IpAddr) {
    let err = TcpStream::connect(closed_port(ip)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

/// The server closes with SO_LINGER 0 after data: it sends an RST (active reset), and the
/// established client receives it.
fn linger_abort(ip: IpAddr) {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"hello").unwrap();
    let mut buf = [0u8; 5];
    server.read_exact(&mut buf).unwrap();
    SockRef::from(&server)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(server);
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let err = client.read(&mut buf).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
}

#[test]
fn resets_match_kernel_counters_both_directions_v4_and_v6() {
    require_root();
    let agent = Agent::start(&[]);
    let before = agent.metrics();
    let mib0 = tcp_mib();

    const REFUSED: u64 = 4;
    const ABORTS: u64 = 3;
    let ips: [IpAddr; 2] = [Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
    for ip in ips {
        for _ in 0..REFUSED {
            refused(ip);
        }
        for _ in 0..ABORTS {
            linger_abort(ip);
        }
    }
    let provoked = 2 * (REFUSED + ABORTS);

    // The kernel counts synchronously; the agent's counters are per-CPU map reads at scrape
    // time, so they are exact as soon as the tracepoints have run. Poll only as a hang guard.
    let sent = |m: &common::Metrics| m.get("kernelsight_tcp_resets_total{direction=\"sent\"}");
    let received =
        |m: &common::Metrics| m.get("kernelsight_tcp_resets_total{direction=\"received\"}");
    let mib1 = tcp_mib();
    let out_rsts = mib1["OutRsts"] - mib0["OutRsts"];
    let attempt_fails = mib1["AttemptFails"] - mib0["AttemptFails"];
    // The event stream (per-owner series) follows within the ring's drain interval: the kernel
    // batches reader wake-ups.
    let me = std::process::id().to_string();
    let by_owner = |m: &common::Metrics, ev: &str| {
        m.sum(
            "kernelsight_tcp_events_by_owner_total",
            &[("event", ev), ("pid", &me)],
        )
    };
    assert!(eventually(Duration::from_secs(5), || {
        let m = agent.metrics();
        (sent(&m) - sent(&before)) as u64 >= out_rsts
            && (by_owner(&m, "rst_received") - by_owner(&before, "rst_received")) as u64 >= provoked
    }));
    let after = agent.metrics();

    // Sent: exactly the kernel's TcpOutRsts over the window.
    assert_eq!(
        (sent(&after) - sent(&before)) as u64,
        out_rsts,
        "sent RSTs vs kernel OutRsts"
    );
    assert_eq!(
        out_rsts, provoked,
        "the kernel itself saw only our RSTs (quiet loopback)"
    );
    // Received: the kernel has no InRsts counter. Every refused connect fails in SYN_SENT
    // (AttemptFails) and every abort resets one established client.
    assert_eq!(attempt_fails, 2 * REFUSED, "kernel AttemptFails");
    assert_eq!(
        (received(&after) - received(&before)) as u64,
        attempt_fails + 2 * ABORTS,
        "received RSTs"
    );

    // The event stream agrees with the lossless counters, and the received RSTs (softirq
    // context) are attributed to this test process, the sockets' owner.
    assert_eq!(
        (by_owner(&after, "rst_received") - by_owner(&before, "rst_received")) as u64,
        provoked
    );
    // Sent RSTs: the aborts' RSTs come from our sockets; refusals have no socket (no owner).
    assert_eq!(
        (by_owner(&after, "rst_sent") - by_owner(&before, "rst_sent")) as u64,
        2 * ABORTS
    );
    assert_eq!(
        after.get("kernelsight_ebpf_events_lost_total{ring=\"tcp\"}"),
        0.0
    );
}
