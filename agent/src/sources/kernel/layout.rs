//! Turns tracefs record formats into the layout structs the eBPF programs read.
use agent_common::{SockTpLayout, TcpTpLayout};
use anyhow::Result;

use super::tracefs::Format;

const NONE: u16 = TcpTpLayout::NONE;

/// Layout of a `tcp:*` record. `tp` names the tracepoint for error messages.
pub fn tcp(tp: &str, f: &Format) -> Result<TcpTpLayout> {
    let opt = |n: &str| f.offset(n).unwrap_or(NONE);
    let mut l = TcpTpLayout::EMPTY;
    l.skaddr = opt("skaddr");
    l.state = opt("state");
    l.cookie = opt("sock_cookie");
    l.err = opt("err");
    l.reason = opt("reason");
    let saddr = f.field("saddr");
    match saddr {
        // Since 6.10 tcp_send_reset stores whole sockaddrs (sockaddr_in6-sized, 28 bytes).
        Some(s) if s.size == 28 => {
            l.sockaddr = 1;
            l.saddr = s.offset;
            l.daddr = f.require(tp, "daddr")?;
        }
        _ => {
            l.sport = f.require(tp, "sport")?;
            l.dport = f.require(tp, "dport")?;
            // tcp_event_sk_skb (send_reset, retransmit) has no `family` on 5.10: the program
            // then tells IPv4 from IPv6 by the v4-mapped v6 fields.
            l.family = opt("family");
            l.saddr = f.require(tp, "saddr")?;
            l.daddr = f.require(tp, "daddr")?;
            l.saddr_v6 = f.require(tp, "saddr_v6")?;
            l.daddr_v6 = f.require(tp, "daddr_v6")?;
        }
    }
    Ok(l)
}

/// Layout of `sock:inet_sock_set_state` (`skaddr`, `protocol`, `newstate`).
pub fn set_state(tp: &str, f: &Format) -> Result<SockTpLayout> {
    let mut l = SockTpLayout::EMPTY;
    l.sk = f.require(tp, "skaddr")?;
    l.protocol = f.require(tp, "protocol")?;
    l.newstate = f.require(tp, "newstate")?;
    l.oldstate = f.require(tp, "oldstate")?;
    l.sport = f.require(tp, "sport")?;
    Ok(l)
}

/// The record layouts of the kernels we support, as their tracefs printed them (Debian's
/// 5.10.0-46, 6.1.0-57 and 6.12.95 cloud kernels, booted under qemu; this VM's 6.18): each
/// variant the programs must handle, checked against the real format files.
#[cfg(test)]
mod tests {
    use super::*;

    fn format(kernel: &str, tp: &str) -> Format {
        let path = format!(
            "{}/src/sources/kernel/testdata/formats/{kernel}/{tp}.format",
            env!("CARGO_MANIFEST_DIR")
        );
        Format::parse(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    fn tcp_of(kernel: &str, tp: &str) -> TcpTpLayout {
        tcp(tp, &format(kernel, tp)).unwrap_or_else(|e| panic!("{kernel} {tp}: {e:#}"))
    }

    #[test]
    fn every_kernel_layout_is_accepted() {
        for kernel in ["5.10", "6.1", "6.12", "6.18"] {
            for tp in [
                "tcp_send_reset",
                "tcp_receive_reset",
                "tcp_retransmit_skb",
                "tcp_destroy_sock",
            ] {
                let l = tcp_of(kernel, tp);
                assert_ne!(l.skaddr, NONE, "{kernel} {tp}");
            }
            let s = set_state(
                "inet_sock_set_state",
                &format(kernel, "inet_sock_set_state"),
            )
            .unwrap();
            assert!(s.sk != NONE && s.oldstate != NONE && s.newstate != NONE);
            assert!(s.protocol != NONE && s.sport != NONE);
        }
    }

    /// 5.10: tcp_event_sk_skb and tcp_event_sk have no `family`; the program infers it from
    /// the v4-mapped v6 fields.
    #[test]
    fn no_family_on_5_10() {
        for tp in ["tcp_send_reset", "tcp_retransmit_skb", "tcp_receive_reset"] {
            let l = tcp_of("5.10", tp);
            assert_eq!(l.family, NONE, "{tp}");
            assert_eq!(l.sockaddr, 0);
            assert_ne!(l.saddr_v6, NONE);
            assert_ne!(l.saddr, NONE);
        }
        for kernel in ["6.1", "6.12", "6.18"] {
            assert_ne!(
                tcp_of(kernel, "tcp_retransmit_skb").family,
                NONE,
                "{kernel}"
            );
        }
    }

    /// 6.10+: tcp_send_reset records whole sockaddrs (and fires without a socket, too).
    #[test]
    fn send_reset_sockaddrs_from_6_10() {
        for kernel in ["5.10", "6.1"] {
            let l = tcp_of(kernel, "tcp_send_reset");
            assert_eq!(l.sockaddr, 0, "{kernel}");
            assert_ne!(l.sport, NONE);
        }
        for kernel in ["6.12", "6.18"] {
            let l = tcp_of(kernel, "tcp_send_reset");
            assert_eq!(l.sockaddr, 1, "{kernel}");
            assert_eq!((l.saddr, l.daddr), (32, 60), "{kernel}");
            assert_ne!(l.reason, NONE);
        }
    }

    /// 6.13+: tcp_retransmit_skb reports failed attempts with `err` (not counted as
    /// retransmits, as in the kernel's RetransSegs).
    #[test]
    fn retransmit_err_from_6_13() {
        for kernel in ["5.10", "6.1", "6.12"] {
            assert_eq!(tcp_of(kernel, "tcp_retransmit_skb").err, NONE, "{kernel}");
        }
        assert_eq!(tcp_of("6.18", "tcp_retransmit_skb").err, 76);
    }

    #[test]
    fn a_missing_required_field_is_named() {
        let f =
            Format::parse("format:\n\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n")
                .unwrap();
        let e = tcp("tcp:tcp_x", &f).unwrap_err().to_string();
        assert!(e.contains("tcp:tcp_x") && e.contains("`sport`"), "{e}");
    }
}
