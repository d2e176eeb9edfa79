//! Fuzzing of the other loaders: images and masks (`Image::decode`, `Mask::decode`), data sets
//! (`Dataset::load`) and the tokenizer (`Tokenizer::from_json`, `Tokenizer::encode`), with the
//! seeded mutation fuzzer of `tests/fuzz_loaders.rs` (byte mutations from `tests/mutate/`).
//!
//! Images: small valid PNGs (grey, grey+alpha, RGB, RGBA, 16-bit, 1-bit, palette) and JPEGs
//! (grey, RGB), mutated at the byte level, with the PNG chunk checksums repaired or not (so the
//! mutations reach the decompressor and the filters, not only the CRC check), and with huge
//! declared dimensions in the PNG IHDR and the JPEG SOF. A counting allocator checks that no
//! decode makes one allocation over 64 MiB. Data sets: temp folders with random mixes of valid,
//! corrupt, missing, mis-sized, colour and out-of-range masks, directories and empty files where
//! files belong, and odd file names. Tokenizer: the JSON mutated (structure and bytes) and
//! `encode` on random Unicode: control characters, combining marks, Hangul and ligatures that
//! expand under NFD or lowercasing, characters around the surrogate gap, noncharacters,
//! special-token fragments, very long words and a 1 MB text.
//!
//! Every call runs under `catch_unwind`; a panic fails the test with the seed and the case
//! number. Every rejection must be one line naming the file (or folder). The image seeds and the
//! inputs that found bugs are kept in `tests/fuzz_corpus/images/` (regenerate with
//! `cargo test --test fuzz_inputs -- --ignored write_corpus`), each with what it must give.
//! `VLSA_FUZZ_CASES=N` scales the number of inputs (default 10 000 images, N/20 data sets, N
//! tokenizer inputs), `VLSA_FUZZ_SEED=S` the seed (default 1).

mod alloc_count;
mod common;
#[allow(dead_code)]
mod mutate;

use alloc_count::largest_allocation;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use common::Rng;
use image::{DynamicImage, ImageFormat};
use mutate::{mutate_bytes, mutate_json};
use serde_json::{json, Value};
use vlsa::data::Dataset;
use vlsa::image_io::{Image, Mask};
use vlsa::text::Tokenizer;

/// The most one image decode may allocate at once: far above what the seeds need (a few KiB)
/// and far below what a huge declared size would ask for.
const ALLOCATION_BOUND: usize = 64 << 20;

fn cases_from_env(default: usize) -> (usize, u64) {
    let cases = std::env::var("VLSA_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let seed = std::env::var("VLSA_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    (cases, seed)
}

/// Runs `f` under `catch_unwind`; a panic becomes a failure description (and the input is saved).
fn guarded<T>(what: &str, input: &[u8], f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let path = std::env::temp_dir().join(format!("vlsa-fuzz-failure-{}.bin", what.replace([' ', '/', '='], "_")));
        let _ = std::fs::write(&path, input);
        format!("{what}: PANIC `{message}` (input saved to {})", path.display())
    })
}

/// One line, not empty, not too long, naming `source`.
fn is_one_sentence(msg: &str, source: &str) -> bool {
    !msg.trim().is_empty() && !msg.contains('\n') && msg.len() < 2000 && msg.contains(source)
}

fn report(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} failures, first ones:\n{}",
        failures.len(),
        failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

// ----- PNG and JPEG seeds -----

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), format).unwrap();
    bytes
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(&out[4..]).to_be_bytes());
    out
}

