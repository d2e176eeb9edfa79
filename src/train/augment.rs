//! Seeded randomness of training: the shuffled data order of each epoch and the augmentation
//! of each sample (flips, random scale and crop, intensity and colour jitter), on the host on an
//! [`Image`] and its [`Mask`] before preprocessing.
//!
//! Nothing here keeps state between steps: the order of epoch `e` and the augmentation of item
//! `i` of step `s` are pure functions of (seed, e) and (seed, s, i). A resumed run therefore needs
//! only the seed and the step count to draw exactly the batches an uninterrupted run would.

use crate::image_io::{Image, Mask};
use crate::random::SplitMix64;

/// Every stream here is SplitMix64 (see [`crate::random`]).
pub type Rng = crate::random::Rng<SplitMix64>;

/// A generator for one purpose (`tag`) and position (`a`, `b`) of a run seeded with `seed`.
pub fn stream(seed: u64, tag: u64, a: u64, b: u64) -> Rng {
    let mut g = Rng::splitmix(seed);
    let mut h = g.next_u64();
    for v in [tag, a, b] {
        h = Rng::splitmix(h ^ v.wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_u64();
    }
    Rng::splitmix(h)
}

const ORDER: u64 = 1;
const AUGMENT: u64 = 2;

/// The order of the samples in epoch `epoch`: a Fisher–Yates shuffle of 0..len.
pub fn epoch_order(seed: u64, epoch: u64, len: usize) -> Vec<usize> {
    let mut rng = stream(seed, ORDER, epoch, 0);
    let mut order: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}

/// The generator of the augmentation of item `item` of step `step`.
pub fn augment_rng(seed: u64, step: u64, item: u64) -> Rng {
    stream(seed, AUGMENT, step, item)
}

/// Ranges of the random augmentation (a sample is cropped, flipped and jittered).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augmentation {
    /// Smallest side of the random crop, as a fraction of the image side (1 = no crop).
    pub min_scale: f32,
    /// Contrast factor drawn from [1 - contrast, 1 + contrast].
    pub contrast: f32,
    /// Brightness offset drawn from [-brightness, brightness].
    pub brightness: f32,
    /// Per-channel gain drawn from [1 - colour, 1 + colour].
    pub colour: f32,
}

impl Default for Augmentation {
    fn default() -> Self {
        Augmentation { min_scale: 0.75, contrast: 0.2, brightness: 0.1, colour: 0.1 }
    }
}

impl Augmentation {
    /// A randomly augmented copy of `image` and `mask` (same size as each other, possibly
    /// smaller than the input: the crop is resized to the model's input later).
    pub fn apply(&self, image: &Image, mask: &Mask, rng: &mut Rng) -> (Image, Mask) {
        let (w, h) = (image.width, image.height);
        // Random scale and crop: a window of the same aspect ratio, scale in [min_scale, 1].
        let scale = rng.range(self.min_scale, 1.0);
        let cw = ((w as f32 * scale).round() as usize).clamp(1, w);
        let ch = ((h as f32 * scale).round() as usize).clamp(1, h);
        let x0 = rng.below(w - cw + 1);
        let y0 = rng.below(h - ch + 1);
        self.crop_and_jitter(image, mask, (x0, y0, cw, ch), rng)
    }

    /// A focus crop ([`focus_window`], drawn from `focus`) augmented like [`Augmentation::apply`]
    /// otherwise; a sample without foreground gets [`Augmentation::apply`]'s crop instead.
    pub fn apply_focused(&self, image: &Image, mask: &Mask, focus: &mut Rng, rng: &mut Rng) -> (Image, Mask) {
        match focus_window(mask, focus) {
            Some(window) => self.crop_and_jitter(image, mask, window, rng),
            None => self.apply(image, mask, rng),
        }
    }

