//! Profiling of the EM Aggregation loop and of one matrix product: the library side of
//! `vlsa profile em` and `vlsa profile matmul`.
//!
//! [`profile_em`] runs the EM loop of `vlsa_kernels::em` on random data with per-dispatch
//! profiling on, and returns an [`EmProfileReport`]: GPU time, GFLOP/s and GB/s per EM
//! iteration and per step (E-step, column sums, M-step, normalisation, reconstruction and,
//! with `backward`, their backward steps), the mean shift of the bases per iteration (how fast
//! EM converges, from a separate un-profiled pass), and the Chrome trace of the timed run.
//! Parsing command-line flags and writing files is the CLI's job, not this module's.
//!
//! A step's row sums all its dispatches: the EM products run on the matmul kernel (label
//! `matmul`, inside the step's scope, see kernels/src/em.rs), the rest in fused EM kernels. So
//! `em_e_step` = logits matmul + softmax + per-tile column sums (3 dispatches), `em_m_step` =
//! the Z^T u matmul split over tokens + the sum of the splits divided by the column sums (2),
//! `em_normalize` = the L2 normalisation, `em_recon` = the Z mu matmul; where M and C are
//! multiples of 4, `em_e_step` = logits matmul + softmax (2) and `em_m_step` = split matmul +
//! one pass for the column sums, the splits' sum, the division and the normalisation (2), with
//! no `em_colsum` or `em_normalize` rows; in the backward
//! `em_m_step_backward` = 2 matmuls, `em_e_step_backward` = softmax backward + 1 or 2 matmuls
//! (+ the sum of the splits). On the GPU path (or with `--iteration two-pass`) a forward
//! iteration is instead `em_fused`: E-step, column sums, M-step and normalisation in two
//! dispatches. The Chrome trace keeps every dispatch, with the step in its scope path.

use std::fmt;

use crate::kernels::em::{self, Em, EmOutputGrads, EmShape, GradMode};
use crate::kernels::matmul::{matmul_with, plan, Matmul, MatmulPlan};
use crate::kernels::profiler::rate;
use crate::kernels::{Gpu, KernelPath, Profile, Result, Timing};

/// What to profile: the sizes of `vlsa profile em --tokens N --width C --bases M --iters T
/// [--batch B] [--backward]`.
#[derive(Debug, Clone, PartialEq)]
pub struct EmProfileOptions {
    /// B.
    pub batch: usize,
    /// N.
    pub tokens: usize,
    /// C.
    pub width: usize,
    /// M.
    pub bases: usize,
    /// T.
    pub iters: usize,
    /// The E-step's inverse temperature.
    pub lambda: f32,
    /// Also time the unrolled backward (with a random gradient of R).
    pub backward: bool,
    /// Seed of the random tokens and bases.
    pub seed: u64,
    /// How each forward iteration runs (by default the kernel path's choice).
    pub iteration: em::Iteration,
}

impl Default for EmProfileOptions {
    /// The default model's EM sizes (docs/DESIGN.md): N = 256 tokens, C = 128, M = 16, T = 3.
    fn default() -> Self {
        EmProfileOptions {
            batch: 1,
            tokens: 256,
            width: 128,
            bases: 16,
            iters: 3,
            lambda: 1.0,
            backward: false,
            seed: 0,
            iteration: em::Iteration::Auto,
        }
    }
}

impl EmProfileOptions {
    /// The kernels' shape for these options.
    pub fn shape(&self) -> EmShape {
        EmShape {
            batch: self.batch,
            tokens: self.tokens,
            width: self.width,
            bases: self.bases,
            iters: self.iters,
            lambda: self.lambda,
        }
    }
}

