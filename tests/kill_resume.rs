//! Interrupted training: the real `vlsa train` binary, writing a checkpoint after every step, is
//! killed with SIGKILL at seeded random moments and resumed, round after round. After every kill
//! the checkpoint at `--out` is absent (killed before the first) or complete: it parses, loads as
//! a model and as a training checkpoint, and its step never goes back. The run finished by
//! `--resume` ends with the same tensors, bit for bit, as an uninterrupted run with the same
//! seed, and the temporary files of killed writes (`.NAME.tmp-PID`) do not pile up.
//!
//! `VLSA_KILL_SEED=S` picks the kill moments (default 1), `VLSA_KILL_ROUNDS=N` their number
//! (default 16).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vlsa::model::{Model, CHECKPOINT_KEY};
use vlsa::weights::TensorFile;

const STEPS: usize = 30;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vlsa-kill-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `vlsa train ... --resume` on the tiny config, writing a checkpoint after every step.
fn train(dir: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vlsa"));
    c.args(["train", "--config"]).arg(dir.join("tiny.json")).arg("--data").arg(dir.join("data"));
    c.args([
        "--steps",
        &STEPS.to_string(),
        "--batch",
        "2",
        "--seed",
        "3",
        "--checkpoint-every",
        "1",
        "--resume",
        "--out",
    ])
    .arg(out);
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

/// The checkpoint's step, after checking it parses and loads both as a model and as a checkpoint.
fn check_checkpoint(path: &Path, what: &str) -> usize {
    let gpu = common::gpu();
    let file = TensorFile::read(path).unwrap_or_else(|e| panic!("{what}: the checkpoint does not parse: {e}"));
    Model::load(gpu, path).unwrap_or_else(|e| panic!("{what}: the checkpoint does not load as a model: {e}"));
    Model::load_checkpoint(gpu, path)
        .unwrap_or_else(|e| panic!("{what}: the checkpoint does not load as a checkpoint: {e}"));
    let state: serde_json::Value = serde_json::from_str(&file.metadata[CHECKPOINT_KEY]).unwrap();
    state["step"].as_u64().unwrap() as usize
}

/// The temporary files in `dir`; panics on any file that is neither one of the run's outputs nor
/// a temporary file of one of them.
fn temporaries(dir: &Path, out_name: &str) -> Vec<String> {
    let mut temps = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let outputs = [out_name.to_string(), format!("{out_name}.log.csv"), format!("{out_name}.curve.svg")];
        if outputs.contains(&name) {
            continue;
        }
        let own = outputs
            .iter()
            .any(|o| name.strip_prefix(&format!(".{o}.tmp-")).is_some_and(|pid| pid.parse::<u32>().is_ok()));
        assert!(own, "unexpected file {name} next to the checkpoint");
        temps.push(name);
    }
    temps
}

