//! Domain randomization of training samples: each transform keeps values in range, is the
//! identity at its neutral parameters, is fixed by the seed, and does what its physics says.

use vlsa::image_io::Image;
use vlsa::train::augment::{
    bias_field, blur, colour_cast, contrast_brightness, gamma_curve, gaussian_noise, is_grey, jpeg_storage,
    low_end_device, low_end_rng, randomize_rng, resolution_loss, rician_noise, shot_noise, LowEnd, Randomization, Rng,
};

/// A colour test card: smooth gradients, a bright disc and fine stripes (odd size on purpose).
fn card(w: usize, h: usize) -> Image {
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
            let disc = if (u - 0.6).powi(2) + (v - 0.4).powi(2) < 0.02 { 0.5 } else { 0.0 };
            let stripes = if x % 2 == 0 { 0.1 } else { 0.0 };
            rgb.extend([0.2 + 0.3 * u + disc, 0.1 + 0.4 * v + stripes, 0.3 + 0.2 * u * v]);
        }
    }
    Image { width: w, height: h, rgb }
}

fn grey(w: usize, h: usize) -> Image {
    let mut img = card(w, h);
    img.rgb.chunks_exact_mut(3).for_each(|p| {
        let m = (p[0] + p[1] + p[2]) / 3.0;
        p.iter_mut().for_each(|v| *v = m);
    });
    img
}

fn mean(img: &Image) -> f32 {
    img.rgb.iter().sum::<f32>() / img.rgb.len() as f32
}

/// Every transform on (p = 1), with the colour and intensity processing and the bias ramp
/// neutral: only the device's optics, sensor and storage act.
fn device_only() -> Randomization {
    Randomization {
        p: 1.0,
        bias: 0.0,
        cast: 1.0,
        gamma: 1.0,
        contrast: 1.0,
        brightness: 0.0,
        ..Randomization::default()
    }
}

fn rng(n: u64) -> Rng {
    randomize_rng(7, n, 0)
}

#[test]
fn neutral_parameters_are_the_identity() {
    let img = card(37, 29);
    let same = |f: &dyn Fn(&mut Image), name: &str| {
        let mut out = img.clone();
        f(&mut out);
        let err = out.rgb.iter().zip(&img.rgb).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(err < 1e-6, "{name} at neutral parameters changed the image by {err}");
    };
    same(&|i| bias_field(i, 0.0, 1.0, 0.0), "bias field");
    same(&|i| blur(i, 0.0), "blur");
    same(&|i| resolution_loss(i, 1.0), "resolution loss");
    same(&|i| gaussian_noise(i, 0.0, &mut rng(0)), "Gaussian noise");
    same(&|i| rician_noise(i, 0.0, &mut rng(0)), "Rician noise");
    same(&|i| shot_noise(i, f32::INFINITY, &mut rng(0)), "shot noise");
    same(&|i| colour_cast(i, [1.0; 3]), "colour cast");
    same(&|i| gamma_curve(i, 1.0), "gamma");
    same(&|i| contrast_brightness(i, 1.0, 0.0), "contrast and brightness");
    let off = Randomization { p: 0.0, ..Randomization::default() };
    same(&|i| off.apply(i, &mut rng(3)), "randomization with p = 0");
}

