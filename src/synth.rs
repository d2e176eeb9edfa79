//! Synthetic segmentation data sets with controlled domain shift (`vlsa synth`).
//!
//! Two tasks: `cardiac` (short-axis cine-MRI-like grey slices; background, left ventricle,
//! myocardium, right ventricle) and `fundus` (colour fundus-like photos; background, optic disc,
//! optic cup). Each image is made in two stages:
//! 1. anatomy: a random scene in continuous coordinates [0, 1]², drawn from the same distribution
//!    for every domain (`synth/cardiac.rs`, `synth/fundus.rs`); the mask is the scene's labels at
//!    pixel centres (hard labels), the clean image its anti-aliased rendering;
//! 2. acquisition: what a scanner or camera does to the clean image, with the parameters of the
//!    domain ([`Domain`]): resolution, shading (MRI bias field or lens vignetting), blur, noise
//!    (Rician magnitude noise for MRI, Poisson shot noise plus Gaussian read noise for photos),
//!    colour cast, and the intensity curve (gamma, gain, offset).
//!
//! Everything is driven by [`Rng`], seeded SplitMix64 streams per image (one for the anatomy, one
//! for the acquisition), so the same seed gives the same files on every run.

mod cardiac;
mod fundus;

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::image_io::{resize_bilinear, save_png, Image, Mask};
use crate::random::SplitMix64;

/// Every stream here is SplitMix64 (see [`crate::random`]).
type Rng = crate::random::Rng<SplitMix64>;

/// A synthetic segmentation task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Short-axis cine-MRI-like slices: background, left ventricle, myocardium, right ventricle.
    Cardiac,
    /// Colour fundus-like photos: background, optic disc, optic cup.
    Fundus,
}

impl Task {
    /// Parses `cardiac` or `fundus`.
    pub fn parse(text: &str) -> Result<Task> {
        match text {
            "cardiac" => Ok(Task::Cardiac),
            "fundus" => Ok(Task::Fundus),
            other => Err(Error::Invalid(format!("unknown task '{other}'; the tasks are cardiac and fundus"))),
        }
    }

    /// The task's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Task::Cardiac => "cardiac",
            Task::Fundus => "fundus",
        }
    }

    /// Class names; the mask value of a pixel is the index in this list.
    pub fn classes(self) -> &'static [&'static str] {
        match self {
            Task::Cardiac => &["background", "left ventricle", "myocardium", "right ventricle"],
            Task::Fundus => &["background", "optic disc", "optic cup"],
        }
    }
}

/// Acquisition parameters of one domain (one scanner or camera).
///
/// The clean image is rendered at `resolution` × the output size, then, in this order: shaded
/// (`shading`), blurred (`blur`), made noisy (`noise`, `photons`), tinted (`cast`), mapped through
/// `offset + gain * v^gamma`, stored as a JPEG of `jpeg_quality` (photos) and upsampled
/// (bilinear) to the output size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Domain {
    /// The domain's letter, A to D.
    pub name: String,
    /// Exponent of the intensity curve.
    pub gamma: f32,
    /// Multiplier of the intensity curve (contrast).
    pub gain: f32,
    /// Added after the intensity curve (brightness).
    pub offset: f32,
    /// Gaussian noise sigma in [0, 1] signal units: both quadrature channels of Rician noise for
    /// MRI, read noise for photos.
    pub noise: f32,
    /// Photons at full white for Poisson shot noise (photos; 0 = none).
    pub photons: f32,
    /// Gaussian point-spread sigma as a fraction of the image side.
    pub blur: f32,
    /// Bias-field strength (MRI: multiplier exp(±shading)) or vignetting (photos: light lost at
    /// the corners of the field of view).
    pub shading: f32,
    /// Per-channel gain (white balance) before the intensity curve.
    pub cast: [f32; 3],
    /// Render size / output size (acquisition resolution).
    pub resolution: f32,
    /// Quality (1–100) of the JPEG the camera stores, at the acquisition resolution; 0 for none
    /// (the MRI scanners, whose slices are stored losslessly).
    pub jpeg_quality: u32,
}

/// Per-image jitter of the intensity curve around the domain's values: gain × U(1 ± GAIN_JITTER),
/// offset + U(± OFFSET_JITTER).
pub const GAIN_JITTER: f32 = 0.05;
/// See [`GAIN_JITTER`].
pub const OFFSET_JITTER: f32 = 0.02;

