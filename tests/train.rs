//! Training: the loss goes down, a resumed run is bit for bit the uninterrupted one, a
//! non-finite loss stops the run keeping the last good checkpoint, checkpoints load as models,
//! the ablation configurations train, and the `vlsa train` command does all of it from the shell.

mod common;

use std::path::{Path, PathBuf};

use vlsa::config::Config;
use vlsa::model::{expected_tensors, Model, CHECKPOINT_KEY};
use vlsa::train::{run, RunOptions, TrainOptions, Trainer};
use vlsa::weights::{HostTensor, TensorFile};

/// A small model: 32x32 input, 16 tokens, 2 classes.
fn tiny(bases: usize, cross_attn: bool) -> Config {
    Config::from_json(
        &format!(
            r#"{{"image_size": 32, "patch_size": 8, "vision": {{"width": 16, "layers": 1, "heads": 2}},
                "text_dim": 8, "classes": ["background", "square"],
                "decoder": {{"width": 16, "layers": 1, "heads": 2, "cross_attn": {cross_attn}}}, "em": {{"bases": {bases}}}}}"#
        ),
        "tiny",
    )
    .unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vlsa-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_options(out: &Path, checkpoint_every: usize, stop_at: Option<usize>) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        val_every: 1000,
        checkpoint_every,
        log_every: 1000,
        keep_every: None,
        stop_at,
        quiet: true,
        interrupt: None,
    }
}

fn mean(v: &[f32]) -> f32 {
    v.iter().sum::<f32>() / v.len() as f32
}

#[test]
fn loss_goes_down_on_bright_squares() {
    let gpu = common::gpu();
    let dir = temp_dir("down");
    let data = common::squares(&dir.join("data"), 8, 32, 1);
    let val = data.clone();
    let model = Model::init(gpu, tiny(4, true), 1).unwrap();
    let options = TrainOptions { batch: 4, lr: 1e-2, warmup: 2, augment: false, ..TrainOptions::new(24) };
    let mut trainer = Trainer::new(model, options, data).unwrap();
    let before = vlsa::train::validation_dice(&trainer.model, &val, 4).unwrap();
    let summary = run(&mut trainer, Some(&val), &run_options(&dir.join("m.safetensors"), 1000, None)).unwrap();
    let losses: Vec<f32> = trainer.log.iter().map(|e| e.loss).collect();
    assert_eq!(losses.len(), 24);
    let (first, last) = (mean(&losses[..4]), mean(&losses[20..]));
    assert!(last < 0.6 * first, "loss should fall: first steps {first}, last steps {last}: {losses:?}");
    let after = summary.val_dice.unwrap();
    assert!(after > 0.6 && after > before, "Dice on the squares: {before} before, {after} after");
    assert!(summary.dispatches_per_step > 50.0);
}

#[test]
fn resumed_run_is_bit_for_bit_the_uninterrupted_one() {
    let gpu = common::gpu();
    let dir = temp_dir("resume");
    // 5 images in batches of 3: batches straddle epochs, and augmentation is on, half the
    // samples cropped around their foreground and half the acquisitions by low-end devices.
    let data = common::squares(&dir.join("data"), 5, 24, 2);
    let options =
        TrainOptions { batch: 3, lr: 3e-3, warmup: 2, seed: 9, focus: 0.5, low_end: 0.5, ..TrainOptions::new(6) };
    let whole = dir.join("whole.safetensors");
    let mut a = Trainer::new(Model::init(gpu, tiny(4, true), 3).unwrap(), options.clone(), data.clone()).unwrap();
    run(&mut a, None, &run_options(&whole, 100, None)).unwrap();

    let parts = dir.join("parts.safetensors");
    let mut b = Trainer::new(Model::init(gpu, tiny(4, true), 3).unwrap(), options, data).unwrap();
    run(&mut b, None, &run_options(&parts, 100, Some(4))).unwrap();
    assert_eq!(b.step, 4);
    drop(b);
    let mut c = Trainer::resume(gpu, &parts, &dir.join("data")).unwrap();
    assert_eq!((c.step, c.saved_step), (4, Some(4)));
    run(&mut c, None, &run_options(&parts, 100, None)).unwrap();

    let (x, y) = (TensorFile::read(&whole).unwrap(), TensorFile::read(&parts).unwrap());
    assert_eq!(x.tensors.len(), y.tensors.len());
    for (name, t) in &x.tensors {
        let u = &y.tensors[name];
        let same = t.data.iter().zip(&u.data).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "{name} differs between the whole run and the resumed one");
    }
    assert!(x.tensors.contains_key("optim.m.head.logit_scale") && x.tensors.contains_key("head.em.bases"));
    assert_eq!(x.metadata[CHECKPOINT_KEY], y.metadata[CHECKPOINT_KEY], "same step, options and loss log");
    let bases_start = Model::init(gpu, tiny(4, true), 3).unwrap().get("head.em.bases").unwrap().to_vec().unwrap();
    assert_ne!(x.tensors["head.em.bases"].data, bases_start, "the EM bases moved");
}

