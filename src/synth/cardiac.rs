//! Anatomy of a synthetic short-axis cine-MRI slice (bright-blood contrast, as in SSFP cine).
//!
//! Image coordinates are [0, 1]², x to the right, y down (patient's right on the image's left, as
//! radiologists view it). The chest is an elliptical body with subcutaneous fat, two dark lungs, the
//! liver (on some slices), the spine and the descending aorta. The heart: a left-ventricle blood
//! pool (star-shaped blob, papillary muscles inside it count as ventricle), a myocardial ring of
//! varying thickness around it, and a right-ventricle crescent beside it on the image's left: an
//! ellipse next to the left ventricle minus the myocardium, so the septum separates the two pools.
//! Epicardial fat lies in patches around the heart.

use std::f32::consts::{PI, TAU};

use super::{coverage, Blob, Rng, Texture};

/// Class indices of the cardiac task.
const LEFT_VENTRICLE: u8 = 1;
const MYOCARDIUM: u8 = 2;
const RIGHT_VENTRICLE: u8 = 3;

/// One random chest slice.
pub(super) struct Chest {
    body: Blob,
    subcutaneous_fat: f32,
    lungs: [Blob; 2],
    liver: Option<Blob>,
    spine: Blob,
    aorta: Blob,
    lv: Blob,
    wall: f32,
    wall_variation: f32,
    wall_phase: f32,
    rv: Blob,
    papillary: [Blob; 2],
    epicardial_fat: f32,
    tissue_texture: Texture,
    fat_texture: Texture,
    /// Signal of blood, myocardium, soft tissue, fat, lung, liver (before acquisition).
    blood: f32,
    muscle: f32,
    tissue: f32,
    fat: f32,
    lung: f32,
    liver_signal: f32,
}

/// Signed distances to the cardiac structures at one point.
struct HeartDepth {
    lv: f32,
    myocardium_outer: f32,
    rv: f32,
}

impl Chest {
    /// Draws a slice from the anatomy distribution (the same for every domain).
    pub(super) fn sample(rng: &mut Rng) -> Chest {
        let body_centre = (0.5 + rng.range(-0.03, 0.03), 0.52 + rng.range(-0.03, 0.03));
        let body =
            Blob::new(body_centre, rng.range(0.40, 0.46), rng.range(0.72, 0.85), rng.range(-0.1, 0.1), 0.03, rng);
        let lungs = [-1.0f32, 1.0].map(|side| {
            let centre = (0.5 + side * rng.range(0.2, 0.26), 0.45 + rng.range(-0.04, 0.04));
            Blob::new(centre, rng.range(0.1, 0.14), rng.range(1.3, 1.6), side * rng.range(0.0, 0.25), 0.08, rng)
        });
        let liver = rng.chance(0.6).then(|| {
            Blob::new(
                (0.3 + rng.range(-0.04, 0.04), 0.74),
                rng.range(0.14, 0.2),
                rng.range(0.5, 0.7),
                rng.range(-0.3, 0.1),
                0.05,
                rng,
            )
        });
        let spine = Blob::new(
            (0.5 + rng.range(-0.02, 0.02), 0.82 + rng.range(-0.02, 0.02)),
            rng.range(0.04, 0.05),
            rng.range(0.8, 1.0),
            0.0,
            0.05,
            rng,
        );
        let aorta = Blob::new(
            (spine.cx + rng.range(0.05, 0.08), spine.cy - rng.range(0.07, 0.1)),
            rng.range(0.022, 0.032),
            1.0,
            0.0,
            0.03,
            rng,
        );
        // The heart: left ventricle, wall, right ventricle beside it on the image's left.
        let lv_centre = (0.53 + rng.range(-0.07, 0.07), 0.48 + rng.range(-0.07, 0.07));
        let lv_radius = rng.range(0.07, 0.12);
        let lv = Blob::new(lv_centre, lv_radius, rng.range(0.85, 1.15), rng.range(0.0, PI), 0.05, rng);
        let wall = rng.range(0.025, 0.05);
        let outer = lv_radius + wall;
        let toward_rv = PI + rng.range(-0.2, 0.6);
        let offset = 0.6 * outer * rng.range(0.85, 1.15);
        let rv_centre = (lv_centre.0 + offset * toward_rv.cos(), lv_centre.1 + offset * toward_rv.sin());
        let along = outer * rng.range(0.8, 1.1);
        let rv = Blob::new(rv_centre, along, outer * rng.range(1.25, 1.6) / along, toward_rv, 0.04, rng);
        let papillary = [0.8f32, -0.8].map(|turn| {
            let a = toward_rv + PI + turn + rng.range(-0.3, 0.3);
            let d = 0.72 * lv_radius;
            Blob::new(
                (lv_centre.0 + d * a.cos(), lv_centre.1 + d * a.sin()),
                rng.range(0.1, 0.18) * lv_radius,
                rng.range(0.7, 1.0),
                a,
                0.05,
                rng,
            )
        });
        Chest {
            body,
            subcutaneous_fat: rng.range(0.015, 0.04),
            lungs,
            liver,
            spine,
            aorta,
            lv,
            wall,
            wall_variation: rng.range(0.0, 0.35),
            wall_phase: rng.range(0.0, TAU),
            rv,
            papillary,
            epicardial_fat: rng.range(0.008, 0.02),
            tissue_texture: Texture::new(rng, 6, 3),
            fat_texture: Texture::new(rng, 4, 2),
            blood: rng.range(0.8, 0.92),
            muscle: rng.range(0.22, 0.32),
            tissue: rng.range(0.3, 0.4),
            fat: rng.range(0.65, 0.8),
            lung: rng.range(0.03, 0.08),
            liver_signal: rng.range(0.4, 0.5),
        }
    }