    /// Crops the window (x0, y0, width, height), then draws the flips and the jitter from `rng`.
    fn crop_and_jitter(
        &self,
        image: &Image,
        mask: &Mask,
        (x0, y0, cw, ch): (usize, usize, usize, usize),
        rng: &mut Rng,
    ) -> (Image, Mask) {
        let w = image.width;
        let (flip_x, flip_y) = (rng.coin(), rng.coin());
        let contrast = rng.range(1.0 - self.contrast, 1.0 + self.contrast);
        let brightness = rng.range(-self.brightness, self.brightness);
        let gain = [0; 3].map(|_| rng.range(1.0 - self.colour, 1.0 + self.colour));
        let mut rgb = Vec::with_capacity(cw * ch * 3);
        let mut labels = Vec::with_capacity(cw * ch);
        for y in 0..ch {
            let sy = y0 + if flip_y { ch - 1 - y } else { y };
            for x in 0..cw {
                let sx = x0 + if flip_x { cw - 1 - x } else { x };
                let at = sy * w + sx;
                for (c, g) in gain.iter().enumerate() {
                    let v = (image.rgb[at * 3 + c] - 0.5) * contrast + 0.5 + brightness;
                    rgb.push((v * g).clamp(0.0, 1.0));
                }
                labels.push(mask.labels[at]);
            }
        }
        (Image { width: cw, height: ch, rgb }, Mask { width: cw, height: ch, labels })
    }
}

/// Side of a focus crop as a fraction of the image's shorter side: the range training draws
/// from. A model's `refine.crop` (docs/DESIGN.md, "Refinement") should lie inside it.
pub const FOCUS_SCALE: (f32, f32) = (0.25, 0.45);
/// Largest offset of a focus crop's centre from the foreground's, as a fraction of its side.
pub const FOCUS_JITTER: f32 = 0.15;

/// A square window around the foreground of `mask` (labels other than 0): side uniform in
/// [`FOCUS_SCALE`] of the shorter side, centred on the middle of the foreground's bounding box
/// moved by up to [`FOCUS_JITTER`] of the side along each axis, then shifted inside the image.
/// `None` when the mask has no foreground. This is the training view of the second pass of
/// inference (`refine`), which crops a window of fixed size around the predicted foreground.
pub fn focus_window(mask: &Mask, rng: &mut Rng) -> Option<(usize, usize, usize, usize)> {
    let (w, h) = (mask.width, mask.height);
    let [x_lo, x_hi, y_lo, y_hi] = mask.foreground_box(0, 0, w, h)?;
    let side = ((rng.range(FOCUS_SCALE.0, FOCUS_SCALE.1) * w.min(h) as f32).round() as usize).clamp(1, w.min(h));
    let cx = (x_lo + x_hi + 1) as f32 / 2.0 + rng.range(-FOCUS_JITTER, FOCUS_JITTER) * side as f32;
    let cy = (y_lo + y_hi + 1) as f32 / 2.0 + rng.range(-FOCUS_JITTER, FOCUS_JITTER) * side as f32;
    let place = |c: f32, len: usize| ((c - side as f32 / 2.0).round().max(0.0) as usize).min(len - side);
    Some((place(cx, w), place(cy, h), side, side))
}

const RANDOMIZE: u64 = 3;
const FOCUS: u64 = 4;
const LOW_END: u64 = 5;

/// Photons at full white of the cleanest shot noise the randomization draws (a good sensor).
const MAX_PHOTONS: f32 = 20_000.0;

/// The generator of the focus crop of item `item` of step `step`: whether the item gets one,
/// and where (a stream of its own, so a run without focus crops draws what it drew before).
pub fn focus_rng(seed: u64, step: u64, item: u64) -> Rng {
    stream(seed, FOCUS, step, item)
}

/// The generator of the domain randomization of item `item` of step `step` (a stream of its own,
/// so a run without randomization draws exactly the crops and flips it drew before).
pub fn randomize_rng(seed: u64, step: u64, item: u64) -> Rng {
    stream(seed, RANDOMIZE, step, item)
}

/// The generator of the low-end device draw of item `item` of step `step` (a stream of its own,
/// so a run without low-end devices draws exactly the acquisitions it drew before).
pub fn low_end_rng(seed: u64, step: u64, item: u64) -> Rng {
    stream(seed, LOW_END, step, item)
}

/// Whether item `item`'s acquisition is by a low-end device (with probability `fraction`), and
/// if so its severity, uniform in [0, 1]: see [`Randomization::apply_device`].
pub fn low_end_device(fraction: f32, rng: &mut Rng) -> Option<f32> {
    let (low, severity) = (rng.chance(fraction), rng.range(0.0, 1.0));
    low.then_some(severity)
}

