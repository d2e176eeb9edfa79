//! The `vlsa` binary end to end on a model made by `vlsa init`: `segment` (masks at the original
//! size, overlays with a legend), `forward --dump` and `grad --dump` with docs/DESIGN.md's names, and
//! bad input ending in one clear sentence with exit code 1. `cli_train.rs` and `cli_outputs.rs`
//! test training from the command line and the inputs and outputs of every command.

use std::path::{Path, PathBuf};
use std::process::Command;

use vlsa::image_io::{Image, Mask};
use vlsa::weights::TensorFile;

const CONFIG: &str = r#"{"image_size": 32, "patch_size": 8,
  "vision": {"width": 32, "layers": 1, "heads": 2},
  "text_dim": 8, "classes": ["background", "optic disc", "optic cup"],
  "decoder": {"width": 16, "layers": 1, "heads": 2}, "em": {"bases": 4}}"#;

fn vlsa(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vlsa")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str]) -> String {
    let (success, stdout, stderr) = vlsa(args);
    assert!(success, "vlsa {args:?} failed: {stderr}");
    stdout
}

fn fails(args: &[&str]) -> String {
    let (success, _, stderr) = vlsa(args);
    assert!(!success, "vlsa {args:?} should fail");
    assert!(stderr.starts_with("vlsa: ") && stderr.trim_end().lines().count() == 1, "one sentence, no panic: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("vlsa-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn model(dir: &Dir) -> String {
    std::fs::write(dir.0.join("cfg.json"), CONFIG).unwrap();
    ok(&["init", "--config", &dir.path("cfg.json"), "--out", &dir.path("m.safetensors"), "--seed", "3"]);
    dir.path("m.safetensors")
}

fn write_images(dir: &Path) {
    let rgb: Vec<u8> = (0..45 * 30 * 3).map(|i| (i * 13 % 251) as u8).collect();
    Image::from_rgb8(45, 30, &rgb).unwrap().save_png(&dir.join("a.png")).unwrap();
    let grey =
        image::ImageBuffer::<image::Luma<u16>, _>::from_fn(20, 64, |x, y| image::Luma([(x * 3000 + y * 200) as u16]));
    grey.save(dir.join("b.png")).unwrap();
    let rgba = image::RgbaImage::from_fn(33, 33, |x, y| image::Rgba([x as u8 * 7, y as u8 * 7, 90, 128]));
    image::DynamicImage::ImageRgba8(rgba).to_rgb8().save(dir.join("c.jpg")).unwrap();
}

#[test]
fn segment_writes_masks_at_original_size_and_overlays() {
    let dir = Dir::new("segment");
    let m = model(&dir);
    write_images(&dir.0);
    let out = dir.path("out");
    let stdout = ok(&[
        "segment",
        "--model",
        &m,
        "--image",
        &dir.path("a.png"),
        "--image",
        &dir.path("b.png"),
        "--image",
        &dir.path("c.jpg"),
        "--out",
        &out,
    ]);
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    for (stem, w, h) in [("a", 45, 30), ("b", 20, 64), ("c", 33, 33)] {
        let mask = Mask::load(&Path::new(&out).join(format!("{stem}_mask.png")), Some(3)).unwrap();
        assert_eq!((mask.width, mask.height), (w, h), "{stem}: mask at the original size");
        let overlay = Image::load(&Path::new(&out).join(format!("{stem}_overlay.png"))).unwrap();
        // Small images are enlarged by a whole factor so that the legend fits.
        let zoom = vlsa::infer::OVERLAY_MIN_WIDTH.div_ceil(w);
        assert_eq!(overlay.width, w * zoom);
        assert!(overlay.height > h * zoom, "{stem}: a legend strip below the image");
    }
    // The CLI's mask equals the library's prediction for the same image.
    let gpu = vlsa::Gpu::new().unwrap();
    let model = vlsa::model::Model::load(&gpu, Path::new(&m)).unwrap();
    let img = Image::load(&dir.0.join("a.png")).unwrap();
    let lib = model.segment(&[&img]).unwrap().remove(0);
    assert_eq!(lib, Mask::load(&Path::new(&out).join("a_mask.png"), None).unwrap());
    // A model made with `init --shifts 2` predicts by the shift ensemble, as `segment --shifts 2`
    // of the plain model does; `--shifts 1` undoes it.
    let shifted = dir.path("shifted.safetensors");
    ok(&["init", "--config", &dir.path("cfg.json"), "--out", &shifted, "--seed", "3", "--shifts", "2"]);
    let mut ensemble = vlsa::model::Model::load(&gpu, Path::new(&shifted)).unwrap();
    assert_eq!(ensemble.config.shifts, Some(2));
    let want = ensemble.segment(&[&img]).unwrap().remove(0);
    let a_png = dir.path("a.png");
    for (model_file, flags) in [(&shifted, &[][..]), (&m, &["--shifts", "2"][..])] {
        let args = [&["segment", "--model", model_file.as_str(), "--image", &a_png, "--out", &out][..], flags].concat();
        ok(&args);
        assert_eq!(want, Mask::load(&Path::new(&out).join("a_mask.png"), None).unwrap(), "{flags:?}");
    }
    ok(&["segment", "--model", &shifted, "--image", &dir.path("a.png"), "--out", &out, "--shifts", "1"]);
    assert_eq!(lib, Mask::load(&Path::new(&out).join("a_mask.png"), None).unwrap());
    ensemble.config.shifts = None;
    assert_eq!(ensemble.segment(&[&img]).unwrap().remove(0), lib);
    let e = fails(&["init", "--config", &dir.path("cfg.json"), "--out", &dir.path("x.safetensors"), "--shifts", "5"]);
    assert!(e.contains("--shifts 5 must divide the patch size"), "{e}");
    // `init --from` adds sub-tokens to a trained model: its tensors kept, the new ones listed,
    // and the result segments (its logits on a grid twice as fine).
    std::fs::write(
        dir.0.join("up.json"),
        CONFIG.replace("\"heads\": 2}, \"em\"", "\"heads\": 2, \"upsample\": 2}, \"em\""),
    )
    .unwrap();
    let up = dir.path("up.safetensors");
    let said = ok(&["init", "--config", &dir.path("up.json"), "--from", &m, "--out", &up]);
    assert!(said.contains("2 initialised afresh") && said.contains("new: head.decoder.upsample.weight"), "{said}");
    let grown = vlsa::model::Model::load(&gpu, Path::new(&up)).unwrap();
    assert_eq!(grown.config.decoder.upsample, 2);
    for (name, t) in &model.tensors {
        assert_eq!(grown.get(name).unwrap().to_vec().unwrap(), t.to_vec().unwrap(), "{name}");
    }
    ok(&["segment", "--model", &up, "--image", &a_png, "--out", &out]);
    let e = fails(&[
        "init",
        "--config",
        &dir.path("up.json"),
        "--from",
        &dir.path("up.json"),
        "--out",
        &dir.path("x.safetensors"),
    ]);
    assert!(e.contains("up.json") && e.contains("not a safetensors file"), "{e}");
}

#[test]
fn forward_and_grad_dump_design_names() {
    let dir = Dir::new("dump");
    let m = model(&dir);
    write_images(&dir.0);
    ok(&[
        "forward",
        "--model",
        &m,
        "--image",
        &dir.path("a.png"),
        "--image",
        &dir.path("c.jpg"),
        "--dump",
        &dir.path("f.safetensors"),
    ]);
    let f = TensorFile::read(&dir.0.join("f.safetensors")).unwrap();
    let shapes: Vec<(&str, Vec<usize>)> = vec![
        ("input", vec![2, 3, 32, 32]),
        ("vision.features", vec![2, 16, 32]),
        ("head.visual", vec![2, 16, 16]),
        ("head.text", vec![3, 16]),
        ("em.z", vec![2, 16, 4]),
        ("em.mu", vec![2, 4, 16]),
        ("head.aggregated", vec![2, 16, 16]),
        ("decoder.out", vec![2, 16, 16]),
        ("logits", vec![2, 3, 4, 4]),
        ("logits_up", vec![2, 3, 32, 32]),
    ];
    assert_eq!(f.tensors.len(), shapes.len());
    for (name, shape) in &shapes {
        assert_eq!(&f.tensors[*name].shape, shape, "{name}");
    }
    Mask { width: 45, height: 30, labels: (0..45 * 30).map(|i| (i % 3) as u8).collect() }
        .save_png(&dir.0.join("a_gt.png"))
        .unwrap();
    ok(&[
        "grad",
        "--model",
        &m,
        "--image",
        &dir.path("a.png"),
        "--mask",
        &dir.path("a_gt.png"),
        "--dump",
        &dir.path("g.safetensors"),
    ]);
    let g = TensorFile::read(&dir.0.join("g.safetensors")).unwrap();
    let file = TensorFile::read(Path::new(&m)).unwrap();
    let trainable: Vec<&String> = file.tensors.keys().filter(|n| !vlsa::model::FROZEN.contains(&n.as_str())).collect();
    assert_eq!(g.tensors.len(), 3 + trainable.len());
    for n in trainable {
        assert_eq!(g.tensors[&format!("grad.{n}")].shape, file.tensors[n].shape, "grad.{n}");
    }
    assert_eq!(g.tensors["target"].shape, vec![1, 32, 32]);
    assert!(g.tensors["loss"].data[0].is_finite() && g.tensors["loss"].data[0] > 0.0);
    let head_grad = &g.tensors["grad.head.logit_scale"].data;
    assert!(head_grad[0] != 0.0, "gradient reaches the head");
}

#[test]
fn bad_input_is_one_clear_sentence() {
    let dir = Dir::new("errors");
    let m = model(&dir);
    std::fs::write(dir.0.join("broken.png"), b"\x89PNG\r\n\x1a\n truncated").unwrap();
    let e = fails(&["segment", "--model", &m, "--image", &dir.path("broken.png")]);
    assert!(e.contains("broken.png"), "{e}");
    let e = fails(&["segment", "--model", &m, "--image", &dir.path("absent.png")]);
    assert!(e.contains("absent.png"), "{e}");
    let e = fails(&["segment", "--model", &dir.path("cfg.json"), "--image", &dir.path("absent.png")]);
    assert!(e.contains("cfg.json"), "{e}");
    write_images(&dir.0);
    Mask { width: 45, height: 30, labels: vec![7; 45 * 30] }.save_png(&dir.0.join("bad_gt.png")).unwrap();
    let e = fails(&[
        "grad",
        "--model",
        &m,
        "--image",
        &dir.path("a.png"),
        "--mask",
        &dir.path("bad_gt.png"),
        "--dump",
        &dir.path("g.safetensors"),
    ]);
    assert!(e.contains("bad_gt.png") && e.contains("class value 7"), "{e}");
    let e = fails(&[
        "grad",
        "--model",
        &m,
        "--image",
        &dir.path("a.png"),
        "--mask",
        &dir.path("b.png"),
        "--dump",
        &dir.path("g.safetensors"),
    ]);
    assert!(e.contains("b.png"), "{e}");
    assert!(!dir.0.join("g.safetensors").exists(), "nothing is written on failure");
}
