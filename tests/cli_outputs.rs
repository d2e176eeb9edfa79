//! The command line's inputs and outputs: JSON written through links and into pipes, outputs
//! checked before the work, a closed stdout, progress only on a terminal, folders and several
//! values after one flag, outputs that would collide, the adapter flag and backend names, clear
//! errors for the wrong kind of file, and overlays of small images.

mod cli_support;

use std::path::Path;
use std::process::Stdio;

use cli_support::*;
use vlsa::image_io::{Image, Mask};

#[cfg(unix)]
#[test]
fn json_goes_through_links_and_into_pipes() {
    use std::os::unix::fs::{symlink, FileTypeExt};
    let dir = Dir::new("json-links");
    let m = model(&dir);
    let data = synth(&dir, "data", 2, 1);
    std::fs::create_dir_all(dir.join("results")).unwrap();
    symlink("results/real.json", dir.join("link.json")).unwrap();
    ok(&["eval", "--model", &m, "--data", &data, "--json", &dir.path("link.json")]);
    assert!(std::fs::symlink_metadata(dir.join("link.json")).unwrap().file_type().is_symlink(), "still a link");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results/real.json")).unwrap()).unwrap();
    assert_eq!(json["datasets"][0]["images"], 2);
    // A FIFO is written into, not replaced by a file.
    let fifo = dir.join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    ok(&["eval", "--model", &m, "--data", &data, "--json", &dir.path("fifo")]);
    let through: serde_json::Value = serde_json::from_str(&reader.join().unwrap()).unwrap();
    assert_eq!(through["datasets"][0]["images"], 2);
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    // A device takes the bytes and stays a device.
    ok(&["eval", "--model", &m, "--data", &data, "--json", "/dev/null"]);
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
}

#[test]
fn eval_json_is_checked_before_evaluating() {
    let dir = Dir::new("json-first");
    let m = model(&dir);
    let data = synth(&dir, "data", 2, 1);
    ok(&["eval", "--model", &m, "--data", &data, "--json", &dir.path("missing/dir/x.json")]);
    assert!(dir.join("missing/dir/x.json").is_file(), "missing folders are made");
    std::fs::write(dir.join("blocker"), b"a file").unwrap();
    for (json, what) in [(dir.path("missing"), "is a folder"), (dir.path("blocker/x.json"), "cannot write --json")] {
        let out = run(&["eval", "--model", &m, "--data", &data, "--json", &json]);
        assert_eq!(out.status.code(), Some(1));
        assert!(one_sentence(&text(&out.stderr)).contains(what), "{}", text(&out.stderr));
        assert!(out.stdout.is_empty(), "refused before evaluating: {}", text(&out.stdout));
    }
}

/// Runs `vlsa args` with its stdout closed before it writes anything.
fn with_closed_stdout(args: &[&str]) -> std::process::Output {
    let mut child = command().args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let dir = Dir::new("closed-stdout");
    let m = model(&dir);
    let data = synth(&dir, "data", 2, 1);
    for args in [
        vec!["info"],
        vec!["eval", "--model", &m, "--data", &data],
        vec!["train", "--model", &m, "--data", &data, "--steps", "1", "--batch", "2", "--out", &dir.path("s.st")],
    ] {
        let out = with_closed_stdout(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
        assert!(!text(&out.stderr).contains("panicked"), "{}", text(&out.stderr));
    }
    assert!(dir.join("s.st").is_file(), "the training's checkpoint was written before its report");
}

#[test]
fn progress_only_on_a_terminal_and_never_with_quiet() {
    let dir = Dir::new("progress");
    let m = model(&dir);
    let data = synth(&dir, "data", 3, 1);
    // stderr is a pipe here: the table alone.
    for quiet in [false, true] {
        let mut args = vec!["eval", "--model", &m, "--data", &data, "--batch", "1"];
        if quiet {
            args.push("--quiet");
        }
        let out = run(&args);
        assert!(out.status.success());
        assert!(out.stderr.is_empty(), "no progress without a terminal: {}", text(&out.stderr));
    }
    // On a terminal (util-linux `script` gives the command one), a progress line per batch.
    let has_script = std::process::Command::new("script").arg("--version").output().is_ok_and(|o| o.status.success());
    if !cfg!(target_os = "linux") || !has_script {
        eprintln!("skipped the terminal half: util-linux `script` is not available");
        return;
    }
    let on_terminal = |extra: &str| {
        let cmd = format!("{} eval --model {m} --data {data} --batch 1 {extra}", env!("CARGO_BIN_EXE_vlsa"));
        let out = std::process::Command::new("script").args(["-qec", &cmd, "/dev/null"]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stdout));
        text(&out.stdout)
    };
    let shown = on_terminal("");
    assert!(shown.contains("evaluating") && shown.contains("3/3 images"), "{shown}");
    assert!(!on_terminal("--quiet").contains("evaluating"));
}