/// The time of one EM step within one profiling scope (e.g. `iter=2` / `em_m_step`): the sum
/// over its dispatches (a step is a matmul plus a fused kernel, or either alone).
#[derive(Debug, Clone, PartialEq)]
pub struct EmStepTime {
    /// Scopes joined by `/`: `iter=t`, `recon`, `backward/recon`, `backward/iter=t`.
    pub scope: String,
    /// The step, e.g. `em_e_step`.
    pub kernel: String,
    /// Dispatches (matmuls and fused kernels together).
    pub count: usize,
    /// GPU time in nanoseconds.
    pub time_ns: f64,
    /// FLOPs of those dispatches.
    pub flops: u64,
    /// Bytes those dispatches read and write at least.
    pub bytes: u64,
}

impl EmStepTime {
    /// Achieved GFLOP/s.
    pub fn gflops(&self) -> f64 {
        if self.time_ns > 0.0 {
            self.flops as f64 / self.time_ns
        } else {
            0.0
        }
    }
    /// Achieved GB/s.
    pub fn gbytes_per_s(&self) -> f64 {
        if self.time_ns > 0.0 {
            self.bytes as f64 / self.time_ns
        } else {
            0.0
        }
    }
}

/// What [`profile_em`] measured.
#[derive(Debug, Clone)]
pub struct EmProfileReport {
    /// The shape profiled.
    pub shape: EmShape,
    /// The adapter, as "name (backend, type)".
    pub adapter: String,
    /// Whether the backward was timed too.
    pub backward: bool,
    /// Per scope and kernel, in the order they first ran.
    pub steps: Vec<EmStepTime>,
    /// Mean over (b, m) of ||mu_t - mu_{t-1}||_2 for t = 1..T (mu_0 = the bases).
    pub shifts: Vec<f64>,
    /// Every timed dispatch (for the Chrome trace).
    pub profile: Profile,
}

impl EmProfileReport {
    /// Chrome trace JSON of the timed run (chrome://tracing or Perfetto).
    pub fn chrome_trace(&self) -> String {
        self.profile.chrome_trace()
    }

    /// Total GPU time of the timed run in nanoseconds.
    pub fn total_ns(&self) -> f64 {
        self.profile.total_ns()
    }

    /// GPU time per scope (e.g. `iter=1`), in the order the scopes first ran.
    pub fn scope_totals(&self) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = Vec::new();
        for s in &self.steps {
            match out.iter_mut().find(|(k, _)| *k == s.scope) {
                Some((_, t)) => *t += s.time_ns,
                None => out.push((s.scope.clone(), s.time_ns)),
            }
        }
        out
    }
}

impl fmt::Display for EmProfileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shape;
        writeln!(f, "EM Aggregation {s} lambda={} on {}", s.lambda, self.adapter)?;
        writeln!(
            f,
            "timing: {}",
            match self.profile.timing {
                Timing::GpuTimestamps => "GPU timestamp queries",
                Timing::WallClock =>
                    "wall clock per dispatch (the adapter has no timestamp queries; includes submit overhead)",
            }
        )?;
        writeln!(
            f,
            "{:<18} {:<22} {:>5} {:>11} {:>9} {:>9}",
            "scope", "kernel", "count", "time us", "GFLOP/s", "GB/s"
        )?;
        for r in &self.steps {
            writeln!(
                f,
                "{:<18} {:<22} {:>5} {:>11.1} {:>9} {:>9}",
                r.scope,
                r.kernel,
                r.count,
                r.time_ns / 1e3,
                rate(r.gflops()),
                rate(r.gbytes_per_s())
            )?;
        }
        writeln!(f, "per scope:")?;
        for (scope, ns) in self.scope_totals() {
            writeln!(f, "  {scope:<18} {:>11.1} us", ns / 1e3)?;
        }
        writeln!(f, "  {:<18} {:>11.1} us", "total", self.total_ns() / 1e3)?;
        write!(f, "mean shift of the bases ||mu_t - mu_(t-1)||:")?;
        for (t, shift) in self.shifts.iter().enumerate() {
            write!(f, "  t={}: {shift:.3e}", t + 1)?;
        }
        writeln!(f)
    }
}