/// A PNG written by hand (zlib "stored" blocks, filter 0), for colour types the encoder of the
/// `image` crate does not write: palette and 1-bit grey.
fn handmade_png(
    width: u32,
    height: u32,
    bit_depth: u8,
    color_type: u8,
    row_bytes: usize,
    palette: Option<&[u8]>,
    fill: impl Fn(usize) -> u8,
) -> Vec<u8> {
    let mut raw = Vec::new();
    for y in 0..height as usize {
        raw.push(0);
        raw.extend((0..row_bytes).map(|x| fill(y * row_bytes + x)));
    }
    let mut zlib = vec![0x78, 0x01, 0x01];
    zlib.extend_from_slice(&(raw.len() as u16).to_le_bytes());
    zlib.extend_from_slice(&(!(raw.len() as u16)).to_le_bytes());
    zlib.extend_from_slice(&raw);
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &raw {
        a = (a + byte as u32) % 65521;
        b = (b + a) % 65521;
    }
    zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[bit_depth, color_type, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(chunk(b"IHDR", &ihdr));
    if let Some(p) = palette {
        out.extend(chunk(b"PLTE", p));
    }
    out.extend(chunk(b"IDAT", &zlib));
    out.extend(chunk(b"IEND", &[]));
    out
}

/// Recomputes every chunk's CRC of a PNG, as far as the chunk lengths allow.
fn fix_png_crcs(bytes: &mut [u8]) {
    let mut at = 8;
    while at + 12 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let Some(end) = (at + 8).checked_add(len).filter(|&e| e + 4 <= bytes.len()) else { return };
        let crc = crc32(&bytes[at + 4..end]);
        bytes[end..end + 4].copy_from_slice(&crc.to_be_bytes());
        at = end + 4;
    }
}

/// Sets the IHDR width and height (and its CRC).
fn with_png_size(bytes: &[u8], width: u32, height: u32) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[16..20].copy_from_slice(&width.to_be_bytes());
    b[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&b[12..29]);
    b[29..33].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Sets the height and width of a JPEG's first start-of-frame segment.
fn with_jpeg_size(bytes: &[u8], width: u16, height: u16) -> Vec<u8> {
    let mut b = bytes.to_vec();
    if let Some(at) = b.windows(2).position(|w| w[0] == 0xFF && matches!(w[1], 0xC0..=0xC2)) {
        b[at + 5..at + 7].copy_from_slice(&height.to_be_bytes());
        b[at + 7..at + 9].copy_from_slice(&width.to_be_bytes());
    }
    b
}

/// The valid seeds: name and bytes. Mask-shaped ones (grey values 0..3) come first.
fn image_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let (w, h) = (7u32, 5u32);
    let n = (w * h) as usize;
    let grey = image::GrayImage::from_fn(w, h, |x, y| image::Luma([((x + y) % 3) as u8]));
    let grey_a = image::GrayAlphaImage::from_fn(w, h, |x, y| image::LumaA([((x * y) % 3) as u8, 200]));
    let rgb = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 30) as u8, (y * 40) as u8, 99]));
    let rgba = image::RgbaImage::from_fn(w, h, |x, y| image::Rgba([(x * 30) as u8, (y * 40) as u8, 7, (x * y) as u8]));
    let grey16 = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(w, h, |x, _| image::Luma([(x % 2) as u16]));
    let rgb16 = image::ImageBuffer::<image::Rgb<u16>, _>::from_fn(w, h, |x, y| {
        image::Rgb([x as u16 * 9000, y as u16 * 300, 65535])
    });
    let grey_rgb = image::RgbImage::from_fn(w, h, |x, _| image::Rgb([(x % 2) as u8; 3]));
    let palette: Vec<u8> = vec![0, 0, 0, 1, 1, 1, 2, 2, 2, 250, 10, 10];
    vec![
        ("grey8.png", encode(&DynamicImage::ImageLuma8(grey.clone()), ImageFormat::Png)),
        ("grey_alpha8.png", encode(&DynamicImage::ImageLumaA8(grey_a), ImageFormat::Png)),
        ("grey16.png", encode(&DynamicImage::ImageLuma16(grey16), ImageFormat::Png)),
        ("grey_as_rgb.png", encode(&DynamicImage::ImageRgb8(grey_rgb), ImageFormat::Png)),
        ("grey1.png", handmade_png(w, h, 1, 0, 1, None, |i| (i * 37) as u8)),
        ("palette4.png", handmade_png(w, h, 4, 3, 4, Some(&palette), |i| (i % 3) as u8 * 0x11)),
        ("palette8.png", handmade_png(w, h, 8, 3, w as usize, Some(&palette), |i| (i % 4) as u8)),
        ("rgb8.png", encode(&DynamicImage::ImageRgb8(rgb.clone()), ImageFormat::Png)),
        ("rgba8.png", encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png)),
        ("rgb16.png", encode(&DynamicImage::ImageRgb16(rgb16), ImageFormat::Png)),
        (
            "grey.jpg",
            encode(
                &DynamicImage::ImageLuma8(image::GrayImage::from_fn(16, 9, |x, y| image::Luma([(x * 16 + y) as u8]))),
                ImageFormat::Jpeg,
            ),
        ),
        (
            "rgb.jpg",
            encode(
                &DynamicImage::ImageRgb8(image::RgbImage::from_fn(17, 8, |x, y| {
                    image::Rgb([(x * 15) as u8, (y * 30) as u8, 60])
                })),
                ImageFormat::Jpeg,
            ),
        ),
    ]
    .into_iter()
    .inspect(|(name, bytes)| assert!(Image::decode(bytes, name).is_ok() && n > 0, "seed {name} must decode"))
    .collect()
}

