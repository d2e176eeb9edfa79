//! Resource limits and GPU faults: a tensor over the adapter's storage-binding limit, a grid
//! over the workgroup limit, an impossible allocation and a lost device each end in an `Error`
//! that says what and by how much — never a wgpu panic, a hang or a device loss.
//!
//! vlsa does not split kernels over binding-size chunks: it refuses the dispatch before it is
//! recorded (`Gpu::dispatch` checks every bound buffer), and the model refuses a batch that
//! cannot fit before any kernel runs (`Config::check_batch`). The tensors here are sized from
//! the adapter's own limit (128 MiB on lavapipe and llvmpipe, the portable value), a few KiB
//! over it, and are never filled, so the test stays light.

mod common;

use vlsa::Tensor;
use vlsa_kernels::attention::{self, Attention, AttentionIo};
use vlsa_kernels::em::{Em, EmShape, GradMode};
use vlsa_kernels::pipeline::Shader;
use vlsa_kernels::profiler::KernelLabel;
use vlsa_kernels::{grid, Dispatch, Error, Gpu};

/// The adapter's binding limit in bytes, or `None` (with a note) where it is so large that a
/// tensor over it would not keep this test light.
fn binding_limit(gpu: &Gpu) -> Option<u64> {
    let limit = gpu.limits().max_storage_buffer_binding_size;
    if limit > 1 << 30 {
        eprintln!("note: max_storage_buffer_binding_size is {limit} bytes; the over-the-limit tests need an adapter at or below 1 GiB");
        return None;
    }
    Some(limit)
}

/// Checks a refusal names the limit, the kernel and the overshoot, and that the device is
/// still fine afterwards.
fn assert_binding_refusal(gpu: &Gpu, err: &Error, kernel: &str, needed: u64, limit: u64) {
    let msg = err.to_string();
    assert!(matches!(err, Error::Limit { .. }), "{msg}");
    for want in [
        "max_storage_buffer_binding_size",
        kernel,
        &format!("needs {needed}"),
        &format!("at most {limit}"),
        &format!("over by {}", needed - limit),
    ] {
        assert!(msg.contains(want), "`{want}` missing from: {msg}");
    }
    gpu.sync().expect("the device is unaffected by a refused dispatch");
    let x = gpu.upload(&[-1.0f32, 2.0]).unwrap();
    let y = gpu.alloc(2).unwrap();
    vlsa_kernels::elementwise::unary(gpu, vlsa_kernels::elementwise::UnaryOp::Relu, &x, &y, 2).unwrap();
    assert_eq!(gpu.download(&y).unwrap(), vec![0.0, 2.0]);
}

#[test]
fn em_over_the_binding_limit_is_refused_naming_kernel_and_limit() {
    let gpu = common::gpu();
    let Some(limit) = binding_limit(gpu) else { return };
    // u [1, N, 64] with N one token more than the limit holds: 256 bytes over.
    let width = 64;
    let tokens = (limit / (4 * width as u64)) as usize + 1;
    let s = EmShape { batch: 1, tokens, width, bases: 4, iters: 1, lambda: 1.0 };
    let needed = (s.tokens_len() * 4) as u64;
    assert!(needed > limit);
    let u = gpu.alloc(s.tokens_len()).unwrap();
    let bases = gpu.upload(&vec![0.5f32; s.bases_len()]).unwrap();
    let err = Em::new(gpu, s).and_then(|em| em.forward(&u, &bases, false)).err().expect("u is over the binding limit");
    assert_binding_refusal(gpu, &err, "binding", needed, limit);
    // The same through the op layer (what the model calls).
    let u = Tensor::from_buffer(gpu, u, &[1, tokens, width]).unwrap();
    let bases = Tensor::from_vec(gpu, &vec![0.5f32; s.bases_len()], &[4, width]).unwrap();
    let err = u.em_aggregate(&bases, 1, 1.0, GradMode::Detached).err().expect("refused");
    assert_binding_refusal(gpu, &err, "binding 1", needed, limit);
    drop(u);
    gpu.pool().release_free();
}

