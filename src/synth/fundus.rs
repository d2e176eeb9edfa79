//! Anatomy of a synthetic colour fundus photo (macula-centred, 45° field).
//!
//! Image coordinates are [0, 1]², x to the right, y down. A circular field of view (black outside)
//! shows the reddish-orange retina with choroidal texture, the darker macula with the fovea at its
//! centre, the yellowish optic disc to one side (left or right eye) with a brighter cup inside it
//! (cup-to-disc ratio 0.3–0.8, always leaving a rim of disc), a pale peripapillary zone around
//! the disc on half of the eyes (uneven in width, as strong as on the real photo in samples/), a
//! dark pigment crescent at part of the disc's edge on some, and vessels: arcades that leave the
//! disc, bend around the macula and branch, drawn over everything. Half of the photos show the
//! camera's orientation notch: a small square tab of the field of view beyond its circle, at a
//! random angle. The cup class is the cup region intersected with the disc shrunk by the
//! narrowest rim, so cup pixels are always surrounded by disc pixels; the pale zone and the
//! crescent lie outside the disc and are background.

use std::f32::consts::{FRAC_PI_2, PI};

use super::{coverage, Blob, Rng, Texture};

/// Class indices of the fundus task.
const DISC: u8 = 1;
const CUP: u8 = 2;

/// Radius of the field of view.
const FOV_RADIUS: f32 = 0.47;

/// The camera's orientation notch: a tab of the field of view, `half_width` to each side of the
/// radius at `angle`, reaching `reach` beyond the circle. The real photo in samples/ has one at
/// about 1 o'clock, 0.042 of the image wide and reaching 0.013–0.018 beyond the circle (0.039
/// and 0.012–0.017 at this field of view's radius).
struct Notch {
    angle: f32,
    half_width: f32,
    reach: f32,
}

impl Notch {
    /// No notch on half of the photos; otherwise one at any angle.
    fn sample(rng: &mut Rng) -> Option<Notch> {
        if !rng.chance(0.5) {
            return None;
        }
        Some(Notch { angle: rng.range(-PI, PI), half_width: rng.range(0.015, 0.025), reach: rng.range(0.008, 0.02) })
    }

    /// Signed distance inside the tab (negative outside) of point (x, y).
    fn depth(&self, x: f32, y: f32) -> f32 {
        let (dx, dy) = (x - 0.5, y - 0.5);
        let (c, s) = (self.angle.cos(), self.angle.sin());
        let radial = dx * c + dy * s - FOV_RADIUS;
        let across = (-dx * s + dy * c).abs();
        // The tab's inner end lies well inside the circle (where the circle shows anyway).
        (self.half_width - across).min(self.reach - radial).min(radial + 0.1)
    }
}

/// The pale peripapillary zone around the disc: `strength` (0: none) is its blend toward the pale
/// colour at the disc's edge, `width` its mean reach beyond the edge as a fraction of the disc's
/// radius, wider by the factor `1 + lean.0` toward direction `lean.1` and narrower opposite.
/// On the real photo in samples/ the zone nasal to the disc reaches about 0.4 of the disc's
/// radius with the full pale colour (0.97, 0.54, 0.38), wider on one side than the other.
struct Halo {
    strength: f32,
    width: f32,
    lean: (f32, f32),
}

impl Halo {
    /// Blend weight toward the pale colour at signed distance `disc_depth` from the disc's edge
    /// (negative outside), in direction `phi` from the disc's centre, with disc radius
    /// `disc_radius`: full over the inner half of the zone, fading to nothing over the outer half.
    fn alpha(&self, disc_depth: f32, phi: f32, disc_radius: f32, pixel: f32) -> f32 {
        if self.strength == 0.0 {
            return 0.0;
        }
        let width = self.width * disc_radius * (1.0 + self.lean.0 * (phi - self.lean.1).cos());
        self.strength * coverage(-disc_depth, pixel) * (2.0 * (1.0 + disc_depth / width)).clamp(0.0, 1.0)
    }
}

/// Pigment at part of the disc's edge (as at the temporal edge on the real photo in samples/):
/// a band just outside the disc, `width` of its radius wide, over the angles within `spread` of
/// `angle`, darkening by `strength` at its middle.
struct Crescent {
    angle: f32,
    spread: f32,
    width: f32,
    strength: f32,
}

