//! Tensors and autograd: backward rules wired through real graphs, checked against finite
//! differences of the same GPU forward; accumulation, no_grad, detach; errors; and a flat buffer
//! pool over 100 training steps of a small MLP.
//!
//! The kernels' own gradients are checked tightly (f64 references) in the kernel_* tests; here
//! the question is whether the graph plumbing (broadcast reductions, transposes, reshapes,
//! accumulation) is right, so f32 finite differences with a loose tolerance suffice: a wiring
//! mistake gives errors of order one.

mod common;

use common::Rng;
use vlsa::kernels::l2norm::L2Mode;
use vlsa::{backward, no_grad, Tensor};

type Graph<'a> = dyn Fn(&[Tensor]) -> vlsa::kernels::Result<Tensor> + 'a;

/// Checks autograd gradients of every parameter against central differences of `f` (which must
/// return a scalar) at up to `probes` coordinates per parameter.
fn check_graph(name: &str, shapes: &[&[usize]], f: &Graph<'_>, seed: u64) {
    let gpu = common::gpu();
    let mut rng = Rng::new(seed);
    let data: Vec<Vec<f32>> = shapes.iter().map(|s| rng.vec(s.iter().product())).collect();
    let params: Vec<Tensor> = data.iter().zip(shapes).map(|(d, s)| Tensor::param(gpu, d, s).unwrap()).collect();
    let loss = f(&params).unwrap();
    assert_eq!(loss.numel(), 1, "{name}: loss must be a scalar");
    backward(&loss).unwrap();
    let eval = |k: usize, i: usize, delta: f32| -> f64 {
        let mut d = data[k].clone();
        d[i] += delta;
        let ps: Vec<Tensor> = data
            .iter()
            .zip(shapes)
            .enumerate()
            .map(|(j, (dj, s))| Tensor::from_vec(gpu, if j == k { &d } else { dj }, s).unwrap())
            .collect();
        f(&ps).unwrap().to_vec().unwrap()[0] as f64
    };
    for (k, p) in params.iter().enumerate() {
        let g = p.grad().unwrap_or_else(|| panic!("{name}: parameter {k} got no gradient")).to_vec().unwrap();
        assert_eq!(g.len(), data[k].len());
        for _ in 0..6 {
            let i = rng.below(g.len());
            let h = 1e-2f32;
            let fd = (eval(k, i, h) - eval(k, i, -h)) / (2.0 * h as f64);
            let err = (g[i] as f64 - fd).abs();
            assert!(
                err <= 2e-2 + 2e-2 * fd.abs(),
                "{name}: d/dparam{k}[{i}] autograd {} vs finite differences {fd}",
                g[i]
            );
        }
    }
}

#[test]
fn broadcast_binary_ops_reduce_gradients_to_each_shape() {
    check_graph(
        "add/mul/sub/div",
        &[&[3, 4, 5], &[4, 1], &[5]],
        &|p| {
            let b = p[1].affine(0.1, 2.0)?; // keep the divisor away from zero
            p[0].add(&p[1])?.mul(&p[2])?.sub(&p[0])?.div(&b)?.mean()
        },
        1,
    );
}

#[test]
fn linear_matmul_and_activations() {
    check_graph(
        "mlp",
        &[&[2, 7, 6], &[5, 6], &[5], &[3, 5], &[3]],
        &|p| {
            let h = p[0].linear(&p[1], Some(&p[2]))?.gelu()?;
            let y = h.linear(&p[3], Some(&p[4]))?.quick_gelu()?.relu()?;
            y.mul(&y)?.sum()
        },
        2,
    );
    check_graph(
        "batched matmul with shared right side, transposed",
        &[&[3, 4, 5], &[6, 5], &[3, 5, 4]],
        &|p| {
            let a = p[0].matmul_t(&p[1])?; // [3,4,6]
            let b = p[2].matmul_with(&p[0], true, true)?; // [3,4,5]^T-ish: p2^T [3,4,5] x p0^T [3,5,4] -> [3,4,4]
            a.sum()?.add(&b.mul(&b)?.sum()?)
        },
        3,
    );
}

