//! Shared test helper: runs a kernel's forward and backward on the GPU and compares them with a
//! plain CPU reference (f64 accumulation) at docs/DESIGN.md's tolerances, and checks every backward
//! against central finite differences of the reference forward.
//!
//! One [`Case`] describes a kernel at one shape: its inputs, a CPU reference forward, the GPU
//! forward, and optionally the GPU backward and the CPU reference backward. [`check`] runs it.
#![allow(dead_code)]

use std::sync::OnceLock;

use vlsa_kernels::reduce::RowSchedule;
use vlsa_kernels::{Gpu, GpuBuffer, Result};

/// Forward tolerances (docs/DESIGN.md numerics contract).
pub const FWD_RTOL: f64 = 1e-4;
pub const FWD_ATOL: f64 = 1e-5;
/// Gradient tolerances.
pub const GRAD_RTOL: f64 = 1e-3;
pub const GRAD_ATOL: f64 = 1e-4;

/// One GPU shared by the tests of a test binary (opening a device costs ~0.1 s on lavapipe).
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| Gpu::new().unwrap_or_else(|e| panic!("tests need a GPU adapter: {e}")))
}

/// The tests' seeded random values: vlsa's own generator (xorshift64*).
pub use vlsa::random::Rng;

/// What an input holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// f32 data; differentiable.
    Float,
    /// Integer indices, uploaded as u32; not differentiated.
    Index,
}

/// One input of a kernel under test.
#[derive(Clone, Debug)]
pub struct Input {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub kind: Kind,
}

impl Input {
    /// Random f32 input in [-1, 1).
    pub fn random(rng: &mut Rng, shape: &[usize]) -> Input {
        Input { shape: shape.to_vec(), data: rng.vec(shape.iter().product()), kind: Kind::Float }
    }
    /// f32 input with given data.
    pub fn float(shape: &[usize], data: Vec<f32>) -> Input {
        assert_eq!(data.len(), shape.iter().product::<usize>());
        Input { shape: shape.to_vec(), data, kind: Kind::Float }
    }
    /// Index input (values are integers stored as f32 here, uploaded as u32).
    pub fn index(shape: &[usize], data: Vec<usize>) -> Input {
        Input { shape: shape.to_vec(), data: data.into_iter().map(|v| v as f32).collect(), kind: Kind::Index }
    }
}

pub type RefForward<'a> = dyn Fn(&[Vec<f64>]) -> Vec<f64> + 'a;
pub type RefBackward<'a> = dyn Fn(&[Vec<f64>], &[f64]) -> Vec<Option<Vec<f64>>> + 'a;
pub type GpuForward<'a> = dyn Fn(&Gpu, &[GpuBuffer]) -> Result<GpuBuffer> + 'a;
pub type GpuBackward<'a> = dyn Fn(&Gpu, &[GpuBuffer], &GpuBuffer) -> Result<Vec<Option<GpuBuffer>>> + 'a;

/// A kernel at one shape.
pub struct Case<'a> {
    /// Name for failure messages, e.g. "softmax [7,33]".
    pub name: String,
    pub inputs: Vec<Input>,
    /// CPU reference forward (f64).
    pub reference: Box<RefForward<'a>>,
    /// GPU forward: returns the output buffer.
    pub forward: Box<GpuForward<'a>>,
    /// GPU backward: given the inputs and dL/d(output), returns dL/d(input) per input (None for
    /// inputs without a gradient).
    pub backward: Option<Box<GpuBackward<'a>>>,
    /// CPU reference backward, same convention.
    pub reference_backward: Option<Box<RefBackward<'a>>>,
    /// Forward tolerances (rtol, atol); docs/DESIGN.md's by default.
    pub fwd_tol: (f64, f64),
    /// Gradient tolerances (rtol, atol).
    pub grad_tol: (f64, f64),
    /// Coordinates per input probed by finite differences.
    pub fd_probes: usize,
    /// Finite-difference step (on the f64 reference).
    pub fd_step: f64,
}

