//! Recall and latency percentiles: how benchmark numbers are computed, kept pure for testing.

use std::collections::HashSet;
use std::hash::Hash;
use std::time::Duration;

/// recall@k: the fraction of the true top-`k` found among the returned top-`k`.
///
/// When fewer than `k` true neighbours exist the denominator shrinks accordingly; with no
/// true neighbours at all, recall is 1 (nothing could be missed).
pub fn recall_at_k<T: Eq + Hash>(truth: &[T], found: &[T], k: usize) -> f64 {
    let truth: HashSet<&T> = truth.iter().take(k).collect();
    if truth.is_empty() {
        return 1.0;
    }
    let hits = found
        .iter()
        .take(k)
        .collect::<HashSet<_>>()
        .intersection(&truth)
        .count();
    hits as f64 / truth.len() as f64
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted samples; `None` when empty.
///
/// Nearest-rank never interpolates, so p99 of 200 samples is an observed value
/// (the 198th smallest), not a blend of two.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Summary of request latencies, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    pub count: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub fn from_durations(samples: &[Duration]) -> Option<Self> {
        let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Some(Self {
            count: ms.len(),
            mean_ms: ms.iter().sum::<f64>() / ms.len().max(1) as f64,
            p50_ms: percentile(&ms, 50.0)?,
            p90_ms: percentile(&ms, 90.0)?,
            p99_ms: percentile(&ms, 99.0)?,
            max_ms: percentile(&ms, 100.0)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_counts_overlap_of_top_k() {
        assert_eq!(recall_at_k(&[1, 2, 3, 4], &[4, 3, 2, 1], 4), 1.0);
        assert_eq!(recall_at_k(&[1, 2, 3, 4], &[1, 2, 9, 8], 4), 0.5);
        // Only the first k of each list count.
        assert_eq!(recall_at_k(&[1, 2, 3, 4], &[9, 1, 2, 3], 2), 0.5);
        assert_eq!(recall_at_k(&[1, 2], &[], 10), 0.0);
        // Fewer true neighbours than k.
        assert_eq!(recall_at_k(&[1, 2], &[2, 1, 7], 10), 1.0);
        assert_eq!(recall_at_k::<u64>(&[], &[], 10), 1.0);
        // Duplicates in the answer are not double-counted.
        assert_eq!(recall_at_k(&[1, 2], &[1, 1], 2), 0.5);
    }

    #[test]
    fn percentile_nearest_rank() {
        let s: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), Some(50.0));
        assert_eq!(percentile(&s, 99.0), Some(99.0));
        assert_eq!(percentile(&s, 100.0), Some(100.0));
        assert_eq!(percentile(&s, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[1.0], 101.0), None);
    }

    #[test]
    fn latency_summary() {
        let d: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        let s = LatencySummary::from_durations(&d).unwrap();
        assert_eq!(s.count, 10);
        assert!((s.mean_ms - 5.5).abs() < 1e-9);
        assert!((s.p50_ms - 5.0).abs() < 1e-9);
        assert!((s.p99_ms - 10.0).abs() < 1e-9);
        assert!(LatencySummary::from_durations(&[]).is_none());
    }
}