#[test]
fn fused_linear_epilogues_and_folded_gradients() {
    // A pre-norm block as the model builds it: x feeds a norm and the residual stream (the norm's
    // backward adds the stream's gradient), the normed h feeds three projections (their matmul
    // backwards accumulate into one gradient), bias+activation and bias+residual are fused.
    use vlsa::kernels::elementwise::UnaryOp;
    let block = |p: &[Tensor]| -> vlsa::kernels::Result<Tensor> {
        let x = &p[0];
        let h = x.layer_norm(&p[1], &p[2], 1e-5)?;
        let (q, k, v) = (h.linear(&p[3], Some(&p[4]))?, h.linear(&p[3], None)?, h.linear(&p[5], Some(&p[4]))?);
        let a = q.mul(&k)?.add(&v)?;
        let x = a.linear_residual(&p[3], &p[4], x)?;
        let h = x.layer_norm(&p[1], &p[2], 1e-5)?.linear_act(&p[6], &p[7], UnaryOp::QuickGelu)?;
        let x = h.linear_residual(&p[8], &p[4], &x)?;
        x.mul(&x)?.sum()
    };
    check_graph(
        "fused pre-norm block",
        &[&[2, 5, 6], &[6], &[6], &[6, 6], &[6], &[6, 6], &[9, 6], &[9], &[6, 9]],
        &block,
        5,
    );
    // The fused ops give what their composites give, forward and gradients.
    let gpu = common::gpu();
    let mut rng = Rng::new(6);
    let shapes: [&[usize]; 4] = [&[3, 4, 6], &[7, 6], &[7], &[3, 4, 7]];
    let data: Vec<Vec<f32>> = shapes.iter().map(|s| rng.vec(s.iter().product())).collect();
    let run = |fused: bool| -> Vec<Vec<f32>> {
        let p: Vec<Tensor> = data.iter().zip(shapes).map(|(d, s)| Tensor::param(gpu, d, s).unwrap()).collect();
        let linear = || p[0].linear(&p[1], Some(&p[2])).unwrap();
        let (y, z) = if fused {
            (p[0].linear_act(&p[1], &p[2], UnaryOp::Gelu).unwrap(), p[0].linear_residual(&p[1], &p[2], &p[3]).unwrap())
        } else {
            (linear().gelu().unwrap(), p[3].add(&linear()).unwrap())
        };
        let loss = y.mul(&z).unwrap().sum().unwrap();
        backward(&loss).unwrap();
        std::iter::once(loss.to_vec().unwrap()).chain(p.iter().map(|t| t.grad().unwrap().to_vec().unwrap())).collect()
    };
    let (fused, composite) = (run(true), run(false));
    for (k, (a, b)) in fused.iter().zip(&composite).enumerate() {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-5 + 1e-4 * y.abs(), "fused vs composite, item {k}[{i}]: {x} vs {y}");
        }
    }
    // Without recording, linear_act stores only the activation (matmul_act_only): the same
    // values as the recorded op, and a plain tensor.
    let p: Vec<Tensor> = data.iter().zip(shapes).map(|(d, s)| Tensor::param(gpu, d, s).unwrap()).collect();
    let recorded = p[0].linear_act(&p[1], &p[2], UnaryOp::QuickGelu).unwrap();
    let inference = no_grad(|| p[0].linear_act(&p[1], &p[2], UnaryOp::QuickGelu)).unwrap();
    assert!(recorded.requires_grad() && !inference.requires_grad());
    assert_eq!(inference.shape(), recorded.shape());
    assert_eq!(inference.to_vec().unwrap(), recorded.to_vec().unwrap());
    // A residual of the wrong shape is one clear error.
    let x = Tensor::from_vec(gpu, &[0.0; 12], &[2, 6]).unwrap();
    let w = Tensor::from_vec(gpu, &[0.0; 42], &[7, 6]).unwrap();
    let b = Tensor::from_vec(gpu, &[0.0; 7], &[7]).unwrap();
    let err = x.linear_residual(&w, &b, &x).unwrap_err().to_string();
    assert!(err.contains("residual of shape [2, 6]"), "{err}");
}

#[test]
fn shape_ops_and_normalisations() {
    check_graph(
        "permute/reshape/sum_axis/softmax",
        &[&[2, 3, 4]],
        &|p| {
            let t = p[0].permute(&[2, 0, 1])?.reshape(&[4, 6])?.softmax()?; // [4,6]
            let w = t.transpose(0, 1)?.sum_axis(1)?; // [6]
            w.mul(&w)?.sum()
        },
        4,
    );
    check_graph(
        "layer_norm",
        &[&[5, 8], &[8], &[8]],
        &|p| {
            let y = p[0].layer_norm(&p[1], &p[2], 1e-5)?;
            y.mul(&y)?.mean()
        },
        5,
    );
    check_graph(
        "l2 normalize both modes",
        &[&[4, 6], &[6]],
        &|p| {
            let a = p[0].l2_normalize(L2Mode::AddEps(1e-6))?;
            let b = p[0].l2_normalize(L2Mode::ClampMin(1e-6))?;
            a.add(&b)?.mul(&p[1])?.sum()
        },
        6,
    );
    check_graph(
        "embedding",
        &[&[5, 3]],
        &|p| {
            let e = p[0].embedding(&[4, 0, 4, 2])?;
            e.mul(&e)?.sum()
        },
        7,
    );
}