#[test]
fn killed_training_resumes_to_the_same_weights() {
    let seed: u64 = std::env::var("VLSA_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let rounds: usize = std::env::var("VLSA_KILL_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(16);
    let dir = temp_dir("run");
    common::squares(&dir.join("data"), 4, 20, 5);
    std::fs::write(
        dir.join("tiny.json"),
        r#"{"image_size": 16, "patch_size": 8, "vision": {"width": 8, "layers": 1, "heads": 1}, "text_dim": 4,
            "classes": ["background", "square"], "decoder": {"width": 8, "layers": 1, "heads": 1}, "em": {"bases": 2}}"#,
    )
    .unwrap();

    // The uninterrupted run, timed to place the kills.
    let reference_dir = dir.join("reference");
    std::fs::create_dir_all(&reference_dir).unwrap();
    let reference = reference_dir.join("ckpt.safetensors");
    let clock = Instant::now();
    let done = train(&dir, &reference).output().unwrap();
    let full = clock.elapsed();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert_eq!(check_checkpoint(&reference, "reference"), STEPS);

    // Killed runs: each round starts `--resume` and kills it after a random delay within the
    // uninterrupted run's duration; after a kill the checkpoint is absent or complete.
    let killed_dir = dir.join("killed");
    std::fs::create_dir_all(&killed_dir).unwrap();
    let out = killed_dir.join("ckpt.safetensors");
    let mut rng = common::Rng::new(seed);
    let step_time = full / STEPS as u32;
    let (mut kills, mut finished, mut step, mut most_temporaries, mut torn_writes) = (0, 0, 0, 0, 0);
    let mut steps_seen = Vec::new();
    for round in 0..rounds {
        let mut child = train(&dir, &out).spawn().unwrap();
        let temporary = killed_dir.join(format!(".ckpt.safetensors.tmp-{}", child.id()));
        let started = Instant::now();
        let wait_until = |child: &mut std::process::Child, cond: &dyn Fn() -> bool| {
            while !cond() && child.try_wait().unwrap().is_none() && started.elapsed() < full * 2 {
                std::thread::sleep(Duration::from_micros(50));
            }
        };
        // Three kinds of moment: early in the run (startup included); a random moment of
        // the step after the next checkpoint lands; the moment a checkpoint's temporary file
        // appears, i.e. inside the write.
        let mode = rng.below(3);
        let what = match mode {
            0 => {
                // Within a quarter of the whole run (mostly startup and the first steps), so
                // the rounds do not reach the end too soon.
                let delay = Duration::from_micros(rng.below(full.as_micros() as usize / 4 + 1) as u64);
                std::thread::sleep(delay);
                format!("killed {delay:?} after the start")
            }
            1 => {
                let before = std::fs::metadata(&out).map(|m| m.ino()).ok();
                wait_until(&mut child, &|| std::fs::metadata(&out).map(|m| m.ino()).ok() != before);
                let delay = Duration::from_micros(rng.below(step_time.as_micros() as usize + 1) as u64);
                std::thread::sleep(delay);
                format!("killed {delay:?} after a checkpoint landed")
            }
            _ => {
                wait_until(&mut child, &|| temporary.exists());
                "killed when a checkpoint write began".to_string()
            }
        };
        let what = format!("seed {seed} round {round} ({what})");
        if child.try_wait().unwrap().is_some() {
            finished += 1;
        } else {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        let temps = temporaries(&killed_dir, "ckpt.safetensors");
        // This run's temporary checkpoint still there: the kill landed inside its write.
        torn_writes += temporary.exists() as usize;
        most_temporaries = most_temporaries.max(temps.len());
        if out.exists() {
            let now = check_checkpoint(&out, &what);
            assert!(now >= step, "{what}: the checkpoint went back from step {step} to {now}");
            step = now;
        }
        steps_seen.push(step);
        if step == STEPS {
            break;
        }
    }
    // Each killed write leaves one temporary file; the next write of the same file removes it.
    assert!(most_temporaries <= 2, "temporary files pile up: {most_temporaries} after one kill");
    let rest = train(&dir, &out).output().unwrap();
    assert!(rest.status.success(), "{}", String::from_utf8_lossy(&rest.stderr));
    assert_eq!(check_checkpoint(&out, "resumed"), STEPS);
    assert_eq!(
        temporaries(&killed_dir, "ckpt.safetensors"),
        Vec::<String>::new(),
        "a finished run leaves no temporary file"
    );

    // Bit for bit: every tensor (weights and optimizer moments) and the training state.
    let (a, b) = (TensorFile::read(&reference).unwrap(), TensorFile::read(&out).unwrap());
    assert_eq!(a.tensors.keys().collect::<Vec<_>>(), b.tensors.keys().collect::<Vec<_>>());
    for (name, t) in &a.tensors {
        let u = &b.tensors[name];
        assert_eq!(t.shape, u.shape, "{name}");
        let differ = t.data.iter().zip(&u.data).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
        assert_eq!(differ, 0, "{name}: {differ} of {} values differ from the uninterrupted run (seed {seed}, steps at each kill {steps_seen:?})", t.data.len());
    }
    assert_eq!(a.metadata, b.metadata, "the training state (log, options) differs from the uninterrupted run");
    println!(
        "uninterrupted run {full:?}; {kills} kills ({torn_writes} inside a checkpoint write, leaving its temporary file), {finished} rounds finished before the kill; checkpoint step after each round {steps_seen:?}; {} tensors identical",
        a.tensors.len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
