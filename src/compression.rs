//! JPEG-like lossy compression of an RGB image with values in [0, 1]: what a camera that stores
//! its photos as JPEG files does to them, for the synthetic fundus cameras (`synth`) and for
//! domain randomization in training (`train::augment`).
//!
//! These are the lossy steps of baseline JPEG (ITU-T T.81) as libjpeg performs them, in order:
//!
//! 1. RGB to YCbCr (JFIF, on the 0–255 scale, chroma centred on 128);
//! 2. chroma subsampled 2 × 2 (4:2:0, the average of each 2 × 2 cell);
//! 3. each plane cut into 8 × 8 blocks (the last row and column of blocks padded by repeating
//!    the edge pixels), shifted by -128 and transformed by the 2-D DCT-II
//!    `F = D f Dᵀ` with `D[u][x] = c(u)/2 · cos((2x + 1)uπ/16)`, `c(0) = 1/√2`, `c(u>0) = 1`;
//! 4. each coefficient divided by its entry in the quantization table, rounded and multiplied
//!    back: the tables are those of the standard's Annex K, scaled by quality as libjpeg does
//!    (`q < 50`: × 50/q, else × (2 − q/50), rounded, at least 1);
//! 5. the inverse DCT, the chroma upsampled bilinearly (sample centres between pixel pairs, the
//!    3/4–1/4 weights of libjpeg's "fancy" upsampling), back to RGB, rounded to 8 bits.
//!
//! Entropy coding is lossless and left out. Quality 100 keeps every table entry at 1, so what
//! remains is the chroma subsampling and the rounding. A grey image (equal channels) is coded as
//! its Y plane alone and stays grey. Everything is plain f32 arithmetic in a fixed order, so the
//! result is the same on every machine (the synthetic data sets depend on it).

/// Luminance quantization table of ITU-T T.81 Annex K.1, row-major.
const LUMA: [f32; 64] = [
    16., 11., 10., 16., 24., 40., 51., 61., //
    12., 12., 14., 19., 26., 58., 60., 55., //
    14., 13., 16., 24., 40., 57., 69., 56., //
    14., 17., 22., 29., 51., 87., 80., 62., //
    18., 22., 37., 56., 68., 109., 103., 77., //
    24., 35., 55., 64., 81., 104., 113., 92., //
    49., 64., 78., 87., 103., 121., 120., 101., //
    72., 92., 95., 98., 112., 100., 103., 99.,
];

/// Chrominance quantization table of ITU-T T.81 Annex K.2, row-major.
const CHROMA: [f32; 64] = [
    17., 18., 24., 47., 99., 99., 99., 99., //
    18., 21., 26., 66., 99., 99., 99., 99., //
    24., 26., 56., 99., 99., 99., 99., 99., //
    47., 66., 99., 99., 99., 99., 99., 99., //
    99., 99., 99., 99., 99., 99., 99., 99., //
    99., 99., 99., 99., 99., 99., 99., 99., //
    99., 99., 99., 99., 99., 99., 99., 99., //
    99., 99., 99., 99., 99., 99., 99., 99.,
];

/// Lowest and highest quality (libjpeg's scale).
pub const QUALITY_RANGE: std::ops::RangeInclusive<u32> = 1..=100;

/// `base` scaled to `quality` (clamped to 1..=100) as libjpeg's `jpeg_quality_scaling` and
/// `jpeg_add_quant_table` do: percent 5000/q below 50, 200 − 2q from 50, then
/// `(entry · percent + 50) / 100` in integers, clamped to 1..=255.
pub fn quant_table(base: &[f32; 64], quality: u32) -> [f32; 64] {
    let q = quality.clamp(*QUALITY_RANGE.start(), *QUALITY_RANGE.end());
    let percent = if q < 50 { 5000 / q } else { 200 - 2 * q };
    base.map(|b| ((b as u32 * percent + 50) / 100).clamp(1, 255) as f32)
}

/// The luminance and chrominance tables at `quality`.
pub fn quant_tables(quality: u32) -> ([f32; 64], [f32; 64]) {
    (quant_table(&LUMA, quality), quant_table(&CHROMA, quality))
}

/// One channel plane on the 0–255 scale.
struct Plane {
    width: usize,
    height: usize,
    data: Vec<f32>,
}

impl Plane {
    /// The value at (x, y), edges repeated beyond the plane.
    fn at(&self, x: usize, y: usize) -> f32 {
        self.data[y.min(self.height - 1) * self.width + x.min(self.width - 1)]
    }

    /// Quantizes every 8 × 8 block's DCT coefficients with `table`, in place.
    fn code(&mut self, table: &[f32; 64], dct: &[[f32; 8]; 8]) {
        let mut block = [[0.0f32; 8]; 8];
        for by in (0..self.height).step_by(8) {
            for bx in (0..self.width).step_by(8) {
                for (y, row) in block.iter_mut().enumerate() {
                    for (x, v) in row.iter_mut().enumerate() {
                        *v = self.at(bx + x, by + y) - 128.0;
                    }
                }
                let mut coeffs = transform(dct, &block, false);
                for (u, row) in coeffs.iter_mut().enumerate() {
                    for (v, c) in row.iter_mut().enumerate() {
                        let step = table[u * 8 + v];
                        *c = (*c / step).round() * step;
                    }
                }
                let pixels = transform(dct, &coeffs, true);
                for (y, row) in pixels.iter().enumerate().take(self.height - by) {
                    for (x, v) in row.iter().enumerate().take(self.width - bx) {
                        self.data[(by + y) * self.width + bx + x] = v + 128.0;
                    }
                }
            }
        }
    }