#[test]
fn gradients_accumulate_until_zero_grad() {
    let gpu = common::gpu();
    let w = Tensor::param(gpu, &[1.0, 2.0, 3.0], &[3]).unwrap();
    let x = Tensor::from_vec(gpu, &[4.0, 5.0, 6.0], &[3]).unwrap();
    backward(&w.mul(&x).unwrap().sum().unwrap()).unwrap();
    backward(&w.mul(&x).unwrap().sum().unwrap()).unwrap();
    assert_eq!(w.grad().unwrap().to_vec().unwrap(), vec![8.0, 10.0, 12.0]);
    w.zero_grad();
    assert!(w.grad().is_none());
    assert!(x.grad().is_none(), "constants collect no gradient");
}

#[test]
fn no_grad_and_detach_stop_recording() {
    let gpu = common::gpu();
    let w = Tensor::param(gpu, &[1.0, -2.0], &[2]).unwrap();
    let y = no_grad(|| w.scale(3.0).unwrap());
    assert!(!y.requires_grad());
    let d = w.detach();
    assert!(!d.requires_grad());
    // Gradient flows only through the recorded path: d(w*w_detached)/dw = w_detached.
    backward(&w.mul(&d).unwrap().sum().unwrap()).unwrap();
    assert_eq!(w.grad().unwrap().to_vec().unwrap(), vec![1.0, -2.0]);
}

#[test]
fn a_bad_shape_error_names_both_shapes() {
    let gpu = common::gpu();
    let a = Tensor::zeros(gpu, &[2, 3]).unwrap();
    let b = Tensor::zeros(gpu, &[4, 5]).unwrap();
    let msg = a.matmul(&b).unwrap_err().to_string();
    assert!(msg.contains("[2, 3]") && msg.contains("[4, 5]"), "{msg}");
    let msg = a.add(&b).unwrap_err().to_string();
    assert!(msg.contains("[2, 3]") && msg.contains("[4, 5]"), "{msg}");
    let msg = a.reshape(&[7]).unwrap_err().to_string();
    assert!(msg.contains("[2, 3]") && msg.contains("[7]"), "{msg}");
}

#[test]
fn pool_stays_flat_over_100_mlp_training_steps() {
    // Its own device, so other tests' buffers do not move the counters.
    let gpu = vlsa::Gpu::new().unwrap();
    let mut rng = Rng::new(9);
    let (batch, dim, hidden) = (16, 12, 32);
    let w1 = Tensor::param(&gpu, &rng.vec(hidden * dim), &[hidden, dim]).unwrap();
    let b1 = Tensor::param(&gpu, &vec![0.0; hidden], &[hidden]).unwrap();
    let w2 = Tensor::param(&gpu, &rng.vec(hidden), &[1, hidden]).unwrap();
    let x = Tensor::from_vec(&gpu, &rng.vec(batch * dim), &[batch, dim]).unwrap();
    let target = Tensor::from_vec(&gpu, &rng.vec(batch), &[batch, 1]).unwrap();
    let params = [&w1, &b1, &w2];
    let mut losses = Vec::new();
    let mut allocated = Vec::new();
    let mut in_use = Vec::new();
    for _ in 0..100 {
        let y = x.linear(&w1, Some(&b1)).unwrap().gelu().unwrap().linear(&w2, None).unwrap();
        let diff = y.sub(&target).unwrap();
        let loss = diff.mul(&diff).unwrap().mean().unwrap();
        backward(&loss).unwrap();
        no_grad(|| {
            for p in params {
                let step = p.sub(&p.grad().unwrap().scale(0.05).unwrap()).unwrap();
                p.assign(&step).unwrap();
                p.zero_grad();
            }
        });
        losses.push(loss.to_vec().unwrap()[0]);
        drop((loss, diff, y));
        gpu.sync().unwrap();
        allocated.push(gpu.pool_stats().allocated_bytes);
        in_use.push(gpu.pool_stats().in_use_bytes);
    }
    assert!(losses[99] < losses[0] * 0.5, "training lowers the loss: {} -> {}", losses[0], losses[99]);
    let warm = allocated[9];
    assert!(allocated[10..].iter().all(|&a| a == warm), "pool grew after warm-up: {:?}", &allocated[..]);
    // Between steps only the parameters, x and target are alive: the graph was freed.
    assert!(in_use.iter().all(|&b| b == in_use[0]), "bytes in use changed between steps: {:?}", &in_use[..]);
    assert!(in_use[0] < warm, "the graph's buffers went back to the pool");
}

