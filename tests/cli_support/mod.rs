//! Running the real `vlsa` binary in tests: a temporary folder, a tiny model made by `vlsa init`,
//! tiny `vlsa synth` data sets, and checks that an error is one sentence without a panic.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A tiny fundus-like model configuration (3 classes, 32 px, one layer each).
pub const CONFIG: &str = r#"{"image_size": 32, "patch_size": 8,
  "vision": {"width": 32, "layers": 1, "heads": 2},
  "text_dim": 8, "classes": ["background", "optic disc", "optic cup"],
  "decoder": {"width": 16, "layers": 1, "heads": 2}, "em": {"bases": 4}}"#;

/// The binary, ready for arguments.
pub fn command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vlsa"))
}

/// Runs `vlsa args` to completion.
pub fn run(args: &[&str]) -> Output {
    command().args(args).output().unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `vlsa args`, which must succeed; returns its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "vlsa {args:?} failed: {}", text(&out.stderr));
    text(&out.stdout)
}

/// Runs `vlsa args`, which must fail with exit code 1 and one sentence on stderr; returns it.
pub fn fails(args: &[&str]) -> String {
    let out = run(args);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "vlsa {args:?} should fail with exit code 1: {stderr}");
    one_sentence(&stderr)
}

/// Asserts that the last line of stderr is one `vlsa: ` sentence and that nothing panicked.
pub fn one_sentence(stderr: &str) -> String {
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("vlsa: "), "one sentence: {stderr}");
    last
}

/// A temporary folder, removed when dropped.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("vlsa-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }

    pub fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the tiny configuration (or `config`) and a model of it; returns the model's path.
pub fn model_with(dir: &Dir, config: &str) -> String {
    std::fs::write(dir.join("cfg.json"), config).unwrap();
    ok(&["init", "--config", &dir.path("cfg.json"), "--out", &dir.path("m.safetensors"), "--seed", "3"]);
    dir.path("m.safetensors")
}

pub fn model(dir: &Dir) -> String {
    model_with(dir, CONFIG)
}

/// A fundus data set of `count` 32 px images in `dir/name`; returns its path.
pub fn synth(dir: &Dir, name: &str, count: usize, seed: u64) -> String {
    let out = dir.path(name);
    ok(&[
        "synth",
        "--task",
        "fundus",
        "--domain",
        "A",
        "--count",
        &count.to_string(),
        "--size",
        "32",
        "--out",
        &out,
        "--seed",
        &seed.to_string(),
    ]);
    out
}

/// The step a checkpoint holds (from its training state).
pub fn checkpoint_step(path: &Path) -> usize {
    let file = vlsa::weights::TensorFile::read(path).unwrap();
    let state: serde_json::Value = serde_json::from_str(&file.metadata[vlsa::model::CHECKPOINT_KEY]).unwrap();
    state["step"].as_u64().unwrap() as usize
}