#[test]
fn transforms_do_what_their_physics_says() {
    let img = card(41, 33);
    // Gamma above 1 darkens mid-tones, below 1 brightens them; 0 and 1 stay.
    let mut dark = img.clone();
    gamma_curve(&mut dark, 2.0);
    assert!(mean(&dark) < mean(&img) - 0.05);
    let mut ends = Image { width: 2, height: 1, rgb: vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0] };
    gamma_curve(&mut ends, 0.5);
    assert_eq!(ends.rgb, vec![0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    // A colour cast scales each channel by its gain.
    let mut cast = img.clone();
    colour_cast(&mut cast, [0.5, 1.0, 2.0]);
    for (a, b) in cast.rgb.chunks_exact(3).zip(img.rgb.chunks_exact(3)) {
        assert!((a[0] - 0.5 * b[0]).abs() < 1e-6 && a[1] == b[1] && (a[2] - 2.0 * b[2]).abs() < 1e-6);
    }
    // Contrast about mid-grey keeps 0.5 fixed; brightness shifts every value.
    let mut mid = Image { width: 1, height: 1, rgb: vec![0.5, 0.25, 0.75] };
    contrast_brightness(&mut mid, 2.0, 0.1);
    assert!((mid.rgb[0] - 0.6).abs() < 1e-6 && (mid.rgb[1] - 0.1).abs() < 1e-6 && (mid.rgb[2] - 1.1).abs() < 1e-6);
    // Blur and resolution loss keep the mean (up to edge effects) and remove fine stripes.
    let stripe_energy = |i: &Image| -> f32 {
        (0..i.height)
            .flat_map(|y| (1..i.width).map(move |x| (y, x)))
            .map(|(y, x)| (i.rgb[(y * i.width + x) * 3 + 1] - i.rgb[(y * i.width + x - 1) * 3 + 1]).abs())
            .sum()
    };
    for (name, f) in [
        ("blur", Box::new(|i: &mut Image| blur(i, 1.5)) as Box<dyn Fn(&mut Image)>),
        ("resolution loss", Box::new(|i: &mut Image| resolution_loss(i, 0.4))),
    ] {
        let mut out = img.clone();
        f(&mut out);
        assert_eq!((out.width, out.height, out.rgb.len()), (img.width, img.height, img.rgb.len()), "{name}");
        assert!((mean(&out) - mean(&img)).abs() < 0.02, "{name} changed the mean");
        assert!(stripe_energy(&out) < 0.5 * stripe_energy(&img), "{name} kept the stripes");
    }
    // The bias field is smooth and positive: a ramp brightens one side and darkens the other;
    // vignetting darkens the corners, not the centre.
    let flat = Image { width: 31, height: 31, rgb: vec![0.5; 31 * 31 * 3] };
    let mut ramp = flat.clone();
    bias_field(&mut ramp, 1.0, 0.0, 0.0);
    assert!(ramp.rgb[(15 * 31) * 3] < 0.5 && ramp.rgb[(15 * 31 + 30) * 3] > 0.5);
    let mut vig = flat.clone();
    bias_field(&mut vig, 0.0, 0.0, 0.6);
    assert!(vig.rgb[0] < 0.3 && (vig.rgb[(15 * 31 + 15) * 3] - 0.5).abs() < 0.01);
    // Gaussian noise has the asked spread; Rician noise lifts black to about sigma * sqrt(pi/2);
    // shot noise grows with the signal.
    let black = Image { width: 64, height: 64, rgb: vec![0.0; 64 * 64 * 3] };
    let mut g = flat.clone();
    gaussian_noise(&mut g, 0.1, &mut rng(1));
    let sd = (g.rgb.iter().map(|v| (v - 0.5).powi(2)).sum::<f32>() / g.rgb.len() as f32).sqrt();
    assert!((sd - 0.1).abs() < 0.01, "Gaussian sd {sd}");
    let mut r = black.clone();
    rician_noise(&mut r, 0.1, &mut rng(2));
    let floor = 0.1 * (std::f32::consts::PI / 2.0).sqrt();
    assert!((mean(&r) - floor).abs() < 0.01 && r.rgb.iter().all(|&v| v >= 0.0), "Rician floor {}", mean(&r));
    let spread = |level: f32| {
        let mut s = Image { width: 64, height: 64, rgb: vec![level; 64 * 64 * 3] };
        shot_noise(&mut s, 100.0, &mut rng(3));
        (s.rgb.iter().map(|v| (v - level).powi(2)).sum::<f32>() / s.rgb.len() as f32).sqrt()
    };
    let (low, high) = (spread(0.04), spread(0.64));
    assert!((low - 0.02).abs() < 0.003 && (high - 0.08).abs() < 0.008, "shot noise sd {low} {high}");
    // JPEG storage keeps the size and loses more detail at low quality than at high (the card's
    // one-pixel green stripes lose much to chroma subsampling at any quality: measured 0.041
    // against 0.029).
    let jpeg_loss = |q: u32| {
        let mut out = img.clone();
        jpeg_storage(&mut out, q);
        assert_eq!((out.width, out.height, out.rgb.len()), (img.width, img.height, img.rgb.len()));
        assert!(out.rgb.iter().all(|v| (0.0..=1.0).contains(v)));
        out.rgb.iter().zip(&img.rgb).map(|(a, b)| (a - b).abs()).sum::<f32>() / img.rgb.len() as f32
    };
    let (low_q, high_q) = (jpeg_loss(30), jpeg_loss(95));
    assert!(low_q > 1.25 * high_q && high_q > 0.0, "JPEG loss at quality 30: {low_q}, at 95: {high_q}");
}

#[test]
fn randomization_stays_in_range_is_fixed_by_its_stream_and_varies_between_streams() {
    let img = card(45, 39);
    let r = Randomization::default();
    let mut distinct = 0;
    for step in 0..40 {
        let mut a = img.clone();
        r.apply(&mut a, &mut randomize_rng(11, step, 2));
        assert_eq!((a.width, a.height), (img.width, img.height), "size is kept, so the mask stays aligned");
        assert!(a.rgb.iter().all(|v| (0.0..=1.0).contains(v)), "values stay in [0, 1]");
        let mut b = img.clone();
        r.apply(&mut b, &mut randomize_rng(11, step, 2));
        assert_eq!(a, b, "same seed, step and item: same acquisition");
        let mut c = img.clone();
        r.apply(&mut c, &mut randomize_rng(12, step, 2));
        distinct += usize::from(a != c);
    }
    assert!(distinct > 30, "another seed gives other acquisitions ({distinct} of 40 differ)");
}

#[test]
fn grey_images_stay_grey() {
    // MRI slices are stored as three equal channels: no colour cast, no JPEG, and noise on all
    // three alike.
    let img = grey(33, 27);
    assert!(is_grey(&img) && !is_grey(&card(5, 5)));
    let r = Randomization { p: 1.0, ..Randomization::default() };
    for step in 0..20 {
        let mut a = img.clone();
        r.apply(&mut a, &mut randomize_rng(5, step, 0));
        assert!(is_grey(&a), "step {step} coloured a grey image");
    }
}

#[test]
fn the_ranges_span_the_documented_extremes() {
    // Over many draws the mean brightness of a mid-grey card moves both ways by a wide margin:
    // the randomization spans far more than one device's variation.
    let flat = Image { width: 16, height: 16, rgb: vec![0.5; 16 * 16 * 3] };
    let r = Randomization::default();
    let means: Vec<f32> = (0..200)
        .map(|s| {
            let mut a = flat.clone();
            r.apply(&mut a, &mut randomize_rng(1, s, 0));
            mean(&a)
        })
        .collect();
    let (lo, hi) = means.iter().fold((1.0f32, 0.0f32), |(l, h), &m| (l.min(m), h.max(m)));
    assert!(lo < 0.3 && hi > 0.7, "mean brightness spans only {lo}..{hi}");
}

#[test]
fn a_coarse_sensor_records_its_noise_at_its_own_resolution() {
    // With resolution loss on, noise (and the camera's processing and JPEG) happen at the
    // sensor's resolution and the image is resized up last: the noise grains span several output
    // pixels, so neighbours are correlated. Noise added after the resize would leave them
    // independent (correlation near 0). Optics, colour and curve are neutral here.
    let flat = Image { width: 64, height: 64, rgb: vec![0.5; 64 * 64 * 3] };
    let r = Randomization { vignette: 0.0, blur: 0.0, min_resolution: 0.25, ..device_only() };
    let neighbour_correlation = |i: &Image| {
        let m = mean(i);
        let (mut cov, mut var) = (0.0f32, 0.0f32);
        for y in 0..i.height {
            for x in 1..i.width {
                let (a, b) = (i.rgb[(y * i.width + x) * 3 + 1] - m, i.rgb[(y * i.width + x - 1) * 3 + 1] - m);
                cov += a * b;
                var += a * a;
            }
        }
        cov / var
    };
    let correlations: Vec<f32> = (0..16)
        .map(|s| {
            let mut a = flat.clone();
            r.apply(&mut a, &mut randomize_rng(9, s, 0));
            assert_eq!((a.width, a.height), (64, 64));
            neighbour_correlation(&a)
        })
        .collect();
    let mean_corr = correlations.iter().sum::<f32>() / correlations.len() as f32;
    assert!(mean_corr > 0.4, "neighbouring noise correlation {mean_corr} ({correlations:?})");
    // Without resolution loss the same noise is independent pixel to pixel.
    let fine = Randomization { min_resolution: 1.0, ..r };
    let mut a = flat.clone();
    fine.apply(&mut a, &mut randomize_rng(9, 0, 0));
    assert!(neighbour_correlation(&a).abs() < 0.15, "full-resolution noise correlation {}", neighbour_correlation(&a));
}

#[test]
fn a_low_end_device_has_every_degradation_at_one_severity() {
    let r = Randomization::default();
    let none = LowEnd { vignette: 0.0, blur: 0.0, resolution: 1.0, noise: 0.0, photons: 20_000.0, jpeg_quality: 100 };
    assert_eq!(LowEnd::at(&r, 0.0), none, "severity 0 is a good device");
    let worst = LowEnd::at(&r, 1.0);
    assert_eq!(worst.jpeg_quality, 30);
    let close = |a: f32, b: f32| (a - b).abs() < 1e-3 * b.abs().max(1.0);
    assert!(
        close(worst.vignette, 0.7)
            && close(worst.blur, 0.015)
            && close(worst.resolution, 0.35)
            && close(worst.noise, 0.08)
            && close(worst.photons, 100.0),
        "severity 1 is every range's worst end: {worst:?}"
    );
    let half = LowEnd::at(&r, 0.5);
    assert!(close(half.resolution, 0.675) && close(half.photons, (20_000.0f32 * 100.0).sqrt()), "{half:?}");
    assert_eq!(half.jpeg_quality, 65);
    assert_eq!(LowEnd::at(&r, 7.0), worst, "severity is clamped to [0, 1]");
}

#[test]
fn low_end_devices_are_drawn_at_their_fraction_from_a_stream_of_their_own() {
    let draw = |fraction: f32, seed: u64| -> Vec<Option<f32>> {
        (0..4000).map(|step| low_end_device(fraction, &mut low_end_rng(seed, step, 1))).collect()
    };
    assert!(draw(0.0, 3).iter().all(Option::is_none), "fraction 0: never");
    let some: Vec<f32> = draw(0.4, 3).into_iter().flatten().collect();
    let share = some.len() as f32 / 4000.0;
    assert!((0.37..0.43).contains(&share), "fraction 0.4 drew {share}");
    assert!(some.iter().all(|s| (0.0..1.0).contains(s)));
    let mean = some.iter().sum::<f32>() / some.len() as f32;
    assert!((0.45..0.55).contains(&mean), "severity uniform in [0, 1]: mean {mean}");
    assert_eq!(draw(0.4, 3), draw(0.4, 3), "fixed by the stream");
    assert_ne!(draw(0.4, 3), draw(0.4, 4));
    // Without a device the acquisition is the independent one, draw for draw.
    let (r, img) = (Randomization::default(), card(31, 23));
    for step in 0..10 {
        let (mut a, mut b) = (img.clone(), img.clone());
        r.apply(&mut a, &mut randomize_rng(2, step, 0));
        r.apply_device(&mut b, &mut randomize_rng(2, step, 0), None);
        assert_eq!(a, b);
    }
}

#[test]
fn a_low_end_device_loses_fine_detail_and_a_good_one_keeps_it() {
    // The card's green channel has stripes one pixel wide (0.1 on even columns). Processing
    // (colour, curve, contrast) and shading are neutral, so only the device's quality acts: the
    // worst device (35 % resolution, blur, noise, JPEG 30) averages the stripes away; the best
    // (severity 0) keeps their luminance (green's 0.587 share of it: JPEG halves the chroma
    // resolution even at quality 100) up to its faint shot noise.
    let img = card(61, 47);
    let r = device_only();
    let stripes = |i: &Image| {
        let (mut even, mut odd) = (0.0f32, 0.0f32);
        for y in 0..i.height {
            for x in 1..i.width - 1 {
                let g = |x: usize| i.rgb[(y * i.width + x) * 3 + 1];
                let local = g(x) - (g(x - 1) + g(x + 1)) / 2.0;
                if x % 2 == 0 {
                    even += local
                } else {
                    odd += local
                }
            }
        }
        (even - odd) / (i.height * (i.width - 2)) as f32
    };
    let mut stored = img.clone();
    jpeg_storage(&mut stored, 100);
    let before = stripes(&img);
    assert!((before - 0.1).abs() < 0.01, "the card's stripes: {before}");
    for step in 0..8 {
        let (mut worst, mut best) = (img.clone(), img.clone());
        r.apply_device(&mut worst, &mut randomize_rng(4, step, 0), Some(1.0));
        r.apply_device(&mut best, &mut randomize_rng(4, step, 0), Some(0.0));
        assert_eq!((worst.width, worst.height), (61, 47), "size is kept");
        assert!(worst.rgb.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(stripes(&worst).abs() < 0.02, "step {step}: the worst device kept stripes of {}", stripes(&worst));
        // Its degradations are on whatever the independent draws say (here: nothing on).
        let mut forced = img.clone();
        Randomization { p: 0.0, ..r }.apply_device(&mut forced, &mut randomize_rng(4, step, 0), Some(1.0));
        assert!(stripes(&forced).abs() < 0.02, "step {step}: with p = 0 the worst device kept {}", stripes(&forced));
        assert!(stripes(&best) > 0.045, "step {step}: the best device lost its stripes ({})", stripes(&best));
        // Beyond its JPEG 100, the best device adds only faint shot noise.
        let err = best.rgb.iter().zip(&stored.rgb).map(|(a, b)| (a - b).abs()).sum::<f32>() / img.rgb.len() as f32;
        assert!(err < 0.01, "step {step}: the best device changed the card by {err} on average beyond JPEG 100");
    }
}
