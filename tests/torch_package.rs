//! Runs the tests of the PyTorch package (python/tests) from `cargo test`, so CI's one test
//! command covers them: the package against the reference fixtures, two-process DDP training
//! on the CPU (gloo) whose result `vlsa eval` and `vlsa forward --dump` check, DDP with two
//! processes against one, and a `vlsa train` checkpoint fine-tuned in the package.
//!
//! They need Python with torch, safetensors, numpy and pillow (`.ci/run` installs them; the
//! interpreter is `VLSA_PYTHON`, else `python3`). Without them the test says why and skips;
//! in CI (`CI=true`) that is a failure, so CI can never pass without running them.

use std::path::Path;
use std::process::Command;

fn python() -> String {
    std::env::var("VLSA_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Why the package's tests cannot run here, if they cannot.
fn missing_requirements(python: &str) -> Option<String> {
    let probe = Command::new(python).args(["-c", "import torch, safetensors, numpy, PIL"]).output();
    match probe {
        Err(e) => Some(format!("cannot run {python} ({e})")),
        Ok(out) if !out.status.success() => Some(format!(
            "{python} cannot import torch, safetensors, numpy and pillow: {}",
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
        )),
        Ok(_) => None,
    }
}

#[test]
fn pytorch_package_tests_pass() {
    let python = python();
    if let Some(why) = missing_requirements(&python) {
        let ci = std::env::var("CI").map(|v| matches!(v.as_str(), "true" | "1" | "yes")).unwrap_or(false);
        assert!(!ci, "CI must run the PyTorch package tests, but {why} (.ci/run installs them)");
        eprintln!("skipping the PyTorch package tests: {why}");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(&python)
        .args(["-m", "unittest", "discover", "-s", "python/tests", "-t", "python", "-v"])
        .current_dir(root)
        .env("VLSA_BIN", env!("CARGO_BIN_EXE_vlsa"))
        .env("PYTHONPATH", root.join("python"))
        .output()
        .expect("python runs");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{report}");
    assert!(out.status.success(), "the PyTorch package tests failed (output above)");
    assert!(!report.contains("skipped"), "no PyTorch package test may skip here (output above)");
}