/// A mutated image: byte mutations (with the PNG CRCs repaired half the time), or a huge or
/// zero declared size.
fn mutate_image(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let is_png = seed.starts_with(b"\x89PNG");
    let sizes = [0u32, 1, 65_535, 65_536, 100_000, 1 << 20, 1 << 28, 0x7FFF_FFFF, 0x8000_0000, u32::MAX];
    match rng.below(8) {
        0 if is_png => with_png_size(seed, sizes[rng.below(sizes.len())], sizes[rng.below(sizes.len())]),
        0 => with_jpeg_size(
            seed,
            sizes[rng.below(sizes.len())].min(65_535) as u16,
            sizes[rng.below(sizes.len())].min(65_535) as u16,
        ),
        _ => {
            let mut b = seed.to_vec();
            for _ in 0..1 + rng.below(3) {
                b = mutate_bytes(rng, &b);
            }
            if is_png && rng.below(2) == 0 {
                fix_png_crcs(&mut b);
            }
            b
        }
    }
}

/// Checks what a decode returned; `Err` describes a broken promise.
fn check_image(source: &str, result: vlsa::Result<Image>) -> Result<bool, String> {
    match result {
        Ok(img) => {
            if img.width == 0
                || img.height == 0
                || img.rgb.len() != img.width * img.height * 3
                || !img.rgb.iter().all(|v| (0.0..=1.0).contains(v))
            {
                return Err(format!(
                    "{source}: decoded to an inconsistent image {}x{} with {} values",
                    img.width,
                    img.height,
                    img.rgb.len()
                ));
            }
            Ok(true)
        }
        Err(e) if is_one_sentence(&e.to_string(), source) => Ok(false),
        Err(e) => Err(format!("{source}: unclear error `{e}`")),
    }
}

fn check_mask(source: &str, classes: Option<usize>, result: vlsa::Result<Mask>) -> Result<bool, String> {
    match result {
        Ok(m) => {
            let limit = classes.unwrap_or(256);
            if m.width == 0
                || m.height == 0
                || m.labels.len() != m.width * m.height
                || m.labels.iter().any(|&v| v as usize >= limit)
            {
                return Err(format!(
                    "{source}: decoded to an inconsistent mask {}x{} with {} labels",
                    m.width,
                    m.height,
                    m.labels.len()
                ));
            }
            Ok(true)
        }
        Err(e) if is_one_sentence(&e.to_string(), source) => Ok(false),
        Err(e) => Err(format!("{source}: unclear error `{e}`")),
    }
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus/images")
}

