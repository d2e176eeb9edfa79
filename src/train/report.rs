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
    (beside(out, ".log.csv"), beside(out, ".curve.svg"))
}

/// `out` with `suffix` appended to its file name (a file written beside the checkpoint).
fn beside(out: &Path, suffix: &str) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The snapshot of step `step` of a run of `total` steps that writes `out`:
/// `<out>.step-<step>.safetensors`, the step zero-padded to the digits of `total` so that the
/// snapshots of one run sort by step.
pub fn snapshot_path(out: &Path, step: usize, total: usize) -> PathBuf {
    let width = total.to_string().len();
    beside(out, &format!(".step-{step:0width$}.safetensors"))
}

/// The snapshots (`--keep-every`) of runs that wrote `out`, sorted by name.
pub fn existing_snapshots(out: &Path) -> Vec<PathBuf> {
    let Some(file) = out.file_name().and_then(|f| f.to_str()) else { return Vec::new() };
    let prefix = format!("{file}.step-");
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.strip_prefix(&prefix)
                    .and_then(|rest| rest.strip_suffix(".safetensors"))
                    .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .map(|e| out.with_file_name(e.file_name()))
        .collect();
    found.sort();
    found
}

/// Removes the snapshots of the run a `--force` run replaces ([`existing_snapshots`]) and says
/// how many went. Call it after every check of the new run, just before its first step, so a
/// refused run leaves the old run whole and no old snapshot is mixed with the new run's.
pub fn remove_snapshots(out: &Path) -> crate::Result<usize> {
    let old = existing_snapshots(out);
    for path in &old {
        std::fs::remove_file(path).map_err(|e| crate::Error::Io {
            path: path.display().to_string(),
            message: format!("cannot remove this snapshot of the run --force replaces ({e})"),
        })?;
    }
    Ok(old.len())
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

/// Tick spacing of 1, 2 or 5 times a power of ten, giving about `target` intervals over `range`.
fn nice_step(range: f64, target: f64) -> f64 {
    let raw = (range / target).max(f64::MIN_POSITIVE);
    let power = 10f64.powf(raw.log10().floor());
    let unit = [1.0, 2.0, 5.0, 10.0].into_iter().find(|u| u * power >= raw).unwrap_or(10.0);
    unit * power
}

/// A tick value printed with as many decimals as its spacing needs.
fn tick_label(value: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{value:.decimals$}")
}

/// The top of the loss axis: the largest loss, unless the first steps' spike (the first 2 % of
/// the run, at least one step) is over 1.5 times the rest's largest, in which case the axis
/// is clipped just above the rest so that the spike does not flatten the curve. Returns the top
/// and whether it clips.
fn loss_axis_top(losses: &[f64]) -> (f64, bool) {
    let all = losses.iter().copied().fold(0.0f64, f64::max).max(1e-6);
    let head = (losses.len() / 50).max(1);
    if losses.len() < 4 {
        return (all, false);
    }
    let rest = losses[head..].iter().copied().fold(0.0f64, f64::max).max(1e-6);
    if all > 1.5 * rest {
        (rest * 1.1, true)
    } else {
        (all, false)
    }
}

/// A loss (left axis) and validation Dice (right axis, 0 to 1) curve over the steps, as SVG,
/// with a legend. The loss axis starts at 0 and is clipped above the first steps' spike when
/// that would flatten the rest ([`loss_axis_top`]); the axis title says so and where it clips.
pub fn curve_svg(log: &[LogEntry]) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 400.0, 64.0, 56.0, 36.0, 44.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let last_step = log.last().map_or(1, |e| e.step).max(1) as f64;
    let losses: Vec<f64> = log.iter().map(|e| e.loss as f64).filter(|v| v.is_finite()).collect();
    let (max_loss, clipped) = loss_axis_top(&losses);
    let loss_step = nice_step(max_loss, 5.0);
    let max_loss = (max_loss / loss_step).ceil() * loss_step;
    let x = |step: usize| left + pw * step as f64 / last_step;
    let y_loss = |l: f32| top + ph * (1.0 - (l as f64 / max_loss).clamp(0.0, 1.0));
    let y_dice = |d: f32| top + ph * (1.0 - (d as f64).clamp(0.0, 1.0));
    let (blue, orange) = ("#1f4e9c", "#b8420f");
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
    // Loss ticks and grid (left), Dice ticks (right, 0 to 1 by 0.2), step ticks (bottom).
    let mut v = 0.0;
    while v <= max_loss + loss_step * 1e-6 {
        let yy = top + ph * (1.0 - v / max_loss);
        let _ = writeln!(s, r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/>"##, left + pw);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="{blue}">{}</text>"#,
            left - 6.0,
            yy + 4.0,
            tick_label(v, loss_step)
        );
        v += loss_step;
    }
    for i in 0..=5 {
        let f = i as f64 / 5.0;
        let yy = top + ph * (1.0 - f);
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" fill="{orange}">{f:.1}</text>"#, left + pw + 6.0, yy + 4.0);
    }
    let step_step = nice_step(last_step, 6.0).max(1.0);
    let mut st = 0.0;
    while st <= last_step + 1e-9 {
        let xx = left + pw * st / last_step;
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#888"/>"##,
            top + ph,
            top + ph + 4.0
        );
        let _ = writeln!(s, r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{st:.0}</text>"#, top + ph + 16.0);
        st += step_step;
    }
    let _ = writeln!(s, r#"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#);
    let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">step</text>"#, left + pw / 2.0, h - 8.0);
    let loss_title = if clipped {
        let peak = losses.iter().copied().fold(0.0f64, f64::max);
        format!("training loss (axis clipped at {}; the first steps reach {peak:.3})", tick_label(max_loss, loss_step))
    } else {
        "training loss".to_string()
    };
    let _ = writeln!(
        s,
        r#"<text x="14" y="{:.1}" fill="{blue}" transform="rotate(-90 14 {:.1})" text-anchor="middle">{loss_title}</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" fill="{orange}" transform="rotate(90 {:.1} {:.1})" text-anchor="middle">validation Dice</text>"#,
        w - 12.0,
        top + ph / 2.0,
        w - 12.0,
        top + ph / 2.0
    );
    let points = |pts: Vec<(f64, f64)>| pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect::<Vec<_>>().join(" ");
    let loss: Vec<(f64, f64)> =
        log.iter().filter(|e| e.loss.is_finite()).map(|e| (x(e.step), y_loss(e.loss))).collect();
    let _ = writeln!(s, r#"<polyline fill="none" stroke="{blue}" stroke-width="1.2" points="{}"/>"#, points(loss));
    let dice: Vec<(f64, f64)> = log.iter().filter_map(|e| e.val_dice.map(|d| (x(e.step), y_dice(d)))).collect();
    let _ =
        writeln!(s, r#"<polyline fill="none" stroke="{orange}" stroke-width="2" points="{}"/>"#, points(dice.clone()));
    for (a, b) in &dice {
        let _ = writeln!(s, r#"<circle cx="{a:.1}" cy="{b:.1}" r="3" fill="{orange}"/>"#);
    }
    // Legend, top right inside the plot.
    let (lx, ly) = (left + pw - 170.0, top + 8.0);
    let rows = if dice.is_empty() { 1.0 } else { 2.0 };
    let _ = writeln!(
        s,
        r##"<rect class="legend" x="{lx:.1}" y="{ly:.1}" width="162" height="{:.1}" fill="white" fill-opacity="0.9" stroke="#888"/>"##,
        8.0 + 18.0 * rows
    );
    let _ = writeln!(
        s,
        r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{blue}" stroke-width="2"/><text x="{:.1}" y="{:.1}">training loss</text>"#,
        lx + 8.0,
        ly + 13.0,
        lx + 32.0,
        ly + 13.0,
        lx + 40.0,
        ly + 17.0
    );
    if !dice.is_empty() {
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{orange}" stroke-width="2"/><circle cx="{:.1}" cy="{:.1}" r="3" fill="{orange}"/><text x="{:.1}" y="{:.1}">validation Dice</text>"#,
            lx + 8.0,
            ly + 31.0,
            lx + 32.0,
            ly + 31.0,
            lx + 20.0,
            ly + 31.0,
            lx + 40.0,
            ly + 35.0
        );
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
    fn snapshots_are_named_beside_the_checkpoint_and_sort_by_step() {
        let out = Path::new("runs/x/ckpt.safetensors");
        assert_eq!(snapshot_path(out, 5, 1500), Path::new("runs/x/ckpt.safetensors.step-0005.safetensors"));
        assert_eq!(snapshot_path(out, 1500, 1500), Path::new("runs/x/ckpt.safetensors.step-1500.safetensors"));
        assert_eq!(snapshot_path(Path::new("c"), 3, 9), Path::new("c.step-3.safetensors"));
        let dir = std::env::temp_dir().join(format!("vlsa-snapshots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("c.safetensors");
        for name in [
            "c.safetensors.step-20.safetensors",
            "c.safetensors.step-10.safetensors",
            "c.safetensors.step-.safetensors",
            "c.safetensors.step-1x.safetensors",
            "d.safetensors.step-10.safetensors",
            "c.safetensors.log.csv",
        ] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        let found = existing_snapshots(&out);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            found,
            vec![dir.join("c.safetensors.step-10.safetensors"), dir.join("c.safetensors.step-20.safetensors")]
        );
    }

    #[test]
    fn the_first_steps_spike_clips_the_loss_axis() {
        // Loss 9 at step 1, then around 1: the axis ends just above the rest, said on the axis.
        let log: Vec<LogEntry> = (1..=50)
            .map(|step| LogEntry {
                step,
                loss: if step == 1 { 9.0 } else { 1.0 - step as f32 * 0.01 },
                lr: 1e-3,
                val_dice: None,
            })
            .collect();
        let svg = curve_svg(&log);
        assert!(svg.contains("axis clipped at 1.5; the first steps reach 9.000"), "{svg}");
        assert!(!svg.contains(">validation Dice</text><"), "no Dice entry in the legend without Dice values");
        // Ticks are round numbers: 0, 0.5, 1.0, 1.5 on the loss axis; 0, 10, ... 50 steps.
        for tick in [">0.0<", ">0.5<", ">1.5<", ">10<", ">50<"] {
            assert!(svg.contains(tick), "tick {tick}");
        }
        // Without a spike nothing is clipped.
        let flat: Vec<LogEntry> = (1..=50).map(|step| LogEntry { step, loss: 2.0, lr: 1e-3, val_dice: None }).collect();
        assert!(!curve_svg(&flat).contains("clipped"));
        assert_eq!(nice_step(7.3, 5.0), 2.0);
        assert_eq!(tick_label(0.25, 0.05), "0.25");
    }

    #[test]
    fn csv_and_svg_hold_every_entry() {
        let log = vec![
            LogEntry { step: 1, loss: 1.5, lr: 1e-4, val_dice: None },
            LogEntry { step: 2, loss: 1.25, lr: 2e-4, val_dice: Some(0.5) },
        ];
        assert_eq!(log_csv(&log), "step,loss,lr,val_dice\n1,1.500000,1.000000e-4,\n2,1.250000,2.000000e-4,0.500000\n");
        let svg = curve_svg(&log);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 2, "one Dice point and its legend mark");
        assert!(svg.contains(">training loss</text>") && svg.contains(">validation Dice</text>"), "a legend");
        assert_eq!(format_duration(3725.0), "1:02:05");
        let (csv, svg) = side_paths(Path::new("out/m.safetensors"));
        assert_eq!(csv, Path::new("out/m.safetensors.log.csv"));
        assert_eq!(svg, Path::new("out/m.safetensors.curve.svg"));
    }
}