/// Domain randomization: a random acquisition (scanner or camera) per training sample, drawn
/// from ranges much wider than any one device, so that the model cannot rely on one intensity
/// curve, colour balance, sharpness or noise level. The ranges come from the physics of
/// acquisition, not from scores on any test domain:
///
/// - shading: MRI coil sensitivity and lens vignetting are smooth multiplicative fields; a
///   linear ramp of up to ±`bias` in log-intensity across the image plus radial fall-off of up to
///   `vignette` at the corners;
/// - blur: optics and motion, a Gaussian point spread of up to `blur` of the image side;
/// - resolution loss: acquisition matrices and sensors from `min_resolution` of the side up to
///   full, sampled down (area average); everything after it (noise, the camera's colour and
///   intensity processing, its JPEG) happens at that resolution, as it does in a coarse device,
///   and the image is resized back up (bilinear) last, as it is for the model's input;
/// - noise: one of Gaussian read noise (sigma up to `noise`), Rician magnitude noise (MRI: the
///   magnitude of a complex signal with Gaussian noise of the same sigma in both channels) or
///   Poisson shot noise (photos: `min_photons` to 20 000 photons at full white);
/// - colour cast: white balance, per-channel gain log-uniform in [1/`cast`, `cast`] (skipped on
///   grey images: an MRI scanner has no colour);
/// - intensity curve: `v^gamma` with gamma log-uniform in [1/`gamma`, `gamma`], then contrast
///   log-uniform in [1/`contrast`, `contrast`] about mid-grey and brightness in ±`brightness`;
/// - JPEG storage (cameras): JPEG-like compression ([`crate::compression`]) at a quality
///   uniform in [`min_jpeg_quality`, 100] (skipped on grey images: MRI slices are stored
///   losslessly).
///
/// Each of the eight is applied with probability `p`, so some samples keep the clean training
/// acquisition.
///
/// [`min_jpeg_quality`]: Randomization::min_jpeg_quality
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Randomization {
    /// Probability of each transform.
    pub p: f32,
    /// Largest log-intensity ramp of the bias field, end to end.
    pub bias: f32,
    /// Largest light lost at the corners by vignetting.
    pub vignette: f32,
    /// Largest blur sigma as a fraction of the image side.
    pub blur: f32,
    /// Smallest acquisition resolution as a fraction of the side.
    pub min_resolution: f32,
    /// Largest Gaussian / Rician noise sigma.
    pub noise: f32,
    /// Fewest photons at full white of shot noise.
    pub min_photons: f32,
    /// Largest per-channel gain factor of the colour cast.
    pub cast: f32,
    /// Largest gamma factor.
    pub gamma: f32,
    /// Largest contrast factor.
    pub contrast: f32,
    /// Largest brightness offset.
    pub brightness: f32,
    /// Lowest JPEG quality.
    pub min_jpeg_quality: f32,
}

impl Default for Randomization {
    fn default() -> Self {
        Randomization {
            p: 0.6,
            bias: 0.8,
            vignette: 0.7,
            blur: 0.015,
            min_resolution: 0.35,
            noise: 0.08,
            min_photons: 100.0,
            cast: 1.5,
            gamma: 2.0,
            contrast: 1.6,
            brightness: 0.15,
            min_jpeg_quality: 30.0,
        }
    }
}

impl Randomization {
    /// Applies a random acquisition to `image` in place (its size is kept, so its mask stays
    /// aligned). The draws are made in a fixed order whether or not a transform is applied, so
    /// each transform's parameters depend only on the stream.
    pub fn apply(&self, image: &mut Image, rng: &mut Rng) {
        self.apply_device(image, rng, None)
    }

