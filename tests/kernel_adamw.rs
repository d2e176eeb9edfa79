//! The AdamW update (shaders/adamw.wgsl) against its f64 CPU reference.

mod common;

use common::{assert_close, check, zeros, Case, Input, Rng};
use vlsa_kernels::adamw::{self, AdamW, AdamWTensor};

/// PyTorch's AdamW step in f64 on (p, m, v).
fn ref_adamw(p: &mut [f64], m: &mut [f64], v: &mut [f64], g: &[f64], t: u32, c: &AdamW) {
    let (lr, b1, b2, eps, wd) = (c.lr as f64, c.beta1 as f64, c.beta2 as f64, c.eps as f64, c.weight_decay as f64);
    let bias1 = 1.0 - b1.powi(t as i32);
    let bias2 = 1.0 - b2.powi(t as i32);
    for i in 0..p.len() {
        p[i] *= 1.0 - lr * wd;
        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
        p[i] -= lr * (m[i] / bias1) / ((v[i] / bias2).sqrt() + eps);
    }
}

#[test]
fn adamw_first_step_matches_reference() {
    let mut rng = Rng::new(17);
    let cfg = AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.05 };
    for n in [1usize, 7, 33, 130, 4099] {
        let inputs = vec![
            Input::random(&mut rng, &[n]),
            Input::random(&mut rng, &[n]),
            Input::random(&mut rng, &[n]),
            Input::float(&[n], (0..n).map(|_| rng.uniform()).collect()),
        ];
        check(Case::new(
            format!("adamw step 3 [{n}]"),
            inputs,
            move |x| {
                let (mut p, mut m, mut v) = (x[0].clone(), x[2].clone(), x[3].clone());
                ref_adamw(&mut p, &mut m, &mut v, &x[1], 3, &cfg);
                p
            },
            move |gpu, x| {
                let (p, m, v) = (gpu.alloc(n)?, gpu.alloc(n)?, gpu.alloc(n)?);
                gpu.copy(&x[0], &p)?;
                gpu.copy(&x[2], &m)?;
                gpu.copy(&x[3], &v)?;
                adamw::step(gpu, &AdamWTensor { param: &p, grad: &x[1], m: &m, v: &v }, n, 3, &cfg)?;
                Ok(p)
            },
        ));
    }
}

#[test]
fn adamw_several_steps_match_reference() {
    let gpu = common::gpu();
    let mut rng = Rng::new(18);
    let cfg = AdamW { lr: 3e-2, beta1: 0.9, beta2: 0.98, eps: 1e-6, weight_decay: 0.1 };
    for n in [1usize, 33, 130, 70_001] {
        let p0 = rng.vec(n);
        let mut p: Vec<f64> = p0.iter().map(|&v| v as f64).collect();
        let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
        let pb = gpu.upload(&p0).unwrap();
        let (mb, vb) = (zeros(gpu, n).unwrap(), zeros(gpu, n).unwrap());
        for t in 1..=6 {
            // Every 7th gradient is zero (the denominator is then eps alone at step 1).
            let g: Vec<f32> =
                rng.vec(n).into_iter().enumerate().map(|(i, x)| if i % 7 == 3 { 0.0 } else { x * t as f32 }).collect();
            let gb = gpu.upload(&g).unwrap();
            adamw::step(gpu, &AdamWTensor { param: &pb, grad: &gb, m: &mb, v: &vb }, n, t, &cfg).unwrap();
            ref_adamw(&mut p, &mut m, &mut v, &g.iter().map(|&x| x as f64).collect::<Vec<_>>(), t, &cfg);
        }
        assert_close(&format!("adamw param [{n}] after 6 steps"), &gpu.download(&pb).unwrap(), &p, 1e-4, 1e-5);
        assert_close(&format!("adamw m [{n}] after 6 steps"), &gpu.download(&mb).unwrap(), &m, 1e-4, 1e-6);
        assert_close(&format!("adamw v [{n}] after 6 steps"), &gpu.download(&vb).unwrap(), &v, 1e-4, 1e-7);
    }
}

#[test]
fn adamw_rejects_bad_arguments() {
    let gpu = common::gpu();
    let cfg = AdamW::default();
    let (p, g, m, v) = (zeros(gpu, 8).unwrap(), zeros(gpu, 8).unwrap(), zeros(gpu, 4).unwrap(), zeros(gpu, 8).unwrap());
    let tensor = AdamWTensor { param: &p, grad: &g, m: &m, v: &v };
    let err = adamw::step(gpu, &tensor, 8, 1, &cfg).unwrap_err().to_string();
    assert!(err.contains("8 elements") && err.contains("first moment") && err.contains("only 4"), "{err}");
    let shared = AdamWTensor { m: &v, ..tensor };
    assert!(adamw::step(gpu, &shared, 8, 1, &cfg).unwrap_err().to_string().contains("distinct"));
    assert!(adamw::step(gpu, &tensor, 4, 0, &cfg).unwrap_err().to_string().contains("starts at 1"));
}