/// The image corpus: the valid seeds and the inputs that found bugs, each with what its
/// rejection must say (`None`: it decodes).
fn image_corpus() -> Vec<(String, Vec<u8>, Option<&'static str>)> {
    let seeds = image_seeds();
    let grey = &seeds[0].1;
    let jpeg = &seeds.iter().find(|(n, _)| *n == "grey.jpg").unwrap().1;
    let mut out: Vec<(String, Vec<u8>, Option<&'static str>)> =
        seeds.iter().map(|(n, b)| (n.to_string(), b.clone(), None)).collect();
    out.extend([
        // Made the decoder allocate 512 MiB up front before the size check.
        ("ihdr_16384x16384.png".to_string(), with_png_size(grey, 16_384, 16_384), Some("more than its")),
        ("ihdr_100000x100000.png".to_string(), with_png_size(grey, 100_000, 100_000), Some("more than vlsa's limit")),
        ("ihdr_zero_width.png".to_string(), with_png_size(grey, 0, 5), Some("cannot be decoded")),
        ("sof_16000x16000.jpg".to_string(), with_jpeg_size(jpeg, 16_000, 16_000), Some("more than its")),
        // zune-jpeg's errors for truncated files may span lines; vlsa's are one line.
        ("truncated.jpg".to_string(), jpeg[..jpeg.len() * 2 / 3].to_vec(), Some("cannot be decoded as Jpeg")),
        ("truncated.png".to_string(), grey[..grey.len() / 2].to_vec(), Some("cannot be decoded as Png")),
        (
            "bad_crc.png".to_string(),
            {
                let mut b = grey.clone();
                b[30] ^= 1;
                b
            },
            Some("cannot be decoded as Png"),
        ),
        (
            "gif_signature.gif".to_string(),
            b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec(),
            Some("vlsa reads PNG and JPEG"),
        ),
    ]);
    out
}

/// Writes the image corpus (run after changing the seeds).
#[test]
#[ignore]
fn write_corpus() {
    std::fs::create_dir_all(corpus_dir()).unwrap();
    for (name, bytes, _) in image_corpus() {
        std::fs::write(corpus_dir().join(name), bytes).unwrap();
    }
}

#[test]
fn image_corpus_decodes_or_is_refused_as_expected() {
    for (name, bytes, expected) in image_corpus() {
        let stored = std::fs::read(corpus_dir().join(&name))
            .unwrap_or_else(|e| panic!("{name}: {e}; regenerate with --ignored write_corpus"));
        assert_eq!(stored, bytes, "{name} differs from the generated seed; regenerate with --ignored write_corpus");
        let source = format!("corpus/{name}");
        let result = guarded(&name, &bytes, || Image::decode(&bytes, &source)).unwrap_or_else(|f| panic!("{f}"));
        match (expected, result) {
            (None, Ok(img)) => assert!(img.width > 0 && img.rgb.len() == img.width * img.height * 3, "{name}"),
            (None, Err(e)) => panic!("{name} must decode: {e}"),
            (Some(want), Ok(_)) => panic!("{name} must be refused ({want})"),
            (Some(want), Err(e)) => {
                let e = e.to_string();
                assert!(is_one_sentence(&e, &source) && e.contains(want), "{name}: `{e}` should say `{want}`");
            }
        }
    }
}

#[test]
fn huge_declared_image_sizes_are_refused_without_large_allocations() {
    let seeds = image_seeds();
    let mut failures = Vec::new();
    let mut tried = 0;
    for (name, bytes) in &seeds {
        let sizes: &[(u32, u32)] = &[
            (65_535, 65_535),
            (100_000, 100_000),
            (16_384, 16_384),
            (1 << 20, 1),
            (1, 1 << 20),
            (u32::MAX, u32::MAX),
            (0x7FFF_FFFF, 2),
            (20_000, 13_000),
            (0, 5),
            (7, 0),
        ];
        for &(w, h) in sizes {
            let input = if name.ends_with(".png") {
                with_png_size(bytes, w, h)
            } else {
                with_jpeg_size(bytes, w.min(65_535) as u16, h.min(65_535) as u16)
            };
            let what = format!("{name} declared {w}x{h}");
            tried += 2;
            let outcome = guarded(&what, &input, || {
                let (image, big1) = largest_allocation(|| Image::decode(&input, "huge.png"));
                let (mask, big2) = largest_allocation(|| Mask::decode(&input, "huge.png", None));
                (image, mask, big1.max(big2))
            });
            match outcome {
                Err(f) => failures.push(f),
                Ok((image, mask, largest)) => {
                    if let Err(f) = check_image("huge.png", image).and_then(|_| check_mask("huge.png", None, mask)) {
                        failures.push(format!("{what}: {f}"));
                    }
                    if largest > ALLOCATION_BOUND {
                        failures.push(format!("{what}: one allocation of {largest} bytes (bound {ALLOCATION_BOUND})"));
                    }
                }
            }
        }
    }
    // The dimensions are read before any pixel: a 100000x100000 PNG is refused by size.
    let e = Image::decode(&with_png_size(&seeds[0].1, 100_000, 100_000), "big.png").unwrap_err().to_string();
    assert!(e.starts_with("big.png: ") && e.contains("100000x100000"), "{e}");
    // A 16384x16384 PNG of a few hundred bytes cannot hold its pixels.
    let e = Image::decode(&with_png_size(&seeds[0].1, 16_384, 16_384), "big.png").unwrap_err().to_string();
    assert!(e.starts_with("big.png: ") && e.contains("16384x16384"), "{e}");
    println!("huge declared sizes: {tried} decodes, 0 panics");
    report(&failures);
}

#[test]
fn mutated_images_and_masks_never_panic() {
    let (cases, seed) = cases_from_env(10_000);
    let seeds = image_seeds();
    let mut rng = Rng::new(seed ^ 0x1A6E);
    let (mut decoded, mut refused, mut masks_decoded) = (0usize, 0usize, 0usize);
    let mut failures = Vec::new();
    for case in 0..cases {
        let (name, bytes) = &seeds[case % seeds.len()];
        let input = mutate_image(&mut rng, bytes);
        let classes = [None, Some(1), Some(2), Some(3), Some(256)][rng.below(5)];
        let what = format!("seed {seed} case {case} ({name})");
        let source = format!("case{case}.{}", if name.ends_with(".png") { "png" } else { "jpg" });
        let outcome = guarded(&what, &input, || {
            largest_allocation(|| (Image::decode(&input, &source), Mask::decode(&input, &source, classes)))
        });
        match outcome {
            Err(f) => failures.push(f),
            Ok(((image, mask), largest)) => {
                match check_image(&source, image) {
                    Ok(true) => decoded += 1,
                    Ok(false) => refused += 1,
                    Err(f) => failures.push(format!("{what}: {f}")),
                }
                match check_mask(&source, classes, mask) {
                    Ok(ok) => masks_decoded += ok as usize,
                    Err(f) => failures.push(format!("{what}: {f}")),
                }
                if largest > ALLOCATION_BOUND {
                    failures.push(format!("{what}: one allocation of {largest} bytes (bound {ALLOCATION_BOUND})"));
                }
            }
        }
    }
    println!("images: {cases} mutated inputs (seed {seed}), each as image and as mask: {decoded} images decoded, {refused} refused, {masks_decoded} masks decoded, {} failures", failures.len());
    report(&failures);
}

// ----- data sets -----

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vlsa-fuzz-inputs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn png_of(w: u32, h: u32, f: impl Fn(u32, u32) -> u8) -> Vec<u8> {
    encode(&DynamicImage::ImageLuma8(image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)]))), ImageFormat::Png)
}