impl<'a> Case<'a> {
    pub fn new(
        name: impl Into<String>,
        inputs: Vec<Input>,
        reference: impl Fn(&[Vec<f64>]) -> Vec<f64> + 'a,
        forward: impl Fn(&Gpu, &[GpuBuffer]) -> Result<GpuBuffer> + 'a,
    ) -> Self {
        Case {
            name: name.into(),
            inputs,
            reference: Box::new(reference),
            forward: Box::new(forward),
            backward: None,
            reference_backward: None,
            fwd_tol: (FWD_RTOL, FWD_ATOL),
            grad_tol: (GRAD_RTOL, GRAD_ATOL),
            fd_probes: 24,
            fd_step: 1e-4,
        }
    }

    /// Adds the GPU backward and its CPU reference.
    pub fn backward(
        mut self,
        gpu_backward: impl Fn(&Gpu, &[GpuBuffer], &GpuBuffer) -> Result<Vec<Option<GpuBuffer>>> + 'a,
        reference_backward: impl Fn(&[Vec<f64>], &[f64]) -> Vec<Option<Vec<f64>>> + 'a,
    ) -> Self {
        self.backward = Some(Box::new(gpu_backward));
        self.reference_backward = Some(Box::new(reference_backward));
        self
    }

    pub fn fwd_tol(mut self, rtol: f64, atol: f64) -> Self {
        self.fwd_tol = (rtol, atol);
        self
    }

    pub fn grad_tol(mut self, rtol: f64, atol: f64) -> Self {
        self.grad_tol = (rtol, atol);
        self
    }
}

/// Asserts |got - want| <= atol + rtol * |want| elementwise, reporting the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length {} vs reference {}", got.len(), want.len());
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        let excess = err - (atol + rtol * w.abs());
        if (excess > 0.0 || excess.is_nan()) && worst.is_none_or(|(_, e)| excess > e || e.is_nan()) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, _)) = worst {
        panic!(
            "{what}: element {i} is {} but the reference is {} (rtol {rtol}, atol {atol}); {} elements",
            got[i],
            want[i],
            got.len()
        );
    }
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Uploads inputs (indices as u32).
pub fn upload(gpu: &Gpu, inputs: &[Input]) -> Vec<GpuBuffer> {
    inputs
        .iter()
        .map(|i| match i.kind {
            Kind::Float => gpu.upload(&i.data).unwrap(),
            Kind::Index => gpu.upload(&i.data.iter().map(|&v| v as u32).collect::<Vec<u32>>()).unwrap(),
        })
        .collect()
}

