//! `vlsa synth`: determinism, class proportions, anatomy (cup inside disc, left ventricle inside
//! the myocardium), measurable domain shift, the data-set layout and command-line errors.

use std::path::{Path, PathBuf};

use vlsa::data::Dataset;
use vlsa::image_io::{Image, Mask};
use vlsa::synth::{generate, write_dataset, Domain, SynthOptions, Task, DOMAINS};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vlsa-synth-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn options(task: Task, domain: &str, count: usize, size: usize, seed: u64) -> SynthOptions {
    SynthOptions { task, domain: Domain::of(task, domain).unwrap(), count, size, seed }
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["images", "masks"] {
        let mut names: Vec<_> = std::fs::read_dir(dir.join(sub)).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        for p in names {
            out.push((format!("{sub}/{}", p.file_name().unwrap().to_string_lossy()), std::fs::read(&p).unwrap()));
        }
    }
    out.push(("domain.json".into(), std::fs::read(dir.join("domain.json")).unwrap()));
    out
}

#[test]
fn same_seed_same_bytes_other_seed_other_images() {
    for task in [Task::Cardiac, Task::Fundus] {
        let (a, b, c) = (
            temp(&format!("{}-a", task.name())),
            temp(&format!("{}-b", task.name())),
            temp(&format!("{}-c", task.name())),
        );
        write_dataset(&options(task, "B", 4, 48, 7), &a).unwrap();
        write_dataset(&options(task, "B", 4, 48, 7), &b).unwrap();
        write_dataset(&options(task, "B", 4, 48, 8), &c).unwrap();
        let (fa, fb, fc) = (files(&a), files(&b), files(&c));
        assert_eq!(fa.len(), 9);
        assert!(fa == fb, "{}: the same seed must give bit-identical files", task.name());
        for ((name, x), (_, y)) in fa.iter().zip(&fc).take(8) {
            assert_ne!(x, y, "{name} is the same with seeds 7 and 8");
        }
        let json: serde_json::Value = serde_json::from_slice(&fa[8].1).unwrap();
        assert_eq!(json["task"], task.name());
        assert_eq!(json["seed"], 7);
        assert_eq!(json["count"], 4);
        assert_eq!(json["size"], 48);
        assert_eq!(json["domain"]["name"], "B");
        assert_eq!(json["domain"]["gamma"].as_f64().unwrap() as f32, Domain::of(task, "B").unwrap().gamma);
        assert_eq!(json["classes"].as_array().unwrap().len(), task.classes().len());
        // The folder is a data set in docs/DESIGN.md's layout.
        let data = Dataset::load(&a, task.classes().len()).unwrap();
        assert_eq!(data.len(), 4);
        assert_eq!((data.samples[0].image.width, data.samples[0].mask.height), (48, 48));
        for d in [a, b, c] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }
}

/// Class `k`'s share of the pixels.
fn share(m: &Mask, k: u8) -> f64 {
    m.labels.iter().filter(|&&v| v == k).count() as f64 / m.labels.len() as f64
}

/// Whether any pixel of class `inner` has a 4-neighbour (or the border) in `forbidden`.
fn touches(m: &Mask, inner: u8, forbidden: &[u8]) -> bool {
    let (w, h) = (m.width, m.height);
    for y in 0..h {
        for x in 0..w {
            if m.labels[y * w + x] != inner {
                continue;
            }
            if x == 0 || y == 0 || x == w - 1 || y == h - 1 {
                return true;
            }
            for (nx, ny) in [(x - 1, y), (x + 1, y), (x, y - 1), (x, y + 1)] {
                if forbidden.contains(&m.labels[ny * w + nx]) {
                    return true;
                }
            }
        }
    }
    false
}

#[test]
fn cardiac_masks_have_every_class_and_the_ventricle_inside_the_wall() {
    let domain = Domain::of(Task::Cardiac, "A").unwrap();
    let mut totals = [0.0f64; 4];
    for i in 0..24 {
        let (_, mask) = generate(Task::Cardiac, &domain, 96, 3, i);
        for k in 0..4u8 {
            assert!(share(&mask, k) > 0.004, "image {i}: class {k} covers only {:.4} of the pixels", share(&mask, k));
            totals[k as usize] += share(&mask, k) / 24.0;
        }
        // The blood pool is enclosed by the myocardium: it never touches background or RV.
        assert!(!touches(&mask, 1, &[0, 3]), "image {i}: the left ventricle touches background or right ventricle");
        assert!(!touches(&mask, 2, &[]), "image {i}: the myocardium reaches the image border");
    }
    for (k, (lo, hi)) in [(0.75, 0.97), (0.01, 0.08), (0.01, 0.08), (0.01, 0.08)].into_iter().enumerate() {
        assert!(totals[k] > lo && totals[k] < hi, "class {k} covers {:.4} on average, expected {lo}..{hi}", totals[k]);
    }
}

