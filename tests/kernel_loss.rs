//! Cross-entropy, Dice and argmax over class logits (shaders/include/loss_core.wgsl) against f64
//! CPU references, with gradients; the texture module against the storage one.

mod common;

use common::{check, zeros, Case, Input, Rng};
use vlsa_kernels::loss::{self, LossShape};
use vlsa_kernels::GpuBuffer;

#[derive(Clone, Copy, Debug)]
struct Seg {
    batch: usize,
    classes: usize,
    pixels: usize,
}

impl Seg {
    fn shape(&self) -> LossShape {
        LossShape { batch: self.batch, classes: self.classes, pixels: self.pixels }
    }
    fn n(&self) -> usize {
        self.batch * self.pixels
    }
    fn at(&self, i: usize, k: usize) -> usize {
        (i / self.pixels * self.classes + k) * self.pixels + i % self.pixels
    }
    fn softmax(&self, z: &[f64], i: usize) -> Vec<f64> {
        let m = (0..self.classes).map(|k| z[self.at(i, k)]).fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = (0..self.classes).map(|k| (z[self.at(i, k)] - m).exp()).collect();
        let s: f64 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    }
}

fn ref_cross_entropy(s: Seg, z: &[f64], t: &[f64]) -> f64 {
    let mut total = 0.0;
    for (i, &target) in t.iter().enumerate().take(s.n()) {
        let k = target as usize;
        if k < s.classes {
            total -= s.softmax(z, i)[k].ln();
        }
    }
    total / s.n() as f64
}

fn ref_cross_entropy_backward(s: Seg, z: &[f64], t: &[f64], g: f64) -> Vec<f64> {
    let mut dz = vec![0.0; z.len()];
    for i in 0..s.n() {
        let tk = t[i] as usize;
        if tk >= s.classes {
            continue;
        }
        let p = s.softmax(z, i);
        for k in 0..s.classes {
            dz[s.at(i, k)] = g / s.n() as f64 * (p[k] - (k == tk) as u8 as f64);
        }
    }
    dz
}

/// Per foreground class: (sum p, sum y, sum p y).
fn ref_dice_stats(s: Seg, z: &[f64], t: &[f64]) -> Vec<(f64, f64, f64)> {
    let mut st = vec![(0.0, 0.0, 0.0); s.classes.saturating_sub(1)];
    for (i, &target) in t.iter().enumerate().take(s.n()) {
        let p = s.softmax(z, i);
        for k in 1..s.classes {
            let y = (target as usize == k) as u8 as f64;
            st[k - 1].0 += p[k];
            st[k - 1].1 += y;
            st[k - 1].2 += p[k] * y;
        }
    }
    st
}

fn ref_dice(s: Seg, z: &[f64], t: &[f64]) -> f64 {
    let st = ref_dice_stats(s, z, t);
    if st.is_empty() {
        return 0.0;
    }
    1.0 - st.iter().map(|&(p, y, i)| (2.0 * i + 1.0) / (p + y + 1.0)).sum::<f64>() / st.len() as f64
}

fn ref_dice_backward(s: Seg, z: &[f64], t: &[f64], g: f64) -> Vec<f64> {
    let st = ref_dice_stats(s, z, t);
    let mut dz = vec![0.0; z.len()];
    if st.is_empty() {
        return dz;
    }
    let f = st.len() as f64;
    for i in 0..s.n() {
        let p = s.softmax(z, i);
        let dp: Vec<f64> = (0..s.classes)
            .map(|k| {
                if k == 0 {
                    return 0.0;
                }
                let (sp, sy, spy) = st[k - 1];
                let den = sp + sy + 1.0;
                let y = (t[i] as usize == k) as u8 as f64;
                -(2.0 * y * den - (2.0 * spy + 1.0)) / (den * den) / f
            })
            .collect();
        let dot: f64 = (0..s.classes).map(|k| p[k] * dp[k]).sum();
        for k in 0..s.classes {
            dz[s.at(i, k)] = g * p[k] * (dp[k] - dot);
        }
    }
    dz
}

