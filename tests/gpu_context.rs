//! The GPU context: adapter choice, error reporting, pooling, batching and profiling.

mod common;

use std::collections::HashSet;

use vlsa_kernels::elementwise::{self, UnaryOp};
use vlsa_kernels::{Error, Gpu, Timing};

#[test]
fn an_unknown_adapter_name_is_a_clear_error() {
    let err = Gpu::with_adapter(Some("no-such-adapter-xyz")).err().expect("must fail");
    let msg = err.to_string();
    assert!(matches!(err, Error::NoAdapter(_)));
    assert!(msg.contains("no-such-adapter-xyz") && msg.contains("adapters found"), "{msg}");
}

#[test]
fn info_describes_the_adapter() {
    let gpu = common::gpu();
    let info = gpu.info();
    assert!(!info.name.is_empty());
    assert!(["Vulkan", "Metal", "Dx12", "Gl"].contains(&info.backend.as_str()), "{}", info.backend);
    assert!(info.limits.max_storage_buffers_per_shader_stage >= 7);
}

#[test]
fn pool_reuses_freed_buffers_by_size_class() {
    let gpu = Gpu::new().unwrap();
    let a = gpu.alloc(1000).unwrap();
    let first = gpu.pool_stats();
    drop(a);
    assert_eq!(gpu.pool_stats().in_use_bytes, first.in_use_bytes - 4096);
    let b = gpu.alloc(900).unwrap(); // same class (4096 bytes)
    let again = gpu.pool_stats();
    assert_eq!(again.allocations, first.allocations, "a freed buffer of the same class is reused");
    assert_eq!(again.allocated_bytes, first.allocated_bytes);
    assert_eq!(b.capacity_bytes(), 4096);
}

#[test]
fn too_large_buffer_is_refused_naming_the_limit() {
    let gpu = common::gpu();
    let too_many = (gpu.limits().max_buffer_size / 4 + 1) as usize;
    let msg = gpu.alloc(too_many).unwrap_err().to_string();
    assert!(msg.contains("allows at most"), "{msg}");
}

#[test]
fn dispatches_are_batched_into_few_submits() {
    let gpu = Gpu::new().unwrap();
    let x = gpu.upload(&[1.0f32; 1024]).unwrap();
    let y = gpu.alloc(1024).unwrap();
    gpu.sync().unwrap();
    let (d0, s0) = gpu.counters();
    for _ in 0..100 {
        elementwise::unary(&gpu, UnaryOp::Relu, &x, &y, 1024).unwrap();
    }
    gpu.sync().unwrap();
    let (d1, s1) = gpu.counters();
    assert_eq!(d1 - d0, 100);
    assert!(s1 - s0 <= 1, "100 dispatches took {} submits", s1 - s0);
}

#[test]
fn profiler_labels_every_dispatch_with_scope_and_work() {
    let gpu = Gpu::new().unwrap();
    gpu.set_profiling(true).unwrap();
    let x = gpu.upload(&vec![0.5f32; 4096]).unwrap();
    let y = gpu.alloc(4096).unwrap();
    for t in 0..3 {
        let _s = gpu.scope(format!("iter={t}"));
        elementwise::unary(&gpu, UnaryOp::Gelu, &x, &y, 4096).unwrap();
    }
    let mut profile = gpu.take_profile().unwrap().expect("profiling is on");
    // Where texture operands are on, x's copy into its texture is a record of its own (once:
    // the later launches find it there).
    let copies = profile.records.iter().filter(|r| r.label.kernel == vlsa_kernels::OperandTexture::COPY_KERNEL).count();
    assert_eq!(copies, usize::from(gpu.texture_operands()));
    profile.records.retain(|r| r.label.kernel != vlsa_kernels::OperandTexture::COPY_KERNEL);
    assert_eq!(profile.records.len(), 3);
    assert_eq!(profile.timing, if gpu.info().timestamps { Timing::GpuTimestamps } else { Timing::WallClock });
    for (t, r) in profile.records.iter().enumerate() {
        assert_eq!(r.label.kernel, "gelu");
        assert_eq!(r.scopes, vec![format!("iter={t}")]);
        assert!(r.duration_ns > 0.0, "a dispatch took {} ns", r.duration_ns);
    }
    let table = profile.table();
    assert!(table.contains("gelu") && table.contains("GFLOP/s"), "{table}");
    let trace = profile.chrome_trace();
    assert!(trace.starts_with("{\"displayTimeUnit\"") && trace.contains("iter=2"), "{trace}");
    // Off again: no records are kept.
    gpu.set_profiling(false).unwrap();
    elementwise::unary(&gpu, UnaryOp::Gelu, &x, &y, 4096).unwrap();
    assert!(gpu.take_profile().unwrap().is_none());
}

