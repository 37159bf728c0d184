//! Connection identity: the 4-tuple, normalised so that the kernel's view and a span's view of
//! one connection compare equal.
//!
//! Normalisation: IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a dual-stack socket shows
//! for an IPv4 peer) become plain IPv4; an IPv6 zone (`fe80::1%eth0`) and URL brackets are
//! dropped. A connection is keyed by its two endpoints in a canonical order, so either side's
//! view (local/peer swapped) finds it.
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
};

/// One side of a TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}

impl Endpoint {
    pub fn new(ip: IpAddr, port: u16) -> Self {
        Self {
            ip: normalise_ip(ip),
            port,
        }
    }

    /// Parses a span's `network.*.address` (string) and `network.*.port`.
    pub fn parse(address: &str, port: u16) -> Option<Self> {
        let a = address.trim();
        let a = a
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(a);
        let a = a.split('%').next().unwrap_or(a);
        Some(Self::new(a.parse().ok()?, port))
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(s: SocketAddr) -> Self {
        Self::new(s.ip(), s.port())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}

pub fn normalise_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A connection, independent of which side looks at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnKey {
    pub a: Endpoint,
    pub b: Endpoint,
}

impl ConnKey {
    pub fn new(x: Endpoint, y: Endpoint) -> Self {
        if x <= y {
            Self { a: x, b: y }
        } else {
            Self { a: y, b: x }
        }
    }
}

/// The connection seen from one side: `local` is the side whose socket (or span) this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Oriented {
    pub local: Endpoint,
    pub peer: Endpoint,
}

impl Oriented {
    pub fn key(&self) -> ConnKey {
        ConnKey::new(self.local, self.peer)
    }
}

/// Which ports the kernel hands out as ephemeral (client-side) ports: a connection's
/// *service* endpoint is the side whose port is not ephemeral. Grouping faults by service
/// endpoint puts "many clients reset by :6379" and "we were reset by :6379" under one key.
#[derive(Clone, Debug)]
pub struct EphemeralPorts(pub RangeInclusive<u16>);

impl EphemeralPorts {
    /// Reads `net.ipv4.ip_local_port_range` (which also governs IPv6); the kernel's default
    /// (32768–60999) if it cannot.
    pub fn from_sysctl() -> Self {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().map(|p| p.parse::<u16>());
                Some(Self(it.next()?.ok()?..=it.next()?.ok()?))
            })
            .unwrap_or_default()
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.contains(&port)
    }

    /// The service side of a connection and whether it is the local one. When both or neither
    /// port looks ephemeral, the peer is taken as the service (the usual client-side view).
    pub fn service(&self, c: &Oriented) -> (Endpoint, bool) {
        let local_eph = self.contains(c.local.port);
        let peer_eph = self.contains(c.peer.port);
        if peer_eph && !local_eph {
            (c.local, true)
        } else {
            (c.peer, false)
        }
    }
}

impl Default for EphemeralPorts {
    fn default() -> Self {
        Self(32768..=60999)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn ep(s: &str) -> Endpoint {
        let sa: SocketAddr = s.parse().unwrap();
        sa.into()
    }

    #[test]
    fn v4_mapped_v6_is_v4() {
        let mapped = Endpoint::new(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().into(), 80);
        assert_eq!(mapped, ep("10.1.2.3:80"));
        assert_eq!(
            Endpoint::parse("::ffff:10.1.2.3", 80),
            Some(ep("10.1.2.3:80"))
        );
        // Real IPv6 stays IPv6, also in brackets and with a zone.
        assert_eq!(
            Endpoint::parse("[::1]", 9),
            Some(Endpoint::new(Ipv6Addr::LOCALHOST.into(), 9))
        );
        assert_eq!(
            Endpoint::parse("fe80::1%eth0", 9),
            Some(Endpoint::new("fe80::1".parse().unwrap(), 9))
        );
        assert_eq!(Endpoint::parse("not an ip", 9), None);
        // ::1 is not a mapped address, nor is the IPv4-compatible ::a.b.c.d form.
        assert!(Endpoint::parse("::127.0.0.1", 1).unwrap().ip.is_ipv6());
    }

    #[test]
    fn both_orientations_give_one_key() {
        let server = ep("127.0.0.1:7000");
        let client = Endpoint::new(Ipv4Addr::LOCALHOST.to_ipv6_mapped().into(), 51000);
        let from_server = Oriented {
            local: server,
            peer: client,
        };
        let from_client = Oriented {
            local: ep("127.0.0.1:51000"),
            peer: server,
        };
        assert_eq!(from_server.key(), from_client.key());
        assert_ne!(
            from_server.key(),
            ConnKey::new(server, ep("127.0.0.1:51001"))
        );
        let v6 = ConnKey::new(ep("[::1]:7000"), ep("[::1]:51000"));
        assert_ne!(v6, from_server.key(), "IPv6 loopback is not IPv4 loopback");
        assert_eq!(v6, ConnKey::new(ep("[::1]:51000"), ep("[::1]:7000")));
    }

    #[test]
    fn service_side_is_the_non_ephemeral_port() {
        let eph = EphemeralPorts(32768..=60999);
        let redis = ep("10.0.0.5:6379");
        let me = ep("10.0.0.2:45000");
        assert_eq!(
            eph.service(&Oriented {
                local: me,
                peer: redis
            }),
            (redis, false)
        );
        assert_eq!(
            eph.service(&Oriented {
                local: redis,
                peer: me
            }),
            (redis, true)
        );
        // Both ephemeral: the peer.
        let other = ep("10.0.0.9:50000");
        assert_eq!(
            eph.service(&Oriented {
                local: me,
                peer: other
            }),
            (other, false)
        );
    }
}