    /// [`apply`](Self::apply), or with `low_end = Some(severity)` (severity in [0, 1]) the
    /// acquisition of a low-end device. In a real camera or scanner the sensor and storage
    /// degradations are not independent: one cheap part brings the others (a small sensor is
    /// coarse, noisy and behind cheap optics, and its maker compresses hard to save storage).
    /// Drawn independently with probability `p` each, all five at their bad ends together are
    /// rare; a low-end device has shading, blur, resolution loss, noise and JPEG storage all on,
    /// each at the same `severity` of its range ([`LowEnd::at`]). Colour cast, intensity curve
    /// and contrast are the device's processing, not its quality, and stay as drawn. With `None`
    /// the draws and the result are exactly [`apply`](Self::apply)'s.
    pub fn apply_device(&self, image: &mut Image, rng: &mut Rng, low_end: Option<f32>) {
        let grey = is_grey(image);
        let mut on = [false; 7];
        on.iter_mut().for_each(|o| *o = rng.chance(self.p));
        let ramp = (rng.range(-self.bias, self.bias), rng.range(0.0, std::f32::consts::TAU));
        let mut vignette = rng.range(0.0, self.vignette);
        let mut sigma = rng.range(0.0, self.blur);
        let mut resolution = rng.range(self.min_resolution, 1.0);
        let (kind, mut noise) = (rng.below(3), rng.range(0.0, self.noise));
        let mut photons = rng.log_range(self.min_photons, MAX_PHOTONS);
        let device = low_end.map(|s| LowEnd::at(self, s));
        if let Some(d) = device {
            on[..4].iter_mut().for_each(|o| *o = true);
            (vignette, sigma, resolution, noise, photons) = (d.vignette, d.blur, d.resolution, d.noise, d.photons);
        }
        let cast = [0; 3].map(|_| rng.log_range(1.0 / self.cast, self.cast));
        let gamma = rng.log_range(1.0 / self.gamma, self.gamma);
        let contrast = rng.log_range(1.0 / self.contrast, self.contrast);
        let brightness = rng.range(-self.brightness, self.brightness);
        if on[0] {
            bias_field(image, ramp.0, ramp.1, vignette);
        }
        if on[1] {
            blur(image, sigma * image.width.max(image.height) as f32);
        }
        // Shading and blur are optics, on the scene; the sensor records the result at its own
        // resolution, and noise, processing and storage happen there (until 2026-12-06 they
        // happened after the image was back at full size: a coarse camera's 8 x 8 JPEG blocks
        // and its noise grains were never coarser than the model's pixels).
        let size = (image.width, image.height);
        if on[2] {
            if let Some(low) = area_downsample(image, resolution) {
                *image = low;
            }
        }
        if on[3] {
            match kind {
                0 => gaussian_noise(image, noise, rng),
                1 => rician_noise(image, noise, rng),
                _ => shot_noise(image, photons, rng),
            }
        }
        if on[4] && !grey {
            colour_cast(image, cast);
        }
        if on[5] {
            gamma_curve(image, gamma);
        }
        if on[6] {
            contrast_brightness(image, contrast, brightness);
        }
        image.rgb.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
        // Drawn after the others (which were seven before it came), so that every other
        // transform draws what it drew then.
        let (mut jpeg, mut quality) = (rng.chance(self.p), rng.range(self.min_jpeg_quality, 100.0).round() as u32);
        if let Some(d) = device {
            (jpeg, quality) = (true, d.jpeg_quality);
        }
        if jpeg && !grey {
            jpeg_storage(image, quality);
        }
        if (image.width, image.height) != size {
            *image = image.resize(size.0, size.1);
        }
    }
}

/// The degradations of a low-end device ([`Randomization::apply_device`]): each at one shared
/// severity of its range, from none (severity 0) to the range's worst (severity 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LowEnd {
    /// Light lost at the corners: `severity * vignette`.
    pub vignette: f32,
    /// Blur sigma as a fraction of the side: `severity * blur`.
    pub blur: f32,
    /// Acquisition resolution as a fraction of the side: `1 - severity * (1 - min_resolution)`.
    pub resolution: f32,
    /// Gaussian / Rician noise sigma: `severity * noise`.
    pub noise: f32,
    /// Shot-noise photons at full white, 20 000 down to `min_photons` log-linearly.
    pub photons: f32,
    /// JPEG quality, 100 down to `min_jpeg_quality`.
    pub jpeg_quality: u32,
}

impl LowEnd {
    /// The degradations of a device of `severity` (clamped to [0, 1]) within `r`'s ranges.
    pub fn at(r: &Randomization, severity: f32) -> LowEnd {
        let s = severity.clamp(0.0, 1.0);
        LowEnd {
            vignette: s * r.vignette,
            blur: s * r.blur,
            resolution: 1.0 - s * (1.0 - r.min_resolution),
            noise: s * r.noise,
            photons: MAX_PHOTONS * (r.min_photons / MAX_PHOTONS).powf(s),
            jpeg_quality: (100.0 - s * (100.0 - r.min_jpeg_quality)).round() as u32,
        }
    }
}