#[test]
fn fundus_cup_lies_inside_the_disc_with_varying_ratio() {
    let domain = Domain::of(Task::Fundus, "A").unwrap();
    let mut ratios = Vec::new();
    for i in 0..30 {
        let (image, mask) = generate(Task::Fundus, &domain, 128, 5, i);
        let (disc, cup) = (share(&mask, 1), share(&mask, 2));
        assert!(disc > 0.0 && cup > 0.0, "image {i}: disc {disc}, cup {cup}");
        assert!(!touches(&mask, 2, &[0]), "image {i}: a cup pixel touches the background");
        assert!(mask.labels.iter().all(|&v| v <= 2));
        // Cup-to-disc ratio from the areas (radius ratio).
        ratios.push((cup / (cup + disc)).sqrt());
        // The field of view: corners black, centre not.
        let at = |x: usize, y: usize| image.rgb[(y * 128 + x) * 3..][..3].iter().sum::<f32>();
        assert!(at(0, 0) < 0.1 && at(127, 127) < 0.1 && at(64, 64) > 0.3, "image {i}: field of view");
    }
    let (lo, hi) = ratios.iter().fold((1.0f64, 0.0f64), |(l, h), &r| (l.min(r), h.max(r)));
    assert!(lo > 0.2 && lo < 0.45 && hi > 0.65 && hi < 0.9, "cup-to-disc ratios span {lo:.2}..{hi:.2}");
}

/// Mean over a few images of a statistic of (image, mask).
fn mean_stat(task: Task, domain: &str, stat: impl Fn(&Image, &Mask) -> f64) -> f64 {
    let d = Domain::of(task, domain).unwrap();
    (0..10)
        .map(|i| {
            let (img, mask) = generate(task, &d, 64, 11, i);
            stat(&img, &mask)
        })
        .sum::<f64>()
        / 10.0
}