#[test]
fn model_ops_wire_gradients() {
    use std::sync::Arc;
    use vlsa::kernels::em::GradMode;
    let gpu = common::gpu();
    check_graph(
        "self-attention",
        &[&[2, 5, 8], &[2, 6, 8], &[2, 6, 8]],
        &|p| {
            let o = p[0].attention(&p[1], &p[2], 2, false, None)?;
            o.mul(&o)?.sum()
        },
        11,
    );
    check_graph(
        "cross-attention over shared keys",
        &[&[2, 5, 8], &[1, 3, 8], &[1, 3, 8]],
        &|p| {
            let o = p[0].attention(&p[1], &p[2], 2, false, None)?;
            o.mul(&o)?.sum()
        },
        12,
    );
    let bases = Tensor::from_vec(gpu, &[0.6, 0.8, 0.0, 0.0, 0.0, 0.6, 0.8, 0.0, 0.5, 0.5, 0.5, 0.5], &[3, 4]).unwrap();
    check_graph(
        "EM unrolled",
        &[&[2, 7, 4], &[2, 7, 4]],
        &|p| {
            let em = p[0].em_aggregate(&bases, 3, 1.0, GradMode::Unrolled)?;
            em.recon.mul(&p[1])?.sum()
        },
        13,
    );
    check_graph(
        "patch embedding",
        &[&[2, 3, 8, 8], &[5, 3, 4, 4]],
        &|p| {
            let t = p[0].patch_embed(&p[1])?;
            t.mul(&t)?.sum()
        },
        14,
    );
    check_graph(
        "bilinear resize",
        &[&[2, 3, 4, 4], &[2, 3, 7, 9]],
        &|p| p[0].resize_bilinear(7, 9)?.mul(&p[1])?.sum(),
        15,
    );
    check_graph(
        "mask head",
        &[&[2, 5, 6], &[3, 6], &[1]],
        &|p| {
            let l = p[0].mask_head(&p[1], &p[2])?;
            l.mul(&l)?.mean()
        },
        16,
    );
    check_graph(
        "sub-token mask head (Linear, pixel shuffle, cosine head)",
        &[&[2, 4, 6], &[24, 6], &[24], &[3, 6], &[1]],
        &|p| {
            let l = p[0].linear(&p[1], Some(&p[2]))?.pixel_shuffle(2, 2)?.mask_head(&p[3], &p[4])?;
            l.mul(&l)?.mean()
        },
        18,
    );
    let target: Vec<u32> = (0..2 * 16).map(|i| (i * 7 % 3) as u32).collect();
    let target = Arc::new(gpu.upload(&target).unwrap());
    check_graph(
        "cross-entropy + dice",
        &[&[2, 3, 4, 4]],
        &|p| p[0].scale(3.0)?.cross_entropy(&target)?.add(&p[0].dice_loss(&target)?),
        17,
    );
}

#[test]
fn detached_em_gives_no_gradient_to_its_input() {
    use vlsa::kernels::em::GradMode;
    let gpu = common::gpu();
    let u = Tensor::param(gpu, &Rng::new(5).vec(2 * 7 * 4), &[2, 7, 4]).unwrap();
    let bases = Tensor::from_vec(gpu, &[0.6, 0.8, 0.0, 0.0, 0.0, 0.6, 0.8, 0.0], &[2, 4]).unwrap();
    let em = u.em_aggregate(&bases, 3, 1.0, GradMode::Detached).unwrap();
    assert!(!em.recon.requires_grad(), "detached EM output is a constant");
    assert_eq!(em.z.shape(), &[2, 7, 2]);
    assert_eq!(em.mu.shape(), &[2, 2, 4]);
    // A residual keeps u in the graph; only that path contributes.
    backward(&u.add(&em.recon).unwrap().sum().unwrap()).unwrap();
    assert!(u.grad().unwrap().to_vec().unwrap().iter().all(|&g| g == 1.0));
}