impl Crescent {
    /// Blend weight toward the pigment's colour (arguments as for [`Halo::alpha`]).
    fn alpha(&self, disc_depth: f32, phi: f32, disc_radius: f32, pixel: f32) -> f32 {
        let off = (phi - self.angle + PI).rem_euclid(2.0 * PI) - PI;
        let along = (1.0 - (off / self.spread).powi(2)).max(0.0);
        let width = (self.width * disc_radius).max(pixel);
        self.strength * along * coverage(-disc_depth, pixel) * coverage(width + disc_depth, pixel)
    }
}

/// One straight piece of a vessel's centre line.
struct Segment {
    from: (f32, f32),
    to: (f32, f32),
    width: f32,
    vein: bool,
}

/// One random eye.
pub(super) struct Eye {
    disc: Blob,
    cup: Blob,
    /// Narrowest neuroretinal rim: the cup stays this far inside the disc's edge.
    rim: f32,
    fovea: (f32, f32),
    macula_radius: f32,
    macula_darkening: f32,
    halo: Halo,
    crescent: Option<Crescent>,
    vessels: Vec<Segment>,
    retina: [f32; 3],
    choroid: Texture,
    fine: Texture,
    notch: Option<Notch>,
}

/// A vessel to grow: from `start` in direction `heading`, relaxing toward `target` at rate `bend`
/// (radians per unit length per radian of difference), `width` wide at its start and `length`
/// long; `depth` counts the branchings above it.
struct Vessel {
    start: (f32, f32),
    heading: f32,
    target: f32,
    bend: f32,
    width: f32,
    length: f32,
    vein: bool,
    depth: u32,
}

/// Grows one vessel as segments, branching as it goes.
fn grow(out: &mut Vec<Segment>, vessel: Vessel, rng: &mut Rng) {
    const STEP: f32 = 0.012;
    let Vessel { start, mut heading, target, bend, width, length, vein, depth } = vessel;
    let steps = (length / STEP) as usize;
    let mut p = start;
    for i in 0..steps {
        heading += STEP * bend * (target - heading).sin() + 0.12 * rng.normal();
        let w = width * (1.0 - 0.6 * i as f32 / steps as f32);
        let q = (p.0 + STEP * heading.cos(), p.1 + STEP * heading.sin());
        out.push(Segment { from: p, to: q, width: w, vein });
        p = q;
        if ((p.0 - 0.5).powi(2) + (p.1 - 0.5).powi(2)).sqrt() > FOV_RADIUS + 0.02 {
            return;
        }
        if depth < 4 && i > 3 && w > 0.003 && rng.chance(0.08) {
            let side = if rng.chance(0.5) { 1.0 } else { -1.0 };
            let branch_heading = heading + side * rng.range(0.4, 0.9);
            let rest = length * (1.0 - i as f32 / steps as f32);
            grow(
                out,
                Vessel {
                    start: p,
                    heading: branch_heading,
                    target: branch_heading,
                    bend: 0.0,
                    width: w * rng.range(0.5, 0.7),
                    length: rest * rng.range(0.4, 0.8),
                    vein,
                    depth: depth + 1,
                },
                rng,
            );
        }
    }
}