#[test]
fn non_finite_loss_stops_and_keeps_the_last_good_checkpoint() {
    let gpu = common::gpu();
    let dir = temp_dir("nan");
    let data = common::squares(&dir.join("data"), 4, 24, 3);
    let out = dir.join("m.safetensors");
    let options = TrainOptions { batch: 2, lr: 1e-3, warmup: 0, ..TrainOptions::new(20) };
    let mut trainer = Trainer::new(Model::init(gpu, tiny(4, true), 4).unwrap(), options, data).unwrap();
    run(&mut trainer, None, &run_options(&out, 2, Some(2))).unwrap();
    let good = std::fs::read(&out).unwrap();
    // An absurd learning rate from here on: the weights blow up and the loss stops being finite.
    trainer.options.lr = 1e30;
    let e = run(&mut trainer, None, &run_options(&out, 2, None)).unwrap_err().to_string();
    assert!(e.contains("training stopped at step") && e.contains("not finite"), "{e}");
    assert!(e.contains("the last good checkpoint") && e.contains("(step 2) is kept"), "{e}");
    assert!(trainer.step < 20);
    assert_eq!(std::fs::read(&out).unwrap(), good, "the checkpoint on disk is untouched");
    let back = Trainer::resume(gpu, &out, &dir.join("data")).unwrap();
    assert_eq!(back.step, 2);
    assert_eq!(back.options.lr, 1e-3);
}

#[test]
fn checkpoints_load_as_models_and_plain_models_stay_strict() {
    let gpu = common::gpu();
    let dir = temp_dir("ckpt");
    let data = common::squares(&dir.join("data"), 3, 16, 4);
    let out = dir.join("c.safetensors");
    let mut trainer = Trainer::new(
        Model::init(gpu, tiny(4, true), 5).unwrap(),
        TrainOptions { batch: 2, ..TrainOptions::new(2) },
        data,
    )
    .unwrap();
    run(&mut trainer, None, &run_options(&out, 1, None)).unwrap();
    // The checkpoint is a model: the same tensors, optimizer state aside.
    let model = Model::load(gpu, &out).unwrap();
    for (name, t) in &trainer.model.tensors {
        assert_eq!(model.get(name).unwrap().to_vec().unwrap(), t.to_vec().unwrap(), "{name}");
    }
    let (_, rest) = Model::load_checkpoint(gpu, &out).unwrap();
    assert_eq!(rest.tensors.len(), 2 * trainer.model.parameters().count());
    assert!(rest.metadata.contains_key(CHECKPOINT_KEY));
    // The log and the curve are beside it.
    let csv = std::fs::read_to_string(dir.join("c.safetensors.log.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(std::fs::read_to_string(dir.join("c.safetensors.curve.svg")).unwrap().contains("<polyline"));
    // A plain model file with an optimizer tensor is still refused by name.
    let plain = dir.join("plain.safetensors");
    trainer.model.save(&plain, false).unwrap();
    let (_, rest) = Model::load_checkpoint(gpu, &plain).unwrap();
    assert!(rest.tensors.is_empty() && !rest.metadata.contains_key(CHECKPOINT_KEY));
    let mut file = TensorFile::read(&plain).unwrap();
    file.tensors.insert("optim.m.head.logit_scale".into(), HostTensor::new(&[1], vec![0.0]));
    file.write(&plain, false).unwrap();
    let e = Model::load(gpu, &plain).err().unwrap().to_string();
    assert!(e.contains("unexpected tensor optim.m.head.logit_scale"), "{e}");
    // Resuming from a model file, or on another data set, says what is wrong.
    trainer.model.save(&plain, false).unwrap();
    let e = Trainer::resume(gpu, &plain, &dir.join("data")).err().unwrap().to_string();
    assert!(e.contains("not a training checkpoint"), "{e}");
    common::squares(&dir.join("other"), 4, 16, 5);
    let e = Trainer::resume(gpu, &out, &dir.join("other")).err().unwrap().to_string();
    assert!(e.contains("is not the data set") && e.contains("4 images now, 3 then"), "{e}");
}

#[test]
fn ablation_configs_init_save_load_and_train() {
    let gpu = common::gpu();
    let dir = temp_dir("ablation");
    let data = common::squares(&dir.join("data"), 2, 16, 6);
    let full = expected_tensors(&tiny(4, true)).len();
    for (bases, cross_attn, missing) in [(0, true, 7), (4, false, 10), (0, false, 17)] {
        let config = tiny(bases, cross_attn);
        let names: Vec<String> = expected_tensors(&config).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), full - missing, "em.bases {bases}, cross_attn {cross_attn}");
        assert_eq!(names.iter().any(|n| n.contains("cross_attn") || n.contains(".norm2.")), cross_attn);
        assert_eq!(names.iter().any(|n| n.starts_with("head.em.")), bases > 0);
        let path = dir.join(format!("m{bases}{cross_attn}.safetensors"));
        Model::init(gpu, config.clone(), 1).unwrap().save(&path, false).unwrap();
        let model = Model::load(gpu, &path).unwrap();
        assert_eq!(model.config, config);
        let mut trainer = Trainer::new(model, TrainOptions { batch: 2, ..TrainOptions::new(2) }, data.clone()).unwrap();
        let before = trainer.model.get("head.decoder.layers.0.mlp.fc1.weight").unwrap().to_vec().unwrap();
        let e = trainer.step().unwrap();
        assert!(e.loss.is_finite());
        assert_ne!(
            trainer.model.get("head.decoder.layers.0.mlp.fc1.weight").unwrap().to_vec().unwrap(),
            before,
            "a step changes the weights"
        );
        trainer.save_checkpoint(&path).unwrap();
        assert_eq!(Trainer::resume(gpu, &path, &dir.join("data")).unwrap().step, 1);
    }
}

