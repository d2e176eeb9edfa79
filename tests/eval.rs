//! `vlsa eval`: Dice on hand-made masks with known answers, predictions against a host argmax of
//! the model's logits, the command end to end on a tiny model and synthetic domains, and the
//! class-count mismatch errors.

mod common;

use std::path::PathBuf;

use vlsa::config::Config;
use vlsa::data::Dataset;
use vlsa::eval::{
    evaluate, evaluate_predictions, evaluate_predictions_with_regions, overlaps, predict, EvalReport, Overlap, Region,
};
use vlsa::image_io::{argmax_resized, preprocess, resize_bilinear, Image, Mask};
use vlsa::infer::zoom_out_canvas;
use vlsa::model::Model;
use vlsa::synth::{write_dataset, Domain, SynthOptions, Task};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vlsa-eval-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn mask(width: usize, labels: &[u8]) -> Mask {
    Mask { width, height: labels.len() / width, labels: labels.to_vec() }
}

fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-12)
}

#[test]
fn dice_of_hand_made_masks() {
    let predicted = [0, 1, 1, 2, 0, 0, 2, 2];
    let truth = [0, 1, 2, 2, 1, 0, 2, 0];
    let o = overlaps(&predicted, &truth, 3);
    assert_eq!(o[1], Overlap { intersection: 1, predicted: 2, truth: 2 });
    assert_eq!(o[2], Overlap { intersection: 2, predicted: 3, truth: 3 });
    assert!(close(o[1].dice(), 0.5) && close(o[2].dice(), 2.0 / 3.0));
    assert_eq!(Overlap::default().dice(), None);
    let classes = names(&["background", "disc", "cup"]);
    // Image 2: class 1 perfect, class 2 in neither (skipped). Image 3: class 2 predicted but
    // absent from the truth (Dice 0), class 1 missed entirely (Dice 0).
    let preds = [mask(4, &predicted), mask(2, &[0, 1, 1, 0]), mask(2, &[2, 0, 0, 0])];
    let truths = [mask(4, &truth), mask(2, &[0, 1, 1, 0]), mask(2, &[1, 0, 0, 0])];
    let r = evaluate_predictions("hand", &classes, &preds, &truths).unwrap();
    assert_eq!(r.images, 3);
    assert_eq!(r.counted, vec![3, 2]);
    assert!(close(r.dice[0], (0.5 + 1.0 + 0.0) / 3.0), "{:?}", r.dice);
    assert!(close(r.dice[1], (2.0 / 3.0 + 0.0) / 2.0), "{:?}", r.dice);
    assert!(close(r.mean, (0.5 + 1.0 / 3.0) / 2.0));
    // Mean over data sets: per class over the data sets where it is defined.
    let other = evaluate_predictions("other", &classes, &[mask(2, &[1, 1, 0, 0])], &[mask(2, &[1, 0, 0, 0])]).unwrap();
    assert!(close(other.dice[0], 2.0 / 3.0) && other.dice[1].is_none() && close(other.mean, 2.0 / 3.0));
    let report = EvalReport::new("m", &classes, vec![r.clone(), other]);
    assert!(close(report.mean_dice[0], (0.5 + 2.0 / 3.0) / 2.0));
    assert!(close(report.mean_dice[1], 1.0 / 3.0));
    assert!(close(report.mean, ((0.5 + 1.0 / 3.0) / 2.0 + 2.0 / 3.0) / 2.0));
    let table = report.table();
    assert!(table.contains("mean over 2 data sets") && table.contains("0.5000") && table.contains("     -"), "{table}");
    let json = report.to_json();
    assert_eq!(json["datasets"][1]["dice"]["cup"], serde_json::Value::Null);
    assert_eq!(json["datasets"][0]["counted"]["disc"], 3);
    // Mismatched inputs are errors, not panics.
    assert!(evaluate_predictions("x", &classes, &preds[..1], &truths).is_err());
    assert!(evaluate_predictions("x", &classes, &preds[1..2], &truths[..1]).unwrap_err().to_string().contains("2x2"));
}