    fn heart(&self, x: f32, y: f32) -> HeartDepth {
        let (dx, dy) = (x - self.lv.cx, y - self.lv.cy);
        let rho = (dx * dx + dy * dy).sqrt();
        let phi = dy.atan2(dx);
        let r = self.lv.radius_at(phi);
        let wall = self.wall * (1.0 + self.wall_variation * (phi - self.wall_phase).cos());
        HeartDepth { lv: r - rho, myocardium_outer: r + wall - rho, rv: self.rv.depth(x, y) }
    }

    /// The mask at `size` × `size`: labels at pixel centres.
    pub(super) fn labels(&self, size: usize) -> Vec<u8> {
        let pixel = 1.0 / size as f32;
        let mut labels = Vec::with_capacity(size * size);
        for py in 0..size {
            for px in 0..size {
                let h = self.heart((px as f32 + 0.5) * pixel, (py as f32 + 0.5) * pixel);
                labels.push(if h.lv > 0.0 {
                    LEFT_VENTRICLE
                } else if h.myocardium_outer > 0.0 {
                    MYOCARDIUM
                } else if h.rv > 0.0 {
                    RIGHT_VENTRICLE
                } else {
                    0
                });
            }
        }
        labels
    }

    /// The clean signal at `size` × `size` (one channel), edges anti-aliased over one pixel.
    pub(super) fn render(&self, size: usize) -> Vec<f32> {
        let pixel = 1.0 / size as f32;
        let mut out = Vec::with_capacity(size * size);
        for py in 0..size {
            for px in 0..size {
                let (x, y) = ((px as f32 + 0.5) * pixel, (py as f32 + 0.5) * pixel);
                let texture = self.tissue_texture.at(x, y);
                let blend = |v: &mut f32, target: f32, alpha: f32| *v += (target - *v) * alpha;
                let mut v = 0.0f32; // air
                let body_depth = self.body.depth(x, y);
                let in_body = coverage(body_depth, pixel);
                blend(&mut v, self.tissue * (1.0 + 0.25 * texture), in_body);
                // Subcutaneous fat: a band inside the body outline.
                let fat_band = self.subcutaneous_fat * (1.0 + 0.5 * self.fat_texture.at(x, y));
                blend(&mut v, self.fat, in_body * coverage(fat_band - body_depth, pixel));
                if let Some(liver) = &self.liver {
                    blend(
                        &mut v,
                        self.liver_signal * (1.0 + 0.1 * texture),
                        in_body * coverage(liver.depth(x, y), pixel),
                    );
                }
                for lung in &self.lungs {
                    blend(&mut v, self.lung * (1.0 + 0.5 * texture), in_body * coverage(lung.depth(x, y), pixel));
                }
                blend(&mut v, self.tissue * 0.8, coverage(self.spine.depth(x, y), pixel));
                blend(&mut v, self.blood * 0.95, coverage(self.aorta.depth(x, y), pixel));
                let h = self.heart(x, y);
                // Epicardial fat in patches just outside the heart.
                let outside_heart = -h.myocardium_outer.max(h.rv);
                let patches = (self.fat_texture.at(y, x) + 0.3).clamp(0.0, 1.0);
                blend(
                    &mut v,
                    self.fat,
                    patches * coverage(outside_heart, pixel) * coverage(self.epicardial_fat - outside_heart, pixel),
                );
                let blood = self.blood * (1.0 + 0.05 * texture);
                blend(&mut v, self.muscle * (1.0 + 0.08 * texture), coverage(h.myocardium_outer, pixel));
                blend(&mut v, blood * 0.95, coverage(h.rv, pixel) * (1.0 - coverage(h.myocardium_outer, pixel)));
                blend(&mut v, blood, coverage(h.lv, pixel));
                for p in &self.papillary {
                    blend(&mut v, self.muscle * 1.1, coverage(p.depth(x, y), pixel) * coverage(h.lv, pixel));
                }
                out.push(v);
            }
        }
        out
    }
}
