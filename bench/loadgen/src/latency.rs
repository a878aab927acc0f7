//! What the run measured: counts, and latencies per HTTP status, and the one JSON line bench/serve.py reads.
//!
//! Latencies are kept as raw microsecond samples (4 bytes each: 40,000 req/s for 60 s is under 10 MB) and
//! sorted once at the end, so percentiles are exact rather than bucketed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Latency samples of one status code.
#[derive(Debug, Default)]
pub struct StatusLatency {
    /// From the request's intended send time: what a client arriving on schedule would have waited.
    pub from_intended_us: Vec<u32>,
    /// From the moment the request was written: the server's share, without the generator's backlog.
    pub from_sent_us: Vec<u32>,
}

/// Counts and samples of the recorded (post-warm-up) requests. Once the run has drained,
/// `sent == completed + errors + timeouts` and `scheduled == sent + unsent`.
#[derive(Debug, Default)]
pub struct Recorder {
    pub scheduled: u64,
    pub sent: u64,
    pub completed: u64,
    /// Could not be sent: the backlog was full (the generator, or every connection, couldn't keep up).
    pub unsent: u64,
    /// In flight when the connection failed (reset, closed early, unparseable response).
    pub errors: u64,
    /// In flight longer than `--timeout`, or still in flight when the run stopped draining.
    pub timeouts: u64,
    /// Failed connection attempts (not requests; the backlog absorbs the wait).
    pub connect_errors: u64,
    pub backlog_max: usize,
    pub by_status: BTreeMap<u16, StatusLatency>,
    pub last_error: Option<String>,
}

impl Recorder {
    pub fn record(&mut self, status: u16, from_intended: Duration, from_sent: Duration) {
        self.completed += 1;
        let s = self.by_status.entry(status).or_default();
        s.from_intended_us.push(micros(from_intended));
        s.from_sent_us.push(micros(from_sent));
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// Nearest-rank percentile of sorted samples, in milliseconds; 0 for no samples.
pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    // The epsilon keeps 99.9% of 1000 at rank 999 despite 99.9 * 1000 / 100 landing a hair above it in f64.
    let rank = (p * sorted_us.len() as f64 / 100.0 - 1e-9).ceil() as usize;
    f64::from(sorted_us[rank.clamp(1, sorted_us.len()) - 1]) / 1000.0
}

/// Percentiles of one status code.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusSummary {
    pub status: u16,
    pub n: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub svc_p50_ms: f64,
    pub svc_p99_ms: f64,
}

impl StatusSummary {
    fn of(status: u16, samples: &mut StatusLatency) -> Self {
        samples.from_intended_us.sort_unstable();
        samples.from_sent_us.sort_unstable();
        let (a, s) = (&samples.from_intended_us, &samples.from_sent_us);
        StatusSummary {
            status,
            n: a.len(),
            p50_ms: percentile_ms(a, 50.0),
            p90_ms: percentile_ms(a, 90.0),
            p99_ms: percentile_ms(a, 99.0),
            p999_ms: percentile_ms(a, 99.9),
            max_ms: percentile_ms(a, 100.0),
            svc_p50_ms: percentile_ms(s, 50.0),
            svc_p99_ms: percentile_ms(s, 99.0),
        }
    }
}

/// The finished run, ready to print.
#[derive(Debug)]
pub struct Report {
    pub rate: f64,
    pub duration_s: f64,
    pub connections: usize,
    pub scheduled: u64,
    pub sent: u64,
    pub completed: u64,
    pub unsent: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub connect_errors: u64,
    pub backlog_max: usize,
    pub statuses: Vec<StatusSummary>,
    pub last_error: Option<String>,
}

impl Report {
    pub fn new(mut rec: Recorder, rate: f64, duration: Duration, connections: usize) -> Self {
        let statuses = rec
            .by_status
            .iter_mut()
            .map(|(&code, samples)| StatusSummary::of(code, samples))
            .collect();
        Report {
            rate,
            duration_s: duration.as_secs_f64(),
            connections,
            scheduled: rec.scheduled,
            sent: rec.sent,
            completed: rec.completed,
            unsent: rec.unsent,
            errors: rec.errors,
            timeouts: rec.timeouts,
            connect_errors: rec.connect_errors,
            backlog_max: rec.backlog_max,
            statuses,
            last_error: rec.last_error,
        }
    }

    /// Responses (any status) per second of the measured window.
    pub fn achieved_rps(&self) -> f64 {
        if self.duration_s > 0.0 {
            self.completed as f64 / self.duration_s
        } else {
            0.0
        }
    }