/// The image stored as a JPEG of `quality` (1–100) and read back: see [`crate::compression`].
pub fn jpeg_storage(image: &mut Image, quality: u32) {
    crate::compression::jpeg_like(&mut image.rgb, image.width, image.height, quality);
}

/// Whether every pixel has equal channels (an MRI slice stored as RGB).
pub fn is_grey(image: &Image) -> bool {
    image.rgb.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2])
}

/// Multiplies by a smooth field: `exp(ramp * t)` with t in [-1/2, 1/2] the position along the
/// direction `angle` (a coil-sensitivity ramp), times `1 - vignette * r²` with r the distance from
/// the centre, 1 at the corners (lens vignetting). `ramp = vignette = 0` is the identity.
pub fn bias_field(image: &mut Image, ramp: f32, angle: f32, vignette: f32) {
    let (w, h) = (image.width, image.height);
    let (gx, gy) = (angle.cos(), angle.sin());
    for y in 0..h {
        for x in 0..w {
            let (u, v) = ((x as f32 + 0.5) / w as f32 - 0.5, (y as f32 + 0.5) / h as f32 - 0.5);
            let t = (u * gx + v * gy) / std::f32::consts::SQRT_2;
            let m = (ramp * t).exp() * (1.0 - vignette * (u * u + v * v) * 2.0).max(0.0);
            image.rgb[(y * w + x) * 3..][..3].iter_mut().for_each(|c| *c *= m);
        }
    }
}

/// Separable Gaussian blur of standard deviation `sigma` pixels, edges clamped (below 0.2 pixel
/// it would change nothing visible and is skipped).
pub fn blur(image: &mut Image, sigma: f32) {
    if sigma < 0.2 {
        return;
    }
    let radius = (3.0 * sigma).ceil() as isize;
    let mut kernel: Vec<f32> = (-radius..=radius).map(|i| (-((i * i) as f32) / (2.0 * sigma * sigma)).exp()).collect();
    let total: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= total);
    let (w, h) = (image.width as isize, image.height as isize);
    let pass = |src: &[f32], horizontal: bool| -> Vec<f32> {
        let mut dst = vec![0.0f32; src.len()];
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let mut s = 0.0;
                    for (k, wk) in kernel.iter().enumerate() {
                        let o = k as isize - radius;
                        let (xx, yy) =
                            if horizontal { ((x + o).clamp(0, w - 1), y) } else { (x, (y + o).clamp(0, h - 1)) };
                        s += wk * src[((yy * w + xx) * 3 + c as isize) as usize];
                    }
                    dst[((y * w + x) * 3 + c as isize) as usize] = s;
                }
            }
        }
        dst
    };
    let tmp = pass(&image.rgb, true);
    image.rgb = pass(&tmp, false);
}

/// Down-sampling to `factor` of the size by area averaging (what a coarser sensor or acquisition
/// matrix records), then back up bilinearly. `factor >= 1` is the identity.
pub fn resolution_loss(image: &mut Image, factor: f32) {
    if let Some(low) = area_downsample(image, factor) {
        *image = low.resize(image.width, image.height);
    }
}

/// What a coarser sensor or acquisition matrix records of `image`: each of its pixels the area
/// average of the full-size pixels it covers, `factor` of the size (at least 2 x 2). `None` when
/// that is not smaller (`factor >= 1`).
pub fn area_downsample(image: &Image, factor: f32) -> Option<Image> {
    let (w, h) = (image.width, image.height);
    let (lw, lh) = (((w as f32 * factor).round() as usize).max(2), ((h as f32 * factor).round() as usize).max(2));
    if lw >= w && lh >= h {
        return None;
    }
    let mut low = vec![0.0f32; lw * lh * 3];
    for y in 0..lh {
        for x in 0..lw {
            let (y0, y1) = (y * h / lh, ((y + 1) * h / lh).max(y * h / lh + 1));
            let (x0, x1) = (x * w / lw, ((x + 1) * w / lw).max(x * w / lw + 1));
            let n = ((y1 - y0) * (x1 - x0)) as f32;
            for c in 0..3 {
                let mut s = 0.0;
                for sy in y0..y1 {
                    for sx in x0..x1 {
                        s += image.rgb[(sy * w + sx) * 3 + c];
                    }
                }
                low[(y * lw + x) * 3 + c] = s / n;
            }
        }
    }
    Some(Image { width: lw, height: lh, rgb: low })
}

