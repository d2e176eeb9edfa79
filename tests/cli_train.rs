//! `vlsa train` from the command line: outputs checked before the first step, no silent
//! replacement of a run, Ctrl-C (SIGINT, SIGTERM) writing a checkpoint that resumes, values that
//! make no sense refused, `--text-encoder` re-embedding the prompts, a validation set without
//! foreground refused, the curve's legend, and `vlsa average` of a run's snapshots.

mod cli_support;

use std::io::BufRead;
use std::time::Duration;

use cli_support::*;

fn train_args<'a>(cfg: &'a str, data: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec!["train", "--config", cfg, "--data", data, "--steps", steps, "--batch", "2", "--out", out]
}

#[test]
fn outputs_are_checked_before_the_first_step() {
    let dir = Dir::new("train-outputs");
    model(&dir);
    let data = synth(&dir, "data", 4, 1);
    let cfg = dir.path("cfg.json");
    // Missing folders are made, as `segment` does.
    let out = dir.path("run/sub/s.safetensors");
    ok(&train_args(&cfg, &data, &out, "1"));
    assert!(dir.join("run/sub/s.safetensors").is_file() && dir.join("run/sub/s.safetensors.curve.svg").is_file());
    // A folder that cannot be made, a folder as --out, or an --export that cannot be written:
    // refused before any training.
    std::fs::write(dir.join("blocker"), b"a file").unwrap();
    for (args, flag) in [
        (train_args(&cfg, &data, &dir.path("blocker/s.safetensors"), "5"), "--out"),
        (train_args(&cfg, &data, &dir.path("run"), "5"), "--out"),
        (
            [train_args(&cfg, &data, &dir.path("t.safetensors"), "5"), vec!["--export", &dir.path("blocker/m.st")]]
                .concat(),
            "--export",
        ),
    ] {
        let out = run(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let e = one_sentence(&stderr);
        assert!(e.contains(flag), "{e}");
        assert!(!stderr.contains("training "), "no step was started: {stderr}");
    }
    assert!(!dir.join("t.safetensors").exists());
}

#[test]
fn an_existing_run_is_replaced_only_with_force() {
    let dir = Dir::new("train-force");
    model(&dir);
    let data = synth(&dir, "data", 4, 1);
    let val = synth(&dir, "val", 2, 9);
    let cfg = dir.path("cfg.json");
    let out = dir.path("s.safetensors");
    let mut first = train_args(&cfg, &data, &out, "2");
    first.extend(["--val", &val, "--val-every", "1"]);
    ok(&first);
    let before = std::fs::read(&out).unwrap();
    let e = fails(&train_args(&cfg, &data, &out, "2"));
    assert!(e.contains("already exists") && e.contains("--resume") && e.contains("--force"), "{e}");
    assert_eq!(std::fs::read(&out).unwrap(), before, "the checkpoint is untouched");
    // A resumed run's options must agree; the error names the flag and both values.
    let e = fails(&[train_args(&cfg, &data, &out, "2"), vec!["--resume", "--lr", "0.002"]].concat());
    assert!(e.contains("--lr 0.002 differs from the 0.001"), "{e}");
    let e = fails(&[train_args(&cfg, &data, &out, "2"), vec!["--resume", "--no-augment"]].concat());
    assert!(e.contains("--no-augment differs from the augmentation"), "{e}");
    let e = fails(&[train_args(&cfg, &data, &out, "2"), vec!["--resume", "--focus-crops", "0.5"]].concat());
    assert!(e.contains("--focus-crops 0.5 differs from the 0"), "{e}");
    let e = fails(&[train_args(&cfg, &data, &out, "2"), vec!["--resume", "--low-end", "0.4"]].concat());
    assert!(e.contains("--low-end 0.4 differs from the 0"), "{e}");
    // Focus crops are a fraction, and part of the augmentation.
    let other = dir.path("f.safetensors");
    let e = fails(&[train_args(&cfg, &data, &other, "2"), vec!["--focus-crops", "1.5"]].concat());
    assert!(e.contains("--focus-crops 1.5"), "{e}");
    let e = fails(&[train_args(&cfg, &data, &other, "2"), vec!["--focus-crops", "0.5", "--no-augment"]].concat());
    assert!(e.contains("--focus-crops") && e.contains("--no-augment"), "{e}");
    // So is the share of low-end devices, part of the domain randomization.
    let e = fails(&[train_args(&cfg, &data, &other, "2"), vec!["--low-end", "-0.1"]].concat());
    assert!(e.contains("--low-end -0.1 must be a fraction"), "{e}");
    let e = fails(&[train_args(&cfg, &data, &other, "2"), vec!["--low-end", "0.4", "--no-randomize"]].concat());
    assert!(e.contains("--low-end") && e.contains("--no-randomize"), "{e}");
    // --resume and --force together are a usage error (exit 2).
    let both = run(&[train_args(&cfg, &data, &out, "2"), vec!["--resume", "--force"]].concat());
    assert_eq!(both.status.code(), Some(2));
    ok(&[train_args(&cfg, &data, &out, "1"), vec!["--force"]].concat());
    assert_eq!(checkpoint_step(std::path::Path::new(&out)), 1, "replaced by the new run");
    // The curve of the first run has a legend with both series.
    let mut second = train_args(&cfg, &data, &out, "2");
    second.extend(["--val", &val, "--val-every", "1", "--force"]);
    ok(&second);
    let svg = std::fs::read_to_string(format!("{out}.curve.svg")).unwrap();
    assert!(svg.contains(r#"class="legend""#), "{svg}");
    assert!(svg.contains(">training loss</text>") && svg.contains(">validation Dice</text>"), "{svg}");
}

#[test]
fn values_that_make_no_sense_are_refused() {
    let dir = Dir::new("train-values");
    model(&dir);
    let data = synth(&dir, "data", 4, 1);
    let cfg = dir.path("cfg.json");
    let out = dir.path("s.safetensors");
    let base = train_args(&cfg, &data, &out, "2");
    let e = fails(&[base.clone(), vec!["--lr", "-1"]].concat());
    assert!(e.contains("--lr -1 must be a positive number"), "{e}");
    let e = fails(&[base.clone(), vec!["--stop-at", "5"]].concat());
    assert!(e.contains("--stop-at 5 is beyond the 2 steps"), "{e}");
    let e = fails(&["train", "--config", &cfg, "--data", &data, "--steps", "2", "--batch", "100", "--out", &out]);
    assert!(e.contains("larger than the 4 images"), "{e}");
    for flag in ["--val-every", "--checkpoint-every", "--stop-at"] {
        let out = run(&[base.clone(), vec![flag, "0"]].concat());
        assert_eq!(out.status.code(), Some(2), "{flag} 0 is a usage error: {}", text(&out.stderr));
    }
    // A validation set whose masks are all background has no Dice: refused, not scored 1.
    let val = synth(&dir, "val", 2, 9);
    for entry in std::fs::read_dir(dir.join("val/masks")).unwrap() {
        let path = entry.unwrap().path();
        let m = vlsa::image_io::Mask::load(&path, None).unwrap();
        vlsa::image_io::Mask { labels: vec![0; m.labels.len()], ..m }.save_png(&path).unwrap();
    }
    let e = fails(&[base, vec!["--val", &val]].concat());
    assert!(e.contains("no foreground in the validation set"), "{e}");
    assert!(!dir.join("s.safetensors").exists(), "nothing was trained");
}

/// Starts `vlsa train` for many steps and returns it with a channel of its stderr lines.
#[cfg(unix)]
fn start_long_run(args: &[&str]) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = command().args(args).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (send, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    (child, lines)
}

#[cfg(unix)]
fn signal(child: &std::process::Child, name: &str) {
    let status = std::process::Command::new("kill").args([&format!("-{name}"), &child.id().to_string()]).status();
    assert!(status.unwrap().success());
}

/// Waits for a stderr line containing `needle`; returns every line read so far.
#[cfg(unix)]
fn wait_for(lines: &std::sync::mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) {
    while !seen.iter().any(|l| l.contains(needle)) {
        match lines.recv_timeout(Duration::from_secs(300)) {
            Ok(l) => seen.push(l),
            Err(e) => panic!("no line with {needle:?} ({e}); stderr so far: {seen:#?}"),
        }
    }
}

#[cfg(unix)]
#[test]
fn ctrl_c_writes_a_checkpoint_that_resumes() {
    let dir = Dir::new("train-sigint");
    model(&dir);
    let data = synth(&dir, "data", 4, 1);
    let cfg = dir.path("cfg.json");
    let out = dir.path("s.safetensors");
    let mut args = train_args(&cfg, &data, &out, "500");
    args.extend(["--checkpoint-every", "500", "--log-every", "1"]);
    let (mut child, lines) = start_long_run(&args);
    let mut seen = Vec::new();
    wait_for(&lines, "step 2/500", &mut seen);
    signal(&child, "INT");
    let status = child.wait().unwrap();
    seen.extend(lines.iter());
    let stderr = seen.join("\n");
    assert_eq!(status.code(), Some(130), "{stderr}");
    let last = one_sentence(&stderr);
    assert!(last.contains("interrupted") && last.contains("--resume"), "{last}");
    assert!(stderr.contains("stopping after this step"), "{stderr}");
    let step = checkpoint_step(std::path::Path::new(&out));
    assert!(step >= 2 && last.contains(&format!("step {step} of 500")), "{last}");
    // The same command with --resume continues from that step.
    let stdout = ok(&[args.clone(), vec!["--resume", "--stop-at", &(step + 1).to_string()]].concat());
    assert!(stdout.contains(&format!("steps {}..{} of 500", step + 1, step + 1)), "{stdout}");
    assert_eq!(checkpoint_step(std::path::Path::new(&out)), step + 1);

    // A second signal ends the program at once (SIGTERM counts as the first).
    let out2 = dir.path("t.safetensors");
    let mut args = train_args(&cfg, &data, &out2, "500");
    args.extend(["--checkpoint-every", "500", "--log-every", "1"]);
    let (mut child, lines) = start_long_run(&args);
    let mut seen = Vec::new();
    wait_for(&lines, "step 1/500", &mut seen);
    signal(&child, "TERM");
    wait_for(&lines, "stopping after this step", &mut seen);
    signal(&child, "INT");
    let status = child.wait().unwrap();
    seen.extend(lines.iter());
    assert_eq!(status.code(), Some(130), "{seen:#?}");
    assert!(!seen.iter().any(|l| l.contains("panicked")), "{seen:#?}");
}

#[test]
fn text_encoder_re_embeds_the_configuration_prompts() {
    let minilm = std::env::var_os("VLSA_MINILM_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/minilm"));
    if !minilm.join("model.safetensors").is_file() {
        eprintln!("skipped: no MiniLM at {} (run scripts/fetch-minilm.sh)", minilm.display());
        return;
    }
    let dir = Dir::new("train-text");
    let config = cli_support::CONFIG.replace(r#""text_dim": 8"#, r#""text_dim": 384"#);
    model_with(&dir, &config);
    let data = synth(&dir, "data", 4, 1);
    let cfg = dir.path("cfg.json");
    let te = minilm.display().to_string();
    ok(&["init", "--config", &cfg, "--out", &dir.path("embedded.safetensors"), "--text-encoder", &te]);
    let out = dir.path("s.safetensors");
    let run = run(&[train_args(&cfg, &data, &out, "1"), vec!["--text-encoder", &te]].concat());
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(text(&run.stderr).contains("3 prompts embedded"), "{}", text(&run.stderr));
    let read = |p: &str| vlsa::weights::TensorFile::read(std::path::Path::new(p)).unwrap();
    let name = "text.class_embeddings";
    let trained = &read(&out).tensors[name];
    assert_eq!(trained.shape, vec![3, 384]);
    assert_eq!(trained.data, read(&dir.path("embedded.safetensors")).tensors[name].data, "as init embeds them");
    assert_ne!(trained.data, read(&dir.path("m.safetensors")).tensors[name].data, "not the random ones");
}

#[test]
fn snapshots_of_one_run_average_to_a_model() {
    let dir = Dir::new("train-average");
    model(&dir);
    let data = synth(&dir, "data", 4, 1);
    let cfg = dir.path("cfg.json");
    let out = dir.path("s.safetensors");
    // One run keeps the model of every second step; the checkpoint holds optimizer state too.
    ok(&[train_args(&cfg, &data, &out, "4"), vec!["--keep-every", "2"]].concat());
    let (step2, step4) = (dir.path("s.safetensors.step-2.safetensors"), dir.path("s.safetensors.step-4.safetensors"));
    assert!(
        !dir.join("s.safetensors.step-1.safetensors").exists()
            && !dir.join("s.safetensors.step-3.safetensors").exists()
    );
    let read = |p: &str| vlsa::weights::TensorFile::read(std::path::Path::new(p)).unwrap();
    let (a, b) = (read(&step2), read(&step4));
    assert!(a.tensors.keys().all(|n| !n.starts_with("optim.")) && !a.metadata.contains_key("vlsa.checkpoint"));
    // A snapshot is the run's weights at its step: those of the same run stopped there.
    let stopped = dir.path("stopped.safetensors");
    ok(&[train_args(&cfg, &data, &stopped, "4"), vec!["--stop-at", "2"]].concat());
    let name = "vision_model.encoder.layers.0.mlp.fc1.weight";
    assert_eq!(read(&stopped).tensors[name].data, a.tensors[name].data);
    assert_ne!(a.tensors[name].data, b.tensors[name].data, "the snapshots differ");

    // Their average, from a snapshot and a checkpoint (whose optimizer state is left out).
    let avg = dir.path("avg.safetensors");
    let said = ok(&["average", "--model", &step2, &out, "--out", &avg]);
    assert!(said.contains("the mean of 2 files"), "{said}");
    let m = read(&avg);
    assert!(m.tensors.keys().all(|n| !n.starts_with("optim.")), "the optimizer state is left out");
    assert!(!m.metadata.contains_key("vlsa.checkpoint"), "a model, not a checkpoint");
    for ((x, y), z) in a.tensors[name].data.iter().zip(&b.tensors[name].data).zip(&m.tensors[name].data) {
        assert!((z - (x + y) / 2.0).abs() <= 1e-7 * (1.0 + z.abs()), "{z} is not the mean of {x} and {y}");
    }
    let bases = &m.tensors["head.em.bases"];
    for row in bases.data.chunks(bases.shape[1]) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "bases rows stay unit length: {norm}");
    }
    // The average is a model every command loads.
    let eval = ok(&["eval", "--model", &avg, "--data", &data, "--quiet"]);
    assert!(eval.contains("mean"), "{eval}");

    // One file, files of two configurations, a missing file: one sentence, nothing written.
    let e = fails(&["average", "--model", &step2, "--out", &dir.path("one.safetensors")]);
    assert!(e.contains("give at least two"), "{e}");
    let other = dir.path("other.safetensors");
    ok(&["init", "--config", &cfg, "--out", &other, "--shifts", "2"]);
    let e = fails(&["average", "--model", &step2, &other, "--out", &dir.path("two.safetensors")]);
    assert!(e.contains("has a different configuration from"), "{e}");
    let e = fails(&[
        "average",
        "--model",
        &step2,
        &dir.path("missing.safetensors"),
        "--out",
        &dir.path("three.safetensors"),
    ]);
    assert!(e.contains("missing.safetensors"), "{e}");
    assert!(!dir.join("one.safetensors").exists() && !dir.join("two.safetensors").exists());

    // A new run never mixes with an old run's snapshots: refused while they exist, and --force
    // removes them before its first step.
    for f in ["s.safetensors", "s.safetensors.log.csv", "s.safetensors.curve.svg"] {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    let e = fails(&train_args(&cfg, &data, &out, "1"));
    assert!(e.contains("s.safetensors.step-2.safetensors already exists") && e.contains("snapshots"), "{e}");
    let forced = run(&[train_args(&cfg, &data, &out, "1"), vec!["--force"]].concat());
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    assert!(text(&forced.stderr).contains("removed 2 snapshots"), "{}", text(&forced.stderr));
    assert!(
        !dir.join("s.safetensors.step-2.safetensors").exists()
            && !dir.join("s.safetensors.step-4.safetensors").exists()
    );
}