/// Runs a case: forward vs reference, backward vs reference, backward vs finite differences.
pub fn check(case: Case<'_>) {
    let gpu = gpu();
    let name = &case.name;
    let bufs = upload(gpu, &case.inputs);
    let host: Vec<Vec<f64>> = case.inputs.iter().map(|i| to_f64(&i.data)).collect();

    let out = (case.forward)(gpu, &bufs).unwrap_or_else(|e| panic!("{name}: forward failed: {e}"));
    let got = gpu.download(&out).unwrap();
    let want = (case.reference)(&host);
    let got = &got[..want.len().min(got.len())];
    assert_close(&format!("{name} forward"), got, &want, case.fwd_tol.0, case.fwd_tol.1);

    let (Some(backward), Some(reference_backward)) = (&case.backward, &case.reference_backward) else { return };
    let mut rng = Rng::new(0xD1CE ^ name.len() as u64);
    let dy: Vec<f32> = rng.vec(want.len());
    let dy_buf = gpu.upload(&dy).unwrap();
    let grads = backward(gpu, &bufs, &dy_buf).unwrap_or_else(|e| panic!("{name}: backward failed: {e}"));
    let dy64 = to_f64(&dy);
    let ref_grads = reference_backward(&host, &dy64);
    assert_eq!(grads.len(), case.inputs.len(), "{name}: one gradient slot per input");
    for (k, (g, r)) in grads.iter().zip(&ref_grads).enumerate() {
        let (Some(g), Some(r)) = (g, r) else {
            assert!(g.is_none() && r.is_none(), "{name}: input {k} has a gradient on one side only");
            continue;
        };
        let g = gpu.download(g).unwrap();
        let g = &g[..r.len()];
        assert_close(&format!("{name} gradient of input {k}"), g, r, case.grad_tol.0, case.grad_tol.1);

        // Central differences of L = sum(dy * f(x)) on the f64 reference at sampled coordinates.
        if case.inputs[k].kind != Kind::Float || case.fd_probes == 0 {
            continue;
        }
        let n = host[k].len();
        let probes: Vec<usize> =
            if n <= case.fd_probes { (0..n).collect() } else { (0..case.fd_probes).map(|_| rng.below(n)).collect() };
        let loss = |x: &[Vec<f64>]| -> f64 { (case.reference)(x).iter().zip(&dy64).map(|(a, b)| a * b).sum() };
        for &i in &probes {
            let h = case.fd_step;
            let mut xp = host.clone();
            xp[k][i] += h;
            let mut xm = host.clone();
            xm[k][i] -= h;
            let fd = (loss(&xp) - loss(&xm)) / (2.0 * h);
            let err = (g[i] as f64 - fd).abs();
            assert!(
                err <= case.grad_tol.1 + case.grad_tol.0 * fd.abs(),
                "{name}: gradient of input {k} at {i} is {} but finite differences give {fd}",
                g[i]
            );
        }
    }
}

/// A data set of `count` noisy dark images of `size` with one bright square each (class 1).
pub fn squares(dir: &std::path::Path, count: usize, size: usize, seed: u64) -> vlsa::data::Dataset {
    let mut rng = Rng::new(seed);
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("masks")).unwrap();
    for i in 0..count {
        let side = size / 4 + rng.below(size / 3);
        let (x0, y0) = (rng.below(size - side), rng.below(size - side));
        let mut rgb = Vec::with_capacity(size * size * 3);
        let mut labels = Vec::with_capacity(size * size);
        for y in 0..size {
            for x in 0..size {
                let inside = (x0..x0 + side).contains(&x) && (y0..y0 + side).contains(&y);
                let base = if inside { 0.8 } else { 0.2 };
                for _ in 0..3 {
                    rgb.push((base + rng.range(-0.1, 0.1)).clamp(0.0, 1.0));
                }
                labels.push(inside as u8);
            }
        }
        vlsa::image_io::Image { width: size, height: size, rgb }
            .save_png(&dir.join(format!("images/{i:03}.png")))
            .unwrap();
        vlsa::image_io::Mask { width: size, height: size, labels }
            .save_png(&dir.join(format!("masks/{i:03}.png")))
            .unwrap();
    }
    vlsa::data::Dataset::load(dir, 2).unwrap()
}

/// Both schedules of the row kernels (softmax, layer_norm, l2norm): one invocation per row, one
/// workgroup per row.
pub const SCHEDULES: [RowSchedule; 2] = [RowSchedule::Invocation, RowSchedule::Workgroup];

/// Row shapes every row kernel is checked at: sizes 1, 7, 33, 130 and several row counts.
pub const ROW_SHAPES: &[(usize, usize)] = &[(1, 1), (1, 7), (7, 33), (33, 7), (3, 130), (130, 33), (2, 300)];

/// A zero-filled buffer made by an upload rather than `Gpu::zeros`: a pooled buffer cleared by
/// `zeros` and dropped before the clear is submitted can be handed to a later upload whose data
/// the pending clear then wipes (`Gpu::write` flushes only when dispatches are pending).
pub fn zeros(gpu: &Gpu, n: usize) -> Result<GpuBuffer> {
    gpu.upload(&vec![0.0f32; n])
}