/// Additive Gaussian read noise of standard deviation `sigma`.
pub fn gaussian_noise(image: &mut Image, sigma: f32, rng: &mut Rng) {
    if sigma <= 0.0 {
        return;
    }
    let grey = is_grey(image);
    for p in image.rgb.chunks_exact_mut(3) {
        if grey {
            let n = sigma * rng.normal();
            p.iter_mut().for_each(|v| *v += n);
        } else {
            p.iter_mut().for_each(|v| *v += sigma * rng.normal());
        }
    }
}

/// Rician noise: an MRI magnitude image is `|v + n1 + i n2|` with n1, n2 Gaussian of standard
/// deviation `sigma`, which lifts the dark background to about `sigma * sqrt(pi / 2)`.
pub fn rician_noise(image: &mut Image, sigma: f32, rng: &mut Rng) {
    if sigma <= 0.0 {
        return;
    }
    let grey = is_grey(image);
    let one = |v: f32, rng: &mut Rng| ((v + sigma * rng.normal()).powi(2) + (sigma * rng.normal()).powi(2)).sqrt();
    for p in image.rgb.chunks_exact_mut(3) {
        if grey {
            let m = one(p[0], rng);
            p.iter_mut().for_each(|v| *v = m);
        } else {
            p.iter_mut().for_each(|v| *v = one(*v, rng));
        }
    }
}

/// Poisson shot noise with `photons` photons at full white, in its Gaussian approximation:
/// variance `v / photons` at intensity v (exact enough above a few photons, and cheap).
pub fn shot_noise(image: &mut Image, photons: f32, rng: &mut Rng) {
    if !photons.is_finite() || photons <= 0.0 {
        return;
    }
    let grey = is_grey(image);
    for p in image.rgb.chunks_exact_mut(3) {
        if grey {
            let n = (p[0].max(0.0) / photons).sqrt() * rng.normal();
            p.iter_mut().for_each(|v| *v += n);
        } else {
            p.iter_mut().for_each(|v| *v += (v.max(0.0) / photons).sqrt() * rng.normal());
        }
    }
}

/// White balance: channel c multiplied by `gain[c]`.
pub fn colour_cast(image: &mut Image, gain: [f32; 3]) {
    for p in image.rgb.chunks_exact_mut(3) {
        p.iter_mut().zip(gain).for_each(|(v, g)| *v *= g);
    }
}

/// The intensity curve `v^gamma` (on v clamped to [0, 1]).
pub fn gamma_curve(image: &mut Image, gamma: f32) {
    image.rgb.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0).powf(gamma));
}