impl Eye {
    /// Draws an eye from the anatomy distribution (the same for every domain).
    pub(super) fn sample(rng: &mut Rng) -> Eye {
        // +1: disc on the right (a right eye seen from the front), -1: on the left.
        let side = if rng.chance(0.5) { 1.0f32 } else { -1.0 };
        // Macula-centred: the fovea near the middle, the disc 2–3 disc diameters to one side
        // (about 0.3 of the field width), slightly above the fovea. The disc's diameter is
        // 0.095–0.15 of the field of view (1.5–2 mm of a 45–50° field; the real photo in
        // samples/ has 0.094 across and 0.113 high).
        let fovea = (0.5 + rng.range(-0.03, 0.03), 0.5 + rng.range(-0.03, 0.03));
        let disc_centre = (fovea.0 + side * rng.range(0.27, 0.33), fovea.1 - rng.range(0.0, 0.05));
        let disc_radius = rng.range(0.045, 0.07);
        let disc = Blob::new(disc_centre, disc_radius, rng.range(1.0, 1.15), rng.range(-0.2, 0.2), 0.03, rng);
        let cup_to_disc = rng.range(0.3, 0.8);
        let shift = rng.range(0.0, 0.1) * disc_radius;
        let cup_centre = (disc_centre.0 - side * shift, disc_centre.1 + rng.range(-0.03, 0.03) * disc_radius);
        let cup =
            Blob::new(cup_centre, cup_to_disc * disc_radius, rng.range(0.95, 1.2), rng.range(-0.2, 0.2), 0.04, rng);
        // Vessels: four arcades around the macula and nasal, then a few small ones.
        let to_fovea = (fovea.1 - disc_centre.1).atan2(fovea.0 - disc_centre.0);
        let mut vessels = Vec::new();
        for (i, turn) in [-1.0f32, 1.0].into_iter().enumerate() {
            for vein in [false, true] {
                let start = to_fovea + turn * rng.range(1.0, 1.4);
                let target = to_fovea + turn * rng.range(0.3, 0.45);
                let width = if vein { rng.range(0.011, 0.014) } else { rng.range(0.008, 0.011) };
                grow(
                    &mut vessels,
                    Vessel {
                        start: disc_centre,
                        heading: start + rng.range(-0.1, 0.1),
                        target,
                        bend: rng.range(4.0, 6.0),
                        width,
                        length: rng.range(0.55, 0.8),
                        vein,
                        depth: 0,
                    },
                    rng,
                );
                let nasal = to_fovea + PI - turn * rng.range(0.4, 0.9);
                grow(
                    &mut vessels,
                    Vessel {
                        start: disc_centre,
                        heading: nasal,
                        target: nasal - turn * 0.3,
                        bend: 1.0,
                        width: width * 0.8,
                        length: rng.range(0.25, 0.4),
                        vein: vein ^ (i == 1),
                        depth: 0,
                    },
                    rng,
                );
            }
        }
        // Many thin vessels leave the disc in every direction, as in real photos.
        for _ in 0..rng.range(5.0, 10.0) as usize {
            let heading = rng.range(-PI, PI);
            grow(
                &mut vessels,
                Vessel {
                    start: disc_centre,
                    heading,
                    target: heading,
                    bend: 0.0,
                    width: rng.range(0.003, 0.006),
                    length: rng.range(0.15, 0.35),
                    vein: rng.chance(0.5),
                    depth: 1,
                },
                rng,
            );
        }
        let tint = rng.range(0.85, 1.1);
        let macula_radius = rng.range(0.05, 0.07);
        let macula_darkening = rng.range(0.3, 0.5);
        let halo_strength = if rng.chance(0.5) { rng.range(0.2, 1.0) } else { 0.0 };
        // Bright orange-red, as a well-exposed photo (the real photo's retina averages
        // 0.81, 0.32, 0.23 after vignetting).
        let retina = [0.93 * tint, 0.37 * rng.range(0.85, 1.15), 0.27 * rng.range(0.8, 1.2)];
        let choroid = Texture::new(rng, 5, 3);
        let fine = Texture::new(rng, 24, 1);
        // Drawn last, so that a seed keeps the eye it drew before notches, and the notch it drew
        // before the pale zone's shape and the crescent.
        let notch = Notch::sample(rng);
        let halo = Halo {
            strength: halo_strength,
            width: rng.range(0.2, 0.6),
            lean: (rng.range(0.0, 0.8), rng.range(-PI, PI)),
        };
        // The crescent lies toward the macula (temporal), as on the real photo.
        let crescent = rng.chance(0.3).then(|| Crescent {
            angle: to_fovea + rng.range(-0.6, 0.6),
            spread: rng.range(0.4, 1.2),
            width: rng.range(0.05, 0.15),
            strength: rng.range(0.3, 0.7),
        });
        Eye {
            disc,
            cup,
            rim: 0.15 * disc_radius,
            fovea,
            macula_radius,
            macula_darkening,
            halo,
            crescent,
            vessels,
            retina,
            choroid,
            fine,
            notch,
        }
    }

    /// The mask at `size` × `size`: labels at pixel centres.
    pub(super) fn labels(&self, size: usize) -> Vec<u8> {
        let pixel = 1.0 / size as f32;
        let mut labels = Vec::with_capacity(size * size);
        for py in 0..size {
            for px in 0..size {
                let (x, y) = ((px as f32 + 0.5) * pixel, (py as f32 + 0.5) * pixel);
                let disc_depth = self.disc.depth(x, y);
                let in_disc = disc_depth > 0.0;
                labels.push(if disc_depth > self.rim && self.cup.depth(x, y) > 0.0 {
                    CUP
                } else if in_disc {
                    DISC
                } else {
                    0
                });
            }
        }
        labels
    }

