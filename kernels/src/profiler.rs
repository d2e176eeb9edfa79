//! Per-dispatch GPU timing.
//!
//! With profiling on ([`crate::Gpu::set_profiling`]), every dispatch runs in its own compute
//! pass whose start and end are written to a timestamp query set, and is labelled with the
//! kernel name, its shapes, its FLOP and byte counts and the profiling scopes open at the time
//! (for example `em.iter=2`). Adapters without `TIMESTAMP_QUERY` fall back to wall-clock timing
//! of each dispatch (submitted and waited for alone), and the report says so. With profiling
//! off, none of this runs and dispatches are batched.
//!
//! A [`Profile`] renders as a per-kernel table and as Chrome trace JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// How a [`Profile`]'s durations were measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// GPU timestamp queries around each dispatch.
    GpuTimestamps,
    /// Host wall clock around a submit-and-wait of each dispatch (the adapter has no
    /// timestamp queries); includes submission overhead.
    WallClock,
}

/// What a dispatch is, for the profiler: a kernel name, its shapes and its work.
#[derive(Debug, Clone, Default)]
pub struct KernelLabel {
    /// The kernel (shader entry point) name, e.g. `matmul`.
    pub kernel: &'static str,
    /// Shapes, human readable, e.g. `[8,256,192]x[192,576]`.
    pub shape: String,
    /// Floating-point operations the dispatch performs.
    pub flops: u64,
    /// Bytes the dispatch must read and write at least.
    pub bytes: u64,
}

/// One timed dispatch.
#[derive(Debug, Clone)]
pub struct DispatchRecord {
    /// The dispatch's label.
    pub label: KernelLabel,
    /// Profiling scopes open when it was recorded, outermost first (e.g. `["em", "iter=1"]`).
    pub scopes: Vec<String>,
    /// Start time in nanoseconds, relative to the first record of the profile.
    pub start_ns: f64,
    /// Duration in nanoseconds.
    pub duration_ns: f64,
}

/// The timed dispatches of a profiling session.
#[derive(Debug, Clone)]
pub struct Profile {
    /// How durations were measured.
    pub timing: Timing,
    /// Every dispatch, in submission order.
    pub records: Vec<DispatchRecord>,
}

/// Aggregate of one kernel (or one kernel within one scope) in a [`Profile`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KernelSummary {
    /// Number of dispatches.
    pub count: usize,
    /// Total time in nanoseconds.
    pub total_ns: f64,
    /// Total floating-point operations.
    pub flops: u64,
    /// Total bytes moved.
    pub bytes: u64,
}

impl KernelSummary {
    /// Mean duration per dispatch in nanoseconds.
    pub fn mean_ns(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.total_ns / self.count as f64
        }
    }
    /// Achieved GFLOP/s (0 when the kernel does no arithmetic or took no time).
    pub fn gflops(&self) -> f64 {
        if self.total_ns > 0.0 {
            self.flops as f64 / self.total_ns
        } else {
            0.0
        }
    }
    /// Achieved GB/s.
    pub fn gbytes_per_s(&self) -> f64 {
        if self.total_ns > 0.0 {
            self.bytes as f64 / self.total_ns
        } else {
            0.0
        }
    }
}

impl Profile {
    /// Totals per kernel name, sorted by name.
    pub fn by_kernel(&self) -> BTreeMap<String, KernelSummary> {
        self.summarize(|r| r.label.kernel.to_string())
    }

    /// Totals grouped by any key computed from a record (e.g. scope and kernel).
    pub fn summarize(&self, key: impl Fn(&DispatchRecord) -> String) -> BTreeMap<String, KernelSummary> {
        let mut map: BTreeMap<String, KernelSummary> = BTreeMap::new();
        for r in &self.records {
            let s = map.entry(key(r)).or_default();
            s.count += 1;
            s.total_ns += r.duration_ns;
            s.flops += r.label.flops;
            s.bytes += r.label.bytes;
        }
        map
    }

    /// Total time of all dispatches in nanoseconds.
    pub fn total_ns(&self) -> f64 {
        self.records.iter().map(|r| r.duration_ns).sum()
    }