#[test]
fn regions_join_classes_and_keep_the_class_scores() {
    let classes = names(&["background", "disc", "cup"]);
    // "whole" joins disc and cup: image 1 pred {1,2,3,6,7} truth {1,2,3,4,6}: 4 shared, Dice 8/10.
    // Image 2: whole perfect; "cup alone" absent from both (skipped). Image 3: whole predicted on
    // one pixel that is disc in the truth (Dice 1), the cup predicted where the truth has none.
    let predicted = [0, 1, 1, 2, 0, 0, 2, 2];
    let truth = [0, 1, 2, 2, 1, 0, 2, 0];
    let preds = [mask(4, &predicted), mask(2, &[0, 1, 1, 0]), mask(2, &[2, 0, 0, 0])];
    let truths = [mask(4, &truth), mask(2, &[0, 1, 1, 0]), mask(2, &[1, 0, 0, 0])];
    let whole = Region::parse("whole=1,cup", &classes).unwrap();
    assert_eq!(whole, Region { name: "whole".into(), classes: vec![1, 2] });
    let cup = Region::parse(" cup alone = 2 ", &classes).unwrap();
    assert_eq!(cup, Region { name: "cup alone".into(), classes: vec![2] });
    let o = whole.overlap(&predicted, &truth);
    assert_eq!(o, Overlap { intersection: 4, predicted: 5, truth: 5 });
    let regions = [whole.clone(), cup.clone()];
    let r = evaluate_predictions_with_regions("hand", &classes, &regions, &preds, &truths).unwrap();
    // The per-class scores are those without regions.
    let plain = evaluate_predictions("hand", &classes, &preds, &truths).unwrap();
    assert_eq!((&r.dice, &r.counted, r.mean), (&plain.dice, &plain.counted, plain.mean));
    assert!(plain.region_dice.is_empty() && plain.region_mean.is_none());
    assert_eq!(r.region_counted, vec![3, 2]);
    assert!(close(r.region_dice[0], (0.8 + 1.0 + 1.0) / 3.0), "{:?}", r.region_dice);
    // A one-class region is that class's Dice.
    assert!(close(r.region_dice[1], r.dice[1].unwrap()), "{:?}", r.region_dice);
    assert!(close(r.region_mean, ((0.8 + 2.0) / 3.0 + r.dice[1].unwrap()) / 2.0));
    let other = evaluate_predictions_with_regions(
        "other",
        &classes,
        &regions,
        &[mask(2, &[0, 0, 0, 0])],
        &[mask(2, &[0, 0, 0, 0])],
    )
    .unwrap();
    assert!(other.region_dice.iter().all(Option::is_none) && other.region_mean.is_none());
    let report = EvalReport::with_regions("m", &classes, &regions, vec![r.clone(), other]);
    assert!(close(report.mean_region_dice[0], r.region_dice[0].unwrap()));
    assert!(close(report.region_mean, r.region_mean.unwrap()));
    let table = report.table();
    assert!(
        table.contains("regions: whole = disc + cup; cup alone = cup") && table.contains("regions mean"),
        "{table}"
    );
    let json = report.to_json();
    assert_eq!(json["regions"]["whole"], serde_json::json!(["disc", "cup"]));
    assert_eq!(json["datasets"][0]["region_counted"]["whole"], 3);
    assert_eq!(json["datasets"][1]["region_dice"]["cup alone"], serde_json::Value::Null);
    assert!((json["mean_over_datasets"]["region_mean"].as_f64().unwrap() - report.region_mean.unwrap()).abs() < 1e-12);
    // Without regions the report has none of these keys.
    let bare = EvalReport::new("m", &classes, vec![plain]).to_json();
    assert!(bare.get("regions").is_none() && bare["datasets"][0].get("region_dice").is_none());
    assert!(!EvalReport::new("m", &classes, vec![]).table().contains("regions"));
    // Bad specifications: one sentence naming what is wrong.
    for (spec, says) in [
        ("whole", "expected NAME=CLASSES"),
        ("=1,2", "no name"),
        ("w=1,,2", "empty class"),
        ("w=0,1", "class 0 is not a foreground class"),
        ("w=3", "class 3 is not a foreground class of the model (1..=2)"),
        ("w=rim", "\"rim\" is not one of the model's classes (background, disc, cup)"),
        ("w=1,disc", "class 1 (disc) is listed twice"),
    ] {
        let e = Region::parse(spec, &classes).unwrap_err().to_string();
        assert!(e.contains(says) && !e.contains('\n'), "{spec}: {e}");
    }
    let e = Region::parse_all(&["a=1".into(), "a=2".into()], &classes).unwrap_err().to_string();
    assert!(e.contains("a region named \"a\" is already given"), "{e}");
}