#[test]
fn attention_over_the_binding_limit_is_refused_naming_kernel_and_limit() {
    let gpu = common::gpu();
    let Some(limit) = binding_limit(gpu) else { return };
    // Queries [1, Nq, 2 heads x 32] with Nq one row more than the limit holds.
    let (heads, dh) = (2, 32);
    let q_len = (limit / (4 * (heads * dh) as u64)) as usize + 1;
    let spec = Attention::new(1, q_len, 4, heads, dh);
    let needed = (spec.q_elements() * 4) as u64;
    let q = gpu.alloc(spec.q_elements()).unwrap();
    let kv = gpu.upload(&vec![0.1f32; 4 * heads * dh]).unwrap();
    let kv2 = gpu.upload(&vec![0.2f32; 4 * heads * dh]).unwrap();
    let out = gpu.alloc(spec.q_elements()).unwrap();
    let lse = gpu.alloc(spec.lse_elements()).unwrap();
    let err = attention::forward(
        gpu,
        &AttentionIo { q: &q, k: &kv, v: &kv2, key_mask: None, out: &out, lse: &lse, probs: None },
        &spec,
    )
    .expect_err("q is over the binding limit");
    // The few-keys kernel (4 keys, heads of 32: the one that walks ranges of rows on the CPU
    // paths, `forward_few_keys_rows`) of attention.wgsl, or of attention_texture.wgsl where
    // texture operands are on (it still binds q's storage, which the check covers).
    assert_binding_refusal(gpu, &err, "`forward_few_keys", needed, limit);
    assert!(err.to_string().contains(" of attention"), "{err}");
    assert!(err.to_string().contains(".wgsl binding 1 ("), "{err}");
    // Through the op layer.
    let q = Tensor::from_buffer(gpu, q, &[1, q_len, heads * dh]).unwrap();
    let k = Tensor::from_vec(gpu, &vec![0.1f32; 4 * heads * dh], &[1, 4, heads * dh]).unwrap();
    let err = q.attention(&k, &k.clone(), heads, false, None).expect_err("refused");
    assert_binding_refusal(gpu, &err, "max_storage_buffer_binding_size", needed, limit);
    drop((q, out, lse));
    gpu.pool().release_free();
}

/// Writes 1 + its flat workgroup index into each element; bounds-checked, grid folded over y.
static FILL: Shader = Shader {
    file: "limits_test_fill.wgsl",
    source: "@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(1)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = wid.x + wid.y * nwg.x;
    if (i < arrayLength(&out)) { out[i] = f32(i) + 1.0; }
}",
};

fn fill(gpu: &Gpu, out: &vlsa_kernels::GpuBuffer, workgroups: [u32; 3]) -> vlsa_kernels::Result<()> {
    gpu.dispatch(Dispatch {
        shader: &FILL,
        entry: "fill",
        params: &[],
        buffers: &[out],
        workgroups,
        label: KernelLabel { kernel: "fill", shape: String::new(), flops: 0, bytes: 0 },
    })
}

#[test]
fn grids_fold_over_y_and_workgroup_counts_over_the_limit_are_refused() {
    let gpu = common::gpu();
    let max = gpu.limits().max_compute_workgroups_per_dimension;
    // 70000 workgroups fold into 65535 x 2 and every element is written once.
    let n = 70_000u32;
    let out = gpu.zeros(n as usize).unwrap();
    fill(gpu, &out, grid(n)).unwrap();
    let got = gpu.download(&out).unwrap();
    assert!(got.iter().enumerate().all(|(i, &v)| v == i as f32 + 1.0), "the folded grid covers each element once");
    // More than the limit along one axis is refused before anything is recorded.
    let err = fill(gpu, &out, [max + 1, 1, 1]).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Limit { .. }), "{msg}");
    assert!(
        msg.contains("max_compute_workgroups_per_dimension") && msg.contains("`fill`") && msg.contains("over by 1"),
        "{msg}"
    );
    // The largest 32-bit count folds to 65538 rows, over the limit too: refused, not wrapped.
    let folded = grid(u32::MAX);
    assert!(folded[1] > max);
    assert!(fill(gpu, &out, folded).unwrap_err().to_string().contains("along y"));
    gpu.sync().unwrap();
}