fn write_images(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let rgb: Vec<u8> = (0..45 * 30 * 3).map(|i| (i * 13 % 251) as u8).collect();
    Image::from_rgb8(45, 30, &rgb).unwrap().save_png(&dir.join("a.png")).unwrap();
    image::RgbImage::from_fn(33, 33, |x, y| image::Rgb([x as u8 * 7, y as u8 * 7, 90]))
        .save(dir.join("c.jpg"))
        .unwrap();
    std::fs::write(dir.join("notes.txt"), b"not an image").unwrap();
}

#[test]
fn folders_and_several_values_after_one_flag() {
    let dir = Dir::new("folders");
    let m = model(&dir);
    write_images(&dir.join("imgs"));
    let stdout = ok(&["segment", "--model", &m, "--image", &dir.path("imgs"), "--out", &dir.path("o1")]);
    assert_eq!(stdout.lines().count(), 2, "a.png and c.jpg, sorted: {stdout}");
    assert!(stdout.lines().next().unwrap().contains("a.png"), "{stdout}");
    let (a, c) = (dir.path("imgs/a.png"), dir.path("imgs/c.jpg"));
    let stdout = ok(&["segment", "--model", &m, "--image", &a, &c, "--out", &dir.path("o2")]);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    for stem in ["a", "c"] {
        assert!(dir.join(&format!("o2/{stem}_mask.png")).is_file());
    }
    let e = fails(&["segment", "--model", &m, "--image", &dir.path("o1/../empty_dir_absent")]);
    assert!(e.contains("empty_dir_absent"), "{e}");
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    let e = fails(&["segment", "--model", &m, "--image", &dir.path("empty")]);
    assert!(e.contains("no PNG or JPEG"), "{e}");
    let (d1, d2) = (synth(&dir, "d1", 2, 1), synth(&dir, "d2", 2, 2));
    let table = ok(&["eval", "--model", &m, "--data", &d1, &d2]);
    assert!(table.contains("mean over 2 data sets"), "{table}");
}

#[test]
fn outputs_that_would_collide_are_refused_before_any_work() {
    let dir = Dir::new("collide");
    let m = model(&dir);
    write_images(&dir.join("x"));
    write_images(&dir.join("y"));
    let out = dir.path("out");
    let e = fails(&["segment", "--model", &m, "--image", &dir.path("x/a.png"), &dir.path("y/a.png"), "--out", &out]);
    assert!(e.contains("x/a.png") && e.contains("y/a.png") && e.contains("--out"), "{e}");
    assert!(!dir.join("out").exists(), "nothing was written");
    // The same file named twice is segmented once.
    let stdout = ok(&["segment", "--model", &m, "--image", &dir.path("x/a.png"), &dir.path("x/a.png"), "--out", &out]);
    assert_eq!(stdout.lines().count(), 1);
}

