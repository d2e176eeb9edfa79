//! What training shows and leaves behind besides the checkpoint: the progress line on stderr,
//! the log (`<out>.log.csv`) and the loss/Dice curve picture (`<out>.curve.svg`, hand-written SVG).

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One training step in the log.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Step number, from 1.
    pub step: usize,
    /// Training loss of the step's batch (before the update).
    pub loss: f32,
    /// Learning rate of the step (before the vision-encoder multiplier).
    pub lr: f32,
    /// Mean foreground Dice on the validation set after the step, when measured.
    pub val_dice: Option<f32>,
}

/// The files written beside a checkpoint `out`: `<out>.log.csv` and `<out>.curve.svg`.
pub fn side_paths(out: &Path) -> (PathBuf, PathBuf) {
    let with = |suffix: &str| {
        let mut name = out.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    (with(".log.csv"), with(".curve.svg"))
}

/// The log as CSV: `step,loss,lr,val_dice` (val_dice empty where not measured).
pub fn log_csv(log: &[LogEntry]) -> String {
    let mut s = String::from("step,loss,lr,val_dice\n");
    for e in log {
        let dice = e.val_dice.map(|d| format!("{d:.6}")).unwrap_or_default();
        let _ = writeln!(s, "{},{:.6},{:.6e},{dice}", e.step, e.loss, e.lr);
    }
    s
}

/// Writes the CSV log and the SVG curve beside the checkpoint `out`, atomically.
pub fn write_side_files(out: &Path, log: &[LogEntry]) -> Result<()> {
    let (csv, svg) = side_paths(out);
    crate::io::write_atomic(&csv, log_csv(log).as_bytes()).map_err(|e| Error::io(&csv, e))?;
    crate::io::write_atomic(&svg, curve_svg(log).as_bytes()).map_err(|e| Error::io(&svg, e))
}

/// A loss (left axis) and validation Dice (right axis, 0 to 1) curve over the steps, as SVG.
pub fn curve_svg(log: &[LogEntry]) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 400.0, 64.0, 56.0, 36.0, 44.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let last_step = log.last().map_or(1, |e| e.step).max(1) as f64;
    let max_loss = log.iter().map(|e| e.loss as f64).filter(|v| v.is_finite()).fold(0.0f64, f64::max).max(1e-6) * 1.05;
    let x = |step: usize| left + pw * step as f64 / last_step;
    let y_loss = |l: f32| top + ph * (1.0 - (l as f64 / max_loss).clamp(0.0, 1.0));
    let y_dice = |d: f32| top + ph * (1.0 - (d as f64).clamp(0.0, 1.0));
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" text-anchor="middle" font-size="14">vlsa training: loss and validation Dice</text>"#,
        w / 2.0
    );
    // Axes, ticks and grid.
    let _ = writeln!(s, r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#);
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let yy = top + ph * (1.0 - f);
        let _ = writeln!(s, r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/>"##, left + pw);
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#1f4e9c">{:.3}</text>"##,
            left - 6.0,
            yy + 4.0,
            max_loss * f
        );
        let _ = writeln!(s, r##"<text x="{:.1}" y="{:.1}" fill="#b8420f">{:.2}</text>"##, left + pw + 6.0, yy + 4.0, f);
        let xx = left + pw * f;
        let _ = writeln!(
            s,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{:.0}</text>"#,
            top + ph + 16.0,
            last_step * f
        );
    }
    let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">step</text>"#, left + pw / 2.0, h - 8.0);
    let _ = writeln!(
        s,
        r##"<text x="14" y="{:.1}" fill="#1f4e9c" transform="rotate(-90 14 {:.1})" text-anchor="middle">training loss</text>"##,
        top + ph / 2.0,
        top + ph / 2.0
    );
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" fill="#b8420f" transform="rotate(90 {:.1} {:.1})" text-anchor="middle">validation Dice</text>"##,
        w - 12.0,
        top + ph / 2.0,
        w - 12.0,
        top + ph / 2.0
    );
    let points = |pts: Vec<(f64, f64)>| pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect::<Vec<_>>().join(" ");
    let loss: Vec<(f64, f64)> =
        log.iter().filter(|e| e.loss.is_finite()).map(|e| (x(e.step), y_loss(e.loss))).collect();
    let _ = writeln!(s, r##"<polyline fill="none" stroke="#1f4e9c" stroke-width="1.2" points="{}"/>"##, points(loss));
    let dice: Vec<(f64, f64)> = log.iter().filter_map(|e| e.val_dice.map(|d| (x(e.step), y_dice(d)))).collect();
    let _ =
        writeln!(s, r##"<polyline fill="none" stroke="#b8420f" stroke-width="2" points="{}"/>"##, points(dice.clone()));
    for (a, b) in dice {
        let _ = writeln!(s, r##"<circle cx="{a:.1}" cy="{b:.1}" r="3" fill="#b8420f"/>"##);
    }
    s.push_str("</svg>\n");
    s
}

/// The progress display: a one-line bar redrawn in place on a terminal, or a plain line every
/// `every` steps when stderr is not a terminal (a log file, CI).
pub struct Progress {
    terminal: bool,
    every: usize,
    total: usize,
    stop: usize,
    first: usize,
    batch: usize,
    start: Instant,
    /// Seconds spent in training steps after the first one of this run (which compiles the
    /// pipelines), and how many such steps: rates count these only, not validation or saving.
    train_seconds: f64,
    timed_steps: usize,
    quiet: bool,
}

impl Progress {
    /// A display for steps `first + 1 ..= stop` of a run of `total` steps of `batch` images each.
    pub fn new(first: usize, stop: usize, total: usize, batch: usize, every: usize, quiet: bool) -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            every: every.max(1),
            total,
            stop,
            first,
            batch,
            start: Instant::now(),
            train_seconds: 0.0,
            timed_steps: 0,
            quiet,
        }
    }

    /// Training images per second over this run's steps but the first (None before two steps).
    pub fn images_per_second(&self) -> Option<f64> {
        (self.timed_steps > 0 && self.train_seconds > 0.0)
            .then(|| self.timed_steps as f64 * self.batch as f64 / self.train_seconds)
    }

    /// Shows step `step` (done, its training part having taken `seconds`) with its log entry.
    pub fn update(&mut self, step: usize, seconds: f64, entry: &LogEntry) {
        if step > self.first + 1 {
            self.train_seconds += seconds;
            self.timed_steps += 1;
        }
        if self.quiet {
            return;
        }
        let rate = self.images_per_second();
        let eta = match rate {
            Some(r) if r > 0.0 => format_duration(self.stop.saturating_sub(step) as f64 * self.batch as f64 / r),
            _ => "--:--".into(),
        };
        let rate = rate.map_or("-".into(), |r| format!("{r:.2}"));
        let done = step as f64 / self.total.max(1) as f64;
        let filled = (done * 24.0).round() as usize;
        let dice = entry.val_dice.map(|d| format!("  val Dice {d:.4}")).unwrap_or_default();
        let line = format!(
            "[{}{}] step {step}/{}  loss {:.4}  lr {:.2e}  {rate} img/s  ETA {eta}{dice}",
            "#".repeat(filled),
            "-".repeat(24 - filled.min(24)),
            self.total,
            entry.loss,
            entry.lr
        );
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r{line}\x1b[K");
            if entry.val_dice.is_some() || step == self.stop {
                let _ = writeln!(err);
            }
        } else if step.is_multiple_of(self.every) || entry.val_dice.is_some() || step == self.stop {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Shows that validation is under way (on a terminal only: a log gets the Dice line after).
    pub fn validating(&mut self, done: usize, total: usize) {
        if self.terminal && !self.quiet {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\rvalidating: {done}/{total} images\x1b[K");
            let _ = err.flush();
        }
    }

    /// Ends the in-place line (before an error message).
    pub fn finish(&self) {
        if self.terminal && !self.quiet {
            eprintln!();
        }
    }

    /// Seconds since the display was made.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
}

fn format_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{:02}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_svg_hold_every_entry() {
        let log = vec![
            LogEntry { step: 1, loss: 1.5, lr: 1e-4, val_dice: None },
            LogEntry { step: 2, loss: 1.25, lr: 2e-4, val_dice: Some(0.5) },
        ];
        assert_eq!(log_csv(&log), "step,loss,lr,val_dice\n1,1.500000,1.000000e-4,\n2,1.250000,2.000000e-4,0.500000\n");
        let svg = curve_svg(&log);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 1, "one Dice point");
        assert_eq!(format_duration(3725.0), "1:02:05");
        let (csv, svg) = side_paths(Path::new("out/m.safetensors"));
        assert_eq!(csv, Path::new("out/m.safetensors.log.csv"));
        assert_eq!(svg, Path::new("out/m.safetensors.curve.svg"));
    }
}