const ODD_NAMES: &[&str] = &[
    "a",
    "b c",
    "ünïcødé",
    "x.y",
    "日本語",
    "UPPER",
    "-dash",
    "tab\there",
    "emoji😀",
    "semi;colon",
    "quote'\"",
    "dots..",
    "a%20b",
];

/// What one sample in a random data set is.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Valid,
    ValidJpeg,
    MissingMask,
    CorruptMask,
    CorruptImage,
    MisSizedMask,
    OutOfRangeMask,
    ColourMask,
    EmptyMask,
    MaskIsADirectory,
    /// A hidden or foreign file in images/ (skipped by the loader).
    Ignored,
}

const VARIANTS: &[Variant] = &[
    Variant::Valid,
    Variant::Valid,
    Variant::Valid,
    Variant::ValidJpeg,
    Variant::MissingMask,
    Variant::CorruptMask,
    Variant::CorruptImage,
    Variant::MisSizedMask,
    Variant::OutOfRangeMask,
    Variant::ColourMask,
    Variant::EmptyMask,
    Variant::MaskIsADirectory,
    Variant::Ignored,
];

/// Writes a random data set into `dir`; returns the samples the loader must accept (when
/// every sample is valid) or `None` when some sample must make it fail.
fn random_dataset(rng: &mut Rng, dir: &Path, classes: usize) -> Option<usize> {
    let images = dir.join("images");
    let masks = dir.join("masks");
    if rng.below(30) != 0 {
        std::fs::create_dir_all(&images).unwrap();
    }
    if rng.below(30) != 0 {
        std::fs::create_dir_all(&masks).unwrap();
    }
    if !images.is_dir() || !masks.is_dir() {
        return None;
    }
    let count = rng.below(5);
    let mut valid = Some(0);
    let mut used = Vec::new();
    for i in 0..count {
        let mut name = ODD_NAMES[rng.below(ODD_NAMES.len())].to_string();
        if rng.below(6) == 0 {
            name = "n".repeat(1 + rng.below(200));
        }
        name = format!("{name}{i}");
        used.push(name.clone());
        let (w, h) = (1 + rng.below(12) as u32, 1 + rng.below(12) as u32);
        let variant = VARIANTS[rng.below(VARIANTS.len())];
        let image = if variant == Variant::ValidJpeg {
            encode(
                &DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
                    image::Rgb([(x * 20) as u8, (y * 20) as u8, 3])
                })),
                ImageFormat::Jpeg,
            )
        } else {
            encode(
                &DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
                    image::Rgb([(x * 20) as u8, (y * 20) as u8, 3])
                })),
                ImageFormat::Png,
            )
        };
        let good_mask = png_of(w, h, |x, y| ((x + y) as usize % classes) as u8);
        let (ext, image) = match variant {
            Variant::ValidJpeg => (["jpg", "JPEG", "jpeg"][rng.below(3)], image),
            Variant::CorruptImage => ("png", mutate_bytes(rng, &image[..image.len() / 2])),
            _ => (["png", "PNG"][rng.below(2)], image),
        };
        if variant == Variant::Ignored {
            let file = [format!(".{name}.png"), format!("{name}.txt"), name.clone(), format!(".{name}.png.tmp-1")]
                [rng.below(4)]
            .clone();
            std::fs::write(images.join(file), &image).unwrap();
            continue;
        }
        std::fs::write(images.join(format!("{name}.{ext}")), &image).unwrap();
        let mask_path = masks.join(format!("{name}.png"));
        match variant {
            Variant::Valid | Variant::ValidJpeg => std::fs::write(&mask_path, &good_mask).unwrap(),
            Variant::MissingMask => {}
            Variant::CorruptMask => {
                let mut bad = mutate_bytes(rng, &good_mask);
                if bad == good_mask {
                    bad.truncate(bad.len() / 2);
                }
                std::fs::write(&mask_path, &bad).unwrap();
            }
            Variant::CorruptImage => std::fs::write(&mask_path, &good_mask).unwrap(),
            Variant::MisSizedMask => std::fs::write(&mask_path, png_of(w + 1, h, |_, _| 0)).unwrap(),
            Variant::OutOfRangeMask => {
                std::fs::write(&mask_path, png_of(w, h, |x, y| if (x, y) == (0, 0) { classes as u8 } else { 0 }))
                    .unwrap()
            }
            Variant::ColourMask => std::fs::write(
                &mask_path,
                encode(
                    &DynamicImage::ImageRgb8(image::RgbImage::from_pixel(w, h, image::Rgb([0, 1, 0]))),
                    ImageFormat::Png,
                ),
            )
            .unwrap(),
            Variant::EmptyMask => std::fs::write(&mask_path, b"").unwrap(),
            Variant::MaskIsADirectory => std::fs::create_dir_all(&mask_path).unwrap(),
            Variant::Ignored => unreachable!(),
        }
        // Any other variant makes the outcome open (a mutated mask may still decode) or an error.
        valid = match (valid, variant) {
            (Some(n), Variant::Valid | Variant::ValidJpeg) => Some(n + 1),
            _ => None,
        };
    }
    // A non-UTF-8 file name in images/ is skipped.
    if rng.below(4) == 0 {
        use std::os::unix::ffi::OsStrExt;
        std::fs::write(images.join(std::ffi::OsStr::from_bytes(b"bad\xff\xfe.png")), b"x").unwrap();
    }
    // Two images with one name and different extensions.
    if !used.is_empty() && rng.below(8) == 0 {
        std::fs::write(images.join(format!("{}.jpeg", used[0])), b"x").unwrap();
        valid = None;
    }
    if count == 0 {
        return None;
    }
    valid.filter(|&n| n > 0)
}

