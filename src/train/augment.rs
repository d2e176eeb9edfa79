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
type Rng = crate::random::Rng<SplitMix64>;

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
