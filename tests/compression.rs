//! JPEG-like compression (src/compression.rs) against a real JPEG codec: Pillow's libjpeg round
//! trip of a test card at three qualities (fixture by scripts/jpeg-fixture.py), plus the
//! properties a JPEG has whatever the codec: 8 × 8 blocks, more loss at lower quality, grey stays
//! grey, any size.

use std::path::Path;

use vlsa::compression::{jpeg_like, quant_tables};
use vlsa::image_io::Image;

fn fixture(name: &str) -> Image {
    Image::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg").join(name)).unwrap()
}

/// Mean absolute difference in 8-bit levels.
fn mean_levels(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (255.0 * (x - y)).abs() as f64).sum::<f64>() / a.len() as f64
}

#[test]
fn tables_follow_the_standard_and_libjpeg_scaling() {
    // Quality 50 is Annex K itself; 100 is all ones; the real photo in samples/ was saved at 94,
    // whose first luminance row Pillow reads as 2 1 1 2 3 5 6 7.
    let (l50, c50) = quant_tables(50);
    assert_eq!((l50[0], l50[1], l50[63], c50[0], c50[63]), (16.0, 11.0, 99.0, 17.0, 99.0));
    let (l100, c100) = quant_tables(100);
    assert!(l100.iter().chain(&c100).all(|&q| q == 1.0));
    assert_eq!(&quant_tables(94).0[..8], &[2.0, 1.0, 1.0, 2.0, 3.0, 5.0, 6.0, 7.0]);
    // Below 50 the steps grow as 50/q, capped at 255.
    assert_eq!(quant_tables(10).0[0], 80.0);
    assert!(quant_tables(1).0.iter().all(|&q| q == 255.0));
    assert_eq!(quant_tables(0), quant_tables(1), "quality is clamped to 1..=100");
}

#[test]
fn matches_a_libjpeg_round_trip_at_three_qualities() {
    let card = fixture("card.png");
    for q in [30, 75, 95] {
        let reference = fixture(&format!("card_q{q}.png"));
        let mut ours = card.rgb.clone();
        jpeg_like(&mut ours, card.width, card.height, q);
        // Float DCT here, libjpeg's integer DCT there: a level or so apart per pixel, while the
        // compression itself moves pixels by 2-6 levels on average.
        let apart = mean_levels(&ours, &reference.rgb);
        let (ours_loss, real_loss) = (mean_levels(&ours, &card.rgb), mean_levels(&reference.rgb, &card.rgb));
        assert!(apart < 1.0, "quality {q}: {apart:.2} levels from libjpeg on average");
        assert!(
            (ours_loss / real_loss - 1.0).abs() < 0.15,
            "quality {q}: loses {ours_loss:.2} levels against libjpeg's {real_loss:.2}"
        );
    }
}

/// A smooth colour ramp, `w` × `h`, with fine texture of amplitude `texture` in red and blue.
fn ramp(w: usize, h: usize, texture: f32) -> Vec<f32> {
    (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .flat_map(|(x, y)| {
            let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
            let t = texture * ((x * 7 + y * 3) % 5) as f32;
            [0.2 + 0.6 * u + t, 0.3 + 0.4 * v, 0.1 + 0.5 * u * v + t]
        })
        .collect()
}

#[test]
fn loss_grows_as_quality_falls_and_block_edges_show() {
    let (w, h) = (64, 48);
    let clean = ramp(w, h, 0.05);
    let loss = |q: u32| {
        let mut img = clean.clone();
        jpeg_like(&mut img, w, h, q);
        assert!(img.iter().all(|v| (0.0..=1.0).contains(v)));
        (mean_levels(&img, &clean), img)
    };
    let (l10, low) = loss(10);
    let (l50, _) = loss(50);
    let (l95, _) = loss(95);
    assert!(l10 > l50 && l50 > l95 && l95 > 0.0, "losses at 10/50/95: {l10:.2} {l50:.2} {l95:.2}");
    // Blocking: at quality 10 the jump between columns 7 and 8 (a block edge) is larger on
    // average than between columns inside a block.
    let step = |x: usize| {
        (0..h).map(|y| (low[(y * w + x + 1) * 3 + 1] - low[(y * w + x) * 3 + 1]).abs()).sum::<f32>() / h as f32
    };
    let (edge, inside) = ((step(7) + step(15) + step(23)) / 3.0, (step(3) + step(11) + step(19)) / 3.0);
    assert!(edge > 1.5 * inside, "block edge step {edge} against {inside} inside blocks");
}

#[test]
fn grey_stays_grey_and_odd_sizes_work() {
    for (w, h) in [(1, 1), (3, 2), (9, 17), (13, 8)] {
        let mut grey: Vec<f32> = (0..w * h).flat_map(|i| [((i * 37) % 101) as f32 / 100.0; 3]).collect();
        let before = grey.clone();
        jpeg_like(&mut grey, w, h, 40);
        assert!(grey.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]), "{w}x{h}: grey kept");
        assert!(mean_levels(&grey, &before) < 60.0, "{w}x{h}");
    }
    // Quality 100: only chroma subsampling and rounding are left, which a smooth image barely
    // feels (on a 3 x 2 ramp each pixel is a different colour, and libjpeg loses 11.5 levels
    // there too).
    for (w, h) in [(9, 17), (13, 8), (64, 48)] {
        let mut colour = ramp(w, h, 0.0);
        let clean = colour.clone();
        jpeg_like(&mut colour, w, h, 100);
        let loss = mean_levels(&colour, &clean);
        assert!(loss < 2.0, "{w}x{h} at quality 100 loses {loss:.2} levels");
    }
    // A flat image stays flat (every block codes to its DC term).
    let mut flat = [0.6f32, 0.3, 0.2].repeat(40 * 24);
    jpeg_like(&mut flat, 40, 24, 20);
    assert!(flat.chunks_exact(3).all(|p| p == &flat[..3]), "flat image stays flat");
    assert!((flat[0] - 0.6).abs() < 6.0 / 255.0, "flat colour moves by {}", flat[0] - 0.6);
    let mut empty: Vec<f32> = Vec::new();
    jpeg_like(&mut empty, 0, 5, 50);
}