    /// The line bench/serve.py parses, after the `LOADGEN_JSON ` prefix. Field names are its contract.
    pub fn json(&self) -> String {
        let mut j = String::new();
        let _ = write!(
            j,
            r#"{{"rate":{},"duration_s":{},"connections":{},"scheduled":{},"sent":{},"completed":{},"unsent":{},"errors":{},"timeouts":{},"connect_errors":{},"achieved_rps":{:.1},"backlog_max":{},"status":{{"#,
            self.rate,
            self.duration_s,
            self.connections,
            self.scheduled,
            self.sent,
            self.completed,
            self.unsent,
            self.errors,
            self.timeouts,
            self.connect_errors,
            self.achieved_rps(),
            self.backlog_max,
        );
        for (k, s) in self.statuses.iter().enumerate() {
            let _ = write!(
                j,
                r#"{}"{}":{{"n":{},"p50_ms":{:.3},"p90_ms":{:.3},"p99_ms":{:.3},"p999_ms":{:.3},"max_ms":{:.3},"svc_p50_ms":{:.3},"svc_p99_ms":{:.3}}}"#,
                if k == 0 { "" } else { "," },
                s.status,
                s.n,
                s.p50_ms,
                s.p90_ms,
                s.p99_ms,
                s.p999_ms,
                s.max_ms,
                s.svc_p50_ms,
                s.svc_p99_ms,
            );
        }
        j.push_str("}}");
        j
    }

    /// The same numbers for a person, on stderr.
    pub fn human(&self) -> String {
        let mut h = String::new();
        let _ = writeln!(
            h,
            "loadgen: offered {} req/s for {} s on {} connections: scheduled {}, sent {}, completed {} ({:.1} req/s)",
            self.rate,
            self.duration_s,
            self.connections,
            self.scheduled,
            self.sent,
            self.completed,
            self.achieved_rps()
        );
        let _ = writeln!(
            h,
            "  unsent {}  errors {}  timeouts {}  connect errors {}  backlog max {}",
            self.unsent, self.errors, self.timeouts, self.connect_errors, self.backlog_max
        );
        let _ = writeln!(
            h,
            "  latency from intended send time, ms (svc = from actual send):"
        );
        for s in &self.statuses {
            let _ = writeln!(
                h,
                "  {}: n={:<8} p50 {:>8.3}  p90 {:>8.3}  p99 {:>8.3}  p99.9 {:>8.3}  max {:>8.3}  | svc p50 {:>8.3}  p99 {:>8.3}",
                s.status, s.n, s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms, s.svc_p50_ms, s.svc_p99_ms
            );
        }
        if let Some(e) = &self.last_error {
            let _ = writeln!(h, "  last error: {e}");
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let us: Vec<u32> = (1..=1000).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&us, 50.0), 500.0);
        assert_eq!(percentile_ms(&us, 99.0), 990.0);
        assert_eq!(percentile_ms(&us, 99.9), 999.0);
        assert_eq!(percentile_ms(&us, 100.0), 1000.0);
        assert_eq!(percentile_ms(&us, 0.0), 1.0);
        assert_eq!(percentile_ms(&[7000], 99.0), 7.0);
        assert_eq!(percentile_ms(&[], 99.0), 0.0);
    }

    #[test]
    fn report_sorts_samples_and_keeps_both_clocks_apart() {
        let mut rec = Recorder::default();
        for ms in [5, 1, 3, 2, 4] {
            rec.record(
                200,
                Duration::from_millis(ms * 10),
                Duration::from_millis(ms),
            );
        }
        rec.record(503, Duration::from_micros(1500), Duration::from_micros(500));
        let r = Report::new(rec, 100.0, Duration::from_secs(2), 4);
        assert_eq!(r.completed, 6);
        assert_eq!(r.achieved_rps(), 3.0);
        let ok = &r.statuses[0];
        assert_eq!(
            (ok.status, ok.n, ok.p50_ms, ok.max_ms, ok.svc_p99_ms),
            (200, 5, 30.0, 50.0, 5.0)
        );
        assert_eq!(r.statuses[1].status, 503);
    }

    #[test]
    fn json_has_the_fields_bench_serve_reads() {
        let mut rec = Recorder {
            sent: 3,
            scheduled: 3,
            ..Recorder::default()
        };
        rec.record(200, Duration::from_millis(2), Duration::from_millis(1));
        rec.record(503, Duration::from_millis(1), Duration::from_millis(1));
        rec.errors = 1;
        let j = Report::new(rec, 10.0, Duration::from_secs(1), 1).json();
        assert!(j.starts_with(r#"{"rate":10,"duration_s":1,"#), "{j}");
        for field in [
            r#""sent":3"#,
            r#""completed":2"#,
            r#""errors":1"#,
            r#""achieved_rps":2.0"#,
            r#""backlog_max":0"#,
        ] {
            assert!(j.contains(field), "{field} missing from {j}");
        }
        assert!(
            j.contains(r#""status":{"200":{"n":1,"p50_ms":2.000"#),
            "{j}"
        );
        assert!(j.contains(r#","503":{"n":1,"#), "{j}");
        assert!(j.ends_with("}}}"), "{j}");
    }
}