fn seg_inputs(rng: &mut Rng, s: Seg, out_of_range: bool) -> Vec<Input> {
    let mut z = Input::random(rng, &[s.batch, s.classes, s.pixels]);
    z.data.iter_mut().for_each(|v| *v *= 3.0);
    let t: Vec<usize> = (0..s.n())
        .map(|i| {
            if out_of_range && i % 5 == 2 {
                [s.classes, 1000, u32::MAX as usize][i % 3]
            } else {
                rng.below(s.classes)
            }
        })
        .collect();
    vec![z, Input::index(&[s.batch, s.pixels], t)]
}

const SEG_SHAPES: [Seg; 6] = [
    Seg { batch: 1, classes: 1, pixels: 1 },
    Seg { batch: 2, classes: 3, pixels: 49 },
    Seg { batch: 1, classes: 2, pixels: 33 * 33 },
    Seg { batch: 2, classes: 3, pixels: 130 * 7 },
    Seg { batch: 1, classes: 16, pixels: 7 },
    Seg { batch: 3, classes: 3, pixels: 128 * 128 },
];

#[test]
fn cross_entropy_matches_reference_with_gradients() {
    let mut rng = Rng::new(14);
    for (j, s) in SEG_SHAPES.into_iter().enumerate() {
        let out_of_range = j % 2 == 1;
        check(
            Case::new(
                format!("cross_entropy {s:?} out_of_range={out_of_range}"),
                seg_inputs(&mut rng, s, out_of_range),
                move |x| vec![ref_cross_entropy(s, &x[0], &x[1])],
                move |gpu, x| {
                    let out = gpu.alloc(1)?;
                    loss::cross_entropy(gpu, &x[0], &x[1], &out, &s.shape())?;
                    Ok(out)
                },
            )
            .backward(
                move |gpu, x, dy| {
                    let dz = gpu.alloc(x[0].len())?;
                    loss::cross_entropy_backward(gpu, &x[0], &x[1], dy, &dz, &s.shape())?;
                    Ok(vec![Some(dz), None])
                },
                move |x, dy| vec![Some(ref_cross_entropy_backward(s, &x[0], &x[1], dy[0])), None],
            )
            // Gradients are O(1 / pixels): an absolute floor of 1e-4 would accept anything.
            .grad_tol(1e-3, 1e-8),
        );
    }
}

#[test]
fn dice_matches_reference_with_gradients() {
    let mut rng = Rng::new(15);
    for (j, s) in SEG_SHAPES.into_iter().enumerate() {
        let out_of_range = j % 2 == 0;
        let dice_on_gpu =
            move |gpu: &vlsa_kernels::Gpu, x: &[GpuBuffer]| -> vlsa_kernels::Result<(GpuBuffer, GpuBuffer)> {
                let stats = gpu.alloc(loss::dice_stats_len(s.classes).max(1))?;
                let out = gpu.alloc(1)?;
                loss::dice(gpu, &x[0], &x[1], &stats, &out, &s.shape())?;
                Ok((stats, out))
            };
        check(
            Case::new(
                format!("dice {s:?} out_of_range={out_of_range}"),
                seg_inputs(&mut rng, s, out_of_range),
                move |x| vec![ref_dice(s, &x[0], &x[1])],
                move |gpu, x| Ok(dice_on_gpu(gpu, x)?.1),
            )
            .backward(
                move |gpu, x, dy| {
                    let (stats, _) = dice_on_gpu(gpu, x)?;
                    let dz = gpu.alloc(x[0].len())?;
                    loss::dice_backward(gpu, &x[0], &x[1], &stats, dy, &dz, &s.shape())?;
                    Ok(vec![Some(dz), None])
                },
                move |x, dy| vec![Some(ref_dice_backward(s, &x[0], &x[1], dy[0])), None],
            )
            .grad_tol(1e-3, 1e-8),
        );
    }
}