#[test]
fn the_train_command_checkpoints_stops_and_resumes() {
    let dir = temp_dir("cli");
    common::squares(&dir.join("data"), 4, 24, 7);
    let config = dir.join("tiny.json");
    std::fs::write(&config, tiny(4, true).to_json()).unwrap();
    let out = dir.join("ckpt.safetensors");
    let vlsa = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "train",
            "--config",
            config.to_str().unwrap(),
            "--data",
            dir.join("data").to_str().unwrap(),
            "--steps",
            "4",
            "--batch",
            "2",
            "--out",
            out.to_str().unwrap(),
            "--val",
            dir.join("data").to_str().unwrap(),
            "--val-every",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        std::process::Command::new(env!("CARGO_BIN_EXE_vlsa")).args(&args).output().unwrap()
    };
    let first = vlsa(&["--stop-at", "2"]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(stderr.contains("step 2/4") && stderr.contains("val Dice"), "{stderr}");
    let changed = vlsa(&["--resume", "--lr", "0.5"]);
    assert_eq!(changed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&changed.stderr);
    assert!(stderr.starts_with("vlsa: --lr 0.5 differs from the 0.001 the checkpoint"), "{stderr}");
    let export = dir.join("final.safetensors");
    let rest = vlsa(&["--resume", "--export", export.to_str().unwrap()]);
    assert!(rest.status.success(), "{}", String::from_utf8_lossy(&rest.stderr));
    let stdout = String::from_utf8_lossy(&rest.stdout);
    assert!(stdout.contains("steps 3..4 of 4") && stdout.contains("validation Dice"), "{stdout}");
    let csv = std::fs::read_to_string(dir.join("ckpt.safetensors.log.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert_eq!(csv.lines().filter(|l| !l.ends_with(',')).count(), 3, "header and two validations: {csv}");
    let exported = TensorFile::read(&export).unwrap();
    assert!(
        !exported.metadata.contains_key(CHECKPOINT_KEY) && !exported.tensors.keys().any(|n| n.starts_with("optim."))
    );
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_vlsa"))
        .args([
            "train",
            "--config",
            config.to_str().unwrap(),
            "--data",
            dir.join("nowhere").to_str().unwrap(),
            "--steps",
            "2",
            "--out",
            // A new run: the finished one at `out` is refused without --resume or --force.
            dir.join("other.safetensors").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("nowhere") && stderr.contains("is not a data set"), "{stderr}");
}

#[test]
fn refinement_segments_the_window_around_the_first_pass_again() {
    // Whatever the weights predict, a model with `refine` gives the first pass's mask where it
    // found no foreground, and otherwise background outside the refine window and, inside it,
    // exactly the one-pass prediction of that window of the image.
    use vlsa::config::RefineConfig;
    use vlsa::infer::refine_window;
    let gpu = common::gpu();
    let dir = temp_dir("refine");
    let data = common::squares(&dir.join("data"), 6, 45, 4);
    let plain = Model::init(gpu, tiny(4, true), 11).unwrap();
    let crop = 0.6;
    let mut config = tiny(4, true);
    config.refine = Some(RefineConfig { crop });
    let refined = Model::init(gpu, config, 11).unwrap();
    let images: Vec<_> = data.samples.iter().map(|s| &s.image).collect();
    let first = plain.segment(&images).unwrap();
    let masks = refined.segment(&images).unwrap();
    let mut windows = 0;
    for ((image, first), mask) in images.iter().zip(&first).zip(&masks) {
        assert_eq!((mask.width, mask.height), (image.width, image.height));
        let Some(w) = refine_window(first, crop) else {
            assert_eq!(mask, first, "no foreground: the first pass stands");
            continue;
        };
        windows += 1;
        assert_eq!(w.side, 27, "0.6 of 45 pixels");
        let part = plain.segment(&[&image.crop(w.x0, w.y0, w.side, w.side)]).unwrap().remove(0);
        for y in 0..image.height {
            for x in 0..image.width {
                let inside = (w.x0..w.x0 + w.side).contains(&x) && (w.y0..w.y0 + w.side).contains(&y);
                let want = if inside { part.labels[(y - w.y0) * w.side + x - w.x0] } else { 0 };
                assert_eq!(mask.labels[y * image.width + x], want, "pixel ({x}, {y}), window {w:?}");
            }
        }
    }
    assert!(windows > 0, "the random model found foreground in at least one image");
}