    /// A per-kernel table: count, total, mean, GFLOP/s and GB/s, most expensive first.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, KernelSummary)> = self.by_kernel().into_iter().collect();
        rows.sort_by(|a, b| b.1.total_ns.total_cmp(&a.1.total_ns));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "timing: {}",
            match self.timing {
                Timing::GpuTimestamps => "GPU timestamp queries",
                Timing::WallClock =>
                    "wall clock per dispatch (adapter has no timestamp queries; includes submit overhead)",
            }
        );
        let _ = writeln!(
            out,
            "{:<28} {:>7} {:>11} {:>11} {:>9} {:>9}",
            "kernel", "count", "total ms", "mean us", "GFLOP/s", "GB/s"
        );
        for (name, s) in &rows {
            let _ = writeln!(
                out,
                "{:<28} {:>7} {:>11.3} {:>11.1} {:>9} {:>9}",
                name,
                s.count,
                s.total_ns / 1e6,
                s.mean_ns() / 1e3,
                rate(s.gflops()),
                rate(s.gbytes_per_s())
            );
        }
        let _ = writeln!(out, "{:<28} {:>7} {:>11.3}", "total", self.records.len(), self.total_ns() / 1e6);
        out
    }

    /// Chrome trace JSON (open in chrome://tracing or Perfetto): one complete event per dispatch.
    pub fn chrome_trace(&self) -> String {
        let mut out = String::from("{\"displayTimeUnit\":\"ns\",\"traceEvents\":[");
        for (i, r) in self.records.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(
                out,
                "{{\"name\":{},\"cat\":\"kernel\",\"ph\":\"X\",\"pid\":0,\"tid\":0,\"ts\":{:.3},\"dur\":{:.3},\"args\":{{\"shape\":{},\"scope\":{},\"flops\":{},\"bytes\":{}}}}}",
                json_string(r.label.kernel),
                r.start_ns / 1e3,
                r.duration_ns / 1e3,
                json_string(&r.label.shape),
                json_string(&r.scopes.join("/")),
                r.label.flops,
                r.label.bytes
            );
        }
        out.push_str("]}");
        out
    }
}

/// Quotes a string as a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A rate (GFLOP/s, GB/s) as the profile tables print it: two decimals, or three significant
/// digits below 1, so that a small kernel timed on a slow adapter reads 0.00290 rather than 0.00.
pub fn rate(x: f64) -> String {
    if x > 0.0 && x < 1.0 && x.is_finite() {
        let decimals = (2 - x.log10().floor() as i32).clamp(2, 9) as usize;
        format!("{x:.decimals$}")
    } else {
        format!("{x:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_keep_three_significant_digits_below_one() {
        let cases = [(0.0, "0.00"), (1234.567, "1234.57"), (1.0, "1.00"), (0.5, "0.500"), (0.0029012, "0.00290")];
        for (x, text) in cases {
            assert_eq!(rate(x), text, "{x}");
        }
        assert_eq!(rate(1e-12), "0.000000000", "at most nine decimals");
    }

    fn record(kernel: &'static str, dur: f64, flops: u64) -> DispatchRecord {
        DispatchRecord {
            label: KernelLabel { kernel, shape: "[2,\"3\"]".into(), flops, bytes: 8 },
            scopes: vec!["em".into(), "iter=1".into()],
            start_ns: 0.0,
            duration_ns: dur,
        }
    }

    #[test]
    fn summary_and_trace() {
        let p = Profile {
            timing: Timing::GpuTimestamps,
            records: vec![record("a", 1000.0, 2000), record("a", 3000.0, 2000), record("b", 10.0, 0)],
        };
        let s = &p.by_kernel()["a"];
        assert_eq!(s.count, 2);
        assert_eq!(s.mean_ns(), 2000.0);
        assert!((s.gflops() - 1.0).abs() < 1e-12);
        let t = p.table();
        assert!(t.lines().nth(2).unwrap().starts_with('a'), "most expensive first:\n{t}");
        let trace = p.chrome_trace();
        assert!(trace.contains("\"shape\":\"[2,\\\"3\\\"]\""));
        assert_eq!(trace.matches("\"ph\":\"X\"").count(), 3);
    }
}