fn tiny(classes: &[&str]) -> Config {
    let list = classes.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ");
    Config::from_json(
        &format!(
            r#"{{"image_size": 16, "patch_size": 8, "vision": {{"width": 8, "layers": 1, "heads": 2}},
                "text_dim": 6, "classes": [{list}], "decoder": {{"width": 8, "layers": 1, "heads": 2}}, "em": {{"bases": 3}}}}"#
        ),
        "tiny",
    )
    .unwrap()
}

/// Images of uniform random RGB of the given (width, height), from `seed`.
fn random_images(seed: u64, sizes: &[(usize, usize)]) -> Vec<Image> {
    let mut rng = common::Rng::new(seed);
    sizes
        .iter()
        .map(|&(w, h)| Image { width: w, height: h, rgb: (0..w * h * 3).map(|_| rng.uniform()).collect() })
        .collect()
}

fn synth(task: Task, domain: &str, dir: &std::path::Path) {
    write_dataset(&SynthOptions { task, domain: Domain::of(task, domain).unwrap(), count: 3, size: 24, seed: 1 }, dir)
        .unwrap();
}

#[test]
fn predictions_are_the_argmax_resized_to_each_image() {
    let gpu = common::gpu();
    let model = Model::init(gpu, tiny(&["background", "optic disc", "optic cup"]), 3).unwrap();
    let images = random_images(5, &[(24, 24), (16, 40)]);
    let refs: Vec<&Image> = images.iter().collect();
    let got = predict(&model, &refs).unwrap();
    let c = &model.config;
    let input =
        vlsa::Tensor::from_vec(gpu, &preprocess(&refs, 16, c.pixel_mean, c.pixel_std), &[2, 3, 16, 16]).unwrap();
    let logits = vlsa::no_grad(|| model.forward(&input)).unwrap().logits_up.to_vec().unwrap();
    for (b, img) in images.iter().enumerate() {
        // Each class's logits resized to the image (bilinear), then the argmax (first on ties).
        let (w, h) = (img.width, img.height);
        let planes: Vec<Vec<f32>> =
            (0..3).map(|k| resize_bilinear(&logits[(b * 3 + k) * 256..][..256], 16, 16, 1, w, h)).collect();
        let labels: Vec<u8> = (0..w * h)
            .map(|p| (0..3).fold(0, |best, k| if planes[k][p] > planes[best][p] { k } else { best }) as u8)
            .collect();
        assert_eq!((got[b].width, got[b].height), (w, h));
        assert_eq!(got[b].labels, labels);
    }
}

#[test]
fn zoom_out_segments_each_image_shrunk_into_a_black_input() {
    let gpu = common::gpu();
    let mut model = Model::init(gpu, tiny(&["background", "optic disc", "optic cup"]), 5).unwrap();
    let images = random_images(9, &[(23, 17), (16, 16)]);
    let refs: Vec<&Image> = images.iter().collect();
    let plain = predict(&model, &refs).unwrap();
    model.config.zoom_out = Some(1);
    assert_eq!(predict(&model, &refs).unwrap(), plain, "zoom-out 1 is the image as it is");
    for zoom in [2, 3] {
        model.config.zoom_out = Some(zoom);
        let got = predict(&model, &refs).unwrap();
        // By hand: the canvas, one forward, the logits of the image's place, resized, argmax.
        for (img, mask) in images.iter().zip(&got) {
            let (canvas, place) = zoom_out_canvas(img, zoom, 16);
            let c = &model.config;
            let input =
                vlsa::Tensor::from_vec(gpu, &preprocess(&[&canvas], 16, c.pixel_mean, c.pixel_std), &[1, 3, 16, 16])
                    .unwrap();
            let logits = vlsa::no_grad(|| model.forward(&input)).unwrap().logits_up.to_vec().unwrap();
            let window: Vec<f32> = (0..3)
                .flat_map(|k| {
                    let logits = &logits;
                    (place.y0..place.y0 + place.height).flat_map(move |y| {
                        (place.x0..place.x0 + place.width).map(move |x| logits[k * 256 + y * 16 + x])
                    })
                })
                .collect();
            let want = argmax_resized(&window, 3, place.width, place.height, img.width, img.height);
            assert_eq!(mask.labels, want, "zoom {zoom}, {} x {}", img.width, img.height);
        }
        assert_ne!(got, plain, "zoom {zoom} predicted what the plain model did: the test shows nothing");
    }
}

