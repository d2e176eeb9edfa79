//! Fused attention (shaders/attention.wgsl) against an f64 CPU reference: forward, lse,
//! backward and finite differences, over self-attention, shared-key cross-attention, causal
//! and key-padding masks, the fused kernels (both forward paths) and the products method, on
//! every kernel path, and bad shapes.

mod common;

use std::sync::{Mutex, MutexGuard};

use common::{check, Case, Input, Rng};
use vlsa_kernels::attention::{self, Attention, AttentionGrads, AttentionIo, BackwardPath, ForwardPath};
use vlsa_kernels::KernelPath;
use vlsa_kernels::{Gpu, GpuBuffer};

/// On GL, one test at a time: the first use of a large register-blocked pipeline compiles for
/// seconds while holding the GL context, and wgpu's GL backend fails any other thread that
/// waits on that context for more than about 6 s ("Could not lock adapter context").
fn serial_on_gl() -> Option<MutexGuard<'static, ()>> {
    static GL_TESTS: Mutex<()> = Mutex::new(());
    let gl = common::gpu().info().backend.to_lowercase().contains("gl");
    gl.then(|| GL_TESTS.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Whether query i of batch b may see key j.
fn visible(s: &Attention, mask: Option<&[f64]>, b: usize, i: usize, j: usize) -> bool {
    let kb = if s.kv_batch == 1 { 0 } else { b };
    (!s.causal || j <= i) && mask.is_none_or(|m| m[kb * s.kv_len + j] != 0.0)
}

/// Reference probabilities P[b][h][i][j] (zero rows for rows that see no key) and lse.
fn reference_probs(s: &Attention, q: &[f64], k: &[f64], mask: Option<&[f64]>) -> (Vec<f64>, Vec<f64>) {
    let (w, dh, nq, nk) = (s.heads * s.head_dim, s.head_dim, s.q_len, s.kv_len);
    let mut probs = vec![0.0; s.batch * s.heads * nq * nk];
    let mut lse = vec![f64::NEG_INFINITY; s.batch * s.heads * nq];
    for b in 0..s.batch {
        let kb = if s.kv_batch == 1 { 0 } else { b };
        for h in 0..s.heads {
            for i in 0..nq {
                let qi = &q[(b * nq + i) * w + h * dh..][..dh];
                let scores: Vec<Option<f64>> = (0..nk)
                    .map(|j| {
                        visible(s, mask, b, i, j).then(|| {
                            let kj = &k[(kb * nk + j) * w + h * dh..][..dh];
                            s.scale as f64 * qi.iter().zip(kj).map(|(a, c)| a * c).sum::<f64>()
                        })
                    })
                    .collect();
                let m = scores.iter().flatten().fold(f64::NEG_INFINITY, |a, &x| a.max(x));
                if m == f64::NEG_INFINITY {
                    continue;
                }
                let sum: f64 = scores.iter().flatten().map(|x| (x - m).exp()).sum();
                let row = ((b * s.heads + h) * nq + i) * nk;
                for (j, sc) in scores.iter().enumerate() {
                    if let Some(x) = sc {
                        probs[row + j] = (x - m).exp() / sum;
                    }
                }
                lse[(b * s.heads + h) * nq + i] = m + sum.ln();
            }
        }
    }
    (probs, lse)
}

fn reference_forward(s: &Attention, q: &[f64], k: &[f64], v: &[f64], mask: Option<&[f64]>) -> Vec<f64> {
    let (w, dh, nq, nk) = (s.heads * s.head_dim, s.head_dim, s.q_len, s.kv_len);
    let (probs, _) = reference_probs(s, q, k, mask);
    let mut out = vec![0.0; s.batch * nq * w];
    for b in 0..s.batch {
        let kb = if s.kv_batch == 1 { 0 } else { b };
        for h in 0..s.heads {
            for i in 0..nq {
                let row = ((b * s.heads + h) * nq + i) * nk;
                let o = &mut out[(b * nq + i) * w + h * dh..][..dh];
                for j in 0..nk {
                    let pj = probs[row + j];
                    let vj = &v[(kb * nk + j) * w + h * dh..][..dh];
                    o.iter_mut().zip(vj).for_each(|(o, x)| *o += pj * x);
                }
            }
        }
    }
    out
}

/// dq, dk, dv of L = sum(d_out * out).
fn reference_backward(
    s: &Attention,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    mask: Option<&[f64]>,
    d_out: &[f64],
) -> [Vec<f64>; 3] {
    let (w, dh, nq, nk) = (s.heads * s.head_dim, s.head_dim, s.q_len, s.kv_len);
    let (probs, _) = reference_probs(s, q, k, mask);
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for b in 0..s.batch {
        let kb = if s.kv_batch == 1 { 0 } else { b };
        for h in 0..s.heads {
            for i in 0..nq {
                let row = ((b * s.heads + h) * nq + i) * nk;
                let qo = (b * nq + i) * w + h * dh;
                let g = &d_out[qo..][..dh];
                let dp: Vec<f64> = (0..nk).map(|j| dot(g, &v[(kb * nk + j) * w + h * dh..][..dh])).collect();
                let delta: f64 = (0..nk).map(|j| probs[row + j] * dp[j]).sum();
                for j in 0..nk {
                    let pj = probs[row + j];
                    if pj == 0.0 {
                        continue;
                    }
                    let ds = pj * (dp[j] - delta) * s.scale as f64;
                    let ko = (kb * nk + j) * w + h * dh;
                    for c in 0..dh {
                        dq[qo + c] += ds * k[ko + c];
                        dk[ko + c] += ds * q[qo + c];
                        dv[ko + c] += pj * g[c];
                    }
                }
            }
        }
    }
    [dq, dk, dv]
}

/// Runs forward on the GPU and returns out and lse.
fn gpu_forward(
    gpu: &Gpu,
    x: &[GpuBuffer],
    s: &Attention,
    path: ForwardPath,
    kernels: KernelPath,
) -> vlsa_kernels::Result<(GpuBuffer, GpuBuffer)> {
    gpu_forward_probs(gpu, x, s, path, kernels).map(|(out, lse, _)| (out, lse))
}

/// Runs forward on the GPU and returns out, lse and the probabilities a products forward keeps.
fn gpu_forward_probs(
    gpu: &Gpu,
    x: &[GpuBuffer],
    s: &Attention,
    path: ForwardPath,
    kernels: KernelPath,
) -> vlsa_kernels::Result<(GpuBuffer, GpuBuffer, Option<GpuBuffer>)> {
    let out = gpu.alloc(s.q_elements())?;
    let lse = gpu.alloc(s.lse_elements())?;
    let io = AttentionIo { q: &x[0], k: &x[1], v: &x[2], key_mask: x.get(3), out: &out, lse: &lse, probs: None };
    let probs = attention::forward_path(gpu, &io, s, path, kernels)?;
    Ok((out, lse, probs))
}

/// A key mask [Bk, Nk] with some keys off; with `blank_batch`, kv batch 1 (or 0 if Bk = 1)
/// has every key off, so its rows are fully masked.
fn key_mask(rng: &mut Rng, s: &Attention, blank_batch: bool) -> Vec<usize> {
    let mut m: Vec<usize> = (0..s.kv_batch * s.kv_len).map(|_| (rng.uniform() > 0.3) as usize).collect();
    for kb in 0..s.kv_batch {
        m[kb * s.kv_len] = 1; // at least one key on per batch
    }
    if blank_batch {
        let kb = s.kv_batch.min(2) - 1;
        m[kb * s.kv_len..(kb + 1) * s.kv_len].iter_mut().for_each(|x| *x = 0);
    }
    m
}

/// Forward + lse + backward + finite differences of one shape through `check`, on every kernel
/// path: the fused kernels under `path` (`Auto` stands for the fused kernel it would pick,
/// since on the registers path it picks products), and for `Auto` and `Blocked` the products
/// method too. The subgroup path runs on adapters without subgroups as well, where its
/// launchers fall back to attention.wgsl's kernels and the register matmul.
fn check_attention(name: &str, s: Attention, mask: Option<Vec<usize>>, path: ForwardPath, seed: u64) {
    let fused = match path {
        ForwardPath::Auto if s.kv_len > attention::FEW_KEYS => ForwardPath::Blocked,
        p => p,
    };
    let mut methods = vec![(fused, BackwardPath::Fused)];
    if matches!(path, ForwardPath::Auto | ForwardPath::Blocked) {
        methods.push((ForwardPath::Products, BackwardPath::Products));
    }
    // The stored-scores backward: keys per batch element, not causal, register-blocked kernels.
    let scores = s.kv_batch == s.batch && !s.causal;
    if scores {
        methods.push((fused, BackwardPath::Scores));
    }
    // The few-keys backward: at most 4 keys, heads of at most 32.
    if s.q_len > 0
        && (1..=attention::FEW_BACKWARD_KEYS).contains(&s.kv_len)
        && s.head_dim <= attention::FEW_BACKWARD_HEAD_DIM
    {
        methods.push((fused, BackwardPath::FewKeys));
    }
    for kernels in KernelPath::ALL {
        for &(forward, backward) in &methods {
            if matches!(backward, BackwardPath::Scores | BackwardPath::FewKeys) && kernels == KernelPath::Tiled {
                continue;
            }
            check_attention_on(name, s, mask.clone(), forward, backward, kernels, seed);
        }
    }
}

fn check_attention_on(
    name: &str,
    s: Attention,
    mask: Option<Vec<usize>>,
    path: ForwardPath,
    backward: BackwardPath,
    kernels: KernelPath,
    seed: u64,
) {
    let gpu = common::gpu();
    let few = matches!(path, ForwardPath::FewKeys)
        || (matches!(path, ForwardPath::Auto) && s.kv_len <= vlsa_kernels::attention::FEW_KEYS);
    if kernels != KernelPath::Tiled
        && path != ForwardPath::Products
        && s.head_dim > vlsa_kernels::attention::GPU_MAX_BLOCKED_HEAD_DIM
        && gpu.info().device_type != "Cpu"
    {
        // Refused with a clear error on GPUs (see GPU_MAX_BLOCKED_HEAD_DIM), not a lost device:
        // the blocked forward and every backward.
        if few {
            eprintln!(
                "{name}: the backward of head width {} is refused on {}; checked on CPU adapters",
                s.head_dim,
                gpu.info().name
            );
            return;
        }
        let w = s.heads * s.head_dim;
        let (q, kv) = (gpu.zeros(s.batch * s.q_len * w).unwrap(), gpu.zeros(s.kv_batch * s.kv_len * w).unwrap());
        let (out, lse) = (gpu.zeros(s.batch * s.q_len * w).unwrap(), gpu.zeros(s.batch * s.heads * s.q_len).unwrap());
        let io = AttentionIo { q: &q, k: &kv, v: &kv, key_mask: None, out: &out, lse: &lse, probs: None };
        let e = attention::forward_with(gpu, &io, &s, kernels).unwrap_err().to_string();
        assert!(e.contains("head widths above"), "{name}: {e}");
        eprintln!("{name}: refused on {} as designed: {e}", gpu.info().name);
        return;
    }
    let mut rng = Rng::new(seed);
    let w = s.heads * s.head_dim;
    let mut inputs = vec![
        Input::random(&mut rng, &[s.batch, s.q_len, w]),
        Input::random(&mut rng, &[s.kv_batch, s.kv_len, w]),
        Input::random(&mut rng, &[s.kv_batch, s.kv_len, w]),
    ];
    // Larger q spreads the softmax so that it is not nearly uniform.
    inputs[0].data.iter_mut().for_each(|x| *x *= 2.0);
    if let Some(m) = &mask {
        inputs.push(Input::index(&[s.kv_batch, s.kv_len], m.clone()));
    }
    let has_mask = mask.is_some();
    let name = format!("{name} ({s:?}, {path:?} / {backward:?}, {kernels} path)");

    // lse against the reference (fully masked rows: -inf on both sides).
    {
        let gpu = common::gpu();
        let bufs = common::upload(gpu, &inputs);
        let (_, lse) = gpu_forward(gpu, &bufs, &s, path, kernels).unwrap();
        let got = gpu.download(&lse).unwrap();
        let host: Vec<Vec<f64>> = inputs.iter().map(|i| i.data.iter().map(|&x| x as f64).collect()).collect();
        let (_, want) = reference_probs(&s, &host[0], &host[1], host.get(3).map(|m| m.as_slice()));
        for (r, (&g, &w)) in got.iter().zip(&want).enumerate() {
            if w == f64::NEG_INFINITY {
                assert!(g == f32::NEG_INFINITY, "{name}: lse of fully masked row {r} is {g}, expected -inf");
            } else {
                assert!((g as f64 - w).abs() <= 1e-5 + 1e-4 * w.abs(), "{name}: lse row {r} is {g}, reference {w}");
            }
        }
    }

    let probes = if s.batch * s.q_len * s.kv_len * s.heads * s.head_dim > 2_000_000 { 8 } else { 24 };
    let mut case = Case::new(
        name,
        inputs,
        move |x| reference_forward(&s, &x[0], &x[1], &x[2], x.get(3).map(|m| m.as_slice())),
        move |gpu, x| Ok(gpu_forward(gpu, x, &s, path, kernels)?.0),
    )
    .backward(
        move |gpu, x, d_out| {
            // The products method runs as the model runs it: with the probabilities its
            // forward kept (the recomputing backward is checked against it separately).
            let (out, lse, probs) = gpu_forward_probs(gpu, x, &s, path, kernels)?;
            let dq = gpu.alloc(s.q_elements())?;
            let dk = gpu.alloc(s.kv_elements())?;
            let dv = gpu.alloc(s.kv_elements())?;
            let probs = probs.as_ref();
            let io = AttentionIo { q: &x[0], k: &x[1], v: &x[2], key_mask: x.get(3), out: &out, lse: &lse, probs };
            let grads = AttentionGrads { dq: &dq, dk: &dk, dv: &dv };
            attention::backward_path(gpu, &io, d_out, &grads, &s, backward, kernels)?;
            let mut grads = vec![Some(dq), Some(dk), Some(dv)];
            if has_mask {
                grads.push(None);
            }
            Ok(grads)
        },
        move |x, d_out| {
            let [dq, dk, dv] = reference_backward(&s, &x[0], &x[1], &x[2], x.get(3).map(|m| m.as_slice()), d_out);
            let mut grads = vec![Some(dq), Some(dk), Some(dv)];
            if has_mask {
                grads.push(None);
            }
            grads
        },
    );
    case.fd_probes = probes;
    check(case);
}

#[test]
fn self_attention_matches_reference() {
    let _serial = serial_on_gl();
    let shapes = [
        Attention::new(1, 1, 1, 1, 16),
        Attention::new(3, 7, 7, 2, 32),
        Attention::new(3, 33, 33, 3, 64),
        Attention::new(1, 130, 130, 2, 32),
        Attention::new(1, 33, 33, 1, 128),
        Attention::new(2, 7, 33, 4, 4),
        Attention::new(1, 33, 7, 1, 20),
        // Widths above 32 walk four keys per step; 36 and 52 end mid-pair (clamped offsets).
        Attention::new(2, 9, 19, 2, 36),
        Attention::new(1, 13, 13, 1, 52),
    ];
    for (n, s) in shapes.into_iter().enumerate() {
        check_attention("self-attention", s, None, ForwardPath::Auto, 10 + n as u64);
    }
    // A custom scale, and the full ViT head layout at small N.
    let mut s = Attention::new(1, 17, 17, 3, 64);
    s.scale = 0.37;
    check_attention("custom scale", s, None, ForwardPath::Blocked, 20);
}

#[test]
fn last_tile_of_at_most_eight_rows_runs_apart() {
    // On the subgroup path a last tile of 1..=8 rows runs as its own launch with one row per
    // invocation: the forward's last query tile at head widths above 32
    // (`forward_tail_blocked`), dk/dv's last key tile at any width
    // (`backward_dkdv_tail_blocked`); the tests above cover 33 and 130 tokens (tails of 1 and
    // 2) at widths 16 to 128. Here the edges: a tail of 8 (apart) and of 9 (not), a single
    // tile that is all tail, a masked tail with fully masked rows, keys shared by the batch
    // (dk/dv summed over query-row ranges), and a causal tail.
    let _serial = serial_on_gl();
    let mut rng = Rng::new(70);
    let s = Attention::new(3, 40, 40, 1, 64);
    let m = key_mask(&mut rng, &s, true);
    check_attention("tail of 8, masked", s, Some(m), ForwardPath::Blocked, 71);
    check_attention("tail of 9", Attention::new(1, 41, 23, 2, 64), None, ForwardPath::Blocked, 72);
    check_attention("one tile, all tail", Attention::new(2, 7, 19, 2, 64), None, ForwardPath::Blocked, 73);
    let s = Attention::new(2, 35, 21, 2, 96).shared_kv();
    check_attention("tail of 3, shared keys", s, None, ForwardPath::Blocked, 74);
    let s = Attention::new(1, 37, 37, 1, 64).with_causal(true);
    check_attention("tail of 5, causal", s, None, ForwardPath::Blocked, 75);
    let s = Attention::new(3, 300, 35, 2, 32).shared_kv();
    check_attention("key tail of 3, shared keys over 900 rows", s, None, ForwardPath::Blocked, 76);

    // Which launches ran: the tails' own only where they apply. A context of its own, so that
    // no other test's launches land in its profile.
    let gpu = &Gpu::new().unwrap();
    let subgroup = gpu.info().runs_subgroup_kernels();
    for (s, query_tail, key_tail) in [
        (Attention::new(2, 33, 33, 3, 64), true, true),
        (Attention::new(1, 40, 41, 1, 128), true, false),
        (Attention::new(2, 7, 7, 1, 64), true, true),
        (Attention::new(1, 41, 40, 1, 64), false, true),
        (Attention::new(2, 33, 33, 2, 32), false, true),
    ] {
        let x: Vec<GpuBuffer> =
            [s.q_elements(), s.kv_elements(), s.kv_elements()].iter().map(|&n| gpu.zeros(n).unwrap()).collect();
        let d_out = gpu.zeros(s.q_elements()).unwrap();
        let grads: Vec<GpuBuffer> =
            [s.q_elements(), s.kv_elements(), s.kv_elements()].iter().map(|&n| gpu.alloc(n).unwrap()).collect();
        gpu.set_profiling(true).unwrap();
        let (out, lse) = gpu_forward(gpu, &x, &s, ForwardPath::Blocked, KernelPath::Subgroup).unwrap();
        let io = AttentionIo { q: &x[0], k: &x[1], v: &x[2], key_mask: None, out: &out, lse: &lse, probs: None };
        let g = AttentionGrads { dq: &grads[0], dk: &grads[1], dv: &grads[2] };
        attention::backward_path(gpu, &io, &d_out, &g, &s, BackwardPath::Fused, KernelPath::Subgroup).unwrap();
        let profile = gpu.take_profile().unwrap().expect("profiling is on");
        gpu.set_profiling(false).unwrap();
        for (kernel, which, apart, len) in [
            ("attention", "(last query tile)", query_tail, s.q_len),
            ("attention_backward_dkdv", "(last key tile)", key_tail, s.kv_len),
        ] {
            let shapes: Vec<&str> =
                profile.records.iter().filter(|r| r.label.kernel == kernel).map(|r| r.label.shape.as_str()).collect();
            let tails = shapes.iter().filter(|shape| shape.ends_with(which)).count();
            let want = usize::from(apart && subgroup);
            assert_eq!(tails, want, "{s:?}: {kernel} launches {shapes:?}");
            assert_eq!(shapes.len() - tails, usize::from(len > 8 || want == 0), "{s:?}: {kernel} launches {shapes:?}");
        }
    }
}

#[test]
fn head_dim_128_at_130_tokens() {
    let _serial = serial_on_gl();
    check_attention("dh 128", Attention::new(1, 130, 130, 1, 128), None, ForwardPath::Auto, 21);
}

#[test]
fn causal_matches_reference() {
    let _serial = serial_on_gl();
    for (n, s) in [
        Attention::new(1, 1, 1, 1, 16),
        Attention::new(3, 7, 7, 2, 16),
        Attention::new(1, 130, 130, 2, 32),
        Attention::new(2, 33, 7, 1, 16),
        Attention::new(1, 7, 33, 3, 32),
        Attention::new(2, 33, 33, 1, 48),
    ]
    .into_iter()
    .enumerate()
    {
        check_attention("causal", s.with_causal(true), None, ForwardPath::Auto, 30 + n as u64);
    }
}

#[test]
fn key_padding_mask_with_fully_masked_rows() {
    let _serial = serial_on_gl();
    let mut rng = Rng::new(40);
    for (n, s) in [
        Attention::new(3, 7, 7, 2, 16),
        Attention::new(3, 33, 33, 1, 32),
        Attention::new(1, 130, 130, 2, 16),
        Attention::new(3, 21, 21, 1, 64),
    ]
    .into_iter()
    .enumerate()
    {
        let m = key_mask(&mut rng, &s, n != 2);
        check_attention("key mask", s, Some(m), ForwardPath::Auto, 41 + n as u64);
    }
    // Causal and padding together: key 0 off makes query 0 see nothing.
    let s = Attention::new(3, 33, 33, 2, 16).with_causal(true);
    let mut m = key_mask(&mut rng, &s, false);
    m[0] = 0;
    check_attention("causal + key mask", s, Some(m), ForwardPath::Auto, 45);
}

#[test]
fn shared_keys_cross_attention_on_both_paths() {
    let _serial = serial_on_gl();
    let mut rng = Rng::new(50);
    // Decoder cross-attention: pixel queries over K class embeddings shared by the batch.
    for (n, s) in [
        Attention::new(3, 33, 3, 4, 32),
        Attention::new(1, 1, 2, 1, 16),
        Attention::new(3, 130, 16, 2, 16),
        Attention::new(3, 7, 5, 3, 64),
    ]
    .into_iter()
    .enumerate()
    {
        let s = s.shared_kv();
        for path in [ForwardPath::FewKeys, ForwardPath::Blocked] {
            check_attention("cross-attention", s, None, path, 51 + n as u64);
        }
    }
    // Shared keys, many of them (blocked path only), and a shared mask.
    check_attention("shared keys, Nk 33", Attention::new(3, 7, 33, 2, 32).shared_kv(), None, ForwardPath::Auto, 56);
    let s = Attention::new(3, 33, 7, 2, 16).shared_kv();
    let m = key_mask(&mut rng, &s, false);
    for path in [ForwardPath::FewKeys, ForwardPath::Blocked] {
        check_attention("cross-attention + mask", s, Some(m.clone()), path, 57);
    }
    // Fully masked: every row sees nothing.
    let m = vec![0; s.kv_len];
    for path in [ForwardPath::FewKeys, ForwardPath::Blocked] {
        check_attention("cross-attention, all keys off", s, Some(m.clone()), path, 58);
    }
    // Few keys per batch element, causal (early rows see fewer keys, row 0 one), with an odd
    // head width; the few-keys backward's limits (4 keys, heads of 32) with a mask.
    let s = Attention::new(2, 9, 4, 2, 12).with_causal(true);
    check_attention("few keys, causal", s, None, ForwardPath::FewKeys, 59);
    let s = Attention::new(3, 21, 4, 2, 32).shared_kv();
    let m = key_mask(&mut rng, &s, false);
    check_attention("4 shared keys, masked", s, Some(m), ForwardPath::FewKeys, 60);
}

#[test]
fn shared_key_gradients_are_deterministic_and_split_evenly() {
    let _serial = serial_on_gl();
    // B * Nq = 3 * 300 rows over 4 keys: the key-gradient pass splits the rows into ranges.
    let gpu = common::gpu();
    let s = Attention::new(3, 300, 4, 2, 16).shared_kv();
    let mut rng = Rng::new(60);
    let qh = rng.vec(s.q_elements());
    let kh = rng.vec(s.kv_elements());
    let vh = rng.vec(s.kv_elements());
    let dh = rng.vec(s.q_elements());
    let (q, k, v, d_out) =
        (gpu.upload(&qh).unwrap(), gpu.upload(&kh).unwrap(), gpu.upload(&vh).unwrap(), gpu.upload(&dh).unwrap());
    for path in gpu.kernel_paths() {
        let out = gpu.alloc(s.q_elements()).unwrap();
        let lse = gpu.alloc(s.lse_elements()).unwrap();
        let io = AttentionIo { q: &q, k: &k, v: &v, key_mask: None, out: &out, lse: &lse, probs: None };
        attention::forward_with(gpu, &io, &s, path).unwrap();
        let grads = || {
            let dq = gpu.alloc(s.q_elements()).unwrap();
            let dk = gpu.alloc(s.kv_elements()).unwrap();
            let dv = gpu.alloc(s.kv_elements()).unwrap();
            attention::backward_with(gpu, &io, &d_out, &AttentionGrads { dq: &dq, dk: &dk, dv: &dv }, &s, path)
                .unwrap();
            (gpu.download(&dk).unwrap(), gpu.download(&dv).unwrap())
        };
        let (dk1, dv1) = grads();
        let (dk2, dv2) = grads();
        assert_eq!(dk1, dk2, "{path} path: dk differs between two identical runs");
        assert_eq!(dv1, dv2, "{path} path: dv differs between two identical runs");
        let f = |x: &[f32]| x.iter().map(|&a| a as f64).collect::<Vec<f64>>();
        let [_, rdk, rdv] = reference_backward(&s, &f(&qh), &f(&kh), &f(&vh), None, &f(&dh));
        common::assert_close(&format!("{path} path: split dk"), &dk1, &rdk, 1e-3, 1e-4);
        common::assert_close(&format!("{path} path: split dv"), &dv1, &rdv, 1e-3, 1e-4);
    }
}

#[test]
fn long_sequence_4096_sampled_rows() {
    let _serial = serial_on_gl();
    // N = 4096 forward, checked on sampled rows (a full f64 reference would be slow). Each
    // dispatch is kept well under a second: GL's context lock times out after 6 s, and other
    // tests wait on it.
    let gpu = common::gpu();
    for (causal, nq, dh, kernels) in [(true, 4096, 16), (false, 130, 64)]
        .into_iter()
        .flat_map(|c| gpu.kernel_paths().into_iter().map(move |p| (c.0, c.1, c.2, p)))
    {
        let s = Attention::new(1, nq, 4096, 1, dh).with_causal(causal);
        let mut rng = Rng::new(70 + dh as u64);
        let qh: Vec<f32> = rng.vec(s.q_elements()).into_iter().map(|x| 2.0 * x).collect();
        let kh = rng.vec(s.kv_elements());
        let vh = rng.vec(s.kv_elements());
        let (q, k, v) = (gpu.upload(&qh).unwrap(), gpu.upload(&kh).unwrap(), gpu.upload(&vh).unwrap());
        let (out, lse) = gpu_forward(gpu, &[q, k, v], &s, ForwardPath::Auto, kernels).unwrap();
        let (out, lse) = (gpu.download(&out).unwrap(), gpu.download(&lse).unwrap());
        let f = |x: &[f32]| x.iter().map(|&a| a as f64).collect::<Vec<f64>>();
        let (kd, vd) = (f(&kh), f(&vh));
        for i in [0usize, 1, 63, 64, 129, 2047, 4000, 4095].into_iter().filter(|&i| i < nq) {
            // One query row against every key: a reference with Nq = 1 and the same keys; for
            // the causal case only keys 0..=i are visible.
            let nk = if causal { i + 1 } else { 4096 };
            let one = Attention {
                batch: 1,
                kv_batch: 1,
                q_len: 1,
                kv_len: nk,
                heads: 1,
                head_dim: dh,
                scale: s.scale,
                causal: false,
            };
            let qi = f(&qh[i * dh..(i + 1) * dh]);
            let want = reference_forward(&one, &qi, &kd[..nk * dh], &vd[..nk * dh], None);
            common::assert_close(
                &format!("N=4096 causal={causal} row {i}, {kernels} path"),
                &out[i * dh..(i + 1) * dh],
                &want,
                1e-4,
                1e-5,
            );
            let (_, wl) = reference_probs(&one, &qi, &kd[..nk * dh], None);
            assert!((lse[i] as f64 - wl[0]).abs() < 1e-4 * (1.0 + wl[0].abs()), "lse row {i}: {} vs {}", lse[i], wl[0]);
        }
    }
}

#[test]
fn products_backward_with_saved_probabilities_equals_recomputing() {
    let _serial = serial_on_gl();
    // The products backward reads P from the forward when it is kept, else recomputes it from
    // q, k and lse in the same arithmetic: the gradients must agree bit for bit.
    let gpu = common::gpu();
    let mut rng = Rng::new(80);
    let shapes = [
        (Attention::new(2, 9, 7, 3, 16).with_causal(true), false),
        (Attention::new(3, 5, 6, 2, 8).shared_kv(), true),
        (Attention::new(2, 17, 13, 1, 32), true),
    ];
    for kernels in gpu.kernel_paths() {
        for (s, masked) in shapes {
            let mut x = vec![
                gpu.upload(&rng.vec(s.q_elements())).unwrap(),
                gpu.upload(&rng.vec(s.kv_elements())).unwrap(),
                gpu.upload(&rng.vec(s.kv_elements())).unwrap(),
            ];
            if masked {
                let m: Vec<u32> = key_mask(&mut rng, &s, true).into_iter().map(|v| v as u32).collect();
                x.push(gpu.upload(&m).unwrap());
            }
            let d_out = gpu.upload(&rng.vec(s.q_elements())).unwrap();
            let (out, lse, probs) = gpu_forward_probs(gpu, &x, &s, ForwardPath::Products, kernels).unwrap();
            assert!(probs.is_some(), "a products forward returns its probabilities");
            let grads = |probs: Option<&GpuBuffer>| {
                let dq = gpu.alloc(s.q_elements()).unwrap();
                let (dk, dv) = (gpu.alloc(s.kv_elements()).unwrap(), gpu.alloc(s.kv_elements()).unwrap());
                let io = AttentionIo { q: &x[0], k: &x[1], v: &x[2], key_mask: x.get(3), out: &out, lse: &lse, probs };
                let g = AttentionGrads { dq: &dq, dk: &dk, dv: &dv };
                attention::backward_path(gpu, &io, &d_out, &g, &s, BackwardPath::Products, kernels).unwrap();
                [gpu.download(&dq).unwrap(), gpu.download(&dk).unwrap(), gpu.download(&dv).unwrap()]
            };
            let (kept, recomputed) = (grads(probs.as_ref()), grads(None));
            for (name, a, b) in ["dq", "dk", "dv"].iter().zip(&kept).zip(&recomputed).map(|((n, a), b)| (n, a, b)) {
                assert!(
                    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{s:?}, {kernels} path: {name} with the kept probabilities differs from recomputing them"
                );
            }
        }
    }
}

#[test]
fn bad_shapes_are_errors_naming_the_shapes() {
    let _serial = serial_on_gl();
    let gpu = common::gpu();
    let s = Attention::new(2, 7, 7, 2, 16);
    let q = gpu.zeros(s.q_elements()).unwrap();
    let k = gpu.zeros(s.kv_elements()).unwrap();
    let short = gpu.zeros(s.kv_elements() - 1).unwrap();
    let out = gpu.alloc(s.q_elements()).unwrap();
    let lse = gpu.alloc(s.lse_elements()).unwrap();

    let io = |k, v, key_mask| AttentionIo { q: &q, k, v, key_mask, out: &out, lse: &lse, probs: None };
    let err = attention::forward(gpu, &io(&short, &k, None), &s).unwrap_err().to_string();
    assert!(err.contains("k has 447 elements") && err.contains("[2, 7, 32]") && err.contains("448"), "{err}");

    for dh in [0, 6, 130, 132] {
        let bad = Attention::new(1, 7, 7, 1, dh);
        let err = attention::forward(gpu, &io(&k, &k, None), &bad).unwrap_err().to_string();
        assert!(
            err.contains(&format!("head dimension {dh} is not supported")) && err.contains("multiple of 4"),
            "{err}"
        );
    }

    let bad = Attention { kv_batch: 2, ..Attention::new(3, 7, 7, 1, 16) };
    let err = attention::forward(gpu, &io(&k, &k, None), &bad).unwrap_err().to_string();
    assert!(err.contains("key/value batch 2") && err.contains("query batch 3"), "{err}");

    let many = Attention::new(1, 7, 17, 1, 16);
    let (kk, oo) = (gpu.zeros(many.kv_elements()).unwrap(), gpu.alloc(many.q_elements()).unwrap());
    let err = attention::forward_path(
        gpu,
        &AttentionIo { out: &oo, ..io(&kk, &kk, None) },
        &many,
        ForwardPath::FewKeys,
        gpu.kernel_path(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("at most 16 keys") && err.contains("[1, 17, 1x16]"), "{err}");

    // Rows longer than the products method's row kernels take: a clear error when forced.
    let long = Attention::new(1, 1, 20000, 1, 4);
    let (kl, ol, ll) =
        (gpu.zeros(long.kv_elements()).unwrap(), gpu.alloc(long.q_elements()).unwrap(), gpu.alloc(1).unwrap());
    let err = attention::forward_path(
        gpu,
        &AttentionIo { out: &ol, lse: &ll, ..io(&kl, &kl, None) },
        &long,
        ForwardPath::Products,
        gpu.kernel_path(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("products method") && err.contains("[1, 20000, 1x4]"), "{err}");

    let small_mask = gpu.zeros(13).unwrap();
    let err = attention::forward(gpu, &io(&k, &k, Some(&small_mask)), &s).unwrap_err().to_string();
    assert!(err.contains("key mask has 13 elements") && err.contains("[2, 7]"), "{err}");

    let short_dq = gpu.alloc(s.q_elements() - 4).unwrap();
    let (dk, dv) = (gpu.alloc(s.kv_elements()).unwrap(), gpu.alloc(s.kv_elements()).unwrap());
    let err = attention::backward(gpu, &io(&k, &k, None), &q, &AttentionGrads { dq: &short_dq, dk: &dk, dv: &dv }, &s)
        .unwrap_err()
        .to_string();
    assert!(err.contains("dq has 444 elements") && err.contains("[2, 7, 32]"), "{err}");

    // The stored-scores backward, forced where it cannot run: keys shared by the batch, a causal
    // mask, the tiled path's kernels. An empty query side is no error (zero gradients).
    let dq = gpu.alloc(s.q_elements()).unwrap();
    let grads = AttentionGrads { dq: &dq, dk: &dk, dv: &dv };
    for (bad, kernels) in [
        (Attention::new(2, 7, 7, 2, 16).shared_kv(), gpu.kernel_path()),
        (Attention::new(2, 7, 7, 2, 16).with_causal(true), gpu.kernel_path()),
        (s, KernelPath::Tiled),
    ] {
        let err = attention::backward_path(gpu, &io(&k, &k, None), &q, &grads, &bad, BackwardPath::Scores, kernels)
            .unwrap_err()
            .to_string();
        assert!(err.contains("stored-scores backward") && err.contains("q [2, 7, 2x16]"), "{err}");
    }
    let empty = Attention::new(2, 0, 7, 2, 16);
    attention::backward_path(gpu, &io(&k, &k, None), &q, &grads, &empty, BackwardPath::Scores, gpu.kernel_path())
        .unwrap();

    // The few-keys backward, forced where it cannot run: 5 keys, a head width above 32, the
    // tiled path's kernels, no query rows.
    for (bad, kernels) in [
        (Attention::new(1, 7, 5, 1, 4), gpu.kernel_path()),
        (Attention::new(1, 7, 1, 1, 36), gpu.kernel_path()),
        (Attention::new(2, 7, 7, 2, 16), KernelPath::Tiled),
        (Attention::new(2, 0, 7, 2, 16), gpu.kernel_path()),
    ] {
        let (kb, qb) = (gpu.zeros(bad.kv_elements()).unwrap(), gpu.zeros(bad.q_elements().max(1)).unwrap());
        let (dqb, dkb) = (gpu.alloc(bad.q_elements().max(1)).unwrap(), gpu.alloc(bad.kv_elements()).unwrap());
        let (ob, lb) = (gpu.alloc(bad.q_elements().max(1)).unwrap(), gpu.alloc(bad.lse_elements().max(1)).unwrap());
        let bio = AttentionIo { q: &qb, k: &kb, v: &kb, key_mask: None, out: &ob, lse: &lb, probs: None };
        let bgrads = AttentionGrads { dq: &dqb, dk: &dkb, dv: &dkb };
        let err = attention::backward_path(gpu, &bio, &qb, &bgrads, &bad, BackwardPath::FewKeys, kernels)
            .unwrap_err()
            .to_string();
        let q_shape = format!("q [{}, {}, {}x{}]", bad.batch, bad.q_len, bad.heads, bad.head_dim);
        assert!(err.contains("few-keys backward") && err.contains(&q_shape), "{err}");
    }
}

#[test]
fn texture_operands_give_the_storage_kernels_results_bit_for_bit() {
    // On the subgroup path the attention kernels fetch what they load per lane from flat
    // textures (lavapipe's default): the streamed rows (keys and values in the forward and dq,
    // queries and the output gradient in dk/dv), keys and the stored score gradient in dq from
    // stored scores, q, k and v in the few-keys forward, and dout and out in the backward's
    // preparation. The same values in the same order as the storage loads, so every output
    // equals the storage kernels' bit for bit; the f64 reference checks of the tests above run
    // whichever the context's default is. Shapes: head widths of the 8-key step (32) and of the
    // 4-key step (64, 36), a flat texture of several rows with a partial last row, shared keys
    // (split dk/dv), a causal and a masked call, and the few-keys cross-attention. A context of
    // its own, so that switching textures off changes no other test.
    let gpu = Gpu::new().unwrap();
    if !gpu.info().runs_subgroup_kernels() {
        return; // no subgroup kernels (llvmpipe GL): the texture kernels are never launched
    }
    let cases = [
        (Attention::new(2, 33, 33, 2, 32), false),
        (Attention::new(3, 37, 41, 3, 64), false),
        (Attention::new(2, 9, 19, 2, 36), true),
        (Attention::new(2, 50, 21, 1, 32).shared_kv(), false),
        (Attention::new(1, 45, 45, 2, 16).with_causal(true), false),
        // The decoder's cross-attention: the few-keys forward, three text keys shared.
        (Attention::new(2, 40, 3, 2, 32).shared_kv(), true),
    ];
    for (n, &(s, masked)) in cases.iter().enumerate() {
        let mut rng = Rng::new(40 + n as u64);
        let mut random = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.uniform() * 2.0 - 1.0).collect() };
        let (q, k, v, d_out) =
            (random(s.q_elements()), random(s.kv_elements()), random(s.kv_elements()), random(s.q_elements()));
        let mask: Vec<u32> = (0..s.kv_batch * s.kv_len).map(|j| u32::from(j % 5 != 2)).collect();
        let (q, k, v, d_out) =
            (gpu.upload(&q).unwrap(), gpu.upload(&k).unwrap(), gpu.upload(&v).unwrap(), gpu.upload(&d_out).unwrap());
        let mask = masked.then(|| gpu.upload(&mask).unwrap());
        let mut backwards = vec![BackwardPath::Fused];
        if s.kv_batch == s.batch && !s.causal {
            backwards.push(BackwardPath::Scores);
        }
        if s.kv_len <= vlsa_kernels::attention::FEW_KEYS {
            backwards.push(BackwardPath::FewKeys);
        }
        for (round, backward) in backwards.into_iter().enumerate() {
            let mut runs = Vec::new();
            for textures in [true, false] {
                gpu.set_texture_operands(textures);
                gpu.set_profiling(true).unwrap();
                let (out, lse) = (gpu.alloc(s.q_elements()).unwrap(), gpu.alloc(s.lse_elements()).unwrap());
                let io =
                    AttentionIo { q: &q, k: &k, v: &v, key_mask: mask.as_ref(), out: &out, lse: &lse, probs: None };
                attention::forward_path(&gpu, &io, &s, ForwardPath::Auto, KernelPath::Subgroup).unwrap();
                let (dq, dk, dv) = (
                    gpu.alloc(s.q_elements()).unwrap(),
                    gpu.alloc(s.kv_elements()).unwrap(),
                    gpu.alloc(s.kv_elements()).unwrap(),
                );
                let grads = AttentionGrads { dq: &dq, dk: &dk, dv: &dv };
                attention::backward_path(&gpu, &io, &d_out, &grads, &s, backward, KernelPath::Subgroup).unwrap();
                let got: Vec<Vec<f32>> = [&out, &lse, &dq, &dk, &dv].iter().map(|b| gpu.download(b).unwrap()).collect();
                let profile = gpu.take_profile().unwrap().expect("profiling is on");
                gpu.set_profiling(false).unwrap();
                let copies = profile
                    .records
                    .iter()
                    .filter(|r| r.label.kernel == vlsa_kernels::OperandTexture::COPY_KERNEL)
                    .count();
                // Each buffer read from a texture is copied once, whichever kernel and operand
                // slot reads it first (nothing writes it in between): q, k, v and d_out in the
                // first backward's run (the second finds them in their textures), out (a new
                // buffer in each run) and the stored score gradient where the backward stores it.
                let inputs = if round == 0 { 4 } else { 0 };
                let stored = usize::from(backward == BackwardPath::Scores);
                let want = if textures { inputs + 1 + stored } else { 0 };
                assert_eq!(
                    copies, want,
                    "{s:?} {backward:?}, textures {textures}: {copies} texture copies, want {want}"
                );
                runs.push(got);
            }
            let names = ["out", "lse", "dq", "dk", "dv"];
            for (i, name) in names.iter().enumerate() {
                assert_eq!(runs[0][i], runs[1][i], "{s:?} {backward:?}: {name} differs between textures and storage");
            }
            assert!(runs[0][0].iter().all(|x| x.is_finite()), "{s:?}: out is not finite");
        }
    }
}