/// Deterministic values in [-1, 1) from an xorshift64* stream.
fn random(n: usize, seed: u64) -> Vec<f32> {
    crate::random::Rng::new(seed).vec(n)
}

/// Random bases with rows of unit L2 norm, as EMANet initialises them.
fn random_bases(m: usize, c: usize, seed: u64) -> Vec<f32> {
    let mut b = random(m * c, seed);
    for row in b.chunks_mut(c) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= 1e-6 + norm);
    }
    b
}

/// Runs the EM loop (and, with `backward`, its unrolled backward) on random data with
/// profiling on and returns the timings, the bases' shift per iteration and the trace. A first
/// un-timed run compiles the pipelines and fills the buffer pool.
pub fn profile_em(gpu: &Gpu, opts: &EmProfileOptions) -> Result<EmProfileReport> {
    let s = opts.shape();
    let em = Em::new(gpu, s)?.with_iteration(opts.iteration);
    let u = gpu.upload(&random(s.tokens_len(), opts.seed))?;
    let bases_host = random_bases(s.bases, s.width, opts.seed ^ 0xB45E);
    let bases = gpu.upload(&bases_host)?;
    let d_recon = gpu.upload(&random(s.tokens_len(), opts.seed ^ 0xD4))?;

    let run = || -> Result<em::EmForward> {
        let fwd = em.forward(&u, &bases, opts.backward)?;
        if opts.backward {
            let grads = EmOutputGrads { recon: &d_recon, z: None, mu: None };
            em.backward(GradMode::Unrolled, &u, &bases, &fwd, &grads)?;
        }
        Ok(fwd)
    };
    run()?;
    gpu.sync()?;

    gpu.set_profiling(true)?;
    let timed = run().and_then(|_| gpu.take_profile());
    gpu.set_profiling(false)?;
    let profile = timed?.expect("profiling was on");

    let mut steps: Vec<EmStepTime> = Vec::new();
    for r in &profile.records {
        let (scope, kernel) = step_of(&r.scopes, r.label.kernel);
        let i = match steps.iter().position(|x| x.scope == scope && x.kernel == kernel) {
            Some(i) => i,
            None => {
                steps.push(EmStepTime { scope, kernel, count: 0, time_ns: 0.0, flops: 0, bytes: 0 });
                steps.len() - 1
            }
        };
        let x = &mut steps[i];
        x.count += 1;
        x.time_ns += r.duration_ns;
        x.flops += r.label.flops;
        x.bytes += r.label.bytes;
    }

    let shifts = bases_shift(gpu, &u, &bases, &bases_host, &s)?;
    let info = gpu.info();
    Ok(EmProfileReport {
        shape: s,
        adapter: format!("{} ({}, {})", info.name, info.backend, info.device_type),
        backward: opts.backward,
        steps,
        shifts,
        profile,
    })
}

/// The report row of one dispatch: em.rs puts each EM step's dispatches (its matmuls, labelled
/// `matmul`, and its fused kernel, labelled with the step's name) in a scope named after the
/// step, e.g. `iter=2/em_e_step`; that innermost `em_*` scope becomes the row's kernel and the
/// scopes above it the row's scope, so a step is one row whatever dispatches it took.
fn step_of(scopes: &[String], kernel: &str) -> (String, String) {
    match scopes.split_last() {
        Some((last, outer)) if last.starts_with("em_") => (outer.join("/"), last.clone()),
        _ => (scopes.join("/"), kernel.to_string()),
    }
}