#[test]
fn the_automatic_zoom_out_keeps_whole_fields_and_picks_each_close_ups_nearest_extent() {
    let gpu = common::gpu();
    let mut model = Model::init(gpu, tiny(&["background", "optic disc", "optic cup"]), 5).unwrap();
    // Close-ups (random content to the corners) and round fields (dark corners), mixed.
    let close = random_images(21, &[(23, 19), (16, 16), (40, 33)]);
    let mut fields = random_images(22, &[(24, 24), (31, 22)]);
    for f in &mut fields {
        let (w, h) = (f.width as f32, f.height as f32);
        for y in 0..f.height {
            for x in 0..f.width {
                let (dx, dy) = ((x as f32 + 0.5 - w / 2.0) / (w / 2.0), (y as f32 + 0.5 - h / 2.0) / (w / 2.0));
                if dx * dx + dy * dy >= 1.0 {
                    f.rgb[(y * f.width + x) * 3..][..3].fill(0.0);
                }
            }
        }
    }
    assert!(fields.iter().all(vlsa::image_io::whole_field) && !close.iter().any(vlsa::image_io::whole_field));
    let mixed: Vec<&Image> = vec![&close[0], &fields[0], &close[1], &fields[1], &close[2]];
    let at = |model: &mut Model, zoom: usize, images: &[&Image]| {
        model.config.zoom_out = Some(zoom);
        let masks = predict(model, images).unwrap();
        model.config.zoom_out = None;
        masks
    };
    let by_zoom: Vec<Vec<Mask>> = (1..=4).map(|z| at(&mut model, z, &mixed)).collect();
    // The reference: the first close-up's extent at zoom-out 3, so that zoom-out 3 wins there.
    let classes = [1u32, 2];
    let area = |m: &Mask| m.labels.iter().filter(|&&v| classes.contains(&u32::from(v))).count();
    let first = &by_zoom[2][0];
    assert!(area(first) > 0, "the first close-up has no disc at zoom-out 3: the test shows nothing");
    let extent = (area(first) as f64).sqrt() / (3 * first.width.max(first.height)) as f64;
    let auto = vlsa::config::AutoZoomOut { classes: classes.to_vec(), extent: extent as f32, enabled: false };
    model.config.auto_zoom_out = Some(auto.clone());
    assert_eq!(
        model.segment_zoomed(&mixed).unwrap(),
        by_zoom[0].iter().cloned().map(|m| (m, 1)).collect::<Vec<_>>(),
        "not enabled: no search"
    );
    model.config.auto_zoom_out.as_mut().unwrap().enabled = true;
    let got = model.segment_zoomed(&mixed).unwrap();
    // By hand: whole fields at 1; a close-up at the zoom-out of the lowest score (the smaller
    // on a tie), 1 where no zoom-out finds the disc.
    for (i, image) in mixed.iter().enumerate() {
        let want = if vlsa::image_io::whole_field(image) {
            1
        } else {
            (1..=4)
                .filter_map(|z| vlsa::infer::auto_zoom_out_score(&by_zoom[z - 1][i], z, &auto).map(|s| (s, z)))
                .fold(None, |best: Option<(f64, usize)>, (s, z)| match best {
                    Some((b, _)) if b <= s => best,
                    _ => Some((s, z)),
                })
                .map_or(1, |(_, z)| z)
        };
        assert_eq!(got[i], (by_zoom[want - 1][i].clone(), want), "image {i}");
    }
    assert_eq!(got[0].1, 3, "the close-up whose extent is the reference at zoom-out 3");
    // A fixed zoom-out overrides the search.
    model.config.zoom_out = Some(2);
    assert_eq!(model.segment(&mixed).unwrap(), by_zoom[1]);
}

