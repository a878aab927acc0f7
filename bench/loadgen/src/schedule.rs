//! The fixed send schedule: request `i` is due at `start + i / rate`, whatever the server is doing.
//!
//! The first `warmup` seconds' requests are sent like the others but not recorded, so the server's caches,
//! connections and batch sizes settle before anything is measured.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    rate: f64,
    warmup_n: u64,
    total_n: u64,
}

impl Schedule {
    pub fn new(start: Instant, rate: f64, warmup: Duration, duration: Duration) -> Self {
        let warmup_n = (warmup.as_secs_f64() * rate).round() as u64;
        let measured_n = (duration.as_secs_f64() * rate).round() as u64;
        Schedule {
            start,
            rate,
            warmup_n,
            total_n: warmup_n + measured_n,
        }
    }

    /// Offset of request `i`'s intended send time from the start. f64 holds i * 1e9 exactly up to 2^53 ns (104 days).
    pub fn offset(&self, i: u64) -> Duration {
        Duration::from_nanos((i as f64 * 1e9 / self.rate).round() as u64)
    }

    pub fn intended(&self, i: u64) -> Instant {
        self.start + self.offset(i)
    }

    /// Requests of the warm-up, and any outside the schedule, are sent but neither counted nor timed.
    pub fn is_recorded(&self, i: u64) -> bool {
        (self.warmup_n..self.total_n).contains(&i)
    }

    /// Every request of the run, warm-up included; indices are `0..total()`.
    pub fn total(&self) -> u64 {
        self.total_n
    }

    pub fn measured(&self) -> u64 {
        self.total_n - self.warmup_n
    }

    /// When the last request is due (the end of the offered load).
    pub fn end(&self) -> Instant {
        self.start + self.offset(self.total_n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(rate: f64, warmup: f64, duration: f64) -> Schedule {
        Schedule::new(
            Instant::now(),
            rate,
            Duration::from_secs_f64(warmup),
            Duration::from_secs_f64(duration),
        )
    }

    #[test]
    fn request_i_is_due_at_i_over_rate() {
        let s = schedule(40_000.0, 0.0, 1.0);
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), Duration::from_micros(25));
        assert_eq!(s.offset(40_000), Duration::from_secs(1));
        assert_eq!(s.intended(4) - s.start, Duration::from_micros(100));
    }

    #[test]
    fn fractional_rates_do_not_drift() {
        let s = schedule(3.0, 0.0, 10.0);
        assert_eq!(s.offset(1), Duration::from_nanos(333_333_333));
        assert_eq!(s.offset(30), Duration::from_secs(10));
        assert_eq!(s.total(), 30);
    }

    #[test]
    fn warmup_requests_come_first_and_are_not_recorded() {
        let s = schedule(100.0, 2.0, 5.0);
        assert_eq!((s.total(), s.measured()), (700, 500));
        assert!(!s.is_recorded(199));
        assert!(s.is_recorded(200));
        assert!(s.is_recorded(699));
        assert!(!s.is_recorded(700));
        assert_eq!(s.end() - s.start, Duration::from_secs(7));
    }
}