#[test]
fn a_gpu_validation_error_becomes_an_error_value() {
    // Bind the same buffer as input and output of one dispatch: wgpu rejects the usage conflict.
    // 63 elements: the scalar kernel, which reads its input from storage whatever the adapter
    // (the vec4 one may read it from a texture copy, with no conflict to report).
    let gpu = Gpu::new().unwrap();
    let x = gpu.upload(&[1.0f32; 64]).unwrap();
    let r = elementwise::unary(&gpu, UnaryOp::Relu, &x, &x, 63).and_then(|_| gpu.sync());
    let err = r.expect_err("aliasing input and output must be reported");
    assert!(matches!(err, Error::Validation(_)), "{err}");
    // The device stays usable afterwards.
    let y = gpu.alloc(64).unwrap();
    elementwise::unary(&gpu, UnaryOp::Relu, &x, &y, 64).unwrap();
    assert_eq!(gpu.download(&y).unwrap()[0], 1.0);
}

/// A small workload of several kernels (a product, the EM loop, a copy and a clear) whose
/// result is read back afterwards.
fn workload(gpu: &Gpu, out: &vlsa_kernels::GpuBuffer) -> vlsa_kernels::Result<()> {
    use vlsa_kernels::em::{Em, EmShape};
    use vlsa_kernels::matmul::{matmul, Matmul};
    let data = |n: usize, seed: usize| -> Vec<f32> {
        (0..n).map(|i| ((i * 37 + seed * 11) % 17) as f32 / 8.0 - 1.0).collect()
    };
    let a = gpu.upload(&data(37 * 20, 1))?;
    let b = gpu.upload(&data(20 * 24, 2))?;
    let prod = gpu.alloc(37 * 24)?;
    matmul(gpu, &a, &b, &prod, &Matmul::new(1, 37, 24, 20))?;
    let s = EmShape { batch: 1, tokens: 37, width: 24, bases: 4, iters: 2, lambda: 1.0 };
    let bases = gpu.upload(&data(4 * 24, 3))?;
    let em = Em::new(gpu, s)?.forward(&prod, &bases, false)?;
    gpu.clear(out)?;
    gpu.copy(&em.recon, out)?;
    Ok(())
}

#[test]
fn prepared_pipelines_are_built_before_their_launches_and_change_nothing() {
    let gpu = Gpu::new().unwrap();
    let out = gpu.alloc(37 * 24).unwrap();
    gpu.sync().unwrap();
    let (d0, _) = gpu.counters();
    let prepared = gpu.prepare_pipelines(|| workload(&gpu, &out)).unwrap();
    assert!(prepared.launches >= 5 && prepared.built >= 3, "{prepared:?}");
    assert_eq!(gpu.pipelines_built(), prepared.built, "a fresh GPU had built nothing before");
    gpu.sync().unwrap();
    assert_eq!(gpu.counters().0, d0, "the rehearsal recorded no dispatch");
    // The real run builds nothing more, and gives what a GPU that never rehearsed gives.
    workload(&gpu, &out).unwrap();
    let got = gpu.download(&out).unwrap();
    assert_eq!(gpu.pipelines_built(), prepared.built);
    assert!(gpu.counters().0 - d0 >= prepared.launches as u64);
    let plain = Gpu::new().unwrap();
    let out2 = plain.alloc(37 * 24).unwrap();
    workload(&plain, &out2).unwrap();
    assert_eq!(got, plain.download(&out2).unwrap());
    assert!(got.iter().any(|v| *v != 0.0));
    // Preparing again builds nothing.
    assert_eq!(gpu.prepare_pipelines(|| workload(&gpu, &out)).unwrap().built, 0);
}

