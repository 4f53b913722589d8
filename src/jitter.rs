//! Random spread for periodic timers: sidecars started together (a fleet rolled out at
//! once) must not call AWS in step, so every repeating wait is drawn afresh each time.

use std::time::Duration;

/// A uniform draw from `[0, 1)`. The system's random generator does not fail in practice;
/// if it did, the midpoint keeps the timer working, only unspread.
fn unit() -> f64 {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0.5;
    }
    // 53 random bits: every value an f64 in [0, 1) can hold at that spacing.
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// `base` scaled by `factor` (non-negative), saturating where `Duration::mul_f64` would
/// panic: a base can come from outside (a Retry-After header).
fn scaled(base: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

/// `base` scaled by a uniform draw from `[low, high)`.
pub fn between(base: Duration, low: f64, high: f64) -> Duration {
    scaled(base, low + (high - low) * unit())
}

/// A uniform draw from `range`.
pub fn within(range: std::ops::Range<Duration>) -> Duration {
    let width = range.end.saturating_sub(range.start);
    range.start.saturating_add(scaled(width, unit()))
}

/// `base` ± 15 %: the spread of every periodic timer that has no bound of its own to keep.
pub fn around(base: Duration) -> Duration {
    between(base, 0.85, 1.15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_stay_in_their_range_and_spread() {
        let base = Duration::from_secs(100);
        let draws: Vec<Duration> = (0..1000).map(|_| around(base)).collect();
        assert!(
            draws
                .iter()
                .all(|d| *d >= Duration::from_secs(85) && *d < Duration::from_secs(115))
        );
        let (low, high) = (draws.iter().min().unwrap(), draws.iter().max().unwrap());
        // 1,000 uniform draws over 30 s leave no gap of 10 s at either end.
        assert!(*low < Duration::from_secs(95) && *high > Duration::from_secs(105));
    }

    #[test]
    fn the_longest_durations_saturate_instead_of_panicking() {
        assert_eq!(between(Duration::MAX, 1.0, 1.15), Duration::MAX);
        for _ in 0..100 {
            assert!(around(Duration::MAX) >= Duration::MAX.mul_f64(0.8));
            assert!(within(Duration::MAX / 2..Duration::MAX) >= Duration::MAX / 2);
        }
    }
}
