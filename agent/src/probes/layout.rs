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