fn class_mean(img: &Image, mask: &Mask, k: u8) -> f64 {
    let v: Vec<f64> =
        mask.labels.iter().enumerate().filter(|(_, &l)| l == k).map(|(i, _)| img.rgb[i * 3] as f64).collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

#[test]
fn domains_differ_measurably_and_anatomy_does_not() {
    let mean = |img: &Image, _: &Mask| img.rgb.iter().map(|&v| v as f64).sum::<f64>() / img.rgb.len() as f64;
    let contrast = |img: &Image, mask: &Mask| class_mean(img, mask, 1) - class_mean(img, mask, 2);
    let (a, b, d) =
        (mean_stat(Task::Cardiac, "A", mean), mean_stat(Task::Cardiac, "B", mean), mean_stat(Task::Cardiac, "D", mean));
    assert!(b - a > 0.05 && d - a > 0.03, "cardiac mean intensity A {a:.3}, B {b:.3}, D {d:.3}");
    let (ca, cd) = (mean_stat(Task::Cardiac, "A", contrast), mean_stat(Task::Cardiac, "D", contrast));
    assert!(ca - cd > 0.1, "blood-myocardium contrast A {ca:.3}, D {cd:.3}");
    // Fundus: the colour cast (blue over red inside the field of view) and the brightness.
    let blue_over_red = |img: &Image, _: &Mask| {
        let (mut r, mut b) = (0.0, 0.0);
        for px in img.rgb.chunks(3) {
            r += px[0] as f64;
            b += px[2] as f64;
        }
        b / r
    };
    let (fa, fb, fc) = (
        mean_stat(Task::Fundus, "A", blue_over_red),
        mean_stat(Task::Fundus, "B", blue_over_red),
        mean_stat(Task::Fundus, "C", blue_over_red),
    );
    assert!(fb > 1.5 * fa && fc < 0.5 * fa, "fundus blue/red A {fa:.3}, B {fb:.3}, C {fc:.3}");
    let (ma, mc) = (mean_stat(Task::Fundus, "A", mean), mean_stat(Task::Fundus, "C", mean));
    assert!(ma - mc > 0.05, "fundus mean intensity A {ma:.3}, C {mc:.3}");
    // The anatomy is drawn from one distribution: class shares agree across domains.
    for task in [Task::Cardiac, Task::Fundus] {
        let fg = |_: &Image, m: &Mask| 1.0 - share(m, 0);
        let shares: Vec<f64> = DOMAINS.iter().map(|d| mean_stat(task, d, fg)).collect();
        let (lo, hi) = shares.iter().fold((1.0f64, 0.0f64), |(l, h), &s| (l.min(s), h.max(s)));
        assert!(hi < 1.6 * lo, "{}: foreground shares per domain {shares:?}", task.name());
    }
}

#[test]
fn domain_parameters_differ_and_bad_names_are_errors() {
    for task in [Task::Cardiac, Task::Fundus] {
        let all: Vec<Domain> = DOMAINS.iter().map(|d| Domain::of(task, d).unwrap()).collect();
        for i in 0..4 {
            for j in i + 1..4 {
                assert_ne!(all[i], all[j]);
            }
        }
        let e = Domain::of(task, "E").unwrap_err().to_string();
        assert!(e.contains("unknown domain 'E'"), "{e}");
    }
    let e = Task::parse("brain").unwrap_err().to_string();
    assert!(e.contains("unknown task 'brain'") && e.contains("cardiac") && e.contains("fundus"), "{e}");
    let dir = temp("errors");
    let e = write_dataset(&options(Task::Fundus, "A", 0, 32, 0), &dir).unwrap_err().to_string();
    assert!(e.contains("--count"), "{e}");
    let e = write_dataset(&options(Task::Fundus, "A", 1, 8, 0), &dir).unwrap_err().to_string();
    assert!(e.contains("--size 8"), "{e}");
    write_dataset(&options(Task::Fundus, "A", 1, 32, 0), &dir).unwrap();
    let e = write_dataset(&options(Task::Fundus, "A", 1, 32, 0), &dir).unwrap_err().to_string();
    assert!(e.contains("is not empty"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn command_line_writes_a_data_set_and_rejects_bad_names() {
    let vlsa = env!("CARGO_BIN_EXE_vlsa");
    let dir = temp("cli");
    let run = |args: &[&str]| {
        std::process::Command::new(vlsa).args(args).env("XDG_RUNTIME_DIR", std::env::temp_dir()).output().unwrap()
    };
    let out = run(&[
        "synth",
        "--task",
        "cardiac",
        "--domain",
        "C",
        "--count",
        "2",
        "--size",
        "32",
        "--out",
        dir.to_str().unwrap(),
        "--seed",
        "3",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.join("images/cardiac_C_00001.png").is_file() && dir.join("masks/cardiac_C_00001.png").is_file());
    // Same files as the library makes.
    let (img, mask) = generate(Task::Cardiac, &Domain::of(Task::Cardiac, "C").unwrap(), 32, 3, 1);
    assert_eq!(Mask::load(&dir.join("masks/cardiac_C_00001.png"), Some(4)).unwrap(), mask);
    let back = Image::load(&dir.join("images/cardiac_C_00001.png")).unwrap();
    assert_eq!(back.to_rgb8(), img.to_rgb8());
    for (args, expected) in [
        (vec!["synth", "--task", "brain", "--domain", "A", "--count", "1", "--out", "x"], "vlsa: unknown task 'brain'"),
        (vec!["synth", "--task", "fundus", "--domain", "Z", "--count", "1", "--out", "x"], "vlsa: unknown domain 'Z'"),
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with(expected), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn shipped_samples_match_the_generator() {
    // samples/README.md names the command that made them; libm may round differently on other
    // platforms, so images get one 8-bit level of slack (masks are exact).
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples");
    for task in [Task::Cardiac, Task::Fundus] {
        for domain in ["A", "C"] {
            for index in 0..2 {
                let d = Domain::of(task, domain).unwrap();
                let (img, mask) = generate(task, &d, 128, 0, index);
                let name = vlsa::synth::sample_name(task, &d, index as usize);
                assert_eq!(Mask::load(&root.join(format!("{name}_mask.png")), None).unwrap(), mask, "{name}");
                let shipped = Image::load(&root.join(format!("{name}.png"))).unwrap().to_rgb8();
                let diff = shipped.iter().zip(img.to_rgb8()).map(|(&a, b)| a.abs_diff(b)).max().unwrap();
                assert!(diff <= 1, "{name}: differs by {diff} levels from the generator");
            }
        }
    }
}

#[test]
fn half_the_photos_show_one_small_notch_beyond_the_field_of_view() {
    // The field of view is a circle of radius 0.47 of the side; beyond it only a notch is lit.
    let domain = Domain::of(Task::Fundus, "A").unwrap();
    let size = 128;
    let mut with_notch = 0;
    for i in 0..40 {
        let (image, _) = generate(Task::Fundus, &domain, size, 9, i);
        let mut lit = Vec::new();
        for y in 0..size {
            for x in 0..size {
                let (u, v) = ((x as f32 + 0.5) / size as f32 - 0.5, (y as f32 + 0.5) / size as f32 - 0.5);
                let beyond = (u * u + v * v).sqrt() - 0.47;
                if beyond > 1.5 / size as f32 && image.rgb[(y * size + x) * 3] > 0.15 {
                    lit.push((x, y));
                }
            }
        }
        if lit.is_empty() {
            continue;
        }
        with_notch += 1;
        // One tab: every lit pixel beyond the circle within a few pixels of the others.
        let (xs, ys): (Vec<usize>, Vec<usize>) = lit.iter().copied().unzip();
        let spread = |v: &[usize]| v.iter().max().unwrap() - v.iter().min().unwrap();
        assert!(spread(&xs) <= 7 && spread(&ys) <= 7, "image {i}: lit pixels beyond the field of view {lit:?}");
    }
    assert!((10..=30).contains(&with_notch), "{with_notch} of 40 photos have a notch");
}

/// Pixels within `reach` steps (8-neighbour) of a pixel of `region`, `region` included.
fn grown(region: &[bool], size: usize, reach: usize) -> Vec<bool> {
    let mut out = region.to_vec();
    for _ in 0..reach {
        let prev = out.clone();
        for y in 0..size {
            for x in 0..size {
                let lo = |v: usize| v.saturating_sub(1);
                let near = (lo(y)..=(y + 1).min(size - 1))
                    .any(|v| (lo(x)..=(x + 1).min(size - 1)).any(|u| prev[v * size + u]));
                out[y * size + x] = near;
            }
        }
    }
    out
}

fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(f32::total_cmp);
    v[v.len() / 2]
}

#[test]
fn some_eyes_show_a_pale_zone_around_the_disc_that_the_mask_calls_background() {
    // How far the green of the background just outside the disc (1-2 pixels at 128 px) lies
    // from the retina's (6-10 pixels out) toward the disc's: 0.44 on samples/retina.jpg with its
    // hand-drawn mask; before the zone was drawn at that strength, no synthetic eye passed 0.3.
    let domain = Domain::of(Task::Fundus, "A").unwrap();
    let size = 128;
    let (mut pale, mut plain) = (0, 0);
    for i in 0..40 {
        let (image, mask) = generate(Task::Fundus, &domain, size, 13, i);
        let disc: Vec<bool> = mask.labels.iter().map(|&l| l > 0).collect();
        let (near, inner, outer) = (grown(&disc, size, 2), grown(&disc, size, 6), grown(&disc, size, 10));
        let green = |keep: &dyn Fn(usize) -> bool| {
            median((0..size * size).filter(|&i| keep(i)).map(|i| image.rgb[i * 3 + 1]).collect())
        };
        let rim = green(&|i| mask.labels[i] == 1);
        let ring = green(&|i| near[i] && !disc[i]);
        let retina = green(&|i| outer[i] && !inner[i]);
        let h = (ring - retina) / (rim - retina);
        pale += usize::from(h > 0.4);
        plain += usize::from(h < 0.15);
    }
    assert!(pale >= 4 && plain >= 10, "of 40 eyes {pale} have a pale zone like the real photo's, {plain} none");
}

#[test]
fn cameras_store_jpegs_and_scanners_do_not() {
    for (task, qualities) in [(Task::Fundus, [95, 85, 50, 75]), (Task::Cardiac, [0; 4])] {
        for (name, q) in ["A", "B", "C", "D"].into_iter().zip(qualities) {
            assert_eq!(Domain::of(task, name).unwrap().jpeg_quality, q, "{task:?} {name}");
        }
    }
    // The compression is part of the acquisition: the same eye through the same camera without
    // it differs, and by more at quality 50 than at 95 (measured: 2.8 and 4.7 levels on
    // average; the sensor noise that quality 95 rounds away is most of domain A's change).
    let loss = |name: &str| {
        let with = Domain::of(Task::Fundus, name).unwrap();
        let without = Domain { jpeg_quality: 0, ..with.clone() };
        let (a, _) = generate(Task::Fundus, &with, 128, 4, 0);
        let (b, _) = generate(Task::Fundus, &without, 128, 4, 0);
        a.rgb.iter().zip(&b.rgb).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.rgb.len() as f32
    };
    let (a, c) = (loss("A"), loss("C"));
    assert!(a > 0.0 && c > 1.3 * a, "JPEG changes domain A by {a}, C by {c}");
}