    /// The 2 × 2 averages (4:2:0 chroma), edges averaging the pixels that exist.
    fn subsample(&self) -> Plane {
        let (w, h) = (self.width.div_ceil(2), self.height.div_ceil(2));
        let mut data = Vec::with_capacity(w * h);
        for y in 0..h {
            for x in 0..w {
                let (mut sum, mut n) = (0.0, 0.0);
                for sy in 2 * y..(2 * y + 2).min(self.height) {
                    for sx in 2 * x..(2 * x + 2).min(self.width) {
                        sum += self.data[sy * self.width + sx];
                        n += 1.0;
                    }
                }
                data.push(sum / n);
            }
        }
        Plane { width: w, height: h, data }
    }

    /// The value at full-resolution pixel (x, y) of a plane subsampled 2 × 2: bilinear between
    /// the chroma samples, whose centres lie between pixel pairs (weights 3/4 and 1/4).
    fn upsampled_at(&self, x: usize, y: usize) -> f32 {
        let taps = |i: usize, n: usize| {
            // Chroma sample j is centred on full-resolution coordinate 2j + 1/2.
            let pos = (i as f32 - 0.5) * 0.5;
            let j0 = pos.floor().max(0.0) as usize;
            let frac = if pos < 0.0 { 0.0 } else { pos - pos.floor() };
            (j0.min(n - 1), (j0 + 1).min(n - 1), frac)
        };
        let (x0, x1, fx) = taps(x, self.width);
        let (y0, y1, fy) = taps(y, self.height);
        let row = |yy: usize| self.at(x0, yy) * (1.0 - fx) + self.at(x1, yy) * fx;
        row(y0) * (1.0 - fy) + row(y1) * fy
    }
}

/// The DCT matrix D[u][x] = c(u)/2 · cos((2x + 1)uπ/16).
fn dct_matrix() -> [[f32; 8]; 8] {
    let mut d = [[0.0f32; 8]; 8];
    for (u, row) in d.iter_mut().enumerate() {
        let c = if u == 0 { std::f64::consts::FRAC_1_SQRT_2 } else { 1.0 };
        for (x, v) in row.iter_mut().enumerate() {
            *v = (0.5 * c * ((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / 16.0).cos()) as f32;
        }
    }
    d
}

/// `D b Dᵀ` (forward DCT) or `Dᵀ b D` (inverse).
fn transform(d: &[[f32; 8]; 8], b: &[[f32; 8]; 8], inverse: bool) -> [[f32; 8]; 8] {
    let m = |i: usize, j: usize| if inverse { d[j][i] } else { d[i][j] };
    let mut tmp = [[0.0f32; 8]; 8];
    for (i, row) in tmp.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (0..8).map(|k| m(i, k) * b[k][j]).sum();
        }
    }
    let mut out = [[0.0f32; 8]; 8];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = (0..8).map(|k| tmp[i][k] * m(j, k)).sum();
        }
    }
    out
}

/// Compresses `rgb` (interleaved, `width` × `height` × 3, values in [0, 1]) in place as a
/// baseline JPEG of `quality` (1–100, clamped) would, then decodes it (see the module notes).
/// An empty image is left as it is.
pub fn jpeg_like(rgb: &mut [f32], width: usize, height: usize, quality: u32) {
    if width == 0 || height == 0 {
        return;
    }
    debug_assert_eq!(rgb.len(), width * height * 3);
    let (luma, chroma) = quant_tables(quality);
    let dct = dct_matrix();
    let grey = rgb.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]);
    let plane = |f: &dyn Fn(&[f32]) -> f32| Plane { width, height, data: rgb.chunks_exact(3).map(f).collect() };
    let to_byte = |v: f32| 255.0 * v.clamp(0.0, 1.0);
    let mut y = plane(&|p| {
        let [r, g, b] = [p[0], p[1], p[2]].map(to_byte);
        0.299 * r + 0.587 * g + 0.114 * b
    });
    y.code(&luma, &dct);
    let decode = |v: f32| (v.round().clamp(0.0, 255.0)) / 255.0;
    if grey {
        for (p, &v) in rgb.chunks_exact_mut(3).zip(&y.data) {
            p.fill(decode(v));
        }
        return;
    }
    let mut cb = plane(&|p| {
        let [r, g, b] = [p[0], p[1], p[2]].map(to_byte);
        128.0 - 0.168_736 * r - 0.331_264 * g + 0.5 * b
    })
    .subsample();
    let mut cr = plane(&|p| {
        let [r, g, b] = [p[0], p[1], p[2]].map(to_byte);
        128.0 + 0.5 * r - 0.418_688 * g - 0.081_312 * b
    })
    .subsample();
    cb.code(&chroma, &dct);
    cr.code(&chroma, &dct);
    for py in 0..height {
        for px in 0..width {
            let l = y.data[py * width + px];
            let (b, r) = (cb.upsampled_at(px, py) - 128.0, cr.upsampled_at(px, py) - 128.0);
            let out = [l + 1.402 * r, l - 0.344_136 * b - 0.714_136 * r, l + 1.772 * b];
            rgb[(py * width + px) * 3..][..3].iter_mut().zip(out).for_each(|(v, o)| *v = decode(o));
        }
    }
}