#[test]
fn a_model_with_a_field_of_view_segments_inside_it_and_marks_background_around_it() {
    let gpu = common::gpu();
    let mut model = Model::init(gpu, tiny(&["background", "optic disc", "optic cup"]), 5).unwrap();
    let content = &random_images(8, &[(21, 27)])[0];
    let bright = |v: f32| 0.2 + 0.8 * v; // every pixel content
    let content = Image { rgb: content.rgb.iter().map(|&v| bright(v)).collect(), ..content.clone() };
    // The same content in a black frame 17 pixels wider on the left and 9 on the right.
    let (w, x0) = (21 + 17 + 9, 17);
    let mut framed = Image { width: w, height: 27, rgb: vec![0.0; w * 27 * 3] };
    for y in 0..27 {
        framed.rgb[(y * w + x0) * 3..][..21 * 3].copy_from_slice(&content.rgb[y * 21 * 3..][..21 * 3]);
    }
    model.config.field_of_view = true;
    let got = predict(&model, &[&framed, &content]).unwrap();
    model.config.field_of_view = false;
    let inside = predict(&model, &[&content]).unwrap().remove(0);
    let classes: std::collections::BTreeSet<u8> = inside.labels.iter().copied().collect();
    assert!(classes.len() > 1, "the content's mask is all {classes:?}: the test shows nothing");
    assert_eq!(got[0], inside.placed(x0, 0, w, 27), "the framed image's mask is the content's, placed");
    assert_eq!(got[1], inside, "a field that fills the frame is segmented whole");
    let whole = predict(&model, &[&framed]).unwrap().remove(0);
    assert_ne!(whole, got[0], "without field_of_view the frame is part of the input");
}

