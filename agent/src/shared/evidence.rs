//! Kernel evidence in the agent's terms: what the kernel reported, on the Unix clock
//! (`RunqEntry`, `TcpEntry`), and what it says about one span once joined (`RunqJoin`,
//! `TcpJoin`). Correlate produces both; detect and the sinks read them.
use agent_common::TcpEventKind;

use super::netkey::Endpoint;

pub trait Timed {
    /// Unix nanoseconds at which the entry stops being "current" (end of the wait, time of
    /// the segment).
    fn ts(&self) -> u64;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunqEntry {
    /// Unix ns when the thread got on the CPU.
    pub end_ns: u64,
    pub delay_ns: u64,
    pub pid: u32,
    pub cpu: u32,
}

impl RunqEntry {
    pub fn start_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.delay_ns)
    }
}

impl Timed for RunqEntry {
    fn ts(&self) -> u64 {
        self.end_ns
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpEntry {
    pub ts_ns: u64,
    pub kind: TcpEventKind,
    /// The socket this was observed on: `local` is that socket's own side.
    pub local: Endpoint,
    pub peer: Endpoint,
    pub segs: u32,
    pub state: u8,
    /// The observing socket's network namespace (0: unknown; joins nothing).
    pub netns: u64,
    /// The process that owns the observing socket (pid 0: unknown, e.g. an RST the kernel
    /// sent for a closed port): who suffered or caused a fault.
    pub owner_pid: u32,
    pub owner_comm: Comm,
}

/// A process name kept inline (the kernel's are at most 15 bytes): evidence entries live for
/// minutes among a burst's short-lived allocations, and one small string each kept the heap's
/// pages from being returned after the burst.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Comm {
    bytes: [u8; 16],
    len: u8,
}

impl Comm {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl From<&str> for Comm {
    /// Longer names are cut at a character boundary within 16 bytes.
    fn from(s: &str) -> Self {
        let mut end = s.len().min(16);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0u8; 16];
        bytes[..end].copy_from_slice(&s.as_bytes()[..end]);
        Self {
            bytes,
            len: end as u8,
        }
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Timed for TcpEntry {
    fn ts(&self) -> u64 {
        self.ts_ns
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunqJoin {
    /// Run-queue time inside the window, summed and the longest single part.
    pub total_ns: u64,
    pub max_ns: u64,
    /// Waits with some part inside the window.
    pub count: u64,
    /// Those of them that were slow (whole wait ≥ the threshold), oldest first.
    pub slow: Vec<RunqEntry>,
    pub truncated: bool,
}

/// Direction from the span's side of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Sent,
    Received,
}

impl Dir {
    pub fn as_str(self) -> &'static str {
        match self {
            Dir::Sent => "sent",
            Dir::Received => "received",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TcpHit {
    pub ts_ns: u64,
    pub kind: TcpEventKind,
    pub dir: Dir,
    /// Seen on the span side's own socket (else on the peer's socket, on this node).
    pub own_socket: bool,
    pub segs: u32,
    pub state: u8,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct TcpJoin {
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    pub hits: Vec<TcpHit>,
    pub truncated: bool,
}

/// Linux `TCP_*` state names, for span events.
pub fn tcp_state_name(s: u8) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}