/// The domains' letters.
pub const DOMAINS: [&str; 4] = ["A", "B", "C", "D"];

impl Domain {
    /// The parameters of domain `name` (A, B, C or D) for `task`.
    pub fn of(task: Task, name: &str) -> Result<Domain> {
        // (gamma, gain, offset, noise, photons, blur, shading, cast, resolution, jpeg_quality)
        let p: (f32, f32, f32, f32, f32, f32, f32, [f32; 3], f32, u32) = match (task, name) {
            // MRI scanners: A a clean reference scanner, B a brighter low-contrast one with a
            // strong coil bias, C a noisy high-contrast low-resolution one, D washed out.
            (Task::Cardiac, "A") => (1.0, 1.0, 0.0, 0.02, 0.0, 0.0, 0.15, [1.0; 3], 1.0, 0),
            (Task::Cardiac, "B") => (0.7, 0.85, 0.06, 0.045, 0.0, 0.004, 0.45, [1.0; 3], 0.75, 0),
            (Task::Cardiac, "C") => (1.5, 1.15, 0.0, 0.07, 0.0, 0.008, 0.3, [1.0; 3], 0.5, 0),
            (Task::Cardiac, "D") => (1.2, 0.65, 0.15, 0.035, 0.0, 0.002, 0.25, [1.0; 3], 0.625, 0),
            // Fundus cameras: A neutral, B cool and soft, C warm, dark-cornered and coarse,
            // D green-tinted and washed out. JPEG quality: A as the real photo in samples/ (saved
            // at 94), the low-end camera C heavily compressed, B and D in between.
            (Task::Fundus, "A") => (1.0, 1.0, 0.0, 0.008, 3000.0, 0.0, 0.15, [1.0, 1.0, 1.0], 1.0, 95),
            (Task::Fundus, "B") => (0.8, 0.9, 0.03, 0.015, 800.0, 0.004, 0.35, [0.9, 1.05, 1.35], 0.75, 85),
            (Task::Fundus, "C") => (1.4, 1.2, -0.03, 0.02, 300.0, 0.008, 0.55, [1.1, 0.8, 0.6], 0.5, 50),
            (Task::Fundus, "D") => (1.15, 0.75, 0.1, 0.012, 1500.0, 0.003, 0.25, [0.8, 1.15, 1.0], 0.625, 75),
            (_, other) => {
                return Err(Error::Invalid(format!("unknown domain '{other}'; the domains are A, B, C and D")))
            }
        };
        let (gamma, gain, offset, noise, photons, blur, shading, cast, resolution, jpeg_quality) = p;
        Ok(Domain {
            name: name.to_string(),
            gamma,
            gain,
            offset,
            noise,
            photons,
            blur,
            shading,
            cast,
            resolution,
            jpeg_quality,
        })
    }

    /// Render size for output size `size`.
    pub fn render_size(&self, size: usize) -> usize {
        ((size as f32 * self.resolution).round() as usize).max(8)
    }
}

/// Smooth random texture on [0, 1]²: octaves of value noise (random values on a lattice,
/// interpolated with smoothstep weights), each halving in amplitude. Values roughly in [-1, 1].
#[derive(Debug, Clone)]
pub(crate) struct Texture {
    octaves: Vec<(usize, Vec<f32>)>,
}

impl Texture {
    pub(crate) fn new(rng: &mut Rng, cells: usize, octaves: usize) -> Texture {
        let octaves = (0..octaves)
            .map(|o| {
                let n = cells << o;
                (n, (0..(n + 1) * (n + 1)).map(|_| rng.range(-1.0, 1.0)).collect())
            })
            .collect();
        Texture { octaves }
    }

    pub(crate) fn at(&self, x: f32, y: f32) -> f32 {
        let mut sum = 0.0;
        let mut amp = 1.0;
        let mut norm = 0.0;
        for (n, lattice) in &self.octaves {
            let fx = (x.clamp(0.0, 1.0) * *n as f32).min(*n as f32 - 1e-4);
            let fy = (y.clamp(0.0, 1.0) * *n as f32).min(*n as f32 - 1e-4);
            let (ix, iy) = (fx as usize, fy as usize);
            let smooth = |t: f32| t * t * (3.0 - 2.0 * t);
            let (tx, ty) = (smooth(fx - ix as f32), smooth(fy - iy as f32));
            let at = |i: usize, j: usize| lattice[j * (n + 1) + i];
            let top = at(ix, iy) + (at(ix + 1, iy) - at(ix, iy)) * tx;
            let bottom = at(ix, iy + 1) + (at(ix + 1, iy + 1) - at(ix, iy + 1)) * tx;
            sum += amp * (top + (bottom - top) * ty);
            norm += amp;
            amp *= 0.5;
        }
        sum / norm
    }
}