    /// Vessel opacity per pixel (arteries, veins) at `size` × `size`.
    fn vessel_maps(&self, size: usize) -> (Vec<f32>, Vec<f32>) {
        let pixel = 1.0 / size as f32;
        let mut arteries = vec![0.0f32; size * size];
        let mut veins = vec![0.0f32; size * size];
        for s in &self.vessels {
            let half = 0.5 * s.width;
            let (lo_x, hi_x) = (s.from.0.min(s.to.0) - half - pixel, s.from.0.max(s.to.0) + half + pixel);
            let (lo_y, hi_y) = (s.from.1.min(s.to.1) - half - pixel, s.from.1.max(s.to.1) + half + pixel);
            let cell = |v: f32| ((v * size as f32).floor().max(0.0) as usize).min(size);
            let (dx, dy) = (s.to.0 - s.from.0, s.to.1 - s.from.1);
            let len2 = (dx * dx + dy * dy).max(1e-12);
            let map = if s.vein { &mut veins } else { &mut arteries };
            for py in cell(lo_y)..cell(hi_y + pixel).min(size) {
                for px in cell(lo_x)..cell(hi_x + pixel).min(size) {
                    let (x, y) = ((px as f32 + 0.5) * pixel, (py as f32 + 0.5) * pixel);
                    let t = (((x - s.from.0) * dx + (y - s.from.1) * dy) / len2).clamp(0.0, 1.0);
                    let d = ((x - s.from.0 - t * dx).powi(2) + (y - s.from.1 - t * dy).powi(2)).sqrt();
                    // Thin vessels cover part of a pixel: their opacity falls with their width.
                    let a = coverage(half - d, pixel) * (s.width / pixel).min(1.0);
                    let m = &mut map[py * size + px];
                    *m = m.max(a);
                }
            }
        }
        (arteries, veins)
    }

