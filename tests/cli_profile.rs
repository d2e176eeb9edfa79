//! `vlsa profile matmul` through the real binary: one line per kernel path naming the entry
//! point that ran with its time and "N GFLOP/s", and one-sentence errors for bad values; and
//! `vlsa profile em --iteration`.

use std::process::Command;

fn vlsa(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vlsa")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn profile(extra: &[&str]) -> (bool, String, String) {
    let mut args = vec!["profile", "matmul", "--m", "33", "--n", "20", "--k", "17", "--iters", "2"];
    args.extend_from_slice(extra);
    vlsa(&args)
}

/// Lines that report a path: `PATH ENTRY ... ms ... GFLOP/s (FASTEST-SLOWEST ms)`.
fn path_lines(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|l| l.contains(" GFLOP/s ")).collect()
}

#[test]
fn every_path_gets_one_line_with_its_entry_point_and_gflops() {
    let (ok, stdout, stderr) = profile(&["--layout", "nt", "--batch", "2", "--path", "all"]);
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("matmul A [2, 33, 17] x B [2, 20, 17]^T -> [2, 33, 20]"), "{stdout}");
    assert!(stdout.contains("timing: "), "{stdout}");
    let lines = path_lines(&stdout);
    // registers and tiled run everywhere; subgroup where the adapter has subgroups.
    assert!(lines.len() == 2 || lines.len() == 3, "{stdout}");
    let registers = lines.iter().find(|l| l.starts_with("registers ")).expect("a registers line");
    // 33 x 20 with K = 17 is not vec4-aligned: the general kernel runs.
    assert!(registers.contains("registers_general"), "{registers}");
    let tiled = lines.iter().find(|l| l.starts_with("tiled ")).expect("a tiled line");
    assert!(tiled.contains("tiled_general") || tiled.contains("registers_general"), "{tiled}");
    for line in &lines {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let ms = fields.iter().position(|f| *f == "ms").expect("a time in ms");
        let time: f64 = fields[ms - 1].parse().unwrap();
        let gflops: f64 = fields[ms + 1].parse().unwrap();
        assert!(time > 0.0 && gflops > 0.0, "{line}");
        assert_eq!(fields[ms + 2], "GFLOP/s", "{line}");
        // The fastest and slowest product bracket the mean.
        let range = fields[ms + 3].trim_start_matches('(');
        let (lo, hi) = range.split_once('-').expect("a fastest-slowest range");
        let (lo, hi): (f64, f64) = (lo.parse().unwrap(), hi.parse().unwrap());
        assert!(lo <= time + 5e-4 && time <= hi + 5e-4 && fields[ms + 4].starts_with("ms)"), "{line}");
    }
}

#[test]
fn one_path_gets_one_line() {
    let (ok, stdout, stderr) = profile(&["--layout", "tn", "--path", "registers"]);
    assert!(ok, "{stderr}");
    let lines = path_lines(&stdout);
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(lines[0].starts_with("registers ") && lines[0].contains("registers_general"), "{stdout}");
}

#[test]
fn bad_values_are_one_sentence_errors() {
    for (extra, want) in [
        (vec!["--layout", "xy"], "--layout xy is not one of nn, nt, tn, tt"),
        (vec!["--path", "fast"], "--path fast is not one of registers, subgroup, tiled, all"),
        (vec!["--batch", "0"], "--batch must be at least 1"),
    ] {
        let (ok, stdout, stderr) = profile(&extra);
        assert!(!ok, "{extra:?} succeeded: {stdout}");
        // One error line from vlsa (the driver may print its own notices around it).
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("vlsa: ")).collect();
        assert_eq!(errors.len(), 1, "{extra:?}: {stderr}");
        assert!(errors[0].contains(want) && errors[0].ends_with(|c: char| c.is_alphanumeric()), "{extra:?}: {stderr}");
    }
    let (ok, _, stderr) = vlsa(&["profile", "matmul", "--m", "0", "--n", "4", "--k", "4"]);
    assert!(!ok && stderr.contains("--m must be at least 1"), "{stderr}");
    let (ok, _, stderr) = vlsa(&["profile", "matmul", "--m", "4", "--n", "4", "--k", "4", "--iters", "0"]);
    assert!(!ok && stderr.contains("--iters must be at least 1"), "{stderr}");
}

#[test]
fn em_profile_runs_either_iteration_on_request() {
    let em = |iteration: &str| {
        vlsa(&[
            "profile",
            "em",
            "--tokens",
            "70",
            "--width",
            "9",
            "--bases",
            "5",
            "--iters",
            "2",
            "--iteration",
            iteration,
        ])
    };
    let (ok, stdout, stderr) = em("two-pass");
    assert!(ok, "{stderr}");
    // Each iteration is one row of two dispatches.
    let rows: Vec<&str> = stdout.lines().filter(|l| l.contains("em_fused")).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(rows.iter().all(|r| r.split_whitespace().nth(2) == Some("2")), "{stdout}");
    let (ok, stdout, stderr) = em("per-step");
    assert!(ok && stdout.contains("em_e_step") && !stdout.contains("em_fused"), "{stdout}{stderr}");
    let (ok, _, stderr) = em("fast");
    assert!(!ok && stderr.contains("--iteration fast is not one of auto, two-pass, per-step"), "{stderr}");
}