/// Distance beyond a blob's reach at which [`Blob::depth`] stops evaluating its boundary.
const FAR: f32 = 0.1;

/// A star-shaped region around a centre: an ellipse (semi-axis `radius` along `angle`, `radius *
/// aspect` across it) whose radius is modulated by smooth harmonics 2, 3 and 4.
#[derive(Debug, Clone)]
pub(crate) struct Blob {
    pub(crate) cx: f32,
    pub(crate) cy: f32,
    radius: f32,
    aspect: f32,
    angle: f32,
    harmonics: [(f32, f32); 3],
    reach: f32,
}

impl Blob {
    /// A blob whose harmonic amplitudes are uniform in [-wobble, wobble].
    pub(crate) fn new((cx, cy): (f32, f32), radius: f32, aspect: f32, angle: f32, wobble: f32, rng: &mut Rng) -> Blob {
        let harmonics = [0; 3].map(|_| (rng.range(-wobble, wobble), rng.range(0.0, std::f32::consts::TAU)));
        let reach = radius * aspect.max(1.0) * (1.0 + harmonics.iter().map(|h| h.0.abs()).sum::<f32>());
        Blob { cx, cy, radius, aspect, angle, harmonics, reach }
    }

    /// The boundary's distance from the centre in direction `phi`.
    pub(crate) fn radius_at(&self, phi: f32) -> f32 {
        let psi = phi - self.angle;
        let (a, b) = (self.radius, self.radius * self.aspect);
        let ellipse = a * b / ((b * psi.cos()).powi(2) + (a * psi.sin()).powi(2)).sqrt();
        let mut wobble = 1.0;
        for (k, &(amp, phase)) in self.harmonics.iter().enumerate() {
            wobble += amp * ((k as f32 + 2.0) * phi + phase).cos();
        }
        ellipse * wobble
    }

    /// Approximate signed distance to the boundary, positive inside. Points farther than
    /// [`FAR`] outside the blob's reach get `reach - rho` (below -FAR) without evaluating the
    /// boundary: no pixel of side up to 2 * FAR is covered there.
    pub(crate) fn depth(&self, x: f32, y: f32) -> f32 {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let rho = (dx * dx + dy * dy).sqrt();
        if rho > self.reach + FAR {
            return self.reach - rho;
        }
        self.radius_at(dy.atan2(dx)) - rho
    }
}

/// Fraction of a pixel of side `pixel` covered by a region at signed distance `depth`: the light
/// anti-aliasing of rendered edges (masks use `depth > 0` instead).
pub(crate) fn coverage(depth: f32, pixel: f32) -> f32 {
    (depth / pixel + 0.5).clamp(0.0, 1.0)
}

/// Separable Gaussian blur of interleaved data [size, size, channels], edges clamped.
fn blur(data: &mut [f32], size: usize, channels: usize, sigma: f32) {
    if sigma < 0.2 {
        return;
    }
    let radius = (3.0 * sigma).ceil() as isize;
    let mut kernel: Vec<f32> = (-radius..=radius).map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let total: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= total);
    let mut tmp = vec![0.0f32; data.len()];
    // Horizontal pass into tmp, vertical pass back into data.
    blur_pass(data, &mut tmp, size, channels, &kernel, radius, true);
    blur_pass(&tmp, data, size, channels, &kernel, radius, false);
}