#[test]
fn eval_command_end_to_end_and_class_mismatches() {
    let gpu = common::gpu();
    let root = temp("e2e");
    let (a, c, heart) = (root.join("fundus-A"), root.join("fundus-C"), root.join("cardiac-A"));
    synth(Task::Fundus, "A", &a);
    synth(Task::Fundus, "C", &c);
    synth(Task::Cardiac, "A", &heart);
    let model_path = root.join("tiny.safetensors");
    let model = Model::init(gpu, tiny(&["background", "optic disc", "optic cup"]), 11).unwrap();
    model.save(&model_path, false).unwrap();
    let json_path = root.join("eval.json");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_vlsa"))
            .args(args)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .output()
            .unwrap()
    };
    let (m, a_s, c_s, j) =
        (model_path.to_str().unwrap(), a.to_str().unwrap(), c.to_str().unwrap(), json_path.to_str().unwrap());
    let out = run(&["eval", "--model", m, "--data", a_s, "--data", c_s, "--json", j, "--batch", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("optic disc") && stdout.contains("optic cup") && stdout.contains("mean over 2 data sets"),
        "{stdout}"
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    // The command's numbers are the library's, batch size notwithstanding.
    let expected: Vec<_> =
        [&a, &c].iter().map(|d| evaluate(&model, &Dataset::load(d, 3).unwrap(), 3).unwrap()).collect();
    for (i, r) in expected.iter().enumerate() {
        let d = &json["datasets"][i];
        assert_eq!(d["images"], 3);
        for (k, name) in ["optic disc", "optic cup"].iter().enumerate() {
            // JSON keeps the value to within serde_json's float parsing (last digit).
            let same = match (d["dice"][name].as_f64(), r.dice[k]) {
                (Some(x), Some(y)) => (x - y).abs() < 1e-12,
                (x, y) => x.is_none() && y.is_none(),
            };
            assert!(same, "{name} of data set {i}: {} vs {:?}", d["dice"][name], r.dice[k]);
            if let Some(v) = r.dice[k] {
                assert!((0.0..=1.0).contains(&v));
            }
        }
    }
    let report = EvalReport::new(m, &model.config.classes, expected);
    assert!((json["mean_over_datasets"]["mean"].as_f64().unwrap() - report.mean.unwrap()).abs() < 1e-12);
    // --region: the whole disc by class names, the cup by index; per-class figures unchanged.
    let out = run(&[
        "eval",
        "--model",
        m,
        "--data",
        a_s,
        "--json",
        j,
        "--region",
        "whole disc=optic disc,optic cup",
        "--region",
        "cup=2",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("regions: whole disc = optic disc + optic cup; cup = optic cup")
    );
    let with: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(with["datasets"][0]["dice"], json["datasets"][0]["dice"]);
    let regions =
        [Region { name: "whole disc".into(), classes: vec![1, 2] }, Region { name: "cup".into(), classes: vec![2] }];
    let dataset = Dataset::load(&a, 3).unwrap();
    let lib = vlsa::eval::evaluate_regions_with_progress(&model, &dataset, 3, &regions, &mut |_| {}).unwrap();
    for (i, r) in regions.iter().enumerate() {
        let got = with["datasets"][0]["region_dice"][&r.name].as_f64();
        assert!(got.zip(lib.region_dice[i]).is_some_and(|(x, y)| (x - y).abs() < 1e-12), "{}: {got:?}", r.name);
    }
    // `vlsa eval` with one more flag: its table says `said`; its JSON.
    let eval_with = |flag: &str, value: &str, said: &str| -> serde_json::Value {
        let out = run(&["eval", "--model", m, "--data", a_s, "--json", j, flag, value]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains(said), "{flag} {value}");
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap()
    };
    // --shifts: the shift ensemble, said in the table and the JSON, the library's numbers.
    let shifted = eval_with("--shifts", "2", "predicted by a shift ensemble of 2 x 2 forwards");
    assert_eq!(shifted["shifts"], 2);
    assert!(json.get("shifts").is_none(), "one-forward reports keep their form");
    let mut ensemble = Model::load(gpu, &model_path).unwrap();
    ensemble.config.shifts = Some(2);
    let lib = evaluate(&ensemble, &dataset, 3).unwrap();
    for (k, name) in ["optic disc", "optic cup"].iter().enumerate() {
        let got = shifted["datasets"][0]["dice"][name].as_f64();
        assert!(
            got.zip(lib.dice[k]).is_some_and(|(x, y)| (x - y).abs() < 1e-12) || got.is_none() && lib.dice[k].is_none()
        );
    }
    let images = a.join("images");
    let (images, out_dir) = (images.to_str().unwrap(), root.to_str().unwrap());
    for (k, why) in [("3", "--shifts 3 must divide the patch size 8"), ("0", "--shifts 0 must be between 1 and 8")] {
        let eval_args = ["eval", "--model", m, "--data", a_s, "--shifts", k];
        let segment_args = ["segment", "--model", m, "--image", images, "--out", out_dir, "--shifts", k];
        for args in [&eval_args[..], &segment_args[..]] {
            let out = run(args);
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.starts_with(&format!("vlsa: {why}")), "{args:?}: {stderr}");
        }
    }
    // --zoom-out: said in the table and the JSON, the library's numbers; bad factors refused.
    let zoomed = eval_with("--zoom-out", "3", "each image zoomed out to 1/3 of the input");
    assert_eq!(zoomed["zoom_out"], 3);
    assert!(json.get("zoom_out").is_none(), "reports without zoom-out keep their form");
    let mut small = Model::load(gpu, &model_path).unwrap();
    small.config.zoom_out = Some(3);
    let lib = evaluate(&small, &dataset, 3).unwrap();
    assert!((zoomed["datasets"][0]["mean"].as_f64().unwrap() - lib.mean.unwrap()).abs() < 1e-12);
    for args in [
        &["eval", "--model", m, "--data", a_s, "--zoom-out", "9"][..],
        &["segment", "--model", m, "--image", images, "--out", out_dir, "--zoom-out", "0"][..],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("vlsa: --zoom-out") && stderr.contains("must be between 1 and 8"),
            "{args:?}: {stderr}"
        );
    }
    // --zoom-out auto: refused without the model's reference, and a word that is neither.
    let out = run(&["eval", "--model", m, "--data", a_s, "--zoom-out", "auto"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("vlsa: --zoom-out auto needs a model with an automatic zoom-out"), "{stderr}");
    let out = run(&["segment", "--model", m, "--image", images, "--out", out_dir, "--zoom-out", "most"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"most\" is neither a whole number nor auto"));
    // With the reference: the table and the JSON say so and count each zoom-out chosen; the
    // library's numbers; segment names the zoom-out chosen.
    let mut auto = Model::load(gpu, &model_path).unwrap();
    auto.config.auto_zoom_out = Some(vlsa::config::AutoZoomOut { classes: vec![1, 2], extent: 0.3, enabled: false });
    let auto_path = root.join("auto.safetensors");
    auto.save(&auto_path, false).unwrap();
    let am = auto_path.to_str().unwrap();
    let out = run(&["eval", "--model", am, "--data", a_s, "--json", j, "--zoom-out", "auto"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("zoom-out chosen per image by the automatic zoom-out"), "{stdout}");
    assert!(stdout.contains(&format!("zoom-out chosen, {}: ", a.display())), "{stdout}");
    let chosen: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(chosen["zoom_out"], "auto");
    let counts = chosen["datasets"][0]["zoom_out_chosen"].as_object().unwrap();
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["1", "2", "3", "4"]);
    assert_eq!(counts.values().map(|n| n.as_u64().unwrap()).sum::<u64>(), 3);
    auto.config.auto_zoom_out.as_mut().unwrap().enabled = true;
    let lib = evaluate(&auto, &dataset, 3).unwrap();
    assert_eq!(lib.zoom_counts.iter().sum::<usize>(), 3);
    for (z, n) in lib.zoom_counts.iter().enumerate() {
        assert_eq!(counts[&(z + 1).to_string()], *n as u64);
    }
    assert!((chosen["datasets"][0]["mean"].as_f64().unwrap() - lib.mean.unwrap()).abs() < 1e-12);
    let out = run(&["segment", "--model", am, "--image", images, "--out", out_dir, "--zoom-out", "auto"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(said.matches(" (automatic zoom-out: ").count(), 3, "{said}");
    let out = run(&["eval", "--model", m, "--data", a_s, "--region", "rim=9"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("vlsa: --region \"rim=9\": class 9 is not a foreground class"), "{stderr}");
    // A cardiac data set (4 classes, declared in domain.json) against a 3-class model.
    let h = heart.to_str().unwrap();
    let out = run(&["eval", "--model", m, "--data", h]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("vlsa: the data set")
            && stderr.contains("has 4 classes")
            && stderr.contains("the model has 3"),
        "{stderr}"
    );
    // Without domain.json the masks themselves give the mismatch away.
    std::fs::remove_file(heart.join("domain.json")).unwrap();
    let e = vlsa::eval::evaluate_folders(&model, std::slice::from_ref(&heart), 4).unwrap_err().to_string();
    assert!(e.contains("has class 3, but the model has 3 classes (background, optic disc, optic cup)"), "{e}");
    assert!(evaluate(&model, &Dataset::load(&a, 3).unwrap(), 0).unwrap_err().to_string().contains("batch"));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn an_inference_forward_finds_its_pipelines_prepared() {
    // Its own GPU, so that no other test builds pipelines on it meanwhile.
    let gpu = vlsa::Gpu::new().unwrap();
    let model = Model::init(&gpu, tiny(&["background", "optic disc", "optic cup"]), 4).unwrap();
    let image = random_images(9, &[(20, 12)]).remove(0);
    let input = model.input(&[&image, &image]).unwrap();
    let before = gpu.pipelines_built();
    model.prepare_forward(&input).unwrap();
    let prepared = gpu.pipelines_built();
    assert!(prepared > before + 5, "{before} -> {prepared} pipelines");
    let logits = vlsa::no_grad(|| model.forward(&input)).unwrap().logits_up.to_vec().unwrap();
    assert_eq!(gpu.pipelines_built(), prepared, "the forward needed a pipeline the rehearsal missed");
    assert!(logits.iter().all(|v| v.is_finite()));
    // Once per batch size: again, nothing happens; segmenting the two images builds only argmax.
    model.prepare_forward(&input).unwrap();
    assert_eq!(gpu.pipelines_built(), prepared);
    let masks = model.segment(&[&image, &image]).unwrap();
    assert_eq!(masks.len(), 2);
    assert!(gpu.pipelines_built() <= prepared + 1);
}

/// The shift ensemble's logits written out pixel by pixel from the plain forward: for each
/// pixel, the mean of the logits of every shifted copy whose moved pixel lies in the image.
fn shift_ensemble_reference(model: &Model, image: &Image, k: usize) -> Vec<f64> {
    let c = &model.config;
    let (s, classes, step) = (c.image_size, c.num_classes(), c.patch_size / k);
    let base = preprocess(&[image], s, c.pixel_mean, c.pixel_std);
    let mut sum = vec![0f64; classes * s * s];
    let mut count = vec![0f64; s * s];
    for i in 0..k {
        for j in 0..k {
            let (dy, dx) = (i * step, j * step);
            let mut moved = vec![0f32; 3 * s * s];
            for ch in 0..3 {
                for y in 0..s {
                    for x in 0..s {
                        let (sy, sx) = (y.max(dy) - dy, x.max(dx) - dx);
                        moved[(ch * s + y) * s + x] = base[(ch * s + sy) * s + sx];
                    }
                }
            }
            let input = vlsa::Tensor::from_vec(model.gpu(), &moved, &[1, 3, s, s]).unwrap();
            let logits = vlsa::no_grad(|| model.forward(&input)).unwrap().logits_up.to_vec().unwrap();
            for y in 0..s - dy {
                for x in 0..s - dx {
                    count[y * s + x] += 1.0;
                    for kk in 0..classes {
                        sum[(kk * s + y) * s + x] += logits[(kk * s + y + dy) * s + x + dx] as f64;
                    }
                }
            }
        }
    }
    sum.iter().enumerate().map(|(i, v)| v / count[i % (s * s)]).collect()
}

#[test]
fn the_shift_ensemble_averages_the_logits_of_shifted_copies() {
    let gpu = common::gpu();
    let mut config = tiny(&["background", "optic disc", "optic cup"]);
    config.image_size = 24; // 3 x 3 patches of 8
    let mut model = Model::init(gpu, config, 6).unwrap();
    let images = random_images(13, &[(24, 24), (30, 17)]);
    let refs: Vec<&Image> = images.iter().collect();
    // One forward (no `shifts`, or 1) is the plain prediction.
    let plain = predict(&model, &refs).unwrap();
    model.config.shifts = Some(1);
    assert_eq!(predict(&model, &refs).unwrap(), plain);
    let mut changed = false;
    for k in [2, 4] {
        model.config.shifts = Some(k);
        let logits = model.logits_shifted(&refs).unwrap();
        let plane = 3 * 24 * 24;
        for (b, img) in images.iter().enumerate() {
            let want = shift_ensemble_reference(&model, img, k);
            common::assert_close(&format!("shifts {k}, image {b}"), &logits[b * plane..][..plane], &want, 1e-5, 1e-6);
        }
        let got = model.predict_shifted(&refs).unwrap();
        for (b, labels) in got.iter().enumerate() {
            let one = &logits[b * plane..][..plane];
            let argmax: Vec<u32> = (0..576)
                .map(|p| {
                    (0..3).fold(0, |best, kk| if one[kk * 576 + p] > one[best * 576 + p] { kk } else { best }) as u32
                })
                .collect();
            assert_eq!(labels, &argmax);
        }
        // segment (what vlsa segment and eval use) takes the ensemble's logits to each image's size.
        let masks = predict(&model, &refs).unwrap();
        for (b, img) in images.iter().enumerate() {
            let want = argmax_resized(&logits[b * plane..][..plane], 3, 24, 24, img.width, img.height);
            assert_eq!(masks[b].labels, want);
            changed |= masks[b] != plain[b];
        }
    }
    assert!(changed, "the ensemble predicted exactly what one forward did: the test shows nothing");
    assert!(model.logits_shifted(&[]).unwrap_err().to_string().contains("no images"));
    // More images than one forward takes: the same logits, batch by batch.
    let many: Vec<&Image> = (0..vlsa::infer::SEGMENT_BATCH + 1).map(|i| refs[i % 2]).collect();
    let all = model.logits_shifted(&many).unwrap();
    let plane = 3 * 24 * 24;
    let two = model.logits_shifted(&refs).unwrap();
    assert_eq!(all.len(), many.len() * plane);
    for (i, one) in all.chunks(plane).enumerate() {
        let want: Vec<f64> = two[(i % 2) * plane..][..plane].iter().map(|&v| v as f64).collect();
        common::assert_close(&format!("image {i} of {}", many.len()), one, &want, 1e-5, 1e-5);
    }
}