#[test]
fn adapter_flag_and_backend_names() {
    let help = ok(&["--help"]);
    assert!(help.contains("--adapter <NAME>"), "{help}");
    assert!(ok(&["eval", "--help"]).contains("--adapter <NAME>"), "a global flag");
    let info = ok(&["info"]);
    let name = info.lines().next().unwrap().trim_start_matches("adapter:").trim().to_string();
    let part: String = name.chars().take(6).collect::<String>().to_uppercase();
    let chosen = ok(&["--adapter", &part, "info"]);
    assert!(chosen.lines().next().unwrap().contains(&name), "{chosen}");
    let e = fails(&["info", "--adapter", "no-such-gpu"]);
    assert!(e.contains("--adapter no-such-gpu matches none"), "{e}");
    let out = command().arg("info").env("WGPU_BACKEND", "bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = one_sentence(&text(&out.stderr));
    assert!(e.contains("\"bogus\" is unknown") && e.contains("vulkan"), "{e}");
    // Usage errors are clap's, with exit code 2 (README: "Exit codes").
    assert_eq!(run(&["info", "--no-such-flag"]).status.code(), Some(2));
}

#[test]
fn worker_thread_pinning_is_reported_and_a_bad_setting_refused() {
    let out = command().arg("info").env("VLSA_PIN_THREADS", "sometimes").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = one_sentence(&text(&out.stderr));
    assert!(e.contains("VLSA_PIN_THREADS=sometimes") && e.contains("1 (on) or 0 (off)"), "{e}");
    let off = command().arg("info").env("VLSA_PIN_THREADS", "0").output().unwrap();
    let on = command().arg("info").env_remove("VLSA_PIN_THREADS").output().unwrap();
    let (off, on) = (text(&off.stdout), text(&on.stdout));
    if on.contains("device type:  Cpu") && cfg!(target_os = "linux") {
        assert!(off.contains("worker threads: none pinned (VLSA_PIN_THREADS=0)"), "{off}");
        let line = on.lines().find(|l| l.starts_with("worker threads:")).expect("a worker threads line");
        assert!(line.contains("pinned to cores"), "{line}");
    } else {
        assert!(!on.contains("pinned to cores"), "{on}");
    }
}

#[test]
fn the_wrong_kind_of_file_is_named() {
    let dir = Dir::new("wrong-files");
    let m = model(&dir);
    write_images(&dir.0);
    std::fs::write(dir.join("README.md"), "# notes\n\nNot a model.\n").unwrap();
    let img = dir.path("a.png");
    for (model, what) in [
        (dir.path("c.jpg"), "is not a safetensors file (it is a JPEG image)"),
        (dir.path("a.png"), "is not a safetensors file (it is a PNG image)"),
        (dir.path("README.md"), "is not a safetensors file (it is text)"),
        (dir.path("."), "is a folder, not a safetensors file"),
    ] {
        let e = fails(&["segment", "--model", &model, "--image", &img]);
        assert!(e.contains(what), "{e}");
    }
    let e =
        fails(&["init", "--config", &dir.path("cfg.json"), "--out", &dir.path("x.st"), "--clip", &dir.path("nope")]);
    assert!(e.contains("nope") && e.contains("does not exist") && !e.contains("config.json"), "{e}");
    let e = fails(&["segment", "--model", &m, "--image", &img, "--out", &dir.path("README.md")]);
    assert!(e.contains("is a file") && e.contains("--out"), "{e}");
    // A colour mask on an 8-bit image reports its 8-bit values.
    image::RgbImage::from_fn(45, 30, |x, _| image::Rgb([x as u8, 1, 2])).save(dir.join("colour.png")).unwrap();
    let e = fails(&[
        "grad",
        "--model",
        &m,
        "--image",
        &img,
        "--mask",
        &dir.path("colour.png"),
        "--dump",
        &dir.path("g.st"),
    ]);
    assert!(e.contains("colour image") && e.contains("[0, 1, 2]"), "{e}");
    let _ = Mask::load(&dir.join("colour.png"), None).unwrap_err();
}

#[test]
fn overlays_of_small_images_fit_their_legend() {
    let dir = Dir::new("overlay-small");
    let m = model(&dir);
    let data = synth(&dir, "data", 1, 1);
    let images = format!("{data}/images");
    ok(&["segment", "--model", &m, "--image", &images, "--out", &dir.path("o")]);
    let overlay = std::fs::read_dir(dir.join("o"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("_overlay.png"))
        .unwrap();
    let o = Image::load(&overlay).unwrap();
    assert_eq!(o.width, vlsa::infer::OVERLAY_MIN_WIDTH, "a 32 px image is enlarged 10 times");
    let legend = o.height - o.width;
    assert!(legend > 0 && legend < o.width / 2, "the legend strip is shorter than the image: {legend}");
}