/// Contrast about mid-grey and a brightness offset: `(v - 1/2) * contrast + 1/2 + brightness`.
pub fn contrast_brightness(image: &mut Image, contrast: f32, brightness: f32) {
    image.rgb.iter_mut().for_each(|v| *v = (*v - 0.5) * contrast + 0.5 + brightness);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_are_permutations_fixed_by_seed_and_epoch() {
        let a = epoch_order(3, 0, 50);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(3, 0, 50));
        assert_ne!(a, epoch_order(3, 1, 50));
        assert_ne!(a, epoch_order(4, 0, 50));
    }

    #[test]
    fn focus_windows_hold_the_foreground_inside_the_image() {
        // A 100 x 60 mask with a 6 x 4 object at (70..76, 40..44).
        let (w, h) = (100, 60);
        let mut labels = vec![0u8; w * h];
        for y in 40..44 {
            labels[y * w + 70..y * w + 76].fill(2);
        }
        let mask = Mask { width: w, height: h, labels };
        let (lo, hi) = ((FOCUS_SCALE.0 * 60.0).round() as usize, (FOCUS_SCALE.1 * 60.0).round() as usize);
        let mut sides = Vec::new();
        for s in 0..200 {
            let (x0, y0, cw, ch) = focus_window(&mask, &mut focus_rng(5, s, 1)).unwrap();
            assert_eq!(cw, ch, "square");
            assert!((lo..=hi).contains(&cw), "side {cw} within the range of the shorter side");
            assert!(x0 + cw <= w && y0 + ch <= h, "inside the image");
            // The centre is the object's (73, 42) moved by at most FOCUS_JITTER of the side,
            // except where the window had to move inside the image (bottom edge here).
            let (cx, cy) = (x0 as f32 + cw as f32 / 2.0, y0 as f32 + ch as f32 / 2.0);
            assert!((cx - 73.0).abs() <= FOCUS_JITTER * cw as f32 + 0.5, "x centre {cx}");
            assert!(cy - 42.0 <= FOCUS_JITTER * ch as f32 + 0.5 && y0 + ch <= h, "y centre {cy}");
            assert!(x0 <= 70 && x0 + cw >= 76 && y0 <= 40 && y0 + ch >= 44, "the object is inside");
            sides.push(cw);
        }
        assert!(sides.iter().min() < sides.iter().max(), "sides vary");
        assert_eq!(focus_window(&mask, &mut focus_rng(5, 3, 1)), focus_window(&mask, &mut focus_rng(5, 3, 1)));
        let empty = Mask { width: w, height: h, labels: vec![0; w * h] };
        assert_eq!(focus_window(&empty, &mut focus_rng(5, 0, 0)), None);
        // A focused augmentation crops that window (flips aside) and keeps image and mask aligned.
        let rgb: Vec<f32> = mask.labels.iter().flat_map(|&l| [l as f32 / 2.0; 3]).collect();
        let image = Image { width: w, height: h, rgb };
        let plain = Augmentation { contrast: 0.0, brightness: 0.0, colour: 0.0, ..Augmentation::default() };
        let (img, m) = plain.apply_focused(&image, &mask, &mut focus_rng(5, 7, 0), &mut augment_rng(5, 7, 0));
        let (_, _, side, _) = focus_window(&mask, &mut focus_rng(5, 7, 0)).unwrap();
        assert_eq!((img.width, img.height, m.width, m.height), (side, side, side, side));
        assert_eq!(m.labels.iter().filter(|&&l| l == 2).count(), 24, "the whole object");
        for (p, &l) in m.labels.iter().enumerate() {
            assert_eq!(img.rgb[p * 3], l as f32 / 2.0);
        }
        // Without foreground it falls back to the plain crop, drawn from the same stream.
        let (a, _) = plain.apply_focused(&image, &empty, &mut focus_rng(5, 7, 0), &mut augment_rng(5, 7, 0));
        let (b, _) = plain.apply(&image, &empty, &mut augment_rng(5, 7, 0));
        assert_eq!(a, b);
    }

    #[test]
    fn augmentation_keeps_image_and_mask_aligned() {
        // Pixel value encodes its position, so the mask (same encoding) must follow the image.
        let (w, h) = (20, 12);
        let labels: Vec<u8> = (0..w * h).map(|i| (i % 251) as u8).collect();
        let rgb: Vec<f32> = labels.iter().flat_map(|&l| [l as f32 / 255.0; 3]).collect();
        let image = Image { width: w, height: h, rgb };
        let mask = Mask { width: w, height: h, labels };
        let plain = Augmentation { contrast: 0.0, brightness: 0.0, colour: 0.0, ..Augmentation::default() };
        let mut seen_flip = false;
        for s in 0..20 {
            let (img, m) = plain.apply(&image, &mask, &mut augment_rng(1, s, 0));
            assert_eq!((img.width, img.height), (m.width, m.height));
            assert!(img.width >= 15 && img.width <= w && img.height >= 9 && img.height <= h);
            for (p, &l) in m.labels.iter().enumerate() {
                assert!((img.rgb[p * 3] * 255.0 - l as f32).abs() < 1e-3);
            }
            seen_flip |= m.labels[0] > m.labels[1];
        }
        assert!(seen_flip, "some draws flip horizontally");
        let jitter = Augmentation::default();
        let (a, _) = jitter.apply(&image, &mask, &mut augment_rng(1, 0, 0));
        let (b, _) = jitter.apply(&image, &mask, &mut augment_rng(1, 0, 0));
        assert_eq!(a, b, "same stream, same augmentation");
        assert!(a.rgb.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}