#[test]
fn a_rehearsal_reads_nothing_back_and_other_threads_run_meanwhile() {
    let gpu = Gpu::new().unwrap();
    let x = gpu.upload(&[-1.0f32, 2.0, -3.0, 4.0]).unwrap();
    let y = gpu.alloc(4).unwrap();
    // A readback inside the rehearsal is an error naming it, not zeros.
    let e = gpu
        .prepare_pipelines(|| {
            elementwise::unary(&gpu, UnaryOp::Relu, &x, &y, 4)?;
            gpu.download(&y)
        })
        .unwrap_err();
    assert!(matches!(e, Error::Readback(_)) && e.to_string().contains("prepare_pipelines"), "{e}");
    // The closure's own error comes back as it is, and nesting is refused.
    let e = gpu.prepare_pipelines(|| Err::<(), _>(Error::Shape("mine".into()))).unwrap_err();
    assert_eq!(e.to_string(), Error::Shape("mine".into()).to_string());
    let e = gpu.prepare_pipelines(|| gpu.prepare_pipelines(|| Ok::<(), Error>(()))).unwrap_err();
    assert!(e.to_string().contains("inside its own rehearsal"), "{e}");
    // The rehearsal is this thread's: another thread's launches on the same GPU run and read back.
    gpu.prepare_pipelines(|| {
        let other = std::thread::scope(|s| {
            s.spawn(|| {
                elementwise::unary(&gpu, UnaryOp::Relu, &x, &y, 4).unwrap();
                gpu.download(&y).unwrap()
            })
            .join()
            .unwrap()
        });
        assert_eq!(other, vec![0.0, 2.0, 0.0, 4.0]);
        Ok::<(), Error>(())
    })
    .unwrap();
    // After a failed rehearsal this thread launches as usual again.
    elementwise::unary(&gpu, UnaryOp::Relu, &x, &y, 4).unwrap();
    assert_eq!(gpu.download(&y).unwrap(), vec![0.0, 2.0, 0.0, 4.0]);
}

/// The cores a thread may run on (`Cpus_allowed_list` in its /proc status file, e.g. "0-3,8");
/// None when the thread has exited.
fn allowed_cores(status: &str) -> Option<Vec<usize>> {
    let status = std::fs::read_to_string(status).ok()?;
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap().trim();
    Some(
        list.split(',')
            .flat_map(|r| match r.split_once('-') {
                Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<usize>>(),
                None => vec![r.parse().unwrap()],
            })
            .collect(),
    )
}

/// On a CPU adapter on Linux the driver's worker threads are found when the context opens and
/// pinned one per core (kernels/src/cpu_threads.rs); elsewhere none are looked for.
#[test]
fn a_software_adapters_worker_threads_are_pinned_one_per_core() {
    let gpu = Gpu::new().unwrap();
    let w = gpu.worker_threads();
    let cpu_on_linux = gpu.info().device_type == "Cpu" && cfg!(target_os = "linux");
    if !cpu_on_linux {
        assert_eq!((w.found, w.cores.len()), (0, 0), "{w:?}");
        assert!(gpu.pin_worker_threads(true).is_err());
        return;
    }
    if std::env::var("VLSA_PIN_THREADS").is_ok_and(|v| v.trim() == "0") {
        assert_eq!(w.note.as_deref(), Some("VLSA_PIN_THREADS=0"));
        return;
    }
    assert!(w.found >= 1 && w.note.is_none(), "{w:?}");
    assert_eq!(w.cores.len(), w.found);
    let allowed = allowed_cores("/proc/thread-self/status").unwrap();
    let main_thread = std::process::id().to_string();
    let task = |t: &str| allowed_cores(&format!("/proc/self/task/{t}/status"));
    assert!(w.cores.iter().all(|c| allowed.contains(c)), "{w:?} outside {allowed:?}");
    let distinct: HashSet<usize> = w.cores.iter().copied().collect();
    assert_eq!(distinct.len(), w.found.min(allowed.len()), "one core per worker: {w:?}");
    // The workers are threads of this process restricted to one of those cores (other tests'
    // contexts may have pinned more meanwhile); the process's own thread is not one of them.
    let pinned = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|t| *t != main_thread && matches!(task(t).as_deref(), Some(&[c]) if distinct.contains(&c)))
        .count();
    assert!(pinned >= w.found, "{pinned} threads pinned, {} workers", w.found);
    assert_eq!(task(&main_thread).unwrap().len(), allowed.len(), "the main thread keeps its cores");
    gpu.pin_worker_threads(false).unwrap();
    assert!(gpu.worker_threads().cores.is_empty());
    gpu.pin_worker_threads(true).unwrap();
    assert_eq!(gpu.worker_threads(), w);
    // Work runs as before either way.
    let x = gpu.upload(&[-1.0f32, 2.0, -3.0, 4.0]).unwrap();
    let y = gpu.alloc(4).unwrap();
    elementwise::unary(&gpu, UnaryOp::Relu, &x, &y, 4).unwrap();
    assert_eq!(gpu.download(&y).unwrap(), vec![0.0, 2.0, 0.0, 4.0]);
}