    /// The clean photo at `size` × `size` (RGB interleaved) and the field-of-view coverage.
    pub(super) fn render(&self, size: usize) -> (Vec<f32>, Vec<f32>) {
        let pixel = 1.0 / size as f32;
        let (arteries, veins) = self.vessel_maps(size);
        let mut rgb = Vec::with_capacity(size * size * 3);
        let mut fov = Vec::with_capacity(size * size);
        // Measured on the real photo in samples/: disc rim 0.99, 0.64, 0.44 (red saturates, green
        // and blue about twice the retina's), cup 0.98, 0.79, 0.56. Vessels darken green most
        // (about 0.6x) and red little (about 0.85x); veins are darker than arteries.
        let disc_colour = [1.0, 0.66, 0.45];
        let cup_colour = [1.0, 0.82, 0.6];
        let halo_colour = [0.97, 0.55, 0.38];
        // The crescent on the real photo darkens the pale zone to about 0.82, 0.41, 0.25.
        let crescent_colour = [0.55, 0.3, 0.2];
        let artery_colour = [0.82, 0.22, 0.16];
        let vein_colour = [0.68, 0.15, 0.12];
        // The pale zone and the crescent scale with the disc's horizontal radius.
        let disc_radius = self.disc.radius_at(0.0);
        for py in 0..size {
            for px in 0..size {
                let (x, y) = ((px as f32 + 0.5) * pixel, (py as f32 + 0.5) * pixel);
                let rho = ((x - 0.5).powi(2) + (y - 0.5).powi(2)).sqrt();
                let circle = coverage(FOV_RADIUS - rho, pixel);
                let inside = self.notch.as_ref().map_or(circle, |n| circle.max(coverage(n.depth(x, y), pixel)));
                // Retina: choroidal texture, brighter toward the centre of the illumination.
                let texture = 1.0 + 0.12 * self.choroid.at(x, y) + 0.04 * self.fine.at(x, y);
                let light = 1.0 - 0.25 * (rho / FOV_RADIUS).powi(2);
                let f2 = (x - self.fovea.0).powi(2) + (y - self.fovea.1).powi(2);
                let macula = self.macula_darkening * (-f2 / (2.0 * self.macula_radius.powi(2))).exp();
                let reflex = 0.15 * (-f2 / (2.0 * (0.1 * self.macula_radius).powi(2))).exp();
                let mut c = [0usize, 1, 2].map(|k| {
                    // Macular pigment absorbs more of green and blue.
                    let absorb = macula * [1.0, 1.3, 1.3][k];
                    self.retina[k] * texture * light * (1.0 - absorb).max(0.0) + reflex
                });
                let blend = |c: &mut [f32; 3], target: [f32; 3], alpha: f32| {
                    for k in 0..3 {
                        c[k] += (target[k] - c[k]) * alpha;
                    }
                };
                let disc_depth = self.disc.depth(x, y);
                if disc_depth > -2.0 * disc_radius {
                    let phi = (y - self.disc.cy).atan2(x - self.disc.cx);
                    blend(&mut c, halo_colour, self.halo.alpha(disc_depth, phi, disc_radius, pixel));
                    if let Some(crescent) = &self.crescent {
                        blend(&mut c, crescent_colour, crescent.alpha(disc_depth, phi, disc_radius, pixel));
                    }
                }
                // The disc brightens toward its centre; the cup's pale edge is soft (about 15% of
                // its radius), as the cup margin is in real photos.
                let disc_alpha = coverage(disc_depth, pixel);
                let shade = 0.9 + 0.1 * (disc_depth / self.disc.radius_at(FRAC_PI_2)).clamp(0.0, 1.0);
                blend(&mut c, disc_colour.map(|v| v * shade * texture.sqrt()), disc_alpha);
                let cup_edge = (0.15 * self.cup.radius_at(0.0)).max(pixel);
                blend(
                    &mut c,
                    cup_colour,
                    coverage(disc_depth - self.rim, pixel) * coverage(self.cup.depth(x, y), cup_edge),
                );
                let i = py * size + px;
                blend(&mut c, artery_colour, 0.85 * arteries[i]);
                blend(&mut c, vein_colour, 0.9 * veins[i]);
                rgb.extend(c.map(|v| v * inside));
                fov.push(inside);
            }
        }
        (rgb, fov)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIXEL: f32 = 1e-4;

    #[test]
    fn the_pale_zone_is_full_at_the_disc_leans_one_way_and_ends() {
        let halo = Halo { strength: 0.8, width: 0.4, lean: (0.5, 0.0) };
        let r = 0.05;
        // Inside the disc: none (the disc is drawn there); at the edge's outside: full strength.
        assert_eq!(halo.alpha(0.01, 0.0, r, PIXEL), 0.0);
        assert!((halo.alpha(-0.001, 1.0, r, PIXEL) - 0.8).abs() < 1e-6);
        // Reach toward the lean: 0.4 * 1.5 * r = 0.03; opposite: 0.4 * 0.5 * r = 0.01.
        assert!(halo.alpha(-0.02, 0.0, r, PIXEL) > 0.0);
        assert_eq!(halo.alpha(-0.02, PI, r, PIXEL), 0.0);
        assert_eq!(halo.alpha(-0.031, 0.0, r, PIXEL), 0.0);
        // Full over the inner half of its reach, then fading.
        assert!((halo.alpha(-0.014, 0.0, r, PIXEL) - 0.8).abs() < 1e-6);
        assert!(halo.alpha(-0.025, 0.0, r, PIXEL) < halo.alpha(-0.02, 0.0, r, PIXEL));
        let none = Halo { strength: 0.0, ..halo };
        assert_eq!(none.alpha(-0.001, 0.0, r, PIXEL), 0.0);
    }

    #[test]
    fn the_crescent_hugs_part_of_the_disc_edge() {
        let crescent = Crescent { angle: 3.0, spread: 0.5, width: 0.1, strength: 0.6 };
        let r = 0.05;
        // At its middle, just outside the edge: full; across the angle -pi/pi seam too.
        assert!((crescent.alpha(-0.001, 3.0, r, PIXEL) - 0.6).abs() < 1e-6);
        assert!(crescent.alpha(-0.001, -3.0, r, PIXEL) > 0.3);
        // Beyond its arc, inside the disc, or farther out than its width (0.005): none.
        assert_eq!(crescent.alpha(-0.001, 2.0, r, PIXEL), 0.0);
        assert_eq!(crescent.alpha(0.002, 3.0, r, PIXEL), 0.0);
        assert_eq!(crescent.alpha(-0.006, 3.0, r, PIXEL), 0.0);
    }
}
