//! The data-set loader: the docs/DESIGN.md layout, and one clear error per kind of broken folder.

use std::path::{Path, PathBuf};

use vlsa::data::Dataset;
use vlsa::image_io::{Image, Mask};

fn folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vlsa-dataset-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("masks")).unwrap();
    dir
}

fn write_pair(dir: &Path, name: &str, w: usize, h: usize, mask_w: usize, label: u8) {
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 256) as u8).collect();
    Image::from_rgb8(w, h, &rgb).unwrap().save_png(&dir.join(format!("images/{name}.png"))).unwrap();
    Mask { width: mask_w, height: h, labels: vec![label; mask_w * h] }
        .save_png(&dir.join(format!("masks/{name}.png")))
        .unwrap();
}

#[test]
fn loads_sorted_samples_and_batches_them() {
    let dir = folder("ok");
    write_pair(&dir, "b", 6, 4, 6, 2);
    write_pair(&dir, "a", 3, 3, 3, 1);
    std::fs::write(dir.join("images/README.txt"), "not an image").unwrap();
    let ds = Dataset::load(&dir, 3).unwrap();
    assert_eq!(ds.samples.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    let (input, target) = ds.batch(&[1, 0], 4, [0.0; 3], [1.0; 3]);
    assert_eq!(input.len(), 2 * 3 * 16);
    assert_eq!(target.len(), 2 * 16);
    assert!(target[..16].iter().all(|&t| t == 2) && target[16..].iter().all(|&t| t == 1));
    assert!(input.iter().all(|v| (0.0..=1.0).contains(v)));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn error_of(dir: &Path, classes: usize) -> String {
    Dataset::load(dir, classes).unwrap_err().to_string()
}

#[test]
fn broken_folders_are_one_clear_error() {
    let dir = folder("missing-mask");
    write_pair(&dir, "a", 3, 3, 3, 1);
    std::fs::remove_file(dir.join("masks/a.png")).unwrap();
    let e = error_of(&dir, 3);
    assert!(e.contains("has no mask") && e.contains("masks/a.png"), "{e}");

    let dir = folder("size");
    write_pair(&dir, "a", 3, 3, 5, 1);
    let e = error_of(&dir, 3);
    assert!(e.contains("is 5x3 but its image") && e.contains("is 3x3"), "{e}");

    let dir = folder("range");
    write_pair(&dir, "a", 3, 3, 3, 4);
    let e = error_of(&dir, 3);
    assert!(e.contains("class value 4") && e.contains("only 3 classes"), "{e}");

    let dir = folder("empty");
    let e = error_of(&dir, 3);
    assert!(e.contains("holds no PNG or JPEG images"), "{e}");

    std::fs::remove_dir_all(dir.join("masks")).unwrap();
    let e = error_of(&dir, 3);
    assert!(e.contains("is not a data set") && e.contains("masks"), "{e}");
    for name in ["missing-mask", "size", "range", "empty"] {
        let _ =
            std::fs::remove_dir_all(std::env::temp_dir().join(format!("vlsa-dataset-{name}-{}", std::process::id())));
    }
}

#[test]
fn training_data_is_cropped_to_each_field_of_view_image_and_mask_alike() {
    let dir = folder("fov");
    // A bright 10 x 8 field at (7, 0) in a 24 x 8 black frame, and a frame it fills.
    let (w, h) = (24usize, 8usize);
    let rgb: Vec<u8> =
        (0..w * h).flat_map(|i| if (7..17).contains(&(i % w)) { [200, 90, 40] } else { [0; 3] }).collect();
    Image::from_rgb8(w, h, &rgb).unwrap().save_png(&dir.join("images/framed.png")).unwrap();
    let labels: Vec<u8> = (0..w * h).map(|i| (i % w % 3) as u8).collect();
    Mask { width: w, height: h, labels: labels.clone() }.save_png(&dir.join("masks/framed.png")).unwrap();
    write_pair(&dir, "full", 6, 4, 6, 1);
    let ds = Dataset::load(&dir, 3).unwrap().cropped_to_field_of_view();
    let (framed, full) = (&ds.samples[0], &ds.samples[1]);
    assert_eq!((framed.image.width, framed.image.height, framed.mask.width, framed.mask.height), (10, 8, 10, 8));
    assert!(framed.image.rgb.iter().step_by(3).all(|&v| (v - 200.0 / 255.0).abs() < 1e-6), "only the field");
    let want: Vec<u8> = (0..10 * h).map(|i| labels[(i / 10) * w + 7 + i % 10]).collect();
    assert_eq!(framed.mask.labels, want);
    assert_eq!((full.image.width, full.image.height), (6, 4), "a full frame stays whole");
    std::fs::remove_dir_all(&dir).unwrap();
}