/// The acquisition of domain `d` applied to a clean rendering [size, size, channels] in place.
/// `mri` selects the MRI chain (bias field, Rician noise) over the camera chain (vignetting,
/// Poisson + Gaussian noise, colour cast); `fov` is the camera's field-of-view coverage, which
/// stays black.
fn acquire(d: &Domain, data: &mut [f32], size: usize, channels: usize, mri: bool, fov: Option<&[f32]>, rng: &mut Rng) {
    let pixel = 1.0 / size as f32;
    // Shading: a smooth multiplicative field.
    if mri {
        // Coil sensitivity: a linear ramp in a random direction plus a smooth bump pattern.
        let field = Texture::new(rng, 2, 2);
        let dir = rng.range(0.0, std::f32::consts::TAU);
        let (gx, gy) = (dir.cos(), dir.sin());
        for y in 0..size {
            for x in 0..size {
                let (u, v) = ((x as f32 + 0.5) * pixel, (y as f32 + 0.5) * pixel);
                let f = 0.6 * ((u - 0.5) * gx + (v - 0.5) * gy) * 2.0 + 0.4 * field.at(u, v);
                let m = (d.shading * f).exp();
                for c in 0..channels {
                    data[(y * size + x) * channels + c] *= m;
                }
            }
        }
    } else {
        // Vignetting: light falls off with the squared distance from a slightly off-centre axis.
        let (ox, oy) = (0.5 + rng.range(-0.04, 0.04), 0.5 + rng.range(-0.04, 0.04));
        for y in 0..size {
            for x in 0..size {
                let (u, v) = ((x as f32 + 0.5) * pixel - ox, (y as f32 + 0.5) * pixel - oy);
                let m = (1.0 - d.shading * (u * u + v * v) / 0.25).max(0.0);
                for c in 0..channels {
                    data[(y * size + x) * channels + c] *= m;
                }
            }
        }
    }
    blur(data, size, channels, d.blur * size as f32);
    // Noise, then white balance.
    for (i, v) in data.iter_mut().enumerate() {
        if mri {
            // Magnitude of a complex signal with Gaussian noise in both channels: Rician.
            let (re, im) = (*v + d.noise * rng.normal(), d.noise * rng.normal());
            *v = (re * re + im * im).sqrt();
        } else {
            // Shot noise (Gaussian approximation of Poisson with `photons` at white) plus read noise.
            let shot = if d.photons > 0.0 { (v.max(0.0) / d.photons).sqrt() * rng.normal() } else { 0.0 };
            *v = (*v + shot + d.noise * rng.normal()).max(0.0) * d.cast[i % channels];
        }
    }
    // Intensity curve with a little per-image jitter.
    let gain = d.gain * (1.0 + rng.range(-GAIN_JITTER, GAIN_JITTER));
    let offset = d.offset + rng.range(-OFFSET_JITTER, OFFSET_JITTER);
    for (i, v) in data.iter_mut().enumerate() {
        let mut out = offset + gain * v.max(0.0).powf(d.gamma);
        if let Some(fov) = fov {
            // The camera's black border stays black (only its noise shows).
            let inside = fov[i / channels];
            out = inside * out + (1.0 - inside) * v.max(0.0);
        }
        *v = out.clamp(0.0, 1.0);
    }
    // The camera stores a JPEG (colour photos only).
    if channels == 3 && d.jpeg_quality > 0 {
        crate::compression::jpeg_like(data, size, size, d.jpeg_quality);
    }
}

/// One 1-D pass of a separable blur (along x when `horizontal`, else y), edges clamped.
fn blur_pass(
    src: &[f32],
    dst: &mut [f32],
    size: usize,
    channels: usize,
    kernel: &[f32],
    radius: isize,
    horizontal: bool,
) {
    let n = size as isize;
    for y in 0..size {
        for x in 0..size {
            for c in 0..channels {
                let mut s = 0.0;
                for (k, w) in kernel.iter().enumerate() {
                    let (xx, yy) = if horizontal {
                        ((x as isize + k as isize - radius).clamp(0, n - 1) as usize, y)
                    } else {
                        (x, (y as isize + k as isize - radius).clamp(0, n - 1) as usize)
                    };
                    s += w * src[(yy * size + xx) * channels + c];
                }
                dst[(y * size + x) * channels + c] = s;
            }
        }
    }
}

/// Stream identifiers of an image's random streams.
const ANATOMY: u64 = 1;
const ACQUISITION: u64 = 2;