#[test]
fn impossible_allocations_are_refused_naming_max_buffer_size() {
    let gpu = common::gpu();
    for len in [usize::MAX, usize::MAX / 4 + 1, (gpu.limits().max_buffer_size / 4 + 1) as usize] {
        let err = gpu.alloc(len).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Limit { .. }) && msg.contains("max_buffer_size"), "{msg}");
    }
    // A tensor op asking for one fails the same way, with the device intact.
    let huge = Tensor::zeros(gpu, &[1 << 20, 1 << 20, 1 << 10]);
    assert!(huge.expect_err("refused").to_string().contains("max_buffer_size"));
    gpu.sync().unwrap();
}

#[test]
fn a_lost_device_ends_each_call_with_an_error() {
    // A device of its own: this test destroys it.
    let gpu = Gpu::new().unwrap();
    let x = gpu.upload(&[1.0f32; 64]).unwrap();
    let y = gpu.alloc(64).unwrap();
    gpu.sync().unwrap();
    gpu.device().destroy();
    let mut messages = Vec::new();
    type Attempt<'a> = (&'static str, Box<dyn Fn() -> vlsa_kernels::Result<()> + 'a>);
    let attempts: Vec<Attempt> = vec![
        (
            "dispatch and sync",
            Box::new(|| {
                vlsa_kernels::elementwise::unary(&gpu, vlsa_kernels::elementwise::UnaryOp::Relu, &x, &y, 64)
                    .and_then(|_| gpu.sync())
            }),
        ),
        ("download", Box::new(|| gpu.download(&y).map(|_| ()))),
        ("upload and download", Box::new(|| gpu.upload(&[2.0f32; 8]).and_then(|b| gpu.download(&b)).map(|_| ()))),
    ];
    for (what, attempt) in attempts {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(attempt));
        let err = result.unwrap_or_else(|_| panic!("{what} panicked on a lost device")).expect_err(what);
        let msg = err.to_string();
        assert!(matches!(err, Error::DeviceLost(_)) && !msg.contains('\n'), "{what}: {msg}");
        assert_eq!(msg, "GPU device lost: the device was destroyed", "{what}");
        messages.push(format!("{what}: {msg}"));
    }
    println!("{}", messages.join("\n"));
    // A validation error (not a loss) is reported once, in one line, and the device goes on:
    // tests/gpu_context.rs checks that.
}

#[test]
fn a_model_batch_over_the_binding_limit_is_refused_before_any_kernel_runs() {
    let gpu = common::gpu();
    let Some(limit) = binding_limit(gpu) else { return };
    let config = vlsa::config::Config::from_json(
        r#"{"image_size": 16, "patch_size": 8, "vision": {"width": 8, "layers": 1, "heads": 2},
            "text_dim": 6, "classes": ["bg", "a", "b"], "decoder": {"width": 8, "layers": 1, "heads": 2}, "em": {"bases": 3}}"#,
        "tiny",
    )
    .unwrap();
    let model = vlsa::model::Model::init(gpu, config, 1).unwrap();
    // One image's largest tensors are the input and the upsampled logits, 3 x 16 x 16 floats.
    let per_image = 3 * 16 * 16 * 4;
    let batch = (limit / per_image) as usize + 1;
    // The input buffer is allocated, never written: the refusal comes before anything reads it.
    let input = Tensor::from_buffer(gpu, gpu.alloc(batch * 3 * 16 * 16).unwrap(), &[batch, 3, 16, 16]).unwrap();
    gpu.sync().unwrap();
    let (dispatches, _) = gpu.counters();
    let err = vlsa::no_grad(|| model.forward(&input)).err().expect("the batch is over the limit");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("a batch of {batch} images")) && msg.contains("max_storage_buffer_binding_size"),
        "{msg}"
    );
    assert!(msg.contains(&format!("at most {} images", batch - 1)), "{msg}");
    assert_eq!(gpu.counters().0, dispatches, "no kernel ran");
    drop(input);
    gpu.pool().release_free();
}