/// Mean over (b, m) of ||mu_t - mu_{t-1}|| per iteration, from an un-profiled forward that
/// keeps every mu_t.
fn bases_shift(
    gpu: &Gpu,
    u: &crate::kernels::GpuBuffer,
    bases: &crate::kernels::GpuBuffer,
    bases_host: &[f32],
    s: &EmShape,
) -> Result<Vec<f64>> {
    let fwd = Em::new(gpu, *s)?.forward(u, bases, true)?;
    let saved = fwd.saved.as_ref().expect("saved for backward");
    let mut mus: Vec<Vec<f32>> = Vec::with_capacity(s.iters + 1);
    mus.push(bases_host.iter().cycle().take(s.mu_len()).copied().collect());
    for m in &saved.mu {
        mus.push(gpu.download(m)?);
    }
    mus.push(gpu.download(&fwd.mu)?);
    let rows = (s.batch * s.bases) as f64;
    Ok(mus
        .windows(2)
        .map(|w| {
            let total: f64 = w[1]
                .chunks(s.width)
                .zip(w[0].chunks(s.width))
                .map(|(a, b)| a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt())
                .sum();
            total / rows
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_profile_reports_every_kernel_per_iteration() {
        let gpu = Gpu::new().expect("a GPU adapter (lavapipe on CI)");
        let opts = EmProfileOptions {
            batch: 2,
            tokens: 9,
            width: 5,
            bases: 3,
            iters: 2,
            backward: true,
            ..Default::default()
        };
        let report = profile_em(&gpu, &opts).unwrap();
        for t in 1..=2 {
            // The E-step is the logits matmul, the softmax and the tile column sums; the M-step
            // its split matmul and the sum of the splits with the division.
            for (kernel, dispatches) in [("em_e_step", 3), ("em_colsum", 1), ("em_m_step", 2), ("em_normalize", 1)] {
                let row = report.steps.iter().find(|r| r.scope == format!("iter={t}") && r.kernel == kernel);
                let row = row.unwrap_or_else(|| panic!("no {kernel} in iter={t}:\n{report}"));
                assert_eq!(row.count, dispatches, "{kernel}:\n{report}");
                assert!(row.time_ns >= 0.0);
            }
            for kernel in ["em_normalize_backward", "em_m_step_backward", "em_e_step_backward"] {
                assert!(
                    report.steps.iter().any(|r| r.scope == format!("backward/iter={t}") && r.kernel == kernel),
                    "no {kernel}:\n{report}"
                );
            }
        }
        assert!(report.steps.iter().any(|r| r.scope == "recon" && r.kernel == "em_recon"));
        assert!(report.steps.iter().any(|r| r.scope == "backward/recon" && r.kernel == "em_recon_backward"));
        assert!(report.steps.iter().all(|r| r.kernel.starts_with("em_")), "a dispatch outside the EM steps:\n{report}");
        let e_step = report.steps.iter().find(|r| r.kernel == "em_e_step").unwrap();
        assert_eq!(e_step.flops, 2 * 2 * 9 * 5 * 3 + 4 * 2 * 9 * 3);
        assert_eq!(report.shifts.len(), 2);
        assert!(report.shifts.iter().all(|v| v.is_finite() && *v >= 0.0));
        let text = report.to_string();
        assert!(text.contains("iter=2") && text.contains("em_m_step") && text.contains("mean shift"), "{text}");
        let trace = report.chrome_trace();
        assert!(trace.starts_with('{') && trace.contains("\"em_e_step\"") && trace.contains("iter=1"));
    }

    #[test]
    fn bad_options_are_errors() {
        let gpu = Gpu::new().expect("a GPU adapter");
        let err = profile_em(&gpu, &EmProfileOptions { bases: 100, ..Default::default() }).unwrap_err().to_string();
        assert!(err.contains("M=100"), "{err}");
    }
}

/// What [`profile_model`] measured: every dispatch of one forward (and, with `backward`, the
/// loss and the backward) of a whole model on random data.
#[derive(Debug, Clone)]
pub struct ModelProfile {
    /// Batch size profiled.
    pub batch: usize,
    /// Whether the loss and backward were profiled too.
    pub backward: bool,
    /// The adapter, as "name (backend, type)".
    pub adapter: String,
    /// Every timed dispatch, scoped `forward`, `loss` and `backward`.
    pub profile: Profile,
    /// Dispatches recorded by one unprofiled pass.
    pub dispatches: u64,
    /// Submits made by one unprofiled pass (its final sync included).
    pub submits: u64,
    /// Host wall time of an unprofiled pass, synced at its end, in ms: the median of
    /// [`WALL_PASSES`] passes.
    pub wall_ms: f64,
    /// The fastest and slowest of those passes, in ms (a software GPU's speed drifts between
    /// passes: one pass alone can be off by half).
    pub wall_range_ms: (f64, f64),
}

/// Unprofiled passes [`profile_model`] times for its wall-clock figure.
pub const WALL_PASSES: usize = 3;

/// Profiles one forward (and optionally loss + backward) of `model` on a random batch, after
/// one untimed warm-up pass that compiles the pipelines and [`WALL_PASSES`] timed unprofiled ones.
pub fn profile_model(
    model: &crate::model::Model,
    batch: usize,
    backward: bool,
    seed: u64,
) -> crate::Result<ModelProfile> {
    let gpu = model.gpu();
    let c = &model.config;
    let (s, k) = (c.image_size, c.num_classes());
    let mut rng = crate::random::Rng::new(seed);
    let input: Vec<f32> = (0..batch * 3 * s * s).map(|_| rng.range(-2.0, 2.0)).collect();
    let target: Vec<u32> = (0..batch * s * s).map(|_| rng.below(k) as u32).collect();
    let input = crate::Tensor::from_vec(gpu, &input, &[batch, 3, s, s])?;
    let target = std::sync::Arc::new(gpu.upload(&target)?);
    let run = |profiled: bool| -> crate::Result<()> {
        let out = {
            let _scope = profiled.then(|| gpu.scope("forward"));
            if backward {
                model.forward(&input)?
            } else {
                crate::no_grad(|| model.forward(&input))?
            }
        };
        if backward {
            let loss = {
                let _scope = profiled.then(|| gpu.scope("loss"));
                model.loss(&out.logits_up, &target)?
            };
            let _scope = profiled.then(|| gpu.scope("backward"));
            crate::backward(&loss)?;
            for (_, p) in model.parameters() {
                p.zero_grad();
            }
        }
        gpu.sync()?;
        Ok(())
    };
    run(false)?;
    // Unprofiled passes, counted and timed as training runs them (every pass records the same
    // dispatches and submits).
    let (d0, s0) = gpu.counters();
    let mut walls: Vec<f64> = (0..WALL_PASSES)
        .map(|_| {
            let start = std::time::Instant::now();
            run(false).map(|()| start.elapsed().as_secs_f64() * 1e3)
        })
        .collect::<crate::Result<_>>()?;
    let (d1, s1) = gpu.counters();
    walls.sort_by(f64::total_cmp);
    let (wall_ms, wall_range_ms) = (walls[walls.len() / 2], (walls[0], walls[walls.len() - 1]));
    gpu.set_profiling(true)?;
    let result = run(true);
    let profile = gpu.take_profile();
    gpu.set_profiling(false)?;
    result?;
    let profile = profile?.ok_or_else(|| crate::Error::Invalid("the profiler returned no records".into()))?;
    let i = gpu.info();
    Ok(ModelProfile {
        batch,
        backward,
        adapter: format!("{} ({}, {})", i.name, i.backend, i.device_type),
        profile,
        dispatches: (d1 - d0) / WALL_PASSES as u64,
        submits: (s1 - s0) / WALL_PASSES as u64,
        wall_ms,
        wall_range_ms,
    })
}

impl fmt::Display for ModelProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.backward { "forward + loss + backward" } else { "forward" };
        writeln!(f, "model {what}, batch {}, on {}", self.batch, self.adapter)?;
        // Texture copies (the matmul's texture operands) are timed like launches but are not
        // dispatches: counted apart, their time inside the scope's.
        let copies = |scope: Option<&str>| {
            let in_scope = |r: &&vlsa_kernels::DispatchRecord| {
                scope.is_none_or(|s| r.scopes.first().map(String::as_str).unwrap_or_default() == s)
            };
            let copy = |r: &&vlsa_kernels::DispatchRecord| r.label.kernel == vlsa_kernels::OperandTexture::COPY_KERNEL;
            self.profile.records.iter().filter(in_scope).filter(copy).count()
        };
        let line = |f: &mut fmt::Formatter<'_>, name: &str, records: usize, copies: usize, ns: f64| {
            let note = if copies > 0 { format!(" (and {copies} texture copies)") } else { String::new() };
            writeln!(f, "{name:<10} {:>6} dispatches {:>10.2} ms{note}", records - copies, ns / 1e6)
        };
        let by_scope = self.profile.summarize(|r| r.scopes.first().cloned().unwrap_or_default());
        for (scope, s) in &by_scope {
            line(f, scope, s.count, copies(Some(scope)), s.total_ns)?;
        }
        line(f, "total", self.profile.records.len(), copies(None), self.profile.total_ns())?;
        writeln!(
            f,
            "unprofiled pass: {} dispatches, {} submits, {:.2} ms wall (synced; median of {WALL_PASSES} passes, {:.2}-{:.2} ms)",
            self.dispatches, self.submits, self.wall_ms, self.wall_range_ms.0, self.wall_range_ms.1
        )?;
        write!(f, "{}", self.profile.table())
    }
}

