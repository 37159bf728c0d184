//! One second of the page's timeline: what the sampler measures and the timeline keeps.
use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TcpCounts {
    pub rst_sent: u32,
    pub rst_received: u32,
    pub retransmits: u32,
}

impl TcpCounts {
    pub fn add(&mut self, o: &TcpCounts) {
        self.rst_sent += o.rst_sent;
        self.rst_received += o.rst_received;
        self.retransmits += o.retransmits;
    }

    pub fn total(&self) -> u32 {
        self.rst_sent + self.rst_received + self.retransmits
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TcpPoint {
    /// The connection's service endpoint (the side whose port is not ephemeral), as in
    /// `connection_fault` subjects (`ep:<this>`).
    pub ep: String,
    #[serde(flatten)]
    pub counts: TcpCounts,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolPoint {
    pub pool: String,
    /// Submissions in this second.
    pub arrivals: f64,
    pub queue_depth: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RunqPoint {
    /// Waits that ended in this second per log2 slot: slot `i` is [2^i, 2^(i+1)) µs. Trailing
    /// empty slots are left out.
    pub slots: Vec<u32>,
    pub count: u64,
    pub sum_ns: u64,
    pub processes: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Sample {
    /// Unix second this sample covers (it ends at `t + 1`).
    pub t: u64,
    /// Spans received over OTLP in this second (`None`: correlation not running).
    pub spans: Option<u64>,
    pub spans_enriched: u64,
    /// `None`: no probes, or nothing watched.
    pub runq: Option<RunqPoint>,
    pub tcp: Vec<TcpPoint>,
    /// `None`: no pool metrics source, or it failed this second.
    pub pools: Option<Vec<PoolPoint>>,
    /// Kernel events lost to full rings in this second (the per-endpoint counts miss them).
    pub kernel_lost: u64,
}

impl RunqPoint {
    /// The `q` quantile (0..1) of the waits, in µs (see [`quantile_us`]).
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        quantile_us(&self.slots, q)
    }
}

/// How each input of the page fared in one second, for /api/status and the page's banners.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Spans received since the agent started.
    pub spans_total: u64,
    pub watched_processes: i64,
    /// `None`: no pool metrics source; `Some(Err)`: reading it failed this second.
    pub pool: Option<Result<(), String>>,
    pub probes_error: Option<String>,
    /// Per kernel feature: loaded or not, and why (the page's probe chips).
    pub probe_status: Vec<super::event::ProbeStatus>,
}

/// What the sampler hands the timeline once a second.
#[derive(Clone, Debug, Default)]
pub struct Second {
    pub sample: Sample,
    pub inputs: Inputs,
}

/// The `q` quantile (0..1) of a log2-slot histogram in µs, interpolated linearly inside the
/// slot (slot `i` spans [2^i, 2^(i+1)) µs). `None` when empty.
pub fn quantile_us(slots: &[u32], q: f64) -> Option<f64> {
    let total: u64 = slots.iter().map(|&n| u64::from(n)).sum();
    if total == 0 {
        return None;
    }
    let target = (q.clamp(0.0, 1.0) * total as f64).max(f64::MIN_POSITIVE);
    let mut below = 0u64;
    for (i, &n) in slots.iter().enumerate() {
        let n = u64::from(n);
        if n > 0 && (below + n) as f64 >= target {
            let lo = (1u64 << i) as f64;
            let frac = (target - below as f64) / n as f64;
            return Some(lo + frac * lo);
        }
        below += n;
    }
    Some((1u64 << slots.len()) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_log2_slots() {
        assert_eq!(quantile_us(&[], 0.5), None);
        assert_eq!(quantile_us(&[0, 0], 0.5), None);
        // 10 waits in [4, 8) µs.
        let s = [0, 0, 10];
        assert_eq!(quantile_us(&s, 0.5), Some(6.0));
        assert_eq!(quantile_us(&s, 1.0), Some(8.0));
        // 90 fast, 10 in [1024, 2048) µs: p50 fast, p99 slow.
        let mut s = vec![0u32; 11];
        s[1] = 90;
        s[10] = 10;
        assert!(quantile_us(&s, 0.5).unwrap() < 4.0);
        let p99 = quantile_us(&s, 0.99).unwrap();
        assert!((1024.0..=2048.0).contains(&p99), "{p99}");
    }
}
