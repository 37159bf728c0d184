//! Load generation (the `bots` binary): N sessions across M rooms sending inputs at a
//! rate, measuring latency; and `bench`, which spawns the server and sweeps N.

pub mod bench;
pub mod http;
pub mod load;

/// Percentile over sorted microsecond samples (nearest rank).
pub fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(super::percentile(&v, 50.0), Some(50));
        assert_eq!(super::percentile(&v, 99.0), Some(99));
        assert_eq!(super::percentile(&v, 100.0), Some(100));
        assert_eq!(super::percentile(&[], 99.0), None);
    }
}