/// What `vlsa profile matmul --m M --n N --k K [--layout nn|nt|tn|tt] [--batch B]
/// [--path NAME|all] [--iters N]` times: one product shape on one or more kernel paths.
#[derive(Debug, Clone, PartialEq)]
pub struct MatmulProfileOptions {
    /// The product: shape, layout and batch.
    pub op: Matmul,
    /// The kernel paths to time, in order.
    pub paths: Vec<KernelPath>,
    /// Timed products per path (after one untimed warm-up).
    pub iters: usize,
}

/// The flags of `vlsa profile matmul` as given on the command line, before
/// [`MatmulProfileOptions::parse`] checks and resolves them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulProfileArgs<'a> {
    /// `--m`: rows of the output.
    pub m: usize,
    /// `--n`: columns of the output.
    pub n: usize,
    /// `--k`: the summed dimension.
    pub k: usize,
    /// `--layout`: nn, nt, tn or tt (n = stored as written, t = stored transposed).
    pub layout: &'a str,
    /// `--batch`: products in the batch.
    pub batch: usize,
    /// `--path`: a kernel path name or `all`.
    pub path: &'a str,
    /// `--iters`: timed products per path.
    pub iters: usize,
}

impl MatmulProfileOptions {
    /// Checks the CLI's values and resolves `layout` (nn, nt, tn, tt: n = stored as written,
    /// t = stored transposed) and `path` (a path name or `all`: every path `gpu` can run).
    /// Each error is one sentence naming the bad value.
    pub fn parse(gpu: &Gpu, args: &MatmulProfileArgs) -> std::result::Result<MatmulProfileOptions, String> {
        let MatmulProfileArgs { m, n, k, layout, batch, path, iters } = *args;
        for (flag, value) in [("--m", m), ("--n", n), ("--k", k), ("--batch", batch), ("--iters", iters)] {
            if value == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        let (trans_a, trans_b) = match layout {
            "nn" => (false, false),
            "nt" => (false, true),
            "tn" => (true, false),
            "tt" => (true, true),
            other => return Err(format!("--layout {other} is not one of nn, nt, tn, tt")),
        };
        let paths = if path == "all" {
            gpu.kernel_paths()
        } else {
            let p = KernelPath::parse(path)
                .ok_or_else(|| format!("--path {path} is not one of registers, subgroup, tiled, all"))?;
            if !gpu.kernel_paths().contains(&p) {
                return Err(format!("--path {path} cannot run on {}: it has no subgroup operations", gpu.info().name));
            }
            vec![p]
        };
        let op = Matmul::new(batch, m, n, k).trans_a(trans_a).trans_b(trans_b);
        Ok(MatmulProfileOptions { op, paths, iters })
    }
}

/// The time of one product on one path.
#[derive(Debug, Clone)]
pub struct MatmulPathTime {
    /// The path asked for.
    pub path: KernelPath,
    /// What ran: the path after any fallback, and its entry points.
    pub plan: MatmulPlan,
    /// Mean time per product in nanoseconds (all of its dispatches).
    pub time_ns: f64,
    /// The fastest and the slowest of the timed products, in nanoseconds: how far one product's
    /// time can be trusted on this adapter (CPU adapters drift by tens of percent).
    pub range_ns: (f64, f64),
}

/// The result of [`profile_matmul`]: one line per path.
#[derive(Debug, Clone)]
pub struct MatmulProfileReport {
    /// The adapter, as `name (backend, device type)`.
    pub adapter: String,
    /// The product timed.
    pub op: Matmul,
    /// How durations were measured.
    pub timing: Timing,
    /// Products timed per path.
    pub iters: usize,
    /// One entry per path, in the order asked.
    pub paths: Vec<MatmulPathTime>,
}

/// Times `opts.iters` products of random matrices on each path, per dispatch (GPU timestamps
/// where the adapter has them, else wall clock around each dispatch).
pub fn profile_matmul(gpu: &Gpu, opts: &MatmulProfileOptions) -> Result<MatmulProfileReport> {
    let op = opts.op;
    let a = gpu.upload(&random(op.a_len(), 1))?;
    let b = gpu.upload(&random(op.b_len(), 2))?;
    let out = gpu.alloc(op.out_len())?;
    let mut timing = Timing::WallClock;
    let mut paths = Vec::new();
    for &path in &opts.paths {
        matmul_with(gpu, &a, &b, &out, &op, path)?;
        gpu.sync()?;
        gpu.set_profiling(true)?;
        let timed = (0..opts.iters)
            .try_for_each(|_| matmul_with(gpu, &a, &b, &out, &op, path))
            .and_then(|_| gpu.take_profile());
        gpu.set_profiling(false)?;
        let profile = timed?.expect("profiling was on");
        timing = profile.timing;
        // Every product records the same number of launches (two for split-K; with texture
        // operands its two texture copies too), in order.
        let per_product = (profile.records.len() / opts.iters).max(1);
        let products: Vec<f64> =
            profile.records.chunks(per_product).map(|c| c.iter().map(|r| r.duration_ns).sum()).collect();
        let total: f64 = products.iter().sum();
        let range_ns = products.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &t| (lo.min(t), hi.max(t)));
        paths.push(MatmulPathTime { path, plan: plan(gpu, &op, path), time_ns: total / opts.iters as f64, range_ns });
    }
    let info = gpu.info();
    Ok(MatmulProfileReport {
        adapter: format!("{} ({}, {})", info.name, info.backend, info.device_type),
        op,
        timing,
        iters: opts.iters,
        paths,
    })
}

impl fmt::Display for MatmulProfileReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "matmul {} on {}", self.op.describe(), self.adapter)?;
        writeln!(
            f,
            "timing: {}, mean of {} products (and the fastest-slowest of them)",
            match self.timing {
                Timing::GpuTimestamps => "GPU timestamp queries",
                Timing::WallClock =>
                    "wall clock per dispatch (the adapter has no timestamp queries; includes submit overhead)",
            },
            self.iters
        )?;
        for p in &self.paths {
            let fallback =
                if p.plan.path != p.path { format!(" (falls back to {} here)", p.plan.path) } else { String::new() };
            writeln!(
                f,
                "{:<10} {:<40} {:>10.3} ms {:>9} GFLOP/s  ({:.3}-{:.3} ms){fallback}",
                p.path.name(),
                p.plan.describe(),
                p.time_ns / 1e6,
                rate(self.op.flops() as f64 / p.time_ns),
                p.range_ns.0 / 1e6,
                p.range_ns.1 / 1e6,
            )?;
        }
        Ok(())
    }
}