#[test]
fn single_class_dice_is_zero_and_losses_are_deterministic() {
    let gpu = common::gpu();
    let s = Seg { batch: 2, classes: 1, pixels: 33 };
    let z = gpu.upload(&Rng::new(3).vec(s.n())).unwrap();
    let t = gpu.upload(&vec![0u32; s.n()]).unwrap();
    let stats = gpu.alloc(1).unwrap();
    let out = gpu.upload(&[7.0f32]).unwrap();
    loss::dice(gpu, &z, &t, &stats, &out, &s.shape()).unwrap();
    assert_eq!(gpu.download(&out).unwrap(), vec![0.0]);

    let s = Seg { batch: 3, classes: 3, pixels: 128 * 128 };
    let mut rng = Rng::new(4);
    let z = gpu.upload(&rng.vec(s.n() * s.classes)).unwrap();
    let t = gpu.upload(&(0..s.n()).map(|_| rng.below(3) as u32).collect::<Vec<_>>()).unwrap();
    let stats = gpu.alloc(6).unwrap();
    let runs: Vec<(u32, u32)> = (0..2)
        .map(|_| {
            let (ce, dice) = (gpu.alloc(1).unwrap(), gpu.alloc(1).unwrap());
            loss::cross_entropy(gpu, &z, &t, &ce, &s.shape()).unwrap();
            loss::dice(gpu, &z, &t, &stats, &dice, &s.shape()).unwrap();
            (gpu.download(&ce).unwrap()[0].to_bits(), gpu.download(&dice).unwrap()[0].to_bits())
        })
        .collect();
    assert_eq!(runs[0], runs[1]);
}

#[test]
fn argmax_picks_the_first_largest_class() {
    let gpu = common::gpu();
    let mut rng = Rng::new(16);
    for s in [
        Seg { batch: 1, classes: 1, pixels: 7 },
        Seg { batch: 2, classes: 3, pixels: 33 * 33 },
        Seg { batch: 3, classes: 16, pixels: 130 },
    ] {
        // Few distinct values, so ties are common.
        let z: Vec<f32> = (0..s.n() * s.classes).map(|_| rng.below(4) as f32).collect();
        let labels = gpu.alloc(s.n()).unwrap();
        loss::argmax(gpu, &gpu.upload(&z).unwrap(), &labels, &s.shape()).unwrap();
        let got: Vec<u32> = gpu.download_pod(&labels).unwrap();
        for i in 0..s.n() {
            let mut best = 0;
            for k in 1..s.classes {
                if z[s.at(i, k)] > z[s.at(i, best)] {
                    best = k;
                }
            }
            assert_eq!(got[i] as usize, best, "argmax {s:?} at pixel {i}");
        }
    }
}