/// One synthetic image and its mask at `size` × `size`: image `index` of `task` in domain `domain`
/// with `seed`. The anatomy stream depends on (seed, task, domain, index), so different domains
/// hold different (but identically distributed) anatomy.
pub fn generate(task: Task, domain: &Domain, size: usize, seed: u64, index: u64) -> (Image, Mask) {
    let task_id = task as u64;
    let domain_id = domain.name.bytes().next().unwrap_or(b'A') as u64;
    let mut anatomy = Rng::from_path(seed, &[task_id, domain_id, index, ANATOMY]);
    let mut acquisition = Rng::from_path(seed, &[task_id, domain_id, index, ACQUISITION]);
    let render = domain.render_size(size);
    let (mut data, channels, labels, fov) = match task {
        Task::Cardiac => {
            let chest = cardiac::Chest::sample(&mut anatomy);
            (chest.render(render), 1, chest.labels(size), None)
        }
        Task::Fundus => {
            let eye = fundus::Eye::sample(&mut anatomy);
            let (rgb, fov) = eye.render(render);
            (rgb, 3, eye.labels(size), Some(fov))
        }
    };
    acquire(domain, &mut data, render, channels, task == Task::Cardiac, fov.as_deref(), &mut acquisition);
    if render != size {
        data = resize_bilinear(&data, render, render, channels, size, size);
    }
    let rgb = if channels == 1 { data.iter().flat_map(|&v| [v; 3]).collect() } else { data };
    (Image { width: size, height: size, rgb }, Mask { width: size, height: size, labels })
}

/// What `vlsa synth` makes.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// The task.
    pub task: Task,
    /// The domain's parameters.
    pub domain: Domain,
    /// Number of images.
    pub count: usize,
    /// Output side in pixels.
    pub size: usize,
    /// Seed of every random stream.
    pub seed: u64,
}

/// What `domain.json` holds.
#[derive(Serialize)]
struct DomainFile<'a> {
    task: &'static str,
    classes: &'static [&'static str],
    seed: u64,
    count: usize,
    size: usize,
    render_size: usize,
    domain: &'a Domain,
    gain_jitter: f32,
    offset_jitter: f32,
    generator: String,
}

/// Largest accepted output side.
pub const MAX_SIZE: usize = 4096;

/// The file stem of image `index`.
pub fn sample_name(task: Task, domain: &Domain, index: usize) -> String {
    format!("{}_{}_{index:05}", task.name(), domain.name)
}

/// Writes `images/NAME.png`, `masks/NAME.png` and `domain.json` under `out`. Images are written by
/// several threads; each image's streams are independent, so the files do not depend on them.
pub fn write_dataset(options: &SynthOptions, out: &Path) -> Result<()> {
    let SynthOptions { task, domain, count, size, seed } = options;
    if *count == 0 {
        return Err(Error::Invalid("--count must be at least 1".into()));
    }
    if *size < 16 || *size > MAX_SIZE {
        return Err(Error::Invalid(format!("--size {size} is not between 16 and {MAX_SIZE}")));
    }
    let images = out.join("images");
    let masks = out.join("masks");
    for dir in [&images, &masks] {
        if dir.is_dir() && std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.next().is_some() {
            return Err(Error::Invalid(format!("{} is not empty; give vlsa synth a new --out folder", dir.display())));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8).min(*count);
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (images, masks) = (&images, &masks);
                scope.spawn(move || -> Result<()> {
                    for index in (t..*count).step_by(threads) {
                        let (image, mask) = generate(*task, domain, *size, *seed, index as u64);
                        let name = sample_name(*task, domain, index);
                        let path = images.join(format!("{name}.png"));
                        match task {
                            Task::Cardiac => {
                                let grey: Vec<u8> = image.to_rgb8().into_iter().step_by(3).collect();
                                save_png(&path, *size, *size, image::ExtendedColorType::L8, &grey)?
                            }
                            Task::Fundus => image.save_png(&path)?,
                        }
                        mask.save_png(&masks.join(format!("{name}.png")))?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(Error::Invalid("a synth worker thread panicked".into()))))
            .collect()
    });
    results.into_iter().collect::<Result<Vec<()>>>()?;
    // Serialized from a struct, not a json! value, so that f32 parameters print as written.
    let description = DomainFile {
        task: task.name(),
        classes: task.classes(),
        seed: *seed,
        count: *count,
        size: *size,
        render_size: domain.render_size(*size),
        domain,
        gain_jitter: GAIN_JITTER,
        offset_jitter: OFFSET_JITTER,
        generator: format!("vlsa {} synth", env!("CARGO_PKG_VERSION")),
    };
    let path = out.join("domain.json");
    let text = serde_json::to_string_pretty(&description).expect("a domain description always serializes") + "\n";
    crate::io::write_atomic(&path, text.as_bytes()).map_err(|e| Error::io(&path, e))
}