#[test]
fn random_data_set_folders_never_panic() {
    let (cases, seed) = cases_from_env(10_000);
    let cases = (cases / 20).max(20);
    let mut rng = Rng::new(seed ^ 0xDA7A);
    let root = temp_dir("datasets");
    let (mut loaded, mut refused) = (0usize, 0usize);
    let mut failures = Vec::new();
    for case in 0..cases {
        let dir = root.join(format!("case{case}"));
        std::fs::create_dir_all(&dir).unwrap();
        let classes = 1 + rng.below(4);
        let expected = random_dataset(&mut rng, &dir, classes);
        let what = format!("seed {seed} data set case {case}");
        let outcome = guarded(&what, &[], || Dataset::load(&dir, classes));
        match outcome {
            Err(f) => failures.push(f),
            Ok(Ok(data)) => {
                loaded += 1;
                if let Some(n) = expected {
                    if data.len() != n {
                        failures.push(format!("{what}: {} samples loaded, {n} expected", data.len()));
                    }
                }
                for s in &data.samples {
                    if (s.mask.width, s.mask.height) != (s.image.width, s.image.height)
                        || s.mask.labels.iter().any(|&v| v as usize >= classes)
                    {
                        failures.push(format!("{what}: sample {} has a mask that does not fit", s.name));
                    }
                }
            }
            Ok(Err(e)) => {
                refused += 1;
                let msg = e.to_string();
                if !is_one_sentence(&msg, &dir.display().to_string()) {
                    failures.push(format!("{what}: unclear error `{msg}`"));
                }
                if expected.is_some() {
                    failures.push(format!("{what}: a valid data set was refused: {msg}"));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&root);
    println!(
        "data sets: {cases} random folders (seed {seed}): {loaded} loaded, {refused} refused, {} failures",
        failures.len()
    );
    report(&failures);
}

// ----- the tokenizer -----

fn tiny_tokenizer_json() -> Value {
    let pieces = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "optic", "disc", "cup", "##s", "a", "é", "##é", ",", "肝",
        "##ing",
    ];
    let vocab: serde_json::Map<String, Value> =
        pieces.iter().enumerate().map(|(i, p)| (p.to_string(), json!(i))).collect();
    json!({
        "truncation": {"max_length": 16},
        "added_tokens": [
            {"id": 0, "content": "[PAD]", "normalized": false}, {"id": 1, "content": "[UNK]", "normalized": false},
            {"id": 2, "content": "[CLS]", "normalized": false}, {"id": 3, "content": "[SEP]", "normalized": false},
            {"id": 4, "content": "[MASK]", "normalized": false}
        ],
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": vocab}
    })
}

fn minilm_tokenizer() -> Option<String> {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/minilm/tokenizer.json")).ok()
}

/// A random string of awkward characters, `len` characters long.
fn random_text(rng: &mut Rng, len: usize) -> String {
    let pools: &[&[char]] = &[
        &['a', 'Z', ' ', '\t', '\n', '\r', ',', '.', '!', '#', '[', ']', '-'],
        &[
            '\0', '\u{1}', '\u{7}', '\u{1b}', '\u{7f}', '\u{85}', '\u{a0}', '\u{ad}', '\u{200b}', '\u{200d}',
            '\u{2028}', '\u{feff}', '\u{fffd}',
        ],
        &['\u{300}', '\u{301}', '\u{308}', '\u{327}', '\u{36f}', '\u{20dd}', '\u{1ab0}', '\u{fe0f}'],
        &['가', '힣', 'ﬃ', 'İ', 'ẞ', 'ǅ', 'Σ', 'ς', 'ß', 'Å', 'é', 'ñ', 'ﷺ', '㌀'],
        &[
            '\u{d7ff}',
            '\u{e000}',
            '\u{f8ff}',
            '\u{fdd0}',
            '\u{fffe}',
            '\u{ffff}',
            '\u{10000}',
            '\u{10ffff}',
            '\u{e0001}',
            '\u{1f600}',
            '\u{1f468}',
        ],
        &['肝', '中', '\u{3400}', '\u{20000}', '\u{2f800}', 'ア', 'ー', '、', '。', '\u{202e}', '\u{200f}', 'ا', 'ש'],
    ];
    let mut s = String::new();
    for _ in 0..len {
        match rng.below(12) {
            0 => s.push_str(
                ["[MASK]", "[SEP]", "[CLS]", "[PAD]", "[UNK]", "[mask]", "[MAS", "##", "##s", "optic disc", "the cup"]
                    [rng.below(11)],
            ),
            1 => s.push(char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('\u{fffd}')),
            _ => {
                let pool = pools[rng.below(pools.len())];
                s.push(pool[rng.below(pool.len())]);
            }
        }
    }
    s
}

/// Encodes `text`; checks the ids are `[CLS]`, vocabulary ids, `[SEP]`, within the maximum length.
fn check_encode(t: &Tokenizer, ids_in_vocab: &std::collections::HashSet<u32>, text: &str) -> Result<(), String> {
    let ids = t.encode(text);
    if ids.len() < 2 || ids.len() > t.max_length() {
        return Err(format!("{} ids for a maximum of {}", ids.len(), t.max_length()));
    }
    if let Some(id) = ids.iter().find(|id| !ids_in_vocab.contains(id)) {
        return Err(format!("id {id} is not in the vocabulary"));
    }
    Ok(())
}

fn vocab_ids(json: &Value) -> std::collections::HashSet<u32> {
    json["model"]["vocab"].as_object().unwrap().values().map(|v| v.as_u64().unwrap() as u32).collect()
}

#[test]
fn random_unicode_encodes_without_panics() {
    let (cases, seed) = cases_from_env(10_000);
    let mut rng = Rng::new(seed ^ 0x70CE);
    let mut tokenizers = vec![("tiny", tiny_tokenizer_json().to_string())];
    tokenizers.extend(minilm_tokenizer().map(|t| ("minilm", t)));
    let mut failures = Vec::new();
    let mut tried = 0usize;
    for (name, text) in &tokenizers {
        let json: Value = serde_json::from_str(text).unwrap();
        let ids = vocab_ids(&json);
        let t = Tokenizer::from_json(text, name).unwrap();
        let mut inputs: Vec<String> = vec![
            String::new(),
            "a".repeat(1 << 20),
            "optic ".repeat(200_000),
            "\u{301}".repeat(100_000),
            "가".repeat(50_000),
            "[MASK]".repeat(50_000),
            format!("{}{}", "x".repeat(99), "\u{301}".repeat(10_000)),
            "é".repeat(101),
            "\0".repeat(1000),
        ];
        for case in 0..cases / tokenizers.len() {
            let len = if case % 100 == 0 { 20_000 } else { rng.below(64) };
            inputs.push(random_text(&mut rng, len));
        }
        for (case, input) in inputs.iter().enumerate() {
            tried += 1;
            let what = format!("seed {seed} {name} encode case {case}");
            match guarded(&what, input.as_bytes(), || check_encode(&t, &ids, input)) {
                Err(f) => failures.push(f),
                Ok(Err(f)) => failures.push(format!("{what}: {f}")),
                Ok(Ok(())) => {}
            }
        }
    }
    println!("tokenizer: {tried} texts encoded (seed {seed}), {} failures", failures.len());
    report(&failures);
}

#[test]
fn mutated_tokenizer_json_never_panics() {
    let (cases, seed) = cases_from_env(10_000);
    let mut rng = Rng::new(seed ^ 0x7015);
    let tiny = tiny_tokenizer_json();
    let minilm: Option<Value> = minilm_tokenizer().map(|t| serde_json::from_str(&t).unwrap());
    let source = "tokenizer.json";
    let (mut accepted, mut refused) = (0usize, 0usize);
    let mut failures = Vec::new();
    // MiniLM's 30 522-entry vocabulary makes each of its cases ~100x slower: a few of them.
    let minilm_cases = if minilm.is_some() { cases / 40 } else { 0 };
    for case in 0..cases + minilm_cases {
        let base = if case >= cases { minilm.as_ref().unwrap() } else { &tiny };
        let text = if rng.below(2) == 0 {
            let mut v = base.clone();
            for _ in 0..1 + rng.below(3) {
                mutate_json(&mut rng, &mut v);
            }
            v.to_string()
        } else {
            String::from_utf8_lossy(&mutate_bytes(&mut rng, base.to_string().as_bytes())).into_owned()
        };
        let what = format!("seed {seed} tokenizer.json case {case}");
        let probe = random_text(&mut rng, 40);
        let outcome = guarded(&what, text.as_bytes(), || {
            Tokenizer::from_json(&text, source).map(|t| {
                let ids = t.encode(&probe);
                (ids.len() >= 2 && ids.len() <= t.max_length(), t.encode("optic disc a é 肝 [MASK]").len())
            })
        });
        match outcome {
            Err(f) => failures.push(f),
            Ok(Ok((true, _))) => accepted += 1,
            Ok(Ok((false, _))) => failures.push(format!("{what}: encode broke the maximum length")),
            Ok(Err(e)) => {
                refused += 1;
                if !is_one_sentence(&e.to_string(), source) {
                    failures.push(format!("{what}: unclear error `{e}`"));
                }
            }
        }
    }
    println!("tokenizer.json: {} mutated files (seed {seed}; {minilm_cases} of MiniLM's): {accepted} accepted, {refused} refused, {} failures", cases + minilm_cases, failures.len());
    report(&failures);
}