#[test]
fn texture_operands_give_the_storage_kernels_results_bit_for_bit() {
    // Where texture operands are on (lavapipe's default), every loss kernel and argmax fetches
    // the logits from a flat texture, and dice_backward the statistics too (3 (K - 1) of them,
    // copied rounded up to whole texels): the same values in the same order as the storage
    // loads, so every output equals the storage module's bit for bit (the reference checks
    // above run whichever is the default). A context of its own, so that switching textures
    // off changes no other test.
    let gpu = vlsa_kernels::Gpu::new().unwrap();
    let mut rng = Rng::new(17);
    for s in [
        Seg { batch: 2, classes: 3, pixels: 130 * 7 },
        Seg { batch: 1, classes: 16, pixels: 7 },
        Seg { batch: 2, classes: 3, pixels: 128 * 128 },
    ] {
        let z: Vec<f32> = rng.vec(s.n() * s.classes).iter().map(|v| v * 3.0).collect();
        let t: Vec<u32> =
            (0..s.n()).map(|i| if i % 7 == 3 { s.classes as u32 } else { rng.below(s.classes) as u32 }).collect();
        let (zb, tb, g) = (gpu.upload(&z).unwrap(), gpu.upload(&t).unwrap(), gpu.upload(&[0.75f32]).unwrap());
        let mut runs = Vec::new();
        for textures in [true, false] {
            gpu.set_texture_operands(textures);
            gpu.set_profiling(true).unwrap();
            let shape = s.shape();
            let (ce, dice) = (gpu.alloc(1).unwrap(), gpu.alloc(1).unwrap());
            // Statistics in a buffer of 3 (K - 1) and in a larger one.
            let stats = gpu.alloc(loss::dice_stats_len(s.classes)).unwrap();
            let wide = gpu.alloc(loss::dice_stats_len(s.classes) + 5).unwrap();
            loss::cross_entropy(&gpu, &zb, &tb, &ce, &shape).unwrap();
            loss::dice(&gpu, &zb, &tb, &stats, &dice, &shape).unwrap();
            loss::dice(&gpu, &zb, &tb, &wide, &dice, &shape).unwrap();
            let (dce, ddice, dwide) =
                (gpu.alloc(z.len()).unwrap(), gpu.alloc(z.len()).unwrap(), gpu.alloc(z.len()).unwrap());
            loss::cross_entropy_backward(&gpu, &zb, &tb, &g, &dce, &shape).unwrap();
            loss::dice_backward(&gpu, &zb, &tb, &stats, &g, &ddice, &shape).unwrap();
            loss::dice_backward(&gpu, &zb, &tb, &wide, &g, &dwide, &shape).unwrap();
            let labels = gpu.alloc(s.n()).unwrap();
            loss::argmax(&gpu, &zb, &labels, &shape).unwrap();
            let profile = gpu.take_profile().unwrap().expect("profiling is on");
            gpu.set_profiling(false).unwrap();
            let copies =
                profile.records.iter().filter(|r| r.label.kernel == vlsa_kernels::OperandTexture::COPY_KERNEL).count();
            // The logits once (every later launch finds them in their texture), each statistics
            // buffer once.
            let want = if textures && gpu.texture_operands() { 3 } else { 0 };
            assert_eq!(copies, want, "{s:?}, textures {textures}: texture copies");
            let mut got: Vec<Vec<f32>> =
                [&ce, &dice, &stats, &dce, &ddice, &dwide].iter().map(|b| gpu.download(b).unwrap()).collect();
            got.push(gpu.download_pod::<u32>(&labels).unwrap().iter().map(|&l| l as f32).collect());
            runs.push(got);
        }
        assert_eq!(runs[0], runs[1], "{s:?}: textures and storage differ");
        assert_eq!(runs[0][4], runs[0][5], "{s:?}: statistics in the larger buffer differ");
        let (zd, td): (Vec<f64>, Vec<f64>) =
            (z.iter().map(|&v| v as f64).collect(), t.iter().map(|&v| v as f64).collect());
        common::assert_close(
            &format!("{s:?} dice backward"),
            &runs[0][4],
            &ref_dice_backward(s, &zd, &td, 0.75),
            1e-3,
            1e-8,
        );
    }
}

#[test]
fn losses_reject_bad_shapes() {
    let gpu = common::gpu();
    let z = zeros(gpu, 3 * 16).unwrap();
    let t = zeros(gpu, 10).unwrap();
    let one = zeros(gpu, 1).unwrap();
    let shape = |classes| LossShape { batch: 1, classes, pixels: 16 };
    let err = loss::cross_entropy(gpu, &z, &t, &one, &shape(3)).unwrap_err().to_string();
    assert!(err.contains("[1, 3, 16]") && err.contains("[1, 16]") && err.contains("10 elements"), "{err}");
    let err = loss::dice(gpu, &z, &z, &one, &one, &shape(3)).unwrap_err().to_string();
    assert!(err.contains("[2, 3]") && err.contains("1 elements"), "{err}");
    let err = loss::argmax(gpu, &t, &t, &shape(3)).unwrap_err().to_string();
    assert!(err.contains("[1, 3, 16]"), "{err}");
    assert!(loss::cross_entropy(gpu, &z, &t, &one, &shape(0)).unwrap_err().to_string().contains("[1, 0, 16]"));
}
